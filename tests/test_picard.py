"""run.picard (DreamPropeller's Picard-parallel optimization) and run.step_seeds: at threshold 0 the Picard run is
the step-seeded sequential run bit for bit (in this process and in worker processes, NeRF and Gaussians with
densification inside a window, through a resume); a large threshold accepts several steps a round."""

import json
import math
import time

import pytest
import torch

from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.runner.picard import fixed_point_error, parameter_names, snapshot
from dreamcore.runner.rundir import RunDir
from dreamcore.runner.trainer import Trainer
from test_gaussians import GTINY
from test_runner import TINY

STEPS = ["run.steps=12", "run.checkpoint_every=0", "run.log_every=1000"]
DENSIFY = [  # Gaussians densified at steps 4 and 8 and their opacities reset at 6, inside the windows
    "system.densify.start=4", "system.densify.every=4", "system.densify.stop=10",
    "system.densify.opacity_reset_every=6", "representation.init_points=200",
]


def nerf(tmp_path, name, *extra):
    return load_config(config_path("reference-nerf"), TINY + STEPS + [f"run.dir={tmp_path / name}", *extra])


def gaussians(tmp_path, name, *extra):
    return load_config(config_path("reference-gaussians"),
                       GTINY + STEPS + DENSIFY + ["refine.config=", f"run.dir={tmp_path / name}", *extra])


def fit(cfg, resume=False):
    trainer = Trainer(cfg, RunDir(tmp_dir(cfg)), resume=resume)
    t0 = time.perf_counter()
    trainer.fit()
    trainer.wall = time.perf_counter() - t0
    return trainer


def tmp_dir(cfg):
    from pathlib import Path

    return Path(cfg.run.dir)


def state(trainer):
    return snapshot(trainer.system)


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert a[name][k].shape == b[name][k].shape, (name, k)
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def assert_optimizers_identical(a, b):
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        for k, v in sa["state"][pid].items():
            assert torch.equal(v, sb["state"][pid][k]), (pid, k)


def test_step_seeds_make_runs_reproducible_and_change_the_draws(tmp_path):
    a = fit(nerf(tmp_path, "a", "run.step_seeds=true", "run.steps=4"))
    b = fit(nerf(tmp_path, "b", "run.step_seeds=true", "run.steps=4"))
    plain = fit(nerf(tmp_path, "plain", "run.steps=4"))
    assert_identical(state(a), state(b))
    assert not all(torch.equal(x, y) for n in state(a) for x, y in zip(state(a)[n].values(), state(plain)[n].values()))


def test_threshold_zero_is_the_sequential_run_bit_for_bit(tmp_path):
    seq = fit(nerf(tmp_path, "seq", "run.step_seeds=true"))
    pic = fit(nerf(tmp_path, "pic", "run.picard.window=3"))
    assert pic.step == seq.step == 12
    assert_identical(state(seq), state(pic))
    assert_optimizers_identical(seq, pic)
    assert 1 <= pic.picard_rounds <= 12  # every round advances at least one step
    assert pic.picard_gradient_evals >= 12
    print(f"\nNeRF 12 steps, window 3, threshold 0, in-process: {pic.picard_rounds} rounds, "
          f"{pic.picard_gradient_evals} gradient evaluations; wall {pic.wall:.1f} s vs sequential {seq.wall:.1f} s")


@pytest.mark.slow
def test_threshold_zero_with_two_worker_processes(tmp_path):
    seq = fit(nerf(tmp_path, "seq", "run.step_seeds=true"))
    pic = fit(nerf(tmp_path, "pic", "run.picard.window=3", "run.picard.workers=2"))
    assert_identical(state(seq), state(pic))
    assert_optimizers_identical(seq, pic)
    assert 1 <= pic.picard_rounds <= 12
    print(f"\nNeRF 12 steps, window 3, threshold 0, 2 workers: {pic.picard_rounds} rounds "
          f"({pic.picard_rounds / 12:.2f} per step); wall {pic.wall:.1f} s vs sequential {seq.wall:.1f} s")


def test_a_large_threshold_accepts_several_steps_a_round(tmp_path):
    seq = fit(nerf(tmp_path, "seq", "run.step_seeds=true"))
    pic = fit(nerf(tmp_path, "pic", "run.picard.window=4", "run.picard.threshold=1e9"))
    assert pic.step == 12
    assert pic.picard_rounds < 12
    s, p = state(seq), state(pic)
    assert all(torch.isfinite(v).all() for sd in p.values() for v in sd.values() if v.is_floating_point())
    err = fixed_point_error(p, s, parameter_names(pic.system), exact=False)
    assert math.isfinite(err)
    print(f"\nthreshold 1e9, window 4: {pic.picard_rounds} rounds for 12 steps; error to the sequential run {err:.3g}")


def test_adaptive_threshold_runs(tmp_path):
    pic = fit(nerf(tmp_path, "pic", "run.picard.window=3", "run.picard.threshold=1.0", "run.picard.adapt=median",
                   "run.steps=6"))
    assert pic.step == 6 and 1 <= pic.picard_rounds <= 6


def test_gaussians_with_densification_inside_a_window_at_threshold_zero(tmp_path):
    seq = fit(gaussians(tmp_path, "seq", "run.step_seeds=true"))
    pic = fit(gaussians(tmp_path, "pic", "run.picard.window=3"))
    assert len(seq.system.representation) != 200  # densification changed the number of Gaussians
    assert_identical(state(seq), state(pic))
    assert_optimizers_identical(seq, pic)
    assert pic.picard_rounds <= 12


def test_resume_mid_run_ends_as_an_uninterrupted_picard_run(tmp_path):
    full = fit(nerf(tmp_path, "full", "run.picard.window=3", "run.checkpoint_every=4"))
    part = nerf(tmp_path, "part", "run.picard.window=3", "run.checkpoint_every=4", "run.steps=7")
    first = fit(part)
    assert first.step == 7
    meta = json.loads((tmp_dir(part) / "ckpt" / "last.json").read_text())
    assert meta["step"] == 7 and meta["picard_rounds"] == first.picard_rounds
    resumed = fit(nerf(tmp_path, "part", "run.picard.window=3", "run.checkpoint_every=4"), resume=True)
    assert resumed.step == 12
    assert_identical(state(full), state(resumed))
    assert_optimizers_identical(full, resumed)


def test_checkpoints_inside_a_window_hold_the_accepted_state(tmp_path):
    """checkpoint_every=4 with windows of 5: the step-4 and step-8 checkpoints are written while a round's rollout
    is under way (before its look-ahead to the window's end): the step-8 one is the sequential run's state after
    8 steps, optimizer included."""
    seq = fit(nerf(tmp_path, "seq", "run.step_seeds=true", "run.steps=8"))
    pic = fit(nerf(tmp_path, "pic", "run.picard.window=5", "run.checkpoint_every=4"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_dir(pic.cfg) / "ckpt" / "prev.safetensors"))  # step 8 (last is step 12)
    assert json.loads((tmp_dir(pic.cfg) / "ckpt" / "prev.json").read_text())["step"] == 8
    for name, sd in state(seq).items():
        for k, v in sd.items():
            assert torch.equal(saved[f"model.{name}.{k}"], v), (name, k)
    for pid, st in seq.optimizer.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(saved[f"optim.{pid}.{k}"], v), (pid, k)


@pytest.mark.parametrize("key,value", [("window", "-1"), ("workers", "-2"), ("threshold", "-0.5"),
                                       ("threshold", "nan"), ("ema", "1.5")])
def test_bad_picard_values_are_refused(key, value):
    with pytest.raises(DreamcoreError, match=f"run.picard.{key}"):
        load_config(config_path("reference-nerf"), [f"run.picard.{key}={value}"])


def test_unknown_picard_key_and_fp16_are_refused(tmp_path):
    with pytest.raises(DreamcoreError, match="run.picard.windows"):
        load_config(config_path("reference-nerf"), ["run.picard.windows=3"])
    with pytest.raises(DreamcoreError, match="fp16"):
        fit(nerf(tmp_path, "fp16", "run.picard.window=2", "run.precision=fp16", "run.steps=2"))


def test_a_stop_request_mid_round_saves_the_accepted_state_and_resumes_exactly(tmp_path):
    """Ctrl-C / SIGTERM (the trainer's stop request) during a round: the round ends, the accepted state is saved,
    and the resumed run ends as the sequential run does."""
    from dreamcore.errors import RunInterrupted

    seq = fit(nerf(tmp_path, "seq", "run.step_seeds=true"))
    cfg = nerf(tmp_path, "stop", "run.picard.window=4")
    trainer = Trainer(cfg, RunDir(tmp_dir(cfg)))
    after = trainer._after_step

    def stop_at_five(losses, bar):
        after(losses, bar)
        if trainer.step == 5:
            trainer._request_stop(2, None)

    trainer._after_step = stop_at_five
    with pytest.raises(RunInterrupted):
        trainer.fit()
    saved = json.loads((tmp_dir(cfg) / "ckpt" / "last.json").read_text())["step"]
    assert 5 <= saved < 12 and saved == trainer.step
    resumed = fit(cfg, resume=True)
    assert resumed.step == 12
    assert_identical(state(seq), state(resumed))


def test_metrics_report_the_rounds(tmp_path):
    from dreamcore.runner.generate import generate

    run = generate(nerf(tmp_path, "m", "run.picard.window=2", "run.steps=4"), announce=lambda *_: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 1 <= metrics["picard_rounds"] <= 4 and metrics["picard_gradient_evals"] >= 4
    plain = generate(nerf(tmp_path, "p", "run.steps=2"), announce=lambda *_: None)
    assert "picard_rounds" not in json.loads((plain / "metrics.json").read_text())
