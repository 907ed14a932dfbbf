"""Editing regions (dreamcore.meshes.region): soft masks over scene points from a box or a closed mesh given in
object coordinates, and the ``--region`` text that names them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import MeshAsset, SceneTransform
from dreamcore.meshes.region import (BakedRegion, BoxRegion, MeshRegion, closed_surface_problem, parse_region, smooth_mask,
                                     winding_number)


def _asset(mesh: trimesh.Trimesh) -> MeshAsset:
    return MeshAsset(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int64))


def _cube_file(path, lo, hi, split_vertices: bool = False):
    """A closed box mesh from ``lo`` to ``hi`` written to ``path`` (GLB or OBJ); with ``split_vertices`` every face
    has its own corners, as files split along UV seams."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    box = trimesh.creation.box(extents=hi - lo)
    box.apply_translation((lo + hi) / 2)
    if split_vertices:
        box = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(len(box.faces) * 3).reshape(-1, 3),
                              process=False)
    box.export(path)
    return path


def test_the_ramp_is_a_smoothstep_centred_on_the_boundary():
    d = torch.tensor([-1.0, -0.1, -0.05, 0.0, 0.05, 0.1, 1.0])
    m = smooth_mask(d, 0.2)
    assert m.tolist() == pytest.approx([1.0, 1.0, 0.84375, 0.5, 0.15625, 0.0, 0.0], abs=1e-6)
    assert smooth_mask(d, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # hard: inside is d ≤ 0


def test_box_distances_and_mask_at_known_points():
    box = BoxRegion((-1, -1, -1), (1, 1, 1), falloff=0.2)
    pts = torch.tensor([[0.0, 0, 0], [2, 0, 0], [2, 2, 2], [0.5, 0.9, 0], [1, 0, 0], [1.05, 0, 0], [0.95, 0, 0],
                        [1.2, 0, 0]])
    d = box.signed_distance(pts)
    assert d.tolist() == pytest.approx([-1.0, 1.0, math.sqrt(3), -0.1, 0.0, 0.05, -0.05, 0.2], abs=1e-6)
    assert box.mask(pts).tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0, 0.5, 0.15625, 0.84375, 0.0], abs=1e-6)
    hard = BoxRegion((-1, -1, -1), (1, 1, 1))
    assert hard.mask(pts).tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    lo, hi = box.bounds()
    assert lo.tolist() == pytest.approx([-1.1] * 3) and hi.tolist() == pytest.approx([1.1] * 3)


def test_a_box_is_given_in_object_coordinates_and_mapped_by_the_scene_transform():
    """p_scene = (p − center)·scale: a box in a shifted, scaled object frame lands where the asset does."""
    transform = SceneTransform(center=(1.0, 2.0, 3.0), scale=0.5)
    box = parse_region("box:0,0,0,2,2,2", transform, falloff=0.1)
    assert box.lo.tolist() == pytest.approx([-0.5, -1.0, -1.5]) and box.hi.tolist() == pytest.approx([0.5, 0.0, -0.5])
    obj = torch.tensor([[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 4.0]])
    scene = transform.to_scene(obj)
    assert box.signed_distance(scene).tolist() == pytest.approx([-0.5, 0.5, 0.0, 1.0], abs=1e-6)  # distances scale
    assert box.mask(scene).tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0], abs=1e-6)
    # the untransformed object points are elsewhere in the scene: (1, 1, 1) is outside the mapped box
    assert box.mask(obj[:1]).item() == 0.0


@pytest.mark.parametrize("n_points", [500, 6000])  # below and above the size where the inside grid is used
def test_a_closed_cube_mesh_is_the_same_region_as_the_box(tmp_path, n_points):
    transform = SceneTransform(center=(0.2, -0.1, 0.3), scale=0.8)
    lo, hi = (-0.3, -0.2, 0.1), (0.4, 0.3, 0.5)
    _cube_file(tmp_path / "part.glb", lo, hi)
    falloff = 0.1
    box = parse_region("box:" + ",".join(map(str, lo + hi)), transform, falloff)
    mesh = parse_region("mesh:part.glb", transform, falloff, base_dir=tmp_path)
    assert isinstance(mesh, MeshRegion) and isinstance(box, BoxRegion)
    g = torch.Generator().manual_seed(0)
    pts = transform.to_scene(torch.rand(n_points, 3, generator=g) * 1.4 - 0.5)  # around the box, in the scene
    d_box, d_mesh = box.signed_distance(pts), mesh.signed_distance(pts)
    assert torch.allclose(d_mesh, d_box, atol=1e-5)  # the distance to a box's surface is its exact SDF
    m_box, m_mesh = box.mask(pts), mesh.mask(pts)
    away = d_box.abs() > falloff / 2
    assert away.sum() > n_points // 2 and (~away).sum() > 10
    assert (m_mesh[away] - m_box[away]).abs().max() < 1e-5
    assert (m_mesh[~away] - m_box[~away]).abs().max() < 1e-4  # in the ramp: the same smoothstep of the same d
    hard = parse_region("mesh:part.glb", transform, 0.0, base_dir=tmp_path)
    assert torch.equal(hard.mask(pts)[d_box.abs() > 1e-4], (d_box <= 0).float()[d_box.abs() > 1e-4])


def test_seams_and_inward_faces_still_bound_a_volume(tmp_path):
    """Split vertices (UV seams) are welded for the closedness check; a mesh whose faces all point inwards has
    winding number −1 inside and is the same region."""
    path = _cube_file(tmp_path / "seams.obj", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), split_vertices=True)
    region = parse_region(f"mesh:{path}", SceneTransform())
    box = trimesh.creation.box(extents=(1, 1, 1))
    inward = trimesh.Trimesh(box.vertices, box.faces[:, ::-1].copy(), process=False)
    flipped = MeshRegion(_asset(inward))
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.3, 0.2], [0.6, 0.0, 0.0], [2.0, 2.0, 2.0]])
    assert region.mask(pts).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert flipped.mask(pts).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert winding_number(pts[:1], flipped.triangles).item() == pytest.approx(-1.0, abs=1e-9)


def test_a_non_convex_mesh_inside_agrees_with_the_winding_number_everywhere():
    """A torus (genus 1, non-convex): the voxel-grid shortcut of the inside test gives exactly what the winding
    number gives point by point, and both match the analytic torus away from its faceted surface."""
    torus = trimesh.creation.torus(major_radius=0.5, minor_radius=0.2, major_sections=24, minor_sections=12)
    region = MeshRegion(_asset(torus), falloff=0.05)
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(8000, 3, generator=g) * 1.6 - 0.8
    pts[:, 2] *= 0.4
    fast = region.inside(pts)
    slow = winding_number(pts, region.triangles).abs() >= 0.5
    assert torch.equal(fast, slow)
    ring = (pts[:, :2].norm(dim=-1) - 0.5).hypot(pts[:, 2]) - 0.2  # analytic torus SDF
    clear = ring.abs() > 0.02  # the 24×12 facets lie within ~0.015 of the smooth torus
    assert torch.equal(fast[clear], (ring < 0)[clear]) and fast.sum() > 100
    # the ramp needs the distance only within half the falloff; there it is the exact one
    near = region.signed_distance(pts[:300])
    clipped = region.signed_distance(pts[:300], band=0.025)
    assert torch.allclose(clipped, near.clamp(-0.025, 0.025), atol=1e-6)


def test_a_mesh_with_a_hole_or_a_flipped_face_is_refused(tmp_path):
    box = trimesh.creation.box(extents=(1, 1, 1))
    holed = trimesh.Trimesh(box.vertices, box.faces[:-1], process=False)
    holed.export(tmp_path / "holed.glb")
    with pytest.raises(DreamcoreError, match=r"holed\.glb.*not a closed.*\(3 edges on a hole or border\)"):
        parse_region("mesh:holed.glb", SceneTransform(), base_dir=tmp_path)
    faces = box.faces.copy()
    faces[0] = faces[0][::-1].copy()
    problem = closed_surface_problem(torch.tensor(box.vertices), torch.tensor(faces))
    assert problem is not None and "opposite orientation" in problem
    assert closed_surface_problem(torch.tensor(box.vertices), torch.tensor(box.faces)) is None


@pytest.mark.parametrize("spec, message", [
    ("box:1,2,3", "six comma-separated numbers.*got 3"),
    ("box:0,0,0,1,1,1,1", "six comma-separated numbers.*got 7"),
    ("box:0,0,0,1,x,1", "y1 = 'x' is not a number"),
    ("box:0,0,0,1,nan,1", "y1 = 'nan' is not a finite number"),
    ("box:0,0,0,1,inf,1", "not a finite number"),
    ("box:1,0,0,0,1,1", "x0 = 1 is not below x1 = 0"),
    ("box:0,0,2,1,1,2", "z0 = 2 is not below z1 = 2"),
    ("sphere:0,0,0,1", "unknown region; use box:x0,y0,z0,x1,y1,z1"),
    ("0,0,0,1,1,1", "unknown region"),
    ("mesh:", "no mesh file after 'mesh:'"),
    ("mesh:missing.glb", "no such mesh file"),
    ("mesh:junk.glb", "junk.glb"),
    ("mesh:notes.txt", "unsupported format"),
])
def test_bad_specs_are_refused_naming_the_problem(tmp_path, spec, message):
    (tmp_path / "junk.glb").write_bytes(b"this is not a mesh at all")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DreamcoreError, match=message) as info:
        parse_region(spec, SceneTransform(), base_dir=tmp_path)
    assert repr(spec) in str(info.value)


def test_no_spec_is_the_whole_asset_and_a_negative_falloff_is_refused():
    assert parse_region("", SceneTransform()) is None
    assert parse_region("   ", SceneTransform()) is None
    assert parse_region(None, SceneTransform()) is None
    with pytest.raises(DreamcoreError, match="falloff"):
        parse_region("box:0,0,0,1,1,1", SceneTransform(), falloff=-0.1)
    with pytest.raises(DreamcoreError, match="falloff"):
        parse_region("box:0,0,0,1,1,1", SceneTransform(), falloff=float("nan"))


def test_a_baked_mesh_region_is_the_exact_mask_to_within_one_cells_change(tmp_path):
    """BakedRegion (what an edit evaluates at every sample): 0 outside the bounds exactly, 1 deep inside, and
    within the mask's change across one cell of the exact mask elsewhere (smoothstep slope ≤ 1.5/falloff)."""
    lo, hi = (-0.3, -0.2, 0.1), (0.4, 0.3, 0.5)
    _cube_file(tmp_path / "part.glb", lo, hi)
    falloff, resolution = 0.1, 40
    exact = parse_region("mesh:part.glb", SceneTransform(), falloff, base_dir=tmp_path)
    baked = BakedRegion(exact, resolution)
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(6000, 3, generator=g) * 1.4 - 0.6
    m_exact, m_baked = exact.mask(pts), baked.mask(pts)
    b_lo, b_hi = exact.bounds()
    outside = ~((pts >= b_lo) & (pts <= b_hi)).all(-1)
    assert outside.sum() > 1000 and float(m_baked[outside].abs().max()) == 0.0
    d = exact.signed_distance(pts)
    cell = float((b_hi - b_lo).max()) / resolution
    deep = d < -(falloff / 2 + 2 * cell)
    assert deep.sum() > 50 and float((1 - m_baked[deep]).max()) < 1e-6
    bound = 1.5 / falloff * cell * math.sqrt(3)
    assert float((m_exact - m_baked).abs().max()) <= bound
    assert torch.equal(baked.signed_distance(pts[:50]), exact.signed_distance(pts[:50]))
    with pytest.raises(DreamcoreError, match="at least 2 cells"):
        BakedRegion(exact, 1)
