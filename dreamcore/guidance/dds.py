"""Delta Denoising Score (Hertz, Aberman and Cohen-Or 2023, "Delta Denoising Score"), with DreamCatalyst's weighting
(Kim et al. 2024, "DreamCatalyst: Fast and High-Quality 3D Editing via Controlling Editability and Identity
Preservation") as an option. An :class:`~dreamcore.guidance.editing.EditGuidance`: it needs the frozen source.

SDS of an image against the prompt that already describes it should be zero, but is not: the prediction ε̃ − ε
carries a prompt-independent bias. DDS estimates that spurious part on the source branch and subtracts it. With the
**same** t and ε on both branches and the same ω,

    x_t^tgt = α_t x_tgt + σ_t ε,     x_t^src = α_t x_src + σ_t ε,
    g = w(t) [ ε̃_ω(x_t^tgt; y_tgt, t) − ε̃_ω(x_t^src; y_src, t) ],

with ε̃_ω the classifier-free-guided (or Perp-Neg) prediction of :func:`~dreamcore.guidance.common.guided_epsilon`.
The −ε of SDS cancels exactly. If x_tgt = x_src and y_tgt = y_src, g = 0 exactly.

Closed form on the Gaussian prior N(μ_k, s² I) with equal s for both prompts and ω = 1 (D = α²s² + σ², κ = ασ/D):
ε*_k(x_t) = σ(x_t − αμ_k)/D, so the noise cancels as well and g = w κ [(x_tgt − μ_tgt) − (x_src − μ_src)]. Descent
moves x_tgt to x_src + (μ_tgt − μ_src): the edit moves the source by the difference the prompts make and keeps the
source's own deviation from its mean. SDS toward y_tgt collapses to μ_tgt instead. Where the prompts agree
(μ_tgt = μ_src) and nothing has been edited yet, g vanishes. With CFG and a shared negative prompt of the same
spread, the fixed point is x_src + ω(μ_tgt − μ_src) (CFG's extrapolation), as SDS's is μ_∅ + ω(μ_y − μ_∅).

DreamCatalyst (``dreamcatalyst: true``) replaces w(t) by an editability weight growing with t, and adds an identity
term that pulls the edit toward the source, also growing with t (t_n = t/T, T the prior's training steps):

    g = (δ + γ · t_n^{1/e}) [ ε̃_ω(x_t^tgt; y_tgt) − ε̃_ω(x_t^src; y_src) ] + ψ · e^{t_n} (x_tgt − x_src),

with e Euler's number (the official code raises t_n to the power 1/e, checked there). ``weighting`` is not
used then. DreamCatalyst's code takes t_n as the index on its 500-step grid over 500 (t ≈ 2·index + 1), i.e. t/T up to
one part in a thousand. Its decreasing timestep schedule, index = (i_max − i_min)(1 − k/K) + i_min on that grid with
i_min = 0.2·500 and i_max = 0.9·500, is dreamcore's ``t_schedule: linear`` with ``t_min: 0.2``, ``t_max: 0.9``
(t(k) = t_lo + (t_hi − t_lo)(1 − k/K), :mod:`~dreamcore.guidance.timesteps`) to within one training step. Here K is
the run's steps, where the nerfstudio code hard-codes K = 3000.

Defaults and sources:

* DDS (google/prompt-to-prompt ``DDS_zeroshot.ipynb``): w ≡ 1 (``weighting: uniform``), ω = 7.5 on **both** branches,
  t ~ U{50 … 948} (``t_min 0.05``, ``t_max 0.95``: U{50 … 950}). That notebook also scales its loss by 2000 over the
  latent's h·w and runs SGD at lr 0.1 for 200 steps on a single image; scale is left to ``weight`` and the optimizer
  here.
* DreamCatalyst (kaist-cvml/DreamCatalyst ``nerfstudio/dc/dc.py``): δ 0.2, γ 0.8, ψ 0.075. The README calls the
  identity weight "chi", but the code applies ``psi``. The GaussianEditor variant uses ψ 0.075, δ 0.05, γ 0.2. Its
  prior is InstructPix2Pix, with both branches conditioned on the source image and per-branch CFG. A text-only prior
  uses the plain DDS branches here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import GuidanceConfig, scheduled
from dreamcore.guidance.editing import EditGuidance
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng


def dreamcatalyst_weights(t: Tensor, num_steps: int, delta: float, gamma: float,
                          psi: float) -> tuple[Tensor, Tensor]:
    """(δ + γ t_n^{1/e}, ψ e^{t_n}) [B] for integer t [B], t_n = t/T."""
    tn = t.to(torch.float64) / num_steps
    return delta + gamma * tn.pow(1.0 / math.e), psi * tn.exp()


@register("guidance", "dds")
class DDSGuidance(EditGuidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)  # ω (diffusers), the same on both branches
        weighting: common.Weighting = "uniform"  # w ≡ 1 (official); not used with dreamcatalyst
        t_min: Scheduled = scheduled(0.05)
        t_max: Scheduled = scheduled(0.95)
        dreamcatalyst: bool = False  # DreamCatalyst's weights (module docstring) instead of w(t)
        dc_delta: float = 0.2  # δ: editability weight at t = 0
        dc_gamma: float = 0.8  # γ: its growth, times t_n^{1/e}
        dc_psi: float = 0.075  # ψ: identity weight, times e^{t_n}

    loss_name = "dds"

    def __init__(self, cfg: "DDSGuidance.Config") -> None:
        super().__init__(cfg)
        if cfg.dreamcatalyst and min(cfg.dc_delta, cfg.dc_gamma, cfg.dc_psi) < 0:
            raise DreamcoreError(f"guidance.dc_delta/dc_gamma/dc_psi must be non-negative, got "
                                 f"{cfg.dc_delta}, {cfg.dc_gamma}, {cfg.dc_psi}")

    def edit_gradient(self, x, x_src, render, cameras, prior, views, source_views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        omega = self.omega(step)
        t = self.sample_t(x.shape[0], step, prior, generator)  # one t per view group, shared by both branches
        noise = rng.normal(x.shape, generator, like=x)  # one ε, shared by both branches
        eps_tgt, _ = common.guided_epsilon(prior, prior.schedule.add_noise(x, noise, t), t, views, omega, **kw)
        eps_src, _ = common.guided_epsilon(prior, prior.schedule.add_noise(x_src, noise, t), t, source_views,
                                           omega, **kw)
        delta = eps_tgt - eps_src
        if not c.dreamcatalyst:
            return common.broadcast(self.weights(prior, t), x) * delta
        edit_w, keep_w = dreamcatalyst_weights(t, prior.schedule.num_steps, c.dc_delta, c.dc_gamma, c.dc_psi)
        return common.broadcast(edit_w, x) * delta + common.broadcast(keep_w, x) * (x - x_src)
