"""Pieces every score-distillation method shares, written once.

* timestep sampling: t ~ U{⌊T·t_min⌋, …, ⌊T·t_max⌋} per batch element (t_min/t_max may be scheduled);
* weightings w(t): ``sds`` σ_t² = 1 − ᾱ_t (DreamFusion), ``uniform`` 1, ``fantasia3d`` α_t σ_t²;
* classifier-free guidance in diffusers' convention ε̃ = ε_∅ + ω (ε_y − ε_∅). threestudio's SDS scale s is
  ω = s + 1 (see :func:`omega_from_threestudio`);
* gradient injection: L = ½ Σ (x − sg(x − g))² / B, so ∂L/∂x = g / B (threestudio's convention).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Weighting = Literal["sds", "uniform", "fantasia3d"]


def sample_timesteps(batch: int, t_min: float, t_max: float, num_steps: int, generator: torch.Generator) -> Tensor:
    """Integer timesteps [B] uniform in [⌊T·t_min⌋, ⌊T·t_max⌋] (inclusive)."""
    lo = int(num_steps * t_min)
    hi = max(int(num_steps * t_max), lo)
    hi = min(hi, num_steps - 1)
    return torch.randint(lo, hi + 1, (batch,), generator=generator)


def weighting(kind: Weighting, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w(t) [B] from α_t, σ_t [B]."""
    if kind == "sds":
        return sigma**2
    if kind == "uniform":
        return torch.ones_like(sigma)
    if kind == "fantasia3d":
        return alpha * sigma**2
    raise ValueError(f"unknown weighting {kind}")


def classifier_free(eps_cond: Tensor, eps_uncond: Tensor, omega: float) -> Tensor:
    """ε̃ = ε_∅ + ω (ε_y − ε_∅) (diffusers convention; ω = 1 is the conditional model alone)."""
    return eps_uncond + omega * (eps_cond - eps_uncond)


def omega_from_threestudio(scale: float) -> float:
    """threestudio's SDS ``guidance_scale`` s means ε_y + s(ε_y − ε_∅), i.e. ω = s + 1."""
    return scale + 1.0


def inject_gradient(x: Tensor, grad: Tensor) -> Tensor:
    """A scalar loss whose gradient w.r.t. ``x`` is ``grad / B`` (B = x.shape[0])."""
    grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


def broadcast(v: Tensor, like: Tensor) -> Tensor:
    """[B] → [B, 1, 1, …] to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)
