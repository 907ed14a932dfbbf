"""The Gaussians as a 3D field, for mesh export and colour queries.

D(x) = Σ_i o_i exp(−½ (x − μ_i)ᵀ Σ_i⁻¹ (x − μ_i)), each kernel cut at Mahalanobis distance 3 (as the
rasterizer cuts footprints at 3σ); the field DreamGaussian extracts its mesh from (Tang et al. 2023, §3.3).
Queries use a uniform cell grid: each Gaussian is listed in the cells its 3σ box overlaps, each query point
visits only the Gaussians of its cell.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _cell_index(x: Tensor, lo: float, h: float, g: int) -> Tensor:
    return ((x - lo) / h).floor().long().clamp(0, g - 1)


@torch.no_grad()
def kernel_sum(gaussians, points: Tensor, values: Optional[Tensor] = None,
               max_pairs: int = 1 << 22) -> tuple[Tensor, Optional[Tensor]]:
    """(D(x) [P], Σ_i o_i K_i(x) v_i [P, C] or None) at ``points`` [P, 3] for per-Gaussian ``values`` [N, C]."""
    dev = points.device
    mu = gaussians.means.detach().to(dev)
    n = mu.shape[0]
    p = points.shape[0]
    dens = points.new_zeros(p)
    acc = points.new_zeros(p, values.shape[1]) if values is not None else None
    if n == 0 or p == 0:
        return dens, acc
    from dreamcore.representations.gaussians import quat_to_rotmat

    scales = gaussians.scales.detach().to(dev)
    rot = quat_to_rotmat(gaussians.quats.detach().to(dev))
    inv_cov = (rot / scales[:, None, :] ** 2) @ rot.transpose(1, 2)  # R S⁻² Rᵀ
    opacity = gaussians.opacity.detach().to(dev)
    radius = 3.0 * scales.amax(dim=1)
    # cell grid sized to the typical footprint
    b = float(gaussians.bound)
    g = int(min(64, max(4, 2 * b / max(2.0 * float(radius.median()), 1e-6))))
    h = 2 * b / g
    lo_c = _cell_index(mu - radius[:, None], -b, h, g)
    hi_c = _cell_index(mu + radius[:, None], -b, h, g)
    ext = hi_c - lo_c + 1  # [N, 3]
    count = ext.prod(dim=1)
    gid = torch.repeat_interleave(torch.arange(n, device=dev), count)
    local = torch.arange(len(gid), device=dev) - (torch.cumsum(count, 0) - count)[gid]
    e = ext[gid]
    cx = lo_c[gid, 0] + local // (e[:, 1] * e[:, 2])
    cy = lo_c[gid, 1] + (local // e[:, 2]) % e[:, 1]
    cz = lo_c[gid, 2] + local % e[:, 2]
    cell = (cx * g + cy) * g + cz
    order = torch.argsort(cell, stable=True)
    cell_gauss = gid[order]
    cell_count = torch.bincount(cell, minlength=g ** 3)
    cell_start = torch.cumsum(cell_count, 0) - cell_count

    pc = _cell_index(points, -b, h, g)
    pcell = (pc[:, 0] * g + pc[:, 1]) * g + pc[:, 2]
    pcount = cell_count[pcell]
    ends = torch.cumsum(pcount, 0)
    start = 0
    while start < p:
        base = int(ends[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(ends, base + max_pairs, right=True))
        stop = max(stop, start + 1)
        idx = torch.arange(start, min(stop, p), device=dev)
        c = pcount[idx]
        pid = torch.repeat_interleave(idx, c)
        if len(pid):
            loc = torch.arange(len(pid), device=dev) - (torch.cumsum(c, 0) - c).repeat_interleave(c)
            gi = cell_gauss[cell_start[pcell[pid]] + loc]
            d = points[pid] - mu[gi]
            m = torch.einsum("pi,pij,pj->p", d, inv_cov[gi], d)
            k = torch.where(m <= 9.0, opacity[gi] * torch.exp(-0.5 * m), torch.zeros_like(m))
            dens.index_add_(0, pid, k)
            if acc is not None:
                acc.index_add_(0, pid, k[:, None] * values.to(dev)[gi])
        start = int(idx[-1]) + 1
    return dens, acc
