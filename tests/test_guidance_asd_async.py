"""ScaleDreamer's asynchronous score distillation (``asd-async``) against its closed forms on the analytic priors
(guidance-wave2.md §2), its recipe, and end-to-end runs on NeRF, Gaussians and DMTet. float64 throughout.

Gaussian toy with s_c = s_u = s: ε*_k(α x + σ ε) = κ (x − μ_k) + ρ ε, κ = α σ / D, ρ = σ² / D, D = α² s² + σ², so
g / w = κ_t (x − μ_ω) − κ_{t⁺} (x − μ_y) + (ρ_t − ρ_{t⁺}) ε, μ_ω = μ_∅ + ω (μ_y − μ_∅)."""

import json

import pytest
import torch

from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore import registry
from dreamcore.guidance.asd_async import AsyncScoreDistillation
from dreamcore.guidance.csd import CSDGuidance
from dreamcore.priors.analytic import GaussianPrior, ReferenceSetPrior
from dreamcore.schedule import Scheduled
from test_gaussians import GTINY
from test_guidance import D, gen, plain_views, render_of
from test_runner import TINY

C = Scheduled.constant
DTINY = ["run.steps=3", "run.progress=false", "run.val_every=0", "run.checkpoint_every=0", "camera.resolution=32",
         "camera.batch_size=2", "representation.resolution=16", "export.formats=[]", "eval.views=2",
         "eval.resolution=16", "prior.bank_views=4"]


def grad_at(guidance, prior, x, views, step=0, seed=0):
    _, render = render_of(x)
    return guidance.gradient(x, render, None, prior, views, step, gen(seed))


def runs_on_every_representation(tmp_path, name, *extra):
    """``dreamcore generate`` with guidance ``name`` on NeRF, Gaussians and DMTet (tiny sizes, no export)."""
    nerf, gs, dmtet = tmp_path / "nerf", tmp_path / "gaussians", tmp_path / "dmtet"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "run.steps=3", f"guidance.name={name}",
                 *extra, f"run.dir={nerf}"]) == 0
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=3",
                 f"guidance.name={name}", *extra, f"run.dir={gs}"]) == 0
    assert main(["generate", "--config", "configs/reference-dmtet.yaml", *DTINY, f"guidance.name={name}", *extra,
                 f"run.dir={dmtet}"]) == 0
    for run in (nerf, gs, dmtet):
        assert f" {name.replace('-', '_')}=" in (run / "log.txt").read_text()  # the loss term is logged by name
        assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0
        assert f"name: {name}" in (run / "config.yaml").read_text()
    return nerf, gs, dmtet


def gaussian_prior(std=0.5, seed=0):
    return GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(seed), dtype=D), std)


@pytest.mark.parametrize("kind", ["gaussian", "refs"])
def test_omega_one_without_shift_is_identically_zero(kind):
    prior = (GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0]) if kind == "gaussian"
             else ReferenceSetPrior(torch.randn(5, 2, 2, 2, generator=gen(2), dtype=D)))
    asd = AsyncScoreDistillation(AsyncScoreDistillation.Config(guidance_scale=C(1.0), plus_ratio=C(0.0)))
    x = torch.randn(6, 2, 2, 2, generator=gen(1), dtype=D)
    g = grad_at(asd, prior, x, plain_views(prior, 6), seed=3)
    assert g.abs().max().item() < 1e-13


@pytest.mark.parametrize("omega", [2.0, 7.5])
def test_without_shift_it_is_csd_with_scale_omega_minus_one_on_the_same_draws(omega):
    """Δt = 0: ε̃_ω(x_t) − ε_y(x_t) = (ω − 1)(ε_y − ε_∅): our CSD with a_y = ω − 1, a_∅ = −(ω − 1), w = 1 − ᾱ."""
    prior = GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0])
    rng_cfg = dict(t_min=C(0.05), t_max=C(0.9), weighting="sds")
    asd = AsyncScoreDistillation(AsyncScoreDistillation.Config(guidance_scale=C(omega), plus_ratio=C(0.0), **rng_cfg))
    csd = CSDGuidance(CSDGuidance.Config(coef_cond=C(omega - 1), coef_negative=C(1 - omega), coef_null=C(0.0),
                                         **rng_cfg))
    x = torch.randn(8, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 8)
    g_asd, g_csd = grad_at(asd, prior, x, views, seed=5), grad_at(csd, prior, x, views, seed=5)
    assert g_csd.abs().max().item() > 1e-3
    assert torch.allclose(g_asd, g_csd, atol=1e-12, rtol=0)
    # and the Gaussian closed form: w (ω − 1) κ_t (μ_∅ − μ_y), no x and no ε (equal stds)
    prior = gaussian_prior(0.4)
    g = grad_at(AsyncScoreDistillation(AsyncScoreDistillation.Config(
        guidance_scale=C(omega), plus_ratio=C(0.0), t_min=C(0.3), t_max=C(0.3))), prior, x, plain_views(prior, 8))
    t = torch.tensor([300])
    a, s = prior.schedule.alpha_sigma(t)
    expected = s**2 * (omega - 1) * prior.kappa(t, 0) * (prior.means[1] - prior.means[0])
    assert torch.allclose(g, expected.expand_as(g), atol=1e-12)


def test_shifted_branch_is_noisier_and_matches_the_closed_form():
    """Replay t, ε and u: t⁺ = t + ⌊min(r (t − t_min), T − 1 − t)·u⌋ > t, and g equals the affine closed form."""
    prior = gaussian_prior(0.6)
    mu_y, mu_u = prior.means[0], prior.means[1]
    omega, r = 7.5, 0.4
    cfg = AsyncScoreDistillation.Config(guidance_scale=C(omega), plus_ratio=C(r), t_min=C(0.1), t_max=C(0.9))
    asd = AsyncScoreDistillation(cfg)
    b = 16
    x = torch.randn(b, 2, 2, 2, generator=gen(1), dtype=D)
    g = grad_at(asd, prior, x, plain_views(prior, b), seed=7)
    rep = gen(7)
    t = torch.randint(100, 901, (b,), generator=rep)
    eps = torch.randn(x.shape, generator=rep).to(x)
    u = torch.rand((b,), generator=rep).to(D)
    delta = torch.minimum(r * (t - 100).to(D), (999 - t).to(D)) * u
    t_plus = (t + delta.floor().long()).clamp(1, 999)
    assert bool((t_plus >= t).all()) and int((t_plus > t).sum()) >= b // 2
    assert torch.equal(asd.shifted_t(t, 0, prior, gen(99)) >= t, torch.ones(b, dtype=torch.bool))

    def coefs(tt):
        a, s = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(tt))
        dd = a**2 * 0.36 + s**2
        return a * s / dd, s**2 / dd, s

    k_t, rho_t, s_t = coefs(t)
    k_p, rho_p, _ = coefs(t_plus)
    mu_w = mu_u + omega * (mu_y - mu_u)
    expected = s_t**2 * (k_t * (x - mu_w) - k_p * (x - mu_y) + (rho_t - rho_p) * eps)
    assert torch.allclose(g, expected, atol=1e-12)
    # the pitfall: a *less* noisy second branch (t − Δ) would give another gradient
    t_minus = (t - delta.floor().long()).clamp(1, 999)
    k_m, rho_m, _ = coefs(t_minus)
    wrong = s_t**2 * (k_t * (x - mu_w) - k_m * (x - mu_y) + (rho_t - rho_m) * eps)
    assert (g - wrong).abs().max().item() > 1e-3


def test_noise_variance_is_the_small_rho_gap_not_sdss():
    """Fixed t, t⁺ (plus_random off, t_min fixed below t by a scheduled bound): Var(g) = w² (ρ_{t⁺} − ρ_t)² ≪ SDS's."""
    prior = GaussianPrior(torch.zeros(1, 1, 1, 1, dtype=D), 0.6)
    cfg = AsyncScoreDistillation.Config(guidance_scale=C(1.0), plus_ratio=C(0.5), plus_random=False,
                                        t_min=C(0.2), t_max=C(0.2))
    asd = AsyncScoreDistillation(cfg)
    asd.cfg.t_min = C(0.1)  # Δ measured from t_min = 100 while t is sampled in [200, 200]: t⁺ = 250
    asd.sample_t = lambda b, step, prior, generator: torch.full((b,), 200, dtype=torch.long)
    n = 20000
    x = torch.full((n, 1, 1, 1), 0.3, dtype=D)
    g = grad_at(asd, prior, x, plain_views(prior, n))
    a, s = prior.schedule.alpha_sigma(torch.tensor([200, 250]))
    rho = s**2 / (a**2 * 0.36 + s**2)
    w = s[0] ** 2
    assert g.var().item() == pytest.approx((w * (rho[1] - rho[0])).item() ** 2, rel=0.05)
    assert g.var().item() < 0.05 * (w * (1 - rho[0])).item() ** 2  # 3.5% of SDS's at t = 200


def test_perp_neg_weights_are_scaled():
    """With Perp-Neg on, ε̃ uses the views' negative weights × perp_neg_scale (−guidance_perp_neg = 0.5)."""
    from dreamcore.guidance import common
    from dreamcore.guidance.views import ViewConditions

    prior = GaussianPrior(torch.randn(4, 2, 2, 2, generator=gen(0), dtype=D), 0.5)
    b = 4
    e = [GaussianPrior.embedding(k).expand(b, 1) for k in range(4)]
    w = torch.full((b,), -2.0, dtype=D)
    views = ViewConditions(e[0], e[1], e[0], e[2], ["front"] * b, negatives=[(e[3], w)])
    x = torch.randn(b, 2, 2, 2, generator=gen(1), dtype=D)
    cfg = dict(guidance_scale=C(7.5), plus_ratio=C(0.0), t_min=C(0.3), t_max=C(0.3))
    half = grad_at(AsyncScoreDistillation(AsyncScoreDistillation.Config(perp_neg_scale=0.5, **cfg)), prior, x, views)
    t = torch.full((b,), 300)
    noise = torch.randn(x.shape, generator=(lambda g: (torch.randint(300, 301, (b,), generator=g), g)[1])(gen(0))).to(x)
    x_t = prior.schedule.add_noise(x, noise, t)
    rows = [prior.predict_epsilon(x_t, t, v) for v in (e[0], e[1], e[3])]
    eps = common.perp_neg(rows[1], rows[0], [(rows[2], w * 0.5)], 7.5)
    s2 = prior.schedule.alpha_sigma(t)[1].view(-1, 1, 1, 1) ** 2
    assert torch.allclose(half, s2 * (eps - rows[0]), atol=1e-12)


def test_recipe_has_the_official_defaults():
    cfg = load_config(config_path("asd-async"), [])
    g = cfg.guidance
    assert g.name == "asd-async" and g.scale_convention == "diffusers"
    assert registry.build("guidance", g).omega(0) == 7.5
    assert g.t_min(0) == 0.5 and g.t_min(25000) == 0.02 and g.t_max(0) == 0.98 and g.t_max(25000) == 0.5
    assert g.plus_ratio(0) == 0.1 and g.plus_random and g.weighting == "sds" and g.perp_neg_scale == 0.5
    assert cfg.views.perp_neg and cfg.views.front_threshold == 30.0 and cfg.run.steps == 25000
    assert tuple(cfg.optimizer.betas) == (0.0, 0.99)


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_runs_on_nerf_gaussians_and_dmtet(tmp_path):
    runs_on_every_representation(tmp_path, "asd-async")
