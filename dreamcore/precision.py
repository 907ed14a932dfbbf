"""Float32 geometry under ``run.precision``'s autocast (used by renderers and fields).

Autocast runs matrix products in bf16/fp16: right for a field's MLP, wrong for camera projections, covariance
inverses, rasterization and compositing sums, whose errors would move pixels and edges. Renderers whose work is
mostly geometry (splats, meshes) run wholly in float32 (:func:`full_precision`); the volume renderer keeps
autocast for the field's network and composites its float32 outputs.
"""

from __future__ import annotations

import contextlib
import functools

import torch


def no_autocast(device_type: str):
    """A block with autocast off on ``device_type`` (a no-op where it is not on)."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def full_precision(fn):
    """Decorate a renderer's ``__call__``: autocast off (CPU and CUDA) for the call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with no_autocast("cpu"), (no_autocast("cuda") if torch.cuda.is_available() else contextlib.nullcontext()):
            return fn(*args, **kwargs)

    return wrapper
