"""Editing guidance (``dds``, ``pds``, DreamCatalyst's option) against closed forms on the analytic priors.

The Gaussian prior is pixel-wise independent: condition k is N(μ_k, s_k² I), and ε*_k(x_t, t) = σ_t (x_t − α_t μ_k)/D_k
with D_k = α_t² s_k² + σ_t² and κ_k = α_t σ_t/D_k. Conditions here: 0 = the target prompt, 1 = the source prompt,
2 = the negative prompt. Draws are replayed in the modules' order (t, then ε, then PDS's ε′), and every expected value
is computed from the formulas, not from the modules. float64 throughout.

The closed forms used (dds.py and pds.py docstrings). With equal spreads s for all three conditions, ε cancels between
the branches and ε̃_tgt − ε̃_src = κ [d − ω Δμ], d = x_tgt − x_src, Δμ = μ_tgt − μ_src. So DDS settles at
x_src + ωΔμ. PDS's update is ψ d + χ (ε̃_tgt − ε̃_src); its mean under SGD settles at d* = ωΔμ E[χκ]/(E[ψ] + E[χκ]).
"""

import math

import pytest
import torch

from dreamcore import registry
from dreamcore.errors import DreamcoreError
from dreamcore.guidance.dds import DDSGuidance
from dreamcore.guidance.editing import EditGuidance, EditSource
from dreamcore.guidance.pds import PDSGuidance, posterior_coefficients
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.guidance.timesteps import TimestepSampler
from dreamcore.guidance.views import ViewConditions
from dreamcore.priors.analytic import GaussianPrior, JointGaussianPrior
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, render_of

C = Scheduled.constant
TGT, SRC, NEG = 0, 1, 2


def views_for(k: int, b: int, neg: int = NEG) -> ViewConditions:
    """Conditions of prompt k for b views (negative prompt ``neg``), built directly."""
    cond, uncond = GaussianPrior.embedding(k).expand(b, -1), GaussianPrior.embedding(neg).expand(b, -1)
    return ViewConditions(cond, uncond, cond, uncond, ["default"] * b)


def make(cls, **kw):
    guidance = cls(cls.Config(name=cls.loss_name, **kw))
    guidance.setup(None, 1000)
    return guidance


def edit_grad(guidance, prior, x, x_src, vt, vs, step=0, seed=0):
    _, render = render_of(x)
    return guidance.edit_gradient(x, x_src, render, None, prior, vt, vs, step, gen(seed))


def gaussian(stds, c=3, h=4, w=4, shared=None, seed=0) -> GaussianPrior:
    """Three conditions; ``shared`` [C, H, W] bool marks where μ_tgt = μ_src."""
    means = torch.randn(3, c, h, w, generator=gen(seed), dtype=D)
    if shared is not None:
        means[TGT] = torch.where(shared, means[SRC], means[TGT])
    return GaussianPrior(means, stds)


def ab(prior, t):
    a, s = prior.schedule.alpha_sigma(torch.as_tensor(t).reshape(-1))
    return a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)


def eps_k(prior, x_t, t, k):
    a, s = ab(prior, t)
    return s * (x_t - a * prior.means[k]) / (a**2 * prior.stds[k] ** 2 + s**2)


def eps_tilde(prior, x_t, t, k, omega, neg=NEG):
    e_y = eps_k(prior, x_t, t, k)
    return e_y if omega == 1.0 else eps_k(prior, x_t, t, neg) + omega * (e_y - eps_k(prior, x_t, t, neg))


def replay(shape, b, lo, hi, seed, normals=1):
    """t [b] uniform in [lo, hi], then ``normals`` standard normal fields (float32 draws, as rng.normal)."""
    g = gen(seed)
    t = torch.randint(lo, hi + 1, (b,), generator=g)
    return (t, *[torch.randn(shape, generator=g).to(D) for _ in range(normals)])


def hand_coefficients(prior, t, gap):
    """(ψ, χ) [B, 1, 1, 1] from ᾱ alone: β_t one-step, c₀, c₁, σ̃ as in the PDS paper's posterior."""
    ac = prior.schedule.alphas_cumprod
    t = torch.as_tensor(t).reshape(-1)
    ab_t, ab_p, ab_m = ac[t], ac[t - gap], ac[t - 1]
    beta = 1 - ab_t / ab_m
    c0 = ab_p.sqrt() * beta / (1 - ab_t)
    c1 = (1 - beta).sqrt() * (1 - ab_p) / (1 - ab_t)
    st = (beta * (1 - ab_p) / (1 - ab_t)).sqrt()
    psi = (ab_p.sqrt() - c0 - c1 * ab_t.sqrt()) / st
    chi = c0 * (1 - ab_t).sqrt() / (ab_t.sqrt() * st)
    return psi.view(-1, 1, 1, 1), chi.view(-1, 1, 1, 1)


def kappa(prior, t, s):
    a, sg = ab(prior, t)
    return a * sg / (a**2 * s**2 + sg**2)


# -- (a) identity ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kw", [(DDSGuidance, {}), (DDSGuidance, {"dreamcatalyst": True}),
                                    (PDSGuidance, {}), (PDSGuidance, {"t_gap": 1})])
@pytest.mark.parametrize("t_frac", [None, 0.03, 0.5, 0.97])
def test_an_unedited_asset_under_its_own_prompt_gets_exactly_zero(cls, kw, t_frac):
    """x_tgt = x_src and y_tgt = y_src ⇒ g = 0 exactly (bit for bit), at any t, whatever ω and the spreads."""
    prior = gaussian([0.3, 0.8, 1.1])
    x_src = torch.randn(4, 3, 4, 4, generator=gen(1), dtype=D)
    t = {} if t_frac is None else {"t_min": C(t_frac), "t_max": C(t_frac)}
    guidance = make(cls, guidance_scale=C(7.5), **t, **kw)
    for k in (TGT, SRC):
        g = edit_grad(guidance, prior, x_src.clone(), x_src, views_for(k, 4), views_for(k, 4), seed=3)
        assert g.shape == x_src.shape and torch.count_nonzero(g) == 0
    g = edit_grad(guidance, prior, x_src + 0.1, x_src, views_for(TGT, 4), views_for(TGT, 4), seed=3)
    assert g.abs().max() > 1e-4  # not zero for a trivial reason


# -- (b) DDS is the difference of the two predictions ----------------------------------------------------------------
@pytest.mark.parametrize("omega", [1.0, 7.5])
def test_dds_is_the_difference_of_the_two_conditional_predictions_with_one_noise(omega):
    """g = w(t)[ε̃_ω(α x_tgt + σ ε; y_tgt) − ε̃_ω(α x_src + σ ε; y_src)], the same t and ε, from the formula."""
    prior = gaussian([0.4, 0.7, 1.0])
    b = 5
    x, x_src = (torch.randn(b, 3, 4, 4, generator=gen(s), dtype=D) for s in (1, 2))
    for weighting in ("uniform", "sds"):
        guidance = make(DDSGuidance, guidance_scale=C(omega), weighting=weighting)
        g = edit_grad(guidance, prior, x, x_src, views_for(TGT, b), views_for(SRC, b), seed=7)
        t, eps = replay(x.shape, b, 50, 950, seed=7)
        a, s = ab(prior, t)
        w = torch.ones_like(s) if weighting == "uniform" else s**2
        expected = w * (eps_tilde(prior, a * x + s * eps, t, TGT, omega)
                        - eps_tilde(prior, a * x_src + s * eps, t, SRC, omega))
        assert g.abs().max() > 1e-3
        assert torch.allclose(g, expected, atol=1e-12)


def test_dds_with_equal_spreads_is_kappa_times_the_difference_of_deviations_and_vanishes_where_prompts_agree():
    """Equal s: the noise cancels, g = κ[(x_tgt − μ_tgt) − (x_src − μ_src)] at ω = 1 (and κ[d − ωΔμ] with CFG and a
    negative prompt of the same spread) for every draw. Where μ_tgt = μ_src and x_tgt = x_src, g = 0."""
    shared = torch.rand(3, 4, 4, generator=gen(5)) < 0.5
    prior = gaussian(0.5, shared=shared)
    b = 6
    x_src = torch.randn(b, 3, 4, 4, generator=gen(1), dtype=D)
    x = torch.where(shared, x_src, x_src + torch.randn(b, 3, 4, 4, generator=gen(2), dtype=D))
    mu_t, mu_s = prior.means[TGT], prior.means[SRC]
    for omega in (1.0, 7.5):
        g = edit_grad(make(DDSGuidance, guidance_scale=C(omega)), prior, x, x_src, views_for(TGT, b),
                      views_for(SRC, b), seed=11)
        t, _ = replay(x.shape, b, 50, 950, seed=11)
        k = kappa(prior, t, 0.5)
        assert torch.allclose(g, k * ((x - x_src) - omega * (mu_t - mu_s)), atol=1e-12)
        if omega == 1.0:
            assert torch.allclose(g, k * ((x - mu_t) - (x_src - mu_s)), atol=1e-12)
        mask = shared.expand_as(g)
        assert g[mask].abs().max() < 1e-12 and g[~mask].abs().min() > 1e-6


def test_dds_expectation_with_unequal_spreads_is_the_difference_of_the_expected_updates():
    """Unequal s: ε no longer cancels, but E_ε[g] = κ_tgt(x_tgt − μ_tgt) − κ_src(x_src − μ_src) (ω = 1, fixed t).
    Monte Carlo over 4096 rows; the tolerance is 5 standard errors of the row mean."""
    prior = gaussian([0.3, 0.9, 1.0], h=2, w=2)
    rows, t_frac = 4096, 0.3
    x = torch.randn(1, 3, 2, 2, generator=gen(1), dtype=D).expand(rows, -1, -1, -1)
    x_src = torch.randn(1, 3, 2, 2, generator=gen(2), dtype=D).expand(rows, -1, -1, -1)
    guidance = make(DDSGuidance, guidance_scale=C(1.0), t_min=C(t_frac), t_max=C(t_frac))
    g = edit_grad(guidance, prior, x, x_src, views_for(TGT, rows), views_for(SRC, rows), seed=4)
    t = 300
    expected = (kappa(prior, t, 0.3) * (x[0] - prior.means[TGT]) - kappa(prior, t, 0.9) * (x_src[0] - prior.means[SRC]))
    sem = g.std(0) / math.sqrt(rows)
    assert ((g.mean(0) - expected[0]).abs() < 5 * sem).all()


# -- (c) DDS keeps the source's identity; SDS collapses ----------------------------------------------------------------
def test_dds_optimization_moves_the_source_by_the_prompts_difference_and_sds_collapses_to_the_mean():
    """x_src a sample of the source prompt (μ_src + s z), prompts that agree on half the pixels. SGD on x_tgt from
    x_src: DDS converges to x_src + (μ_tgt − μ_src) (the deviation s z is kept, the agreeing pixels never move);
    SDS toward y_tgt forgets z and lands at μ_tgt (up to its noise: the mean of its last iterates)."""
    s = 0.5
    shared = torch.rand(3, 4, 4, generator=gen(5)) < 0.5
    prior = gaussian(s, shared=shared)
    b = 2
    mu_t, mu_s = prior.means[TGT], prior.means[SRC]
    x_src = mu_s + s * torch.randn(b, 3, 4, 4, generator=gen(6), dtype=D)
    source = EditSource(x_src.permute(0, 2, 3, 1), views_for(SRC, b))
    keep = x_src + (mu_t - mu_s)

    rgb, render = render_of(x_src)
    dds = make(DDSGuidance, guidance_scale=C(1.0))
    opt = torch.optim.SGD([rgb], lr=1.0 * b)  # the injected loss's gradient is g / B
    g_run = gen(0)
    for step in range(200):
        opt.zero_grad()
        sum(dds.forward_edit(render, source, None, prior, views_for(TGT, b), step, g_run).values()).backward()
        opt.step()
    x_dds = rgb.detach().permute(0, 3, 1, 2)
    assert (x_dds - keep).abs().max() < 1e-8
    assert torch.equal(x_dds[shared.expand_as(x_dds)], x_src[shared.expand_as(x_src)])

    rgb, render = render_of(x_src)
    sds = make(SDSGuidance, guidance_scale=C(1.0))
    opt = torch.optim.SGD([rgb], lr=0.3 * b)
    g_run, tail = gen(0), []
    for step in range(400):
        opt.zero_grad()
        sum(sds(render, None, prior, views_for(TGT, b), step, g_run).values()).backward()
        opt.step()
        if step >= 200:
            tail.append(rgb.detach().permute(0, 3, 1, 2).clone())
    x_sds = torch.stack(tail).mean(0)
    identity = (keep - mu_t).norm()  # = s‖z‖: what the source was, beyond its prompt's mean
    assert (x_dds - mu_t).norm() == pytest.approx(identity.item(), rel=1e-6)  # DDS keeps it …
    assert (x_sds - mu_t).norm() < 0.15 * identity  # … SDS forgets it
    assert (x_sds - keep).norm() > 0.85 * identity


# -- (d) PDS -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gap", [1, 2, 3])
def test_pds_gradient_is_its_expanded_psi_chi_form(gap):
    """z_tgt − z_src = ψ(t)(x_tgt − x_src) + χ(t)(ε̃_tgt − ε̃_src), ψ and χ from ᾱ by hand, ε̃ from the formula."""
    prior = gaussian([0.4, 0.7, 1.0])
    b = 6
    x, x_src = (torch.randn(b, 3, 4, 4, generator=gen(s), dtype=D) for s in (1, 2))
    guidance = make(PDSGuidance, guidance_scale=C(7.5), t_gap=gap)
    g = edit_grad(guidance, prior, x, x_src, views_for(TGT, b), views_for(SRC, b), seed=9)
    t, eps, _ = replay(x.shape, b, 20, 980, seed=9, normals=2)
    a, s = ab(prior, t)
    psi, chi = hand_coefficients(prior, t, gap)
    expected = psi * (x - x_src) + chi * (eps_tilde(prior, a * x + s * eps, t, TGT, 7.5)
                                          - eps_tilde(prior, a * x_src + s * eps, t, SRC, 7.5))
    assert g.abs().max() > 1e-3
    assert torch.allclose(g, expected, atol=1e-10)
    co = posterior_coefficients(prior.schedule, t, t - gap)
    assert torch.allclose(co.psi, psi.flatten(), atol=1e-12) and torch.allclose(co.chi, chi.flatten(), atol=1e-12)


def test_pds_identity_term_vanishes_for_a_one_step_gap_and_is_a_small_t_effect_for_two():
    """Δ = 1: the exact one-step posterior, ψ ≡ 0 (PDS = DDS weighted by χ). Δ = 2 with the one-step β_t (the official
    code): ψ > 0, large at small t and negligible at large t, ψ/χ ≈ (Δ − 1)(1 + ᾱ_t)/2 · α_t/σ_t (pds.py)."""
    prior = gaussian(0.5)
    t = torch.arange(3, 1000)
    one = posterior_coefficients(prior.schedule, t, t - 1)
    assert one.psi.abs().max() < 1e-10 and (one.chi > 0).all()
    two = posterior_coefficients(prior.schedule, t, t - 2)
    assert (two.psi > 0).all()
    at = lambda v: two.psi[v - 3].item()  # noqa: E731
    assert at(20) > 1.0 and at(100) > 0.25 and at(500) < 0.05 and at(900) < 0.01
    assert (two.psi[1:] < two.psi[:-1]).all()  # decreasing in t
    ab_t = two.alpha**2
    approx = (1 + ab_t) / 2 * two.alpha / two.sigma
    sel = t >= 20
    assert torch.allclose((two.psi / two.chi)[sel], approx[sel], rtol=0.02)
    # with Δ = 1 the update is χ times DDS's (w ≡ 1) for the same draws
    x, x_src = (torch.randn(3, 3, 4, 4, generator=gen(s), dtype=D) for s in (1, 2))
    pds = edit_grad(make(PDSGuidance, guidance_scale=C(3.0), t_gap=1, t_min=C(0.05), t_max=C(0.95)), prior, x,
                    x_src, views_for(TGT, 3), views_for(SRC, 3), seed=2)
    dds = edit_grad(make(DDSGuidance, guidance_scale=C(3.0)), prior, x, x_src, views_for(TGT, 3), views_for(SRC, 3),
                    seed=2)
    t3, _ = replay(x.shape, 3, 50, 950, seed=2)
    _, chi = hand_coefficients(prior, t3, 1)
    assert torch.allclose(pds, chi * dds, atol=1e-12)


@pytest.mark.parametrize("gap,omega", [(2, 1.0), (2, 3.0), (1, 1.0)])
def test_pds_fixed_point_under_the_gaussian_prior(gap, omega):
    """Equal spreads: g(t) = a(t) d − b(t), a = ψ + χκ, b = ωχκ Δμ (exact, noise-free). Over t uniform in [20, 980],
    the expected update vanishes at d* = E[b]/E[a] = ωΔμ·E[χκ]/(E[ψ] + E[χκ]): every t is visited once by the
    deterministic ``linear`` schedule and the average update is 0 there. Δ = 1 gives DDS's ωΔμ; Δ = 2 stops short of
    it (the identity term), but the edit still moves toward it and the pixels the prompts agree on never move.

    SGD with random t: E[d_k] → d* exactly (a_k is independent of d_k). The mean of N iterates after burn-in deviates
    from d* by about √(Var(a d* − b)/(E[a]² N)) (an AR(1) process with coefficient 1 − ηa); the tolerance is 6 of
    those, computed from the same per-t values, plus a bound on what is left of the start after the burn-in."""
    s = 0.5
    shared = torch.rand(3, 4, 4, generator=gen(5)) < 0.5
    prior = gaussian(s, shared=shared)
    dmu = prior.means[TGT] - prior.means[SRC]
    lo, hi = 20, 980
    t_all = torch.arange(lo, hi + 1)
    psi, chi = hand_coefficients(prior, t_all, gap)
    ck = chi * kappa(prior, t_all, s)
    ratio = (ck.mean() / (psi.mean() + ck.mean())).item()
    d_star = omega * ratio * dmu
    if gap == 1:
        assert ratio == pytest.approx(1.0, abs=1e-12)
    else:
        assert 0.1 < ratio < 0.9  # shrunk toward the source by the identity term

    b = 1
    x_src = prior.means[SRC] + s * torch.randn(b, 3, 4, 4, generator=gen(6), dtype=D)
    sweep = make(PDSGuidance, guidance_scale=C(omega), t_gap=gap, t_schedule="linear")
    sweep.setup(None, hi - lo)  # step k ↦ t = hi − k: each t once
    views_t, views_s = views_for(TGT, b), views_for(SRC, b)
    per_t = torch.stack([edit_grad(sweep, prior, x_src + d_star, x_src, views_t, views_s, step=k)
                         for k in range(hi - lo + 1)])
    assert per_t.mean(0).abs().max() < 1e-12
    if gap > 1:  # (at Δ = 1 every t's update vanishes at d*)
        assert per_t.abs().max() > 1e-3

    pds = make(PDSGuidance, guidance_scale=C(omega), t_gap=gap, t_min=C(lo / 1000), t_max=C(hi / 1000))
    eta, burn, n = 0.5, 600, 1500
    x, g_run, total = x_src.clone(), gen(1), torch.zeros_like(x_src)
    for k in range(burn + n):
        _, render = render_of(x)
        x = x - eta * pds.edit_gradient(x, x_src, render, None, prior, views_t, views_s, k, g_run)
        if k >= burn:
            total += x
    mean_d = total / n - x_src
    a_mean = (psi + ck).mean()
    se = per_t.std(0) / (a_mean * math.sqrt(n))
    start = math.exp(-eta * a_mean.item() * burn / 2) * d_star.abs().max()  # what is left of d₀ − d* = −d*
    assert ((mean_d - d_star).abs() <= 6 * se + start + 1e-12).all()
    assert (mean_d - omega * dmu).norm() < (omega * dmu).norm()  # toward DDS's target …
    assert torch.equal(x[shared.expand_as(x)], x_src[shared.expand_as(x_src)])  # … and nothing moves where y agree


# -- (e) no source, no edit --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dds", "pds"])
def test_a_plain_guidance_call_is_refused_with_the_edit_command(name):
    cls = registry.lookup("guidance", name)
    assert issubclass(cls, EditGuidance)
    guidance = cls(cls.Config(name=name))
    guidance.setup(None, 10)
    prior = gaussian(0.5)
    x = torch.randn(2, 3, 4, 4, dtype=D)
    _, render = render_of(x)
    with pytest.raises(DreamcoreError, match=rf"guidance '{name}' edits an existing asset.*dreamcore edit"):
        guidance(render, None, prior, views_for(TGT, 2), 0, gen())
    with pytest.raises(DreamcoreError, match="dreamcore edit"):
        guidance.gradient(x, render, None, prior, views_for(TGT, 2), 0, gen())
    with pytest.raises(DreamcoreError, match="same cameras"):
        guidance.forward_edit(render, EditSource(render.rgb[:1].detach(), views_for(SRC, 1)), None, prior,
                              views_for(TGT, 2), 0, gen())


@pytest.mark.parametrize("cls", [DDSGuidance, PDSGuidance])
def test_forward_edit_injects_the_update_into_the_edited_render_only(cls):
    """∂L/∂rgb = λ·g/B with g = edit_gradient for the same draws; the source render receives nothing."""
    prior = gaussian([0.4, 0.7, 1.0])
    x, x_src = (torch.randn(3, 3, 4, 4, generator=gen(s), dtype=D) for s in (1, 2))
    rgb, render = render_of(x)
    src_rgb = x_src.permute(0, 2, 3, 1).clone().requires_grad_(True)
    guidance = make(cls, guidance_scale=C(5.0), weight=C(2.0))
    losses = guidance.forward_edit(render, EditSource(src_rgb, views_for(SRC, 3)), None, prior, views_for(TGT, 3),
                                   4, gen(8))
    assert set(losses) == {cls.loss_name}
    losses[cls.loss_name].backward()
    g = edit_grad(guidance, prior, x, x_src, views_for(TGT, 3), views_for(SRC, 3), step=4, seed=8)
    assert torch.allclose(rgb.grad.permute(0, 3, 1, 2), 2.0 * g / 3, atol=1e-12)
    assert src_rgb.grad is None


# -- (f) DreamCatalyst -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t_frac", [0.2, 0.55, 0.9])
def test_dreamcatalyst_weighting_equals_its_formula(t_frac):
    """g = (δ + γ t_n^{1/e})(ε̃_tgt − ε̃_src) + ψ e^{t_n}(x_tgt − x_src), t_n = t/T; ``weighting`` unused."""
    prior = gaussian([0.4, 0.7, 1.0])
    b = 4
    x, x_src = (torch.randn(b, 3, 4, 4, generator=gen(s), dtype=D) for s in (1, 2))
    for kw, (delta, gamma, psi) in (({}, (0.2, 0.8, 0.075)),
                                    ({"dc_delta": 0.05, "dc_gamma": 0.2, "dc_psi": 0.3}, (0.05, 0.2, 0.3))):
        guidance = make(DDSGuidance, guidance_scale=C(7.5), dreamcatalyst=True, weighting="sds", t_min=C(t_frac),
                        t_max=C(t_frac), **kw)
        g = edit_grad(guidance, prior, x, x_src, views_for(TGT, b), views_for(SRC, b), seed=5)
        t_int = int(1000 * t_frac)
        t, eps = replay(x.shape, b, t_int, t_int, seed=5)
        a, s = ab(prior, t)
        tn = t_int / 1000
        expected = ((delta + gamma * tn ** (1 / math.e))
                    * (eps_tilde(prior, a * x + s * eps, t, TGT, 7.5)
                       - eps_tilde(prior, a * x_src + s * eps, t, SRC, 7.5))
                    + psi * math.exp(tn) * (x - x_src))
        assert torch.allclose(g, expected, atol=1e-12)
    with pytest.raises(DreamcoreError, match="non-negative"):
        make(DDSGuidance, dreamcatalyst=True, dc_psi=-0.1)


def test_the_linear_schedule_is_dreamcatalysts_decreasing_t():
    """DreamCatalyst's index = (i_max − i_min)(1 − k/K) + i_min on the 500-step grid (i_min 100, i_max 450, truncated),
    t = 2·index + 1, is ``t_schedule: linear`` with t_min 0.2, t_max 0.9 to within one training step."""
    sampler = TimestepSampler("linear")
    ac = gaussian(0.5).schedule.alphas_cumprod
    big_k = 3000
    for k in range(0, big_k + 1, 7):
        ours = int(sampler(1, k, big_k, ac, 0.2, 0.9, gen())[0])
        official = 2 * int(350 * (big_k - k) / big_k + 100) + 1
        assert abs(ours - official) <= 1


# -- (g) a multi-view prior --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DDSGuidance, PDSGuidance])
def test_editing_on_four_view_groups_shares_t_per_group(cls):
    mean = torch.randn(4, 3, 2, 2, generator=gen(0), dtype=D)
    prior = JointGaussianPrior(mean, std=0.5, correlation=0.5)
    seen = []
    inner = prior.predict_noise

    def recording(x_t, t, embeddings, **kw):
        seen.append(t.clone())
        return inner(x_t, t, embeddings, **kw)

    prior.predict_noise = recording
    b = 12
    one = torch.zeros(1, 1)
    views = ViewConditions(one.expand(b, -1), one.expand(b, -1), one.expand(b, -1), one.expand(b, -1),
                           ["default"] * b)
    x_src = mean.repeat(3, 1, 1, 1) + 0.3 * torch.randn(b, 3, 2, 2, generator=gen(1), dtype=D)
    x = x_src + 0.2 * torch.randn(b, 3, 2, 2, generator=gen(2), dtype=D)
    guidance = make(cls, guidance_scale=C(7.5))
    g = edit_grad(guidance, prior, x, x_src, views, views, seed=3)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().max() > 1e-4
    assert seen and all(ts.shape[0] % 4 == 0 for ts in seen)
    for ts in seen:
        groups = ts.reshape(-1, 4)
        assert (groups == groups[:, :1]).all()
    assert len(set(seen[0].reshape(-1, 4)[:, 0].tolist())) > 1  # a t per group, not one for the batch
    assert torch.count_nonzero(edit_grad(guidance, prior, x_src.clone(), x_src, views, views, seed=3)) == 0
    with pytest.raises(DreamcoreError, match="4-view groups"):
        edit_grad(guidance, prior, x[:6], x_src[:6], views, views)
