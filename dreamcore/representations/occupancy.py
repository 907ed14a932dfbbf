"""Occupancy grid for empty-space skipping (Instant-NGP §4; nerfacc's OccGridEstimator), pure PyTorch.

A grid of R³ cells over [−b, b]³ keeps a running density estimate d ← max(decay·d, σ(x_cell + jitter))
(all cells count as occupied until the first update);
a cell is occupied when d > min(threshold, mean(d)), dilated by a few cells. Samples in unoccupied cells
are skipped.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from dreamcore import rng
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    def __init__(self, resolution: int = 64, bound: float = 1.0) -> None:
        super().__init__()
        self.resolution, self.bound = resolution, bound
        self.register_buffer("density", torch.zeros((resolution,) * 3))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("occupied", torch.ones((resolution,) * 3, dtype=torch.bool))
        self._box_key: tuple = ()
        self._box: Optional[tuple[Tensor, Tensor]] = None

    def cell_index(self, points: Tensor) -> Tensor:
        """[N, 3] → [N] flat cell index (points outside the box are clamped; callers mask them)."""
        r = self.resolution
        ijk = ((points / self.bound + 1.0) * 0.5 * r).floor().long().clamp(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]

    def query(self, points: Tensor) -> Tensor:
        """[N, 3] → [N] bool: inside the box and in an occupied cell."""
        inside = (points.abs() <= self.bound).all(dim=-1)
        return inside & self.occupied.reshape(-1)[self.cell_index(points)]

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator, decay: float,
               threshold: float, dilation: int = 1, empty_fraction: float = 1.0, chunk: int = 65536) -> None:
        """Re-estimate cell densities at a jittered point per cell; occupied cells are dilated by ``dilation``
        cells so that a surface can grow into its neighbourhood (cells marked empty get no samples, hence no
        gradients). After the first update only the occupied cells and a random ``empty_fraction`` of the empty
        ones are re-evaluated (the rest just decay), as Instant-NGP does to keep updates cheap."""
        r = self.resolution
        n = r**3
        cells = torch.arange(n, device=self.density.device)
        first = int(self.updates) == 0
        if not first and empty_fraction < 1.0:
            empty_pick = rng.uniform((n,), generator, device=cells.device) < empty_fraction
            cells = cells[self.occupied.reshape(-1) | empty_pick]
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        jitter = rng.uniform(ijk.shape, generator, like=ijk)
        pts = ((ijk + jitter) / r * 2.0 - 1.0) * self.bound
        fresh = torch.cat([density_fn(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)])
        density = self.density.reshape(-1)
        if first:
            density.copy_(fresh)
        else:
            density.mul_(decay)
            density[cells] = torch.maximum(density[cells], fresh)
        self.updates += 1
        occupied = self.density > min(threshold, self.density.mean().item())
        if dilation > 0:
            k = 2 * dilation + 1
            occupied = torch.nn.functional.max_pool3d(occupied[None, None].float(), k, 1, dilation)[0, 0] > 0
        self.occupied.copy_(occupied)

    def occupied_box(self) -> Optional[tuple[Tensor, Tensor]]:
        """The box [lo, hi] (each [3], world units) around every occupied cell, or None when none is occupied:
        what a ray march need not look beyond. Recomputed only when the grid has changed."""
        key = (self.occupied.data_ptr(), self.occupied._version)
        if self._box_key != key:
            cells = self.occupied.nonzero()
            if len(cells) == 0:
                self._box = None
            else:
                scale = 2.0 * self.bound / self.resolution
                self._box = (cells.amin(0).to(torch.float32) * scale - self.bound,
                             (cells.amax(0) + 1).to(torch.float32) * scale - self.bound)
            self._box_key = key
        return self._box

    def occupied_fraction(self) -> float:
        return self.occupied.float().mean().item()
