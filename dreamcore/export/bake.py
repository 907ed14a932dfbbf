"""Texture baking: evaluate a colour function at the surface point behind every texel of a UV atlas.

UV-space rasterization: vertex k goes to clip ``(2u_k − 1, 1 − 2v_k, 0, 1)``, so texel (row i, column j) of an
``S×S`` image has its centre at ``(u, v) = ((j + ½)/S, (i + ½)/S)`` — exactly where
:func:`dreamcore.meshes.raster.sample_texture` reads it (glTF convention, row 0 = v 0 = top).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamcore.export.normals import vertex_normals

ColorFn = Callable[[Tensor, Tensor], Union[Tensor, np.ndarray]]


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int):
    """Fragments of the UV layout on a ``size×size`` grid (one view)."""
    from dreamcore.meshes.raster import rasterize

    uv = torch.as_tensor(np.asarray(uvs), dtype=torch.float32)
    clip = torch.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1], torch.zeros_like(uv[:, 0]),
                        torch.ones_like(uv[:, 0])], dim=-1)
    return rasterize(clip[None], torch.as_tensor(np.asarray(faces), dtype=torch.int64), size, size)


def dilate_into_gutters(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Copy to every uncovered texel the colour of its nearest covered texel (Euclidean distance transform
    indices), so bilinear filtering and mip levels near chart borders see chart colours, not black."""
    from scipy.ndimage import distance_transform_edt

    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def bake_texture(
    verts: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    color_fn: ColorFn,
    size: int = 1024,
    supersample: int = 1,
    chunk: int = 65536,
    normals: Optional[np.ndarray] = None,
    samples_fn: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None,
) -> np.ndarray:
    """Bake ``color_fn`` into a ``size×size`` texture for the mesh (verts [V, 3], faces [F, 3], uvs [V, 2]).

    Every (sub)texel centre covered by a triangle in UV space gets the interpolated 3D position ``p = Σ b_k v_k``
    and smooth normal ``n = normalize(Σ b_k n_k)``; ``color_fn(p [N, 3], n [N, 3]) -> [N, 3]`` is called in chunks
    of ``chunk`` (no grad). With ``supersample = s`` the layout is rasterized at ``s·size`` and each texel is the
    mean of its covered sub-texels. Texels outside the charts take the nearest chart colour.
    ``normals``: per-vertex normals (default: :func:`vertex_normals`, welded across seams).
    ``samples_fn(p, n, colour)``: optional hook called with every evaluated chunk (diagnostics).
    Returns [size, size, 3] float32 in [0, 1].
    """
    from dreamcore.meshes.raster import interpolate

    s = max(1, int(supersample))
    full = size * s
    frags = rasterize_uv(uvs, faces, full)
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    if normals is None:
        normals = vertex_normals(verts, faces)
    mask = frags.face_id[0] >= 0  # [S, S]
    pos = interpolate(torch.as_tensor(np.asarray(verts), dtype=torch.float32), faces_t, frags)[0][mask]
    nrm = interpolate(torch.as_tensor(np.asarray(normals), dtype=torch.float32), faces_t, frags)[0][mask]
    nrm = F.normalize(nrm, dim=-1)
    colors = torch.zeros(pos.shape[0], 3)
    with torch.no_grad():
        for i in range(0, pos.shape[0], chunk):
            p, n = pos[i:i + chunk], nrm[i:i + chunk]
            c = torch.as_tensor(color_fn(p, n)).detach().float().cpu().reshape(-1, 3)
            colors[i:i + chunk] = c
            if samples_fn is not None:
                samples_fn(p, n, c)
    image = torch.zeros(full, full, 3)
    image[mask] = torch.nan_to_num(colors, nan=0.0).clamp(0.0, 1.0)
    weight = mask.float()
    if s > 1:  # mean over covered sub-texels of each s×s block
        summed = F.avg_pool2d(image.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
        weight = F.avg_pool2d(weight[None, None], s)[0, 0]
        image = summed / weight.clamp_min(1e-12)[..., None]
    covered = (weight > 0).numpy()
    return dilate_into_gutters(image.numpy().astype(np.float32), covered)
