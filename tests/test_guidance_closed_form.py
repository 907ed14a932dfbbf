"""Each guidance against its closed form on analytic priors (guidance.md §16.3–16.4): optimize x directly
(g(θ) = x) or evaluate ``gradient`` on x, with the Gaussian prior ε*_k = σ_t (x_t − α_t μ_k)/(α_t² s_k² + σ_t²),
D_k = α_t² s_k² + σ_t², κ_k = α_t σ_t / D_k. float64 throughout."""

import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.guidance import common
from dreamcore.guidance.csd import CSDGuidance
from dreamcore.guidance.ism import ISMGuidance
from dreamcore.guidance.nfsd import NFSDGuidance
from dreamcore.guidance.sdi import SDIGuidance
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.guidance.sjc import SJCGuidance
from dreamcore.guidance.vsd import ESDGuidance, VSDGuidance
from dreamcore.priors.analytic import GaussianPrior, ReferenceSetPrior, sd_schedule
from dreamcore.priors.base import NoiseSchedule
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of

C = Scheduled.constant


def means(k=3, shape=(2, 2, 2), seed=0, scale=1.0):
    return scale * torch.randn(k, *shape, generator=gen(seed), dtype=D)


def grad_at(guidance, prior, x, views, step=0, seed=0, cameras=None):
    _, render = render_of(x)
    return guidance.gradient(x, render, cameras, prior, views, step, gen(seed))


def ab(prior, t):
    a, s = prior.schedule.alpha_sigma(torch.as_tensor([t]))
    return a.item(), s.item()


def ns_gaussian(mu, std, **kw):
    return GaussianPrior(mu, std, **kw)


# -- SDS -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("omega", [1.0, 7.5])
def test_sds_gradient_equals_its_formula_with_replayed_draws(omega):
    prior = GaussianPrior(means(), [0.3, 0.8, 1.0])
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(omega), weighting="sds"))
    x = torch.randn(4, 2, 2, 2, generator=gen(1), dtype=D)
    g = grad_at(sds, prior, x, plain_views(prior, 4), seed=9)
    r = gen(9)  # replay: t, then ε
    t = torch.randint(20, 981, (4,), generator=r)
    eps = torch.randn(x.shape, generator=r).to(x)
    a, s = (common.broadcast(v, x) for v in prior.schedule.alpha_sigma(t))
    x_t = a * x + s * eps
    mu, sd = prior.means, prior.stds
    e_y = s * (x_t - a * mu[0]) / (a**2 * sd[0] ** 2 + s**2)
    e_u = s * (x_t - a * mu[1]) / (a**2 * sd[1] ** 2 + s**2)
    assert torch.allclose(g, s**2 * (e_u + omega * (e_y - e_u) - eps), atol=1e-12)


def test_sds_without_cfg_mean_and_variance_match_closed_form():
    """ω = 1, fixed t: E[g] = w κ_y (x − μ_y), Var(g) = w² (α² s² / D)² per element."""
    mu = means(k=1, shape=(1, 1, 1))
    prior = GaussianPrior(mu, 0.6)
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(1.0), t_min=C(0.4), t_max=C(0.4)))
    n = 40000
    x = torch.full((n, 1, 1, 1), 0.7, dtype=D)
    g = grad_at(sds, prior, x, plain_views(prior, n))
    a, s = ab(prior, 400)
    dd = a**2 * 0.36 + s**2
    w, kappa = s**2, a * s / dd
    assert g.mean().item() == pytest.approx(w * kappa * (0.7 - mu.item()), abs=4 * w * (a**2 * 0.36 / dd) / n**0.5)
    assert g.var().item() == pytest.approx((w * a**2 * 0.36 / dd) ** 2, rel=0.03)


def _optimize(guidance, prior, x, views, steps, lr, average_last=0, seed=0):
    """Plain gradient descent on x through the injected loss (x ← x − lr·B·∂L/∂x); optionally the mean of the
    last iterates (Polyak averaging of a noisy method)."""
    acc = torch.zeros_like(x)
    g = gen(seed)
    for k in range(steps):
        rgb, render = render_of(x)
        loss = sum(guidance(render, None, prior, views, k, g).values())
        loss.backward()
        x = x - lr * x.shape[0] * rgb.grad.permute(0, 3, 1, 2)
        if k >= steps - average_last:
            acc += x
    return acc / average_last if average_last else x


def test_sds_with_cfg_converges_to_the_extrapolated_mean_and_reads_threestudio_scale():
    """Equal s: fixed point x* = μ_y + (ω − 1)(μ_y − μ_∅); threestudio's s = 100 is ω = 101, not 100."""
    mu_y = means(k=1, shape=(1, 2, 2), seed=1)[0]
    mu_u = mu_y + 0.01 * means(k=1, shape=(1, 2, 2), seed=2)[0]
    prior = GaussianPrior(torch.stack([mu_y, mu_u]), 0.05)
    cfg = SDSGuidance.Config(guidance_scale=C(100.0), scale_convention="threestudio", weighting="uniform",
                             t_max=C(0.5))
    sds = SDSGuidance(cfg)
    b = 8
    x = _optimize(sds, prior, mu_y.expand(b, -1, -1, -1).clone(), plain_views(prior, b), 300, 0.2, 100).mean(0)
    x101 = mu_y + 100 * (mu_y - mu_u)
    x100 = mu_y + 99 * (mu_y - mu_u)
    err101, err100 = (x - x101).abs().max().item(), (x - x100).abs().max().item()
    assert err101 < 0.1 * (x101 - x100).abs().max().item() < err100


# -- SJC -------------------------------------------------------------------------------------------------------------
def test_sjc_variance_reduced_equals_sds_uniform_per_sample():
    prior = GaussianPrior(means(), [0.3, 0.8, 1.0])
    x = torch.randn(6, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 6)
    rng = dict(guidance_scale=C(7.5), t_min=C(0.01), t_max=C(0.97))
    sjc = SJCGuidance(SJCGuidance.Config(**rng))
    sds = SDSGuidance(SDSGuidance.Config(weighting="uniform", **rng))
    g_sjc, g_sds = grad_at(sjc, prior, x, views, seed=4), grad_at(sds, prior, x, views, seed=4)
    assert torch.allclose(g_sjc, g_sds, atol=1e-10)
    raw = SJCGuidance(SJCGuidance.Config(var_red=False, **rng))
    r = gen(4)
    torch.randint(10, 971, (6,), generator=r)
    eps = torch.randn(x.shape, generator=r).to(x)
    assert torch.allclose(grad_at(raw, prior, x, views, seed=4), g_sds + eps, atol=1e-10)  # ε̃ itself


# -- Debiased SDS ----------------------------------------------------------------------------------------------------
def test_debiased_sds_clip_follows_its_schedule_and_leaves_small_entries():
    prior = GaussianPrior(means(scale=2.0), 0.5)
    x = torch.randn(16, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 16)
    clip = Scheduled.parse([0, 2.0, 8.0, 1000])
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(30.0), weighting="uniform", grad_clip=clip))
    for k, c in [(0, 2.0), (500, 5.0), (1000, 8.0), (3000, 8.0)]:
        g = grad_at(sds, prior, x, views, step=k, seed=k)
        rgb, render = render_of(x)
        sds(render, None, prior, views, k, gen(k))["sds"].backward()
        clipped = 16 * rgb.grad.permute(0, 3, 1, 2)
        small = g.abs() < c
        assert small.any() and (~small).any()
        assert torch.allclose(clipped[small], g[small], atol=1e-12)
        assert torch.allclose(clipped[~small], c * g[~small].sign(), atol=1e-12)
        assert clipped.abs().max().item() == pytest.approx(c)


# -- CSD -------------------------------------------------------------------------------------------------------------
def test_csd_with_equal_std_is_constant_in_x_and_noise():
    """g = ε_y − ε_null = κ(t)(μ_null − μ_y): no x, no ε; x drifts linearly along μ_y − μ_null."""
    prior = GaussianPrior(means(), 0.4)
    csd = CSDGuidance(CSDGuidance.Config(t_min=C(0.3), t_max=C(0.3)))
    views = plain_views(prior, 4)
    kappa = prior.kappa(torch.tensor([300]), 0).item()
    expected = kappa * (prior.means[2] - prior.means[0])
    for seed in range(3):
        x = torch.randn(4, 2, 2, 2, generator=gen(seed + 10), dtype=D) * (seed + 1)
        assert torch.allclose(grad_at(csd, prior, x, views, seed=seed), expected.expand(4, -1, -1, -1), atol=1e-12)
    x0 = torch.zeros(4, 2, 2, 2, dtype=D)
    x = _optimize(csd, prior, x0, views, 20, 0.1)
    assert torch.allclose(x, x0 - 20 * 0.1 * expected, atol=1e-10)
    # with random t the drift keeps its direction (no fixed point)
    free = CSDGuidance(CSDGuidance.Config())
    x = _optimize(free, prior, x0, views, 20, 0.1)
    d = (x - x0).flatten(1)
    u = (prior.means[0] - prior.means[2]).flatten()
    assert torch.allclose(torch.nn.functional.cosine_similarity(d, u[None].expand_as(d)), torch.ones(4, dtype=D))


def test_csd_negative_prompt_annealing_and_normalization():
    prior = GaussianPrior(means(), 0.4)  # ids: 0 = y, 1 = negative prompt, 2 = empty prompt
    cfg = CSDGuidance.Config(t_min=C(0.3), t_max=C(0.3), coef_negative=Scheduled.parse([0, 0.0, -1.0, 5000]),
                             coef_null=Scheduled.parse([0, -1.0, 0.0, 5000]))
    csd = CSDGuidance(cfg)
    views = plain_views(prior, 3)
    x = torch.randn(3, 2, 2, 2, generator=gen(1), dtype=D)
    kappa = prior.kappa(torch.tensor([300]), 0).item()
    mu_y, mu_neg, mu_null = prior.means
    for k, target in [(0, mu_null), (2500, 0.5 * (mu_neg + mu_null)), (5000, mu_neg), (9000, mu_neg)]:
        assert torch.allclose(grad_at(csd, prior, x, views, step=k), kappa * (target - mu_y).expand(3, -1, -1, -1),
                              atol=1e-12)
    norm = CSDGuidance(CSDGuidance.Config(normalize=True))
    g = grad_at(norm, prior, x, views, seed=3)
    assert g.norm().item() == pytest.approx(1.0, abs=1e-6)
    raw = grad_at(CSDGuidance(CSDGuidance.Config()), prior, x, views, seed=3)
    assert torch.allclose(g, raw / raw.norm(), atol=1e-6)


# -- NFSD ------------------------------------------------------------------------------------------------------------
def test_nfsd_is_noise_free_late_and_low_variance_early():
    prior = GaussianPrior(means(), 1.0)  # ids: 0 = y, 1 = negative prompt, 2 = empty prompt
    views = plain_views(prior, 4)
    mu_y, mu_neg, mu_null = prior.means
    late = NFSDGuidance(NFSDGuidance.Config(t_min=C(0.5), t_max=C(0.5)))
    a, s = ab(prior, 500)
    kappa = a * s / (a**2 + s**2)
    expected = s**2 * kappa * ((mu_neg - mu_null) + 7.5 * (mu_null - mu_y))
    for seed in range(3):
        x = torch.randn(4, 2, 2, 2, generator=gen(seed), dtype=D)
        assert torch.allclose(grad_at(late, prior, x, views, seed=seed), expected.expand(4, -1, -1, -1), atol=1e-12)
    # t < 200: ε-coefficient w σ²/D, far below SDS's w α² s²/D at the same t
    n = 20000
    xs = torch.zeros(n, 1, 1, 1, dtype=D)
    p1 = GaussianPrior(means(shape=(1, 1, 1)), 1.0)
    v1 = plain_views(p1, n)
    early = dict(t_min=C(0.1), t_max=C(0.1), guidance_scale=C(7.5))
    var_nfsd = grad_at(NFSDGuidance(NFSDGuidance.Config(**early)), p1, xs, v1).var().item()
    var_sds = grad_at(SDSGuidance(SDSGuidance.Config(**early)), p1, xs, v1).var().item()
    a, s = ab(p1, 100)
    assert var_nfsd == pytest.approx((s**2 * s**2 / (a**2 + s**2)) ** 2, rel=0.05)
    assert var_sds == pytest.approx((s**2 * a**2 / (a**2 + s**2)) ** 2, rel=0.05)
    assert var_nfsd < 0.05 * var_sds
    # the branch is chosen per sample: in a mixed batch exactly the rows with t ≥ 200 are noise-free
    mixed = NFSDGuidance(NFSDGuidance.Config(t_min=C(0.1), t_max=C(0.3)))
    x = torch.zeros(64, 1, 1, 1, dtype=D)
    v64 = plain_views(p1, 64)
    g1, g2 = grad_at(mixed, p1, x, v64, seed=1), grad_at(mixed, p1, x, v64, seed=1)
    t = torch.randint(100, 301, (64,), generator=gen(1))
    assert torch.equal(g1, g2) and (t >= 200).any() and (t < 200).any()
    wa, ws = p1.schedule.alpha_sigma(t)
    k1 = (wa * ws / (wa**2 + ws**2)).view(-1, 1, 1, 1)
    m = p1.means
    noise_free = ws.view(-1, 1, 1, 1) ** 2 * k1 * ((m[1] - m[2]) + 7.5 * (m[2] - m[0]))
    assert torch.allclose(g1[t >= 200], noise_free[t >= 200], atol=1e-12)
    assert not torch.allclose(g1[t < 200], noise_free[t < 200], atol=1e-3)


# -- DDIM inversion, ISM, SDI ----------------------------------------------------------------------------------------
SD_STD = 0.5


def clean_start_schedule() -> NoiseSchedule:
    """SD's table with ᾱ_0 = 1 − 10⁻¹⁴: forward-noising x to t = 0 adds (almost) nothing, so ISM's inversion
    start carries no sampled noise (with SD's own ᾱ_0 it adds σ_0 ≈ 0.03 of noise)."""
    ac = sd_schedule().alphas_cumprod.clone()
    ac[0] = 1 - 1e-14
    return NoiseSchedule(ac)


def single_gaussian(schedule=None) -> GaussianPrior:
    return GaussianPrior(means(k=1, seed=3), SD_STD, schedule=schedule)


def pf_ode_point(prior, x, t):
    """The exact probability-flow ODE image of x at t: x_t − α_t μ = (√D_t / s)(x − μ)."""
    a, s = ab(prior, t)
    mu = prior.means[0]
    return a * mu + ((a * SD_STD) ** 2 + s**2) ** 0.5 / SD_STD * (x - mu)


def _ddim_path(prior, x, grid):
    cur, b = x, x.shape[0]
    emb = prior.embedding(0).to(D).expand(b, 1)
    for a, n in zip(grid[:-1], grid[1:]):
        eps = prior.predict_epsilon(cur, torch.full((b,), max(a, 0)), emb)
        cur = common.ddim_step(prior.schedule, cur, eps, torch.full((b,), a), torch.full((b,), n))
    return cur


def test_ddim_inversion_follows_the_pf_ode_and_round_trips_with_fine_strides():
    prior = single_gaussian()
    x = torch.randn(2, 2, 2, 2, generator=gen(1), dtype=D)
    exact = pf_ode_point(prior, x, 600)
    errs = []
    for stride in (100, 20, 5, 1):
        grid = [-1] + list(range(1, 600, stride)) + [600]
        x_t = _ddim_path(prior, x, grid)
        back = _ddim_path(prior, x_t, grid[::-1])
        errs.append(((x_t - exact).norm() / exact.norm()).item())
        errs.append(((back - x).norm() / x.norm()).item())
    ode, trip = errs[0::2], errs[1::2]
    assert all(b < a for a, b in zip(ode, ode[1:])) and all(b < a for a, b in zip(trip, trip[1:]))
    assert ode[-1] < 0.01 and trip[-1] < 0.02
    # away from the singular start (σ → 0) the round trip is first order in the stride
    mid = [_ddim_path(prior, _ddim_path(prior, x, list(range(100, 601, k))), list(range(600, 99, -k)))
           for k in (10, 1)]
    e10, e1 = ((m - x).norm().item() for m in mid)
    assert e1 < 0.15 * e10 and e1 < 2e-3 * x.norm().item()


def test_ism_is_deterministic_given_x_and_t():
    prior = single_gaussian(clean_start_schedule())
    x = torch.randn(2, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 2)
    ism = ISMGuidance(ISMGuidance.Config(t_min=C(0.5), t_max=C(0.5), delta_t=C(50)))  # offset noise 0.1 on
    g1, g2 = grad_at(ism, prior, x, views, seed=1), grad_at(ism, prior, x, views, seed=2)
    assert g1.abs().max() > 1e-2 and torch.allclose(g1, g2, atol=1e-6)
    # SDS at the same t is not
    sds = SDSGuidance(SDSGuidance.Config(t_min=C(0.5), t_max=C(0.5)))
    assert not torch.allclose(grad_at(sds, prior, x, views, seed=1), grad_at(sds, prior, x, views, seed=2), atol=1e-2)


def test_ism_approaches_its_closed_form_as_strides_shrink():
    """Unconditional inversion, ω = 1, one Gaussian: g → w(t)(x − μ)/s·[σ_t/√D_t − σ_s/√D_s], s = t − δ_T."""
    prior = single_gaussian(clean_start_schedule())
    x = torch.randn(2, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 2)
    errs = []
    for d in (20, 5, 2):
        t, s_ = 500, 500 - d
        cfg = ISMGuidance.Config(t_min=C(0.5), t_max=C(0.5), delta_t=C(d), guidance_scale=C(1.0), xs_delta_t=d,
                                 xs_inv_steps=s_ // d + 1)
        g = grad_at(ISMGuidance(cfg), prior, x, views)
        (at, st), (as_, ss) = ab(prior, t), ab(prior, s_)
        bracket = st / ((at * SD_STD) ** 2 + st**2) ** 0.5 - ss / ((as_ * SD_STD) ** 2 + ss**2) ** 0.5
        assert bracket > 0
        closed = (st / at) * (x - prior.means[0]) / SD_STD * bracket
        errs.append(((g - closed).norm() / closed.norm()).item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02


@pytest.mark.parametrize("schedule", ["sd", "clean_start"])
def test_sdi_with_exact_inversion_is_a_deterministic_contraction(schedule):
    """ω_inv = ω = 1, η = 0, no jitter, fine grid: g = (1 − α_t s/√D_t)(x − μ) (guidance.md §16.3 SDI (i))."""
    prior = single_gaussian(None if schedule == "sd" else clean_start_schedule())
    x = torch.randn(2, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 2)
    a, s = ab(prior, 500)
    closed = (1 - a * SD_STD / ((a * SD_STD) ** 2 + s**2) ** 0.5) * (x - prior.means[0])
    errs = []
    for steps in (10, 100, 1000):
        cfg = SDIGuidance.Config(guidance_scale=C(1.0), inversion_guidance_scale=C(1.0), inversion_eta=0.0,
                                 inversion_steps=steps, jitter=False, t_schedule="uniform", t_min=C(0.5),
                                 t_max=C(0.5))
        g = grad_at(SDIGuidance(cfg), prior, x, views, seed=steps)
        errs.append(((g - closed).norm() / closed.norm()).item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 5e-3


# -- VSD / ESD -------------------------------------------------------------------------------------------------------
F = torch.float32  # the score networks run in float32


def cams(n: int):
    return orbit_cameras(torch.zeros(n), torch.linspace(0.0, 360.0, n + 1)[:n], torch.full((n,), 3.0),
                         torch.full((n,), 40.0))


class AnalyticParticleScore(torch.nn.Module):
    """ε_q of the Gaussian fit N(m, v) to the current particles: σ_t (x_t − α_t m)/(α_t² v + σ_t²)."""

    prediction_type = "epsilon"

    def __init__(self) -> None:
        super().__init__()
        self.m = self.v = None

    def fit(self, x):
        self.m, self.v = x.mean(0), x.var(0)

    def forward(self, prior, x_t, t, embeddings, cameras, keep, pixel_index=None, image_size=None):
        a, s = (common.broadcast(v, x_t) for v in prior.schedule.alpha_sigma(t))
        return s * (x_t - a * self.m) / (a**2 * self.v + s**2)


def _particles(n=256, seed=0):
    return (-1.0 + 0.05 * torch.randn(n, 1, 1, 1, generator=gen(seed))).to(F)


def _run_particles(guidance, prior, x, steps, lr, fit=None):
    n = x.shape[0]
    views, cm, r = plain_views(prior, n), cams(n), gen(1)
    for k in range(steps):
        if fit is not None:
            fit(x)
        rgb, render = render_of(x)
        sum(guidance(render, cm, prior, views, k, r).values()).backward()
        x = (x - lr * n * rgb.grad.permute(0, 3, 1, 2)).detach()
    return x


@pytest.mark.parametrize("omega", [1.0, 3.0])
def test_vsd_with_analytic_particle_score_samples_the_prior_while_sds_collapses(omega):
    """Particles under VSD (ε_q = Gaussian fit to the particles) converge in distribution to N(μ*, s²),
    μ* = μ_y + (ω − 1)(μ_y − μ_∅) (the CFG-tilted Gaussian); SDS sends every particle to μ*."""
    mu = torch.tensor([0.5, 0.3], dtype=F).view(2, 1, 1, 1)
    prior = GaussianPrior(mu, 0.3)
    target = 0.5 + (omega - 1) * 0.2
    vsd = VSDGuidance(VSDGuidance.Config(guidance_scale=C(omega)))
    vsd.setup(prior, 300)
    q = AnalyticParticleScore()
    vsd.score = q
    vsd.train_score = lambda *a, **k: torch.zeros(())  # ε_q is exact: nothing to train
    x = _run_particles(vsd, prior, _particles(), 300, 0.5, fit=q.fit)
    assert x.mean().item() == pytest.approx(target, abs=0.01) and x.std().item() == pytest.approx(0.3, rel=0.05)
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(omega)))
    x = _run_particles(sds, prior, _particles(), 300, 0.5)
    assert x.mean().item() == pytest.approx(target, abs=0.01) and x.std().item() < 0.05


class KDEParticleScore(torch.nn.Module):
    """ε_q of the particles' kernel density q = (1/n) Σ_j N(x_j, h²): diffused, q_t = (1/n) Σ_j N(α_t x_j, D),
    D = α_t² h² + σ_t², so x̂_0 = Σ_j π_j(x_t) (x_j + α_t h² (x_t − α_t x_j)/D) and ε_q = (x_t − α_t x̂_0)/σ_t."""

    prediction_type = "epsilon"

    def __init__(self, bandwidth: float) -> None:
        super().__init__()
        self.h, self.x = bandwidth, None

    def fit(self, x):
        self.x = x.detach().clone()

    def forward(self, prior, x_t, t, embeddings, cameras, keep, pixel_index=None, image_size=None):
        a, s = (common.broadcast(v, x_t) for v in prior.schedule.alpha_sigma(t))
        d = a**2 * self.h**2 + s**2
        diff = x_t[:, None] - a[:, None] * self.x[None]  # [B, n, C, H, W]
        pi = torch.softmax(-diff.flatten(2).pow(2).sum(-1) / (2 * d.flatten(1)), dim=1)
        x0 = torch.einsum("bn,bn...->b...", pi, self.x[None] + (a * self.h**2 / d)[:, None] * diff)
        return (x_t - a * x0) / s


def test_vsd_particles_cover_both_modes_of_a_reference_set_while_sds_collapses_between_them():
    """Two clusters of references at ±0.8: VSD particles (ε_q = the particles' own KDE score) end distributed as
    the references are, half in each mode; SDS sends every particle to one blurry point between the modes."""
    r = gen(0)
    refs = torch.cat([-0.8 + 0.1 * torch.randn(32, 1, 1, 1, generator=r),
                      0.8 + 0.1 * torch.randn(32, 1, 1, 1, generator=r)]).to(F)
    prior = ReferenceSetPrior(refs)
    start = (-0.2 + 0.05 * torch.randn(128, 1, 1, 1, generator=gen(1))).to(F)  # all on one side
    levels = torch.tensor([0.05, 0.25, 0.75, 0.95])
    vsd = VSDGuidance(VSDGuidance.Config(guidance_scale=C(1.0)))
    vsd.setup(prior, 1500)
    q = KDEParticleScore(0.1)
    vsd.score = q
    vsd.train_score = lambda *a, **k: torch.zeros(())  # ε_q is exact: nothing to train
    x = _run_particles(vsd, prior, start, 1500, 0.1, fit=q.fit)
    assert 0.35 < (x > 0).float().mean().item() < 0.65
    assert torch.allclose(torch.quantile(x.flatten(), levels), torch.quantile(refs.flatten(), levels), atol=0.1)
    x = _run_particles(SDSGuidance(SDSGuidance.Config(guidance_scale=C(1.0))), prior, start, 1500, 0.1)
    assert x.abs().mean().item() < 0.2 and x.abs().max().item() < 0.45  # on neither mode
    assert x.std().item() < 0.25 * refs.std().item()


def test_vsd_with_its_residual_score_net_keeps_the_prior_variance():
    """The real path: ε_q from the zero-initialized ResidualScoreNet trained online by its own AdamW."""
    prior = GaussianPrior(torch.full((1, 1, 1, 1), 0.5, dtype=F), 0.3)
    torch.manual_seed(0)
    vsd = VSDGuidance(VSDGuidance.Config(guidance_scale=C(1.0), score_lr=C(1e-2), score_steps=2, camera_dropout=0.0))
    vsd.setup(prior, 250)
    x = _run_particles(vsd, prior, _particles(), 250, 0.5)
    assert x.mean().item() == pytest.approx(0.5, abs=0.05)
    assert 0.22 < x.std().item() < 0.4  # SDS: < 0.05 (previous test)


def test_vsd_initial_gradient_is_the_cfg_delta_only():
    """Zero-initialized score model: ε_q = ε_prior(x_t; plain prompt), so g = w (ω − 1)(ε_y − ε_∅)."""
    prior = GaussianPrior(means(k=2).to(F), [0.3, 0.9])
    vsd = VSDGuidance(VSDGuidance.Config(guidance_scale=C(7.5)))
    vsd.setup(prior, 100)
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    rgb, render = render_of(x)
    views = plain_views(prior, 4)
    vsd(render, cams(4), prior, views, 0, gen(5))["vsd"].backward()
    r = gen(5)
    t = torch.randint(20, 981, (4,), generator=r)
    eps = torch.randn(x.shape, generator=r)
    x_t = prior.schedule.add_noise(x, eps, t)
    e_y, e_u = prior.predict_epsilon(x_t, t, views.cond), prior.predict_epsilon(x_t, t, views.uncond)
    a, s = prior.schedule.alpha_sigma(t)
    expected = common.broadcast(s**2, x) * 6.5 * (e_y - e_u)
    assert torch.allclose(4 * rgb.grad.permute(0, 3, 1, 2), expected, atol=1e-5)


def test_vsd_score_net_training_reduces_its_denoising_loss():
    prior = GaussianPrior(torch.zeros(1, 1, 1, 1, dtype=F), 1.0)
    torch.manual_seed(0)
    vsd = VSDGuidance(VSDGuidance.Config(score_lr=C(1e-2), camera_dropout=0.0))
    vsd.setup(prior, 100)
    n = 128
    x = (1.5 + 0.2 * torch.randn(n, 1, 2, 2, generator=gen(2))).to(F)  # renders far from the prior's data
    views, cm = plain_views(prior, n), cams(n)
    kw = dict(pixel_index=None, image_size=None)
    ev = gen(3)
    tau = torch.randint(0, 1000, (n,), generator=ev)
    eps = torch.randn(x.shape, generator=ev)
    x_tau = prior.schedule.add_noise(x, eps, tau)

    def eval_loss():
        with torch.no_grad():
            pred = vsd.score(prior, x_tau, tau, views.plain, cm, torch.ones(n, dtype=torch.bool))
        return torch.nn.functional.mse_loss(pred, eps).item()

    before = eval_loss()
    assert before == pytest.approx(torch.nn.functional.mse_loss(prior.predict_epsilon(x_tau, tau, views.plain),
                                                                eps).item())  # zero-init: the prior itself
    r = gen(4)
    for _ in range(150):
        vsd.train_score(prior, x, views, cm, r, kw)
    assert eval_loss() < 0.8 * before


def test_esd_with_lambda_one_reproduces_vsd_exactly():
    prior = GaussianPrior(means(k=2).to(F), [0.3, 0.9])
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    views = plain_views(prior, 4)
    out = []
    for cls in (VSDGuidance, ESDGuidance):
        torch.manual_seed(0)
        g = cls(cls.Config(lora_guidance_scale=C(1.0), score_lr=C(1e-2)))
        g.setup(prior, 10)
        r, grads = gen(7), []
        for k in range(3):
            rgb, render = render_of(x)
            sum(g(render, cams(4), prior, views, k, r).values()).backward()
            grads.append(rgb.grad.clone())
        out.append((torch.stack(grads), g.last_score_loss))
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]
    assert not torch.equal(out[0][0][0], out[0][0][2])  # the score model moved between steps


def test_esd_mixes_camera_conditional_and_marginal_scores():
    prior = GaussianPrior(means(k=2).to(F), [0.3, 0.9])
    torch.manual_seed(0)
    esd = ESDGuidance(ESDGuidance.Config(lora_guidance_scale=C(0.25), score_lr=C(1e-2)))
    esd.setup(prior, 10)
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    views, cm = plain_views(prior, 4), cams(4)
    for _ in range(5):
        esd.train_score(prior, x, views, cm, gen(2), dict(pixel_index=None, image_size=None))
    t = torch.tensor([100, 300, 500, 900])
    with torch.no_grad():
        mixed = esd.score_epsilon(prior, x, t, views, cm, 0, dict(pixel_index=None, image_size=None))
        e_c = esd.score(prior, x, t, views.plain, cm, torch.ones(4, dtype=torch.bool))
        e_u = esd.score(prior, x, t, views.plain, cm, torch.zeros(4, dtype=torch.bool))
    assert not torch.allclose(e_c, e_u)
    assert torch.allclose(mixed, 0.25 * e_c + 0.75 * e_u, atol=1e-6)
