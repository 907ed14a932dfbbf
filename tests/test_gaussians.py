"""Gaussians through the runner: exact resume while densification changes their number, every guidance,
per-parameter learning-rate schedules, initialization (ball, mesh / point-cloud file, an earlier run), and the
export field (kernel sum, colour)."""

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.representations.gaussians import Gaussians, eval_sh, rgb_to_sh_dc
from dreamcore.runner.generate import generate, resume_config
from dreamcore.runner.trainer import Trainer
from test_runner import TINY, assert_same_state

GTINY = [
    "run.steps=6", "run.checkpoint_every=3", "run.val_every=0", "run.val_resolution=16", "run.progress=false",
    "camera.resolution=24", "camera.batch_size=2", "system.rays_per_view=48", "representation.init_points=300",
    "export.formats=[]", "eval.views=2", "eval.resolution=16", "prior.bank_views=4",
    "system.densify.start=2", "system.densify.every=2", "system.densify.stop=6",
    "system.densify.grad_threshold=0.000001", "system.densify.opacity_reset_every=4",
]
BUILTIN = ["csd", "esd", "ism", "nfsd", "sdi", "sds", "sjc", "vsd"]


def gtiny(tmp_path, name, *extra):
    return load_config(config_path("reference-gaussians"), GTINY + [f"run.dir={tmp_path / name}", *extra])


def quiet(*_):
    return None


def test_resume_is_bit_identical_while_the_number_of_gaussians_changes(tmp_path):
    full = generate(gtiny(tmp_path, "full"), announce=quiet)
    part = generate(gtiny(tmp_path, "part", "run.steps=3"), announce=quiet)
    n_mid = load_file(str(part / "ckpt/last.safetensors"))["model.representation.means"].shape[0]
    generate(resume_config(part, ["run.steps=6"]), resume=True, announce=quiet)
    a, b = load_file(str(full / "ckpt/last.safetensors")), load_file(str(part / "ckpt/last.safetensors"))
    n_end = a["model.representation.means"].shape[0]
    assert n_mid != 300 and n_end != n_mid  # densified before and after the checkpoint
    assert a["optim.0.exp_avg"].shape == (n_end, 3)
    assert_same_state(a, b)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_guidance_trains_gaussians(tmp_path, name):
    run = tmp_path / name
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=3",
                 f"guidance.name={name}", f"run.dir={run}"]) == 0
    assert f" {name}=" in (run / "log.txt").read_text()
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0


def test_whole_image_priors_and_shading_modes_work_too(tmp_path):
    """rays_per_view=0 (whole images, what latent priors need) with random lambertian/textureless shading."""
    run = tmp_path / "whole"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=2",
                 "system.rays_per_view=0", "renderer.shading=random", "renderer.shading_probs=[0.0,0.5,0.5]",
                 "renderer.normals=depth", f"run.dir={run}"]) == 0


def test_per_parameter_learning_rates_follow_their_schedules(tmp_path):
    cfg = gtiny(tmp_path, "lr", "representation.lr_means=[[0,0.01],[10,0.001]]", "representation.lr_opacity=0.2",
                "optimizer.lr=0.5")
    trainer = Trainer(cfg, __import__("dreamcore.runner.rundir", fromlist=["RunDir"]).RunDir(tmp_path / "lr"))
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    trainer._set_learning_rate(5)
    assert groups["gaussians.means"]["lr"] == pytest.approx(0.5 * 0.0055)
    assert groups["gaussians.opacity_logits"]["lr"] == pytest.approx(0.5 * 0.2)
    trainer._set_learning_rate(20)
    assert groups["gaussians.means"]["lr"] == pytest.approx(0.5 * 0.001)


def test_sh_colours_dc_first_and_view_dependence():
    g = Gaussians(Gaussians.Config(init_points=2, sh_degree=2, init_color=(0.2, 0.4, 0.6)))
    d = torch.nn.functional.normalize(torch.randn(2, 3), dim=-1)
    assert torch.allclose(g.colors(d), torch.tensor([[0.2, 0.4, 0.6]] * 2), atol=1e-6)  # rest zero
    with torch.no_grad():
        g.sh_rest.data[:, 0] = 0.3  # Y_1,-1 = −C1·y
    g.set_active_sh_degree(2)
    y = d[:, 1:2]
    assert torch.allclose(g.colors(d), (torch.tensor([0.2, 0.4, 0.6]) - 0.4886025119029199 * y * 0.3).clamp(0, 1),
                          atol=1e-6)
    # degree 3 band functions are orthonormal on the sphere: Monte-Carlo check of ∫ Y_a Y_b = δ_ab
    dirs = torch.nn.functional.normalize(torch.randn(200000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    basis = torch.stack([eval_sh(3, torch.eye(16)[k][None, :, None].expand(len(dirs), 16, 1), dirs)[:, 0]
                         for k in range(16)], 1)
    gram = 4 * math.pi * basis.T @ basis / len(dirs)
    assert torch.allclose(gram, torch.eye(16), atol=0.03)


def test_sh_degree_grows_on_schedule():
    g = Gaussians(Gaussians.Config(init_points=2, sh_degree=2, sh_degree_every=10))
    for step, degree in ((0, 0), (9, 1), (19, 2), (100, 2)):
        g.after_step(step, torch.Generator())
        assert int(g.active_sh_degree) == degree


def test_export_density_and_colour_equal_brute_force_sums():
    torch.manual_seed(0)
    g = Gaussians(Gaussians.Config(init_points=200, init_radius=0.5))
    with torch.no_grad():
        g.log_scales.data = torch.log(0.02 + 0.05 * torch.rand(200, 3))
        g.quats.data = torch.randn(200, 4)
        g.opacity_logits.data = torch.randn(200)
        g.sh_dc.data = rgb_to_sh_dc(torch.rand(200, 1, 3))
    pts = (torch.rand(3000, 3) - 0.5) * 1.4
    d = pts[:, None] - g.means[None]
    m = torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(g.covariances()), d).detach()
    k = torch.where(m <= 9, g.opacity.detach() * torch.exp(-0.5 * m), torch.zeros_like(m))
    assert torch.allclose(g.export_density(pts), k.sum(1), atol=1e-5)
    near = k.sum(1) > 1e-4
    expected = (k @ g.albedo().detach())[near] / k.sum(1)[near, None]
    assert torch.allclose(g.export_color(pts)[near], expected, atol=1e-4)


def test_init_from_a_mesh_file_and_a_point_cloud(tmp_path):
    g = Gaussians(Gaussians.Config(init_points=500, init="file", init_file="assets/robot.glb"))
    g.init_from_file("assets/robot.glb", None, torch.Generator().manual_seed(0))
    mesh = trimesh.load("assets/robot.glb", force="mesh")
    _, dist, _ = trimesh.proximity.closest_point_naive(mesh, g.means.detach().numpy())
    assert len(g) == 500 and dist.max() < 1e-4
    assert float(g.albedo().detach().std(0).mean()) > 0.05  # coloured from the mesh, not a constant
    cloud = tmp_path / "cloud.ply"
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 3))
    colors = np.tile(np.array([[255, 0, 0, 255]], np.uint8), (100, 1))
    trimesh.PointCloud(pts, colors=colors).export(cloud)
    g = Gaussians(Gaussians.Config(init_points=500))
    g.init_from_file(str(cloud), None, torch.Generator().manual_seed(0))
    assert len(g) == 100 and torch.allclose(g.means.detach(), torch.tensor(pts, dtype=torch.float32))
    assert torch.allclose(g.albedo(), torch.tensor([1.0, 0.0, 0.0]).expand(100, 3), atol=1e-5)
    with pytest.raises(DreamcoreError, match="no such file"):
        g.init_from_file(str(tmp_path / "missing.ply"), None, None)


def test_init_from_an_earlier_nerf_run(tmp_path):
    nerf = tmp_path / "nerf"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "run.steps=4", f"run.dir={nerf}"]) == 0
    run = tmp_path / "gs"
    cfg = gtiny(tmp_path, "gs", f"init.from_run={nerf}", "run.steps=2", "representation.init_density_threshold=1.0")
    trainer = Trainer(cfg, __import__("dreamcore.runner.rundir", fromlist=["RunDir"]).RunDir(run))
    from dreamcore.runner.init import load_run_system

    source = load_run_system(nerf)
    rep = trainer.system.representation
    assert len(rep) == 300
    # every point lies in a grid cell where the NeRF's density exceeds the threshold somewhere nearby
    h = 2.0 / 63
    offsets = torch.stack(torch.meshgrid(*[torch.tensor([-0.5, 0.5]) * h] * 3, indexing="ij"), -1).reshape(-1, 3)
    dens = source.density((rep.means.detach()[:, None] + offsets).reshape(-1, 3)).reshape(-1, 8)
    assert bool((dens.amax(1) > 1.0).all())
    assert torch.allclose(rep.scales.detach(), torch.full((300, 3), 0.5 * h))


@pytest.mark.parametrize("name", ["dreamgaussian", "luciddreamer"])
def test_recipe_configs_run_briefly_on_the_reference_prior(tmp_path, name):
    cfg = load_config(config_path(name), [])
    assert cfg.system.name == "gaussian" and cfg.representation.name == "gaussians"
    if name == "dreamgaussian":
        assert cfg.guidance.t_schedule == "linear" and cfg.system.densify.grad_threshold == 0.01
        assert cfg.representation.lr_means(300) == pytest.approx(2e-5)
    else:
        assert cfg.guidance.name == "ism" and cfg.views.perp_neg and cfg.system.densify.opacity_reset_every == 300
    run = tmp_path / name
    assert main(["generate", "--config", f"configs/{name}.yaml", "run.steps=2", "run.progress=false",
                 "run.val_every=0", "run.val_resolution=16", "camera.resolution=24", "camera.batch_size=1", "representation.init_points=300",
                 "export.formats=[ply]", "eval.views=2", "eval.resolution=16", "prior.bank_views=8",
                 f"run.dir={run}"]) == 0
    assert (run / "model.ply").is_file()


def test_init_file_through_the_system_lands_in_the_reference_scene_frame(tmp_path):
    from dreamcore.runner.rundir import RunDir

    cfg = gtiny(tmp_path, "file", "representation.init=file", "representation.init_file=assets/robot.glb")
    rep = Trainer(cfg, RunDir(tmp_path / "file")).system.representation
    r = rep.means.detach().norm(dim=-1)
    assert len(rep) == 300 and float(r.max()) <= 0.9 + 1e-4 and float(r.max()) > 0.6  # normalized to radius 0.9
    with pytest.raises(DreamcoreError, match="init_file"):
        Trainer(gtiny(tmp_path, "nofile", "representation.init=file"), RunDir(tmp_path / "nofile"))


def test_a_run_initialized_from_another_resumes_without_its_source(tmp_path):
    import shutil

    nerf = tmp_path / "nerf"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "run.steps=2", f"run.dir={nerf}"]) == 0
    run = tmp_path / "gs"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=2",
                 f"init.from_run={nerf}", "representation.init_density_threshold=0.5", f"run.dir={run}"]) == 0
    shutil.rmtree(nerf)
    assert main(["generate", "--resume", str(run), "run.steps=4"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4


def test_bake_colour_composites_what_an_inward_ray_sees():
    """Two discs facing +Z at z = 0 (red, α 0.6) and z = −0.02 (green, α 0.7): a ray cast along −Z from above
    sees red·α₁ + green·α₂(1 − α₁), whatever the storage order."""
    from dreamcore.representations.gaussian_field import ray_composite

    for order in ([0, 1], [1, 0]):
        g = Gaussians(Gaussians.Config(init_points=2))
        with torch.no_grad():
            g.means.data = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -0.02]])[order]
            g.log_scales.data = torch.log(torch.tensor([[0.1, 0.1, 0.002]] * 2))
            g.opacity_logits.data = torch.logit(torch.tensor([0.6, 0.7]))[order]
            g.sh_dc.data = rgb_to_sh_dc(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))[order][:, None]
        pts, nrm = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
        rgb, acc = ray_composite(g, pts, nrm, g.albedo().detach(), offset=0.05)
        assert torch.allclose(rgb[0], torch.tensor([0.6, 0.7 * 0.4, 0.0]), atol=1e-5)
        assert torch.allclose(acc, torch.tensor([0.6 + 0.7 * 0.4]), atol=1e-5)
        assert torch.allclose(g.export_color(pts, nrm), (rgb / acc[:, None]).clamp(0, 1), atol=1e-6)


def test_bad_gaussian_settings_fail_with_clear_messages(tmp_path):
    from dreamcore.renderers.splat import SplatRenderer, gsplat_available
    from dreamcore.runner.rundir import RunDir

    with pytest.raises(DreamcoreError, match="sh_degree"):
        Gaussians(Gaussians.Config(sh_degree=4))
    if not gsplat_available():
        with pytest.raises(DreamcoreError, match="gsplat"):
            SplatRenderer(SplatRenderer.Config(backend="gsplat"))
    with pytest.raises(DreamcoreError, match="representation.name=gaussians"):
        Trainer(load_config(config_path("reference-nerf"), TINY + ["system.name=gaussian", f"run.dir={tmp_path}/x"]),
                RunDir(tmp_path / "x"))
    with pytest.raises(DreamcoreError, match="densify"):
        load_config(config_path("reference-gaussians"), ["system.densify.clone_every=3"])
