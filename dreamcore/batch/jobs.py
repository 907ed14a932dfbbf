"""A batch's jobs: the prompt file (text or JSONL) times the seeds, each merged into one config and named
``<slug>-<hash>`` by the hash of its prompt, seed and merged config, so the name finds the job's run folder
again in a later invocation.

A JSONL line may also be an edit of a finished run (as ``dreamcore edit``):
``{"edit": "runs/robot", "prompt": "target", "source_prompt": "what it is now", "region": "box:...",
"falloff": 0.05, "config": "edit-dds", "seed": 0, "overrides": [...]}``. Its paths (the source run, a
``mesh:`` region's file) are relative to the prompt file's folder unless absolute; the source must be a finished
run (a checkpoint) and is checked, with the region and the merged config, before any work. Its name is
``edit-<slug>-<hash>``, the hash over the merged config with the source named by its checkpoint's bytes (and a
mesh region by its file's), so an edit of a source that was trained further is a new job."""

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
    image: str = ""  # image-to-3D: the picture (absolute path; ``image.path``)
    # an edit (``dreamcore edit``): the source run folder (absolute); ``config`` is then the edit recipe, laid over
    # the source's own config (:func:`dreamcore.runner.edit.edit_config`), and ``prompt`` the target prompt
    edit: str = ""
    source_prompt: str = ""  # an edit: what the source shows now
    region: str = ""  # an edit: box:x0,y0,z0,x1,y1,z1 or mesh:FILE (absolute); "" = the whole asset
    falloff: float | None = None  # an edit: the region's soft edge (None: as the recipe has it)

    def to_dict(self) -> dict:
        return asdict(self)

    def load(self) -> Config:
        """The job's merged config (its run folder set, progress bars off); an edit's from its source run."""
        if self.edit:
            from dreamcore.runner.edit import edit_config

            cfg = edit_config(self.edit, self.prompt, self.source_prompt, self.region or None, self.falloff,
                              self.config, [*self.overrides, f"run.seed={self.seed}"], run_dir=self.dir or None)
        else:
            cfg = load_config(self.config, self.config_overrides())
        cfg.run.dir = self.dir
        cfg.run.progress = False
        return cfg

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
    edit: str | None = None  # an edit: the source run folder (an absolute path), checked before any work
    source_prompt: str = ""  # an edit: what the source shows now
    region: str = ""  # an edit: its region (a mesh file's path made absolute)
    falloff: float | None = None  # an edit: the region's soft edge
    config: str | None = None  # an edit: its recipe (default edit-dds); other lines take the batch's --config


def read_prompts(path: str | Path) -> list[Line]:
    """One prompt a line (``#`` comments and blank lines skipped), or JSONL objects
    ``{"prompt": ..., "seed": ..., "overrides": [...], "image": ...}`` (a file whose first entry starts with
    ``{``). ``image`` (image-to-3D, as ``dreamcore generate --image``): a picture's path, relative to the prompt
    file's folder unless absolute; the prompt may then be empty (a picture alone, for a prior that takes one).
    ``edit`` (as ``dreamcore edit``): the run folder to edit, relative to the prompt file's folder unless
    absolute, with ``source_prompt`` (required), ``region``, ``falloff`` and ``config`` (the edit recipe, default
    ``edit-dds``); the prompt is the target prompt (module docstring)."""
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
    unknown = set(rec) - {"prompt", "seed", "overrides", "image", *EDIT_KEYS}
    if unknown:
        raise DreamcoreError(f"{where}: unknown keys {sorted(unknown)} (allowed: prompt, seed, overrides, image; "
                             f"for an edit: {', '.join(EDIT_KEYS)})")
    if "edit" in rec:
        return _edit_line(path, where, rec)
    prompt, seed, overrides = rec.get("prompt", ""), rec.get("seed"), rec.get("overrides", [])
    stray = sorted(set(rec) & set(EDIT_KEYS))
    if stray:
        raise DreamcoreError(f"{where}: {', '.join(stray)} belong to an edit line, which names its source run with "
                             "\"edit\" (the batch's --config is every other line's recipe)")
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


EDIT_KEYS = ("edit", "source_prompt", "region", "falloff", "config")


def _edit_line(prompt_file: Path, where: str, rec: dict) -> Line:
    """An edit line, checked as ``dreamcore edit`` checks its input (the source run, the prompts, the region and
    its falloff), with its paths made absolute (relative ones are the prompt file's folder's)."""
    from dreamcore.runner.edit import check_falloff, check_source, region_spec

    if "image" in rec:
        raise DreamcoreError(f"{where}: an edit line takes no \"image\" (editing starts from a run folder)")
    source, prompt, source_prompt = rec.get("edit"), rec.get("prompt", ""), rec.get("source_prompt")
    region, falloff, config = rec.get("region", ""), rec.get("falloff"), rec.get("config", "edit-dds")
    seed, overrides = rec.get("seed"), rec.get("overrides", [])
    if not isinstance(source, str) or not source.strip():
        raise DreamcoreError(f"{where}: \"edit\" must name the run folder to edit (a non-empty string)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DreamcoreError(f"{where}: \"prompt\" must be the target prompt, what the asset should become (a "
                             "non-empty string)")
    if not isinstance(source_prompt, str) or not source_prompt.strip():
        raise DreamcoreError(f"{where}: an edit needs \"source_prompt\", what the asset shows now (a non-empty "
                             "string)")
    if region is None:
        region = ""
    if not isinstance(region, str):
        raise DreamcoreError(f"{where}: \"region\" must be text: box:x0,y0,z0,x1,y1,z1 or mesh:FILE")
    if falloff is not None and (isinstance(falloff, bool) or not isinstance(falloff, (int, float))):
        raise DreamcoreError(f"{where}: \"falloff\" must be a number (a width in scene units), got {falloff!r}")
    if not isinstance(config, str) or not config.strip():
        raise DreamcoreError(f"{where}: \"config\" must name an edit recipe (edit-dds, edit-pds, edit-sds) or a "
                             "YAML file")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise DreamcoreError(f"{where}: \"seed\" must be an integer, got {seed!r}")
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise DreamcoreError(f"{where}: \"overrides\" must be a list of \"key=value\" strings")
    base = prompt_file.resolve().parent

    def beside(name: str) -> Path:
        p = Path(name.strip()).expanduser()
        return p if p.is_absolute() else base / p

    kind, _, rest = region.strip().partition(":")
    if kind.strip().lower() == "mesh" and rest.strip():
        region = f"mesh:{beside(rest)}"
    config = config.strip()
    if Path(config).suffix.lower() in (".yaml", ".yml"):  # a file of the user's, beside the prompt file
        config = str(beside(config))
    try:
        folder = check_source(beside(source))
        region = region_spec(region, falloff) if region.strip() else ""
        falloff = None if falloff is None else check_falloff(falloff)
    except DreamcoreError as e:
        raise DreamcoreError(f"{where}: {e}") from None
    return Line(prompt.strip(), seed, list(overrides), None, str(folder), source_prompt, region, falloff, config)


def source_digest(run_dir: str | Path) -> str:
    """SHA-256 of the checkpoint an edit of run folder ``run_dir`` starts from (the newest good one), or a
    DreamcoreError when it has none that is whole."""
    from dreamcore.runner.checkpoint import find_good

    found = find_good(Path(run_dir) / "ckpt")
    if found is None:
        raise DreamcoreError(f"{run_dir}: no whole checkpoint to edit (ckpt/last.safetensors is missing or damaged)")
    return _file_digest(found[0])


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
    if cfg.system.name == "edit" and cfg.init.from_run:  # an edit: its source is its checkpoint's bytes
        tree["init"]["from_run"] = source_digest(cfg.init.from_run)
        region = str(tree["system"].get("region") or "")
        kind, _, rest = region.partition(":")
        if kind.strip().lower() == "mesh" and Path(rest.strip()).is_file():  # a mesh region: its bytes
            tree["system"]["region"] = f"mesh:{_file_digest(rest.strip())}"
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:10]


def expand_jobs(prompts: list[Line], config: str, overrides: list[str], seeds: list[int] | None,
                out: str | Path) -> list[Job]:
    """Every prompt line × seed as a job; each config is merged (and so checked) now, before any work.
    A line's own seed is used when ``seeds`` is not given; else seed 0. Repeated jobs run once."""
    path = str(config_path(config).resolve()) if any(not line.edit for line in prompts) else str(config)
    jobs: dict[str, Job] = {}
    for line in prompts:
        for seed in (seeds if seeds is not None else [line.seed if line.seed is not None else 0]):
            what = f"prompt {line.prompt!r} (seed {seed})"
            try:
                if line.edit:  # an edit: its own recipe, laid over its source run's config
                    what = f"edit of {line.edit} toward {line.prompt!r} (seed {seed})"
                    job = Job("", line.prompt, seed, str(config_path(line.config or "edit-dds").resolve()),
                              [*overrides, *line.overrides], edit=line.edit, source_prompt=line.source_prompt,
                              region=line.region, falloff=line.falloff)
                    cfg = job.load()
                else:
                    job = Job("", line.prompt, seed, path, [*overrides, *line.overrides], image=line.image or "")
                    cfg = load_config(path, job.config_overrides())
                digest = job_hash(cfg)
            except DreamcoreError as e:
                raise DreamcoreError(f"{what}: {e}") from None
            name = line.prompt or f"picture {Path(line.image).stem}" if line.image else line.prompt
            job.name = f"{'edit-' if line.edit else ''}{slug(name)}-{digest}"
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


