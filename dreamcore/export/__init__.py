"""Export: density field -> mesh (extract), UV atlas (uv), baked texture (bake), GLB / OBJ files (writers) and a
turntable video (turntable). :func:`export_textured_mesh` composes the steps after extraction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import SceneTransform

PathLike = Union[str, os.PathLike]


def textured_mesh(
    verts: np.ndarray,
    faces: np.ndarray,
    color_fn: Callable[[Tensor, Tensor], Tensor],
    transform: Optional[SceneTransform] = None,
    texture_size: int = 1024,
    bake_samples_fn: Optional[Callable[[Tensor, Tensor, Tensor], None]] = None,
    texture_supersample: int = 1,
):
    """Unwrap (xatlas) ``verts`` [V, 3] (scene frame), ``faces`` [F, 3] and bake ``color_fn(points, normals) ->
    [N, 3]`` into a ``texture_size``² texture: a :class:`~dreamcore.export.exporters.TexturedMesh` that files are
    written from (through ``transform.to_original``). ``bake_samples_fn(points, normals, colours)``: optional hook
    receiving every baked chunk. Raises DreamcoreError for an empty mesh."""
    from dreamcore.export.bake import bake_texture
    from dreamcore.export.exporters import TexturedMesh
    from dreamcore.meshes.uv import unwrap

    if len(faces) == 0:
        raise DreamcoreError("nothing to export: the extracted mesh is empty (no surface at the isosurface level; "
                             "lower export.isosurface or train longer)")
    verts_uv, faces_uv, uvs, _ = unwrap(verts, faces, resolution=texture_size)
    texture = bake_texture(verts_uv, faces_uv, uvs, color_fn, size=texture_size, supersample=texture_supersample,
                           samples_fn=bake_samples_fn)
    return TexturedMesh(verts_uv, faces_uv, uvs, texture, transform)


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
    """:func:`textured_mesh`, then ``model.glb`` and/or ``model.obj`` + ``model.mtl`` + ``model.png`` (vertices
    mapped to the reference frame by ``transform.to_original``) and ``turntable.<turntable_format>`` (rendered in
    the scene frame) written into ``run_dir``, each atomically, by the exporters of ``formats``.
    Returns {"glb", "obj", "mtl", "png", "turntable"} -> path for what was written."""
    from dreamcore.export.exporters import ExportOptions, ExportSource, exporters_for, write_formats

    exporters_for(formats)  # an unknown format fails before any work
    if turntable_format not in ("mp4", "gif"):
        raise ValueError(f"turntable_format must be 'mp4' or 'gif', got {turntable_format!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not formats:
        return {}
    mesh = textured_mesh(verts, faces, color_fn, transform, texture_size, bake_samples_fn, texture_supersample)
    options = ExportOptions(turntable_frames, turntable_resolution, turntable_format)
    return write_formats(run_dir, ExportSource.of_mesh(mesh, options), formats)


def field_mesh(density: Callable[[Tensor], Tensor], color_fn: Callable[[Tensor, Tensor], Tensor], bound: float,
               export, transform: Optional[SceneTransform] = None,
               agreement: Optional[Callable[[np.ndarray, np.ndarray], float]] = None,
               fused: Optional[Callable[[], np.ndarray]] = None):
    """A density field's textured mesh and its report: ``density`` sampled on an ``export.resolution``³ grid
    over [−bound, bound]³, marching cubes at ``export.isosurface`` (or, with ``export.isosurface_search``, at
    the level whose mesh scores best by ``agreement(verts, faces)``: the system's silhouette IoU against its own
    renders), cleaned (cavities, small components, decimation to ``export.target_faces``), Taubin-smoothed,
    unwrapped and baked with ``color_fn``. With ``export.surface: depth`` the grid is ``fused()`` instead (the
    scene's rendered depth fused, :mod:`dreamcore.export.fusion`) and its level 0 the surface (no level search).
    The report: faces, vertices, surface, isosurface (and each searched level's score), extract_seconds."""
    import time

    from dreamcore.export.extract import best_isosurface, mesh_from_grid, sample_grid, taubin_smooth

    e = export
    t0 = time.perf_counter()
    options = dict(fill_cavities=e.fill_cavities, keep_components=e.keep_components,
                   min_component_ratio=e.min_component_ratio, target_faces=e.target_faces)
    if e.surface == "depth":
        if fused is None:
            raise DreamcoreError("export.surface=depth fuses the scene's rendered depth: this system renders none "
                                 "(use export.surface=density)")
        verts, faces = mesh_from_grid(fused(), 0.0, bound, **options)
        if len(faces) == 0:
            raise DreamcoreError("nothing to export: the scene renders nothing opaque (alpha > ½) from any of the "
                                 "export.fusion_views views (train longer, or use export.surface=density)")
        surface = {"surface": "depth", "fusion_views": e.fusion_views}
    else:
        grid = sample_grid(density, e.resolution, bound)
        if e.isosurface_search:
            if agreement is None:
                raise DreamcoreError("export.isosurface_search needs a way to score a level (this system gives "
                                     "none)")
            level, scores, (verts, faces) = best_isosurface(grid, e.isosurface_search, bound, agreement, **options)
            search = {str(k): round(v, 4) for k, v in scores.items()}
        else:
            level, search = e.isosurface, {}
            verts, faces = mesh_from_grid(grid, level, bound, **options)
        surface = {"surface": "density", "isosurface": level,
                   **({"isosurface_silhouette_iou": search} if search else {})}
    verts = taubin_smooth(verts, faces, e.smooth_iterations)
    extract_seconds = round(time.perf_counter() - t0, 2)
    mesh = textured_mesh(verts, faces, color_fn, transform, texture_size=e.texture_size)
    return mesh, {"faces": int(len(faces)), "vertices": int(len(verts)), **surface, "extract_seconds": extract_seconds}
