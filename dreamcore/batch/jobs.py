"""A batch's jobs: the prompt file (text or JSONL) times the seeds, each merged into one config and named
``<slug>-<hash>`` by the hash of its prompt, seed and merged config, so the name finds the job's run folder
again in a later invocation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dreamcore.config import Config, config_path, load_config, prompt_line, to_tree, without_neutral
from dreamcore.errors import DreamcoreError
from dreamcore.runner.rundir import prompt_slug

SPEC_NAME = "batch-spec.json"
# run settings that do not change what a job computes: they stay out of the job's hash
UNHASHED_RUN_KEYS = ("dir", "progress", "threads")


@dataclass
class Job:
    """One prompt and seed of a batch, with everything a worker needs to run it (plain data: it crosses
    process and machine boundaries)."""

    name: str
    prompt: str
    seed: int
    config: str  # the config file, resolved to a path
    overrides: list[str] = field(default_factory=list)  # the batch's, then the prompt line's own
    dir: str = ""  # the run folder, ``<batch dir>/<name>``

    def to_dict(self) -> dict:
        return asdict(self)

    def load(self) -> Config:
        """The job's merged config (its run folder set, progress bars off)."""
        cfg = load_config(self.config, self.config_overrides())
        cfg.run.dir = self.dir
        cfg.run.progress = False
        return cfg

    image: str = ""  # image-to-3D: the picture (absolute path; ``image.path``)

    def config_overrides(self) -> list[str]:
        # the prompt taken literally ("a chair: red", "#1", "yes"): never read as YAML; an empty one only with a
        # picture (generate refuses it otherwise)
        out = [*self.overrides, f"prompt={json.dumps(self.prompt)}" if not self.prompt else
               prompt_line("prompt", self.prompt), f"run.seed={self.seed}"]
        return out + ([f"image.path={json.dumps(self.image)}"] if self.image else [])


@dataclass
class Line:
    prompt: str
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    image: str | None = None  # image-to-3D: the picture (an absolute path), read and checked before any work


def read_prompts(path: str | Path) -> list[Line]:
    """One prompt a line (``#`` comments and blank lines skipped), or JSONL objects
    ``{"prompt": ..., "seed": ..., "overrides": [...], "image": ...}`` (a file whose first entry starts with
    ``{``). ``image`` (image-to-3D, as ``dreamcore generate --image``): a picture's path, relative to the prompt
    file's folder unless absolute; the prompt may then be empty (a picture alone, for a prior that takes one)."""
    path = Path(path)
    if not path.is_file():
        raise DreamcoreError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DreamcoreError(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1)]
    lines = [(n, s) for n, s in lines if s and not s.startswith("#")]
    if not lines:
        raise DreamcoreError(f"prompt file {path} holds no prompts")
    if not lines[0][1].startswith("{"):
        return [Line(s) for _, s in lines]
    return [_json_line(path, n, s) for n, s in lines]


def _json_line(path: Path, n: int, text: str) -> Line:
    where = f"{path} line {n}"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise DreamcoreError(f"{where} is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise DreamcoreError(f"{where} must be a JSON object with a \"prompt\", got {type(rec).__name__}")
    unknown = set(rec) - {"prompt", "seed", "overrides", "image"}
    if unknown:
        raise DreamcoreError(f"{where}: unknown keys {sorted(unknown)} (allowed: prompt, seed, overrides, image)")
    prompt, seed, overrides = rec.get("prompt", ""), rec.get("seed"), rec.get("overrides", [])
    image = rec.get("image")
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise DreamcoreError(f"{where}: \"image\" must be a picture's path (a non-empty string)")
        image = _picture(path, where, image.strip())
    if not isinstance(prompt, str) or (not prompt.strip() and image is None):
        raise DreamcoreError(f"{where}: \"prompt\" must be a non-empty string (or give an \"image\")")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise DreamcoreError(f"{where}: \"seed\" must be an integer, got {seed!r}")
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise DreamcoreError(f"{where}: \"overrides\" must be a list of \"key=value\" strings")
    return Line(prompt.strip(), seed, list(overrides), image)


def _picture(prompt_file: Path, where: str, name: str) -> str:
    """A line's picture: its absolute path (relative names are the prompt file's folder's), read and keyed now
    (:func:`dreamcore.reference_image.cut_out`) so that a bad one is refused in words before any work."""
    from dreamcore.reference_image import ImageConfig, cut_out

    picture = Path(name).expanduser()
    if not picture.is_absolute():
        picture = prompt_file.resolve().parent / picture
    try:
        cut_out(str(picture), ImageConfig(path=str(picture)))
    except DreamcoreError as e:
        raise DreamcoreError(f"{where}: {e}") from None
    return str(picture.resolve())


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DreamcoreError(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {text!r}") from None
    if not seeds:
        raise DreamcoreError("--seeds names no seed")
    return seeds


def slug(prompt: str) -> str:
    return prompt_slug(prompt).strip("-") or "job"  # (no trailing "-" where the cut fell on one)


def job_hash(cfg: Config) -> str:
    """SHA-256 (first 10 hex digits) of the merged config without the settings in UNHASHED_RUN_KEYS (nor the
    settings added later that are at their neutral value, :data:`dreamcore.config.NEUTRAL_SETTINGS`, so job
    names from before they existed stay); the prompt and seed are part of it, and a picture's bytes."""
    tree = without_neutral(to_tree(cfg))  # settings added later, at their neutral value, rename no job
    for key in UNHASHED_RUN_KEYS:
        tree["run"].pop(key, None)
    if cfg.image.path:  # the picture is its bytes, wherever it lies
        tree["image"]["path"] = hashlib.sha256(Path(cfg.image.path).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:10]


def expand_jobs(prompts: list[Line], config: str, overrides: list[str], seeds: list[int] | None,
                out: str | Path) -> list[Job]:
    """Every prompt line × seed as a job; each config is merged (and so checked) now, before any work.
    A line's own seed is used when ``seeds`` is not given; else seed 0. Repeated jobs run once."""
    path = str(config_path(config).resolve())
    jobs: dict[str, Job] = {}
    for line in prompts:
        for seed in (seeds if seeds is not None else [line.seed if line.seed is not None else 0]):
            job = Job("", line.prompt, seed, path, [*overrides, *line.overrides], image=line.image or "")
            try:
                cfg = load_config(path, job.config_overrides())
            except DreamcoreError as e:
                raise DreamcoreError(f"prompt {line.prompt!r} (seed {seed}): {e}") from None
            name = line.prompt or f"picture {Path(line.image).stem}" if line.image else line.prompt
            job.name = f"{slug(name)}-{job_hash(cfg)}"
            job.dir = str(Path(out) / job.name)
            jobs.setdefault(job.name, job)
    return list(jobs.values())


def write_spec(out: Path, spec: dict) -> None:
    from dreamcore.files import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / SPEC_NAME, json.dumps(spec, indent=2).encode())


def read_spec(out: Path) -> dict:
    path = Path(out) / SPEC_NAME
    if not path.is_file():
        raise DreamcoreError(f"{out} is not a dreamcore batch folder (no {SPEC_NAME})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DreamcoreError(f"{path} is damaged ({e.msg}); run the original `dreamcore batch` command again") from None


