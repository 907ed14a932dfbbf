"""The studio's Image to 3D tab (issue 37): a picture sent by a page is size-limited, typed by its bytes (never
its name or the browser's content type), stored in its job's run folder under a name of the server's, read and
keyed as the job will read it before anything is queued (a bad picture is refused in words and leaves nothing),
and reaches the job as ``image.path`` with the form's azimuth and elevation; the job shares the queue, the safety
rules, the progress and the viewer of the other tabs, and the page shows the picture beside the result.

The queue and handler tests replace the queue's ``subprocess.Popen`` with the fake worker of
``test_studio_access``; the served test runs a real server (loopback only, in a network namespace) whose one
accepted job trains for a few steps in a real worker."""

from __future__ import annotations

import inspect
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dreamcore.config import load_config
from dreamcore.runner.refine import stage_config
from dreamcore.studio import queue as queue_module
from dreamcore.studio import runs
from dreamcore.studio.queue import JobQueue, _job_of
from dreamcore.studio.recipes import IMAGE_RECIPES, PRESETS, TEXT_RECIPES, preset_overrides, recipes
from dreamcore.studio.safety import StudioLimits, UnsafeInput, check_limits
from test_studio_access import FakeProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from netns import can_isolate  # noqa: E402

# a job of a few steps (the run, its export and scoring, then the refinement stage at toy sizes), as the page's
# overrides box sends it
TINY = ["run.steps=6", "run.val_every=3", "run.checkpoint_every=3", "run.log_every=1", "export.resolution=32",
        "export.isosurface_search=[]", "export.texture_size=64", "export.turntable_frames=4",
        "export.turntable_resolution=32", "eval.views=2", "eval.resolution=16", "representation.init_points=300",
        "system.densify.start=2", "system.densify.every=2", "system.densify.stop=5",
        "refine.overrides=[run.steps=2,run.checkpoint_every=2,run.val_every=0,camera.resolution=24,"
        "representation.resolution=16,representation.n_levels=4,representation.log2_table_size=12,"
        "representation.max_resolution=64,representation.init_texture_steps=10,"
        "representation.init_texture_points=2000,export.texture_size=64,export.target_faces=300,"
        "export.turntable_frames=4,export.turntable_resolution=32]"]


def disc(path: Path, fmt: str = "PNG", size: int = 96, **kw) -> Path:
    """A red disc on a plain white background (the border key removes the white)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size, 3), 255, np.uint8)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = [220, 60, 40]
    Image.fromarray(img).save(path, format=fmt, **kw)
    return path


@pytest.fixture
def fake_workers(monkeypatch):
    FakeProcess.started = []
    monkeypatch.setattr(queue_module.subprocess, "Popen", FakeProcess)
    return FakeProcess.started


@pytest.fixture
def queue(tmp_path, fake_workers):
    q = JobQueue(tmp_path / "runs", slots=1, poll_s=0.02)
    yield q
    q.close(wait_s=1)


def submit(q: JobQueue, picture, prompt: str = "a red ball", **kw) -> str:
    return q.submit(prompt, kw.pop("recipe", "image-to-3d"), kw.pop("preset", "draft"), image=picture,
                    recipes_offered=kw.pop("offered", IMAGE_RECIPES), **kw)


# -- the recipe ------------------------------------------------------------------------------------------------------

def test_the_image_recipes_with_every_preset_are_valid_configs_within_the_limits():
    offered = recipes(IMAGE_RECIPES)
    assert [r.name for r in offered] == ["image-to-3d", "image-to-3d-nerf"]
    for recipe in offered:
        assert recipe.description.startswith("Image to 3D")
        plain = load_config(recipe.path)
        for preset in PRESETS:
            cfg = load_config(recipe.path, [*preset_overrides(preset, plain), "image.path=x.png"])
            check_limits(cfg, StudioLimits())
            if cfg.refine.config:  # the Gaussian recipe's DMTet stage too
                check_limits(stage_config(cfg, Path("/tmp/run")), StudioLimits())
            if preset == "draft":
                assert cfg.run.steps == min(300, plain.run.steps)


# -- accepted ----------------------------------------------------------------------------------------------------------

def test_an_upload_is_queued_with_its_picture_inside_the_job_folder(queue, fake_workers, tmp_path):
    sent = disc(tmp_path / "holiday photo.png")
    name = submit(queue, sent, azimuth=30, elevation="-12.5", owner="page-1", overrides=["image.azimuth=90"])
    assert "holiday" not in name and name.startswith("a-red-ball-")
    stored = queue.runs_dir / name / "input" / "picture.png"
    assert stored.read_bytes() == sent.read_bytes()
    rec = runs.read_job(queue.runs_dir / name)
    assert rec["image"] == str(stored) and rec["azimuth"] == 30.0 and rec["elevation"] == -12.5
    assert rec["owner"] == "page-1" and rec["recipe"] == "image-to-3d" and rec["status"] == "queued"
    cfg = _job_of(rec).load()  # what the worker runs
    assert cfg.image.path == str(stored)
    assert (cfg.image.azimuth, cfg.image.elevation) == (30.0, -12.5)  # the form's view, over the page's override
    assert cfg.run.steps == 300 and cfg.prompt == "a red ball"
    wait_for(lambda: len(fake_workers) == 1)  # the same queue: a worker of its own, untrusted
    worker = fake_workers[0]
    assert json.loads(worker.cmd[worker.cmd.index("dreamcore.batch.worker") + 1])["image"] == str(stored)
    assert worker.env["DREAMCORE_UNTRUSTED"] == "1" and Path(worker.kwargs["cwd"]) == queue.runs_dir / name
    command = queue.status(name)["command"]
    assert command.startswith(f"dreamcore generate --image {stored} 'a red ball' --config configs/image-to-3d.yaml")
    assert "image.azimuth=30.0" in command


@pytest.mark.parametrize("fmt,ext,kw", [("PNG", "png", {}), ("JPEG", "jpg", {"quality": 95}),
                                        ("WEBP", "webp", {"lossless": True})])
def test_the_type_comes_from_the_bytes_and_the_name_from_the_server(queue, tmp_path, fmt, ext, kw):
    """A WebP named .gif, a JPEG named .png, a PNG with no suffix: each is stored as picture.<its own type>; the
    prompt may be empty (the job is named after the picture, never its file)."""
    wrong = {"PNG": "photo", "JPEG": "photo.png", "WEBP": "photo.gif"}[fmt]
    sent = disc(tmp_path / wrong, fmt, **kw)
    name = submit(queue, sent, prompt="")
    assert name.startswith("picture-")
    assert [p.name for p in (queue.runs_dir / name / "input").iterdir()] == [f"picture.{ext}"]
    rec = runs.read_job(queue.runs_dir / name)
    assert rec["prompt"] == "" and runs.title(rec) == "(a picture)" and (rec["azimuth"], rec["elevation"]) == (0, 0)
    assert _job_of(rec).load().prompt == ""


# -- refused -----------------------------------------------------------------------------------------------------------

def _png_signature_padding(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(size)
    return path


BAD = {
    "text": (lambda p: p.with_suffix(".txt").write_text("hello, not a picture\n") and p.with_suffix(".txt"),
             r"not a PNG, JPEG or WebP picture \(judged by its content, not its name\)"),
    "text named .png": (lambda p: p.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>") and p,
                        r"not a PNG, JPEG or WebP picture \(judged by its content"),
    "gif named .png": (lambda p: Image.new("RGB", (32, 32), (200, 0, 0)).save(p, format="GIF") or p,
                       r"not a PNG, JPEG or WebP picture \(judged by its content"),
    "empty": (lambda p: p.write_bytes(b"") or p, "the uploaded picture is empty"),
    "over 10 MB": (lambda p: _png_signature_padding(p, 10 * 2**20 + 1),
                   r"the picture is 10\.0 MB, over the studio's limit of 10 MB for pictures"),
    "truncated": (lambda p: p.write_bytes(disc(p).read_bytes()[:80]) and p,
                  r"the picture: the PNG file is damaged or truncated"),
    "one colour": (lambda p: Image.new("RGB", (64, 64), (10, 200, 30)).save(p) or p,
                   r"the picture is empty after removing the background with a key on the border colour"),
    "transparent": (lambda p: Image.new("RGBA", (64, 64), (10, 200, 30, 0)).save(p) or p,
                    r"the picture is empty after removing the background with the picture's alpha channel"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_picture_is_refused_with_its_reason_and_nothing_is_queued(queue, fake_workers, tmp_path, case):
    make, reason = BAD[case]
    sent = make(tmp_path / "photo.png")
    with pytest.raises(UnsafeInput, match=reason) as e:
        submit(queue, sent)
    assert str(tmp_path) not in str(e.value)  # the words name no path of the server's
    assert list(queue.runs_dir.iterdir()) == [] and not queue.pending and not queue.owner_of
    assert fake_workers == []


def test_the_size_limit_is_a_studio_setting(tmp_path, fake_workers, monkeypatch):
    from dreamcore.cli import main
    from dreamcore.studio import app

    q = JobQueue(tmp_path / "runs", slots=1, poll_s=0.02, limits=StudioLimits(max_image_mb=0.01))
    try:
        assert StudioLimits().max_image_mb == 10.0 and q.image_limit == int(0.01 * 2**20)
        with pytest.raises(UnsafeInput, match=r"over the studio's limit of 0\.01 MB for pictures "
                                              r"\(dreamcore studio --max-image-mb\)"):
            submit(q, disc(tmp_path / "big.png", size=512, compress_level=0))
        assert list(q.runs_dir.iterdir()) == []
    finally:
        q.close(wait_s=1)
    seen = {}
    monkeypatch.setattr(app, "serve", lambda *a, **kw: seen.update(kw))
    assert main(["studio", "--max-image-mb", "3", "--runs", str(tmp_path / "r")]) == 0
    assert seen["limits"].max_image_mb == 3.0
    f = tmp_path / "limits.yaml"
    f.write_text("max_image_mb: 2.5\n")
    assert app.read_limits(f).max_image_mb == 2.5


@pytest.mark.parametrize("view,reason", [
    ({"azimuth": "north"}, "azimuth must be a number of degrees, not 'north'"),
    ({"azimuth": float("nan")}, r"azimuth nan is outside \[-360, 360\]"),
    ({"azimuth": 400}, r"azimuth 400 is outside \[-360, 360\]"),
    ({"elevation": 91}, r"elevation 91 is outside \[-90, 90\]"),
    ({"elevation": float("-inf")}, r"elevation -inf is outside"),
    ({"elevation": True}, "elevation must be a number of degrees, not True"),
    ({"elevation": [10]}, r"elevation must be a number of degrees, not \[10\]"),
])
def test_the_view_is_checked_before_anything_is_written(queue, tmp_path, view, reason):
    with pytest.raises(UnsafeInput, match=reason):
        submit(queue, disc(tmp_path / "photo.png"), **view)
    assert list(queue.runs_dir.iterdir()) == []


def test_a_blank_view_is_the_front(queue, tmp_path):
    name = submit(queue, disc(tmp_path / "photo.png"), azimuth=None, elevation="")
    cfg = _job_of(runs.read_job(queue.runs_dir / name)).load()
    assert (cfg.image.azimuth, cfg.image.elevation) == (0.0, 0.0)


def test_a_picture_goes_with_the_image_recipe_alone(queue, tmp_path):
    picture = disc(tmp_path / "photo.png")
    with pytest.raises(UnsafeInput, match="unknown recipe 'text-nerf': the studio offers image-to-3d"):
        submit(queue, picture, recipe="text-nerf")  # from the Image to 3D tab
    with pytest.raises(UnsafeInput, match="unknown recipe 'image-to-3d'"):
        queue.submit("a red ball", "image-to-3d", "draft", recipes_offered=TEXT_RECIPES)  # from New asset
    with pytest.raises(UnsafeInput, match="makes an object from a picture: upload one"):
        queue.submit("a red ball", "image-to-3d", "draft")
    with pytest.raises(UnsafeInput, match="a picture is taken by the Image to 3D recipes"):
        queue.submit("a red ball", "text-nerf", "draft", image=picture)
    with pytest.raises(UnsafeInput, match="plugins cannot be set from the studio"):  # the same override checks
        submit(queue, picture, overrides=["plugins=[evil.py]"])
    with pytest.raises(UnsafeInput, match="over the studio's limit"):  # the same limits
        submit(queue, picture, preset="standard", overrides=["run.steps=1000000"])
    with pytest.raises(UnsafeInput, match="outside the studio's runs folder"):
        submit(queue, picture, overrides=[f"eval.mesh={ROOT / 'assets' / 'robot.glb'}"])
    assert list(queue.runs_dir.iterdir()) == []


# -- the page's handlers -----------------------------------------------------------------------------------------------

@pytest.fixture
def page(tmp_path, fake_workers, monkeypatch):
    pytest.importorskip("gradio")
    from dreamcore.studio.app import Served, build_app, gradio_dir

    q = JobQueue(tmp_path / "srv" / "runs", slots=1, poll_s=0.02, per_user=True)
    temp = gradio_dir(q.runs_dir)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(temp))
    demo = build_app(q, Served(temp))
    yield SimpleNamespace(queue=q, temp=temp, fns={f.name: f.fn for f in demo.fns.values()})
    q.close(wait_s=1)


def staged(temp: Path, source: Path) -> Path:
    """A file as Gradio stages an upload: in a folder of its own under its temp dir."""
    folder = temp / os.urandom(8).hex()
    folder.mkdir()
    out = folder / "upload"
    out.write_bytes(source.read_bytes())
    return out


def test_the_page_stores_the_upload_under_the_servers_name_whatever_the_file_is_called(page, tmp_path):
    """The sender's file name (a path-traversal name here) plays no part: the picture lands in the job's own
    input/ folder as picture.png, nothing is written where the name points, and the staged copy goes."""
    from gradio.helpers import special_args

    alice = SimpleNamespace(username="alice", session_hash="s-alice")
    fns = page.fns
    for name in ("submit_image", "show_input"):
        fn = fns[name]
        args, *_ = special_args(fn, ["x"] * (len(inspect.signature(fn).parameters) - 1), request="REQUEST")
        assert "REQUEST" in args, name  # Gradio passes the request: the job is the logged-in user's
    evil = "../../../../" + str(tmp_path / "escaped.png").lstrip("/")
    upload = SimpleNamespace(name=str(staged(page.temp, disc(tmp_path / "photo.png"))), orig_name=evil)
    job, message, field = fns["submit_image"](upload, "a red ball", 45, 10, "image-to-3d", "draft", 3, "", "", alice)
    assert message.startswith(f"Queued `{job}`") and field is None, message  # the page's file field is cleared
    run = page.queue.runs_dir / job
    assert [p.name for p in (run / "input").iterdir()] == ["picture.png"]
    assert all(p.name == "input" or "studio" in p.name for p in run.iterdir())  # else its record, the worker's log
    assert not (tmp_path / "escaped.png").exists() and not list(tmp_path.rglob("escaped*"))
    assert not Path(upload.name).exists() and not Path(upload.name).parent.exists()  # the staged copy is gone
    rec = runs.read_job(run)
    assert rec["owner"] == "alice" and rec["seed"] == 3 and rec["azimuth"] == 45.0 and rec["elevation"] == 10.0
    assert "escaped" not in json.dumps(rec)
    # the page shows the picture beside the result: a copy under Gradio's temp dir, never the run folder's file
    shown = fns["show_input"](job, alice)
    copy = Path(shown["value"])
    assert shown["visible"] and copy.read_bytes() == (run / "input" / "picture.png").read_bytes()
    assert page.temp in copy.parents and page.queue.runs_dir not in copy.parents
    bob = SimpleNamespace(username="bob", session_hash="s-bob")
    assert fns["show_input"](job, bob)["visible"] is False  # another user's job: nothing shown
    assert fns["show_input"]("", alice)["visible"] is False
    rows, _, pictures, names = fns["gallery_view"](alice)
    assert rows[0][:3] == [job, "a red ball", "image-to-3d"] and names == [job]
    assert pictures[0][1] == "input picture · a red ball" and page.temp in Path(pictures[0][0]).parents


def test_the_page_refuses_in_words_and_queues_nothing(page, tmp_path):
    alice = SimpleNamespace(username="alice", session_hash="s-alice")
    fns = page.fns
    job, message, _ = fns["submit_image"](None, "", 0, 0, "image-to-3d", "draft", 0, "", "before", alice)
    assert job == "before" and message == "**Not started:** choose a picture (PNG, JPEG or WebP)."
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    # the picture refused: its staged copy goes and the field is cleared; refused for its view, it stays chosen
    for upload, view, reason, kept in [(text, (0, 0), "judged by its content, not its name", False),
                                       (disc(tmp_path / "photo.png"), (0, 120), "elevation 120 is outside", True)]:
        sent = SimpleNamespace(name=str(staged(page.temp, upload)), orig_name="photo.png")
        job, message, field = fns["submit_image"](sent, "", *view, "image-to-3d", "draft", 0, "", "before", alice)
        assert job == "before" and message.startswith("**Not started:**") and reason in message, message
        assert Path(sent.name).exists() == kept and (field is None) != kept
    job, message, _ = fns["submit_image"](sent, "", 0, 0, "image-to-3d", "draft", 0, "", "before", alice)
    assert message.startswith(f"Queued `{job}`")  # the same staged picture, sent again with its view fixed
    wait_for(lambda: job in page.queue.running)  # (cancel refuses a job between the queue and its process)
    page.queue.cancel(job, "alice")
    wait_for(lambda: page.queue.position(job) is None)
    page.queue.delete(job, "alice")
    anonymous = SimpleNamespace(username=None, session_hash="s")
    sent = SimpleNamespace(name=str(staged(page.temp, disc(tmp_path / "photo.png"))), orig_name="photo.png")
    assert "log in first" in fns["submit_image"](sent, "", 0, 0, "image-to-3d", "draft", 0, "", "", anonymous)[1]
    assert list(page.queue.runs_dir.iterdir()) == []


# -- served --------------------------------------------------------------------------------------------------------------

SERVER = textwrap.dedent('''
    import json, sys, time, urllib.request, uuid
    from pathlib import Path
    from types import SimpleNamespace
    sys.path.insert(0, sys.argv[2])
    from test_studio_image import TINY, disc
    from dreamcore.studio.app import serve
    from dreamcore.studio.safety import StudioLimits

    work = Path(sys.argv[1])
    runs_dir = work / "srv" / "runs"
    base = "http://127.0.0.1:7880"
    queue, demo = serve("127.0.0.1", 7880, str(runs_dir), threads=1, block=False,
                        limits=StudioLimits(max_upload_mb=1.0, max_image_mb=0.25))
    def post(path, body, headers):
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, body, headers), timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
    def upload(name, data):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\\r\\nContent-Disposition: form-data; name=\\"files\\"; filename=\\"{name}\\"\\r\\n"
                f"Content-Type: image/png\\r\\n\\r\\n").encode() + data + f"\\r\\n--{boundary}--\\r\\n".encode()
        return post("/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    def call(api, data):
        status, text = post(f"/gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                            {"Content-Type": "application/json"})
        event = json.loads(text)["event_id"]
        with urllib.request.urlopen(f"{base}/gradio_api/call/{api}/{event}", timeout=60) as r:
            return r.read().decode()
    def make(name, data, prompt="a red ball", view=(30, 5), overrides=""):
        status, text = upload(name, data)
        if status != 200:
            return {"upload_status": status}
        path = json.loads(text)[0]
        file = {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}
        out = call("submit_image", [file, prompt, *view, "image-to-3d", "draft", 0, overrides])
        return {"upload_status": status, "staged": path, "events": out}
    out = {}
    png = disc(work / "photo.png").read_bytes()
    big = b"\\x89PNG\\r\\n\\x1a\\n" + bytes(int(1.5 * 2**20))
    out["over_server_limit"] = make("big.png", big)  # over what Gradio takes at all: HTTP 413
    out["over_picture_limit"] = make("big.png", big[: int(0.5 * 2**20)])  # taken by Gradio, refused by the tab
    out["gif"] = make("gif.png", b"GIF89a" + bytes(200))
    out["runs_after_refusals"] = sorted(p.name for p in runs_dir.iterdir())
    evil = "../../../../" + str(work / "escaped.png").lstrip("/")
    out["accepted"] = make(evil, png, overrides="\\n".join(TINY))
    names = [p.name for p in runs_dir.iterdir() if not p.name.startswith(".") and p.is_dir()]
    out["names"] = names
    job = names[0]
    t0 = time.time()
    while time.time() - t0 < 240 and queue.status(job)["status"] in ("queued", "running"):
        time.sleep(0.5)
    fns = {f.name: f.fn for f in demo.fns.values()}
    me = SimpleNamespace(username=None, session_hash="s")
    out["progress"] = fns["refresh"](job, "", me)[0]
    glb, video, metrics, files, command = fns["show_result"](job, me)
    out["result"] = {"glb": glb, "files": sorted(Path(f).name for f in files), "command": command,
                     "turntable": video and Path(video).name}
    out["input"] = fns["show_input"](job, me)
    out["run_files"] = sorted(p.name for p in (runs_dir / job).iterdir())
    out["input_files"] = sorted(p.name for p in (runs_dir / job / "input").iterdir())
    out["escaped"] = sorted(str(p) for p in work.rglob("escaped*"))
    out["worker_log"] = (runs_dir / job / "studio-worker.txt").read_text()[-3000:]
    out["record"] = json.loads((runs_dir / job / "studio.json").read_text())
    demo.close(); queue.close(wait_s=5)
    print("RESULT " + json.dumps(out, default=str))
''')


@pytest.mark.skipif(not can_isolate(), reason="no network namespace here (unshare -n)")
def test_the_served_tab_takes_a_picture_over_http_and_runs_it_to_a_model(tmp_path):
    """A real server (loopback only, in a network namespace): a file over the server's upload limit gets HTTP 413
    from Gradio's upload route; one over the picture limit, and a GIF named .png, are refused by the tab in words
    and leave no run; a PNG sent under a path-traversal name is stored as the job's input/picture.png, trains a
    few steps in a real worker and finishes with its progress at the end, reference.png (the cut-out) in its run
    folder, the GLB for the viewer and the input picture for the page, all served as copies."""
    pytest.importorskip("gradio")
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    inner = " ".join(map(shlex.quote, [sys.executable, str(script), str(tmp_path), str(ROOT / "tests")]))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=420)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["over_server_limit"] == {"upload_status": 413}
    assert out["over_picture_limit"]["upload_status"] == 200
    assert "over the studio's limit of 0.25 MB for pictures" in out["over_picture_limit"]["events"]
    assert "judged by its content, not its name" in out["gif"]["events"]
    assert out["runs_after_refusals"] == []
    assert "Queued" in out["accepted"]["events"], out["accepted"]
    [job] = out["names"]
    assert out["escaped"] == []  # the sender's name pointed outside: nothing was written there
    assert out["input_files"] == ["picture.png"]
    rec = out["record"]
    assert rec["status"] == "done", (rec, out["worker_log"])
    assert rec["image"].endswith(f"/srv/runs/{job}/input/picture.png") and rec["azimuth"] == 30.0
    assert "reference.png" in out["run_files"] and "model.glb" in out["run_files"]  # the cut-out, kept as generate does
    assert "data-status='done'" in out["progress"] and "a red ball" in out["progress"]
    temp = str((tmp_path / "srv" / ".runs-gradio").resolve())
    assert out["result"]["glb"].startswith(temp + "/jobs/") and "model.glb" in out["result"]["files"]
    assert out["result"]["command"].startswith("dreamcore generate --image ")
    assert out["input"]["visible"] and out["input"]["value"].startswith(temp + "/jobs/")
