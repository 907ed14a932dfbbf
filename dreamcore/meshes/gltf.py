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

Hostile files (:mod:`dreamcore.trust`): buffer and image URIs are resolved by
:func:`~dreamcore.trust.referenced_file` (inside the file's folder only, for an untrusted job); every size a file
declares is checked against the bytes it has before anything is allocated (GLB chunks against the file, a buffer's
``byteLength`` against its file, which is then read only that far, bufferViews against their buffer, an
accessor's ``count`` × stride against its bufferView; an accessor without data is refused); the node graph must be
a set of trees (a node with two parents, or listed twice, or a cycle, is refused, so the walk is linear); the
meshes placed, instances counted, stay under :data:`MAX_PLACED_ELEMENTS`; images are size-checked before they are
decoded (:func:`~dreamcore.trust.open_image`) and each is decoded once. A message never quotes bytes read from a
file other than the model itself (an index read from an external buffer is named by its position, not its value).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import struct
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote

import numpy as np

from dreamcore.meshes.asset import Material
from dreamcore.meshes.color import image_to_tensor, linear_to_srgb
from dreamcore.meshes.parts import MeshFileError, Part, check_finite, check_indices
from dreamcore.trust import PixelBudget, open_image, referenced_file

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
# vertices + indices of all placed primitives (a mesh instanced by N nodes counts N times): a file of a few
# kilobytes of JSON could otherwise place one big mesh a million times
MAX_PLACED_ELEMENTS = 1 << 27


class _Doc:
    """The parsed JSON with typed accessors that name the JSON location in their errors."""

    def __init__(self, path: Path, gltf: Any, glb_bin: Optional[memoryview]) -> None:
        self.path, self.folder, self.glb_bin = path, path.parent, glb_bin
        self.json = _typed(self, gltf, dict, "the top level")
        self._buffers: dict[int, memoryview] = {}
        self.textures: dict[int, Any] = {}  # images[i] -> its decoded tensor (or None), each decoded once
        self.pixels = PixelBudget()

    def fail(self, problem: str) -> MeshFileError:
        return MeshFileError(self.path, problem)

    def what(self, where: str) -> str:
        """How a refusal of :mod:`dreamcore.trust` names ``where`` (a JSON location) of this file."""
        return f"mesh file {self.path}: {where}"

    def array(self, key: str) -> list:
        return _typed(self, self.json.get(key, []), list, key)

    def item(self, key: str, index: Any, where: str) -> dict:
        items = self.array(key)
        if not _is_index(index, len(items)):
            raise self.fail(f"{where} refers to {key}[{_ref(index)}], but the file has {len(items)} {key}")
        return _typed(self, items[index], dict, f"{key}[{index}]")

    # -- buffers ---------------------------------------------------------------------------------------------
    def buffer(self, index: Any, where: str) -> memoryview:
        """The first ``byteLength`` bytes of buffers[index] (refused when it has fewer, before reading a file)."""
        buf = self.item("buffers", index, where)
        if index in self._buffers:
            return self._buffers[index]
        name = f"buffers[{index}]"
        length = _number(self, buf.get("byteLength"), f"{name}.byteLength", integer=True)
        uri = buf.get("uri")
        if uri is None:
            if index != 0 or self.glb_bin is None:
                raise self.fail(f"{name} has no uri and the file has no GLB binary chunk")
            data = self.glb_bin
            if len(data) < length:
                raise self.fail(f"{name} holds {len(data)} bytes, fewer than its byteLength {length}")
        else:
            uri = _typed(self, uri, str, f"{name}.uri")
            if uri.startswith("data:"):
                data = memoryview(self.data_uri(uri, name, length))
            else:
                data = memoryview(self.read_file(uri, name, length))
        self._buffers[index] = data[:length]
        return self._buffers[index]

    def data_uri(self, uri: str, where: str, length: Optional[int] = None) -> bytes:
        """The bytes of a base64 ``data:`` URI; with ``length``, refused unless it holds that many (checked on
        the text's length before decoding, and again after)."""
        head, _, payload = uri.partition(",")
        if ";base64" not in head:
            raise self.fail(f"{where}: only base64 data URIs are supported")
        if length is not None and len(payload) * 3 // 4 < length:
            raise self.fail(f"{where}: its data URI holds at most {len(payload) * 3 // 4} bytes, fewer than its "
                            f"byteLength {length}")
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise self.fail(f"{where}: its base64 data URI does not decode") from None
        if length is not None and len(data) < length:
            raise self.fail(f"{where} holds {len(data)} bytes, fewer than its byteLength {length}")
        return data

    def file(self, uri: str, where: str) -> Path:
        """The file ``uri`` names (:func:`~dreamcore.trust.referenced_file`: percent-decoded, no URIs, inside
        the glTF's folder for an untrusted job), which must exist."""
        target = referenced_file(uri, self.folder, self.what(f"{where}.uri"))
        if not target.is_file():
            raise self.fail(f"{where}: the file {_short(unquote(uri))!r} it refers to is missing "
                            f"(looked in {self.folder})")
        return target

    def read_file(self, uri: str, where: str, length: int) -> bytes:
        """The first ``length`` bytes of the file ``uri`` names: its size is checked first, and no more is read."""
        target = self.file(uri, where)
        size = target.stat().st_size
        if size < length:
            raise self.fail(f"{where}: its byteLength is {length}, but the file {_short(unquote(uri))!r} has only "
                            f"{size} bytes")
        with open(target, "rb") as f:
            data = f.read(length)
        if len(data) < length:  # the file shrank meanwhile
            raise self.fail(f"{where}: the file {_short(unquote(uri))!r} has fewer than its byteLength {length} bytes")
        return data

    def from_file(self, view_index: Any) -> bool:
        """Whether bufferViews[view_index] (already read) lies in a file other than the model itself: values read
        from there are never quoted in a message."""
        view = self.item("bufferViews", view_index, "a bufferView")
        uri = self.item("buffers", view.get("buffer"), "a bufferView's buffer").get("uri")
        return isinstance(uri, str) and not uri.startswith("data:")

    def accessor_from_file(self, index: Any) -> bool:
        """Whether accessors[index] (already read) takes any value from a file other than the model itself."""
        acc = self.item("accessors", index, "an accessor")
        views = [acc.get("bufferView")]
        sparse = acc.get("sparse")
        if sparse is not None:
            views += [sparse["indices"].get("bufferView"), sparse["values"].get("bufferView")]
        return any(self.from_file(v) for v in views if v is not None)

    def buffer_view(self, index: Any, where: str) -> tuple[memoryview, int, int, Optional[int]]:
        """(buffer bytes, start, length, byteStride) of bufferViews[index], bounds-checked against the buffer's
        byteLength."""
        view = self.item("bufferViews", index, where)
        name = f"bufferViews[{index}]"
        if "EXT_meshopt_compression" in _typed(self, view.get("extensions", {}), dict, f"{name}.extensions"):
            raise self.fail(f"{name} is compressed with EXT_meshopt_compression, which dreamcore does not "
                            "decode; re-export the file without meshopt compression")
        start = _number(self, view.get("byteOffset", 0), f"{name}.byteOffset", integer=True)
        length = _number(self, view.get("byteLength"), f"{name}.byteLength", integer=True)
        stride = view.get("byteStride")
        if stride is not None:
            stride = _number(self, stride, f"{name}.byteStride", integer=True)
        data = self.buffer(view.get("buffer"), f"{name}.buffer")
        if start + length > len(data):
            raise self.fail(f"{name} spans bytes {start}..{start + length} of a buffer of {len(data)} bytes")
        return data, start, length, stride

    # -- accessors -------------------------------------------------------------------------------------------
    def accessor(self, index: Any, where: str) -> np.ndarray:
        """accessors[index] as an array [count, width] (float64 for normalized or float components, else the
        integer type), with sparse values substituted. Every count is checked against the bytes that hold it
        before anything is allocated; an accessor with neither a bufferView nor sparse values is refused."""
        acc = self.item("accessors", index, where)
        name = f"accessors[{index}]"
        ctype = acc.get("componentType")
        if not _is_key(ctype, _COMPONENTS):
            raise self.fail(f"{name}.componentType {_ref(ctype)} is not a glTF component type")
        kind = acc.get("type")
        if not _is_key(kind, _WIDTH):
            raise self.fail(f"{name}.type {_ref(kind)} is not a glTF accessor type")
        count = _number(self, acc.get("count"), f"{name}.count", integer=True)
        width = _WIDTH[kind]
        dtype = np.dtype("<" + _COMPONENTS[ctype])
        sparse = acc.get("sparse")
        if "bufferView" in acc:
            out = self._strided(acc["bufferView"], acc.get("byteOffset", 0), count, width, dtype, name)
        elif sparse is None:
            if count:
                raise self.fail(f"{name} has a count of {count} but no bufferView and no sparse values: it holds "
                                "no data")
            out = np.zeros((0, width), dtype)
        elif count > MAX_PLACED_ELEMENTS:
            raise self.fail(f"{name} has no bufferView and a count of {count}, over the {MAX_PLACED_ELEMENTS} "
                            "items dreamcore reads")
        else:
            out = None  # zeros, allocated once the sparse values are read
        if sparse is not None:
            sparse = _typed(self, sparse, dict, f"{name}.sparse")
            n = _number(self, sparse.get("count"), f"{name}.sparse.count", integer=True)
            if n > count:
                raise self.fail(f"{name}.sparse.count {n} is more than the accessor's count {count}")
            idx_info = _typed(self, sparse.get("indices"), dict, f"{name}.sparse.indices")
            val_info = _typed(self, sparse.get("values"), dict, f"{name}.sparse.values")
            ictype = idx_info.get("componentType")
            if not _is_key(ictype, _COMPONENTS) or ictype not in (5121, 5123, 5125):
                raise self.fail(f"{name}.sparse.indices.componentType {_ref(ictype)} must be an unsigned integer "
                                "type")
            idx = self._strided(idx_info.get("bufferView"), idx_info.get("byteOffset", 0), n, 1,
                                np.dtype("<" + _COMPONENTS[ictype]), f"{name}.sparse.indices")[:, 0].astype(np.int64)
            vals = self._strided(val_info.get("bufferView"), val_info.get("byteOffset", 0), n, width, dtype,
                                 f"{name}.sparse.values")
            if n and (idx.max() >= count):
                raise self.fail(f"{name}.sparse.indices: {int((idx >= count).sum())} of its {n} indices are past "
                                f"the accessor's {count} items")
            out = np.zeros((count, width), dtype) if out is None else out.copy()
            out[idx] = vals
        if acc.get("normalized", False) and dtype.kind in "iu":
            top = float(np.iinfo(dtype).max)
            return np.maximum(out.astype(np.float64) / top, -1.0)
        return out.astype(np.float64) if dtype.kind == "f" else out

    def _strided(self, view_index: Any, offset: Any, count: int, width: int, dtype: np.dtype,
                 name: str) -> np.ndarray:
        """``count`` elements of ``width`` × ``dtype`` from a bufferView: offset + stride × (count − 1) + element
        must lie in the view (checked before reading), the stride at least one element."""
        data, start, length, stride = self.buffer_view(view_index, f"{name}.bufferView")
        offset = _number(self, offset, f"{name}.byteOffset", integer=True)
        elem = width * dtype.itemsize
        if stride and stride < elem:
            raise self.fail(f"{name}: its elements are {elem} bytes, more than bufferViews[{view_index}].byteStride "
                            f"{stride}")
        stride = stride or elem
        need = offset + stride * (count - 1) + elem if count > 0 else 0
        if need > length:
            raise self.fail(f"{name} needs {need} bytes of its buffer view, which has {length}")
        if count == 0:
            return np.zeros((0, width), dtype)
        raw = np.frombuffer(data, np.uint8, count=need, offset=start)
        if stride == elem:
            return raw[offset:offset + count * elem].view(dtype).reshape(count, width)
        rows = np.lib.stride_tricks.as_strided(raw[offset:], shape=(count, elem), strides=(stride, 1),
                                               writeable=False)
        return np.ascontiguousarray(rows).view(dtype).reshape(count, width)


def _is_index(value: Any, n: int) -> bool:
    """Whether a JSON value is an index into a list of ``n`` items."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n


def _is_key(value: Any, table: dict) -> bool:
    """Whether a JSON value is one of ``table``'s keys (lists and objects are not: they cannot be looked up)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool) and value in table


def _ref(value: Any) -> str:
    """A JSON value as a message names it: a number as itself, a short string quoted, anything else by its type
    (a file's content is never echoed at length)."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(repr(value)) <= 42:
        return repr(value)
    return f"(a {type(value).__name__})"


def _short(text: str, limit: int = 120) -> str:
    """A name from the file, cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _typed(doc: _Doc, value: Any, kind: type, where: str):
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = {dict: "a JSON object", list: "a JSON array", str: "a string"}
        raise doc.fail(f"{where} must be {names.get(kind, kind.__name__)}, got {type(value).__name__}")
    return value


def _number(doc: _Doc, value: Any, where: str, integer: bool = False) -> float:
    """A JSON number (a non-negative integer with ``integer``; Python's arbitrarily large ints included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ok = False
    elif isinstance(value, int):
        ok = value >= 0 if integer else abs(value) <= sys.float_info.max
    else:
        ok = math.isfinite(value) and (not integer or (value.is_integer() and value >= 0))
    if not ok:
        raise doc.fail(f"{where} must be {'a non-negative integer' if integer else 'a number'}, got {_ref(value)}")
    return int(value) if integer else float(value)


def _numbers(doc: _Doc, value: Any, n: int, where: str) -> np.ndarray:
    arr = _typed(doc, value, list, where)
    if len(arr) != n:
        raise doc.fail(f"{where} must hold {n} numbers, got {len(arr)}")
    return np.array([_number(doc, v, f"{where}[{i}]") for i, v in enumerate(arr)], np.float64)


# -- container ---------------------------------------------------------------------------------------------------
def _read_container(path: Path) -> tuple[Any, Optional[memoryview]]:
    """(the JSON, the GLB binary chunk or None) of a .gltf or .glb file. The GLB header's total length is checked
    against the file's size and every chunk's length against that total; the chunks are views of the file's
    bytes, not copies."""
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
        chunks, pos, whole = {}, 12, memoryview(raw)
        while pos + 8 <= total:
            length, kind = struct.unpack_from("<II", raw, pos)
            if pos + 8 + length > total:
                raise MeshFileError(path, f"the file is truncated inside a GLB chunk (a chunk of {length} bytes "
                                          f"at byte {pos} of a file of {total})")
            chunks.setdefault(kind, whole[pos + 8:pos + 8 + length])
            pos += 8 + length + (-length % 4)
        if _CHUNK_JSON not in chunks:
            raise MeshFileError(path, "the GLB file has no JSON chunk")
        text, glb_bin = chunks[_CHUNK_JSON], chunks.get(_CHUNK_BIN)
    else:
        text, glb_bin = memoryview(raw), None
    try:
        return json.loads(str(text, "utf-8-sig")), glb_bin
    except UnicodeDecodeError:
        raise MeshFileError(path, "its JSON is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise MeshFileError(path, f"its JSON is malformed ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except ValueError:  # an integer of more digits than Python converts
        raise MeshFileError(path, "its JSON is malformed (a number too long to read)") from None
    except RecursionError:
        raise MeshFileError(path, "its JSON is nested too deeply to read") from None


def _check_version(doc: _Doc) -> None:
    asset = doc.json.get("asset")
    if asset is None:
        if "meshes" in doc.json and isinstance(doc.json["meshes"], dict):
            raise doc.fail("it is a glTF 1.0 file (meshes is an object); only glTF 2.0 is supported")
        raise doc.fail("it has no 'asset' object with a version, so it is not a glTF 2.0 file")
    version = _short(str(_typed(doc, asset, dict, "asset").get("version", "")), 20)
    if not version.startswith("2."):
        raise doc.fail(f"it is a glTF {version or '(no version)'} file; only glTF 2.0 is supported "
                       "(convert it, e.g. by importing and exporting it in Blender)")
    required = _typed(doc, doc.json.get("extensionsRequired", []), list, "extensionsRequired")
    unknown = [e for e in required if not (isinstance(e, str) and e in _UNDERSTOOD)]
    if unknown:
        names = ", ".join(_short(e, 60) if isinstance(e, str) else _ref(e) for e in unknown[:10])
        raise doc.fail(f"it requires the extension(s) {names}, which dreamcore does not "
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


def _parents(doc: _Doc, nodes: list) -> dict[int, int]:
    """{node: its parent} from every node's ``children``. glTF nodes form disjoint strict trees (a node has at most
    one parent), so a node that two nodes list as a child, or one node twice, is refused, and so is a cycle:
    otherwise a file whose every node lists the next one twice is walked 2^depth times. Linear in the nodes."""
    parent: dict[int, int] = {}
    for i, n in enumerate(nodes):
        kids = _typed(doc, _typed(doc, n, dict, f"nodes[{i}]").get("children", []), list, f"nodes[{i}].children")
        for k in kids:
            if not _is_index(k, len(nodes)):
                raise doc.fail(f"nodes[{i}].children refers to nodes[{_ref(k)}], but the file has {len(nodes)} nodes")
            if k in parent:
                if parent[k] == i:
                    raise doc.fail(f"nodes[{k}] is listed twice in nodes[{i}].children; a glTF node has at most one "
                                   "parent and appears once in the node hierarchy")
                raise doc.fail(f"nodes[{k}] is a child of both nodes[{parent[k]}] and nodes[{i}]; a glTF node has at "
                               "most one parent (the nodes must form trees)")
            parent[k] = i
    done: set[int] = set()
    for start in range(len(nodes)):  # follow each node's parents up to a root, each node once
        chain, on_chain, k = [], set(), start
        while k in parent and k not in done:
            if k in on_chain:
                raise doc.fail(f"nodes[{k}] is its own ancestor (a cycle in the node hierarchy)")
            chain.append(k)
            on_chain.add(k)
            k = parent[k]
        done.update(chain)
    return parent


def _placed_meshes(doc: _Doc) -> list[tuple[Any, np.ndarray]]:
    """(mesh index, world matrix) for every node of the default scene (or every root node) carrying a mesh.
    Each node is visited once (:func:`_parents` has checked that the nodes form trees)."""
    nodes = doc.array("nodes")
    parent = _parents(doc, nodes)
    scenes = doc.array("scenes")
    if scenes:
        scene_index = doc.json.get("scene", 0)
        scene = doc.item("scenes", scene_index, "scene")
        where = f"scenes[{scene_index}].nodes"
        roots = _typed(doc, scene.get("nodes", []), list, where)
        seen: set[int] = set()
        for r in roots:
            if not _is_index(r, len(nodes)):
                raise doc.fail(f"{where} refers to nodes[{_ref(r)}], but the file has {len(nodes)} nodes")
            if r in seen:
                raise doc.fail(f"{where} lists nodes[{r}] twice")
            if r in parent:
                raise doc.fail(f"{where} lists nodes[{r}], which is a child of nodes[{parent[r]}]; a scene lists "
                               "only root nodes")
            seen.add(r)
    else:
        roots = [i for i in range(len(nodes)) if i not in parent]
    if not roots:
        raise doc.fail("its scene has no nodes, so there is nothing to load")
    out: list[tuple[Any, np.ndarray]] = []
    stack = [(r, np.eye(4)) for r in reversed(roots)]
    while stack:
        index, world = stack.pop()
        node = doc.item("nodes", index, "a node")
        world = world @ _node_matrix(doc, node, f"nodes[{index}]")
        if "mesh" in node:
            out.append((node["mesh"], world))
        kids = node.get("children", [])
        stack.extend((k, world) for k in reversed(kids))
    return out


def _check_placed_size(doc: _Doc, placed: list[tuple[Any, np.ndarray]]) -> None:
    """Refuse a file whose placed primitives (each mesh counted once per node that places it) declare more than
    :data:`MAX_PLACED_ELEMENTS` vertices and indices, before any is read: instancing multiplies what a small file
    holds."""
    per_mesh: dict[int, int] = {}
    total = 0
    for mesh_index, _ in placed:
        mesh = doc.item("meshes", mesh_index, "a node's mesh")
        if mesh_index not in per_mesh:
            n = 0
            prims = _typed(doc, mesh.get("primitives"), list, f"meshes[{mesh_index}].primitives")
            for k, prim in enumerate(prims):
                where = f"meshes[{mesh_index}].primitives[{k}]"
                prim = _typed(doc, prim, dict, where)
                attrs = _typed(doc, prim.get("attributes"), dict, f"{where}.attributes")
                for key in ("POSITION", "indices"):
                    index = attrs.get(key) if key == "POSITION" else prim.get(key)
                    if index is not None:
                        acc = doc.item("accessors", index, f"{where}.{key}")
                        n += _number(doc, acc.get("count"), f"accessors[{index}].count", integer=True)
            per_mesh[mesh_index] = n
        total += per_mesh[mesh_index]
    if total > MAX_PLACED_ELEMENTS:
        raise doc.fail(f"its {len(placed)} placed meshes declare {total} vertices and indices in all, over the "
                       f"{MAX_PLACED_ELEMENTS} dreamcore reads (a mesh counts once per node that places it)")


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


def _texture(doc: _Doc, texture_index: Any, where: str):
    """The decoded texture ([H, W, 3] tensor) of textures[texture_index], or None (with a warning) when its image
    is missing or not an image. Each image is decoded once however many textures use it, after its size passed
    :func:`~dreamcore.trust.open_image`'s checks; a file outside the folder (untrusted) or a URI is refused."""
    from PIL import UnidentifiedImageError

    texture = doc.item("textures", texture_index, where)
    source = texture.get("source")
    if source is None:
        for ext in _typed(doc, texture.get("extensions", {}), dict, f"textures[{texture_index}].extensions").values():
            if isinstance(ext, dict) and "source" in ext:
                source = ext["source"]
                break
    image = doc.item("images", source, f"textures[{texture_index}].source")
    if source in doc.textures:
        return doc.textures[source]
    name = f"images[{source}]"
    try:
        if "bufferView" in image:
            data, start, length, _ = doc.buffer_view(image["bufferView"], f"{name}.bufferView")
            src: Any = io.BytesIO(data[start:start + length])
        else:
            uri = _typed(doc, image.get("uri"), str, f"{name}.uri")
            src = io.BytesIO(doc.data_uri(uri, name)) if uri.startswith("data:") else doc.file(uri, name)
    except MeshFileError as e:
        log.warning("%s: texture %s not loaded (%s); using the material's base colour", doc.path, name, e.problem)
        doc.textures[source] = None
        return None
    try:
        with open_image(src, doc.what(name), doc.pixels) as pil:
            tensor = image_to_tensor(pil)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        log.warning("%s: texture %s is not a readable image (%s); using the material's base colour",
                    doc.path, name, type(e).__name__)
        tensor = None
    doc.textures[source] = tensor
    return tensor


def _material(doc: _Doc, index: Optional[int], cache: dict) -> tuple[tuple, Material, Optional[np.ndarray], int]:
    """(key, Material, UV matrix or None, texCoord set) for materials[index] (None: the default material)."""
    if index is None:
        return ("default",), Material(), None, 0
    mat = doc.item("materials", index, "a primitive's material")
    if index in cache:
        return cache[index]
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
        texture = _texture(doc, info.get("index"), f"{pbr_where}.{tex_key}.index")
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
    if not _is_key(mode, {_TRIANGLES: 0, _STRIP: 0, _FAN: 0}):
        if not _is_key(mode, _MODE_NAMES):
            raise doc.fail(f"{where}.mode {_ref(mode)} is not a glTF primitive mode")
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
    own_bytes = True  # the indices come from the model file itself (a GLB chunk, a data URI), not another file
    if draco is not None:
        indices = draco["indices"]
        own_bytes = not doc.from_file(ext.get("bufferView"))
    elif "indices" in prim:
        indices = doc.accessor(prim["indices"], f"{where}.indices")
        if indices.dtype.kind not in "iu" or indices.shape[1] != 1:
            raise doc.fail(f"{where}.indices must be an unsigned-integer SCALAR accessor")
        indices = indices[:, 0].astype(np.int64)
        own_bytes = not doc.accessor_from_file(prim["indices"])
    else:
        indices = np.arange(n, dtype=np.int64)
    check_indices(doc.path, f"{where}.indices", indices, n, quote_values=own_bytes)
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
    placed = _placed_meshes(doc)
    _check_placed_size(doc, placed)
    for mesh_index, world in placed:
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
