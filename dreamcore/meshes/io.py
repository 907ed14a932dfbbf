"""Loading coloured meshes (GLB/glTF, OBJ+MTL+textures, PLY, STL) into a :class:`MeshAsset`, and normalization.

Each format has its reader (:mod:`~dreamcore.meshes.gltf`, :mod:`~dreamcore.meshes.obj`,
:mod:`~dreamcore.meshes.ply`; STL through trimesh) producing placed parts that
:func:`~dreamcore.meshes.parts.merge_parts` checks and concatenates. Colour conventions (MeshAsset holds
display/sRGB values): glTF's ``COLOR_0`` and ``baseColorFactor`` are linear and are converted, textures are
sRGB; OBJ and PLY colours are display values; STL has none (neutral grey). Any file that cannot be used raises
:class:`~dreamcore.meshes.parts.MeshFileError` naming the file and the problem before any work is done.

UVs: MeshAsset uses glTF's convention (v down); OBJ and PLY store v up and are flipped, ``v' = 1 − v``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import Material, MeshAsset, SceneTransform
from dreamcore.meshes.color import linear_to_srgb, srgb_to_linear  # noqa: F401 - re-exported
from dreamcore.meshes.parts import MeshFileError, Part, merge_parts

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
STL_GREY = (0.7, 0.7, 0.7)

PathLike = Union[str, os.PathLike]
log = logging.getLogger("dreamcore.meshes")


def _read_stl(path: Path) -> tuple[list[Part], dict]:
    """ASCII or binary STL through trimesh: geometry only, a neutral grey material."""
    import trimesh

    if path.stat().st_size == 0:
        raise MeshFileError(path, "the file is empty")
    try:
        mesh = trimesh.load(str(path), file_type="stl", force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for malformed files
        raise MeshFileError(path, f"it is not a readable STL file ({type(exc).__name__}: {exc})") from None
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    log.info("%s: STL files carry no colour; the mesh is neutral grey", path)
    return [Part(np.asarray(mesh.vertices, np.float64), faces, None, None, ("stl",))], {
        ("stl",): Material(base_color=STL_GREY)}


def check_mesh_file(path: PathLike) -> None:
    """Raise what :func:`load_mesh` would raise for ``path``, keeping nothing (for files that must be usable
    but are only read later, such as the mesh a run is scored against)."""
    _read(Path(path))


def load_mesh(path: PathLike) -> MeshAsset:
    """Load a GLB/glTF 2.0, OBJ (+MTL and textures), PLY or STL file as one MeshAsset in the file's own frame.

    Node transforms are applied and all triangle geometry is merged, with one Material per source material.
    Raises MeshFileError (a DreamcoreError) naming the file and the problem for a missing, unsupported or
    malformed file: out-of-range indices, NaN/Inf values, no triangles (empty files, point clouds, lines),
    wrong JSON types, missing buffers, Draco streams that cannot be decoded, glTF 1.0.
    """
    return _read(Path(path))


def _read(path: Path) -> MeshAsset:
    from dreamcore.meshes.gltf import read_gltf
    from dreamcore.meshes.obj import read_obj
    from dreamcore.meshes.ply import read_ply

    if not path.is_file():
        raise DreamcoreError(f"mesh file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".glb": read_gltf, ".gltf": read_gltf, ".obj": read_obj, ".ply": read_ply, ".stl": _read_stl}
    if suffix not in readers:
        raise MeshFileError(path, f"unsupported format {suffix or '(no suffix)'!r}; use one of "
                                  + ", ".join(SUPPORTED_SUFFIXES))
    try:
        parts, materials = readers[suffix](path)
    except MeshFileError:
        raise
    except (OSError, MemoryError) as exc:
        raise MeshFileError(path, f"it could not be read ({exc})") from None
    return merge_parts(path, parts, materials)


def _used_vertices(asset: MeshAsset) -> Tensor:
    """[U, 3] the vertices referenced by faces (all vertices if there are no faces)."""
    return asset.vertices[asset.faces.unique()] if asset.faces.numel() > 0 else asset.vertices


def bounding_box(asset: MeshAsset) -> tuple[Tensor, Tensor]:
    """Axis-aligned bounding box (min [3], max [3]) of the vertices used by faces."""
    used = _used_vertices(asset)
    return used.amin(0), used.amax(0)


def normalize(asset: MeshAsset, radius: float = 0.9) -> tuple[MeshAsset, SceneTransform]:
    """Centre the asset on its bounding-box centre ``c`` and scale so the farthest vertex from ``c`` is at
    ``radius``: ``p' = (p − c) · s``, ``s = radius / max‖p − c‖`` (over vertices used by faces).
    Returns the new asset and the transform."""
    used = _used_vertices(asset)
    center = (used.amin(0) + used.amax(0)) * 0.5
    extent = (used - center).norm(dim=-1).max()
    if not torch.isfinite(extent) or extent <= 0:
        raise DreamcoreError("cannot normalize a mesh whose vertices all coincide (zero size)")
    transform = SceneTransform(center=tuple(float(x) for x in center), scale=float(radius / extent))
    return replace(asset, vertices=transform.to_scene(asset.vertices)), transform


def asset_to_trimesh(asset: MeshAsset, linear_colors: bool = False):
    """MeshAsset -> trimesh.Scene with one mesh per used material (for writers).

    Each mesh carries a PBR material (``baseColorFactor`` = base colour, ``baseColorTexture`` = texture),
    UVs converted back to trimesh's convention (v up) and vertex colours as a ``color`` vertex attribute
    (exported by trimesh's glTF writer as COLOR_0). With ``linear_colors`` the factor and vertex colours are
    converted to linear, as glTF requires; textures stay sRGB.
    """
    import trimesh
    from PIL import Image

    faces_all = asset.faces.cpu().numpy()
    face_material = (
        asset.face_material.cpu().numpy() if asset.face_material is not None else np.zeros(len(faces_all), np.int64)
    )
    vertices_all = asset.vertices.detach().cpu().numpy().astype(np.float64)
    scene = trimesh.Scene()
    convert = srgb_to_linear if linear_colors else (lambda c: np.asarray(c, dtype=np.float64))
    for mat_index, material in enumerate(asset.materials):
        sel = face_material == mat_index
        if not sel.any():
            continue
        used, inverse = np.unique(faces_all[sel], return_inverse=True)
        faces = inverse.reshape(-1, 3)
        uv = None
        if asset.uvs is not None:
            uv_gltf = asset.uvs.detach().cpu().numpy()[used].astype(np.float64)
            uv = np.stack([uv_gltf[:, 0], 1.0 - uv_gltf[:, 1]], axis=1)
        image = None
        if material.texture is not None:
            tex = (material.texture.detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            image = Image.fromarray(tex, mode="RGB")
        factor = np.append(convert(np.asarray(material.base_color, dtype=np.float64)), 1.0)
        pbr = trimesh.visual.material.PBRMaterial(
            name=f"material_{mat_index}", baseColorFactor=factor, baseColorTexture=image, metallicFactor=0.0,
            roughnessFactor=1.0,
        )
        visual = trimesh.visual.TextureVisuals(uv=uv, material=pbr)
        if asset.vertex_colors is not None:
            rgb = convert(asset.vertex_colors.detach().cpu().numpy()[used].astype(np.float64))
            rgba = np.concatenate([rgb, np.ones((len(used), 1))], axis=1)
            visual.vertex_attributes["color"] = (np.clip(rgba, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        mesh = trimesh.Trimesh(vertices=vertices_all[used], faces=faces, visual=visual, process=False)
        scene.add_geometry(mesh, geom_name=f"mesh_{mat_index}", node_name=f"mesh_{mat_index}")
    return scene
