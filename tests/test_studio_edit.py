"""The studio's Edit this asset (issue 38), at the queue and the page's handlers (no browser): an edit of a finished
tiny job is queued with its region built by the server from six numbers, its record naming the job it edits, and
runs to the end in the worker; the command shown reproduces it with ``dreamcore edit``; a source that is unknown,
named by a path, another user's, unfinished or not editable is refused in words, as are bad numbers, a region or a
source set through the overrides, recipes that are no edit and configs over the limits, all leaving no run
folder; a job with edits is not deleted before them.

The queue's worker processes are fakes (``tests/test_studio_access.py``); one test runs the edit's job itself."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shlex
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import dreamcore.api
from dreamcore.batch.worker import run_job
from dreamcore.cli import main
from dreamcore.config import config_path, load_config, to_tree
from dreamcore.errors import DreamcoreError
from dreamcore.runner.edit import edit_config
from dreamcore.runner.generate import generate
from dreamcore.studio import queue as queue_module
from dreamcore.studio import runs
from dreamcore.studio.queue import JobQueue, _job_of
from dreamcore.studio.recipes import EDIT_RECIPES, recipes
from dreamcore.studio.safety import StudioLimits, UnsafeInput, check_box
from test_runner import TINY
from test_studio_access import ROBOT, FakeProcess, wait_for

TARGET = "a toy robot with a blue chest"
SOURCE_PROMPT = "a toy robot"
BOX = [-0.3, 0, "-0.3", 0.3, 0.5, "0.3"]  # as the page's number fields send them (a blank one is None)
SPEC = "box:-0.3,0.0,-0.3,0.3,0.5,0.3"
# the page's overrides for a tiny edit (its other sizes are the source job's: TINY)
EDIT = ["run.steps=4", "run.checkpoint_every=2", "run.val_every=0", "export.formats=[]",
        "guidance.guidance_scale=1.0"]


def quiet(*_):
    return None


@pytest.fixture
def fake_workers(monkeypatch):
    FakeProcess.started = []
    monkeypatch.setattr(queue_module.subprocess, "Popen", FakeProcess)
    return FakeProcess.started


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny NeRF run on the reference prior (the robot), with the robot's GLB as its model.glb."""
    run = tmp_path_factory.mktemp("made") / "robot"
    generate(load_config(config_path("reference-nerf"), TINY + [f"run.dir={run}"]), announce=quiet)
    shutil.copyfile(ROBOT, run / "model.glb")
    return run


def add_job(runs_dir: Path, finished: Path, name: str, owner: str = "alice", status: str = "done",
            prompt: str = SOURCE_PROMPT) -> Path:
    """The finished run as a job of the studio's (its record as the queue leaves it)."""
    d = runs_dir / name
    shutil.copytree(finished, d)
    runs.write_job(d, {"name": name, "prompt": prompt, "seed": 0, "config": str(config_path("reference-nerf")),
                       "overrides": [], "dir": str(d), "recipe": "reference-nerf", "owner": owner,
                       "created": time.time(), "status": status})
    return d


@pytest.fixture
def studio(tmp_path, fake_workers, finished):
    q = JobQueue(tmp_path / "runs", slots=1, poll_s=0.02, per_user=True)
    add_job(q.runs_dir, finished, "robot-1")
    yield q
    q.close(wait_s=1)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != runs.JOB_FILE}


def folders(q: JobQueue) -> list[str]:
    return sorted(p.name for p in q.runs_dir.iterdir() if not p.name.startswith("."))


def reproduced(command: str, monkeypatch):
    """The config ``dreamcore edit`` builds from ``command`` (the shown line, parsed as a shell would)."""
    seen = {}

    def edit(source, prompt, source_prompt, region=None, falloff=None, config="edit-dds", overrides=None, **_):
        seen["cfg"] = edit_config(source, prompt, source_prompt, region, falloff, config, overrides)
        raise DreamcoreError("stopped before any work")

    monkeypatch.setattr(dreamcore.api, "edit", edit)
    argv = shlex.split(command)
    assert argv[:2] == ["dreamcore", "edit"]
    assert main(argv[1:]) == 2 and "cfg" in seen
    return seen["cfg"]


def same_config(a, b) -> bool:
    ta, tb = to_tree(a), to_tree(b)
    for t in (ta, tb):
        t["run"].pop("progress", None)
    return ta == tb


# -- accepted ----------------------------------------------------------------------------------------------------------

def test_an_edit_of_a_finished_job_is_queued_with_the_region_the_server_built(studio, fake_workers, monkeypatch):
    before = digests(studio.runs_dir / "robot-1")
    name = studio.submit_edit("robot-1", TARGET, "edit-pds", "draft", 3, "", box=BOX, falloff="0.05",
                              overrides=EDIT, owner="alice")
    assert name.startswith("edit-a-toy-robot-with-a-blue-chest-")
    rec = runs.read_job(studio.runs_dir / name)
    assert rec["edit_of"] == "robot-1" and rec["edit"] == str(studio.runs_dir / "robot-1")
    assert rec["source_prompt"] == SOURCE_PROMPT  # blank: the source job's own prompt
    assert (rec["region"], rec["falloff"], rec["recipe"], rec["preset"]) == (SPEC, 0.05, "edit-pds", "draft")
    assert rec["owner"] == "alice" and rec["status"] == "queued" and rec["page_overrides"] == EDIT
    cfg = _job_of(rec).load()  # what the worker runs
    assert cfg.system.name == "edit" and cfg.init.from_run == rec["edit"] and cfg.prompt == TARGET
    assert cfg.system.source_prompt == SOURCE_PROMPT and cfg.system.region == SPEC and cfg.system.falloff == 0.05
    assert cfg.guidance.name == "pds" and cfg.run.steps == 4 and cfg.run.seed == 3
    assert cfg.representation.n_levels == 4 and cfg.run.dir == str(studio.runs_dir / name)  # the source's sizes
    wait_for(lambda: len(fake_workers) == 1)
    worker = fake_workers[0]
    sent = json.loads(worker.cmd[worker.cmd.index("dreamcore.batch.worker") + 1])
    assert sent["edit"] == rec["edit"] and sent["region"] == SPEC and worker.env["DREAMCORE_UNTRUSTED"] == "1"
    # the command shown is `dreamcore edit` on the source's folder, and builds the same config
    command = studio.status(name, "alice")["command"]
    assert command.startswith(f"dreamcore edit {studio.runs_dir / 'robot-1'} '{TARGET}' --source-prompt "
                              f"'{SOURCE_PROMPT}' --region {SPEC} --falloff 0.05 --config configs/edit-pds.yaml ")
    assert command.endswith(f"run.seed=3 run.dir={studio.runs_dir / name}")
    assert same_config(reproduced(command, monkeypatch), cfg)
    assert digests(studio.runs_dir / "robot-1") == before  # the source job is only read


def test_the_prompts_are_taken_literally_and_the_command_keeps_them(studio, monkeypatch):
    target, source = "a robot: blue=yes # not a comment", "-a robot, 'quoted'"
    name = studio.submit_edit("robot-1", target, "edit-dds", "standard", 0, source, overrides=EDIT, owner="alice")
    rec = runs.read_job(studio.runs_dir / name)
    cfg = _job_of(rec).load()
    assert cfg.prompt == target and cfg.system.source_prompt == source and cfg.system.region == ""
    command = studio.status(name)["command"]
    assert f"--prompt {shlex.quote(target)}" in command and shlex.quote(f"--source-prompt={source}") in command
    assert same_config(reproduced(command, monkeypatch), cfg)


def test_an_edit_job_runs_to_the_end_in_its_worker_and_keeps_its_source(studio):
    before = digests(studio.runs_dir / "robot-1")
    name = studio.submit_edit("robot-1", TARGET, "edit-dds", "draft", 0, "", box=BOX, overrides=EDIT, owner="alice")
    studio.cancel(name, "alice")  # (the fake worker would take it) run it here as its worker process does
    wait_for(lambda: studio.position(name) is None)
    result = run_job(_job_of(runs.read_job(studio.runs_dir / name)))
    assert result["status"] == "done", result
    run = studio.runs_dir / name
    saved = load_config(run / "config.yaml", [])
    assert saved.system.name == "edit" and saved.init.from_run == str(studio.runs_dir / "robot-1")
    assert saved.system.region == SPEC and (run / "metrics.json").is_file()
    assert digests(studio.runs_dir / "robot-1") == before


# -- refused -----------------------------------------------------------------------------------------------------------

def test_a_source_that_is_unknown_a_path_foreign_unfinished_or_not_editable_is_refused(studio, finished):
    add_job(studio.runs_dir, finished, "bobs", owner="bob")
    add_job(studio.runs_dir, finished, "failed-1", status="failed")
    add_job(studio.runs_dir, finished, "running-1", status="running")
    bare = studio.runs_dir / "bare-1"
    bare.mkdir()
    (bare / "config.yaml").write_text((finished / "config.yaml").read_text())
    runs.write_job(bare, {"name": "bare-1", "prompt": "x", "owner": "alice", "status": "done"})
    edited = studio.runs_dir / "edit-1"  # an edit (a run of system 'edit'): not editable yet
    (edited / "ckpt").mkdir(parents=True)
    (edited / "ckpt" / "last.safetensors").write_bytes(b"")
    (edited / "config.yaml").write_text("system:\n  name: edit\n")
    runs.write_job(edited, {"name": "edit-1", "prompt": "x", "owner": "alice", "status": "done"})
    existing = folders(studio)
    for source, problem in (("nope", "no studio job named 'nope'"),
                            ("../robot-1", "no studio job named '../robot-1'"),
                            (str(studio.runs_dir / "robot-1"), "no studio job named"),
                            (".hidden", "no studio job named"),
                            ("bobs", "job bobs belongs to another user"),
                            ("failed-1", r"job failed-1 has not finished \(failed\)"),
                            ("running-1", r"job running-1 has not finished \(running\)"),
                            ("bare-1", r"job bare-1 has no checkpoint"),
                            ("edit-1", "editing a run of system 'edit' is not supported yet")):
        with pytest.raises(DreamcoreError, match=problem):
            studio.submit_edit(source, TARGET, "edit-dds", "draft", 0, "", overrides=EDIT, owner="alice")
    assert folders(studio) == existing
    # without --auth (one user on localhost) every job of the folder may be edited
    open_queue = JobQueue(studio.runs_dir, slots=1, poll_s=0.02)
    try:
        name = open_queue.submit_edit("bobs", TARGET, "edit-dds", "draft", 0, "", overrides=EDIT, owner="s-1")
        assert runs.read_job(studio.runs_dir / name)["edit_of"] == "bobs"
    finally:
        open_queue.close(wait_s=1)


@pytest.mark.parametrize("box, falloff, problem", [
    ([None, None, None, 0.3, 0.5, 0.3], None, "needs all six numbers, or none for the whole asset: x0, y0, z0 blank"),
    ([-0.3, 0, -0.3, 0.3, "", 0.3], None, "y1 blank"),
    ([-0.3, 0, -0.3, float("nan"), 0.5, 0.3], None, "x1 must be a finite number"),
    ([-0.3, 0, -0.3, "inf", 0.5, 0.3], None, "x1 must be a finite number"),
    ([-0.3, 0, -0.3, "0.3; rm -rf /", 0.5, 0.3], None, "x1 must be a number, not '0.3; rm -rf /'"),
    ([-0.3, True, -0.3, 0.3, 0.5, 0.3], None, "y0 must be a number, not True"),
    ([0.3, 0, -0.3, -0.3, 0.5, 0.3], None, "x0 = 0.3 is not below x1 = -0.3"),
    ([-0.3, 0.5, -0.3, 0.3, 0.5, 0.3], None, "y0 = 0.5 is not below y1 = 0.5"),
    ([-0.3, 0, -0.3, 0.3, 0.5], None, "takes six numbers"),
    (BOX, -0.1, "falloff is a width ≥ 0"),
    (BOX, "wide", "falloff must be a number"),
    (BOX, float("inf"), "falloff must be a finite number"),
])
def test_bad_numbers_are_refused_in_words_and_leave_no_run_folder(studio, box, falloff, problem):
    with pytest.raises(UnsafeInput, match=problem):
        studio.submit_edit("robot-1", TARGET, "edit-dds", "draft", 0, "", box=box, falloff=falloff, overrides=EDIT,
                           owner="alice")
    assert folders(studio) == ["robot-1"]


def test_the_region_comes_only_from_the_numbers():
    assert check_box([None] * 6) == "" and check_box(["", " ", None, "", "", ""]) == ""
    assert check_box(BOX) == SPEC
    assert check_box(["-1e-3", 0, 0, "2", 1, 1]) == "box:-0.001,0.0,0.0,2.0,1.0,1.0"


@pytest.mark.parametrize("recipe, overrides, problem", [
    ("text-nerf", EDIT, "unknown recipe 'text-nerf': the studio offers edit-dds, edit-pds, edit-sds"),
    ("configs/edit-dds.yaml", EDIT, "unknown recipe"),
    ("edit-dds", [*EDIT, f"system.region={SPEC}"], "system.region cannot be set from the studio"),
    ("edit-dds", [*EDIT, "system={region: 'mesh:/etc/passwd'}"], "system.region cannot be set from the studio"),
    ("edit-dds", [*EDIT, "init.from_run=robot-1/ckpt"], "are set by the edit itself"),
    ("edit-dds", [*EDIT, "system.source_prompt=a cat"], "are set by the edit itself"),
    ("edit-dds", [*EDIT, "plugins=[evil.py]"], "plugins cannot be set from the studio"),
    ("edit-dds", [*EDIT, f"prior.reference.mesh={ROBOT}"], "outside the studio's runs folder"),
    ("edit-dds", [*EDIT, "run.stepz=3"], "run.stepz"),
])
def test_recipes_and_overrides_are_checked_like_any_jobs(studio, recipe, overrides, problem):
    with pytest.raises(DreamcoreError, match=problem):
        studio.submit_edit("robot-1", TARGET, recipe, "draft", 0, "", box=BOX, overrides=overrides, owner="alice")
    assert folders(studio) == ["robot-1"]


def test_empty_prompts_the_queues_limits_and_other_tabs(tmp_path, fake_workers, finished):
    q = JobQueue(tmp_path / "runs", slots=1, poll_s=0.02, per_user=True,
                 limits=StudioLimits(max_queue=8, max_per_page=1))
    try:
        add_job(q.runs_dir, finished, "robot-1")
        add_job(q.runs_dir, finished, "nameless", prompt="")
        with pytest.raises(DreamcoreError, match="the target prompt is empty"):
            q.submit_edit("robot-1", "  ", "edit-dds", "draft", 0, "", owner="alice")
        with pytest.raises(DreamcoreError, match="say what job nameless shows now"):
            q.submit_edit("nameless", TARGET, "edit-dds", "draft", 0, " ", overrides=EDIT, owner="alice")
        with pytest.raises(UnsafeInput, match="unknown recipe 'edit-dds'"):  # the New asset tab takes no edit
            q.submit(TARGET, "edit-dds", "draft", owner="alice")
        first = q.submit_edit("robot-1", TARGET, "edit-sds", "draft", 0, "", overrides=EDIT, owner="alice")
        with pytest.raises(UnsafeInput, match="this page already has 1 jobs queued or running"):
            q.submit_edit("robot-1", TARGET, "edit-sds", "draft", 0, "", overrides=EDIT, owner="alice")
        assert folders(q) == sorted([first, "nameless", "robot-1"])
    finally:
        q.close(wait_s=1)
    tight = JobQueue(tmp_path / "runs", slots=1, poll_s=0.02, limits=StudioLimits(max_steps=3))
    try:
        with pytest.raises(UnsafeInput, match=r"run.steps=4, over the studio's limit of 3"):
            tight.submit_edit("robot-1", TARGET, "edit-dds", "draft", 0, "", overrides=EDIT)
    finally:
        tight.close(wait_s=1)


def test_a_job_with_edits_is_deleted_only_after_them(studio):
    name = studio.submit_edit("robot-1", TARGET, "edit-dds", "draft", 0, "", box=BOX, overrides=EDIT,
                              owner="alice")
    studio.cancel(name, "alice")
    wait_for(lambda: studio.position(name) is None)
    with pytest.raises(DreamcoreError, match=f"job robot-1 is the source of 1 edit\\(s\\), which need it .*: "
                                             f"{name}; delete it first"):
        studio.delete("robot-1", "alice")
    assert (studio.runs_dir / "robot-1" / "ckpt").is_dir()
    assert studio.edits_of("robot-1") == [name]
    studio.delete(name, "alice")
    studio.delete("robot-1", "alice")
    assert folders(studio) == []


def test_the_edit_recipes_are_described_in_whole_sentences():
    offered = recipes(EDIT_RECIPES)
    assert [r.name for r in offered] == list(EDIT_RECIPES)
    for r in offered:
        assert r.description.startswith("Edit a finished NeRF or Gaussians run") and r.description.endswith(".")
        assert len(r.description) <= 200


# -- the page's handlers -----------------------------------------------------------------------------------------------

def test_the_gallery_edits_the_run_shown_for_its_owner_only(tmp_path, fake_workers, finished):
    gr = pytest.importorskip("gradio")
    from gradio.helpers import special_args

    from dreamcore.studio.app import Served, build_app

    q = JobQueue(tmp_path / "runs", slots=1, poll_s=0.02, per_user=True)
    try:
        add_job(q.runs_dir, finished, "robot-1")
        fns = {f.name: f.fn for f in build_app(q, Served(tmp_path / "gradio")).fns.values()}
        for name in ("submit_edit", "show_subject"):
            fn = fns[name]
            args, *_ = special_args(fn, ["x"] * (len(inspect.signature(fn).parameters) - 1), request="REQUEST")
            assert "REQUEST" in args, name  # Gradio passes the request: the edit is the logged-in user's
        alice = SimpleNamespace(username="alice", session_hash="s-alice")
        bob = SimpleNamespace(username="bob", session_hash="s-bob")
        about, source = fns["show_subject"]("robot-1", alice)
        assert "Edits `robot-1` (a toy robot)" in about and "model.glb spans x " in about
        assert source["placeholder"] == SOURCE_PROMPT  # the source prompt defaults to the job's own
        assert "Open a finished run" in fns["show_subject"]("robot-1", bob)[0]  # another user's: nothing said
        fields = [TARGET, "", *BOX, "", "edit-dds", "draft", 2, "\n".join(EDIT)]
        job, message = fns["submit_edit"](*fields, "robot-1", bob)
        assert job == "robot-1" and "job robot-1 belongs to another user" in message
        job, message = fns["submit_edit"](*fields, "", alice)
        assert job == "" and "open the run to edit first" in message
        job, message = fns["submit_edit"](*fields[:2], None, *BOX[1:], *fields[8:], "robot-1", alice)
        assert job == "robot-1" and "x0 blank" in message
        assert folders(q) == ["robot-1"]
        job, message = fns["submit_edit"](*fields, "robot-1", alice)
        assert message.startswith(f"Queued `{job}`: an edit of `robot-1`")
        rec = runs.read_job(q.runs_dir / job)
        assert rec["owner"] == "alice" and rec["edit_of"] == "robot-1" and rec["region"] == SPEC and rec["seed"] == 2
        assert re.search(r"is (queued|running): an edit starts from a finished run", fns["show_subject"](job, alice)[0])
        assert fns["delete"]("robot-1", alice)[1].startswith("**job robot-1 is the source of 1 edit(s)")
        with pytest.raises(gr.Error, match="belongs to another user"):
            fns["show_result"](job, bob)
    finally:
        q.close(wait_s=1)
