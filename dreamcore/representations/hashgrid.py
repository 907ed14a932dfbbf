"""Multi-resolution hash encoding (Müller et al. 2022, "Instant Neural Graphics Primitives"), pure PyTorch.

Level l has resolution N_l = ⌊N_min · b^l⌋ with b = exp((ln N_max − ln N_min)/(L − 1)). A point's feature at
level l is the trilinear interpolation of the 8 surrounding grid-corner vectors, looked up directly when
(N_l + 1)³ ≤ T and through the spatial hash h(x) = (x₀·1 ⊕ x₁·2654435761 ⊕ x₂·805459861) mod T otherwise.
The L features are concatenated: [N, L·F].

Two paths, equal up to float summation order (``tests/test_nerf.py`` compares them): :meth:`HashGridEncoding.forward`
computes each level kind's indices alone in int32 (the hash needs only its low bits, which wrap-around
multiplication keeps), lays every per-corner tensor out corner-major with the points last ([8, L, N], so each
elementwise operation runs along the points instead of over trailing axes of size 2), gathers a row of two float32
features as one int64, and interpolates in one autograd function whose backward is a 1-D ``index_add_`` per
feature into the table (together about 1.6× faster on CPU than the point-major layout it replaced, and about 5×
faster than autograd through ``embedding``); :meth:`HashGridEncoding.reference` is the plain int64 formula
through ``embedding``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)
_PRIMES_INT32 = tuple(p - 2**32 if p >= 2**31 else p for p in _PRIMES)  # the same primes modulo 2³²


def _gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` [M, F]. A row of 8 bytes (two float32 features, the default) is gathered as one int64: a 1-D
    gather is about twice as fast on CPU as a gather of 2-float rows."""
    f = table.shape[1]
    if table.is_contiguous() and f * table.element_size() == 8:
        return table.view(torch.int64).view(-1).index_select(0, idx).view(table.dtype).view(-1, f)
    return table.index_select(0, idx)


def _corner_features(table: Tensor, idx: Tensor) -> Tensor:
    """The table rows of corners, levels, points idx [8, L, N], feature-major: [F, 8, L, N] (a view)."""
    corners, levels, n = idx.shape
    return _gather_rows(table, idx.reshape(-1)).view(corners, levels, n, -1).movedim(-1, 0)


def _interpolate(table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
    """out[f, l, n] = Σ_c w[c, l, n] · table[idx[c, l, n], f] for corners, levels, points [8, L, N] → [F, L, N]."""
    feats = _corner_features(table, idx)
    return (feats * w.to(feats.dtype)).sum(1)


class _InterpolateCorners(torch.autograd.Function):
    """out[f, l, n] = Σ_c w[c, l, n] · table[idx[c, l, n], f], corner-major with the points last (every elementwise
    operation runs along the points); the table's gradient is one 1-D scatter-add per feature."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(table, idx, w)
        return _interpolate(table, idx, w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        table, idx, w = ctx.saved_tensors
        grad_table = grad_w = None
        flat = idx.reshape(-1)
        if ctx.needs_input_grad[0]:
            wg = w.to(grad.dtype)
            grad_table = torch.stack([table.new_zeros(table.shape[0]).index_add_(0, flat, (wg * g).reshape(-1).to(table.dtype))
                                      for g in grad], dim=1)
        if ctx.needs_input_grad[2]:  # through the weights to the points (e.g. autograd normals)
            feats = _corner_features(table, idx)
            grad_w = (feats * grad[:, None].to(feats.dtype)).sum(0).to(w.dtype)
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
        base, w = self._corner_weights(points)
        return base.permute(2, 1, 0), w.permute(2, 1, 0)

    def _corner_weights(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`corner_weights` axis-major with the points last: base [3, L, N], weights [8, L, N]."""
        u = ((points / self.bound + 1.0) * 0.5).clamp(0.0, 1.0)  # [N,3] in the unit cube
        res = self.resolution.to(u.dtype)
        pos = u.t()[:, None, :] * res[None, :, None]  # [3,L,N]
        base = torch.minimum(pos.floor(), (res - 1)[None, :, None])
        frac = pos - base
        wx, wy, wz = torch.stack([1.0 - frac, frac], dim=1)  # each [2,L,N]: the weights of an axis' two ends
        w = wx[:, None, None] * wy[None, :, None] * wz[None, None, :]  # [2,2,2,L,N]
        return base, w.reshape(8, self.n_levels, points.shape[0])

    def corner_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows [N, L, 8] (int64) of the 8 cell corners around each point and their weights [N, L, 8]."""
        idx, w = self._corners(points)
        return idx.permute(2, 1, 0), w.permute(2, 1, 0)

    def _corners(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`corner_indices` corner-major with the points last: rows [8, L, N] and weights [8, L, N].

        Dense levels (the coarse ones, a prefix) index x + (y + z·(N_l+1))·(N_l+1); hashed ones the hash above.
        Each kind is computed only on its own levels, in int32 (a hashed table has at most 2³¹ rows, so the low
        bits that ``& (T − 1)`` keeps are those of the int64 product)."""
        n, levels, n_dense = points.shape[0], self.n_levels, self.n_dense
        base, w = self._corner_weights(points)
        corner = base.detach().to(torch.int32)
        ends = torch.stack([corner, corner + 1], dim=1)  # [3,2,L,N]: per-axis corner coordinate
        idx = torch.empty(2, 2, 2, levels, n, dtype=torch.int64, device=points.device)
        if n_dense:
            ex, ey, ez = ends[:, :, :n_dense]
            r1 = (self.resolution[:n_dense] + 1).to(torch.int32).view(-1, 1)
            torch.add(ex[:, None, None] + (ey * r1)[None, :, None], (ez * (r1 * r1))[None, None, :],
                      out=idx[..., :n_dense, :])
        if n_dense < levels:
            hx, hy, hz = (ends[a, :, n_dense:] * _PRIMES_INT32[a] for a in range(3))
            mask = (self.table_size[n_dense:] - 1).to(torch.int32).view(-1, 1)
            torch.bitwise_and(hx[:, None, None] ^ hy[None, :, None] ^ hz[None, None, :], mask,
                              out=idx[..., n_dense:, :])
        idx = idx.view(8, levels, n)
        idx += self.offset.view(1, -1, 1)
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
        idx, w = self._corners(points)
        if torch.is_grad_enabled() and (self.table.requires_grad or w.requires_grad):
            out = _InterpolateCorners.apply(self.table, idx, w)  # [F, L, N]
        else:  # (the autograd function's bookkeeping costs more than the gather here)
            out = _interpolate(self.table, idx, w)
        return out.permute(2, 1, 0).reshape(points.shape[0], -1)

    def reference(self, points: Tensor) -> Tensor:
        """:meth:`forward` by autograd through ``embedding`` (the slow, obviously right path)."""
        idx, w = self.reference_corner_indices(points)
        feats = nn.functional.embedding(idx, self.table)  # [N,L,8,F]
        return (feats * w[..., None].to(feats.dtype)).sum(dim=2).reshape(points.shape[0], -1)
