"""tools/gpu_check.py end to end on the CPU (``--dry-run``): every section runs, the report has its tables, the
two sides of the device comparison agree, and the step probe's shares add up to the step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-report.json").read_text())
    assert report["dry_run"] is True
    for section in ("environment", "cuda_tests", "device_runs", "timed_recipes"):
        assert report[section]["status"] == "ok", (section, report[section])
    assert report["environment"]["packages"]["diffusers"]
    tests = report["cuda_tests"]["tests"]
    assert tests and all(t["outcome"] == "skipped" for t in tests)  # no CUDA here: every cuda test skips
    runs = {r["config"]: r for r in report["device_runs"]["systems"]}
    assert set(runs) == {"reference-nerf", "reference-gaussians", "reference-dmtet"}
    for r in runs.values():
        assert r["agree"] and len(r["cpu"]["psnr"]) == len(r["cpu-again"]["psnr"]) >= 2
        assert "host_reads_per_step" in r["sync"]
    recipes = {(r["recipe"], r["dtype"]): r for r in report["timed_recipes"]["recipes"]}
    assert set(recipes) == {(n, "fp32") for n in ("dreamfusion-sd", "dreamgaussian", "magic3d-refine",
                                                   "prolificdreamer")}
    for r in recipes.values():
        assert r["ok"], r
        assert abs(sum(r["share"].values()) - 1.0) < 0.02 and r["s_per_step"] > 0
        assert r["share"]["unet"] > 0 and r["unet_calls"] >= 1
    assert recipes[("prolificdreamer", "fp32")]["unet_calls"] > recipes[("dreamfusion-sd", "fp32")]["unet_calls"]
    assert recipes[("dreamfusion-sd", "fp32")]["share"]["vae"] > 0  # the latent recipes encode through the VAE
    md = (tmp_path / "gpu-report.md").read_text()
    for heading in ("## cuda tests", "## device runs", "## timed recipes", "dry run on CPU"):
        assert heading in md
