"""Issue 34's findings, sent as a hostile page would send them: every override line goes through the queue's
``submit`` (what the page's Generate and Reconstruct buttons call) and must be refused in words before anything
is written; and a job config forced past those checks still runs no code in a studio worker (defence in depth:
``DREAMCORE_UNTRUSTED``, which the queue sets for its workers, makes ``load_plugins`` refuse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamcore.batch.jobs import Job
from dreamcore.config import config_path, load_config, parse_overrides
from dreamcore.errors import DreamcoreError
from dreamcore.runner.refine import stage_config
from dreamcore.studio.queue import JobQueue
from dreamcore.studio.recipes import PRESETS, RECONSTRUCT_RECIPES, preset_overrides, recipes
from dreamcore.studio.safety import StudioLimits, UnsafeInput, check_limits, check_overrides
from dreamcore.trust import UNTRUSTED_ENV, UntrustedInput, untrusted_environment

ROOT = Path(__file__).resolve().parents[1]
EVIL = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


@pytest.fixture
def queue(tmp_path):
    q = JobQueue(tmp_path / "runs", poll_s=0.05)
    yield q
    q.close()


def evil_plugin(folder: Path) -> tuple[Path, Path]:
    """A plugin that writes a marker file when imported: (plugin, marker)."""
    marker = folder / "marker.txt"
    plugin = folder / "evil.py"
    plugin.write_text(EVIL.format(marker=str(marker)))
    return plugin, marker


# the code-execution finding and its variations: the refinement stage's overrides, + or not, mappings, deeper
CODE_LINES = [
    "refine.overrides=['+plugins=[evil.py]']",
    "refine.overrides=['plugins=[evil.py]']",
    'refine.overrides=["plugins=evil"]',
    "refine.overrides=[\"refine.overrides=['plugins=[evil.py]']\"]",
    "refine={overrides: ['plugins=[evil.py]']}",
    "refine.own=[plugins]",
    "+plugins=[evil.py]",
    "system.plugins=[evil.py]",
    "prior={extends: x.yaml}",
    "refine.overrides=['extends=../../x.yaml']",
    "refine.overrides=['refine.config=/tmp/x.yaml']",
]


@pytest.mark.parametrize("line", CODE_LINES)
@pytest.mark.parametrize("recipe", ["stabledreamer", "text-nerf"])
def test_lines_that_name_code_are_refused_and_leave_nothing(queue, tmp_path, line, recipe):
    plugin, marker = evil_plugin(tmp_path)
    os.chdir(tmp_path)  # where the finding's evil.py was found: the worker's working folder
    try:
        with pytest.raises(UnsafeInput, match="cannot (be set|take plugins)"):
            queue.submit("a toy robot", recipe, "draft", overrides=[line])
    finally:
        os.chdir(ROOT)
    assert list(queue.runs_dir.iterdir()) == [] and not marker.exists()


def test_the_second_plugin_route_is_refused(queue):
    """``refine.own=[plugins]`` with ``refine.overrides=['plugins=[mod]']``: any module on sys.path."""
    with pytest.raises(UnsafeInput):
        queue.submit("a toy robot", "stabledreamer", "draft",
                     overrides=["refine.own=[plugins]", "refine.overrides=['plugins=[json]']"])


@pytest.mark.parametrize("value", [
    "it's", "a', plugins: [x.py], b: 'c", 'a"b', "x]\nplugins: [y.py]", "#not a comment", "- item", "yes", "007",
    "ünïcödé", "a: b", "{plugins: [x.py]}"])
def test_values_are_serialized_not_quoted_by_hand(tmp_path, value):
    """A path or text value with quotes, brackets, colons or YAML words comes back as a line the engine reads
    as exactly that value: no quote in it can close a string and start a key."""
    (tmp_path / "run1").mkdir()
    path = str((tmp_path / "run1" / f"{value}.glb").resolve())
    for line, key, expect in [
        (f"eval.mesh={json.dumps(f'run1/{value}.glb')}", "eval.mesh", path),
        (f"x.paths={json.dumps(['run1/a.glb', f'run1/{value}.glb'])}", "x.paths",
         [str((tmp_path / "run1" / "a.glb").resolve()), path]),
        (f"negative_prompt={json.dumps(value)}", "negative_prompt", value),
        (f"views.front={json.dumps([value])}", "views.front", [value]),
    ]:
        [checked] = check_overrides([line], tmp_path)
        tree = parse_overrides([checked])
        node = tree
        for part in key.split("."):
            node = node[part]
        assert node == expect and "plugins" not in tree


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]"
                                                        for i in range(1, 9)]
    line = f"eval.views=[{', '.join(levels)}]"
    t0 = time.perf_counter()
    with pytest.raises(UnsafeInput, match="anchors, aliases and tags"):
        check_overrides([line], tmp_path)
    assert time.perf_counter() - t0 < 5.0  # linear in the line: refused before anything is built
    for other in ["run.steps=!!python/object:os.system x", "x=[" * 30 + "]" * 30, "x=" + "a" * 5000]:
        with pytest.raises(UnsafeInput):
            check_overrides([other], tmp_path)


@pytest.mark.parametrize("line,what", [
    ("run.steps=1000000000", "run.steps=1000000000"),
    ("export.resolution=4096", "export.resolution=4096"),
    ("camera.resolution=8192", "camera.resolution=8192"),
    ("export.texture_size=65536", "export.texture_size=65536"),
    ("camera.batch_size=4096", "camera.batch_size=4096"),
    ("eval.views=100000", "eval.views=100000"),
    ("export.turntable_frames=100000", "export.turntable_frames=100000"),
    ("representation.init_points=100000000", "representation.init_points=100000000"),
])
def test_absurd_sizes_are_refused_over_the_preset(queue, line, what):
    recipe = "text-gaussians" if line.startswith("representation.") else "text-nerf"
    with pytest.raises(UnsafeInput, match=f"asks for {what.replace('.', '[.]')}, over the studio's limit"):
        queue.submit("a toy robot", recipe, "high", overrides=[line])
    assert list(queue.runs_dir.iterdir()) == []


def test_a_refinement_stage_is_held_to_the_limits_too(queue):
    with pytest.raises(UnsafeInput, match="refinement stage asks for run.steps=900000"):
        queue.submit("a toy robot", "stabledreamer", "standard", overrides=["refine.overrides=['run.steps=900000']"])


def test_every_offered_recipe_and_preset_is_within_the_default_limits():
    for r in recipes() + recipes(RECONSTRUCT_RECIPES):
        plain = load_config(r.path)
        for preset in PRESETS:
            cfg = load_config(r.path, [*preset_overrides(preset, plain), "prompt=a toy robot"])
            check_limits(cfg, StudioLimits())
            if cfg.refine.config:
                check_limits(stage_config(cfg, Path("/tmp/run")), StudioLimits())
    small = StudioLimits(max_steps=10)
    with pytest.raises(UnsafeInput, match="run.steps=800, over the studio's limit of 10"):
        check_limits(load_config(config_path("text-nerf")), small)


def test_the_hub_is_offline_for_untrusted_jobs():
    env = untrusted_environment({"HF_HUB_OFFLINE": "0"})
    assert env[UNTRUSTED_ENV] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_an_untrusted_process_loads_no_plugin_even_from_a_refinement_stage(tmp_path, monkeypatch):
    plugin, marker = evil_plugin(tmp_path)
    forced = ["refine.overrides=['+plugins=[" + str(plugin) + "]']"]
    cfg = load_config(config_path("stabledreamer"), forced)  # trusted: the first stage loads fine
    monkeypatch.setenv(UNTRUSTED_ENV, "1")
    with pytest.raises(UntrustedInput, match="is not loaded: this job was sent by a web page"):
        stage_config(cfg, tmp_path / "run")
    with pytest.raises(UntrustedInput):
        load_config(config_path("text-nerf"), [f"plugins=[{plugin}]"])
    with pytest.raises(UntrustedInput):
        load_config(config_path("text-nerf"), ["plugins=[json]"])  # a module name is code too
    assert not marker.exists()


def test_a_studio_worker_given_a_forced_plugin_config_runs_nothing(tmp_path):
    """The worker process of a studio job, with the queue's environment, on a job whose overrides name a plugin
    (as if the page's check had been bypassed): the job fails in words and the plugin never ran."""
    plugin, marker = evil_plugin(tmp_path)
    job = Job("evil", "a toy robot", 0, str(config_path("text-nerf").resolve()),
              [f"plugins=[{plugin}]", "run.steps=2"], str(tmp_path / "runs" / "evil"))
    env = untrusted_environment(dict(os.environ))
    proc = subprocess.run([sys.executable, "-m", "dreamcore.batch.worker", json.dumps(job.to_dict())], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    result = json.loads((tmp_path / "runs" / ".batch" / "results" / "evil.json").read_text())
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert result["status"] == "failed" and "is not loaded" in result["error"]
    assert not marker.exists()


def test_prompts_reach_the_job_literally():
    """The page's prompt is text, whatever it holds (it was a ``prompt=...`` line read as YAML)."""
    for prompt in ["a chair: red", "a cat # fluffy", "yes", "007", "- a list?", "{plugins: [x.py]}"]:
        job = Job("x", prompt, 0, str(config_path("text-nerf")), [])
        assert load_config(job.config, job.config_overrides()).prompt == prompt


def test_errors_name_the_line_not_bytes_of_files(queue, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    with pytest.raises(DreamcoreError) as e:
        queue.submit("a toy robot", "reference-nerf", "draft", overrides=[f"prior.reference.mesh={secret}"])
    assert "TOPSECRET" not in str(e.value) and "outside the studio's runs folder" in str(e.value)


def test_paths_must_lie_in_a_run_of_the_pages_own_user(tmp_path):
    """The studio's own files at the top of the runs folder (its error log, Gradio's staging) are never a
    value's path, and with owners another user's run folder is not either."""
    for name in ("mine", "theirs"):
        (tmp_path / name).mkdir()
    for line in ["eval.mesh=./studio-errors.txt", "eval.mesh=.uploads/x.glb", "init.from_run=mine/.."]:
        with pytest.raises(UnsafeInput, match="not a file of a run"):
            check_overrides([line], tmp_path)
    owns = {"mine": True, "theirs": False}.get
    with pytest.raises(UnsafeInput, match="belongs to another user's run"):
        check_overrides(["eval.mesh=theirs/input/upload.glb"], tmp_path, owns)
    with pytest.raises(UnsafeInput, match="belongs to another user's run"):
        check_overrides(["refine.overrides=['eval.mesh=theirs/input/upload.glb']"], tmp_path, owns)
    [line] = check_overrides(["eval.mesh=mine/input/upload.glb"], tmp_path, owns)
    assert parse_overrides([line])["eval"]["mesh"] == str((tmp_path / "mine" / "input" / "upload.glb").resolve())
