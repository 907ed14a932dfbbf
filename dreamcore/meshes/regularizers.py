"""Mesh regularizers used by mesh refinement stages (Magic3D, Fantasia3D; Nealen et al. 2006 for the Laplacian).

* Uniform Laplacian smoothing: ``L = mean_v ‖v − mean_{u ∈ N(v)} u‖²`` (the "umbrella" operator; flat, evenly
  spaced neighbourhoods have L = 0).
* Normal consistency: ``N = mean_{edges (f, g)} (1 − n_f · n_g)`` over interior edges (0 for a plane).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamcore.meshes.diffraster import EdgeTopology


def unique_edges(faces: Tensor) -> Tensor:
    """[E, 2] undirected edges (sorted pairs) of faces [F, 3]."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    n = int(faces.max()) + 1 if faces.numel() else 1
    key = torch.unique(e.min(1).values * n + e.max(1).values)  # scalar keys: far faster than unique(dim=0)
    return torch.stack([torch.div(key, n, rounding_mode="floor"), key % n], 1)


def laplacian_loss(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared uniform-Laplacian magnitude over vertices used by faces (0 without faces)."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0.0
    edges = unique_edges(faces)
    i, j = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
    n_v = vertices.shape[0]
    nbr_sum = torch.zeros_like(vertices).index_add(0, i, vertices[j])
    degree = torch.zeros(n_v, device=vertices.device, dtype=vertices.dtype).index_add(
        0, i, torch.ones_like(i, dtype=vertices.dtype))
    used = degree > 0
    lap = vertices[used] - nbr_sum[used] / degree[used, None]
    return lap.pow(2).sum(-1).mean()


def normal_consistency_loss(vertices: Tensor, faces: Tensor, topology: EdgeTopology) -> Tensor:
    """Mean ``1 − cos`` between the unit normals of faces sharing an edge (each interior edge once)."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0.0
    v0, v1, v2 = vertices[faces].unbind(1)
    n = F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=1e-12)
    f = torch.arange(faces.shape[0], device=faces.device)[:, None].expand(-1, 3)
    nb = topology.neighbor
    pair = nb > f  # each interior edge once (masked, not selected: no host read of how many)
    cos = (n[f.reshape(-1)] * n[nb.clamp_min(0).reshape(-1)]).sum(-1)
    w = pair.reshape(-1).to(cos.dtype)
    return ((1.0 - cos) * w).sum() / w.sum().clamp_min(1.0)
