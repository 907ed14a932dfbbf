"""``dreamcore batch --backend ray`` on this CPU machine: logical GPUs, a two-node ``ray.cluster_utils.Cluster``,
and faults (a worker killed, a node removed, the driver killed), each job compared with an uninterrupted run.

Every scenario runs in ``tools/batch_faults.py``, which re-executes itself in a network namespace with loopback
alone (``unshare -n``) and refuses to start Ray otherwise; Ray's usage statistics are off
(RAY_USAGE_STATS_ENABLED=0) and every node is on 127.0.0.1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from netns import can_isolate  # noqa: E402
TOOL = ROOT / "tools" / "batch_faults.py"

pytest.importorskip("ray")



pytestmark = pytest.mark.skipif(not can_isolate(), reason="no network namespace here (unshare -n): Ray tests "
                                                            "never run with the network reachable")


def scenario(name: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, str(TOOL), name, "--json", str(out), "--work", str(tmp_path / "work")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["interfaces_up"] == ["lo"]  # Ray ran where nothing beyond the machine is reachable
    return res


def all_identical(res: dict) -> bool:
    return all(j["status"] == "done" and j["identical"] for j in res["jobs"].values())


def test_ray_batch_on_logical_gpus_matches_local_runs_and_skips_finished_jobs(tmp_path):
    res = scenario("ray-basic", tmp_path)
    assert res["rc"] == 0 and res["rc_again"] == 0
    assert all_identical(res), res
    assert sorted(res["skipped_again"]) == sorted(res["jobs"])  # the same command again reruns nothing


def test_ray_worker_killed_mid_job_is_retried_from_its_checkpoint(tmp_path):
    res = scenario("ray-worker-kill", tmp_path)
    assert res["rc"] == 0 and all_identical(res), res
    killed = res["jobs"][res["kill"]["job"]]
    assert killed["attempts"] == 2 and killed["resumed_from"] >= res["kill"]["step_at_kill"]
    print("worker kill: recovery", res["recovery_s"], "s")


def test_ray_node_removed_its_jobs_finish_on_the_other_node(tmp_path):
    res = scenario("ray-node-loss", tmp_path)
    assert res["rc"] == 0 and all_identical(res), res
    lost = res["node_loss"]["jobs_lost"]
    assert len(lost) == 1  # one job ran on the removed node
    assert res["jobs"][lost[0]]["attempts"] == 2
    assert res["jobs"][lost[0]]["resumed_from"] >= res["node_loss"]["steps_at_removal"][lost[0]]
    print("node loss: recovery", res["recovery_s"], "s")


def test_ray_driver_killed_the_same_command_resumes_the_batch(tmp_path):
    res = scenario("ray-driver-kill", tmp_path)
    assert res["rc"] == 0 and all_identical(res), res
    assert res["jobs"][res["kill"]["job"]]["resumed_from"] >= res["kill"]["step_at_kill"]
    print("driver kill: rerun", res["rerun_s"], "s, recovery", res["recovery_s"], "s")


@pytest.mark.slow  # (the rule itself: test_batch.py::test_the_ray_resource_check_names_what_is_missing)
def test_a_gpu_job_on_a_cluster_without_gpus_fails_fast(tmp_path):
    res = scenario("ray-no-gpu", tmp_path)
    assert res["rc"] == 2 and res["job_folders"] == []
    assert "no node of the Ray cluster" in res["stderr"][0] and "--gpus-per-job 0" in res["stderr"][0]


@pytest.mark.slow
def test_a_killed_driver_takes_its_own_ray_down_and_the_same_command_resumes(tmp_path):
    res = scenario("ray-local-driver-kill", tmp_path)
    assert res["rc"] == 0 and all_identical(res), res
    assert res["worker_gone_s"] < 60  # the job's worker died with the driver's Ray
    assert res["jobs"][res["kill"]["job"]]["resumed_from"] >= res["kill"]["step_at_kill"]
