"""A single run survives faults: damaged checkpoints, a full disk, a second process, SIGKILL at any moment."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.errors import DreamcoreError
from dreamcore.runner import checkpoint
from dreamcore.runner.generate import generate, resume_config
from dreamcore.runner.rundir import RunDir
from dreamcore.runner.trainer import Trainer

from test_runner import TINY, assert_same_state, tiny

ROOT = Path(__file__).resolve().parents[1]
quiet = dict(announce=lambda *_: None)


def state(run_dir: Path, name: str = "last.safetensors") -> dict:
    return load_file(str(run_dir / "ckpt" / name))


def files_of(ckpt: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ckpt.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run, checkpointed every 2 steps."""
    return generate(tiny(tmp_path_factory.mktemp("ref"), "ref", "run.checkpoint_every=2"), **quiet)


def partial(tmp_path, name: str) -> Path:
    """The same run stopped after 4 steps: last = step 4, prev = step 2."""
    run = generate(tiny(tmp_path, name, "run.checkpoint_every=2", "run.steps=4"), **quiet)
    assert json.loads((run / "ckpt" / "last.json").read_text())["step"] == 4
    assert json.loads((run / "ckpt" / "prev.json").read_text())["step"] == 2
    return run


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage, capsys):
    run = partial(tmp_path, damage)
    last = run / "ckpt" / "last.safetensors"
    data = bytearray(last.read_bytes())
    if damage == "flip":  # same size, one tensor byte changed: only the checksum can tell
        data[len(data) - 9] ^= 0xFF
        last.write_bytes(bytes(data))
    elif damage == "truncate":
        last.write_bytes(bytes(data[: len(data) // 2]))
    else:
        last.unlink()
    generate(resume_config(run, ["run.steps=6"]), resume=True, announce=print)
    out = capsys.readouterr().out
    assert "warning:" in out and "previous checkpoint, step 2" in out
    assert "previous checkpoint, step 2" in (run / "log.txt").read_text()  # the run's log says so too
    assert_same_state(state(reference), state(run))  # steps 3-6 redone: the same end as without the fault


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    run = partial(tmp_path, "both")
    for name in ("last.safetensors", "prev.safetensors"):
        p = run / "ckpt" / name
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DreamcoreError, match="every checkpoint in .* is damaged"):
        generate(resume_config(run, ["run.steps=6"]), resume=True, **quiet)


def test_a_checkpoint_without_its_record_is_still_found(tmp_path):
    """Killed between the renames of a save: whichever files exist, a good one is found by its digest."""
    run = partial(tmp_path, "renames")
    ckpt = run / "ckpt"
    (ckpt / "last.json").unlink()  # killed after renaming the new file in, before writing its record
    path, rec = checkpoint.find_good(ckpt)
    assert path.name == "prev.safetensors" and rec["step"] == 2
    os.replace(ckpt / "prev.json", ckpt / "last.json")  # killed after moving the record, before the file
    path, rec = checkpoint.find_good(ckpt)
    assert path.name == "prev.safetensors" and rec["step"] == 2  # a record matches whichever file it describes


def test_a_full_disk_keeps_the_previous_checkpoint_and_stops_clearly(tmp_path, reference, monkeypatch):
    run = partial(tmp_path, "full")
    before = files_of(run / "ckpt")
    cfg = resume_config(run, ["run.steps=6"])
    trainer = Trainer(cfg, RunDir(run), resume=True)
    trainer.train_step(trainer.step)
    trainer.step += 1

    def no_space(path, data):  # the disk fills up while the checkpoint is written
        path.write_bytes(data[: len(data) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "write_durably", no_space)
    with pytest.raises(DreamcoreError, match=r"checkpoint of step 5 .*no space left on the device; the "
                                             r"checkpoint of step 4 \(last.safetensors\) is intact"):
        trainer.save()
    monkeypatch.undo()
    assert files_of(run / "ckpt") == before  # nothing replaced, no temporary file left behind
    # through the whole loop: the run stops at its first checkpoint with the same error, then resumes exactly
    monkeypatch.setattr(checkpoint, "write_durably", no_space)
    with pytest.raises(DreamcoreError, match="no space left"):
        generate(resume_config(run, ["run.steps=6"]), resume=True, **quiet)
    monkeypatch.undo()
    assert files_of(run / "ckpt") == before
    generate(resume_config(run, ["run.steps=6"]), resume=True, **quiet)
    assert_same_state(state(reference), state(run))


def test_a_full_disk_elsewhere_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    run = partial(tmp_path, "disk")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # every durable write fails: config.yaml is the first
    assert main(["generate", "--resume", str(run), "run.steps=6"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "config.yaml" in err and "Traceback" not in err


HOLDER = """
import sys, time
from pathlib import Path
from dreamcore.runner.rundir import RunDir
with RunDir(Path(sys.argv[1])).locked():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_the_same_run_dir_is_refused(tmp_path):
    run = partial(tmp_path, "busy")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert RunDir(run).lock_holder().startswith(f"process {holder.pid} ")
        before = files_of(run / "ckpt")
        with pytest.raises(DreamcoreError, match=rf"in use by process {holder.pid} on .*lock file .*\.lock"):
            generate(resume_config(run, ["run.steps=6"]), resume=True, **quiet)
        with pytest.raises(DreamcoreError, match=rf"in use by process {holder.pid}"):  # a fresh start as well
            generate(tiny(tmp_path, "busy"), **quiet)
        assert files_of(run / "ckpt") == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert RunDir(run).lock_holder() is None  # the kernel dropped the dead holder's lock: the file is stale
    generate(resume_config(run, ["run.steps=6"]), resume=True, **quiet)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6


def test_the_lock_is_held_while_a_run_writes(tmp_path, monkeypatch):
    seen = []
    original = Trainer._after_step

    def probe(self, losses, bar):
        original(self, losses, bar)
        seen.append(self.run.path.joinpath(".lock").read_text())

    monkeypatch.setattr(Trainer, "_after_step", probe)
    run = generate(tiny(tmp_path, "held", "run.steps=2"), **quiet)
    assert seen and all(json.loads(s)["pid"] == os.getpid() for s in seen)
    assert RunDir(run).lock_holder() is None  # released at the end


# --- SIGKILL at random moments -------------------------------------------------------------------------------

KILL_RUN = [o for o in TINY if not o.startswith(("export.", "run.checkpoint_every"))] + [
    "run.checkpoint_every=1", "export.formats=[glb]", "export.resolution=32", "export.texture_size=64",
    "export.target_faces=2000", "run.steps=8"]


def cli(run_dir: Path, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "dreamcore.cli", "generate"]
    if resume:
        return base + ["--resume", str(run_dir)]
    return base + ["--config", "reference-nerf", *KILL_RUN, f"run.dir={run_dir}"]


def untimed(metrics: dict) -> dict:
    """metrics.json without its wall-clock figures and file paths (the two runs live in different folders)."""
    return {k: untimed(v) if isinstance(v, dict) else v for k, v in metrics.items()
            if "seconds" not in k and k != "files"}


def launch(run_dir: Path) -> subprocess.Popen:
    resume = RunDir(run_dir).has_checkpoint()  # the batch layer's rule: resume what has a checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cli(run_dir, resume), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> dict:
    ref = tmp_path / "uninterrupted"
    t0 = time.perf_counter()
    p = launch(ref)
    assert p.wait() == 0, p.stderr.read()
    span = time.perf_counter() - t0
    rng = random.Random(seed)
    run, tried, started = tmp_path / "killed", 0, 0
    while True:
        p = launch(run)
        started += 1
        if tried < kills:
            try:
                p.wait(timeout=rng.uniform(0.0, span))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                tried += 1
                continue
        else:
            p.wait()
        if p.returncode == 0 and tried >= kills:
            break
        assert p.returncode == 0, p.stderr.read()  # a finished attempt must succeed
    assert (run / "model.glb").read_bytes() == (ref / "model.glb").read_bytes()
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert untimed(got) == untimed(want)
    assert_same_state(state(ref), state(run))
    return {"kills": tried, "launches": started, "span_s": round(span, 1)}


def test_sigkill_then_resume_ends_identical(tmp_path):
    kill_and_resume(tmp_path, kills=3, seed=0)


@pytest.mark.slow
def test_sigkill_at_20_random_moments_ends_identical(tmp_path):
    stats = kill_and_resume(tmp_path, kills=20, seed=1)
    print(stats)
    assert stats["kills"] == 20
