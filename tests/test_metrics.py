"""PSNR, silhouette IoU, visible surface points and the visible-surface Chamfer distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from dreamcore.cameras import orbit_cameras
from dreamcore.meshes.asset import MeshAsset
from dreamcore.metrics import psnr, silhouette_iou, sphere_cameras, visible_surface_chamfer, visible_surface_points


def _sphere(radius: float = 1.0, center=(0.0, 0.0, 0.0), subdivisions: int = 3) -> MeshAsset:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    verts = torch.tensor(mesh.vertices, dtype=torch.float32) + torch.tensor(center)
    return MeshAsset(verts, torch.tensor(mesh.faces))


def test_psnr_exact_values():
    a = torch.zeros(2, 4, 4, 3)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    b = a.clone()
    b[0, 0, 0, 0] = 1.0  # mse = 1 / 96
    assert psnr(a, b) == pytest.approx(10 * math.log10(96))
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError):
        psnr(a, a[0])


def test_silhouette_iou_exact_values():
    a = torch.zeros(1, 4, 4, 1)
    b = torch.zeros(1, 4, 4, 1)
    a[0, :2, :, 0] = 1.0  # rows 0-1: 8 pixels
    b[0, 1:3, :, 0] = 0.7  # rows 1-2: 8 pixels, overlap 4
    assert silhouette_iou(a, b) == pytest.approx(4 / 12)
    assert silhouette_iou(a, b, threshold=0.8) == 0.0
    assert silhouette_iou(a, a) == 1.0
    assert silhouette_iou(torch.zeros(3, 3), torch.zeros(3, 3)) == 1.0


def test_visible_surface_points_lie_on_the_visible_side():
    sphere = _sphere(radius=0.8, subdivisions=4)
    t = torch.tensor
    cams = orbit_cameras(t([0.0, 40.0]), t([0.0, 200.0]), t([3.0, 2.5]), t([40.0, 50.0]))
    points = visible_surface_points(sphere, cams, 48)
    assert points.shape[1] == 3 and len(points) > 1000
    r = points.norm(dim=-1)
    assert r.max() < 0.8 + 1e-4 and r.min() > 0.8 * 0.99  # on the (inscribed, faceted) sphere
    front = visible_surface_points(sphere, cams[:1], 48)
    assert (front[:, 2] > 0).all()  # camera at +Z sees the +Z hemisphere


def test_sphere_cameras_look_at_the_origin_and_depend_on_the_seed():
    cams = sphere_cameras(24, 3.0, seed=0)
    assert len(cams) == 24
    torch.testing.assert_close(cams.position.norm(dim=-1), torch.full((24,), 3.0))
    forward = -cams.c2w[:, :3, 2]
    torch.testing.assert_close((forward * cams.position).sum(-1), torch.full((24,), -3.0), atol=1e-5, rtol=0)
    assert not torch.allclose(cams.position, sphere_cameras(24, 3.0, seed=1).position)
    torch.testing.assert_close(cams.position, sphere_cameras(24, 3.0, seed=0).position)


def test_chamfer_of_a_mesh_with_itself_is_zero():
    sphere = _sphere(center=(5.0, -2.0, 1.0))
    assert visible_surface_chamfer(sphere, sphere, n_views=6, resolution=48) == 0.0


def test_chamfer_of_a_scaled_copy_matches_the_prediction():
    # concentric spheres of radii r and s·r: every visible point is |s − 1|·r from the other surface;
    # the bounding-box diagonal of the reference (radius r) is 2√3·r
    r, s = 2.0, 1.2
    center = (1.0, 0.5, -3.0)
    ref = _sphere(r, center, subdivisions=3)
    scaled = _sphere(r * s, center, subdivisions=3)
    predicted = abs(s - 1) / (2 * math.sqrt(3))
    value = visible_surface_chamfer(scaled, ref, n_views=8, resolution=48)
    assert value == pytest.approx(predicted, rel=0.05)
    # scale invariance: the same pair in other units gives the same value
    big_ref = MeshAsset(ref.vertices * 10, ref.faces)
    big_scaled = MeshAsset(scaled.vertices * 10, scaled.faces)
    assert visible_surface_chamfer(big_scaled, big_ref, n_views=8, resolution=48) == pytest.approx(value, rel=0.02)


def test_chamfer_grows_with_a_shift():
    ref = _sphere()
    near = visible_surface_chamfer(_sphere(center=(0.05, 0, 0)), ref, n_views=6, resolution=48)
    far = visible_surface_chamfer(_sphere(center=(0.3, 0, 0)), ref, n_views=6, resolution=48)
    assert 0 < near < far


def test_depth_error_is_the_mean_surface_distance_difference_where_both_cover():
    from dreamcore.metrics import depth_error

    alpha = torch.zeros(1, 4, 4, 1)
    alpha[0, :2] = 1.0
    alpha[0, 2, 0] = 0.5 + 1e-3  # a half-covered edge pixel: its alpha-weighted depth is divided back
    depth = alpha * 2.0
    other_alpha = torch.ones(1, 4, 4, 1)
    other_depth = torch.full((1, 4, 4, 1), 2.25)
    assert depth_error(depth, alpha, depth, alpha) == 0.0
    assert depth_error(depth, alpha, other_depth, other_alpha) == pytest.approx(0.25)
    assert math.isnan(depth_error(depth, alpha, other_depth, torch.zeros_like(other_alpha)))


def test_janus_score_is_zero_for_the_object_and_one_for_it_turned_around():
    from dreamcore.cameras import turntable_cameras
    from dreamcore.meshes.io import load_mesh, normalize
    from dreamcore.meshes.render import render_mesh
    from dreamcore.metrics import janus_score

    asset, _ = normalize(load_mesh("assets/robot.glb"))
    ring = turntable_cameras(8, 15.0, 3.2, 40.0, start_azimuth=22.5)
    opposite = turntable_cameras(8, 15.0, 3.2, 40.0, start_azimuth=202.5)

    def views(a, cams):
        return render_mesh(a, cams, 32, 32, background=torch.ones(len(cams), 3)).rgb

    own, opp = views(asset, ring), views(asset, opposite)
    assert janus_score(own, own, opp) == 0.0
    turned = MeshAsset(asset.vertices * torch.tensor([-1.0, 1.0, -1.0]), asset.faces, asset.uvs,
                       asset.vertex_colors, asset.face_material, asset.materials)  # 180° about +Y
    assert janus_score(views(turned, ring), own, opp) == 1.0
    # an object that shows its front from every side is caught on the back half of the ring
    front = views(asset, turntable_cameras(1, 15.0, 3.2, 40.0, start_azimuth=0.0)).expand(8, -1, -1, -1)
    assert janus_score(front, own, opp) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        janus_score(own, own, opp[:2])


def _box_asset(unmerge: bool = False):
    import trimesh

    from dreamcore.meshes.asset import MeshAsset

    box = trimesh.creation.box((1.0, 0.8, 0.6))
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    if unmerge:  # every face its own vertices, as files split along UV seams
        v, f = v[f].reshape(-1, 3), np.arange(len(f) * 3).reshape(-1, 3)
    return MeshAsset(vertices=torch.tensor(v, dtype=torch.float32), faces=torch.tensor(f, dtype=torch.int64))


def test_watertight_report_sees_holes_sheets_and_flipped_faces():
    from dreamcore.metrics import watertight_report

    closed = watertight_report(_box_asset().vertices, _box_asset().faces)
    assert closed == {"watertight": True, "boundary_edges": 0, "nonmanifold_edges": 0, "misoriented_edges": 0,
                      "components": 1}
    split = _box_asset(unmerge=True)
    assert watertight_report(split.vertices, split.faces)["watertight"]  # welded before counting
    holed = watertight_report(split.vertices, split.faces[1:])
    assert not holed["watertight"] and holed["boundary_edges"] == 3
    sheet_v = torch.cat([split.vertices, torch.tensor([[-.2, -.2, 0], [.2, -.2, 0], [.2, .2, 0], [-.2, .2, 0.]])])
    n = len(split.vertices)
    sheet_f = torch.cat([split.faces, torch.tensor([[n, n + 1, n + 2], [n, n + 2, n + 3]])])
    sheet = watertight_report(sheet_v, sheet_f)
    assert not sheet["watertight"] and sheet["boundary_edges"] == 4 and sheet["components"] == 2
    flipped = split.faces.clone()
    flipped[0] = flipped[0].flip(0)
    assert watertight_report(split.vertices, flipped)["misoriented_edges"] == 3


def test_surface_depth_error_is_the_median_ray_cast_offset():
    from dataclasses import replace

    from dreamcore.cameras import orbit_cameras
    from dreamcore.metrics import surface_depth_error

    box = _box_asset()
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    cams = orbit_cameras(one(0), one(0), one(3.0), one(40.0))  # looks along −Z at the +Z face
    assert surface_depth_error(box, box, cams, 64, 1.0) == (0.0, 0.0)
    pushed = replace(box, vertices=box.vertices + torch.tensor([0.0, 0.0, -0.05]))  # 5 cm further away
    med, over = surface_depth_error(pushed, box, cams, 64, scale=1.0)
    assert med == pytest.approx(0.05, rel=0.05) and over == 1.0
    med, over = surface_depth_error(pushed, box, cams, 64, scale=10.0)
    assert med == pytest.approx(0.005, rel=0.05) and over == 0.0
