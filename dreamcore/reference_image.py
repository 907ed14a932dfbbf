"""The picture of image-to-3D: a PNG, JPEG or WebP file read into the object's cut-out and framed as the priors'
training renders frame an object, with the camera that sees it (the ``image`` config section).

Reading (:func:`read_picture`): the file's type is told by its first bytes (never by its name), its size is held
to ``image.max_mb`` before it is read and its pixel count to :func:`dreamcore.trust.max_image_pixels` before it
is decoded; EXIF rotation is applied; 8-bit values / 255 are the colours, as in renders and ``val/`` images.

Background removal (:func:`cut_out`): the picture's own alpha when it has a non-trivial one (some pixel below
:data:`OPAQUE`), else a key on the border colour — the per-channel median of a ring of border pixels; a pixel's
distance to it, d = ‖rgb − key‖₂ / √3 ∈ [0, 1]; the background is the key-like pixels (d < ``key_tolerance``)
connected to the border, so that key-coloured parts inside the object (a white eye on a white background) stay.
The edge is soft: an object pixel within ``key_edge`` pixels of the background that lies on the line between the
key k and its nearest inner object colour o (a blend c = a·o + (1 − a)·k, as antialiasing and JPEG's chroma
smear make) gets that blend's a = ⟨c − k, o − k⟩ / ‖o − k‖² as alpha; one off that line (a dark outline) stays
opaque. A file that cannot be read, is not an image, is empty after keying or has no background at all is
refused with a :class:`DreamcoreError` naming it. Pictures over :data:`WORK_MAX_SIDE` pixels a side are reduced
to it first (the cut-out is smaller still).

The cut-out (:class:`Cutout`) is the object's RGBA cropped to its alpha's bounding box with a one-pixel
transparent margin (so that reading it again finds the same, non-trivial alpha), long side at most
:data:`CUTOUT_MAX_SIDE` pixels, 8 bits: what a run folder keeps as ``reference.png`` and what everything after
is computed from, so a resumed run sees exactly what the first one saw.

Framing (:func:`frame`): the priors learned from renders of meshes normalized to a sphere of radius R (0.9:
:func:`dreamcore.meshes.io.normalize`, ``tools/train_tiny_prior.py``) at the origin, seen from distance d with
vertical field of view θ. A length L at the origin's depth spans L / (2·d·tan(θ/2)) of the frame, so the bounding
sphere's diameter spans

    s = R / (d · tan(θ/2))          (first order in R/d; 0.773 at R 0.9, d 3.2, θ 40°)

of it. An object's long side in a view is a shape-dependent fraction of that diameter — measured on the shipped
meshes' front views at elevation 0: robot 0.96, penguin 0.93, mushroom house 0.80, car 0.63 (its length points
at the camera); 0.83 on average — so the cut-out is scaled until its long side spans ``fill`` · s of the frame
(``image.fill``, default 0.85) and centred (both measured on the bounding box of its silhouette, alpha ≥ ½, to a
fraction of a pixel). DreamGaussian's ``process.py`` puts the long side at a fixed 80 % of
its frame instead; here the fraction follows the run's own camera.

The reference camera (:func:`reference_camera`): dreamcore's orbit convention (:mod:`dreamcore.cameras`: +Y
up, azimuth 0 on +Z looking at the object's front, positive elevation above), at ``image.azimuth`` (default 0,
a front view) and ``image.elevation`` (default 0), distance and fov ``image.distance`` / ``image.fov``, else the
middle of the run's ``camera.distance_range`` / ``camera.fov_range``.
"""

from __future__ import annotations

import io
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dreamcore.cameras import Cameras, orbit_cameras
from dreamcore.errors import DreamcoreError
from dreamcore.schedule import Scheduled

OPAQUE = 254.5 / 255.0  # an alpha channel with every pixel at least this is trivial (the key is used instead)
CUTOUT_MAX_SIDE = 1024  # the stored cut-out's longest side (a photo is reduced to this before framing)
WORK_MAX_SIDE = 2048  # a larger picture is reduced to this (its longest side) before keying
MIN_OBJECT_PIXELS = 16  # fewer foreground pixels (alpha > ½) than this: "empty after keying"
MIN_BACKGROUND = 0.02  # a key that removes less than this fraction of the picture found no background
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}


@dataclass
class ImageConfig:
    """The ``image`` section: the picture of image-to-3D and its reference-view losses. Empty ``path``: none."""

    path: str = ""  # a PNG, JPEG or WebP picture of the object (its type is read from its bytes)
    azimuth: float = 0.0  # the reference camera (degrees; 0 = the object's front, on +Z)
    elevation: float = 0.0  # positive: seen from above
    distance: float = 0.0  # 0: the middle of camera.distance_range
    fov: float = 0.0  # vertical, degrees; 0: the middle of camera.fov_range
    fill: float = 0.85  # the object's long side over its bounding sphere's projected diameter (module docstring)
    radius: float = 0.9  # the scene's radius that objects are normalized to (as prior.reference.radius)
    key_tolerance: float = 0.1  # border-colour key: distance (‖Δrgb‖/√3) still counted as background
    key_edge: int = 2  # the soft edge: object pixels this close (px) to the background get a blend's alpha
    # reference-view loss weights (systems/reference_view.py, which says where they come from); with ``ramp``
    # multiplied by DreamGaussian's linear warm-up r = (step + 1) / run.steps
    lambda_rgb: Scheduled = field(default_factory=lambda: Scheduled.constant(3000.0))
    lambda_mask: Scheduled = field(default_factory=lambda: Scheduled.constant(300.0))
    ramp: bool = True
    max_mb: float = 20.0  # the largest file read
    # give the picture to a prior that takes one (an ImageDream-style multiview prior: Prior.accepts_image) as its
    # condition; false: the picture acts through the reference-view losses only
    condition_prior: bool = True
    prior_resolution: int = 256  # px the picture is framed at for the prior (ImageDream's 256; the prior resizes)


# -- reading ------------------------------------------------------------------------------------------------------
def sniff_format(head: bytes) -> Optional[str]:
    """The image type of a file from its first bytes: ``"PNG"``, ``"JPEG"``, ``"WEBP"`` or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_bytes(path: str | os.PathLike, max_mb: float, what: str = "image.path") -> bytes:
    """The bytes of the regular file ``path`` (a device, pipe or folder is refused), at most ``max_mb`` MiB."""
    p = Path(path).expanduser()
    shown = f"{what} {str(path)!r}"
    try:
        info = p.stat()
    except FileNotFoundError:
        raise DreamcoreError(f"{shown}: no such file") from None
    except OSError as e:
        raise DreamcoreError(f"{shown}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DreamcoreError(f"{shown} is not a regular file (a picture file is expected)")
    limit = int(max_mb * 2**20)
    if info.st_size > limit:
        raise DreamcoreError(f"{shown} is {info.st_size / 2**20:.1f} MiB, over the limit of {max_mb:g} MiB "
                             "(image.max_mb)")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DreamcoreError(f"{shown}: cannot be read ({e.strerror or e})") from None
    if len(data) > limit:  # (it grew while we looked)
        raise DreamcoreError(f"{shown} is over the limit of {max_mb:g} MiB (image.max_mb)")
    return data


def read_picture(path: str | os.PathLike, max_mb: float = 20.0, what: str = "image.path"
                 ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A picture file as (rgb [H, W, 3], alpha [H, W] or None), float32 in [0, 1]; refused in words when it is not
    a readable PNG, JPEG or WebP image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from dreamcore.trust import open_image

    data = read_bytes(path, max_mb, what)
    shown = f"{what} {str(path)!r}"
    kind = sniff_format(data[:16])
    if kind is None:
        raise DreamcoreError(f"{shown} is not a PNG, JPEG or WebP image (its first bytes are no image signature)")
    try:
        with open_image(io.BytesIO(data), shown) as image:
            if image.format != kind:
                raise DreamcoreError(f"{shown} starts like a {FORMATS[kind]} file but decodes as "
                                     f"{image.format or 'nothing known'}")
            image = ImageOps.exif_transpose(image)
            has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
            if max(image.size) > WORK_MAX_SIDE:  # (Pillow resizes RGBA premultiplied)
                image.thumbnail((WORK_MAX_SIDE, WORK_MAX_SIDE), Image.Resampling.LANCZOS)
            rgba = np.asarray(image, dtype=np.float32) / 255.0
    except DreamcoreError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DreamcoreError(f"{shown}: the {FORMATS[kind]} file is damaged or truncated and cannot be decoded "
                             f"({type(e).__name__}: {e})") from None
    if rgba.ndim != 3 or rgba.shape[0] < 2 or rgba.shape[1] < 2:
        raise DreamcoreError(f"{shown} is too small ({rgba.shape[1]}×{rgba.shape[0]} pixels)")
    return np.ascontiguousarray(rgba[..., :3]), (np.ascontiguousarray(rgba[..., 3]) if has_alpha else None)


# -- background removal -------------------------------------------------------------------------------------------
def border_ring(height: int, width: int) -> np.ndarray:
    """[H, W] bool: the pixels within ``max(1, min(H, W) // 64)`` of the picture's edge."""
    b = max(1, min(height, width) // 64)
    ring = np.zeros((height, width), dtype=bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    return ring


def border_key(rgb: np.ndarray, tolerance: float, edge: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [H, W], key colour [3]) of a key on the border colour (the module docstring's rule)."""
    from scipy import ndimage

    h, w = rgb.shape[:2]
    ring = border_ring(h, w)
    key = np.median(rgb[ring], axis=0).astype(np.float32)
    diff = rgb - key
    dist = np.linalg.norm(diff, axis=-1) / math.sqrt(3.0)
    candidate = dist < tolerance
    labels, _ = ndimage.label(candidate, structure=np.ones((3, 3), dtype=bool))
    touching = np.unique(labels[ring & candidate])
    background = np.isin(labels, touching[touching > 0])
    alpha = (~background).astype(np.float32)
    if edge <= 0 or background.all() or not background.any():
        return alpha, key
    near = ndimage.distance_transform_edt(~background)  # each object pixel's distance to the background
    band, core = ~background & (near <= edge), ~background & (near > edge)
    if not core.any() or not band.any():
        return alpha, key
    # a band pixel c mixes the key k with its nearest core colour o: c = a·o + (1 − a)·k, so a is the projection
    # of c − k on o − k; a pixel far from that line is a colour of the object's own (an outline) and stays opaque
    idx = ndimage.distance_transform_edt(~core, return_distances=False, return_indices=True)
    rows, cols = np.nonzero(band)
    o = rgb[idx[0][rows, cols], idx[1][rows, cols]] - key
    c = diff[rows, cols]
    a = np.clip((c * o).sum(-1) / np.maximum((o * o).sum(-1), 1e-8), 0.0, 1.0)
    residual = np.linalg.norm(c - a[:, None] * o, axis=-1) / math.sqrt(3.0)
    alpha[rows, cols] = np.where(residual < tolerance, a, 1.0)
    return alpha, key


def remove_background(rgb: np.ndarray, alpha: Optional[np.ndarray], tolerance: float = 0.1, edge: int = 2,
                      what: str = "the image") -> tuple[np.ndarray, str]:
    """The object's alpha [H, W] and how it was found: the picture's own alpha when it is non-trivial, else the
    border key. Refuses a picture whose object is empty, or (keyed) one without background."""
    if alpha is not None and float(alpha.min()) < OPAQUE:
        method = "the picture's alpha channel"
        mask = alpha.astype(np.float32)
    else:
        mask, key = border_key(rgb, tolerance, edge)
        rgb8 = tuple(int(round(float(c) * 255)) for c in key)
        method = f"a key on the border colour {rgb8} (tolerance {tolerance:g}, soft edge {edge} px)"
        if float((mask < 0.5).mean()) < MIN_BACKGROUND:
            raise DreamcoreError(f"{what}: no background found — {method} removes almost nothing, so the object "
                                 "would fill the whole picture. Give a picture with transparency (alpha) or on a "
                                 "plain background, or raise image.key_tolerance")
    if int((mask > 0.5).sum()) < MIN_OBJECT_PIXELS:
        raise DreamcoreError(f"{what} is empty after removing the background with {method}: no object is left"
                             + ("" if alpha is not None and float(alpha.min()) < OPAQUE
                                else "; lower image.key_tolerance if the object is close to the border colour"))
    return mask, method


# -- the cut-out --------------------------------------------------------------------------------------------------
@dataclass
class Cutout:
    """The object cut out of the picture: ``rgba`` [h, w, 4] uint8 (alpha's bounding box plus a one-pixel
    transparent margin), where it came from and how its background went."""

    rgba: np.ndarray
    source: str
    method: str

    def png_bytes(self) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.rgba, "RGBA").save(buf, format="PNG")
        return buf.getvalue()

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(rgb [h, w, 3], alpha [h, w, 1]) float32 in [0, 1]."""
        x = torch.from_numpy(self.rgba.astype(np.float32) / 255.0)
        return x[..., :3], x[..., 3:]


def cut_out(path: str | os.PathLike, cfg: ImageConfig, what: str = "image.path") -> Cutout:
    """Read ``path``, remove its background and crop to the object (the module docstring); refusals name it."""
    shown = f"{what} {str(path)!r}"
    rgb, alpha = read_picture(path, cfg.max_mb, what)
    mask, method = remove_background(rgb, alpha, cfg.key_tolerance, cfg.key_edge, shown)
    rgb8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    a8 = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgba = _crop(np.concatenate([rgb8, a8[..., None]], axis=-1), shown)
    h, w = rgba.shape[:2]
    if max(h, w) > CUTOUT_MAX_SIDE:
        z = CUTOUT_MAX_SIDE / max(h, w)
        rgba = _crop(_resize_rgba(rgba, max(1, round(h * z)), max(1, round(w * z))), shown)
    rgba = np.pad(rgba, ((1, 1), (1, 1), (0, 0)))
    return Cutout(np.ascontiguousarray(rgba), str(path), method)


def _crop(rgba: np.ndarray, shown: str) -> np.ndarray:
    """An RGBA uint8 image cropped to its alpha's bounding box (alpha > 0), colour zeroed where alpha is 0."""
    rows, cols = np.nonzero(rgba[..., 3])
    if len(rows) == 0:  # (remove_background refuses this already)
        raise DreamcoreError(f"{shown} is empty after removing the background")
    out = rgba[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy()
    out[out[..., 3] == 0, :3] = 0  # what lies under a transparent pixel plays no part
    return out


def _resize_rgba(rgba: np.ndarray, height: int, width: int) -> np.ndarray:
    """An RGBA uint8 image resized (antialiased, premultiplied by alpha so no dark fringe appears)."""
    rgb, alpha = _resample(torch.from_numpy(rgba.astype(np.float32) / 255.0), height, width)
    out = torch.cat([rgb, alpha], dim=-1).numpy()
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _resample(rgba: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(rgb, alpha) of a float RGBA [h, w, 4] resized to ``height`` × ``width``, premultiplied while resampled."""
    import torch.nn.functional as F

    a = rgba[..., 3:]
    pm = torch.cat([rgba[..., :3] * a, a], dim=-1).permute(2, 0, 1)[None].double()
    out = F.interpolate(pm, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    out = out[0].permute(1, 2, 0).clamp(0.0, 1.0).float()
    alpha = out[..., 3:]
    rgb = torch.where(alpha > 1e-6, out[..., :3] / alpha.clamp_min(1e-6), torch.zeros_like(out[..., :3]))
    return rgb.clamp(0.0, 1.0), alpha


# -- framing and the camera ---------------------------------------------------------------------------------------
def frame_fraction(radius: float, distance: float, fov_deg: float) -> float:
    """s = R / (d·tan(θ/2)): the fraction of the frame the scene sphere's diameter spans (module docstring)."""
    return radius / (distance * math.tan(math.radians(fov_deg) / 2.0))


def frame(cutout: Cutout, resolution: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(rgb [N, N, 3], alpha [N, N, 1]) at ``resolution`` N: the cut-out scaled so that its silhouette's (alpha ≥ ½)
    bounding box has its long side span ``fraction`` of the frame and its centre on the frame's centre (to a
    fraction of a pixel); rgb is 0 where alpha is 0."""
    import torch.nn.functional as F

    if not 0.0 < fraction <= 1.0:
        raise DreamcoreError(f"the object would span {fraction:.3g} of the reference frame; image.fill, the camera "
                             "distance and fov must leave it inside the picture (a fraction in (0, 1])")
    rgba = torch.from_numpy(cutout.rgba.astype(np.float32) / 255.0).double()
    a = rgba[..., 3]
    rows, cols = torch.nonzero(a >= 0.5 if bool((a >= 0.5).any()) else a > 0, as_tuple=True)
    top, bottom = float(rows.min()), float(rows.max()) + 1.0  # pixel edges
    left, right = float(cols.min()), float(cols.max()) + 1.0
    cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
    side = max(bottom - top, right - left) / fraction  # the frame's side in cut-out pixels
    pm = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], dim=-1).permute(2, 0, 1)[None]
    h, w = rgba.shape[:2]
    z = resolution / side
    if z < 1.0:  # shrink first (antialiased), so that the sampling below steps about one pixel at a time
        nh, nw = max(1, round(h * z)), max(1, round(w * z))
        pm = F.interpolate(pm, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    zy, zx = pm.shape[2] / h, pm.shape[3] / w  # cut-out pixels → (shrunk) image pixels, per axis
    centres = (torch.arange(resolution, dtype=torch.float64) + 0.5) * (side / resolution) - side / 2.0
    ys = (cy + centres) * zy / pm.shape[2] * 2.0 - 1.0  # grid_sample's normalized coordinates (align_corners=False)
    xs = (cx + centres) * zx / pm.shape[3] * 2.0 - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1, N, N, (x, y)]
    out = F.grid_sample(pm, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)
    out = out.clamp(0.0, 1.0)
    alpha = out[..., 3:]
    rgb = torch.where(alpha > 1e-6, out[..., :3] / alpha.clamp_min(1e-6), torch.zeros_like(out[..., :3]))
    alpha = torch.where(alpha > 1e-6, alpha, torch.zeros_like(alpha))
    return rgb.clamp(0.0, 1.0).float(), alpha.float()


def reference_camera(cfg: ImageConfig, distance_range: tuple[float, float], fov_range: tuple[float, float]) -> Cameras:
    """The one camera the picture was taken from (module docstring): orbit (``image.azimuth``,
    ``image.elevation``) at ``image.distance`` / ``image.fov``, else the middles of the run's ranges."""
    d = cfg.distance if cfg.distance > 0 else sum(distance_range) / 2.0
    fov = cfg.fov if cfg.fov > 0 else sum(fov_range) / 2.0
    if not (0.0 < fov < 180.0):
        raise DreamcoreError(f"image.fov={fov:g}: a vertical field of view in degrees, in (0, 180)")
    if not -90.0 <= cfg.elevation <= 90.0:
        raise DreamcoreError(f"image.elevation={cfg.elevation:g}: degrees in [-90, 90]")
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(one(cfg.elevation), one(cfg.azimuth), one(d), one(fov))


@dataclass
class ReferenceImage:
    """The picture as training sees it: ``rgb`` [1, N, N, 3] (0 where empty) and ``alpha`` [1, N, N, 1] at the
    render resolution N, the ``camera`` it was taken from, and the ``cutout`` it was framed from."""

    rgb: Tensor
    alpha: Tensor
    camera: Cameras
    cutout: Cutout

    @property
    def resolution(self) -> int:
        return self.rgb.shape[1]

    def to(self, device: torch.device | str) -> "ReferenceImage":
        return ReferenceImage(self.rgb.to(device), self.alpha.to(device), self.camera.to(device), self.cutout)

    def over(self, background: Tensor) -> Tensor:
        """The picture composited over ``background`` colours [B, 3]: [B, N, N, 3]."""
        bg = background[:, None, None, :]
        return self.rgb * self.alpha + bg * (1.0 - self.alpha)


def load_reference(cfg: ImageConfig, resolution: int, distance_range: tuple[float, float],
                   fov_range: tuple[float, float], cutout: Optional[Cutout] = None) -> ReferenceImage:
    """``image.path`` (or its ``cutout``, already read) framed for the reference camera at ``resolution``."""
    if not cfg.path and cutout is None:
        raise DreamcoreError("image.path is empty: name the picture (dreamcore generate --image photo.png ...)")
    camera = reference_camera(cfg, distance_range, fov_range)
    cutout = cutout if cutout is not None else cut_out(cfg.path, cfg)
    fraction = cfg.fill * frame_fraction(cfg.radius, float(camera.distance[0]),
                                         math.degrees(float(camera.fov_y[0])))
    rgb, alpha = frame(cutout, resolution, fraction)
    return ReferenceImage(rgb[None], alpha[None], camera, cutout)
