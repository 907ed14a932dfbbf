"""A run folder read back as the page shows it: the studio's job record (``studio.json``), progress from the
trainer's ``log.txt`` lines (``step N/T terms s/step=S``), the newest validation image, the exported files and
``metrics.json``. The run folders are the app's only state: a restarted studio lists its gallery from them."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dreamcore.files import atomic_write_bytes

JOB_FILE = "studio.json"  # in each run folder the studio made: what the page asked for, and how it ended
STEP_LINE = re.compile(r"step (\d+)/(\d+) (.*?) s/step=([0-9.]+)\s*$")
TERM = re.compile(r"(\w+)=(-?[0-9.eE+-]+|nan|inf|-inf)")


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    seconds_per_step: float = 0.0
    loss: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.step) * self.seconds_per_step if self.seconds_per_step > 0 else None


def read_progress(run_dir: Path, since: int = 0) -> Progress:
    """The last ``step N/T`` line of the run's log (the trainer writes one every ``run.log_every`` steps) at or
    after byte ``since``: where the job's current attempt began, so a resumed job never shows the step its
    killed or cancelled attempt had reached before its own first line."""
    try:
        with open(Path(run_dir) / "log.txt", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, since, f.tell() - 65536))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return Progress()
    for line in reversed(lines):
        m = STEP_LINE.search(line)
        if m:
            terms = [float(v) for _, v in TERM.findall(m.group(3))]
            return Progress(int(m.group(1)), int(m.group(2)), float(m.group(4)), sum(terms) if terms else None)
    return Progress()


def latest_validation(run_dir: Path) -> Path | None:
    images = sorted((Path(run_dir) / "val").glob("step-*.png"))
    return images[-1] if images else None


def read_job(run_dir: Path) -> dict | None:
    try:
        rec = json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write_job(run_dir: Path, rec: dict) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(run_dir) / JOB_FILE, json.dumps(rec, indent=2).encode())


def read_metrics(run_dir: Path) -> dict:
    try:
        data = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cli_command(rec: dict) -> str:
    """The command that reproduces the job from a terminal (``--image PICTURE`` for an Image to 3D job;
    ``dreamcore edit SOURCE_RUN 'target' --source-prompt '...' [--region box:...] [--falloff F]`` for an edit)."""
    if rec.get("edit"):
        return edit_command(rec)
    picture = ["--image", rec["image"]] if rec.get("image") else []
    args = ["dreamcore", "generate", *picture, rec.get("prompt", ""), "--config", f"configs/{rec['recipe']}.yaml",
            *rec.get("overrides", []), f"run.seed={rec.get('seed', 0)}", f"run.dir={rec.get('dir', '')}"]
    return " ".join(shlex.quote(a) for a in args)


def edit_command(rec: dict) -> str:
    """``dreamcore edit`` with the edit job's source run folder, prompts (taken literally: a target prompt that
    holds ``=`` or starts with ``-`` goes with ``--prompt``), region, falloff, recipe and overrides."""

    def option(flag: str, value: str) -> list[str]:  # a value starting with "-" must be joined to its flag
        return [f"{flag}={value}"] if value.startswith("-") else [flag, value]

    prompt = rec.get("prompt", "")
    target = option("--prompt", prompt) if "=" in prompt or prompt.startswith("-") else [prompt]
    region = ["--region", rec["region"]] if rec.get("region") else []
    falloff = ["--falloff", repr(float(rec["falloff"]))] if rec.get("falloff") is not None else []
    args = ["dreamcore", "edit", rec["edit"], *target, *option("--source-prompt", rec.get("source_prompt", "")),
            *region, *falloff, "--config", f"configs/{rec['recipe']}.yaml", *rec.get("overrides", []),
            f"run.seed={rec.get('seed', 0)}", f"run.dir={rec.get('dir', '')}"]
    return " ".join(shlex.quote(a) for a in args)


PICTURES = ("picture.png", "picture.jpg", "picture.webp")  # an Image to 3D job's upload, in its input/


def input_picture(run_dir: Path) -> Path | None:
    """The picture an Image to 3D job was given (``input/picture.*``, stored by the queue), or None."""
    for name in PICTURES:
        path = Path(run_dir) / "input" / name
        if path.is_file():
            return path
    return None


def title(rec: dict) -> str:
    """What the page calls a job: its prompt, or for a picture without one "a picture"."""
    prompt = rec.get("prompt", "")
    return prompt if prompt or not rec.get("image") else "(a picture)"


@dataclass
class RunSummary:
    """A gallery entry."""

    dir: Path
    job: dict
    status: str
    progress: Progress
    metrics: dict = field(default_factory=dict)
    thumbnail: Path | None = None
    picture: Path | None = None  # Image to 3D: the picture it was given

    @property
    def resumable(self) -> bool:
        return self.status in ("interrupted", "failed", "cancelled") and (self.dir / "ckpt").is_dir()


def list_runs(runs_dir: Path, owner: str = "") -> list[RunSummary]:
    """Every studio run under ``runs_dir``, newest first; with ``owner``, only the runs whose ``studio.json``
    names that owner (``""``: every run, the single user of a studio without ``--auth``). A run recorded as
    running whose process is gone (the app was stopped or killed) reads as interrupted. Folders whose names
    start with a dot (the studio's own, a run being deleted) are not runs."""
    out = []
    for d in Path(runs_dir).iterdir() if Path(runs_dir).is_dir() else []:
        rec = read_job(d) if d.is_dir() and not d.name.startswith(".") else None
        if rec is None or (owner and rec.get("owner", "") != owner):
            continue
        status = rec.get("status", "unknown")
        if status in ("running", "queued") and not _alive(rec.get("pid")):
            status = "interrupted"
        out.append(RunSummary(d, rec, status, read_progress(d), read_metrics(d), latest_validation(d),
                              input_picture(d)))
    out.sort(key=lambda r: r.job.get("created", 0), reverse=True)
    return out


def _alive(pid) -> bool:
    import os

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
