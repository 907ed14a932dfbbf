"""Score Distillation Sampling (Poole et al. 2022, "DreamFusion", eq. 3).

    ∇_θ L_SDS = E_{t,ε}[ w(t) (ε̃_φ(x_t; y, t) − ε) ∂x/∂θ ],   x = g(θ, c),   x_t = α_t x + σ_t ε,

with ε̃ the classifier-free-guided prediction in diffusers' convention (ω = 1: no guidance), or the Perp-Neg
combination when ``views.perp_neg`` is on. Debiased SDS (Hong et al. 2023) score clipping is ``grad_clip``
(a scheduled threshold applied element-wise after w(t), e.g. ``[[0, 2], [1000, 8]]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig
from dreamcore.registry import register
from dreamcore import rng


@register("guidance", "sds")
class SDSGuidance(Guidance):
    Config = GuidanceConfig
    loss_name = "sds"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps, _ = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **self.prior_kwargs(render, cameras))
        return common.broadcast(self.weights(prior, t), x) * (eps - noise)
