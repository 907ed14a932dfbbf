"""Score Jacobian Chaining (Wang et al. 2023, "SJC", §3–4).

SJC reads the prior as a variance-exploding denoiser: with σ̃_t = σ_t/α_t, z = x + σ̃_t ε is fed to the network
as z/√(1 + σ̃_t²) = α_t x + σ_t ε (= the VP x_t), and D(z) = z − σ̃_t ε̃. The update is the score's negation,

    var_red (default):  g = −(D − x)/σ̃_t = ε̃ − ε        (SJC's variance-reduced form = SDS with w = 1)
    otherwise:          g = −(D − z)/σ̃_t = ε̃             (the raw score direction)

Defaults follow threestudio's sjc.yaml: threestudio scale 100 (ω = 101), t ∈ [0.01, 0.97].
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


@register("guidance", "sjc")
class SJCGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(101.0)
        t_min: Scheduled = scheduled(0.01)
        t_max: Scheduled = scheduled(0.97)
        var_red: bool = True

    loss_name = "sjc"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        a, s = prior.schedule.alpha_sigma(t)
        sig = common.broadcast(s / a, x)  # σ̃_t
        z = x + sig * noise
        x_t = z / (1.0 + sig**2).sqrt()
        eps, _ = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **self.prior_kwargs(render, cameras))
        denoised = z - sig * eps
        return -(denoised - (x if self.cfg.var_red else z)) / sig
