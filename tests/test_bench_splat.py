"""The splat benchmark tool runs and writes its table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_splat  # noqa: E402


def test_bench_splat_writes_a_table(tmp_path):
    out = tmp_path / "splat.md"
    assert bench_splat.main(["--points", "200", "--res", "16", "24", "--repeats", "1", "--views", "2",
                             "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Gaussians: 200" in text and "| torch | 16 |" in text and "| torch | 24 |" in text
