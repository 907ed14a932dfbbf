"""DMTet: a deformable tetrahedral grid holding a signed distance, its surface by marching tetrahedra, and a
hash-grid texture field (Shen et al. 2021; used by Magic3D's and Fantasia3D's mesh stages).

State per grid vertex: SDF value ``s`` (negative inside) and a deformation ``δ``; the vertex sits at
``x + (bound / N) · deform_scale · tanh(δ)`` (at most ``deform_scale`` of a cell from its grid point). The
surface is re-extracted every render (differentiable in ``s`` and ``δ``), so topology can change.

Initialization: a sphere of ``init_radius``; or, from an earlier run (``init.from_run``), the SDF is set from
that run's density σ at the grid vertices, ``s = clamp(κ (ln σ_iso − ln σ), −c, c)`` (zero at the export
iso-level σ_iso, the same surface marching cubes extracts; with ``init_density_reach`` σ is the largest density
around each vertex, so parts thinner than a cell are not missed) — or, with ``init_surface: depth``, from what the
earlier run renders: its depth fused into a signed distance (``s`` = minus the fused grid of
:mod:`dreamcore.export.fusion`, trilinearly sampled, clamped the same way), for sources whose density does not
follow their renders (3D Gaussians) — and the texture field is fitted to the earlier run's ``surface_color`` at
points on the new surface.

Regularizer (nvdiffrec, Munkberg et al. 2022): cross-entropy between the signs across every grid edge with a
sign change, ``Σ BCE(sigmoid(s_a), 1[s_b > 0]) + BCE(sigmoid(s_b), 1[s_a > 0])``, which removes floaters and
interior sheets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.regularizers import laplacian_loss, normal_consistency_loss
from dreamcore.meshes.surface import Surface
from dreamcore.meshes.tets import grid_edges, marching_tets, tet_grid
from dreamcore.registry import register
from dreamcore.representations.base import SurfaceRepresentation
from dreamcore.representations.texture import FieldTexture, FieldTextureConfig


@register("representation", "dmtet")
class DMTet(SurfaceRepresentation):
    decimate_on_export = True  # marching tetrahedra over-tessellates: export.target_faces applies

    @dataclass
    class Config(FieldTextureConfig, ComponentConfig):
        resolution: int = 64  # grid cells per axis (6 tets per cell)
        bound: float = 1.0
        init_radius: float = 0.5
        deform_scale: float = 0.45  # max vertex displacement, in cells
        sdf_lr_scale: float = 0.1
        deform_lr_scale: float = 0.1
        # init.from_run
        init_isosurface: float = 0.0  # density level of the surface; 0: the earlier run's export.isosurface
        init_sdf_scale: float = 0.5  # κ in cells per unit of ln σ
        # > 0: each vertex takes the largest density of a 3×3×3 stencil ± this many cells around it, so parts thinner
        # than a cell (rods, legs) that fall between the vertices still start inside the surface
        init_density_reach: float = 0.0
        # "density": the SDF from the earlier run's density (above); "depth": from its rendered depth, fused with
        # its export.fusion_* settings (module doc)
        init_surface: Literal["density", "depth"] = "density"
        init_texture_steps: int = 200
        init_texture_points: int = 30000
        init_texture_batch: int = 4096

    def __init__(self, cfg: "DMTet.Config") -> None:
        super().__init__()
        if cfg.resolution < 2:
            raise DreamcoreError(f"representation.resolution must be >= 2 for dmtet, got {cfg.resolution}")
        self.cfg = cfg
        self.bound = cfg.bound
        grid, tets = tet_grid(cfg.resolution, cfg.bound)
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        self.register_buffer("edges", grid_edges(tets), persistent=False)
        self.cell = 2.0 * cfg.bound / cfg.resolution
        self.sdf = nn.Parameter(grid.norm(dim=-1) - cfg.init_radius)
        self.deform = nn.Parameter(torch.zeros_like(grid))
        self._cache = None
        self.texture = FieldTexture.from_config(cfg.bound, cfg)

    # -- geometry ------------------------------------------------------------------------------------------------
    def positions(self) -> Tensor:
        return self.grid + self.cell * self.cfg.deform_scale * torch.tanh(self.deform)

    def surface(self) -> Surface:
        """The current surface; reused while the parameters are unchanged (render and regularizers of one
        step share one extraction and one autograd graph)."""
        key = (self.sdf._version, self.deform._version, self.sdf.data_ptr(), torch.is_grad_enabled())
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        verts, faces = marching_tets(self.positions(), self.sdf, self.tets)
        surf = Surface.of(verts, faces)
        self._cache = (key, surf)
        return surf

    def albedo(self, points: Tensor, face_id, bary) -> Tensor:  # noqa: ARG002
        return self.texture(points)

    def regularizers(self, names=("laplacian", "normal_consistency", "sdf_sign")) -> dict[str, Tensor]:
        surf = self.surface()
        terms = {"laplacian": lambda: laplacian_loss(surf.vertices, surf.faces),
                 "normal_consistency": lambda: normal_consistency_loss(surf.vertices, surf.faces, surf.topology),
                 "sdf_sign": self.sdf_sign_loss}
        return {k: terms[k]() for k in names}

    def sdf_sign_loss(self) -> Tensor:
        sa, sb = self.sdf[self.edges[:, 0]], self.sdf[self.edges[:, 1]]
        change = (torch.sign(sa) != torch.sign(sb)).to(sa.dtype)  # masked mean over the crossing edges
        bce = (F.binary_cross_entropy_with_logits(sa, (sb > 0).to(sa.dtype), reduction="none")
               + F.binary_cross_entropy_with_logits(sb, (sa > 0).to(sb.dtype), reduction="none"))
        return (bce * change).sum() / change.sum().clamp_min(1.0)

    # -- initialization from an earlier stage -------------------------------------------------------------------
    @torch.no_grad()
    def init_from_system(self, source) -> dict:
        """Set the SDF from ``source.density`` and fit the texture to ``source.surface_color`` (see module doc)."""
        if self.cfg.init_surface == "depth":
            iso = None
            self.sdf.copy_((-self._source_fused(source)).clamp(-4.0 * self.cell, 4.0 * self.cell))
        else:
            iso = self.cfg.init_isosurface or float(source.full.export.isosurface)
            dens = self._source_density(source)
            kappa = self.cfg.init_sdf_scale * self.cell
            log_ratio = torch.log(torch.tensor(iso)) - torch.log(dens.clamp_min(1e-8))
            self.sdf.copy_((kappa * log_ratio).clamp(-4.0 * self.cell, 4.0 * self.cell))
        self.deform.zero_()
        surf = self.surface()
        if surf.faces.shape[0] == 0:
            if iso is None:
                raise DreamcoreError("init.from_run: the earlier run renders nothing opaque (alpha > ½) from any "
                                     "fusion view; use representation.init_surface=density")
            raise DreamcoreError(f"init.from_run: the earlier run's density never reaches {iso} inside the grid; "
                                 "set representation.init_isosurface lower")
        pts, nrm = _surface_samples(surf.vertices, surf.faces, self.cfg.init_texture_points)
        colors = torch.cat([source.surface_color(pts[i:i + 8192].to(_device(source)), nrm[i:i + 8192].to(_device(source)))
                            .float().to(pts.device) for i in range(0, pts.shape[0], 8192)])
        mse = self.texture.fit(pts, colors, steps=self.cfg.init_texture_steps, batch=self.cfg.init_texture_batch)
        return {"init_surface": self.cfg.init_surface, "isosurface": iso, "faces": int(surf.faces.shape[0]),
                "texture_fit_mse": round(mse, 6)}

    @torch.no_grad()
    def _source_fused(self, source) -> Tensor:
        """The source's fused depth grid (positive inside, over its own [−b, b]³) at the grid vertices [V],
        trilinear; −∞-free: vertices outside the source's box read its border."""
        export = source.full.export
        vol = torch.from_numpy(source.fused_depth(export)).float()  # [x, y, z]
        bound = float(source.representation.bound)
        coords = (self.grid.float().cpu() / bound).clamp(-1.0, 1.0)  # grid_sample's (x → W, y → H, z → D)
        sampled = F.grid_sample(vol.permute(2, 1, 0)[None, None], coords[None, :, None, None, :],
                                mode="bilinear", align_corners=True)
        return sampled.reshape(-1).to(self.grid.device)

    @torch.no_grad()
    def _source_density(self, source) -> Tensor:
        """σ of ``source`` at the grid vertices [V]; with ``init_density_reach`` r > 0, the largest σ over the 27
        points x + r·cell·{−1, 0, 1}³ around each vertex x."""
        points, reach = self.grid, self.cfg.init_density_reach
        steps = torch.tensor([-1.0, 0.0, 1.0]) if reach > 0 else torch.zeros(1)
        offsets = torch.cartesian_prod(steps, steps, steps).reshape(-1, 3).to(points) * reach * self.cell
        dens = None
        for offset in offsets:
            shifted = points + offset
            d = torch.cat([source.density(shifted[i:i + 65536].to(_device(source))).float().cpu()
                           for i in range(0, shifted.shape[0], 65536)]).to(points.device)
            dens = d if dens is None else torch.maximum(dens, d)
        return dens

    # -- training hooks ------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        c = self.cfg
        return [{"params": [self.sdf], "lr_scale": c.sdf_lr_scale, "name": "sdf"},
                {"params": [self.deform], "lr_scale": c.deform_lr_scale, "name": "deform"},
                *self.texture.parameter_groups(c.grid_lr_scale, c.mlp_lr_scale)]

    def after_step(self, step: int, generator: torch.Generator, render_step: float) -> None:  # noqa: ARG002
        return None

    @torch.no_grad()
    def export_density(self, points: Tensor) -> Tensor:
        """An occupancy-like density for stages that read this run as a field (1e3 inside, 0 outside),
        from the SDF trilinearly interpolated on the undeformed grid."""
        n = self.cfg.resolution
        sdf = self.sdf.detach().view(1, 1, n + 1, n + 1, n + 1)
        # grid index order is (x, y, z) = (D, H, W) for grid_sample's (z, y, x) coordinates
        g = (points / self.bound).flip(-1).view(1, -1, 1, 1, 3).to(sdf.dtype)
        s = F.grid_sample(sdf, g, align_corners=True, padding_mode="border").view(-1)
        return torch.where(s < 0, torch.full_like(s, 1e3), torch.zeros_like(s))


def _device(system) -> torch.device:
    return next(system.representation.parameters()).device


def _surface_samples(verts: Tensor, faces: Tensor, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n points uniformly on the surface by area (and their face normals)."""
    g = torch.Generator().manual_seed(seed)
    v0, v1, v2 = verts[faces].unbind(1)
    cross = torch.cross(v1 - v0, v2 - v0, dim=-1)
    area = cross.norm(dim=-1)
    face = torch.multinomial(area.cpu() / area.sum().cpu(), n, replacement=True, generator=g).to(verts.device)
    u, v = torch.rand(n, generator=g), torch.rand(n, generator=g)
    flip = (u + v) > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    u, v = u.to(verts.device)[:, None], v.to(verts.device)[:, None]
    pts = v0[face] + u * (v1 - v0)[face] + v * (v2 - v0)[face]
    return pts, F.normalize(cross[face], dim=-1)
