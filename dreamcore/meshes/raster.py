"""A pure-PyTorch reference triangle rasterizer (z-buffer, perspective-correct barycentrics).

Method (vectorized over all faces of all views at once):

1. Each triangle's clip-space vertices ``(x, y, z, w)`` are mapped to homogeneous pixel coordinates
   ``V = ((x + w)·W/2, (w − y)·H/2, w)``, so a pixel centre ``p = (j + ½, i + ½, 1)`` satisfies
   ``V_P ∝ p`` for the surface point P it sees.
2. Homogeneous (Olano–Greer) edge functions: with ``M = [V_0 V_1 V_2]``, ``e = M⁻¹ p`` gives the
   perspective-correct barycentrics ``b = e / Σe`` and the clip ``w = 1 / Σe`` of the point under ``p``.
   The pixel is inside iff every ``e_i ≥ 0`` (which also implies ``w > 0``), for either winding, and
   also for triangles that cross the camera plane — no geometric clipping is needed.
   The interpolated NDC depth is affine in screen space: ``z_ndc = Σ e_i z_i``.
3. Candidates: every pixel centre in a face's screen bounding box (the box of the triangle clipped to
   the near plane ``z + w ≥ 0``), enumerated with ``repeat_interleave`` in chunks of about 2^20 pairs
   (big boxes split into bands of rows). A cheap float32 box test first drops the faces of a dense mesh
   that hold no pixel centre, so low resolutions cost little.
4. Visibility: per pixel the minimum of the integer key ``(order(z_ndc) << 32) | face`` via
   ``scatter_reduce('amin')`` — the nearest face wins; exact ties go to the lower face index.
   Pixels with ``z_ndc`` outside ``[−1, 1]`` are clipped (near/far planes, per pixel).
5. Barycentrics and depth are recomputed in float64 for the winning face of each pixel only.

The fragments carry no gradient (visibility is discrete); :func:`interpolate` and :func:`sample_texture`
are differentiable with respect to the attributes and the texture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EDGE_TOL_PX = 1e-3
"""A pixel centre within this distance (pixels) outside an edge still counts as covered (no cracks
between faces sharing an edge under float rounding; overlaps are resolved by the z-test)."""

_PAIR_CHUNK = 1 << 20  # candidate (face, pixel) pairs per step: bounds memory to ~100 MB
_FACE_CHUNK = 1 << 17  # faces (over all views) set up per step
_EMPTY = torch.iinfo(torch.int64).max
_FACE_BITS = 32


@dataclass
class Fragments:
    """Per-pixel rasterization result of B views of H×W pixels.

    face_id: [B, H, W] int64 index of the visible face, −1 where no triangle covers the pixel centre.
    bary: [B, H, W, 3] float32 perspective-correct barycentrics of the visible face (0 where empty).
    depth: [B, H, W] float32 camera-space distance along the view axis (clip w), 0 where empty.
    """

    face_id: Tensor
    bary: Tensor
    depth: Tensor

    @property
    def mask(self) -> Tensor:
        """[B, H, W] bool: pixels covered by a face."""
        return self.face_id >= 0


_NEXT, _PREV = [1, 2, 0], [2, 0, 1]


def _homogeneous_pixels(tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """[N, 3, 4] clip-space triangles -> homogeneous pixel coordinates ``(X, Y, w)``, each [N, 3] (per vertex):
    ``X/w = (x/w + 1)·W/2`` (column + ½) and ``Y/w = (1 − y/w)·H/2`` (row + ½)."""
    x, y, w = tri[..., 0], tri[..., 1], tri[..., 3]
    return (x + w) * (0.5 * width), (w - y) * (0.5 * height), w


def _adjugate(xh: Tensor, yh: Tensor, wh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows ``r_i = V_{i+1} × V_{i+2} = (A_i, B_i, C_i)`` of ``adj(M)``, ``M = [V_0 V_1 V_2]``, ``V = (X, Y, w)``
    ([N, 3] each), and ``det M = V_0 · r_0`` [N]. Then ``e = M⁻¹ p``, ``e_i = (A_i p_x + B_i p_y + C_i) / det``."""
    xj, yj, wj = xh[:, _NEXT], yh[:, _NEXT], wh[:, _NEXT]
    xk, yk, wk = xh[:, _PREV], yh[:, _PREV], wh[:, _PREV]
    a = yj * wk - wj * yk
    b = wj * xk - xj * wk
    c = xj * yk - yj * xk
    det = xh[:, 0] * a[:, 0] + yh[:, 0] * b[:, 0] + wh[:, 0] * c[:, 0]
    return a, b, c, det


def _dot3(u: Tensor, v: Tensor) -> Tensor:
    """Row-wise dot product of [N, 3] tensors -> [N] (explicit: faster than a reduction over 3)."""
    return u[:, 0] * v[:, 0] + u[:, 1] * v[:, 1] + u[:, 2] * v[:, 2]


def _screen_bbox(
    tri: Tensor, xh: Tensor, yh: Tensor, wh: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pixel-centre bounding box of each triangle clipped to the near plane ``d = z + w ≥ 0``.

    Returns (j0, i0, nx, ny, any_part_in_front): first column/row and counts (int64, clamped to the image).
    Points of the clipped polygon are the vertices with ``d ≥ 0`` and the edge crossings of ``d = 0``.
    """
    d = tri[..., 2] + tri[..., 3]  # [N, 3]
    d_next = d[:, _NEXT]
    crossing = (d * d_next) < 0
    t = d / torch.where(crossing, d - d_next, torch.ones_like(d))

    def with_crossings(v: Tensor) -> Tensor:  # [N, 3] -> [N, 6]
        return torch.cat([v, v + t * (v[:, _NEXT] - v)], dim=1)

    px, py, w = with_crossings(xh), with_crossings(yh), with_crossings(wh)
    used = torch.cat([d >= 0, crossing], dim=1)  # [N, 6]
    projectable = used & (w > 1e-12)
    # a used point at or behind the camera plane (unusual projections): fall back to the whole image
    unbounded = (used & ~projectable).any(1)
    safe_w = torch.where(projectable, w, torch.ones_like(w))
    px, py = px / safe_w, py / safe_w
    big = float(2 * max(height, width) + 4)
    xmin = torch.where(projectable, px, big).amin(1)
    xmax = torch.where(projectable, px, -big).amax(1)
    ymin = torch.where(projectable, py, big).amin(1)
    ymax = torch.where(projectable, py, -big).amax(1)
    xmin = torch.where(unbounded, -big, xmin)
    ymin = torch.where(unbounded, -big, ymin)
    xmax = torch.where(unbounded, big, xmax)
    ymax = torch.where(unbounded, big, ymax)
    # pixel centres c = k + 1/2 with lo <= c <= hi  <=>  ceil(lo - 1/2) <= k <= floor(hi - 1/2)
    j0 = torch.ceil(xmin.clamp(-2.0, width + 2.0) - 0.5 - EDGE_TOL_PX).clamp(0, width).long()
    j1 = torch.floor(xmax.clamp(-2.0, width + 2.0) - 0.5 + EDGE_TOL_PX).clamp(-1, width - 1).long()
    i0 = torch.ceil(ymin.clamp(-2.0, height + 2.0) - 0.5 - EDGE_TOL_PX).clamp(0, height).long()
    i1 = torch.floor(ymax.clamp(-2.0, height + 2.0) - 0.5 + EDGE_TOL_PX).clamp(-1, height - 1).long()
    nx = (j1 - j0 + 1).clamp_min(0)
    ny = (i1 - i0 + 1).clamp_min(0)
    return j0, i0, nx, ny, used.any(1)


def _may_cover_pixels(tri: Tensor, height: int, width: int) -> Tensor:
    """Cheap conservative pre-filter ([N, 3, 4] clip triangles -> [N] bool): False only for triangles in
    front of the near plane whose (padded) screen box holds no pixel centre, or entirely beyond the far
    plane. Most faces of a dense mesh at low resolution are rejected here before the float64 setup."""
    x, y, z, w = tri.unbind(-1)  # each [N, 3]
    in_front = ((z + w) >= 0).all(1) & (w > 0).all(1)
    safe_w = torch.where(in_front[:, None], w, torch.ones_like(w))
    px = (x / safe_w + 1.0) * (0.5 * width) - 0.5  # column coordinate of the projected vertex
    py = (1.0 - y / safe_w) * (0.5 * height) - 0.5
    pad = 0.01
    j_lo = torch.ceil(px.amin(1).clamp(-2.0, width + 2.0) - pad).clamp_min(0)
    j_hi = torch.floor(px.amax(1).clamp(-2.0, width + 2.0) + pad).clamp_max(width - 1)
    i_lo = torch.ceil(py.amin(1).clamp(-2.0, height + 2.0) - pad).clamp_min(0)
    i_hi = torch.floor(py.amax(1).clamp(-2.0, height + 2.0) + pad).clamp_max(height - 1)
    covers = (j_hi >= j_lo) & (i_hi >= i_lo)
    beyond_far = ((w - z) < 0).all(1)
    return (~in_front | covers) & ~beyond_far


def _setup_faces(tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-face rasterization setup for [N, 3, 4] float64 clip triangles.

    Returns (keep [N] bool, j0, i0, nx, ny [N] int64, lines [12, N] float64). ``lines`` holds the three edge
    lines as signed pixel distances ``e_i(p) = a_i p_x + b_i p_y + c_i`` (positive inside; rows a0..a2,
    b0..b2, c0..c2) and the NDC depth plane ``z(p) = za p_x + zb p_y + zc`` (rows 9..11), p in pixel units.
    """
    xh, yh, wh = _homogeneous_pixels(tri, height, width)
    a, b, c, det = _adjugate(xh, yh, wh)
    scale = (xh.square() + yh.square() + wh.square()).prod(1).sqrt()
    keep = torch.isfinite(tri).all(-1).all(-1) & (det.abs() > 1e-12 * scale)
    keep &= ((tri[..., 3] - tri[..., 2]) >= 0).any(1)  # not entirely beyond the far plane
    j0, i0, nx, ny, in_front = _screen_bbox(tri, xh, yh, wh, height, width)
    keep &= in_front & (nx > 0) & (ny > 0)
    safe_det = torch.where(keep, det, torch.ones_like(det))
    z = tri[..., 2]
    zplane = [_dot3(z, r) / safe_det for r in (a, b, c)]  # z_ndc = Σ e_i z_i
    # edges as signed pixel distances; the sign of det makes "inside" positive for both windings
    inv_norm = torch.sign(safe_det)[:, None] / torch.sqrt(a.square() + b.square()).clamp_min(1e-300)
    lines = torch.cat([(a * inv_norm).T, (b * inv_norm).T, (c * inv_norm).T, torch.stack(zplane)], dim=0)
    return keep, j0, i0, nx, ny, lines


def _split_rows(
    i0: Tensor, nx: Tensor, ny: Tensor, index: Tensor, max_pairs: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Split boxes of more than ``max_pairs`` pixels into bands of whole rows.

    Returns per band: (first row i0, row count ny, index of its face). Boxes that fit are one band."""
    rows_per_band = (max_pairs // nx.clamp_min(1)).clamp_min(1)
    n_bands = torch.div(ny + rows_per_band - 1, rows_per_band, rounding_mode="floor")
    if bool((n_bands == 1).all()):
        return i0, ny, index
    owner = torch.repeat_interleave(torch.arange(len(ny), device=ny.device), n_bands)
    first_band = torch.cumsum(n_bands, 0) - n_bands
    band = torch.arange(len(owner), device=ny.device) - first_band[owner]
    offset = band * rows_per_band[owner]
    return i0[owner] + offset, torch.minimum(rows_per_band[owner], ny[owner] - offset), index[owner]


def _corner_coefficients(lines: Tensor, j0: Tensor, i0: Tensor) -> Tensor:
    """[12, N] float64 lines in pixel units -> [12, N] float32 lines relative to the pixel centre (j0, i0):
    ``e(dx, dy) = a dx + b dy + (a (j0 + ½) + b (i0 + ½) + c)`` (small numbers, accurate in float32)."""
    cx, cy = (j0 + 0.5).to(lines.dtype), (i0 + 0.5).to(lines.dtype)
    a, b, c = lines[[0, 1, 2, 9]], lines[[3, 4, 5, 10]], lines[[6, 7, 8, 11]]
    c = a * cx + b * cy + c
    return torch.cat([a[:3], b[:3], c[:3], torch.stack([a[3], b[3], c[3]])], dim=0).float()


def _depth_order(z: Tensor) -> Tensor:
    """Monotone map of float32 ``z ∈ [−1, 1]`` to int64 in ``[0, 2^31)`` (IEEE bit order trick)."""
    bits = (z + 0.0).contiguous().view(torch.int32)  # + 0.0 turns −0.0 into +0.0: equal depths, equal keys
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse magnitude order
    return bits.long() + (1 << 30)


def _scatter_candidates(
    best: Tensor, pix_base: Tensor, nx: Tensor, count: Tensor, coef: Tensor, face: Tensor, width: int
) -> None:
    """Test all (face, pixel) candidates of a set of faces and z-buffer them into ``best`` [B·H·W] int64.

    pix_base, nx, count, face: [n] int64 (flat index of the box corner, box width, box area, face index);
    coef: [12, n] float32 from :func:`_setup_faces`.
    """
    dev = best.device
    ends = torch.cumsum(count, 0)
    total = int(ends[-1])
    local_face = torch.repeat_interleave(torch.arange(count.shape[0], device=dev), count, output_size=total)
    local = torch.arange(total, device=dev) - (ends - count)[local_face]
    w_box = nx[local_face]
    dy = torch.div(local, w_box, rounding_mode="floor")
    dx = local - dy * w_box
    c = coef.index_select(1, local_face)  # [12, P] (faster than coef[:, local_face])
    fx, fy = dx.float(), dy.float()
    inside = (c[0] * fx + c[3] * fy + c[6]) >= -EDGE_TOL_PX
    inside &= (c[1] * fx + c[4] * fy + c[7]) >= -EDGE_TOL_PX
    inside &= (c[2] * fx + c[5] * fy + c[8]) >= -EDGE_TOL_PX
    z = c[9] * fx + c[10] * fy + c[11]
    inside &= (z >= -1.0) & (z <= 1.0)
    sel = inside.nonzero().squeeze(1)
    if sel.numel() == 0:
        return
    lf = local_face[sel]
    pix = pix_base[lf] + dy[sel] * width + dx[sel]
    key = (_depth_order(z[sel]) << _FACE_BITS) | face[lf]
    best.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)


def _zbuffer(clip: Tensor, faces: Tensor, height: int, width: int) -> Tensor:
    """[B·H·W] int64 winning key per pixel (``_EMPTY`` where nothing is drawn)."""
    n_views, n_faces = clip.shape[0], faces.shape[0]
    dev = clip.device
    best = torch.full((n_views * height * width,), _EMPTY, dtype=torch.int64, device=dev)
    step = max(1, _FACE_CHUNK // max(n_views, 1))
    for f0 in range(0, n_faces, step):
        f_idx = torch.arange(f0, min(f0 + step, n_faces), device=dev)
        tri = clip.index_select(1, faces[f_idx].reshape(-1)).reshape(-1, 3, 4)  # [B·n, 3, 4], view-major
        cand = _may_cover_pixels(tri, height, width).nonzero().squeeze(1)
        if cand.numel() == 0:
            continue
        view = torch.div(cand, f_idx.shape[0], rounding_mode="floor")
        face = f_idx[cand - view * f_idx.shape[0]]
        keep, j0, i0, nx, ny, lines = _setup_faces(tri[cand].double(), height, width)
        sel = keep.nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        i0, ny, sel = _split_rows(i0[sel], nx[sel], ny[sel], sel, _PAIR_CHUNK)  # per band of rows
        j0, nx, count = j0[sel], nx[sel], nx[sel] * ny
        pix_base = (view[sel] * height + i0) * width + j0
        coef, face = _corner_coefficients(lines[:, sel], j0, i0), face[sel]
        # groups of about _PAIR_CHUNK candidates (at most twice that)
        ends = torch.cumsum(count, 0)
        marks = torch.arange(_PAIR_CHUNK, max(int(ends[-1]), _PAIR_CHUNK), _PAIR_CHUNK, device=dev)
        bounds = torch.searchsorted(ends, marks).tolist()
        n = sel.numel()
        cuts = sorted({0, n} | {min(int(b) + 1, n) for b in bounds})
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                _scatter_candidates(best, pix_base[a:b], nx[a:b], count[a:b], coef[:, a:b], face[a:b], width)
    return best


def vertices_to_clip(vertices: Tensor, world_to_clip: Tensor) -> Tensor:
    """World points [V, 3] and matrices [B, 4, 4] (e.g. ``Cameras.world_to_clip``) -> clip coordinates [B, V, 4]."""
    homogeneous = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    return homogeneous.to(world_to_clip.dtype) @ world_to_clip.transpose(1, 2)


def rasterize(clip: Tensor, faces: Tensor, height: int, width: int) -> Fragments:
    """Rasterize triangles given in clip space.

    clip: [B, V, 4] clip-space vertices (OpenGL: NDC x right, y up, z in [−1, 1]); faces: [F, 3] int64.
    Pixel (i, j) centre is at NDC ``x = 2(j + ½)/W − 1``, ``y = 1 − 2(i + ½)/H`` (row 0 = top).
    Z-buffer visibility on NDC z (nearest wins, ties to the lower face index); parts behind the camera
    (w ≤ 0) or outside the near/far planes (z_ndc ∉ [−1, 1]) are not drawn; both windings are drawn.
    Works for any clip coordinates, e.g. ``(2u − 1, 1 − 2v, 0, 1)`` to rasterize a UV layout.
    """
    if clip.dim() != 3 or clip.shape[-1] != 4:
        raise ValueError(f"clip must be [B, V, 4], got {tuple(clip.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    with torch.no_grad():
        clip = clip.detach()
        faces = faces.to(device=clip.device, dtype=torch.int64)
        n_views = clip.shape[0]
        best = _zbuffer(clip, faces, height, width) if faces.shape[0] > 0 else None
        face_id = torch.full((n_views * height * width,), -1, dtype=torch.int64, device=clip.device)
        bary = torch.zeros(n_views * height * width, 3, dtype=torch.float32, device=clip.device)
        depth = torch.zeros(n_views * height * width, dtype=torch.float32, device=clip.device)
        if best is not None:
            pix = (best != _EMPTY).nonzero().squeeze(1)
            if pix.numel() > 0:
                fid = best[pix] & ((1 << _FACE_BITS) - 1)
                b_pix, d_pix = _winner_attributes(clip, faces, pix, fid, height, width)
                face_id[pix] = fid
                bary[pix] = b_pix
                depth[pix] = d_pix
    shape = (n_views, height, width)
    return Fragments(face_id.view(shape), bary.view(*shape, 3), depth.view(shape))


def _winner_attributes(
    clip: Tensor, faces: Tensor, pix: Tensor, fid: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics [K, 3] and clip w [K] of face ``fid`` at flat pixels ``pix`` [K]:
    ``e = M⁻¹ p``, ``b = e / Σe``, ``w = 1 / Σe`` (float64)."""
    hw = height * width
    view = torch.div(pix, hw, rounding_mode="floor")
    rem = pix - view * hw
    row = torch.div(rem, width, rounding_mode="floor")
    col = rem - row * width
    rows = (view[:, None] * clip.shape[1] + faces.index_select(0, fid)).reshape(-1)
    tri = clip.reshape(-1, 4).index_select(0, rows).view(-1, 3, 4).double()  # [K, 3, 4]
    a, b, c, det = _adjugate(*_homogeneous_pixels(tri, height, width))
    px, py = (col + 0.5).to(tri.dtype)[:, None], (row + 0.5).to(tri.dtype)[:, None]
    e = (a * px + b * py + c) / det[:, None]  # [K, 3]
    total = e[:, 0] + e[:, 1] + e[:, 2]
    bary = (e / total[:, None]).clamp_min(0.0)
    bary = bary / (bary[:, 0] + bary[:, 1] + bary[:, 2]).clamp_min(1e-30)[:, None]
    return bary.float(), (1.0 / total).float()


def interpolate(attr: Tensor, faces: Tensor, frags: Fragments) -> Tensor:
    """Barycentric interpolation ``Σ_k b_k · attr[face[k]]``.

    attr: [V, C] (shared by all views) or [B, V, C]; faces: [F, 3] -> [B, H, W, C] (0 where empty).
    Differentiable with respect to ``attr``.
    """
    n_views, height, width = frags.face_id.shape
    mask = frags.face_id >= 0
    idx = mask.nonzero(as_tuple=True)
    vid = faces.to(attr.device)[frags.face_id[idx]]  # [K, 3]
    if attr.dim() == 2:
        vals = attr[vid]  # [K, 3, C]
    else:
        vals = attr[idx[0][:, None], vid]
    w = frags.bary[idx].to(attr.dtype)
    out = attr.new_zeros(n_views, height, width, attr.shape[-1])
    out = out.index_put(idx, (vals * w[..., None]).sum(1))
    return out


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup with wrap (repeat) addressing.

    texture: [Ht, Wt, C]; uv: [..., 2] in the glTF convention (u right, v down, (0, 0) = top-left corner of
    the image; texel (r, c) has its centre at ``((c + ½)/Wt, (r + ½)/Ht)``) -> [..., C].
    Differentiable with respect to ``texture`` (and ``uv``).
    """
    t_h, t_w, n_ch = texture.shape
    flat = texture.reshape(-1, n_ch)
    lead = uv.shape[:-1]
    uv = torch.nan_to_num(uv.reshape(-1, 2).to(texture.dtype)).clamp(-1e6, 1e6)
    x = uv[:, 0] * t_w - 0.5
    y = uv[:, 1] * t_h - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0f)[:, None], (y - y0f)[:, None]
    x0 = torch.remainder(x0f.long(), t_w)
    y0 = torch.remainder(y0f.long(), t_h)
    x1 = torch.remainder(x0 + 1, t_w)
    y1 = torch.remainder(y0 + 1, t_h)
    top = flat[y0 * t_w + x0] * (1 - fx) + flat[y0 * t_w + x1] * fx
    bottom = flat[y1 * t_w + x0] * (1 - fx) + flat[y1 * t_w + x1] * fx
    return (top * (1 - fy) + bottom * fy).reshape(*lead, n_ch)
