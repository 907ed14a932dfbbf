"""Real-world model files in: what other tools write loads right, what is broken is refused in words.

Each rule of the readers (glTF 2.0 / GLB, OBJ + MTL, PLY, STL) has a file written here that exercises it."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
import trimesh

from dreamcore.cameras import orbit_cameras
from dreamcore.meshes.io import load_mesh, linear_to_srgb
from dreamcore.meshes.parts import MeshFileError
from dreamcore.meshes.render import render_mesh
from mesh_files import (BLUE, GREEN, QUAD_IDX, QUAD_POS, QUAD_UV, RED, YELLOW, Gltf, corner_png, png_bytes,
                        write_ply)

CORNERS = np.array([[RED, GREEN], [BLUE, YELLOW]], np.float64) / 255.0


def quadrants(asset) -> np.ndarray:
    """Colours [2, 2, 3] at the quadrant centres of a unit quad at z = 0 seen from the front."""
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    out = render_mesh(asset, orbit_cameras(one(0), one(0), one(3.0), one(20.0)), 64, 64)
    rgb = out.rgb[0].numpy()
    return np.array([[rgb[17, 17], rgb[17, 46]], [rgb[46, 17], rgb[46, 46]]])


def textured_quad_gltf(**material) -> Gltf:
    g = Gltf()
    g.quad(material=g.material(texture=g.texture(png_bytes(64)), **material))
    return g


# -- glTF 2.0 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("container", ["glb", "gltf-embedded", "gltf-external"])
def test_gltf_containers_load_the_same_textured_quad(tmp_path, container):
    g = textured_quad_gltf()
    if container == "glb":
        path = g.write_glb(tmp_path / "quad.glb")
    else:
        path = g.write_gltf(tmp_path / "quad.gltf", embed=container == "gltf-embedded", bin_name="my buffer.bin")
    asset = load_mesh(path)
    assert asset.faces.shape == (2, 3) and asset.materials[0].texture.shape == (64, 64, 3)
    np.testing.assert_allclose(quadrants(asset), CORNERS, atol=0.05)


def test_gltf_node_hierarchy_matrix_and_trs(tmp_path):
    g = Gltf()
    mesh = g.mesh(g.primitive(QUAD_POS, QUAD_IDX))
    child = g.node(root=False, mesh=mesh, rotation=[0, np.sin(np.pi / 4), 0, np.cos(np.pi / 4)],  # 90° about +Y
                   scale=[2, 2, 2])
    matrix = np.eye(4)
    matrix[:3, 3] = [10, 0, 0]
    g.node(children=[child], matrix=matrix.T.reshape(-1).tolist())  # column-major on disk
    g.node(mesh=mesh, translation=[0, 5, 0])  # the same mesh instanced a second time
    asset = load_mesh(g.write_glb(tmp_path / "tree.glb"))
    v = asset.vertices.numpy()
    assert len(v) == 8
    # child: R_y(90°)·(2p) maps (x, y, 0) to (0, 2y, −2x), then the parent moves it by +10 in x
    expected = np.stack([np.full(4, 10.0), 2 * QUAD_POS[:, 1], -2 * QUAD_POS[:, 0]], 1)
    np.testing.assert_allclose(v[:4], expected, atol=1e-5)
    np.testing.assert_allclose(v[4:], QUAD_POS + [0, 5, 0], atol=1e-6)


def test_gltf_several_primitives_and_materials_with_factor_times_texture(tmp_path):
    g = Gltf()
    tex = g.texture(png_bytes())
    red = g.material(factor=(1.0, 0.0, 0.0, 1.0))
    half = g.material(factor=(0.5, 0.5, 0.5, 1.0), texture=tex)
    mesh = g.mesh(g.primitive(QUAD_POS, QUAD_IDX, material=red),
                  g.primitive(QUAD_POS + [2, 0, 0], QUAD_IDX, uv=QUAD_UV, material=half))
    g.node(mesh=mesh)
    asset = load_mesh(g.write_glb(tmp_path / "two.glb"))
    assert len(asset.materials) == 2 and asset.face_material.tolist() == [0, 0, 1, 1]
    assert asset.materials[0].base_color == pytest.approx((1.0, 0.0, 0.0))
    assert asset.materials[1].base_color == pytest.approx(tuple(linear_to_srgb(np.full(3, 0.5))))  # linear factor
    assert asset.materials[1].texture is not None


def test_gltf_khr_texture_transform_moves_the_uvs(tmp_path):
    # scale 0.5 then offset (0.5, 0): the quad shows only the right half of the image (green over yellow)
    g = textured_quad_gltf(transform={"offset": [0.5, 0.0], "scale": [0.5, 1.0]})
    asset = load_mesh(g.write_glb(tmp_path / "tt.glb"))
    np.testing.assert_allclose(asset.uvs.numpy(), QUAD_UV * [0.5, 1.0] + [0.5, 0.0], atol=1e-6)
    q = quadrants(asset)
    np.testing.assert_allclose(q[0, 1], np.array(GREEN) / 255.0, atol=0.05)
    np.testing.assert_allclose(q[1, 1], np.array(YELLOW) / 255.0, atol=0.05)
    # a quarter turn: uv' = R·uv with R = [[cos, sin], [−sin, cos]] (the extension's convention)
    g = textured_quad_gltf(transform={"rotation": np.pi / 2})
    uv = load_mesh(g.write_glb(tmp_path / "rot.glb")).uvs.numpy()
    np.testing.assert_allclose(uv, np.stack([QUAD_UV[:, 1], -QUAD_UV[:, 0]], 1), atol=1e-6)


def test_gltf_texcoord_set_and_external_image_with_spaces(tmp_path):
    g = Gltf()
    corner_png(tmp_path / "my tex.png")
    mat = g.material(texture=g.texture(b"", uri="my%20tex.png"), tex_coord=1)
    g.node(mesh=g.mesh(g.primitive(QUAD_POS, QUAD_IDX, uv=np.zeros((4, 2), np.float32), material=mat,
                                   TEXCOORD_1=g.accessor(QUAD_UV))))
    asset = load_mesh(g.write_gltf(tmp_path / "q.gltf", embed=False))
    np.testing.assert_allclose(asset.uvs.numpy(), QUAD_UV)
    np.testing.assert_allclose(quadrants(asset), CORNERS, atol=0.05)


def test_gltf_sparse_accessor_and_byte_stride(tmp_path):
    g = Gltf()
    base = g.accessor(QUAD_POS, stride=16)  # interleaved-style padding between elements
    acc = g.doc["accessors"][base]
    acc["sparse"] = {"count": 1, "indices": {"bufferView": g.view(np.array([2], np.uint16).tobytes()),
                                             "componentType": 5123},
                     "values": {"bufferView": g.view(np.array([[0.5, -1.5, 0.0]], np.float32).tobytes())}}
    g.node(mesh=g.mesh({"attributes": {"POSITION": base}, "indices": g.accessor(QUAD_IDX)}))
    v = load_mesh(g.write_glb(tmp_path / "sparse.glb")).vertices.numpy()
    expected = QUAD_POS.copy()
    expected[2] = [0.5, -1.5, 0.0]
    np.testing.assert_allclose(v, expected)


def test_gltf_sparse_accessor_without_buffer_view_starts_from_zeros(tmp_path):
    g = Gltf()
    g.doc["accessors"].append({"componentType": 5126, "count": 4, "type": "VEC3", "sparse": {
        "count": 4, "indices": {"bufferView": g.view(np.arange(4, dtype=np.uint8).tobytes()), "componentType": 5121},
        "values": {"bufferView": g.view(QUAD_POS.tobytes())}}})
    g.node(mesh=g.mesh({"attributes": {"POSITION": 0}, "indices": g.accessor(QUAD_IDX)}))
    np.testing.assert_allclose(load_mesh(g.write_glb(tmp_path / "s.glb")).vertices.numpy(), QUAD_POS)


@pytest.mark.parametrize("kind", ["float-vec4", "ubyte-normalized", "ushort-normalized"])
def test_gltf_vertex_colours_are_linear(tmp_path, kind):
    lin = np.array([[0.2, 0.5, 1.0, 1.0]] * 4)
    color = {"float-vec4": lin.astype(np.float32), "ubyte-normalized": np.round(lin * 255).astype(np.uint8),
             "ushort-normalized": np.round(lin * 65535).astype(np.uint16)}[kind]
    g = Gltf()
    g.node(mesh=g.mesh(g.primitive(QUAD_POS, QUAD_IDX, color=color)))
    asset = load_mesh(g.write_glb(tmp_path / "vc.glb"))
    np.testing.assert_allclose(asset.vertex_colors.numpy()[0], linear_to_srgb(lin[0, :3]), atol=3e-3)


def test_gltf_strips_and_fans_keep_the_winding(tmp_path):
    g = Gltf()
    g.node(mesh=g.mesh(g.primitive(QUAD_POS[[0, 3, 1, 2]], mode=5)))  # strip TL BL TR BR
    g.node(mesh=g.mesh(g.primitive(QUAD_POS + [0, 0, 1], np.array([0, 3, 2, 1], np.uint8), mode=6)))
    asset = load_mesh(g.write_glb(tmp_path / "strip.glb"))
    v, f = asset.vertices, asset.faces
    n = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    assert len(f) == 4 and (n[:, 2] > 0).all()  # every triangle faces +Z, like the quad


def test_gltf_draco_is_decoded(tmp_path):
    dracopy = pytest.importorskip("DracoPy")
    box = trimesh.creation.box((1.0, 2.0, 3.0))
    stream = dracopy.encode(np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.uint32),
                            quantization_bits=16)
    decoded = dracopy.decode(stream)
    position_id = decoded.attributes[0]["unique_id"]
    g = Gltf()
    view = g.view(stream)
    g.doc["accessors"] += [{"componentType": 5126, "count": 8, "type": "VEC3", "min": [-.5, -1, -1.5],
                            "max": [.5, 1, 1.5]}, {"componentType": 5125, "count": 36, "type": "SCALAR"}]
    g.doc["extensionsUsed"] = g.doc["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    g.node(mesh=g.mesh({"attributes": {"POSITION": 0}, "indices": 1, "extensions": {
        "KHR_draco_mesh_compression": {"bufferView": view, "attributes": {"POSITION": position_id}}}}))
    path = g.write_glb(tmp_path / "draco.glb")
    asset = load_mesh(path)
    assert asset.faces.shape == (12, 3)
    np.testing.assert_allclose(asset.vertices.abs().max(0).values.numpy(), [0.5, 1.0, 1.5], atol=1e-3)
    assert not (asset.vertices == 0).all(dim=1).any()  # never the placeholder zeros
    # without a decoder the file is refused, not read as zeros
    sys.modules["DracoPy"] = None
    try:
        with pytest.raises(MeshFileError, match="Draco-compressed"):
            load_mesh(path)
    finally:
        del sys.modules["DracoPy"]


def test_gltf_written_by_pygltflib_loads(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    idx, pos = QUAD_IDX.tobytes(), QUAD_POS.tobytes()
    doc = pygltflib.GLTF2(
        scene=0, scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0, translation=[1.0, 2.0, 3.0])],
        meshes=[pygltflib.Mesh(primitives=[pygltflib.Primitive(attributes=pygltflib.Attributes(POSITION=1),
                                                               indices=0)])],
        accessors=[pygltflib.Accessor(bufferView=0, componentType=pygltflib.UNSIGNED_SHORT, count=6,
                                      type=pygltflib.SCALAR),
                   pygltflib.Accessor(bufferView=1, componentType=pygltflib.FLOAT, count=4, type=pygltflib.VEC3,
                                      min=QUAD_POS.min(0).tolist(), max=QUAD_POS.max(0).tolist())],
        bufferViews=[pygltflib.BufferView(buffer=0, byteOffset=0, byteLength=len(idx)),
                     pygltflib.BufferView(buffer=0, byteOffset=len(idx) + (-len(idx) % 4), byteLength=len(pos))],
        buffers=[pygltflib.Buffer(byteLength=len(idx) + (-len(idx) % 4) + len(pos))],
    )
    doc.set_binary_blob(idx + b"\0" * (-len(idx) % 4) + pos)
    path = tmp_path / "pyg.glb"
    doc.save_binary(str(path))
    np.testing.assert_allclose(load_mesh(path).vertices.numpy(), QUAD_POS + [1, 2, 3], atol=1e-6)


def test_gltf_missing_texture_image_is_a_warning_and_keeps_the_factor(tmp_path, caplog):
    g = Gltf()
    mat = g.material(factor=(1.0, 0.0, 0.0, 1.0), texture=g.texture(b"", uri="gone.png"))
    g.node(mesh=g.mesh(g.primitive(QUAD_POS, QUAD_IDX, uv=QUAD_UV, material=mat)))
    with caplog.at_level(logging.WARNING, logger="dreamcore.meshes"):
        asset = load_mesh(g.write_gltf(tmp_path / "t.gltf"))
    assert "gone.png" in caplog.text
    assert asset.materials[0].texture is None and asset.materials[0].base_color == pytest.approx((1, 0, 0))


def _broken_gltf(tmp_path, defect: str):
    g = Gltf()
    if defect == "index-out-of-range":
        g.node(mesh=g.mesh(g.primitive(QUAD_POS, np.array([0, 1, 40], np.uint16))))
    elif defect == "nan-position":
        pos = QUAD_POS.copy()
        pos[1, 0] = np.nan
        g.node(mesh=g.mesh(g.primitive(pos, QUAD_IDX)))
    elif defect == "inf-uv":
        g.node(mesh=g.mesh(g.primitive(QUAD_POS, QUAD_IDX, uv=np.full((4, 2), np.inf, np.float32))))
    elif defect == "lines-only":
        g.node(mesh=g.mesh(g.primitive(QUAD_POS, np.array([0, 1, 1, 2], np.uint16), mode=1)))
    elif defect == "points-only":
        g.node(mesh=g.mesh(g.primitive(QUAD_POS, mode=0)))
    elif defect == "no-nodes":
        g.mesh(g.primitive(QUAD_POS, QUAD_IDX))
    elif defect == "accessor-past-view":
        g.node(mesh=g.mesh(g.primitive(QUAD_POS, QUAD_IDX)))
        g.doc["accessors"][0]["count"] = 400
    else:
        g.quad()
    if defect == "missing-bin":
        path = g.write_gltf(tmp_path / "m.gltf", embed=False, bin_name="scene.bin")
        (tmp_path / "scene.bin").unlink()
        return path
    path = g.write_glb(tmp_path / "m.glb")
    if defect == "wrong-json-type":
        doc = g._finish(None)
        doc["meshes"][0]["primitives"] = "oops"
        g.write_glb(path, doc)
    elif defect == "attributes-list":
        doc = g._finish(None)
        doc["meshes"][0]["primitives"][0]["attributes"] = [0]
        g.write_glb(path, doc)
    elif defect == "gltf-1":
        path.with_suffix(".gltf").write_text('{"asset": {"version": "1.0"}, "meshes": {"m": {}}}')
        return path.with_suffix(".gltf")
    elif defect == "glb-version-1":
        g.write_glb(path, version=1)
    elif defect == "empty":
        path.write_bytes(b"")
    elif defect == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif defect == "bad-json":
        path.with_suffix(".gltf").write_text('{"asset": {"version": "2.0"}, "meshes": [')
        return path.with_suffix(".gltf")
    elif defect == "required-extension":
        doc = g._finish(None)
        doc["extensionsRequired"] = ["EXT_meshopt_compression"]
        g.write_glb(path, doc)
    return path


@pytest.mark.parametrize("defect, message", [
    ("index-out-of-range", r"primitives\[0\].indices: vertex index 40 is outside the 4 vertices"),
    ("nan-position", "POSITION: 1 position value.* NaN or infinite"),
    ("inf-uv", "TEXCOORD_0: 4 UV value.* NaN or infinite"),
    ("lines-only", "only LINES primitives, no triangles"),
    ("points-only", "only POINTS primitives"),
    ("no-nodes", "scene has no nodes"),
    ("accessor-past-view", r"accessors\[0\] needs 4800 bytes of its buffer view, which has 48"),
    ("missing-bin", "'scene.bin' it refers to is missing"),
    ("wrong-json-type", r"meshes\[0\].primitives must be a JSON array, got str"),
    ("attributes-list", r"primitives\[0\].attributes must be a JSON object, got list"),
    ("gltf-1", "glTF 1.0 file"),
    ("glb-version-1", "glTF 1.0 binary"),
    ("empty", "the file is empty"),
    ("truncated", "truncated"),
    ("bad-json", "JSON is malformed"),
    ("required-extension", "requires the extension.* EXT_meshopt_compression"),
])
def test_broken_gltf_fails_naming_the_file_and_the_problem(tmp_path, defect, message):
    path = _broken_gltf(tmp_path, defect)
    with pytest.raises(MeshFileError, match=message) as info:
        load_mesh(path)
    assert str(path) in str(info.value)


# -- OBJ + MTL ------------------------------------------------------------------------------------------------
QUAD_OBJ = "v -0.5 0.5 0\nv 0.5 0.5 0\nv 0.5 -0.5 0\nv -0.5 -0.5 0\nvt 0 1\nvt 1 1\nvt 1 0\nvt 0 0\n"


def _obj(tmp_path, map_line: str, faces: str = "f 1/1 4/4 3/3 2/2\n", mtl_name: str = "quad.mtl",
         kd: str = "0.8 0.1 0.1"):
    (tmp_path / mtl_name).write_text(f"newmtl skin\nKd {kd}\n{map_line}\n")
    path = tmp_path / "quad.obj"
    path.write_text(f"mtllib {mtl_name}\n{QUAD_OBJ}usemtl skin\n{faces}")
    return path


@pytest.mark.parametrize("written, stored", [
    (r"map_Kd .\textures\skin.jpg", "textures/skin.jpg"),
    (r"map_Kd C:\Users\bob\My Assets\Skin Tex.PNG", "skin tex.png"),
    ("map_Kd /home/someone/else/tex/SKIN.png", "maps/skin.png"),
    ("map_Kd my skin.png", "my skin.png"),
    ("map_Kd -s 1 1 1 -o 0 0 0 -bm 0.5 -clamp on textures/skin.png", "textures/skin.png"),
])
def test_obj_texture_paths_from_other_machines_resolve_by_file_name(tmp_path, written, stored):
    target = tmp_path / stored
    target.parent.mkdir(parents=True, exist_ok=True)
    corner_png(target.with_suffix(".png") if target.suffix != ".jpg" else tmp_path / "x.png", size=64)
    if target.suffix == ".jpg":
        from PIL import Image

        Image.open(tmp_path / "x.png").save(target, quality=100)
    asset = load_mesh(_obj(tmp_path, written, faces="f 1/1 4/4 3/3\nf 1/1 3/3 2/2\n"))
    assert asset.materials[0].texture is not None, written
    np.testing.assert_allclose(quadrants(asset), CORNERS, atol=0.08 if target.suffix == ".jpg" else 0.05)


def test_obj_missing_texture_warns_and_uses_kd(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dreamcore.meshes"):
        asset = load_mesh(_obj(tmp_path, r"map_Kd D:\work\lost_texture.tga"))
    assert "lost_texture.tga" in caplog.text
    assert asset.materials[0].texture is None
    assert asset.materials[0].base_color == pytest.approx((0.8, 0.1, 0.1))


def test_obj_map_kd_scale_and_offset_apply_to_the_uvs(tmp_path):
    corner_png(tmp_path / "skin.png")
    asset = load_mesh(_obj(tmp_path, "map_Kd -s 0.5 1 1 -o 0.5 0 0 skin.png"))
    u = asset.uvs.numpy()[:, 0]
    assert u.min() == pytest.approx(0.5) and u.max() == pytest.approx(1.0)


def test_obj_quads_ngons_negative_indices_materials_and_vertex_colours(tmp_path):
    (tmp_path / "m.mtl").write_text("newmtl red\nKd 1 0 0\nnewmtl blue\nKd 0 0 1\n")
    hexagon = "".join(f"v {np.cos(a):.6f} {np.sin(a):.6f} 2 0.5 0.5 0.5\n" for a in np.arange(6) * np.pi / 3)
    text = ("mtllib m.mtl\nv 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 1 1 0 0 0 1\nv 0 1 0 1 1 1\n"
            "usemtl red\nf -4 -3 -2 -1\n" + hexagon + "usemtl blue\nf -6 -5 -4 -3 -2 -1\n")
    (tmp_path / "m.obj").write_text(text)
    asset = load_mesh(tmp_path / "m.obj")
    assert len(asset.faces) == 2 + 4  # quad -> 2, hexagon -> 4
    assert [m.base_color for m in asset.materials] == [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    assert asset.face_material.tolist() == [0, 0, 1, 1, 1, 1]
    colours = {tuple(np.round(c, 3)) for c in asset.vertex_colors.numpy()}
    assert {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.5, 0.5, 0.5)} <= colours
    area = sum(float(torch.cross(*(asset.vertices[f[1:]] - asset.vertices[f[0]]), dim=-1).norm()) / 2
               for f in asset.faces[2:])
    assert area == pytest.approx(3 * np.sqrt(3) / 2, rel=1e-4)  # the whole regular hexagon is covered


def test_obj_vertex_colours_in_0_255_and_latin1_mtl(tmp_path):
    (tmp_path / "m.mtl").write_bytes("newmtl façade\nKd 0 1 0\n".encode("latin-1"))
    (tmp_path / "m.obj").write_bytes("mtllib m.mtl\nv 0 0 0 255 0 0\nv 1 0 0 255 0 0\nv 0 1 0 255 0 0\n"
                                     "usemtl façade\nf 1 2 3\n".encode("latin-1"))
    asset = load_mesh(tmp_path / "m.obj")
    assert asset.materials[0].base_color == (0.0, 1.0, 0.0)
    np.testing.assert_allclose(asset.vertex_colors.numpy(), [[1, 0, 0]] * 3)


@pytest.mark.parametrize("text, message", [
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "line 4: vertex index 9 is outside the 3 vertices"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "line 4: OBJ indices start at 1"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 -4\n", "vertex index -4 is outside"),
    ("v 0 0 0\nv 1 0 0\nl 1 2\n", "only points or lines"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "3 vertices and no faces"),
    ("v 0 inf 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN or infinite"),
    ("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "zero area"),
    ("v 0 zero 0\n", "line 1: 'v' needs numbers"),
    ("", "the file is empty"),
])
def test_broken_obj_fails_naming_the_file_line_and_problem(tmp_path, text, message):
    path = tmp_path / "broken.obj"
    path.write_text(text)
    with pytest.raises(MeshFileError, match=message) as info:
        load_mesh(path)
    assert str(path) in str(info.value)


# -- PLY and STL ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_formats_with_uchar_colours_and_quads(tmp_path, fmt):
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    path = write_ply(tmp_path / "q.ply", QUAD_POS, [[0, 3, 2, 1]], fmt=fmt,
                     vertex_props={"red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]})
    asset = load_mesh(path)
    assert asset.faces.shape == (2, 3)
    np.testing.assert_allclose(asset.vertices.numpy(), QUAD_POS)
    np.testing.assert_allclose(asset.vertex_colors.numpy(), rgb / 255.0)


def test_ply_float_colours_uvs_and_texture_comment(tmp_path):
    corner_png(tmp_path / "tex.png")
    uv_obj = np.stack([QUAD_UV[:, 0], 1 - QUAD_UV[:, 1]], 1).astype(np.float32)  # PLY stores v up
    grey = np.full(4, 0.5, np.float32)
    path = write_ply(tmp_path / "t.ply", QUAD_POS, [[0, 3, 2], [0, 2, 1]], fmt="binary_little_endian",
                     vertex_props={"s": uv_obj[:, 0], "t": uv_obj[:, 1], "red": grey, "green": grey,
                                   "blue": grey}, comments=["TextureFile tex.png"])
    asset = load_mesh(path)
    np.testing.assert_allclose(asset.uvs.numpy(), QUAD_UV, atol=1e-6)
    np.testing.assert_allclose(asset.vertex_colors.numpy(), 0.5)
    np.testing.assert_allclose(quadrants(asset), CORNERS * 0.5, atol=0.05)


def test_ply_face_colours(tmp_path):
    path = write_ply(tmp_path / "f.ply", QUAD_POS, [[0, 3, 2], [0, 2, 1]], fmt="binary_little_endian",
                     face_props={"red": np.array([255, 0], np.uint8), "green": np.array([0, 0], np.uint8),
                                 "blue": np.array([0, 255], np.uint8)})
    asset = load_mesh(path)
    np.testing.assert_allclose(asset.vertex_colors.numpy()[asset.faces[0]], [[1, 0, 0]] * 3)
    np.testing.assert_allclose(asset.vertex_colors.numpy()[asset.faces[1]], [[0, 0, 1]] * 3)


@pytest.mark.parametrize("defect, message", [
    ("point-cloud", "4 vertices and no faces"),
    ("index", "vertex index 7 is outside the 4 vertices"),
    ("truncated", "truncated"),
    ("empty", "the file is empty"),
    ("not-ply", "not a PLY file"),
])
def test_broken_ply_fails_in_words(tmp_path, defect, message):
    path = tmp_path / "b.ply"
    if defect == "point-cloud":
        write_ply(path, QUAD_POS, None, fmt="binary_little_endian")
    elif defect == "index":
        write_ply(path, QUAD_POS, [[0, 1, 7]], fmt="ascii")
    elif defect == "truncated":
        write_ply(path, QUAD_POS, [[0, 1, 2]], fmt="binary_little_endian")
        path.write_bytes(path.read_bytes()[:-6])
    elif defect == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("solid nothing\n")
    with pytest.raises(MeshFileError, match=message) as info:
        load_mesh(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("binary", [True, False])
def test_stl_loads_grey_and_says_so(tmp_path, caplog, binary):
    box = trimesh.creation.box((1, 1, 1))
    path = tmp_path / "box.stl"
    path.write_bytes(trimesh.exchange.stl.export_stl(box) if binary else
                     trimesh.exchange.stl.export_stl_ascii(box).encode())
    with caplog.at_level(logging.INFO, logger="dreamcore.meshes"):
        asset = load_mesh(path)
    assert asset.faces.shape == (12, 3) and asset.vertex_colors is None
    assert asset.materials[0].base_color == (0.7, 0.7, 0.7)
    assert "no colour" in caplog.text


def test_empty_stl_is_refused(tmp_path):
    (tmp_path / "e.stl").write_bytes(b"")
    with pytest.raises(MeshFileError, match="empty"):
        load_mesh(tmp_path / "e.stl")


# -- every place a mesh file enters: refused before any work, in words, nothing written ------------------------
@pytest.mark.parametrize("config, key", [
    ("reference-nerf", "prior.reference.mesh={bad}"),
    ("reference-nerf", "prior.reference.extra_meshes=[{bad}]"),
    ("reference-nerf", "eval.mesh={bad}"),
    ("texture", "mesh={bad}"),
    ("reference-gaussians", "representation.init=file|representation.init_file={bad}"),
])
def test_a_broken_file_at_every_entry_fails_before_any_work(tmp_path, capsys, config, key):
    from dreamcore.cli import main

    g = Gltf()
    g.node(mesh=g.mesh(g.primitive(QUAD_POS, np.array([0, 1, 40], np.uint16))))
    bad = g.write_glb(tmp_path / "bad indices.glb")
    run = tmp_path / "run"
    overrides = key.format(bad=bad).split("|")
    rc = main(["generate", "--config", f"configs/{config}.yaml", "a robot", f"run.dir={run}", "run.steps=2"]
              + overrides)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(bad) in err and "vertex index 40 is outside the 4 vertices" in err
    assert "Traceback" not in err
    assert not run.exists()


def test_a_ply_point_cloud_is_accepted_as_a_gaussian_init_file(tmp_path):
    from dreamcore.errors import DreamcoreError
    from dreamcore.representations.gaussians import sample_file

    pts = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    rgb = np.full(50, 255, np.uint8)
    path = write_ply(tmp_path / "cloud.ply", pts, None, fmt="binary_little_endian",
                     vertex_props={"red": rgb, "green": np.zeros(50, np.uint8), "blue": np.zeros(50, np.uint8)})
    got, colors = sample_file(str(path), 20, torch.Generator().manual_seed(0))
    assert got.shape == (20, 3) and torch.isin(got[:, 0], torch.from_numpy(pts[:, 0])).all()
    assert torch.allclose(colors, torch.tensor([1.0, 0.0, 0.0]).expand(20, 3))
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n")
    with pytest.raises(DreamcoreError, match="init_file=.*bad.ply"):
        sample_file(str(tmp_path / "bad.ply"), 5, None)
