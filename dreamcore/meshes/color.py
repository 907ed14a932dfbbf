"""Colour conventions shared by the mesh readers and writers: sRGB ⇄ linear, integer ⇄ unit colours, images.

MeshAsset holds display (sRGB) values. glTF stores ``baseColorFactor`` and ``COLOR_0`` as linear values,
OBJ and PLY store display values; textures are sRGB everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Display sRGB in [0, 1] -> linear: ``c/12.92`` below 0.04045, else ``((c + 0.055)/1.055)^2.4``."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear in [0, 1] -> display sRGB: ``12.92 c`` below 0.0031308, else ``1.055 c^(1/2.4) − 0.055``."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1.0 / 2.4) - 0.055)


def colors_to_unit(colors: np.ndarray) -> np.ndarray:
    """[N, 3|4] colours of any dtype (unsigned integers normalized by their maximum, floats clipped) ->
    [N, 3] float64 in [0, 1]."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] < 3:
        raise ValueError(f"colours must be [N, 3|4], got {colors.shape}")
    rgb = colors[:, :3]
    if np.issubdtype(rgb.dtype, np.integer):
        return rgb.astype(np.float64) / float(np.iinfo(rgb.dtype).max)
    return np.clip(rgb.astype(np.float64), 0.0, 1.0)


def image_to_tensor(image) -> Tensor:
    """PIL image (any mode) -> [H, W, 3] float32 in [0, 1], row 0 = top."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr))
