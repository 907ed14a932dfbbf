"""Big reference meshes: a fixed set of training views whose renders are cached, equal to rendering each step."""

from __future__ import annotations

import torch

from dreamcore.cameras import sample_orbit
from dreamcore.config import config_path, load_config
from dreamcore.registry import build
from dreamcore.runner.generate import generate, resume_config
from dreamcore.runner.rundir import RunDir
from dreamcore.runner.trainer import Trainer
from test_runner import TINY, assert_same_state, ckpt_tensors


def tiny(tmp_path, name, *extra):
    return load_config(config_path("reference-nerf"), TINY + [f"run.dir={tmp_path / name}", *extra])


def test_a_big_mesh_asks_for_a_fixed_view_set_and_a_small_one_does_not(tmp_path):
    small = Trainer(tiny(tmp_path, "small"), RunDir(tmp_path / "small"))
    assert small.view_set is None and small.system.prior.cache_limit == 0
    # the robot has 2884 faces: call it big by lowering the threshold
    big = Trainer(tiny(tmp_path, "big", "prior.reference.big_mesh_faces=1000", "prior.reference.big_mesh_views=5"),
                  RunDir(tmp_path / "big"))
    assert len(big.view_set) == 5 and big.system.prior.cache_limit == 20
    seen = set()
    for _ in range(20):
        cams = big.sample_cameras()
        seen.update(round(float(a), 4) for a in cams.azimuth)
    assert seen <= {round(float(a), 4) for a in big.view_set.azimuth} and len(seen) > 1
    # camera.views overrides what the prior asks for, either way
    assert Trainer(tiny(tmp_path, "n", "camera.views=3"), RunDir(tmp_path / "n")).view_set.azimuth.shape == (3,)
    off = tiny(tmp_path, "off", "prior.reference.big_mesh_faces=1000", "camera.views=0")
    assert Trainer(off, RunDir(tmp_path / "off")).view_set is None


def test_cached_renders_equal_fresh_renders_and_the_cache_is_bounded():
    cfg = load_config(None, ["prior.name=reference", "prior.reference.render_cache=6"]).prior
    prior = build("prior", cfg)
    views = sample_orbit(4, torch.Generator().manual_seed(0))
    first = prior.render_reference(views, 24, 24)
    assert prior.cache_misses == 4 and prior.cache_hits == 0
    again = prior.render_reference(views[torch.tensor([2, 0])], 24, 24)
    assert prior.cache_hits == 2
    assert torch.equal(again[0], first[0][[2, 0]]) and torch.equal(again[1], first[1][[2, 0]])
    fresh = prior._render(views, 24, 24, 0)
    assert torch.equal(first[0], fresh[0]) and torch.equal(first[1], fresh[1])
    prior.render_reference(sample_orbit(5, torch.Generator().manual_seed(1)), 24, 24)
    assert len(prior._cache) == 6  # least recently used renders dropped
    prior.render_reference(views, 32, 32)  # another resolution is another entry, not a stale hit
    assert prior.cache_misses == 4 + 5 + 4


def test_a_run_on_a_view_set_is_reproducible_and_resumes_exactly(tmp_path):
    extra = ["prior.reference.big_mesh_faces=1000", "prior.reference.big_mesh_views=7"]
    full = generate(tiny(tmp_path, "full", *extra), announce=lambda *_: None)
    part = generate(tiny(tmp_path, "part", *extra, "run.steps=3"), announce=lambda *_: None)
    generate(resume_config(part, ["run.steps=6"]), resume=True, announce=lambda *_: None)
    assert_same_state(ckpt_tensors(full), ckpt_tensors(part))
    # the cache changes nothing but the time: the same run rendering every step ends identical
    nocache = generate(tiny(tmp_path, "nocache", *extra, "prior.reference.render_cache=0"), announce=lambda *_: None)
    assert_same_state(ckpt_tensors(full), ckpt_tensors(nocache))
