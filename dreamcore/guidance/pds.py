"""Posterior Distillation Sampling (Koo, Park and Sung 2024, "Posterior Distillation Sampling", CVPR). An
:class:`~dreamcore.guidance.editing.EditGuidance`: it needs the frozen source.

PDS matches the *stochastic latents* of the two branches instead of their noise predictions. A DDPM posterior step
from t to t' < t is x_{t'} = μ(x_t, ε̃) + σ̃ z. Read backwards, z is the noise that step would need to land on the
branch's own x_{t'}. PDS makes the edited branch need the same z as the source branch. Per branch, with the **same**
ε and ε′ on both branches and the same t:

    x_t = α_t x + σ_t ε,    x_{t'} = α_{t'} x + σ_{t'} ε′,    t' = t − Δ (``t_gap``),
    x̂₀ = (x_t − σ_t ε̃_ω(x_t; y, t)) / α_t,    μ = c₀ x̂₀ + c₁ x_t,    z = (x_{t'} − μ) / σ̃,
    c₀ = √ᾱ_{t'} β_t / (1 − ᾱ_t),   c₁ = √(1 − β_t) (1 − ᾱ_{t'}) / (1 − ᾱ_t),   σ̃² = β_t (1 − ᾱ_{t'}) / (1 − ᾱ_t),

    g = w(t) (z_tgt − z_src),

with β_t = 1 − ᾱ_t/ᾱ_{t−1} the **one-step** beta of the training schedule, whatever Δ is (the official code's).
Substituting, ε and ε′ cancel between the branches and

    g / w = ψ(t) (x_tgt − x_src) + χ(t) (ε̃_tgt − ε̃_src),
    ψ = (α_{t'} − c₀ − c₁ α_t) / σ̃,    χ = c₀ σ_t / (α_t σ̃),

a DDS term weighted by χ, plus an identity term that pulls the edit toward the source. With Δ = 1 the coefficients
are the exact one-step posterior's: c₀ + c₁α_t = α_{t−1}, so ψ ≡ 0 and PDS is DDS with w = χ. The official code takes
t' two training steps down (its 500-step DDIM grid on a 1000-step schedule) but keeps the one-step β_t. The
posterior is then built for one step and used over two, and ψ > 0. To first order in β_t (derived here; within 2 %
on Stable Diffusion's schedule, ``tests/test_guidance_edit.py``):

    ψ / χ ≈ (Δ − 1) · (1 + ᾱ_t)/2 · α_t/σ_t,    χ ≈ √β_t / σ_{t'}.

The identity term therefore scales with the signal-to-noise ratio α_t/σ_t: it is a small-t effect. On Stable
Diffusion's schedule ψ ≈ 1.7, 0.32, 0.08, 0.03, 0.006 at t = 20, 100, 300, 500, 900, while χ ≈ 0.08–0.24. Hence the
PDS README's advice to raise t_min to weaken identity preservation. Replacing β_t by the Δ-step beta would silently
turn PDS into a scaled DDS.

Closed form on the Gaussian prior N(μ_k, s² I), with equal s for the prompts and the negative prompt (κ = ασ/D):
ε̃_tgt − ε̃_src = κ [(x_tgt − x_src) − ω (μ_tgt − μ_src)] exactly, so with d = x_tgt − x_src the update is
g = (ψ + χκ) d − ωχκ (μ_tgt − μ_src). Under t drawn from the schedule, SGD's mean settles where the expected update
vanishes: d* = ω (μ_tgt − μ_src) E[χκ] / (E[ψ] + E[χκ]). That is DDS's fixed point shrunk toward the source by the
identity term (exactly DDS's at Δ = 1).

Defaults and sources (KAIST-Visual-AI-Group/PDS ``pds/pds.py``): ω = 100 (for Stable Diffusion 1.5 or a DreamBooth
fine-tune of it; it is dreamcore's default as well), timesteps uniform over the 500-step grid between 2 % and 98 %
(``t_min 0.02``, ``t_max 0.98``), t' = the grid's previous point (``t_gap: 2``), no weighting (``weighting:
uniform``). The 3D pipeline then refines with SDEdit of the renders (20 steps, ω 15) and an iterative dataset
update; that is a system's business, not this update's. On a prior with another number of training steps, Δ keeps
its meaning in training steps (T/500 reproduces the official grid spacing).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import GuidanceConfig, scheduled
from dreamcore.guidance.editing import EditGuidance
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng


@dataclass
class PosteriorCoefficients:
    """Per-row [B] coefficients of the PDS posterior step from t to t' (module docstring)."""

    alpha: Tensor  # α_t
    sigma: Tensor  # σ_t
    alpha_prev: Tensor  # α_{t'}
    sigma_prev: Tensor  # σ_{t'}
    c0: Tensor
    c1: Tensor
    sigma_tilde: Tensor  # σ̃

    @property
    def psi(self) -> Tensor:
        """ψ = (α_{t'} − c₀ − c₁α_t)/σ̃: the identity term's weight."""
        return (self.alpha_prev - self.c0 - self.c1 * self.alpha) / self.sigma_tilde

    @property
    def chi(self) -> Tensor:
        """χ = c₀σ_t/(α_tσ̃): the weight of ε̃_tgt − ε̃_src."""
        return self.c0 * self.sigma / (self.alpha * self.sigma_tilde)


def posterior_coefficients(schedule, t: Tensor, t_prev: Tensor) -> PosteriorCoefficients:
    """The coefficients for integer t > t' ≥ 0 [B], with the one-step β_t = 1 − ᾱ_t/ᾱ_{t−1} (ᾱ_{−1} = 1)."""
    ab_t = common.alphas_bar(schedule, t)
    ab_prev = common.alphas_bar(schedule, t_prev)
    beta = 1.0 - ab_t / common.alphas_bar(schedule, t - 1)
    c0 = ab_prev.sqrt() * beta / (1.0 - ab_t)
    c1 = (1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab_t)
    sigma_tilde = (beta * (1.0 - ab_prev) / (1.0 - ab_t)).sqrt()
    return PosteriorCoefficients(ab_t.sqrt(), (1.0 - ab_t).sqrt(), ab_prev.sqrt(), (1.0 - ab_prev).sqrt(), c0, c1,
                                 sigma_tilde)


@register("guidance", "pds")
class PDSGuidance(EditGuidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(100.0)  # ω (diffusers), the same on both branches (official 100)
        weighting: common.Weighting = "uniform"  # w ≡ 1 (official: none)
        t_min: Scheduled = scheduled(0.02)
        t_max: Scheduled = scheduled(0.98)
        t_gap: int = 2  # Δ = t − t' in training steps (official: 2, a 500-step grid on 1000 steps)

    loss_name = "pds"

    def __init__(self, cfg: "PDSGuidance.Config") -> None:
        super().__init__(cfg)
        if cfg.t_gap < 1:
            raise DreamcoreError(f"guidance.t_gap={cfg.t_gap}: t' = t − t_gap must lie below t (t_gap ≥ 1)")

    def branch_z(self, x: Tensor, noise: Tensor, noise_prev: Tensor, t: Tensor, co: PosteriorCoefficients, prior,
                 views, omega: float, kw: dict) -> Tensor:
        """z = (x_{t'} − μ(x_t, ε̃))/σ̃ for one branch."""
        b = lambda v: common.broadcast(v, x)  # noqa: E731
        x_t = b(co.alpha) * x + b(co.sigma) * noise
        x_prev = b(co.alpha_prev) * x + b(co.sigma_prev) * noise_prev
        eps, _ = common.guided_epsilon(prior, x_t, t, views, omega, **kw)
        x0 = (x_t - b(co.sigma) * eps) / b(co.alpha)
        return (x_prev - (b(co.c0) * x0 + b(co.c1) * x_t)) / b(co.sigma_tilde)

    def edit_gradient(self, x, x_src, render, cameras, prior, views, source_views, step, generator) -> Tensor:
        kw = self.prior_kwargs(render, cameras)
        omega = self.omega(step)
        gap = self.cfg.t_gap
        t = self.sample_t(x.shape[0], step, prior, generator).clamp(gap, prior.schedule.num_steps - 1)
        co = posterior_coefficients(prior.schedule, t, t - gap)
        noise = rng.normal(x.shape, generator, like=x)  # ε, shared by both branches
        noise_prev = rng.normal(x.shape, generator, like=x)  # ε′, shared by both branches
        z_tgt = self.branch_z(x, noise, noise_prev, t, co, prior, views, omega, kw)
        z_src = self.branch_z(x_src, noise, noise_prev, t, co, prior, source_views, omega, kw)
        return common.broadcast(self.weights(prior, t), x) * (z_tgt - z_src)
