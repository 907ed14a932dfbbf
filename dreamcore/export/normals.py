"""Smooth vertex normals shared by the baker and the writers."""

from __future__ import annotations

import numpy as np


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V, 3] float32 unit normals: area-weighted sum of face normals ``(v1 − v0) × (v2 − v0)`` over the faces
    around each *position* (vertices split at UV seams share one normal, so shading has no seams).
    Vertices with no usable faces get +Y."""
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    _, weld = np.unique(verts, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    v = verts[faces]
    face_n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])  # length = 2·area
    acc = np.zeros((int(weld.max(initial=-1)) + 1, 3))
    for k in range(3):
        np.add.at(acc, weld[faces[:, k]], face_n)
    n = acc[weld]
    length = np.linalg.norm(n, axis=1, keepdims=True)
    ok = length[:, 0] > 1e-20
    n = np.where(ok[:, None], n / np.where(ok[:, None], length, 1.0), np.array([0.0, 1.0, 0.0]))
    return n.astype(np.float32)
