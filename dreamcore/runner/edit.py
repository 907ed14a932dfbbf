"""``dreamcore edit``: the config of a run that edits a finished run (its SOURCE) toward a target prompt.

The edit's config is the source run's own ``config.yaml`` (its prior, cameras, representation, renderer,
background, learning rates: what made the asset), with its system renamed ``edit`` (keeping the source system's
settings), then the edit recipe laid over it (``configs/edit-*.yaml``: the system's edit settings, the guidance,
the run's length), then the user's overrides, and last what this command is given: ``prompt`` (the target, taken
literally), ``system.source_prompt``, ``system.region``/``system.falloff``, ``init.from_run`` (the source, an
absolute path: the run's ``config.yaml`` says what it edits) and ``run.dir``. Everything that can be wrong with the
input is found here, before any work; the source folder is only read, never written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from dreamcore.config import Config, config_path, load_config, load_yaml_tree, override_lines, prompt_line
from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path
from dreamcore.meshes.asset import SceneTransform
from dreamcore.meshes.io import SUPPORTED_SUFFIXES
from dreamcore.runner.rundir import RunDir, default_run_dir

EDITABLE = ("dreamfusion", "gaussian")  # the systems of the runs an edit can start from (a NeRF, Gaussians)


def edit_config(source: str | Path, prompt: str, source_prompt: str, region: str | None = None,
                falloff: float | None = None,
                config: str | Path = "edit-dds", overrides: Mapping[str, Any] | Sequence[str] | None = None,
                run_dir: str | Path | None = None) -> Config:
    """The merged config of an edit of run folder ``source`` (module docstring); ``region``/``falloff`` None leave
    ``system.region``/``system.falloff`` as the recipe and overrides have them (default: all of it, a hard edge).
    Raises a DreamcoreError naming what is wrong (not a run folder, no checkpoint, a mesh file, empty prompts, a
    bad region, a run.dir inside the source) before any work: only the source's config is read."""
    folder = check_source(source)
    prompt_arg = prompt_line("prompt", prompt)
    if not isinstance(source_prompt, str) or not source_prompt.strip():
        raise DreamcoreError('the source prompt is empty: say what the asset shows now, e.g. --source-prompt '
                             '"a toy robot" (the target prompt says what it should become)')
    tree = load_yaml_tree(folder / "config.yaml")
    system = tree.get("system") or {}
    kind = system.get("name") if isinstance(system, dict) else system
    if kind not in EDITABLE:
        raise DreamcoreError(f"{folder}: editing a run of system '{kind}' is not supported yet (NeRF and Gaussians "
                             f"runs are: system {' or '.join(EDITABLE)})")
    tree["system"] = {**system, "name": "edit"}  # the source system's own settings carry over
    user = override_lines(overrides)
    keys = {line.split("=", 1)[0].strip().lstrip("+") for line in user}
    fixed = sorted(keys & {"prompt", "init.from_run", "system.source_prompt"})
    if fixed:
        raise DreamcoreError(f"{', '.join(fixed)} are set by the edit itself (SOURCE, the target prompt and "
                             "--source-prompt): leave them out of the overrides")
    lines = ['run.dir=""', *user]  # never the source's own folder: a new one unless the overrides name one
    if region is not None:
        lines.append(f"system.region={json.dumps(region_spec(region, falloff), ensure_ascii=False)}")
    if falloff is not None:
        lines.append(f"system.falloff={check_falloff(falloff)!r}")
    lines += [prompt_arg, f"system.source_prompt={json.dumps(source_prompt, ensure_ascii=False)}",
              f"init.from_run={json.dumps(str(folder))}"]
    if run_dir is not None:
        lines.append(f"run.dir={json.dumps(str(run_dir))}")
    cfg = load_config(config_path(str(config)), lines, base=tree)
    if cfg.system.name != "edit":
        raise DreamcoreError(f"the edit recipe {config} sets system.name={cfg.system.name}; an edit runs system "
                             "'edit' (configs/edit-dds.yaml, edit-pds.yaml, edit-sds.yaml)")
    if not cfg.run.dir:
        cfg.run.dir = str(default_run_dir(cfg))
    check_run_dir(cfg, folder)
    return cfg


def check_source(source: str | Path) -> Path:
    """The source run folder (absolute), or a DreamcoreError saying why ``source`` cannot be edited."""
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise DreamcoreError("name the run to edit: dreamcore edit RUN_DIR \"target prompt\" --source-prompt \"...\"")
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
        raise DreamcoreError(f"{source}: editing a mesh file is not supported yet; edit the run folder that made "
                             "it (a NeRF or Gaussians run)")
    if not path.is_dir():
        raise DreamcoreError(f"{source}: no such run folder (dreamcore edit takes the folder of a finished run)")
    if not (path / "config.yaml").is_file():
        raise DreamcoreError(f"{source} is not a dreamcore run folder (no config.yaml)")
    if not RunDir(path).has_checkpoint():
        raise DreamcoreError(f"{source}: the run has no checkpoint yet (ckpt/last.safetensors); let it finish, or "
                             "resume it, before editing")
    return path.resolve()


def region_spec(region: str, falloff: float | None) -> str:
    """``region`` checked (its syntax, numbers and mesh file, :func:`~dreamcore.meshes.region.parse_region`) and
    with a mesh file's path made absolute, so that a resumed edit finds it from anywhere."""
    from dreamcore.meshes.region import parse_region

    if not isinstance(region, str):
        raise DreamcoreError(f"--region must be text, got {type(region).__name__}")
    parse_region(region, SceneTransform(), 0.0 if falloff is None else falloff)  # raises naming what is wrong
    kind, _, rest = region.strip().partition(":")
    if kind.strip().lower() == "mesh":
        return f"mesh:{resolve_path(rest.strip()).resolve()}"
    return region.strip()


def check_falloff(falloff: Any) -> float:
    """``falloff`` as a finite width ≥ 0, or a DreamcoreError."""
    try:
        value = float(falloff)
    except (TypeError, ValueError):
        raise DreamcoreError(f"--falloff must be a number (a width in scene units), got {falloff!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise DreamcoreError(f"--falloff must be a finite width ≥ 0, got {falloff!r}")
    return value


def check_run_dir(cfg: Config, source: Path) -> None:
    """The edit's run folder must lie outside its source (which is never written to)."""
    out = Path(cfg.run.dir).expanduser().resolve()
    if out == source or source in out.parents:
        raise DreamcoreError(f"run.dir={cfg.run.dir} is inside the source run {source}, which an edit never writes "
                             "to: choose a folder outside it")
