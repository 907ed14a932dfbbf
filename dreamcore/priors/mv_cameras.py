"""The camera condition of MVDream-family priors: dreamcore cameras → the 16 numbers each view is tagged with.

MVDream (Shi et al. 2023; ``bytedance/MVDream: mvdream/camera_utils.py``) conditions each view on its
camera-to-world matrix with OpenGL camera axes (+x right, +y up, looking down −z) in a **z-up** world, its
translation rescaled to unit length (distance and fov are not encoded), flattened row-major (16 numbers, the last
row 0 0 0 1). Its helper builds a look-at pose at (cos e·sin a, sin e, cos e·cos a) in a y-up world — the same
orbit dreamcore uses — and left-multiplies it by the world rotation (x, y, z) → (x, −z, y).

The models' "front" is not dreamcore's: the community code (threestudio-mvdream, the diffusers port,
DreamGaussian) treats MVDream azimuth 90° as the front view, while dreamcore's front is azimuth 0 (the object's
+Z). So dreamcore's world is first turned by ``front_azimuth`` about +Y (azimuth ψ → ψ + ``front_azimuth``), then
by the y-up → z-up rotation:

    c2w_mv = Z · R_y(front_azimuth) · c2w,   Z = [[1,0,0],[0,0,−1],[0,1,0]],   t ← t / ‖t‖.

``front_azimuth`` is a prior setting (90 for the real checkpoints; dreamcore's tiny prior is trained through this
same function, so any value is self-consistent for it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dreamcore.cameras import Cameras

Y_UP_TO_Z_UP = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))


def world_rotation(front_azimuth: float, dtype=torch.float32, device=None) -> Tensor:
    """[3, 3] rotation Z · R_y(front_azimuth) from dreamcore's world to the prior's (module docstring)."""
    a = math.radians(front_azimuth)
    c, s = math.cos(a), math.sin(a)
    r_y = torch.tensor(((c, 0.0, s), (0.0, 1.0, 0.0), (-s, 0.0, c)), dtype=torch.float64)
    return (torch.tensor(Y_UP_TO_Z_UP, dtype=torch.float64) @ r_y).to(dtype=dtype, device=device)


def camera_condition(cameras: Cameras, front_azimuth: float = 90.0) -> Tensor:
    """[B, 16]: each camera's c2w in the prior's frame, unit translation, flattened row-major."""
    c2w = cameras.c2w.float()
    rot = world_rotation(front_azimuth, c2w.dtype, c2w.device)
    out = torch.zeros_like(c2w)
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    t = rot @ c2w[:, :3, 3:]
    out[:, :3, 3:] = t / (t.norm(dim=1, keepdim=True) + 1e-8)
    out[:, 3, 3] = 1.0
    return out.reshape(-1, 16)
