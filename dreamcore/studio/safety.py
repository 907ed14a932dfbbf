"""What a web page may send: ``key=value`` overrides and uploaded model files. Nothing from a page reaches code or
a path outside the runs folder: ``plugins`` and the other keys that name code or storage are refused, every value
that reads as a path must lie inside the runs folder (it is rewritten to that absolute path), and uploads are
size-limited, typed by their bytes (not their name) and unpacked without leaving their folder."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from dreamcore.config import parse_overrides
from dreamcore.errors import DreamcoreError

# keys a page never sets: code (plugins), other files (extends), the run's own folder, storage outside the run
REFUSED_KEYS = ("plugins", "extends", "run.dir", "refine.config")
REFUSED_LEAVES = ("cache_dir",)
# a model named on the hub (owner/name): loaded from the local hub cache, offline, never as a path
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_LEAVES = ("model",)
# words, never paths, even with a "/" in them ("a red/blue chair")
TEXT_KEYS = ("prompt", "negative_prompt", "views")
PATH_SUFFIXES = (".glb", ".gltf", ".obj", ".mtl", ".ply", ".stl", ".png", ".jpg", ".jpeg", ".py", ".yaml",
                 ".yml", ".json", ".pt", ".safetensors", ".bin", ".zip")
DEFAULT_UPLOAD_LIMIT = 200 * 1024 * 1024


class UnsafeInput(DreamcoreError):
    """A page sent something the studio does not run (a message for the page, nothing started)."""


def _looks_like_path(value: str) -> bool:
    v = value.strip()
    return ("/" in v or "\\" in v or v.startswith(("~", ".")) or v.lower().endswith(PATH_SUFFIXES)
            or bool(re.match(r"^[A-Za-z]:", v)))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_overrides(items: list[str], runs_dir: str | Path) -> list[str]:
    """The page's overrides, checked: refused keys and paths outside ``runs_dir`` raise :class:`UnsafeInput`
    naming the override; path values inside it come back as absolute paths (the engine reads paths from its
    working folder, the page means the runs folder)."""
    root = Path(runs_dir).resolve()
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        tree = parse_overrides([item])  # the CLI's parser: a malformed override gets its message
        key = item.split("=", 1)[0].strip().lstrip("+")
        for dotted in _dotted_keys(tree):  # a mapping value (run={dir: x}) is checked key by key
            refused = any(dotted == k or dotted.startswith(k + ".") for k in REFUSED_KEYS)
            if refused or dotted.split(".")[-1] in REFUSED_LEAVES:
                raise UnsafeInput(f"override '{item}': {dotted} cannot be set from the studio")
        if key.split(".")[0] in TEXT_KEYS:
            out.append(item)
            continue
        value = _leaf(tree, key)
        out.append(f"{key}={_checked_value(item, key, value, root)}" if _has_path(value) else item)
    return out


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        dotted = f"{prefix}{k}"
        out.append(dotted)
        if isinstance(v, dict):
            out.extend(_dotted_keys(v, dotted + "."))
    return out


def _leaf(tree: dict, key: str):
    node = tree
    for p in key.split("."):
        node = node[p]
    return node


def _has_path(value) -> bool:
    if isinstance(value, str):
        return _looks_like_path(value)
    if isinstance(value, list):
        return any(_has_path(v) for v in value)
    if isinstance(value, dict):
        return any(_has_path(v) for v in value.values())
    return False


def _checked_value(item: str, key: str, value, root: Path):
    if isinstance(value, list):
        return "[" + ", ".join(_quote(_checked_value(item, key, v, root)) for v in value) + "]"
    if isinstance(value, dict):
        raise UnsafeInput(f"override '{item}': give paths one key at a time (e.g. {key}.x=...)")
    if not isinstance(value, str) or not _looks_like_path(value):
        return value
    if re.match(r"^[A-Za-z]:", value):
        raise UnsafeInput(f"override '{item}': {value} is a path on another machine; upload the file instead")
    leaf = key.split(".")[-1]
    if leaf in MODEL_LEAVES and HUB_ID.match(value) and not (root / value).exists():
        return value  # a hub id, resolved from the local hub cache
    path = Path(value.replace("\\", "/")).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not _inside(resolved, root):
        raise UnsafeInput(f"override '{item}': {value} is outside the studio's runs folder {root}; upload the "
                          "file instead")
    return str(resolved)


def _quote(v) -> str:
    return f"'{v}'" if isinstance(v, str) else str(v)


# -- uploads ---------------------------------------------------------------------------------------------------

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")
ZIP_MEMBER_SUFFIXES = (*MESH_SUFFIXES, ".mtl", ".png", ".jpg", ".jpeg", ".bin", ".bmp", ".tga", ".webp")
ZIP_MAX_MEMBERS = 1000


def sniff(data: bytes, size: int | None = None) -> str | None:
    """The upload's type from its first bytes (``size``: the whole file's, when ``data`` is only its start):
    glb, zip, ply, stl, obj or gltf (JSON); None when none fits."""
    size = len(data) if size is None else size
    head = data[:512]
    if head.startswith(b"glTF"):
        return "glb"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"ply"):
        return "ply"
    text = head.lstrip()
    if text.startswith(b"{"):
        return "gltf"
    if text.startswith(b"solid") or len(data) >= 84 and size == 84 + 50 * int.from_bytes(data[80:84], "little"):
        return "stl"
    try:
        lines = head.decode("utf-8", errors="strict").splitlines()
    except UnicodeDecodeError:
        return None
    words = {ln.split(maxsplit=1)[0] for ln in lines if ln.strip() and not ln.startswith("#")}
    return "obj" if words and words & {"v", "f", "mtllib", "o", "g", "vt", "vn", "usemtl"} and \
        words <= {"v", "f", "vt", "vn", "o", "g", "s", "mtllib", "usemtl", "l", "vp", "p"} else None


def save_upload(src: str | Path, dest_dir: str | Path, limit_bytes: int = DEFAULT_UPLOAD_LIMIT) -> Path:
    """Copy an uploaded file into ``dest_dir`` (inside the run folder) and return the mesh to load: the file
    itself, or for a zip (an OBJ with its MTL and textures) the one mesh in it, unpacked safely."""
    src = Path(src)
    size = src.stat().st_size
    if size > limit_bytes:
        raise UnsafeInput(f"the upload is {size / 2**20:.1f} MB, over the studio's limit of "
                          f"{limit_bytes / 2**20:.0f} MB (dreamcore studio --max-upload-mb)")
    if size == 0:
        raise UnsafeInput("the upload is empty")
    with open(src, "rb") as f:
        head = f.read(4096)
    kind = sniff(head, size)
    if kind is None:
        raise UnsafeInput("the upload is not a GLB, glTF, OBJ, PLY, STL or a zip of an OBJ with its MTL and "
                          "textures (judged by its content, not its name)")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if kind != "zip":
        out = dest / f"upload.{kind}"
        shutil.copyfile(src, out)
        return out
    try:
        return _unpack_zip(src, dest / "upload", limit_bytes)
    except UnsafeInput:
        shutil.rmtree(dest / "upload", ignore_errors=True)  # a refused zip leaves nothing unpacked
        raise


def _unpack_zip(src: Path, dest: Path, limit_bytes: int) -> Path:
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile as e:
        raise UnsafeInput(f"the uploaded zip is damaged ({e})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > ZIP_MAX_MEMBERS:
            raise UnsafeInput(f"the uploaded zip holds {len(members)} files (at most {ZIP_MAX_MEMBERS})")
        total = sum(m.file_size for m in members)
        if total > limit_bytes:
            raise UnsafeInput(f"the uploaded zip unpacks to {total / 2**20:.1f} MB, over the limit of "
                              f"{limit_bytes / 2**20:.0f} MB")
        dest.mkdir(parents=True, exist_ok=True)
        meshes, written = [], 0
        for m in members:
            name = PurePosixPath(m.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or re.match(r"^[A-Za-z]:", m.filename):
                raise UnsafeInput(f"the uploaded zip has an entry outside its folder: {m.filename!r}")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeInput(f"the uploaded zip has a symbolic link: {m.filename!r}")
            if name.name.startswith(".") or name.suffix.lower() not in ZIP_MEMBER_SUFFIXES:
                continue  # not part of a model (e.g. __MACOSX/._x, readme.txt): left packed
            if "__MACOSX" in name.parts:
                continue
            target = (dest / Path(*name.parts)).resolve()
            if not str(target).startswith(str(dest.resolve()) + "/"):
                raise UnsafeInput(f"the uploaded zip has an entry outside its folder: {m.filename!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as r, open(target, "wb") as w:  # counted as read: a header can lie about sizes
                while chunk := r.read(1 << 20):
                    written += len(chunk)
                    if written > limit_bytes:
                        raise UnsafeInput(f"the uploaded zip unpacks to more than {limit_bytes / 2**20:.0f} MB")
                    w.write(chunk)
            if name.suffix.lower() in MESH_SUFFIXES:
                meshes.append(target)
    if len(meshes) != 1:
        found = ", ".join(p.name for p in meshes) or "none"
        raise UnsafeInput(f"the uploaded zip must hold exactly one model file ({'/'.join(MESH_SUFFIXES)}); "
                          f"found {found}")
    return meshes[0]
