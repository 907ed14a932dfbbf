"""The runner end to end on a tiny scene: reproducibility, exact resume, interruption, CLI errors."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.runner.generate import generate, resume_config
from dreamcore.runner.rundir import RunDir
from dreamcore.runner.trainer import Trainer

TINY = [
    "run.steps=6", "run.checkpoint_every=3", "run.val_every=0", "run.val_resolution=16", "run.progress=false",
    "camera.resolution=24", "camera.batch_size=2", "system.rays_per_view=48",
    "representation.n_levels=4", "representation.log2_table_size=12", "representation.max_resolution=64",
    "representation.occupancy_resolution=16", "representation.occupancy_update_every=2",
    "export.formats=[]", "eval.views=2", "eval.resolution=16", "prior.bank_views=4",
]


def tiny(tmp_path, name, *extra):
    return load_config(config_path("reference-nerf"), TINY + [f"run.dir={tmp_path / name}", *extra])


def ckpt_tensors(run_dir):
    return load_file(str(run_dir / "ckpt" / "last.safetensors"))


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def run_and_resume(tmp_path, config, overrides, stop, steps):
    """A ``steps``-step run of ``config`` and the same run stopped after ``stop`` steps, then resumed to
    ``steps``: their last checkpoints' tensors (the full run's, the resumed run's) and the full run's folder."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", config, *overrides, f"run.steps={steps}", f"run.dir={full}"]) == 0
    assert main(["generate", "--config", config, *overrides, f"run.steps={stop}", f"run.dir={part}"]) == 0
    assert main(["generate", "--resume", str(part), f"run.steps={steps}"]) == 0
    return ckpt_tensors(full), ckpt_tensors(part), full


def test_seeded_runs_are_reproducible_and_resume_is_exact(tmp_path):
    full = generate(tiny(tmp_path, "full"), announce=lambda *_: None)
    again = generate(tiny(tmp_path, "again"), announce=lambda *_: None)
    assert_same_state(ckpt_tensors(full), ckpt_tensors(again))
    # stop after 3 steps, then resume to 6 with the saved config
    part = generate(tiny(tmp_path, "part", "run.steps=3"), announce=lambda *_: None)
    assert json.loads((part / "ckpt" / "last.json").read_text())["step"] == 3
    generate(resume_config(part, ["run.steps=6"]), resume=True, announce=lambda *_: None)
    assert_same_state(ckpt_tensors(full), ckpt_tensors(part))
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["steps"] == 6 and 0.0 <= metrics["scene_iou"] <= 1.0
    saved = (full / "config.yaml").read_text()
    assert "rays_per_view: 48" in saved and "steps: 6" in saved
    other = generate(tiny(tmp_path, "seed1", "run.seed=1"), announce=lambda *_: None)
    assert not torch.equal(ckpt_tensors(full)["model.representation.encoding.table"],
                           ckpt_tensors(other)["model.representation.encoding.table"])


def test_interrupt_saves_a_checkpoint_and_resumes_exactly(tmp_path, monkeypatch):
    ref = generate(tiny(tmp_path, "ref"), announce=lambda *_: None)
    cfg = tiny(tmp_path, "cut")
    original = Trainer._after_step

    def stop_at_4(self, losses, bar):
        original(self, losses, bar)
        if self.step == 4:
            self._request_stop(None, None)  # what Ctrl-C does

    monkeypatch.setattr(Trainer, "_after_step", stop_at_4)
    with pytest.raises(DreamcoreError, match="interrupted at step 4.*--resume"):
        generate(cfg, announce=lambda *_: None)
    monkeypatch.setattr(Trainer, "_after_step", original)
    cut = tmp_path / "cut"
    assert json.loads((cut / "ckpt" / "last.json").read_text())["step"] == 4
    with pytest.raises(DreamcoreError, match="already holds a run"):
        generate(tiny(tmp_path, "cut"), announce=lambda *_: None)
    generate(resume_config(cut, []), resume=True, announce=lambda *_: None)
    assert_same_state(ckpt_tensors(ref), ckpt_tensors(cut))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact."""
    run = generate(tiny(tmp_path, "atomic", "run.steps=3"), announce=lambda *_: None)
    before = ckpt_tensors(run)
    cfg = resume_config(run, ["run.steps=6"])
    trainer = Trainer(cfg, RunDir(run), resume=True)
    trainer.train_step(trainer.step)
    import dreamcore.files

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(dreamcore.files.os, "replace", boom)
    with pytest.raises(DreamcoreError, match="the checkpoint of step 3 .* is intact"):
        trainer.save()
    monkeypatch.undo()
    assert_same_state(before, ckpt_tensors(run))


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["generate", "--config", "reference-nerf", "guidance.scale=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'guidance.scale'" in err and "guidance_scale" in err and "Traceback" not in err
    assert main(["generate", "--config", "reference-nerf", "prompt= ", f"run.dir={tmp_path / 'x'}"]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["generate", "--config", "reference-nerf", f"prior.reference.mesh={tmp_path / 'nope.glb'}",
                 f"run.dir={tmp_path / 'y'}"]) == 2
    assert "nope.glb" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["generate", "--config", "no-such-config"]) == 2
    assert "reference-nerf" in capsys.readouterr().err
    assert main(["generate", "--config", "reference-nerf", "export.formats=[glb,fbx]", f"run.dir={tmp_path / 'z'}"]) == 2
    assert "unknown exporter 'fbx'" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert main(["generate", "--resume", str(tmp_path)]) == 2
    assert "not a dreamcore run folder" in capsys.readouterr().err


def test_console_script_lists_components():
    out = subprocess.run([sys.executable, "-m", "dreamcore.cli", "list"], capture_output=True, text=True, check=True)
    kinds = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert set(kinds["guidance"].split(", ")) >= {"sds", "sjc", "vsd", "esd", "ism", "csd", "nfsd", "sdi"}
    assert "reference" in kinds["prior"].split(", ")
    assert set(kinds["exporter"].split(", ")) >= {"glb", "obj", "turntable", "ply"}
    assert set(kinds["recipe"].split(", ")) >= {"text-nerf", "reference-nerf", "dreamfusion", "demo"}  # --config


def test_dreamfusion_recipe_runs_with_shading_and_learned_background(tmp_path):
    """The text-to-3D recipe: random shading (normals, orientation loss), learned background, strong CFG."""
    overrides = [o for o in TINY if not o.startswith("system.")] + [
        "run.steps=4", f"run.dir={tmp_path / 'df'}", "renderer.shading_probs=[0.0,1.0,0.0]",
    ]
    cfg = load_config(config_path("dreamfusion"), overrides)
    assert cfg.renderer.shading == "random" and cfg.background.name == "learned"
    run = generate(cfg, announce=lambda *_: None)
    state = ckpt_tensors(run)
    assert any(k.startswith("model.background.mlp") for k in state)
    log = (run / "log.txt").read_text()
    assert "orientation=" in log and "sds=" in log


def test_cli_generate_resume_and_export(tmp_path, capsys):
    """The commands a user types: generate (prompt as words), --resume to extend, export to re-export."""
    run = tmp_path / "cli"
    args = ["generate", "a", "small", "robot", "--config", "configs/reference-nerf.yaml", *TINY,
            "run.steps=3", f"run.dir={run}"]
    assert main(args) == 0
    assert "prompt: a small robot" in (run / "config.yaml").read_text()
    assert main(["generate", "--resume", str(run), "run.steps=5"]) == 0
    assert json.loads((run / "ckpt" / "last.json").read_text())["step"] == 5
    assert main(["export", str(run), "export.formats=[glb]", "export.resolution=48", "export.texture_size=64",
                 "export.isosurface=1.0"]) == 0
    out = capsys.readouterr().out
    assert (run / "model.glb").is_file() and "GLB:" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 5 and m["export"]["faces"] > 0 and "glb_iou" in m


def test_load_run_system_restores_an_earlier_run_for_the_next_stage(tmp_path):
    from dreamcore.runner.init import load_run_system
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    cfg = tiny(tmp_path, "stage1")
    run = generate(cfg, announce=lambda *_: None)
    restored = load_run_system(run)
    trained = Trainer(load_config(run / "config.yaml"), RunDir(run), resume=True).system
    pts = torch.rand(500, 3) * 1.6 - 0.8
    with torch.no_grad():
        assert torch.equal(restored.density(pts), trained.density(pts))
    assert not any(p.requires_grad for p in restored.representation.parameters())
    assert load_config(config_path("reference-nerf"), [f"init.from_run={run}"]).init.from_run == str(run)
    with pytest.raises(DreamcoreError, match="not a dreamcore run folder"):
        load_run_system(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(DreamcoreError, match="no checkpoint"):
        load_run_system(tmp_path / "empty")


def test_a_stage_starts_from_an_earlier_run_and_resumes_from_its_own_checkpoint(tmp_path):
    from dreamcore.runner.trainer import Trainer
    from dreamcore.runner.rundir import RunDir

    first = generate(tiny(tmp_path, "coarse"), announce=lambda *_: None)
    pts = torch.rand(400, 3) * 1.6 - 0.8
    cfg = tiny(tmp_path, "fine", f"init.from_run={first}", "guidance.name=vsd", "guidance.guidance_scale=1.0")
    stage2 = Trainer(cfg, RunDir(tmp_path / "fine"))
    coarse = Trainer(load_config(first / "config.yaml"), RunDir(first), resume=True).system
    with torch.no_grad():
        assert torch.equal(stage2.system.density(pts), coarse.density(pts))
    run = generate(tiny(tmp_path, "fine2", f"init.from_run={first}", "run.steps=3"), announce=lambda *_: None)
    import shutil
    shutil.rmtree(first)  # the resumed stage needs only its own checkpoint
    assert main(["generate", "--resume", str(run), "run.steps=5"]) == 0
    bad = tiny(tmp_path, "bad", f"init.from_run={first}")
    with pytest.raises(DreamcoreError, match="not a dreamcore run folder"):
        Trainer(bad, RunDir(tmp_path / "bad"))
    other = tiny(tmp_path, "other", f"init.from_run={run}", "representation.n_levels=5")
    with pytest.raises(DreamcoreError, match="other sizes"):
        Trainer(other, RunDir(tmp_path / "other"))
