"""Slow end-to-end reconstructions through the public interfaces (run by CI with -m slow)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamcore.cli import main
from dreamcore.meshes.io import load_mesh

pytestmark = pytest.mark.slow
VALIDATOR = Path(__file__).resolve().parents[1] / "tools" / "validate_gltf.mjs"
THREE_LOADER = Path(__file__).resolve().parents[1] / "tools" / "load_gltf_threejs.mjs"
THREE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "node" / "node_modules" / "three"


def threejs_report(path: Path):
    """What three.js's GLTFLoader makes of the file (None when node or three is not installed)."""
    node = shutil.which("node")
    if node is None or not THREE_DIR.is_dir():
        return None
    out = subprocess.run([node, str(THREE_LOADER), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def gltf_errors(path: Path):
    """Errors reported by the Khronos glTF validator, or None when it is not installed."""
    node = shutil.which("node")
    if node is None or not VALIDATOR.is_file():
        return None
    out = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True)
    if out.returncode not in (0, 1) or not out.stdout.strip().startswith("{"):
        return None
    return json.loads(out.stdout)["issues"]["numErrors"]


def make_unseen_mesh(path: Path) -> None:
    """A coloured object unlike the robot: a striped mug with a handle and a yellow lid knob, placed far from the
    origin at an odd scale (the export must come back in this frame)."""
    body = trimesh.creation.cylinder(radius=0.5, height=0.9, sections=48)
    handle = trimesh.creation.torus(major_radius=0.28, minor_radius=0.07, major_sections=32, minor_sections=12)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([0.62, 0.0, 0.0])
    knob = trimesh.creation.icosphere(subdivisions=2, radius=0.16)
    knob.apply_translation([0.0, 0.0, 0.52])
    parts = []
    for mesh, colour_fn in [
        (body, lambda v: np.where((np.floor((v[:, 2] + 0.45) * 6) % 2)[:, None] == 0, [220, 40, 40], [240, 240, 240])),
        (handle, lambda v: np.tile([30, 90, 220], (len(v), 1))),
        (knob, lambda v: np.tile([250, 210, 20], (len(v), 1))),
    ]:
        mesh = mesh.copy()
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.c_[colour_fn(mesh.vertices), np.full(len(mesh.vertices), 255)].astype(np.uint8))
        parts.append(mesh)
    mug = trimesh.util.concatenate(parts)
    mug.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # cylinder axis to +Y
    mug.apply_scale(40.0)
    mug.apply_translation([100.0, 20.0, -30.0])
    mug.export(path)


def run_cli(args):
    assert main(args) == 0


def check_run(run: Path, reference: Path, psnr_floor: float, iou_floor: float, chamfer_ceiling: float):
    for name in ("model.glb", "model.obj", "model.mtl", "model.png", "metrics.json", "config.yaml"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert m["glb_psnr"] >= psnr_floor, m
    assert m["glb_iou"] >= iou_floor, m
    assert m["glb_chamfer_rel"] <= chamfer_ceiling, m
    exported, ref = load_mesh(run / "model.glb"), load_mesh(reference)
    assert torch.isfinite(exported.vertices).all()
    lo, hi = exported.vertices.min(0).values, exported.vertices.max(0).values
    rlo, rhi = ref.vertices.min(0).values, ref.vertices.max(0).values
    diag = (rhi - rlo).norm()
    assert ((lo - rlo).abs().max() / diag) < 0.03 and ((hi - rhi).abs().max() / diag) < 0.03  # same frame
    errors = gltf_errors(run / "model.glb")
    assert errors in (None, 0), f"glTF validator found {errors} errors"
    three = threejs_report(run / "model.glb")
    if three is not None:
        assert three["meshes"] == 1 and three["material"] == "MeshStandardMaterial"
        assert three["map"]["width"] > 0 and three["map"]["colorSpace"] == "srgb"
        assert {"position", "normal", "uv"} <= set(three["attributes"])
    return m


def test_demo_reconstructs_the_shipped_asset(tmp_path):
    run = tmp_path / "demo"
    run_cli(["demo", f"run.dir={run}"])
    m = check_run(run, Path(__file__).resolve().parents[1] / "assets" / "robot.glb", 22.0, 0.9, 0.015)
    assert (run / "turntable.mp4").is_file()
    assert m["scene_psnr"] >= 22.0 and m["scene_iou"] >= 0.9


def test_unseen_mesh_in_its_own_frame(tmp_path):
    mesh = tmp_path / "mug.glb"
    make_unseen_mesh(mesh)
    run = tmp_path / "mug"
    run_cli(["generate", "--config", "configs/reference-nerf.yaml", f"prior.reference.mesh={mesh}", f"run.dir={run}",
             "run.steps=800", "run.val_every=0", "export.formats=[glb,obj]", "export.texture_size=512",
             "guidance.t_max=[[0,0.98],[600,0.5]]", "optimizer.lr=[[0,0.01],[700,0.01],[800,0.003]]"])
    check_run(run, mesh, 22.0, 0.9, 0.015)
