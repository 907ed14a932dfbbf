"""Tetrahedral grids and differentiable marching tetrahedra (DMTet: Shen et al. 2021, "Deep Marching Tetrahedra").

Grid: the cube ``[−b, b]³`` cut into ``N³`` cells, each split into 6 tetrahedra around its main diagonal
(Kuhn / Freudenthal subdivision: one tet per axis order ``π``, with corners ``c, c + e_π0, c + e_π0 + e_π1,
c + 1``). Every cell uses the same diagonal, so faces match between cells (a conforming mesh).

Marching tetrahedra: with signed values ``s`` at the grid vertices (negative inside), a tet with k ∈ {1, 2, 3}
inside corners is crossed by the surface on its sign-changing edges ``(a, b)``, at
``p = (p_a s_b − p_b s_a) / (s_b − s_a)`` (the zero of the linear interpolation; differentiable in ``s`` and in
the vertex positions). k = 1 or 3 gives one triangle, k = 2 a quad (two triangles). The case table is derived
here from that rule; triangles are then oriented so their normals point from inside to outside. A crossing
edge shared by several tets gives one vertex, so the surface is a connected, consistently oriented mesh.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch
from torch import Tensor

TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def tet_grid(resolution: int, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """Vertices [(N+1)³, 3] float32 and tets [6N³, 4] int64 of the Kuhn-subdivided cube grid."""
    n = int(resolution)
    if n < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    axis = torch.linspace(-bound, bound, n + 1)
    verts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    idx = torch.arange(n)
    ci, cj, ck = torch.meshgrid(idx, idx, idx, indexing="ij")
    corner = torch.stack([ci, cj, ck], -1).reshape(-1, 3)  # [N³, 3] cell origin (grid index)

    def vid(g: Tensor) -> Tensor:
        return (g[..., 0] * (n + 1) + g[..., 1]) * (n + 1) + g[..., 2]

    tets = []
    eye = torch.eye(3, dtype=torch.int64)
    for perm in itertools.permutations(range(3)):
        p1 = corner + eye[perm[0]]
        p2 = p1 + eye[perm[1]]
        p3 = corner + 1
        tets.append(torch.stack([vid(corner), vid(p1), vid(p2), vid(p3)], -1))
    return verts, torch.cat(tets, 0)


@lru_cache(maxsize=None)
def _case_table() -> tuple[Tensor, Tensor]:
    """For each 4-bit inside pattern: up to two triangles as tet-edge indices [16, 2, 3] (−1 = none) and the
    number of triangles [16]."""
    table = torch.full((16, 2, 3), -1, dtype=torch.int64)
    count = torch.zeros(16, dtype=torch.int64)
    edge_of = {frozenset(e): k for k, e in enumerate(TET_EDGES)}
    for code in range(16):
        inside = [c for c in range(4) if code >> c & 1]
        outside = [c for c in range(4) if not code >> c & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, 0] = torch.tensor([edge_of[frozenset((lone, o))] for o in others])
            count[code] = 1
        elif len(inside) == 2:
            a, b = inside
            c, d = outside
            ac, ad, bd, bc = (edge_of[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c)))
            table[code, 0] = torch.tensor([ac, ad, bd])  # the quad ac-ad-bd-bc (cyclic), split on ac-bd
            table[code, 1] = torch.tensor([ac, bd, bc])
            count[code] = 2
    return table, count


def marching_tets(positions: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """Surface of ``{sdf < 0}``: positions [V, 3] and sdf [V] at the grid vertices, tets [T, 4].

    Returns (vertices [M, 3], faces [F, 3] int64), outward-oriented, differentiable w.r.t. ``positions`` and
    ``sdf``. Empty tensors when the surface does not cross the grid.
    """
    dev = positions.device
    with torch.no_grad():
        inside = sdf < 0
        o = inside.to(torch.uint8)[tets]  # [T, 4]
        code_all = o[:, 0] + 2 * o[:, 1] + 4 * o[:, 2] + 8 * o[:, 3]
        valid = ((code_all != 0) & (code_all != 15)).nonzero().squeeze(1)
        vt = tets[valid]
        occ_v = o[valid].bool()
        code = code_all[valid].long()
        edges = vt[:, torch.tensor(TET_EDGES, device=dev)]  # [T', 6, 2]
        lo, hi = edges.min(-1).values, edges.max(-1).values
        crossing = inside[lo] != inside[hi]
        key = lo * positions.shape[0] + hi
        ukey, inverse = torch.unique(key[crossing], return_inverse=True)
        edge_vertex = torch.full_like(key, -1)
        edge_vertex[crossing] = inverse
        table, count = _case_table()
        table, count = table.to(dev), count.to(dev)
        tri_edges = table[code]  # [T', 2, 3]
        has = torch.arange(2, device=dev)[None] < count[code][:, None]  # [T', 2]
        rows = torch.arange(vt.shape[0], device=dev)[:, None, None].expand(-1, 2, 3)
        faces = edge_vertex[rows, tri_edges.clamp_min(0)][has]  # [F, 3]
        tet_of_face = torch.arange(vt.shape[0], device=dev)[:, None].expand(-1, 2)[has]
    a, b = torch.div(ukey, positions.shape[0], rounding_mode="floor"), ukey % positions.shape[0]
    sa, sb = sdf[a][:, None], sdf[b][:, None]
    denom = sb - sa
    denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    verts = (positions[a] * sb - positions[b] * sa) / denom
    with torch.no_grad():  # orient: normal along the inside → outside direction of its tet
        if faces.shape[0] > 0:
            v0, v1, v2 = verts[faces].unbind(1)
            normal = torch.cross(v1 - v0, v2 - v0, dim=-1)
            corners = positions[vt[tet_of_face]]  # [F, 4, 3]
            w_in = occ_v[tet_of_face].to(positions.dtype)  # [F, 4]
            c_in = (corners * w_in[..., None]).sum(1) / w_in.sum(1, keepdim=True)
            c_out = (corners * (1 - w_in)[..., None]).sum(1) / (1 - w_in).sum(1, keepdim=True)
            flip = (normal * (c_out - c_in)).sum(-1) < 0
            faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return verts, faces


def grid_edges(tets: Tensor) -> Tensor:
    """[E, 2] unique undirected edges of a tet mesh (for the SDF sign regularizer)."""
    e = tets[:, torch.tensor(TET_EDGES)].reshape(-1, 2)
    n = int(tets.max()) + 1
    key = torch.unique(e.min(1).values * n + e.max(1).values)
    return torch.stack([torch.div(key, n, rounding_mode="floor"), key % n], 1)
