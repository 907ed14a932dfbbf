"""Who may do what in the studio (issue 34): jobs belong to their owner (cancel, resume, status, open, results,
delete and the gallery refuse or hide another user's), the queue's length is bounded per server and per page,
Delete removes a job's run folder with its uploads, workers run untrusted, only the recipes the page offers are
taken, ``--auth`` files and ``--limits`` files are read in words, and the launched app serves copies of a job's
files from Gradio's temp dir (outside the runs folder) and nothing under the runs folder.

No real worker starts here: ``subprocess.Popen`` of the queue is replaced by a fake process that records what
it was given and "runs" until the test ends it."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dreamcore.errors import DreamcoreError
from dreamcore.studio import queue as queue_module
from dreamcore.studio import runs
from dreamcore.studio.queue import JobQueue
from dreamcore.studio.recipes import RECONSTRUCT_RECIPES, TEXT_RECIPES
from dreamcore.studio.safety import StudioLimits, UnsafeInput

ROOT = Path(__file__).resolve().parents[1]
ROBOT = ROOT / "assets" / "robot.glb"
sys.path.insert(0, str(ROOT / "tools"))
from netns import can_isolate  # noqa: E402


class FakeProcess:
    """A worker that records its command and environment and runs until ``finish`` or a signal ends it."""

    started: list["FakeProcess"] = []

    def __init__(self, cmd, env=None, **kwargs):
        self.cmd, self.env, self.kwargs = cmd, env, kwargs
        self.pid = 2**22 + len(FakeProcess.started)
        self.returncode = None
        FakeProcess.started.append(self)

    def poll(self):
        return self.returncode

    def finish(self, rc: int = 0):
        self.returncode = rc

    def send_signal(self, sig):
        self.returncode = -int(sig)

    def kill(self):
        self.returncode = -9

    def wait(self, timeout=None):
        return self.returncode


@pytest.fixture
def fake_workers(monkeypatch):
    FakeProcess.started = []
    monkeypatch.setattr(queue_module.subprocess, "Popen", FakeProcess)
    return FakeProcess.started


def make_queue(tmp_path, **kwargs) -> JobQueue:
    return JobQueue(tmp_path / "runs", slots=1, poll_s=0.02, **kwargs)


@pytest.fixture
def queue(tmp_path, fake_workers):
    q = make_queue(tmp_path)
    yield q
    q.close(wait_s=1)


def wait_for(cond, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def fake_run(runs_dir: Path, name: str, owner: str, status: str = "done", prompt: str = "a robot") -> Path:
    """A finished run folder as the studio leaves it: its record, an upload, a model, a validation image."""
    d = runs_dir / name
    (d / "input").mkdir(parents=True)
    (d / "val").mkdir()
    shutil.copyfile(ROBOT, d / "input" / "upload.glb")
    shutil.copyfile(ROBOT, d / "model.glb")
    (d / "config.yaml").write_text("prompt: a robot\n")
    (d / "val" / "step-000010.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    runs.write_job(d, {"name": name, "prompt": prompt, "seed": 0, "config": "x", "overrides": [], "dir": str(d),
                       "recipe": "reference-nerf", "owner": owner, "created": time.time(), "status": status})
    return d


# -- owners -------------------------------------------------------------------------------------------------------

def test_another_users_job_is_refused_for_every_action(queue):
    fake_run(queue.runs_dir, "alices", "alice", status="cancelled")
    (queue.runs_dir / "alices" / "ckpt").mkdir()
    for action in (queue.cancel, queue.resume, queue.status, queue.delete):
        with pytest.raises(DreamcoreError, match="job alices belongs to another user"):
            action("alices", "bob")
    assert (queue.runs_dir / "alices" / "input" / "upload.glb").is_file()  # delete refused: nothing removed
    assert runs.read_job(queue.runs_dir / "alices")["status"] == "cancelled"  # resume refused: not queued
    assert queue.position("alices") is None
    assert queue.status("alices", "alice")["prompt"] == "a robot"  # its owner may
    assert queue.status("alices")["prompt"] == "a robot"  # owner "": every job (no --auth, or the CLI)


def test_the_gallery_lists_only_the_users_own_runs(queue):
    from dreamcore.studio.app import gallery_rows, gallery_thumbs

    fake_run(queue.runs_dir, "alices", "alice")
    fake_run(queue.runs_dir, "bobs", "bob")
    (queue.runs_dir / ".deleting-old-1234").mkdir()  # a run being deleted is no run
    runs.write_job(queue.runs_dir / ".deleting-old-1234", {"owner": "alice", "status": "done"})
    assert [r[0] for r in gallery_rows(queue, "alice")] == ["alices"]
    assert [r[0] for r in gallery_rows(queue, "bob")] == ["bobs"]
    assert sorted(r[0] for r in gallery_rows(queue)) == ["alices", "bobs"]
    assert [r.dir.name for r in queue.jobs("carol")] == []
    _, names = gallery_thumbs(queue, owner="bob")
    assert names == ["bobs"]


def test_the_pages_handlers_act_for_the_logged_in_user_only(tmp_path, fake_workers):
    """The page's own handlers (as Gradio calls them, with the request) under --auth: bob neither sees nor
    touches alice's job; every handler's signature tells Gradio to pass the request."""
    gr = pytest.importorskip("gradio")
    from gradio.helpers import special_args

    from dreamcore.studio.app import Served, build_app

    q = make_queue(tmp_path, per_user=True)
    try:
        fake_run(q.runs_dir, "alices", "alice")
        fake_run(q.runs_dir, "bobs", "bob")
        served = Served(tmp_path / "gradio")
        demo = build_app(q, served)
        fns = {f.name: f.fn for f in demo.fns.values()}
        for name in ("submit", "submit_mesh", "refresh", "show_result", "cancel", "resume", "delete", "open_run",
                     "pick_row", "pick_thumb", "gallery_view"):
            fn = fns[name]
            assert fn.__wrapped__  # in_words' wrapper
            n_inputs = len(inspect.signature(fn).parameters) - 1
            args, *_ = special_args(fn, ["x"] * n_inputs, request="REQUEST")
            assert "REQUEST" in args, name  # Gradio passes the request to the wrapped handler
        bob = SimpleNamespace(username="bob", session_hash="s-bob")
        with pytest.raises(gr.Error, match="job alices belongs to another user"):
            fns["show_result"]("alices", bob)
        assert "belongs to another user" in fns["open_run"]("alices", bob)[1]
        assert "belongs to another user" in fns["cancel"]("alices", bob)
        assert "belongs to another user" in fns["resume"]("alices", bob)
        assert "belongs to another user" in fns["delete"]("alices", bob)[1]
        assert "belongs to another user" in fns["refresh"]("alices", "", bob)[0]
        assert (q.runs_dir / "alices").is_dir()
        rows, _, pictures, names = fns["gallery_view"](bob)
        assert [r[0] for r in rows] == ["bobs"] and names == ["bobs"]
        # bob's own result: copies in a folder of the job under Gradio's temp dir, never the run folder's files
        glb, _, _, files, _ = fns["show_result"]("bobs", bob)
        assert Path(glb).parent.parent == tmp_path / "gradio" / "jobs"
        assert Path(glb).read_bytes() == ROBOT.read_bytes()
        assert {Path(f).name for f in files} == {"model.glb", "config.yaml"}
        assert all(Path(f).parent == Path(glb).parent for f in files)
        assert all(q.runs_dir not in Path(p[0]).parents for p in pictures)
        # bob deletes his job: its folder and the copies the page was sent go
        page_job, message, *_ = fns["delete"]("bobs", bob)
        assert page_job == "" and "Deleted `bobs`" in message
        assert not (q.runs_dir / "bobs").exists() and not Path(glb).exists()
        # a new job records its user as its owner; a recipe the tab does not offer is refused in words
        page_job, message = fns["submit"]("a toy robot", "", "text-nerf", "draft", 0, "", "", bob)
        assert runs.read_job(q.runs_dir / page_job)["owner"] == "bob"
        _, message = fns["submit"]("a toy robot", "", "reference-nerf", "draft", 0, "", "", bob)
        assert "unknown recipe 'reference-nerf'" in message
    finally:
        q.close(wait_s=1)


# -- queue length ---------------------------------------------------------------------------------------------------

def test_the_queue_is_bounded_per_server_and_per_page(tmp_path, fake_workers):
    q = make_queue(tmp_path, limits=StudioLimits(max_queue=2, max_per_page=1))
    try:
        first = q.submit("a toy robot", "text-nerf", "draft", owner="page-1")
        with pytest.raises(UnsafeInput, match=r"this page already has 1 jobs queued or running \(at most 1\)"):
            q.submit("a toy robot", "text-nerf", "draft", owner="page-1")
        second = q.submit("a toy robot", "text-nerf", "draft", owner="page-2")
        with pytest.raises(UnsafeInput, match=r"the studio is busy: 2 jobs are queued or running \(at most 2\)"):
            q.submit("a toy robot", "text-nerf", "draft", owner="page-3")
        assert sorted(p.name for p in q.runs_dir.iterdir()) == sorted([first, second])  # refusals left nothing
        assert runs.read_job(q.runs_dir / first)["owner"] == "page-1"
        wait_for(lambda: len(fake_workers) == 1)  # one slot: the first runs, the second waits
        fake_workers[0].finish(1)  # the first ends: its page may queue again
        wait_for(lambda: q.position(first) is None)
        third = q.submit("a toy robot", "text-nerf", "draft", owner="page-1")
        assert q.position(third) is not None
        with pytest.raises(DreamcoreError, match="the studio is busy"):
            q.resume(first)  # a resumed job counts like a new one
    finally:
        q.close(wait_s=1)


# -- delete -----------------------------------------------------------------------------------------------------

def test_delete_removes_the_run_folder_with_its_upload_and_is_refused_while_queued(queue, fake_workers):
    name = queue.submit("robot", "reference-nerf", "draft", upload=ROBOT, owner="alice",
                        recipes_offered=RECONSTRUCT_RECIPES)
    upload = queue.runs_dir / name / "input" / "upload.glb"
    assert upload.read_bytes() == ROBOT.read_bytes()
    wait_for(lambda: name in queue.running)
    with pytest.raises(DreamcoreError, match=f"job {name} is running: cancel it first"):
        queue.delete(name, "alice")
    assert upload.is_file()
    queue.cancel(name, "alice")
    wait_for(lambda: queue.position(name) is None)
    with pytest.raises(DreamcoreError, match="belongs to another user"):
        queue.delete(name, "bob")
    queue.delete(name, "alice")
    assert list(queue.runs_dir.iterdir()) == []  # the folder, its input/ and no leftover
    with pytest.raises(DreamcoreError, match="no studio job named"):
        queue.status(name)


# -- the worker's environment -----------------------------------------------------------------------------------------

def test_studio_workers_run_untrusted_with_the_hub_offline(queue, fake_workers, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("DREAMCORE_UNTRUSTED", raising=False)
    queue.submit("a toy robot", "text-nerf", "draft", owner="p")
    wait_for(lambda: len(fake_workers) == 1)
    env = fake_workers[0].env
    assert env["DREAMCORE_UNTRUSTED"] == "1"
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
        assert env[key] == "1", key
    worker = fake_workers[0]
    assert worker.cmd[worker.cmd.index("-m"):][:2] == ["-m", "dreamcore.batch.worker"]
    # in the job's own folder, which is not put on sys.path (-P): an uploaded .py there cannot shadow a module
    assert Path(worker.kwargs["cwd"]).parent == queue.runs_dir
    assert sys.version_info < (3, 11) or "-P" in worker.cmd[:worker.cmd.index("-m")]
    assert "DREAMCORE_UNTRUSTED" not in os.environ  # the app itself stays trusted


# -- recipes -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe,offered", [
    ("../../evil", None), ("/etc/passwd", None), ("texture", None), ("configs/text-nerf.yaml", None),
    ("reference-nerf", TEXT_RECIPES), ("text-nerf", RECONSTRUCT_RECIPES)])
def test_only_the_recipes_the_page_offers_are_taken(queue, recipe, offered):
    assert (ROOT / "configs" / "texture.yaml").is_file()  # a real config, just not offered
    with pytest.raises(UnsafeInput, match=f"unknown recipe '{recipe}'"):
        queue.submit("a toy robot", recipe, "draft", recipes_offered=offered)
    assert list(queue.runs_dir.iterdir()) == []


# -- --auth and --limits ---------------------------------------------------------------------------------------------

def test_parse_auth_refuses_an_empty_or_malformed_file_in_words(tmp_path):
    from dreamcore.cli import build_parser
    from dreamcore.studio.app import parse_auth

    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(DreamcoreError, match="the file is empty; its first line must be user:password"):
        parse_auth(str(empty))
    blank = tmp_path / "blank"
    blank.write_text("\n  \n")
    with pytest.raises(DreamcoreError, match="the file is empty"):
        parse_auth(str(blank))
    bad = tmp_path / "bad"
    bad.write_text("hunter2\n")
    with pytest.raises(DreamcoreError, match="first line is not user:password") as e:
        parse_auth(str(bad))
    assert "hunter2" not in str(e.value)
    good = tmp_path / "good"
    good.write_text("\nalice:s3cret:x\n")
    assert parse_auth(str(good)) == ("alice", "s3cret:x")
    assert parse_auth("bob:pw") == ("bob", "pw")
    studio = build_parser()._subparsers._group_actions[0].choices["studio"]
    assert "`ps`" in studio.format_help().replace("\n", " ")


def test_limits_come_from_a_yaml_file_and_flags(tmp_path, monkeypatch):
    from dreamcore import cli
    from dreamcore.studio import app

    f = tmp_path / "limits.yaml"
    f.write_text("max_queue: 9\nmax_steps: 1000\nmax_upload_mb: 12.5\n")
    seen = {}
    monkeypatch.setattr(app, "serve", lambda *a, **kw: seen.update(args=a, **kw))
    assert cli.main(["studio", "--limits", str(f), "--max-per-page", "2", "--max-steps", "500",
                     "--runs", str(tmp_path / "runs")]) == 0
    assert seen["limits"] == StudioLimits(max_queue=9, max_per_page=2, max_steps=500, max_upload_mb=12.5)
    assert cli.main(["studio", "--max-upload-mb", "3"]) == 0
    assert seen["limits"].max_upload_mb == 3.0 and seen["limits"].max_queue == StudioLimits().max_queue
    f.write_text("max_queue: 9\nmax_jobs: 3\nplugins: [x]\n")
    with pytest.raises(DreamcoreError, match="unknown limit\\(s\\) max_jobs, plugins"):
        app.read_limits(f)
    f.write_text("- 1\n")
    with pytest.raises(DreamcoreError, match="a mapping of limits is expected"):
        app.read_limits(f)
    with pytest.raises(DreamcoreError, match="max_queue=-1: a positive number"):
        app.read_limits(None, max_queue=-1)
    q = JobQueue(tmp_path / "q", limits=StudioLimits(max_upload_mb=2.0))
    try:
        assert q.upload_limit == 2 * 2**20  # the old attribute reads the limits
    finally:
        q.close()


# -- what is served -------------------------------------------------------------------------------------------------

def test_gradios_temp_dir_lies_outside_the_runs_folder(tmp_path):
    from dreamcore.studio.app import gradio_dir

    runs_dir = tmp_path / "srv" / "runs"
    temp = gradio_dir(runs_dir)
    assert temp == (tmp_path / "srv" / ".runs-gradio").resolve()
    assert temp.is_dir() and temp.stat().st_mode & 0o777 == 0o700
    assert runs_dir.resolve() not in temp.parents
    for inside in (runs_dir / "cache", runs_dir, tmp_path / "srv"):
        with pytest.raises(DreamcoreError, match="must lie outside the runs folder"):
            gradio_dir(runs_dir, inside)
    assert gradio_dir(runs_dir, tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()


def test_a_staged_upload_in_the_new_temp_dir_is_discarded(tmp_path, monkeypatch):
    from dreamcore.studio.app import discard_staged, gradio_dir

    temp = gradio_dir(tmp_path / "runs")
    (temp / "abc").mkdir()
    staged = temp / "abc" / "robot.glb"
    staged.write_bytes(b"glTF")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(temp))
    discard_staged(SimpleNamespace(name=str(staged), orig_name="robot.glb"))
    assert not staged.exists() and not (temp / "abc").exists()


SERVER = textwrap.dedent('''
    import http.cookiejar, json, sys, urllib.parse, urllib.request
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_studio_access import fake_run
    from dreamcore.studio.app import serve

    work = Path(sys.argv[1])
    runs_dir = work / "runs"
    mine = fake_run(runs_dir, "alices", "alice")
    fake_run(runs_dir, "bobs", "bob")
    (runs_dir / "studio-errors.txt").write_text("Traceback: secret\\n")
    (work / "auth").write_text("alice:pw\\n")
    queue, demo = serve("127.0.0.1", 7879, str(runs_dir), str(work / "auth"), threads=1, block=False)
    base = "http://127.0.0.1:7879"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    def get(path):
        try:
            with opener.open(base + path, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
    def call(api, data):
        req = urllib.request.Request(f"{base}/gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"})
        with opener.open(req, timeout=30) as r:
            event = json.loads(r.read())["event_id"]
        return get(f"/gradio_api/call/{api}/{event}")[1].decode()
    out = {"before_login": get("/gradio_api/file=" + str(mine / "model.glb"))[0]}
    login = urllib.parse.urlencode({"username": "alice", "password": "pw"}).encode()
    opener.open(urllib.request.Request(base + "/login", login), timeout=30).read()
    out["run_files"] = {p: get("/gradio_api/file=" + str(runs_dir / p))[0]
                        for p in ("alices/model.glb", "alices/input/upload.glb", "bobs/input/upload.glb",
                                  "alices/studio.json", "studio-errors.txt")}
    view = call("gallery_view", [])
    out["view"] = view
    data = json.loads(view.split("data:", 1)[1])
    out["rows"] = [row[0] for row in data[0]["data"]]
    url = data[2][0]["image"]["url"]
    out["copy_url"] = url
    status, body = get(url[url.index("/gradio_api/"):])
    out["copy"] = [status, body == (mine / "val" / "step-000010.png").read_bytes()]
    import os; out["env_temp"] = os.environ["GRADIO_TEMP_DIR"]
    demo.close(); queue.close(wait_s=1)
    print("RESULT " + json.dumps(out))
''')


@pytest.mark.skipif(not can_isolate(), reason="no network namespace here (unshare -n)")
def test_the_launched_app_serves_copies_and_nothing_under_the_runs_folder(tmp_path):
    """A real server (loopback only, in a network namespace) with --auth: the runs folder's files (a model, an
    upload, a record, studio-errors.txt) are 403 by /gradio_api/file=; alice's gallery lists her run only (the
    request reaches the handler) and its thumbnail comes back as a copy under Gradio's temp dir that downloads
    with the run's bytes."""
    pytest.importorskip("gradio")
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    inner = " ".join(map(shlex_quote, [sys.executable, str(script), str(tmp_path), str(ROOT / "tests")]))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["before_login"] in (401, 403)
    assert out["run_files"] == {p: 403 for p in out["run_files"]}, out["run_files"]
    temp = str((tmp_path / ".runs-gradio").resolve())
    assert out["env_temp"] == temp
    assert "event: complete" in out["view"], out["view"]
    assert out["rows"] == ["alices"]  # the request reached the handler: alice's gallery, not bob's run
    assert f"/gradio_api/file={temp}/jobs/" in out["copy_url"] and "/runs/" not in out["copy_url"]
    assert out["copy"] == [200, True]  # the thumbnail's copy is served, with the run's bytes


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
