"""Score Distillation via reparametrized DDIM (Lukoianov et al. 2024, "SDI", Alg. 1).

SDS is a DDIM step whose noise is resampled every iteration; SDI infers it instead by inverting the render
along a coarse DDIM grid, so that x_t lies on the trajectory of x:

    x_{t'} = DDIM-invert(x → t'), CFG ω_inv (−6.5) and stochasticity η_inv (0.3) along a grid of ``inversion_steps``
             strides, t' = min(t + δ, T − 1), δ ~ U{0 … T/inversion_steps − 1} (jitter within one stride);
    x̂_0   = (x_{t'} − σ_t ε̃(x_{t'}; y, t)) / α_t  with ε̃ in diffusers' convention (ω = 8.5);
    g      = x − x̂_0  (≡ (σ_t/α_t)(ε̃ − ε̃_inv): SDS with w = σ/α and inferred noise).

Like threestudio, the denoiser is fed t while the latent sits at t' (``feed_jittered_t: true`` feeds t').
t is annealed deterministically: t(k) = T[0.25 + (0.98 − 0.25)(1 − k/K)] (``t_schedule: linear``).
threestudio reduces the loss by the mean (÷ numel); here g is injected like every method (÷ B only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.guidance.timesteps import ScheduleKind
from dreamcore.guidance.views import ViewConditions
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore.rng import host_random


@register("guidance", "sdi")
class SDIGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(8.5)
        inversion_guidance_scale: Scheduled = scheduled(-6.5)  # ω_inv (diffusers convention)
        inversion_steps: int = 10
        inversion_eta: float = 0.3
        t_min: Scheduled = scheduled(0.25)
        t_schedule: ScheduleKind = "linear"
        t_shared: bool = True
        jitter: bool = True
        feed_jittered_t: bool = False

    loss_name = "sdi"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        num = prior.schedule.num_steps
        t = self.sample_t(x.shape[0], step, prior, generator)
        stride = max(num // c.inversion_steps, 1)
        delta = int(host_random(generator) * stride) if c.jitter else 0
        t_end = (t + delta).clamp_max(num - 1)
        x_end = self.invert(x, t_end, stride, views, prior, step, generator, kw)
        t_feed = t_end if c.feed_jittered_t else t
        eps, _ = common.guided_epsilon(prior, x_end, t_feed, views, self.omega(step), **kw)
        return x - common.predicted_x0(prior.schedule, x_end, eps, t_feed)

    def invert(self, x: Tensor, t_end: Tensor, stride: int, views: ViewConditions, prior, step: int,
               generator: torch.Generator, kw: dict) -> Tensor:
        """DDIM inversion of x along −1 (clean), 1, 1 + stride, … (< t_end), t_end; one t for the batch."""
        target = int(t_end[0])
        grid = [-1] + [k for k in range(1, target, stride)] + [target]
        omega_inv = self.cfg.inversion_guidance_scale(step)
        shared = ViewConditions(views.cond, views.uncond, views.plain, views.null, views.label_index)  # no Perp-Neg
        cur = x
        b = x.shape[0]
        for a, nxt in zip(grid[:-1], grid[1:]):
            ta = torch.full((b,), max(a, 0), dtype=torch.long)
            eps, _ = common.guided_epsilon(prior, cur, ta, shared, omega_inv, **kw)
            cur = common.ddim_step(prior.schedule, cur, eps, torch.full((b,), a, dtype=torch.long),
                                   torch.full((b,), nxt, dtype=torch.long), self.cfg.inversion_eta, generator)
        return cur
