"""Asynchronous Score Distillation (Ma et al. 2024, "ScaleDreamer: Scalable Text-to-3D Synthesis with
Asynchronous Score Distillation", ECCV 2024).

SDS compares the guided prediction with the injected noise; ASD compares it with the *conditional* prediction at
a shifted, noisier timestep on the same noise, which removes most of SDS's noise term:

    t ~ U{t_min(k) … t_max(k)},   Δ = clamp(r·(t − t_min(k)), 0, T − 1 − t) · u,  u ~ U[0, 1) (``plus_random``)
    t⁺ = clamp(t + ⌊Δ⌋, 1, T − 1)
    g  = w(t) [ ε̃_ω(α_t x + σ_t ε; y, t) − ε(α_{t⁺} x + σ_{t⁺} ε; y, t⁺) ],   w = 1 − ᾱ_t,

one ε shared by both branches; ε̃_ω is CFG in diffusers' ω (or Perp-Neg when ``views.perp_neg`` is on, with the
negative weights scaled by ``perp_neg_scale``); the second branch is conditional only (no CFG) on the same
view-dependent embedding. t_min(k) is the *current* (annealed) lower bound. The paper's "earlier timestep" means
earlier in sampling order, i.e. the larger t⁺ > t. At r = 0 (t⁺ = t) the update is exactly CSD with scale ω − 1,
w(t)(ω − 1)(ε_y − ε_∅); at ω = 1 and r = 0 it is identically zero.

Defaults and sources (theEricMa/ScaleDreamer@23f433f):
* the update: ``threestudio/models/guidance/stable_diffusion_asd_guidance.py`` (also ``mvdream_asd_guidance.py``,
  which shares t across the 4 views: ``t_shared``) [code];
* ω = 7.5 (diffusers' convention in that code: no conversion), plus_ratio r = 0.1, plus_random true, weighting
  "sds" (1 − ᾱ), min_step_percent [0, 0.5, 0.02, 25000] and max_step_percent [0, 0.98, 0.5, 25000] (threestudio's
  [start_step, start, end, end_step] form, read as such by :class:`~dreamcore.schedule.Scheduled`), Perp-Neg with
  guidance_perp_neg −0.5 (weights × 0.5) and front/back thresholds 30°, lambda_asd 1, 25k steps:
  ``configs/single-prompt_benchmark/asd_sd_nerf.yaml`` [code]; the loss is the target trick ½·sum/B as here.
The paper itself (arXiv 2407.13584) was not re-read here; the "noisier second branch" reading is the code's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng


@register("guidance", "asd-async")
class AsyncScoreDistillation(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)
        weighting: common.Weighting = "sds"
        t_min: Scheduled = Scheduled(((0.0, 0.5), (25000.0, 0.02)))
        t_max: Scheduled = Scheduled(((0.0, 0.98), (25000.0, 0.5)))
        plus_ratio: Scheduled = scheduled(0.1)  # r: t⁺ − t ≤ r (t − t_min)
        plus_random: bool = True  # Δ ← Δ·u, u ~ U[0, 1)
        perp_neg_scale: float = 0.5  # −guidance_perp_neg: multiplies the views' Perp-Neg weights

    loss_name = "asd_async"

    def shifted_t(self, t: Tensor, step: int, prior, generator: torch.Generator) -> Tensor:
        """t⁺ ≥ t [B] (long): the noisier timestep of the second branch."""
        c = self.cfg
        num = prior.schedule.num_steps
        lo, _ = common.timestep_bounds(c.t_min(step), c.t_max(step), num)
        delta = common.plus_ratio_delta(t, lo, num, c.plus_ratio(step))
        if c.plus_random:
            delta = delta * rng.uniform(t.shape, generator, device=t.device).to(torch.float64)
        return (t + delta.floor().long()).clamp(1, num - 1)

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        t_plus = self.shifted_t(t, step, prior, generator)
        if views.negatives and c.perp_neg_scale != 1.0:
            views = replace(views, negatives=[(e, w * c.perp_neg_scale) for e, w in views.negatives])
        x_t = prior.schedule.add_noise(x, noise, t)
        eps, _ = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **kw)
        x_plus = prior.schedule.add_noise(x, noise, t_plus)
        (eps_plus,) = common.predict_rows(prior, x_plus, t_plus, [views.cond], **kw)
        return common.broadcast(self.weights(prior, t), x) * (eps - eps_plus)
