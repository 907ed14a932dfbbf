"""Score Distillation Sampling (Poole et al. 2022, "DreamFusion", eq. 3).

    ∇_θ L_SDS = E_{t,ε}[ w(t) (ε̃_φ(x_t; y, t) − ε) ∂x/∂θ ],   x = g(θ, c),   x_t = α_t x + σ_t ε,

with ε̃ the classifier-free-guided prediction in diffusers' convention (ω = 1: no guidance), or the Perp-Neg
combination when ``views.perp_neg`` is on. Debiased SDS (Hong et al. 2023) score clipping is ``grad_clip``
(a scheduled threshold applied element-wise after w(t), e.g. ``[[0, 2], [1000, 8]]``).

``x0_reconstruction: true`` is MVDream's form (Shi et al. 2023; threestudio-mvdream's ``recon_loss``): the
update is g = x − x̂₀′ with x̂₀ = (x_t − σ_t ε̃)/α_t, i.e. SDS with the implied weight w(t) = σ_t/α_t (``weighting``
is not used), and with ``x0_rescale`` r > 0 the guided x̂₀ is pulled back to the spread of the conditional one
(CFG rescale in x̂₀ space): s = std(x̂₀⁺)/std(x̂₀) over each group of views the prior denoises jointly (all its
channels and pixels), x̂₀⁺ from ε_y alone, x̂₀′ = r·s·x̂₀ + (1 − r)·x̂₀ (MVDream: r = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig
from dreamcore.registry import register
from dreamcore import rng


@dataclass
class SDSConfig(GuidanceConfig):
    x0_reconstruction: bool = False  # MVDream's x̂₀-reconstruction form (module docstring)
    x0_rescale: float = 0.0  # r: CFG rescale of the reconstruction per view group (MVDream 0.5); needs the form


def rescaled_x0(x0: Tensor, x0_cond: Tensor, group: int, r: float) -> Tensor:
    """x̂₀′ = r·s·x̂₀ + (1 − r)·x̂₀ with s = std(x̂₀_cond)/std(x̂₀) over each group of ``group`` consecutive
    views (all their elements)."""
    b = x0.shape[0]
    flat, flat_c = x0.reshape(b // group, -1), x0_cond.reshape(b // group, -1)
    s = flat_c.std(dim=1) / flat.std(dim=1).clamp_min(1e-8)  # [G]
    s = s.repeat_interleave(group)
    return r * common.broadcast(s, x0) * x0 + (1.0 - r) * x0


@register("guidance", "sds")
class SDSGuidance(Guidance):
    Config = SDSConfig
    loss_name = "sds"

    def __init__(self, cfg: SDSConfig) -> None:
        if not isinstance(cfg, SDSConfig):
            raise DreamcoreError(f"guidance '{cfg.name}': {type(self).__name__} extends SDS, so its Config must "
                                 "extend SDSGuidance.Config (it has SDS's own fields), not GuidanceConfig")
        super().__init__(cfg)
        if cfg.x0_rescale and not cfg.x0_reconstruction:
            raise DreamcoreError("guidance.x0_rescale needs guidance.x0_reconstruction=true (MVDream's form)")
        if not 0.0 <= cfg.x0_rescale <= 1.0:
            raise DreamcoreError(f"guidance.x0_rescale={cfg.x0_rescale}: a fraction in [0, 1]")

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps, raw = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **self.prior_kwargs(render, cameras))
        if not self.cfg.x0_reconstruction:
            return common.broadcast(self.weights(prior, t), x) * (eps - noise)
        x0 = common.predicted_x0(prior.schedule, x_t, eps, t)
        if self.cfg.x0_rescale > 0:
            x0_cond = common.predicted_x0(prior.schedule, x_t, raw["cond"], t)
            x0 = rescaled_x0(x0, x0_cond, prior.views_per_sample, self.cfg.x0_rescale)
        return x - x0
