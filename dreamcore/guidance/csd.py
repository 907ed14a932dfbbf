"""Classifier Score Distillation (Yu et al. 2024, "Text-to-3D with Classifier Score Distillation", eq. 7).

Keep only the implicit classifier's direction of SDS and drop its generative part and the sampled noise:

    g = w(t) [ a_c ε(x_t; y) + a_u ε(x_t; y_neg) + a_n ε(x_t; ∅_null) + a_ε ε ]  (+ a_p Σ_i w_i perp(e_i, e⁺))

(the official code's free linear combination; a_* may be scheduled). SDS is (ω, 1 − ω, 0, −1); the pure
classifier score against the negative prompt is (1, −1, 0, 0). Negative-prompt annealing (csd-if.yaml):
a_u 0 → −1 and a_n −1 → 0 over steps 0–5000, i.e. from ε_y − ε_∅ to ε_y − ε_neg. ``normalize`` divides g by its
global L2 norm (the IF recipe). "null" is the empty prompt, "uncond" the negative prompt.
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


@register("guidance", "csd")
class CSDGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        weighting: common.Weighting = "uniform"
        t_max: Scheduled = scheduled(0.98)
        coef_cond: Scheduled = scheduled(1.0)  # a_c
        coef_negative: Scheduled = scheduled(0.0)  # a_u (on the negative prompt's prediction)
        coef_null: Scheduled = scheduled(-1.0)  # a_n (on the empty prompt's prediction)
        coef_noise: Scheduled = scheduled(0.0)  # a_ε
        coef_perp_neg: Scheduled = scheduled(3.0)  # a_p, used when views.perp_neg is on
        normalize: bool = False

    loss_name = "csd"

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        rows = [views.cond, views.uncond, views.null] + [e for e, _ in views.negatives]
        eps = common.predict_rows(prior, x_t, t, rows, **self.prior_kwargs(render, cameras))
        g = c.coef_cond(step) * eps[0] + c.coef_negative(step) * eps[1] + c.coef_null(step) * eps[2]
        g = g + c.coef_noise(step) * noise
        if views.negatives:
            e_pos = eps[0] - eps[2]
            for eps_neg, (_, w) in zip(eps[3:], views.negatives):
                g = g + c.coef_perp_neg(step) * common.broadcast(w, g) * common.perpendicular(eps_neg - eps[2], e_pos)
        g = common.broadcast(self.weights(prior, t), x) * g
        if c.normalize:
            g = g / (g.norm() + 1e-8)
        return g
