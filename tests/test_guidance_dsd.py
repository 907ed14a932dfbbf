"""Diverse Score Distillation (``dsd``) against its closed forms on the analytic priors (dsd.py's docstring).

With the Gaussian prior N(μ_k, s_k²), ε*_k(x_t, t) = σ_t (x_t − α_t μ_k)/D_k, D_k = α_t² s_k² + σ_t², κ = α σ/D. With
ω = 1, DSD's update is g = w [(κ_t − κ_Δ)(x − μ) + (σ_t²/D_t − σ_Δ²/D_Δ) ε_p], where ε_p is the prediction at the
end of the DDIM path from the seed. That path is replayed here with the formula, independently of the module. On a
point mass the seed drops out. On a Gaussian the seed-determined noise makes every seed settle at its own point
μ + m + c·ε_s, so across seeds the results are N(μ + m, c²) where SDS collapses to μ. c is derived below and is
*not* s. float64 throughout."""

import pytest
import torch

from dreamcore.guidance.dsd import DSDGuidance, ode_grid
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.priors.analytic import GaussianPrior, JointGaussianPrior
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of

C = Scheduled.constant


def dsd(**kw):
    g = DSDGuidance(DSDGuidance.Config(**kw))
    g.setup(None, 1000)
    return g


def grad_at(guidance, prior, x, views, step=0, seed=0):
    _, render = render_of(x)
    return guidance.gradient(x, render, None, prior, views, step, gen(seed))


def ab(prior, t):
    """(α_t, σ_t) broadcast as [B, 1, 1, 1] for a [B] tensor (or an int)."""
    a, s = prior.schedule.alpha_sigma(torch.as_tensor(t).reshape(-1))
    return a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)


def eps_tilde(prior, x_t, t, omega):
    """ε̃_ω of the Gaussian prior from its formula (conditions y = 0, ∅ = 1), rows at their own t."""
    a, s = ab(prior, t)
    mu, sd = prior.means, prior.stds

    def eps_k(k):
        return s * (x_t - a * mu[k]) / (a**2 * sd[k] ** 2 + s**2)

    e_y = eps_k(0)
    return e_y if omega == 1.0 else eps_k(1) + omega * (e_y - eps_k(1))


def replay_eps_p(prior, seed, t_delta, omega, ode_steps=10):
    """ε_p: DDIM (η = 0) from x̃_{T−1} = ε_s over the grid points above each row's t_Δ, then t_Δ; ε̃_ω there."""
    grid = ode_grid(prior.schedule.num_steps, ode_steps)
    rows = []
    for i, td in enumerate(t_delta.tolist()):
        x = seed[i:i + 1]
        pts = [p for p in grid if p > td] + [td]
        for t0, t1 in zip(pts[:-1], pts[1:]):
            e = eps_tilde(prior, x, t0, omega)
            (a0, s0), (a1, s1) = ab(prior, t0), ab(prior, t1)
            x = a1 * (x - s0 * e) / a0 + s1 * e
        rows.append(eps_tilde(prior, x, td, omega))
    return torch.cat(rows)


def replay_t_delta(t, lo, seed, ratio=0.1, n=None):
    """t_Δ for deterministic t [B]: the first draw of gen(seed) is u (one per row, or n per batch)."""
    u = torch.rand((n or t.shape[0],), generator=gen(seed)).to(D)
    u = u.expand(t.shape[0]) if n == 1 else u
    gap = torch.minimum(ratio * (t - lo).to(D), (999 - t).to(D)) * u
    return (t + gap.floor().long()).clamp(1, 999)


# -- the update ------------------------------------------------------------------------------------------------
def test_point_mass_gives_the_seed_free_attraction():
    """s = 0: g = (1 − ᾱ_t)(α_t/σ_t − α_Δ/σ_Δ)(x − μ), a positive multiple of x − μ, whatever the seed."""
    mu = torch.randn(1, 2, 3, 3, generator=gen(0), dtype=D)
    prior = GaussianPrior(mu, 0.0)
    x = 2.0 * torch.randn(5, 2, 3, 3, generator=gen(1), dtype=D)
    step = 250  # sqrt schedule: t = round(320 + 660 (1 − √0.25)) = 650
    guidance = dsd(guidance_scale=C(1.0))
    g = grad_at(guidance, prior, x, plain_views(prior, 5), step=step, seed=3)
    t = torch.full((5,), 650)
    td = replay_t_delta(t, 320, seed=3)
    assert bool((td > t).any()) and bool((td <= t + 33).all())
    a, s = ab(prior, t)
    ad, sd = ab(prior, td)
    coef = s**2 * (a / s - ad / sd)
    assert bool((coef[td > t] > 0).all())
    assert torch.allclose(g, coef * (x - mu), atol=1e-10)
    other = dsd(guidance_scale=C(1.0))
    other.noise.field = 5.0 * torch.randn(1, 2, 3, 3, generator=gen(9), dtype=D)  # another seed: same update
    assert torch.allclose(grad_at(other, prior, x, plain_views(prior, 5), step=step, seed=3), g, atol=1e-10)


@pytest.mark.parametrize("omega", [1.0, 7.5])
def test_gaussian_gradient_equals_its_formula_with_replayed_draws(omega):
    """CFG on three Gaussians with different s: g = w(t)[ε̃_ω(α_t x + σ_t ε_p, t) − ε_y(α_Δ x + σ_Δ ε_p, t_Δ)]."""
    prior = GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0])
    b = 4
    x = torch.randn(b, 2, 2, 2, generator=gen(1), dtype=D)
    guidance = dsd(guidance_scale=C(omega))
    step = 90  # t = round(320 + 660 (1 − 0.3)) = 782
    g = grad_at(guidance, prior, x, plain_views(prior, b), step=step, seed=4)
    seed = guidance.noise.field
    assert seed.shape == (1, 2, 2, 2)  # one seed for the object, shared by its views
    t = torch.full((b,), 782)
    td = replay_t_delta(t, 320, seed=4)
    eps_p = replay_eps_p(prior, seed.expand(b, -1, -1, -1), td, omega)
    a, s = ab(prior, t)
    ad, sd = ab(prior, td)
    expected = s**2 * (eps_tilde(prior, a * x + s * eps_p, t, omega) - eps_tilde(prior, ad * x + sd * eps_p, td, 1.0))
    assert g.abs().max().item() > 1e-3
    assert torch.allclose(g, expected, atol=1e-10)
    # the seed is fixed for the run: a later step reuses it (and ε_p never depends on x)
    grad_at(guidance, prior, x + 1.0, plain_views(prior, b), step=step + 10, seed=5)
    assert torch.equal(guidance.noise.field, seed)


def test_seed_is_deterministic_from_the_run_seed_and_checkpointed():
    prior = GaussianPrior(torch.randn(1, 2, 2, 2, generator=gen(0), dtype=D), 0.5)
    x = torch.randn(2, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 2)
    a, b, c = dsd(), dsd(), dsd()
    ga, gb = grad_at(a, prior, x, views, seed=7), grad_at(b, prior, x, views, seed=7)
    grad_at(c, prior, x, views, seed=8)
    assert torch.equal(a.noise.field, b.noise.field) and torch.equal(ga, gb)
    assert not torch.allclose(a.noise.field, c.noise.field)
    resumed = dsd()
    resumed.load_state_dict(a.state_dict())  # the seed is the buffer ``noise.field``
    assert torch.equal(resumed.noise.field, a.noise.field)
    assert torch.equal(grad_at(resumed, prior, x, views, step=40, seed=2), grad_at(a, prior, x, views, step=40, seed=2))


def test_multiview_groups_share_t_delta_and_get_one_seed_per_view():
    prior = JointGaussianPrior(torch.randn(4, 1, 2, 2, generator=gen(0), dtype=D), 0.5, 0.3)
    guidance = dsd(t_schedule="uniform", t_min=C(0.3), t_max=C(0.9))
    x = torch.randn(8, 1, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 8)
    g = grad_at(guidance, prior, x, views, seed=3)
    assert g.shape == x.shape and torch.isfinite(g).all()
    assert guidance.noise.field.shape == (4, 1, 2, 2)  # one per view of a group, repeated for the second group
    t = guidance.sample_t(8, 0, prior, gen(3))
    td = guidance.delta_timesteps(t, 0, prior, gen(3))
    assert (t.view(2, 4) == t.view(2, 4)[:, :1]).all() and (td.view(2, 4) == td.view(2, 4)[:, :1]).all()
    assert bool((td >= t).all())


# -- the optimization ---------------------------------------------------------------------------------------------
def _descend(guidance, prior, x, steps, lr, average_last, seed=0):
    """x ← x − lr·B·∂L/∂x at a fixed guidance step 0, then the mean of the last iterates (Polyak averaging)."""
    views = plain_views(prior, x.shape[0])
    acc = torch.zeros_like(x)
    g = gen(seed)
    for k in range(steps):
        rgb, render = render_of(x)
        sum(guidance(render, None, prior, views, 0, g).values()).backward()
        x = x - lr * x.shape[0] * rgb.grad.permute(0, 3, 1, 2)
        if k >= steps - average_last:
            acc += x
    return acc / average_last


def test_one_fixed_noise_per_seed_samples_a_seeded_gaussian_where_sds_collapses_to_the_mean():
    """512 particles, each with its own seed (``share_noise: false``), start at μ on N(μ = 0.7, s = 0.5), ω = 1.

    t is fixed: ``t_schedule: linear`` at step 0 gives t = ⌊T t_max⌋ = 600, t_lo = 200. t_Δ = 600 + G, with G uniform
    on {0 … 39} (⌊u · 0.1 · 400⌋). Per step the update is A_G δ + b_G ε_p,G with ε_p,G = P_G ε_s + Q_G (affine in the
    seed, from the replayed DDIM path). The iterates' stationary mean is therefore
    δ* = −(E[b P] ε_s + E[b Q]) / E[A]: each seed lands at μ + m + c ε_s, so across seeds the results are
    N(μ + m, c²). Here c = −E[bP]/E[A] ≈ 0.214, not s = 0.5. SDS at the same t has the seed-free fixed point μ."""
    mu, s, b = 0.7, 0.5, 512
    prior = GaussianPrior(torch.full((1, 1, 1, 1), mu, dtype=D), s)
    guidance = dsd(guidance_scale=C(1.0), t_schedule="linear", t_min=C(0.2), t_max=C(0.6), share_noise=False)
    start = torch.full((b, 1, 1, 1), mu, dtype=D)
    x = _descend(guidance, prior, start, steps=120, lr=20.0, average_last=100).flatten()
    seeds = guidance.noise.field.flatten()
    assert seeds.shape == (b,) and seeds.std().item() > 0.9

    t = 600
    a, sg = (v.item() for v in ab(prior, t))
    d_t, w = a**2 * s**2 + sg**2, sg**2
    terms = []
    for gap in range(40):
        td = torch.tensor([t + gap])
        ad, sd = (v.item() for v in ab(prior, td))
        d_d = ad**2 * s**2 + sd**2
        big_a = w * (a * sg / d_t - ad * sd / d_d)
        small_b = w * (sg**2 / d_t - sd**2 / d_d)
        q = replay_eps_p(prior, torch.zeros(1, 1, 1, 1, dtype=D), td, 1.0).item()
        p = replay_eps_p(prior, torch.ones(1, 1, 1, 1, dtype=D), td, 1.0).item() - q
        terms.append((big_a, small_b * p, small_b * q))
    e_a, e_bp, e_bq = (sum(v) / 40 for v in zip(*terms))
    c, m = -e_bp / e_a, -e_bq / e_a
    assert e_a > 0  # attractive at this t (α s/σ = 0.22 < 1)
    assert c == pytest.approx(0.2139, abs=2e-4) and m == pytest.approx(-0.0102, abs=2e-4)

    # each seed at its own point: the derived one
    predicted = mu + m + c * seeds
    assert (x - predicted).abs().max().item() < 0.01
    assert torch.corrcoef(torch.stack([x, seeds]))[0, 1].item() > 0.999
    # across seeds: N(μ + m, c²) (sampling tolerance for 512 draws of N(0, 1))
    assert x.mean().item() == pytest.approx(mu + m, abs=4 * c / b**0.5)
    assert x.var().item() == pytest.approx(c**2, rel=4 * (2 / b) ** 0.5)
    assert x.std().item() == pytest.approx(c * seeds.std().item(), rel=0.01)

    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(1.0), t_min=C(0.6), t_max=C(0.6)))
    y = _descend(sds, prior, start, steps=120, lr=1.0, average_last=100).flatten()
    assert y.mean().item() == pytest.approx(mu, abs=0.002)
    assert y.std().item() < 0.1 * x.std().item()  # collapsed: what is left is the averaged iterates' jitter
