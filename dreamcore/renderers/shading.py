"""Shading choices shared by every renderer (DreamFusion, Poole et al. 2022, §3.1): each training view is shaded
as albedo, lambertian (albedo · (ambient + (1 − ambient)·max(0, n·l))) or textureless (the shade alone), drawn with
probabilities ``shading_probs``, under a point light near the camera."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from dreamcore.cameras import Cameras, Lighting
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


def held_lighting(shading: "Optional[str | Lighting]", cameras: Cameras) -> Optional[Lighting]:
    """``shading`` when a caller hands a renderer the light to render under (a method that holds its views and their
    light for several steps, SIR's rounds), on the cameras' device; None when ``shading`` is a mode or None (the
    renderer draws its own)."""
    if not isinstance(shading, Lighting):
        return None
    if shading.direction.shape[0] != len(cameras):
        raise ValueError(f"a light for {shading.direction.shape[0]} views given to a render of {len(cameras)}")
    return shading.to(cameras.c2w.device)


def light_directions(cameras: Cameras, generator: Optional[torch.Generator]) -> Tensor:
    """Unit light directions [B, 3] from the origin: the camera position, jittered by half its distance when
    ``generator`` is given (DreamFusion samples lights around the camera)."""
    pos = cameras.position
    if generator is not None:
        pos = pos + 0.5 * pos.norm(dim=-1, keepdim=True) * normal(pos.shape, generator, like=pos)
    return pos / pos.norm(dim=-1, keepdim=True)


def weighted_normals(field, points: Tensor, weights: Tensor, min_weight: float) -> Tensor:
    """[S, 3] the field's density normals at the samples ``points`` [S, 3] whose ray weight ``weights`` [S]
    exceeds ``min_weight``, 0 at the others (all computed when ``min_weight`` ≤ 0). A sample under the cut adds less
    than ``min_weight`` of its shaded colour to its pixel, and each normal costs six density evaluations."""
    if len(points) == 0:
        return points.new_zeros(0, 3)
    if min_weight <= 0:
        return field.normals(points)
    idx = (weights.detach() > min_weight).nonzero(as_tuple=True)[0]
    return points.new_zeros(len(points), 3).index_put((idx,), field.normals(points.index_select(0, idx)))
