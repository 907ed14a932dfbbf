"""Explicit meshes: loading and welding, vertex offsets moved by silhouettes, texture-only runs and direct export."""

from __future__ import annotations

import json

import pytest
import torch

from dreamcore import registry
from dreamcore.cameras import sample_orbit
from dreamcore.cli import main
from dreamcore.config import config_path, load_config, parse_component
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.io import load_mesh
from dreamcore.metrics import psnr, silhouette_iou


def _rep(**kw):
    return registry.build("representation", parse_component("representation", {"name": "mesh", **kw}, "r"))


def _renderer(**kw):
    return registry.build("renderer", parse_component("renderer", {"name": "mesh", "backend": "torch", **kw}, "r"))


def _bare_copy(src: str, dst) -> None:
    """The geometry of ``src`` without colours or UVs, as an OBJ."""
    import trimesh

    a = load_mesh(src)
    trimesh.Trimesh(a.vertices.numpy(), a.faces.numpy(), process=False).export(str(dst))


def test_mesh_alias_sets_the_representation_path(tmp_path):
    cfg = load_config(config_path("texture"), ["mesh=assets/robot.glb"])
    assert cfg.representation.name == "mesh" and cfg.representation.path == "assets/robot.glb"
    with pytest.raises(DreamcoreError, match="representation.path"):
        load_config(config_path("reference-nerf"), ["mesh=assets/robot.glb"])
    with pytest.raises(DreamcoreError, match="needs a mesh file"):
        _rep()
    with pytest.raises(DreamcoreError, match="not found"):
        _rep(path=str(tmp_path / "missing.obj"))


def test_uv_texture_keeps_the_files_uvs_and_vertices_bit_for_bit():
    rep = _rep(path="assets/robot.glb", texture="uv", optimize_geometry=False, texture_size=64)
    asset = load_mesh("assets/robot.glb")
    verts, faces, uvs, texture, _ = rep.export_arrays()
    assert torch.equal(torch.from_numpy(verts), asset.vertices)
    assert torch.equal(torch.from_numpy(faces), asset.faces)
    assert torch.equal(torch.from_numpy(uvs), asset.uvs)
    assert texture.shape == (64, 64, 3)
    assert rep.export_arrays(texture_size=128)[3].shape == (128, 128, 3)  # export.texture_size resamples
    # welded geometry: fewer vertices, same triangles
    assert rep.base.shape[0] < asset.vertices.shape[0]
    corners = rep.transform.to_original(rep.base[rep.faces])
    assert torch.allclose(corners, asset.vertices[asset.faces], atol=1e-6)
    assert rep.parameter_groups()[0]["name"] == "texture"  # fixed geometry: no offset group


def test_vertex_offsets_follow_silhouettes(tmp_path):
    """A sphere of radius 0.5 fitted to the silhouettes of one of radius 0.7: the rasterizer's antialiased
    alpha moves the vertices outward."""
    import trimesh

    path = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=3, radius=1.0).export(str(path))
    rep = _rep(path=str(path), radius=0.5, texture="field", n_levels=2, max_resolution=32, log2_table_size=10)
    target = _rep(path=str(path), radius=0.7, texture="field", n_levels=2, max_resolution=32, log2_table_size=10)
    r = _renderer()
    g = torch.Generator().manual_seed(0)
    bg = torch.zeros(4, 3)
    cams = sample_orbit(4, g, (-80.0, 80.0))
    with torch.no_grad():
        goal = r(target, cams, 32, 32, bg).alpha
    iou0 = silhouette_iou(r(rep, cams, 32, 32, bg).alpha.detach(), goal)
    opt = torch.optim.Adam([rep.offset], lr=0.01)
    for _ in range(80):  # random views each step, so every vertex is on some silhouette
        views = sample_orbit(4, g, (-80.0, 80.0))
        with torch.no_grad():
            want = r(target, views, 32, 32, bg).alpha
        loss = (r(rep, views, 32, 32, bg).alpha - want).pow(2).mean() + 10.0 * rep.regularizers()["laplacian"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    radius = rep.vertices().detach().norm(dim=-1)
    iou1 = silhouette_iou(r(rep, cams, 32, 32, bg).alpha.detach(), goal)
    assert iou0 < 0.6 and iou1 > 0.9, (iou0, iou1)
    assert abs(float(radius.mean()) - 0.7) < 0.03 and float(radius.std()) < 0.05
    # regularizers are finite and differentiable
    reg = rep.regularizers()
    assert all(torch.isfinite(v) for v in reg.values())


def test_texture_only_run_keeps_geometry_and_restores_colours(tmp_path):
    """The reference prior of the coloured robot; the run gets its geometry without colours or UVs and must
    return that geometry bit for bit (per triangle: xatlas splits vertices at seams) with the colours."""
    bare = tmp_path / "bare.obj"
    _bare_copy("assets/robot.glb", bare)
    run = tmp_path / "tex"
    code = main(["generate", "--config", str(config_path("texture")), f"mesh={bare}", f"run.dir={run}",
                 "run.progress=false", "run.steps=60", "run.val_every=0", "camera.resolution=64",
                 "representation.texture_size=256", "export.texture_size=256", "export.formats=[glb,obj]",
                 "eval.views=8", "prior.bank_views=4", "a robot"])
    assert code == 0
    given = load_mesh(bare)
    for name in ("model.glb", "model.obj"):
        out = load_mesh(run / name)
        assert out.faces.shape == given.faces.shape
        assert torch.equal(out.vertices[out.faces], given.vertices[given.faces]), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["glb_chamfer_rel"] == 0.0 and metrics["glb_iou"] == 1.0
    # an uncoloured (white) copy scores far lower than the restored colours
    from dreamcore.meshes.io import normalize
    from dreamcore.meshes.render import render_mesh
    from dreamcore.runner.init import load_run_system

    system = load_run_system(run)
    cams = sample_orbit(8, torch.Generator().manual_seed(12345), (-30.0, 60.0))
    white = torch.ones(8, 3)
    gt, _ = system.prior.reference_views(cams, 64, 64, white)
    plain = render_mesh(normalize(given)[0], cams, 64, 64, supersample=2, background=white).rgb
    assert psnr(plain, gt) < 20.0
    assert metrics["glb_psnr"] > 30.0, metrics


def test_mesh_runs_resume_exactly(tmp_path):
    from safetensors.torch import load_file

    from dreamcore.runner.generate import generate, resume_config

    args = ["mesh=assets/robot.glb", "run.progress=false", "run.val_every=0", "run.checkpoint_every=2",
            "camera.resolution=32", "camera.batch_size=2", "representation.texture_size=64",
            "representation.texture_levels=3", "export.formats=[]", "eval.views=2", "eval.resolution=16",
            "prior.bank_views=4", "representation.optimize_geometry=true"]
    full = generate(load_config(config_path("texture"), args + [f"run.dir={tmp_path / 'full'}", "run.steps=4"]),
                    announce=lambda *_: None)
    part = generate(load_config(config_path("texture"), args + [f"run.dir={tmp_path / 'part'}", "run.steps=2"]),
                    announce=lambda *_: None)
    generate(resume_config(part, ["run.steps=4"]), resume=True, announce=lambda *_: None)
    a, b = load_file(str(full / "ckpt" / "last.safetensors")), load_file(str(part / "ckpt" / "last.safetensors"))
    assert a.keys() == b.keys() and any("offset" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert float(a["model.representation.offset"].abs().max()) > 0  # the geometry did move
