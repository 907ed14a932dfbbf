"""Turntable videos of a MeshAsset (MP4 via imageio-ffmpeg, or GIF)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Union

import numpy as np
import torch

from dreamcore.errors import DreamcoreError
from dreamcore.cameras import turntable_cameras
from dreamcore.meshes.asset import MeshAsset

PathLike = Union[str, os.PathLike]
FOV_DEG = 40.0
MARGIN = 1.08  # bounding sphere radius × this fills the vertical field of view


def framing(asset: MeshAsset, fov_deg: float = FOV_DEG, margin: float = MARGIN) -> tuple[torch.Tensor, float]:
    """(centre [3], camera distance): the bounding-box centre ``c`` of the used vertices and the distance at
    which the sphere of radius ``r = max‖p − c‖`` fills the view, ``d = margin · r / sin(fov/2)``."""
    used = asset.vertices[asset.faces.unique()] if asset.faces.numel() else asset.vertices
    centre = 0.5 * (used.amin(0) + used.amax(0))
    radius = float((used - centre).norm(dim=-1).max()) if len(used) else 1.0
    radius = radius if radius > 0 and math.isfinite(radius) else 1.0
    return centre, margin * radius / math.sin(math.radians(0.5 * fov_deg))


def render_turntable(asset: MeshAsset, frames: int = 48, resolution: int = 256, elevation: float = 15.0,
                     supersample: int = 2, batch: int = 8) -> np.ndarray:
    """[frames, R, R, 3] uint8 lambertian renders on a white background, orbiting the asset's bounding-box
    centre at ``elevation`` degrees, starting from the front (azimuth 0)."""
    from dreamcore.meshes.render import render_mesh

    centre, distance = framing(asset)
    centred = replace(asset, vertices=asset.vertices.float() - centre)
    cams = turntable_cameras(frames, elevation_deg=elevation, distance=distance, fov_deg=FOV_DEG)
    out = []
    for start in range(0, frames, batch):
        r = render_mesh(centred, cams[start:start + batch], resolution, resolution, supersample=supersample,
                        shading="lambertian", background=torch.ones(3))
        out.append((r.rgb.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy())
    return np.concatenate(out, axis=0)


def write_video(path: PathLike, frames: np.ndarray, fps: int = 24) -> Path:
    """Write [T, H, W, 3] uint8 frames: ``.mp4`` with libx264 / yuv420p (H and W must be even), ``.gif``
    looping forever. Atomic (temporary sibling, then ``os.replace``)."""
    import imageio.v2 as iio2
    import imageio.v3 as iio3

    from dreamcore.export.writers import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            if frames.shape[1] % 2 or frames.shape[2] % 2:
                raise ValueError(f"mp4 (yuv420p) needs an even frame size, got {frames.shape[1:3]}")
            writer = iio2.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                     pixelformat="yuv420p", quality=8, macro_block_size=2,
                                     ffmpeg_log_level="error")
            try:
                for frame in frames:
                    writer.append_data(frame)
            finally:
                writer.close()
        elif suffix == ".gif":
            iio3.imwrite(tmp, list(frames), extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            raise ValueError(f"turntable format must be .mp4 or .gif, got {suffix!r}")
    return path


def write_turntable(path: PathLike, asset: MeshAsset, frames: int = 48, resolution: int = 256,
                    elevation: float = 15.0, fps: int = 24) -> Path:
    """Render ``frames`` views around ``asset`` (lambertian, 2× supersampled, camera distance fitted to the
    bounding sphere) and write them as ``.mp4`` or ``.gif`` by the suffix of ``path``. An odd ``resolution``
    is rounded up to even."""
    if frames < 1:
        raise DreamcoreError(f"export.turntable_frames={frames}: a turntable needs at least 1 frame (to skip it, "
                             "leave 'turntable' out of export.formats)")
    resolution = int(resolution) + int(resolution) % 2
    video = render_turntable(asset, frames, resolution, elevation)
    return write_video(path, video, fps)
