"""``dreamcore batch`` with edit jobs (issue 38): a JSONL line ``{"edit": RUN, "prompt": target, "source_prompt":
..., "region": ..., "config": ...}`` is an edit of a finished run, its paths relative to the prompt file; it is
checked (source, prompts, region, merged config) before any work, named by the source checkpoint's bytes and its
settings, runs on the local backend beside generation jobs, and is skipped once done."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import dreamcore
from dreamcore.batch.jobs import expand_jobs, read_prompts
from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.runner.generate import generate
from test_runner import TINY

BOX = "box:-0.3,0.0,-0.3,0.3,0.5,0.3"
TARGET, SOURCE_PROMPT = "a toy robot with a blue chest", "a toy robot"
# the edit's own length and sizes (its other settings are the source's: TINY)
EDIT = ["run.steps=4", "run.checkpoint_every=2", "run.val_every=0", "export.formats=[]",
        "guidance.guidance_scale=1.0"]


def quiet(*_):
    return None


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished tiny NeRF run on the reference prior (the robot), in a runs folder of its own."""
    run = tmp_path_factory.mktemp("work") / "runs" / "robot"
    generate(load_config(config_path("reference-nerf"), TINY + [f"run.dir={run}"]), announce=quiet)
    return run


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def jsonl(path: Path, *records: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def edit_line(source: str, **kw) -> dict:
    return {"edit": source, "prompt": TARGET, "source_prompt": SOURCE_PROMPT, "region": BOX, **kw}


def test_an_edit_line_names_its_source_beside_the_prompt_file_and_merges_its_config(source, tmp_path):
    lists = tmp_path / "lists"
    prompts = jsonl(lists / "edits.jsonl", edit_line(f"../{source.parent.name}/robot", config="edit-sds",
                                                      falloff=0.05, seed=3, overrides=EDIT))
    shutil.copytree(source.parent, tmp_path / source.parent.name)  # the prompt file's neighbour: a copy
    [line] = read_prompts(prompts)
    assert line.edit == str((tmp_path / source.parent.name / "robot").resolve())
    assert (line.prompt, line.source_prompt, line.region, line.falloff, line.config) == (
        TARGET, SOURCE_PROMPT, BOX, 0.05, "edit-sds")
    [job] = expand_jobs([line], "reference-nerf", [], None, tmp_path / "B")
    assert job.name.startswith("edit-a-toy-robot-with-a-blue-chest-") and Path(job.dir).parent == tmp_path / "B"
    cfg = job.load()  # what the worker runs
    assert cfg.system.name == "edit" and cfg.init.from_run == line.edit and cfg.prompt == TARGET
    assert cfg.system.source_prompt == SOURCE_PROMPT and cfg.system.region == BOX and cfg.system.falloff == 0.05
    assert cfg.guidance.name == "sds" and cfg.run.steps == 4 and cfg.run.seed == 3 and cfg.run.dir == job.dir
    assert cfg.representation.n_levels == 4  # the source's own settings

    # the name follows the source checkpoint's bytes and the settings, not where the source lies
    [original] = read_prompts(jsonl(tmp_path / "here.jsonl", edit_line(str(source), config="edit-sds",
                                                                        falloff=0.05, seed=3, overrides=EDIT)))
    assert expand_jobs([original], "reference-nerf", [], None, tmp_path / "B")[0].name == job.name
    other = read_prompts(jsonl(tmp_path / "other.jsonl", edit_line(str(source), config="edit-sds", falloff=0.1,
                                                                    seed=3, overrides=EDIT)))
    assert expand_jobs(other, "reference-nerf", [], None, tmp_path / "B")[0].name != job.name
    dreamcore.resume(line.edit, ["run.steps=8"], progress=False, announce=quiet)  # the copy, trained further
    assert expand_jobs([line], "reference-nerf", [], None, tmp_path / "B")[0].name != job.name


@pytest.mark.parametrize("record, problem", [
    ({"edit": "nowhere"}, "no such run folder"),
    ({"edit": "empty"}, "not a dreamcore run folder"),
    ({"edit": "unfinished"}, "no checkpoint yet"),
    ({"edit": "robot.glb"}, "editing a mesh file is not supported yet"),
    ({"source_prompt": " "}, '"source_prompt", what the asset shows now'),
    ({"prompt": ""}, '"prompt" must be the target prompt'),
    ({"region": "box:0,0,0,-1,1,1"}, "x0 = 0 is not below x1 = -1"),
    ({"region": "mesh:part.glb"}, "no such mesh file: .*/lists/part.glb"),
    ({"region": "sphere:0,0,0,1"}, "unknown region"),
    ({"falloff": "wide"}, '"falloff" must be a number'),
    ({"falloff": -1}, "finite width ≥ 0"),
    ({"image": "robot.png"}, 'an edit line takes no "image"'),
    ({"config": ""}, '"config" must name an edit recipe'),
    ({"overrides": "run.steps=3"}, '"overrides" must be a list'),
])
def test_a_bad_edit_line_is_refused_naming_its_line_before_any_work(source, tmp_path, record, problem, capsys):
    lists = tmp_path / "lists"
    (lists / "empty").mkdir(parents=True)
    (lists / "unfinished").mkdir()
    (lists / "unfinished" / "config.yaml").write_text((source / "config.yaml").read_text())
    shutil.copyfile("assets/robot.glb", lists / "robot.glb")
    prompts = jsonl(lists / "p.jsonl", {"prompt": "a mug"}, {**edit_line(str(source)), **record})
    with pytest.raises(DreamcoreError, match=f"p.jsonl line 2: .*{problem}"):
        read_prompts(prompts)
    assert main(["batch", str(prompts), "--config", "reference-nerf", *TINY, "--out", str(tmp_path / "B")]) == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "B").exists()


def test_a_bad_edit_config_or_a_stray_edit_key_is_refused_before_any_work(source, tmp_path, capsys):
    stray = jsonl(tmp_path / "stray.jsonl", {"prompt": "a mug", "region": BOX})
    with pytest.raises(DreamcoreError, match="line 1: region belong to an edit line"):
        read_prompts(stray)
    for record, problem in (({"config": "edit-xyz"}, "config file not found: edit-xyz"),
                            ({"config": "reference-nerf"}, "dreamfusion"),  # not an edit recipe
                            ({"overrides": ["prompt=a cat"]}, "are set by the edit itself"),
                            ({"overrides": ["run.stpes=3"]}, "stpes")):
        prompts = jsonl(tmp_path / "p.jsonl", {**edit_line(str(source)), **record})
        assert main(["batch", str(prompts), "--out", str(tmp_path / "B")]) == 2
        err = capsys.readouterr().err
        assert f"edit of {source} toward {TARGET!r}" in err and problem in err, err
        assert not (tmp_path / "B").exists()


def test_a_local_batch_runs_an_edit_beside_a_generation_job_and_skips_it_when_done(source, tmp_path, capsys):
    before = digests(source)
    prompts = jsonl(tmp_path / "p.jsonl", {"prompt": "a red robot"},
                    edit_line(str(source), overrides=["run.steps=4", "guidance.guidance_scale=1.0"]))
    out = tmp_path / "B"
    # the batch's overrides (TINY, the source's own sizes) apply to every job, the edit's too
    assert main(["batch", str(prompts), "--config", "reference-nerf", *TINY, "--out", str(out)]) == 0
    jobs = json.loads((out / "batch.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["done", "done"], jobs
    made, edit = jobs
    assert "edit" not in made and edit["edit"] == str(source) and edit["name"].startswith("edit-a-toy-robot-with")
    assert edit["steps"] == 4 and Path(edit["dir"]).parent == out
    saved = load_config(Path(edit["dir"]) / "config.yaml", [])
    assert saved.system.name == "edit" and saved.init.from_run == str(source) and saved.system.region == BOX
    assert saved.guidance.name == "dds" and saved.prompt == TARGET  # the default recipe, edit-dds
    assert digests(source) == before  # the source is only read
    assert f"{TARGET} (edit of robot)" in (out / "batch.md").read_text()
    # the same command again: the edit is done, nothing reruns
    assert main(["batch", str(prompts), "--config", "reference-nerf", *TINY, "--out", str(out)]) == 0
    again = json.loads((out / "batch.json").read_text())["jobs"]
    assert all(j["skipped"] for j in again) and again[1]["edit"] == str(source)
    assert "2 finished before" in capsys.readouterr().out
