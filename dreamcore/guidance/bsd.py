"""Balanced Score Distillation (Huang et al. 2024, "PlacidDreamer: Advancing Harmony in Text-to-3D Generation",
ACM MM 2024).

SDS's classifier term and its smoothing (generative) term are treated as two objectives, combined by the
multiple-gradient-descent (MGDA) min-norm convex combination instead of a fixed CFG weight:

    c = λ (ε_y − ε_∅),   d = ε_∅                                   (``variant: standard``; d has no −ε)
    c = ε_y − ε_∅,       d = 1.25 (ε_∅ − ε)                         (``variant: auto``, auto_BSD)
    α* = clip(⟨d − c, d⟩ / ‖d − c‖², 0, 1),   b = α* c + (1 − α*) d   (the min-norm point of the segment [c, d])
    g  = w(t) b,   w = α_t = √ᾱ_t  (standard),   w = ‖ε_∅ − ε‖ σ_t / 50  (auto),

all predictions at x_t = α_t x + σ_t ε with offset noise ε = N(0, I) + 0.1·N(0, 1) per channel. The inner products
are per sample over the flattened latent (``per_sample``; the 2D toy uses one global product over the batch).
ε_∅ is the negative prompt's prediction (the usual unconditional branch). ``guidance_scale`` is not used: BSD
has no CFG weight. Perp-Neg is not used inside BSD (the views' negatives are ignored).

Defaults and sources (HansenHuang0823/PlacidDreamer@9e5f1f5):
* the update, both variants: ``guidance/sd_utils.py::train_step_BSD`` and ``::train_step_BSD_auto`` [code];
* λ = 15 (``classifier_scale``): **hard-coded** in train_step_BSD. The CLI flag ``--lambda_`` (default 18, README:
  "classifier : smoothing = λ : 1") is passed as ``guidance_ratio`` but never used; the field defaults to the
  code's 15, not the README's 18 [code];
* t ∈ [0.02, 0.5] after a warm-up from 0.98 over the first 1500 iterations (t_max 0.98 → 0.5), offset noise 0.1,
  lambda_guidance (loss weight) 0.1 in the shipped configs (argument default 1.0): ``arguments/__init__.py``,
  ``configs/cactus.yaml``, ``train.py`` [code];
* the 2D toy (``Balanced_Score_Distillation/exp_2d.py``): c = ε_y − ε_∅, d = 0.018 ε_∅ (``classifier_scale: 1``,
  ``smoothing_scale: 0.018``), one global product (``per_sample: false``) [code].
Not taken from the paper: its text was not re-read; everything above is the code's behaviour as recorded in the
project's reference notes (guidance-wave2.md §3).
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


def min_norm_coefficient(c: Tensor, d: Tensor, per_sample: bool = True) -> Tensor:
    """α* ∈ [0, 1] minimizing ‖α c + (1 − α) d‖: clip(⟨d − c, d⟩ / ‖d − c‖², 0, 1), [B] (or one value, expanded to
    [B], when ``per_sample`` is false). c = d gives α* = 0 (b = d = c either way)."""
    diff = d - c
    dims = tuple(range(1, c.dim())) if per_sample else tuple(range(c.dim()))
    num = (diff * d).sum(dims)
    den = (diff * diff).sum(dims)
    alpha = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
    alpha = alpha.clamp(0.0, 1.0)
    return alpha if per_sample else alpha.expand(c.shape[0])


def min_norm_combination(c: Tensor, d: Tensor, per_sample: bool = True) -> tuple[Tensor, Tensor]:
    """b = α* c + (1 − α*) d and α* (see :func:`min_norm_coefficient`)."""
    alpha = min_norm_coefficient(c, d, per_sample)
    a = common.broadcast(alpha, c)
    return a * c + (1 - a) * d, alpha


@register("guidance", "bsd")
class BSDGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        variant: Literal["standard", "auto"] = "standard"
        classifier_scale: float = 15.0  # λ: the code's hard-coded value (README's --lambda_ 18 is unused)
        smoothing_scale: float = 1.0  # the factor on d = ε_∅ (2D toy: 0.018); auto_BSD's 1.25 is fixed
        per_sample: bool = True  # per-sample inner products (3D code); false: one over the batch (2D toy)
        offset_noise: float = 0.1
        t_min: Scheduled = scheduled(0.02)
        t_max: Scheduled = Scheduled(((0.0, 0.98), (1500.0, 0.5)))

    loss_name = "bsd"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        b = x.shape[0]
        t = self.sample_t(b, step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        if c.offset_noise > 0:
            noise = noise + c.offset_noise * rng.normal((b, x.shape[1]) + (1,) * (x.dim() - 2), generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps_c, eps_u = common.predict_rows(prior, x_t, t, [views.cond, views.uncond], **kw)
        alpha_t, sigma_t = prior.schedule.alpha_sigma(t)
        if c.variant == "standard":
            cls, smooth = c.classifier_scale * (eps_c - eps_u), c.smoothing_scale * eps_u
            w = alpha_t
        else:
            resid = eps_u - noise
            cls, smooth = eps_c - eps_u, 1.25 * resid
            w = resid.flatten(1).norm(dim=1) * sigma_t.to(resid) / 50.0
        direction, self.last_alpha = min_norm_combination(cls, smooth, c.per_sample)
        return common.broadcast(w, x) * direction
