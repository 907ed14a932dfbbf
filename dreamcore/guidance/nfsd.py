"""Noise-Free Score Distillation (Katzir et al. 2024, "NFSD", eq. 9–10).

Split the CFG prediction ε̃ = ε_∅ + ω δ_C (δ_C = ε_y − ε_∅) and replace SDS's ε_∅ − ε by an estimate of the
domain term δ_D alone, without the sampled noise:

    δ_D = ε(x_t; ∅)                       for t < t_split (200)
    δ_D = ε(x_t; ∅) − ε(x_t; y_neg)       otherwise
    g = w(t) (δ_D + ω δ_C),  ω = 7.5,

∅ is the empty prompt and y_neg the negative prompt ("unrealistic, blurry, low quality, …" in the paper).
The branch is chosen per view with its own t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng


@register("guidance", "nfsd")
class NFSDGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)
        t_split: int = 200

    loss_name = "nfsd"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps_y, eps_null, eps_neg = common.predict_rows(prior, x_t, t, [views.cond, views.null, views.uncond],
                                                       **self.prior_kwargs(render, cameras))
        late = common.broadcast((t >= self.cfg.t_split).float(), x)
        delta_d = eps_null - late * eps_neg
        delta_c = eps_y - eps_null
        return common.broadcast(self.weights(prior, t), x) * (delta_d + self.omega(step) * delta_c)
