"""Scans over packed ray segments: samples of many rays in one flat array, sorted by ray (the layout of the
volume renderer, the splat kernel and the Gaussians' bake rays)."""

from __future__ import annotations

from torch import Tensor


def exclusive_segment_cumsum(values: Tensor, ray_index: Tensor, n_rays: int) -> Tensor:
    """Σ_{j<i, same ray} values_j for packed samples sorted by ray (float64 accumulation)."""
    v = values.double()
    total = v.cumsum(0)
    counts = ray_index.bincount(minlength=n_rays)
    first = counts.cumsum(0) - counts  # index of each ray's first sample
    before_ray = (total - v)[first.clamp(max=max(len(v) - 1, 0))] if len(v) else v.new_zeros(n_rays)
    return (total - v - before_ray[ray_index]).to(values.dtype)
