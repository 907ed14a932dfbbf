"""Repulsive Score Distillation (``rsd``) against its closed forms on the analytic priors (rsd.py's docstring).

On a point mass at μ with ω = 1, SDS's ε̃ − ε = (α_t/σ_t)(x − μ) exactly (the noise cancels). With ``clean`` features
the repulsion is deterministic too. Particles then settle where the pull (α_t/σ_t)(x_i − μ) balances γσ_t² R_i:
N = 2 at distance d* = 2σ_t √(γ ln 2 · σ_t/α_t), N = 3 on an equilateral triangle of side √(3γ ln 2 · σ_t³/α_t).
float64 throughout."""

import math

import pytest
import torch

from dreamcore.errors import DreamcoreError
from dreamcore.guidance.rsd import RSDGuidance, kernel_repulsion
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of

C = Scheduled.constant


def rsd(**kw):
    return RSDGuidance(RSDGuidance.Config(**kw))


def grad_at(guidance, prior, x, views, step=0, seed=0):
    _, render = render_of(x)
    return guidance.gradient(x, render, None, prior, views, step, gen(seed))


def alpha_sigma(prior, t):
    a, s = prior.schedule.alpha_sigma(torch.tensor([t]))
    return a.item(), s.item()


def reference_repulsion(f):
    """The kernel term written out with loops: lower medians (torch's), ln(N − 1) (ln 2 at N = 2)."""
    n = f.shape[0]
    d = [[(f[i] - f[j]).norm().item() for j in range(n)] for i in range(n)]
    per = [sorted(d[i][j] for j in range(n) if j != i)[(n - 2) // 2] ** 2 for i in range(n)]
    h = sorted(per)[(n - 1) // 2] / math.log(n - 1 if n > 2 else 2)
    out = []
    for i in range(n):
        k = {j: math.exp(-d[i][j] ** 2 / h) for j in range(n) if j != i}
        r = sum((2 / h) * k[j] * (f[i] - f[j]) for j in k)
        out.append(r / sum(k.values()))
    return torch.stack(out)


def pairwise(x):
    f = x.flatten(1)
    return [(f[i] - f[j]).norm().item() for i in range(len(f)) for j in range(i + 1, len(f))]


# -- the equilibrium -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_particles_on_a_point_mass_settle_where_the_pull_balances_the_repulsion(n):
    mu = torch.randn(1, 3, 2, 2, generator=gen(0), dtype=D)
    prior = GaussianPrior(mu, 0.0)
    gamma, t = 0.5, 500
    guidance = rsd(guidance_scale=C(1.0), t_min=C(0.5), t_max=C(0.5), repulsion=C(gamma))
    a, s = alpha_sigma(prior, t)
    predicted = {2: 2 * s * math.sqrt(gamma * math.log(2) * s / a),
                 3: math.sqrt(3 * gamma * math.log(2) * s**3 / a)}[n]
    assert predicted == pytest.approx({2: 1.2742, 3: 1.1035}[n], abs=1e-4)

    x = mu + 0.05 * torch.randn(n, 3, 2, 2, generator=gen(1), dtype=D)  # close together, an irregular start
    assert max(pairwise(x)) < 0.5 * predicted
    views = plain_views(prior, n)
    g = gen(2)
    for k in range(300):
        rgb, render = render_of(x)
        sum(guidance(render, None, prior, views, k, g).values()).backward()
        x = x - 1.0 * n * rgb.grad.permute(0, 3, 1, 2)  # plain descent on the injected loss
    for d in pairwise(x):
        assert d == pytest.approx(predicted, rel=1e-6)
    assert torch.allclose(x.mean(0), mu[0], atol=1e-8)  # the repulsion sums to zero: the centre is μ
    # without the repulsion the same descent collapses every particle onto μ
    sds = rsd(guidance_scale=C(1.0), t_min=C(0.5), t_max=C(0.5), repulsion=C(0.0))
    y = mu + 0.05 * torch.randn(n, 3, 2, 2, generator=gen(1), dtype=D)
    for k in range(100):
        rgb, render = render_of(y)
        sum(sds(render, None, prior, views, k, g).values()).backward()
        y = y - 1.0 * n * rgb.grad.permute(0, 3, 1, 2)
    assert max(pairwise(y)) < 1e-8


# -- the update ------------------------------------------------------------------------------------------------------
def test_zero_repulsion_and_a_single_particle_are_sds_exactly():
    prior = GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0])
    x = torch.randn(4, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 4)
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(7.5), t_shared=True))
    off = rsd(guidance_scale=C(7.5), repulsion=C(0.0), features="noisy")
    assert torch.equal(grad_at(off, prior, x, views, seed=3), grad_at(sds, prior, x, views, seed=3))
    on = rsd(guidance_scale=C(7.5))
    assert torch.equal(grad_at(on, prior, x[:1], plain_views(prior, 1), seed=3),
                       grad_at(sds, prior, x[:1], plain_views(prior, 1), seed=3))
    assert not torch.allclose(grad_at(on, prior, x, views, seed=3), grad_at(sds, prior, x, views, seed=3))
    # MVDream's reconstruction form: the same SDS part, the repulsion weighted by its implied σ_t/α_t
    recon = dict(guidance_scale=C(7.5), x0_reconstruction=True, x0_rescale=0.5)
    sds_recon = SDSGuidance(SDSGuidance.Config(t_shared=True, **recon))
    assert torch.equal(grad_at(rsd(repulsion=C(0.0), **recon), prior, x, views, seed=3),
                       grad_at(sds_recon, prior, x, views, seed=3))
    r = gen(3)
    t = torch.randint(20, 981, (1,), generator=r)
    a, s = (v.item() for v in prior.schedule.alpha_sigma(t))
    rep = reference_repulsion(x.flatten(1)).view_as(x)
    assert torch.allclose(grad_at(rsd(repulsion=C(2.0), **recon), prior, x, views, seed=3),
                          grad_at(sds_recon, prior, x, views, seed=3) - (s / a) * 2.0 * s**2 * rep, atol=1e-10)


@pytest.mark.parametrize("features", ["clean", "noisy"])
def test_gradient_equals_sds_minus_the_kernel_term_with_replayed_draws(features):
    """N = 4, ω = 7.5: g = (1 − ᾱ_t)[ε̃ − ε − γ(1 − ᾱ_t) R], R from the written-out kernel on x or x_t."""
    prior = GaussianPrior(torch.randn(3, 2, 2, 2, generator=gen(0), dtype=D), [0.3, 0.8, 1.0])
    x = torch.randn(4, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 4)
    gamma = 3.0
    g = grad_at(rsd(guidance_scale=C(7.5), repulsion=C(gamma), features=features), prior, x, views, seed=6)
    r = gen(6)  # replay: one t for the batch, then ε
    t = torch.randint(20, 981, (1,), generator=r).expand(4)
    eps = torch.randn(x.shape, generator=r).to(x)
    g_sds = grad_at(SDSGuidance(SDSGuidance.Config(guidance_scale=C(7.5), t_shared=True)), prior, x, views, seed=6)
    a, s = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(t))
    f = x if features == "clean" else a * x + s * eps
    rep = reference_repulsion(f.flatten(1)).view_as(x)
    assert rep.abs().max().item() > 1e-3
    assert torch.allclose(g, g_sds - s**2 * gamma * s**2 * rep, atol=1e-10)


def test_kernel_is_translation_invariant_scales_inversely_and_pushes_apart():
    f = torch.randn(5, 7, generator=gen(0), dtype=D)
    r = kernel_repulsion(f)
    assert torch.allclose(r, reference_repulsion(f), atol=1e-12)
    assert torch.allclose(kernel_repulsion(f + torch.randn(7, generator=gen(1), dtype=D)), r, atol=1e-12)
    assert torch.allclose(kernel_repulsion(3.0 * f), r / 3.0, atol=1e-12)  # h ∝ scale²
    before = min(pairwise(f))
    assert min(pairwise(f + 0.01 * r)) > before  # a step along +R spreads the particles
    # N = 2: the median rule's ln(N − 1) = 0 falls back to ln 2, which is SVGD's rule there: k = ½, R = 2 ln 2 Δ/d²
    two = f[:2]
    diff = two[0] - two[1]
    expected = 2 * math.log(2) * diff / diff.pow(2).sum()
    assert torch.allclose(kernel_repulsion(two)[0], expected, atol=1e-12)
    assert torch.allclose(kernel_repulsion(two, "svgd"), kernel_repulsion(two), atol=1e-12)
    assert not torch.allclose(kernel_repulsion(f, "svgd"), r)  # ln 5 vs ln 4 at N = 5
    assert torch.isfinite(kernel_repulsion(torch.zeros(3, 4, dtype=D))).all()  # coincident particles: no NaN


def test_x0_features_pull_back_through_the_prior():
    """On a Gaussian prior x̂₀ = μ + (α s²/D)(x_t − α μ) is an isotropic affine map of x_t, and the median-bandwidth
    kernel is invariant to translations and scales as 1/λ. So after the Jacobian (α s²/D) the repulsion is exactly the
    ``noisy`` one, and the vector-Jacobian product through the prior is checked against it."""
    prior = GaussianPrior(torch.randn(1, 2, 2, 2, generator=gen(0), dtype=D), 0.4)
    x = torch.randn(4, 2, 2, 2, generator=gen(1), dtype=D)
    views = plain_views(prior, 4)
    kw = dict(guidance_scale=C(1.0), repulsion=C(5.0))
    g_x0 = grad_at(rsd(features="x0", **kw), prior, x, views, seed=2)
    g_noisy = grad_at(rsd(features="noisy", **kw), prior, x, views, seed=2)
    g_clean = grad_at(rsd(features="clean", **kw), prior, x, views, seed=2)
    assert torch.allclose(g_x0, g_noisy, atol=1e-10)
    assert not torch.allclose(g_x0, g_clean, atol=1e-3)

    class Frozen(GaussianPrior):
        predict_noise = torch.no_grad()(GaussianPrior.predict_noise)

    frozen = Frozen(prior.means, 0.4)
    with pytest.raises(DreamcoreError, match="not differentiable"):
        grad_at(rsd(features="x0", **kw), frozen, x, views, seed=2)
