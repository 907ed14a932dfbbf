"""Adaptive density control of 3D Gaussians (Kerbl et al. 2023, §5.2) and the optimizer surgery it needs.

Statistics, accumulated after every step while densifying: the mean norm of each Gaussian's view-space
positional gradient ‖∂L/∂μ'‖ over the views that saw it (pixel gradients scaled by (W/2, H/2), i.e. NDC units as
in 3DGS), and its largest screen radius. Every ``densify_every`` steps: Gaussians with mean gradient ≥
``grad_threshold`` are *cloned* when small (max scale ≤ ``percent_dense``·extent) or *split* in two when large
(samples from N(μ, Σ), scales ÷ 1.6, the original removed); then Gaussians with opacity < ``min_opacity``, or
larger than ``max_screen_radius`` pixels / ``max_world_scale``·extent, are pruned. Every ``opacity_reset_every``
steps opacities are clamped to ≤ ``reset_opacity``.

The parameters keep their identity (``param.data`` is replaced), so the optimizer's groups stay valid; Adam's
moments are edited alongside: rows of kept Gaussians are kept as they were, new rows start at zero, removed
rows go. Gradients are dropped (their shape is stale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dreamcore.representations.gaussian_shape import quat_to_rotmat
from dreamcore import rng
from dreamcore.schedule import step_count

MOMENTS = ("exp_avg", "exp_avg_sq")


# -- optimizer surgery -------------------------------------------------------------------------------------------
def _state(optimizer: Optional[torch.optim.Optimizer], param: Tensor) -> dict:
    if optimizer is None:
        return {}
    return optimizer.state.get(param, {})


@torch.no_grad()
def select_rows(param: Tensor, keep: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Keep the rows ``keep`` (bool [N] or indices) of ``param`` and of its Adam moments."""
    param.data = param.data[keep]
    st = _state(optimizer, param)
    for k in MOMENTS:
        if k in st:
            st[k] = st[k][keep]
    param.grad = None


@torch.no_grad()
def append_rows(param: Tensor, rows: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Append ``rows`` to ``param``; their Adam moments start at zero."""
    param.data = torch.cat([param.data, rows.to(param.dtype)], 0)
    st = _state(optimizer, param)
    for k in MOMENTS:
        if k in st:
            st[k] = torch.cat([st[k], torch.zeros_like(rows, dtype=st[k].dtype)], 0)
    param.grad = None


@torch.no_grad()
def reset_moments(param: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    st = _state(optimizer, param)
    for k in MOMENTS:
        if k in st:
            st[k].zero_()


# -- density control ---------------------------------------------------------------------------------------------
@dataclass
class DensifyConfig:
    enabled: bool = True
    start: int = step_count(100)  # first step that densifies
    stop: int = step_count(1000)  # no densification from this step on (pruning stops too)
    every: int = step_count(100)
    grad_threshold: float = 2e-4  # mean NDC-space positional gradient norm
    percent_dense: float = 0.01  # clone below, split above this max scale (× extent)
    extent: float = 1.0  # scene extent (the object's radius)
    min_opacity: float = 0.005
    max_screen_radius: float = 0.0  # pixels; 0 = off
    max_world_scale: float = 0.1  # × extent
    opacity_reset_every: int = step_count(0)  # 0 = never
    reset_opacity: float = 0.01
    max_gaussians: int = 100000


@torch.no_grad()
def accumulate(gaussians, means2d: Tensor, radii: Tensor, width: int, height: int) -> None:
    """Add this step's view-space gradient norms [B, N, 2] → stats, for Gaussians with radius > 0."""
    if means2d.grad is None:
        return
    if radii.dim() == 3:  # gsplat ≥ 1.5 returns per-axis radii
        radii = radii.amax(-1)
    grad = means2d.grad * torch.tensor([0.5 * width, 0.5 * height], dtype=means2d.dtype, device=means2d.device)
    vis = radii > 0
    norm = grad.norm(dim=-1) * vis
    gaussians.grad_accum += norm.sum(0).to(gaussians.grad_accum.dtype)
    gaussians.grad_count += vis.sum(0).to(gaussians.grad_count.dtype)
    gaussians.max_radii.copy_(torch.maximum(gaussians.max_radii, radii.amax(0).to(gaussians.max_radii.dtype)))


@torch.no_grad()
def densify_and_prune(gaussians, cfg: DensifyConfig, optimizer: Optional[torch.optim.Optimizer],
                      generator: torch.Generator, prune_screen: bool,
                      editable: Optional[Tensor] = None) -> dict[str, int]:
    """Clone, split, then prune; returns the counts. Statistics are reset. ``editable`` (bool [N]): only those
    Gaussians are cloned, split or pruned (an edit's region; the others stay as they are); None: all."""
    params = gaussians.parameters_by_name()
    n = len(gaussians)
    grads = gaussians.grad_accum / gaussians.grad_count.clamp_min(1)
    max_scale = gaussians.scales.amax(dim=1)
    big = max_scale > cfg.percent_dense * cfg.extent
    candidates = grads >= cfg.grad_threshold
    if editable is not None:
        candidates &= editable
    room = max(cfg.max_gaussians - n, 0)
    if int(candidates.sum()) > room:  # keep the largest gradients within the budget (a split adds one net)
        order = torch.argsort(grads, descending=True, stable=True)
        limited = torch.zeros_like(candidates)
        limited[order[:room]] = True
        candidates &= limited
    clone = candidates & ~big
    split = candidates & big
    # clones: exact copies
    new = {name: p.data[clone] for name, p in params.items()}
    # splits: two samples from each Gaussian, scales / 1.6
    idx = split.nonzero(as_tuple=True)[0].repeat(2)
    if len(idx):
        std = gaussians.scales[idx]
        sample = rng.normal(std.shape, generator, like=std) * std
        pos = (quat_to_rotmat(gaussians.quats[idx]) @ sample[..., None])[..., 0] + gaussians.means[idx]
        split_rows = {name: p.data[idx] for name, p in params.items()}
        split_rows["means"] = pos
        split_rows["log_scales"] = gaussians.log_scales[idx] - math.log(1.6)
        for name in new:
            new[name] = torch.cat([new[name], split_rows[name]], 0)
    n_new = int(clone.sum()) + len(idx)
    if n_new:
        for name, p in params.items():
            append_rows(p, new[name], optimizer)
    # prune: the split originals, transparent, and too large Gaussians
    prune = torch.cat([split, torch.zeros(n_new, dtype=torch.bool, device=split.device)])
    prune |= gaussians.opacity < cfg.min_opacity
    scales = gaussians.scales.amax(dim=1)
    if cfg.max_world_scale > 0:
        prune |= scales > cfg.max_world_scale * cfg.extent
    if prune_screen and cfg.max_screen_radius > 0:
        radii = torch.cat([gaussians.max_radii, gaussians.max_radii.new_zeros(n_new)])
        prune |= radii > cfg.max_screen_radius
    if editable is not None:  # new Gaussians come from editable ones
        prune &= torch.cat([editable, editable.new_ones(n_new)])
    if bool(prune.all()):  # never remove the last Gaussian
        prune[torch.argmax(gaussians.opacity)] = False
    keep = ~prune
    if not bool(keep.all()):
        for p in params.values():
            select_rows(p, keep, optimizer)
    gaussians.reset_stats()
    return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum()),
            "total": len(gaussians)}


@torch.no_grad()
def reset_opacity(gaussians, value: float, optimizer: Optional[torch.optim.Optimizer],
                  editable: Optional[Tensor] = None) -> None:
    """Clamp opacities to ≤ ``value`` and zero their Adam moments (3DGS's opacity reset); with ``editable``
    (bool [N]) only those Gaussians' (opacity and moments of the others kept)."""
    cap = math.log(value / (1 - value))
    logits = gaussians.opacity_logits
    if editable is None:
        logits.data.clamp_(max=cap)
        reset_moments(logits, optimizer)
        return
    logits.data.copy_(torch.where(editable, logits.data.clamp(max=cap), logits.data))
    st = _state(optimizer, logits)
    for k in MOMENTS:
        if k in st:
            st[k].masked_fill_(editable, 0.0)
