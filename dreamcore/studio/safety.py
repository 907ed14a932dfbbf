"""What a web page may send: ``key=value`` overrides, uploaded model files and pictures (Image to 3D). Nothing from a
page reaches code or a path outside the runs folder: ``plugins`` and the other keys that name code or storage are
refused, every value that reads as a path must lie inside the runs folder (it is rewritten to that absolute path),
and uploads are size-limited, typed by their bytes (not their name or the browser's content type), stored under
names the server chooses and unpacked without leaving their folder."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import yaml

from dreamcore.config import parse_overrides
from dreamcore.errors import DreamcoreError

# keys a page never sets: code (plugins), other files (extends), the run's own folder, storage outside the run,
# an edit's region as text (the server builds it from six numbers: check_box)
REFUSED_KEYS = ("plugins", "extends", "run.dir", "refine.config", "system.region")
REFUSED_LEAVES = ("cache_dir",)
# a model named on the hub (owner/name): loaded from the local hub cache, offline, never as a path
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_LEAVES = ("model",)
# words, never paths, even with a "/" in them ("a red/blue chair")
TEXT_KEYS = ("prompt", "negative_prompt", "views")
PATH_SUFFIXES = (".glb", ".gltf", ".obj", ".mtl", ".ply", ".stl", ".png", ".jpg", ".jpeg", ".py", ".yaml",
                 ".yml", ".json", ".pt", ".safetensors", ".bin", ".zip")
DEFAULT_UPLOAD_LIMIT = 200 * 1024 * 1024


@dataclass
class StudioLimits:
    """What one studio server lets a page ask for (``dreamcore studio --limits FILE.yaml`` and flags). The defaults
    let the ``high`` preset of every recipe through and refuse absurd values in words."""

    max_steps: int = 50000  # run.steps of a job (its refinement stage's too), after the preset's time scale
    max_resolution: int = 1024  # any image resolution (training, validation, evaluation, turntable)
    max_grid: int = 512  # 3D grids: the export's marching-cubes resolution, DMTet's grid
    max_texture_size: int = 4096
    max_batch_size: int = 16  # views per step
    max_views: int = 256  # evaluation views, validation views, turntable frames; the length of any list
    max_points: int = 2_000_000  # Gaussians, sampled points, a mesh's faces
    max_upload_mb: float = 200.0  # a mesh upload (Reconstruct a mesh)
    max_image_mb: float = 10.0  # a picture upload (Image to 3D)
    max_queue: int = 64  # jobs waiting or running on this server
    max_per_page: int = 4  # jobs waiting or running for one page (one browser session, or one user with --auth)


class UnsafeInput(DreamcoreError):
    """A page sent something the studio does not run (a message for the page, nothing started)."""


class PictureRefused(UnsafeInput):
    """The picture itself is refused (too large, not a picture, undecodable, empty after keying): the page must
    choose another, where other refusals (its view, its overrides) leave the chosen picture usable."""


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


MAX_OVERRIDE_CHARS = 2000  # one line from the page
MAX_OVERRIDES = 100  # lines from the page
MAX_NESTING = 8  # brackets inside one value
CODE_KEYS = ("plugins", "extends")  # name code or other files: refused at any depth, with or without "+"
NESTED_OVERRIDES = "refine.overrides"  # a list of key=value lines the refinement stage loads: checked as the page's


def check_overrides(items: list[str], runs_dir: str | Path, owns: Callable[[str], bool] | None = None,
                    _nested: str = "") -> list[str]:
    """The page's overrides, checked, as lines the engine reads back to the same values. One check sees every
    config a job will load: ``refine.overrides`` (the refinement stage's own overrides) is checked line by line
    as the page's own, at any depth and however it is written (``refine.overrides=[...]``,
    ``refine={overrides: [...]}``). Refused with :class:`UnsafeInput` naming the line: keys that name code or
    storage (:data:`CODE_KEYS` anywhere in a key, :data:`REFUSED_KEYS`, :data:`REFUSED_LEAVES`), YAML anchors,
    aliases and tags (an alias bomb grows ×10 a level), lines longer than :data:`MAX_OVERRIDE_CHARS`, values
    nested deeper than :data:`MAX_NESTING`, and path values outside ``runs_dir``; path values inside it come
    back as absolute paths (the engine reads paths from its working folder, the page means the runs folder).
    A path must lie inside a run folder (not the studio's own files at the top of the runs folder), and with
    ``owns`` (whether the page's user owns the run folder of that name) inside one of the user's own. Every value comes back serialized as JSON (which YAML reads as the same value): nothing is quoted by hand."""
    root = Path(runs_dir).resolve()
    items = [i.strip() for i in items if i and i.strip()]
    if len(items) > MAX_OVERRIDES:
        raise UnsafeInput(f"{len(items)} override lines{_nested}: the studio takes at most {MAX_OVERRIDES}")
    out = []
    for item in items:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise UnsafeInput(f"an override line{_nested} is {len(item)} characters long (at most "
                              f"{MAX_OVERRIDE_CHARS}): {item[:60]}...")
        _plain_yaml(item, _nested)
        tree = parse_overrides([item])  # the CLI's parser: a malformed override gets its message
        key = item.split("=", 1)[0].strip().lstrip("+")
        for dotted in _dotted_keys(tree):  # a mapping value (run={dir: x}) is checked key by key
            parts = dotted.split(".")
            refused = any(dotted == k or dotted.startswith(k + ".") for k in REFUSED_KEYS)
            if refused or parts[-1] in REFUSED_LEAVES or any(p in CODE_KEYS for p in parts):
                raise UnsafeInput(f"override '{item}'{_nested}: {dotted} cannot be set from the studio")
        own = _get(tree, "refine.own")
        if own is not None and any(str(o) in CODE_KEYS for o in (own if isinstance(own, list) else [own])):
            raise UnsafeInput(f"override '{item}'{_nested}: the refinement stage cannot take plugins of its own "
                              "from the studio")
        value = _leaf(tree, key)
        checked = _checked_tree(item, key, value, root, owns, _nested)
        out.append(f"{key}={json.dumps(checked, ensure_ascii=False, default=str)}")
    return out


def _plain_yaml(item: str, where: str) -> None:
    """Refuse what plain values never need: anchors, aliases and tags, and deep nesting (read token by token,
    linear in the line's length, before the value is built)."""
    raw = item.split("=", 1)[1] if "=" in item else ""
    depth = 0
    try:
        for token in yaml.scan(raw):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken, yaml.TagToken)):
                raise UnsafeInput(f"override '{item[:80]}'{where}: YAML anchors, aliases and tags (&, *, !) are "
                                  "not taken from the studio; write the value out")
            if isinstance(token, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken,
                                  yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken)):
                depth += 1
                if depth > MAX_NESTING:
                    raise UnsafeInput(f"override '{item[:80]}'{where}: values nest at most {MAX_NESTING} deep")
            elif isinstance(token, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)):
                depth -= 1
    except yaml.YAMLError:
        return  # not YAML: the parser keeps it as a plain string


def _checked_tree(item: str, dotted: str, value, root: Path, owns, where: str):
    """``value`` (set at ``dotted``) with its paths checked and nested override lines checked recursively."""
    if isinstance(value, dict):
        return {k: _checked_tree(item, f"{dotted}.{k}", v, root, owns, where) for k, v in value.items()}
    if dotted == NESTED_OVERRIDES:
        lines = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in lines):
            raise UnsafeInput(f"override '{item}'{where}: {NESTED_OVERRIDES} is a list of key=value lines")
        return check_overrides(lines, root, owns, f" (in {NESTED_OVERRIDES})")
    if dotted.split(".")[0] in TEXT_KEYS:
        return value  # words, never paths
    if isinstance(value, list):
        return [_checked_tree(item, dotted, v, root, owns, where) for v in value]
    return _checked_value(item, dotted, value, root, owns)


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


def _get(tree: dict, dotted: str):
    node = tree
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _checked_value(item: str, key: str, value, root: Path, owns=None):
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsafeInput(f"override '{item}': {key} must be a finite number")
    if not isinstance(value, str) or not _looks_like_path(value):
        return value
    if re.match(r"^[A-Za-z]:", value):
        raise UnsafeInput(f"override '{item}': {value} is a path on another machine; upload the file instead")
    leaf = key.split(".")[-1]
    if leaf in MODEL_LEAVES and HUB_ID.match(value) and not (root / value).exists():
        return value  # a hub id, resolved from the local hub cache (studio jobs run with the hub offline)
    path = Path(value.replace("\\", "/")).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not _inside(resolved, root):
        raise UnsafeInput(f"override '{item}': {value} is outside the studio's runs folder {root}; upload the "
                          "file instead")
    inner = resolved.relative_to(root).parts
    if len(inner) < 2 or inner[0].startswith("."):
        raise UnsafeInput(f"override '{item}': {value} is not a file of a run in the studio's runs folder")
    if owns is not None and not owns(inner[0]):
        raise UnsafeInput(f"override '{item}': {value} belongs to another user's run")
    return str(resolved)


def check_limits(cfg, limits: StudioLimits, what: str = "the job") -> None:
    """Refuse, in words, a job config (a :class:`dreamcore.config.Config`) that asks for more than ``limits``:
    steps, image resolutions, 3D grids, texture sizes, views per step, view and frame counts, point counts and
    list lengths. Read from the typed config after every override and the preset's time scale, field by field
    (a field is capped by what its name says it is), so a new recipe or part is covered without a list here."""
    for dotted, value in _numbers(cfg):
        cap, kind = _cap(dotted, limits)
        if cap is not None and value > cap:
            raise UnsafeInput(f"{what} asks for {dotted}={value}, over the studio's limit of {cap} ({kind}; "
                              "dreamcore studio --limits raises it)")


def _numbers(obj, prefix: str = ""):
    """(dotted field, number) of every int/float field of a dataclass tree, and len() of every list field."""
    for fd in dataclasses.fields(obj):
        value = getattr(obj, fd.name)
        dotted = f"{prefix}{fd.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _numbers(value, dotted + ".")
        elif isinstance(value, (list, tuple)):
            yield f"{dotted}[]", len(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield dotted, value


def _cap(dotted: str, limits: StudioLimits) -> tuple[int | float | None, str]:
    name = dotted.split(".")[-1]
    section = dotted.split(".")[0]
    if name.endswith("[]"):
        return limits.max_views, "list length"
    if dotted == "run.steps":
        return limits.max_steps, "steps"
    if dotted == "export.resolution" or (section == "representation" and name in ("resolution",
                                                                                   "occupancy_resolution")):
        return limits.max_grid, "3D grid size"
    if name == "log2_table_size":
        return 24, "hash table size (log2)"
    if name.endswith("resolution"):
        return (limits.max_grid * 16 if section == "representation" else limits.max_resolution), "resolution"
    if name.endswith("texture_size"):
        return limits.max_texture_size, "texture size"
    if name.endswith("batch_size") or name == "batch":
        return limits.max_batch_size, "views per step"
    if name.endswith(("views", "frames")):
        return limits.max_views, "views"
    if name.endswith(("points", "faces")):
        return limits.max_points, "points"
    return None, ""


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


# -- pictures (Image to 3D) ------------------------------------------------------------------------------------------

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what the page's file picker offers (the bytes decide)
PICTURE_NAME = "picture"  # the stored picture: <run folder>/input/picture.<png|jpg|webp>, never the sender's name
PICTURE_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
MAX_AZIMUTH = 360.0


def save_picture(src: str | Path, dest_dir: str | Path, limit_bytes: int) -> Path:
    """Copy an uploaded picture into ``dest_dir`` (the job's ``input/``) as ``picture.<png|jpg|webp>`` and return
    that path. Refused with :class:`PictureRefused` before anything is written: a file over ``limit_bytes``, an
    empty one, and one whose first bytes are no PNG, JPEG or WebP signature (its name and the browser's content
    type play no part). The copy reads at most ``limit_bytes`` + 1 bytes (a file that grows meanwhile is refused).
    Whether it decodes and keeps an object once its background is removed is checked by the caller
    (:func:`dreamcore.reference_image.cut_out`, with the job's own ``image`` settings)."""
    from dreamcore.reference_image import sniff_format

    src = Path(src)
    try:
        info = src.stat()
    except OSError:
        raise PictureRefused("the uploaded picture cannot be read; upload it again") from None
    if not src.is_file():
        raise PictureRefused("the uploaded picture is not a file")
    limit_mb = limit_bytes / 2**20
    if info.st_size > limit_bytes:
        raise PictureRefused(f"the picture is {info.st_size / 2**20:.1f} MB, over the studio's limit of "
                             f"{limit_mb:.3g} MB for pictures (dreamcore studio --max-image-mb)")
    if info.st_size == 0:
        raise PictureRefused("the uploaded picture is empty")
    with open(src, "rb") as f:
        data = f.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise PictureRefused(f"the picture is over the studio's limit of {limit_mb:.3g} MB for pictures")
    kind = sniff_format(data[:16])
    if kind is None:
        raise PictureRefused("the upload is not a PNG, JPEG or WebP picture (judged by its content, not its name)")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{PICTURE_NAME}.{PICTURE_EXTENSIONS[kind]}"
    out.write_bytes(data)
    return out


def _page_float(what: str, value, unit: str = "") -> float | None:
    """A number field of the page as a float (inf and nan included): None when blank; a bool, or anything
    ``float`` does not read, refused in words ("<what> must be a number<unit>, not ...")."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise UnsafeInput(f"{what} must be a number{unit}, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UnsafeInput(f"{what} must be a number{unit}, not {shown}") from None


def check_view(azimuth, elevation) -> tuple[float, float]:
    """The picture's camera as the page gives it (degrees): finite numbers, azimuth in [-360, 360] (0 = the
    object's front), elevation in [-90, 90]; a blank field is 0 (the front, at the object's height). Refused in
    words with :class:`UnsafeInput` otherwise."""
    out = []
    for what, value, bound in (("azimuth", azimuth, MAX_AZIMUTH), ("elevation", elevation, 90.0)):
        number = _page_float(f"the picture's {what}", value, " of degrees")
        number = 0.0 if number is None else number
        if not math.isfinite(number) or abs(number) > bound:
            raise UnsafeInput(f"the picture's {what} {number:g} is outside [-{bound:g}, {bound:g}] degrees")
        out.append(number)
    return out[0], out[1]


# -- an edit's region (Edit this asset) --------------------------------------------------------------------------------

BOX_CORNERS = ("x0", "y0", "z0", "x1", "y1", "z1")


def _page_number(what: str, value) -> float | None:
    """A number field of the page: None when blank, else a finite float (refused in words otherwise)."""
    number = _page_float(what, value)
    if number is None:
        return None
    if not math.isfinite(number):
        raise UnsafeInput(f"{what} must be a finite number, not {number}")
    return number


def check_box(values) -> str:
    """An edit's region from the page's six numbers x0, y0, z0, x1, y1, z1 (the box's corners in the coordinates
    of the asset's ``model.glb``) as the ``box:...`` spec the engine reads, written by the server from the numbers
    alone; ``""`` (the whole asset may change) when all six are blank. Refused in words with
    :class:`UnsafeInput`: some blank and some not, a value that is no finite number, a corner not below the other
    on an axis."""
    values = list(values) if values is not None else []
    if len(values) != len(BOX_CORNERS):
        raise UnsafeInput(f"the edit's box takes six numbers ({', '.join(BOX_CORNERS)}), got {len(values)}")
    numbers = [_page_number(f"the box's {name}", v) for name, v in zip(BOX_CORNERS, values)]
    given = [n is not None for n in numbers]
    if not any(given):
        return ""
    if not all(given):
        missing = ", ".join(name for name, g in zip(BOX_CORNERS, given) if not g)
        raise UnsafeInput(f"the edit's box needs all six numbers, or none for the whole asset: {missing} blank")
    lo, hi = numbers[:3], numbers[3:]
    bad = [f"{a}0 = {l:g} is not below {a}1 = {h:g}" for a, l, h in zip("xyz", lo, hi) if not l < h]
    if bad:
        raise UnsafeInput("the edit's box: " + "; ".join(bad))
    return "box:" + ",".join(repr(n) for n in numbers)


def check_falloff(value) -> float | None:
    """The edit's soft edge from the page: None when blank (the recipe's: a hard edge), else a finite width ≥ 0
    in scene units."""
    number = _page_number("the falloff", value)
    if number is not None and number < 0:
        raise UnsafeInput(f"the falloff is a width ≥ 0 (scene units), not {number:g}")
    return number
