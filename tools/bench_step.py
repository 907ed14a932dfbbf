"""Step-time benchmark (issue 17 §3): seconds per optimization step of a recipe's default step on this machine, for
this tree and, with ``--against REV``, another commit of the project checked out beside it (``git worktree``),
measured alternately in one invocation so that both see the same machine; the ratio of the two is the speed-up.
For this tree it also splits the step into its parts.

**Settings** (``--settings``):

* ``reference-nerf``: ``configs/demo.yaml`` — ``make demo``'s step (hash-grid NeRF, volume renderer, SDS against the
  closed-form reference prior of ``assets/robot.glb``, 4 views × 256 rays);
* ``reference-gaussians``: ``configs/reference-gaussians.yaml`` without its mesh stage (``refine.config=``).

**A measurement** is a fresh process that builds the recipe's trainer (run folder in a temporary directory) and
times ``--steps`` optimization steps from step 0 (default: the recipe's ``run.steps``, i.e. the whole run's average,
as ``metrics.json``'s ``seconds_per_step`` reports it; validation, checkpoints and export are not timed). Each tree
is measured ``--rounds`` times, the trees alternating; the report gives each tree's median s/step and, with a
baseline, ``baseline / this`` — above 1 means this tree is faster. The process is the same script for both trees:
it imports the tree's own ``dreamcore`` (``PYTHONPATH``) and uses only the trainer's long-standing interface
(``load_config``, ``config_path``, ``Trainer``, ``train_step``).

**Parts** (this tree only): wall clock spent in the system's ``render_training`` (marching, field queries,
compositing), the guidance's forward (with its prior's evaluations), the backward pass, the optimizer step and the
system's ``after_step`` (occupancy-grid updates, densification); "other" is the rest of ``train_step`` (cameras,
learning rates, bookkeeping). The parts are measured in separate processes from the timed runs, so the timers'
own cost never enters the s/step figures.

**The report** ``--out`` (default ``bench/step.md``, with ``.json``); ``--docs PAGE`` also rewrites the page's
``bench_step`` section.

    .venv/bin/python tools/bench_step.py --against 3e1eb48 --docs docs/benchmarks.md
    .venv/bin/python tools/bench_step.py --settings reference-gaussians --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS: dict[str, tuple[str, list[str]]] = {
    "reference-nerf": ("demo", []),
    "reference-gaussians": ("reference-gaussians", ["refine.config="]),
}
PARTS = ("render", "guidance", "backward", "optimizer", "after_step")


# -- the measuring process (runs against whichever tree PYTHONPATH names) --------------------------------------------
def _timed(parts: dict[str, float], name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts[name] += time.perf_counter() - t0

    return wrapper


def measure(setting: str, steps: int, threads: int, seed: int, parts: bool) -> dict:
    """Build the setting's trainer and time ``steps`` steps from step 0 (``steps`` ≤ 0: the recipe's own)."""
    import torch

    import dreamcore
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    name, overrides = SETTINGS[setting]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config_path(name), [*overrides, f"run.dir={tmp}", "run.progress=false",
                                              f"run.threads={threads}", f"run.seed={seed}"])
        trainer = Trainer(cfg, RunDir(Path(tmp)))
        n = steps if steps > 0 else cfg.run.steps
        spent = dict.fromkeys(PARTS, 0.0)
        if parts:
            system = trainer.system
            system.render_training = _timed(spent, "render", system.render_training)
            system.guidance.forward = _timed(spent, "guidance", system.guidance.forward)
            system.after_step = _timed(spent, "after_step", system.after_step)
            trainer.precision.backward = _timed(spent, "backward", trainer.precision.backward)
            trainer.precision.step = _timed(spent, "optimizer", trainer.precision.step)
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(n):
            trainer.train_step(step)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"setting": setting, "steps": n, "seconds": seconds, "s_per_step": seconds / max(n, 1),
           "cpu_s_per_step": cpu / max(n, 1),
           "threads": torch.get_num_threads(), "source": str(Path(dreamcore.__file__).resolve().parents[1])}
    if parts:
        out["parts"] = {k: v / max(n, 1) for k, v in spent.items()}
        out["parts"]["other"] = max(0.0, out["s_per_step"] - sum(out["parts"].values()))
    return out


# -- the driver ---------------------------------------------------------------------------------------------------
def run_measurement(tree: Path, setting: str, steps: int, threads: int, seed: int, parts: bool) -> dict:
    """One measurement in a fresh process importing ``tree``'s dreamcore; its JSON result."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", setting, "--steps", str(steps),
           "--threads", str(threads), "--seed", str(seed)] + (["--parts"] if parts else [])
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measuring {setting} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkout(rev: str, where: Path) -> Path:
    """``rev`` of this repository checked out (detached) at ``where``; the caller removes it with :func:`discard`."""
    proc = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where), rev],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"--against {rev}: git worktree add failed: {proc.stderr.strip()}")
    return where


def discard(where: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], capture_output=True)


def commit_of(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def benchmark(settings: list[str], against: str | None, steps: int, rounds: int, threads: int, seed: int,
              parts: bool = True) -> dict:
    """Every setting's measurements, the trees alternating round by round; the parts from one extra run."""
    report = {"machine_threads": threads, "rounds": rounds, "this": commit_of(ROOT), "against": against,
              "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("this", ROOT)]
        if against:
            trees.append(("baseline", checkout(against, Path(tmp) / "baseline")))
        try:
            for setting in settings:
                runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
                for r in range(rounds):
                    for label, tree in (trees if r % 2 == 0 else trees[::-1]):
                        runs[label].append(run_measurement(tree, setting, steps, threads, seed, parts=False))
                entry = {label: {"s_per_step": statistics.median(x["s_per_step"] for x in rs),
                                 "cpu_s_per_step": statistics.median(x["cpu_s_per_step"] for x in rs),
                                 "runs": [round(x["s_per_step"], 4) for x in rs], "steps": rs[0]["steps"],
                                 "source": rs[0]["source"]}
                         for label, rs in runs.items()}
                if "baseline" in entry:
                    entry["speedup"] = entry["baseline"]["s_per_step"] / entry["this"]["s_per_step"]
                    entry["cpu_speedup"] = entry["baseline"]["cpu_s_per_step"] / entry["this"]["cpu_s_per_step"]
                if parts:
                    entry["parts"] = run_measurement(ROOT, setting, steps, threads, seed, parts=True)["parts"]
                report["settings"][setting] = entry
        finally:
            if against:
                discard(Path(tmp) / "baseline")
    return report


def markdown(report: dict) -> str:
    against = report["against"]
    lines = ["# Step-time benchmark", "",
             f"Seconds per optimization step of each recipe's default step from step 0 (the whole run's average), on "
             f"{report['machine_threads']} threads, median of {report['rounds']} run(s) per tree, the trees measured "
             f"alternately in one invocation. This tree: `{report['this']}`"
             + (f"; baseline: `{against}` (a worktree of that commit)." if against else ".")
             + " Made by `tools/bench_step.py`.", ""]
    head = "| setting | steps | s/step (this) |" + (" s/step (baseline) | speed-up | CPU-time speed-up |"
                                                       if against else "")
    lines += [head, "|---|---|---|" + ("---|---|---|" if against else "")]
    for setting, e in report["settings"].items():
        row = f"| {setting} | {e['this']['steps']} | {e['this']['s_per_step']:.4f} |"
        if against:
            row += f" {e['baseline']['s_per_step']:.4f} | {e['speedup']:.2f}× | {e['cpu_speedup']:.2f}× |"
        lines.append(row)
    if against:
        lines += ["", "CPU-time speed-up: the same ratio of the processes' CPU seconds per step (both threads), which "
                  "a virtual machine's stolen time does not inflate; the wall-clock figures of one machine drift "
                  "by tens of percent within minutes."]
    with_parts = {s: e["parts"] for s, e in report["settings"].items() if "parts" in e}
    if with_parts:
        names = list(PARTS) + ["other"]
        lines += ["", "Where this tree's step goes (ms per step, a separate run with timers on each part):", "",
                  "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for setting, p in with_parts.items():
            lines.append(f"| {setting} | " + " | ".join(f"{1e3 * p[k]:.1f}" for k in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--settings", default="reference-nerf", help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--against", default=None, metavar="REV", help="a commit to measure beside this tree")
    ap.add_argument("--steps", type=int, default=0, help="steps per measurement (default: the recipe's run.steps)")
    ap.add_argument("--rounds", type=int, default=1, help="measurements per tree (the median is reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-parts", action="store_true", help="skip the run that splits this tree's step into parts")
    ap.add_argument("--out", default=str(ROOT / "bench" / "step.md"))
    ap.add_argument("--docs", default=None, metavar="PAGE", help="also rewrite this page's bench_step section")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the measuring process
    ap.add_argument("--parts", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.steps, args.threads, args.seed, args.parts)))
        return
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    report = benchmark(settings, args.against, args.steps, args.rounds, args.threads, args.seed, not args.no_parts)
    text = markdown(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(text)
    if args.docs:
        sys.path.insert(0, str(ROOT / "tools"))
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_step", text)


if __name__ == "__main__":
    main()
