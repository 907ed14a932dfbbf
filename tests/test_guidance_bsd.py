"""PlacidDreamer's balanced score distillation (``bsd``): the min-norm (MGDA) algebra, the update against its
formula with replayed draws, the Pareto-stationary ray on the Gaussian prior (guidance-wave2.md §3), the recipe,
and end-to-end runs. float64 throughout."""

import pytest
import torch

from dreamcore.config import config_path, load_config
from dreamcore.guidance import bsd as bsd_module
from dreamcore.guidance.bsd import BSDGuidance, min_norm_combination
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of
from test_guidance_asd_async import grad_at, runs_on_every_representation

C = Scheduled.constant


def inner(a, b):
    return (a * b).flatten(1).sum(1)


def test_min_norm_identities_on_random_vectors():
    b_, n = 64, 12
    c = torch.randn(b_, n, generator=gen(0), dtype=D)
    d = torch.randn(b_, n, generator=gen(1), dtype=D) * torch.rand(b_, 1, generator=gen(2), dtype=D) * 3
    b, alpha = min_norm_combination(c, d)
    nb = b.norm(dim=1)
    assert bool((nb <= torch.minimum(c.norm(dim=1), d.norm(dim=1)) + 1e-12).all())
    assert bool((inner(b, c) >= nb**2 - 1e-10).all()) and bool((inner(b, d) >= nb**2 - 1e-10).all())
    mid = (alpha > 0) & (alpha < 1)
    assert mid.sum() > 10
    assert torch.allclose(inner(b, c)[mid], nb[mid] ** 2, atol=1e-10)
    assert torch.allclose(inner(b, d)[mid], nb[mid] ** 2, atol=1e-10)
    # it is the minimum over the segment (a fine grid of α does no better)
    grid = torch.linspace(0, 1, 2001, dtype=D)[:, None, None]
    seg = (grid * c + (1 - grid) * d).norm(dim=-1).min(0).values
    assert bool((nb <= seg + 1e-12).all()) and bool((seg - nb < 1e-5).all())
    # α* = 1 when ⟨c, d⟩ ≥ ‖c‖² (c is the shorter, "inside" direction); b = 0 iff anti-parallel
    d2 = 2.0 * c + 0.1 * torch.randn(b_, n, generator=gen(3), dtype=D)
    ok = inner(c, d2) >= c.norm(dim=1) ** 2
    assert ok.all() and torch.equal(min_norm_combination(c, d2)[1], torch.ones(b_, dtype=D))
    b0, a0 = min_norm_combination(c, -0.3 * c)
    assert b0.abs().max().item() < 1e-12 and torch.allclose(a0, torch.full((b_,), 0.3 / 1.3, dtype=D))
    assert min_norm_combination(c, 0.3 * c)[0].norm(dim=1).min().item() > 0
    # one global product (the 2D toy) differs from per-sample products
    bg, ag = min_norm_combination(c, d, per_sample=False)
    assert torch.allclose(ag, ag[:1].expand(b_)) and not torch.allclose(bg, b)


@pytest.mark.parametrize("variant", ["standard", "auto"])
def test_gradient_equals_its_formula_with_replayed_draws(variant):
    prior = GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0])
    guidance = BSDGuidance(BSDGuidance.Config(variant=variant, t_min=C(0.02), t_max=C(0.98)))
    b = 6
    x = torch.randn(b, 2, 2, 2, generator=gen(1), dtype=D)
    g = grad_at(guidance, prior, x, plain_views(prior, b), seed=4)
    r = gen(4)
    t = torch.randint(20, 981, (b,), generator=r)
    eps = torch.randn(x.shape, generator=r).to(x) + 0.1 * torch.randn((b, 2, 1, 1), generator=r).to(x)
    a, s = prior.schedule.alpha_sigma(t)
    x_t = a.view(-1, 1, 1, 1) * x + s.view(-1, 1, 1, 1) * eps
    e_y = prior.predict_epsilon(x_t, t, GaussianPrior.embedding(0).expand(b, 1))
    e_u = prior.predict_epsilon(x_t, t, GaussianPrior.embedding(1).expand(b, 1))
    if variant == "standard":
        cls, smooth, w = 15.0 * (e_y - e_u), e_u, a
    else:
        cls, smooth, w = e_y - e_u, 1.25 * (e_u - eps), (e_u - eps).flatten(1).norm(dim=1) * s / 50
    dd, cc = smooth.flatten(1), cls.flatten(1)
    alpha = (((dd - cc) * dd).sum(1) / ((dd - cc) ** 2).sum(1)).clamp(0, 1).view(-1, 1, 1, 1)
    expected = w.view(-1, 1, 1, 1) * (alpha * cls + (1 - alpha) * smooth)
    assert torch.allclose(g, expected, atol=1e-12)
    assert 0 < guidance.last_alpha.min() or guidance.last_alpha.max() < 1  # a non-trivial mix somewhere


def test_noise_free_flow_halts_on_the_pareto_ray_not_at_the_cfg_mean(monkeypatch):
    """s_y = s_∅: c = 15 κ (μ_∅ − μ_y) (constant), d = κ (x − μ_∅) (+ ρ ε, removed here): b = 0 exactly on the
    ray μ_∅ + β (μ_y − μ_∅), β ≥ 0, not elsewhere; the flow from a generic start ends on the ray, far from
    SDS's μ_ω (β = ω)."""
    monkeypatch.setattr(bsd_module.rng, "normal", lambda shape, generator, like=None, device=None:
                        torch.zeros(shape, dtype=like.dtype))
    mu = torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D)
    prior = GaussianPrior(mu, 0.5)
    mu_y, mu_u = mu[0], mu[1]
    v = mu_y - mu_u
    guidance = BSDGuidance(BSDGuidance.Config(offset_noise=0.0, t_min=C(0.02), t_max=C(0.98)))
    betas = torch.tensor([0.0, 0.3, 1.0, 4.0, 20.0], dtype=D)
    on_ray = mu_u + betas.view(-1, 1, 1, 1) * v
    assert grad_at(guidance, prior, on_ray, plain_views(prior, 5), seed=1).abs().max().item() < 1e-12
    off = torch.cat([mu_u - 0.5 * v[None], on_ray[2:3] + 0.3 * torch.randn(1, 2, 2, 2, generator=gen(5), dtype=D)])
    assert grad_at(guidance, prior, off, plain_views(prior, 2), seed=1).flatten(1).norm(dim=1).min().item() > 1e-3

    def dist_to_ray(x):
        beta = (inner(x - mu_u, v[None]) / (v * v).sum()).clamp_min(0)
        return (x - mu_u - beta.view(-1, 1, 1, 1) * v).flatten(1).norm(dim=1), beta

    x = mu_u + 2.0 * torch.randn(4, 2, 2, 2, generator=gen(7), dtype=D)
    d0, _ = dist_to_ray(x)
    g = gen(3)
    for k in range(400):
        x = x - 0.5 * guidance.gradient(x, render_of(x)[1], None, prior, plain_views(prior, 4), k, g)
    d1, beta = dist_to_ray(x)
    assert bool((d1 < 1e-8 * d0).all())  # d0 ≈ 5–7, d1 ≈ 1e-16
    assert bool((beta < 8.0).all())  # nowhere near μ_ω = μ_∅ + 16 (μ_y − μ_∅) of CFG with c's weight


def test_recipe_has_the_official_defaults():
    cfg = load_config(config_path("bsd"), [])
    g = cfg.guidance
    assert g.name == "bsd" and g.variant == "standard" and g.classifier_scale == 15.0 and g.smoothing_scale == 1.0
    assert g.weight(0) == 0.1 and g.offset_noise == 0.1 and g.per_sample
    assert g.t_min(0) == 0.02 and g.t_max(0) == 0.98 and g.t_max(1500) == 0.5
    assert BSDGuidance.Config().classifier_scale == 15.0  # the code's hard-coded λ, not the README's 18
    assert cfg.representation.name == "gaussians" and cfg.run.steps == 5000 and cfg.camera.batch_size == 4


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_runs_on_nerf_gaussians_and_dmtet(tmp_path):
    runs_on_every_representation(tmp_path, "bsd")
