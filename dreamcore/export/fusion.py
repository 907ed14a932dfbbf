"""A surface from what the scene renders: truncated signed-distance fusion of rendered depth (Curless & Levoy 1996,
"A Volumetric Method for Building Complex Models from Range Images"; KinectFusion, Newcombe et al. 2011), the mesh
extraction 2D Gaussian Splatting (Huang et al. 2024, §5) and its successors use for Gaussians, whose density level
sets do not follow their renders (small kernels that only overlap on screen).

The scene is rendered at V views from all around (a Fibonacci sphere of directions, one distance and field of view).
For a grid point x, a view v with camera centre o_v that sees x at pixel p (inside the image, in front of the camera):

    alpha_v(p) < ½                       → free space:  s_v(x) = +τ
    alpha_v(p) ≥ ½, d_v(p) = depth/alpha → s_v(x) = clamp(d_v(p) − ‖x − o_v‖, −τ, τ), unless it is below −τ
                                            (x lies behind the surface there: that view says nothing)

and the fused value is the mean of the views' s_v(x) (unit weights). Points that no view says anything about (inside
the object, behind every surface) count as inside (−τ), so the surface closes. The grid returned is −s (positive
inside), and its level 0 is the surface, ready for the density path's marching cubes and clean-up
(:func:`dreamcore.export.extract.mesh_from_grid`). τ is a few grid cells; depth is the render's expected ray
distance over its alpha.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dreamcore.cameras import Cameras, orbit_cameras
from dreamcore.export.extract import sample_grid

RenderFn = Callable[[Cameras, int], tuple[Tensor, Tensor]]  # cameras, resolution -> alpha [B,H,W], depth [B,H,W]


def sphere_views(n: int, distance: float, fov_deg: float) -> Cameras:
    """``n`` cameras looking at the origin from directions spread evenly over the sphere (Fibonacci lattice),
    elevations strictly inside (−90°, 90°) so that ``look_at`` keeps its up vector."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * k / n  # sin(elevation), evenly spaced: equal areas
    elevation = torch.rad2deg(torch.asin(y.clamp(-0.995, 0.995)))
    azimuth = torch.remainder(k * 180.0 * (3.0 - math.sqrt(5.0)), 360.0) - 180.0  # golden angle steps
    return orbit_cameras(elevation.float(), azimuth.float(), torch.full((n,), float(distance)),
                         torch.full((n,), float(fov_deg)))


@torch.no_grad()
def fuse_depth(render: RenderFn, cameras: Cameras, image_size: int, grid_resolution: int, bound: float,
               truncation: float, chunk: int = 1 << 18) -> np.ndarray:
    """[N, N, N] float32 (indexed [x, y, z] as :func:`~dreamcore.export.extract.sample_grid`): minus the fused
    truncated signed distance of the module docstring, so positive inside and 0 on the surface."""
    alphas, depths = [], []
    for i in range(len(cameras)):  # one view at a time: renders hold little memory
        a, d = render(cameras[i:i + 1], image_size)
        alphas.append(a.reshape(image_size, image_size).float().cpu())
        depths.append(d.reshape(image_size, image_size).float().cpu())
    alpha = torch.stack(alphas)  # [V, H, W]
    depth = torch.where(alpha > 0.5, torch.stack(depths) / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
    c2w = cameras.c2w.float().cpu()
    w2c = torch.linalg.inv(c2w)
    focal = cameras.focal(image_size).float().cpu()  # [V]
    centre = c2w[:, :3, 3]

    def inside(pts: Tensor) -> Tensor:  # [P, 3] → −(the views' mean truncated signed distance) [P]
        total_s = torch.zeros(len(pts))
        count = torch.zeros(len(pts))
        for v in range(len(cameras)):
            cam = pts @ w2c[v, :3, :3].T + w2c[v, :3, 3]  # OpenGL camera frame: looking down −z
            z = -cam[:, 2]
            front = z > 1e-6
            u = focal[v] * cam[:, 0] / z.clamp_min(1e-6) + 0.5 * image_size  # pixel column
            r = -focal[v] * cam[:, 1] / z.clamp_min(1e-6) + 0.5 * image_size  # pixel row (y up → rows down)
            col, row = u.floor().long(), r.floor().long()
            seen = front & (col >= 0) & (col < image_size) & (row >= 0) & (row < image_size)
            col, row = col.clamp(0, image_size - 1), row.clamp(0, image_size - 1)
            a = alpha[v, row, col]
            dist = (pts - centre[v]).norm(dim=-1)
            s = (depth[v, row, col] - dist).clamp(max=truncation)
            s = torch.where(a < 0.5, torch.full_like(s, truncation), s)
            counts = seen & (s >= -truncation)
            total_s += torch.where(counts, s, torch.zeros_like(s))
            count += counts.float()
        return -torch.where(count > 0, total_s / count.clamp_min(1.0), torch.full_like(total_s, -truncation))

    return sample_grid(inside, grid_resolution, bound, chunk)
