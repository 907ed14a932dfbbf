"""Hash-grid NeRF field: density and albedo (Instant-NGP encoding + small MLP), with a density-blob prior.

σ(x) = exp(raw_σ(x) + b(x)), b(x) = s·(1 − ‖x‖/r) (the "density blob" of DreamFusion / Magic3D, making the
initial field a soft ball so guidance starts from an object-like shape). Albedo = sigmoid(raw_rgb).
Normals are −∇σ/‖∇σ‖ by central finite differences (cheap, works without autograd graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.registry import register
from dreamcore.representations.base import Representation
from dreamcore.representations.hashgrid import HashGridEncoding
from dreamcore.representations.occupancy import OccupancyGrid
from dreamcore.precision import no_autocast
from dreamcore.schedule import step_count


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped at exp(15): keeps early high densities from exploding the update."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


@register("representation", "nerf")
class NeRFField(Representation):
    @dataclass
    class Config(ComponentConfig):
        bound: float = 1.0
        n_levels: int = 12
        n_features: int = 2
        log2_table_size: int = 15
        base_resolution: int = 16
        max_resolution: int = 256
        hidden: int = 64
        hidden_layers: int = 1
        blob_density: float = 5.0
        blob_radius: float = 0.5
        grid_lr_scale: float = 1.0
        mlp_lr_scale: float = 0.1
        normal_eps: float = 0.01
        occupancy_resolution: int = 64
        occupancy_update_every: int = 16
        occupancy_decay: float = 0.3
        occupancy_threshold: float = 0.01
        occupancy_warmup: int = step_count(0)
        occupancy_dilation: int = 1
        occupancy_empty_fraction: float = 0.125
        color_channels: int = 3  # 4 for Latent-NeRF (the render's channels are a latent prior's latents)

    def __init__(self, cfg: "NeRFField.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.bound = cfg.bound
        if cfg.color_channels < 1:
            raise DreamcoreError(f"representation.color_channels must be ≥ 1, got {cfg.color_channels}")
        self.color_channels = cfg.color_channels
        self.encoding = HashGridEncoding(
            cfg.n_levels, cfg.n_features, cfg.log2_table_size, cfg.base_resolution, cfg.max_resolution, cfg.bound
        )
        layers: list[nn.Module] = []
        dim = self.encoding.output_dim
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(dim, cfg.hidden), nn.ReLU(inplace=True)]
            dim = cfg.hidden
        layers.append(nn.Linear(dim, 1 + cfg.color_channels))
        self.mlp = nn.Sequential(*layers)
        self.occupancy = OccupancyGrid(cfg.occupancy_resolution, cfg.bound)

    # -- field queries ---------------------------------------------------------------------------------------
    def density_bias(self, points: Tensor) -> Tensor:
        return self.cfg.blob_density * (1.0 - points.norm(dim=-1) / self.cfg.blob_radius)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [N, 3] → (density σ [N] ≥ 0, albedo [N, C] in (0, 1), C = ``color_channels``)."""
        raw = self.mlp(self.encoding(points)).float()  # the network may run in bf16/fp16 (run.precision)
        sigma = trunc_exp(raw[:, 0] + self.density_bias(points))
        return sigma, torch.sigmoid(raw[:, 1:])

    def density(self, points: Tensor) -> Tensor:
        return self.forward(points)[0]

    def normals(self, points: Tensor) -> Tensor:
        """[N, 3] outward unit normals −∇σ/‖∇σ‖ by central differences of step ``normal_eps``."""
        with no_autocast(points.device.type):  # differences of reduced-precision densities would be noise
            return self._normals(points)

    def _normals(self, points: Tensor) -> Tensor:
        eps = self.cfg.normal_eps
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        shifted = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1).reshape(-1, 3)
        s = self.density(shifted).reshape(-1, 2, 3)
        grad = (s[:, 0] - s[:, 1]) / (2 * eps)
        return -grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    # -- training hooks --------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Optimizer groups with relative learning rates (hash tables learn faster than the MLP)."""
        return [
            {"params": list(self.encoding.parameters()), "lr_scale": self.cfg.grid_lr_scale, "name": "grid"},
            {"params": list(self.mlp.parameters()), "lr_scale": self.cfg.mlp_lr_scale, "name": "mlp"},
        ]

    def after_step(self, step: int, generator: torch.Generator, render_step: float) -> None:
        """Refresh the occupancy grid every ``occupancy_update_every`` steps once past the warm-up."""
        c = self.cfg
        if step >= c.occupancy_warmup and step % c.occupancy_update_every == 0:
            self.occupancy.update(self.density, generator, c.occupancy_decay, c.occupancy_threshold / render_step,
                                  c.occupancy_dilation, c.occupancy_empty_fraction)

    def export_density(self, points: Tensor) -> Tensor:
        """Density for mesh extraction: zero in cells the occupancy grid marks empty (≈10× fewer queries)."""
        occupied = self.occupancy.query(points)
        out = points.new_zeros(points.shape[0])
        if bool(occupied.any()):
            out[occupied] = self.density(points[occupied])
        return out
