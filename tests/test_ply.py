"""3DGS PLY files: exact property layout, round trip (with and without the reference frame), the ``ply``
exporter through ``dreamcore generate`` next to the mesh export."""

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.errors import DreamcoreError
from dreamcore.export.ply import property_names, read_ply, write_ply
from dreamcore.meshes.asset import SceneTransform
from test_gaussians import GTINY


def random_gaussians(n=50, degree=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {"means": torch.randn(n, 3, generator=g), "log_scales": torch.randn(n, 3, generator=g) - 3,
            "quats": torch.randn(n, 4, generator=g), "opacity_logits": torch.randn(n, generator=g),
            "sh_dc": torch.randn(n, 1, 3, generator=g), "sh_rest": torch.randn(n, k - 1, 3, generator=g)}


def test_layout_is_the_3dgs_one():
    names = property_names(15)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("degree", [0, 3])
def test_round_trip_is_exact_and_channel_major(tmp_path, degree):
    g = random_gaussians(degree=degree)
    path = write_ply(tmp_path / "a.ply", **g)
    back = read_ply(path)
    for k, v in g.items():
        assert torch.equal(back[k], v), k
    # an independent reader sees the vertex element with the positions
    cloud = trimesh.load(path, process=False)
    assert np.allclose(np.asarray(cloud.vertices), g["means"].numpy())
    # raw layout: f_rest_j is channel-major (red's K-1 coefficients first)
    raw = path.read_bytes()
    body = np.frombuffer(raw[raw.find(b"end_header\n") + 11:], dtype="<f4").reshape(50, -1)
    if degree:
        assert np.allclose(body[:, 9 + 15], g["sh_rest"][:, 0, 1].numpy())  # first green coefficient
    assert np.allclose(body[:, -8], g["opacity_logits"].numpy())


def test_reference_frame_transform_round_trips(tmp_path):
    g = random_gaussians(degree=1)
    t = SceneTransform(center=(0.5, -1.0, 2.0), scale=0.25)
    path = write_ply(tmp_path / "t.ply", **g, transform=t)
    plain = read_ply(path)
    assert torch.allclose(plain["means"], g["means"] / 0.25 + torch.tensor([0.5, -1.0, 2.0]), atol=1e-5)
    assert torch.allclose(plain["log_scales"], g["log_scales"] - math.log(0.25), atol=1e-6)
    back = read_ply(path, t)
    assert torch.allclose(back["means"], g["means"], atol=1e-5)
    assert torch.allclose(back["log_scales"], g["log_scales"], atol=1e-5)


def test_bad_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply")
    with pytest.raises(DreamcoreError, match="not a PLY"):
        read_ply(bad)


def test_generate_writes_model_ply_and_a_textured_mesh(tmp_path):
    """Without the refinement stage (refine.config=) the mesh is marching cubes of the Gaussians' density."""
    run = tmp_path / "run"
    overrides = [o for o in GTINY if not o.startswith("export.")]
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *overrides, "run.steps=3",
                 "export.formats=[ply,glb]", "export.resolution=48", "export.texture_size=64",
                 "export.isosurface=0.05", "refine.config=", f"run.dir={run}"]) == 0
    assert not (run / "refine").exists()
    ckpt = load_file(str(run / "ckpt/last.safetensors"))
    from dreamcore.meshes.io import load_mesh, normalize

    _, transform = normalize(load_mesh("assets/robot.glb"))
    back = read_ply(run / "model.ply", transform)
    assert torch.allclose(back["means"], ckpt["model.representation.means"], atol=1e-5)
    assert torch.equal(back["opacity_logits"], ckpt["model.representation.opacity_logits"])
    assert (run / "model.glb").stat().st_size > 1000
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["export"]["files"]) >= {"ply", "glb"} and 0.0 <= metrics["glb_iou"] <= 1.0


def test_ply_export_of_a_nerf_run_is_a_clear_error(tmp_path, capsys):
    from test_runner import TINY

    run = tmp_path / "nerf"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "run.steps=1", "export.formats=[ply]",
                 f"run.dir={run}"]) != 0
    assert "writes Gaussians" in capsys.readouterr().err
