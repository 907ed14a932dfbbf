"""Run one batch job in this process: skip it when finished, resume it from its checkpoint when started, else
start it. A stop on request (SIGINT, SIGTERM) saves the checkpoint and is recorded as ``interrupted``. Deterministic failures (bad input, a non-finite loss, a bug) are returned as a ``failed`` record, never
raised, so no backend retries them; only a dying process (SIGKILL, a lost node) makes a job run again.

``python -m dreamcore.batch.worker JOB_JSON [--threads N]`` is the local backend's job process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from dreamcore.batch.jobs import Job
from dreamcore.errors import DreamcoreError, RunInterrupted, storage_problem
from dreamcore.files import atomic_write_bytes

STATE_DIR = ".batch"  # inside the batch folder: results/<job>.json and attempts/<job>.log
BUSY_WAIT_S = 600.0  # a job folder still locked (a killed driver's worker winding down) is waited for this long
# metrics.json entries that are not figures of the asset
NOT_FIGURES = ("steps", "export", "stage1", "refine_dir")


def result_path(job: Job) -> Path:
    return Path(job.dir).parent / STATE_DIR / "results" / f"{job.name}.json"


def attempts_path(job: Job) -> Path:
    return Path(job.dir).parent / STATE_DIR / "attempts" / f"{job.name}.log"


def read_result(job: Job) -> dict | None:
    """The job's recorded result, if it has one and (for a finished job) its metrics.json is still there."""
    path = result_path(job)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("status") == "done" and not (Path(job.dir) / "metrics.json").is_file():
        return None
    return rec


def attempts(job: Job) -> int:
    try:
        return len(attempts_path(job).read_text().splitlines())
    except OSError:
        return 0


def base_record(job: Job) -> dict:
    """What every record of ``job`` says (an edit's names its source run too)."""
    return {"name": job.name, "prompt": job.prompt, "seed": job.seed, "dir": job.dir,
            **({"edit": job.edit} if job.edit else {})}


def figures(metrics: dict) -> dict:
    """The scalar figures of a metrics.json (scores and timings), without the export's file list."""
    return {k: v for k, v in metrics.items() if k not in NOT_FIGURES and isinstance(v, (int, float, bool, type(None)))}


def run_job(job: Job | dict, threads: int = 0, announce=lambda *_: None, busy_wait_s: float = BUSY_WAIT_S) -> dict:
    """Run ``job`` to its end here and return its record ({name, prompt, seed, dir, status, seconds, steps,
    metrics, error, attempts, resumed_from}); the record is also written to ``.batch/results/<job>.json``."""
    from dreamcore.runner.generate import generate
    from dreamcore.runner.rundir import RunBusyError, RunDir

    job = Job(**job) if isinstance(job, dict) else job
    previous = read_result(job)
    if previous is not None and previous.get("status") == "done":
        return {**previous, "skipped": True}
    path = attempts_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}\n")
    rec = {**base_record(job), "attempts": attempts(job)}
    t0 = time.perf_counter()
    deadline = time.monotonic() + busy_wait_s
    while True:
        run = RunDir(Path(job.dir))
        resume = run.has_checkpoint()
        rec["resumed_from"] = _checkpoint_step(run) if resume else 0
        try:
            cfg = job.load()
            if threads > 0:
                cfg.run.threads = threads
            generate(cfg, resume=resume, announce=announce)
            break
        except RunBusyError as e:  # still held by a dying process of an earlier attempt: wait for the kernel
            if time.monotonic() > deadline:
                return _finish(job, {**rec, "status": "failed", "error": str(e)}, t0)
            time.sleep(0.5)
        except RunInterrupted as e:  # stopped on request, checkpoint saved: the next invocation resumes it
            return _finish(job, {**rec, "status": "interrupted", "error": str(e)}, t0)
        except DreamcoreError as e:
            return _finish(job, {**rec, "status": "failed", "error": str(e)}, t0)
        except Exception as e:  # noqa: BLE001 - a full disk or a bug fails this job, reported, not the batch
            problem = storage_problem(e) if isinstance(e, OSError) else None
            if problem is not None:
                where = f" {e.filename}" if e.filename else ""
                error = (f"could not write{where}: {problem}; the job's checkpoints are kept, fix the storage and "
                         "run the batch again")
            else:
                error = f"internal error: {type(e).__name__}: {e}"
                if Path(job.dir).is_dir():
                    RunDir(Path(job.dir)).log("batch: job failed with an internal error:\n" + traceback.format_exc())
            return _finish(job, {**rec, "status": "failed", "error": error}, t0)
    metrics = json.loads((Path(job.dir) / "metrics.json").read_text())
    return _finish(job, {**rec, "status": "done", "steps": metrics.get("steps"), "metrics": figures(metrics)}, t0)


def _checkpoint_step(run) -> int:
    """The step of the checkpoint a resume will start from (0 when none is good)."""
    from dreamcore.runner.checkpoint import find_good

    found = find_good(run.ckpt_dir)
    return int(found[1].get("step", 0)) if found else 0


def _finish(job: Job, rec: dict, t0: float) -> dict:
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    path = result_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(rec, indent=2).encode())
    return rec


def _stop_before_training(signum, frame) -> None:  # noqa: ARG001
    raise RunInterrupted("stopped on request before the optimization started")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamcore.batch.worker")
    p.add_argument("job", help="the job as JSON")
    p.add_argument("--threads", type=int, default=0)
    ns = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="dreamcore: %(levelname)s: %(message)s")  # as the CLI shows it
    signal.signal(signal.SIGTERM, _stop_before_training)  # the trainer takes SIGTERM over once it optimizes
    rec = run_job(json.loads(ns.job), ns.threads, announce=print)
    return {"done": 0, "interrupted": 4}.get(rec["status"], 3)


if __name__ == "__main__":
    sys.exit(main())
