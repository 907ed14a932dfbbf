"""What every renderer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from dreamcore.cameras import Lighting


@dataclass
class RenderOutput:
    """Rendered views. Images are ``[B, H, W, C]``; ray-subset renders are ``[B, N, 1, C]`` with the pixel
    indices (row-major, into an ``image_size`` image) in ``pixel_index`` ``[B, N]``.

    rgb: colour composited over the background, in [0, 1]. alpha: [.., 1] accumulated opacity.
    depth: [.., 1] expected ray distance (0 where empty). normal: [.., 3] world-space unit normals or None.
    extras: named per-renderer terms used by regularizers (e.g. NeRF's orientation penalty).
    lighting: the light the colours were shaded under (mode, per-view direction, ambient), None for renders
    that draw none; the system hands it to the prior with the cameras (``Cameras.with_lighting``).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Optional[Tensor] = None
    pixel_index: Optional[Tensor] = None
    image_size: Optional[tuple[int, int]] = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    lighting: Optional[Lighting] = None
