"""The StableDreamer recipe (guidance-wave2.md §6): SDS read as L2 to x̂₀, an image-space stage, then a
latent-space stage that continues the same Gaussians with its own prior (``refine.own: [prior]``)."""

import json
from pathlib import Path

import pytest
import torch

from dreamcore import registry
from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.runner.init import load_run_system
from dreamcore.runner.refine import first_stage_formats, refined_formats, stage_config
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of

# both stages at test sizes; the first on the camera-conditioned reference prior, the second on the
# view-labelled one, so that the stage's own prior is visible in its config
TINY = ["run.steps=4", "run.checkpoint_every=2", "run.val_every=0", "run.progress=false", "camera.resolution=24",
        "camera.batch_size=2", "representation.init_points=300", "eval.views=2", "eval.resolution=16",
        "export.resolution=32", "export.texture_size=64", "export.target_faces=500", "export.turntable_frames=2",
        "system.densify.start=1", "system.densify.every=1", "system.densify.grad_threshold=0.0"]
STAGE2 = ("[run.steps=3,run.checkpoint_every=2,camera.resolution=24,camera.batch_size=1,prior.name=reference,"
          "prior.camera_conditioned=false,prior.bank_views=4]")


def test_sds_with_the_ism_weighting_is_the_l2_pull_to_the_denoised_image():
    """g = w(ε̃ − ε) with w = σ/α equals x − x̂₀, x̂₀ = (x_t − σ ε̃)/α: StableDreamer's reading, float64."""
    prior = GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0])
    omega = 7.5
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=Scheduled.constant(omega), weighting="ism"))
    x = torch.randn(4, 2, 2, 2, generator=gen(1), dtype=D)
    _, render = render_of(x)
    g = sds.gradient(x, render, None, prior, plain_views(prior, 4), 0, gen(9))
    r = gen(9)  # replay the draws: t, then ε
    t = torch.randint(20, 981, (4,), generator=r)
    eps = torch.randn(x.shape, generator=r).to(x)
    a, s = (common.broadcast(v, x) for v in prior.schedule.alpha_sigma(t))
    x_t = a * x + s * eps
    e = [s * (x_t - a * prior.means[k]) / (a**2 * prior.stds[k] ** 2 + s**2) for k in (0, 1)]
    x0_hat = (x_t - s * (e[1] + omega * (e[0] - e[1]))) / a
    assert torch.allclose(g, x - x0_hat, atol=1e-12)


def test_the_recipe_switches_prior_between_its_stages_and_the_second_stage_writes_everything(tmp_path):
    cfg = load_config(config_path("stabledreamer"), [f"run.dir={tmp_path}"])
    assert cfg.prior.name == "deepfloyd-if" and cfg.guidance.weighting == "ism" and cfg.representation.name == "gaussians"
    assert cfg.guidance.t_max(0) > cfg.guidance.t_max(cfg.run.steps)  # the noise window anneals downwards
    stage = stage_config(cfg, tmp_path)
    assert stage.prior.name == "stable-diffusion" and stage.prompt == cfg.prompt and stage.views == cfg.views
    assert stage.representation.name == "gaussians" and not stage.system.densify.enabled
    # Gaussians continued as Gaussians: the stage writes every format (the final model.ply too)
    assert refined_formats(cfg) == cfg.export.formats and first_stage_formats(cfg) == []
    # without refine.own the stage inherits the first stage's prior, as every other two-stage recipe does
    inherit = load_config(config_path("stabledreamer"), ["refine.own=[]"])
    assert stage_config(inherit, tmp_path).prior == inherit.prior
    with pytest.raises(DreamcoreError, match="refine.own: guidance is not an inherited section"):
        stage_config(load_config(config_path("stabledreamer"), ["refine.own=[prior,guidance]"]), tmp_path)
    # an override of an inherited key would be ignored silently: it is refused, saying what to do instead
    for key, hint in (("eval.views=3", "add eval to refine.own"), ("run.seed=3", "whole job")):
        with pytest.raises(DreamcoreError, match=f"{key.split('=')[0]} is inherited.*{hint}"):
            stage_config(load_config(config_path("stabledreamer"), [f"refine.overrides=[{key}]"]), tmp_path)


def test_a_missing_model_of_the_second_stage_fails_before_the_first_stage_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    run = tmp_path / "run"
    assert main(["generate", "--config", "configs/stabledreamer.yaml", *TINY, "prior.name=reference",
                 f"run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "stabilityai/stable-diffusion-2-1-base" in err and "Traceback" not in err and not run.exists()
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    assert main(["generate", "--config", "configs/stabledreamer.yaml", *TINY, "prior.name=reference",
                 f"refine.overrides=[prior.model={folder}]", f"run.dir={run}"]) == 2
    assert "no model_index.json" in capsys.readouterr().err and not run.exists()


def test_two_stages_with_two_priors_continue_the_same_gaussians(tmp_path):
    run = tmp_path / "sd"
    assert main(["generate", "--config", "configs/stabledreamer.yaml", *TINY, "prior.name=reference",
                 "export.formats=[ply]", f"refine.overrides={STAGE2}", f"run.dir={run}"]) == 0
    stage_dir = run / "refine"
    first, second = load_config(run / "config.yaml"), load_config(stage_dir / "config.yaml")
    assert first.prior.camera_conditioned and not second.prior.camera_conditioned
    assert second.init.from_run == str(run) and second.export.formats == ["ply"]
    # the final Gaussians are the second stage's, copied up (the first stage wrote none)
    assert (run / "model.ply").read_bytes() == (stage_dir / "model.ply").read_bytes()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["stage1"]["steps"] == 4 and "scene_psnr" in metrics["stage1"]
    assert metrics["export"]["files"] == {"ply": str(run / "model.ply")}
    # init.from_run between two Gaussian runs copies the Gaussians exactly (no resampling of the density)
    source = load_run_system(run)
    fresh = registry.build("system", second.system, full=second)
    fresh.initialize_from(source)
    for name, p in source.representation.parameters_by_name().items():
        assert torch.equal(getattr(fresh.representation, name).detach(), p.detach()), name
    assert len(fresh.representation) == len(source.representation) != second.representation.init_points


def test_gaussians_continue_across_sh_degrees():
    from dreamcore.representations.gaussians import Gaussians

    low = Gaussians(Gaussians.Config(sh_degree=0, init_points=50))
    high = Gaussians(Gaussians.Config(sh_degree=2, init_points=7))
    with torch.no_grad():
        low.sh_dc.add_(0.25)
    high.copy_from(low)
    assert len(high) == 50 and torch.equal(high.sh_dc, low.sh_dc) and high.sh_rest.shape == (50, 8, 3)
    assert not high.sh_rest.any() and high.grad_accum.shape == (50,)
    with torch.no_grad():
        high.sh_rest.normal_()
    low.copy_from(high)
    assert low.sh_rest.shape == (50, 0, 3) and torch.equal(low.means, high.means)


def test_the_recipe_as_written_image_space_if_then_latent_sd_on_tiny_pipelines(tmp_path):
    """The paper's two priors — DeepFloyd IF stage I (pixels), then Stable Diffusion (VAE latents) — as tiny
    random-weight diffusers folders loaded through the real code."""
    pytest.importorskip("diffusers")
    import tiny_diffusers

    if_folder = tiny_diffusers.save_deepfloyd_if(tmp_path / "if")
    sd_folder = tiny_diffusers.save_stable_diffusion(tmp_path / "sd")
    run = tmp_path / "run"
    stage2 = (f"[run.steps=2,run.checkpoint_every=2,camera.resolution=24,camera.batch_size=1,"
              f"prior.model={sd_folder},prior.cache_dir={tmp_path / 'c'}]")
    assert main(["generate", "--config", "configs/stabledreamer.yaml", *TINY, f"prior.model={if_folder}",
                 f"prior.cache_dir={tmp_path / 'c'}", "export.formats=[ply]", f"refine.overrides={stage2}",
                 f"run.dir={run}"]) == 0
    assert "name: deepfloyd-if" in (run / "config.yaml").read_text()
    assert "name: stable-diffusion" in (run / "refine" / "config.yaml").read_text()
    assert " sds=" in (run / "refine" / "log.txt").read_text() and (run / "model.ply").is_file()
