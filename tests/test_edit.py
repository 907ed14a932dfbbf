"""``dreamcore edit`` on tiny runs of the closed-form reference prior: a NeRF edited in a box keeps every render
whose rays miss the box bit for bit and changes inside it; Gaussians whose centres lie outside the box keep their
parameters bit for bit; the source folder is never written to; the edit is an ordinary run (its config names its
source, model.glb, exact resume); bad input is refused in words before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dreamcore
from dreamcore.cameras import orbit_cameras
from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.runner.generate import generate
from test_gaussians import GTINY
from test_runner import TINY, assert_same_state

BOX = "box:-0.3,0.0,-0.3,0.3,0.5,0.3"  # around the robot's chest, in the frame of assets/robot.glb
TARGET, SOURCE_PROMPT = "a toy robot with a blue chest", "a toy robot"
# the edit's own run settings (the recipe sets run.*; the rest of the tiny sizes come from the source's config)
RUN = ["run.steps=6", "run.checkpoint_every=3", "run.val_every=0", "run.progress=false", "export.formats=[]",
       "guidance.guidance_scale=1.0"]
EXPORT = ["export.formats=[glb]", "export.resolution=40", "export.texture_size=64", "export.isosurface=1.0"]


def quiet(*_):
    return None


@pytest.fixture(scope="module")
def nerf_source(tmp_path_factory):
    run = tmp_path_factory.mktemp("sources") / "nerf"
    generate(load_config(config_path("reference-nerf"), TINY + [f"run.dir={run}", "run.steps=30"]), announce=quiet)
    return run


@pytest.fixture(scope="module")
def gaussian_source(tmp_path_factory):
    run = tmp_path_factory.mktemp("sources") / "gaussians"
    generate(load_config(config_path("reference-gaussians"), GTINY + [f"run.dir={run}", "refine.config="]),
             announce=quiet)
    return run


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def views(n: int = 3):
    el, az = torch.tensor([10.0, 35.0, -20.0])[:n], torch.tensor([0.0, 130.0, 250.0])[:n]
    return orbit_cameras(el, az, torch.full((n,), 3.2), torch.full((n,), 40.0))


def blue_chest_robot(path: Path) -> Path:
    """The target A′: the robot with a blue block on its chest, inside BOX (the robot's own frame)."""
    import trimesh

    scene = trimesh.load("assets/robot.glb", force="scene")
    block = trimesh.creation.box(extents=[0.5, 0.4, 0.5], transform=trimesh.transformations.translation_matrix(
        [0.0, 0.25, 0.0]))
    block.visual = trimesh.visual.ColorVisuals(block, face_colors=np.tile([30, 60, 255, 255], (len(block.faces), 1)))
    scene.add_geometry(block, geom_name="chest")
    scene.export(path)
    return path


def blueness(renders, where) -> float:
    return float(np.stack([r.rgb[..., 2] - r.rgb[..., 0] for r in renders])[where].mean())


def test_a_nerf_edit_keeps_the_source_exactly_outside_the_box_and_changes_it_inside(nerf_source, tmp_path, capsys):
    from dreamcore.systems.edit import rays_meet_box

    before = digests(nerf_source)
    out = tmp_path / "blue-chest"
    # the reference prior of two objects: the source prompt names the robot, the target prompt the blue-chested one
    meshes = json.dumps({SOURCE_PROMPT: "assets/robot.glb", TARGET: str(blue_chest_robot(tmp_path / "a2.glb"))})
    assert main(["edit", str(nerf_source), TARGET, "--source-prompt", SOURCE_PROMPT, "--region", BOX, *RUN,
                 "run.steps=40", "optimizer.lr=0.03", f"prior.reference.meshes={meshes}", *EXPORT,
                 f"run.dir={out}"]) == 0
    assert "GLB:" in capsys.readouterr().out
    assert digests(nerf_source) == before  # the source is only read
    saved = load_config(out / "config.yaml", [])
    assert Path(saved.init.from_run) == nerf_source.resolve() and saved.system.name == "edit"
    assert saved.prompt == TARGET and saved.system.source_prompt == SOURCE_PROMPT and saved.system.region == BOX
    assert saved.system.rays_per_view == 48 and saved.representation.n_levels == 4  # the source's own settings
    assert saved.guidance.name == "dds"  # the default recipe, configs/edit-dds.yaml
    assert (out / "model.glb").is_file()
    assert not [k for k in load_file(str(out / "ckpt" / "last.safetensors")) if ".source." in k]

    cams, res = views(), 48
    source = dreamcore.load_run(nerf_source).render(cams, resolution=res)
    edit = dreamcore.load_run(out)
    edited = edit.render(cams, resolution=res)
    lo, hi = edit.system.region.bounds()
    hit = rays_meet_box(cams, (res, res), None, lo, hi).reshape(len(cams), res, res).numpy()
    diff = np.stack([np.abs(a.rgb - b.rgb).max(-1) for a, b in zip(source, edited)])
    assert 0.02 < hit.mean() < 0.5
    assert diff[~hit].max() <= 1e-6  # rays that miss the region see the source itself
    assert diff[hit].max() > 0.05  # inside, the edit changed it: toward blue
    assert blueness(edited, hit) > blueness(source, hit) + 0.01


def test_dds_gives_no_update_while_both_prompts_mean_the_same_object(nerf_source, tmp_path):
    """DDS's identity on the whole pipeline: the edited scene starts as the source, the source is rendered with the
    edited render's own draws (pixels, jitter, shading) and the reference prior renders the same robot for both
    prompts, so both branches predict the same noise and the first step's update is exactly zero."""
    from dreamcore.runner.edit import edit_config
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    cfg = edit_config(nerf_source, TARGET, SOURCE_PROMPT, overrides=RUN, run_dir=tmp_path / "dds")
    trainer = Trainer(cfg, RunDir(Path(cfg.run.dir)))
    losses = trainer.train_step(0)
    assert float(losses["dds"]) == 0.0
    grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"]]
    assert grads and all(g is None or not bool(g.any()) for g in grads)


def test_an_edit_resumes_exactly_with_its_source_reattached(nerf_source, tmp_path):
    settings = [*RUN, "system.identity_weight=0.5", "system.correlation_weight=0.1", "system.correlation_points=256",
                "optimizer.lr=0.05"]
    full = dreamcore.edit(nerf_source, TARGET, SOURCE_PROMPT, region=BOX, falloff=0.05, config="edit-sds",
                          overrides=settings, run_dir=tmp_path / "full", progress=False, announce=quiet)
    part = dreamcore.edit(nerf_source, TARGET, SOURCE_PROMPT, region=BOX, falloff=0.05, config="edit-sds",
                          overrides=[*settings, "run.steps=3"], run_dir=tmp_path / "part", progress=False,
                          announce=quiet)
    log = (full.path / "log.txt").read_text()
    assert "identity=" in log and "correlation=" in log
    assert json.loads((part.path / "ckpt" / "last.json").read_text())["step"] == 3
    dreamcore.resume(part.path, ["run.steps=6"], progress=False, announce=quiet)
    assert_same_state(load_file(str(full.path / "ckpt/last.safetensors")),
                      load_file(str(part.path / "ckpt/last.safetensors")))


def test_gaussians_outside_the_box_keep_their_parameters_bit_for_bit(gaussian_source, tmp_path):
    before = digests(gaussian_source)
    # densification and opacity resets (the source's settings) run in the edit too: only inside the box
    run = dreamcore.edit(gaussian_source, TARGET, SOURCE_PROMPT, region=BOX, config="edit-sds",
                         overrides=[*RUN, "run.steps=8", "system.identity_weight=0.5"],
                         run_dir=tmp_path / "gs", progress=False, announce=quiet)
    assert digests(gaussian_source) == before
    source = dreamcore.load_run(gaussian_source).system.representation
    edited = run.system.representation
    m = run.system.region.mask(source.means)
    outside, inside = m == 0, m > 0
    assert 0 < int(inside.sum()) < len(source) and len(edited) != len(source)  # densified (in the box)
    # every Gaussian of the source outside the box is in the edit, every parameter bit-identical
    same_mean = (source.means[outside][:, None, :] == edited.means[None]).all(-1)
    assert bool((same_mean.sum(1) == 1).all())
    j = same_mean.float().argmax(1)
    for name, p in source.parameters_by_name().items():
        assert torch.equal(p[outside], getattr(edited, name)[j]), name
    moved = ~(source.means[inside][:, None, :] == edited.means[None]).all(-1).any(1)
    assert moved.float().mean() > 0.5  # inside, they trained


@pytest.mark.parametrize("recipe", ["edit-dds", "edit-pds", "edit-sds"])
def test_every_edit_recipe_edits_gaussians(gaussian_source, tmp_path, recipe):
    meshes = json.dumps({SOURCE_PROMPT: "assets/robot.glb", TARGET: str(blue_chest_robot(tmp_path / "a2.glb"))})
    run = dreamcore.edit(gaussian_source, TARGET, SOURCE_PROMPT, region=BOX, config=recipe,
                         overrides=[*RUN, "run.steps=3", f"prior.reference.meshes={meshes}"],
                         run_dir=tmp_path / recipe, progress=False, announce=quiet)
    name = recipe.split("-")[1]
    assert run.config.guidance.name == name and f" {name}=" in (run.path / "log.txt").read_text()


def test_bad_input_is_refused_in_words_before_any_work(nerf_source, tmp_path, capsys):
    out = tmp_path / "never"

    def refused(source, prompt=TARGET, source_prompt=SOURCE_PROMPT, match="", run_dir=out, **kw):
        with pytest.raises(DreamcoreError, match=match):
            dreamcore.edit(source, prompt, source_prompt, run_dir=run_dir, progress=False, announce=quiet, **kw)
        assert not Path(run_dir).exists()

    mesh = tmp_path / "robot.glb"
    mesh.write_bytes(Path("assets/robot.glb").read_bytes())
    refused(mesh, match="editing a mesh file is not supported yet")
    refused(tmp_path / "nowhere", match="no such run folder")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", match="not a dreamcore run folder")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text((nerf_source / "config.yaml").read_text())
    refused(tmp_path / "unfinished", match="no checkpoint yet")
    refused(nerf_source, prompt=" ", match="prompt is empty")
    refused(nerf_source, source_prompt="", match="source prompt is empty")
    refused(nerf_source, region="box:0,0,0,1,1", match="six comma-separated numbers")
    refused(nerf_source, region="box:0,0,0,-1,1,1", match="x0 = 0 is not below x1 = -1")
    refused(nerf_source, region="sphere:0,0,0,1", match="unknown region")
    refused(nerf_source, region=f"mesh:{tmp_path / 'part.glb'}", match="no such mesh file")
    refused(nerf_source, run_dir=nerf_source / "edit", match="inside the source run")
    refused(nerf_source, overrides=["system.correlation_points=1"], match="correlation_points")
    mesh_run = tmp_path / "mesh-run"
    mesh_run.mkdir()
    (mesh_run / "config.yaml").write_text("system:\n  name: mesh\n")
    (mesh_run / "ckpt").mkdir()
    (mesh_run / "ckpt" / "last.safetensors").write_bytes(b"")
    refused(mesh_run, match="system 'mesh' is not supported yet")
    # without a run.dir the edit gets a new folder of its own (as generate does), never the source's
    from dreamcore.runner.edit import edit_config

    cfg = edit_config(nerf_source, TARGET, SOURCE_PROMPT, region=BOX)
    assert Path(cfg.run.dir).parent == Path("runs") and Path(cfg.run.dir).name.startswith("edit-a-toy-robot-with")
    # the command line: one line, exit 2
    assert main(["edit", str(nerf_source), TARGET, f"run.dir={out}"]) == 2
    assert "--source-prompt" in capsys.readouterr().err
    assert main(["edit", str(mesh), TARGET, "--source-prompt", SOURCE_PROMPT]) == 2
    err = capsys.readouterr().err
    assert "not supported yet" in err and "Traceback" not in err
    # a plain generation run cannot use an editing system or guidance
    with pytest.raises(DreamcoreError, match="source prompt"):
        generate(load_config(config_path("reference-nerf"), TINY + ["system.name=edit", f"run.dir={out}"]),
                 announce=quiet)
    with pytest.raises(DreamcoreError, match="starts from a finished run"):
        generate(load_config(config_path("reference-nerf"), TINY + ["system.name=edit", f"run.dir={out}",
                                                                     "system.source_prompt=a robot"]),
                 announce=quiet)


def test_the_blend_is_the_source_outside_and_the_edited_field_inside():
    from dreamcore.meshes.asset import SceneTransform
    from dreamcore.meshes.region import parse_region
    from dreamcore.representations.blended import BlendedField
    from dreamcore.representations.nerf import NeRFField

    cfg = NeRFField.Config(n_levels=2, log2_table_size=8, max_resolution=16, occupancy_resolution=8)
    torch.manual_seed(0)
    source, edited = NeRFField(cfg), NeRFField(cfg)
    region = parse_region("box:0,0,0,0.5,0.5,0.5", SceneTransform(), falloff=0.2)
    blend = BlendedField(edited, source, region)
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    m = region.mask(points)
    (s_src, c_src), (s_ed, _), (s, c) = source(points), edited(points), blend(points)
    assert torch.equal(s[m == 0], s_src[m == 0]) and torch.equal(c[m == 0], c_src[m == 0])
    assert torch.allclose(s, m * s_ed + (1 - m) * s_src, rtol=1e-5) and torch.allclose(s[m == 1], s_ed[m == 1])
    assert torch.equal(blend.occupancy.query(points)[m == 0], source.occupancy.query(points)[m == 0])
    # only the edited field trains, and only it is saved; loading leaves the source as it is
    assert {id(p) for g in blend.parameter_groups() for p in g["params"]} == {id(p) for p in edited.parameters()}
    state = blend.state_dict()
    assert state and all(k.startswith("edited.") for k in state)
    kept = source.encoding.table.clone()
    BlendedField(NeRFField(cfg), source, region).load_state_dict(state)
    assert torch.equal(source.encoding.table, kept)
    whole = BlendedField(edited, source, None)  # no region: the edited field alone
    assert torch.equal(whole(points)[0], s_ed)


def test_the_source_is_rendered_with_the_edited_renders_own_draws(nerf_source):
    from dreamcore.rng import RunGenerator
    from dreamcore.systems.edit import same_draws

    system = dreamcore.load_run(nerf_source).system
    cams = views(2)
    generator = RunGenerator("cpu", 3)
    replay = same_draws(generator)
    a = system.render_training(cams, generator)
    b = system.render_training(cams, replay, system.representation)
    assert torch.equal(a.pixel_index, b.pixel_index) and torch.equal(a.rgb, b.rgb)
    assert torch.equal(generator.get_state(), replay.get_state()) and generator.host_state() == replay.host_state()
