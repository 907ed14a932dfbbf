"""RewardSDS / RewardVSD (Chachy et al. 2025, "RewardSDS: Aligning Score Distillation via Reward-Weighted
Sampling"): draw N noises at one shared t, score each by a reward of its denoised image, and weight the N
per-noise score-distillation gradients by the reward ranking.

    g_i = w(t) (ε̃(x_t^i; y, t) − b_i),   x_t^i = α_t x + σ_t ε_i,   i = 1 … N,
    b_i = ε_i (RewardSDS, ``reward.base: sds``)  or  ε̃_q(x_t^i; y, t, c) (RewardVSD, ``reward.base: vsd``: the
          camera-conditioned score model of :mod:`dreamcore.guidance.vsd`, trained as there),
    r_i = R(x̂_0^i),  x̂_0^i = DDIM_{K steps, CFG ω_R}(x_t^i) → clean (K = ``ddim_steps``; K = 0: one-step x̂_0),
    min-max (default):  g = λ_max · mean_{top n_max r} g_i − λ_min · mean_{bottom n_min r} g_i,
    best:               g = mean_{top n_best r} g_i,
    weighted:           g = Σ_i softmax(r / τ)_i g_i,
    none:               plain SDS/VSD with one noise.

ε̃ is classifier-free guidance in diffusers' convention (ω; Perp-Neg when the views carry negatives), w = 1 − ᾱ_t.
Rewards are applied during the first ``duration`` fraction of the run; afterwards the method is plain single-noise
SDS/VSD (the official 3D code's ``reward_duration``). The reward is a registered ``reward``
(:mod:`dreamcore.guidance.rewards`: ``reference``, ``linear``, ``constant``, ``clip``).

Sources [guidance-wave2.md §4, read in itaychachy/RewardSDS@eadddef]:
* the update, the strategies and their constants (min-max λ_max 0.9, λ_min 0.1, n_max = n_min = 2; best n_best 1;
  weighted τ 1), w = 1 − ᾱ_t, diffusers CFG, the 15-step DDIM with CFG 7.5 used to score a noise, and
  RewardVSD's ε̃_LoRA baseline: official code, 2D_experiments/{guidance.py, reward_strategy.py} and
  threestudio-reward-sds/guidance/{reward_mvdream_guidance.py, reward_strategy.py};
* n_noises = 7, reward_duration 0.7, ω 50, t_min 0.98 → 0.02 and t_max 0.98 → 0.5 over 8000 steps: the official
  3D recipe threestudio-reward-sds/configs/reward-mvdream-sd21.yaml. The pitfall (§13.5): n_noises is 4 in the
  2D generate.py, 8 as the 2D GuidanceConfig class default and 7 in the README example and the 3D config; we take
  the 3D config's (and README's) 7 as the official default of a text-to-3D engine.
* Deviations: the DDIM scoring starts at x_t's own level t (the official code starts at the first grid step ≤ t,
  slightly mismatched with x_t); the 3D MVDream path's x̂_0-reconstruction loss with std-rescale 0.5 is
  MVDream-specific and not reproduced (the SDS form g_i above is the 2D code's, and the paper's).

Closed-form check (tests/test_guidance_reward.py): on the Gaussian prior with R = ⟨x̂_0, v⟩ the ranking is by
⟨ε_i, v⟩, and E[g] = 0.8·w κ (x − μ_ω) − w (1 − ρ) m_N v (m_N: the mean of the top 2 of N standard normals),
so the fixed point moves from μ_ω to μ_ω + (1 − ρ) m_N / (0.8 κ) · v; a constant R gives 0.8 × SDS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from dreamcore.config import component
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, scheduled
from dreamcore.guidance.rewards import RewardContext, build_reward
from dreamcore.guidance.vsd import VSDGuidance
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng

Strategy = Literal["min-max", "best", "weighted", "none"]


@dataclass
class RewardSettings:
    """``guidance.reward``: the base estimator, the reward model and how the N noises are combined."""

    base: Literal["sds", "vsd"] = "sds"
    model: Any = component("reward", "reference")
    n_noises: int = 7  # official 3D config and README (2D generate.py: 4; 2D GuidanceConfig: 8)
    strategy: Strategy = "min-max"
    lambda_max: float = 0.9
    lambda_min: float = 0.1
    n_max: int = 2
    n_min: int = 2
    n_best: int = 1
    temperature: float = 1.0  # "weighted": softmax(r / τ)
    duration: float = 0.7  # fraction of the run with rewards (then plain single-noise SDS/VSD)
    ddim_steps: int = 15  # DDIM steps to the clean image that is scored; 0 = the one-step x̂_0
    ddim_guidance_scale: float = 7.5  # ω of that DDIM (diffusers)


@register("guidance", "reward")
class RewardGuidance(VSDGuidance):
    @dataclass
    class Config(VSDGuidance.Config):
        guidance_scale: Scheduled = scheduled(50.0)
        t_max: Scheduled = scheduled(0.98)
        reward: RewardSettings = field(default_factory=RewardSettings)

    loss_name = "reward"

    def __init__(self, cfg: "RewardGuidance.Config") -> None:
        super().__init__(cfg)
        r = cfg.reward
        if r.n_noises < 1:
            raise DreamcoreError(f"guidance.reward.n_noises must be ≥ 1, got {r.n_noises}")
        need = {"min-max": max(r.n_max, r.n_min), "best": r.n_best}.get(r.strategy, 1)
        if r.strategy != "none" and r.n_noises < need:
            raise DreamcoreError(f"guidance.reward.strategy={r.strategy} takes {need} noises from the ranking: "
                                 f"guidance.reward.n_noises={r.n_noises} is too few")
        if r.ddim_steps < 0:
            raise DreamcoreError(f"guidance.reward.ddim_steps must be ≥ 0, got {r.ddim_steps}")
        self.reward_model = build_reward(r.model)
        self.last_reward = None

    def setup(self, prior, total_steps: int) -> None:
        if self.cfg.reward.base == "vsd":
            super().setup(prior, total_steps)  # the score model and its optimizer (VSD's machinery)
        else:
            Guidance.setup(self, prior, total_steps)
        if self.cfg.reward.strategy != "none":
            self.reward_model.setup(prior)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return super().optimizers() if self.cfg.reward.base == "vsd" else {}

    # -- pieces ------------------------------------------------------------------------------------------------------
    def rewarded(self, step: int) -> bool:
        """Host-side: rewards are on for the first ``duration`` of the run (a config fact, no tensor read)."""
        r = self.cfg.reward
        return r.strategy != "none" and step < r.duration * self.total_steps

    def clean_estimate(self, prior, x_t: Tensor, eps: Tensor, t: Tensor, views, kw: dict) -> Tensor:
        """The image a noise is scored on: DDIM (``ddim_steps``, CFG ``ddim_guidance_scale``) from x_t at t to the
        clean image on the grid ⌊T/K⌋·k, or the one-step x̂_0 from ε̃ when K = 0."""
        k = self.cfg.reward.ddim_steps
        if k == 0:
            return common.predicted_x0(prior.schedule, x_t, eps, t)
        omega = self.cfg.reward.ddim_guidance_scale
        stride = max(prior.schedule.num_steps // k, 1)
        grid = [stride * i for i in range(k - 1, -1, -1)] + [-1]
        x, cur = x_t, t
        for g in grid:
            target = torch.full_like(t, g)
            move = target < cur
            e, _ = common.guided_epsilon(prior, x, cur.clamp_min(0), views, omega, **kw)
            x = torch.where(common.broadcast(move, x).bool(), common.ddim_step(prior.schedule, x, e, cur, target), x)
            cur = torch.where(move, target, cur)
        return x

    def combination(self, rewards: Tensor) -> Tensor:
        """Weights W [N, B] of the N per-noise gradients from their rewards [N, B] (ties keep index order)."""
        r = self.cfg.reward
        n = rewards.shape[0]
        if r.strategy == "weighted":
            return torch.softmax(rewards / r.temperature, dim=0)
        order = torch.argsort(rewards, dim=0, descending=True, stable=True)
        w = torch.zeros_like(rewards)
        if r.strategy == "best":
            return w.scatter_(0, order[: r.n_best], 1.0 / r.n_best)
        w.scatter_add_(0, order[: r.n_max], torch.full_like(order[: r.n_max], r.lambda_max / r.n_max, dtype=w.dtype))
        bottom = order[n - r.n_min:]
        return w.scatter_add_(0, bottom, torch.full_like(bottom, -r.lambda_min / r.n_min, dtype=w.dtype))

    # -- the step ------------------------------------------------------------------------------------------------------
    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        vsd = c.reward.base == "vsd"
        t = self.sample_t(x.shape[0], step, prior, generator)
        w = common.broadcast(self.weights(prior, t), x)
        omega = self.omega(step)
        n = c.reward.n_noises if self.rewarded(step) else 1
        grads, cleans = [], []
        for _ in range(n):
            noise = rng.normal(x.shape, generator, like=x)
            x_t = prior.schedule.add_noise(x, noise, t)
            eps, _ = common.guided_epsilon(prior, x_t, t, views, omega, **kw)
            base = self.score_epsilon(prior, x_t, t, views, cameras, step, kw) if vsd else noise
            grads.append(w * (eps - base))
            if n > 1:
                cleans.append(self.clean_estimate(prior, x_t, eps, t, views, kw))
        if n == 1:
            return grads[0]
        context = RewardContext(prior, cameras, render.pixel_index, render.image_size)
        rewards = self.reward_model(torch.stack(cleans), context).to(x.dtype)  # [N, B]
        self.last_reward = rewards.mean().detach()  # a tensor: read it when logging
        weights = self.combination(rewards)
        return torch.einsum("nb,nb...->b...", weights, torch.stack(grads))

    def forward(self, render, cameras, prior, views, step, generator) -> dict[str, Tensor]:
        vsd = self.cfg.reward.base == "vsd"
        if vsd and self.score is None:
            raise RuntimeError("RewardGuidance.setup(prior, total_steps) was not called")
        x = prior.to_model_space(render.rgb, render.pixel_index)
        with torch.no_grad():
            grad = self.gradient(x.detach(), render, cameras, prior, views, step, generator)
        losses = self.finish(x, grad, step)
        if vsd:  # RewardVSD: one (or score_steps) denoising-score-matching updates of the score model, as VSD
            kw = self.prior_kwargs(render, cameras)
            for group in self._optimizer.param_groups:
                group["lr"] = self.cfg.score_lr(step)
            fits = [self.train_score(prior, x.detach(), views, cameras, generator, kw)
                    for _ in range(self.cfg.score_steps)]
            self.last_score_loss = torch.stack(fits).mean()
        return losses
