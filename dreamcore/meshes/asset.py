"""In-memory coloured triangle mesh, the currency between mesh I/O, rasterizer, reference prior and export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Material:
    """glTF-like base colour: ``base_color`` factor times ``texture`` (if any), both display (sRGB) values in [0, 1].

    texture: [H, W, 3] float32; row 0 is the top of the image (glTF UV (0, 0) is its top-left corner).
    """

    base_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture: Optional[Tensor] = None


@dataclass
class MeshAsset:
    """A triangle mesh with base colour.

    vertices: [V, 3] float32. faces: [F, 3] int64.
    uvs: [V, 2] float32 texture coordinates, glTF convention (u right, v down, (0, 0) = texture top-left).
    vertex_colors: [V, 3] float32 display values in [0, 1].
    face_material: [F] int64 index into ``materials`` (all zeros when there is one material).
    The colour of a surface point is ``material.base_color * texture(uv) * vertex_color`` (missing terms = 1).
    """

    vertices: Tensor
    faces: Tensor
    uvs: Optional[Tensor] = None
    vertex_colors: Optional[Tensor] = None
    face_material: Optional[Tensor] = None
    materials: list[Material] = field(default_factory=lambda: [Material()])


def textured_asset(verts, faces, uvs, texture) -> MeshAsset:
    """A MeshAsset with one textured material from arrays: verts [V, 3], faces [F, 3], uvs [V, 2] (glTF
    convention), texture [H, W, 3] in [0, 1]."""
    import numpy as np

    return MeshAsset(
        vertices=torch.as_tensor(np.asarray(verts), dtype=torch.float32),
        faces=torch.as_tensor(np.asarray(faces), dtype=torch.int64),
        uvs=torch.as_tensor(np.asarray(uvs), dtype=torch.float32),
        materials=[Material(texture=torch.as_tensor(np.asarray(texture), dtype=torch.float32))],
    )


@dataclass(frozen=True)
class SceneTransform:
    """Similarity between a mesh's own frame and dreamcore's normalized scene: ``p_scene = (p - center) * scale``."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def to_scene(self, points: Tensor) -> Tensor:
        return (points - torch.tensor(self.center, dtype=points.dtype, device=points.device)) * self.scale

    def to_original(self, points: Tensor) -> Tensor:
        return points / self.scale + torch.tensor(self.center, dtype=points.dtype, device=points.device)
