"""Two-stage runs in one command (``refine.config``): Gaussians, then a DMTet surface refined from them."""

import json
from pathlib import Path

import pytest

from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.io import load_mesh
from dreamcore.runner.refine import first_stage_formats, stage_config
from test_gaussians import GTINY

DMTET_TINY = ("[run.steps=3,run.checkpoint_every=2,camera.resolution=32,camera.batch_size=2,representation.resolution=16,"
              "representation.n_levels=4,representation.log2_table_size=12,representation.max_resolution=64,"
              "representation.init_texture_steps=10,representation.init_texture_points=2000,"
              "export.texture_size=64,export.target_faces=300,run.val_every=0]")


def test_gaussians_then_dmtet_in_one_command_and_resume(tmp_path):
    run = tmp_path / "two"
    args = ["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=4",
            "export.formats=[ply,glb]", "export.resolution=48", f"refine.overrides={DMTET_TINY}",
            "prompt=a small robot", f"run.dir={run}"]
    assert main(args) == 0
    stage = run / "refine"
    # stage 1 wrote only the splats; the GLB is the refinement stage's surface, copied up byte for byte
    assert (run / "model.ply").is_file() and (stage / "model.glb").is_file()
    assert (run / "model.glb").read_bytes() == (stage / "model.glb").read_bytes()
    assert not (stage / "model.ply").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "glb_psnr" not in metrics["stage1"] and "scene_psnr" in metrics["stage1"]
    assert metrics["glb_iou"] > 0.0 and metrics["steps"] == 3 and metrics["stage1"]["steps"] == 4
    assert metrics["export"]["files"]["glb"] == str(run / "model.glb")
    assert metrics["export"]["files"]["ply"] == str(run / "model.ply")
    assert load_mesh(run / "model.glb").faces.shape[0] == metrics["export"]["faces"] <= 310
    # the stage started from stage 1 and shares its prompt and prior
    stage_cfg = load_config(stage / "config.yaml")
    assert stage_cfg.init.from_run == str(run) and stage_cfg.prompt == "a small robot"
    assert stage_cfg.representation.name == "dmtet" and stage_cfg.export.formats == ["glb"]
    first_cfg = load_config(run / "config.yaml")
    assert stage_cfg.prior == first_cfg.prior
    # resuming the finished pipeline with more refinement steps continues the stage from its own checkpoint
    before = (stage / "log.txt").read_text().count("start:")
    assert main(["generate", "--resume", str(run), f"refine.overrides={DMTET_TINY[:-1]},run.steps=4]"]) == 0
    log = (stage / "log.txt").read_text()
    assert log.count("start:") == before and "resume:" in log
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    assert (run / "model.glb").read_bytes() == (stage / "model.glb").read_bytes()
    # re-exporting the first stage rewrites its own formats only and keeps the refined asset's figures
    glb, before = (run / "model.glb").read_bytes(), json.loads((run / "metrics.json").read_text())
    assert main(["export", str(run)]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert (run / "model.glb").read_bytes() == glb
    assert after["glb_iou"] == before["glb_iou"] and after["steps"] == before["steps"] == 4
    assert after["stage1"]["steps"] == 4 and "scene_psnr" in after["stage1"]


def test_stage_config_inherits_the_job_and_resolves_its_file(tmp_path):
    cfg = load_config(config_path("reference-gaussians"),
                      ["prompt=a mug", "prior.reference.mesh=other.glb", "run.seed=7", "eval.views=3",
                       "export.formats=[ply,glb,turntable]", f"run.dir={tmp_path}"])
    assert Path(cfg.refine.config).is_absolute() and Path(cfg.refine.config).is_file()  # relative to the YAML
    stage = stage_config(cfg, tmp_path)
    assert stage.prompt == "a mug" and stage.prior.reference.mesh == "other.glb" and stage.run.seed == 7
    assert stage.eval.views == 3 and stage.init.from_run == str(tmp_path)
    assert stage.run.dir == str(tmp_path / "refine") and stage.export.formats == ["glb", "turntable"]
    assert stage.renderer.name == "mesh"  # the rest is the stage's own file
    assert first_stage_formats(cfg) == ["ply"]
    cfg.refine.dir = "../elsewhere"
    with pytest.raises(DreamcoreError, match="refine.dir"):
        stage_config(cfg, tmp_path)
    cfg.refine.dir = "refine"
    cfg.refine.config = str(config_path("reference-gaussians"))  # a stage that refines again
    cfg.refine.overrides = []  # (the recipe's own overrides are for its DMTet stage)
    with pytest.raises(DreamcoreError, match="chains"):
        stage_config(cfg, tmp_path)
    off = load_config(config_path("reference-gaussians"), ["refine.config=", "export.formats=[ply,glb]"])
    assert first_stage_formats(off) == ["ply", "glb"]


def test_a_bad_refinement_config_fails_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "bad"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "refine.config=nope.yaml",
                 f"run.dir={run}"]) == 2
    assert "config file not found: nope.yaml" in capsys.readouterr().err and not run.exists()
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY,
                 "refine.overrides=[representation.no_such_key=1]", f"run.dir={run}"]) == 2
    assert "no_such_key" in capsys.readouterr().err and not run.exists()
