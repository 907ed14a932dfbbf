"""Small image helpers: grids of views for validation, PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(img: Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_grid(path: Path, rows: list[Tensor]) -> Path:
    """Save rows of images (each [B, H, W, 3]) as one PNG: row r, column b."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(grid)).save(path)
    return path
