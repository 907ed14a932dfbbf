"""The guidance benchmark tool runs and writes its tables (at --quick sizes: this checks the tool, not the
methods)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_guidance_benchmark_writes_both_tables(tmp_path):
    out = tmp_path / "guidance.md"
    subprocess.run([sys.executable, str(ROOT / "tools" / "bench_guidance.py"), "--quick", "--methods", "sds,vsd",
                    "--seeds", "2", "--work", str(tmp_path / "runs"), "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True, text=True)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["sds", "vsd", "sds", "vsd"]
    assert "scene PSNR" in text and "modes" in text
    for r in rows[:2]:
        psnr = float(r.split("|")[2])
        assert 5.0 < psnr < 60.0


def test_a_failed_run_is_a_row_and_finished_runs_are_reused(tmp_path, monkeypatch):
    import importlib.util
    import json
    from types import SimpleNamespace

    from dreamcore.errors import DreamcoreError

    spec = importlib.util.spec_from_file_location("bench_guidance", ROOT / "tools" / "bench_guidance.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def failing(cfg, resume=False, announce=None):
        calls.append(cfg.run.dir)
        d = Path(cfg.run.dir)
        d.mkdir(parents=True)
        (d / "log.txt").write_text("step 50/500 x=1 s/step=0.321\n")
        raise DreamcoreError("nothing to export: the extracted mesh is empty")

    monkeypatch.setattr(bench, "generate", failing)
    row = bench.run("bad", [], tmp_path / "bad")
    assert row["error"].startswith("nothing to export") and row["seconds_per_step"] == 0.321
    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text(json.dumps({"scene_psnr": 30.0, "seconds_per_step": 0.16}))
    assert bench.run("done", [], done)["scene_psnr"] == 30.0 and len(calls) == 1  # reused, not rerun
    args = SimpleNamespace(mesh="m.glb", steps=500, seeds=1, diversity_steps=10)
    text = bench.markdown([{"method": "sds", "scene_psnr": 30.0, "seconds_per_step": 0.16},
                           {"method": "bad", **row}], [], args)
    assert "| `bad` | failed: nothing to export |" in text and "2.01 |" in text
