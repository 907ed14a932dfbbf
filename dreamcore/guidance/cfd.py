"""Consistent Flow Distillation (Yan et al. 2025, "Consistent Flow Distillation for Text-to-3D Generation").

SDS with three changes: the noise is a *multi-view-consistent* field ε_mv fixed on the object's surface (the same
surface point gets the same noise in every view), t is *deterministic* and decreasing over the run, and the weight
is w = σ_t/α_t, so that with plain SGD the render follows the probability-flow ODE of the clean estimate
c = z − σ̃ ε (a "clean flow"): a sample of the prior, where SDS collapses to its CFG mode.

    g = k · w(t) · (ε̃_ω(α_t x + σ_t ε_mv, t) − ε_mv),     w = σ̃_t = σ_t/α_t,   t = t(k) deterministic,
    ε_mv = β n_det + √(1 − β²) ξ,   n_det ← √(1 − γ) n_det + √γ ξ′ each step (the SDE knob),

with ε̃_ω classifier-free guidance in diffusers' ω (or Perp-Neg), k = ``grad_scale`` = 2 (the official loss is
MSE(sum)/B without the ½ that :func:`~dreamcore.guidance.common.inject_gradient` keeps, guidance-wave2 §13.4).

Sources [code: runjie-yan/ConsistentFlowDistillation@ec2e289]:
* the update: ``threestudio/models/guidance/stable_diffusion_unified_guidance.py::forward`` — w = ``lambdas`` =
  σ/α (hard-coded at ec2e289; the config's ``weighting_strategy: dmd`` is ignored there), target
  = x − w(ε_pre − ε_mv), ``loss_fn`` = MSELoss(sum)/B ⇒ ``grad_scale: 2``;
* CFG: without Perp-Neg ε_c + s(ε_c − ε_u), i.e. ω = s + 1 (``scale_convention: threestudio``, converted at load
  by :class:`~dreamcore.guidance.base.Guidance`); *with* Perp-Neg the same code uses ε_u + s(e⁺ + Σ perp), i.e.
  ω = s: so under ``views.perp_neg`` with the threestudio convention this guidance uses ω − 1 (= s);
* t: ``threestudio/models/t_scheduler.py`` with ``linear_anneal_max = linear_anneal_min``: min = max, p(k)
  piecewise linear on steps [0, 2500, 12500, 25000] → [0, 0.3, 0.6, 0.8], t = 0.02 + 0.96(1 − p), t_int =
  round(1000 t). ``t_anneal`` holds t(k) directly: 0.98 → 0.692 → 0.404 → 0.212 (same breakpoints);
* defaults of ``configs/cfd/sd-stage1.yaml``: s = 70 (ω = 71), sqrt_beta β = 1, weight_decay
  γ = [5000, 0.01, 0.0001, 10000] (threestudio's [s0, v0, v1, s1]: 0.01 until step 5000, linear to 1e-4 at 10000),
  noise_background_fix true, opc_thres 0.1 (``noise_generator.py``), 25k steps (the recipe, configs/cfd.yaml);
* the noise field: ``threestudio/models/noise_generator.py::TriplaneNoiseGenerator`` — a fixed N(0, 1) texture
  (6 sph2sqr-warped cube faces × 4 peel layers × 2048² × C), onto which each model-space pixel's footprint
  (a quad through the surface points z_mean·d + o of its corners) is rasterised with nvdiffrast; the pixel's
  noise is the *integral noise* Σ_i n_i / √count over the covered texels (exactly N(0, 1)); pixels that cover
  nothing take the fixed background noise.

This implementation (no rasteriser; [derived], not the official data structure): a *hashed 3D noise grid* owned by
the guidance. Space is cut into cubes of side ``noise_cell``; cube (i, j, k) holds an i.i.d. N(0, 1) vector
``noise.table[hash(i, j, k) mod T]`` (Instant-NGP's spatial hash, T = ``noise_table`` rows × C channels). A
model-space pixel's footprint is sampled by ``supersample``² sub-pixel rays (the pixel centres of an
(S·h) × (S·w) image of the same camera, :meth:`Cameras.pixel_directions`' convention); each sub-ray hits the surface at
o + r·d, r = depth/alpha (the renderers' expected ray distance over their opacity, bilinearly interpolated, so
silhouettes are alpha-weighted) where alpha > ``opacity_threshold`` and depth > 0. The pixel's noise is the
integral noise over the *distinct table rows* its sub-rays hit,

    n_det(p) = Σ_{distinct rows e hit by p} table[e] / √#rows,

which is exactly N(0, 1) per pixel whatever the geometry (distinct rows are independent), nearly independent between
neighbouring pixels (disjoint cubes, when a cube is smaller than a pixel's footprint), and equal for two views
whose footprints of the same surface patch hit the same cubes (correlation = overlap / √(|A||B|), 1 for identical
footprints). This is the variance-preserving "downsampling" of the surface noise to the prior's model space: for a
latent prior (SD: 64² latents from a 512² image) the field is built directly at the latent resolution with C = 4
channels — each latent pixel integrates the surface noise of its 8 × 8 image footprint with 1/√count, so it stays
unit-variance (a plain average would shrink it to 1/count). Choose ``noise_cell`` ≈ ¼ of a model pixel's footprint
on the surface (0.01 ≈ ¼ · 2·3.2·tan 20°/64 for 64² model pixels at distance 3.2, fov 40°) and ``supersample`` ≥ 2
sub-rays per cube so each footprint covers its cubes densely.

* Meshes (DMTet / the mesh renderer): depth is the distance to the rasterised surface, so the same 3D grid sampled
  at the surface point is a solid noise *texture on the surface* (the issue's "texture for meshes"); NeRF and
  Gaussians use their expected depth (the issue's "noise grid").
* Pixels that hit nothing (alpha ≤ threshold, or no cameras/depth, as in 2D tests) use a fixed per-pixel background
  noise ``noise.background[row-major pixel index mod T_b]`` (``background_fixed``; else fresh noise), so a 2D run is
  CFD with one fixed ε per pixel. Pixel subsets ([B, C, N, 1] model space) use each pixel's own ray distance for all
  its sub-rays' intersection with the pixel's tangent plane (``render.normal``; without normals, or at grazing
  angles, its own ray distance: a fronto-parallel footprint), since the neighbours' depths are not rendered.
* State: ``noise.table`` [T, C] and ``noise.background`` [T_b, C] are buffers (created in :meth:`setup` from
  ``prior.channels``, filled from the run's generator at the first step, refreshed with γ each step), checkpointed
  with the run, so a resumed run is bit-identical. t_min/t_max/t_schedule of the base config are unused (t_anneal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamcore.cameras import Cameras
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.registry import register
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled
from dreamcore import rng

_PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's spatial hash
_MASK = (1 << 21) - 1  # cube coordinates wrap at 2²¹ cells per axis (products stay below 2⁶³)


def spatial_hash(cells: Tensor, size: int) -> Tensor:
    """Row indices in [0, size) of integer cube coordinates ``cells`` [..., 3] (int64)."""
    c = cells & _MASK
    h = (c[..., 0] * _PRIMES[0]) ^ (c[..., 1] * _PRIMES[1]) ^ (c[..., 2] * _PRIMES[2])
    return h.remainder(size)


def directions_at(cameras: Cameras, rows: Tensor, cols: Tensor, height: int, width: int) -> Tensor:
    """Unit world directions [B, ..., 3] through image positions (``rows``, ``cols`` [B, ...], in pixels of a
    ``height`` × ``width`` image, pixel centres at +½) — :meth:`Cameras.pixel_directions` at sub-pixel positions."""
    f = cameras.focal(height).to(rows.dtype).view(-1, *([1] * (rows.dim() - 1)))
    d = torch.stack([(cols - 0.5 * width) / f, -(rows - 0.5 * height) / f, -torch.ones_like(rows)], -1)
    rot = cameras.c2w[:, :3, :3].to(rows.dtype)
    world = torch.einsum("bij,b...j->b...i", rot, d)
    return world / world.norm(dim=-1, keepdim=True)


class SurfaceNoise(nn.Module):
    """The run's multi-view-consistent noise field (see the module docstring): a hashed 3D N(0, 1) grid sampled at
    each model pixel's surface footprint with integral-noise normalization, and a fixed per-pixel background."""

    def __init__(self, channels: int, table_size: int, background_size: int, cell: float, supersample: int,
                 threshold: float) -> None:
        super().__init__()
        if cell <= 0 or supersample < 1 or table_size < 1 or background_size < 1:
            raise DreamcoreError("guidance cfd: noise_cell > 0, supersample ≥ 1 and table sizes ≥ 1 are required")
        self.channels, self.cell, self.supersample, self.threshold = channels, cell, supersample, threshold
        self.register_buffer("table", torch.zeros(table_size, channels))
        self.register_buffer("background", torch.zeros(background_size, channels))
        self.ready = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.ready = bool(self.table.abs().sum() > 0)  # at load time, not in a step

    @torch.no_grad()
    def initialize(self, generator: Optional[torch.Generator]) -> None:
        self.table.copy_(rng.normal(self.table.shape, generator, like=self.table))
        self.background.copy_(rng.normal(self.background.shape, generator, like=self.background))
        self.ready = True

    @torch.no_grad()
    def refresh(self, gamma: float, generator: Optional[torch.Generator]) -> None:
        """n ← √(1 − γ) n + √γ ξ (keeps every entry N(0, 1)); γ = 0 leaves the field fixed."""
        if gamma <= 0:
            return
        for buf in (self.table, self.background):
            buf.mul_((1.0 - gamma) ** 0.5).add_(rng.normal(buf.shape, generator, like=buf), alpha=gamma**0.5)

    # -- the field -------------------------------------------------------------------------------------------------
    def forward(self, shape: torch.Size, render: RenderOutput, cameras: Optional[Cameras]) -> tuple[Tensor, Tensor]:
        """(n_det, on_surface): the deterministic noise [B, C, h, w] (or [B, C, N, 1] for a pixel subset) and a
        bool mask [B, 1, h, w] of the pixels whose footprint hit the surface (the rest hold the background)."""
        b, c, h, w = shape
        if c != self.channels:
            raise DreamcoreError(f"guidance cfd: the noise field has {self.channels} channels (prior.channels) but "
                                 f"the model space has {c}")
        subset = render.pixel_index is not None
        if subset:
            height, width = render.image_size
            bg_index = render.pixel_index.to(self.table.device).view(b, h, w)
        else:
            height, width = render.rgb.shape[1], render.rgb.shape[2]
            bg_index = torch.arange(h * w, device=self.table.device).view(1, h, w).expand(b, h, w)
        background = self.background[bg_index.remainder(self.background.shape[0])]  # [B, h, w, C]
        if cameras is None:
            return background.permute(0, 3, 1, 2), torch.zeros(b, 1, h, w, dtype=torch.bool, device=bg_index.device)
        keys = self.surface_keys(render, cameras, b, h, w, height, width)  # [B, h, w, K], −1 off the surface
        keys, _ = keys.sort(-1)
        first = torch.ones_like(keys, dtype=torch.bool)
        first[..., 1:] = keys[..., 1:] != keys[..., :-1]
        keep = first & (keys >= 0)
        count = keep.sum(-1, keepdim=True)  # [B, h, w, 1]
        values = self.table[keys.clamp_min(0)] * keep[..., None].to(self.table.dtype)  # [B, h, w, K, C]
        integral = values.sum(-2) / count.clamp_min(1).to(values.dtype).sqrt()
        hit = count > 0
        noise = torch.where(hit, integral, background)
        return noise.permute(0, 3, 1, 2), hit.permute(0, 3, 1, 2)

    def surface_keys(self, render: RenderOutput, cameras: Cameras, b: int, h: int, w: int, height: int,
                     width: int) -> Tensor:
        """Table rows [B, h, w, S²] hit by each model pixel's sub-rays (−1 where a sub-ray misses the surface)."""
        s = self.supersample
        dev = self.table.device
        dt = torch.float64 if render.depth.dtype == torch.float64 else torch.float32
        depth = render.depth[..., 0].to(dev, dt)
        alpha = render.alpha[..., 0].to(dev, dt)
        sub = (torch.arange(s, device=dev, dtype=dt) + 0.5) / s  # [S]
        if render.pixel_index is not None:  # [B, N, 1]: each pixel's own distance for its whole footprint
            pix = render.pixel_index.to(dev).view(b, h)
            row0 = torch.div(pix, width, rounding_mode="floor").to(dt)
            col0 = pix.remainder(width).to(dt)
            rows = (row0[:, :, None, None] + sub[None, None, :, None]).expand(b, h, s, s)
            cols = (col0[:, :, None, None] + sub[None, None, None, :]).expand(b, h, s, s)
            dist = (depth.view(b, h) / alpha.view(b, h).clamp_min(1e-8))[:, :, None, None].expand(b, h, s, s)
            valid = ((alpha.view(b, h) > self.threshold) & (depth.view(b, h) > 0))[:, :, None, None].expand(b, h, s, s)
            rows, cols, dist, valid = (v.reshape(b, h, w, s * s) for v in (rows, cols, dist, valid))
        else:  # the pixel centres of an (S·h) × (S·w) image, depth and alpha bilinearly interpolated there
            rows = ((torch.arange(h * s, device=dev, dtype=dt) + 0.5) * (height / (h * s)))
            cols = ((torch.arange(w * s, device=dev, dtype=dt) + 0.5) * (width / (w * s)))
            rows, cols = (v.expand(b, h * s, w * s) for v in torch.meshgrid(rows, cols, indexing="ij"))
            da = F.interpolate(torch.stack([depth, alpha], 1), size=(h * s, w * s), mode="bilinear",
                               align_corners=False)
            d_s, a_s = da[:, 0], da[:, 1]
            dist = d_s / a_s.clamp_min(1e-8)
            valid = (a_s > self.threshold) & (d_s > 0)

            def blocks(v: Tensor) -> Tensor:  # [B, hS, wS] → [B, h, w, S²]
                return v.reshape(b, h, s, w, s).permute(0, 1, 3, 2, 4).reshape(b, h, w, s * s)

            rows, cols, dist, valid = (blocks(v) for v in (rows, cols, dist, valid))
        cams = cameras.to(dev)
        dirs = directions_at(cams, rows, cols, height, width)  # [B, h, w, K, 3]
        origin = cams.position.to(dt).view(b, 1, 1, 1, 3)
        if render.pixel_index is not None and render.normal is not None:
            # the footprint on the pixel's tangent plane (its rendered normal), not a fronto-parallel disc
            nrm = render.normal.to(dev, dt).reshape(b, h, w, 1, 3)
            nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            centre = directions_at(cams, rows.mean(-1, keepdim=True), cols.mean(-1, keepdim=True), height, width)
            p0 = dist.mean(-1, keepdim=True)[..., None] * centre  # relative to the camera
            cos = (dirs * nrm).sum(-1)
            plane = (p0 * nrm).sum(-1) / torch.where(cos.abs() > 1e-6, cos, torch.ones_like(cos))
            ok = ((p0 * nrm).sum(-1) * cos > 0) & (cos.abs() > 0.2)  # facing and not grazing
            dist = torch.where(ok, plane.clamp(0.5 * dist, 2.0 * dist), dist)
        points = origin + dist[..., None] * dirs
        cells = torch.floor(points / self.cell).to(torch.long)
        keys = spatial_hash(cells, self.table.shape[0])
        return torch.where(valid, keys, torch.full_like(keys, -1))


@register("guidance", "cfd")
class CFDGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(70.0)  # threestudio's s (sd-stage1.yaml) → ω = 71
        scale_convention: Literal["diffusers", "threestudio"] = "threestudio"
        weighting: common.Weighting = "ism"  # σ_t/α_t (the official ``lambdas``)
        t_anneal: Scheduled = Scheduled(((0.0, 0.98), (2500.0, 0.692), (12500.0, 0.404), (25000.0, 0.212)))
        grad_scale: float = 2.0  # the official MSE(sum) without ½
        sqrt_beta: Scheduled = scheduled(1.0)  # β: 1 = fully determined noise, 0 = SDS's fresh noise
        noise_decay: Scheduled = Scheduled(((5000.0, 0.01), (10000.0, 0.0001)))  # γ (weight_decay)
        background_fixed: bool = True  # noise_background_fix
        noise_cell: float = 0.01  # side of a noise cube, scene units
        supersample: int = 8  # sub-rays per model pixel and axis
        opacity_threshold: float = 0.1  # opc_thres
        noise_table: int = 1 << 20  # rows of the hashed surface noise
        background_table: int = 1 << 18  # rows of the per-pixel background noise (≥ the model's pixel count)

    loss_name = "cfd"

    def __init__(self, cfg: "CFDGuidance.Config") -> None:
        super().__init__(cfg)
        self.noise: Optional[SurfaceNoise] = None

    def setup(self, prior, total_steps: int) -> None:
        super().setup(prior, total_steps)
        c = self.cfg
        self.noise = SurfaceNoise(int(prior.channels), c.noise_table, c.background_table, c.noise_cell,
                                  c.supersample, c.opacity_threshold)

    def timestep(self, step: int, num_steps: int) -> int:
        """t(k) = round(T · t_anneal(k)) clamped to [0, T − 1] (host arithmetic on the step number)."""
        return min(max(int(round(num_steps * self.cfg.t_anneal(step))), 0), num_steps - 1)

    def guidance_omega(self, step: int, views) -> float:
        """ω for this step: threestudio's s + 1 without Perp-Neg, s itself with it (the official code's mix)."""
        omega = self.omega(step)
        if views.negatives and self.cfg.scale_convention == "threestudio":
            omega -= 1.0
        return omega

    def multiview_noise(self, x: Tensor, render: RenderOutput, cameras: Optional[Cameras], step: int,
                        generator: Optional[torch.Generator]) -> Tensor:
        """ε_mv [same shape as x] for this step (advances the field's γ refresh: call once per step)."""
        if self.noise is None:
            raise RuntimeError("CFDGuidance.setup(prior, total_steps) was not called")
        c = self.cfg
        if not self.noise.ready:
            self.noise.initialize(generator)
        self.noise.refresh(c.noise_decay(step), generator)
        det, hit = self.noise(x.shape, render, cameras)
        det = det.to(x)
        if not c.background_fixed:
            det = torch.where(hit, det, rng.normal(x.shape, generator, like=x))
        beta = c.sqrt_beta(step)
        if beta >= 1.0:
            return det
        fresh = rng.normal(x.shape, generator, like=x)
        return beta * det + (1.0 - beta**2) ** 0.5 * fresh

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        noise = self.multiview_noise(x, render, cameras, step, generator)
        t = torch.full((x.shape[0],), self.timestep(step, prior.schedule.num_steps), dtype=torch.long,
                       device=x.device)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps, _ = common.guided_epsilon(prior, x_t, t, views, self.guidance_omega(step, views),
                                       **self.prior_kwargs(render, cameras))
        return self.cfg.grad_scale * common.broadcast(self.weights(prior, t), x) * (eps - noise)
