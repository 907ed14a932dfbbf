"""Writers for textured meshes: glTF 2.0 binary (GLB) and Wavefront OBJ + MTL + PNG.

Both take scene-frame geometry and an optional :class:`SceneTransform`; ``transform.to_original`` maps the
vertices back to the reference input's frame and scale (``p = p_scene / s + c``; a uniform scale keeps the
normals and the winding). Textures are display (sRGB) values, as glTF's ``baseColorTexture`` expects.
Every file is written to a temporary name in the same folder and then ``os.replace``d (atomic).
"""

from __future__ import annotations

import io
import json
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from dreamcore.export.normals import vertex_normals
from dreamcore.meshes.asset import SceneTransform

PathLike = Union[str, os.PathLike]

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
ROUGHNESS = 0.9


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` with the same suffix; on success ``os.replace`` it onto ``path``,
    on error remove it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_original(verts: np.ndarray, transform: Optional[SceneTransform]) -> np.ndarray:
    """[V, 3] scene-frame vertices -> the reference input's frame (identity without a transform)."""
    verts = np.asarray(verts, np.float64)
    if transform is None:
        return verts
    return transform.to_original(torch.from_numpy(verts)).numpy()


def texture_png(texture: np.ndarray) -> bytes:
    """[H, W, 3] float in [0, 1] -> PNG bytes (8-bit RGB, rounded)."""
    from PIL import Image

    tex = np.asarray(texture, np.float64)
    if tex.ndim != 3 or tex.shape[2] < 3:
        raise ValueError(f"texture must be [H, W, 3], got {tex.shape}")
    img = (np.clip(np.nan_to_num(tex[..., :3]), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_mesh(verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> None:
    if len(faces) == 0:
        raise ValueError("cannot write a mesh without faces")
    if uvs.shape != (len(verts), 2):
        raise ValueError(f"uvs must be [{len(verts)}, 2], got {uvs.shape}")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise ValueError("face indices out of range")
    if not (np.isfinite(verts).all() and np.isfinite(uvs).all()):
        raise ValueError("non-finite vertex positions or uvs")


class _BinaryBuffer:
    """The GLB BIN chunk: bufferViews appended at 4-byte aligned offsets."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict] = []

    def add(self, payload: bytes, target: Optional[int] = None) -> int:
        self.data += b"\x00" * (-len(self.data) % 4)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": len(payload)}
        if target is not None:
            view["target"] = target
        self.data += payload
        self.views.append(view)
        return len(self.views) - 1


def _accessor(view: int, array: np.ndarray, component: int, kind: str, with_bounds: bool) -> dict:
    acc = {"bufferView": view, "componentType": component, "count": int(array.shape[0]), "type": kind}
    if with_bounds:  # exact float32 values: float(np.float32) is exact in JSON's double
        acc["min"] = [float(x) for x in array.reshape(array.shape[0], -1).min(0)]
        acc["max"] = [float(x) for x in array.reshape(array.shape[0], -1).max(0)]
    return acc


def glb_bytes(
    verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
    transform: Optional[SceneTransform] = None, name: str = "dreamcore",
) -> bytes:
    """A complete GLB: one node/mesh/primitive with POSITION, NORMAL (smooth), TEXCOORD_0 (glTF uv, v down),
    indices, and a metallic-roughness material (metallic 0, roughness 0.9) whose baseColorTexture is the
    embedded PNG, sampled with (mipmapped) linear filtering and clamp-to-edge wrapping."""
    verts = np.asarray(verts)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    uvs = np.asarray(uvs, np.float64)
    _check_mesh(verts, faces, uvs)
    pos = np.ascontiguousarray(_to_original(verts, transform), dtype=np.float32)
    nrm = np.ascontiguousarray(vertex_normals(pos, faces), dtype=np.float32)
    tex = np.ascontiguousarray(uvs, dtype=np.float32)
    small = len(verts) <= 65535
    idx = np.ascontiguousarray(faces, dtype=np.uint16 if small else np.uint32).reshape(-1)

    buf = _BinaryBuffer()
    accessors = [
        _accessor(buf.add(pos.tobytes(), ARRAY_BUFFER), pos, FLOAT, "VEC3", True),
        _accessor(buf.add(nrm.tobytes(), ARRAY_BUFFER), nrm, FLOAT, "VEC3", False),
        _accessor(buf.add(tex.tobytes(), ARRAY_BUFFER), tex, FLOAT, "VEC2", False),
        _accessor(buf.add(idx.tobytes(), ELEMENT_ARRAY_BUFFER), idx, UNSIGNED_SHORT if small else UNSIGNED_INT,
                  "SCALAR", False),
    ]
    image_view = buf.add(texture_png(texture))
    buf.data += b"\x00" * (-len(buf.data) % 4)
    gltf = {
        "asset": {"version": "2.0", "generator": "dreamcore"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{
            "attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2}, "indices": 3, "material": 0, "mode": 4,
        }]}],
        "materials": [{
            "name": f"{name}_material",
            "pbrMetallicRoughness": {
                "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": ROUGHNESS,
            },
        }],
        "textures": [{"sampler": 0, "source": 0}],
        "images": [{"bufferView": image_view, "mimeType": "image/png"}],
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                      "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE}],
        "accessors": accessors,
        "bufferViews": buf.views,
        "buffers": [{"byteLength": len(buf.data)}],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(buf.data)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(js), b"JSON"), js,
        struct.pack("<I4s", len(buf.data), b"BIN\x00"), bytes(buf.data),
    ])


def write_glb(
    path: PathLike, verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
    transform: Optional[SceneTransform] = None,
) -> Path:
    """Write :func:`glb_bytes` to ``path`` atomically; returns the path."""
    path = Path(path)
    data = glb_bytes(verts, faces, uvs, texture, transform, name=path.stem)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _fmt_rows(prefix: str, rows: np.ndarray) -> str:
    """``prefix x y z`` lines for an [N, K] float array (9 significant digits: float32 round trip)."""
    if len(rows) == 0:
        return ""
    fmt = prefix + " " + " ".join(["%.9g"] * rows.shape[1])
    buf = io.StringIO()
    np.savetxt(buf, rows, fmt=fmt)
    return buf.getvalue()


def write_obj(
    path_obj: PathLike, verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
    transform: Optional[SceneTransform] = None,
) -> dict[str, Path]:
    """Write ``<stem>.obj`` (v, vt, vn, ``f a/a/a``; 1-based), ``<stem>.mtl`` (``map_Kd <stem>.png``) and
    ``<stem>.png`` beside it. OBJ texture coordinates have v up: ``vt = (u, 1 − v_gltf)``.
    Returns {"obj": ..., "mtl": ..., "png": ...}."""
    path_obj = Path(path_obj)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    uvs = np.asarray(uvs, np.float64)
    _check_mesh(np.asarray(verts), faces, uvs)
    pos = _to_original(verts, transform).astype(np.float32)
    nrm = vertex_normals(pos, faces)
    vt = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32)
    stem = path_obj.stem
    mtl_path, png_path = path_obj.with_suffix(".mtl"), path_obj.with_suffix(".png")
    material = f"{stem}_material"
    mtl = (
        f"# dreamcore\nnewmtl {material}\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 10\nd 1\nillum 1\n"
        f"map_Kd {png_path.name}\n"
    )
    f1 = faces + 1
    face_lines = io.StringIO()
    np.savetxt(face_lines, np.repeat(f1, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    obj = "".join([
        f"# dreamcore\nmtllib {mtl_path.name}\no {stem}\n",
        _fmt_rows("v", pos), _fmt_rows("vt", vt), _fmt_rows("vn", nrm),
        f"usemtl {material}\ns 1\n", face_lines.getvalue(),
    ])
    with atomic_path(png_path) as tmp:
        tmp.write_bytes(texture_png(texture))
    with atomic_path(mtl_path) as tmp:
        tmp.write_text(mtl)
    with atomic_path(path_obj) as tmp:
        tmp.write_text(obj)
    return {"obj": path_obj, "mtl": mtl_path, "png": png_path}
