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
from dreamcore.system import System
from dreamcore.metrics import (depth_error, janus_score, psnr, silhouette_iou, surface_depth_error,
                               visible_surface_chamfer, watertight_report)


def export_run(system: System, cfg: Config, run_dir: Path) -> dict:
    """Write every format of ``cfg.export.formats`` (model.glb, model.obj+mtl+png, model.ply, turntable) into
    ``run_dir`` from the system's :meth:`~dreamcore.system.System.export_source`; returns the paths, how the mesh
    was made (when a format asked for one) and the timings."""
    from dreamcore.export.exporters import write_formats

    t0 = time.perf_counter()
    source = system.export_source(cfg.export)
    paths = write_formats(run_dir, source, cfg.export.formats)
    report = dict(source.report)
    if not report:  # no mesh was made (model.ply only)
        return {"files": {k: str(v) for k, v in paths.items()}}
    extract = report.get("extract_seconds", 0.0)
    return {"files": {k: str(v) for k, v in paths.items()}, **report,
            "write_seconds": round(time.perf_counter() - t0 - extract, 2)}


def scoring_targets(system: System, cfg: Config) -> list:
    """The objects held-out views are scored against, in the scene frame, the one scored first: ``eval.mesh``
    (normalized like the reference prior's mesh), else the reference prior's objects with the one the run's
    prompt names first (:meth:`~dreamcore.priors.base.Prior.reference_object`: its mesh, or its entry of
    ``prior.reference.meshes``), the others after it in their order; [] when there is none."""
    if cfg.eval.mesh:
        return [normalize(load_mesh(resolve_path(cfg.eval.mesh)), cfg.eval.radius)[0]]
    assets = list(system.prior.reference_assets())
    if not assets:
        return []
    first = system.prior.reference_object(cfg.prompt)
    return [assets[first]] + [a for i, a in enumerate(assets) if i != first]


def check_scoring_target(cfg: Config) -> None:
    """Fail before any work when ``eval.mesh`` names no usable mesh file (it is only scored after the run)."""
    if not cfg.eval.mesh:
        return
    if not resolve_path(cfg.eval.mesh).is_file():
        raise DreamcoreError(f"eval.mesh={cfg.eval.mesh!r}: no such file (the mesh the run is scored against)")
    check_mesh_file(resolve_path(cfg.eval.mesh))  # a malformed file fails now; nothing of it is kept


@torch.no_grad()
def evaluate_run(system: System, cfg: Config, run_dir: Path, score_glb: bool = True) -> dict:
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
        if ev.align == "bbox":  # into the target's frame: as eval.mesh itself was normalized
            in_scene, moved = normalize(in_scene, ev.radius)
            metrics["glb_align"] = {"center": [round(v, 5) for v in moved.center], "scale": round(moved.scale, 5)}
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


@torch.no_grad()
def reference_fit(system: System, cfg: Config) -> dict:
    """Image-to-3D: how well the scene reproduces its picture at the picture's own camera (``image``), over
    white at the render resolution — ``ref_psnr`` and the silhouette IoU ``ref_iou``; {} without a picture."""
    if not cfg.image.path:
        return {}
    from dreamcore.reference_image import load_reference
    from dreamcore.runner.rundir import follow_reference

    if cfg.run.dir:
        follow_reference(cfg, Path(cfg.run.dir))
    c = cfg.camera
    ref = load_reference(cfg.image, c.resolution, c.distance_range, c.fov_range)
    device = next(system.representation.parameters()).device
    white = torch.ones(1, 3)
    out = system.render_views(ref.camera.to(device), ref.resolution, ref.resolution, white.to(device))
    return {"ref_psnr": round(psnr(out.rgb.float().cpu(), ref.over(white)), 3),
            "ref_iou": round(silhouette_iou(out.alpha.float().cpu(), ref.alpha), 4)}


def _to_scene(asset, transform):
    from dataclasses import replace

    return replace(asset, vertices=transform.to_scene(asset.vertices))
