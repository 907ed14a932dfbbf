"""Fault injection for ``dreamcore batch``, measured: a worker killed mid-job, a node removed from a two-node
Ray cluster, the driver killed and the command run again; plus the per-job overhead of the backends.

Every scenario runs tiny jobs on the reference prior, compares each job's final checkpoint tensors with an
uninterrupted run of the same job, and prints one JSON object (``--json FILE`` writes it too). Ray runs only
inside a network namespace with loopback alone: the tool re-executes itself under ``unshare -n`` (Linux, root or
user namespaces) and refuses to start Ray when any other interface is up.

    python tools/batch_faults.py local-worker-kill | ray-basic | ray-worker-kill | ray-node-loss |
                                 ray-driver-kill | ray-local-driver-kill |
                                 ray-no-gpu | overhead   [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import isolated, reexec_isolated, up_interfaces  # noqa: E402

TINY = ["run.val_every=0", "run.val_resolution=16", "camera.resolution=24", "camera.batch_size=2",
        "system.rays_per_view=48", "representation.n_levels=4", "representation.log2_table_size=12",
        "representation.max_resolution=64", "representation.occupancy_resolution=16",
        "representation.occupancy_update_every=2", "export.formats=[]", "eval.views=2", "eval.resolution=16",
        "prior.bank_views=4"]
SHORT = ["run.steps=6", "run.checkpoint_every=3"]
LONG = ["run.steps=40", "run.checkpoint_every=2"]  # long enough to be killed mid-job, a checkpoint every 2 steps
PROMPTS = ["a red robot", "a blue car"]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def write_prompts(work: Path) -> Path:
    path, text = work / "prompts.txt", "\n".join(PROMPTS) + "\n"
    if not path.is_file() or path.read_text() != text:  # written once: fault threads read it meanwhile
        path.write_text(text)
    return path


def batch_args(work: Path, out: Path, steps: list[str], *extra: str) -> list[str]:
    return ["batch", str(write_prompts(work)), "--config", "reference-nerf", *TINY, *steps, "--out", str(out),
            *extra]


def references(work: Path, steps: list[str]) -> dict[str, dict]:
    """Each job run uninterrupted, in this process: job name -> final checkpoint tensors."""
    from safetensors.torch import load_file

    from dreamcore.batch.jobs import expand_jobs, read_prompts
    from dreamcore.batch.worker import run_job

    out = work / "reference"
    jobs = expand_jobs(read_prompts(write_prompts(work)), "reference-nerf", TINY + steps, None, out)
    refs = {}
    for job in jobs:
        rec = run_job(job)
        assert rec["status"] == "done", rec
        refs[job.name] = load_file(str(Path(job.dir) / "ckpt" / "last.safetensors"))
    return refs


def compare(out: Path, refs: dict[str, dict]) -> dict:
    """Per job: finished, tensors equal to the uninterrupted run's, attempts, resumed_from."""
    import torch
    from safetensors.torch import load_file

    batch = json.loads((out / "batch.json").read_text())
    rows = {}
    for rec in batch["jobs"]:
        state = load_file(str(Path(rec["dir"]) / "ckpt" / "last.safetensors")) if rec["status"] == "done" else {}
        ref = refs[rec["name"]]
        same = rec["status"] == "done" and state.keys() == ref.keys() and all(torch.equal(state[k], ref[k])
                                                                               for k in ref)
        rows[rec["name"]] = {"status": rec["status"], "identical": same, "attempts": rec.get("attempts"),
                             "resumed_from": rec.get("resumed_from"), "seconds": rec.get("seconds")}
    return rows


def wait_for_step(run_dirs: list[Path], step: int, timeout: float = 120.0) -> Path:
    """The first run folder whose last checkpoint reaches ``step`` (and whose lock is held)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for d in run_dirs:
            try:
                holder = json.loads((d / ".lock").read_text())
            except (OSError, ValueError):
                continue
            if saved_step(d) >= step and holder.get("pid"):
                return d
        time.sleep(0.05)
    raise TimeoutError(f"no job reached step {step} in {timeout} s")


def saved_step(run_dir: Path) -> int:
    """The step of the run's newest good checkpoint (what a resume starts from; -1 when none). Read through the
    checkpoint module's own lookup, which covers every moment of a save in progress — a live run's ``last.json``
    is briefly absent while its previous pair becomes ``prev.*``."""
    from dreamcore.runner.checkpoint import find_good

    good = find_good(run_dir / "ckpt")
    return -1 if good is None else int(good[1].get("step", -1))


def checkpoint_step(run_dir: Path) -> int:
    step = saved_step(run_dir)
    if step < 0:
        raise FileNotFoundError(f"no good checkpoint in {run_dir / 'ckpt'}")
    return step


def job_dirs(out: Path) -> list[Path]:
    from dreamcore.batch.jobs import expand_jobs, read_prompts

    return [Path(j.dir) for j in expand_jobs(read_prompts(out.parent / "prompts.txt"), "reference-nerf",
                                             TINY + LONG, None, out)]


def kill_worker(out: Path) -> dict:
    """SIGKILL the process that holds a job's lock once that job has checkpointed step 4."""
    d = wait_for_step(job_dirs(out), 4)
    pid = json.loads((d / ".lock").read_text())["pid"]
    step = checkpoint_step(d)
    os.kill(pid, signal.SIGKILL)
    return {"job": d.name, "pid": pid, "step_at_kill": step, "killed_at": time.time()}


def recovery_seconds(out: Path, kill: dict) -> float | None:
    """From the kill to the retried attempt's `resume` line in the job's log."""
    for line in (out / kill["job"] / "log.txt").read_text().splitlines():
        if " resume: " in line:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            if stamp >= int(kill["killed_at"]):
                return round(stamp - kill["killed_at"], 1)
    return None


def cli(args: list[str]) -> int:
    from dreamcore.cli import main

    return main(args)


def batch_with_fault(args: list[str], fault) -> tuple[int, dict]:
    """Run the batch command ``args`` here while ``fault()`` (which waits for its moment) runs beside it."""
    import threading

    seen: dict = {}
    t = threading.Thread(target=lambda: seen.update(fault()))
    t.start()
    rc = cli(args)
    t.join()
    return rc, seen


def kill_driver_and_rerun(cmd: list[str], out: Path) -> dict:
    """Start the batch ``cmd`` as its own process, SIGKILL it once a job has checkpointed step 4, note when the
    job's worker is gone, then run the same command again."""
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = wait_for_step(job_dirs(out), 4)
    worker = json.loads((d / ".lock").read_text())["pid"]
    step = checkpoint_step(d)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed = time.time()
    t_end = time.monotonic() + 60
    while _alive(worker) and time.monotonic() < t_end:
        time.sleep(0.1)
    worker_gone_s = round(time.time() - killed, 1)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill = {"job": d.name, "step_at_kill": step, "killed_at": killed}
    return {"rc": rc, "kill": kill, "worker_gone_s": worker_gone_s, "rerun_s": round(time.perf_counter() - t0, 1),
            "recovery_s": recovery_seconds(out, kill)}


# --- scenarios ------------------------------------------------------------------------------------------------

def local_worker_kill(work: Path) -> dict:
    refs = references(work, LONG)
    out = work / "batch"
    rc, kill = batch_with_fault(batch_args(work, out, LONG, "--retries", "2"), lambda: kill_worker(out))
    return {"rc": rc, "kill": kill, "recovery_s": recovery_seconds(out, kill), "jobs": compare(out, refs)}


def start_cluster(nodes: list[dict]):
    from ray.cluster_utils import Cluster

    head, *rest = nodes
    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False,
                                                             "node_ip_address": "127.0.0.1", **head})
    handles = [cluster.add_node(node_ip_address="127.0.0.1", **n) for n in rest]
    cluster.wait_for_nodes()
    return cluster, handles


def ray_basic(work: Path) -> dict:
    refs = references(work, SHORT)
    t0 = time.perf_counter()
    cluster, _ = start_cluster([{"num_cpus": 2, "num_gpus": 2}])
    started = time.perf_counter() - t0
    out = work / "batch"
    try:
        rc = cli(batch_args(work, out, SHORT, "--backend", "ray", "--ray-address", cluster.address,
                            "--cpus-per-job", "1"))
        again = cli(batch_args(work, out, SHORT, "--backend", "ray", "--ray-address", cluster.address))
    finally:
        cluster.shutdown()
    batch = json.loads((out / "batch.json").read_text())
    return {"rc": rc, "rc_again": again, "cluster_start_s": round(started, 1), "jobs": compare(out, refs),
            "skipped_again": [r["name"] for r in batch["jobs"] if r.get("skipped")]}


def ray_worker_kill(work: Path) -> dict:
    refs = references(work, LONG)
    cluster, _ = start_cluster([{"num_cpus": 2, "num_gpus": 2}])
    out = work / "batch"
    try:
        rc, kill = batch_with_fault(batch_args(work, out, LONG, "--backend", "ray", "--ray-address", cluster.address,
                                               "--cpus-per-job", "1", "--retries", "2"), lambda: kill_worker(out))
    finally:
        cluster.shutdown()
    return {"rc": rc, "kill": kill, "recovery_s": recovery_seconds(out, kill), "jobs": compare(out, refs)}


def ray_node_loss(work: Path) -> dict:
    refs = references(work, LONG)
    # the head has no GPU: both jobs run on the two GPU nodes, one each; one node is then removed
    cluster, (_, b) = start_cluster([{"num_cpus": 1, "num_gpus": 0}, {"num_cpus": 1, "num_gpus": 1},
                                     {"num_cpus": 1, "num_gpus": 1}])
    out = work / "batch"

    def remove_node() -> dict:
        dirs = job_dirs(out)
        for d in dirs:
            wait_for_step([d], 4)
        pids = {d.name: json.loads((d / ".lock").read_text())["pid"] for d in dirs}
        steps = {d.name: checkpoint_step(d) for d in dirs}
        t = time.time()
        cluster.remove_node(b, allow_graceful=False)
        deadline = time.time() + 30.0  # the removed node's worker dies within ~1 s alone, later on loaded cores
        while True:
            gone = [n for n, pid in pids.items() if not _alive(pid)]
            if gone or time.time() > deadline:
                break
            time.sleep(0.2)
        return {"removed_at": t, "jobs_lost": gone, "steps_at_removal": {n: steps[n] for n in gone}}

    try:
        rc, lost = batch_with_fault(batch_args(work, out, LONG, "--backend", "ray", "--ray-address", cluster.address,
                                               "--cpus-per-job", "1", "--retries", "2"), remove_node)
    finally:
        cluster.shutdown()
    recov = {n: recovery_seconds(out, {"job": n, "killed_at": lost["removed_at"]}) for n in lost["jobs_lost"]}
    return {"rc": rc, "node_loss": lost, "recovery_s": recov, "jobs": compare(out, refs)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def ray_driver_kill(work: Path) -> dict:
    """The driver of a running cluster killed; the same command resumes the batch."""
    refs = references(work, LONG)
    cluster, _ = start_cluster([{"num_cpus": 2, "num_gpus": 2}])
    out = work / "batch"
    cmd = [sys.executable, "-m", "dreamcore.cli", *batch_args(work, out, LONG, "--backend", "ray", "--ray-address",
                                                                  cluster.address, "--cpus-per-job", "1")]
    try:
        res = kill_driver_and_rerun(cmd, out)
    finally:
        cluster.shutdown()
    return {**res, "jobs": compare(out, refs)}


def ray_local_driver_kill(work: Path) -> dict:
    """The driver started its own Ray (no --ray-address): killing it takes that Ray and its workers down; the
    same command starts a new one and resumes."""
    refs = references(work, LONG)
    out = work / "batch"
    cmd = [sys.executable, "-m", "dreamcore.cli", *batch_args(work, out, LONG, "--backend", "ray", "--gpus-per-job",
                                                                  "0", "--cpus-per-job", "1")]
    return {**kill_driver_and_rerun(cmd, out), "jobs": compare(out, refs)}


def ray_no_gpu(work: Path) -> dict:
    cluster, _ = start_cluster([{"num_cpus": 2, "num_gpus": 0}])
    out = work / "batch"
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "dreamcore.cli", *batch_args(work, out, SHORT, "--backend", "ray",
                                                                               "--ray-address", cluster.address)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        cluster.shutdown()
    return {"rc": r.returncode, "stderr": r.stderr.strip().splitlines()[-1:], "seconds": round(time.perf_counter() - t0, 1),
            "job_folders": sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
            if out.is_dir() else []}


def overhead(work: Path) -> dict:
    """Per job: wall clock seen by the batch minus the job's own time, local vs Ray, one job at a time."""
    jobs = 4
    prompts = work / "prompts.txt"
    res = {}
    cluster, _ = start_cluster([{"num_cpus": 2, "num_gpus": 1}])
    try:
        for backend in ("local", "ray"):
            out = work / backend
            extra = ["--backend", backend, "--cpus-per-job", "1", "--seeds", ",".join(map(str, range(jobs // 2)))]
            if backend == "ray":
                extra += ["--ray-address", cluster.address]
            t0 = time.perf_counter()
            rc = cli(batch_args(work, out, SHORT, *extra))
            wall = time.perf_counter() - t0
            recs = json.loads((out / "batch.json").read_text())["jobs"]
            inside = sum(r["seconds"] for r in recs)
            res[backend] = {"rc": rc, "jobs": len(recs), "wall_s": round(wall, 2), "job_s": round(inside, 2),
                            "overhead_per_job_s": round((wall - inside) / len(recs), 2)}
    finally:
        cluster.shutdown()
    assert prompts.is_file()
    return res


SCENARIOS = {"local-worker-kill": local_worker_kill, "ray-basic": ray_basic, "ray-worker-kill": ray_worker_kill,
             "ray-node-loss": ray_node_loss, "ray-driver-kill": ray_driver_kill,
             "ray-local-driver-kill": ray_local_driver_kill, "ray-no-gpu": ray_no_gpu,
             "overhead": overhead}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--work", help="working folder (default: a temporary one, removed)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    needs_ray = ns.scenario.startswith("ray") or ns.scenario == "overhead"
    if needs_ray and not ns.inside:
        return reexec_isolated(__file__, argv, "batch_faults")
    if needs_ray and not isolated():
        print(f"batch_faults: refusing to start Ray: interfaces up besides lo: {up_interfaces()}", file=sys.stderr)
        return 78
    os.chdir(ROOT)
    work = Path(ns.work) if ns.work else Path(tempfile.mkdtemp(prefix="batch-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result = {"scenario": ns.scenario, "interfaces_up": up_interfaces(), **SCENARIOS[ns.scenario](work)}
    finally:
        if not ns.work:
            shutil.rmtree(work, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2, default=str)
    print("RESULT " + json.dumps(result, default=str))
    if ns.json:
        Path(ns.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
