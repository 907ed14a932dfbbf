"""glTF 2.0 reader (``.gltf`` with embedded or external buffers, ``.glb``) -> placed :class:`Part` s.

What is read (glTF 2.0 specification, Khronos): the default scene's node hierarchy with each node's
``matrix`` or ``translation``/``rotation``/``scale`` (``M = T·R·S``, column-major), every triangle primitive
of every mesh (modes TRIANGLES, TRIANGLE_STRIP, TRIANGLE_FAN; POINTS and LINES are skipped), accessors with
``byteStride``, ``normalized`` integer components and sparse substitution, ``POSITION``, ``TEXCOORD_n``,
``COLOR_0``, materials' ``baseColorFactor`` × ``baseColorTexture`` (with ``texCoord`` and
``KHR_texture_transform``: ``uv' = T(offset)·R(rotation)·S(scale)·uv``), the older
``KHR_materials_pbrSpecularGlossiness`` diffuse colour, ``KHR_mesh_quantization`` (integer positions) and
``KHR_draco_mesh_compression`` (decoded with DracoPy).

Colours: ``baseColorFactor`` and ``COLOR_0`` are linear and are converted to display values; textures are sRGB.
Everything malformed raises :class:`MeshFileError` naming the JSON location, e.g.
``meshes[0].primitives[1].indices: vertex index 40 is outside the 24 vertices it has``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import struct
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote

import numpy as np

from dreamcore.meshes.asset import Material
from dreamcore.meshes.color import image_to_tensor, linear_to_srgb
from dreamcore.meshes.parts import MeshFileError, Part, check_finite, check_indices

log = logging.getLogger("dreamcore.meshes")

_COMPONENTS = {5120: "i1", 5121: "u1", 5122: "i2", 5123: "u2", 5125: "u4", 5126: "f4"}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_TRIANGLES, _STRIP, _FAN = 4, 5, 6
_MODE_NAMES = {0: "POINTS", 1: "LINES", 2: "LINE_LOOP", 3: "LINE_STRIP"}
# extensions whose absence of support would change the geometry or colour we read
_UNDERSTOOD = {"KHR_draco_mesh_compression", "KHR_texture_transform", "KHR_mesh_quantization",
               "KHR_materials_pbrSpecularGlossiness", "KHR_materials_unlit", "KHR_materials_emissive_strength",
               "KHR_materials_ior", "KHR_materials_specular", "KHR_materials_transmission",
               "KHR_materials_clearcoat", "KHR_materials_sheen", "KHR_materials_volume",
               "KHR_materials_variants", "KHR_lights_punctual", "KHR_texture_basisu_fallback"}
_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


class _Doc:
    """The parsed JSON with typed accessors that name the JSON location in their errors."""

    def __init__(self, path: Path, gltf: Any, glb_bin: Optional[bytes]) -> None:
        self.path, self.folder, self.glb_bin = path, path.parent, glb_bin
        self.json = _typed(self, gltf, dict, "the top level")
        self._buffers: dict[int, bytes] = {}

    def fail(self, problem: str) -> MeshFileError:
        return MeshFileError(self.path, problem)

    def array(self, key: str) -> list:
        return _typed(self, self.json.get(key, []), list, key)

    def item(self, key: str, index: Any, where: str) -> dict:
        items = self.array(key)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(items):
            raise self.fail(f"{where} refers to {key}[{index!r}], but the file has {len(items)} {key}")
        return _typed(self, items[index], dict, f"{key}[{index}]")

    # -- buffers ---------------------------------------------------------------------------------------------
    def buffer(self, index: int, where: str) -> bytes:
        if index in self._buffers:
            return self._buffers[index]
        buf = self.item("buffers", index, where)
        name = f"buffers[{index}]"
        length = _number(self, buf.get("byteLength"), f"{name}.byteLength", integer=True)
        uri = buf.get("uri")
        if uri is None:
            if index != 0 or self.glb_bin is None:
                raise self.fail(f"{name} has no uri and the file has no GLB binary chunk")
            data = self.glb_bin
        else:
            data = self.read_uri(_typed(self, uri, str, f"{name}.uri"), name)
        if len(data) < length:
            raise self.fail(f"{name} holds {len(data)} bytes, fewer than its byteLength {length}")
        self._buffers[index] = data
        return data

    def read_uri(self, uri: str, where: str) -> bytes:
        """The bytes of a ``data:`` URI or of a file next to the glTF (relative path, percent-decoded)."""
        if uri.startswith("data:"):
            head, _, payload = uri.partition(",")
            if ";base64" not in head:
                raise self.fail(f"{where}: only base64 data URIs are supported")
            try:
                return base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError):
                raise self.fail(f"{where}: its base64 data URI does not decode") from None
        if "://" in uri:
            raise self.fail(f"{where}: refers to {uri!r} on the network; only files next to the glTF are read")
        target = self.folder / unquote(uri).replace("\\", "/")
        if not target.is_file():
            raise self.fail(f"{where}: the file {unquote(uri)!r} it refers to is missing (looked in {self.folder})")
        return target.read_bytes()

    def buffer_view(self, index: Any, where: str) -> tuple[bytes, int, int, Optional[int]]:
        """(buffer bytes, start, length, byteStride) of bufferViews[index], bounds-checked."""
        view = self.item("bufferViews", index, where)
        name = f"bufferViews[{index}]"
        if "EXT_meshopt_compression" in _typed(self, view.get("extensions", {}), dict, f"{name}.extensions"):
            raise self.fail(f"{name} is compressed with EXT_meshopt_compression, which dreamcore does not "
                            "decode; re-export the file without meshopt compression")
        data = self.buffer(view.get("buffer"), f"{name}.buffer")
        start = _number(self, view.get("byteOffset", 0), f"{name}.byteOffset", integer=True)
        length = _number(self, view.get("byteLength"), f"{name}.byteLength", integer=True)
        stride = view.get("byteStride")
        if stride is not None:
            stride = _number(self, stride, f"{name}.byteStride", integer=True)
        if start < 0 or length < 0 or start + length > len(data):
            raise self.fail(f"{name} spans bytes {start}..{start + length} of a buffer of {len(data)} bytes")
        return data, start, length, stride

    # -- accessors -------------------------------------------------------------------------------------------
    def accessor(self, index: Any, where: str) -> np.ndarray:
        """accessors[index] as an array [count, width] (float64 for normalized or float components, else the
        integer type), with sparse values substituted."""
        acc = self.item("accessors", index, where)
        name = f"accessors[{index}]"
        ctype = acc.get("componentType")
        if ctype not in _COMPONENTS:
            raise self.fail(f"{name}.componentType {ctype!r} is not a glTF component type")
        kind = acc.get("type")
        if kind not in _WIDTH:
            raise self.fail(f"{name}.type {kind!r} is not a glTF accessor type")
        count = _number(self, acc.get("count"), f"{name}.count", integer=True)
        width = _WIDTH[kind]
        dtype = np.dtype("<" + _COMPONENTS[ctype])
        if "bufferView" in acc:
            out = self._strided(acc["bufferView"], acc.get("byteOffset", 0), count, width, dtype, name)
        else:
            out = np.zeros((count, width), dtype)
        sparse = acc.get("sparse")
        if sparse is not None:
            out = out.copy()
            sparse = _typed(self, sparse, dict, f"{name}.sparse")
            n = _number(self, sparse.get("count"), f"{name}.sparse.count", integer=True)
            idx_info = _typed(self, sparse.get("indices"), dict, f"{name}.sparse.indices")
            val_info = _typed(self, sparse.get("values"), dict, f"{name}.sparse.values")
            ictype = idx_info.get("componentType")
            if ictype not in (5121, 5123, 5125):
                raise self.fail(f"{name}.sparse.indices.componentType {ictype!r} must be an unsigned integer type")
            idx = self._strided(idx_info.get("bufferView"), idx_info.get("byteOffset", 0), n, 1,
                                np.dtype("<" + _COMPONENTS[ictype]), f"{name}.sparse.indices")[:, 0].astype(np.int64)
            vals = self._strided(val_info.get("bufferView"), val_info.get("byteOffset", 0), n, width, dtype,
                                 f"{name}.sparse.values")
            if n and (idx.max() >= count):
                raise self.fail(f"{name}.sparse.indices: index {int(idx.max())} is past the accessor's {count} items")
            out[idx] = vals
        if acc.get("normalized", False) and dtype.kind in "iu":
            top = float(np.iinfo(dtype).max)
            return np.maximum(out.astype(np.float64) / top, -1.0)
        return out.astype(np.float64) if dtype.kind == "f" else out

    def _strided(self, view_index: Any, offset: Any, count: int, width: int, dtype: np.dtype,
                 name: str) -> np.ndarray:
        data, start, length, stride = self.buffer_view(view_index, f"{name}.bufferView")
        offset = _number(self, offset, f"{name}.byteOffset", integer=True)
        elem = width * dtype.itemsize
        stride = stride or elem
        need = offset + stride * (count - 1) + elem if count > 0 else 0
        if offset < 0 or need > length:
            raise self.fail(f"{name} needs {need} bytes of its buffer view, which has {length}")
        if count == 0:
            return np.zeros((0, width), dtype)
        raw = np.frombuffer(data, np.uint8, count=need, offset=start)
        if stride == elem:
            return raw[offset:offset + count * elem].view(dtype).reshape(count, width)
        rows = offset + np.arange(count)[:, None] * stride + np.arange(elem)[None]
        return np.ascontiguousarray(raw[rows]).view(dtype).reshape(count, width)


def _typed(doc: _Doc, value: Any, kind: type, where: str):
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = {dict: "a JSON object", list: "a JSON array", str: "a string"}
        raise doc.fail(f"{where} must be {names.get(kind, kind.__name__)}, got {type(value).__name__} {value!r:.60}")
    return value


def _number(doc: _Doc, value: Any, where: str, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (integer and (not float(value).is_integer() or value < 0)) or not math.isfinite(value):
        raise doc.fail(f"{where} must be {'a non-negative integer' if integer else 'a number'}, got {value!r:.60}")
    return int(value) if integer else float(value)


def _numbers(doc: _Doc, value: Any, n: int, where: str) -> np.ndarray:
    arr = _typed(doc, value, list, where)
    if len(arr) != n:
        raise doc.fail(f"{where} must hold {n} numbers, got {len(arr)}")
    return np.array([_number(doc, v, f"{where}[{i}]") for i, v in enumerate(arr)], np.float64)


# -- container ---------------------------------------------------------------------------------------------------
def _read_container(path: Path) -> tuple[Any, Optional[bytes]]:
    raw = path.read_bytes()
    if not raw.strip():
        raise MeshFileError(path, "the file is empty")
    if path.suffix.lower() == ".glb" or raw[:4] == b"glTF":
        if len(raw) < 20 or struct.unpack_from("<I", raw, 0)[0] != _GLB_MAGIC:
            raise MeshFileError(path, "not a GLB file (no 'glTF' magic at its start)")
        _, version, total = struct.unpack_from("<III", raw, 0)
        if version != 2:
            raise MeshFileError(path, f"it is a glTF {version}.0 binary file; only glTF 2.0 is supported "
                                      "(convert it, e.g. by importing and exporting it in Blender)")
        if total > len(raw):
            raise MeshFileError(path, f"the file is truncated: its header says {total} bytes, it has {len(raw)}")
        chunks, pos = {}, 12
        while pos + 8 <= total:
            length, kind = struct.unpack_from("<II", raw, pos)
            if pos + 8 + length > total:
                raise MeshFileError(path, "the file is truncated inside a GLB chunk")
            chunks.setdefault(kind, raw[pos + 8:pos + 8 + length])
            pos += 8 + length + (-length % 4)
        if _CHUNK_JSON not in chunks:
            raise MeshFileError(path, "the GLB file has no JSON chunk")
        text, glb_bin = chunks[_CHUNK_JSON], chunks.get(_CHUNK_BIN)
    else:
        text, glb_bin = raw, None
    try:
        return json.loads(text.decode("utf-8-sig")), glb_bin
    except UnicodeDecodeError:
        raise MeshFileError(path, "its JSON is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise MeshFileError(path, f"its JSON is malformed ({e.msg} at line {e.lineno}, column {e.colno})") from None


def _check_version(doc: _Doc) -> None:
    asset = doc.json.get("asset")
    if asset is None:
        if "meshes" in doc.json and isinstance(doc.json["meshes"], dict):
            raise doc.fail("it is a glTF 1.0 file (meshes is an object); only glTF 2.0 is supported")
        raise doc.fail("it has no 'asset' object with a version, so it is not a glTF 2.0 file")
    version = str(_typed(doc, asset, dict, "asset").get("version", ""))
    if not version.startswith("2."):
        raise doc.fail(f"it is a glTF {version or '(no version)'} file; only glTF 2.0 is supported "
                       "(convert it, e.g. by importing and exporting it in Blender)")
    required = _typed(doc, doc.json.get("extensionsRequired", []), list, "extensionsRequired")
    unknown = [e for e in required if e not in _UNDERSTOOD]
    if unknown:
        raise doc.fail(f"it requires the extension(s) {', '.join(map(str, unknown))}, which dreamcore does not "
                       "read; re-export the file without them")


# -- scene graph -------------------------------------------------------------------------------------------------
def _node_matrix(doc: _Doc, node: dict, where: str) -> np.ndarray:
    if "matrix" in node:
        return _numbers(doc, node["matrix"], 16, f"{where}.matrix").reshape(4, 4).T  # column-major
    t = _numbers(doc, node.get("translation", [0, 0, 0]), 3, f"{where}.translation")
    x, y, z, w = _numbers(doc, node.get("rotation", [0, 0, 0, 1]), 4, f"{where}.rotation")
    s = _numbers(doc, node.get("scale", [1, 1, 1]), 3, f"{where}.scale")
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm == 0:
        raise doc.fail(f"{where}.rotation is the zero quaternion")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    m = np.eye(4)
    m[:3, :3] = rot * s[None, :]
    m[:3, 3] = t
    return m


def _placed_meshes(doc: _Doc) -> list[tuple[int, np.ndarray]]:
    """(mesh index, world matrix) for every node of the default scene (or every root node) carrying a mesh."""
    nodes = doc.array("nodes")
    scenes = doc.array("scenes")
    if scenes:
        scene_index = doc.json.get("scene", 0)
        scene = doc.item("scenes", scene_index, "scene")
        roots = _typed(doc, scene.get("nodes", []), list, f"scenes[{scene_index}].nodes")
    else:
        children = set()
        for i, n in enumerate(nodes):
            children.update(_typed(doc, _typed(doc, n, dict, f"nodes[{i}]").get("children", []), list,
                                   f"nodes[{i}].children"))
        roots = [i for i in range(len(nodes)) if i not in children]
    if not roots:
        raise doc.fail("its scene has no nodes, so there is nothing to load")
    out: list[tuple[int, np.ndarray]] = []
    stack = [(r, np.eye(4), (), "scene") for r in reversed(roots)]
    while stack:
        index, parent, path, where = stack.pop()
        node = doc.item("nodes", index, where)
        if index in path:
            raise doc.fail(f"nodes[{index}] is its own ancestor (a cycle in the node hierarchy)")
        world = parent @ _node_matrix(doc, node, f"nodes[{index}]")
        if "mesh" in node:
            out.append((node["mesh"], world))
        kids = _typed(doc, node.get("children", []), list, f"nodes[{index}].children")
        stack.extend((k, world, path + (index,), f"nodes[{index}].children") for k in reversed(kids))
    return out


# -- materials ---------------------------------------------------------------------------------------------------
def _texture_transform(doc: _Doc, info: dict, where: str) -> tuple[Optional[np.ndarray], int]:
    """(3x3 UV matrix or None, texCoord set) of a textureInfo, with KHR_texture_transform applied."""
    tex_coord = _number(doc, info.get("texCoord", 0), f"{where}.texCoord", integer=True)
    ext = _typed(doc, info.get("extensions", {}), dict, f"{where}.extensions").get("KHR_texture_transform")
    if ext is None:
        return None, tex_coord
    ext = _typed(doc, ext, dict, f"{where}.extensions.KHR_texture_transform")
    ox, oy = _numbers(doc, ext.get("offset", [0, 0]), 2, f"{where}.KHR_texture_transform.offset")
    r = _number(doc, ext.get("rotation", 0), f"{where}.KHR_texture_transform.rotation")
    sx, sy = _numbers(doc, ext.get("scale", [1, 1]), 2, f"{where}.KHR_texture_transform.scale")
    if "texCoord" in ext:
        tex_coord = _number(doc, ext["texCoord"], f"{where}.KHR_texture_transform.texCoord", integer=True)
    c, s = math.cos(r), math.sin(r)
    translation = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]], np.float64)
    rotation = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], np.float64)
    scale = np.diag([sx, sy, 1.0])
    return translation @ rotation @ scale, tex_coord


def _image(doc: _Doc, texture_index: Any, where: str):
    """The decoded PIL image of textures[texture_index], or None (with a warning) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    texture = doc.item("textures", texture_index, where)
    source = texture.get("source")
    if source is None:
        for ext in _typed(doc, texture.get("extensions", {}), dict, f"textures[{texture_index}].extensions").values():
            if isinstance(ext, dict) and "source" in ext:
                source = ext["source"]
                break
    name = f"images[{source}]"
    image = doc.item("images", source, f"textures[{texture_index}].source")
    try:
        if "bufferView" in image:
            data, start, length, _ = doc.buffer_view(image["bufferView"], f"{name}.bufferView")
            raw = data[start:start + length]
        else:
            raw = doc.read_uri(_typed(doc, image.get("uri"), str, f"{name}.uri"), name)
    except MeshFileError as e:
        log.warning("%s: texture %s not loaded (%s); using the material's base colour", doc.path, name, e.problem)
        return None
    import io

    try:
        pil = Image.open(io.BytesIO(raw))
        pil.load()
        return pil
    except (UnidentifiedImageError, OSError, ValueError) as e:
        log.warning("%s: texture %s is not a readable image (%s); using the material's base colour",
                    doc.path, name, e)
        return None


def _material(doc: _Doc, index: Optional[int], cache: dict) -> tuple[tuple, Material, Optional[np.ndarray], int]:
    """(key, Material, UV matrix or None, texCoord set) for materials[index] (None: the default material)."""
    if index is None:
        return ("default",), Material(), None, 0
    if index in cache:
        return cache[index]
    mat = doc.item("materials", index, "a primitive's material")
    where = f"materials[{index}]"
    exts = _typed(doc, mat.get("extensions", {}), dict, f"{where}.extensions")
    pbr = _typed(doc, mat.get("pbrMetallicRoughness", {}), dict, f"{where}.pbrMetallicRoughness")
    factor_key, tex_key, pbr_where = "baseColorFactor", "baseColorTexture", f"{where}.pbrMetallicRoughness"
    if "pbrMetallicRoughness" not in mat and "KHR_materials_pbrSpecularGlossiness" in exts:
        pbr = _typed(doc, exts["KHR_materials_pbrSpecularGlossiness"], dict, f"{where}.KHR_materials_pbrSpecularGlossiness")
        factor_key, tex_key, pbr_where = "diffuseFactor", "diffuseTexture", f"{where}.KHR_materials_pbrSpecularGlossiness"
    factor = _numbers(doc, pbr.get(factor_key, [1, 1, 1, 1]), 4, f"{pbr_where}.{factor_key}")
    base = tuple(float(v) for v in linear_to_srgb(factor[:3]))
    texture, uv_matrix, tex_coord = None, None, 0
    if tex_key in pbr:
        info = _typed(doc, pbr[tex_key], dict, f"{pbr_where}.{tex_key}")
        uv_matrix, tex_coord = _texture_transform(doc, info, f"{pbr_where}.{tex_key}")
        image = _image(doc, info.get("index"), f"{pbr_where}.{tex_key}.index")
        texture = None if image is None else image_to_tensor(image)
    result = ((index,), Material(base_color=base, texture=texture), uv_matrix, tex_coord)
    cache[index] = result
    return result


# -- primitives --------------------------------------------------------------------------------------------------
def _triangles(mode: int, indices: np.ndarray) -> np.ndarray:
    """[F, 3] triangles of a TRIANGLES / TRIANGLE_STRIP / TRIANGLE_FAN index list (winding kept)."""
    if mode == _TRIANGLES:
        return indices[: len(indices) // 3 * 3].reshape(-1, 3)
    n = len(indices) - 2
    if n <= 0:
        return np.zeros((0, 3), np.int64)
    i = np.arange(n)
    if mode == _STRIP:  # odd triangles swap their first two vertices to keep the winding
        even = i % 2 == 0
        a = np.where(even, indices[i], indices[i + 1])
        b = np.where(even, indices[i + 1], indices[i])
        return np.stack([a, b, indices[i + 2]], 1)
    return np.stack([np.full(n, indices[0]), indices[i + 1], indices[i + 2]], 1)


def _draco(doc: _Doc, ext: dict, where: str) -> dict[str, np.ndarray]:
    """Decode a KHR_draco_mesh_compression primitive: {'indices': [F*3], attribute name: [V, C]}."""
    try:
        import DracoPy
    except ImportError:
        raise doc.fail(f"{where} is Draco-compressed (KHR_draco_mesh_compression) and DracoPy is not installed; "
                       "`pip install DracoPy` or re-export the file without Draco compression") from None
    data, start, length, _ = doc.buffer_view(ext.get("bufferView"), f"{where}.bufferView")
    try:
        mesh = DracoPy.decode(bytes(data[start:start + length]))
    except Exception as e:  # noqa: BLE001 - DracoPy raises plain exceptions for corrupt streams
        raise doc.fail(f"{where}: the Draco stream does not decode ({e})") from None
    out = {"indices": np.asarray(mesh.faces, np.int64).reshape(-1)}
    for name, uid in _typed(doc, ext.get("attributes", {}), dict, f"{where}.attributes").items():
        attr = mesh.get_attribute_by_unique_id(uid)
        if attr is None:
            raise doc.fail(f"{where}.attributes.{name} names Draco attribute {uid}, which the stream lacks")
        out[name] = np.asarray(attr["data"])
    return out


def _read_primitive(doc: _Doc, prim: dict, where: str, world: np.ndarray, materials: dict,
                    cache: dict) -> Optional[Part]:
    mode = prim.get("mode", _TRIANGLES)
    if mode not in (_TRIANGLES, _STRIP, _FAN):
        if mode not in _MODE_NAMES:
            raise doc.fail(f"{where}.mode {mode!r} is not a glTF primitive mode")
        return None
    attrs = _typed(doc, prim.get("attributes"), dict, f"{where}.attributes")
    ext = _typed(doc, prim.get("extensions", {}), dict, f"{where}.extensions").get("KHR_draco_mesh_compression")
    draco = _draco(doc, _typed(doc, ext, dict, f"{where}.KHR_draco_mesh_compression"), where) if ext else None

    def attribute(name: str) -> Optional[np.ndarray]:
        if draco is not None and name in draco:
            values = draco[name]
            if name.startswith(("COLOR", "TEXCOORD")) and values.dtype.kind in "iu":
                values = values.astype(np.float64) / float(np.iinfo(values.dtype).max)
            return values.astype(np.float64) if values.dtype.kind == "f" else values
        if name not in attrs:
            return None
        return doc.accessor(attrs[name], f"{where}.attributes.{name}")

    positions = attribute("POSITION")
    if positions is None:
        raise doc.fail(f"{where} has no POSITION attribute")
    if positions.shape[1] != 3:
        raise doc.fail(f"{where}.attributes.POSITION must be VEC3, got {positions.shape[1]} components")
    positions = positions.astype(np.float64)
    n = len(positions)
    if draco is not None:
        indices = draco["indices"]
    elif "indices" in prim:
        indices = doc.accessor(prim["indices"], f"{where}.indices")
        if indices.dtype.kind not in "iu" or indices.shape[1] != 1:
            raise doc.fail(f"{where}.indices must be an unsigned-integer SCALAR accessor")
        indices = indices[:, 0].astype(np.int64)
    else:
        indices = np.arange(n, dtype=np.int64)
    check_indices(doc.path, f"{where}.indices", indices, n)
    faces = _triangles(mode, indices)
    check_finite(doc.path, f"{where}.attributes.POSITION", "position", positions)
    key, material, uv_matrix, tex_coord = _material(doc, prim.get("material"), cache)
    materials.setdefault(key, material)
    uvs = attribute(f"TEXCOORD_{tex_coord}")
    if uvs is not None:
        if uvs.shape != (n, 2):
            raise doc.fail(f"{where}.attributes.TEXCOORD_{tex_coord} must be VEC2 with one value per vertex")
        uvs = uvs.astype(np.float64)
        check_finite(doc.path, f"{where}.attributes.TEXCOORD_{tex_coord}", "UV", uvs)
        if uv_matrix is not None:
            uvs = uvs @ uv_matrix[:2, :2].T + uv_matrix[:2, 2]
    colors = attribute("COLOR_0")
    if colors is not None:
        if len(colors) != n or colors.shape[1] not in (3, 4):
            raise doc.fail(f"{where}.attributes.COLOR_0 must be VEC3/VEC4 with one value per vertex")
        check_finite(doc.path, f"{where}.attributes.COLOR_0", "colour", colors.astype(np.float64))
        colors = linear_to_srgb(np.clip(colors[:, :3].astype(np.float64), 0.0, 1.0))
    placed = positions @ world[:3, :3].T + world[:3, 3]
    if np.linalg.det(world[:3, :3]) < 0:  # a mirroring transform: keep the winding outward
        faces = faces[:, ::-1].copy()
    return Part(placed, faces, uvs, colors, key)


def read_gltf(path: Path) -> tuple[list[Part], dict]:
    """Parts (placed in the file's frame) and materials by key of a glTF 2.0 / GLB file."""
    gltf, glb_bin = _read_container(path)
    doc = _Doc(path, gltf, glb_bin)
    _check_version(doc)
    parts, materials, cache = [], {}, {}
    skipped: set[str] = set()
    for mesh_index, world in _placed_meshes(doc):
        mesh = doc.item("meshes", mesh_index, "a node's mesh")
        prims = _typed(doc, mesh.get("primitives"), list, f"meshes[{mesh_index}].primitives")
        for k, prim in enumerate(prims):
            where = f"meshes[{mesh_index}].primitives[{k}]"
            part = _read_primitive(doc, _typed(doc, prim, dict, where), where, world, materials, cache)
            if part is None:
                skipped.add(_MODE_NAMES[prim.get("mode")])
            else:
                parts.append(part)
    if not any(len(p.faces) for p in parts):
        if skipped:
            raise doc.fail(f"it holds only {' and '.join(sorted(skipped))} primitives, no triangles")
        raise doc.fail("it holds no triangles")
    if skipped:
        log.info("%s: skipped %s primitives (no surface)", path, ", ".join(sorted(skipped)))
    return parts, materials
