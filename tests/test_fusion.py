"""export.surface: depth — the surface fused from the scene's rendered depth (dreamcore.export.fusion): exact on an
analytic sphere, views spread over the sphere, and a Gaussians run exported through it."""

import json
import math

import numpy as np
import pytest
import torch

from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.export import field_mesh
from dreamcore.export.extract import grid_coordinates, mesh_from_grid
from dreamcore.export.fusion import fuse_depth, sphere_views
from dreamcore.runner.generate import generate
from test_gaussians import GTINY

CENTRE = torch.tensor([0.15, -0.1, 0.05])
RADIUS = 0.5


def sphere_render(cameras, res):
    """Exact renders of an opaque ball: alpha 1 where a pixel's ray meets it, depth the ray distance to it."""
    o, d = cameras.rays(res, res)
    oc = o - CENTRE
    b = (oc * d).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + RADIUS**2
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    return hit.float(), torch.where(hit, t, torch.zeros_like(t))


def test_sphere_views_spread_over_the_sphere_and_look_at_the_origin():
    cams = sphere_views(64, 3.2, 40.0)
    pos = cams.position
    assert torch.allclose(pos.norm(dim=-1), torch.full((64,), 3.2), atol=1e-5)
    unit = pos / 3.2
    assert unit.mean(0).norm() < 0.05  # balanced: as much below as above, all around
    assert unit[:, 1].min() < -0.9 and unit[:, 1].max() > 0.9  # from below and from above
    forward = -cams.c2w[:, :3, 2]  # OpenGL cameras look down −z
    assert torch.allclose(forward, -unit, atol=1e-5)


def test_fusion_of_an_exact_sphere_puts_its_surface_at_the_radius():
    n, bound = 64, 1.0
    cell = 2 * bound / (n - 1)
    grid = fuse_depth(sphere_render, sphere_views(32, 3.2, 40.0), 96, n, bound, 4 * cell)
    axis = grid_coordinates(n, bound)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    dist = np.sqrt((x - 0.15) ** 2 + (y + 0.1) ** 2 + (z - 0.05) ** 2)
    # positive inside, negative outside (projective distances: their zero, not their size, is the surface)
    assert (grid[dist < RADIUS - 2 * cell] > 0).all() and (grid[dist > RADIUS + 2 * cell] < 0).all()
    verts, faces = mesh_from_grid(grid, 0.0, bound)
    r = np.linalg.norm(verts - CENTRE.numpy(), axis=1)
    assert np.abs(r - RADIUS).max() < 0.5 * cell and len(faces) > 1000


def test_a_hole_in_one_view_does_not_carve_the_surface_seen_by_the_others():
    """A view whose render misses part of the object (a speckled splat render) is outvoted by the views that see
    it: the fused surface stays within a cell of the truth there."""
    n, bound = 48, 1.0
    cell = 2 * bound / (n - 1)
    views = sphere_views(24, 3.2, 40.0)

    def speckled(cameras, res):
        a, d = sphere_render(cameras, res)
        if torch.allclose(cameras.c2w, views.c2w[5:6]):
            a[..., res // 2 - 4:res // 2 + 4, res // 2 - 4:res // 2 + 4] = 0.0  # a hole in the middle of view 5
        return a, d

    verts, _ = mesh_from_grid(fuse_depth(speckled, views, 64, n, bound, 6 * cell), 0.0, bound)
    r = np.linalg.norm(verts - CENTRE.numpy(), axis=1)
    assert np.abs(r - RADIUS).max() < 1.0 * cell


def test_depth_surface_needs_a_system_that_renders():
    cfg = load_config(config_path("reference-gaussians"), ["export.surface=depth"])
    with pytest.raises(DreamcoreError, match="export.surface=depth"):
        field_mesh(lambda p: p[:, 0], lambda p, n: p, 1.0, cfg.export)


def test_gaussians_run_exports_the_fused_surface(tmp_path):
    run = tmp_path / "g"
    cfg = load_config(config_path("reference-gaussians"), GTINY + [
        f"run.dir={run}", "refine.config=", "export.formats=[glb]", "export.resolution=48", "export.texture_size=64",
        "export.surface=depth", "export.fusion_views=12", "representation.init_opacity=0.95",
        "system.densify.opacity_reset_every=0"])
    generate(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["export"]["surface"] == "depth" and metrics["export"]["fusion_views"] == 12
    assert (run / "model.glb").stat().st_size > 1000 and metrics["glb_watertight"]
    assert math.isfinite(metrics["glb_iou"])
    faint = load_config(config_path("reference-gaussians"), GTINY + [
        f"run.dir={tmp_path / 'faint'}", "refine.config=", "export.formats=[glb]", "export.surface=depth",
        "representation.init_opacity=0.001", "run.steps=1"])
    with pytest.raises(DreamcoreError, match="renders nothing opaque"):
        generate(faint)
    bad = load_config(config_path("reference-gaussians"), GTINY + [
        f"run.dir={tmp_path / 'bad'}", "refine.config=", "export.formats=[glb]", "export.surface=depth",
        "export.fusion_views=0"])
    with pytest.raises(DreamcoreError, match="fusion_views=0"):
        generate(bad)


def test_a_dmtet_stage_starts_from_the_gaussians_fused_depth(tmp_path):
    """reference-gaussians' refinement stage with representation.init_surface=depth: its SDF comes from the
    Gaussians' rendered depth (no density is read), through the runner's two-stage command."""
    from test_refine import DMTET_TINY

    run = tmp_path / "two"
    overrides = DMTET_TINY[:-1] + ",representation.init_surface=depth]"
    cfg = load_config(config_path("reference-gaussians"), GTINY + [
        f"run.dir={run}", "run.steps=4", "export.formats=[ply,glb]", "export.resolution=48",
        "export.fusion_views=12", "representation.init_opacity=0.95", "system.densify.opacity_reset_every=0",
        f"refine.overrides={overrides}"])
    generate(cfg)
    stage = json.loads((run / "refine" / "metrics.json").read_text())
    assert stage["export"]["init"]["init_surface"] == "depth" and stage["export"]["init"]["faces"] > 0
    assert (run / "model.glb").read_bytes() == (run / "refine" / "model.glb").read_bytes()
