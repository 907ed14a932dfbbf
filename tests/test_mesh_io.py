"""Mesh loading (GLB/OBJ/PLY), colour conventions, normalization, rendering and the robot asset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from dreamcore.cameras import orbit_cameras
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import Material, MeshAsset
from dreamcore.meshes.io import asset_to_trimesh, linear_to_srgb, load_mesh, normalize, srgb_to_linear
from dreamcore.meshes.render import render_mesh

ROOT = Path(__file__).resolve().parents[1]
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def _front_camera(fov: float = 40.0, distance: float = 3.0):
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(one(0.0), one(0.0), one(distance), one(fov))


def _quad_mesh() -> trimesh.Trimesh:
    """Unit square in the z = 0 plane facing +Z, vertices TL, TR, BR, BL."""
    vertices = np.array([[-0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, -0.5, 0], [-0.5, -0.5, 0]], np.float64)
    return trimesh.Trimesh(vertices, np.array([[0, 2, 1], [0, 3, 2]]), process=False)


def _corner_texture() -> Image.Image:
    """2x2 image: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    return Image.fromarray(np.array([[RED, GREEN], [BLUE, YELLOW]], np.uint8))


def _textured_quad(material) -> trimesh.Trimesh:
    mesh = _quad_mesh()
    # trimesh's UV convention is OBJ's (v up): the top-left vertex samples the image's top-left corner
    uv = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return mesh


def _render_quadrants(asset: MeshAsset) -> np.ndarray:
    """Colours [2, 2, 3] at the centres of the four quadrants of the quad seen from the front."""
    out = render_mesh(asset, _front_camera(fov=20.0), 64, 64)
    # the quad spans NDC ±(0.5 / 3) / tan(10°) = ±0.945: quadrant centres at NDC ±0.47 -> pixels 17 and 46
    rgb = out.rgb[0].numpy()
    return np.array([[rgb[17, 17], rgb[17, 46]], [rgb[46, 17], rgb[46, 46]]])


def _assert_corner_colours(quadrants: np.ndarray) -> None:
    expected = np.array([[RED, GREEN], [BLUE, YELLOW]], np.float64) / 255.0
    np.testing.assert_allclose(quadrants, expected, atol=0.02)


def test_glb_texture_round_trip_keeps_orientation(tmp_path):
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=_corner_texture(), baseColorFactor=[1.0] * 4)
    path = tmp_path / "quad.glb"
    _textured_quad(material).export(path)
    asset = load_mesh(path)
    assert asset.uvs is not None and len(asset.materials) == 1
    assert asset.materials[0].texture.shape == (2, 2, 3)
    # glTF convention inside MeshAsset: the top-left vertex has uv (0, 0), the bottom-right (1, 1)
    torch.testing.assert_close(asset.uvs[0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(asset.uvs[2], torch.tensor([1.0, 1.0]))
    # quadrant centres sample (nearly) the texel centres of the 2x2 image
    quadrants = _render_quadrants(asset)
    expected = np.array([[RED, GREEN], [BLUE, YELLOW]], np.float64) / 255.0
    np.testing.assert_allclose(quadrants, expected, atol=0.05)


def test_glb_with_big_texture_renders_the_right_corners(tmp_path):
    big = _corner_texture().resize((64, 64), Image.NEAREST)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=big, baseColorFactor=[1.0] * 4)
    path = tmp_path / "quad.glb"
    _textured_quad(material).export(path)
    _assert_corner_colours(_render_quadrants(load_mesh(path)))


def test_obj_texture_round_trip(tmp_path):
    big = _corner_texture().resize((64, 64), Image.NEAREST)
    material = trimesh.visual.material.SimpleMaterial(image=big, diffuse=[102, 102, 102, 255])
    path = tmp_path / "quad.obj"
    _textured_quad(material).export(path)
    assert (tmp_path / "material.mtl").exists()
    asset = load_mesh(path)
    # the grey Kd next to map_Kd is ignored: the texture is shown as is
    assert asset.materials[0].base_color == (1.0, 1.0, 1.0)
    _assert_corner_colours(_render_quadrants(asset))


def test_obj_without_texture_uses_kd(tmp_path):
    mesh = _quad_mesh()
    material = trimesh.visual.material.SimpleMaterial(diffuse=[51, 204, 102, 255])
    mesh.visual = trimesh.visual.TextureVisuals(material=material)
    path = tmp_path / "kd.obj"
    mesh.export(path)
    colours = _render_quadrants(load_mesh(path))
    np.testing.assert_allclose(colours, np.broadcast_to([0.2, 0.8, 0.4], (2, 2, 3)), atol=0.01)


def test_ply_vertex_and_face_colours(tmp_path):
    mesh = _quad_mesh()
    mesh.visual.vertex_colors = np.array([[255, 0, 0, 255]] * 4, np.uint8)
    mesh.export(tmp_path / "v.ply")
    asset = load_mesh(tmp_path / "v.ply")
    assert asset.vertex_colors is not None and asset.uvs is None
    np.testing.assert_allclose(_render_quadrants(asset), np.broadcast_to([1.0, 0, 0], (2, 2, 3)), atol=1e-6)
    # per-face colours: the triangle (TL, BR, TR) is green, (TL, BL, BR) is blue
    mesh = _quad_mesh()
    mesh.visual.face_colors = np.array([[0, 255, 0, 255], [0, 0, 255, 255]], np.uint8)
    mesh.export(tmp_path / "f.ply")
    asset = load_mesh(tmp_path / "f.ply")
    assert asset.vertices.shape == (6, 3)  # unmerged so that each face keeps its own colour
    q = _render_quadrants(asset)
    np.testing.assert_allclose(q[0, 1], [0, 1, 0], atol=1e-6)  # top-right: above the diagonal
    np.testing.assert_allclose(q[1, 0], [0, 0, 1], atol=1e-6)  # bottom-left: below it


def test_gltf_vertex_colours_and_factor_are_linear(tmp_path):
    mesh = _quad_mesh()
    linear = srgb_to_linear(np.array([0.5, 0.25, 1.0]))
    mesh.visual.vertex_colors = np.round(np.append(linear, 1.0) * 255).astype(np.uint8)[None].repeat(4, 0)
    mesh.export(tmp_path / "c.glb")
    asset = load_mesh(tmp_path / "c.glb")
    np.testing.assert_allclose(asset.vertex_colors[0].numpy(), [0.5, 0.25, 1.0], atol=0.01)
    factor = np.append(srgb_to_linear(np.array([0.8, 0.4, 0.2])), 1.0)
    material = trimesh.visual.material.PBRMaterial(baseColorFactor=factor)
    mesh = _quad_mesh()
    mesh.visual = trimesh.visual.TextureVisuals(material=material)
    mesh.export(tmp_path / "m.glb")
    asset = load_mesh(tmp_path / "m.glb")
    np.testing.assert_allclose(asset.materials[0].base_color, [0.8, 0.4, 0.2], atol=0.01)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(np.linspace(0, 1, 11))), np.linspace(0, 1, 11), atol=1e-12)


def test_scene_node_transforms_and_materials_are_merged(tmp_path):
    scene = trimesh.Scene()
    red = trimesh.visual.material.PBRMaterial(baseColorFactor=[1.0, 0.0, 0.0, 1.0])
    blue = trimesh.visual.material.PBRMaterial(baseColorFactor=[0.0, 0.0, 1.0, 1.0])
    for name, material, dx in [("a", red, -2.0), ("b", blue, 2.0)]:
        mesh = _quad_mesh()
        mesh.visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(mesh, geom_name=name, transform=trimesh.transformations.translation_matrix([dx, 1.0, 0]))
    scene.export(tmp_path / "s.glb")
    asset = load_mesh(tmp_path / "s.glb")
    assert asset.faces.shape == (4, 3) and len(asset.materials) == 2
    for k in range(2):
        verts = asset.vertices[asset.faces[asset.face_material == k].flatten()]
        colour = asset.materials[k].base_color
        expected_x = -2.0 if colour[0] > 0.5 else 2.0
        assert verts[:, 0].mean().item() == pytest.approx(expected_x)
        assert verts[:, 1].mean().item() == pytest.approx(1.0)


def test_asset_to_trimesh_glb_round_trip(tmp_path):
    asset = MeshAsset(
        vertices=torch.tensor([[-0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, -0.5, 0], [-0.5, -0.5, 0]], dtype=torch.float32),
        faces=torch.tensor([[0, 2, 1], [0, 3, 2]]),
        uvs=torch.tensor([[0.0, 0.0], [1, 0], [1, 1], [0, 1]]),
        vertex_colors=torch.tensor([[1.0, 0.5, 0.25]] * 4),
        face_material=torch.tensor([0, 1]),
        materials=[Material((0.2, 0.6, 1.0)), Material(texture=torch.rand(4, 4, 3))],
    )
    path = tmp_path / "rt.glb"
    asset_to_trimesh(asset, linear_colors=True).export(path)
    back = load_mesh(path)
    assert back.faces.shape == (2, 3)
    bases = sorted(m.base_color for m in back.materials)
    np.testing.assert_allclose(bases[0], (0.2, 0.6, 1.0), atol=0.01)
    expected = np.tile([1.0, 0.5, 0.25], (len(back.vertex_colors), 1))
    np.testing.assert_allclose(back.vertex_colors.numpy(), expected, atol=0.01)
    textured = next(m for m in back.materials if m.texture is not None)
    torch.testing.assert_close(textured.texture, asset.materials[1].texture, atol=1 / 255, rtol=0)
    # (an oblique view keeps pixel centres off the shared diagonal, where face order decides)
    cams = orbit_cameras(torch.tensor([5.0]), torch.tensor([7.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    render_a = render_mesh(asset, cams, 32, 32).rgb
    render_b = render_mesh(back, cams, 32, 32).rgb
    assert (render_a - render_b).abs().max() < 0.03


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("garbage.glb", b"\x00\x01not a mesh at all\xff" * 10, "not a GLB file"),
        ("empty.obj", b"# nothing here\n", "no vertices or faces"),
        ("points.ply", None, "point cloud"),
        ("nan.obj", b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
        ("mesh.stl2", b"solid", "unsupported"),
    ],
)
def test_load_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(path)
    else:
        path.write_bytes(content)
    with pytest.raises(DreamcoreError, match=message) as info:
        load_mesh(path)
    assert str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(DreamcoreError, match="not found"):
        load_mesh("/nonexistent/robot.glb")


def test_normalize():
    verts = torch.tensor([[0.0, 0, 0], [4, 0, 0], [0, 2, 0], [4, 2, 6]])
    asset = MeshAsset(verts, torch.tensor([[0, 1, 2], [1, 2, 3]]))
    out, transform = normalize(asset, radius=0.9)
    assert transform.center == (2.0, 1.0, 3.0)
    assert transform.scale == pytest.approx(0.9 / np.sqrt(4 + 1 + 9))
    assert out.vertices.norm(dim=-1).max().item() == pytest.approx(0.9)
    torch.testing.assert_close(out.vertices.amin(0) + out.vertices.amax(0), torch.zeros(3))
    torch.testing.assert_close(transform.to_original(out.vertices), verts)
    with pytest.raises(DreamcoreError):
        normalize(MeshAsset(torch.zeros(3, 3), torch.tensor([[0, 1, 2]])))


def test_render_outputs_background_supersampling_and_shading():
    cube = trimesh.creation.box(extents=(1, 1, 1))
    asset = MeshAsset(torch.tensor(cube.vertices, dtype=torch.float32), torch.tensor(cube.faces),
                      materials=[Material((0.2, 0.4, 0.8))])
    t = torch.tensor
    cams = orbit_cameras(t([0.0, 30.0]), t([0.0, 45.0]), t([3.0, 3.0]), t([40.0, 40.0]))
    bg = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    out = render_mesh(asset, cams, 32, 32, background=bg)
    assert out.rgb.shape == (2, 32, 32, 3) and out.alpha.shape == (2, 32, 32, 1)
    assert out.depth.shape == (2, 32, 32, 1) and out.normal.shape == (2, 32, 32, 3)
    torch.testing.assert_close(out.rgb[0, 0, 0], bg[0])
    torch.testing.assert_close(out.rgb[1, 0, 0], bg[1])
    torch.testing.assert_close(out.rgb[0, 16, 16], torch.tensor([0.2, 0.4, 0.8]))
    # front view: the +Z face at distance 2.5 on the axis, normal +Z
    ray = cams.pixel_directions(32, 32)[0, 16, 16]  # z = -1: the distance is 2.5 |ray|
    assert out.depth[0, 16, 16, 0].item() == pytest.approx(2.5 * ray.norm().item(), abs=1e-4)
    torch.testing.assert_close(out.normal[0, 16, 16], torch.tensor([0.0, 0.0, 1.0]))
    # lambertian with the light from the camera: a face seen head-on gets full light
    lit = render_mesh(asset, cams[:1], 32, 32, shading="lambertian")
    torch.testing.assert_close(lit.rgb[0, 16, 16], torch.tensor([0.2, 0.4, 0.8]), atol=1e-5, rtol=0)
    # supersampling: same coverage on average, fractional alpha only on edges
    ss = render_mesh(asset, cams, 32, 32, supersample=4)
    frac = ((ss.alpha > 0) & (ss.alpha < 1)).float().mean().item()
    assert 0 < frac < 0.15
    assert abs(ss.alpha.mean().item() - out.alpha.mean().item()) < 0.01
    assert torch.equal(render_mesh(asset, cams.with_background(bg), 8, 8).rgb[:, 0, 0], bg)


def _load_make_asset():
    spec = importlib.util.spec_from_file_location("make_asset", ROOT / "tools" / "make_asset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_robot_asset_loads_with_colours_and_is_front_back_asymmetric():
    path = ROOT / "assets" / "robot.glb"
    assert path.stat().st_size < 300_000
    asset = load_mesh(path)
    assert 1000 < asset.faces.shape[0] < 10_000
    assert len(asset.materials) == 3 and sum(m.texture is not None for m in asset.materials) == 1
    asset, _ = normalize(asset)
    cams = orbit_cameras(torch.zeros(2), torch.tensor([0.0, 180.0]), torch.full((2,), 3.0), torch.full((2,), 40.0))
    out = render_mesh(asset, cams, 96, 96)
    front, back = out.rgb[0], out.rgb[1]
    # the textured chest panel (yellow) and its red button are only on the front
    body = slice(30, 66)  # image rows of the torso (the yellow feet are below)
    yellow = ((front[body, ..., 0] > 0.9) & (front[body, ..., 1] > 0.75) & (front[body, ..., 2] < 0.3)).sum()
    assert yellow > 50
    assert ((back[body, ..., 0] > 0.9) & (back[body, ..., 1] > 0.75) & (back[body, ..., 2] < 0.3)).sum() < 5
    # texture orientation: the red button is above the blue one and left of the green one
    def centroid(mask):
        idx = mask.nonzero().float()
        return idx.mean(0)

    red = centroid((front[body, :, 0] > 0.8) & (front[body, :, 1] < 0.2) & (front[body, :, 2] < 0.2))
    green = centroid((front[body, :, 1] > 0.7) & (front[body, :, 0] < 0.2) & (front[body, :, 2] < 0.3))
    blue = centroid((front[body, :, 2] > 0.9) & (front[body, :, 0] < 0.3) & (front[body, :, 1] < 0.4))
    assert red[0] < blue[0] - 3 and red[1] < green[1] - 3
    # the backpack (green) covers the middle of the back
    assert back[48, 48, 1] > 0.6 and back[48, 48, 0] < 0.4


def test_make_asset_is_deterministic(tmp_path):
    module = _load_make_asset()
    module.write_robot(tmp_path / "a.glb")
    module.write_robot(tmp_path / "b.glb")
    assert (tmp_path / "a.glb").read_bytes() == (tmp_path / "b.glb").read_bytes()
