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
