"""Slow end-to-end reconstruction with Gaussians on the reference prior (CI runs it with -m slow)."""

import json

import pytest

from dreamcore.cli import main
from dreamcore.export.ply import read_ply

pytestmark = pytest.mark.slow


def test_reference_gaussians_reconstruct_the_robot(tmp_path):
    """configs/reference-gaussians.yaml as shipped (64×64, camera-conditioned reference prior): the Gaussians'
    held-out PSNR ≥ 22 dB and silhouette IoU ≥ 0.9 (stage 1, model.ply), and the GLB of the DMTet surface refined
    from them (stage 2) at NeRF-path quality (measured 30.2 dB / 0.970 on the robot; reference-nerf 30.3 / 0.977)."""
    run = tmp_path / "gs"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", "run.progress=false",
                 "export.formats=[ply,glb]", "export.texture_size=512", f"run.dir={run}"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["stage1"]["scene_psnr"] >= 22.0 and m["stage1"]["scene_iou"] >= 0.9, m
    assert m["glb_iou"] >= 0.95 and m["glb_psnr"] >= 27.0 and m["glb_chamfer_rel"] <= 0.008, m
    ply = read_ply(run / "model.ply")
    assert len(ply["means"]) > 1000
