"""Hostile model files (issue 34): each file is built here to attack one rule of the loaders, and each must be
refused in words, naming the reference, before anything large is read, decoded or allocated, and never quoting
the bytes of another file. ``DREAMCORE_UNTRUSTED=1`` (a studio job) confines the files a model names to its own
folder; a trusted run (the CLI) still reads its user's files anywhere. Well-formed files still load either way."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from dreamcore.errors import DreamcoreError
from dreamcore.meshes import obj as obj_reader
from dreamcore.meshes.io import load_mesh
from dreamcore.trust import UNTRUSTED_ENV, UntrustedInput
from mesh_files import QUAD_IDX, QUAD_POS, QUAD_UV, Gltf, corner_png, png_bytes, write_ply

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "outside the model's own folder"


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` × ``height`` pixels (its data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def external_quad(folder: Path, uri: str, bin_path: Path | None = None, name: str = "model.gltf") -> Path:
    """A .gltf quad in ``folder`` whose buffer is the file ``uri`` (written at ``bin_path`` when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = Gltf()
    g.quad()
    if bin_path is not None:
        bin_path.parent.mkdir(parents=True, exist_ok=True)
        bin_path.write_bytes(bytes(g.bin))
    path = folder / name
    path.write_text(json.dumps(g._finish(uri)))
    return path


def write_gltf_doc(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


# -- glTF buffers outside the model's folder ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["absolute", "dotdot", "percent-dotdot", "symlink"])
def test_gltf_buffer_outside_the_folder_is_refused_untrusted_and_read_trusted(tmp_path, monkeypatch, how):
    secret = tmp_path / "secret.bin"
    model_dir = tmp_path / "upload"
    uri = {"absolute": str(secret), "dotdot": "../secret.bin", "percent-dotdot": "%2e%2e/secret.bin",
           "symlink": "link.bin"}[how]
    path = external_quad(model_dir, uri, secret)
    if how == "symlink":
        (model_dir / "link.bin").symlink_to(secret)
    assert load_mesh(path).faces.shape == (2, 3)  # trusted: the user's own files, anywhere
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    with pytest.raises(UntrustedInput, match=rf"buffers\[0\].uri refers to '{uri}', {OUTSIDE}") as info:
        load_mesh(path)
    assert str(path) in str(info.value)


def test_gltf_buffer_in_a_sub_folder_loads_untrusted_and_a_sibling_folder_loads_trusted(tmp_path, monkeypatch):
    inside = external_quad(tmp_path / "upload", "data/quad%20buffer.bin", tmp_path / "upload/data/quad buffer.bin")
    sibling = external_quad(tmp_path / "models", "../shared/buffer.bin", tmp_path / "shared/buffer.bin")
    assert load_mesh(sibling).faces.shape == (2, 3)
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    assert load_mesh(inside).faces.shape == (2, 3)
    with pytest.raises(UntrustedInput, match=rf"refers to '../shared/buffer.bin', {OUTSIDE}"):
        load_mesh(sibling)


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "https://example.com/buffer.bin"])
def test_gltf_buffer_uri_with_a_scheme_is_refused_even_trusted(tmp_path, uri):
    path = external_quad(tmp_path, uri)
    with pytest.raises(UntrustedInput, match=r"buffers\[0\].uri refers to .*not URIs"):
        load_mesh(path)


def test_gltf_image_outside_the_folder_is_refused_untrusted(tmp_path, monkeypatch):
    corner_png(tmp_path / "texture.png")
    (tmp_path / "upload").mkdir()
    g = Gltf()
    g.quad(material=g.material(texture=g.texture(b"", uri="../texture.png")))
    path = g.write_gltf(tmp_path / "upload" / "model.gltf")
    assert load_mesh(path).materials[0].texture is not None  # trusted
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    with pytest.raises(UntrustedInput, match=rf"images\[0\].uri refers to '../texture.png', {OUTSIDE}"):
        load_mesh(path)


def test_gltf_index_buffer_in_a_secret_file_is_never_quoted(tmp_path):
    secret = b"TOPSECRET-password=hunter2;" * 4
    (tmp_path / "secret.txt").write_bytes(secret)
    g = Gltf()
    mesh = g.mesh({"attributes": {"POSITION": g.accessor(QUAD_POS)}, "indices": len(g.doc["accessors"])})
    g.node(mesh=mesh)
    doc = g._finish(None)
    doc["buffers"].append({"uri": "secret.txt", "byteLength": len(secret)})
    doc["bufferViews"].append({"buffer": 1, "byteOffset": 0, "byteLength": 24})
    doc["accessors"].append({"bufferView": len(doc["bufferViews"]) - 1, "componentType": 5125, "count": 6,
                             "type": "SCALAR"})
    path = g.write_glb(tmp_path / "model.glb", doc)
    with pytest.raises(DreamcoreError, match=r"indices: 6 vertex indices are outside the 4 vertices") as info:
        load_mesh(path)
    message = str(info.value)
    values = np.frombuffer(secret[:24], "<u4").tolist() + list(secret[:24])
    assert not any(str(v) in message.replace(str(path), "") for v in values if v > 9)
    for word in (b"TOPSECRET", b"password", b"hunter2", b"TOPS", b"hunt"):
        assert word.decode() not in message


# -- declared sizes against the bytes that are there ------------------------------------------------------------
@pytest.mark.parametrize("container", ["external", "glb", "data-uri"])
def test_gltf_huge_byte_length_on_a_small_buffer_is_refused(tmp_path, container):
    g = Gltf()
    g.quad()
    if container == "external":
        doc = g._finish("buffer.bin")
        (tmp_path / "buffer.bin").write_bytes(bytes(g.bin))
        message = r"byteLength is 1000000000000, but the file 'buffer.bin' has only \d+ bytes"
    elif container == "glb":
        doc = g._finish(None)
        message = r"buffers\[0\] holds \d+ bytes, fewer than its byteLength 1000000000000"
    else:
        doc = g._finish("data:application/octet-stream;base64," + base64.b64encode(bytes(g.bin)).decode())
        message = r"data URI holds at most \d+ bytes, fewer than its byteLength 1000000000000"
    doc["buffers"][0]["byteLength"] = 10 ** 12
    path = g.write_glb(tmp_path / "m.glb", doc) if container == "glb" else write_gltf_doc(tmp_path / "m.gltf", doc)
    with pytest.raises(DreamcoreError, match=message):
        load_mesh(path)


def test_gltf_buffer_file_is_read_only_as_far_as_its_byte_length(tmp_path):
    path = external_quad(tmp_path, "buffer.bin", tmp_path / "buffer.bin")
    with open(tmp_path / "buffer.bin", "r+b") as f:  # 8 GiB, sparse: reading it whole would take 8 GiB of memory
        f.truncate(8 << 30)
    start = time.perf_counter()
    assert load_mesh(path).faces.shape == (2, 3)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("defect, message", [
    ("total", r"truncated: its header says 1000000000 bytes"),
    ("chunk", r"truncated inside a GLB chunk \(a chunk of 1000000000 bytes"),
])
def test_glb_lengths_beyond_the_file_are_refused(tmp_path, defect, message):
    g = Gltf()
    g.quad()
    path = g.write_glb(tmp_path / "m.glb")
    raw = bytearray(path.read_bytes())
    if defect == "total":
        struct.pack_into("<I", raw, 8, 10 ** 9)
    else:
        json_length = struct.unpack_from("<I", raw, 12)[0]
        struct.pack_into("<I", raw, 20 + json_length, 10 ** 9)  # the BIN chunk's length
    path.write_bytes(bytes(raw))
    with pytest.raises(DreamcoreError, match=message):
        load_mesh(path)


@pytest.mark.parametrize("defect, message", [
    ("no-buffer-view", r"accessors\[0\] has a count of 100000000 but no bufferView and no sparse values"),
    ("sparse-huge-count", r"accessors\[2\] has no bufferView and a count of 1000000000000, over the"),
    ("count-past-view", r"accessors\[0\] needs 1200000000 bytes of its buffer view, which has 48"),
    ("declared-past-the-limit", r"its 1 placed meshes declare 1000000006 vertices and indices in all, over the"),
    ("offset-past-view", r"accessors\[0\] needs 1000000048 bytes of its buffer view, which has 48"),
    ("view-past-buffer", r"bufferViews\[0\] spans bytes 0..1000000000 of a buffer of \d+ bytes"),
    ("view-offset-past-buffer", r"bufferViews\[0\] spans bytes 1000000000..1000000048 of a buffer"),
    ("stride-below-element", r"accessors\[0\]: its elements are 12 bytes, more than bufferViews\[0\].byteStride 4"),
])
def test_gltf_accessor_counts_are_checked_against_the_bytes_before_allocating(tmp_path, defect, message):
    g = Gltf()
    g.node(mesh=g.mesh(g.primitive(QUAD_POS, QUAD_IDX)))
    doc = g._finish(None)
    acc, view = doc["accessors"][0], doc["bufferViews"][0]
    if defect == "no-buffer-view":
        del acc["bufferView"]
        acc["count"] = 10 ** 8
    elif defect == "sparse-huge-count":  # (zeros, then one value: a COLOR_0 of 10¹² items)
        doc["accessors"].append({"componentType": 5126, "count": 10 ** 12, "type": "VEC3", "sparse": {
            "count": 1, "indices": {"bufferView": 1, "componentType": 5123}, "values": {"bufferView": 0}}})
        doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"] = 2
    elif defect == "count-past-view":
        acc["count"] = 10 ** 8
    elif defect == "declared-past-the-limit":
        acc["count"] = 10 ** 9
    elif defect == "offset-past-view":
        acc["byteOffset"] = 10 ** 9
    elif defect == "view-past-buffer":
        view["byteLength"] = 10 ** 9
    elif defect == "view-offset-past-buffer":
        view["byteOffset"] = 10 ** 9
    else:
        view["byteStride"] = 4
    start = time.perf_counter()
    with pytest.raises(DreamcoreError, match=message):
        load_mesh(g.write_glb(tmp_path / "m.glb", doc))
    assert time.perf_counter() - start < 1


def test_gltf_one_mesh_placed_past_the_limit_is_refused_before_reading(tmp_path):
    g = Gltf()
    positions = g.accessor(np.zeros((200, 3), np.float32))
    mesh = g.mesh(*[{"attributes": {"POSITION": positions}} for _ in range(1000)])  # 1000 × the same accessor
    for _ in range(1000):  # placed 1000 times: 2·10⁸ vertices from a buffer of 2400 bytes
        g.node(mesh=mesh)
    with pytest.raises(DreamcoreError, match=r"its 1000 placed meshes declare 200000000 vertices and indices"):
        load_mesh(g.write_glb(tmp_path / "m.glb"))


def test_gltf_json_nested_too_deeply_is_refused_in_words(tmp_path):
    path = tmp_path / "deep.gltf"
    path.write_text('{"asset": {"version": "2.0"}, "extras": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(DreamcoreError, match="nested too deeply"):
        load_mesh(path)


# -- node graphs ---------------------------------------------------------------------------------------------------
def _chain(depth: int, children) -> dict:
    g = Gltf()
    mesh = g.mesh(g.primitive(QUAD_POS, QUAD_IDX))
    doc = g._finish(None)
    doc["nodes"] = [{"children": children(i)} for i in range(depth)] + [{"mesh": mesh}]
    doc["scenes"] = [{"nodes": [0]}]
    return g, doc


@pytest.mark.parametrize("shape, message", [
    ("listed-twice", r"nodes\[1\] is listed twice in nodes\[0\].children"),
    ("two-parents", r"nodes\[3\] is a child of both nodes\[1\] and nodes\[2\]"),
])
def test_gltf_doubling_node_graph_of_depth_40_fails_fast(tmp_path, shape, message):
    if shape == "listed-twice":  # every node lists the next one twice: 2⁴⁰ paths to the last one
        g, doc = _chain(40, lambda i: [i + 1, i + 1])
    else:  # a ladder: nodes 2k+1 and 2k+2 both list 2k+3 and 2k+4
        g, doc = _chain(81, lambda i: [] if i >= 79 else ([1, 2] if i == 0 else [2 * ((i + 1) // 2) + 1,
                                                                                  2 * ((i + 1) // 2) + 2]))
    path = g.write_glb(tmp_path / "m.glb", doc)
    start = time.perf_counter()
    with pytest.raises(DreamcoreError, match=message):
        load_mesh(path)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("children, message", [
    ({0: [1], 1: [0]}, r"nodes\[\d\] is its own ancestor \(a cycle in the node hierarchy\)"),
    ({0: [0]}, r"nodes\[0\] is its own ancestor"),
    ({0: [3], 1: [2], 2: [1]}, r"nodes\[\d\] is its own ancestor"),  # a cycle the scene does not reach
])
def test_gltf_node_cycle_is_refused_in_words(tmp_path, children, message):
    g, doc = _chain(3, lambda i: children.get(i, []))
    with pytest.raises(DreamcoreError, match=message):
        load_mesh(g.write_glb(tmp_path / "m.glb", doc))


def test_gltf_scene_listing_a_child_or_a_node_twice_is_refused(tmp_path):
    g, doc = _chain(1, lambda i: [1])
    doc["scenes"] = [{"nodes": [0, 1]}]
    with pytest.raises(DreamcoreError, match=r"scenes\[0\].nodes lists nodes\[1\], which is a child of nodes\[0\]"):
        load_mesh(g.write_glb(tmp_path / "a.glb", doc))
    doc["scenes"] = [{"nodes": [0, 0]}]
    with pytest.raises(DreamcoreError, match=r"scenes\[0\].nodes lists nodes\[0\] twice"):
        load_mesh(g.write_glb(tmp_path / "b.glb", doc))


# -- images: sized before they are decoded -------------------------------------------------------------------------
@pytest.mark.parametrize("width, height", [(9000, 9000), (100_000, 100_000)])
def test_gltf_embedded_png_claiming_a_huge_size_is_refused_before_decoding(tmp_path, width, height):
    g = Gltf()  # 9000² is over dreamcore's 8192² and under PIL's own limits; 100000² is over PIL's too
    g.quad(material=g.material(texture=g.texture(png_header(width, height))))
    with pytest.raises(DreamcoreError, match=rf"images\[0\] is (over the limit of|{width}×{height} pixels, over)"):
        load_mesh(g.write_glb(tmp_path / "m.glb"))


def test_gltf_data_uri_image_over_the_configured_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCORE_MAX_IMAGE_PIXELS", "1000")
    g = Gltf()
    g.quad(material=g.material(texture=g.texture(b"", uri="data:image/png;base64,"
                                                 + base64.b64encode(png_bytes(40)).decode())))
    with pytest.raises(DreamcoreError, match=r"images\[0\] is 40×40 pixels, over the limit of 1000 pixels"):
        load_mesh(g.write_gltf(tmp_path / "m.gltf"))


def test_many_small_images_together_are_refused_and_one_shared_image_is_decoded_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCORE_MAX_IMAGE_PIXELS", "1000")  # 8000 pixels for all of a model's images
    shared = Gltf()
    texture = shared.texture(png_bytes(30))
    for k in range(20):  # 20 materials, one 900-pixel image
        shared.quad(material=shared.material(texture=texture), translation=[k, 0, 0])
    asset = load_mesh(shared.write_glb(tmp_path / "shared.glb"))
    assert len(asset.materials) == 20 and all(m.texture is asset.materials[0].texture for m in asset.materials)
    many = Gltf()
    for k in range(9):  # 9 images of 900 pixels: 8100
        many.quad(material=many.material(texture=many.texture(png_bytes(30))), translation=[k, 0, 0])
    with pytest.raises(DreamcoreError, match=r"images\[8\] is 30×30 pixels, which would take the model's images "
                                             r"over 8000 pixels in all"):
        load_mesh(many.write_glb(tmp_path / "many.glb"))


# -- OBJ + MTL -----------------------------------------------------------------------------------------------------
QUAD_OBJ = "v -0.5 0.5 0\nv 0.5 0.5 0\nv 0.5 -0.5 0\nv -0.5 -0.5 0\nvt 0 1\nvt 1 1\nvt 1 0\nvt 0 0\n"


def _obj(folder: Path, mtl_ref: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "quad.obj"
    path.write_text(f"mtllib {mtl_ref}\n{QUAD_OBJ}usemtl skin\nf 1/1 4/4 3/3 2/2\n")
    return path


@pytest.mark.parametrize("ref", ["../shared.mtl", "%2e%2e/shared.mtl", "ABSOLUTE"])
def test_obj_mtllib_outside_the_folder_is_refused_untrusted_and_read_trusted(tmp_path, monkeypatch, ref):
    (tmp_path / "shared.mtl").write_text("newmtl skin\nKd 0 1 0\n")
    ref = str(tmp_path / "shared.mtl") if ref == "ABSOLUTE" else ref
    path = _obj(tmp_path / "upload", ref)
    assert load_mesh(path).materials[0].base_color == (0.0, 1.0, 0.0)
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    with pytest.raises(UntrustedInput, match=rf"line 1: mtllib refers to '{ref}', {OUTSIDE}"):
        load_mesh(path)


@pytest.mark.parametrize("map_line, message", [
    ("map_Kd ../skin.png", r"material 'skin': map_Kd refers to '../skin.png'"),
    ("map_Kd -s 1 1 1 %2E%2E/skin.png", r"map_Kd refers to '%2E%2E/skin.png'"),
    ("map_Kd linked.png", r"map_Kd refers to 'linked.png'"),  # found by its name: a symbolic link out of the folder
    ("map_Bump /etc/passwd", r"line 3: map_bump refers to '/etc/passwd'"),  # never read, still refused
])
def test_obj_texture_outside_the_folder_is_refused_untrusted_and_read_trusted(tmp_path, monkeypatch, map_line,
                                                                              message):
    corner_png(tmp_path / "skin.png")
    upload = tmp_path / "upload"
    (upload / "maps").mkdir(parents=True)
    (upload / "maps" / "linked.png").symlink_to(tmp_path / "skin.png")
    (upload / "quad.mtl").write_text(f"newmtl skin\nKd 0.8 0.1 0.1\n{map_line}\n")
    path = _obj(upload, "quad.mtl")
    trusted = load_mesh(path)
    assert (trusted.materials[0].texture is None) == map_line.startswith("map_Bump")
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    with pytest.raises(UntrustedInput, match=rf"{message}, {OUTSIDE}") as info:
        load_mesh(path)
    assert str(upload / "quad.mtl") in str(info.value)


def test_obj_texture_over_the_image_limit_is_refused_before_decoding(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_header(9000, 9000))
    (tmp_path / "quad.mtl").write_text("newmtl skin\nmap_Kd huge.png\n")
    with pytest.raises(DreamcoreError, match=r"material 'skin': map_Kd is 9000×9000 pixels, over the limit"):
        load_mesh(_obj(tmp_path, "quad.mtl"))


def test_obj_naming_one_mtl_and_texture_many_times_reads_each_once(tmp_path, monkeypatch):
    corner_png(tmp_path / "skin.png")
    (tmp_path / "quad.mtl").write_text("".join(f"newmtl m{k}\nmap_Kd skin.png\n" for k in range(50)))
    faces = "".join(f"usemtl m{k}\nf 1/1 4/4 3/3 2/2\n" for k in range(50))
    (tmp_path / "quad.obj").write_text("mtllib quad.mtl\n" * 2000 + QUAD_OBJ + faces)
    calls = {"mtl": 0, "image": 0}
    parse, open_image = obj_reader._parse_mtl, obj_reader.open_image

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(obj_reader, "_parse_mtl", counted("mtl", parse))
    monkeypatch.setattr(obj_reader, "open_image", counted("image", open_image))
    asset = load_mesh(tmp_path / "quad.obj")
    assert len(asset.materials) == 50 and asset.materials[49].texture is not None
    assert calls == {"mtl": 1, "image": 1}


def test_obj_messages_name_the_line_not_its_text(tmp_path):
    path = tmp_path / "m.obj"
    path.write_text("v 0 0 0\nv 1 0 TOPSECRET\n")
    with pytest.raises(DreamcoreError, match=r"line 2: 'v' needs numbers") as info:
        load_mesh(path)
    assert "TOPSECRET" not in str(info.value)
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99999999999999999999999999999\n")
    with pytest.raises(DreamcoreError, match=r"line 4: vertex index 99999999999999999\.\.\. is outside the 3"):
        load_mesh(path)


# -- PLY -----------------------------------------------------------------------------------------------------------
def _textured_ply(path: Path, texture_ref: str) -> Path:
    uv = np.stack([QUAD_UV[:, 0], 1 - QUAD_UV[:, 1]], 1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_ply(path, QUAD_POS, [[0, 3, 2], [0, 2, 1]], fmt="binary_little_endian",
                     vertex_props={"s": uv[:, 0], "t": uv[:, 1]}, comments=[f"TextureFile {texture_ref}"])


def test_ply_texture_file_outside_the_folder_is_refused_untrusted_and_read_trusted(tmp_path, monkeypatch):
    corner_png(tmp_path / "tex.png")
    path = _textured_ply(tmp_path / "upload" / "t.ply", "../tex.png")
    assert load_mesh(path).materials[0].texture is not None
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    with pytest.raises(UntrustedInput, match=rf"comment TextureFile refers to '../tex.png', {OUTSIDE}"):
        load_mesh(path)


def test_ply_texture_over_the_configured_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCORE_MAX_IMAGE_PIXELS", "1000")
    corner_png(tmp_path / "tex.png", size=40)
    with pytest.raises(DreamcoreError, match=r"TextureFile is 40×40 pixels, over the limit of 1000 pixels"):
        load_mesh(_textured_ply(tmp_path / "t.ply", "tex.png"))


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_header_claiming_10_to_the_12_vertices_in_200_bytes_is_refused_at_once(tmp_path, fmt):
    head = (f"ply\nformat {fmt} 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\n"
            "property float z\nend_header\n").encode()
    path = tmp_path / "bomb.ply"
    path.write_bytes(head + b"0 " * ((200 - len(head)) // 2))
    assert path.stat().st_size <= 200
    start = time.perf_counter()
    with pytest.raises(DreamcoreError, match=r"element 'vertex' declares 1000000000000 items \(at least \d+ bytes "
                                             r"each\), but the file holds only \d+ bytes after its header"):
        load_mesh(path)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("defect, message", [
    ("negative-count", r"header line 3: element 'vertex' has a negative count"),
    ("float-list-length", r"the length of list 'vertex_indices' must be an integer type, not float"),
    ("negative-list-length", r"element 'face': a 'vertex_indices' list has a negative length"),
    ("face-index", r"faces: vertex index 1000000 is outside the 3 vertices"),
])
def test_ply_malformed_counts_are_refused_in_words(tmp_path, defect, message):
    count_type = "float" if defect == "float-list-length" else "char"
    head = ("ply\nformat binary_little_endian 1.0\n"
            f"element vertex {-3 if defect == 'negative-count' else 3}\n"
            "property float x\nproperty float y\nproperty float z\n"
            f"element face 1\nproperty list {count_type} int vertex_indices\nend_header\n").encode()
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], "<f4").tobytes()
    length = -1 if defect == "negative-list-length" else 3
    face = struct.pack("<b3i", length, 0, 1, 1_000_000 if defect == "face-index" else 2)
    path = tmp_path / "bad.ply"
    path.write_bytes(head + verts + face)
    with pytest.raises(DreamcoreError, match=message):
        load_mesh(path)


# -- well-formed files still load in an untrusted job ------------------------------------------------------------
def test_well_formed_files_load_untrusted(tmp_path, monkeypatch):
    robot = load_mesh(ROOT / "assets" / "robot.glb")
    (tmp_path / "gltf" / "textures").mkdir(parents=True)
    (tmp_path / "gltf" / "textures" / "skin.png").write_bytes(png_bytes(64))
    g = Gltf()
    g.quad(material=g.material(texture=g.texture(b"", uri="textures/skin.png")))
    gltf = g.write_gltf(tmp_path / "gltf" / "quad.gltf", embed=False, bin_name="quad.bin")
    (tmp_path / "obj" / "maps").mkdir(parents=True)
    corner_png(tmp_path / "obj" / "maps" / "skin.png")
    (tmp_path / "obj" / "quad.mtl").write_text("newmtl skin\nmap_Kd C:\\Users\\bob\\skin.png\n")  # found by name
    obj = _obj(tmp_path / "obj", "quad.mtl")
    (tmp_path / "ply").mkdir()
    corner_png(tmp_path / "ply" / "tex.png")
    ply = _textured_ply(tmp_path / "ply" / "t.ply", "tex.png")
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    assert np.array_equal(load_mesh(ROOT / "assets" / "robot.glb").vertices.numpy(), robot.vertices.numpy())
    assert load_mesh(gltf).materials[0].texture.shape == (64, 64, 3)
    assert load_mesh(obj).materials[0].texture is not None
    assert load_mesh(ply).materials[0].texture is not None
