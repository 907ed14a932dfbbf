"""PLY reader (ASCII, binary little- and big-endian) -> a placed :class:`Part`, or points for point clouds.

Vertex properties read: ``x y z``; colours ``red green blue`` (also ``r g b`` and ``diffuse_red`` ...), as
unsigned integers (normalized by their maximum) or floats (0–1; 0–255 when larger); UVs as ``s t``, ``u v``,
``texture_u texture_v`` or ``texture_s texture_t``. Face properties: ``vertex_indices`` (or ``vertex_index``)
lists, polygons fan-triangulated; face colours; MeshLab's per-corner ``texcoord`` lists. A texture named by a
``comment TextureFile name.png`` header line is loaded from the file's folder. UVs flip to the glTF
convention ``v' = 1 − v``. Colours are display values.

Hostile files: the header's element counts are checked against the bytes after the header before anything is
allocated (a header claiming 10¹² vertices in a 200-byte file is refused at once), counts and list lengths must
be non-negative integers, and the ``TextureFile`` is resolved by :func:`~dreamcore.trust.referenced_file` (inside
the file's folder for an untrusted job) and size-checked before it is decoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dreamcore.meshes.asset import Material
from dreamcore.meshes.color import image_to_tensor
from dreamcore.meshes.parts import MeshFileError, Part, check_indices
from dreamcore.trust import PixelBudget, open_image

log = logging.getLogger("dreamcore.meshes")

_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
          "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
          "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_COUNT_TYPES = {"i1", "u1", "i2", "u2", "i4", "u4"}  # a list's length is an integer
_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
_UV_NAMES = (("s", "t"), ("u", "v"), ("texture_u", "texture_v"), ("texture_s", "texture_t"))


@dataclass
class _Property:
    name: str
    dtype: str
    count_dtype: Optional[str] = None  # set for list properties


@dataclass
class _Element:
    name: str
    count: int
    properties: list[_Property]


def _parse_header(path: Path, raw: bytes) -> tuple[str, list[_Element], list[str], int]:
    """(format, elements, comments, offset of the body)."""
    if not raw.strip():
        raise MeshFileError(path, "the file is empty")
    if not raw.startswith(b"ply"):
        raise MeshFileError(path, "not a PLY file (it does not start with 'ply')")
    end = raw.find(b"end_header")
    if end < 0:
        raise MeshFileError(path, "its PLY header has no end_header line")
    body = raw.find(b"\n", end) + 1
    if body == 0:
        body = len(raw)
    fmt, elements, comments = "", [], []
    for number, line in enumerate(raw[:end].decode("latin-1").splitlines()[1:], 2):
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
        elif words[0] in ("comment", "obj_info"):
            comments.append(" ".join(words[1:]))
        elif words[0] == "element":
            try:
                elements.append(_Element(words[1], int(words[2]), []))
            except (IndexError, ValueError):
                raise MeshFileError(path, f"header line {number}: bad element line (it needs a name and a "
                                          "count)") from None
            if elements[-1].count < 0:
                raise MeshFileError(path, f"header line {number}: element {words[1][:40]!r} has a negative count")
        elif words[0] == "property":
            if not elements:
                raise MeshFileError(path, f"header line {number}: a property before any element")
            try:
                if words[1] == "list":
                    prop = _Property(words[4], _TYPES[words[3]], _TYPES[words[2]])
                else:
                    prop = _Property(words[2], _TYPES[words[1]])
            except (IndexError, KeyError):
                raise MeshFileError(path, f"header line {number}: bad property line (a type and a name, or "
                                          "list, two types and a name)") from None
            if prop.count_dtype is not None and prop.count_dtype not in _COUNT_TYPES:
                raise MeshFileError(path, f"header line {number}: the length of list {prop.name[:40]!r} must be "
                                          f"an integer type, not {words[2]}")
            elements[-1].properties.append(prop)
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshFileError(path, f"unknown PLY format {fmt[:40]!r}")
    return fmt, elements, comments, body


def _check_counts(path: Path, fmt: str, elements: list[_Element], available: int) -> None:
    """Refuse a header whose elements cannot fit in the ``available`` bytes after it, before anything is
    allocated: a binary item takes at least its fixed properties and list lengths, an ASCII item at least one
    character of its own line."""
    need = 0
    for el in elements:
        if fmt == "ascii":
            least = 1
        else:
            least = sum(np.dtype(p.count_dtype or p.dtype).itemsize for p in el.properties)
        need += el.count * least
        if need > available:
            raise MeshFileError(path, f"element {el.name[:40]!r} declares {el.count} items (at least {least} "
                                      f"bytes each), but the file holds only {available} bytes after its header")


def _read_binary(path: Path, raw: bytes, pos: int, element: _Element, order: str) -> tuple[dict, int]:
    """{property: array} of one binary element; lists as [count, k] arrays when every row has k items."""
    fixed = [(p.name, order + p.dtype) for p in element.properties if p.count_dtype is None]
    lists = [p for p in element.properties if p.count_dtype is not None]
    n = element.count
    if not lists:
        dtype = np.dtype(fixed)
        if pos + n * dtype.itemsize > len(raw):
            raise MeshFileError(path, f"the file is truncated inside element {element.name!r}")
        data = np.frombuffer(raw, dtype, count=n, offset=pos)
        return {name: data[name] for name, _ in fixed}, pos + n * dtype.itemsize
    # try one structured dtype with the first row's list lengths; verify that every row matches
    fields, probe = [], pos
    for p in element.properties:
        if p.count_dtype is None:
            fields.append((p.name, order + p.dtype))
            probe += np.dtype(p.dtype).itemsize
        else:
            if probe + np.dtype(p.count_dtype).itemsize > len(raw):
                raise MeshFileError(path, f"the file is truncated inside element {element.name!r}")
            k = int(np.frombuffer(raw, order + p.count_dtype, count=1, offset=probe)[0])
            if k < 0:
                raise MeshFileError(path, f"element {element.name!r}: a {p.name!r} list has a negative length")
            fields.append((p.name + "#n", order + p.count_dtype))
            fields.append((p.name, order + p.dtype, (k,)))
            probe += np.dtype(p.count_dtype).itemsize + k * np.dtype(p.dtype).itemsize
    if probe > len(raw):
        raise MeshFileError(path, f"the file is truncated inside element {element.name!r}")
    dtype = np.dtype(fields)
    if n and pos + n * dtype.itemsize <= len(raw):
        data = np.frombuffer(raw, dtype, count=n, offset=pos)
        if all((data[p.name + "#n"] == data.dtype[p.name].shape[0]).all() for p in lists):
            return {p.name: np.asarray(data[p.name]).reshape(n, -1) if p.count_dtype else np.asarray(data[p.name])
                    for p in element.properties}, pos + n * dtype.itemsize
    out: dict[str, list] = {p.name: [] for p in element.properties}  # ragged rows: one at a time
    for _ in range(n):
        for p in element.properties:
            if p.count_dtype is None:
                size = np.dtype(p.dtype).itemsize
                if pos + size > len(raw):
                    raise MeshFileError(path, f"the file is truncated inside element {element.name!r}")
                out[p.name].append(np.frombuffer(raw, order + p.dtype, count=1, offset=pos)[0])
                pos += size
            else:
                csize = np.dtype(p.count_dtype).itemsize
                if pos + csize > len(raw):
                    raise MeshFileError(path, f"the file is truncated inside element {element.name!r}")
                k = int(np.frombuffer(raw, order + p.count_dtype, count=1, offset=pos)[0])
                if k < 0:
                    raise MeshFileError(path, f"element {element.name!r}: a {p.name!r} list has a negative length")
                pos += csize
                size = k * np.dtype(p.dtype).itemsize
                if pos + size > len(raw):
                    raise MeshFileError(path, f"the file is truncated inside element {element.name!r}")
                out[p.name].append(np.frombuffer(raw, order + p.dtype, count=k, offset=pos))
                pos += size
    return {k: (v if any(pp.name == k and pp.count_dtype for pp in element.properties) else np.asarray(v))
            for k, v in out.items()}, pos


def _read_ascii(path: Path, lines: list[str], start: int, element: _Element) -> tuple[dict, int]:
    props, n = element.properties, element.count
    if start + n > len(lines):
        raise MeshFileError(path, f"the file is truncated inside element {element.name!r} "
                                  f"({len(lines) - start} of {n} lines)")
    rows = lines[start:start + n]
    try:
        if all(p.count_dtype is None for p in props):
            table = np.array([r.split() for r in rows], dtype=np.float64).reshape(n, len(props))
            return {p.name: table[:, i].astype(p.dtype) for i, p in enumerate(props)}, start + n
        out: dict[str, list] = {p.name: [] for p in props}
        for r in rows:
            words, i = r.split(), 0
            for p in props:
                if p.count_dtype is None:
                    out[p.name].append(float(words[i]))
                    i += 1
                else:
                    k = int(words[i])
                    if k < 0:
                        raise MeshFileError(path, f"element {element.name!r}: a {p.name!r} list has a negative "
                                                  "length")
                    out[p.name].append(np.array(words[i + 1:i + 1 + k], dtype=np.float64).astype(p.dtype))
                    i += 1 + k
    except (ValueError, IndexError):
        raise MeshFileError(path, f"element {element.name!r}: a line does not match its properties") from None
    return {p.name: (out[p.name] if p.count_dtype else np.asarray(out[p.name], p.dtype)) for p in props}, start + n


def read_elements(path: Path) -> tuple[dict[str, dict], list[str]]:
    """{element name: {property: array or list of arrays}} and the header comments."""
    raw = path.read_bytes()
    fmt, elements, comments, pos = _parse_header(path, raw)
    _check_counts(path, fmt, elements, len(raw) - pos)
    out: dict[str, dict] = {}
    if fmt == "ascii":
        lines = [ln for ln in raw[pos:].decode("latin-1").splitlines() if ln.strip()]
        start = 0
        for el in elements:
            out[el.name], start = _read_ascii(path, lines, start, el)
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        for el in elements:
            out[el.name], pos = _read_binary(path, raw, pos, el, order)
    return out, comments


def _columns(table: dict, names_options) -> Optional[np.ndarray]:
    for names in names_options:
        if all(n in table for n in names):
            return np.stack([np.asarray(table[n]) for n in names], axis=1)
    return None


def _unit(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.float64) / float(np.iinfo(values.dtype).max)
    values = values.astype(np.float64)
    return values / 255.0 if values.size and np.nanmax(values) > 1.0 else values


def _triangulate(lists) -> tuple[np.ndarray, np.ndarray]:
    """Face index lists -> ([F, 3] triangles, [F] source polygon of each)."""
    if isinstance(lists, np.ndarray):
        if lists.shape[1] == 3:
            return lists.astype(np.int64), np.arange(len(lists))
        lists = list(lists)
    tris, owner = [], []
    for i, poly in enumerate(lists):
        poly = np.asarray(poly, np.int64)
        for k in range(1, len(poly) - 1):
            tris.append((poly[0], poly[k], poly[k + 1]))
            owner.append(i)
    return np.asarray(tris, np.int64).reshape(-1, 3), np.asarray(owner, np.int64)


def read_points(path: Path) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], dict, list[str]]:
    """(positions [V, 3], colours [V, 3] or None, UVs [V, 2] (glTF convention) or None, the face table, the
    header comments)."""
    elements, comments = read_elements(path)
    vertex = elements.get("vertex")
    if vertex is None or not all(k in vertex for k in "xyz"):
        raise MeshFileError(path, "it has no vertex element with x, y, z")
    pos = np.stack([np.asarray(vertex[k], np.float64) for k in "xyz"], axis=1)
    col = _columns(vertex, _COLOR_NAMES)
    uv = _columns(vertex, _UV_NAMES)
    if uv is not None:
        uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float64)
    return pos, None if col is None else _unit(col), uv, elements.get("face", {}), comments


def read_ply(path: Path) -> tuple[list[Part], dict]:
    """The part and material of a PLY mesh (per-face colours and per-corner UVs unshare the vertices)."""
    pos, col, uv, face, comments = read_points(path)
    key = next((k for k in ("vertex_indices", "vertex_index") if k in face), None)
    if key is None or len(face[key]) == 0:
        raise MeshFileError(path, f"it holds {len(pos)} vertices and no faces (a point cloud)")
    faces, owner = _triangulate(face[key])
    check_indices(path, "faces", faces, len(pos))
    face_col = _columns(face, _COLOR_NAMES)
    corner_uv = face.get("texcoord")
    if face_col is not None or corner_uv is not None:  # unshare: one vertex per triangle corner
        flat = faces.reshape(-1)
        pos, faces = pos[flat], np.arange(len(flat), dtype=np.int64).reshape(-1, 3)
        col = np.repeat(_unit(face_col)[owner], 3, axis=0) if face_col is not None else (
            None if col is None else col[flat])
        if corner_uv is not None:
            uv = _corner_uvs(corner_uv, owner, face[key])
        elif uv is not None:
            uv = uv[flat]
    texture = None
    names = [c.split(None, 1)[1] if len(c.split(None, 1)) > 1 else "" for c in comments
             if c.lower().startswith("texturefile")]
    if names:  # the last one counts, as it always did; only it is read
        from dreamcore.meshes.obj import find_texture

        what = f"mesh file {path}: comment TextureFile"
        found = find_texture(names[-1], path.parent, what)
        if found is None:
            log.warning("%s: texture %r not found next to it; using white", path, names[-1][:120])
        else:
            with open_image(found, what, PixelBudget()) as image:
                texture = image_to_tensor(image)
    material = Material(texture=texture if uv is not None else None)
    return [Part(pos, faces, uv, col, ("ply",))], {("ply",): material}


def _corner_uvs(corner_uv, owner: np.ndarray, polys) -> np.ndarray:
    """MeshLab's per-face ``texcoord`` lists (u0 v0 u1 v1 ...) -> UVs of the unshared triangle corners."""
    out = []
    for tri_poly, k in zip(owner, _fan_positions(polys)):
        uvs = np.asarray(corner_uv[tri_poly], np.float64).reshape(-1, 2)
        for c in k:
            out.append(uvs[c] if c < len(uvs) else (0.0, 0.0))
    uv = np.asarray(out, np.float64).reshape(-1, 2)
    return np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)


def _fan_positions(polys):
    """For each fan triangle, the corner positions (0, k, k+1) within its polygon."""
    for poly in polys:
        for k in range(1, len(poly) - 1):
            yield (0, k, k + 1)
