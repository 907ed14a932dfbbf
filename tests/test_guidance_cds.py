"""Consistent3D's consistency distillation sampling (``cds``) against its closed forms (guidance-wave2.md §5): zero
on a point-mass prior, the affine field a (x + σ̃_t ε − μ_ω) and its fixed point on a Gaussian; the run-long noise
(shared, gathered for pixel subsets, checkpointed: exact resume); the recipe's converted CFG; end-to-end runs.

VE form with b(σ̃) = σ̃ / (s² + σ̃²): ε*(x_t) = b(σ̃_t)(z_t − μ), z_t = x + σ̃_t ε, so with one Euler step t → t',
g = a (z_t − μ_ω), a = b(σ̃_t) − b(σ̃_{t'}) (1 − (σ̃_t − σ̃_{t'}) b(σ̃_t)). float64 throughout."""

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore import registry
from dreamcore.guidance.cds import CDSGuidance, sqrt_anneal
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of
from test_guidance_asd_async import runs_on_every_representation
from test_runner import TINY, assert_same_state

C = Scheduled.constant


def cds(**kw):
    base = dict(t_min=C(0.1), t_max=C(0.98))
    base.update(kw)
    return CDSGuidance(CDSGuidance.Config(**base))


def grad_at(guidance, prior, x, views, step=0, seed=0):
    _, render = render_of(x)
    return guidance.gradient(x, render, None, prior, views, step, gen(seed))


@pytest.mark.parametrize("omega", [1.0, 7.5, 101.0])
def test_point_mass_prior_gives_exactly_zero(omega):
    """s = 0: the PF-ODE is straight and one Euler step is exact, so ε₂ = ε₁ for every x, ε, t, t' and ω."""
    prior = GaussianPrior(torch.randn(3, 2, 3, 3, generator=gen(0), dtype=D), 0.0)
    guidance = cds(guidance_scale=C(omega))
    x = 3.0 * torch.randn(5, 2, 3, 3, generator=gen(1), dtype=D)
    for step in (0, 1000, 3000):
        g = grad_at(guidance, prior, x + step * 1e-4, plain_views(prior, 5), step=step, seed=step)
        assert g.abs().max().item() < 1e-9


def test_gaussian_prior_gives_the_affine_field_with_fixed_point_mu_omega_minus_sigma_eps():
    s_data, omega = 0.5, 7.5
    mu = torch.randn(3, 2, 3, 3, generator=gen(0), dtype=D)
    prior = GaussianPrior(mu, s_data)
    mu_w = mu[1] + omega * (mu[0] - mu[1])
    guidance = cds(guidance_scale=C(omega))
    b = 6
    x = torch.randn(b, 2, 3, 3, generator=gen(1), dtype=D)
    step = 750
    g = grad_at(guidance, prior, x, plain_views(prior, b), step=step, seed=3)
    t_prev = round(sqrt_anneal(700, 100, 3000, step))
    assert t_prev == 400
    t = t_prev + torch.randint(100, 300, (b,), generator=gen(3))  # replay the one draw before the noise
    eps = guidance.noise.field
    assert eps.shape == (1, 2, 3, 3)  # one field, shared by the batch

    def st(tt):
        a, s = prior.schedule.alpha_sigma(torch.as_tensor(tt).reshape(-1))
        return (s / a).view(-1, 1, 1, 1)

    bfun = lambda sv: sv / (s_data**2 + sv**2)  # noqa: E731
    s_t, s_p = st(t), st(torch.full((b,), t_prev))
    a = bfun(s_t) - bfun(s_p) * (1 - (s_t - s_p) * bfun(s_t))
    assert bool((a > 0).all())
    assert torch.allclose(g, a * (x + s_t * eps - mu_w), atol=1e-12)
    # fixed point for a given (t, t'): the noised render lands on the mode, x* = μ_ω − σ̃_t ε
    fixed = cds(guidance_scale=C(omega), perturb_factor=1)
    fixed.noise.field = eps.clone()
    t_fix = torch.tensor([t_prev + 100])
    x_star = (mu_w - st(t_fix) * eps).expand(b, -1, -1, -1).clone()
    assert grad_at(fixed, prior, x_star, plain_views(prior, b), step=step).abs().max().item() < 1e-12
    assert grad_at(fixed, prior, mu_w.expand(b, -1, -1, -1).clone(), plain_views(prior, b),
                   step=step).abs().max().item() > 1e-2  # μ_ω itself is not a zero


def test_noise_is_fixed_across_steps_and_pixel_subsets_see_the_same_field():
    prior = GaussianPrior(torch.randn(3, 2, 4, 4, generator=gen(0), dtype=D), 0.5)
    guidance = cds(guidance_scale=C(7.5))
    x = torch.randn(3, 2, 4, 4, generator=gen(1), dtype=D)
    views = plain_views(prior, 3)
    g_full = grad_at(guidance, prior, x, views, seed=5)
    field = guidance.noise.field.clone()
    grad_at(guidance, prior, x, views, step=10, seed=6)
    assert torch.equal(guidance.noise.field, field)  # not redrawn
    # a pixel subset [B, C, N, 1] with its indices: the same (whole-image) field, gathered
    sub = cds(guidance_scale=C(7.5))
    idx = torch.stack([torch.randperm(16, generator=gen(k))[:5] for k in range(3)])
    gather = lambda v: v.flatten(2).gather(2, idx[:, None, :].expand(3, 2, 5))[..., None]  # noqa: E731
    xs = gather(x)
    _, render = render_of(xs)
    render.pixel_index, render.image_size = idx, (4, 4)
    g_sub = sub.gradient(xs, render, None, prior, views, 0, gen(5))
    assert sub.noise.field.shape == (1, 2, 4, 4) and torch.equal(sub.noise.field, field)
    assert torch.allclose(g_sub, gather(g_full), atol=1e-12)


def test_recipe_converts_threestudio_scale_and_keeps_the_official_schedule():
    cfg = load_config(config_path("cds"), [])
    g = cfg.guidance
    assert g.name == "cds" and g.scale_convention == "threestudio"
    guidance = registry.build("guidance", g)
    assert guidance.omega(0) == 101.0 and guidance.omega(1500) == 76.0 and guidance.omega(3000) == 51.0
    assert CDSGuidance(CDSGuidance.Config()).omega(0) == 101.0  # the module default is already in ω
    assert g.weighting == "uniform" and g.grad_clip(0) == 2.0 and g.grad_clip(3000) == 8.0
    assert (g.cur_start, g.cur_end, g.cur_steps, g.cur_anneal) == (700, 100, 3000, "sqrt")
    assert (g.perturb_factor, g.end_gap, g.share_noise) == (200, 100, True)
    assert cfg.camera.batch_size == 8 and cfg.run.steps == 3000


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_resume_is_exact_including_the_fixed_noise(tmp_path):
    common = [*TINY, "run.steps=4", "run.checkpoint_every=2", "guidance.name=cds"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, f"run.dir={full}"]) == 0
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, "run.steps=2", f"run.dir={part}"]) == 0
    assert main(["generate", "--resume", str(part), "run.steps=4"]) == 0
    a, b = load_file(str(full / "ckpt/last.safetensors")), load_file(str(part / "ckpt/last.safetensors"))
    assert a["model.guidance.noise.field"].shape == (1, 3, 24, 24)  # the whole image, pixel subsets gather it
    assert_same_state(a, b)


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_runs_on_nerf_gaussians_and_dmtet(tmp_path):
    runs_on_every_representation(tmp_path, "cds")
