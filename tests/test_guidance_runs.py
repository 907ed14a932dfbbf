"""Every registered guidance end to end through ``dreamcore generate`` (reference prior, NeRF, GLB export),
exact resume with VSD's own optimizer, view-dependent Perp-Neg runs, and the README's plugin example."""

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dreamcore import registry
from dreamcore.cli import main
from test_runner import TINY, assert_same_state

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ["asd-adv", "asd-async", "bsd", "cds", "cfd", "coupled", "csd", "dsd", "esd", "gcs", "ism", "nfsd", "reward",
           "rsd", "sdi", "sds", "sir", "sjc", "stein", "vsd"]
EXPORT = ["export.formats=[glb]", "export.resolution=40", "export.texture_size=64", "export.isosurface=1.0"]


def test_all_builtin_methods_are_registered():
    assert set(BUILTIN) <= set(registry.names("guidance"))


@pytest.mark.parametrize("name", BUILTIN)
def test_method_runs_through_generate_and_exports_a_glb(tmp_path, name):
    run = tmp_path / name
    whole = ["system.rays_per_view=0"] if name == "sir" else []  # SIR fits whole images
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "run.steps=4", f"guidance.name={name}",
                 *whole, *EXPORT, f"run.dir={run}"]) == 0
    assert (run / "model.glb").stat().st_size > 1000
    assert f" {name.replace('-', '_')}=" in (run / "log.txt").read_text()  # the loss term, by name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["glb_iou"] <= 1.0
    assert f"name: {name}" in (run / "config.yaml").read_text()


def test_vsd_resume_is_exact_including_the_score_models_optimizer(tmp_path):
    common = [*TINY, "guidance.name=vsd", "guidance.score_steps=2"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, f"run.dir={full}"]) == 0
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, "run.steps=3", f"run.dir={part}"]) == 0
    assert main(["generate", "--resume", str(part), "run.steps=6"]) == 0
    a, b = load_file(str(full / "ckpt/last.safetensors")), load_file(str(part / "ckpt/last.safetensors"))
    assert any(k.startswith("optim@guidance.score.") for k in a)
    assert any(k.startswith("model.guidance.score.") for k in a)
    assert_same_state(a, b)


def test_view_dependent_prompts_with_perp_neg_on_the_unconditioned_reference(tmp_path):
    """The text-to-3D setting of the reference prior: no camera, only "front/side/back/overhead view"."""
    run = tmp_path / "perpneg"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "prior.camera_conditioned=false",
                 "prior.bank_views=16", "views.perp_neg=true", "guidance.guidance_scale=7.5", f"run.dir={run}"]) == 0
    text = (run / "config.yaml").read_text()
    assert "perp_neg: true" in text


def _readme_plugin() -> tuple[str, str]:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- plugin-example: (\S+) -->\s*```python\n(.*?)```", readme, re.S)
    assert m, "README.md lost its plugin example"
    return m.group(1), m.group(2)


def test_the_readme_plugin_example_registers_and_runs_a_new_guidance(tmp_path):
    filename, code = _readme_plugin()
    path = tmp_path / filename
    path.write_text(code)
    name = re.search(r'@register\("guidance", "([^"]+)"\)', code).group(1)
    run = tmp_path / "plugin"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, f"plugins=[{path}]",
                 f"guidance.name={name}", *EXPORT, f"run.dir={run}"]) == 0
    assert (run / "model.glb").is_file()
    assert f" {name.replace('-', '_')}=" in (run / "log.txt").read_text() or f" {name}=" in (run / "log.txt").read_text()
    assert f"plugins:\n- {path}" in (run / "config.yaml").read_text()
    # resuming finds the plugin again from the saved config
    assert main(["generate", "--resume", str(run), "run.steps=8"]) == 0


@pytest.mark.parametrize("name", ["prolificdreamer", "esd", "csd", "sjc", "nfsd", "sdi", "ism", "dsd", "rsd"])
def test_recipe_configs_load_with_their_official_defaults(name):
    from dreamcore.config import config_path, load_config

    cfg = load_config(config_path(name), [])
    assert cfg.guidance.name in BUILTIN
    if name == "sjc":
        assert cfg.guidance.scale_convention == "threestudio"
        guidance = registry.build("guidance", cfg.guidance)
        assert guidance.omega(0) == 101.0
    if name == "prolificdreamer":
        assert cfg.guidance.t_max(4999) == 0.98 and cfg.guidance.t_max(5001) == 0.5
    if name == "csd":
        assert cfg.guidance.coef_negative(5000) == -1.0 and cfg.guidance.coef_null(0) == -1.0 and cfg.views.perp_neg
    if name == "dsd":  # official configs/dsd.yaml: ω 7.5 with Perp-Neg, t 0.98 → 0.32 as 1 − √(k/K)
        assert cfg.guidance.name == "dsd" and cfg.views.perp_neg and cfg.guidance.t_schedule == "sqrt"
        assert cfg.guidance.guidance_scale(0) == 7.5 and (cfg.guidance.t_min(0), cfg.guidance.t_max(0)) == (0.32, 0.98)
    if name == "rsd":  # the official IF guidance: γ 200, one t for a batch of 20 views
        assert cfg.guidance.name == "rsd" and cfg.guidance.repulsion(0) == 200.0 and cfg.guidance.t_shared
        assert cfg.camera.batch_size == 20


@pytest.mark.parametrize("name", ["dsd", "rsd"])
def test_dsd_and_rsd_recipes_run_end_to_end_briefly(tmp_path, name):
    """The recipes run as they are (Perp-Neg for DSD, a batch of particles for RSD), the method's loss in the log."""
    overrides = [o for o in TINY if not o.startswith("system.")] + [
        "run.steps=3", f"run.dir={tmp_path / name}", "renderer.shading_probs=[0.0,1.0,0.0]", "camera.batch_size=3"]
    assert main(["generate", "--config", f"configs/{name}.yaml", *overrides]) == 0
    assert f" {name}=" in (tmp_path / name / "log.txt").read_text()


def test_a_recipe_runs_end_to_end_briefly(tmp_path):
    """csd.yaml: Perp-Neg, annealed coefficients and normalization on the unconditioned reference prior."""
    overrides = [o for o in TINY if not o.startswith("system.")] + ["run.steps=3", f"run.dir={tmp_path / 'csd'}",
                                                                     "renderer.shading_probs=[0.0,1.0,0.0]"]
    assert main(["generate", "--config", "configs/csd.yaml", *overrides]) == 0
    assert " csd=" in (tmp_path / "csd" / "log.txt").read_text()
