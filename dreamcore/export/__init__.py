"""Export: density field -> mesh (extract), UV atlas (uv), baked texture (bake), GLB / OBJ files (writers) and a
turntable video (turntable). :func:`export_textured_mesh` composes the steps after extraction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import SceneTransform

PathLike = Union[str, os.PathLike]


def export_textured_mesh(
    run_dir: PathLike,
    verts: np.ndarray,
    faces: np.ndarray,
    color_fn: Callable[[Tensor, Tensor], Tensor],
    transform: Optional[SceneTransform] = None,
    formats: Sequence[str] = ("glb", "obj", "turntable"),
    texture_size: int = 1024,
    turntable_frames: int = 48,
    turntable_resolution: int = 256,
    turntable_format: str = "mp4",
    bake_samples_fn: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None,
    texture_supersample: int = 1,
) -> dict[str, Path]:
    """Unwrap (xatlas) -> bake ``color_fn(points, normals) -> [N, 3]`` into a ``texture_size``² texture -> write
    ``model.glb`` and/or ``model.obj`` + ``model.mtl`` + ``model.png`` (vertices mapped to the reference frame by
    ``transform.to_original``) and ``turntable.<turntable_format>`` (rendered in the scene frame) into
    ``run_dir``, each atomically. ``verts`` [V, 3] (scene frame), ``faces`` [F, 3].
    ``bake_samples_fn(points, normals, colours)``: optional hook receiving every baked chunk.
    Returns {"glb", "obj", "mtl", "png", "turntable"} -> path for what was written. Raises DreamcoreError for an
    empty mesh.
    """
    from dreamcore.export.bake import bake_texture
    from dreamcore.export.exporters import TexturedMesh, exporters_for
    from dreamcore.meshes.uv import unwrap

    exporters = exporters_for(formats)
    if turntable_format not in ("mp4", "gif"):
        raise ValueError(f"turntable_format must be 'mp4' or 'gif', got {turntable_format!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if not formats:
        return paths
    if len(faces) == 0:
        raise DreamcoreError("nothing to export: the extracted mesh is empty (no surface at the isosurface level; "
                             "lower export.isosurface or train longer)")
    verts_uv, faces_uv, uvs, _ = unwrap(verts, faces, resolution=texture_size)
    texture = bake_texture(verts_uv, faces_uv, uvs, color_fn, size=texture_size, supersample=texture_supersample,
                           samples_fn=bake_samples_fn)
    mesh = TexturedMesh(verts_uv, faces_uv, uvs, texture)
    options = {"turntable_frames": turntable_frames, "turntable_resolution": turntable_resolution,
               "turntable_format": turntable_format}
    for exporter in exporters:
        paths.update(exporter.write(run_dir, mesh, transform, **options))
    return paths
