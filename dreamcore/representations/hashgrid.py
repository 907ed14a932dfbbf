"""Multi-resolution hash encoding (Müller et al. 2022, "Instant Neural Graphics Primitives"), pure PyTorch.

Level l has resolution N_l = ⌊N_min · b^l⌋ with b = exp((ln N_max − ln N_min)/(L − 1)). A point's feature at
level l is the trilinear interpolation of the 8 surrounding grid-corner vectors, looked up directly when
(N_l + 1)³ ≤ T and through the spatial hash h(x) = (x₀·1 ⊕ x₁·2654435761 ⊕ x₂·805459861) mod T otherwise.
The L features are concatenated: [N, L·F].

Two paths, equal up to float summation order (``tests/test_nerf.py`` compares them): :meth:`HashGridEncoding.forward`
computes each level kind's indices alone in int32 (the hash needs only its low bits, which wrap-around
multiplication keeps) and gathers and interpolates in one autograd function whose backward is one ``index_add_``
into the table (about 5× faster on CPU than autograd through ``embedding``); :meth:`HashGridEncoding.reference`
is the plain int64 formula through ``embedding``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)
_PRIMES_INT32 = tuple(p - 2**32 if p >= 2**31 else p for p in _PRIMES)  # the same primes modulo 2³²


class _InterpolateCorners(torch.autograd.Function):
    """out[n, l] = Σ_c w[n, l, c] · table[idx[n, l, c]]; the table's gradient is one scatter-add."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        n, levels, _ = idx.shape
        feats = torch.index_select(table, 0, idx.reshape(-1)).view(n * levels, 8, -1)  # [N·L, 8, F]
        ctx.save_for_backward(table, idx, w)
        return torch.bmm(w.reshape(n * levels, 1, 8).to(feats.dtype), feats).view(n, levels, -1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        table, idx, w = ctx.saved_tensors
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:
            contrib = (w[..., None].to(grad.dtype) * grad[:, :, None, :]).reshape(-1, table.shape[1])
            grad_table = torch.zeros_like(table).index_add_(0, idx.reshape(-1), contrib.to(table.dtype))
        if ctx.needs_input_grad[2]:  # through the weights to the points (e.g. autograd normals)
            n, levels, _ = idx.shape
            feats = torch.index_select(table, 0, idx.reshape(-1)).view(n * levels, 8, -1)
            grad_w = torch.bmm(feats, grad.reshape(n * levels, -1, 1).to(feats.dtype)).view(n, levels, 8).to(w.dtype)
        return grad_table, None, grad_w


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
        if not 1 <= log2_table_size <= 30:
            raise ValueError(f"hash grid: log2_table_size must be in 1..30, got {log2_table_size}")
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
        if any(d and not prev for prev, d in zip(dense, dense[1:])):
            raise ValueError("hash grid: dense levels must be the coarse ones (resolutions must grow)")
        self.n_dense = sum(dense)
        self.table = nn.Parameter(torch.empty(offsets[-1], n_features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features

    def corner_weights(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Per level the cell's lower corner [N, L, 3] (float, integral) and the trilinear weights [N, L, 8]
        (corner c = (dx, dy, dz) ∈ {0,1}³ flattened as 4·dx + 2·dy + dz, weights a product over axes)."""
        u = ((points / self.bound + 1.0) * 0.5).clamp(0.0, 1.0)  # [N,3] in the unit cube
        pos = u[:, None, :] * self.resolution[None, :, None].to(u.dtype)  # [N,L,3]
        base = torch.minimum(pos.floor(), (self.resolution[None, :, None] - 1).to(pos.dtype))
        frac = pos - base
        wts = torch.stack([1.0 - frac, frac], dim=-1)  # [N,L,3,2]
        w = wts[:, :, 0, :, None, None] * wts[:, :, 1, None, :, None] * wts[:, :, 2, None, None, :]
        return base, w.reshape(points.shape[0], self.n_levels, 8)

    def corner_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows [N, L, 8] (int64) of the 8 cell corners around each point and their weights [N, L, 8].

        Dense levels (the coarse ones, a prefix) index x + (y + z·(N_l+1))·(N_l+1); hashed ones the hash above.
        Each kind is computed only on its own levels, in int32 (a hashed table has at most 2³¹ rows, so the low
        bits that ``& (T − 1)`` keeps are those of the int64 product)."""
        n, levels = points.shape[0], self.n_levels
        base, w = self.corner_weights(points)
        corner = base.detach().to(torch.int32)
        ends = torch.stack([corner, corner + 1], dim=-1)  # [N,L,3,2]: per-axis corner coordinate
        n_dense = self.n_dense
        parts = []
        if n_dense:
            e = ends[:, :n_dense]
            r1 = (self.resolution[:n_dense] + 1).to(torch.int32).view(1, -1, 1)
            ex, ey, ez = e[:, :, 0], e[:, :, 1] * r1, e[:, :, 2] * (r1 * r1)
            parts.append((ex[:, :, :, None, None] + ey[:, :, None, :, None] + ez[:, :, None, None, :])
                         .reshape(n, n_dense, 8))
        if n_dense < levels:
            e = ends[:, n_dense:]
            hx, hy, hz = (e[:, :, a] * _PRIMES_INT32[a] for a in range(3))
            hashed = (hx[:, :, :, None, None] ^ hy[:, :, None, :, None] ^ hz[:, :, None, None, :])
            mask = (self.table_size[n_dense:] - 1).to(torch.int32).view(1, -1, 1)
            parts.append(hashed.reshape(n, levels - n_dense, 8) & mask)
        idx = torch.cat(parts, dim=1).long() + self.offset.view(1, -1, 1)
        return idx, w

    def reference_corner_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`corner_indices` as the plain formula: every level's dense and hashed index in int64."""
        n = points.shape[0]
        basef, w = self.corner_weights(points)
        base = basef.long()
        ends = torch.stack([base, base + 1], dim=-1)  # [N,L,3,2]
        r1 = (self.resolution + 1).view(1, -1, 1, 1, 1)
        dense = ends[:, :, 0, :, None, None] + (ends[:, :, 1, None, :, None] + ends[:, :, 2, None, None, :] * r1) * r1
        hx, hy, hz = (ends[:, :, a] * _PRIMES[a] for a in range(3))
        hashed = (hx[:, :, :, None, None] ^ hy[:, :, None, :, None] ^ hz[:, :, None, None, :])
        hashed = hashed & (self.table_size[None, :, None, None, None] - 1)  # hashed tables are powers of two
        idx = torch.where(self.is_dense[None, :, None, None, None], dense, hashed) + self.offset[None, :, None, None, None]
        return idx.reshape(n, self.n_levels, 8), w

    def forward(self, points: Tensor) -> Tensor:
        """points [N, 3] in [−bound, bound]³ → features [N, L·F]."""
        idx, w = self.corner_indices(points)
        return _InterpolateCorners.apply(self.table, idx, w).reshape(points.shape[0], -1)

    def reference(self, points: Tensor) -> Tensor:
        """:meth:`forward` by autograd through ``embedding`` (the slow, obviously right path)."""
        idx, w = self.reference_corner_indices(points)
        feats = nn.functional.embedding(idx, self.table)  # [N,L,8,F]
        return (feats * w[..., None].to(feats.dtype)).sum(dim=2).reshape(points.shape[0], -1)
