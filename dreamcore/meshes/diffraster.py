"""Differentiable triangle rasterization in pure PyTorch: barycentrics with gradients and silhouette antialiasing.

Visibility is discrete (the z-buffer of :func:`dreamcore.meshes.raster.rasterize` picks the face of each pixel).
Gradients reach the vertex positions by two paths, as in nvdiffrast (Laine et al. 2020, "Modular Primitives
for High-Performance Differentiable Rendering"):

1. **Interior**: for the winning face of a pixel centre ``p`` (homogeneous pixel coordinates), the
   perspective-correct barycentrics are recomputed differentiably from the clip coordinates,
   ``e = adj(M) p / det M``, ``b = e / Σe``, ``w = 1 / Σe`` with ``M = [V_0 V_1 V_2]``, ``V = (X, Y, w)``
   (see ``raster.py``). Attributes interpolated with ``b`` (positions, normals, UVs) carry gradients.
2. **Silhouettes** (:func:`antialias`): for each pair of horizontally or vertically adjacent pixels ``a, b``
   seen through different faces, the nearer face ``f`` (the one drawn at ``a``) is tested for a
   *silhouette* edge crossing the segment ``a → b`` (a boundary edge, or one whose neighbour face has the
   opposite screen-space winding). With ``t ∈ [0, 1]`` the crossing point's fraction along ``a → b``, the
   pixel the edge falls into is blended with its neighbour by the covered length: ``c_a += (½ − t)(c_b − c_a)``
   if ``t < ½``, else ``c_b += (t − ½)(c_a − c_b)``. ``t`` is a differentiable function of the projected
   vertices, so colour and coverage (alpha) differences at silhouettes move the geometry. Each edge is
   handled along the pixel axis closer to its normal (horizontal pairs for steep edges, vertical for flat
   ones) so a straight edge's coverage is counted once per row or column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dreamcore.meshes.raster import Fragments, rasterize

_NEXT, _PREV = [1, 2, 0], [2, 0, 1]


@dataclass
class EdgeTopology:
    """Face adjacency across edges: ``neighbor[f, k]`` is the face sharing edge k of face f (edge k joins
    corners k and k+1), −1 on a boundary or non-manifold edge. Computed once per mesh topology."""

    neighbor: Tensor  # [F, 3] int64

    @staticmethod
    def of(faces: Tensor, n_vertices: Optional[int] = None) -> "EdgeTopology":
        """``n_vertices`` (any bound above the largest index) spares reading ``faces.max()`` back."""
        n_faces = faces.shape[0]
        if n_faces == 0:
            return EdgeTopology(torch.zeros(0, 3, dtype=torch.int64, device=faces.device))
        a, b = faces, faces[:, _NEXT]
        lo, hi = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
        key = lo * (n_vertices if n_vertices is not None else int(faces.max()) + 1) + hi  # [3F]: half-edge k of face f at 3f + k
        _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)  # half-edges grouped by edge
        start = torch.cumsum(counts, 0) - counts
        pair = start[counts == 2]  # manifold edges: exactly two half-edges
        he_a, he_b = order[pair], order[pair + 1]
        neighbor = torch.full((3 * n_faces,), -1, dtype=torch.int64, device=faces.device)
        neighbor[he_a] = torch.div(he_b, 3, rounding_mode="floor")
        neighbor[he_b] = torch.div(he_a, 3, rounding_mode="floor")
        return EdgeTopology(neighbor.view(n_faces, 3))


def _homogeneous(tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """[K, 3, 4] clip triangles -> homogeneous pixel coordinates (X, Y, w), each [K, 3]."""
    x, y, w = tri[..., 0], tri[..., 1], tri[..., 3]
    return (x + w) * (0.5 * width), (w - y) * (0.5 * height), w


def pixel_barycentrics(clip: Tensor, faces: Tensor, frags: Fragments) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """Differentiable perspective-correct barycentrics of the visible faces.

    clip [B, V, 4] (with gradients), faces [F, 3], frags from :func:`rasterize` of the same triangles.
    Returns (idx, face_id [K], bary [K, 3], w [K]): ``idx`` = (view, row, col) index tensors of the K covered
    pixels, ``w`` the clip w (view-axis distance) of the surface point. Computed in float64, returned in
    ``clip``'s dtype.
    """
    n_views, height, width = frags.face_id.shape
    idx = (frags.face_id >= 0).nonzero(as_tuple=True)
    fid = frags.face_id[idx]
    tri = clip[idx[0][:, None], faces[fid]].double()  # [K, 3, 4]
    xh, yh, wh = _homogeneous(tri, height, width)
    xj, yj, wj = xh[:, _NEXT], yh[:, _NEXT], wh[:, _NEXT]
    xk, yk, wk = xh[:, _PREV], yh[:, _PREV], wh[:, _PREV]
    a, b, c = yj * wk - wj * yk, wj * xk - xj * wk, xj * yk - yj * xk
    px = (idx[2].to(tri.dtype) + 0.5)[:, None]
    py = (idx[1].to(tri.dtype) + 0.5)[:, None]
    e = a * px + b * py + c  # ∝ M⁻¹ p (the common factor 1/det cancels in b; kept for w)
    det = xh[:, 0] * a[:, 0] + yh[:, 0] * b[:, 0] + wh[:, 0] * c[:, 0]
    total = e.sum(1)
    bary = e / total[:, None]
    w = det / total
    return idx, fid, bary.to(clip.dtype), w.to(clip.dtype)


def interpolate_at(attr: Tensor, faces: Tensor, fid: Tensor, bary: Tensor) -> Tensor:
    """``Σ_k b_k attr[face[k]]`` at K fragments: attr [V, C], fid [K], bary [K, 3] -> [K, C] (differentiable)."""
    return (attr[faces[fid]] * bary[..., None]).sum(1)


def _screen(clip: Tensor, height: int, width: int) -> Tensor:
    """[B, V, 4] clip -> [B, V, 2] pixel coordinates (column, row), with pixel centres at k + ½."""
    w = clip[..., 3:4]
    w = torch.where(w.abs() < 1e-8, torch.full_like(w, 1e-8), w)
    x = (clip[..., 0:1] / w + 1.0) * (0.5 * width)
    y = (1.0 - clip[..., 1:2] / w) * (0.5 * height)
    return torch.cat([x, y], dim=-1)


def antialias(color: Tensor, clip: Tensor, faces: Tensor, frags: Fragments, topology: EdgeTopology) -> Tensor:
    """Blend colours across silhouette edges by their analytic pixel coverage (see the module docstring).

    color [B, H, W, C] (rendered from ``frags``, e.g. RGB and alpha), clip [B, V, 4] (with gradients), faces
    [F, 3], topology of ``faces``. Returns the antialiased [B, H, W, C], differentiable with respect to
    ``color`` and ``clip``.
    """
    n_views, height, width = frags.face_id.shape
    n_ch = color.shape[-1]
    flat = color.reshape(-1, n_ch)
    screen = _screen(clip, height, width)  # [B, V, 2]
    front = (clip[..., 3] > 1e-6)  # [B, V] vertices in front of the camera
    depth = frags.depth
    fid = frags.face_id
    deltas = []
    targets = []
    for axis in (0, 1):  # 0: horizontal pairs (j, j+1); 1: vertical pairs (i, i+1)
        if axis == 0:
            fa, fb = fid[:, :, :-1], fid[:, :, 1:]
            da, db = depth[:, :, :-1], depth[:, :, 1:]
        else:
            fa, fb = fid[:, :-1, :], fid[:, 1:, :]
            da, db = depth[:, :-1, :], depth[:, 1:, :]
        cand = (fa != fb).nonzero(as_tuple=True)
        if cand[0].numel() == 0:
            continue
        v, i, j = cand
        f1, f2 = fa[cand], fb[cand]
        # the occluding face: the only one, or the nearer (drawn at its own pixel)
        first = (f2 < 0) | ((f1 >= 0) & (da[cand] <= db[cand]))
        face = torch.where(first, f1, f2)
        pa_i, pa_j = i, j
        pb_i, pb_j = (i, j + 1) if axis == 0 else (i + 1, j)
        ai = torch.where(first, pa_i, pb_i)
        aj = torch.where(first, pa_j, pb_j)
        bi = torch.where(first, pb_i, pa_i)
        bj = torch.where(first, pb_j, pa_j)
        corners = faces[face]  # [P, 3]
        ok = front[v[:, None], corners].all(1)
        s = screen[v[:, None], corners]  # [P, 3, 2] (differentiable)
        p0, p1 = s, s[:, _NEXT]
        d = p1 - p0  # edge k from corner k to k+1
        area = (s[:, 1, 0] - s[:, 0, 0]) * (s[:, 2, 1] - s[:, 0, 1]) - (s[:, 1, 1] - s[:, 0, 1]) * (s[:, 2, 0] - s[:, 0, 0])
        sign = torch.sign(area).detach()

        def edge_fn(pi: Tensor, pj: Tensor) -> Tensor:  # [P, 3], positive inside
            q = torch.stack([pj.to(s.dtype) + 0.5, pi.to(s.dtype) + 0.5], dim=-1)[:, None, :]
            r = q - p0
            return sign[:, None] * (d[..., 0] * r[..., 1] - d[..., 1] * r[..., 0])

        ea, eb = edge_fn(ai, aj), edge_fn(bi, bj)
        with torch.no_grad():
            exits = eb < 0
            t_all = ea / (ea - eb).where(exits, torch.ones_like(eb))
            t_all = torch.where(exits, t_all, torch.full_like(t_all, 2.0))
            k = t_all.argmin(1)  # the first edge crossed along a → b
            rows = torch.arange(k.shape[0], device=k.device)
            crossed = exits[rows, k]
            # silhouette: boundary edge, or the neighbour across it is wound the other way on screen
            nb = topology.neighbor[face, k]
            nb_s = screen[v[:, None], faces[nb.clamp_min(0)]]
            nb_area = (nb_s[:, 1, 0] - nb_s[:, 0, 0]) * (nb_s[:, 2, 1] - nb_s[:, 0, 1]) - \
                (nb_s[:, 1, 1] - nb_s[:, 0, 1]) * (nb_s[:, 2, 0] - nb_s[:, 0, 0])
            silhouette = (nb < 0) | (torch.sign(nb_area) != sign)
            dk = d[rows, k].detach().abs()
            steep = dk[:, 1] >= dk[:, 0]  # edge closer to vertical: handled by horizontal pairs
            along = steep if axis == 0 else ~steep
            use = ok & crossed & silhouette & along & (sign != 0)
        sel = use.nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        ka = ea[sel, k[sel]]
        kb = eb[sel, k[sel]]
        t = ka / (ka - kb)  # crossing fraction along a → b, differentiable
        flat_a = (v[sel] * height + ai[sel]) * width + aj[sel]
        flat_b = (v[sel] * height + bi[sel]) * width + bj[sel]
        ca, cb = flat[flat_a], flat[flat_b]
        into_a = (t < 0.5).detach()
        amount = torch.where(into_a, 0.5 - t, t - 0.5)[:, None]
        delta = torch.where(into_a[:, None], cb - ca, ca - cb) * amount
        targets.append(torch.where(into_a, flat_a, flat_b))
        deltas.append(delta)
    if not deltas:
        return color
    out = flat.index_add(0, torch.cat(targets), torch.cat(deltas).to(flat.dtype))
    return out.view_as(color)


def rasterize_differentiable(clip: Tensor, faces: Tensor, height: int, width: int
                             ) -> tuple[Fragments, tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """Rasterize (no grad) then recompute the visible faces' barycentrics with gradients.

    Returns (frags, idx, face_id [K], bary [K, 3], w [K]) as in :func:`pixel_barycentrics`."""
    frags = rasterize(clip.detach(), faces, height, width)
    idx, fid, bary, w = pixel_barycentrics(clip, faces, frags)
    return frags, idx, fid, bary, w
