"""Interval Score Matching (Liang et al. 2024, "LucidDreamer", eq. 14–17).

Replace SDS's random x_t and ε by two points of one deterministic DDIM-inversion trajectory of the render:

    x_s = DDIM-invert(x → s) with ε(·; ∅_inv)              (n_S steps of stride δ_S, η = 0)
    x_t = one inversion step x_s → t = s + δ_T with ε(x_s; ∅_inv, s)
    g   = w(t) [ ε̃(x_t; y, t) − ε(x_s; ∅_inv, s) ],   w(t) = σ_t/α_t,

ε̃ in diffusers' convention with the *negative* prompt as the unconditional branch (ω = 7.5); ∅_inv is the
empty prompt. The inversion starts from x forward-noised to max(s − n_S δ_S, 0) with offset noise
(ε + 0.1·ε_channel). ``x_s_from: forward`` forward-noises straight to s instead (TSM, DreamerXL's variant:
one inversion step, SDS-like variance at s). Defaults follow LucidDreamer's shipped configs: t ∈ [0.02, 0.5]
after a warm-up from 0.98 (schedule t_max), δ_T 100 → 50, δ_S 200, n_S 5, loss weight 0.1. LucidDreamer injects
g without the 1/B of the other methods; here every method divides by B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng


@register("guidance", "ism")
class ISMGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)
        weighting: common.Weighting = "ism"
        t_max: Scheduled = Scheduled(((0.0, 0.98), (1500.0, 0.5)))
        t_shared: bool = True
        delta_t: Scheduled = Scheduled(((0.0, 100.0), (1500.0, 50.0)))  # δ_T
        xs_delta_t: int = 200  # δ_S
        xs_inv_steps: int = 5  # n_S
        offset_noise: float = 0.1
        x_s_from: Literal["inversion", "forward"] = "inversion"
        weight: Scheduled = scheduled(0.1)

    loss_name = "ism"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        b = x.shape[0]
        t = self.sample_t(b, step, prior, generator)
        s = (t - int(round(c.delta_t(step)))).clamp_min(0)
        noise = rng.normal(x.shape, generator, like=x)
        if c.offset_noise > 0:
            noise = noise + c.offset_noise * torch.randn((b, x.shape[1]) + (1,) * (x.dim() - 2),
                                                         generator=generator).to(x)
        x_s, eps_s = self.invert_to(x, s, noise, views, prior, kw)
        x_t = common.ddim_step(prior.schedule, x_s, eps_s, s, t)
        eps, _ = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **kw)
        return common.broadcast(self.weights(prior, t), x) * (eps - eps_s)

    def invert_to(self, x: Tensor, s: Tensor, noise: Tensor, views, prior, kw: dict) -> tuple[Tensor, Tensor]:
        """x_s and ε(x_s; ∅_inv, s): DDIM inversion from x, or forward noising when ``x_s_from: forward``."""
        c = self.cfg
        if c.x_s_from == "forward":
            x_s = prior.schedule.add_noise(x, noise, s)
            return x_s, common.predict_rows(prior, x_s, s, [views.null], **kw)[0]
        cur = (s - c.xs_delta_t * c.xs_inv_steps).clamp_min(0)
        x_cur = prior.schedule.add_noise(x, noise, cur)
        for _ in range(c.xs_inv_steps):
            eps = common.predict_rows(prior, x_cur, cur, [views.null], **kw)[0]
            nxt = torch.minimum(cur + c.xs_delta_t, s)
            x_cur = torch.where(common.broadcast(nxt > cur, x_cur).bool(),
                                common.ddim_step(prior.schedule, x_cur, eps, cur, nxt), x_cur)
            cur = nxt
        return x_cur, common.predict_rows(prior, x_cur, s, [views.null], **kw)[0]
