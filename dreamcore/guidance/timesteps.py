"""Timestep schedules: which diffusion step t ∈ [0, T) a training step k of K uses.

* ``uniform`` (DreamFusion): t ~ U{⌊T t_min(k)⌋ … ⌊T t_max(k)⌋} i.i.d. per view; t_min/t_max are scheduled
  scalars, so piecewise-linear annealing of the range (ProlificDreamer's t_max 0.98 → 0.5) is a config line.
* ``linear`` (DreamGaussian, SDI's ``t_anneal``): deterministic t(k) = t_lo + (t_hi − t_lo)(1 − k/K).
* ``sqrt`` (HiFA): t(k) = t_lo + (t_hi − t_lo)(1 − √(k/K)).
* ``dreamtime`` (Huang et al. 2023, "DreamTime", time-prioritized SDS): a prior density over t,
  p(t) ∝ √((1 − ᾱ_t)/ᾱ_t) · w_p(t), w_p = 1 on [m₂, m₁], Gaussian tails exp(−(t − m₁)²/2s₁²) above m₁ and
  exp(−(t − m₂)²/2s₂²) below m₂; t(k) = argmin_t |Σ_{τ ≥ t} p(τ) − k/K|: monotone non-increasing through the
  prior's quantiles. (m₁, m₂, s₁, s₂) = (800, 500, 300, 100) from the paper.
* ``random_until`` r ∈ [0, 1): uniform sampling for k < r·K, then the deterministic schedule over the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dreamcore.guidance.common import timestep_bounds
from dreamcore import rng

ScheduleKind = Literal["uniform", "linear", "sqrt", "dreamtime"]


@dataclass
class DreamTimeConfig:
    m1: float = 800.0
    m2: float = 500.0
    s1: float = 300.0
    s2: float = 100.0


def dreamtime_density(alphas_cumprod: Tensor, cfg: DreamTimeConfig) -> Tensor:
    """p(t) [T], normalized (see the module docstring)."""
    t = torch.arange(alphas_cumprod.shape[0], dtype=torch.float64)
    ac = alphas_cumprod.double()
    w_d = ((1 - ac) / ac).sqrt()
    w_p = torch.ones_like(t)
    w_p = torch.where(t > cfg.m1, torch.exp(-((t - cfg.m1) ** 2) / (2 * cfg.s1**2)), w_p)
    w_p = torch.where(t < cfg.m2, torch.exp(-((t - cfg.m2) ** 2) / (2 * cfg.s2**2)), w_p)
    p = w_d * w_p
    return p / p.sum()


def dreamtime_timestep(p: Tensor, progress: float, lo: int, hi: int) -> int:
    """argmin_t |Σ_{τ ≥ t} p(τ) − progress| over t ∈ [lo, hi] (p renormalized on that range)."""
    q = p[lo:hi + 1] / p[lo:hi + 1].sum()
    tail = q.flip(0).cumsum(0).flip(0)  # tail[i] = Σ_{τ ≥ lo + i} q
    return lo + int((tail - progress).abs().argmin())


class TimestepSampler:
    """t [B] for a step: ``sampler(batch, step, total_steps, alphas_cumprod, t_min, t_max, generator)``."""

    def __init__(self, kind: ScheduleKind = "uniform", random_until: float = 0.0, shared: bool = False,
                 dreamtime: DreamTimeConfig | None = None) -> None:
        if kind not in ("uniform", "linear", "sqrt", "dreamtime"):
            raise ValueError(f"unknown timestep schedule {kind}")
        self.kind, self.random_until, self.shared = kind, random_until, shared
        self.dreamtime = dreamtime or DreamTimeConfig()
        self._density: Tensor | None = None

    def __call__(self, batch: int, step: int, total_steps: int, alphas_cumprod: Tensor, t_min: float,
                 t_max: float, generator: torch.Generator) -> Tensor:
        num = alphas_cumprod.shape[0]
        lo, hi = timestep_bounds(t_min, t_max, num)
        start = int(self.random_until * total_steps)
        if self.kind == "uniform" or step < start:
            n = 1 if self.shared else batch
            t = rng.integers(lo, hi + 1, (n,), generator)
            return t.expand(batch).clone() if self.shared else t
        progress = min(max((step - start) / max(total_steps - start, 1), 0.0), 1.0)
        if self.kind == "linear":
            value = round(lo + (hi - lo) * (1.0 - progress))
        elif self.kind == "sqrt":
            value = round(lo + (hi - lo) * (1.0 - progress**0.5))
        else:
            if self._density is None or self._density.shape[0] != num:
                self._density = dreamtime_density(alphas_cumprod, self.dreamtime)
            value = dreamtime_timestep(self._density, progress, lo, hi)
        return torch.full((batch,), int(value), dtype=torch.long, device=generator.device if generator is not None else None)
