"""Export pipeline: extraction geometry, cleanup, UVs, baking, GLB/OBJ round trips, validator, turntable."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.errors import DreamcoreError
from dreamcore.export import export_textured_mesh
from dreamcore.meshes.asset import textured_asset
from dreamcore.export.bake import bake_texture
from dreamcore.export.extract import best_isosurface, extract_mesh, face_components, mesh_from_grid, sample_grid
from dreamcore.export.turntable import write_turntable
from dreamcore.meshes.uv import unwrap
from dreamcore.export.writers import write_glb, write_obj
from dreamcore.meshes.asset import MeshAsset, SceneTransform

ROOT = Path(__file__).resolve().parents[1]
RES, BOUND = 48, 1.0
H = 2 * BOUND / (RES - 1)  # grid spacing
CENTRE = torch.tensor([0.12, -0.07, 0.05])
RADIUS = 0.55
TRANSFORM = SceneTransform(center=(1.5, -2.0, 0.25), scale=0.4)


def sphere_density(p: torch.Tensor) -> torch.Tensor:
    """Linear in the distance: σ = 20 (R − ‖p − c‖), so the iso-0.5·20·… level sits at a known radius."""
    return 20.0 * (RADIUS - (p - CENTRE).norm(dim=-1))


def colour(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return p * 0.5 + 0.5


def edges_shared_twice(faces: np.ndarray) -> bool:
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 2).all())


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    t = v[f].astype(np.float64)
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)


@pytest.fixture(scope="module")
def sphere_mesh() -> tuple[np.ndarray, np.ndarray]:
    return extract_mesh(sphere_density, resolution=RES, bound=BOUND, isosurface=0.0, target_faces=3000)


@pytest.fixture(scope="module")
def unwrapped(sphere_mesh):
    v, f = sphere_mesh
    return unwrap(v, f, resolution=256)


@pytest.fixture(scope="module")
def baked(unwrapped):
    v, f, uv, _ = unwrapped
    return bake_texture(v, f, uv, colour, size=256)


# -- extraction ------------------------------------------------------------------------------------------------
def test_sphere_radius_and_centre_in_world_frame():
    v, f = extract_mesh(sphere_density, resolution=RES, bound=BOUND, isosurface=0.0, target_faces=0)
    r = np.linalg.norm(v - CENTRE.numpy(), axis=1)
    assert np.abs(r - RADIUS).max() < 0.1 * H  # a linear field: marching cubes is nearly exact
    assert np.abs(v.mean(0) - CENTRE.numpy()).max() < 0.05 * H  # no half-voxel offset
    assert np.isfinite(v).all() and v.dtype == np.float32 and f.dtype == np.int64
    assert edges_shared_twice(f)  # closed
    vol = signed_volume(v, f)
    assert vol == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.02)  # outward winding


def test_box_extent_and_isosurface_level():
    half = torch.tensor([0.3, 0.5, 0.7])
    density = lambda p: 10.0 * (1.0 - (p.abs() - half).amax(dim=-1))  # noqa: E731  σ = 10 − 10·sdf
    v, _ = extract_mesh(density, resolution=RES, bound=BOUND, isosurface=10.0, target_faces=0)
    assert np.abs(v.max(0) - half.numpy()).max() < H
    assert np.abs(v.min(0) + half.numpy()).max() < H


def test_isosurface_search_picks_the_level_the_score_prefers():
    """One sampled grid, several levels: mesh_from_grid is extract_mesh after sampling, and best_isosurface
    returns the level whose mesh scores best (here: the one whose radius is 0.4, i.e. σ = 20·0.15 = 3)."""
    grid = sample_grid(sphere_density, RES, BOUND)
    v0, f0 = extract_mesh(sphere_density, resolution=RES, bound=BOUND, isosurface=3.0, target_faces=0)
    v1, f1 = mesh_from_grid(grid, 3.0, BOUND, target_faces=0)
    assert np.array_equal(f0, f1) and np.allclose(v0, v1)

    def radius_match(verts, faces):
        return -abs(float(np.linalg.norm(verts - CENTRE.numpy(), axis=1).mean()) - 0.4)

    level, scores, (v, f) = best_isosurface(grid, [0.0, 3.0, 6.0, 50.0], BOUND, radius_match, target_faces=0)
    assert level == 3.0 and set(scores) == {0.0, 3.0, 6.0, 50.0}
    assert np.array_equal(f, f1) and np.allclose(v, v1)  # the chosen level's mesh comes back with it
    assert scores[50.0] == -math.inf  # above the field's maximum: no surface, never chosen


def test_inner_shell_is_filled():
    def shell(p):  # dense between r = 0.35 and 0.7, empty inside (unsupervised NeRF interior)
        r = p.norm(dim=-1)
        return torch.where((r > 0.35) & (r < 0.7), 10.0, 0.0)

    v, f = extract_mesh(shell, resolution=RES, isosurface=5.0, target_faces=0)
    r = np.linalg.norm(v, axis=1)
    assert r.min() > 0.7 - 1.5 * H and face_components(f, len(v))[1] == 1
    v2, _ = extract_mesh(shell, resolution=RES, isosurface=5.0, target_faces=0, fill_cavities=False)
    assert np.linalg.norm(v2, axis=1).min() < 0.35 + 1.5 * H  # without filling, the inner surface exists


def test_floaters_dropped_nan_free_and_decimated():
    def field(p):
        main = 20.0 * (0.5 - p.norm(dim=-1))
        blob = 20.0 * (0.06 - (p - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1))
        d = torch.maximum(main, blob)
        return torch.where(p[:, 0] < -0.8, torch.full_like(d, float("nan")), d)  # NaN outside the object

    v, f = extract_mesh(field, resolution=RES, isosurface=0.0, target_faces=800)
    assert np.isfinite(v).all()
    assert 0 < len(f) <= 800
    assert np.linalg.norm(v, axis=1).max() < 0.5 + H  # the far blob (< 2 % of the faces) is gone
    assert signed_volume(v, f) > 0 and edges_shared_twice(f)  # decimation keeps it closed and outward
    assert len(np.unique(np.sort(f, axis=1), axis=0)) == len(f)  # no duplicate faces
    assert (f[:, 0] != f[:, 1]).all() and (f[:, 1] != f[:, 2]).all() and (f[:, 2] != f[:, 0]).all()
    v2, f2 = extract_mesh(field, resolution=RES, isosurface=0.0, target_faces=0, keep_components=2)
    assert face_components(f2, len(v2))[1] == 2


# -- UVs and baking ----------------------------------------------------------------------------------------------
def test_unwrap(sphere_mesh, unwrapped):
    v, f = sphere_mesh
    vn, fn, uv, vmap = unwrapped
    assert uv.shape == (len(vn), 2) and fn.shape == f.shape
    assert (uv >= 0).all() and (uv <= 1).all()
    np.testing.assert_array_equal(vn, v[vmap])
    np.testing.assert_allclose(vn[fn], v[f])  # same triangles, same order


def _uv_area_texels(uv: np.ndarray, f: np.ndarray, size: int) -> np.ndarray:
    t = uv[f] * size
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def test_bake_reproduces_colour_function(unwrapped, baked):
    from dreamcore.meshes.raster import sample_texture

    vn, fn, uv, _ = unwrapped
    assert baked.shape == (256, 256, 3) and baked.dtype == np.float32
    # xatlas gives the few near-zero-area slivers of a decimated mesh a degenerate UV triangle
    ok = _uv_area_texels(uv, fn, 256) > 1e-6
    t = vn[fn].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
    assert area[~ok].sum() < 1e-4 * area.sum()
    bary = np.array([[1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]], np.float32)
    p = np.einsum("sk,fkc->fsc", bary, vn[fn[ok]])
    u = np.einsum("sk,fkc->fsc", bary, uv[fn[ok]])
    got = sample_texture(torch.from_numpy(baked), torch.from_numpy(u)).numpy()
    err = np.abs(got - (p * 0.5 + 0.5))
    assert err.mean() < 2e-3 and np.quantile(err, 0.999) < 0.02
    # gutters hold chart colours (no black texels for bilinear filtering to pick up)
    assert baked.min() > 0.5 * (0.5 - 0.6)


# -- writers ----------------------------------------------------------------------------------------------------
def _reference_render(v: np.ndarray, f: np.ndarray):
    """Albedo renders of the scene-frame mesh with exact vertex colours ``p/2 + ½``."""
    from dreamcore.meshes.render import render_mesh

    vt = torch.from_numpy(v)
    asset = MeshAsset(vertices=vt, faces=torch.from_numpy(f), vertex_colors=vt * 0.5 + 0.5)
    cams = orbit_cameras(torch.tensor([20.0, -30.0]), torch.tensor([30.0, 200.0]), torch.tensor([3.0, 3.0]),
                         torch.tensor([40.0, 40.0]))
    return cams, render_mesh(asset, cams, 64, 64)


def _check_loaded(loaded: MeshAsset, vn: np.ndarray, fn: np.ndarray) -> None:
    """The loaded asset, in the original frame, is the written mesh; rendered in the scene frame it shows the
    baked colours."""
    from dataclasses import replace

    from dreamcore.meshes.render import render_mesh

    expected = TRANSFORM.to_original(torch.from_numpy(vn).double()).float().numpy()
    got = loaded.vertices.numpy()
    assert len(loaded.faces) == len(fn)
    # the same triangles (vertex order may differ after a loader's merge)
    np.testing.assert_allclose(np.sort(got[loaded.faces.numpy()].reshape(-1, 9), axis=0),
                               np.sort(expected[fn].reshape(-1, 9), axis=0), atol=1e-5)
    assert loaded.uvs is not None and loaded.materials[0].texture is not None
    cams, ref = _reference_render(vn, fn)
    in_scene = replace(loaded, vertices=TRANSFORM.to_scene(loaded.vertices))
    out = render_mesh(in_scene, cams, 64, 64)
    both = (ref.alpha[..., 0] > 0) & (out.alpha[..., 0] > 0)
    assert (ref.alpha != out.alpha).float().mean() < 0.002
    assert (out.rgb - ref.rgb).abs()[both].mean() < 0.01


def test_glb_round_trip(tmp_path, unwrapped, baked):
    import trimesh

    from dreamcore.meshes.io import load_mesh

    vn, fn, uv, _ = unwrapped
    path = write_glb(tmp_path / "model.glb", vn, fn, uv, baked, TRANSFORM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.glb"]
    tm = trimesh.load(str(path), force="mesh", process=False)
    expected = TRANSFORM.to_original(torch.from_numpy(vn).double()).float().numpy()
    np.testing.assert_allclose(tm.vertices, expected, atol=1e-5)
    np.testing.assert_array_equal(tm.faces, fn)
    np.testing.assert_allclose(tm.visual.uv[:, 1], 1.0 - uv[:, 1], atol=1e-6)  # trimesh: v up
    np.testing.assert_allclose(np.linalg.norm(tm.vertex_normals, axis=1), 1.0, atol=1e-4)
    _check_loaded(load_mesh(path), vn, fn)


def test_glb_json_layout(tmp_path, unwrapped, baked):
    vn, fn, uv, _ = unwrapped
    data = write_glb(tmp_path / "m.glb", vn, fn, uv, baked, TRANSFORM).read_bytes()
    n_json = int.from_bytes(data[12:16], "little")
    doc = json.loads(data[20:20 + n_json])
    assert len(data) % 4 == 0 and n_json % 4 == 0
    assert all(view["byteOffset"] % 4 == 0 for view in doc["bufferViews"])
    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and 0.8 <= pbr["roughnessFactor"] <= 1.0
    pos = TRANSFORM.to_original(torch.from_numpy(vn).double()).float().numpy()
    assert doc["accessors"][0]["min"] == [float(x) for x in pos.min(0)]
    assert doc["accessors"][0]["max"] == [float(x) for x in pos.max(0)]


def test_obj_round_trip(tmp_path, unwrapped, baked):
    from dreamcore.meshes.io import load_mesh

    vn, fn, uv, _ = unwrapped
    paths = write_obj(tmp_path / "model.obj", vn, fn, uv, baked, TRANSFORM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mtl", "model.obj", "model.png"]
    assert "map_Kd model.png" in paths["mtl"].read_text()
    text = paths["obj"].read_text()
    assert "mtllib model.mtl" in text and "\nvn " in text
    _check_loaded(load_mesh(paths["obj"]), vn, fn)


def _validator_ready() -> tuple[str | None, str]:
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed"
    if not (ROOT / ".cache" / "node" / "node_modules" / "gltf-validator").is_dir():
        return None, "gltf-validator not installed (npm install --prefix .cache/node gltf-validator)"
    return node, ""


def test_gltf_validator(tmp_path, unwrapped, baked):
    node, reason = _validator_ready()
    if node is None:
        pytest.skip(reason)
    vn, fn, uv, _ = unwrapped
    path = write_glb(tmp_path / "model.glb", vn, fn, uv, baked, TRANSFORM)
    run = subprocess.run([node, str(ROOT / "tools" / "validate_gltf.mjs"), str(path)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode in (0, 1), run.stderr
    issues = json.loads(run.stdout)["issues"]
    assert issues["numErrors"] == 0, issues["messages"]
    assert issues["numWarnings"] == 0, issues["messages"]


# -- turntable and the composed export --------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["mp4", "gif"])
def test_turntable_frames(tmp_path, unwrapped, baked, suffix):
    import imageio.v2 as iio

    vn, fn, uv, _ = unwrapped
    asset = textured_asset(vn, fn, uv, baked)
    path = write_turntable(tmp_path / f"turntable.{suffix}", asset, frames=6, resolution=31)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    reader = iio.get_reader(path)
    frames = [np.asarray(fr) for fr in reader]
    assert len(frames) == 6 and frames[0].shape[:2] == (32, 32)
    first = frames[0][..., :3].astype(np.float32) / 255.0
    assert (first.min(-1) < 0.9).mean() > 0.3  # the object fills a good part of the frame
    assert first[0, 0].min() > 0.9  # white background in the corner


def test_export_textured_mesh(tmp_path, sphere_mesh):
    v, f = sphere_mesh
    seen = []
    paths = export_textured_mesh(tmp_path / "run", v, f, colour, TRANSFORM, texture_size=128, turntable_frames=4,
                                 turntable_resolution=32, turntable_format="gif",
                                 bake_samples_fn=lambda p, n, c: seen.append(len(p)))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["model.glb", "model.mtl", "model.obj", "model.png", "turntable.gif"]
    assert set(paths) == {"glb", "obj", "mtl", "png", "turntable"} and sum(seen) > 0
    assert export_textured_mesh(tmp_path / "none", v, f, colour, TRANSFORM, formats=()) == {}
    empty_v, empty_f = extract_mesh(lambda p: torch.zeros(len(p)), resolution=16, isosurface=1.0)
    assert empty_v.shape == (0, 3) and empty_f.shape == (0, 3)
    with pytest.raises(DreamcoreError, match="empty"):
        export_textured_mesh(tmp_path / "empty", empty_v, empty_f, colour, TRANSFORM)


def test_taubin_smoothing_removes_noise_without_shrinking():
    import trimesh

    from dreamcore.export.extract import taubin_smooth

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    rng = np.random.default_rng(0)
    noisy = sphere.vertices * (1 + 0.02 * rng.standard_normal((len(sphere.vertices), 1)))
    smooth = taubin_smooth(noisy.astype(np.float32), sphere.faces, 10)
    r_noisy, r_smooth = np.linalg.norm(noisy, axis=1), np.linalg.norm(smooth, axis=1)
    assert r_smooth.std() < 0.5 * r_noisy.std()
    assert abs(r_smooth.mean() - 0.5) < 0.005
    assert taubin_smooth(noisy, sphere.faces, 0) is noisy
