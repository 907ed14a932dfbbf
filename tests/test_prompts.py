"""Prompts are taken literally at every entry point (issue 35): the CLI's words and ``--prompt``, a batch file's
lines (text and JSONL), the studio's form and the Python API. Each prompt below is sent through each entry point
and read back from the run's ``config.yaml``; overrides keep their YAML values. Most runs are the runner's
config step alone (``generate`` patched to write ``config.yaml`` and stop); one prompt per entry point runs the
real optimizer for two steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import dreamcore
from dreamcore import cli
from dreamcore.batch.jobs import Job, expand_jobs, read_prompts
from dreamcore.batch.worker import run_job
from dreamcore.config import config_path, load_config, override_lines
from dreamcore.errors import DreamcoreError
from dreamcore.runner import generate as runner
from dreamcore.runner.rundir import RunDir
from dreamcore.studio.queue import JobQueue, _job_of
from dreamcore.studio.runs import read_job
from dreamcore.studio.safety import StudioLimits

PROMPTS = ["a chair: red", "a cat # fluffy", "it's a \"quoted\" thing", "yes", "007", "null", "[a, list]",
           "{a: map}", "ünïcödé 🦊 — café", "&anchor *alias", "E=mc² poster", "   spaced  ", "a\\backslash",
           "- a dash"]
TINY = ["run.steps=2", "export.resolution=32", "export.formats=[glb]", "eval.views=1", "run.val_views=1",
        "run.val_resolution=32", "export.texture_size=64", "export.isosurface_views=1", "run.progress=false"]


def config_prompt(run_dir: Path) -> tuple[str, str]:
    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    return cfg["prompt"], cfg["negative_prompt"]


@pytest.fixture
def config_only(monkeypatch):
    """The runner reduced to writing the merged config.yaml (and an empty metrics.json for the batch record)."""

    def write_config(cfg, resume=False, announce=print):  # noqa: ARG001
        run = RunDir(Path(cfg.run.dir))
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        (run.path / "metrics.json").write_text("{}")
        return run.path

    monkeypatch.setattr(runner, "generate", write_config)


def test_cli_words_and_flags(tmp_path, config_only):
    for i, prompt in enumerate(PROMPTS):
        words = [] if prompt.startswith("-") or "=" in prompt else [prompt]
        flag = [] if words else [f"--prompt={prompt}"]
        assert cli.main(["generate", *words, *flag, f"--negative-prompt={prompt}", "--config", "text-nerf",
                         f"run.dir={tmp_path / str(i)}", "run.steps=5"]) == 0
        assert config_prompt(tmp_path / str(i)) == (prompt, prompt)
    cfg = yaml.safe_load((tmp_path / "0" / "config.yaml").read_text())
    assert cfg["run"]["steps"] == 5  # overrides keep their YAML values


def test_cli_refuses_an_empty_or_doubled_prompt(tmp_path, config_only, capsys):
    assert cli.main(["generate", "--prompt=  ", "--config", "text-nerf", f"run.dir={tmp_path}"]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert cli.main(["generate", "a cat", "--prompt=a dog", "--config", "text-nerf", f"run.dir={tmp_path}"]) == 2
    assert "give the prompt once" in capsys.readouterr().err


def test_batch_text_and_jsonl_files(tmp_path, config_only):
    text = [p for p in PROMPTS if not p.strip().startswith("#")]
    (tmp_path / "p.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n",
                                      encoding="utf-8")
    for name, expected in (("p.txt", [p.strip() for p in text]), ("p.jsonl", [p.strip() for p in PROMPTS])):
        jobs = expand_jobs(read_prompts(tmp_path / name), str(config_path("text-nerf")), ["run.steps=5"], [0],
                           tmp_path / name.replace(".", "-"))
        assert [j.prompt for j in jobs] == expected
        for job in jobs:
            rec = run_job(job)
            assert rec["status"] == "done", rec
            assert config_prompt(job.dir)[0] == job.prompt


def test_studio_form(tmp_path, config_only, monkeypatch):
    # nothing is started (each job is run here, below), so every prompt stays queued: room for them all
    queue = JobQueue(tmp_path / "runs", poll_s=3600, limits=StudioLimits(max_queue=100, max_per_page=100))
    try:
        for prompt in PROMPTS:
            name = queue.submit(prompt, "text-nerf", "draft", negative_prompt=prompt)
            job = _job_of(read_job(queue.runs_dir / name))
            assert run_job(job)["status"] == "done"
            assert config_prompt(job.dir) == (prompt.strip(), prompt.strip())
    finally:
        queue.close(wait_s=1)


def test_api(tmp_path, config_only):
    for i, prompt in enumerate(PROMPTS):
        run = dreamcore.generate(prompt, config="text-nerf", overrides={"run.steps": 5, "views.prompt_front": prompt},
                                 run_dir=tmp_path / str(i), negative_prompt=prompt, progress=False)
        assert config_prompt(run.path) == (prompt, prompt) and run.config.prompt == prompt
        assert run.config.views.prompt_front == prompt and run.config.run.steps == 5
    with pytest.raises(DreamcoreError, match="the prompt is empty"):
        dreamcore.generate("", config="text-nerf", run_dir=tmp_path / "empty")
    with pytest.raises(DreamcoreError, match="must be text"):
        dreamcore.generate(7, config="text-nerf", run_dir=tmp_path / "seven")


def test_override_mappings_are_values_and_lines_are_yaml():
    assert load_config(config_path("text-nerf"), override_lines({"prompt": "yes", "run.steps": 7})).prompt == "yes"
    assert load_config(config_path("text-nerf"), override_lines(["run.steps=7"])).run.steps == 7
    with pytest.raises(DreamcoreError, match="a mapping"):
        override_lines("run.steps=7")


@pytest.mark.parametrize("entry", ["cli", "batch", "studio", "api"])
def test_a_real_run_keeps_the_prompt(tmp_path, entry):
    """Two optimizer steps and an export, through each entry point, with a prompt YAML would have changed."""
    prompt = {"cli": "a chair: red # not a comment", "batch": "007", "studio": "yes: no",
              "api": "{plugins: [x.py]}"}[entry]
    out = tmp_path / "run"
    if entry == "cli":
        assert cli.main(["generate", prompt, "--config", "text-nerf", f"run.dir={out}", *TINY]) == 0
    elif entry == "batch":
        job = Job("one", prompt, 0, str(config_path("text-nerf")), TINY, str(out))
        assert run_job(job)["status"] == "done"
    elif entry == "studio":
        queue = JobQueue(tmp_path / "runs", poll_s=3600)
        try:
            name = queue.submit(prompt, "text-nerf", "draft", overrides=TINY)
        finally:
            queue.close(wait_s=1)
        job = _job_of(read_job(queue.runs_dir / name))
        assert run_job(job)["status"] == "done"
        out = Path(job.dir)
    else:
        run = dreamcore.generate(prompt, config="text-nerf", overrides=TINY, run_dir=out, progress=False)
        assert run.files["glb"].is_file()
    assert config_prompt(out)[0] == prompt
    assert (out / "model.glb").is_file()
