"""Shading choices shared by every renderer (DreamFusion, Poole et al. 2022, §3.1): each training view is shaded
as albedo, lambertian (albedo · (ambient + (1 − ambient)·max(0, n·l))) or textureless (the shade alone), drawn with
probabilities ``shading_probs``, under a point light near the camera."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.rng import host_random, normal


def pick_shading(shading: str, probs: Sequence[float], generator: Optional[torch.Generator]) -> str:
    """The shading mode of one render: ``shading`` itself unless it is ``random``; then albedo / lambertian /
    textureless with probabilities ``probs`` (albedo when rendering deterministically, ``generator`` None)."""
    if shading != "random":
        return shading
    if generator is None:
        return "albedo"
    u = host_random(generator)
    return "albedo" if u < probs[0] else ("lambertian" if u < probs[0] + probs[1] else "textureless")


def light_directions(cameras: Cameras, generator: Optional[torch.Generator]) -> Tensor:
    """Unit light directions [B, 3] from the origin: the camera position, jittered by half its distance when
    ``generator`` is given (DreamFusion samples lights around the camera)."""
    pos = cameras.position
    if generator is not None:
        pos = pos + 0.5 * pos.norm(dim=-1, keepdim=True) * normal(pos.shape, generator, like=pos)
    return pos / pos.norm(dim=-1, keepdim=True)
