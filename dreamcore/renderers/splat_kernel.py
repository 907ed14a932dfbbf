"""Differentiable Gaussian splatting in pure PyTorch: EWA projection and sorted alpha compositing.

Projection (Zwicker et al. 2002, EWA splatting; as in Kerbl et al. 2023, 3DGS): a Gaussian (μ, Σ) seen by a
pinhole camera with world-to-camera rotation W and focal f has the screen-space covariance
    Σ' = J W Σ Wᵀ Jᵀ + 0.3·I,    J = ∂(u, v)/∂(x, y, z_c) = [[f/z, 0, f x/z²], [0, −f/z, −f y/z²]]
(OpenGL camera frame, z = −z_c > 0 the depth, u = W/2 + f x/z right, v = H/2 − f y/z down; x/z and y/z are
clamped to 1.3× the half field of view for J as in 3DGS; 0.3 px² is the low-pass dilation). The footprint is
cut at radius ⌈3 √λ_max(Σ')⌉ and Gaussians with depth below ``near`` are culled.

Compositing (front to back by view depth of the centre): at pixel p,
    α_i = min(0.99, o_i exp(−½ dᵀ Σ'⁻¹ d)),  d = p − μ'_i,   skipped when α_i < 1/255,
    T_i = Π_{j<i} (1 − α_j),  C = Σ_i T_i α_i c_i + T_final·bg,
stopping before the Gaussian that would bring T below 10⁻⁴ (3DGS's rules). Pixels are binned into square
tiles; each Gaussian is listed in the tiles its footprint overlaps; a pixel visits its tile's sorted list.
A no-grad pass marches each pixel's list in chunks (``chunk`` Gaussians, doubling) until its transmittance is
spent and
keeps the pairs that contribute; the differentiable pass recomputes only those.
Pixel centres are at (j + ½, i + ½) for row i, column j (dreamcore's camera convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dreamcore.packed import exclusive_segment_cumsum

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
DILATION = 0.3


@dataclass
class Projection:
    """Per-view screen-space Gaussians. means2d [B, N, 2] (u, v pixels), conics [B, N, 3] (a, b, c of Σ'⁻¹),
    depths [B, N] (view depth z), radii [B, N] (pixels; 0 = culled), cov2d [B, N, 2, 2]."""

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    cov2d: Tensor


def project(means: Tensor, cov3d: Tensor, c2w: Tensor, focal: Tensor, height: int, width: int,
            near: float = 0.01) -> Projection:
    """EWA projection of N Gaussians (means [N, 3], cov3d [N, 3, 3]) into B cameras (c2w [B, 4, 4], focal [B])."""
    w2c = torch.linalg.inv(c2w)
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    pc = torch.einsum("bij,nj->bni", rot, means) + trans[:, None, :]  # [B,N,3]
    z = -pc[..., 2]
    zs = z.clamp_min(near)
    f = focal[:, None].to(means.dtype)
    lim_x = 1.3 * (0.5 * width) / f
    lim_y = 1.3 * (0.5 * height) / f
    x = torch.minimum(torch.maximum(pc[..., 0] / zs, -lim_x), lim_x) * zs
    y = torch.minimum(torch.maximum(pc[..., 1] / zs, -lim_y), lim_y) * zs
    zero = torch.zeros_like(zs)
    jac = torch.stack([
        torch.stack([f / zs, zero, f * x / zs ** 2], -1),
        torch.stack([zero, -f / zs, -f * y / zs ** 2], -1),
    ], -2)  # [B,N,2,3]
    t = jac @ rot[:, None]  # [B,N,2,3]
    cov2d = t @ cov3d[None] @ t.transpose(-1, -2)
    eye = torch.eye(2, dtype=means.dtype, device=means.device)
    cov2d = cov2d + DILATION * eye
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    u = 0.5 * width + f * pc[..., 0] / zs
    v = 0.5 * height - f * pc[..., 1] / zs
    means2d = torch.stack([u, v], -1)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        on_screen = (u + radius > 0) & (u - radius < width) & (v + radius > 0) & (v - radius < height)
        valid = (z > near) & (det > 0) & on_screen
        radii = torch.where(valid, radius, torch.zeros_like(radius))
    return Projection(means2d, conics, z, radii, cov2d)


def pixel_centres(pixel_index: Optional[Tensor], b: int, height: int, width: int, device) -> tuple[Tensor, Tensor]:
    """Row and column [B, P] (int64) of the pixels to render: all (row-major) or ``pixel_index`` [B, P]."""
    if pixel_index is None:
        pixel_index = torch.arange(height * width, device=device).expand(b, -1)
    return pixel_index // width, pixel_index % width


def _tile_lists(proj: Projection, opacities: Tensor, tile: int, tiles_x: int,
                tiles_y: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian ids (view-major, b·N + n) sorted by (view, tile, depth), and each global tile's start and count.
    Binning uses the footprint where α can reach 1/255 — Mahalanobis m ≤ 2 ln(255 o), bounding half-width
    √(λ_max m) — when that is inside the 3σ square (pairs outside it are skipped by the α rule anyway)."""
    b, n = proj.depths.shape
    dev = proj.depths.device
    with torch.no_grad():
        a, c = proj.cov2d[..., 0, 0], proj.cov2d[..., 1, 1]
        bb = proj.cov2d[..., 0, 1]
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - (a * c - bb * bb)).clamp_min(0.1))
        level = 2.0 * torch.log((255.0 * opacities.detach()).clamp_min(1e-6)).reshape(1, n)
        reach = torch.where(level > 0, torch.sqrt(lam * level.clamp_min(0.0)), torch.zeros_like(lam))
        radii = torch.where(level > 0, torch.minimum(proj.radii, torch.ceil(reach)), torch.zeros_like(lam))
        radii = torch.where(proj.radii > 0, radii, torch.zeros_like(radii)).reshape(-1)
        vis = (radii > 0).nonzero(as_tuple=True)[0]
        vis = vis[torch.argsort(proj.depths.detach().reshape(-1)[vis], stable=True)]  # front to back
        m = proj.means2d.detach().reshape(-1, 2)[vis]
        r = radii[vis]
        x0 = ((m[:, 0] - r) / tile).floor().clamp(0, tiles_x - 1).long()
        x1 = ((m[:, 0] + r) / tile).floor().clamp(0, tiles_x - 1).long()
        y0 = ((m[:, 1] - r) / tile).floor().clamp(0, tiles_y - 1).long()
        y1 = ((m[:, 1] + r) / tile).floor().clamp(0, tiles_y - 1).long()
        nx = x1 - x0 + 1
        cnt = nx * (y1 - y0 + 1)
        n_tiles = tiles_x * tiles_y
        first = (vis // n) * n_tiles + y0 * tiles_x + x0  # each Gaussian's top-left tile (global id)
        k = torch.repeat_interleave(torch.arange(len(vis), device=dev), cnt)  # pairs, in depth order
        local = torch.arange(len(k), device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        fk = torch.stack([first, nx], 1)[k]
        tile_id = fk[:, 0] + (local // fk[:, 1]) * tiles_x + local % fk[:, 1]
        order = torch.sort(tile_id, stable=True).indices  # by tile; depth order kept within a tile
        gauss = vis[k[order]]
        count = torch.bincount(tile_id, minlength=b * n_tiles)
        start = torch.cumsum(count, 0) - count
    return gauss, start, count


def rasterize(proj: Projection, opacities: Tensor, features: Tensor, height: int, width: int,
              pixel_index: Optional[Tensor] = None, tile: int = 16, chunk: int = 32) -> tuple[Tensor, Tensor]:
    """Composite per-view features [B, N, C] (colour, depth, normals…) of Gaussians with opacities [N]
    → (Σ_i T_i α_i f_i [B, P, C], accumulated alpha [B, P]) for all pixels (P = H·W, row-major) or ``pixel_index``."""
    b, n = proj.depths.shape
    dev = features.device
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    gauss, t_start, t_count = _tile_lists(proj, opacities, tile, tiles_x, tiles_y)
    rows, cols = pixel_centres(pixel_index, b, height, width, dev)
    p = rows.shape[1]
    view = torch.arange(b, device=dev)[:, None].expand(b, p)
    pix_tile = (view * (tiles_x * tiles_y) + (rows // tile) * tiles_x + cols // tile).reshape(-1)
    pcount = t_count[pix_tile]
    pstart = t_start[pix_tile]
    pix = torch.stack([cols.reshape(-1), rows.reshape(-1)], -1).to(features.dtype) + 0.5  # [B·P, 2]
    opac = opacities.reshape(1, n, 1).expand(b, n, 1).reshape(-1, 1)
    packed = torch.cat([proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3), opac], 1)  # [B·N, 6]

    def alphas(pid_: Tensor, gid_: Tensor, table: Tensor) -> Tensor:
        g = table.index_select(0, gid_)  # one gather per pair: (u, v, a, b, c, o)
        d = pix.index_select(0, pid_) - g[:, :2]
        dx, dy = d[:, 0], d[:, 1]
        power = -0.5 * (g[:, 2] * dx * dx + g[:, 4] * dy * dy) - g[:, 3] * dx * dy
        alpha = (g[:, 5] * torch.exp(power.clamp(max=0.0))).clamp(max=ALPHA_MAX)
        return torch.where(power > 0, torch.zeros_like(alpha), alpha)

    with torch.no_grad():  # which pairs contribute (α ≥ 1/255, T after them ≥ 10⁻⁴), marching `chunk` at a time
        table = packed.detach()
        log_t = torch.zeros(b * p, dtype=torch.float64, device=dev)
        stop = math.log(T_MIN)
        kept_pid, kept_gid = [], []
        k = 0
        while True:
            live = ((pcount > k) & (log_t >= stop)).nonzero(as_tuple=True)[0]
            if len(live) == 0:
                break
            m = (pcount[live] - k).clamp(max=chunk)
            pid = torch.repeat_interleave(live, m)
            local = k + torch.arange(len(pid), device=dev) - (torch.cumsum(m, 0) - m).repeat_interleave(m)
            gid = gauss[pstart[pid] + local]
            a = alphas(pid, gid, table)
            ok = a >= ALPHA_MIN
            pid, gid, a = pid[ok], gid[ok], a[ok]
            la = torch.log1p(-a).double()
            after = log_t[pid] + exclusive_segment_cumsum(la, pid, b * p) + la
            ok = after >= stop
            kept_pid.append(pid[ok])
            kept_gid.append(gid[ok])
            log_t.index_add_(0, pid, la)
            k += chunk
            chunk = min(2 * chunk, 4096)  # pixels still open after many Gaussians are mostly empty: go faster
        pid = torch.cat(kept_pid) if kept_pid else torch.zeros(0, dtype=torch.long, device=dev)
        gid = torch.cat(kept_gid) if kept_gid else torch.zeros(0, dtype=torch.long, device=dev)
        order = torch.sort(pid, stable=True).indices  # pixel-major, depth order kept within each pixel
        pid, gid = pid[order], gid[order]
    alpha = alphas(pid, gid, packed)
    trans = torch.exp(exclusive_segment_cumsum(torch.log1p(-alpha), pid, b * p))
    w = trans * alpha
    feats = features.reshape(b * n, -1).index_select(0, gid)
    out = features.new_zeros(b * p, features.shape[-1]).index_add(0, pid, w[:, None] * feats)
    acc = features.new_zeros(b * p).index_add(0, pid, w)
    return out.reshape(b, p, -1), acc.reshape(b, p)
