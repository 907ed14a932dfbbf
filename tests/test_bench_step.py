"""The step-time tool: each tree is measured in its own process importing that tree's dreamcore (a worktree of
the baseline commit), the speed-up is the ratio of the two medians, the parts split this tree's step, the worktree
is removed afterwards, and the report and the docs section come out (at 3 steps it checks the tool, not speed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_step  # noqa: E402


def _worktrees() -> set[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "worktree", "list", "--porcelain"], capture_output=True, text=True)
    return {line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("worktree ")}


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the project's git repository")
def test_the_tool_measures_this_tree_against_a_worktree_of_another_commit(tmp_path):
    before = _worktrees()
    report = bench_step.benchmark(["reference-nerf"], "HEAD", steps=3, rounds=1, threads=1, seed=0)
    assert _worktrees() == before  # the baseline's checkout is gone
    e = report["settings"]["reference-nerf"]
    assert Path(e["this"]["source"]) == ROOT
    assert Path(e["baseline"]["source"]) != ROOT and Path(e["baseline"]["source"]).name == "baseline"
    assert e["this"]["steps"] == e["baseline"]["steps"] == 3
    assert e["speedup"] == pytest.approx(e["baseline"]["s_per_step"] / e["this"]["s_per_step"])
    assert e["cpu_speedup"] == pytest.approx(e["baseline"]["cpu_s_per_step"] / e["this"]["cpu_s_per_step"])
    assert e["this"]["cpu_s_per_step"] > 0
    parts = e["parts"]
    assert set(parts) == set(bench_step.PARTS) | {"other"}
    assert parts["render"] > 0 and parts["guidance"] > 0 and parts["backward"] > 0 and parts["optimizer"] > 0
    text = bench_step.markdown(report)
    assert "| reference-nerf | 3 |" in text and "speed-up" in text and "after_step" in text


def test_the_command_line_writes_the_report_and_refuses_unknown_settings(tmp_path, capsys):
    page = tmp_path / "benchmarks.md"
    page.write_text("# B\n\n<!-- begin bench_step (rewritten) -->\nold\n<!-- end bench_step -->\n\nkept\n")
    out = tmp_path / "step.md"
    bench_step.main(["--steps", "2", "--threads", "1", "--no-parts", "--out", str(out), "--docs", str(page)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["settings"]["reference-nerf"]["this"]["steps"] == 2 and data["against"] is None
    assert "parts" not in data["settings"]["reference-nerf"]
    assert "| reference-nerf | 2 |" in out.read_text()
    body = page.read_text()
    assert "| reference-nerf | 2 |" in body and "old" not in body and body.rstrip().endswith("kept")
    with pytest.raises(SystemExit, match="unknown"):
        bench_step.main(["--settings", "reference-nerfs"])
