"""The text-only benchmark tool runs both priors and both recipes and writes its table and picture (at --quick
sizes: this checks the tool, not the methods)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_text_to_3d_benchmark_writes_its_table_and_picture(tmp_path):
    out = tmp_path / "text_to_3d.md"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_text_to_3d.py"), "--quick",
                           "--work", str(tmp_path / "runs"), "--out", str(out), "--jobs", "2"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| text-")]
    methods = {tuple(c.strip() for c in r.split("|")[1:4]) for r in rows}
    assert {("text-nerf", "sds", "learned"), ("text-nerf", "sds", "reference"), ("text-gaussians", "sds", "learned"),
            ("text-gaussians", "sds", "reference")} <= methods
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 4 and all("glb_janus" in r for r in data["runs"])
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size[0] > 200
    # a second run reuses the finished run folders instead of training again
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_text_to_3d.py"), "--quick",
                            "--work", str(tmp_path / "runs"), "--out", str(out)], cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 0
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert all(r.get("reused") and r["seconds"] > 0 for r in runs)  # with the wall time they took when they ran
