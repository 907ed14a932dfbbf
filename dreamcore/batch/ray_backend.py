"""The Ray backend: one Ray task per job on a Ray cluster (``pip install -e .[ray]``; the only module that
imports Ray). The task's resources are declared where the task is made (``ray.remote(num_gpus=...)``, not
``.options()``): Ray then runs each GPU task in a fresh worker process, which frees its GPU memory when it ends.
``max_retries`` re-runs a task whose worker or node was lost (it resumes from the job's checkpoint on the shared
run root); a job's own failure comes back as a ``failed`` record, so it is never retried.

A task whose driver runs on the same machine watches the driver's process: when it is gone (SIGKILL, a crash) the
task stops as on SIGTERM, saving its checkpoint, instead of training on for a batch no one waits for until Ray
notices the dead driver (seconds to minutes on a loaded machine; long enough to finish a short job)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from dreamcore.batch.jobs import Job
from dreamcore.batch.worker import base_record, run_job
from dreamcore.errors import DreamcoreError


def process_identity(pid: int) -> tuple[str, int, int, str] | None:
    """(boot id, pid namespace, pid, start time): names one process of one machine, reused pids included; None
    where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return boot, ns, pid, fields[19] if fields[0] != "Z" else ""  # field 22 of proc(5): the start time


def watch_driver(driver: tuple | None, period_s: float = 0.5) -> bool:
    """Send this process SIGTERM once the process ``driver`` (a ``process_identity``) has ended; False (no
    watch) where the driver is not a process of this machine and pid namespace."""
    if driver is None:
        return False
    boot, ns, pid, _ = driver
    mine = process_identity(os.getpid())
    if mine is None or (mine[0], mine[1]) != (boot, ns):
        return False

    def watch() -> None:
        while process_identity(pid) == tuple(driver):
            time.sleep(period_s)
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes its step, saves and stops

    threading.Thread(target=watch, name="dreamcore-driver-watch", daemon=True).start()
    return True


def _job_task(job: dict, threads: int, driver: tuple | None = None) -> dict:
    watch_driver(driver)
    return run_job(job, threads)


def check_resources(nodes: list[dict], gpus: float, cpus: float, address: str) -> None:
    """Fail now, naming what is missing, when no node of the cluster can ever run one job (Ray would leave the
    task pending forever)."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive", True))]
    if any(r.get("GPU", 0) >= gpus and r.get("CPU", 0) >= cpus for r in alive):
        return
    most_gpus = max((r.get("GPU", 0) for r in alive), default=0)
    most_cpus = max((r.get("CPU", 0) for r in alive), default=0)
    if most_gpus < gpus:
        hint = "pass --gpus-per-job 0 to run on CPUs" if most_gpus == 0 else f"pass --gpus-per-job {int(most_gpus)}"
        raise DreamcoreError(f"each job asks for {gpus:g} GPU(s) (--gpus-per-job) but no node of the Ray cluster "
                             f"at {address} has that many (most: {most_gpus:g}); {hint}")
    raise DreamcoreError(f"each job asks for {cpus:g} CPU(s) (--cpus-per-job) but no node of the Ray cluster at "
                         f"{address} has that many (most: {most_cpus:g})")


class RayBackend:
    def __init__(self, address: str | None = None, gpus_per_job: float = 1, cpus_per_job: int = 1,
                 retries: int = 3):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise DreamcoreError("the ray backend needs Ray: pip install -e '.[ray]'") from None
        self.address = address
        self.gpus, self.cpus, self.retries = gpus_per_job, max(cpus_per_job, 1), retries
        self.where = f"ray at {address or 'a new local cluster'}"
        self.slots = 1

    def run(self, jobs: list[Job], done, tick) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        started = not ray.is_initialized()
        if started:
            kwargs = dict(log_to_driver=False, configure_logging=False)
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(include_dashboard=False, **kwargs)
        try:
            self._run(ray, jobs, done, tick)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, jobs: list[Job], done, tick) -> None:
        check_resources(ray.nodes(), self.gpus, self.cpus, self.address or "local")
        total = ray.cluster_resources()
        per_gpu = int(total.get("GPU", 0) // self.gpus) if self.gpus else len(jobs)
        self.slots = max(1, min(per_gpu, int(total.get("CPU", 1) // self.cpus), len(jobs)))
        task = ray.remote(num_gpus=self.gpus, num_cpus=self.cpus, max_retries=self.retries,
                          retry_exceptions=False)(_job_task)
        driver = process_identity(os.getpid())
        pending = {task.remote(job.to_dict(), self.cpus, driver): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    done(ray.get(ref))
                except ray.exceptions.RayError as e:  # lost more often than max_retries allows
                    done({**base_record(job), "status": "failed",
                          "error": f"the job was lost {self.retries + 1} times ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}); rerun the batch to resume it"})
            tick()
