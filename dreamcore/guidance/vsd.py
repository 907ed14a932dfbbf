"""Variational Score Distillation (Wang et al. 2023, "ProlificDreamer", eq. 9) and Entropic Score Distillation
(Wang et al. 2024, "Taming Mode Collapse in Score Distillation", eq. 11).

    g = w(t) [ ε̃_pre(x_t; y, t) − ε̃_q(x_t; y, t, c) ],   w = 1 − ᾱ_t,  ε̃_pre with CFG ω = 7.5 (diffusers),
    ε̃_q = ε_q(x_t; y, ∅_c) + ω_L (ε_q(x_t; y, c) − ε_q(x_t; y, ∅_c)),

where ε_q is a score model of the current renders (:mod:`dreamcore.guidance.variational`: a LoRA of the
prior's UNet, or a residual network for priors without one), trained alongside the scene on detached renders
with its own optimizer (AdamW, lr 1e-4) and step ratio (``score_steps`` updates per scene step):

    L_q = ‖ model(α_τ sg(x) + σ_τ ε′; y, c̃, τ) − target ‖²,  τ ~ U[0, T),  target = ε′ (or v = α_τ ε′ − σ_τ x
    for v-prediction models), c̃ = ∅_c with probability ``camera_dropout``.

ω_L = 1 is VSD; ESD sets ω_L = λ ∈ (0, 1): ε_q becomes λ ε_q(c) + (1 − λ) ε_q(∅_c), which adds the entropy of the
view-marginal rendered distribution to the objective (against Janus-style mode collapse). The score model
uses the view-independent prompt; the frozen prior the view-dependent one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.guidance.variational import LoRAScore, ResidualScoreNet
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng


@register("guidance", "vsd")
class VSDGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)
        t_max: Scheduled = Scheduled(((5000.0, 0.98), (5001.0, 0.5)))
        lora_guidance_scale: Scheduled = scheduled(1.0)  # ω_L; ESD's λ
        score_model: Literal["auto", "lora", "residual"] = "auto"
        score_lr: Scheduled = scheduled(1e-4)
        score_betas: tuple[float, float] = (0.9, 0.99)
        score_weight_decay: float = 0.0
        score_steps: int = 1  # score-model updates per scene step (the step ratio)
        score_t_min: float = 0.0
        score_t_max: float = 1.0
        camera_dropout: float = 0.1
        lora_rank: int = 4
        residual_hidden: int = 64
        residual_layers: int = 3

    loss_name = "vsd"

    def __init__(self, cfg: "VSDGuidance.Config") -> None:
        super().__init__(cfg)
        self.score = None
        self._optimizer = None

    def setup(self, prior, total_steps: int) -> None:
        super().setup(prior, total_steps)
        c = self.cfg
        kind = c.score_model
        if kind == "auto":
            kind = "lora" if hasattr(prior, "unet") else "residual"
        if kind == "lora":
            if not hasattr(prior, "unet"):
                raise DreamcoreError(f"guidance.score_model=lora needs a prior with a UNet; prior "
                                     f"'{type(prior).__name__}' has none: use guidance.score_model=residual")
            self.score = LoRAScore(prior, c.lora_rank)
        else:
            self.score = ResidualScoreNet(prior.channels, c.residual_hidden, c.residual_layers)
        self._optimizer = torch.optim.AdamW(self.score.parameters(), lr=c.score_lr(0), betas=c.score_betas,
                                            weight_decay=c.score_weight_decay)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"score": self._optimizer}

    def score_epsilon(self, prior, x_t: Tensor, t: Tensor, views, cameras, step: int, kw: dict) -> Tensor:
        """ε̃_q: the camera-CFG mix of the score model's conditional and camera-unconditional predictions."""
        b = x_t.shape[0]
        lam = self.cfg.lora_guidance_scale(step)
        px = dict(pixel_index=kw["pixel_index"], image_size=kw["image_size"])
        eps_c = self.score(prior, x_t, t, views.plain, cameras, torch.ones(b, dtype=torch.bool), **px)
        if lam == 1.0:
            return eps_c
        eps_u = self.score(prior, x_t, t, views.plain, cameras, torch.zeros(b, dtype=torch.bool), **px)
        return common.classifier_free(eps_c, eps_u, lam)

    def forward(self, render, cameras, prior, views, step, generator) -> dict[str, Tensor]:
        if self.score is None:
            raise RuntimeError("VSDGuidance.setup(prior, total_steps) was not called")
        x = prior.to_model_space(render.rgb, render.pixel_index)
        kw = self.prior_kwargs(render, cameras)
        with torch.no_grad():
            t = self.sample_t(x.shape[0], step, prior, generator)
            noise = rng.normal(x.shape, generator, like=x)
            x_t = prior.schedule.add_noise(x.detach(), noise, t)
            eps_pre, _ = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **kw)
            eps_q = self.score_epsilon(prior, x_t, t, views, cameras, step, kw)
            grad = common.broadcast(self.weights(prior, t), x) * (eps_pre - eps_q)
            grad = self.extra_gradient(grad, x.detach(), cameras, prior, views, step, generator, kw)
        losses = self.finish(x, grad, step)
        for group in self._optimizer.param_groups:
            group["lr"] = self.cfg.score_lr(step)
        fits = [self.train_score(prior, x.detach(), views, cameras, generator, kw) for _ in range(self.cfg.score_steps)]
        self.last_score_loss = torch.stack(fits).mean()  # a tensor: read it when logging, not every step
        return losses

    def extra_gradient(self, grad: Tensor, x: Tensor, cameras, prior, views, step: int, generator, kw: dict) -> Tensor:
        """Terms a VSD variant adds to g before the score model's update (none here; Coupled SD's multi-view
        term). Its draws come after VSD's own, so a variant whose term is off is VSD bit for bit."""
        return grad

    def train_score(self, prior, x: Tensor, views, cameras, generator: torch.Generator, kw: dict) -> Tensor:
        """One update of the score model by denoising score matching on the detached render x."""
        c = self.cfg
        b = x.shape[0]
        lo, hi = common.timestep_bounds(c.score_t_min, c.score_t_max, prior.schedule.num_steps)
        tau = rng.integers(lo, hi + 1, (b,), generator)
        eps = rng.normal(x.shape, generator, like=x)
        keep = rng.uniform((b,), generator) >= c.camera_dropout
        x_tau = prior.schedule.add_noise(x, eps, tau)
        pred = self.score.raw(prior, x_tau, tau, views.plain, cameras, keep, kw["pixel_index"], kw["image_size"])
        target = eps
        if self.score.prediction_type == "v_prediction":
            a, s = prior.schedule.alpha_sigma(tau)
            target = common.broadcast(a, x) * eps - common.broadcast(s, x) * x
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()
        return loss.detach()


@register("guidance", "esd")
class ESDGuidance(VSDGuidance):
    @dataclass
    class Config(VSDGuidance.Config):
        lora_guidance_scale: Scheduled = scheduled(0.5)  # λ: 1 = VSD, < 1 adds view-marginal entropy

    loss_name = "esd"

    def setup(self, prior, total_steps: int) -> None:
        if self.cfg.camera_dropout <= 0:
            raise DreamcoreError("guidance esd mixes in the camera-unconditional score: it needs "
                                 "guidance.camera_dropout > 0 so that branch is trained")
        super().setup(prior, total_steps)
