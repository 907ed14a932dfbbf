"""The local backend: each job in its own process (``python -m dreamcore.batch.worker``), one at a time, or one
per visible GPU. A process that dies (a signal, an out-of-memory kill) is started again up to ``retries`` times
and resumes from the job's checkpoint; a job that fails on its own (bad input, a NaN) is not retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from dreamcore.batch.jobs import Job
from dreamcore.batch.worker import STATE_DIR, base_record, read_result


def visible_gpus() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU
        n = 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s for s in listed.split(",") if s.strip()] if listed else [str(i) for i in range(n)]
    return ids[:n]


def die_with_parent() -> None:
    """In the child: get SIGTERM when the batch driver dies (Linux): the job saves its checkpoint and stops, so a
    killed driver leaves no job running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: save, then stop
    except Exception:  # noqa: BLE001 - elsewhere the child finishes its job alone; the lock keeps it safe
        pass


STOP_WAIT_S = 120.0  # a stopping job's time to finish its step and save (then it is killed)


class LocalBackend:
    def __init__(self, gpus_per_job: int = 1, cpus_per_job: int = 0, retries: int = 3):
        gpus = visible_gpus()
        self.groups: list[str | None] = [None]  # CPU: one job at a time
        if gpus and gpus_per_job > 0:
            n = max(1, len(gpus) // gpus_per_job)
            self.groups = [",".join(gpus[i * gpus_per_job:(i + 1) * gpus_per_job]) for i in range(n)]
        self.cpus_per_job = cpus_per_job
        self.retries = retries
        self.slots = len(self.groups)
        self.where = f"local, {self.slots} job(s) at a time" + (f" on GPUs {self.groups}" if gpus else " on CPU")

    def run(self, jobs: list[Job], done, tick) -> None:
        queue = deque(jobs)
        deaths: dict[str, int] = {}
        running: dict[int, tuple[subprocess.Popen, Job, object]] = {}
        free = list(range(self.slots))
        try:
            while queue or running:
                while queue and free:
                    slot = free.pop(0)
                    job = queue.popleft()
                    running[slot] = (*self._start(job, self.groups[slot]),)
                time.sleep(0.2)
                for slot, (proc, job, log) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    log.close()
                    del running[slot]
                    free.append(slot)
                    rec = read_result(job)
                    if rc in (0, 3, 4) and rec is not None:
                        done(rec)
                        continue
                    deaths[job.name] = deaths.get(job.name, 0) + 1
                    how = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
                    if deaths[job.name] <= self.retries:
                        queue.appendleft(job)  # retried at once: it resumes from its checkpoint
                    else:
                        done({**base_record(job), "status": "failed", "attempts": deaths[job.name],
                              "error": f"the job process died {deaths[job.name]} times (last: {how}); "
                                       f"its output is in {self._log_path(job)}"})
                tick()
        finally:  # the driver is stopping (Ctrl-C, SIGTERM): the jobs save their checkpoints and stop
            for proc, _, _ in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc, job, log in running.values():
                try:
                    proc.wait(timeout=STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
                rec = read_result(job)
                if rec is not None and rec.get("status") == "interrupted":
                    done(rec)

    def _log_path(self, job: Job) -> Path:
        return Path(job.dir).parent / STATE_DIR / "logs" / f"{job.name}.txt"

    def _start(self, job: Job, gpus: str | None):
        env = dict(os.environ)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        elif not visible_gpus():
            env.setdefault("CUDA_VISIBLE_DEVICES", "")
        if self.cpus_per_job > 0:
            env["OMP_NUM_THREADS"] = str(self.cpus_per_job)
        path = self._log_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a")
        cmd = [sys.executable, "-m", "dreamcore.batch.worker", json.dumps(job.to_dict()),
               "--threads", str(self.cpus_per_job)]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        return proc, job, log
