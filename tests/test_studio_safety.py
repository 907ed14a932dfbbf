"""What the studio accepts from a web page (dreamcore/studio/safety.py): ``check_overrides`` refuses the keys that
name code or storage and every path value outside the runs folder, rewrites the paths inside it to absolute ones and
lets hub ids and plain values through; ``sniff`` types bytes as a mesh format or None; ``save_upload`` enforces the
size limit, judges a file by its content, and unpacks a zip of an OBJ with its MTL and textures without letting an
entry escape, link, multiply or inflate past the limit."""

import json
import struct
import zipfile
from pathlib import Path

import pytest

from dreamcore.config import parse_overrides
from dreamcore.errors import DreamcoreError
from dreamcore.studio import safety
from dreamcore.studio.safety import UnsafeInput, check_overrides, save_upload, sniff

ROBOT = Path(__file__).resolve().parents[1] / "assets" / "robot.glb"
OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
MODEL = {"model.obj": b"mtllib model.mtl\n" + OBJ, "model.mtl": b"newmtl m\nmap_Kd textures/tex.png\n",
         "textures/tex.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 16}


def binary_stl(n: int) -> bytes:
    return b"\0" * 80 + struct.pack("<I", n) + struct.pack("<12fH", *([0.0] * 12), 0) * n


def make_zip(path: Path, entries: dict, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


def read(lines: list[str]) -> dict:
    """The values the engine reads from override lines."""
    return parse_overrides(lines)


def files_under(root: Path) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


# -- check_overrides --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("item,key", [
    ("plugins=[x.py]", "plugins"), ("plugins=x", "plugins"), ("+plugins=x", "plugins"), ("extends=a.yaml", "extends"),
    ("run.dir=/tmp/x", "run.dir"), ("prior.cache_dir=/tmp", "prior.cache_dir"), ("refine.config=r", "refine.config")])
def test_refused_keys(tmp_path, item, key):
    with pytest.raises(UnsafeInput, match=f"{key} cannot be set from the studio"):
        check_overrides([item], tmp_path)


@pytest.mark.parametrize("item,value", [
    ("prior.reference.mesh=../x.glb", "../x.glb"), ("mesh=/etc/passwd", "/etc/passwd"),
    ("prior.reference.mesh=~/x.glb", "~/x.glb"),
    ("extra_meshes=[run1/a.glb, /etc/x.glb]", "/etc/x.glb")])
def test_paths_outside_runs_dir_are_refused(tmp_path, item, value):
    with pytest.raises(UnsafeInput, match="outside the studio's runs folder") as e:
        check_overrides([item], tmp_path)
    assert f": {value} is outside" in str(e.value) and str(tmp_path.resolve()) in str(e.value)


@pytest.mark.parametrize("value", ["C:\\x.glb", "C:\\..\\..\\x.glb", "d:/models/x.obj"])
def test_windows_drive_path_is_refused(tmp_path, value):
    with pytest.raises(UnsafeInput, match="a path on another machine"):
        check_overrides([f"prior.reference.mesh={value}"], tmp_path)


def test_relative_path_inside_runs_dir_is_made_absolute(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "x.glb").write_bytes(b"glTF")
    mesh = str((tmp_path / "run1" / "x.glb").resolve())
    assert check_overrides(["prior.reference.mesh=run1/x.glb"], tmp_path) == [f"prior.reference.mesh={json.dumps(mesh)}"]
    assert read(check_overrides(["extra_meshes=[run1/x.glb]"], tmp_path)) == {"extra_meshes": [mesh]}


def test_hub_id_plain_values_and_empty_lines_pass_unchanged(tmp_path):
    items = ["prior.model=stabilityai/stable-diffusion-2-1-base", "run.steps=300", "", "  ",
             "guidance.guidance_scale=7.5", "prompt=a red chair"]
    assert read(check_overrides(items, tmp_path)) == read([i for i in items if i.strip()])
    assert len(check_overrides(items, tmp_path)) == 4
    hub = "stabilityai/stable-diffusion-2-1-base"  # the hub-id pass is only for a model leaf: elsewhere, a path
    assert read(check_overrides([f"prior.reference.mesh={hub}"], tmp_path)) == {
        "prior": {"reference": {"mesh": str(tmp_path / hub)}}}


def test_malformed_override_gets_the_parser_message(tmp_path):
    with pytest.raises(DreamcoreError, match="override 'run.steps' is not of the form key=value"):
        check_overrides(["run.steps"], tmp_path)


@pytest.mark.parametrize("item", ["run={dir: elsewhere}", "prior={cache_dir: cache}"])
def test_refused_key_given_as_a_mapping_is_refused(tmp_path, item):
    with pytest.raises(UnsafeInput):
        check_overrides([item], tmp_path)


def test_prompt_with_a_slash_is_not_rewritten(tmp_path):
    assert read(check_overrides(["prompt=a red/blue chair"], tmp_path)) == {"prompt": "a red/blue chair"}


# -- sniff ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,kind", [
    (b"glTF\x02\0\0\0" + b"\0" * 16, "glb"), (b"PK\x03\x04" + b"\0" * 26, "zip"),
    (b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n", "ply"), (b"solid cube\nendsolid cube\n", "stl"),
    (binary_stl(1), "stl"), (binary_stl(3), "stl"), (b"# tri\n" + OBJ, "obj"),
    (b'  {"asset": {"version": "2.0"}}', "gltf")])
def test_sniff_known_formats(data, kind):
    assert sniff(data) == kind


def test_sniff_rejects_noise_text_and_lying_stl_counts():
    assert sniff(bytes(range(256)) * 4) is None
    assert sniff(b"This is a plain English text about a chair.\nNothing else.\n") is None
    assert sniff(binary_stl(2)[:-1]) is None  # the triangle count does not match the size


# -- save_upload ------------------------------------------------------------------------------------------------

def test_upload_over_limit_or_empty_is_refused(tmp_path):
    big = tmp_path / "big.glb"
    big.write_bytes(b"glTF" + b"\0" * (3 * 2**20))
    with pytest.raises(UnsafeInput, match=r"3\.0 MB, over the studio's limit of 1 MB"):
        save_upload(big, tmp_path / "dest", limit_bytes=2**20)
    (tmp_path / "empty.glb").write_bytes(b"")
    with pytest.raises(UnsafeInput, match="empty"):
        save_upload(tmp_path / "empty.glb", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_upload_typed_by_content_not_name(tmp_path):
    fake = tmp_path / "robot.glb"
    fake.write_text("hello, I am definitely a mesh\n")
    with pytest.raises(UnsafeInput, match="judged by its content"):
        save_upload(fake, tmp_path / "dest")
    out = save_upload(ROBOT, tmp_path / "dest")
    assert out == tmp_path / "dest" / "upload.glb" and out.read_bytes() == ROBOT.read_bytes()
    (tmp_path / "mesh.bin").write_bytes(b"# tri\n" + OBJ)
    assert save_upload(tmp_path / "mesh.bin", tmp_path / "d2") == tmp_path / "d2" / "upload.obj"


def test_upload_large_binary_stl(tmp_path):
    (tmp_path / "m.stl").write_bytes(binary_stl(200))
    assert save_upload(tmp_path / "m.stl", tmp_path / "dest") == tmp_path / "dest" / "upload.stl"


def test_zip_of_obj_mtl_texture_is_unpacked(tmp_path):
    extra = {"__MACOSX/._model.obj": b"\0\x05\x16\x07", "__MACOSX/model.obj": OBJ, "readme.txt": b"hi"}
    src = make_zip(tmp_path / "m.zip", {**MODEL, **extra})
    out = save_upload(src, tmp_path / "dest")
    up = tmp_path / "dest" / "upload"
    assert out == (up / "model.obj").resolve() and out.read_bytes() == MODEL["model.obj"]
    assert (up / "model.mtl").read_bytes() == MODEL["model.mtl"]
    assert (up / "textures" / "tex.png").read_bytes() == MODEL["textures/tex.png"]
    assert files_under(tmp_path / "dest") == {up / n for n in MODEL}  # __MACOSX and readme left packed


@pytest.mark.parametrize("entries,symlink,message", [
    ({**MODEL, "../evil.obj": OBJ}, None, "outside its folder: '../evil.obj'"),
    ({**MODEL, "/tmp/evil.obj": OBJ}, None, "outside its folder"),
    ({"model.mtl": b"", "textures/tex.png": b"x"}, "link.obj", "symbolic link: 'link.obj'"),
    ({"model.mtl": b"", "textures/tex.png": b"x"}, None, "exactly one model file.*found none"),
    ({"a.obj": OBJ, "b.obj": OBJ}, None, "exactly one model file.*found a.obj, b.obj")])
def test_bad_zips_are_refused(tmp_path, entries, symlink, message):
    src = make_zip(tmp_path / "bad.zip", entries, symlink)
    before = files_under(tmp_path)
    with pytest.raises(UnsafeInput, match=message):
        save_upload(src, tmp_path / "dest")
    new = files_under(tmp_path) - before
    assert all(p.is_relative_to(tmp_path / "dest" / "upload") for p in new) and not Path("/tmp/evil.obj").exists()
    assert not any(p.is_symlink() for p in (tmp_path / "dest").rglob("*"))


def test_zip_with_too_many_members_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "ZIP_MAX_MEMBERS", 3)
    src = make_zip(tmp_path / "many.zip", {**MODEL, "textures/b.png": b"x"})
    with pytest.raises(UnsafeInput, match=r"holds 4 files \(at most 3\)"):
        save_upload(src, tmp_path / "dest")
    assert not (tmp_path / "dest" / "upload").exists()


def test_zip_that_unpacks_past_the_limit_is_refused(tmp_path):
    src = make_zip(tmp_path / "bomb.zip", {"model.obj": OBJ, "textures/big.png": b"\0" * (3 * 2**20)})
    assert src.stat().st_size < 2**20  # the zip itself is under the limit, its contents are not
    with pytest.raises(UnsafeInput, match=r"unpacks to .*over the limit of 1 MB"):
        save_upload(src, tmp_path / "dest", limit_bytes=2**20)
    assert not (tmp_path / "dest" / "upload" / "textures" / "big.png").exists()
