"""``dreamcore batch`` on the local backend: prompt files, job folders named by their content, reports, skipping
finished jobs, deterministic failures reported once, and jobs that end identical after a worker or the driver
is killed. (Ray: tests/test_batch_ray.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from dreamcore.batch.jobs import expand_jobs, read_prompts, read_spec
from dreamcore.batch.report import contact_sheet, markdown
from dreamcore.batch.worker import attempts, run_job
from dreamcore.cli import main
from dreamcore.errors import DreamcoreError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import batch_faults  # noqa: E402

TINY = batch_faults.TINY + batch_faults.SHORT


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def batch(tmp_path: Path, prompts: Path, *extra: str, out: str = "B") -> int:
    return main(["batch", str(prompts), "--config", "reference-nerf", *TINY, "--out", str(tmp_path / out), *extra])


# --- prompt files and job names ---------------------------------------------------------------------------------

def test_prompt_files_text_and_jsonl(tmp_path):
    text = read_prompts(write(tmp_path / "p.txt", "# props\n a red chair \n\na blue car\n"))
    assert [x.prompt for x in text] == ["a red chair", "a blue car"] and text[0].seed is None
    jl = read_prompts(write(tmp_path / "p.jsonl", '{"prompt": "a lamp", "seed": 7, "overrides": ["run.steps=3"]}\n'
                                                  '{"prompt": "a mug"}\n'))
    assert (jl[0].prompt, jl[0].seed, jl[0].overrides) == ("a lamp", 7, ["run.steps=3"])
    assert (jl[1].seed, jl[1].overrides) == (None, [])


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "a", "sed": 1}', "unknown keys \\['sed'\\]"),
    ('{"prompt": "a", "seed": "one"}', '"seed" must be an integer'),
    ('{"prompt": ""}', '"prompt" must be a non-empty string'),
    ('{"prompt": "a", "image": ""}', '"image" must be a picture'),
    ('{"prompt": "a", "image": "missing.png"}', "line 1: image.path .*missing.png.*: no such file"),
    ('{"prompt": "a", "overrides": "run.steps=3"}', '"overrides" must be a list'),
    ('{"prompt": "a"', "line 1 is not JSON"),
])
def test_bad_prompt_lines_are_named(tmp_path, line, problem):
    with pytest.raises(DreamcoreError, match=problem):
        read_prompts(write(tmp_path / "p.jsonl", line + "\n"))


def picture(path, colour=(200, 30, 30)):
    """A red square on a white border: a picture the keying accepts."""
    import numpy as np
    from PIL import Image

    img = np.full((32, 32, 3), 255, np.uint8)
    img[8:24, 10:22] = colour
    Image.fromarray(img).save(path)
    return path


def test_jsonl_lines_may_carry_a_picture_relative_to_the_prompt_file(tmp_path):
    (tmp_path / "pics").mkdir()
    picture(tmp_path / "pics" / "cube.png")
    (tmp_path / "lists").mkdir()
    prompts = write(tmp_path / "lists" / "p.jsonl", '{"prompt": "a red cube", "image": "../pics/cube.png"}\n'
                                                    '{"image": "../pics/cube.png"}\n{"prompt": "a mug"}\n')
    lines = read_prompts(prompts)
    assert lines[0].image == str((tmp_path / "pics" / "cube.png").resolve()) and lines[2].image is None
    assert lines[1].prompt == ""  # a picture alone
    jobs = expand_jobs(lines, "image-to-3d", [], None, tmp_path / "B")
    cfg = jobs[0].load()
    assert cfg.image.path == lines[0].image and cfg.prompt == "a red cube"
    assert jobs[1].load().prompt == "" and jobs[1].name.startswith("picture-cube-")
    assert jobs[2].load().image.path == ""
    # the job's name follows the picture's bytes, not where it lies
    before = jobs[0].name
    picture(tmp_path / "pics" / "cube.png", colour=(30, 30, 200))
    assert expand_jobs(lines[:1], "image-to-3d", [], None, tmp_path / "B")[0].name != before
    (tmp_path / "moved").mkdir()
    picture(tmp_path / "moved" / "cube.png")
    moved = write(tmp_path / "moved" / "p.jsonl", '{"prompt": "a red cube", "image": "cube.png"}\n')
    assert expand_jobs(read_prompts(moved), "image-to-3d", [], None, tmp_path / "B")[0].name == before
    # a bad picture is refused in words, naming the line, before any job exists
    (tmp_path / "pics" / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(DreamcoreError, match="p.jsonl line 1: .*bad.png"):
        read_prompts(write(tmp_path / "lists" / "p.jsonl", '{"prompt": "x", "image": "../pics/bad.png"}\n'))


def test_empty_or_missing_prompt_files(tmp_path):
    with pytest.raises(DreamcoreError, match="holds no prompts"):
        read_prompts(write(tmp_path / "p.txt", "# nothing\n\n"))
    with pytest.raises(DreamcoreError, match="does not exist"):
        read_prompts(tmp_path / "none.txt")


def test_job_names_follow_prompt_seed_and_config(tmp_path):
    lines = read_prompts(write(tmp_path / "p.txt", "a red chair\na red chair\n"))
    a = expand_jobs(lines, "reference-nerf", TINY, [0, 1], tmp_path)
    assert len(a) == 2  # the repeated line runs once per seed
    assert a[0].name.startswith("a-red-chair-") and a[0].name != a[1].name
    again = expand_jobs(lines, "reference-nerf", TINY, [0, 1], tmp_path / "elsewhere")
    assert [j.name for j in again] == [j.name for j in a]  # the folder does not change the name
    threads = expand_jobs(lines, "reference-nerf", TINY + ["run.threads=1", "run.progress=false"], [0, 1], tmp_path)
    assert [j.name for j in threads] == [j.name for j in a]  # nor do settings that do not change the result
    other = expand_jobs(lines, "reference-nerf", TINY + ["run.steps=7"], [0, 1], tmp_path)
    assert not {j.name for j in other} & {j.name for j in a}


def test_a_bad_override_fails_before_any_work(tmp_path, capsys):
    prompts = write(tmp_path / "p.txt", "a chair\n")
    assert batch(tmp_path, prompts, "run.stpes=3") == 2
    assert "stpes" in capsys.readouterr().err
    assert not (tmp_path / "B").exists()
    assert batch(tmp_path, prompts, "run.dir=x") == 2  # set per job by the batch
    assert main(["batch", str(prompts), "--config", "reference-nerf"]) == 2  # no --out
    assert "needs --out" in capsys.readouterr().err


# --- a local batch ----------------------------------------------------------------------------------------------

def test_local_batch_reports_skips_finished_jobs_and_resumes_from_the_folder(tmp_path, capsys):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "a red robot", "seed": 3}\n'
                                          '{"prompt": "a blue car", "overrides": ["run.val_every=3"]}\n')
    assert batch(tmp_path, prompts) == 0
    out = tmp_path / "B"
    report = json.loads((out / "batch.json").read_text())
    jobs = report["jobs"]
    assert [(j["prompt"], j["seed"], j["status"]) for j in jobs] == [("a red robot", 3, "done"),
                                                                       ("a blue car", 0, "done")]
    for j in jobs:
        assert Path(j["dir"]).parent == out and (Path(j["dir"]) / "metrics.json").is_file()
        assert j["steps"] == 6 and j["metrics"]["scene_psnr"] > 0 and j["attempts"] == 1
    md = (out / "batch.md").read_text()
    assert "| job | prompt | seed | status |" in md and "a blue car" in md and "scene_psnr" in md
    sheet = Image.open(out / "batch.png")
    assert sheet.size[0] >= 2 * 192
    err = capsys.readouterr().out
    assert "batch: 2/2 done, 0 running, 0 failed, 0 queued" in err

    # the same command again: nothing reruns
    before = [attempts_of(out, j["name"]) for j in jobs]
    assert batch(tmp_path, prompts) == 0
    again = json.loads((out / "batch.json").read_text())["jobs"]
    assert all(j["skipped"] for j in again)
    assert [attempts_of(out, j["name"]) for j in jobs] == before
    # a job whose folder is gone reruns, from the folder alone
    import shutil

    shutil.rmtree(jobs[0]["dir"])
    assert main(["batch", "--resume", str(out)]) == 0
    third = {j["name"]: j for j in json.loads((out / "batch.json").read_text())["jobs"]}
    assert not third[jobs[0]["name"]].get("skipped") and third[jobs[1]["name"]]["skipped"]
    assert read_spec(out)["config"] == "reference-nerf"


def attempts_of(out: Path, name: str) -> int:
    return len((out / ".batch" / "attempts" / f"{name}.log").read_text().splitlines())


def test_a_job_that_fails_on_its_input_is_reported_once_and_the_rest_finish(tmp_path):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "a chair", "overrides": ["prior.reference.mesh=nope.glb"]}\n'
                                          '{"prompt": "a table"}\n')
    assert batch(tmp_path, prompts, "--retries", "3") == 1  # some job failed
    jobs = {j["prompt"]: j for j in json.loads((tmp_path / "B" / "batch.json").read_text())["jobs"]}
    bad = jobs["a chair"]
    assert bad["status"] == "failed" and "nope.glb" in bad["error"] and bad["attempts"] == 1  # not retried
    assert jobs["a table"]["status"] == "done"
    assert "nope.glb" in (tmp_path / "B" / "batch.md").read_text()


def test_run_job_records_its_result_and_is_idempotent(tmp_path):
    (job,) = expand_jobs(read_prompts(write(tmp_path / "p.txt", "a cup\n")), "reference-nerf", TINY, None,
                         tmp_path / "B")
    first = run_job(job)
    assert first["status"] == "done" and attempts(job) == 1
    second = run_job(job)
    assert second["skipped"] and attempts(job) == 1


def test_contact_sheet_shows_each_job_with_its_prompt(tmp_path):
    run = tmp_path / "job"
    (run / "val").mkdir(parents=True)
    Image.new("RGB", (64, 32), (255, 0, 0)).save(run / "val" / "step-000010.png")
    records = [{"name": "a", "prompt": "a red thing", "seed": 0, "dir": str(run), "status": "done"},
               {"name": "b", "prompt": "a broken thing", "seed": 1, "dir": str(tmp_path / "none"),
                "status": "failed", "error": "bad mesh"}]
    import io

    sheet = Image.open(io.BytesIO(contact_sheet(records))).convert("RGB")
    assert sheet.size == (2 * 192, 192 + 56)
    assert sheet.getpixel((96, 96)) == (255, 0, 0)  # the validation image, fitted into its tile
    assert sheet.getpixel((192 + 20, 20)) == (225, 225, 225)  # the failed job's grey tile
    md = markdown(records, {"out": "B"})
    assert "bad mesh" in md and "| a | a red thing | 0 | done |" in md


# --- faults ---------------------------------------------------------------------------------------------------

def test_a_killed_job_process_is_retried_and_ends_identical(tmp_path):
    res = batch_faults.local_worker_kill(tmp_path)
    assert res["rc"] == 0
    killed = res["jobs"][res["kill"]["job"]]
    assert killed["attempts"] == 2 and killed["resumed_from"] >= res["kill"]["step_at_kill"]  # ≤ 1 interval lost
    assert all(j["status"] == "done" and j["identical"] for j in res["jobs"].values()), res


def test_a_killed_driver_stops_its_jobs_and_the_same_command_resumes(tmp_path):
    refs = batch_faults.references(tmp_path, batch_faults.LONG)
    out = tmp_path / "batch"
    cmd = [sys.executable, "-m", "dreamcore.cli", *batch_faults.batch_args(tmp_path, out, batch_faults.LONG)]
    res = batch_faults.kill_driver_and_rerun(cmd, out)
    assert res["worker_gone_s"] < 5  # the job process stopped with its driver (SIGTERM from the kernel)
    assert res["rc"] == 0
    rows = batch_faults.compare(out, refs)
    assert rows[res["kill"]["job"]]["resumed_from"] >= res["kill"]["step_at_kill"]
    assert all(r["status"] == "done" and r["identical"] for r in rows.values()), rows


def test_core_code_never_imports_ray():
    for path in (ROOT / "dreamcore").rglob("*.py"):
        if path.name != "ray_backend.py":
            text = path.read_text()
            assert "import ray" not in text and "from ray" not in text, path
    code = "import sys, dreamcore.cli, dreamcore.batch.driver, dreamcore.batch.local; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False"


def test_shards_split_the_jobs_and_a_final_resume_reports_them_all(tmp_path):
    prompts = write(tmp_path / "p.txt", "a cup\na bowl\na plate\n")
    out = tmp_path / "B"
    assert batch(tmp_path, prompts, "--shard", "1/2") == 0  # a SLURM array task: jobs 1 (of 0, 1, 2)
    first = {j["prompt"]: j["status"] for j in json.loads((out / "batch.json").read_text())["jobs"]}
    assert first == {"a cup": "queued", "a bowl": "done", "a plate": "queued"}
    assert batch(tmp_path, prompts, "--shard", "0/2") == 0  # jobs 0 and 2
    assert main(["batch", "--resume", str(out)]) == 0  # after the array: nothing runs, the report is whole
    final = json.loads((out / "batch.json").read_text())
    assert final["done"] == 3 and all(j["skipped"] for j in final["jobs"])
    assert batch(tmp_path, prompts, "--shard", "2/2") == 2  # I must be below N


def test_a_job_does_not_depend_on_the_global_random_state(tmp_path):
    import random

    import numpy as np
    import torch
    from safetensors.torch import load_file

    prompts = write(tmp_path / "p.txt", "a cup\n")
    states = []
    for k, seed in enumerate((1, 999)):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        (job,) = expand_jobs(read_prompts(prompts), "reference-nerf", TINY, None, tmp_path / f"B{k}")
        assert run_job(job)["status"] == "done"
        states.append(load_file(str(Path(job.dir) / "ckpt" / "last.safetensors")))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


@pytest.mark.parametrize("fault, words", [
    (OSError(28, "No space left on device", "/x/ckpt/last.safetensors"), "could not write /x/ckpt/last.safetensors: "
                                                                           "no space left on the device"),
    (RuntimeError("boom"), "internal error: RuntimeError: boom"),
])
def test_a_full_disk_or_a_bug_fails_the_job_in_words(tmp_path, monkeypatch, fault, words):
    import dreamcore.runner.generate as gen

    def broken(*_a, **_k):
        raise fault

    monkeypatch.setattr(gen, "generate", broken)
    (job,) = expand_jobs(read_prompts(write(tmp_path / "p.txt", "a cup\n")), "reference-nerf", TINY, None,
                         tmp_path / "B")
    rec = run_job(job)
    assert rec["status"] == "failed" and words in rec["error"]


def test_the_contact_sheet_takes_the_first_turntable_frame(tmp_path):
    import numpy as np

    from dreamcore.batch.report import job_image
    from dreamcore.export.turntable import write_video

    frames = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    frames[0, ..., 2] = 250  # the first frame is blue, the others black
    write_video(tmp_path / "turntable.mp4", frames, 8)
    r, g, b = job_image(tmp_path).getpixel((16, 16))
    assert b > 200 and r < 60 and g < 60


def test_local_backend_gives_each_job_its_share_of_the_visible_gpus(monkeypatch):
    import dreamcore.batch.local as local

    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1", "2", "3", "4"])
    assert local.LocalBackend(gpus_per_job=2).groups == ["0,1", "2,3"]
    assert local.LocalBackend(gpus_per_job=1).slots == 5
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    assert local.LocalBackend(gpus_per_job=1).groups == [None]  # CPU: one job at a time


def test_sigterm_to_the_driver_saves_every_running_job_and_the_same_command_resumes(tmp_path):
    """A scheduler's stop (SLURM preemption, scancel): the jobs finish their step, save, and are reported as
    interrupted; the batch exits 130 and the same command ends identical to uninterrupted runs."""
    refs = batch_faults.references(tmp_path, batch_faults.LONG)
    out = tmp_path / "batch"
    cmd = [sys.executable, "-m", "dreamcore.cli", *batch_faults.batch_args(tmp_path, out, batch_faults.LONG)]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    d = batch_faults.wait_for_step(batch_faults.job_dirs(out), 4)
    driver.send_signal(signal.SIGTERM)
    err = driver.communicate(timeout=120)[1]
    assert driver.returncode == 130 and "batch interrupted" in err
    report = {j["name"]: j for j in json.loads((out / "batch.json").read_text())["jobs"]}
    stopped = report[d.name]
    assert stopped["status"] == "interrupted" and "checkpoint saved" in stopped["error"]
    saved = batch_faults.checkpoint_step(d)
    assert saved >= 4  # the stop saved its step (periodic checkpoints come every 2)
    assert subprocess.call(cmd, cwd=ROOT, stdout=subprocess.DEVNULL) == 0
    rows = batch_faults.compare(out, refs)
    assert rows[d.name]["resumed_from"] == saved  # nothing lost: resumed from the step the stop saved
    assert all(r["status"] == "done" and r["identical"] for r in rows.values()), rows


def test_sigterm_stops_a_single_run_with_its_checkpoint_saved(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamcore.cli", "generate", "--config", "reference-nerf", *batch_faults.TINY,
           "run.steps=400", "run.checkpoint_every=1000", f"run.dir={run}"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (run / "log.txt").is_file() and "start:" in (run / "log.txt").read_text():
            break
        time.sleep(0.1)
    time.sleep(1.0)  # inside the loop now
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "interrupted at step" in err
    step = json.loads((run / "ckpt" / "last.json").read_text())["step"]
    assert 0 < step < 400  # saved where it stopped, though no periodic checkpoint was due


def test_the_ray_resource_check_names_what_is_missing():
    from dreamcore.batch.ray_backend import check_resources

    cpu_only = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 4.0}}]
    with pytest.raises(DreamcoreError, match="asks for 1 GPU.*most: 0.*--gpus-per-job 0"):
        check_resources(cpu_only, 1, 1, "head:6379")  # the dead node's GPUs do not count
    two = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}]
    with pytest.raises(DreamcoreError, match="asks for 4 GPU.*--gpus-per-job 2"):
        check_resources(two, 4, 1, "head:6379")
    with pytest.raises(DreamcoreError, match="asks for 16 CPU"):
        check_resources(two, 1, 16, "head:6379")
    check_resources(two, 2, 8, "head:6379")  # fits: no error


def test_a_ray_task_stops_once_its_driver_on_this_machine_is_gone():
    """The watch behind ray-local-driver-kill, without Ray: the task gets SIGTERM (the trainer saves and stops)
    as soon as the driver process ends; a driver of another machine, or a pid reused since, is never mistaken."""
    from dreamcore.batch.ray_backend import process_identity, watch_driver

    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ident = process_identity(driver.pid)
    assert ident is not None and ident[2] == driver.pid
    code = ("import signal, sys, time\nfrom dreamcore.batch.ray_backend import watch_driver\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            f"assert watch_driver({tuple(ident)!r}, 0.05)\nprint('watching', flush=True)\ntime.sleep(50)\n")
    task = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert task.stdout.readline().strip() == "watching"
        time.sleep(0.3)
        assert task.poll() is None  # the driver lives: the task runs on
        driver.kill()
        driver.wait()
        assert task.wait(timeout=30) == 7  # stopped by SIGTERM, not by the 50 s sleep's end
    finally:
        for p in (driver, task):
            if p.poll() is None:
                p.kill()
    assert not watch_driver(("another-boot-id", ident[1], ident[2], ident[3]))  # another machine: no watch
    me = process_identity(os.getpid())
    assert process_identity(os.getpid()) == me and me[:3] != ident[:3]
    reused = (*ident[:3], "0")  # the same pid number started at another time is another process
    assert reused != process_identity(driver.pid)
