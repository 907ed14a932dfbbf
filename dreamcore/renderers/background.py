"""Backgrounds behind the object: what a ray that hits nothing returns.

* ``solid``: a fixed colour; with ``random_prob`` > 0, training views get a random colour per view instead
  (the scene cannot then explain empty space with colour, which keeps silhouettes honest).
* ``learned``: a small MLP of the view direction (an environment map, as in DreamFusion), plus the random option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore.cameras import Cameras
from dreamcore.config import ComponentConfig
from dreamcore import registry
from dreamcore.errors import DreamcoreError
from dreamcore.registry import register
from dreamcore import rng


class Background(nn.Module):
    """The background contract: the colour [B, C] behind each view, ``channels`` = C values per colour (3, or 4 for
    latent fields). Systems call the three methods below and read ``channels``; nothing else."""

    @property
    def channels(self) -> int:
        raise NotImplementedError

    def sample_training(self, n: int, generator: torch.Generator) -> Optional[Tensor]:
        """Per-view colours [n, C] for a training batch, or None to use :meth:`colors`."""
        return None

    def colors(self, cameras: Cameras) -> Tensor:
        """Background [B, C] for these views (``cameras.background`` wins when set)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups of a background with parameters (none by default)."""
        return []


def build_background(cfg) -> Background:
    """The background named by ``cfg.name``, refused by name when its class does not take the contract."""
    cls = registry.lookup("background", cfg.name)
    if not (isinstance(cls, type) and issubclass(cls, Background)):
        raise DreamcoreError(f"background '{cfg.name}' ({cls.__module__}.{cls.__qualname__}) does not subclass "
                             "dreamcore.renderers.background.Background (channels, colors, sample_training, "
                             "parameter_groups)")
    return cls(cfg)


@register("background", "solid")
class SolidBackground(Background):
    @dataclass
    class Config(ComponentConfig):
        color: tuple[float, ...] = (1.0, 1.0, 1.0)  # one value per colour channel (4 for latent fields)
        random_prob: float = 0.0

    def __init__(self, cfg: "SolidBackground.Config") -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def channels(self) -> int:
        return len(self.cfg.color)

    def sample_training(self, n: int, generator: torch.Generator) -> Optional[Tensor]:
        """Per-view colours [n, C] for a training batch, or None to use :meth:`colors`."""
        if self.cfg.random_prob <= 0:
            return None
        c = len(self.cfg.color)
        rand = rng.uniform((n, c), generator)
        use = rng.uniform((n, 1), generator) < self.cfg.random_prob
        return torch.where(use, rand, torch.tensor(self.cfg.color, device=rand.device).expand(n, c))

    def colors(self, cameras: Cameras) -> Tensor:
        """Background [B, C] for these views (``cameras.background`` wins when set)."""
        if cameras.background is not None:
            return cameras.background
        return torch.tensor(self.cfg.color, device=cameras.device).expand(len(cameras), len(self.cfg.color))

    def parameter_groups(self) -> list[dict]:
        return []


@register("background", "learned")
class LearnedBackground(SolidBackground):
    """Colour as an MLP of the view direction through the image centre (one colour per view)."""

    @dataclass
    class Config(SolidBackground.Config):
        hidden: int = 32
        frequencies: int = 4
        lr_scale: float = 0.1

    def __init__(self, cfg: "LearnedBackground.Config") -> None:
        super().__init__(cfg)
        in_dim = 3 + 6 * cfg.frequencies
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, len(cfg.color)))

    def colors(self, cameras: Cameras) -> Tensor:
        if cameras.background is not None:
            return cameras.background
        d = -cameras.c2w[:, :3, 2]
        freq = 2.0 ** torch.arange(self.cfg.frequencies, device=d.device, dtype=d.dtype) * torch.pi
        enc = torch.cat([d, torch.sin(d[:, :, None] * freq).flatten(1), torch.cos(d[:, :, None] * freq).flatten(1)], -1)
        return torch.sigmoid(self.mlp(enc))

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.mlp.parameters()), "lr_scale": self.cfg.lr_scale, "name": "background"}]
