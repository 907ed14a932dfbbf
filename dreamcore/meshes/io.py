"""Loading coloured meshes (GLB/glTF, OBJ+MTL+textures, PLY) into a :class:`MeshAsset`, and normalization.

Colour conventions on load (MeshAsset holds display/sRGB values, see its docstring):

- glTF (``.glb``/``.gltf``): ``COLOR_0`` and ``baseColorFactor`` are linear by the glTF spec and are
  converted to sRGB, ``c_srgb = 1.055 c^(1/2.4) − 0.055`` (``12.92 c`` below 0.0031308); the base colour
  texture is already sRGB. Colour = factor × texture × COLOR_0.
- OBJ: the ``map_Kd`` texture alone when present (``Kd`` is ignored then: many writers, trimesh included,
  put a grey ``Kd`` next to a texture that viewers show unmodulated), else ``Kd``; ``v x y z r g b`` colours.
- PLY: per-vertex or per-face colours (display values).
- Per-face colours become vertex colours on unshared ("unmerged") vertices.

UVs: trimesh stores OBJ-style UVs (v up, origin bottom-left); MeshAsset uses glTF's (v down), ``v' = 1 − v``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import Material, MeshAsset, SceneTransform

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
_GLTF_SUFFIXES = (".glb", ".gltf")

PathLike = Union[str, os.PathLike]


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Display sRGB in [0, 1] -> linear: ``c/12.92`` below 0.04045, else ``((c + 0.055)/1.055)^2.4``."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear in [0, 1] -> display sRGB: ``12.92 c`` below 0.0031308, else ``1.055 c^(1/2.4) − 0.055``."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1.0 / 2.4) - 0.055)


def _colors_to_unit(colors: np.ndarray) -> np.ndarray:
    """[N, 3|4] colours of any dtype (uint8/uint16 normalized, or float) -> [N, 3] float64 in [0, 1]."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] < 3:
        raise ValueError(f"colours must be [N, 3|4], got {colors.shape}")
    rgb = colors[:, :3]
    if np.issubdtype(rgb.dtype, np.integer):
        return rgb.astype(np.float64) / float(np.iinfo(rgb.dtype).max)
    return np.clip(rgb.astype(np.float64), 0.0, 1.0)


def _image_to_tensor(image) -> Tensor:
    """PIL image (any mode) -> [H, W, 3] float32 in [0, 1], row 0 = top."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr))


@dataclass
class _Part:
    """One placed geometry of a scene, in numpy, ready to concatenate."""

    vertices: np.ndarray  # [V, 3] float64
    faces: np.ndarray  # [F, 3] int64
    uvs: Optional[np.ndarray]  # [V, 2] glTF convention
    vertex_colors: Optional[np.ndarray]  # [V, 3] display values
    material_key: object


def _material_from_trimesh(material, is_gltf: bool, has_uv: bool) -> Material:
    """trimesh PBRMaterial / SimpleMaterial -> Material (base colour in display values, texture [H, W, 3])."""
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    image, factor = None, None
    if isinstance(material, PBRMaterial):
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = _colors_to_unit(np.asarray(material.baseColorFactor)[None])[0]
            if is_gltf:
                factor = linear_to_srgb(factor)
    elif isinstance(material, SimpleMaterial):
        image = material.image
        if image is None and material.diffuse is not None:
            factor = _colors_to_unit(np.asarray(material.diffuse)[None])[0]
    texture = _image_to_tensor(image) if (image is not None and has_uv) else None
    base = (1.0, 1.0, 1.0) if factor is None else tuple(float(x) for x in factor)
    return Material(base_color=base, texture=texture)


def _parts_from_geometry(geom, transform: np.ndarray, is_gltf: bool, materials: dict) -> Optional[_Part]:
    """One trimesh.Trimesh placed by a 4x4 ``transform`` -> _Part (None if it has no triangles).
    Registers its material in ``materials`` (keyed by the source material's identity)."""
    import trimesh

    if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
        return None
    vertices = np.asarray(geom.vertices, dtype=np.float64)
    faces = np.asarray(geom.faces, dtype=np.int64)
    vertices = vertices @ transform[:3, :3].T + transform[:3, 3]
    if np.linalg.det(transform[:3, :3]) < 0:  # a mirroring transform: keep the winding outward
        faces = faces[:, ::-1].copy()
    visual = geom.visual
    kind = getattr(visual, "kind", None)
    uvs, colors, key = None, None, "default"
    if kind == "texture" or hasattr(visual, "material"):
        raw_uv = getattr(visual, "uv", None)
        has_uv = raw_uv is not None and len(raw_uv) == len(vertices)
        if has_uv:
            uv = np.asarray(raw_uv, dtype=np.float64)
            uvs = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)
        attrs = getattr(visual, "vertex_attributes", {}) or {}
        if "color" in attrs and len(attrs["color"]) == len(vertices):
            colors = _colors_to_unit(attrs["color"])
            colors = linear_to_srgb(colors) if is_gltf else colors
        material = getattr(visual, "material", None)
        if material is not None:
            key = (id(material), has_uv)
            if key not in materials:
                materials[key] = _material_from_trimesh(material, is_gltf, has_uv)
    elif kind == "vertex":
        colors = _colors_to_unit(visual.vertex_colors)
        colors = linear_to_srgb(colors) if is_gltf else colors
    elif kind == "face":
        face_colors = _colors_to_unit(visual.face_colors)
        vertices = vertices[faces].reshape(-1, 3)
        colors = np.repeat(face_colors, 3, axis=0)
        faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
    if key == "default" and key not in materials:
        materials[key] = Material()
    return _Part(vertices, faces, uvs, colors, key)


def _merge_parts(parts: list[_Part], materials: dict) -> MeshAsset:
    """Concatenate placed parts into one MeshAsset (missing UVs -> 0, missing vertex colours -> 1)."""
    keys = list(materials.keys())
    index = {k: i for i, k in enumerate(keys)}
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + off for p, off in zip(parts, offsets[:-1])])
    face_material = np.concatenate([np.full(len(p.faces), index[p.material_key], np.int64) for p in parts])
    uvs = None
    if any(p.uvs is not None for p in parts):
        uvs = np.concatenate([p.uvs if p.uvs is not None else np.zeros((len(p.vertices), 2)) for p in parts])
    colors = None
    if any(p.vertex_colors is not None for p in parts):
        colors = np.concatenate(
            [p.vertex_colors if p.vertex_colors is not None else np.ones((len(p.vertices), 3)) for p in parts]
        )
    as_t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return MeshAsset(
        vertices=as_t(vertices),
        faces=torch.from_numpy(faces),
        uvs=as_t(uvs),
        vertex_colors=as_t(colors),
        face_material=torch.from_numpy(face_material),
        materials=[materials[k] for k in keys],
    )


def load_mesh(path: PathLike) -> MeshAsset:
    """Load a GLB/glTF, OBJ (+MTL and textures) or PLY file as one MeshAsset in the file's own frame.

    Scene node transforms are applied and all triangle geometries are merged, with one Material per source
    material. Raises DreamcoreError for a missing, unsupported or unreadable file, no triangles, or
    non-finite vertices.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise DreamcoreError(f"mesh file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise DreamcoreError(f"unsupported mesh format {suffix!r} for {path}; use one of {supported}")
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        raise DreamcoreError(f"could not read mesh file {path}: {type(exc).__name__}: {exc}") from exc
    is_gltf = suffix in _GLTF_SUFFIXES
    materials: dict = {}
    parts = []
    try:
        for node in scene.graph.nodes_geometry:
            transform, geom_name = scene.graph[node]
            part = _parts_from_geometry(scene.geometry[geom_name], np.asarray(transform), is_gltf, materials)
            if part is not None:
                parts.append(part)
    except Exception as exc:
        raise DreamcoreError(f"could not read mesh file {path}: {type(exc).__name__}: {exc}") from exc
    if not parts:
        raise DreamcoreError(f"mesh file {path} contains no triangles")
    used = {p.material_key for p in parts}
    materials = {k: m for k, m in materials.items() if k in used}
    asset = _merge_parts(parts, materials)
    if not torch.isfinite(asset.vertices).all():
        raise DreamcoreError(f"mesh file {path} has non-finite (NaN or infinite) vertex coordinates")
    return asset


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
