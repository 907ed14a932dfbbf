"""The step's device-side state: the run's generators (device draws + host choices) resume exactly, a non-finite
loss is caught at the next read without overwriting the last good checkpoint, and run.precision trains."""

from __future__ import annotations

import json

import pytest
import torch

from dreamcore.errors import DreamcoreError
from dreamcore.rng import RunGenerator, host_random
from dreamcore.runner.generate import generate, resume_config
from dreamcore.runner.rundir import RunDir
from dreamcore.runner.trainer import Trainer
from test_runner import assert_same_state, ckpt_tensors, tiny


def test_a_run_generator_on_the_cpu_draws_what_a_plain_generator_draws():
    g, plain = RunGenerator("cpu", 5), torch.Generator().manual_seed(5)
    assert torch.equal(torch.rand(7, generator=g), torch.rand(7, generator=plain))
    h = RunGenerator("cpu", 5)
    h.set_host_state(g.host_state())
    assert [host_random(g) for _ in range(3)] == [host_random(h) for _ in range(3)]
    assert 0.0 <= host_random(torch.Generator().manual_seed(0)) < 1.0  # plain generators still work


def test_random_shading_resumes_exactly(tmp_path):
    """renderer.shading=random picks its mode from the host generator: it must be checkpointed too."""
    extra = ("renderer.shading=random",)
    full = generate(tiny(tmp_path, "full", *extra), announce=lambda *_: None)
    part = generate(tiny(tmp_path, "part", *extra, "run.steps=3"), announce=lambda *_: None)
    meta = json.loads((part / "ckpt" / "last.json").read_text())
    assert "rng.host" in meta
    generate(resume_config(part, ["run.steps=6"]), resume=True, announce=lambda *_: None)
    assert_same_state(ckpt_tensors(full), ckpt_tensors(part))


def test_a_non_finite_loss_stops_at_the_next_read_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "nan"
    cfg = tiny(tmp_path, "nan", "run.steps=8", "run.checkpoint_every=3", "run.log_every=100")
    trainer = Trainer(cfg, RunDir(run))
    real = trainer.system.training_step

    def poisoned(cameras, step, generator):
        losses = real(cameras, step, generator)
        if step == 4:  # the 5th step: steps 1..3 are checkpointed, 4 finishes fine
            losses["sds"] = losses["sds"] * float("nan")
        return losses

    trainer.system.training_step = poisoned
    with pytest.raises(DreamcoreError, match="non-finite at step 5"):
        trainer.fit()
    assert trainer.step <= 6  # caught by step 6 (the checkpoint step, before saving) or where the NaN state failed
    assert json.loads((run / "ckpt" / "last.json").read_text())["step"] == 3
    assert all(torch.isfinite(v).all() for k, v in ckpt_tensors(run).items() if v.is_floating_point())
    assert "non-finite" in (run / "log.txt").read_text()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_and_differs_from_fp32(tmp_path, precision):
    base = Trainer(tiny(tmp_path, "fp32"), RunDir(tmp_path / "fp32"))
    low = Trainer(tiny(tmp_path, precision, f"run.precision={precision}"), RunDir(tmp_path / precision))
    assert (low.precision.scaler is not None) == (precision == "fp16")
    for s in range(3):
        a, b = base.train_step(s), low.train_step(s)
    assert all(torch.isfinite(v) for v in b.values())
    low.check_finite()
    pa = dict(base.system.representation.named_parameters())
    pb = dict(low.system.representation.named_parameters())
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)  # autocast changed the arithmetic
    # ... but it is the same optimization: the MLP moved alike (hash-table entries near zero gradient may take
    # Adam's full step in one run and not the other) and the losses agree
    assert all(torch.allclose(pa[k], pb[k], atol=1e-2) for k in pa if k.startswith("mlp"))
    assert sum(b.values()).item() == pytest.approx(sum(a.values()).item(), rel=0.2)


def test_renderer_geometry_stays_float32_under_autocast():
    """Splats and meshes render wholly in float32 under run.precision's autocast; the NeRF's network may run in
    bf16 but its outputs are float32 and its normals are differences of float32 densities."""
    from dreamcore.cameras import turntable_cameras
    from dreamcore.registry import build
    from dreamcore.config import load_config

    cfg = load_config(None, ["representation.name=gaussians", "renderer.name=splat",
                             "representation.init_points=300"])
    gaussians, splat = build("representation", cfg.representation), build("renderer", cfg.renderer)
    cams = turntable_cameras(2)
    white = torch.ones(2, 3)
    plain = splat(gaussians, cams, 16, 16, white)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = splat(gaussians, cams, 16, 16, white)
    assert auto.rgb.dtype == torch.float32 and torch.equal(auto.rgb, plain.rgb)
    nerf = build("representation", load_config(None, ["representation.name=nerf"]).representation)
    pts = torch.rand(64, 3) * 0.6 - 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sigma, rgb = nerf(pts)
        normals = nerf.normals(pts)
    assert sigma.dtype == rgb.dtype == torch.float32
    assert torch.equal(normals, nerf.normals(pts))
