"""Pieces every score-distillation method shares, written once.

* weightings w(t): ``sds`` σ_t² = 1 − ᾱ_t (DreamFusion), ``uniform`` 1, ``fantasia3d`` α_t σ_t²,
  ``ism`` σ_t/α_t (LucidDreamer; also SDI's implicit weight);
* classifier-free guidance in diffusers' convention ε̃ = ε_∅ + ω (ε_y − ε_∅). threestudio's SDS scale s is
  ω = s + 1 (see :func:`omega_from_threestudio`); Perp-Neg (Armandpour et al. 2023) in :func:`perp_neg`;
* batched evaluation of several conditions in one prior call (:func:`predict_rows`);
* DDIM steps in either direction (Song et al. 2021, eq. 12) for ISM and SDI inversions (:func:`ddim_step`);
* gradient injection: L = ½ Σ (x − sg(x − g))² / B, so ∂L/∂x = g / B (threestudio's convention).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore import rng

Weighting = Literal["sds", "uniform", "fantasia3d", "ism"]


def sample_timesteps(batch: int, t_min: float, t_max: float, num_steps: int, generator: torch.Generator) -> Tensor:
    """Integer timesteps [B] uniform in [⌊T·t_min⌋, ⌊T·t_max⌋] (inclusive)."""
    lo, hi = timestep_bounds(t_min, t_max, num_steps)
    return rng.integers(lo, hi + 1, (batch,), generator)


def timestep_bounds(t_min: float, t_max: float, num_steps: int) -> tuple[int, int]:
    """⌊T·t_min⌋ ≤ ⌊T·t_max⌋ ≤ T − 1 (the range kept non-empty under rounding)."""
    lo = min(max(int(num_steps * t_min), 0), num_steps - 1)
    hi = min(max(int(num_steps * t_max), lo), num_steps - 1)
    return lo, hi


def plus_ratio_delta(t: Tensor, lo: int, num_steps: int, ratio: float) -> Tensor:
    """The shift toward a noisier timestep of ASD's and DSD's second branch (float64 [B]): ``ratio·(t − lo)``,
    at least 0 and at most ``num_steps − 1 − t`` (the caller scales it by a random fraction and floors it)."""
    delta = (ratio * (t - lo).to(torch.float64)).clamp_min(0.0)
    return torch.minimum(delta, (num_steps - 1 - t).to(torch.float64))


def weighting(kind: Weighting, alpha: Tensor, sigma: Tensor) -> Tensor:
    """w(t) [B] from α_t, σ_t [B]."""
    if kind == "sds":
        return sigma**2
    if kind == "uniform":
        return torch.ones_like(sigma)
    if kind == "fantasia3d":
        return alpha * sigma**2
    if kind == "ism":
        return sigma / alpha
    raise ValueError(f"unknown weighting {kind}")


def classifier_free(eps_cond: Tensor, eps_uncond: Tensor, omega: float) -> Tensor:
    """ε̃ = ε_∅ + ω (ε_y − ε_∅) (diffusers convention; ω = 1 is the conditional model alone)."""
    return eps_uncond + omega * (eps_cond - eps_uncond)


def omega_from_threestudio(scale: float) -> float:
    """threestudio's SDS ``guidance_scale`` s means ε_y + s(ε_y − ε_∅), i.e. ω = s + 1."""
    return scale + 1.0


def perpendicular(a: Tensor, b: Tensor) -> Tensor:
    """a − (⟨a, b⟩ / ‖b‖²) b per batch element (inner products over all non-batch dimensions)."""
    dims = tuple(range(1, a.dim()))
    coef = (a * b).sum(dims, keepdim=True) / (b * b).sum(dims, keepdim=True).clamp_min(1e-6)
    return a - coef * b


def perp_neg(eps_uncond: Tensor, eps_pos: Tensor, negatives: list[tuple[Tensor, Tensor]], omega: float) -> Tensor:
    """Perp-Neg: ε̃ = ε_∅ + ω (e⁺ + Σ_i w_i perp(e_i, e⁺)), e⁺ = ε_y⁺ − ε_∅, e_i = ε_{y_i} − ε_∅.

    ``negatives`` holds (ε_{y_i} [B, …], w_i [B]); the weights are negative numbers (threestudio's storage)."""
    e_pos = eps_pos - eps_uncond
    total = e_pos
    for eps_neg, w in negatives:
        total = total + broadcast(w, e_pos) * perpendicular(eps_neg - eps_uncond, e_pos)
    return eps_uncond + omega * total


def predict_rows(prior, x_t: Tensor, t: Tensor, embeddings: list[Tensor], cameras: Optional[Cameras] = None,
                 pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> list[Tensor]:
    """ε̂(x_t; y_k, t) for each condition set ``embeddings[k]`` ([B, …]) in one batched prior call."""
    k = len(embeddings)
    if k == 1:
        return [prior.predict_epsilon(x_t, t, embeddings[0], cameras=cameras, pixel_index=pixel_index,
                                      image_size=image_size)]
    b = x_t.shape[0]
    rep = torch.arange(b).repeat(k)
    cams = None if cameras is None else cameras[rep.to(cameras.device)]
    pix = None if pixel_index is None else pixel_index.repeat(k, *([1] * (pixel_index.dim() - 1)))
    emb = torch.cat([e.to(x_t.device) for e in embeddings], 0)
    out = prior.predict_epsilon(x_t.repeat(k, *([1] * (x_t.dim() - 1))), t.repeat(k), emb, cameras=cams,
                                pixel_index=pix, image_size=image_size)
    return list(out.split(b, 0))


def guided_epsilon(prior, x_t: Tensor, t: Tensor, views, omega: float, **kw) -> tuple[Tensor, dict[str, Tensor]]:
    """ε̃ for the views' conditions: Perp-Neg when ``views.negatives`` is set, else CFG (skipped at ω = 1).

    Returns ε̃ and the raw predictions by name (``cond``, ``uncond``) for methods that reuse them."""
    if views.negatives:
        rows = predict_rows(prior, x_t, t, [views.cond, views.uncond] + [e for e, _ in views.negatives], **kw)
        negs = [(eps, w.to(x_t.device)) for eps, (_, w) in zip(rows[2:], views.negatives)]
        return perp_neg(rows[1], rows[0], negs, omega), {"cond": rows[0], "uncond": rows[1]}
    if omega == 1.0:
        (eps,) = predict_rows(prior, x_t, t, [views.cond], **kw)
        return eps, {"cond": eps}
    eps_c, eps_u = predict_rows(prior, x_t, t, [views.cond, views.uncond], **kw)
    return classifier_free(eps_c, eps_u, omega), {"cond": eps_c, "uncond": eps_u}


def alphas_bar(schedule, t: Tensor) -> Tensor:
    """ᾱ_t [B] with the convention ᾱ_{−1} = 1 (the clean image)."""
    ac = schedule.table(t.device) if hasattr(schedule, "table") else schedule.alphas_cumprod.to(t.device)
    return torch.where(t < 0, torch.ones_like(t, dtype=ac.dtype), ac[t.clamp_min(0)])


def ddim_step(schedule, x: Tensor, eps: Tensor, t_from: Tensor, t_to: Tensor, eta: float = 0.0,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """Move x from noise level t_from to t_to along the DDIM update (either direction; t = −1 is clean):

        x̂_0 = (x − σ_from ε) / α_from,   x' = α_to x̂_0 + √(σ_to² − η²σ̂²) ε + η σ̂ z,
        σ̂² = (1 − ᾱ_lo)/(1 − ᾱ_hi) · (1 − ᾱ_hi/ᾱ_lo)   (lo/hi: the less/more noisy of the two levels).
    """
    a_from, a_to = alphas_bar(schedule, t_from), alphas_bar(schedule, t_to)
    x0 = (x - broadcast((1 - a_from).sqrt(), x) * eps) / broadcast(a_from.sqrt(), x)
    var_to = (1 - a_to)
    if eta > 0:
        a_lo, a_hi = torch.maximum(a_from, a_to), torch.minimum(a_from, a_to)
        s2 = eta**2 * (1 - a_lo) / (1 - a_hi).clamp_min(1e-12) * (1 - a_hi / a_lo)
        s2 = torch.minimum(s2, var_to)
        z = rng.normal(x.shape, generator, like=x)
        return (broadcast(a_to.sqrt(), x) * x0 + broadcast((var_to - s2).sqrt(), x) * eps
                + broadcast(s2.sqrt(), x) * z)
    return broadcast(a_to.sqrt(), x) * x0 + broadcast(var_to.sqrt(), x) * eps


def predicted_x0(schedule, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x̂_0 = (x_t − σ_t ε) / α_t."""
    a, s = schedule.alpha_sigma(t)
    return (x_t - broadcast(s, x_t) * eps) / broadcast(a, x_t)


def inject_gradient(x: Tensor, grad: Tensor) -> Tensor:
    """A scalar loss whose gradient w.r.t. ``x`` is ``grad / B`` (B = x.shape[0])."""
    grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


def broadcast(v: Tensor, like: Tensor) -> Tensor:
    """[B] → [B, 1, 1, …] to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype).to(like.device)
