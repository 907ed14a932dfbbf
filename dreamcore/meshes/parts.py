"""Placed pieces of geometry as the file readers produce them, their checks, and their merge into a MeshAsset.

A reader turns each primitive/group of a file into a :class:`Part` (vertices already placed in the file's
frame, one material key), registers the materials by key, and calls :func:`merge_parts`. The checks here are
the ones every format shares: indices inside the vertex array, finite values, at least one triangle of
non-zero area. They raise :class:`MeshFileError`, whose message names the file and the problem in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Optional

import numpy as np
import torch

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import Material, MeshAsset


class MeshFileError(DreamcoreError):
    """A mesh file that cannot be used: missing, unsupported, malformed or without usable triangles."""

    def __init__(self, path, problem: str) -> None:
        super().__init__(f"mesh file {path}: {problem}")
        self.path, self.problem = Path(path), problem


@dataclass
class Part:
    """One placed geometry, in numpy, ready to concatenate.

    vertices [V, 3] float64, faces [F, 3] int64 (indices into vertices), uvs [V, 2] in the glTF convention
    (v down) or None, vertex_colors [V, 3] display values or None, material_key: key into the materials dict.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: Optional[np.ndarray]
    vertex_colors: Optional[np.ndarray]
    material_key: Hashable


def check_indices(path, where: str, faces: np.ndarray, n_vertices: int, quote_values: bool = True) -> None:
    """Raise unless every index of ``faces`` lies in [0, n_vertices). The message quotes the offending index
    when ``quote_values`` (the index is the model file's own); without it (indices read from another file, such
    as a glTF's external buffer) it names only how many and where, never a value read from that file."""
    if faces.size == 0:
        return
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= n_vertices:
        if not quote_values:
            bad = (faces < 0) | (faces >= n_vertices)
            first = int(np.flatnonzero(bad.reshape(-1))[0])
            raise MeshFileError(path, f"{where}: {int(bad.sum())} vertex indices are outside the {n_vertices} "
                                      f"vertices it has (the first at position {first})")
        bad = hi if hi >= n_vertices else lo
        raise MeshFileError(path, f"{where}: vertex index {bad} is outside the {n_vertices} vertices it has")


def check_finite(path, where: str, name: str, values: Optional[np.ndarray]) -> None:
    """Raise when ``values`` holds NaN or infinite numbers."""
    if values is None or values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        n_bad = int((~finite.all(axis=-1) if values.ndim > 1 else ~finite).sum())
        raise MeshFileError(path, f"{where}: {n_bad} {name} value(s) are NaN or infinite")


def merge_parts(path, parts: list[Part], materials: dict[Hashable, Material]) -> MeshAsset:
    """Concatenate placed parts into one MeshAsset (missing UVs -> 0, missing vertex colours -> 1), keeping
    only the materials that parts use. Raises MeshFileError when there is no triangle of non-zero area."""
    parts = [p for p in parts if len(p.faces) > 0]
    if not parts:
        raise MeshFileError(path, "it holds no triangles")
    used_keys = []
    for p in parts:
        if p.material_key not in used_keys:
            used_keys.append(p.material_key)
    index = {k: i for i, k in enumerate(used_keys)}
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    vertices = np.concatenate([p.vertices for p in parts]).astype(np.float64)
    faces = np.concatenate([p.faces + off for p, off in zip(parts, offsets[:-1])]).astype(np.int64)
    face_material = np.concatenate([np.full(len(p.faces), index[p.material_key], np.int64) for p in parts])
    uvs = None
    if any(p.uvs is not None for p in parts):
        uvs = np.concatenate([p.uvs if p.uvs is not None else np.zeros((len(p.vertices), 2)) for p in parts])
    colors = None
    if any(p.vertex_colors is not None for p in parts):
        colors = np.concatenate(
            [p.vertex_colors if p.vertex_colors is not None else np.ones((len(p.vertices), 3)) for p in parts]
        )
    check_indices(path, "faces", faces, len(vertices))
    used = np.unique(faces)
    check_finite(path, "vertices", "position", vertices[used])
    check_finite(path, "texture coordinates", "UV", None if uvs is None else uvs[used])
    check_finite(path, "vertex colours", "colour", None if colors is None else colors[used])
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not (area2 > 0).any():
        raise MeshFileError(path, f"all {len(faces)} triangles have zero area")
    as_t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return MeshAsset(
        vertices=as_t(vertices),
        faces=torch.from_numpy(faces),
        uvs=as_t(uvs),
        vertex_colors=as_t(None if colors is None else np.clip(colors, 0.0, 1.0)),
        face_material=torch.from_numpy(face_material),
        materials=[materials[k] for k in used_keys],
    )
