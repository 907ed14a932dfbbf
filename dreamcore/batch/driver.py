"""``dreamcore batch``: expand the prompts into jobs, hand the unfinished ones to a backend, report progress,
and write batch.json / batch.md / batch.png. The run folders and ``.batch/results`` are the only state."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from dreamcore.batch.jobs import Job, Line, expand_jobs, read_prompts, read_spec, write_spec
from dreamcore.batch.report import progress_line, write_reports
from dreamcore.batch.worker import attempts, base_record, read_result
from dreamcore.errors import DreamcoreError

BACKEND_KEYS = ("backend", "ray_address", "gpus_per_job", "cpus_per_job", "retries")
DEFAULTS = {"backend": "local", "ray_address": None, "gpus_per_job": 1, "cpus_per_job": 0, "retries": 3}


def make_spec(prompts_file: str, config: str, overrides: list[str], seeds: list[int] | None, options: dict) -> dict:
    lines = read_prompts(prompts_file)
    return {"config": config, "overrides": overrides, "seeds": seeds, "prompts": [asdict(x) for x in lines],
            **{k: options.get(k) if options.get(k) is not None else DEFAULTS[k] for k in BACKEND_KEYS}}


def resume_spec(out: Path, options: dict) -> dict:
    """The spec saved in a batch folder, with the backend options given again on the command line."""
    spec = read_spec(out)
    return {**spec, **{k: v for k, v in options.items() if k in BACKEND_KEYS and v is not None}}


def make_backend(spec: dict):
    if spec["backend"] == "local":
        from dreamcore.batch.local import LocalBackend

        return LocalBackend(spec["gpus_per_job"], spec["cpus_per_job"], spec["retries"])
    if spec["backend"] == "ray":
        from dreamcore.batch.ray_backend import RayBackend

        return RayBackend(spec["ray_address"], spec["gpus_per_job"], spec["cpus_per_job"] or 1, spec["retries"])
    raise DreamcoreError(f"unknown backend {spec['backend']!r} (choose local or ray)")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` (0 ≤ I < N): this invocation runs jobs I, I+N, I+2N, ... (e.g. one SLURM array task each)."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DreamcoreError(f"--shard takes I/N (e.g. 3/10 or $SLURM_ARRAY_TASK_ID/10), got {text!r}") from None
    if not 0 <= i < n:
        raise DreamcoreError(f"--shard {text}: I must be in 0..N-1")
    return i, n


def run_batch(spec: dict, out: str | Path, announce=print, every_s: float = 10.0,
              shard: tuple[int, int] | None = None) -> dict:
    """Run every job of ``spec`` in ``out`` (skipping finished ones; with ``shard`` (I, N) only every N-th from
    the I-th); returns the summary written to batch.json, which lists every job of the batch."""
    out = Path(out)
    if spec["retries"] < 0:
        raise DreamcoreError(f"--retries must be 0 or more, got {spec['retries']}")
    jobs = expand_jobs([Line(**x) for x in spec["prompts"]], spec["config"], spec["overrides"], spec["seeds"], out)
    backend = make_backend(spec)  # a missing Ray fails before anything is written
    write_spec(out, spec)
    records: dict[str, dict | None] = {j.name: None for j in jobs}
    mine = jobs if shard is None else jobs[shard[0]::shard[1]]
    for job in jobs:
        rec = read_result(job)
        if rec is not None and rec.get("status") == "done":
            records[job.name] = {**rec, "skipped": True}
        elif rec is not None and job not in mine:  # another shard's failure: reported, not rerun here
            records[job.name] = rec
    todo = [j for j in mine if records[j.name] is None]
    tried_before = {j.name: attempts(j) for j in todo}  # a job runs once its worker logs a new attempt

    def running(job: Job) -> bool:
        return records[job.name] is None and attempts(job) > tried_before.get(job.name, 0)

    part = f", shard {shard[0]}/{shard[1]}: {len(mine)} of them here" if shard else ""
    announce(f"batch: {len(jobs)} jobs in {out}{part} ({len(mine) - len(todo)} finished before), {backend.where}")
    t0 = time.perf_counter()
    durations: list[float] = []
    last = {"line": "", "at": 0.0}
    summary = {"out": str(out), "config": spec["config"], "backend": spec["backend"]}

    def counts() -> dict[str, int]:
        c = {"done": 0, "failed": 0, "running": 0, "queued": 0}
        for job in jobs:
            rec = records[job.name]
            if rec is not None and rec["status"] in ("done", "failed"):
                c[rec["status"]] += 1
            elif running(job):
                c["running"] += 1
            else:
                c["queued"] += 1
        return c

    def done(rec: dict) -> None:
        records[rec["name"]] = rec
        if not rec.get("skipped"):
            durations.append(float(rec.get("seconds") or 0.0))
        what = f"{rec['status']} in {rec.get('seconds', 0):.0f} s" + (f": {rec['error']}" if rec.get("error") else "")
        announce(f"job {rec['name']}: {what}")
        write_reports_now(final=False)

    def tick() -> None:
        c = counts()
        left = c["running"] + c["queued"]
        eta = sum(durations) / len(durations) * -(-left // max(backend.slots, 1)) if durations and left else None
        line = progress_line(c, eta)
        now = time.perf_counter()
        if line.split(", ETA")[0] != last["line"].split(", ETA")[0] or now - last["at"] > every_s:
            announce(line)
            last.update(line=line, at=now)

    def write_reports_now(final: bool) -> dict:
        listed = [records[j.name] or {**base_record(j), "status": "running" if running(j) else "queued"}
                  for j in jobs]
        c = counts()
        summary.update(jobs_total=len(jobs), done=c["done"], failed=c["failed"],
                       seconds=round(time.perf_counter() - t0, 1), finished=final)
        write_reports(out, listed, summary, sheet=final)
        return summary

    if todo:
        try:
            backend.run(todo, done, tick)
        except KeyboardInterrupt:  # (the local backend's jobs have saved their checkpoints and stopped)
            summary["interrupted"] = True
            write_reports_now(final=True)
            raise
    result = write_reports_now(final=True)
    announce(progress_line(counts(), None))
    announce(f"batch report: {out / 'batch.md'}, contact sheet {out / 'batch.png'}")
    return result
