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

from dreamcore.packed import exclusive_segment_cumsum
from dreamcore.representations.gaussian_shape import quat_to_rotmat


def _cell_index(x: Tensor, lo: float, h: float, g: int) -> Tensor:
    return ((x - lo) / h).floor().long().clamp(0, g - 1)


class _CellGrid:
    """Gaussians listed per cell of a uniform grid over [−bound, bound]³ (cells sized to the typical 3σ footprint)."""

    def __init__(self, gaussians, device) -> None:
        self.mu = gaussians.means.detach().to(device)
        n = self.mu.shape[0]
        scales = gaussians.scales.detach().to(device)
        rot = quat_to_rotmat(gaussians.quats.detach().to(device))
        self.inv_cov = (rot / scales[:, None, :] ** 2) @ rot.transpose(1, 2)  # R S⁻² Rᵀ
        self.opacity = gaussians.opacity.detach().to(device)
        radius = 3.0 * scales.amax(dim=1)
        b = float(gaussians.bound)
        g = int(min(64, max(4, 2 * b / max(2.0 * float(radius.median()), 1e-6)))) if n else 4
        self.b, self.g, self.h = b, g, 2 * b / g
        lo_c = _cell_index(self.mu - radius[:, None], -b, self.h, g)
        hi_c = _cell_index(self.mu + radius[:, None], -b, self.h, g)
        ext = hi_c - lo_c + 1  # [N, 3]
        count = ext.prod(dim=1)
        gid = torch.repeat_interleave(torch.arange(n, device=device), count)
        local = torch.arange(len(gid), device=device) - (torch.cumsum(count, 0) - count)[gid]
        e = ext[gid]
        cx = lo_c[gid, 0] + local // (e[:, 1] * e[:, 2])
        cy = lo_c[gid, 1] + (local // e[:, 2]) % e[:, 1]
        cz = lo_c[gid, 2] + local % e[:, 2]
        cell = (cx * g + cy) * g + cz
        self.cell_gauss = gid[torch.argsort(cell, stable=True)]
        self.cell_count = torch.bincount(cell, minlength=g ** 3)
        self.cell_start = torch.cumsum(self.cell_count, 0) - self.cell_count

    def chunks(self, points: Tensor, max_pairs: int):
        """Yield (point ids [K], Gaussian ids [K]) pairs of each point with the Gaussians of its cell, in chunks."""
        dev = points.device
        p = points.shape[0]
        pc = _cell_index(points, -self.b, self.h, self.g)
        pcell = (pc[:, 0] * self.g + pc[:, 1]) * self.g + pc[:, 2]
        pcount = self.cell_count[pcell]
        ends = torch.cumsum(pcount, 0)
        start = 0
        while start < p:
            base = int(ends[start - 1]) if start > 0 else 0
            stop = max(int(torch.searchsorted(ends, base + max_pairs, right=True)), start + 1)
            idx = torch.arange(start, min(stop, p), device=dev)
            c = pcount[idx]
            pid = torch.repeat_interleave(idx, c)
            loc = torch.arange(len(pid), device=dev) - (torch.cumsum(c, 0) - c).repeat_interleave(c)
            yield pid, self.cell_gauss[self.cell_start[pcell[pid]] + loc]
            start = int(idx[-1]) + 1


@torch.no_grad()
def kernel_sum(gaussians, points: Tensor, values: Optional[Tensor] = None,
               max_pairs: int = 1 << 22) -> tuple[Tensor, Optional[Tensor]]:
    """(D(x) [P], Σ_i o_i K_i(x) v_i [P, C] or None) at ``points`` [P, 3] for per-Gaussian ``values`` [N, C]."""
    dev = points.device
    p = points.shape[0]
    dens = points.new_zeros(p)
    acc = points.new_zeros(p, values.shape[1]) if values is not None else None
    if len(gaussians) == 0 or p == 0:
        return dens, acc
    grid = _CellGrid(gaussians, dev)
    for pid, gi in grid.chunks(points, max_pairs):
        d = points[pid] - grid.mu[gi]
        m = torch.einsum("pi,pij,pj->p", d, grid.inv_cov[gi], d)
        k = torch.where(m <= 9.0, grid.opacity[gi] * torch.exp(-0.5 * m), torch.zeros_like(m))
        dens.index_add_(0, pid, k)
        if acc is not None:
            acc.index_add_(0, pid, k[:, None] * values.to(dev)[gi])
    return dens, acc


@torch.no_grad()
def ray_composite(gaussians, points: Tensor, normals: Tensor, colors: Tensor, offset: float,
                  max_pairs: int = 1 << 21) -> tuple[Tensor, Tensor]:
    """What a short ray sees, cast inward along −n from p + offset·n over 2·offset: (Σ w_i c_i [P, 3], Σ w_i [P]).

    Each Gaussian enters at its peak along the ray (t* = (μ − o)ᵀΣ⁻¹d / dᵀΣ⁻¹d, minimum Mahalanobis distance
    m = ‖μ − o‖²_Σ⁻¹ − t*² dᵀΣ⁻¹d) with α = min(0.99, o_i e^{−m/2}), composited front to back by t* with the
    rasterizer's rules (α < 1/255 skipped). Candidates are the Gaussians listed in p's cell."""
    dev = points.device
    p = points.shape[0]
    rgb, acc = points.new_zeros(p, 3), points.new_zeros(p)
    if len(gaussians) == 0 or p == 0:
        return rgb, acc
    grid = _CellGrid(gaussians, dev)
    origin = points + offset * normals
    for pid, gi in grid.chunks(points, max_pairs):
        d = -normals[pid]
        diff = grid.mu[gi] - origin[pid]
        a_d = torch.einsum("pij,pj->pi", grid.inv_cov[gi], d)
        dad = (d * a_d).sum(-1).clamp_min(1e-12)
        t = (diff * a_d).sum(-1) / dad
        m = torch.einsum("pi,pij,pj->p", diff, grid.inv_cov[gi], diff) - t * t * dad
        alpha = (grid.opacity[gi] * torch.exp(-0.5 * m.clamp_min(0.0))).clamp(max=0.99)
        ok = (t >= 0) & (t <= 2 * offset) & (m <= 9.0) & (alpha >= 1.0 / 255.0)
        pid, gi, t, alpha = pid[ok], gi[ok], t[ok], alpha[ok]
        order = torch.argsort(t, stable=True)
        order = order[torch.argsort(pid[order], stable=True)]  # by point, then by t
        pid, gi, alpha = pid[order], gi[order], alpha[order]
        trans = torch.exp(exclusive_segment_cumsum(torch.log1p(-alpha), pid, p))
        w = trans * alpha
        rgb.index_add_(0, pid, w[:, None] * colors.to(dev)[gi])
        acc.index_add_(0, pid, w)
    return rgb, acc
