"""Colour on a surface: a 3D hash-grid texture field, or a UV texture image (multi-resolution parametrized).

* :class:`FieldTexture`: ``albedo(x) = sigmoid(MLP(hashgrid(x)))`` (Instant-NGP encoding; Magic3D/Fantasia3D's
  texture field), defined everywhere in the scene box, so it survives topology changes (DMTet) and is baked
  into a UV atlas at export.
* :class:`UVTexture`: ``albedo = sigmoid(T(uv))`` with the texture a sum of bilinearly upsampled levels,
  ``T = Σ_l up(T_l)`` of sizes ``size / 2^l`` (a Laplacian-pyramid parametrization: a coarse level gives
  every texel of a chart a gradient even when the renders are far smaller than the texture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamcore.meshes.raster import sample_texture
from dreamcore.representations.hashgrid import HashGridEncoding


@dataclass
class FieldTextureConfig:
    """The texture field's options, mixed into the configs of the representations that carry one (flat keys:
    ``representation.n_levels`` etc.)."""

    n_levels: int = 12
    n_features: int = 2
    log2_table_size: int = 15
    base_resolution: int = 16
    max_resolution: int = 512
    hidden: int = 64
    grid_lr_scale: float = 1.0
    mlp_lr_scale: float = 0.1


class FieldTexture(nn.Module):
    @classmethod
    def from_config(cls, bound: float, cfg: FieldTextureConfig) -> "FieldTexture":
        return cls(bound, cfg.n_levels, cfg.n_features, cfg.log2_table_size, cfg.base_resolution,
                   cfg.max_resolution, cfg.hidden)

    def __init__(self, bound: float = 1.0, n_levels: int = 12, n_features: int = 2, log2_table_size: int = 15,
                 base_resolution: int = 16, max_resolution: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.encoding = HashGridEncoding(n_levels, n_features, log2_table_size, base_resolution, max_resolution, bound)
        self.mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 3))

    def forward(self, points: Tensor) -> Tensor:
        """points [N, 3] -> albedo [N, 3] in (0, 1)."""
        return torch.sigmoid(self.mlp(self.encoding(points)).float())

    def parameter_groups(self, grid_lr_scale: float, mlp_lr_scale: float) -> list[dict]:
        return [{"params": list(self.encoding.parameters()), "lr_scale": grid_lr_scale, "name": "texture_grid"},
                {"params": list(self.mlp.parameters()), "lr_scale": mlp_lr_scale, "name": "texture_mlp"}]

    def fit(self, points: Tensor, colors: Tensor, steps: int = 300, lr: float = 0.01, batch: int = 8192,
            seed: int = 0) -> float:
        """Regress the field onto ``colors`` [N, 3] at ``points`` [N, 3] (L2, Adam); returns the final MSE."""
        opt = torch.optim.Adam(self.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
        g = torch.Generator().manual_seed(seed)
        loss = torch.zeros(())
        with torch.enable_grad():
            for _ in range(steps):
                sel = torch.randint(0, points.shape[0], (min(batch, points.shape[0]),), generator=g).to(points.device)
                loss = F.mse_loss(self(points[sel]), colors[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return float(loss.detach())


class UVTexture(nn.Module):
    def __init__(self, size: int = 512, levels: int = 5) -> None:
        super().__init__()
        self.size = size
        sizes = [max(1, size >> level) for level in range(levels)]
        self.levels = nn.ParameterList([nn.Parameter(torch.zeros(s, s, 3)) for s in sizes])  # grey start

    def image(self) -> Tensor:
        """[S, S, 3] texture in (0, 1): sigmoid of the summed upsampled levels."""
        total = self.levels[0]
        for lvl in self.levels[1:]:
            up = F.interpolate(lvl.permute(2, 0, 1)[None], size=(self.size, self.size), mode="bilinear",
                               align_corners=False)
            total = total + up[0].permute(1, 2, 0)
        return torch.sigmoid(total)

    def forward(self, uv: Tensor) -> Tensor:
        """uv [N, 2] (glTF convention) -> albedo [N, 3]."""
        return sample_texture(self.image(), uv)
