"""The optimization loop. It reads like the algorithm: sample cameras, take the system's losses, step, repeat,
with validation renders and atomic checkpoints on schedule and exact resume (model, optimizer, step, RNG).

The step never reads a value back to the host (on a GPU each read waits for the queued work): the run's random
draws are made on its device (:class:`dreamcore.rng.RunGenerator`), the losses stay tensors until a logging step
reads them, and a non-finite loss is noted on the device and acted on at the next logging, validation or
checkpoint step — before anything is saved, so the last checkpoint is always a finite state.

``run.step_seeds`` reseeds the generator at each step from (run.seed, step), and apart for the step's
``after_step`` draws, so that a step's draws do not depend on the steps before it; ``run.picard`` (always
step-seeded) runs the same steps in Picard-parallel windows (:mod:`dreamcore.runner.picard`)."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Optional
from pathlib import Path

import torch

from dreamcore.errors import DreamcoreError
from dreamcore.cameras import Cameras, sample_orbit, turntable_cameras
from dreamcore.config import Config
from dreamcore.rng import AFTER_STEP, RunGenerator, integers, seed_step
from dreamcore.runner import checkpoint
from dreamcore.runner.init import build_system, reattach_source
from dreamcore.runner.rundir import RunDir


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: Config, run: RunDir, resume: bool = False) -> None:
        self.cfg, self.run = cfg, run
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        self.device = pick_device(cfg.run.device)
        torch.manual_seed(cfg.run.seed)  # parameter initialization only; training draws from self.generator
        self.system = build_system(cfg)
        self.group = self.system.prior.views_per_sample  # views of one object the prior denoises jointly
        if cfg.camera.batch_size % self.group:
            raise DreamcoreError(f"camera.batch_size={cfg.camera.batch_size}: the prior denoises groups of "
                                 f"{self.group} views of one object, so the batch must be a multiple of "
                                 f"{self.group} (e.g. camera.batch_size={self.group})")
        if not resume:  # a resumed run has its own state in its checkpoint
            if cfg.init.from_run:
                self._initialize_from(cfg.init.from_run)
            else:
                self.system.initialize()
        else:  # ... but an edit gets its frozen source back (System.keeps_source)
            reattach_source(self.system, cfg)
        for mod in self.system.trainable_modules().values():
            mod.to(self.device)
        groups = [g for g in self.system.parameter_groups() if g["params"]]
        o = cfg.optimizer
        # fp16 on CUDA: the fused Adam unscales on the device, so the loss scale never reads a flag back
        fused = {"fused": True} if cfg.run.precision == "fp16" and self.device.type == "cuda" else {}
        self.optimizer = torch.optim.Adam(groups, lr=o.lr(0), betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                          **fused)
        self.system.attach_optimizer(self.optimizer)  # systems that edit its state (Gaussian densification)
        self.generator = RunGenerator(self.device, cfg.run.seed)
        self.view_set = self._view_set()
        self.precision = Precision(cfg.run.precision, self.device)
        self.step = 0
        self.recovered = ""
        self._saved_step = -1  # the step whose state ckpt/last.safetensors holds, when this process knows it
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step
        if resume:
            meta = checkpoint.load_checkpoint(run.ckpt_dir, self.system.trainable_modules(), self.optimizer,
                                              self.generator, self._extra_optimizers())
            self.step = int(meta["step"])
            self.recovered = meta.get("recovered", "")  # a damaged last checkpoint: the user is told
            self._saved_step = -1 if self.recovered else self.step
            # the prior evaluations of the steps up to the checkpoint: a resumed run reports the run's total
            self.system.prior.denoiser_calls = int(meta.get("prior_calls", 0))
            self.system.prior.denoised_rows = int(meta.get("prior_rows", 0))
        self._stop_requested = False
        self.seconds = 0.0
        # run.step_seeds (always with run.picard): every step draws from (run.seed, step) alone
        self.step_seeded = cfg.run.step_seeds or cfg.run.picard.window > 0
        self.picard_rounds = int(meta.get("picard_rounds", 0)) if resume else 0  # run.picard's counts
        self.picard_gradient_evals = int(meta.get("picard_gradient_evals", 0)) if resume else 0

    def _initialize_from(self, run_dir: str) -> None:
        from dreamcore.runner.init import load_run_system

        self.system.initialize_from(load_run_system(run_dir))

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg.run
        if self.step >= cfg.steps:
            return
        bar = self._progress()
        # Ctrl-C, and SIGTERM (a scheduler's preemption, scancel, a batch driver that died): finish the step, save
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)} \
            if _main_thread() else {}
        try:
            if cfg.picard.window > 0:  # DreamPropeller's Picard-parallel loop: the same steps, accepted in windows
                from dreamcore.runner.picard import run_picard

                run_picard(self, bar)
            while self.step < cfg.steps and not self._stop_requested:
                t0 = time.perf_counter()
                try:
                    losses = self.train_step(self.step)
                except Exception:
                    self.check_finite()  # a NaN state fails in odd ways a few steps on: say what happened first
                    raise
                self.step += 1
                self.seconds += time.perf_counter() - t0
                self._after_step(losses, bar)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        if self._saved_step != self.step:  # (saving the same state again would push the fallback out)
            self.save()
        if self._stop_requested:
            from dreamcore.errors import RunInterrupted

            raise RunInterrupted(
                f"interrupted at step {self.step}/{cfg.steps}; checkpoint saved. Resume with: "
                f"dreamcore generate --resume {self.run.path}"
            )

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimization step; returns the loss terms as detached tensors (read them at logging steps)."""
        if self.step_seeded:
            seed_step(self.generator, self.cfg.run.seed, step)
        self._set_learning_rate(step)
        cameras = self.sample_cameras()
        with self.precision.autocast():
            losses = self.system.training_step(cameras, step, self.generator)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        if self.cfg.optimizer.grad_clip > 0:
            self.precision.unscale(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optimizer.grad_clip)
        self.precision.step(self.optimizer)
        if self.step_seeded:  # the after-step draws (occupancy jitter, split samples) from a stream of their own
            seed_step(self.generator, self.cfg.run.seed, step, AFTER_STEP)
        self.system.after_step(step, self.generator)
        self._first_bad = torch.where((self._first_bad < 0) & ~torch.isfinite(loss.detach()), step + 1,
                                      self._first_bad)
        return {k: v.detach() for k, v in losses.items()}

    def _view_set(self) -> Optional[Cameras]:
        """The fixed training views (``camera.views`` > 0, or what the prior asks for at -1), else None.
        Drawn from their own seeded generator so that a resumed run has the same set."""
        c = self.cfg.camera
        n = c.views
        if n < 0:
            n = self.system.prior.training_views()
        if n == 0:
            return None
        g = torch.Generator().manual_seed(self.cfg.run.seed + 7919)
        return sample_orbit(n, g, c.elevation_range, c.azimuth_range, c.distance_range, c.fov_range,
                            c.uniform_sphere).to(self.device)

    def sample_cameras(self) -> Cameras:
        """The step's cameras: ``camera.batch_size`` random views, or for a multi-view prior batch_size/F random
        anchors each expanded to the F views the prior asks for (:meth:`Prior.view_group`, background shared)."""
        c = self.cfg.camera
        n = c.batch_size // self.group
        if self.view_set is not None:
            cams = self.view_set[integers(0, len(self.view_set), (n,), self.generator)]
        else:
            cams = sample_orbit(n, self.generator, c.elevation_range, c.azimuth_range,
                                c.distance_range, c.fov_range, c.uniform_sphere)
        cams = cams.with_background(self.system.background.sample_training(n, self.generator))
        return self.system.prior.view_group(cams.to(self.device))

    # -- bookkeeping --------------------------------------------------------------------------------------------
    def _set_learning_rate(self, step: int) -> None:
        lr = self.cfg.optimizer.lr(step)
        scales = self.system.lr_scales(step)  # per-group schedules, by group name
        for g in self.optimizer.param_groups:
            g["lr"] = lr * scales.get(g.get("name"), g.get("lr_scale", 1.0))

    def _after_step(self, losses: dict[str, torch.Tensor], bar) -> None:
        cfg = self.cfg.run
        if bar is not None:
            bar.update(1)
        logging = self.step % cfg.log_every == 0 or self.step == cfg.steps
        validating = cfg.val_every > 0 and self.step % cfg.val_every == 0
        saving = cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0
        if not (logging or validating or saving):
            return  # nothing read back: the device runs ahead
        self.check_finite(losses)
        if logging:
            values = {k: float(v) for k, v in losses.items()}
            if bar is not None:
                bar.set_postfix(loss=f"{sum(values.values()):.4g}")
            terms = " ".join(f"{k}={v:.5g}" for k, v in values.items())
            self.run.log(f"step {self.step}/{cfg.steps} {terms} s/step={self.seconds / max(self.step, 1):.3f}")
        if validating:
            self.validate()
        if saving:
            self.save()

    def check_finite(self, losses: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Raise (saving nothing) if any step so far had a non-finite loss: the one host read of the check."""
        bad = int(self._first_bad)
        if bad < 0:
            return

        shown = {k: float(v) for k, v in (losses or {}).items()}
        self.run.log(f"step {bad}: non-finite loss (seen at step {self.step}, latest terms {shown}); "
                     "stopping without saving this state")
        raise DreamcoreError(f"the loss became non-finite at step {bad}; the last good checkpoint is in "
                             f"{self.run.ckpt_dir}. Lower optimizer.lr and resume.")

    def save(self) -> None:
        self.check_finite()
        prior = self.system.prior
        counts = {"seconds": self.seconds, "prior_calls": prior.denoiser_calls, "prior_rows": prior.denoised_rows}
        if self.cfg.run.picard.window > 0:
            counts.update(picard_rounds=self.picard_rounds, picard_gradient_evals=self.picard_gradient_evals)
        checkpoint.save_checkpoint(self.run.ckpt_dir, self.step, self.system.trainable_modules(), self.optimizer,
                                   self.generator, counts, self._extra_optimizers())
        self._saved_step = self.step

    def _extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.system.extra_optimizers()

    @torch.no_grad()
    def validate(self) -> Path:
        """Write ``val/step-NNNNNN.png``: views around the object (rgb over alpha), with references if known."""
        from dreamcore.runner.images import save_grid

        cfg = self.cfg
        res = cfg.run.val_resolution
        d = sum(cfg.camera.distance_range) / 2
        fov = sum(cfg.camera.fov_range) / 2
        cams = turntable_cameras(cfg.run.val_views, 15.0, d, fov, start_azimuth=0.0).to(self.device)
        white = torch.ones(len(cams), 3, device=self.device)
        out = self.system.render_views(cams, res, res, white)
        rows = [out.rgb, out.alpha.expand(-1, -1, -1, 3)]
        prior = self.system.prior
        if prior.reference_assets():
            rows.insert(0, prior.reference_views(cams, res, res, white, obj=prior.reference_object(cfg.prompt))[0])
        return save_grid(self.run.path / "val" / f"step-{self.step:06d}.png", rows)

    def _progress(self):
        if not self.cfg.run.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.run.steps, initial=self.step, desc="optimizing", unit="step", dynamic_ncols=True)

    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_requested = True


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Precision:
    """``run.precision``: autocast of the scene's forward (bf16 or fp16) and, for fp16, a dynamic loss scale
    (``torch.amp.GradScaler``) so that small gradients do not underflow. fp32 is a pass-through."""

    def __init__(self, kind: str, device: torch.device) -> None:
        self.kind, self.device = kind, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind)
        self.scaler = torch.amp.GradScaler(device.type) if kind == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped (on the device) when the scaled gradients overflowed
        self.scaler.update()
