"""Guided consistency sampling (``gcs``) against its closed forms on a point-mass prior (guidance-wave2.md §10),
against autograd of its three losses as written, Brightness-Equalized Generation on the Gaussians, the recipe,
exact resume with the fixed noise, a host-read-free step, and end-to-end runs. float64 throughout."""

import pytest
import torch

from dreamcore.config import config_path, load_config
from dreamcore.guidance import common
from dreamcore.guidance.gcs import GCSGuidance
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.representations.gaussians import Gaussians, render_brightness, rgb_to_sh_dc
from dreamcore.schedule import Scheduled
from test_gaussians import GTINY
from test_guidance import D, gen, plain_views, render_of
from test_guidance_asd_async import runs_on_every_representation
from test_runner import assert_same_state, run_and_resume

C = Scheduled.constant


def directions(guidance, prior, x, views, step=0, seed=0):
    _, render = render_of(x)
    return guidance.directions(x, render, None, prior, views, step, gen(seed))


def point_mass(names, seed=0):
    return GaussianPrior(torch.randn(3, 2, 3, 3, generator=gen(seed), dtype=D), 0.0, names=names)


@pytest.mark.parametrize("step", [0, 800, 3000])
def test_omega_one_with_the_prompt_as_null_model_gives_zero_losses(step):
    """Point mass, ω = 1, y = ∅_null: every one-step solver is exact and self-inverse: L_cc = L_gc = L_cp = 0."""
    prior = point_mass({"y": 0, "uncond": 1, "null": 0})
    guidance = GCSGuidance(GCSGuidance.Config(guidance_scale=C(1.0)))
    x = 2.0 * torch.randn(4, 2, 3, 3, generator=gen(1), dtype=D)
    d = directions(guidance, prior, x, plain_views(prior, 4), step=step, seed=step)
    for name in ("cc", "gc", "cp"):
        assert d[name].abs().max().item() < 1e-8, name
    t_e, t_s, t_t = guidance.last_timesteps
    assert bool((t_e < t_s).all()) and bool((t_s < t_t).all())


def test_cfg_gives_a_constant_push_along_the_classifier_direction():
    """Point mass, ω > 1, ∅_null = ∅: x̂₀_perp = μ_ω, x̂₀_null = μ_∅, so ∂L_gc/∂x = 2 (μ_∅ − μ_ω) = −2ω(μ_y − μ_∅)
    for every x (no restoring force), ∂L_cp/∂I = the same, and L_cc's residual is
    A − B = −σ_e (μ_ω − μ_∅)(1/σ̃_s − 1/σ̃_t), so ∂L_cc/∂x = 2 α_e (A − B)."""
    omega = 7.5
    prior = point_mass({"y": 0, "uncond": 1, "null": 1})
    mu_y, mu_u = prior.means[0], prior.means[1]
    push = mu_u - (mu_u + omega * (mu_y - mu_u))
    guidance = GCSGuidance(GCSGuidance.Config(guidance_scale=C(omega)))
    for seed, scale in [(1, 0.1), (2, 5.0)]:
        x = scale * torch.randn(4, 2, 3, 3, generator=gen(seed), dtype=D)
        d = directions(guidance, prior, x, plain_views(prior, 4), step=2000, seed=seed)
        assert torch.allclose(d["gc"], 2 * push.expand_as(x), atol=1e-9)
        assert torch.allclose(d["cp"], 2 * push.expand_as(x).permute(0, 2, 3, 1), atol=1e-9)
        t_e, t_s, t_t = guidance.last_timesteps
        (a_e, s_e), (a_s, s_s), (a_t, s_t) = (prior.schedule.alpha_sigma(t) for t in (t_e, t_s, t_t))
        resid = -(s_e * (1 / (s_s / a_s) - 1 / (s_t / a_t))).view(-1, 1, 1, 1) * (-push)
        assert torch.allclose(d["cc"], 2 * a_e.view(-1, 1, 1, 1) * resid, atol=1e-8)
        assert d["cc"].abs().max().item() > 1e-3


def test_injected_gradients_equal_autograd_of_the_losses_as_written():
    """On a Gaussian (s > 0) with CFG: the closed-form gradients equal autograd of w_cc L_cc + w_gc L_gc (x) and
    w_cp L_cp (the render), sums / B without ½, predictions detached, scaled by λ."""
    omega, lam = 7.5, 0.1
    prior = GaussianPrior(torch.randn(3, 2, 3, 3, generator=gen(0), dtype=D), [0.4, 0.7, 0.5])
    b = 3
    views = plain_views(prior, b)
    x0_ = torch.randn(b, 2, 3, 3, generator=gen(1), dtype=D)
    guidance = GCSGuidance(GCSGuidance.Config(guidance_scale=C(omega)))
    rgb, render = render_of(x0_)
    losses = guidance(render, None, prior, views, 500, gen(4))
    assert set(losses) == {"gcs", "gcs_cp"}
    sum(losses.values()).backward()
    eps = guidance.noise.field
    assert eps.shape == (b, 2, 3, 3)
    t_e, t_s, t_t = guidance.last_timesteps
    sched = prior.schedule

    def pred(z, t, emb):
        return prior.predict_epsilon(z.detach(), t, emb.expand(b, 1))

    def null(z, t):
        return pred(z, t, GaussianPrior.embedding(2))

    def perp(z, t):
        return common.classifier_free(pred(z, t, GaussianPrior.embedding(0)), pred(z, t, GaussianPrior.embedding(1)),
                                      omega)

    def step(z, e, a, c):
        return common.ddim_step(sched, z, e, a, c)

    x = x0_.clone().requires_grad_(True)
    x_e = sched.add_noise(x, eps, t_e)
    n_e = null(x_e, t_e)
    x_s = step(x_e, n_e, t_e, t_s)
    x_t = step(x_s, null(x_s, t_s), t_s, t_t)
    e_t = perp(x_t, t_t)
    x_st = step(x_t, e_t, t_t, t_s).detach()
    loss_cc = (step(x_t, null(x_t, t_t), t_t, t_e) - step(x_st, null(x_st, t_s), t_s, t_e).detach()).pow(2).sum() / b
    z_e = step(x_t, e_t, t_t, t_e).detach()
    target = common.predicted_x0(sched, z_e, perp(z_e, t_e), t_e).detach()
    x0_null = common.predicted_x0(sched, x_e, n_e, t_e)
    loss_gc = (target - x0_null).pow(2).sum() / b
    (lam * (1.0 * loss_cc + 0.5 * loss_gc)).backward()
    # L_cp acts on the render: its gradient is −2 w_cp r (D(x̂₀_perp) − D(x̂₀_null)) / B with D = identity here
    image = x0_.clone().requires_grad_(True)
    loss_cp = (image - (image + (target - x0_null)).detach()).pow(2).sum() / b
    (lam * 0.5 * loss_cp).backward()
    assert x.grad.abs().max().item() > 1e-4
    assert torch.allclose(rgb.grad.permute(0, 3, 1, 2), x.grad + image.grad, atol=1e-12)
    # and the two parts separately: the model-space loss alone
    g2 = GCSGuidance(GCSGuidance.Config(guidance_scale=C(omega), w_cp=C(0.0)))
    rgb2, render2 = render_of(x0_)
    losses2 = g2(render2, None, prior, views, 500, gen(4))
    assert set(losses2) == {"gcs"}
    losses2["gcs"].backward()
    assert torch.allclose(rgb2.grad.permute(0, 3, 1, 2), x.grad, atol=1e-12)


def test_timesteps_follow_the_warm_up_schedule():
    prior = point_mass({"y": 0, "uncond": 1, "null": 1})
    guidance = GCSGuidance(GCSGuidance.Config(t_shared=False))
    for step, lo, hi, delta in [(0, 500, 980, 100), (750, 260, 740, 90), (1500, 81, 500, 80), (5000, 81, 500, 80)]:
        t_e, t_s, t_t = guidance.triple_timesteps(4000, step, prior, gen(step))
        assert t_t.min().item() == lo and t_t.max().item() == hi - 1, step
        assert torch.equal(t_t - t_s, torch.full_like(t_t, delta))
        assert bool((t_e >= (t_t - 2 * delta).clamp_min(0)).all())
        assert bool((t_e < (t_t - delta - 10).clamp_min(1)).all())
    shared = GCSGuidance(GCSGuidance.Config()).triple_timesteps(5, 0, prior, gen(0))
    assert all(bool((v == v[0]).all()) for v in shared)


def test_brightness_equalization_scales_sh_until_the_quantile_is_low_enough():
    cfg = Gaussians.Config(init_points=200, sh_degree=1, brightness_equalize=True, beg_start=2, beg_stop=20)
    rep = Gaussians(cfg)
    with torch.no_grad():
        rep.sh_dc.data = rgb_to_sh_dc(torch.full((200, 3), 0.99))[:, None, :].clone()
        rep.sh_rest.data.fill_(0.1)
        rep.opacity_logits.data.fill_(2.0)
    dc0 = rep.sh_dc.detach().clone()
    rep.after_step(0, None)  # iteration 1: outside (beg_start, beg_stop)
    assert torch.equal(rep.sh_dc, dc0)
    levels = []
    for k in range(1, 15):
        before = rep.sh_dc.detach().clone()
        rep.after_step(k, None)
        level = rep.albedo().mean(-1).max().item()
        levels.append(level)
        ratio = (rep.sh_dc / before).mean().item()
        assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.0)
    # iteration 2 is not > beg_start = 2; from iteration 3, 0.99 → 0.5 + 0.49·0.8ⁿ until ≤ 0.9 (n = 1: 0.892)
    assert levels[0] == pytest.approx(0.99, abs=1e-6)
    assert levels[1] == pytest.approx(0.5 + 0.49 * 0.8, abs=1e-6) and levels[-1] == levels[1]
    assert torch.allclose(rep.sh_rest, torch.full_like(rep.sh_rest, 0.08))
    # the render statistic: quantile over the object's pixels, then over the views
    rgb = torch.zeros(3, 8, 8, 3)
    alpha = torch.zeros(3, 8, 8, 1)
    rgb[:, :4], alpha[:, :4] = 0.95, 1.0
    rgb[:, 4:] = 1.0  # white background: not the object
    assert render_brightness(rgb, alpha).item() == pytest.approx(0.95)
    rep.equalize_brightness(render_brightness(rgb, alpha))
    assert torch.allclose(rep.sh_rest, torch.full_like(rep.sh_rest, 0.064))


def test_recipe_has_the_official_defaults():
    cfg = load_config(config_path("gcs"), [])
    g, r = cfg.guidance, cfg.representation
    assert g.name == "gcs" and g.guidance_scale(0) == 7.5 and g.scale_convention == "diffusers"
    assert (g.w_cc(0), g.w_gc(0), g.w_cp(0), g.rgb_scale, g.weight(0)) == (1.0, 0.5, 0.5, 1.0, 0.1)
    assert g.fix_noise and g.offset_noise == 0.1 and g.warmup_steps == 1500 and g.t_max_warmup == 0.98
    assert r.brightness_equalize and (r.beg_start, r.beg_stop, r.beg_quantile, r.beg_threshold, r.beg_rate) == (
        1000, 4500, 0.85, 0.9, 0.8)
    assert cfg.views.perp_neg and cfg.run.steps == 5000 and cfg.camera.batch_size == 4


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_resume_is_exact_with_the_fixed_noise_and_brightness_equalization(tmp_path):
    common = [*GTINY, "run.checkpoint_every=2", "guidance.name=gcs",
              "representation.brightness_equalize=true", "representation.beg_start=0", "representation.beg_threshold=0.0"]
    a, b, full = run_and_resume(tmp_path, "configs/reference-gaussians.yaml", common, 2, 4)
    assert a["model.guidance.noise.field"].shape == (2, 3, 24, 24)
    assert_same_state(a, b)
    assert " gcs=" in (full / "log.txt").read_text() and " gcs_cp=" in (full / "log.txt").read_text()


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_a_step_reads_nothing_back_on_the_learned_prior_with_brightness_equalization(tmp_path, monkeypatch):
    from test_host_sync import steady_reads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = ["representation.init_points=300", "guidance.name=gcs", "representation.brightness_equalize=true",
             "representation.beg_start=0", "views.perp_neg=true"]
    assert steady_reads(tmp_path, "text-gaussians", extra, steps=(1, 2)) == {}


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_runs_on_nerf_gaussians_and_dmtet(tmp_path):
    runs_on_every_representation(tmp_path, "gcs")
