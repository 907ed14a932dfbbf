"""How far a process trusts what it reads: its config and the files a model file names.

A run started by its own user (the CLI, a script, a batch file) is **trusted**: its config may load plugins
(``plugins: [my_guidance.py]``) and a mesh may name textures and buffers anywhere the user can read
(``mtllib ../shared/materials.mtl``). A job a web page asked for (the studio's worker processes) is
**untrusted**: ``DREAMCORE_UNTRUSTED=1`` in its environment, which the studio's queue sets, means

* no plugin is imported, whatever the config says (:func:`refuse_code`);
* a file named inside a model file (glTF buffers and images, OBJ ``mtllib``/``map_Kd``, PLY ``TextureFile``)
  must lie inside the folder of the model file itself, symbolic links resolved (:func:`referenced_file`);
* the model hub is offline (:func:`untrusted_environment` sets ``HF_HUB_OFFLINE`` and its relatives), so a
  page can never make the server download.

Limits that hold for everyone, trusted or not, because a hostile file can come from anywhere: an image is
refused above :func:`max_image_pixels` pixels before it is decoded (``DREAMCORE_MAX_IMAGE_PIXELS``, default
8192²), and the images of one model file together above :data:`MODEL_IMAGES` times that (:class:`PixelBudget`;
a small file can hold a hundred tiny PNGs that each decode to the limit). :func:`open_image` does both."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO, Union
from urllib.parse import unquote

from dreamcore.errors import DreamcoreError

UNTRUSTED_ENV = "DREAMCORE_UNTRUSTED"
MAX_PIXELS_ENV = "DREAMCORE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
MODEL_IMAGES = 8  # the pixels one model file may decode in all, in units of max_image_pixels()
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE")


class UntrustedInput(DreamcoreError):
    """Something an untrusted job may not do (load code, read a file outside its own folder)."""


def untrusted() -> bool:
    """True in a process that runs a job someone else asked for (``DREAMCORE_UNTRUSTED=1``)."""
    return os.environ.get(UNTRUSTED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def untrusted_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for an untrusted job's process: the flag set and the model hub offline."""
    out = dict(env)
    out[UNTRUSTED_ENV] = "1"
    for key in OFFLINE_ENV:
        out[key] = "1"
    return out


def refuse_code(what: str) -> None:
    """Raise :class:`UntrustedInput` in an untrusted process: ``what`` (e.g. ``plugin 'evil.py'``) would run code."""
    if untrusted():
        raise UntrustedInput(f"{what} is not loaded: this job was sent by a web page, and such jobs run no code "
                             "of their own (plugins are for the command line)")


def referenced_file(ref: str, base_dir: str | Path, what: str, root: str | Path | None = None) -> Path:
    """The file a model file names as ``ref`` (relative to ``base_dir``, the model file's folder), percent-escapes
    decoded. URIs with a scheme are refused everywhere; in an untrusted process so is anything outside
    ``base_dir`` once ``..`` and symbolic links are resolved (an absolute path, ``../``, ``%2e%2e/``). The error
    names ``what`` (e.g. ``the glTF's buffer 0``) and the reference, never the bytes of any file. ``root``, when
    given, is the folder the file must lie in instead of ``base_dir`` (an OBJ's MTL in a sub-folder names its
    textures relative to itself, and may reach back into the OBJ's folder)."""
    text = unquote(str(ref))
    if "\x00" in text:
        raise UntrustedInput(f"{what} names a file with a NUL byte in its name")
    scheme = text.split(":", 1)[0] if ":" in text else ""
    if scheme and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise UntrustedInput(f"{what} refers to {_shown(ref)}: only files beside the model are read, not URIs")
    base = Path(base_dir).resolve()
    path = Path(text.replace("\\", "/"))
    try:
        path = path.expanduser()
    except RuntimeError:  # ~someone without a home: a plain name then
        pass
    return inside_folder(path if path.is_absolute() else base / path, base if root is None else root, what, ref)


def inside_folder(path: Path, base_dir: str | Path, what: str, ref: str) -> Path:
    """``path`` (a file found for the reference ``ref`` of a model in ``base_dir``) as it is in a trusted process;
    in an untrusted one resolved (``..`` and symbolic links), and refused with :class:`UntrustedInput` naming
    ``what`` and ``ref`` when it lies outside ``base_dir``. For files a loader finds itself (e.g. a texture looked
    up by its name in the model's sub-folders), which :func:`referenced_file` did not resolve."""
    if not untrusted():
        return path
    base = Path(base_dir).resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a loop of symbolic links
        raise UntrustedInput(f"{what} refers to {_shown(ref)}, which does not resolve to a file (a loop of "
                             "symbolic links?)") from None
    if resolved != base and base not in resolved.parents:
        raise UntrustedInput(f"{what} refers to {_shown(ref)}, outside the model's own folder: only files uploaded "
                             "with it are read")
    return resolved


def _shown(ref: str) -> str:
    """A reference as a message quotes it: its repr, cut to 120 characters (a file may name anything)."""
    text = repr(str(ref))
    return text if len(text) <= 120 else text[:117] + "..."


def max_image_pixels() -> int:
    """The largest image (width × height) any loader decodes: ``DREAMCORE_MAX_IMAGE_PIXELS``, default 8192²."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise DreamcoreError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels") from None
    if value <= 0:
        raise DreamcoreError(f"{MAX_PIXELS_ENV} must be positive, got {raw!r}")
    return value


def check_image_size(width: int, height: int, what: str) -> None:
    """Refuse an image of ``width`` × ``height`` above :func:`max_image_pixels` (before decoding it)."""
    limit = max_image_pixels()
    if width <= 0 or height <= 0:
        raise DreamcoreError(f"{what} has no pixels ({width}×{height})")
    if width * height > limit:
        raise DreamcoreError(f"{what} is {width}×{height} pixels, over the limit of {limit} pixels "
                             f"({MAX_PIXELS_ENV} sets it)")


class PixelBudget:
    """The pixels one model file may still decode, its images together: :data:`MODEL_IMAGES` ×
    :func:`max_image_pixels` at the start. Each image alone is held to :func:`max_image_pixels`; this bounds what
    many of them make together (a file of a hundred highly compressed PNGs would otherwise decode to a hundred
    times the limit)."""

    def __init__(self, images: int = MODEL_IMAGES) -> None:
        self.total = images * max_image_pixels()
        self.left = self.total

    def spend(self, width: int, height: int, what: str) -> None:
        """Take ``width`` × ``height`` pixels for ``what``, or refuse them (before decoding) when too few are left."""
        if width * height > self.left:
            raise DreamcoreError(f"{what} is {width}×{height} pixels, which would take the model's images over "
                                 f"{self.total} pixels in all ({MODEL_IMAGES} times {MAX_PIXELS_ENV})")
        self.left -= width * height


def open_image(source: Union[str, os.PathLike, IO[bytes]], what: str, budget: PixelBudget | None = None):
    """The PIL image of ``source`` (a path or a binary file object), decoded (``load()``) only after its size, which
    PIL reads from the header, passed :func:`check_image_size` and ``budget``. Refusals are ours, in words naming
    ``what``: PIL's own decompression-bomb warning is silenced, its error (an image over twice PIL's limit, which
    PIL raises before the size can be read) becomes our refusal, and PIL's limit is raised to ours when
    ``DREAMCORE_MAX_IMAGE_PIXELS`` allows more. PIL's errors for a file that is not an image
    (``UnidentifiedImageError``, ``OSError``, ``ValueError``) pass through. Use it as ``with open_image(...) as im``."""
    from PIL import Image

    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # process-wide, only ever raised: the user asked for bigger images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except Image.DecompressionBombError:
            raise DreamcoreError(f"{what} is over the limit of {limit} pixels ({MAX_PIXELS_ENV} sets it)") from None
        try:
            width, height = image.size
            check_image_size(width, height, what)
            if budget is not None:
                budget.spend(width, height, what)
            image.load()
        except Image.DecompressionBombError:
            image.close()
            raise DreamcoreError(f"{what} is over the limit of {limit} pixels ({MAX_PIXELS_ENV} sets it)") from None
        except BaseException:
            image.close()
            raise
    return image
