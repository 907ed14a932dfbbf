"""Score Distillation Sampling (Poole et al. 2022, "DreamFusion", eq. 3).

∇_θ L_SDS = E_{t,ε}[ w(t) (ε̃_φ(x_t; y, t) − ε) ∂x/∂θ ],   x = g(θ, c),   x_t = α_t x + σ_t ε,
with ε̃ the classifier-free-guided prediction in diffusers' convention (ω = 1: no guidance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.config import ComponentConfig
from dreamcore.guidance import common
from dreamcore.priors.base import PromptEmbeddings, Prior
from dreamcore.registry import register
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled


@register("guidance", "sds")
class SDSGuidance:
    @dataclass
    class Config(ComponentConfig):
        guidance_scale: Scheduled = field(default_factory=lambda: Scheduled.constant(100.0))  # ω, diffusers
        weighting: common.Weighting = "sds"
        t_min: Scheduled = field(default_factory=lambda: Scheduled.constant(0.02))
        t_max: Scheduled = field(default_factory=lambda: Scheduled.constant(0.98))
        grad_clip: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))  # 0 = off
        weight: Scheduled = field(default_factory=lambda: Scheduled.constant(1.0))

    def __init__(self, cfg: "SDSGuidance.Config") -> None:
        self.cfg = cfg

    def parameter_groups(self) -> list[dict]:
        return []

    def __call__(self, render: RenderOutput, cameras: Cameras, prior: Prior, embeddings: PromptEmbeddings,
                 step: int, generator: torch.Generator, view_labels: Optional[list[str]] = None) -> dict[str, Tensor]:
        c = self.cfg
        x = prior.to_model_space(render)
        b = x.shape[0]
        t = common.sample_timesteps(b, c.t_min(step), c.t_max(step), prior.schedule.num_steps, generator)
        noise = torch.randn(x.shape, generator=generator).to(x)
        kw = dict(cameras=cameras, pixel_index=render.pixel_index, image_size=render.image_size)
        with torch.no_grad():
            x_t = prior.schedule.add_noise(x.detach(), noise, t)
            eps = prior.predict_epsilon(x_t, t, embeddings.for_views(view_labels, b), **kw)
            omega = c.guidance_scale(step)
            if omega != 1.0:
                eps_u = prior.predict_epsilon(x_t, t, embeddings.uncond_batch(b), **kw)
                eps = common.classifier_free(eps, eps_u, omega)
            a, s = prior.schedule.alpha_sigma(t)
            grad = common.broadcast(common.weighting(c.weighting, a, s), x) * (eps - noise)
            clip = c.grad_clip(step)
            if clip > 0:
                grad = grad.clamp(-clip, clip)
        return {"sds": c.weight(step) * common.inject_gradient(x, grad)}
