"""Orbit cameras, rays and view labels.

World convention (matches glTF): +Y up, the object's front faces +Z, units of the normalized scene
(the object fits in a sphere of radius ~0.9 around the origin). A camera at azimuth ψ, elevation φ and
distance d sits at ``d·(cos φ sin ψ, sin φ, cos φ cos ψ)`` and looks at the origin, so azimuth 0 sees the
front, +90° the object's +X side, ±180° its back. Camera-to-world matrices use the OpenGL camera frame:
the camera looks down its −Z axis with +Y up and +X right. Pixel (row i, column j) has its centre at
(j + ½, i + ½); row 0 is the top of the image. Angles are degrees in configs and radians here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

VIEW_LABELS = ("front", "side", "back", "overhead")
SHADING_MODES = ("albedo", "lambertian", "textureless")


@dataclass(frozen=True)
class Lighting:
    """The light a batch of B views was shaded under (DreamFusion, Poole et al. 2022, §3.1).

    mode: ``albedo`` (base colour, no light), ``lambertian`` (albedo · shade) or ``textureless`` (the shade
    alone, white albedo), with shade = ambient + (1 − ambient)·max(0, n·l). direction: [B, 3] unit vectors l from
    the origin towards a light at infinity, one per view. ambient: the share of the shade that does not depend on
    the surface normal n.
    """

    mode: str
    direction: Tensor
    ambient: float

    def __post_init__(self) -> None:
        if self.mode not in SHADING_MODES:
            raise ValueError(f"lighting mode must be one of {SHADING_MODES}, got {self.mode!r}")

    def __getitem__(self, idx) -> "Lighting":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Lighting(self.mode, self.direction[idx], self.ambient)

    def to(self, device: torch.device | str) -> "Lighting":
        return Lighting(self.mode, self.direction.to(device), self.ambient)

    def repeat_interleave(self, k: int) -> "Lighting":
        """Each view's light repeated for ``k`` consecutive views (a view and its neighbours)."""
        return Lighting(self.mode, self.direction.repeat_interleave(k, 0), self.ambient)

    def shade(self, normal: Tensor, view: Tensor) -> Tensor:
        """[K, 1] shade ambient + (1 − ambient)·max(0, n·l) of unit normals [K, 3] lit by the lights of views
        ``view`` [K] (indices into ``direction``)."""
        light = self.direction.to(normal.dtype).index_select(0, view)
        return self.ambient + (1.0 - self.ambient) * (normal * light).sum(-1, keepdim=True).clamp_min(0.0)


@dataclass
class Cameras:
    """A batch of B pinhole cameras.

    c2w: [B, 4, 4] camera-to-world (OpenGL camera frame). fov_y: [B] vertical field of view (radians).
    elevation, azimuth, distance: [B] orbit parameters (radians, scene units).
    background: [B, 3] colour behind the object for this view, or None (the renderer's own background).
    lighting: the light these views were rendered under (set from the render for the prior: a light-conditioned
    prior renders its data under the same light), or None (albedo).
    """

    c2w: Tensor
    fov_y: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    background: Optional[Tensor] = None
    lighting: Optional[Lighting] = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """[B, 3] camera centres in world space."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> "Cameras":
        bg = None if self.background is None else self.background.to(device)
        light = None if self.lighting is None else self.lighting.to(device)
        return Cameras(*(t.to(device) for t in (self.c2w, self.fov_y, self.elevation, self.azimuth, self.distance)),
                       bg, light)

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        bg = None if self.background is None else self.background[idx]
        light = None if self.lighting is None else self.lighting[idx]
        return Cameras(self.c2w[idx], self.fov_y[idx], self.elevation[idx], self.azimuth[idx], self.distance[idx], bg,
                       light)

    def with_background(self, background: Optional[Tensor]) -> "Cameras":
        return replace(self, background=background)

    def with_lighting(self, lighting: Optional[Lighting]) -> "Cameras":
        """These cameras tagged with the light their views were rendered under (None: albedo)."""
        if lighting is not None and lighting.direction.shape[0] != len(self):
            raise ValueError(f"lighting for {lighting.direction.shape[0]} views given to {len(self)} cameras")
        return replace(self, lighting=lighting)

    def focal(self, height: int) -> Tensor:
        """[B] focal length in pixels for an image ``height`` pixels tall."""
        return 0.5 * height / torch.tan(0.5 * self.fov_y)

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions through every pixel centre, each [B, H, W, 3] in world space."""
        dirs_cam = self.pixel_directions(height, width)  # [B,H,W,3]
        rot = self.c2w[:, :3, :3]
        dirs = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.position[:, None, None, :].expand_as(dirs)
        return origins, dirs

    def pixel_rays(self, height: int, width: int, pixel_index: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """:meth:`rays` flattened per view, [B, H·W, 3] each, or only the pixels ``pixel_index`` [B, N] picks
        ([B, N, 3]; ray subsets)."""
        origins, dirs = self.rays(height, width)
        b = len(self)
        origins, dirs = origins.reshape(b, -1, 3), dirs.reshape(b, -1, 3)
        if pixel_index is not None:
            idx = pixel_index[..., None].expand(-1, -1, 3)
            origins, dirs = origins.gather(1, idx), dirs.gather(1, idx)
        return origins, dirs

    def pixel_directions(self, height: int, width: int) -> Tensor:
        """[B, H, W, 3] un-normalized camera-frame directions (z = −1) through pixel centres."""
        dev, dt = self.c2w.device, self.c2w.dtype
        f = self.focal(height).to(dt)[:, None, None]
        j = torch.arange(width, device=dev, dtype=dt) + 0.5
        i = torch.arange(height, device=dev, dtype=dt) + 0.5
        x = (j[None, None, :] - 0.5 * width) / f
        y = -(i[None, :, None] - 0.5 * height) / f
        x, y = torch.broadcast_tensors(x, y)
        return torch.stack([x, y, -torch.ones_like(x)], dim=-1)

    def world_to_clip(self, height: int, width: int, near: float = 0.05, far: float = 100.0) -> Tensor:
        """[B, 4, 4] OpenGL projection · view: world points to clip space (NDC y up, z in [−1, 1])."""
        w2c = torch.linalg.inv(self.c2w)
        f = 1.0 / torch.tan(0.5 * self.fov_y)
        aspect = width / height
        proj = torch.zeros_like(self.c2w)
        proj[:, 0, 0] = f / aspect
        proj[:, 1, 1] = f
        proj[:, 2, 2] = -(far + near) / (far - near)
        proj[:, 2, 3] = -2.0 * far * near / (far - near)
        proj[:, 3, 2] = -1.0
        return proj @ w2c


def look_at(eye: Tensor, target: Optional[Tensor] = None, up: Optional[Tensor] = None) -> Tensor:
    """[B, 4, 4] camera-to-world matrices looking from ``eye`` [B, 3] at ``target`` (origin) with +Y up."""
    if target is None:
        target = torch.zeros_like(eye)
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    back = eye - target
    back = back / back.norm(dim=-1, keepdim=True)
    right = torch.cross(up, back, dim=-1)
    # looking straight up/down: pick the world -Z as "up" on screen to keep a valid frame
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 0.0, -1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.cross(alt_up, back, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def orbit_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fov_deg: Tensor, background: Optional[Tensor] = None
) -> Cameras:
    """Cameras on an orbit around the origin from per-view angles in degrees (all [B])."""
    el = torch.deg2rad(elevation_deg.double()).float()
    az = torch.deg2rad(azimuth_deg.double()).float()
    distance = distance.float()
    eye = torch.stack(
        [distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el), distance * torch.cos(el) * torch.cos(az)],
        dim=-1,
    )
    return Cameras(look_at(eye), torch.deg2rad(fov_deg.double()).float(), el, az, distance, background)


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> Tensor:
    """U[lo, hi) [n], drawn on the generator's device (a run's cameras are drawn where it trains)."""
    device = generator.device if generator is not None else None
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def sample_orbit(
    n: int,
    generator: torch.Generator,
    elevation_range: tuple[float, float] = (-10.0, 60.0),
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    distance_range: tuple[float, float] = (3.0, 3.4),
    fov_range: tuple[float, float] = (38.0, 42.0),
    uniform_sphere: bool = True,
) -> Cameras:
    """``n`` random orbit cameras. With ``uniform_sphere`` the elevation is area-uniform (sin φ uniform),
    so poles are not oversampled; otherwise it is uniform in degrees."""
    lo, hi = elevation_range
    if uniform_sphere:
        s = _uniform(math.sin(math.radians(lo)), math.sin(math.radians(hi)), n, generator)
        el = torch.rad2deg(torch.asin(s.clamp(-1, 1)))
    else:
        el = _uniform(lo, hi, n, generator)
    az = _uniform(*azimuth_range, n, generator)
    dist = _uniform(*distance_range, n, generator)
    fov = _uniform(*fov_range, n, generator)
    return orbit_cameras(el, az, dist, fov)


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuths in degrees wrapped to [−180, 180)."""
    return (azimuth_deg + 180.0) % 360.0 - 180.0


def view_label_index(elevation_deg: Tensor, azimuth_deg: Tensor, front_threshold: float = 45.0,
                     back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> Tensor:
    """The index into :data:`VIEW_LABELS` of each camera's label [B] (int64, on the cameras' device; DreamFusion's
    scheme, §3.2; later rules win): ``side``; ``front`` if |ψ| < θ_f; ``back`` if |ψ| > 180 − θ_b; ``overhead``
    if the elevation φ > θ_o (degrees)."""
    a = wrap_azimuth(azimuth_deg)
    index = torch.ones_like(a, dtype=torch.long)  # side
    index = torch.where((a > -front_threshold) & (a < front_threshold), 0, index)
    index = torch.where((a > 180.0 - back_threshold) | (a < -180.0 + back_threshold), 2, index)
    return torch.where(elevation_deg > overhead_threshold, 3, index)


def view_labels(elevation_deg: Tensor, azimuth_deg: Tensor, front_threshold: float = 45.0,
                back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> list[str]:
    """The labels of :func:`view_label_index` as strings (a host read: for reports, not for the step)."""
    index = view_label_index(elevation_deg, azimuth_deg, front_threshold, back_threshold, overhead_threshold)
    return [VIEW_LABELS[i] for i in index.tolist()]


def turntable_cameras(
    n: int, elevation_deg: float = 15.0, distance: float = 3.2, fov_deg: float = 40.0, start_azimuth: float = 0.0
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth at a fixed elevation (validation and turntable videos)."""
    az = start_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    az = (az + 180.0) % 360.0 - 180.0
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return orbit_cameras(full(elevation_deg), az, full(distance), full(fov_deg))



def view_groups(anchors: Cameras, views: int) -> Cameras:
    """``views`` cameras around the object for each anchor camera, as multi-view priors see one object (MVDream,
    Shi et al. 2023: one elevation, distance and fov, azimuths 360°/``views`` apart): [A·views] cameras, the
    views of one anchor contiguous ((a v) order) and the first of each group the anchor itself. Backgrounds, if
    any, are shared within a group."""
    if views == 1:
        return anchors
    rep = lambda v: v.repeat_interleave(views, 0)  # noqa: E731
    step = torch.arange(views, dtype=torch.float32, device=anchors.device) * (360.0 / views)
    az = torch.rad2deg(anchors.azimuth.double()).float()[:, None] + step[None]
    az = ((az + 180.0) % 360.0 - 180.0).reshape(-1)
    bg = None if anchors.background is None else rep(anchors.background)
    cams = orbit_cameras(torch.rad2deg(rep(anchors.elevation).double()).float(), az, rep(anchors.distance),
                         torch.rad2deg(rep(anchors.fov_y).double()).float(), bg)
    return cams.to(anchors.device)
