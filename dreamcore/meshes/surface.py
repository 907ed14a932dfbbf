"""What a mesh representation hands to the rasterizer each step (explicit meshes, DMTet)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dreamcore.meshes.diffraster import EdgeTopology


@dataclass
class Surface:
    """A triangle mesh: vertices [V, 3] (scene frame, differentiable), faces [F, 3] int64, and its edge
    topology (for silhouette detection)."""

    vertices: Tensor
    faces: Tensor
    topology: EdgeTopology

    @staticmethod
    def of(vertices: Tensor, faces: Tensor) -> "Surface":
        return Surface(vertices, faces, EdgeTopology.of(faces, vertices.shape[0]))
