import pytest

from dreamcore.config import Config, config_path, load_config, parse_overrides
from dreamcore.errors import DreamcoreError
from dreamcore.schedule import Scheduled


def test_yaml_and_overrides_merge_into_typed_config():
    cfg = load_config(config_path("reference-nerf"), ["run.steps=7", "guidance.guidance_scale=3", "camera.fov_range=[30,35]"])
    assert isinstance(cfg, Config)
    assert cfg.run.steps == 7
    assert cfg.guidance.name == "sds" and cfg.guidance.guidance_scale(0) == 3.0
    assert cfg.camera.fov_range == (30.0, 35.0)
    assert cfg.prior.reference.mesh == "assets/robot.glb"


def test_extends_inherits_and_overrides():
    cfg = load_config(config_path("demo"))
    base = load_config(config_path("reference-nerf"))
    assert cfg.system.rays_per_view == base.system.rays_per_view
    assert cfg.prompt != base.prompt


def test_unknown_key_names_valid_keys():
    with pytest.raises(DreamcoreError) as e:
        load_config(config_path("reference-nerf"), ["guidance.guidance_scal=3"])
    msg = str(e.value)
    assert "guidance.guidance_scal" in msg and "guidance_scale" in msg and "t_max" in msg


def test_unknown_top_level_section():
    with pytest.raises(DreamcoreError, match="unknown config key 'optimiser'"):
        load_config(None, ["optimiser.lr=1"])


def test_wrong_type_fails_before_work():
    with pytest.raises(DreamcoreError, match="run.steps: expected an integer"):
        load_config(config_path("reference-nerf"), ["run.steps=many"])
    with pytest.raises(DreamcoreError, match="renderer.shading"):
        load_config(config_path("reference-nerf"), ["renderer.shading=glossy"])


def test_unknown_component_name_lists_choices():
    with pytest.raises(DreamcoreError) as e:
        load_config(None, ["guidance.name=sdss"])
    assert "sds" in str(e.value) and "guidance" in str(e.value)


def test_switching_component_drops_old_keys():
    cfg = load_config(config_path("reference-nerf"), ["background.name=learned"])
    assert cfg.background.name == "learned" and cfg.background.random_prob == 0.0


def test_scheduled_values_interpolate():
    s = Scheduled.parse([[0, 1.0], [100, 0.0], [200, 0.5]])
    assert s(-5) == 1.0 and s(50) == pytest.approx(0.5) and s(150) == pytest.approx(0.25) and s(1e6) == 0.5
    with pytest.raises(DreamcoreError):
        Scheduled.parse([[10, 1.0], [5, 0.0]])
    cfg = load_config(None, ["guidance.t_max=[[0,0.98],[10,0.5]]"])
    assert cfg.guidance.t_max(5) == pytest.approx(0.74)


def test_override_syntax_errors():
    with pytest.raises(DreamcoreError, match="key=value"):
        parse_overrides(["run.steps"])
    assert parse_overrides(["prompt=a red chair"]) == {"prompt": "a red chair"}


def test_plugins_register_components(tmp_path):
    plugin = tmp_path / "my_bg.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from dreamcore.registry import register\n"
        "from dreamcore.renderers.background import SolidBackground\n"
        "@register('background', 'my-black')\n"
        "class Black(SolidBackground):\n"
        "    @dataclass\n"
        "    class Config(SolidBackground.Config):\n"
        "        color: tuple[float, float, float] = (0.0, 0.0, 0.0)\n"
    )
    cfg = load_config(None, [f"plugins=[{plugin}]", "background.name=my-black"])
    assert cfg.background.name == "my-black" and cfg.background.color == (0.0, 0.0, 0.0)
    with pytest.raises(DreamcoreError, match="plugin file not found"):
        load_config(None, [f"plugins=[{tmp_path / 'nope.py'}]"])


def test_exponent_literals_without_a_dot_are_numbers():
    """YAML 1.1 reads `1e-3` as a string; float and scheduled fields take it as the number users mean."""
    cfg = load_config(config_path("reference-nerf"), ["optimizer.eps=1e-8", "guidance.weight=2e-1",
                                                      "guidance.t_max=[[0,9e-1],[10,5E-1]]"])
    assert cfg.optimizer.eps == 1e-8 and cfg.guidance.weight(0) == pytest.approx(0.2)
    assert cfg.guidance.t_max(10) == pytest.approx(0.5)
    with pytest.raises(DreamcoreError, match="optimizer.eps: expected a number"):
        load_config(config_path("reference-nerf"), ["optimizer.eps=tiny"])
    with pytest.raises(DreamcoreError, match="guidance.weight"):
        load_config(config_path("reference-nerf"), ["guidance.weight=heavy"])


def test_time_scale_scales_every_step_count_and_schedule():
    """run.time_scale=0.5 equals writing every step count and schedule of the recipe at half length."""
    scaled = load_config(config_path("text-gaussians"), ["run.time_scale=0.5"])
    by_hand = load_config(config_path("text-gaussians"), [
        "run.steps=400",
        "system.lambda_opaque=[[0,0.0],[100,0.1]]", "system.densify.start=50", "system.densify.stop=300",
        "system.densify.every=50", "representation.lr_means=[[0,0.002],[400,0.00002]]",
        "guidance.t_max=[[0,0.98],[400,0.3]]", "representation.sh_degree_every=500",
        "representation.beg_start=500", "representation.beg_stop=2250"])
    assert scaled == by_hand
    assert scaled.run.time_scale == 1.0
    assert scaled.run.val_every == 400  # how often it validates and saves is not the algorithm: unscaled
    assert scaled.system.densify.opacity_reset_every == 0  # 0 (never) stays 0
    tiny = load_config(config_path("text-gaussians"), ["run.time_scale=0.001"])
    assert tiny.run.steps == 1 and tiny.system.densify.every == 1  # intervals stay >= 1


def test_time_scale_is_applied_once_and_reaches_the_refinement_stage(tmp_path):
    from dreamcore.config import dump_yaml
    from dreamcore.runner.refine import stage_config

    cfg = load_config(config_path("reference-gaussians"), ["run.time_scale=0.5"])
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(cfg))
    assert load_config(saved) == cfg  # the run folder's config.yaml (resume) is not scaled again
    plain = stage_config(load_config(config_path("reference-gaussians")), tmp_path)
    stage = stage_config(cfg, tmp_path)
    assert stage.run.steps == round(plain.run.steps / 2)
    assert stage.optimizer.lr.points == tuple((s / 2, v) for s, v in plain.optimizer.lr.points)


@pytest.mark.parametrize("bad", ["0", "-1", "nan"])
def test_time_scale_must_be_positive(bad):
    with pytest.raises(DreamcoreError, match="run.time_scale must be a positive number"):
        load_config(config_path("text-nerf"), [f"run.time_scale={bad}"])


def test_every_step_like_count_is_marked_for_time_scale():
    """A component field named like a count of training steps must be a step_count (so run.time_scale scales
    it) or be listed here as counting something else."""
    import dataclasses

    from dreamcore import registry
    from dreamcore.config import Config

    not_training_steps = {"log_every", "val_every", "checkpoint_every", "occupancy_update_every", "init_texture_steps", "inversion_steps",
                          "score_steps", "xs_inv_steps", "ddim_steps", "denoise_steps", "ode_steps", "smooth_iterations", "delta_warmup",
                          "cur_start", "cur_end"}
    step_like = ("every", "start", "stop", "steps", "warmup", "until")
    classes = {Config}
    for kind in registry.kinds():
        for name in registry.names(kind):
            classes.add(registry.lookup(kind, name).Config)
    seen, unmarked = set(), []

    def walk(cls):
        if cls in seen:
            return
        seen.add(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default))
            elif (isinstance(default, (int, float)) and not isinstance(default, bool)
                  and any(w in f.name for w in step_like) and f.name not in not_training_steps
                  and not f.metadata.get("steps") and not f.name.startswith(("t_", "lambda"))):
                unmarked.append(f"{cls.__qualname__}.{f.name}")

    for cls in classes:
        walk(cls)
    assert not unmarked, unmarked


def test_settings_added_later_at_their_neutral_value_leave_run_hashes_alone():
    """NEUTRAL_SETTINGS: a setting added after runs were recorded (the image section, eval.align) is left out of
    the trees that name runs while it is at its neutral value, and kept otherwise."""
    from dreamcore.config import NEUTRAL_SETTINGS, config_path, load_config, to_tree, without_neutral

    plain = without_neutral(to_tree(load_config(config_path("text-nerf"))))
    assert "image" not in plain and "align" not in plain["eval"] and "mesh" in plain["eval"]
    older = to_tree(load_config(config_path("text-nerf")))
    older.pop("image")
    older["eval"].pop("align")
    older["run"].pop("step_seeds")
    older["run"].pop("picard")
    for key in ("surface", "fusion_views", "fusion_resolution", "fusion_truncation"):
        older["export"].pop(key)
    assert plain == older  # as a tree from before these settings existed
    fused = without_neutral(to_tree(load_config(config_path("text-nerf"), ["export.surface=depth"])))
    assert fused["export"]["surface"] == "depth" and fused["export"]["fusion_views"] == 48
    dmtet = to_tree(load_config(config_path("reference-dmtet")))
    assert "init_surface" not in without_neutral(dmtet)["representation"]
    assert "init_surface" in without_neutral(
        to_tree(load_config(config_path("reference-dmtet"), ["representation.init_surface=depth"])))["representation"]
    on = without_neutral(to_tree(load_config(config_path("text-nerf"), ["eval.align=bbox", "image.path=x.png"])))
    assert on["eval"]["align"] == "bbox" and on["image"]["path"] == "x.png"
    reference = without_neutral(to_tree(load_config(config_path("reference-nerf"))))
    assert "meshes" not in reference["prior"]["reference"] and "mesh" in reference["prior"]["reference"]
    mapped = to_tree(load_config(config_path("reference-nerf"), ['prior.reference.meshes={"a": assets/robot.glb}']))
    assert without_neutral(mapped)["prior"]["reference"]["meshes"] == {"a": "assets/robot.glb"}
    for key in NEUTRAL_SETTINGS:  # every entry names a real setting (the reference prior's in its recipe)
        recipe = ("reference-nerf" if key.startswith("prior.reference.") else
                  "reference-dmtet" if key.startswith("representation.") else "text-nerf")
        node = to_tree(load_config(config_path(recipe)))
        for part in key.split("."):
            node = node[part]
