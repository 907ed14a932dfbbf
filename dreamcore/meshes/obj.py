"""Wavefront OBJ + MTL reader -> placed :class:`Part` s, one per material used.

OBJ: ``v x y z [w]`` or ``v x y z r g b`` (per-vertex colour, 0–1 or 0–255), ``vt u v``, ``f`` with
``v``, ``v/vt``, ``v//vn`` or ``v/vt/vn`` corners, 1-based or negative (relative) indices, polygons fan-
triangulated, ``usemtl``/``mtllib``; ``l`` and ``p`` elements are skipped. Lines may continue with ``\\``.
MTL: ``newmtl``, ``Kd``, ``map_Kd [-o u v] [-s u v] [-bm x] ... file`` (the scale ``-s`` and offset ``-o``
apply to the texture coordinates, ``uv' = uv·s + o``; the other options are parsed and ignored). Texture
names written on another machine (backslashes, absolute paths, odd case) are looked up by file name in the
MTL's folder and its sub-folders; a texture that cannot be found is a warning and the material's ``Kd`` is
used. Colour: the texture alone when present (writers often put a grey ``Kd`` beside it), else ``Kd``.
Text in UTF-8, else Latin-1. UVs flip to the glTF convention ``v' = 1 − v``.

Hostile files (:mod:`dreamcore.trust`): every name in ``mtllib`` and the MTL's texture lines (``map_Kd``, which is
read, and the other ``map_*``/``bump``/``disp``/``decal``/``refl`` lines, which are only checked) is resolved by
:func:`~dreamcore.trust.referenced_file`, and a file found by name in the sub-folders must lie inside the folder
too (untrusted jobs); textures are size-checked before they are decoded, each file is decoded and each MTL parsed
once however often it is named, and the folder is listed once. Messages name the line, not its text.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Optional
from urllib.parse import unquote

import numpy as np

from dreamcore.meshes.asset import Material
from dreamcore.meshes.color import image_to_tensor
from dreamcore.meshes.parts import MeshFileError, Part
from dreamcore.trust import PixelBudget, inside_folder, open_image, referenced_file, untrusted

log = logging.getLogger("dreamcore.meshes")

# map_* options and how many numbers (at most) each takes; the on/off options take one word
_OPTION_ARITY = {"-o": 3, "-s": 3, "-t": 3, "-mm": 2, "-bm": 1, "-boost": 1, "-texres": 1, "-blendu": 1,
                 "-blendv": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1, "-type": 1}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", ".gif", ".webp")
# MTL statements that name a texture file dreamcore does not read: checked like map_Kd in an untrusted job
_OTHER_MAPS = ("bump", "disp", "decal", "refl", "norm")


def read_text(path: Path) -> str:
    """A text file in UTF-8 (with or without BOM), else Latin-1 (which decodes any bytes)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _logical_lines(text: str):
    """(line number, stripped line) with ``\\`` continuations joined and comments removed."""
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = ""
    if pending.strip():
        yield start, pending.strip()


@dataclass
class _MtlEntry:
    kd: tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture_name: str = ""
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)


def _parse_map(args: list[str]) -> tuple[str, tuple[float, float], tuple[float, float]]:
    """``map_Kd`` arguments -> (file name, scale (su, sv), offset (ou, ov))."""
    scale, offset, i = [1.0, 1.0], [0.0, 0.0], 0
    while i < len(args) and args[i].startswith("-") and args[i].lower() in _OPTION_ARITY:
        option, arity = args[i].lower(), _OPTION_ARITY[args[i].lower()]
        values: list[float] = []
        i += 1
        while len(values) < arity and i < len(args):
            try:
                values.append(float(args[i]))
            except ValueError:
                if option in ("-o", "-s", "-t", "-mm") or values:
                    break
                values.append(0.0)  # an on/off or channel word
            i += 1
        if option == "-s" and values:
            scale = [values[0], values[1] if len(values) > 1 else 1.0]
        elif option == "-o" and values:
            offset = [values[0], values[1] if len(values) > 1 else 0.0]
    return " ".join(args[i:]), (scale[0], scale[1]), (offset[0], offset[1])


def _parse_mtl(path: Path, root: Path) -> dict[str, _MtlEntry]:
    """{material name: entry} of an MTL file. In an untrusted job the files its other texture lines name (not
    read) must lie in ``root`` (the OBJ's folder) too, like ``map_Kd``'s."""
    entries: dict[str, _MtlEntry] = {}
    current: Optional[_MtlEntry] = None
    for number, line in _logical_lines(read_text(path)):
        words = line.split()
        if not words:
            continue
        key = words[0].lower()
        if key == "newmtl":
            current = entries.setdefault(" ".join(words[1:]), _MtlEntry())
        elif key != "map_kd" and (key.startswith("map_") or key in _OTHER_MAPS) and untrusted():
            name = _parse_map(words[1:])[0].strip().strip('"')
            if name:
                referenced_file(name, path.parent, f"mesh file {path}: line {number}: {key}", root)
        elif current is None:
            continue
        elif key == "kd" and len(words) >= 4:
            try:
                current.kd = tuple(float(np.clip(float(w), 0.0, 1.0)) for w in words[1:4])
            except ValueError:
                raise MeshFileError(path, f"line {number}: Kd needs three numbers") from None
        elif key == "map_kd":
            current.texture_name, current.scale, current.offset = _parse_map(words[1:])
    return entries


class _Finder:
    """Finds the files a model names (:func:`find_texture`), listing each folder's tree once however many names
    are looked up in it (a file naming a thousand missing textures walks its folder once, not a thousand times)."""

    def __init__(self) -> None:
        self._listings: dict[Path, dict[str, list[tuple[int, str]]]] = {}

    def find(self, name: str, folder: Path, what: str, root: Optional[Path] = None) -> Optional[Path]:
        """The file a reference means: as written (:func:`~dreamcore.trust.referenced_file`: relative to
        ``folder`` or absolute, percent-decoded; outside ``root`` (default ``folder``) refused in an untrusted
        job) if it exists, else the file of the same name (case-insensitive) in ``folder`` or its sub-folders
        (nearest first), which must lie inside ``root`` too (a symbolic link may point anywhere)."""
        name = name.strip().strip('"')
        if not name:
            return None
        root = folder if root is None else root
        direct = referenced_file(name, folder, what, root)
        if direct.is_file():
            return direct
        listing = self._listing(folder)
        bases = {PureWindowsPath(n).name.lower() for n in (name, unquote(name))}  # the last part of any path
        matches = [m for base in bases for m in listing.get(base, [])]
        return inside_folder(Path(min(matches)[1]), root, what, name) if matches else None

    def _listing(self, folder: Path) -> dict[str, list[tuple[int, str]]]:
        """{lower-case file name: [(depth, path)]} of ``folder`` and its sub-folders, three levels deep."""
        if folder not in self._listings:
            listing: dict[str, list[tuple[int, str]]] = {}
            for root, dirs, files in os.walk(folder):
                depth = len(Path(root).relative_to(folder).parts)
                if depth >= 3:
                    dirs[:] = []
                for f in files:
                    listing.setdefault(f.lower(), []).append((depth, str(Path(root) / f)))
            self._listings[folder] = listing
        return self._listings[folder]


def find_texture(name: str, folder: Path, what: str) -> Optional[Path]:
    """The file a texture reference means (see :meth:`_Finder.find`); ``what`` names the reference in a refusal."""
    return _Finder().find(name, folder, what)


class _Textures:
    """The textures of one model: each file decoded once (after its size is checked) within one pixel budget."""

    def __init__(self) -> None:
        self.decoded: dict[Path, object] = {}
        self.pixels = PixelBudget()

    def load(self, found: Path, what: str, mtl_path: Optional[Path], material: str):
        """The [H, W, 3] tensor of the image file ``found``, or None (with a warning) when it is not an image."""
        from PIL import UnidentifiedImageError

        if found not in self.decoded:
            try:
                with open_image(found, what, self.pixels) as image:
                    self.decoded[found] = image_to_tensor(image)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                log.warning("%s: texture %s of material %r is not a readable image (%s); using its Kd colour",
                            mtl_path, found, material, type(e).__name__)
                self.decoded[found] = None
        return self.decoded[found]


def _load_material(entry: Optional[_MtlEntry], name: str, folder: Path, mtl_path: Optional[Path],
                   finder: _Finder, textures: _Textures, root: Path) -> Material:
    if entry is None:
        return Material()
    texture = None
    if entry.texture_name:
        what = f"mesh file {mtl_path}: material {name[:60]!r}: map_Kd"
        found = finder.find(entry.texture_name, folder, what, root)
        if found is None:
            log.warning("%s: texture %r of material %r not found (looked in %s); using its Kd colour",
                        mtl_path, entry.texture_name, name, folder)
        else:
            texture = textures.load(found, what, mtl_path, name)
    base = (1.0, 1.0, 1.0) if texture is not None else entry.kd
    return Material(base_color=base, texture=texture)


def _mtl_paths(words: list[str], folder: Path, finder: _Finder, what: str) -> list[Path]:
    """``mtllib`` arguments: the whole rest of the line as one name (names with spaces) when that file
    exists, else each word; every name is looked up like a texture."""
    whole = " ".join(words)
    found = finder.find(whole, folder, what)
    if found is not None:
        return [found]
    out = []
    for w in words:
        p = finder.find(w, folder, what)
        if p is None:
            log.warning("%s: material library %r not found; its materials use a white base colour", folder, w)
        else:
            out.append(p)
    return out


def _corner(token: str, n_v: int, n_vt: int, path: Path, number: int) -> tuple[int, int]:
    """``v[/vt[/vn]]`` -> 0-based (vertex, uv or −1), negative indices counted back from the current end."""
    fields = token.split("/")
    try:
        v = int(fields[0])
        vt = int(fields[1]) if len(fields) > 1 and fields[1] else 0
    except ValueError:
        raise MeshFileError(path, f"line {number}: a face corner is not v, v/vt or v/vt/vn") from None
    if v == 0 or (len(fields) > 1 and fields[1] and vt == 0):
        raise MeshFileError(path, f"line {number}: OBJ indices start at 1, got 0")
    index = v
    v = v - 1 if v > 0 else n_v + v
    if not 0 <= v < n_v:
        raise MeshFileError(path, f"line {number}: vertex index {_number(index)} is outside the {n_v} vertices "
                                  "so far")
    if vt:
        index = vt
        vt = vt - 1 if vt > 0 else n_vt + vt
        if not 0 <= vt < n_vt:
            raise MeshFileError(path, f"line {number}: texture index {_number(index)} is outside the {n_vt} so far")
    else:
        vt = -1
    return v, vt


def _number(value: int) -> str:
    """An index as a message quotes it (a number of forty digits is cut)."""
    text = str(value)
    return text if len(text) <= 20 else text[:17] + "..."


def read_obj(path: Path) -> tuple[list[Part], dict]:
    """Parts (one per material, vertices unshared between UV seams) and materials of an OBJ file."""
    folder = path.parent
    text = read_text(path)
    if not text.strip():
        raise MeshFileError(path, "the file is empty")
    positions: list[list[float]] = []
    colors: list[list[float]] = []
    uvs: list[list[float]] = []
    corners: dict[str, list[tuple[int, int]]] = {}  # material -> triangle corners (v, vt)
    library: dict[str, _MtlEntry] = {}
    mtl_files: list[Path] = []  # each MTL once, however many mtllib lines name it
    finder, textures = _Finder(), _Textures()
    material, n_lines = "", 0
    for number, line in _logical_lines(text):
        words = line.split()
        if not words:
            continue
        key = words[0]
        try:
            if key == "v":
                values = [float(w) for w in words[1:]]
                if len(values) < 3:
                    raise MeshFileError(path, f"line {number}: a vertex needs x y z, got {len(values)} numbers")
                positions.append(values[:3])
                colors.append(values[3:6] if len(values) >= 6 else [])
            elif key == "vt":
                values = [float(w) for w in words[1:3]]
                uvs.append(values + [0.0] * (2 - len(values)))
            elif key == "f":
                if len(words) < 4:
                    raise MeshFileError(path, f"line {number}: a face needs at least 3 corners, got "
                                              f"{len(words) - 1}")
                poly = [_corner(w, len(positions), len(uvs), path, number) for w in words[1:]]
                tris = corners.setdefault(material, [])
                for k in range(1, len(poly) - 1):
                    tris.extend((poly[0], poly[k], poly[k + 1]))
            elif key in ("l", "p"):
                n_lines += 1
            elif key == "usemtl":
                material = " ".join(words[1:])
            elif key == "mtllib":
                for mtl in _mtl_paths(words[1:], folder, finder, f"mesh file {path}: line {number}: mtllib"):
                    if mtl not in mtl_files:
                        mtl_files.append(mtl)
                        for name, entry in _parse_mtl(mtl, folder).items():
                            library.setdefault(name, entry)
        except ValueError:
            raise MeshFileError(path, f"line {number}: {key!r} needs numbers") from None
    if not any(corners.values()):
        if n_lines:
            raise MeshFileError(path, f"it holds only points or lines ({n_lines} 'l'/'p' elements), no faces")
        what = f"{len(positions)} vertices and no faces (a point cloud)" if positions else "no vertices or faces"
        raise MeshFileError(path, f"it holds {what}")
    pos = np.asarray(positions, np.float64)
    has_color = any(len(c) == 3 for c in colors)
    col = None
    if has_color:
        col = np.array([c if len(c) == 3 else [1.0, 1.0, 1.0] for c in colors], np.float64)
        if col.max() > 1.0:  # some writers use 0–255
            col = col / 255.0
    uv_all = np.asarray(uvs, np.float64).reshape(-1, 2)
    parts, materials = [], {}
    mtl_path = mtl_files[0] if mtl_files else None
    for name, tris in corners.items():
        if not tris:
            continue
        entry = library.get(name)
        if name and entry is None:
            log.warning("%s: material %r is not defined in any material library; using white", path, name)
        mat = _load_material(entry, name, mtl_path.parent if mtl_path else folder, mtl_path, finder, textures,
                             folder)
        materials[("obj", name)] = mat
        pairs = np.asarray(tris, np.int64)  # [3F, 2]
        unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
        faces = inverse.reshape(-1, 3)
        verts = pos[unique[:, 0]]
        part_uv = None
        if (unique[:, 1] >= 0).any():
            uv = np.where(unique[:, 1:2] >= 0, uv_all[np.maximum(unique[:, 1], 0)], 0.0)
            if entry is not None:
                uv = uv * np.asarray(entry.scale) + np.asarray(entry.offset)
            part_uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)
        part_col = None if col is None else col[unique[:, 0]]
        parts.append(Part(verts, faces, part_uv, part_col, ("obj", name)))
    return parts, materials
