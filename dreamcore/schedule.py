"""Scheduled scalars: a number, or a piecewise-linear function of the training step.

YAML accepts ``0.5`` (constant) or ``[[0, 0.98], [500, 0.5]]`` (pairs of step and value, steps increasing;
held constant before the first and after the last point). threestudio's form ``[start_step, start_value,
end_value, end_step]`` (a flat list of four numbers) is converted at load time to
``[[start_step, start_value], [end_step, end_value]]``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Sequence

from dreamcore.errors import DreamcoreError


@dataclass(frozen=True)
class Scheduled:
    """A scalar that may change with the step. ``points`` is a tuple of (step, value) pairs."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def constant(cls, value: float) -> "Scheduled":
        return cls(((0.0, float(value)),))

    @classmethod
    def parse(cls, raw: Any, where: str = "value") -> "Scheduled":
        if isinstance(raw, Scheduled):
            return raw
        if isinstance(raw, bool):
            raise DreamcoreError(f"{where}: expected a number or [[step, value], ...], got {raw!r}")
        if isinstance(raw, (int, float)):
            return cls.constant(raw)
        if isinstance(raw, str):  # YAML 1.1 reads exponents without a dot ("1e-3") as strings
            try:
                return cls.constant(float(raw))
            except ValueError:
                pass
        if (isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)):
            raw = [[raw[0], raw[1]], [raw[3], raw[2]]]  # threestudio's [s0, v0, v1, s1]
        if isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) > 0:
            pts = []
            for p in raw:
                if not (isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2):
                    raise DreamcoreError(f"{where}: each schedule point must be [step, value], got {p!r}")
                try:
                    pts.append((float(p[0]), float(p[1])))
                except (TypeError, ValueError):
                    raise DreamcoreError(f"{where}: schedule point {p!r} is not numeric") from None
            steps = [s for s, _ in pts]
            if any(b <= a for a, b in zip(steps, steps[1:])):
                raise DreamcoreError(f"{where}: schedule steps must increase strictly, got {steps}")
            return cls(tuple(pts))
        raise DreamcoreError(f"{where}: expected a number or [[step, value], ...], got {raw!r}")

    def __call__(self, step: float) -> float:
        pts = self.points
        if step <= pts[0][0]:
            return pts[0][1]
        if step >= pts[-1][0]:
            return pts[-1][1]
        i = bisect.bisect_right([s for s, _ in pts], step)
        (s0, v0), (s1, v1) = pts[i - 1], pts[i]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)

    def scaled(self, factor: float) -> "Scheduled":
        """The same schedule over a run ``factor`` times as long: each point's step multiplied by ``factor``."""
        return Scheduled(tuple((round(s * factor, 6), v) for s, v in self.points))

    def to_yaml(self) -> Any:
        if len(self.points) == 1 and self.points[0][0] == 0.0:
            return self.points[0][1]
        return [[int(s) if float(s).is_integer() else s, v] for s, v in self.points]


def step_count(default: int | float) -> Any:
    """A config field that counts training steps (a step number or an interval of steps): ``run.time_scale``
    multiplies it, as it does every :class:`Scheduled` value's steps."""
    return field(default=default, metadata={"steps": True})
