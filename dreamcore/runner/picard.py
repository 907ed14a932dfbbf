"""``run.picard``: Picard-parallel optimization of the run's trajectory (DreamPropeller).

Source: Zhou et al., "DreamPropeller: Supercharge Text-to-3D Generation with Parallel Sampling" (2023); official
code alexzhou907/DreamPropeller (``launch_speedup.py::{train_loop, run_worker, take_step}``,
``threestudio/systems/base.py::compute_error_from_system``). It wraps any system's step; it is not a guidance.

The sequential run is a map θ_{s+1} = Opt_s(θ_s, ∇L(θ_s; ξ_s)) where, with per-step seeds (``run.step_seeds``,
always on here), the step's randomness ξ_s depends on (run.seed, s) alone. A Picard round over the window
[b, b + P) (P = ``run.picard.window``, cut at ``run.steps``) holds guesses θ_b … θ_{b+P−1}, θ_b exact:

1. the gradients g_s = ∇L(θ_s; ξ_s) at every guess, independent of each other, are evaluated in parallel by
   ``run.picard.workers`` processes (spawned, each with its own system and prior built from the config and the
   guess's state sent as tensors; one GPU each when there are GPUs) — or at ``workers: 0`` one after another
   in this process, on a second system (the same algorithm; the tests and round counts use it);
2. a sequential rollout on the trainer's own system and optimizer (the single optimizer state of the window
   start: Adam's moments belong to the rollout only) applies them: θ'_{s+1} = Opt_s(θ'_s, g_s) — learning rate
   of step s, gradient clipping as the step does, ``optimizer.step``, then ``system.after_step(s)``;
3. e_s = 10⁶·Σ‖θ'_{s+1} − θ_{s+1}‖²/#params over the parameters (buffers such as the occupancy grid and the
   densification statistics left out, as the paper leaves out occupancy grids). θ'_{b+1} is always right (g_b
   was taken at the exact θ_b), so every round advances ≥ 1 step; steps are accepted up to and including the
   first s with e_s > τ (``run.picard.threshold``): θ'_{s+1} used the gradient at a guess that agreed. The
   accepted steps are the run's steps — logging, validation and checkpoints happen at them, as the sequential
   loop does, with the trainer's system holding exactly that state. The rollout then goes on to the window's
   end to give the next guesses (stale gradients: the Picard iteration), and the system and optimizer go back
   to the new start's state;
4. the window slides to [ind, ind + P): slots from the rollout, new tail slots copies of its last state.
   ``run.picard.adapt`` (median or mean, off by default): τ ← ema·τ + (1 − ema)·agg(finite e of the round).

``threshold: 0`` (with ``adapt: none``) accepts a guess only when it equals the rollout bit for bit, parameters
*and* buffers (a gradient taken with a stale occupancy grid is not the sequential one), so the run is the
step-seeded sequential run exactly (the test), in about one step per round (more where a step leaves the state
as it was, e.g. a zero gradient). With a threshold > 0 the buffers are left out of the comparison, as in the
paper. Changes of size: Gaussian densification happens in the
rollout's ``after_step`` (the optimizer surgery edits the rollout's Adam state; the screen-space gradient
statistics it needs come back from the gradient's evaluation with it); a guess whose shapes differ from the
rollout's counts as an infinite error, and the rollout's look-ahead stops where a gradient no longer fits.
The after-step draws of a step come from a stream of their own (``seed_step(.., AFTER_STEP)``), in the
sequential step-seeded run and here alike, so the rollout's ``after_step`` draws exactly what the sequential
step would. Checkpoints hold the accepted state; a resumed run restarts the window at the checkpointed step with
every guess equal to it, and at threshold 0 ends as an uninterrupted run does.

Counts: ``Trainer.picard_rounds`` and ``picard_gradient_evals`` (checkpointed; metrics.json's
``picard_rounds``/``picard_gradient_evals``). The prior's call counters add up the evaluations' calls.

Limits: fp16 (its loss scale is state of the sequential step) and systems with optimizers of their own inside the
step (VSD's LoRA) are refused. A system's step must be a function of its trainable modules' state, the step and
the generator. Bit-identity across processes needs the same kernels and thread count: each worker uses
``run.threads`` or this process's torch thread count. The worker processes re-import dreamcore (spawn): start
Picard runs from a script guarded by ``if __name__ == "__main__"`` or the CLI.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from dreamcore.errors import DreamcoreError

State = dict[str, dict[str, torch.Tensor]]  # trainable module name → its state_dict (parameters and buffers)


# -- the state of a slot -------------------------------------------------------------------------------------------
def snapshot(system) -> State:
    """The trainable modules' parameters and buffers, cloned (a guess of the trajectory)."""
    return {name: {k: v.detach().clone() for k, v in mod.state_dict().items()}
            for name, mod in system.trainable_modules().items()}


def load_state(system, state: State) -> None:
    for name, mod in system.trainable_modules().items():
        device = next((t.device for t in mod.state_dict().values()), None)
        sd = state[name] if device is None else {k: v.to(device) for k, v in state[name].items()}
        mod.load_state_dict(sd)


def parameter_names(system) -> dict[str, set[str]]:
    return {name: {k for k, _ in mod.named_parameters()} for name, mod in system.trainable_modules().items()}


def fixed_point_error(rollout: State, guess: State, params: dict[str, set[str]], exact: bool) -> float:
    """DreamPropeller's e = 10⁶·Σ‖θ' − θ‖²/#params over the parameters; inf when any shape differs (a changed
    number of Gaussians) or a value is not finite; with ``exact`` (threshold 0) also inf when any buffer differs."""
    total, count = 0.0, 0
    for name, sd in rollout.items():
        other = guess[name]
        if sd.keys() != other.keys():
            return math.inf
        for k, a in sd.items():
            b = other[k]
            if a.shape != b.shape or a.dtype != b.dtype:
                return math.inf
            if k in params[name]:
                total += float((a.double() - b.to(a.device).double()).square().sum())
                count += a.numel()
            elif exact and not torch.equal(a, b.to(a.device)):
                return math.inf
    e = 1e6 * total / max(count, 1)
    return e if math.isfinite(e) else math.inf


# -- one gradient evaluation ------------------------------------------------------------------------------------------
@dataclass
class Gradient:
    """What step ``step``'s evaluation at a guess hands the rollout."""

    step: int
    grads: dict[str, dict[str, Optional[torch.Tensor]]]  # module → parameter name → gradient (None: no gradient)
    losses: dict[str, torch.Tensor]
    carry: dict[str, Any] = field(default_factory=dict)  # what after_step reads from the training step


def evaluate(trainer, step: int, state: State) -> Gradient:
    """∇L(θ; ξ_step) at ``state``, on ``trainer``'s system (a second trainer: never the rollout's), drawing what
    the sequential step ``step`` draws (:meth:`Trainer.train_step` up to the backward)."""
    from dreamcore.rng import seed_step

    system = trainer.system
    load_state(system, state)
    seed_step(trainer.generator, trainer.cfg.run.seed, step)
    cameras = trainer.sample_cameras()
    with trainer.precision.autocast():
        losses = system.training_step(cameras, step, trainer.generator)
    loss = sum(losses.values())
    modules = system.trainable_modules()
    for mod in modules.values():
        for p in mod.parameters():
            p.grad = None
    trainer.precision.backward(loss)
    grads = {name: {k: (None if p.grad is None else p.grad.detach().clone()) for k, p in mod.named_parameters()}
             for name, mod in modules.items()}
    for mod in modules.values():
        for p in mod.parameters():
            p.grad = None
    return Gradient(step, grads, {k: v.detach() for k, v in losses.items()}, system.take_carry())


def _to_cpu(g: Gradient) -> Gradient:
    def cpu(x):
        return x.cpu() if torch.is_tensor(x) else x

    return Gradient(g.step, {n: {k: cpu(v) for k, v in d.items()} for n, d in g.grads.items()},
                    {k: cpu(v) for k, v in g.losses.items()}, {k: cpu(v) for k, v in g.carry.items()})


# -- evaluators: this process, or worker processes ------------------------------------------------------------------
def _shadow_trainer(trainer_cls, cfg, run_path: str, threads: int, device: Optional[str] = None):
    """A second trainer (of the run's own trainer class, handed down: this module does not import the trainer,
    which imports it) of the same config, with its own system and prior, used only to evaluate gradients."""
    import dataclasses

    from dreamcore.runner.rundir import RunDir
    from pathlib import Path

    if device is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, device=device))
    torch.set_num_threads(threads)
    return trainer_cls(cfg, RunDir(Path(run_path)), resume=False)


class LocalEvaluator:
    """``workers: 0``: the window's gradients one after another, on a second system in this process."""

    def __init__(self, trainer_cls, cfg, run_path: str) -> None:
        threads = torch.get_num_threads()
        rng_state = torch.get_rng_state()  # (building a trainer seeds torch's global generator)
        self.trainer = _shadow_trainer(trainer_cls, cfg, run_path, threads)
        torch.set_rng_state(rng_state)

    def gradients(self, jobs: list[tuple[int, State]]) -> list[Gradient]:
        return [evaluate(self.trainer, step, state) for step, state in jobs]

    def prior_counts(self) -> tuple[int, int]:
        prior = self.trainer.system.prior
        return prior.denoiser_calls, prior.denoised_rows

    def close(self) -> None:
        return None


def _worker(index: int, trainer_cls, tree: dict, run_path: str, threads: int, device: Optional[str], tasks,
            results) -> None:
    """A worker process: build the system once, then evaluate (step, state) jobs until told to stop (None)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it saves and stops)
    try:
        from dreamcore.config import load_config

        trainer = _shadow_trainer(trainer_cls, load_config(base=tree), run_path, threads, device)
        results.put(("ready", None, None))
    except BaseException:  # noqa: BLE001 (reported to the main process)
        results.put(("error", None, traceback.format_exc()))
        return
    while True:
        job = tasks.get()
        if job is None:
            return
        step, state = job
        try:
            g = _to_cpu(evaluate(trainer, step, state))
            prior = trainer.system.prior
            results.put(("gradient", g, (index, prior.denoiser_calls, prior.denoised_rows)))
        except BaseException:  # noqa: BLE001
            results.put(("error", step, traceback.format_exc()))


class ProcessEvaluator:
    """``workers: N``: N spawned processes, each with its own system and prior (one GPU each when there are GPUs),
    fed the window's (step, guess) jobs through one queue."""

    def __init__(self, trainer_cls, cfg, run_path: str, workers: int, device: torch.device) -> None:
        from dreamcore.config import to_tree

        ctx = torch.multiprocessing.get_context("spawn")
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        threads = cfg.run.threads if cfg.run.threads > 0 else torch.get_num_threads()
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        self.procs = []
        self.counts: dict[int, tuple[int, int]] = {}  # worker → its prior's (calls, rows) so far
        tree = to_tree(cfg)
        for i in range(workers):
            dev = f"cuda:{i % gpus}" if gpus else None
            p = ctx.Process(target=_worker, args=(i, trainer_cls, tree, run_path, threads, dev, self.tasks,
                                                  self.results),
                            daemon=True, name=f"dreamcore-picard-{i}")
            p.start()
            self.procs.append(p)
        for _ in self.procs:
            kind, _, text = self._get()
            if kind == "error":
                self.close()
                raise DreamcoreError(f"a run.picard worker failed to start:\n{text}")

    def _get(self, timeout: float = 600.0):
        import queue

        while True:
            try:
                return self.results.get(timeout=timeout)
            except queue.Empty:
                if not all(p.is_alive() for p in self.procs):
                    raise DreamcoreError("a run.picard worker process died") from None

    def gradients(self, jobs: list[tuple[int, State]]) -> list[Gradient]:
        for step, state in jobs:
            self.tasks.put((step, {n: {k: v.cpu() for k, v in sd.items()} for n, sd in state.items()}))
        out: dict[int, Gradient] = {}
        error = None
        for _ in jobs:
            kind, g, extra = self._get()
            if kind == "error":
                error = error or f"step {g}:\n{extra}"
                continue
            out[g.step] = g
            worker, calls, rows = extra
            self.counts[worker] = (calls, rows)
        if error:
            raise DreamcoreError(f"a run.picard worker failed at {error}")
        return [out[step] for step, _ in jobs]

    def prior_counts(self) -> tuple[int, int]:
        """The workers' priors' (calls, rows), each as its latest report said."""
        return sum(c for c, _ in self.counts.values()), sum(r for _, r in self.counts.values())

    def close(self) -> None:
        for _ in self.procs:
            try:
                self.tasks.put(None)
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


# -- the loop -------------------------------------------------------------------------------------------------------
def check_supported(trainer) -> None:
    cfg = trainer.cfg
    if cfg.run.precision == "fp16":
        raise DreamcoreError("run.picard needs run.precision fp32 or bf16 (fp16's loss scale is state of the "
                             "sequential step)")
    if trainer.system.extra_optimizers():
        raise DreamcoreError(f"run.picard: system '{cfg.system.name}' steps optimizers of its own inside the step "
                             f"({', '.join(trainer.system.extra_optimizers())}); Picard cannot replay them")


def _apply_gradient(trainer, g: Gradient) -> bool:
    """The rollout's step ``g.step`` from the gradient ``g``: False (nothing changed) when a gradient's shape no
    longer fits its parameter (the rollout's Gaussians were densified after the guess)."""
    from dreamcore.rng import AFTER_STEP, seed_step

    modules = trainer.system.trainable_modules()
    pairs = []
    for name, mod in modules.items():
        for k, p in mod.named_parameters():
            grad = g.grads[name].get(k)
            if grad is not None and grad.shape != p.shape:
                return False
            pairs.append((p, grad))
    trainer._set_learning_rate(g.step)
    for p, grad in pairs:
        p.grad = None if grad is None else grad.to(p.device)
    if trainer.cfg.optimizer.grad_clip > 0:
        trainer.precision.unscale(trainer.optimizer)
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, trainer.cfg.optimizer.grad_clip)
    trainer.precision.step(trainer.optimizer)
    seed_step(trainer.generator, trainer.cfg.run.seed, g.step, AFTER_STEP)
    trainer.system.give_carry(g.carry)
    trainer.system.after_step(g.step, trainer.generator)
    for p, _ in pairs:
        p.grad = None
    return True


def run_picard(trainer, bar) -> None:
    """Run ``trainer`` from its step to ``run.steps`` in Picard rounds (see the module docstring); returns early,
    with the trainer at an accepted state, when a stop was requested."""
    import copy

    cfg = trainer.cfg.run
    pc = cfg.picard
    check_supported(trainer)
    shadow = type(trainer)  # (pickled by name for the worker processes)
    evaluator = (ProcessEvaluator(shadow, trainer.cfg, str(trainer.run.path), pc.workers, trainer.device)
                 if pc.workers > 0 else LocalEvaluator(shadow, trainer.cfg, str(trainer.run.path)))
    system = trainer.system
    params = parameter_names(system)
    tau = pc.threshold
    exact = pc.threshold == 0 and pc.adapt == "none"
    prior = system.prior
    seen = evaluator.prior_counts()  # the evaluators' own prior counts so far
    guesses: list[State] = []
    try:
        while trainer.step < cfg.steps and not trainer._stop_requested:
            t0 = time.perf_counter()
            b = trainer.step
            p_len = min(pc.window, cfg.steps - b)
            start = snapshot(system)
            guesses = [start] + guesses[1:p_len]
            guesses += [guesses[-1]] * (p_len - len(guesses))
            grads = evaluator.gradients([(b + i, guesses[i]) for i in range(p_len)])
            trainer.picard_rounds += 1
            trainer.picard_gradient_evals += p_len
            # the rollout: accept while the guesses agree, then look ahead for the next guesses
            accepting, accepted = True, 0
            rollout: list[State] = []
            errors: list[float] = []
            saved = None
            for i, g in enumerate(grads):
                if not _apply_gradient(trainer, g):
                    break  # (only past the accepted steps: a densified rollout, guesses of the old size)
                state = snapshot(system)
                rollout.append(state)
                if i + 1 < p_len:
                    e = fixed_point_error(state, guesses[i + 1], params, exact)
                    errors.append(e)
                    disagree = e > 0 if exact else not e <= tau
                else:
                    disagree = False
                if accepting:
                    accepted += 1
                    _accept(trainer, g, bar)
                    if disagree or i + 1 == p_len:
                        accepting = False
                        if i + 1 < p_len:  # the state to go back to after the look-ahead
                            saved = (state, copy.deepcopy(trainer.optimizer.state_dict()))
            if saved is not None:
                load_state(system, saved[0])
                trainer.optimizer.load_state_dict(saved[1])
                system.take_carry()  # (the look-ahead's render is dropped)
            # the next window's guesses: the rollout from the new start on, then copies of its last state
            guesses = rollout[accepted - 1:]
            if pc.adapt != "none":
                finite = [e for e in errors if math.isfinite(e)]
                if finite:
                    agg = statistics.median(finite) if pc.adapt == "median" else sum(finite) / len(finite)
                    tau = pc.ema * tau + (1 - pc.ema) * agg
            trainer.seconds += time.perf_counter() - t0
            seen = _add_prior_counts(evaluator, prior, seen)
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
                trainer.run.log(f"picard round {trainer.picard_rounds}: steps {b}..{trainer.step} "
                                f"({accepted}/{p_len} accepted, threshold {tau:.4g})")
    except Exception:
        trainer.check_finite()
        raise
    finally:
        evaluator.close()


def _accept(trainer, g: Gradient, bar) -> None:
    """Step ``g.step`` of the run is done (the trainer's system holds its state): count it and do what the
    sequential loop does after a step (logging, validation, checkpoint)."""
    loss = sum(g.losses.values())
    loss = loss.to(trainer._first_bad.device) if torch.is_tensor(loss) else torch.tensor(float(loss))
    trainer._first_bad = torch.where((trainer._first_bad < 0) & ~torch.isfinite(loss), g.step + 1,
                                     trainer._first_bad)
    trainer.step = g.step + 1
    trainer._after_step({k: v.to(trainer._first_bad.device) for k, v in g.losses.items()}, bar)


def _add_prior_counts(evaluator, prior, seen: tuple[int, int]) -> tuple[int, int]:
    """Add the prior calls the evaluations made since the last round to the run's own counters."""
    now = evaluator.prior_counts()
    prior.denoiser_calls += now[0] - seen[0]
    prior.denoised_rows += now[1] - seen[1]
    return now
