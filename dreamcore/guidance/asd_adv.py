"""Adversarial Score Distillation (Wei et al., "Adversarial Score Distillation: When score distillation meets
GAN", CVPR 2024) — the WGAN view of score distillation: VSD's LoRA score model becomes an optimizable
discriminator. Registered as ``asd-adv`` (not to be confused with ScaleDreamer's *asynchronous* SD).

Generator update (same shape as VSD, :mod:`dreamcore.guidance.vsd`):

    g = w(t) [ ε̃_pre(x_t; y, t) − ε̃_φ(x_t; y, t, c) ],   ε̃_φ = ε_φ(∅_c) + ω_L (ε_φ(c) − ε_φ(∅_c)),  ω_L = 1,

ε̃_pre the frozen prior with CFG ω (diffusers' convention) and the view-dependent prompt (Perp-Neg when the
views carry negatives); ε_φ the LoRA/score model (view-independent prompt, camera embedding, ∅_c = zero camera).

Discriminator (score-model) update, on the detached render x, τ ~ U[0, T), ε′ ~ N(0, I), x_τ = α_τ x + σ_τ ε′:

    L_φ = ‖ε_φ(x_τ; y, τ, c̃) − ε′‖² + γ ‖ε_φ(x_τ; y, τ, c̃) − sg(ε_pre,c(x_τ; y, τ))‖²      (means over elements)

with ε_pre,c the frozen prior's *conditional* prediction (view-dependent prompt, no CFG; with Perp-Neg, the
official code's CFG-free combination ε_pos + Σ_i w_i perp(ε_neg,i, ε_pos), which does not subtract ε_∅).
For a v-prediction score model both targets are velocities with the *clean* x, α_τ ε − σ_τ x (as the official
code's ``scheduler.get_velocity(latents, noise_pred_text, t)``). L_φ has curvature 1 + γ, so γ > −1 is required;
its pointwise minimiser is ε_φ* = (ε_q + γ ε_pre,c)/(1 + γ) = 4 ε_q − 3 ε_pre,c at γ = −0.75 (ε_q the exact
denoiser of the renders), hence g = VSD + 3 w (ε_pre,c − ε_q) at the optimum; γ = 0 is VSD exactly (same draws,
same state — tested).

Defaults and sources — official code 2y7c3/ASD@9bf3daa (as recorded in shared/reference/guidance-wave2.md §11;
``threestudio/models/guidance/stable_diffusion_asd_guidance.py::{compute_grad_asd, compute_grad_asd_perpneg,
train_lora, forward}`` also read at snapshot 835c460):

* γ = −0.75, LoRA lr 1e-4, LoRA τ ~ U[0, 1000), camera dropout 0.1, ω_L = 1 (``guidance_scale_lora``) [code];
* ω = 7.5 in diffusers' convention (the code writes ε_u + ω(ε_c − ε_u)), t_min 0.02, t_max 0.98 → 0.5 at step 5000
  (configs/test_nerf.yaml), w = 1 − ᾱ_t (``weighting_strategy: sds``) for NeRF [code];
* 3DGS (configs/test_gs.yaml): t_max 0.5 fixed and ``weighting_strategy: asd`` = σ_t/α_t, which is our
  ``weighting: ism`` [code];
* injection ½‖x − sg(x − g)‖²_sum / B (``loss_asd``) — our :func:`~dreamcore.guidance.common.inject_gradient` [code].

Deviations: the discriminator is the prior's own UNet with LoRA (:class:`~dreamcore.guidance.variational.LoRAScore`,
as our VSD; the official code fine-tunes a second SD-2.1 768-v UNet) or the residual score net for priors
without a UNet; the camera is dropped per sample (the official code drops it for the whole batch with host
``random.random() < 0.1``). The paper's GAN derivation is only cited, not re-derived here [paper].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore import rng
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.vsd import VSDGuidance
from dreamcore.registry import register


def pretrained_conditional(prior, x_t: Tensor, t: Tensor, views, cameras, kw: dict) -> Tensor:
    """ε_pre,c: the frozen prior's conditional prediction without CFG (official Perp-Neg form when negatives)."""
    if not views.negatives:
        return prior.predict_epsilon(x_t, t, views.cond, cameras=cameras, pixel_index=kw["pixel_index"],
                                     image_size=kw["image_size"])
    rows = common.predict_rows(prior, x_t, t, [views.cond] + [e for e, _ in views.negatives], cameras=cameras,
                               pixel_index=kw["pixel_index"], image_size=kw["image_size"])
    e_pos = rows[0]
    total = e_pos
    for eps_neg, (_, w) in zip(rows[1:], views.negatives):
        total = total + common.broadcast(w.to(x_t.device), e_pos) * common.perpendicular(eps_neg, e_pos)
    return total


@register("guidance", "asd-adv")
class AdversarialSDGuidance(VSDGuidance):
    @dataclass
    class Config(VSDGuidance.Config):
        gamma: float = -0.75  # γ: weight of the discriminator's pull towards the frozen prior (official default)

    loss_name = "asd_adv"

    def setup(self, prior, total_steps: int) -> None:
        if not self.cfg.gamma > -1.0:
            raise DreamcoreError(f"guidance.gamma={self.cfg.gamma}: the discriminator loss has curvature 1 + γ, "
                                 "so γ must be > −1 (the official default is −0.75)")
        super().setup(prior, total_steps)

    def train_score(self, prior, x: Tensor, views, cameras, generator: torch.Generator, kw: dict) -> Tensor:
        """One discriminator update: VSD's denoising loss plus γ × the distance to the frozen conditional score.

        Same draws in the same order as :meth:`VSDGuidance.train_score` (τ, ε′, camera keep), so γ = 0 is VSD."""
        c = self.cfg
        b = x.shape[0]
        lo, hi = common.timestep_bounds(c.score_t_min, c.score_t_max, prior.schedule.num_steps)
        tau = rng.integers(lo, hi + 1, (b,), generator)
        eps = rng.normal(x.shape, generator, like=x)
        keep = rng.uniform((b,), generator) >= c.camera_dropout
        x_tau = prior.schedule.add_noise(x, eps, tau)
        pred = self.score.raw(prior, x_tau, tau, views.plain, cameras, keep, kw["pixel_index"], kw["image_size"])
        target = eps
        if c.gamma != 0.0:
            with torch.no_grad():
                pre = pretrained_conditional(prior, x_tau, tau, views, cameras, kw)
        v_pred = self.score.prediction_type == "v_prediction"
        if v_pred:
            a, s = prior.schedule.alpha_sigma(tau)
            a, s = common.broadcast(a, x), common.broadcast(s, x)
            target = a * eps - s * x
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        if c.gamma != 0.0:
            pre_target = a * pre - s * x if v_pred else pre
            loss = loss + c.gamma * torch.nn.functional.mse_loss(pred.float(), pre_target.detach().float())
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()
        return loss.detach()
