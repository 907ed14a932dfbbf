"""Image and shape metrics: PSNR, silhouette IoU, depth error, the Janus score and a visible-surface Chamfer
distance between meshes."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dreamcore.cameras import Cameras, look_at
from dreamcore.meshes.asset import MeshAsset
from dreamcore.meshes.raster import rasterize, vertices_to_clip

CHAMFER_FOV_DEG = 40.0
_CHAMFER_MARGIN = 1.1  # the enclosing sphere fills 1/1.1 of the field of view


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]: ``−10 log10(mean((a − b)²))`` dB over all elements
    (``inf`` for identical images)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def silhouette_iou(alpha_a: Tensor, alpha_b: Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of the masks ``alpha > threshold`` (1.0 when both are empty)."""
    if alpha_a.shape != alpha_b.shape:
        raise ValueError(f"silhouette_iou needs equal shapes, got {tuple(alpha_a.shape)} and {tuple(alpha_b.shape)}")
    ma, mb = alpha_a > threshold, alpha_b > threshold
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else int((ma & mb).sum()) / union


def depth_error(depth_a: Tensor, alpha_a: Tensor, depth_b: Tensor, alpha_b: Tensor, threshold: float = 0.5) -> float:
    """Mean |d_a − d_b| of the surface distances d = depth / alpha (renders whose depth is alpha-weighted, as the
    supersampled mesh renderer's) over the pixels both silhouettes cover (``alpha > threshold``); nan if none."""
    both = (alpha_a > threshold) & (alpha_b > threshold)
    if not bool(both.any()):
        return math.nan
    da = depth_a[both] / alpha_a[both]
    db = depth_b[both] / alpha_b[both]
    return float((da.double() - db.double()).abs().mean())


def surface_depth_error(asset: MeshAsset, target: MeshAsset, cameras: Cameras, resolution: int, scale: float,
                        tolerance: float = 0.02) -> tuple[float, float]:
    """Depth of the visible surface of ``asset`` against ``target`` by ray casting one ray through each pixel
    centre (the rasterizer without supersampling: the first hit along the ray), over the pixels where both are
    hit: (median |d_asset − d_target| / scale, fraction of those pixels with |Δd| > tolerance · scale).
    ``scale``: the target's bounding-box diagonal. (nan, nan) when no pixel is hit by both."""
    from dreamcore.meshes.render import render_mesh

    a = render_mesh(asset, cameras, resolution, resolution, supersample=1)
    b = render_mesh(target, cameras, resolution, resolution, supersample=1)
    both = (a.alpha > 0.5) & (b.alpha > 0.5)
    if not bool(both.any()):
        return math.nan, math.nan
    err = (a.depth[both].double() - b.depth[both].double()).abs() / scale
    return float(err.median()), float((err > tolerance).double().mean())


def watertight_report(vertices: Tensor, faces: Tensor, weld_tolerance: float = 1e-6) -> dict:
    """Whether a triangle mesh is a closed, consistently oriented 2-manifold per connected component, after
    welding vertices closer than ``weld_tolerance`` (files split vertices along UV seams).

    Counts over the welded mesh's undirected edges: ``boundary_edges`` (used by one face: holes),
    ``nonmanifold_edges`` (by three or more: fins, interior sheets), ``misoriented_edges`` (two faces that
    traverse it the same way) and ``components``; ``watertight`` iff the first three are all zero."""
    v = vertices.detach().double().cpu().numpy()
    f = faces.cpu().numpy().astype(np.int64)
    keys = np.round(v / weld_tolerance).astype(np.int64)
    _, weld = np.unique(keys, axis=0, return_inverse=True)
    f = weld.reshape(-1)[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]  # drop faces welded to a line
    if len(f) == 0:
        return {"watertight": False, "boundary_edges": 0, "nonmanifold_edges": 0, "misoriented_edges": 0,
                "components": 0}
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    uniq, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    forward = (directed[:, 0] < directed[:, 1]).astype(np.int64)
    forward_count = np.bincount(inverse.reshape(-1), weights=forward, minlength=len(uniq))
    boundary = int((counts == 1).sum())
    nonmanifold = int((counts > 2).sum())
    misoriented = int(((counts == 2) & (forward_count != 1)).sum())
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(f.max()) + 1
    graph = coo_matrix((np.ones(len(directed)), (directed[:, 0], directed[:, 1])), shape=(n, n))
    used = np.unique(f)
    _, labels = connected_components(graph, directed=False)
    components = len(np.unique(labels[used]))
    return {"watertight": boundary == 0 and nonmanifold == 0 and misoriented == 0, "boundary_edges": boundary,
            "nonmanifold_edges": nonmanifold, "misoriented_edges": misoriented, "components": components}


def janus_score(rendered: Tensor, own: Tensor, opposite: Tensor) -> float:
    """The fraction of views whose render ``rendered`` [B, H, W, C] is nearer (mean squared error) to the object's
    render from the opposite side ``opposite`` (azimuth + 180°) than to its render from the same camera ``own``:
    0 for the right object, about 1 for one that faces backwards, and high for a Janus (multi-faced) object,
    whose every side shows the front."""
    if not (rendered.shape == own.shape == opposite.shape):
        raise ValueError("janus_score needs three image batches of one shape")
    d_own = (rendered - own).double().pow(2).flatten(1).mean(1)
    d_opp = (rendered - opposite).double().pow(2).flatten(1).mean(1)
    return float((d_opp < d_own).double().mean())


def visible_surface_points(asset: MeshAsset, cameras: Cameras, resolution: int) -> Tensor:
    """[N, 3] surface points seen by ``cameras`` at ``resolution``² pixels, in the asset's frame.

    Each covered pixel centre is unprojected from its rasterized view depth ``w`` (clip w):
    ``p = o + R_c2w · (w · d)``, with ``d = (x/f, y/f, −1)`` the camera-frame pixel direction.
    """
    verts = asset.vertices.to(cameras.device, torch.float32)
    clip = vertices_to_clip(verts, cameras.world_to_clip(resolution, resolution).to(torch.float32))
    frags = rasterize(clip, asset.faces, resolution, resolution)
    idx = (frags.face_id >= 0).nonzero(as_tuple=True)
    dirs = cameras.pixel_directions(resolution, resolution).to(torch.float32)[idx]  # [N, 3]
    cam_points = dirs * frags.depth[idx][:, None]
    view = idx[0]
    rot = cameras.c2w[:, :3, :3].to(torch.float32)[view]
    return torch.einsum("nij,nj->ni", rot, cam_points) + cameras.position.to(torch.float32)[view]


def sphere_cameras(n_views: int, distance: float, seed: int = 0, fov_deg: float = CHAMFER_FOV_DEG) -> Cameras:
    """``n_views`` cameras looking at the origin from a Fibonacci lattice on the sphere of radius ``distance``,
    rotated by a random rotation drawn from ``seed`` (so different seeds see different, still even, views)."""
    i = torch.arange(n_views, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n_views
    r = torch.sqrt((1.0 - y * y).clamp_min(0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))  # golden angle
    dirs = torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], dim=-1)
    gen = torch.Generator().manual_seed(seed)
    q, upper = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(upper))[None, :]  # uniform (Haar) rotation or reflection
    dirs = (dirs @ q.T).float()
    eye = dirs * distance
    elevation = torch.asin(dirs[:, 1].clamp(-1.0, 1.0))
    azimuth = torch.atan2(dirs[:, 0], dirs[:, 2])
    full = lambda v: torch.full((n_views,), float(v))  # noqa: E731
    return Cameras(look_at(eye), torch.deg2rad(full(fov_deg)), elevation, azimuth, full(distance))


def _mean_nn_distance(src: np.ndarray, dst: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    # the sliding-midpoint tree builds and answers faster on points sampled from surfaces
    dist, _ = cKDTree(dst, balanced_tree=False, compact_nodes=False).query(src, k=1, workers=-1)
    return float(np.mean(dist))


def visible_surface_chamfer(
    asset_a: MeshAsset, asset_b: MeshAsset, n_views: int = 24, resolution: int = 128, seed: int = 0
) -> float:
    """Symmetric visible-surface Chamfer distance, relative to the size of ``asset_b`` (the reference).

    Both meshes are seen from the same ``n_views`` cameras (:func:`sphere_cameras`, field of view 40°)
    around the bounding sphere of ``asset_b`` (centre ``c`` = centre of its bounding box), placed far enough
    that the sphere around ``c`` enclosing both meshes fits in every view. The visible points ``P_a``,
    ``P_b`` (:func:`visible_surface_points` at ``resolution``² pixels per view) give

        CD = ½ (mean_{p∈P_a} min_{q∈P_b} ‖p − q‖ + mean_{q∈P_b} min_{p∈P_a} ‖p − q‖)
             / diag(bbox(asset_b)).

    Only surfaces seen from outside count (hidden interior faces do not), and the value is invariant to a
    common similarity transform of both meshes. 0 for identical meshes; ``inf`` if either shows nothing.
    """
    vb = asset_b.vertices.double()
    lo, hi = vb.amin(0), vb.amax(0)
    center = (lo + hi) * 0.5
    diag = float((hi - lo).norm())
    va = asset_a.vertices.double()
    radius = max(float((vb - center).norm(dim=-1).max()), float((va - center).norm(dim=-1).max()))
    if not (diag > 0 and radius > 0 and math.isfinite(radius)):
        raise ValueError("visible_surface_chamfer needs meshes of non-zero, finite size")
    # work in a unit frame (p - c) / radius so the cameras' fixed near/far planes suit any units
    distance = _CHAMFER_MARGIN / math.sin(math.radians(CHAMFER_FOV_DEG) / 2)
    cameras = sphere_cameras(n_views, distance, seed)

    def points(asset: MeshAsset) -> np.ndarray:
        unit = MeshAsset(vertices=((asset.vertices.double() - center) / radius).float(), faces=asset.faces)
        return visible_surface_points(unit, cameras, resolution).double().numpy() * radius

    pa, pb = points(asset_a), points(asset_b)
    if len(pa) == 0 or len(pb) == 0:
        return math.inf
    return 0.5 * (_mean_nn_distance(pa, pb) + _mean_nn_distance(pb, pa)) / diag
