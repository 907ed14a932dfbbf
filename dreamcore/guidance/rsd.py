"""Repulsive Score Distillation (Zilberstein, Mardani, Segarra, "Repulsive Latent Score Distillation for Solving
Inverse Problems", ICLR 2025; official code nzilberstein/Repulsive-score-distillation-RSD-).

SDS plus a kernel repulsion between the particles of a batch. The repulsion is the SVGD-style term of an RBF kernel
on features f_i of each particle i = 1 … N (here the batch rows, i.e. the views of the object as in the official 3D
guidance):

    d_ij = ‖f_i − f_j‖,   h = median_i (median_{j≠i} d_ij)² / ln(N − 1),   k_ij = exp(−d_ij² / h)
    r_i = Σ_{j≠i} (2/h) k_ij (f_i − f_j),   R_i = J_iᵀ r_i / Σ_{j≠i} k_ij        (J_i = ∂f_i/∂(feature input))
    g_i = w(t) [ ε̃_ω(x_t^i; y, t) − ε_i − γ(k) σ_t² R_i ],   x_t^i = α_t x_i + σ_t ε_i,

so a descent step moves x_i along +R_i, away from its neighbours. γ is ``repulsion`` (scheduled; γ = 0 is SDS
exactly, the same draws). With ``x0_reconstruction`` the SDS part is MVDream's x − x̂₀′ and the repulsion takes its
implied weight σ_t/α_t. R is not multiplied by ∂x_t/∂x = α_t (the official code takes the gradient with respect to
the noisy input as is). The median is torch's: the lower middle value for an even count.

Bandwidth (``bandwidth``):
* ``median`` is the official rule ln(N − 1) above: the neighbours' kernel sum is about 1. At N = 2, ln(N − 1) = 0
  gives h = ∞ and switches the repulsion off, so two particles use SVGD's ln N.
* ``svgd`` is ln N always (Liu & Wang 2016, "Stein Variational Gradient Descent").
* N = 1: no repulsion.

Features (``features``). None needs pretrained weights. The official DINO ViT-S/16 CLS embedding of the noisy input
is not available here (no DINO weights ship with dreamcore).
* ``clean`` (default) compares the renders x themselves (J = I). Raw pixels of *noisy* inputs are dominated by the
  independent noises, so their repulsion would mostly push along ε_i − ε_j. DINO's robustness to noise is what made
  the official noisy input meaningful.
* ``noisy`` compares the official input x_t with identity features (J = I).
* ``x0`` compares the prior's own one-step estimate x̂₀(x_t) under the conditional branch. R_i is its
  vector-Jacobian product through the prior: one more prior forward and backward per step, on a differentiable
  prior (the learned, diffusers and analytic priors; not the reference prior).

For pixel subsets (``system.rays_per_view``) the rows hold different pixels, so ``clean``/``noisy`` compare the
sampled pixels in order: a cruder, still translation-invariant proxy. Use whole images for a meaningful repulsion.

Closed forms (derived; ``tests/test_guidance_rsd.py``). On a point mass at μ with ω = 1 and ``clean`` features,
ε̃ − ε = (α_t/σ_t)(x − μ) exactly. For N = 2, k = ½ and R_1 = 2 ln 2 (x_1 − x_2)/d². So two particles settle
symmetrically about μ at

    d* = 2 σ_t √(γ ln 2 · σ_t/α_t),

and N = 3 settle on an equilateral triangle of side √(3 γ ln 2 · σ_t³/α_t) (ln(N − 1) = ln 2 again).

Defaults and sources (nzilberstein/Repulsive-score-distillation-RSD-, ``unconstrained_sampling/threestudio``, read
file by file):
* ``threestudio/models/guidance/deep_floyd_guidance.py`` [code]: the update above with c(t) = σ_t² = 1 − ᾱ_t,
  w = 1 − ᾱ_t, one t for the whole batch (``t_shared: true`` here), the per-particle median bandwidth reduced by
  its median over particles, the normalisation by Σ_j k_ij, and γ = 200. The repulsion ships switched off there
  (``dino_flag`` False): the default here switches it on at the official γ.
* ``configs/dreamfusion-if.yaml`` [code]: batch 20 views at 64², DeepFloyd IF with threestudio's s = 20 (ω = 21),
  t ∈ [0.02, 0.98], 10 000 steps. ω and the t range here are SDS's (the run's prior is not IF).
* The 2D SD pipeline uses c(t) = σ_t with w = σ_t/α_t. One SD-threestudio file adds the term with the opposite
  (attractive) sign. The sign here is the IF guidance's and the 2D code's (multiview-and-editing.md §5.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import scheduled
from dreamcore.guidance.sds import SDSConfig, SDSGuidance, rescaled_x0
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng

Bandwidth = Literal["median", "svgd"]


def kernel_repulsion(f: Tensor, bandwidth: Bandwidth = "median") -> Tensor:
    """R_i = Σ_{j≠i} (2/h) k_ij (f_i − f_j) / Σ_{j≠i} k_ij for features f [N, D] (N ≥ 2), h the median-heuristic
    bandwidth (module docstring)."""
    n = f.shape[0]
    diff = f[:, None, :] - f[None, :, :]  # [N, N, D]: f_i − f_j
    d2 = diff.pow(2).sum(-1)
    off = ~torch.eye(n, dtype=torch.bool, device=f.device)
    per_particle = d2[off].view(n, n - 1).sqrt().median(dim=1).values ** 2
    log_n = math.log(n - 1) if bandwidth == "median" and n > 2 else math.log(n)
    h = (per_particle.median() / log_n).clamp_min(torch.finfo(f.dtype).tiny)
    k = torch.exp(-d2 / h) * off
    r = (2.0 / h) * (k[..., None] * diff).sum(1)
    return r / k.sum(1, keepdim=True).clamp_min(torch.finfo(f.dtype).tiny)


@dataclass
class RSDConfig(SDSConfig):
    t_shared: bool = True  # one t for the batch (the official guidance repeats one draw)
    repulsion: Scheduled = scheduled(200.0)  # γ (official IF guidance); 0 = SDS
    features: Literal["clean", "noisy", "x0"] = "clean"  # what the kernel compares (module docstring)
    bandwidth: Bandwidth = "median"  # h = med²/ln(N − 1) (ln N at N = 2); svgd: med²/ln N


@register("guidance", "rsd")
class RSDGuidance(SDSGuidance):
    Config = RSDConfig
    loss_name = "rsd"

    def repulsion_field(self, x: Tensor, x_t: Tensor, t: Tensor, prior, views, kw: dict) -> Tensor:
        """R [B, …] like x: the kernel repulsion pulled back to the features' input (x, x_t, or x_t through x̂₀)."""
        kind = self.cfg.features
        if kind in ("clean", "noisy"):
            f = x if kind == "clean" else x_t
            return kernel_repulsion(f.flatten(1), self.cfg.bandwidth).view_as(x)
        with torch.enable_grad():
            xt = x_t.detach().requires_grad_(True)
            eps = prior.predict_epsilon(xt, t, views.cond, **kw)
            if not eps.requires_grad:  # x̂₀ would still depend on x_t, but only through its x_t/α_t part
                raise DreamcoreError(f"guidance.features=x0 differentiates through the prior, and prior "
                                     f"{type(prior).__name__} is not differentiable: use features=clean or noisy")
            x0 = common.predicted_x0(prior.schedule, xt, eps, t)
            r = kernel_repulsion(x0.detach().flatten(1), self.cfg.bandwidth).view_as(x0)
            (vjp,) = torch.autograd.grad(x0, xt, grad_outputs=r)
        return vjp

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        t = self.sample_t(x.shape[0], step, prior, generator)
        noise = rng.normal(x.shape, generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps, raw = common.guided_epsilon(prior, x_t, t, views, self.omega(step), **kw)
        a, s = prior.schedule.alpha_sigma(t)
        if not c.x0_reconstruction:
            w = common.broadcast(self.weights(prior, t), x)
            g = w * (eps - noise)
        else:  # SDS's MVDream form (sds.py), implied weight σ_t/α_t
            w = common.broadcast(s / a, x)
            x0 = common.predicted_x0(prior.schedule, x_t, eps, t)
            if c.x0_rescale > 0:
                x0_cond = common.predicted_x0(prior.schedule, x_t, raw["cond"], t)
                x0 = rescaled_x0(x0, x0_cond, prior.views_per_sample, c.x0_rescale)
            g = x - x0
        gamma = c.repulsion(step)
        if gamma == 0 or x.shape[0] < 2:
            return g
        rep = self.repulsion_field(x, x_t, t, prior, views, kw)
        return g - w * gamma * common.broadcast(s**2, x) * rep
