"""Rendering a coloured MeshAsset with the reference rasterizer (non-differentiable; data for the reference
prior, metrics and turntables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamcore.cameras import Cameras, Lighting
from dreamcore.meshes.asset import MeshAsset
from dreamcore.meshes.raster import rasterize, sample_texture, vertices_to_clip

SHADINGS = ("albedo", "lambertian")
AMBIENT = 0.35  # the lambertian shading's ambient share: 0.35 + 0.65·max(0, n·l)
_PIXELS_PER_CHUNK = 1 << 20  # (super)pixels rasterized at once


@dataclass
class MeshImages:
    """What :func:`render_mesh` returns: rgb [B, H, W, 3], alpha [B, H, W, 1], depth [B, H, W, 1] and
    normal [B, H, W, 3] (see there)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """[F, 3] unit normals ``(v1 − v0) × (v2 − v0) / ‖·‖`` (0 for degenerate faces)."""
    v0, v1, v2 = vertices[faces].unbind(1)
    return F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)


def _interp(attr: Tensor, faces: Tensor, fid: Tensor, bary: Tensor) -> Tensor:
    """Barycentric interpolation at K fragments: attr [V, C], fid [K], bary [K, 3] -> [K, C]."""
    corner = faces.index_select(0, fid)  # [K, 3]
    out = attr.index_select(0, corner[:, 0]) * bary[:, :1]
    out += attr.index_select(0, corner[:, 1]) * bary[:, 1:2]
    out += attr.index_select(0, corner[:, 2]) * bary[:, 2:3]
    return out


def surface_albedo(asset: MeshAsset, fid: Tensor, bary: Tensor) -> Tensor:
    """[K, 3] base colour ``material.base_color · texture(uv) · vertex_color`` at K fragments (face ids
    ``fid`` [K], barycentrics [K, 3])."""
    faces = asset.faces.to(fid.device)
    n_frag = fid.shape[0]
    color = torch.ones(n_frag, 3, device=fid.device)
    dev = fid.device
    mat_id = asset.face_material.to(dev)[fid] if asset.face_material is not None else torch.zeros_like(fid)
    uv = _interp(asset.uvs.to(dev, torch.float32), faces, fid, bary) if asset.uvs is not None else None
    for k, material in enumerate(asset.materials):
        sel = (mat_id == k).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        c = torch.tensor(material.base_color, dtype=torch.float32, device=fid.device).expand(sel.numel(), 3)
        if material.texture is not None and uv is not None:
            c = c * sample_texture(material.texture.to(fid.device, torch.float32), uv[sel])[..., :3]
        color[sel] = c
    if asset.vertex_colors is not None:
        color = color * _interp(asset.vertex_colors.to(dev, torch.float32), faces, fid, bary)
    return color.clamp(0.0, 1.0)


def _background(background: Optional[Tensor], cameras: Cameras) -> Tensor:
    """[B, 3] background colour: the argument ([3] or [B, 3]), else ``cameras.background``, else white."""
    n_views = len(cameras)
    if background is None:
        background = cameras.background
    if background is None:
        background = torch.ones(3)
    background = background.to(cameras.device, torch.float32)
    if background.dim() == 1:
        background = background.expand(n_views, 3)
    if background.shape != (n_views, 3):
        raise ValueError(f"background must be [3] or [{n_views}, 3], got {tuple(background.shape)}")
    return background


def _render_views(
    asset: MeshAsset, cameras: Cameras, height: int, width: int, background: Tensor, lighting: Optional[Lighting]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Render at full (super-sampled) resolution: rgb [B, H, W, 3], alpha [B, H, W, 1], depth [B, H, W, 1]
    (ray distance ``‖p − o‖``), normal [B, H, W, 3] (world face normals facing the camera); shaded under
    ``lighting`` (one light per camera; None: albedo)."""
    dev = cameras.device
    verts = asset.vertices.to(dev, torch.float32)
    faces = asset.faces.to(dev)
    clip = vertices_to_clip(verts, cameras.world_to_clip(height, width).to(torch.float32))
    frags = rasterize(clip, faces, height, width)
    n_views = len(cameras)
    pix = (frags.face_id.reshape(-1) >= 0).nonzero().squeeze(1)  # covered pixels, flat over [B, H, W]
    fid, bary = frags.face_id.reshape(-1)[pix], frags.bary.reshape(-1, 3).index_select(0, pix)
    view = torch.div(pix, height * width, rounding_mode="floor")
    eye = cameras.position.to(torch.float32).index_select(0, view)  # [K, 3]
    point = _interp(verts, faces, fid, bary)
    to_eye = eye - point
    normal = face_normals(verts, faces).index_select(0, fid)
    normal = torch.where((normal * to_eye).sum(-1, keepdim=True) < 0, -normal, normal)
    textureless = lighting is not None and lighting.mode == "textureless"
    color = torch.ones_like(point) if textureless else surface_albedo(asset, fid, bary)
    if lighting is not None and lighting.mode != "albedo":
        color = color * lighting.to(dev).shade(normal, view)

    def image(channels: int, values: Tensor, fill: Optional[Tensor] = None) -> Tensor:
        out = (torch.zeros(n_views, height, width, channels, device=dev) if fill is None
               else fill[:, None, None, :].expand(n_views, height, width, channels).contiguous())
        out.view(-1, channels).index_copy_(0, pix, values.to(out.dtype))
        return out

    rgb = image(3, color, background)
    alpha = image(1, torch.ones(len(pix), 1, device=dev))
    depth = image(1, to_eye.norm(dim=-1, keepdim=True))
    normals = image(3, normal)
    return rgb, alpha, depth, normals


def _pool(x: Tensor, s: int) -> Tensor:
    """[B, sH, sW, C] -> [B, H, W, C] mean over s×s blocks."""
    return F.avg_pool2d(x.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1).contiguous()


def render_mesh(
    asset: MeshAsset,
    cameras: Cameras,
    height: int,
    width: int,
    supersample: int = 1,
    shading: str = "albedo",
    background: Optional[Tensor] = None,
    lighting: Optional[Lighting] = None,
) -> MeshImages:
    """Render ``asset`` from ``cameras`` (no gradients).

    rgb [B, H, W, 3]: base colour (``shading="albedo"``) or ``albedo · (0.35 + 0.65 max(0, n·l))`` with a
    directional light from the camera (``"lambertian"``), composited over ``background`` ([3] or [B, 3];
    default ``cameras.background``, else white). alpha [B, H, W, 1]: coverage. depth [B, H, W, 1]: distance
    from the camera centre to the surface along the pixel ray (0 where empty). normal [B, H, W, 3]:
    world-space face normals turned towards the camera (0 where empty). ``lighting`` (one light per camera,
    e.g. the light a scene's training view was shaded under) replaces ``shading``: its mode (albedo, lambertian,
    textureless), direction and ambient share, as the scene renderers shade (:class:`Lighting`).
    With ``supersample = s > 1`` every output is rendered at s·H × s·W and averaged over s×s blocks, so
    edges are antialiased: rgb is the mean of composited samples, alpha the covered fraction, depth the
    alpha-weighted mean (``alpha · E[distance]``, like a volume renderer's accumulated depth: divide by alpha
    for the surface distance), normal the renormalized mean.
    """
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    s = int(supersample)
    if lighting is None and shading == "lambertian":  # a directional light from each camera
        lighting = Lighting("lambertian", F.normalize(cameras.c2w[:, :3, 2].to(torch.float32), dim=-1), AMBIENT)
    bg = _background(background, cameras)
    per_chunk = max(1, _PIXELS_PER_CHUNK // (height * width * s * s))
    outs: list[tuple[Tensor, ...]] = []
    with torch.no_grad():
        for start in range(0, len(cameras), per_chunk):
            stop = min(start + per_chunk, len(cameras))
            rgb, alpha, depth, normal = _render_views(
                asset, cameras[start:stop], height * s, width * s, bg[start:stop],
                None if lighting is None else lighting[start:stop],
            )
            if s > 1:
                rgb, alpha, depth, normal = (_pool(t, s) for t in (rgb, alpha, depth, normal))
                normal = F.normalize(normal, dim=-1)
            outs.append((rgb, alpha, depth, normal))
    rgb, alpha, depth, normal = (torch.cat(ts, dim=0) for ts in zip(*outs))
    return MeshImages(rgb=rgb, alpha=alpha, depth=depth, normal=normal)
