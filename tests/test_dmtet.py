"""DMTet: the tet grid, marching tetrahedra, SDF/texture initialization from an earlier stage, end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dreamcore import registry
from dreamcore.config import parse_component
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.diffraster import EdgeTopology
from dreamcore.meshes.tets import marching_tets, tet_grid


def _volume(verts: torch.Tensor, faces: torch.Tensor) -> float:
    v0, v1, v2 = verts[faces].unbind(1)
    return float((v0 * torch.cross(v1, v2, dim=-1)).sum() / 6.0)


def test_tet_grid_is_a_conforming_partition_of_the_cube():
    verts, tets = tet_grid(3, 1.0)
    assert verts.shape == (64, 3) and tets.shape == (6 * 27, 4)
    p = verts[tets]
    vol = torch.det(p[:, 1:] - p[:, :1]).abs() / 6.0
    assert torch.allclose(vol.sum(), torch.tensor(8.0))  # the 2³ cube, no overlaps, no gaps
    assert torch.allclose(vol, torch.full_like(vol, 8.0 / 27 / 6))
    # conforming: every interior triangle is shared by exactly two tets, boundary ones by one
    tri = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    _, counts = torch.unique(torch.sort(tri, 1).values, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 9 * 2  # 9 squares per cube face, 2 triangles each


def test_marching_tets_of_a_sphere_is_closed_oriented_and_converges():
    errors = []
    for n in (16, 32):
        verts, tets = tet_grid(n, 1.0)
        sdf = (verts.norm(dim=-1) - 0.6).requires_grad_(True)
        mv, mf = marching_tets(verts, sdf, tets)
        assert bool((EdgeTopology.of(mf).neighbor >= 0).all())  # watertight, manifold
        v0, v1, v2 = mv[mf].unbind(1)
        outward = (torch.cross(v1 - v0, v2 - v0, dim=-1) * (v0 + v1 + v2)).sum(-1) > 0
        assert bool(outward.all())
        # vertices are exact zeros of the linearly interpolated SDF: on the sphere up to O(h²)
        assert float((mv.detach().norm(dim=-1) - 0.6).abs().max()) < 0.5 * (2.0 / n) ** 2 / 0.6 + 1e-4
        errors.append(abs(_volume(mv.detach(), mf) - 4 / 3 * math.pi * 0.6 ** 3))
        # differentiable: raising the SDF everywhere shrinks the surface
        mv.norm(dim=-1).sum().backward()
        assert float(sdf.grad.sum()) < 0
    assert errors[1] < errors[0] / 2


def _dmtet(**kw):
    return registry.build("representation", parse_component("representation", {"name": "dmtet", **kw}, "r"))


class _RoundedCube:
    """A stand-in earlier run: density crossing the level 20 on a rounded cube, colours a smooth field."""

    full = SimpleNamespace(export=SimpleNamespace(isosurface=20.0))
    representation = torch.nn.Linear(1, 1)

    @staticmethod
    def shape(p):
        return torch.maximum(p.abs().amax(-1), 0.85 * p.norm(dim=-1))

    def density(self, p):
        return 20.0 * torch.exp(8.0 * (0.55 - self.shape(p)))

    def surface_color(self, p, n):
        return 0.5 + 0.4 * torch.sin(4.0 * p)


def test_init_from_an_earlier_run_preserves_its_surface_and_colours():
    src = _RoundedCube()
    rep = _dmtet(resolution=32, n_levels=6, max_resolution=64, log2_table_size=12, init_texture_steps=150,
                 init_texture_batch=2048, init_texture_points=8000)
    info = rep.init_from_system(src)
    surf = rep.surface()
    v = surf.vertices.detach()
    assert info["faces"] == surf.faces.shape[0] > 1000
    assert float((src.shape(v) - 0.55).abs().max()) < 0.25 * rep.cell  # on the earlier iso-surface
    color_err = (rep.albedo(v, None, None).detach() - src.surface_color(v, None)).abs().mean()
    assert float(color_err) < 0.03
    # the DMTet run reads back as a field for the next stage: inside / outside of its surface
    assert bool((rep.export_density(0.9 * v) > 0).all()) and bool((rep.export_density(1.1 * v) == 0).all())
    reg = rep.regularizers()
    assert set(reg) == {"laplacian", "normal_consistency", "sdf_sign"}
    assert all(bool(torch.isfinite(x)) for x in reg.values())


class _ThinRod(_RoundedCube):
    """A vertical rod of radius 0.3 cells centred between the grid's vertices: at the vertices its density is nil."""

    def __init__(self, cell):
        self.c, self.r = 0.5 * cell, 0.3 * cell

    def density(self, p):
        d = ((p[:, 0] - self.c) ** 2 + (p[:, 2] - self.c) ** 2).sqrt()
        inside = (d < self.r) & (p[:, 1].abs() < 0.6)
        return torch.where(inside, torch.full_like(d, 100.0), torch.zeros_like(d))


def test_init_density_reach_keeps_parts_thinner_than_a_cell():
    kw = dict(resolution=16, n_levels=4, max_resolution=32, log2_table_size=10, init_texture_steps=5,
              init_texture_points=500)
    plain = _dmtet(**kw)
    with pytest.raises(DreamcoreError, match="never reaches"):
        plain.init_from_system(_ThinRod(plain.cell))
    reach = _dmtet(init_density_reach=0.5, **kw)
    info = reach.init_from_system(_ThinRod(reach.cell))
    v = reach.surface().vertices.detach()
    assert info["faces"] > 0
    # the rod's surface: around its axis, within a cell, along its length
    assert float(((v[:, 0] - 0.5 * reach.cell) ** 2 + (v[:, 2] - 0.5 * reach.cell) ** 2).sqrt().max()) < reach.cell
    assert float(v[:, 1].max() - v[:, 1].min()) > 0.9


class _FusedBall:
    """A stand-in earlier run that gives its rendered depth fused (positive inside): a ball, off-centre."""

    centre, radius = torch.tensor([0.1, -0.05, 0.0]), 0.5
    representation = torch.nn.Linear(1, 1)
    representation.bound = 1.0
    full = SimpleNamespace(export=SimpleNamespace(resolution=65))

    def fused_depth(self, export):
        from dreamcore.export.extract import grid_coordinates

        axis = torch.from_numpy(grid_coordinates(export.resolution, 1.0)).float()
        p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
        return (self.radius - (p - self.centre).norm(dim=-1)).numpy()

    def surface_color(self, p, n):
        return 0.5 + 0.4 * torch.sin(4.0 * p)

    def density(self, p):
        raise AssertionError("init_surface=depth reads no density")


def test_init_from_the_earlier_runs_fused_depth():
    kw = dict(resolution=24, n_levels=4, max_resolution=32, log2_table_size=10, init_texture_steps=5,
              init_texture_points=500)
    rep = _dmtet(init_surface="depth", **kw)
    src = _FusedBall()
    info = rep.init_from_system(src)
    v = rep.surface().vertices.detach()
    assert info["init_surface"] == "depth" and info["faces"] > 500
    # the ball's surface, to the linear interpolation's O(h²) (the grids differ: 65 samples vs 24 cells)
    assert float(((v - src.centre).norm(dim=-1) - src.radius).abs().max()) < 0.1 * rep.cell


def test_magic3d_coarse_to_fine_runs_from_the_command_line(tmp_path):
    """The Magic3D-like pair on tiny settings: NeRF coarse stage, then DMTet fine stage from it, exported as a
    GLB directly from the surface."""
    import json

    from dreamcore.cli import main
    from dreamcore.config import config_path
    from dreamcore.meshes.io import load_mesh

    common = ["run.progress=false", "run.val_every=0", "run.val_resolution=16", "prior.bank_views=4",
              "eval.views=2", "eval.resolution=16", "camera.batch_size=2", "a robot"]
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    assert main(["generate", "--config", str(config_path("magic3d-coarse")), f"run.dir={coarse}", "run.steps=4",
                 "camera.resolution=24", "system.rays_per_view=48", "representation.n_levels=4",
                 "representation.log2_table_size=12", "representation.max_resolution=64",
                 "representation.occupancy_resolution=16", "export.formats=[]", "representation.blob_density=10",
                 *common]) == 0
    assert main(["generate", "--config", str(config_path("magic3d-refine")), f"run.dir={fine}",
                 f"init.from_run={coarse}", "run.steps=3", "camera.resolution=32", "representation.resolution=16",
                 "representation.n_levels=4", "representation.log2_table_size=12", "representation.max_resolution=64",
                 "representation.init_texture_steps=10", "representation.init_texture_points=2000",
                 "export.formats=[glb]", "export.texture_size=64", "export.target_faces=300", *common]) == 0
    metrics = json.loads((fine / "metrics.json").read_text())
    assert metrics["export"]["init"]["faces"] > 600 and metrics["export"]["extract_seconds"] == 0.0
    assert metrics["export"]["faces"] <= 310  # the DMTet surface is decimated to export.target_faces
    glb = load_mesh(fine / "model.glb")
    assert glb.faces.shape[0] == metrics["export"]["faces"] and 0.0 <= metrics["glb_iou"] <= 1.0
    # a finished stage reloads from its own checkpoint, without its source run (no second conversion)
    from dreamcore.runner.init import load_run_system

    coarse.rename(tmp_path / "moved")
    restored = load_run_system(fine)
    assert restored.init_report == {} and restored.representation.surface().faces.shape[0] > 0
    assert main(["export", str(fine), "export.formats=[obj]", "export.texture_size=32"]) == 0
    assert (fine / "model.obj").is_file()


def test_mesh_stage_configs_parse_and_pick_the_rasterizer():
    from dreamcore.config import config_path, load_config

    for name, rep in (("magic3d-refine", "dmtet"), ("reference-dmtet", "dmtet"), ("texture", "mesh")):
        cfg = load_config(config_path(name), ["mesh=assets/robot.glb"] if name == "texture" else [])
        assert (cfg.system.name, cfg.representation.name, cfg.renderer.name) == ("mesh", rep, "mesh")
    coarse = load_config(config_path("magic3d-coarse"))
    assert (coarse.representation.name, coarse.renderer.name) == ("nerf", "volume")
