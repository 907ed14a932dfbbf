"""The prior benchmark's code path on 1/8-width versions of the real architectures, and the full-size configs'
parameter counts (built on the meta device, no memory) against the released models'."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_priors  # noqa: E402


def test_full_size_configs_have_the_released_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    n = {k: bench_priors.count_params(UNet2DConditionModel, s["unet"]) for k, s in bench_priors.MODELS.items()}
    assert round(n["sd21"] / 1e6) == 866  # SD 2.1-base UNet: 865.9 M
    assert round(n["sdxl"] / 1e6) == 2567  # SDXL-base UNet: 2.567 B
    assert round(n["if"] / 1e8) == 43  # IF-I-XL: 4.3 B
    assert round(bench_priors.count_params(AutoencoderKL, bench_priors.SD_VAE) / 1e6, 1) == 83.7


@pytest.mark.slow
def test_quick_benchmark_writes_a_table(tmp_path):
    out = tmp_path / "bench.md"
    assert bench_priors.main(["--quick", "--models", "sd21", "if", "--batch", "1", "--repeat", "1", "--out",
                              str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("| SD 2.1") or ln.startswith("| IF-I")]
    assert len(rows) == 3  # SD: UNet + VAE; IF: UNet only (pixel space)
    assert all(float(r.split("|")[-3]) > 0 and float(r.split("|")[-2]) > 0 for r in rows)
    assert "QUICK" in lines[0]
