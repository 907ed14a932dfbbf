"""The reference prior with prompts that name objects (``prior.reference.meshes``): each prompt's condition is its
own object's renders, the unconditional one all objects', and without the map every number is as before."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import trimesh

from dreamcore.cameras import sample_orbit
from dreamcore.config import load_config
from dreamcore.errors import DreamcoreError
from dreamcore.priors.reference import ReferencePrior
from dreamcore.views import ViewPromptConfig

RED, BLUE = "a red box", "a blue box on the left"


def _box(path, color, shift=(0.0, 0.0, 0.0), extents=(1.0, 0.6, 0.4)):
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(shift)
    box.visual.vertex_colors = [*color, 255]
    box.export(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("objects")
    return {"red": _box(d / "red.glb", (220, 20, 20)),
            "blue": _box(d / "blue.glb", (20, 20, 220), shift=(-0.3, 0.0, 0.0), extents=(0.5, 0.6, 0.4)),
            "red_too": _box(d / "red_too.glb", (20, 220, 20))}  # the red box's shape, another colour


def _meshes(files, **extra) -> str:
    """The override as one would type it: a YAML flow mapping of prompt → file."""
    pairs = {RED: files["red"], BLUE: files["blue"], **extra}
    return "prior.reference.meshes={" + ", ".join(f'"{k}": {v}' for k, v in pairs.items()) + "}"


@pytest.fixture(scope="module")
def prior(files):
    return ReferencePrior(load_config(None, [_meshes(files), "prior.bank_views=8"]).prior)


def _cams(n=3, seed=2):
    cams = sample_orbit(n, torch.Generator().manual_seed(seed))
    return cams.with_background(torch.rand(n, 3, generator=torch.Generator().manual_seed(seed + 1)))


def _render(prior, cams, obj, size=16):
    rgb, _ = prior.reference_views(cams, size, size, cams.background, obj=obj)
    return rgb.permute(0, 3, 1, 2) * 2 - 1


def test_the_override_parses_into_an_ordered_map_of_prompts_to_files(files):
    cfg = load_config(None, ['prior.reference.meshes={"a toy robot": assets/robot.glb, '
                             '"a toy robot with a blue chest": edited.glb}'])
    assert cfg.prior.reference.meshes == {"a toy robot": "assets/robot.glb",
                                          "a toy robot with a blue chest": "edited.glb"}
    assert list(cfg.prior.reference.meshes) == ["a toy robot", "a toy robot with a blue chest"]
    assert load_config(None, []).prior.reference.meshes == {}  # the default: no map
    with pytest.raises(DreamcoreError, match="prior.reference.meshes: expected a mapping"):
        load_config(None, ["prior.reference.meshes=[a.glb, b.glb]"])


def test_each_prompt_denoises_to_its_own_object_at_the_camera(prior):
    """At small t, x̂_0 under prompt A is object A's render at the camera, under prompt B object B's — from the
    same noisy image (B's condition leaves A out exactly, however close x_t is to A)."""
    assert prior.num_objects == 2 and prior.reference_object(RED) == 0 and prior.reference_object(BLUE) == 1
    cams = _cams()
    red, blue = _render(prior, cams, 0), _render(prior, cams, 1)
    assert (red - blue).abs().mean() > 0.05
    noise = torch.randn(red.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([5, 20, 50])
    x_t = prior.schedule.add_noise(red, noise, t)
    for prompt, want in ((RED, red), (BLUE, blue)):
        emb = prior.encode_prompt(prompt).cond["default"].expand(3, -1)
        x0 = prior.denoise(x_t, t, emb, cams, None, None)
        assert torch.allclose(x0, want, atol=1e-5), prompt
    # a batch that mixes the two prompts gets each row's own object
    mixed = torch.cat([prior.encode_prompt(RED).cond["default"], prior.encode_prompt(BLUE).cond["default"],
                       prior.encode_prompt(RED).cond["default"]])
    x0 = prior.denoise(x_t, t, mixed, cams, None, None)
    assert torch.allclose(x0[[0, 2]], red[[0, 2]], atol=1e-5) and torch.allclose(x0[1], blue[1], atol=1e-5)
    # and pixel subsets see the same
    idx = torch.tensor([[0, 7, 100, 255]] * 3)
    sub = x_t.reshape(3, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None]
    emb = prior.encode_prompt(BLUE).cond["default"].expand(3, -1)
    got = prior.denoise(sub, t, emb, cams, idx, (16, 16))
    assert torch.allclose(got, blue.reshape(3, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None], atol=1e-5)


def test_the_objects_share_the_first_files_placement(prior, files):
    """The blue box is shifted in its file; it stays shifted in the scene (one transform for all objects)."""
    from dreamcore.meshes.io import load_mesh

    blue_file = load_mesh(files["blue"]).vertices
    assert torch.allclose(prior.extra_assets[0].vertices, prior.scene_transform.to_scene(blue_file))
    assert prior.mesh_path == files["red"]


def test_the_unconditional_condition_is_every_objects_bank(prior):
    emb = prior.encode_prompt(BLUE)
    assert emb.uncond[0, -2:].tolist() == [1.0, 1.0] and emb.cond["default"][0, -2:].tolist() == [0.0, 1.0]
    rgb_black, alpha = prior.bank(16, 16)
    assert rgb_black.shape[0] == 16  # 8 views × 2 objects
    x_hat = prior.denoise(torch.zeros(1, 3, 16, 16), torch.tensor([999]), emb.uncond, None, None, None)
    mean = ((rgb_black + (1 - alpha)) * 2 - 1).mean(0, keepdim=True)
    assert torch.allclose(x_hat, mean, atol=0.05)


def test_view_labels_pick_the_prompts_objects_bank_views(files):
    """Unconditioned by camera: "front view" of prompt B is B's front bank views, never A's."""
    p = ReferencePrior(load_config(None, [_meshes(files), "prior.bank_views=24",
                                          "prior.camera_conditioned=false"]).prior)
    from dreamcore.views import label_views

    labels = label_views(torch.rad2deg(p.bank_cameras.elevation), torch.rad2deg(p.bank_cameras.azimuth),
                         ViewPromptConfig())
    rgb_black, alpha = p.bank(16, 16)
    images = (rgb_black + (1 - alpha)) * 2 - 1  # over white, object-major
    front = [i for i, lbl in enumerate(labels) if lbl == "front"]
    emb = p.encode_prompt(BLUE, views=ViewPromptConfig())
    x0 = images[front[0]:front[0] + 1]  # the RED object's front view
    t = torch.tensor([3])
    x_hat = p.denoise(p.schedule.add_noise(x0, torch.zeros_like(x0), t), t, emb.cond["front"], None, None, None)
    blue_front = images[[24 + i for i in front]]
    assert (x_hat - blue_front).flatten(1).abs().amax(1).min() < 1e-4  # one of B's front views
    assert (x_hat - x0).abs().mean() > 0.05
    # the default (unlabelled) condition of B is B's whole bank: at high noise its mean, not both objects'
    x_hat = p.denoise(torch.zeros(1, 3, 16, 16), torch.tensor([999]), emb.cond["default"], None, None, None)
    assert torch.allclose(x_hat, images[24:].mean(0, keepdim=True), atol=0.05)


def test_a_prompt_not_in_the_map_is_refused_listing_the_known_ones(prior, files):
    with pytest.raises(DreamcoreError, match=r"'a green box' names no object.*'a red box', 'a blue box on the left'"):
        prior.encode_prompt("a green box")
    with pytest.raises(DreamcoreError, match="names no object"):
        prior.reference_object("a green box")
    assert prior.reference_object("  a red box ") == 0  # surrounding spaces do not matter
    with pytest.raises(DreamcoreError, match="extra_meshes cannot be added"):
        ReferencePrior(load_config(None, [_meshes(files), f"prior.reference.extra_meshes=[{files['red']}]"]).prior)
    with pytest.raises(DreamcoreError, match=r"prior.reference.meshes: .*missing\.glb"):
        ReferencePrior(load_config(None, [_meshes(files, other=files["red"].parent / "missing.glb")]).prior)


def test_without_the_map_every_number_is_as_before(files):
    """An empty map is the plain prior; a one-entry map gives the same denoiser bit for bit (its object weight
    adds log 1 = 0); a map of two objects of the same shape equals ``extra_meshes`` for the unconditional data."""
    cams = _cams()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    t = torch.tensor([20, 400, 990])
    plain = ReferencePrior(load_config(None, [f"prior.reference.mesh={files['red']}", "prior.bank_views=8",
                                              "prior.neighbors=2"]).prior)
    empty = ReferencePrior(load_config(None, [f"prior.reference.mesh={files['red']}", "prior.bank_views=8",
                                              "prior.neighbors=2", "prior.reference.meshes={}"]).prior)
    one = ReferencePrior(load_config(None, [f'prior.reference.meshes={{"{RED}": {files["red"]}}}',
                                            "prior.bank_views=8", "prior.neighbors=2"]).prior)
    e_plain, e_one = plain.encode_prompt(RED), one.encode_prompt(RED)
    assert e_plain.cond["default"].shape[1] == 1 + 8 and e_one.cond["default"].shape[1] == 1 + 8 + 1
    assert torch.equal(empty.encode_prompt(RED).cond["default"], e_plain.cond["default"])
    for a, b in ((e_plain.cond["default"], e_one.cond["default"]), (e_plain.uncond, e_one.uncond)):
        ref = plain.denoise(x, t, a.expand(3, -1), cams, None, None)
        assert torch.equal(empty.denoise(x, t, a.expand(3, -1), cams, None, None), ref)
        assert torch.equal(one.denoise(x, t, b.expand(3, -1), cams, None, None), ref)
    extra = ReferencePrior(load_config(None, [f"prior.reference.mesh={files['red']}", "prior.bank_views=8",
                                              f"prior.reference.extra_meshes=[{files['red_too']}]"]).prior)
    both = ReferencePrior(load_config(None, [f'prior.reference.meshes={{"{RED}": {files["red"]}, '
                                             f'"green": {files["red_too"]}}}', "prior.bank_views=8"]).prior)
    u_extra, u_both = extra.encode_prompt(RED).uncond, both.encode_prompt(RED).uncond
    assert torch.equal(both.denoise(x, t, u_both.expand(3, -1), cams, None, None),
                       extra.denoise(x, t, u_extra.expand(3, -1), cams, None, None))


def test_a_file_named_by_two_prompts_is_one_object(files):
    p = ReferencePrior(load_config(None, [_meshes(files, **{"the red box again": files["red"]}),
                                          "prior.bank_views=4"]).prior)
    assert p.num_objects == 2 and p.reference_object("the red box again") == 0


def test_the_run_is_scored_against_the_object_its_prompt_names(prior):
    from dreamcore.runner.finish import scoring_targets

    system = SimpleNamespace(prior=prior)
    for prompt, first in ((RED, prior.asset), (BLUE, prior.extra_assets[0])):
        cfg = load_config(None, [f"prompt={prompt}"])
        targets = scoring_targets(system, cfg)
        assert targets[0] is first and len(targets) == 2
