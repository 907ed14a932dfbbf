"""Guided Consistency Sampling (Li et al. 2024, "Connecting Consistency Distillation to Score Distillation for
Text-to-3D Generation", ECCV 2024).

Three timesteps t_e < t_s < t_t on the T-step grid, a fixed noise ε, and one-step DDIM (= first-order DPM-Solver)
maps Φ_{a→b}[ε̂](z) = α_b x̂₀ + σ_b ε̂(z, a), x̂₀ = (z − σ_a ε̂(z, a))/α_a. "null" is the empty prompt's prediction
(``views.null``), "perp" the guided one (CFG in diffusers' ω with the negative prompt as ε_∅, or Perp-Neg when
``views.perp_neg`` is on):

    x_e = α_e x + σ_e ε,   x_s = Φ_{e→s}[null](x_e),   x_t = Φ_{s→t}[null](x_s)     (deterministic inversion)
    ε_t = perp(x_t, t_t),  x_{s|t} = Φ_{t→s}[ε_t](x_t)
    L_cc = ‖Φ_{t→e}[null](x_t) − sg(Φ_{s→e}[null](x_{s|t}))‖²                        (consistency, w_cc 1)
    L_gc = ‖sg(x̂₀(Φ_{t→e}[ε_t](x_t); perp at t_e)) − x̂₀(x_e; null at t_e)‖²           (generation, w_gc 0.5)
    L_cp = ‖I − sg(I + r (D(x̂₀_perp) − D(x̂₀_null)))‖²    in pixel space (the render I; D the decoder; w_cp 0.5)

each a sum over elements / B with **no ½** (the official MSE(sum)/B), total λ_g Σ w·L (λ_g is ``weight``). All
predictions are taken without gradient, so x enters only through the solvers' linear coefficients:
∂L_cc/∂x = 2 w_cc α_e (A − B) and ∂L_gc/∂x = 2 w_gc (x̂₀_null − x̂₀_perp), computed in closed form here and checked
against autograd of the losses as written in the tests; ∂L_cp/∂I = −2 w_cp r (D(x̂₀_perp) − D(x̂₀_null)).
D is ``Prior.to_image``: the VAE decoder for latent priors, the inverse of the (per-pixel affine) ``to_model_space``
for pixel-space priors and latent-mode fields.

Timesteps (per step k, r = 1 − min(k/K_w, 1), K_w = 1500): Δ = 80 + ⌈20 r⌉; i_t ~ U[T(t_min + (t_max' − t_max) r),
T(t_max + (t_max' − t_max) r)) with t_min 0.02, t_max 0.5, t_max' 0.98, so U[20 + 480r, 500 + 480r); i_t ≥ Δ + 1;
i_s = i_t − Δ; i_e ~ U[max(i_t − 2Δ, 0), max(i_t − Δ − 10, 1)). One draw for the batch (``t_shared``, LucidDreamer's
practice, on which the code is built). The noise is fixed for the run (offset noise 0.1 per channel, one row per
batch position), a checkpointed buffer (:class:`~dreamcore.guidance.cds.FixedNoise`).

Defaults and sources (LMozart/ECCV2024-GCS-BEG@a3bd9ae): the update ``guidance/gcs_utils.py::{train_step_perpneg,
train_step, ode_inverse, add_noise_with_cfg}``, the solver ``guidance/solver.py``; ω = 7.5 (diffusers),
w_cc 1, w_gc 0.5, w_cp 0.5, rgb_scale 1, lambda_guidance 0.1, fix_noise true, warm-up 1500, t_range [0.02, 0.5],
max 0.98: ``configs/full_model/*.yaml``, ``arguments/__init__.py`` [code]. Brightness-Equalized Generation lives
in the Gaussians (``representation.brightness_equalize``, ``train.py``). The closed forms in the tests are derived
(guidance-wave2.md §10); the paper's text was not re-read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.guidance.cds import FixedNoise
from dreamcore.registry import register
from dreamcore.schedule import Scheduled, step_count
from dreamcore import rng


@register("guidance", "gcs")
class GCSGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)
        t_min: Scheduled = scheduled(0.02)
        t_max: Scheduled = scheduled(0.5)
        t_max_warmup: float = 0.98  # the upper end of the range at step 0 (both ends shift by the same amount)
        warmup_steps: int = step_count(1500)
        t_shared: bool = True
        delta_base: int = 80  # Δ = delta_base + ⌈delta_warmup · r⌉
        delta_warmup: int = 20
        e_margin: int = 10  # i_e < i_t − Δ − e_margin
        w_cc: Scheduled = scheduled(1.0)
        w_gc: Scheduled = scheduled(0.5)
        w_cp: Scheduled = scheduled(0.5)
        rgb_scale: float = 1.0
        fix_noise: bool = True
        offset_noise: float = 0.1
        weight: Scheduled = scheduled(0.1)  # lambda_guidance

    loss_name = "gcs"

    def __init__(self, cfg: "GCSGuidance.Config") -> None:
        super().__init__(cfg)
        self.noise = FixedNoise(shared=False, offset=cfg.offset_noise)

    def triple_timesteps(self, batch: int, step: int, prior, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(i_e, i_s, i_t) [B] long with i_e < i_s < i_t."""
        c = self.cfg
        num = prior.schedule.num_steps
        r = 1.0 - min(step / c.warmup_steps, 1.0) if c.warmup_steps > 0 else 0.0
        delta = c.delta_base + math.ceil(c.delta_warmup * r)
        shift = (c.t_max_warmup - c.t_max(step)) * r
        lo = int(num * (c.t_min(step) + shift))
        hi = max(int(num * (c.t_max(step) + shift)), lo + 1)
        lo, hi = min(max(lo, delta + 1), num - 1), min(max(hi, delta + 2), num)
        n = 1 if c.t_shared else batch
        i_t = rng.integers(lo, max(hi, lo + 1), (n,), generator)
        i_s = i_t - delta
        e_lo = (i_t - 2 * delta).clamp_min(0)
        e_hi = torch.maximum(i_t - delta - c.e_margin, torch.ones_like(i_t))
        u = rng.uniform((n,), generator, device=i_t.device).to(torch.float64)
        i_e = torch.minimum(e_lo + (u * (e_hi - e_lo).to(torch.float64)).floor().long(), e_hi - 1)
        i_e = torch.minimum(i_e, i_s - 1).clamp_min(0)
        if c.t_shared:
            return tuple(v.expand(batch).clone() for v in (i_e, i_s, i_t))
        return i_e, i_s, i_t

    def directions(self, x: Tensor, render, cameras, prior, views, step, generator) -> dict[str, Tensor]:
        """The three gradients: ``cc`` and ``gc`` w.r.t. x (model space), ``cp`` w.r.t. the render's colours,
        unweighted by w_* and λ but with the official factor 2 (no ½ in the losses)."""
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        sched = prior.schedule
        omega = self.omega(step)
        b = x.shape[0]
        t_e, t_s, t_t = self.triple_timesteps(b, step, prior, generator)
        self.last_timesteps = (t_e, t_s, t_t)
        if c.fix_noise:
            noise = self.noise(x, generator, render.pixel_index, render.image_size)
        else:
            noise = rng.normal(x.shape, generator, like=x)
            if c.offset_noise > 0:
                noise = noise + c.offset_noise * rng.normal((b, x.shape[1]) + (1,) * (x.dim() - 2), generator, like=x)

        def null(z, t):
            return common.predict_rows(prior, z, t, [views.null], **kw)[0]

        def x0(z, eps, t):
            return common.predicted_x0(sched, z, eps, t)

        x_e = sched.add_noise(x, noise, t_e)
        n_e = null(x_e, t_e)
        x_s = common.ddim_step(sched, x_e, n_e, t_e, t_s)
        x_t = common.ddim_step(sched, x_s, null(x_s, t_s), t_s, t_t)
        eps_t, _ = common.guided_epsilon(prior, x_t, t_t, views, omega, **kw)
        n_t = null(x_t, t_t)
        x_st = common.ddim_step(sched, x_t, eps_t, t_t, t_s)
        a_cc = common.ddim_step(sched, x_t, n_t, t_t, t_e)
        b_cc = common.ddim_step(sched, x_st, null(x_st, t_s), t_s, t_e)
        z_e = common.ddim_step(sched, x_t, eps_t, t_t, t_e)
        p_e, _ = common.guided_epsilon(prior, z_e, t_e, views, omega, **kw)
        x0_perp, x0_null = x0(z_e, p_e, t_e), x0(x_e, n_e, t_e)
        alpha_e, _ = sched.alpha_sigma(t_e)
        out = {"cc": 2.0 * common.broadcast(alpha_e, x) * (a_cc - b_cc), "gc": 2.0 * (x0_null - x0_perp)}
        if c.w_cp(step) != 0:
            seen = (render.rgb, render.pixel_index)
            diff = prior.to_image(x0_perp, *seen) - prior.to_image(x0_null, *seen)
            out["cp"] = -2.0 * c.rgb_scale * diff
        return out

    def forward(self, render, cameras, prior, views, step, generator) -> dict[str, Tensor]:
        c = self.cfg
        x = prior.to_model_space(render.rgb, render.pixel_index)
        with torch.no_grad():
            d = self.directions(x.detach(), render, cameras, prior, views, step, generator)
            grad = c.w_cc(step) * d["cc"] + c.w_gc(step) * d["gc"]
        losses = self.finish(x, grad, step)
        if "cp" in d:
            g_cp = torch.nan_to_num(c.w_cp(step) * d["cp"], nan=0.0, posinf=0.0, neginf=0.0)
            clip = c.grad_clip(step)
            if clip > 0:
                g_cp = g_cp.clamp(-clip, clip)
            losses["gcs_cp"] = c.weight(step) * common.inject_gradient(render.rgb, g_cp)
        return losses

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        """The model-space part w_cc ∂L_cc/∂x + w_gc ∂L_gc/∂x (L_cp acts on the render: see :meth:`forward`)."""
        c = self.cfg
        d = self.directions(x, render, cameras, prior, views, step, generator)
        return c.w_cc(step) * d["cc"] + c.w_gc(step) * d["gc"]
