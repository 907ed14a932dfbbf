"""After optimization: extract and write the asset, then score held-out views against the reference."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from dreamcore.cameras import sample_orbit, turntable_cameras
from dreamcore.config import Config
from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path
from dreamcore.meshes.io import check_mesh_file, load_mesh, normalize
from dreamcore.meshes.render import render_mesh
from dreamcore.metrics import (depth_error, janus_score, psnr, silhouette_iou, surface_depth_error,
                               visible_surface_chamfer, watertight_report)


def export_run(system, cfg: Config, run_dir: Path) -> dict:
    """Write model.glb / model.obj+mtl+png / turntable into ``run_dir``; returns paths and timings."""
    from dreamcore.export import export_textured_mesh
    from dreamcore.export.extract import mesh_from_grid, sample_grid, taubin_smooth
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
    bound = system.representation.bound
    grid = sample_grid(system.density, e.resolution, bound)
    options = dict(fill_cavities=e.fill_cavities, keep_components=e.keep_components,
                   min_component_ratio=e.min_component_ratio, target_faces=e.target_faces)
    if e.isosurface_search:
        level, search, (verts, faces) = match_isosurface(system, cfg, grid, bound, options)
    else:
        level, search = e.isosurface, {}
        verts, faces = mesh_from_grid(grid, level, bound, **options)
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
        "isosurface": level,
        **({"isosurface_silhouette_iou": search} if search else {}),
        "extract_seconds": round(t1 - t0, 2),
        "write_seconds": round(t2 - t1, 2),
    }


@torch.no_grad()
def match_isosurface(system, cfg: Config, grid, bound: float, options: dict) -> tuple[float, dict, tuple]:
    """``export.isosurface_search``: the level whose mesh's silhouettes agree best (IoU) with the field's own
    renders (alpha > ½) at ``export.isosurface_views`` views of the run's camera ranges (their own seed, not the
    held-out views), each level's IoU, and that level's mesh (verts, faces)."""
    from dreamcore.export.extract import best_isosurface
    from dreamcore.meshes.asset import MeshAsset

    e, cam, r = cfg.export, cfg.camera, 64
    cams = sample_orbit(e.isosurface_views, torch.Generator().manual_seed(2024), cam.elevation_range,
                        (-180.0, 180.0), cam.distance_range, cam.fov_range)
    device = next(system.representation.parameters()).device
    field_alpha = system.render_views(cams.to(device), r, r, torch.ones(len(cams), 3, device=device)).alpha.cpu()

    def agreement(verts, faces) -> float:
        mesh = MeshAsset(torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces, dtype=torch.int64))
        return silhouette_iou(render_mesh(mesh, cams, r, r, supersample=2).alpha, field_alpha)

    level, scores, mesh = best_isosurface(grid, e.isosurface_search, bound, agreement, **options)
    return level, {str(k): round(v, 4) for k, v in scores.items()}, mesh


def scoring_targets(system, cfg: Config) -> list:
    """The objects held-out views are scored against, in the scene frame: ``eval.mesh`` (normalized like the
    reference prior's mesh), else the reference prior's mesh and its extra objects; [] when there is none."""
    if cfg.eval.mesh:
        return [normalize(load_mesh(resolve_path(cfg.eval.mesh)), cfg.eval.radius)[0]]
    prior = system.prior
    if not hasattr(prior, "reference_views"):
        return []
    return [prior.asset] + list(getattr(prior, "extra_assets", []))


def check_scoring_target(cfg: Config) -> None:
    """Fail before any work when ``eval.mesh`` names no usable mesh file (it is only scored after the run)."""
    if not cfg.eval.mesh:
        return
    if not resolve_path(cfg.eval.mesh).is_file():
        raise DreamcoreError(f"eval.mesh={cfg.eval.mesh!r}: no such file (the mesh the run is scored against)")
    check_mesh_file(resolve_path(cfg.eval.mesh))  # a malformed file fails now; nothing of it is kept


@torch.no_grad()
def evaluate_run(system, cfg: Config, run_dir: Path, score_glb: bool = True) -> dict:
    """Held-out views (a seed of their own) scored against the target object (:func:`scoring_targets`): PSNR and
    silhouette IoU of the optimized scene and of the exported GLB as written to disk, and for the GLB its depth
    error and visible-surface Chamfer distance (fractions of the target's bounding-box diagonal) and its Janus
    score on a ring of azimuths (:func:`dreamcore.metrics.janus_score`); ``score_glb`` False skips the GLB (a
    refinement stage writes it)."""
    targets = scoring_targets(system, cfg)
    if not targets:
        return {}
    ev, cam = cfg.eval, cfg.camera
    g = torch.Generator().manual_seed(ev.seed)
    cams = sample_orbit(ev.views, g, ev.elevation_range, (-180.0, 180.0), cam.distance_range, cam.fov_range)
    r = ev.resolution
    white = torch.ones(len(cams), 3)
    gts = [render_mesh(t, cams, r, r, supersample=2, background=white) for t in targets]
    device = next(system.representation.parameters()).device
    out = system.render_views(cams.to(device), r, r, white.to(device))
    metrics = {
        "views": ev.views,
        "resolution": r,
        "scene_psnr": round(psnr(out.rgb.cpu(), gts[0].rgb), 3),
        "scene_iou": round(silhouette_iou(out.alpha.cpu(), gts[0].alpha), 4),
    }
    for gt in gts[1:]:  # multi-object references: the scene vs each object
        metrics.setdefault("scene_psnr_objects", [metrics["scene_psnr"]]).append(round(psnr(out.rgb.cpu(), gt.rgb), 3))
        metrics.setdefault("scene_iou_objects", [metrics["scene_iou"]]).append(
            round(silhouette_iou(out.alpha.cpu(), gt.alpha), 4))
    glb = run_dir / "model.glb"
    if score_glb and glb.is_file():
        target = targets[0]
        in_scene = _to_scene(load_mesh(glb), system.scene_transform)
        m = render_mesh(in_scene, cams, r, r, supersample=2, background=white)
        metrics["glb_psnr"] = round(psnr(m.rgb, gts[0].rgb), 3)
        metrics["glb_iou"] = round(silhouette_iou(m.alpha, gts[0].alpha), 4)
        lo, hi = target.vertices.amin(0), target.vertices.amax(0)
        diag = float((hi - lo).norm())
        depth = depth_error(m.depth, m.alpha, gts[0].depth, gts[0].alpha) / diag
        metrics["glb_depth_rel"] = None if math.isnan(depth) else round(depth, 5)  # None: no overlap at all
        med, over = surface_depth_error(in_scene, target, cams, ev.depth_resolution, diag)
        metrics["glb_depth_err_rel"] = None if math.isnan(med) else round(med, 5)
        metrics["glb_depth_over_2pct"] = None if math.isnan(over) else round(over, 4)
        closed = watertight_report(in_scene.vertices, in_scene.faces)
        metrics["glb_watertight"] = closed["watertight"]
        metrics["glb_open_edges"] = closed["boundary_edges"] + closed["nonmanifold_edges"]
        metrics["glb_chamfer_rel"] = round(float(visible_surface_chamfer(in_scene, target)), 5)
        ring = turntable_cameras(ev.janus_views, ev.janus_elevation, sum(cam.distance_range) / 2,
                                 sum(cam.fov_range) / 2, start_azimuth=180.0 / ev.janus_views)
        opposite = turntable_cameras(ev.janus_views, ev.janus_elevation, sum(cam.distance_range) / 2,
                                     sum(cam.fov_range) / 2, start_azimuth=180.0 / ev.janus_views + 180.0)
        white_ring = torch.ones(len(ring), 3)
        views = [render_mesh(a, c, r, r, supersample=2, background=white_ring).rgb
                 for a, c in ((in_scene, ring), (target, ring), (target, opposite))]
        metrics["glb_janus"] = round(janus_score(*views), 4)
    return metrics


def _to_scene(asset, transform):
    from dataclasses import replace

    return replace(asset, vertices=transform.to_scene(asset.vertices))
