"""Multi-resolution hash encoding (Müller et al. 2022, "Instant Neural Graphics Primitives"), pure PyTorch.

Level l has resolution N_l = ⌊N_min · b^l⌋ with b = exp((ln N_max − ln N_min)/(L − 1)). A point's feature at
level l is the trilinear interpolation of the 8 surrounding grid-corner vectors, looked up directly when
(N_l + 1)³ ≤ T and through the spatial hash h(x) = (x₀·1 ⊕ x₁·2654435761 ⊕ x₂·805459861) mod T otherwise.
The L features are concatenated: [N, L·F].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)


class HashGridEncoding(nn.Module):
    def __init__(
        self,
        n_levels: int = 12,
        n_features: int = 2,
        log2_table_size: int = 15,
        base_resolution: int = 16,
        max_resolution: int = 256,
        bound: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_levels, self.n_features, self.bound = n_levels, n_features, bound
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        table = 2**log2_table_size
        res, sizes, dense = [], [], []
        for level in range(n_levels):
            r = int(math.floor(base_resolution * growth**level))
            n_dense = (r + 1) ** 3
            res.append(r)
            dense.append(n_dense <= table)
            sizes.append(min(n_dense, table))
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.long), persistent=False)
        self.register_buffer("table_size", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("is_dense", torch.tensor(dense), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.table = nn.Parameter(torch.empty(offsets[-1], n_features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features

    def corner_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows [N, L, 8] of the 8 cell corners around each point and their trilinear weights [N, L, 8].

        Corner c = (dx, dy, dz) ∈ {0,1}³ is flattened as 4·dx + 2·dy + dz. Per-axis terms are formed once and
        combined by broadcasting: the hash is ⊕ over axes and the weight is a product over axes.
        """
        n = points.shape[0]
        u = ((points / self.bound + 1.0) * 0.5).clamp(0.0, 1.0)  # [N,3] in the unit cube
        pos = u[:, None, :] * self.resolution[None, :, None].to(u.dtype)  # [N,L,3]
        base = torch.minimum(pos.floor().long(), self.resolution[None, :, None] - 1)
        frac = pos - base.to(pos.dtype)  # [N,L,3]
        ends = torch.stack([base, base + 1], dim=-1)  # [N,L,3,2]: per-axis corner coordinate
        wts = torch.stack([1.0 - frac, frac], dim=-1)  # [N,L,3,2]
        w = wts[:, :, 0, :, None, None] * wts[:, :, 1, None, :, None] * wts[:, :, 2, None, None, :]
        r1 = (self.resolution + 1).view(1, -1, 1, 1, 1)
        dense = ends[:, :, 0, :, None, None] + (ends[:, :, 1, None, :, None] + ends[:, :, 2, None, None, :] * r1) * r1
        hx = ends[:, :, 0] * _PRIMES[0]
        hy = ends[:, :, 1] * _PRIMES[1]
        hz = ends[:, :, 2] * _PRIMES[2]
        hashed = (hx[:, :, :, None, None] ^ hy[:, :, None, :, None] ^ hz[:, :, None, None, :])
        hashed = hashed & (self.table_size[None, :, None, None, None] - 1)  # hashed tables are powers of two
        idx = torch.where(self.is_dense[None, :, None, None, None], dense, hashed) + self.offset[None, :, None, None, None]
        return idx.reshape(n, self.n_levels, 8), w.reshape(n, self.n_levels, 8)

    def forward(self, points: Tensor) -> Tensor:
        """points [N, 3] in [−bound, bound]³ → features [N, L·F]."""
        idx, w = self.corner_indices(points)
        feats = nn.functional.embedding(idx, self.table)  # [N,L,8,F]
        out = (feats * w[..., None].to(feats.dtype)).sum(dim=2)
        return out.reshape(points.shape[0], -1)
