"""After optimization: extract and write the asset, then score held-out views against the reference."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dreamcore.cameras import sample_orbit
from dreamcore.config import Config


def export_run(system, cfg: Config, run_dir: Path) -> dict:
    """Write model.glb / model.obj+mtl+png / turntable into ``run_dir``; returns paths and timings."""
    from dreamcore.export import export_textured_mesh
    from dreamcore.export.extract import extract_mesh, taubin_smooth
    from dreamcore.registry import lookup

    own_export = getattr(system, "export_mesh", None)
    if own_export is not None:  # surface representations write themselves (no marching cubes)
        return own_export(run_dir, cfg)
    e = cfg.export
    t0 = time.perf_counter()
    # exporters that write the representation itself (Gaussians' model.ply) need no mesh
    direct = [n for n in e.formats if not getattr(lookup("exporter", n), "needs_mesh", True)]
    files = {}
    for name in direct:
        files.update(lookup("exporter", name)().write_system(run_dir, system, system.scene_transform))
    formats = tuple(n for n in e.formats if n not in direct)
    if not formats:
        return {"files": {k: str(v) for k, v in files.items()}}
    field = system.representation
    verts, faces = extract_mesh(
        system.density, resolution=e.resolution, bound=field.bound, isosurface=e.isosurface,
        fill_cavities=e.fill_cavities, keep_components=e.keep_components,
        min_component_ratio=e.min_component_ratio, target_faces=e.target_faces,
    )
    verts = taubin_smooth(verts, faces, e.smooth_iterations)
    t1 = time.perf_counter()
    paths = export_textured_mesh(
        run_dir, verts, faces, system.surface_color, system.scene_transform, formats=formats,
        texture_size=e.texture_size, turntable_frames=e.turntable_frames,
        turntable_resolution=e.turntable_resolution, turntable_format=e.turntable_format,
    )
    t2 = time.perf_counter()
    return {
        "files": {k: str(v) for k, v in {**files, **paths}.items()},
        "faces": int(len(faces)),
        "vertices": int(len(verts)),
        "extract_seconds": round(t1 - t0, 2),
        "write_seconds": round(t2 - t1, 2),
    }


@torch.no_grad()
def evaluate_run(system, cfg: Config, run_dir: Path, score_glb: bool = True) -> dict:
    """Held-out views (a seed of their own) scored against the reference prior's renders: PSNR and silhouette
    IoU of the optimized scene and of the exported GLB as written to disk, and the GLB's visible-surface
    Chamfer distance to the reference mesh (fraction of the reference's bounding-box diagonal); ``score_glb``
    False skips the GLB (a refinement stage writes it)."""
    from dreamcore.meshes.io import load_mesh
    from dreamcore.meshes.render import render_mesh
    from dreamcore.metrics import psnr, silhouette_iou, visible_surface_chamfer

    prior = system.prior
    if not hasattr(prior, "reference_views"):
        return {}
    ev, cam = cfg.eval, cfg.camera
    g = torch.Generator().manual_seed(ev.seed)
    cams = sample_orbit(ev.views, g, ev.elevation_range, (-180.0, 180.0), cam.distance_range, cam.fov_range)
    r = ev.resolution
    white = torch.ones(len(cams), 3)
    gt_rgb, gt_alpha = prior.reference_views(cams, r, r, white)
    device = next(system.representation.parameters()).device
    out = system.render_views(cams.to(device), r, r, white.to(device))
    metrics = {
        "views": ev.views,
        "resolution": r,
        "scene_psnr": round(psnr(out.rgb.cpu(), gt_rgb), 3),
        "scene_iou": round(silhouette_iou(out.alpha.cpu(), gt_alpha), 4),
    }
    for obj in range(1, getattr(prior, "num_objects", 1)):  # multi-object references: the scene vs each object
        rgb_k, alpha_k = prior.reference_views(cams, r, r, white, obj=obj)
        metrics.setdefault("scene_psnr_objects", [metrics["scene_psnr"]]).append(round(psnr(out.rgb.cpu(), rgb_k), 3))
        metrics.setdefault("scene_iou_objects", [metrics["scene_iou"]]).append(
            round(silhouette_iou(out.alpha.cpu(), alpha_k), 4))
    glb = run_dir / "model.glb"
    if score_glb and glb.is_file():
        exported = load_mesh(glb)
        in_scene = _to_scene(exported, system.scene_transform)
        m = render_mesh(in_scene, cams, r, r, supersample=2, background=white)
        metrics["glb_psnr"] = round(psnr(m.rgb, gt_rgb), 3)
        metrics["glb_iou"] = round(silhouette_iou(m.alpha, gt_alpha), 4)
        reference = load_mesh(prior.mesh_path)
        metrics["glb_chamfer_rel"] = round(float(visible_surface_chamfer(exported, reference)), 5)
    return metrics


def _to_scene(asset, transform):
    from dataclasses import replace

    return replace(asset, vertices=transform.to_scene(asset.vertices))
