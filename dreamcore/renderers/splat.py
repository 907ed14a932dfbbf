"""Gaussian splatting renderer (``renderer.name: splat``): RGB, alpha, depth and normals of 3D Gaussians.

``backend``: ``torch`` is the pure-PyTorch rasterizer of :mod:`dreamcore.renderers.splat_kernel` (CPU, CI, any
pixel subset); ``gsplat`` calls gsplat's CUDA rasterizer (same projection and compositing maths; whole images,
subsets gathered after); ``auto`` takes gsplat when CUDA and the package are there, else torch.

Per Gaussian: colour from its spherical harmonics along the camera → centre direction; depth = distance from
the camera centre (RenderOutput's ray distance); normal = the axis of its smallest scale, flipped towards the
camera (``normals: gaussians``), or normals from the rendered depth map's finite differences (``normals: depth``,
whole images only). Shading modes as the volume renderer: albedo, lambertian (albedo·(a + (1−a) max(0, n·l))),
textureless, random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from dreamcore.cameras import Cameras, Lighting
from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.registry import register
from dreamcore.renderers.output import RenderOutput
from dreamcore.renderers.shading import held_lighting, light_directions, pick_shading
from dreamcore.renderers.splat_kernel import project, rasterize
from dreamcore.representations.gaussian_shape import quat_to_rotmat
from dreamcore.precision import full_precision


def gsplat_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def gaussian_normals(gaussians, cam_pos: Tensor) -> Tensor:
    """[B, N, 3] unit normals: each Gaussian's shortest axis, oriented towards camera centres ``cam_pos`` [B, 3]."""
    rot = quat_to_rotmat(gaussians.quats)  # [N,3,3], columns = axes
    idx = gaussians.log_scales.argmin(dim=1)
    axis = rot.gather(2, idx[:, None, None].expand(-1, 3, 1))[..., 0]  # [N,3]
    to_cam = cam_pos[:, None, :] - gaussians.means[None]
    sign = torch.where((axis[None] * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(axis.dtype)
    return axis[None] * sign


def depth_normals(depth: Tensor, alpha: Tensor, cameras: Cameras) -> Tensor:
    """World-space normals [B, H, W, 3] from a ray-distance map [B, H, W, 1] (cross product of the unprojected
    points' finite differences, oriented towards the camera; zero where alpha ≈ 0)."""
    o, d = cameras.rays(depth.shape[1], depth.shape[2])
    t = depth / alpha.clamp_min(1e-6)
    pts = o + d * t
    dx = torch.zeros_like(pts)
    dy = torch.zeros_like(pts)
    dx[:, :, 1:-1] = pts[:, :, 2:] - pts[:, :, :-2]
    dy[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    n = torch.cross(dx, dy, dim=-1)
    n = torch.where((n * d).sum(-1, keepdim=True) > 0, -n, n)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return n * (alpha > 1e-3).to(n.dtype)


@register("renderer", "splat")
class SplatRenderer:
    @dataclass
    class Config(ComponentConfig):
        backend: Literal["auto", "torch", "gsplat"] = "auto"
        tile_size: int = 8
        near: float = 0.01
        normals: Literal["gaussians", "depth"] = "gaussians"
        shading: Literal["albedo", "lambertian", "textureless", "random"] = "albedo"
        shading_probs: tuple[float, float, float] = (0.1, 0.45, 0.45)
        ambient: float = 0.3
        bake_offset: float = 0.1  # texture baking: rays start this far outside the surface (measured best)

    supports_pixel_subsets = True

    def __init__(self, cfg: "SplatRenderer.Config") -> None:
        if cfg.tile_size < 1:
            raise DreamcoreError(f"renderer.tile_size must be ≥ 1, got {cfg.tile_size}")
        if cfg.backend == "gsplat" and not gsplat_available():
            raise DreamcoreError("renderer.backend=gsplat needs CUDA and the gsplat package "
                                 "(pip install 'dreamcore[cuda]'); use backend=torch or auto")
        self.cfg = cfg

    def backend(self, device: torch.device) -> str:
        if self.cfg.backend == "auto":
            return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
        return self.cfg.backend

    def step_size(self, field) -> float:  # noqa: ARG002  (the volume renderer's hook; splats march nothing)
        return 0.0

    @full_precision
    def __call__(self, gaussians, cameras: Cameras, height: int, width: int, background: Tensor,
                 pixel_index: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                 shading: Optional[str | Lighting] = None) -> RenderOutput:
        """Render B views over ``background`` [B, 3]; ``pixel_index`` [B, P] renders only those pixels. ``shading``:
        a mode overrides the configured choice; a :class:`Lighting` renders under that very light."""
        b = len(cameras)
        lighting = held_lighting(shading, cameras)
        mode = lighting.mode if lighting else (shading or pick_shading(self.cfg.shading, self.cfg.shading_probs,
                                                                       generator))
        cam_pos = cameras.position.to(gaussians.means.dtype)
        to_g = gaussians.means[None] - cam_pos[:, None]
        dist = to_g.norm(dim=-1, keepdim=True)  # [B,N,1]
        rgb = gaussians.colors(to_g / dist.clamp_min(1e-9))
        normals = gaussian_normals(gaussians, cam_pos)
        # albedo renders draw no light: their lighting names the camera direction (unused by the prior)
        if lighting is None:
            light = (light_directions(cameras, generator).to(rgb.dtype) if mode != "albedo"
                     else cam_pos / cam_pos.norm(dim=-1, keepdim=True))
            lighting = Lighting(mode, light, self.cfg.ambient)
        if mode != "albedo":
            n = normals.shape[1]
            view = torch.arange(b, device=normals.device).repeat_interleave(n)
            shade = lighting.shade(normals.reshape(-1, 3), view).reshape(b, n, 1)
            rgb = rgb * shade if mode == "lambertian" else shade.expand_as(rgb)
        features = torch.cat([rgb, dist, normals], -1)  # [B,N,7]
        means2d = None
        if self.backend(gaussians.means.device) == "gsplat":
            out, acc, means2d, radii = self._gsplat(gaussians, cameras, features, height, width, pixel_index)
        else:
            cov = gaussians.covariances()
            proj = project(gaussians.means, cov, cameras.c2w.to(cov.dtype), cameras.focal(height), height, width,
                           self.cfg.near)
            means2d, radii = proj.means2d, proj.radii
            if means2d.requires_grad:
                means2d.retain_grad()
            out, acc = rasterize(proj, gaussians.opacity, features, height, width, pixel_index, self.cfg.tile_size)
        bg = background.to(out.dtype)[:, None, :]
        color = out[..., :3] + (1.0 - acc[..., None]) * bg
        shape = (b, height, width) if pixel_index is None else (b, pixel_index.shape[1], 1)
        depth = out[..., 3:4].reshape(*shape, 1)
        alpha = acc.reshape(*shape, 1)
        normal = out[..., 4:7].reshape(*shape, 3)
        if self.cfg.normals == "depth" and pixel_index is None:
            normal = depth_normals(depth, alpha, cameras)
        extras = {"means2d": means2d, "radii": radii} if means2d is not None and means2d.requires_grad else {}
        return RenderOutput(rgb=color.reshape(*shape, 3), alpha=alpha, depth=depth, normal=normal,
                            pixel_index=pixel_index, image_size=(height, width), extras=extras, lighting=lighting)

    @torch.no_grad()
    def surface_color(self, gaussians, points: Tensor, normals: Tensor) -> Tensor:
        """Colour seen at surface points by short rays cast inward along −normal (texture baking)."""
        return gaussians.export_color(points, normals, self.cfg.bake_offset)

    # -- internals ---------------------------------------------------------------------------------------------
    def _gsplat(self, gaussians, cameras: Cameras, features: Tensor, height: int, width: int,
                pixel_index: Optional[Tensor]):
        """gsplat's rasterizer (OpenCV camera: flip the y and z axes of our OpenGL world-to-camera)."""
        from gsplat import rasterization

        w2c = torch.linalg.inv(cameras.c2w)
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=w2c.device, dtype=w2c.dtype))
        viewmats = flip @ w2c
        f = cameras.focal(height)
        ks = torch.zeros(len(cameras), 3, 3, device=w2c.device, dtype=w2c.dtype)
        ks[:, 0, 0], ks[:, 1, 1] = f, f
        ks[:, 0, 2], ks[:, 1, 2], ks[:, 2, 2] = 0.5 * width, 0.5 * height, 1.0
        q = gaussians.quats / gaussians.quats.norm(dim=-1, keepdim=True)
        colors, alphas, meta = rasterization(
            gaussians.means, q, gaussians.scales, gaussians.opacity, features, viewmats, ks, width, height,
            near_plane=self.cfg.near, eps2d=0.3, packed=False, tile_size=self.cfg.tile_size,
            rasterize_mode="classic",
        )
        b = len(cameras)
        out = colors.reshape(b, height * width, -1)
        acc = alphas.reshape(b, height * width)
        if pixel_index is not None:
            out = out.gather(1, pixel_index[..., None].expand(-1, -1, out.shape[-1]))
            acc = acc.gather(1, pixel_index)
        means2d = meta["means2d"]
        if means2d.requires_grad:
            means2d.retain_grad()
        return out, acc, means2d, meta["radii"]

