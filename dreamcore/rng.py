"""The run's random sources, and draws that stay on the device.

A run owns every random generator it uses (nothing draws from Python's, NumPy's or torch's global state) and
checkpoints them, so a resumed run continues the same random sequence. :class:`RunGenerator` is a
``torch.Generator`` on the run's device — noise, timesteps, cameras and ray jitter are drawn there, so a GPU step
never copies host draws to the device (a pageable host-to-device copy waits for the queued work) — carrying
``host``, a :class:`random.Random` for the few choices the host itself must make (which shading code path a
render takes). Without a GPU both live on the CPU and a run draws exactly what a plain CPU generator would.

``uniform``/``normal``/``integers`` draw on the generator's device and hand the result to ``like``'s device and
dtype (no copy when they agree); with ``generator=None`` they use the global generator, for callers that render
deterministically or in tests.
"""

from __future__ import annotations

import json
import random
from typing import Optional, Sequence

import torch
from torch import Tensor


class RunGenerator(torch.Generator):
    """A seeded device generator with a host-side ``random.Random`` beside it (``host``)."""

    def __new__(cls, device: torch.device | str = "cpu", seed: int = 0):
        return super().__new__(cls, device=torch.device(device))

    def __init__(self, device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.manual_seed(seed)
        self.host = random.Random(seed)

    def host_state(self) -> str:
        """The host generator's state as a JSON string (for checkpoint metadata)."""
        version, internal, gauss = self.host.getstate()
        return json.dumps([version, list(internal), gauss])

    def set_host_state(self, text: str) -> None:
        version, internal, gauss = json.loads(text)
        self.host.setstate((version, tuple(internal), gauss))


TRAINING, AFTER_STEP = 0, 1  # the two random streams of a step-seeded step


def seed_step(generator: RunGenerator, seed: int, step: int, phase: int = TRAINING) -> None:
    """Reseed the run's generator (device and host) for ``phase`` of step ``step`` of a run seeded ``seed``:
    ``run.step_seeds`` and ``run.picard``, where a step's draws must not depend on the steps before it."""
    value = ((seed * 1_000_003 + step) * 2 + phase) % (1 << 63)
    generator.manual_seed(value)
    generator.host.seed(value)


def host_random(generator: Optional[torch.Generator]) -> float:
    """A uniform number in [0, 1) for a host-side choice: from ``generator.host`` when the generator has one
    (no device read), else one draw of ``generator`` itself read back (plain generators, tests)."""
    host = getattr(generator, "host", None)
    if host is not None:
        return host.random()
    return float(torch.rand(1, generator=generator))


def _device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _place(x: Tensor, like: Optional[Tensor], device: Optional[torch.device]) -> Tensor:
    if like is not None:
        return x.to(like)
    return x if device is None else x.to(device)


def uniform(shape: Sequence[int], generator: Optional[torch.Generator], like: Optional[Tensor] = None,
            device: Optional[torch.device] = None) -> Tensor:
    """U[0, 1) of ``shape`` drawn on the generator's device, placed like ``like`` (or on ``device``)."""
    return _place(torch.rand(tuple(shape), generator=generator, device=_device(generator)), like, device)


def normal(shape: Sequence[int], generator: Optional[torch.Generator], like: Optional[Tensor] = None,
           device: Optional[torch.device] = None) -> Tensor:
    """N(0, 1) of ``shape`` drawn on the generator's device, placed like ``like`` (or on ``device``)."""
    return _place(torch.randn(tuple(shape), generator=generator, device=_device(generator)), like, device)


def integers(low: int, high: int, shape: Sequence[int], generator: Optional[torch.Generator],
             device: Optional[torch.device] = None) -> Tensor:
    """Integers in [low, high) of ``shape`` (int64) drawn on the generator's device (or moved to ``device``)."""
    x = torch.randint(low, high, tuple(shape), generator=generator, device=_device(generator))
    return x if device is None else x.to(device)


def permutation(n: int, generator: Optional[torch.Generator], device: Optional[torch.device] = None) -> Tensor:
    x = torch.randperm(n, generator=generator, device=_device(generator))
    return x if device is None else x.to(device)
