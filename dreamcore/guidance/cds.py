"""Consistency Distillation Sampling (Wu et al. 2024, "Consistent3D: Towards Consistent High-Fidelity Text-to-3D
Generation with Deterministic Sampling Prior", CVPR 2024).

SDS's injected noise ε is replaced by the prediction at the less-noisy neighbour on the probability-flow ODE
through x_t, with **one fixed noise for the whole run**. In VE coordinates z = x_t/α_t, σ̃ = σ/α:

    t' = cur(k) (sqrt-annealed, clamped to [t_lo, t_hi − end_gap]),  t = t' + U{end_gap … end_gap + perturb − 1}
    z_t = x + σ̃_t ε,   ε₁ = ε̃_ω(z_t, t),   z' = z_t + (σ̃_{t'} − σ̃_t) ε₁   (one Euler step of the PF-ODE)
    ε₂ = ε̃_ω(z', t'),   g = w(t) (ε₁ − ε₂),

the model being fed α z (= x_t). The Euler step in VE is exactly the DDIM step t → t' in VP coordinates, which is
how it is computed here (:func:`~dreamcore.guidance.common.ddim_step`). ε is one field [C, H, W] drawn from the
run's generator on first use and shared by every step and view (``share_noise``); it is a buffer of this module,
so checkpoints carry it and a resumed run continues with the same noise. For pixel subsets the field covers the
whole image and is gathered at the rendered pixels. If the model-space size changes, it is redrawn.

Defaults and sources (sail-sg/Consistent3D@9118a5c):
* the update: ``threestudio/models/guidance/stable_diffusion_guidance.py::compute_grad_consistency``, ``__call__``,
  ``update_step`` [code]; the optional ``recon_std_rescale`` term is 0 in every shipped config and omitted;
* CFG in threestudio/SJC form ε_y + s(ε_y − ε_∅): **ω = s + 1**. The coarse config's s [0, 100, 50, 3000]
  (linear 100 → 50 over 3000 steps) is ω 101 → 51; the module default is that schedule already in ω, and
  ``configs/cds.yaml`` writes threestudio's s with ``scale_convention: threestudio`` (converted at load);
* weighting uniform, cur_steps [0, 700, 100, 3000] with the sqrt anneal cur = start + (end − start)·√(k/K),
  perturb_factor 200, end_gap 100 (t − t' ∈ [100, 300)), range 0.1–0.98, grad_clip [0, 2.0, 8.0, 3000],
  share_noise true, batch 8 at 64×64, 3000 steps, lr 0.005: ``configs/consistency-coarse.yaml`` [code];
  refine/texture variants (s 100 → 30 / s 50, sds weighting, other ranges) in the same folder.
Perp-Neg is not implemented by the official code (it raises); here, as elsewhere, ``views.perp_neg`` selects
Perp-Neg for ε̃ — an extension, not the paper's. The closed forms in the tests are derived (guidance-wave2.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.registry import register
from dreamcore.schedule import Scheduled, step_count
from dreamcore import rng


class FixedNoise(nn.Module):
    """A run-long noise field held as the buffer ``field`` ([1 or B, C, H, W]), drawn from the run's generator on
    first use (``shared``: one row for every view; else one row per batch position), plus ``offset`` times a
    per-channel N(0, 1) (offset noise). Loading a checkpoint adopts the stored shape. For a pixel subset x
    [B, C, N, 1] the field covers the whole image (``image_size``) and is gathered at ``pixel_index`` [B, N]."""

    def __init__(self, shared: bool = True, offset: float = 0.0) -> None:
        super().__init__()
        self.shared, self.offset = shared, offset
        self.register_buffer("field", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        key = prefix + "field"
        if key in state_dict and state_dict[key].shape != self.field.shape:
            self.field = torch.empty(state_dict[key].shape, dtype=state_dict[key].dtype, device=self.field.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, generator: Optional[torch.Generator], pixel_index: Optional[Tensor] = None,
                image_size: Optional[tuple[int, int]] = None) -> Tensor:
        b, c = x.shape[:2]
        spatial = tuple(image_size) if pixel_index is not None else tuple(x.shape[2:])
        shape = (1 if self.shared else b, c) + spatial
        if tuple(self.field.shape) != shape:  # shapes are host metadata: no device read
            eps = rng.normal(shape, generator, like=x)
            if self.offset > 0:
                eps = eps + self.offset * rng.normal(shape[:2] + (1,) * len(spatial), generator, like=x)
            self.field = eps
        f = self.field.to(x)
        if f.shape[0] != b:
            f = f.expand(b, *f.shape[1:])
        if pixel_index is None:
            return f
        idx = pixel_index.to(f.device)[:, None, :].expand(b, c, pixel_index.shape[1])
        return f.flatten(2).gather(2, idx)[..., None]


def sqrt_anneal(start: float, end: float, end_step: float, step: int) -> float:
    """start + (end − start)·√(min(k/K, 1)) (Consistent3D's ``cur_steps`` schedule)."""
    frac = min(max(step / end_step, 0.0), 1.0) if end_step > 0 else 1.0
    return start + (end - start) * frac**0.5


@register("guidance", "cds")
class CDSGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = Scheduled(((0.0, 101.0), (3000.0, 51.0)))  # ω (threestudio s 100 → 50)
        weighting: common.Weighting = "uniform"
        t_min: Scheduled = scheduled(0.1)  # the σ range: t, t' ∈ [⌊T t_min⌋, ⌊T t_max⌋]
        t_max: Scheduled = scheduled(0.98)
        cur_start: float = 700.0  # t' schedule (timestep indices), annealed start → end over cur_steps steps
        cur_end: float = 100.0
        cur_steps: float = step_count(3000.0)
        cur_anneal: Literal["sqrt", "linear"] = "sqrt"
        perturb_factor: int = 200  # t − t' ∈ [end_gap, end_gap + perturb_factor)
        end_gap: int = 100
        share_noise: bool = True  # one noise field for every view (false: one per batch position)
        grad_clip: Scheduled = Scheduled(((0.0, 2.0), (3000.0, 8.0)))

    loss_name = "cds"

    def __init__(self, cfg: "CDSGuidance.Config") -> None:
        super().__init__(cfg)
        self.noise = FixedNoise(shared=cfg.share_noise)

    def pair_timesteps(self, batch: int, step: int, prior, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(t, t') [B] long, t > t' (both host-computable bounds, one device draw)."""
        c = self.cfg
        lo, hi = common.timestep_bounds(c.t_min(step), c.t_max(step), prior.schedule.num_steps)
        if c.cur_anneal == "sqrt":
            cur = sqrt_anneal(c.cur_start, c.cur_end, c.cur_steps, step)
        else:
            cur = c.cur_start + (c.cur_end - c.cur_start) * min(max(step / max(c.cur_steps, 1), 0.0), 1.0)
        t_prev = min(max(int(round(cur)), lo), max(hi - c.end_gap, lo))
        n = 1 if c.t_shared else batch
        gap = rng.integers(c.end_gap, c.end_gap + max(c.perturb_factor, 1), (n,), generator)
        t = (t_prev + gap).clamp(lo, hi)
        if c.t_shared:
            t = t.expand(batch).clone()
        return t, torch.full_like(t, t_prev)

    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        kw = self.prior_kwargs(render, cameras)
        t, t_prev = self.pair_timesteps(x.shape[0], step, prior, generator)
        noise = self.noise(x, generator, render.pixel_index, render.image_size)
        omega = self.omega(step)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps1, _ = common.guided_epsilon(prior, x_t, t, views, omega, **kw)
        x_prev = common.ddim_step(prior.schedule, x_t, eps1, t, t_prev)
        eps2, _ = common.guided_epsilon(prior, x_prev, t_prev, views, omega, **kw)
        return common.broadcast(self.weights(prior, t), x) * (eps1 - eps2)
