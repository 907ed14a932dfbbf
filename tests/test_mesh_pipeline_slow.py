"""Slow end-to-end check of the mesh path: a short NeRF coarse stage on the reference prior, then the DMTet
refine stage from it (``init.from_run``); the refined GLB must score held-out PSNR >= 22 dB at 64×64 and be no
farther from the reference mesh than the coarse stage's export."""

from __future__ import annotations

import json

import pytest

from dreamcore.cli import main
from dreamcore.config import config_path


@pytest.mark.slow
def test_nerf_then_dmtet_refine_on_the_reference_prior(tmp_path):
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    common = ["run.progress=false", "run.val_every=0", "eval.views=16", "eval.resolution=64"]
    assert main(["generate", "--config", str(config_path("reference-nerf")), f"run.dir={coarse}", "run.steps=400",
                 "optimizer.lr=[[0,0.01],[300,0.01],[400,0.003]]", "guidance.t_max=[[0,0.98],[300,0.5]]",
                 "export.formats=[glb]", "export.texture_size=512", *common]) == 0
    assert main(["generate", "--config", str(config_path("reference-dmtet")), f"run.dir={fine}",
                 f"init.from_run={coarse}", "run.steps=200", "camera.resolution=64",
                 "optimizer.lr=[[0,0.01],[150,0.01],[200,0.003]]", "export.formats=[glb]",
                 "export.texture_size=512", *common]) == 0
    m_coarse = json.loads((coarse / "metrics.json").read_text())
    m_fine = json.loads((fine / "metrics.json").read_text())
    print("coarse", {k: m_coarse[k] for k in ("glb_psnr", "glb_iou", "glb_chamfer_rel")})
    print("fine", {k: m_fine[k] for k in ("scene_psnr", "glb_psnr", "glb_iou", "glb_chamfer_rel")})
    assert m_fine["glb_psnr"] >= 22.0 and m_fine["scene_psnr"] >= 22.0
    assert m_fine["glb_chamfer_rel"] <= m_coarse["glb_chamfer_rel"]
