"""Reference rasterizer: coverage, depth, perspective-correct barycentrics, visibility, clipping, textures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from dreamcore.cameras import orbit_cameras
from dreamcore.meshes import raster
from dreamcore.meshes.raster import Fragments, interpolate, rasterize, sample_texture


def _pixel_ndc(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC x, y of every pixel centre, each [H, W]."""
    j = np.arange(width) + 0.5
    i = np.arange(height) + 0.5
    x = 2.0 * j / width - 1.0
    y = 1.0 - 2.0 * i / height
    return np.broadcast_to(x[None, :], (height, width)), np.broadcast_to(y[:, None], (height, width))


def _inside_2d(tri: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Analytic point-in-triangle test for a 2D triangle [3, 2] (either winding)."""

    def edge(a, b):
        return (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])

    e = np.stack([edge(tri[0], tri[1]), edge(tri[1], tri[2]), edge(tri[2], tri[0])])
    return (e >= 0).all(0) | (e <= 0).all(0)


def _clip(points: torch.Tensor, cameras, height: int, width: int) -> torch.Tensor:
    """World points [V, 3] -> clip coordinates [B, V, 4]."""
    homo = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)
    return homo @ cameras.world_to_clip(height, width).transpose(1, 2)


def _camera(azimuth: float = 0.0, elevation: float = 0.0, distance: float = 3.0, fov: float = 40.0):
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(one(elevation), one(azimuth), one(distance), one(fov))


def test_single_triangle_coverage_matches_analytic_2d():
    tri = np.array([[-0.83, -0.71], [0.77, -0.37], [-0.11, 0.89]])
    h, w = 37, 53
    clip = torch.tensor([[[x, y, 0.3, 1.0] for x, y in tri]], dtype=torch.float32)
    frags = rasterize(clip, torch.tensor([[0, 1, 2]]), h, w)
    x, y = _pixel_ndc(h, w)
    expected = _inside_2d(tri, x, y)
    assert expected.sum() > 300
    np.testing.assert_array_equal((frags.face_id[0] == 0).numpy(), expected)
    assert (frags.face_id[0][~torch.from_numpy(expected)] == -1).all()
    # w = 1 everywhere: depth is 1 on the triangle, 0 elsewhere; barycentrics are affine and sum to 1
    np.testing.assert_allclose(frags.depth[0].numpy(), expected.astype(np.float32))
    bary = frags.bary[0][torch.from_numpy(expected)]
    torch.testing.assert_close(bary.sum(-1), torch.ones(len(bary)))
    assert (frags.bary[0][~torch.from_numpy(expected)] == 0).all()


def test_known_pixels_of_a_corner_triangle():
    # lower-left half of the image; the diagonal passes exactly through pixel centres (0,0), (1,1), ...
    clip = torch.tensor([[[-1, -1, 0, 1], [1, -1, 0, 1], [-1, 1, 0, 1.0]]])
    frags = rasterize(clip, torch.tensor([[0, 1, 2]]), 4, 4)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(frags.face_id[0] == 0, expected)
    # pixel (3, 0): NDC (-0.75, -0.75) = 0.75 v0 + 0.125 v1 + 0.125 v2
    torch.testing.assert_close(frags.bary[0, 3, 0], torch.tensor([0.75, 0.125, 0.125]))


def test_uv_space_rasterization_for_baking():
    # 2D use: clip = (2u - 1, 1 - 2v, 0, 1); triangle covering the top-left half of the UV square
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    clip = torch.cat([2 * uv[:, :1] - 1, 1 - 2 * uv[:, 1:], torch.zeros(3, 1), torch.ones(3, 1)], dim=1)[None]
    frags = rasterize(clip, torch.tensor([[0, 1, 2]]), 8, 8)
    assert frags.face_id[0, 0, 0] == 0 and frags.face_id[0, 7, 7] == -1
    uv_img = interpolate(uv, torch.tensor([[0, 1, 2]]), frags)
    # the interpolated UV at a covered texel is the texel centre
    torch.testing.assert_close(uv_img[0, 1, 2], torch.tensor([2.5 / 8, 1.5 / 8]))


def test_perspective_correct_barycentrics_and_depth():
    cams = _camera(azimuth=25.0, elevation=15.0)
    verts = torch.tensor([[-0.9, -0.6, -0.8], [0.9, -0.3, 0.7], [-0.2, 0.8, 0.1]])
    faces = torch.tensor([[0, 1, 2]])
    h = w = 48
    frags = rasterize(_clip(verts, cams, h, w), faces, h, w)
    mask = frags.face_id[0] >= 0
    assert mask.sum() > 200
    torch.testing.assert_close(frags.bary[0][mask].sum(-1), torch.ones(int(mask.sum())))
    # the barycentric-interpolated 3D point projects back onto its pixel centre ...
    points = interpolate(verts, faces, frags)[0][mask]  # [K, 3]
    ndc = _clip(points, cams, h, w)[0]
    ndc = ndc[:, :2] / ndc[:, 3:]
    x, y = _pixel_ndc(h, w)
    expected = torch.from_numpy(np.stack([x, y], -1)[mask.numpy()]).float()
    torch.testing.assert_close(ndc, expected, atol=1e-4, rtol=0)
    # ... and the depth is its distance along the view axis
    w2c = torch.linalg.inv(cams.c2w[0])
    cam_z = (points @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
    torch.testing.assert_close(frags.depth[0][mask], -cam_z, atol=1e-4, rtol=0)


def test_nearest_triangle_wins_regardless_of_order():
    cams = _camera()
    near = torch.tensor([[-0.5, -0.5, 0.2], [0.5, -0.5, 0.2], [0.0, 0.5, 0.2]])
    far = torch.tensor([[-0.8, -0.8, -0.2], [0.8, -0.8, -0.2], [0.0, 0.8, -0.2]])
    verts = torch.cat([near, far])
    for faces, near_id in [(torch.tensor([[0, 1, 2], [3, 4, 5]]), 0), (torch.tensor([[3, 4, 5], [0, 1, 2]]), 1)]:
        frags = rasterize(_clip(verts, cams, 32, 32), faces, 32, 32)
        assert frags.face_id[0, 16, 16] == near_id  # centre: both cover it
        assert frags.face_id[0, 26, 6] == 1 - near_id  # lower-left: only the far one
        assert frags.depth[0, 16, 16] == pytest.approx(2.8, abs=1e-4)
        assert frags.depth[0, 26, 6] == pytest.approx(3.2, abs=1e-4)


def test_exact_depth_ties_go_to_the_lower_face_index_and_both_windings_draw():
    clip = torch.tensor([[[-1, -1, 0, 1], [1, -1, 0, 1], [-1, 1, 0, 1], [1, 1, 0, 1.0]]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 1, 2]])  # face 0 and 2: same triangle, other winding
    frags = rasterize(clip, faces, 16, 16)
    assert frags.face_id[0, 15, 0] == 0
    assert frags.face_id[0, 8, 14] == 1


def test_cube_silhouette_area_matches_projected_hull():
    cube = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=torch.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    res = 128
    for az, el in [(0.0, 0.0), (30.0, 20.0), (-140.0, -35.0)]:
        cams = _camera(az, el, distance=2.5)
        clip = _clip(cube, cams, res, res)[0]
        ndc = (clip[:, :2] / clip[:, 3:]).double().numpy()
        area_fraction = ConvexHull(ndc).volume / 4.0  # NDC square has area 4
        frags = rasterize(clip[None], faces, res, res)
        covered = (frags.face_id >= 0).float().mean().item()
        perimeter_px = ConvexHull(ndc).area * res / 2
        assert abs(covered - area_fraction) * res * res < 0.5 * perimeter_px  # within half a pixel of the edge
        assert abs(covered - area_fraction) < 0.01


def test_closed_mesh_has_no_cracks():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.9)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    cams = _camera(azimuth=10.0, elevation=5.0)
    frags = rasterize(_clip(verts, cams, 96, 96), faces, 96, 96)
    mask = (frags.face_id[0] >= 0).numpy()
    # every pixel strictly between two covered pixels of its row is covered (the silhouette is convex)
    for row in mask:
        cols = np.nonzero(row)[0]
        if len(cols):
            assert row[cols[0] : cols[-1] + 1].all()
    # visible faces face the camera: the nearest surface is drawn, not the back
    normals = torch.tensor(sphere.face_normals, dtype=torch.float32)[frags.face_id[0][frags.face_id[0] >= 0]]
    assert (normals @ cams.position[0] > 0).float().mean() > 0.99


def test_triangles_behind_camera_and_near_plane_clipping():
    cams = _camera(distance=3.0)
    behind = torch.tensor([[-1.0, -1.0, 4.0], [1.0, -1.0, 4.0], [0.0, 1.0, 4.0]])  # z = 4 > camera z = 3
    frags = rasterize(_clip(behind, cams, 32, 32), torch.tensor([[0, 1, 2]]), 32, 32)
    assert (frags.face_id == -1).all()
    # a large floor triangle through the camera plane: ray-cast ground truth
    floor = torch.tensor([[-4.0, -0.5, 6.0], [4.0, -0.5, 6.0], [0.0, -0.5, -6.0]])
    res = 64
    frags = rasterize(_clip(floor, cams, res, res), torch.tensor([[0, 1, 2]]), res, res)
    origins, dirs = cams.rays(res, res)
    t = (-0.5 - origins[0, ..., 1]) / dirs[0, ..., 1]
    hit = origins[0] + t[..., None] * dirs[0]
    inside = torch.from_numpy(_inside_2d(floor[:, [0, 2]].numpy(), hit[..., 0].numpy(), hit[..., 2].numpy()))
    view_depth = t * (-dirs[0] @ torch.linalg.inv(cams.c2w[0])[2, :3])  # distance along the view axis
    expected = inside & (t > 0) & (view_depth > 0.05)
    got = frags.face_id[0] >= 0
    assert expected.sum() > 500
    assert (got != expected).float().mean() < 0.005
    torch.testing.assert_close(frags.depth[0][got & expected], view_depth[got & expected], rtol=1e-3, atol=1e-3)


def test_chunked_pairs_give_identical_fragments(monkeypatch):
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    wall = trimesh.creation.box(extents=(8.0, 8.0, 8.0))  # the cameras are inside: big faces, row bands
    mesh = trimesh.util.concatenate([mesh, wall])
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces)
    t = torch.tensor
    cams = orbit_cameras(t([0.0, 30.0]), t([0.0, 120.0]), t([3.0, 2.5]), t([40.0, 50.0]))
    clip = _clip(verts, cams, 40, 48)
    ref = rasterize(clip, faces, 40, 48)
    monkeypatch.setattr(raster, "_PAIR_CHUNK", 97)
    monkeypatch.setattr(raster, "_FACE_CHUNK", 101)
    small = rasterize(clip, faces, 40, 48)
    assert torch.equal(ref.face_id, small.face_id)
    assert (ref.face_id >= len(faces) - 12).any() and (ref.face_id < len(faces) - 12).any()
    assert (ref.face_id >= 0).all()  # a closed box around the camera covers every pixel
    torch.testing.assert_close(ref.bary, small.bary)
    torch.testing.assert_close(ref.depth, small.depth)
    assert ref.face_id.shape == (2, 40, 48)
    # each view is the same as rendering it alone
    alone = rasterize(clip[1:], faces, 40, 48)
    assert torch.equal(alone.face_id[0], ref.face_id[1])


def test_empty_inputs():
    frags = rasterize(torch.zeros(2, 0, 4), torch.zeros(0, 3, dtype=torch.int64), 5, 6)
    assert frags.face_id.shape == (2, 5, 6) and (frags.face_id == -1).all()
    assert frags.bary.shape == (2, 5, 6, 3) and frags.depth.shape == (2, 5, 6)


def test_interpolate_per_view_attributes():
    clip = torch.tensor([[-1, -1, 0, 1], [3, -1, 0, 1], [-1, 3, 0, 1.0]]).expand(2, 3, 4)
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(clip, faces, 4, 4)
    attr = torch.tensor([[[1.0], [1.0], [1.0]], [[2.0], [2.0], [2.0]]])  # [B, V, C]
    out = interpolate(attr, faces, frags)
    assert out.shape == (2, 4, 4, 1)
    assert (out[0] == 1).all() and (out[1] == 2).all()
    empty = Fragments(torch.full((1, 2, 2), -1), torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2))
    assert (interpolate(torch.ones(3, 2), faces, empty) == 0).all()


def test_sample_texture_orientation_bilinear_and_wrap():
    red, green, blue, white = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1, 1]
    tex = torch.tensor([[red, green], [blue, white]])  # row 0 = top: red top-left, green top-right
    uv = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    torch.testing.assert_close(sample_texture(tex, uv), tex.reshape(4, 3))
    torch.testing.assert_close(sample_texture(tex, uv + torch.tensor([1.0, -2.0])), tex.reshape(4, 3))  # wrap
    torch.testing.assert_close(sample_texture(tex, torch.tensor([0.5, 0.25])), torch.tensor([0.5, 0.5, 0.0]))
    # the (0, 0) corner lies between all four texels under wrap addressing
    torch.testing.assert_close(sample_texture(tex, torch.zeros(2)), torch.tensor([0.5, 0.5, 0.5]))
    assert sample_texture(tex, torch.rand(3, 5, 2)).shape == (3, 5, 3)


def test_dense_mesh_silhouette():
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=6, radius=0.8)  # 81920 faces
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces)
    clip = _clip(verts, _camera(azimuth=30.0), 64, 64)
    frags = rasterize(clip, faces, 64, 64)
    r_ndc = math.tan(math.asin(0.8 / 3.0)) / math.tan(math.radians(20.0))
    assert (frags.face_id >= 0).float().mean().item() == pytest.approx(math.pi * r_ndc**2 / 4, rel=0.02)
