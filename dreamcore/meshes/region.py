"""Regions of space for editing: soft 3D masks over points of dreamcore's normalized scene frame.

An edit (``dreamcore edit SOURCE "target" --region ...``) changes an asset only inside a region and keeps the rest
exactly. A :class:`Region` answers, for points ``p`` [N, 3] in the SCENE frame (where the representations live),

* :meth:`Region.signed_distance` — d(p) in scene units, negative inside, positive outside, 0 on the boundary;
* :meth:`Region.mask` — m(p) ∈ [0, 1]: 1 inside, 0 outside, with a smooth ramp of width ``falloff`` (scene units)
  centred on the boundary, ``m = smoothstep`` of d over [−falloff/2, +falloff/2] (so m = ½ on the boundary);
  ``falloff`` 0 is the hard mask, inside meaning d ≤ 0.

Regions are written by the user in OBJECT coordinates — the frame of the source's exported ``model.glb`` (which is
the reference mesh's own frame) — and mapped into the scene by the source's
:class:`~dreamcore.meshes.asset.SceneTransform`, ``p_scene = (p − center)·scale``. The transform is a similarity
(uniform scale > 0, no rotation), so an axis-aligned box stays an axis-aligned box and distances scale by
``scale``.

* :class:`BoxRegion` — an axis-aligned box; its signed distance is exact.
* :class:`MeshRegion` — the inside of a closed mesh file. Inside is decided by the generalized winding number
  (Jacobson et al. 2013: the sum of the signed solid angles of the triangles seen from the point over 4π, which is
  ±1 inside a closed oriented surface and 0 outside, and degrades gracefully near the surface); inside means
  |w| ≥ ½, so a mesh whose faces all point inwards works too. For many points a voxel grid over the mesh's box
  answers most of them without any winding number, exactly (:meth:`MeshRegion.inside`). The distance is the
  exact point-to-triangle distance, over clusters of faces with bounding-box culling (not an approximation: a
  cluster is skipped only when its box is farther than the best distance found so far, or than the ramp's half
  width when only the mask is asked for). Both are chunked so that a million points against a few thousand faces
  run in bounded memory (about ``_PAIR_BUDGET`` point-face pairs at a time), in float64.
* :func:`parse_region` — the command line's ``--region`` text (``box:x0,y0,z0,x1,y1,z1`` or ``mesh:part.glb``) to
  a region; nothing in it is evaluated, numbers are read with ``float`` and checked, paths are only opened as mesh
  files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path
from dreamcore.meshes.asset import MeshAsset, SceneTransform

# point-face pairs evaluated at once: each pair holds ~25 float64 temporaries (~50 MB at 256k pairs)
_PAIR_BUDGET = 1 << 18
_CLUSTER = 64  # faces per culling cluster of the distance query
_POINT_CHUNK = 8192  # points per distance chunk (spatially sorted, so a chunk's points are close together)
_GRID = 48  # cells along the longest side of a mesh region's inside/outside grid
_GRID_MIN_POINTS = 4096  # below this many points the inside test skips the grid (its one-off cost)

PathLike = Union[str, os.PathLike]


def smooth_mask(d: Tensor, falloff: float) -> Tensor:
    """m(d): 1 for d ≤ −falloff/2, 0 for d ≥ +falloff/2, the smoothstep u²(3 − 2u) between (u = ½ − d/falloff,
    so m = ½ at d = 0); ``falloff`` 0: the hard mask ``d ≤ 0``."""
    if falloff <= 0:
        return (d <= 0).to(d.dtype if d.is_floating_point() else torch.float32)
    u = (0.5 - d / falloff).clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


class Region:
    """A region of the scene: :meth:`signed_distance` (negative inside) and the soft :meth:`mask` built from it.
    ``falloff`` is the width of the mask's ramp in scene units (0: a hard 0/1 mask)."""

    def __init__(self, falloff: float = 0.0) -> None:
        falloff = float(falloff)
        if not math.isfinite(falloff) or falloff < 0:
            raise DreamcoreError(f"a region's falloff must be a finite width ≥ 0 (scene units), got {falloff}")
        self.falloff = falloff

    def signed_distance(self, points: Tensor) -> Tensor:
        """[N] signed distance (scene units) of ``points`` [N, 3] (scene frame) to the region's boundary:
        negative inside, positive outside."""
        raise NotImplementedError

    def mask(self, points: Tensor) -> Tensor:
        """[N] in [0, 1]: 1 inside, 0 outside, the smoothstep ramp of width ``falloff`` across the boundary
        (:func:`smooth_mask` of :meth:`signed_distance`)."""
        return smooth_mask(self.signed_distance(points), self.falloff)

    def bounds(self) -> tuple[Tensor, Tensor]:
        """The scene-frame axis-aligned box (lo [3], hi [3]) holding every point whose mask can be > 0 (the
        region's box grown by half the falloff): what lies outside it is masked 0 (for culling, screen
        footprints)."""
        raise NotImplementedError


def _points(points: Tensor) -> Tensor:
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"a region takes points [N, 3], got {tuple(points.shape)}")
    return points if points.is_floating_point() else points.float()


class BoxRegion(Region):
    """The axis-aligned box ``lo ≤ p ≤ hi`` given in OBJECT coordinates (the source's ``model.glb`` frame), mapped
    into the scene by ``transform``; its signed distance is exact (the Euclidean distance to the box outside,
    minus the distance to the nearest face inside)."""

    def __init__(self, lo, hi, transform: SceneTransform = SceneTransform(), falloff: float = 0.0) -> None:
        super().__init__(falloff)
        lo_t = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
        hi_t = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
        if lo_t.numel() != 3 or hi_t.numel() != 3:
            raise DreamcoreError(f"a box region needs three numbers per corner, got {list(lo)} and {list(hi)}")
        if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
            raise DreamcoreError("a box region's corners must be finite numbers")
        if not bool((lo_t < hi_t).all()):
            axes = [n for n, a, b in zip("xyz", lo_t.tolist(), hi_t.tolist()) if not a < b]
            raise DreamcoreError(f"a box region needs x0 < x1, y0 < y1 and z0 < z1; not so along {', '.join(axes)}")
        if not transform.scale > 0:
            raise DreamcoreError(f"a region's scene transform needs a positive scale, got {transform.scale}")
        self.transform = transform
        self.object_lo, self.object_hi = lo_t, hi_t
        self.lo = transform.to_scene(lo_t)  # scene frame (a similarity with positive scale keeps lo < hi)
        self.hi = transform.to_scene(hi_t)

    def signed_distance(self, points: Tensor) -> Tensor:
        p = _points(points)
        lo, hi = self.lo.to(p), self.hi.to(p)
        q = (p - (lo + hi) * 0.5).abs() - (hi - lo) * 0.5  # > 0 along the axes where p is outside the slab
        outside = q.clamp_min(0).norm(dim=-1)
        inside = q.amax(-1).clamp_max(0)
        return outside + inside

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.lo.float() - self.falloff / 2, self.hi.float() + self.falloff / 2

    def __repr__(self) -> str:
        corners = ",".join(f"{v:g}" for v in torch.cat([self.object_lo, self.object_hi]).tolist())
        return f"BoxRegion(box:{corners}, falloff={self.falloff:g})"


def closed_surface_problem(vertices: Tensor, faces: Tensor, weld_tolerance: float = 1e-6) -> Optional[str]:
    """Why the triangle mesh does not bound a volume (None when it does), in words.

    Vertices that round to the same point of a grid of spacing ``weld_tolerance`` × the bounding-box diagonal
    are welded first (files split vertices along UV seams and material borders, with identical positions), and
    triangles welded to a line are dropped. The surface is closed and consistently oriented when every
    undirected edge is traversed as often in one direction as in the other — the condition under which the
    winding number is an integer off the surface (it admits non-manifold edges shared by four faces, e.g. two
    boxes touching along an edge, and refuses holes and flipped faces)."""
    v = vertices.detach().double().cpu().numpy()
    f = faces.detach().cpu().numpy().astype(np.int64).reshape(-1, 3)
    if len(f) == 0:
        return "it has no triangles"
    used = v[np.unique(f)]
    diag = float(np.linalg.norm(used.max(0) - used.min(0)))
    if not diag > 0:
        return "all its vertices coincide"
    keys = np.round(v / (weld_tolerance * diag)).astype(np.int64)
    _, weld = np.unique(keys, axis=0, return_inverse=True)
    f = weld.reshape(-1)[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    if len(f) == 0:
        return "all its triangles are degenerate"
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    uniq, inverse = np.unique(undirected, axis=0, return_inverse=True)
    sign = np.where(directed[:, 0] < directed[:, 1], 1, -1)
    balance = np.bincount(inverse.reshape(-1), weights=sign, minlength=len(uniq))
    counts = np.bincount(inverse.reshape(-1), minlength=len(uniq))
    open_edges = int(((balance != 0) & (counts % 2 == 1)).sum())
    flipped = int(((balance != 0) & (counts % 2 == 0)).sum())
    if open_edges or flipped:
        parts = []
        if open_edges:
            parts.append(f"{open_edges} edge{'s' if open_edges != 1 else ''} on a hole or border")
        if flipped:
            parts.append(f"{flipped} edge{'s' if flipped != 1 else ''} between faces of opposite orientation")
        return "it is not a closed, consistently oriented surface (" + "; ".join(parts) + ")"
    return None


class _TriangleTables:
    """Per-face constants (float64) of the two queries, so that each point-face pair costs a handful of
    scalar operations on [P, F] arrays and every dot product of a point with a face vector is one matrix product.

    With a, b, c a face's corners, n = (b − a)×(c − a), and the in-plane inward edge normals
    m_ab = n×(b − a), m_bc = n×(c − b), m_ca = n×(a − c):
    ``dirs`` [10, F, 3] = (a, b, c, b − a, c − b, a − c, n, m_ab, m_bc, m_ca) and ``consts`` [12, F] =
    (|a|², |b|², |c|², a·(b − a), b·(c − b), c·(a − c), a·n, a·m_ab, b·m_bc, c·m_ca, |n|², a·(b×c)), plus the
    squared edge lengths ``lengths`` [3, F] and the pairwise corner products ``corner_dots`` [3, F]
    (a·b, a·c, b·c). Squared distances like |p − a|² = |p|² − 2 p·a + |a|² are formed in float64, whose
    rounding (~1e-16 relative) leaves distances in a unit-sized scene exact to ~1e-8."""

    def __init__(self, triangles: Tensor) -> None:
        tri = triangles.double()
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        ab, bc, ca = b - a, c - b, a - c
        n = torch.cross(ab, c - a, dim=-1)
        m_ab, m_bc, m_ca = torch.cross(n, ab, dim=-1), torch.cross(n, bc, dim=-1), torch.cross(n, ca, dim=-1)

        def dot(u: Tensor, v: Tensor) -> Tensor:
            return (u * v).sum(-1)

        self.dirs = torch.stack([a, b, c, ab, bc, ca, n, m_ab, m_bc, m_ca])
        self.consts = torch.stack([dot(a, a), dot(b, b), dot(c, c), dot(a, ab), dot(b, bc), dot(c, ca), dot(a, n),
                                   dot(a, m_ab), dot(b, m_bc), dot(c, m_ca), dot(n, n),
                                   dot(a, torch.cross(b, c, dim=-1))])
        self.lengths = torch.stack([dot(ab, ab), dot(bc, bc), dot(ca, ca)])
        self.corner_dots = torch.stack([dot(a, b), dot(a, c), dot(b, c)])

    @property
    def count(self) -> int:
        return self.dirs.shape[1]

    def to(self, device) -> "_TriangleTables":
        for name in ("dirs", "consts", "lengths", "corner_dots"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def _products(self, p: Tensor, rows: slice, faces: slice) -> Tensor:
        """[P, R, F'] dot products of points p [P, 3] (float64) with ``dirs[rows, faces]``."""
        d = self.dirs[rows, faces]
        return (p @ d.reshape(-1, 3).T).reshape(p.shape[0], d.shape[0], d.shape[1])

    def distance_sq(self, p: Tensor, faces: slice) -> Tensor:
        """Squared distance [P, F'] from points p [P, 3] (float64) to the faces ``faces``: to the plane when the
        point projects inside the triangle, else to the nearest of its three edges (exact; a degenerate triangle
        is its edges)."""
        tiny = torch.finfo(torch.float64).tiny
        dp = self._products(p, slice(0, 10), faces)
        k, lengths = self.consts[:, faces], self.lengths[:, faces]
        pp = (p * p).sum(-1, keepdim=True)
        best = None
        for corner, edge in ((0, 3), (1, 4), (2, 5)):  # edges a→b, b→c, c→a
            to_start = pp - 2.0 * dp[:, corner] + k[corner]  # |p − s|²
            along = dp[:, edge] - k[edge]  # (p − s)·e
            length = lengths[edge - 3]
            t = (along / length.clamp_min(tiny)).clamp(0.0, 1.0)
            seg = to_start - 2.0 * t * along + t * t * length
            best = seg if best is None else torch.minimum(best, seg)
        nn = k[10]
        inside = (dp[:, 7] >= k[7]) & (dp[:, 8] >= k[8]) & (dp[:, 9] >= k[9]) & (nn > 0)
        plane = (dp[:, 6] - k[6]).pow(2) / nn.clamp_min(tiny)
        return torch.where(inside, plane, best).clamp_min(0.0)

    def solid_angle_sum(self, p: Tensor, faces: slice) -> Tensor:
        """Σ over the faces ``faces`` of the signed solid angle Ω (steradians) each subtends at points p [P, 3]
        (float64): tan(Ω/2) = A·(B×C) / (|A||B||C| + (A·B)|C| + (A·C)|B| + (B·C)|A|) with A = a − p etc.
        (Van Oosterom & Strackee), where A·(B×C) = a·(b×c) − p·n and A·B = a·b − p·a − p·b + |p|²."""
        dp = self._products(p, slice(0, 3), faces)
        k, cd = self.consts[:, faces], self.corner_dots[:, faces]
        pn = p @ self.dirs[6, faces].T
        pp = (p * p).sum(-1, keepdim=True)
        pa, pb, pc = dp[:, 0], dp[:, 1], dp[:, 2]
        la = (pp - 2.0 * pa + k[0]).clamp_min(0.0).sqrt()
        lb = (pp - 2.0 * pb + k[1]).clamp_min(0.0).sqrt()
        lc = (pp - 2.0 * pc + k[2]).clamp_min(0.0).sqrt()
        num = k[11] - pn
        den = la * lb * lc + (cd[0] - pa - pb + pp) * lc + (cd[1] - pa - pc + pp) * lb + (cd[2] - pb - pc + pp) * la
        return 2.0 * torch.atan2(num, den).sum(-1)


def winding_number(points: Tensor, triangles: "Tensor | _TriangleTables", pair_budget: int = _PAIR_BUDGET) -> Tensor:
    """Generalized winding number [N] of ``points`` [N, 3] with respect to ``triangles`` [F, 3, 3] (or their
    :class:`_TriangleTables`): Σ_f Ω_f(p) / 4π, Ω_f the signed solid angle of face f seen from p. For a closed
    outward-oriented surface it is 1 inside and 0 outside (−1 inside when all faces point inwards), and it moves
    smoothly between near the surface. Points outside the faces' bounding box get 0 without evaluation (exact
    there for a closed surface). Chunked over points and faces: ``pair_budget`` pairs at a time."""
    p = _points(points)
    tables = triangles if isinstance(triangles, _TriangleTables) else _TriangleTables(triangles)
    tables = tables.to(p.device)
    out = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    if tables.count == 0 or p.shape[0] == 0:
        return out
    corners = tables.dirs[:3].reshape(-1, 3)
    lo, hi = corners.amin(0).to(p.dtype), corners.amax(0).to(p.dtype)
    near = ((p >= lo) & (p <= hi)).all(-1).nonzero(as_tuple=True)[0]
    if near.numel() == 0:
        return out
    f_chunk = max(1, min(tables.count, pair_budget // 64))
    p_chunk = max(1, pair_budget // f_chunk)
    for i in range(0, near.numel(), p_chunk):
        idx = near[i:i + p_chunk]
        q = p[idx].double()
        total = torch.zeros(idx.numel(), dtype=torch.float64, device=p.device)
        for j in range(0, tables.count, f_chunk):
            total += tables.solid_angle_sum(q, slice(j, j + f_chunk))
        out[idx] = (total / (4.0 * math.pi)).to(p.dtype)
    return out


def _box_distance_sq(p: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Squared distance [P, K] from points [P, 3] to boxes [K, 3] (0 inside): a lower bound of the distance to
    anything in the box."""
    gap = torch.maximum(lo[None] - p[:, None], p[:, None] - hi[None]).clamp_min(0)
    return gap.pow(2).sum(-1)


def _morton_order(x: Tensor) -> Tensor:
    """A permutation sorting points [N, 3] along a Z-order curve (10 bits per axis): neighbours in the order are
    close in space, so a chunk of them has a tight bounding box."""
    lo, hi = x.amin(0), x.amax(0)
    q = ((x - lo) / (hi - lo).clamp_min(1e-12) * 1023).long().clamp(0, 1023)

    def spread(v: Tensor) -> Tensor:
        v = (v | (v << 16)) & 0x030000FF
        v = (v | (v << 8)) & 0x0300F00F
        v = (v | (v << 4)) & 0x030C30C3
        return (v | (v << 2)) & 0x09249249

    return torch.argsort(spread(q[:, 0]) | (spread(q[:, 1]) << 1) | (spread(q[:, 2]) << 2))


class _FaceClusters:
    """Triangles sorted along a Z-order curve of their centroids, cut into clusters of ``_CLUSTER`` faces, each with
    its bounding box (float64): the distance query skips a cluster whose box is farther than what it already
    knows. ``tables`` holds the sorted faces' :class:`_TriangleTables`."""

    def __init__(self, triangles: Tensor) -> None:
        tri = triangles.double()
        tri = tri[_morton_order(tri.mean(1))]
        self.tables = _TriangleTables(tri)
        self.slices = [slice(s, min(s + _CLUSTER, tri.shape[0])) for s in range(0, tri.shape[0], _CLUSTER)]
        self.lo = torch.stack([tri[s].reshape(-1, 3).amin(0) for s in self.slices])
        self.hi = torch.stack([tri[s].reshape(-1, 3).amax(0) for s in self.slices])

    def to(self, device) -> "_FaceClusters":
        self.tables.to(device)
        self.lo, self.hi = self.lo.to(device), self.hi.to(device)
        return self


def surface_distance(points: Tensor, clusters: _FaceClusters, band: float = math.inf) -> Tensor:
    """Exact unsigned distance [N] from ``points`` [N, 3] to the triangles of ``clusters``, clipped at ``band``:
    a point farther than ``band`` from every triangle gets ``band`` (its exact distance is not needed, e.g. past
    the mask's ramp), which lets far clusters be skipped. Points are processed in spatially coherent chunks;
    within a chunk clusters are visited nearest first and each only for the points its box could still improve
    (the box distance is a lower bound, so the result is the brute-force minimum)."""
    p = _points(points)
    cl = clusters.to(p.device)
    n = p.shape[0]
    band_sq = band * band if math.isfinite(band) else math.inf
    out = torch.full((n,), band_sq, dtype=torch.float64, device=p.device)
    if n == 0:
        return out.sqrt().to(p.dtype)
    q_all = p.double()
    lo_all, hi_all = cl.lo.amin(0, keepdim=True), cl.hi.amax(0, keepdim=True)
    todo = (_box_distance_sq(q_all, lo_all, hi_all)[:, 0] < band_sq).nonzero(as_tuple=True)[0]
    if todo.numel() == 0:
        return out.sqrt().to(p.dtype)
    todo = todo[_morton_order(q_all[todo])]
    step = max(1, _PAIR_BUDGET // _CLUSTER)
    for i in range(0, todo.numel(), _POINT_CHUNK):
        idx = todo[i:i + _POINT_CHUNK]
        q = q_all[idx]
        best = torch.full((idx.numel(),), band_sq, dtype=torch.float64, device=p.device)
        lower = _box_distance_sq(q, cl.lo, cl.hi)  # [P, K]
        nearest = lower.amin(0)
        for k in torch.argsort(nearest).tolist():
            if float(nearest[k]) >= float(best.max()):
                break  # clusters are visited by their nearest point's bound: none of the rest improves anyone
            active = (lower[:, k] < best).nonzero(as_tuple=True)[0]
            for j in range(0, active.numel(), step):
                sub = active[j:j + step]
                d = cl.tables.distance_sq(q[sub], cl.slices[k]).amin(-1)
                best[sub] = torch.minimum(best[sub], d)
        out[idx] = best
    return out.sqrt().to(p.dtype)


class MeshRegion(Region):
    """The inside of a closed triangle mesh given in OBJECT coordinates (a part modelled over the source's
    ``model.glb``), mapped into the scene by ``transform``.

    Inside: |generalized winding number| ≥ ½ (:func:`winding_number`); distance: the exact distance to the
    surface (:func:`surface_distance`). :meth:`mask` with a falloff asks only for distances up to half the falloff
    (beyond it the mask is 0 or 1 whatever the exact value), which is what keeps it cheap for points far from the
    part. The mesh must bound a volume (:func:`closed_surface_problem`), else a DreamcoreError says why."""

    def __init__(self, asset: MeshAsset, transform: SceneTransform = SceneTransform(), falloff: float = 0.0,
                 name: str = "the region mesh") -> None:
        super().__init__(falloff)
        if not transform.scale > 0:
            raise DreamcoreError(f"a region's scene transform needs a positive scale, got {transform.scale}")
        problem = closed_surface_problem(asset.vertices, asset.faces)
        if problem is not None:
            raise DreamcoreError(f"{name} cannot be a region: {problem}; a region mesh must be closed (watertight)")
        self.name = name
        self.transform = transform
        vertices = transform.to_scene(asset.vertices.detach().double())
        self.triangles = vertices[asset.faces.long()]  # [F, 3, 3] float64, scene frame
        self.tables = _TriangleTables(self.triangles)
        self.clusters = _FaceClusters(self.triangles)
        flat = self.triangles.reshape(-1, 3)
        self.lo, self.hi = flat.amin(0), flat.amax(0)
        self._grid: Optional[tuple[Tensor, float, Tensor]] = None

    def inside(self, points: Tensor) -> Tensor:
        """[N] bool: whether each point is inside the closed surface (|winding number| ≥ ½).

        Exact, and fast for many points through a voxel grid over the mesh's box (:meth:`_inside_grid`): a
        voxel whose centre is farther from the surface than its half diagonal holds no surface, so a connected
        set of such voxels lies wholly inside or wholly outside and one winding number at one of its centres
        decides all of it; only points in voxels the surface may cross get their own winding number."""
        p = _points(points)
        out = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        if p.shape[0] == 0:
            return out
        if p.shape[0] < _GRID_MIN_POINTS:  # a few points: the winding number directly
            return winding_number(p, self.tables).abs() >= 0.5
        origin, cell, state = self._inside_grid()
        origin, state = origin.to(p.device), state.to(p.device)
        dims = torch.tensor(state.shape, device=p.device)
        cell_index = torch.floor((p.double() - origin) / cell).long()  # float64: no point lands a cell off
        in_grid = ((cell_index >= 0) & (cell_index < dims)).all(-1)
        gi = in_grid.nonzero(as_tuple=True)[0]
        ci = cell_index[gi]
        s = state[ci[:, 0], ci[:, 1], ci[:, 2]]
        out[gi] = s == 1
        near = gi[s < 0]
        if near.numel():
            out[near] = winding_number(p[near], self.tables).abs() >= 0.5
        return out

    def _inside_grid(self) -> tuple[Tensor, float, Tensor]:
        """(origin [3], cell size, state [X, Y, Z] int8) over the mesh's box grown by one cell, ``_GRID`` cells
        along its longest side: state 1 inside, 0 outside, −1 a voxel the surface may cross (built once)."""
        if self._grid is not None:
            return self._grid
        from scipy import ndimage

        extent = (self.hi - self.lo).double()
        cell = float(extent.max()) / _GRID
        origin = self.lo.double() - cell
        dims = [max(1, int(math.ceil(float(e) / cell)) + 2) for e in extent]
        axes = [origin[i] + (torch.arange(dims[i], dtype=torch.float64) + 0.5) * cell for i in range(3)]
        centers = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        half_diagonal = cell * math.sqrt(3.0) / 2.0
        margin = half_diagonal * 1.001 + 1e-6 * float(extent.max())  # float error of the distance stays inside it
        free = (surface_distance(centers, self.clusters, band=2.0 * margin) > margin).reshape(dims).numpy()
        labels, count = ndimage.label(free)  # face-connected sets of surface-free voxels
        state = np.full(dims, -1, dtype=np.int8)
        if count:
            flat = labels.reshape(-1)
            _, first = np.unique(flat, return_index=True)  # label 0 (surface voxels) first, then 1..count
            probe = centers[torch.from_numpy(first[1:])]
            inside = (winding_number(probe, self.tables).abs() >= 0.5).numpy()
            table = np.concatenate([[-1], inside.astype(np.int8)])
            state = table[labels].astype(np.int8)
        self._grid = (origin, cell, torch.from_numpy(state))
        return self._grid

    def signed_distance(self, points: Tensor, band: float = math.inf) -> Tensor:
        """Exact signed distance [N] (negative inside); with a finite ``band`` its magnitude is clipped there."""
        p = _points(points)
        dist = surface_distance(p, self.clusters, band)
        return torch.where(self.inside(p), -dist, dist)

    def mask(self, points: Tensor) -> Tensor:
        p = _points(points)
        if self.falloff <= 0:
            return self.inside(p).to(p.dtype)
        return smooth_mask(self.signed_distance(p, band=self.falloff / 2), self.falloff)

    def bounds(self) -> tuple[Tensor, Tensor]:
        return (self.lo - self.falloff / 2).float(), (self.hi + self.falloff / 2).float()

    def __repr__(self) -> str:
        return f"MeshRegion({self.name}, {self.triangles.shape[0]} faces, falloff={self.falloff:g})"


class BakedRegion(Region):
    """Another region's mask sampled once at the corners of a grid over its :meth:`bounds` (``resolution`` cells
    along the longest side) and read back by trilinear interpolation: the mask an edit evaluates at every sample
    point of every step, at a grid lookup's cost. A mesh region's exact mask costs winding numbers and
    point-to-triangle distances near its surface (seconds per million points); baked once, it costs that for
    (R + 1)³ points once per run. The baked mask *is* the region the edit uses: it is exactly 0 outside the
    bounds, 1 (to float rounding) where all eight corners of a cell are inside, and differs from the exact mask only in the
    cells the boundary (or its ramp) crosses — by at most the mask's change across one cell.
    :meth:`signed_distance` stays the exact one of ``region``."""

    def __init__(self, region: Region, resolution: int = 96, chunk: int = 1 << 17) -> None:
        super().__init__(region.falloff)
        if int(resolution) < 2:
            raise DreamcoreError(f"a baked region needs at least 2 cells along its longest side, got {resolution}")
        self.region = region
        lo, hi = (b.double() for b in region.bounds())
        cell = float((hi - lo).max()) / int(resolution)
        dims = [max(2, int(math.ceil(float(e) / cell)) + 1) for e in (hi - lo)]
        self.lo, self.hi = lo, lo + cell * (torch.tensor(dims, dtype=torch.float64) - 1)
        axes = [lo[i] + torch.arange(dims[i], dtype=torch.float64) * cell for i in range(3)]
        corners = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        values = torch.cat([region.mask(c).double() for c in corners.split(chunk)])
        self.grid = values.reshape(dims).float()  # [X, Y, Z]

    def mask(self, points: Tensor) -> Tensor:
        p = _points(points)
        lo, hi = self.lo.to(p), self.hi.to(p)
        out = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
        near = ((p >= lo) & (p <= hi)).all(-1).nonzero(as_tuple=True)[0]
        if near.numel():
            u = (p[near] - lo) / (hi - lo) * 2.0 - 1.0  # [-1, 1] along x, y, z
            # grid_sample indexes a [D, H, W] volume by (x, y, z) = (W, H, D): the grid [X, Y, Z] reversed
            volume = self.grid.to(p).permute(2, 1, 0)[None, None]
            sampled = torch.nn.functional.grid_sample(volume, u.view(1, -1, 1, 1, 3), mode="bilinear",
                                                      padding_mode="border", align_corners=True)
            out[near] = sampled.reshape(-1).clamp(0.0, 1.0)
        return out

    def signed_distance(self, points: Tensor) -> Tensor:
        return self.region.signed_distance(points)

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.region.bounds()

    def __repr__(self) -> str:
        return f"BakedRegion({self.region!r}, grid {tuple(self.grid.shape)})"


REGION_FORMS = "box:x0,y0,z0,x1,y1,z1 (object coordinates) or mesh:FILE (a closed GLB/OBJ/PLY mesh)"


def parse_region(spec: Optional[str], transform: SceneTransform, falloff: float = 0.0,
                 base_dir: Optional[Path] = None) -> Optional[Region]:
    """The region a ``--region`` text names, in the scene frame of ``transform`` (the source's): ``""``/None →
    None (the whole asset); ``box:x0,y0,z0,x1,y1,z1`` → :class:`BoxRegion` (six finite numbers with x0 < x1,
    y0 < y1, z0 < z1); ``mesh:FILE`` → :class:`MeshRegion` (FILE relative to ``base_dir`` when given, else to
    the working directory, with :func:`~dreamcore.files.resolve_path`; it must be a closed mesh). Anything else,
    or a bad part of it, raises a DreamcoreError naming the spec and what is wrong. Nothing is evaluated."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise DreamcoreError(f"--region must be text ({REGION_FORMS}), got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        return None
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("box", "mesh"):
        raise DreamcoreError(f"--region {spec!r}: unknown region; use {REGION_FORMS}")
    if kind == "box":
        return BoxRegion(*_box_corners(spec, rest), transform=transform, falloff=_falloff(spec, falloff))
    raw = rest.strip()
    if not raw:
        raise DreamcoreError(f"--region {spec!r}: no mesh file after 'mesh:'")
    path = Path(raw).expanduser()
    path = base_dir / path if base_dir is not None and not path.is_absolute() else resolve_path(path)
    if not path.is_file():
        raise DreamcoreError(f"--region {spec!r}: no such mesh file: {path}")
    from dreamcore.meshes.io import load_mesh

    try:
        asset = load_mesh(path)
        return MeshRegion(asset, transform, _falloff(spec, falloff), name=str(path))
    except DreamcoreError as e:
        raise DreamcoreError(f"--region {spec!r}: {e}") from None


def _falloff(spec: str, falloff: float) -> float:
    try:
        value = float(falloff)
    except (TypeError, ValueError):
        raise DreamcoreError(f"--region {spec!r}: the falloff {falloff!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DreamcoreError(f"--region {spec!r}: the falloff must be a finite width ≥ 0, got {falloff!r}")
    return value


def _box_corners(spec: str, rest: str) -> tuple[list[float], list[float]]:
    items = [s.strip() for s in rest.split(",")]
    if len(items) != 6 or any(not s for s in items):
        raise DreamcoreError(f"--region {spec!r}: a box needs six comma-separated numbers x0,y0,z0,x1,y1,z1, "
                             f"got {len([s for s in items if s])}")
    values = []
    for name, s in zip(("x0", "y0", "z0", "x1", "y1", "z1"), items):
        try:
            v = float(s)
        except ValueError:
            raise DreamcoreError(f"--region {spec!r}: {name} = {s!r} is not a number") from None
        if not math.isfinite(v):
            raise DreamcoreError(f"--region {spec!r}: {name} = {s!r} is not a finite number")
        values.append(v)
    lo, hi = values[:3], values[3:]
    bad = [f"{a}0 = {l:g} is not below {a}1 = {h:g}" for a, l, h in zip("xyz", lo, hi) if not l < h]
    if bad:
        raise DreamcoreError(f"--region {spec!r}: " + "; ".join(bad) + " (the box is x0,y0,z0 then x1,y1,z1)")
    return lo, hi
