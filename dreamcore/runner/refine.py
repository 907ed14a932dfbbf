"""The refinement stage of a two-stage run (``refine.config``): DreamGaussian's stage 2 (Tang et al. 2023,
§3.3: the Gaussians' mesh refined in UV space) and Magic3D's fine stage (Lin et al. 2023: a DMTet surface from
the coarse field, optimized through a rasterizer), started by ``dreamcore generate`` when the first stage ends (:func:`dreamcore.runner.generate.run_refinement`).

The stage is an ordinary run in ``<run.dir>/<refine.dir>`` (own config, checkpoints, log and resume) with
``init.from_run`` = the first stage. What makes it the same job rather than a new one is inherited from the
first stage (:data:`INHERITED`, less the sections in ``refine.own``: StableDreamer's second stage brings its own
prior); its exported files are then copied into the first stage's folder, so ``model.glb``
there is the refined asset, and ``metrics.json`` there reports it (first-stage figures stay under ``"stage1"``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dreamcore.config import Config, config_path, load_config
from dreamcore.errors import DreamcoreError

# top-level sections and run fields the refinement stage takes from the first stage
INHERITED = ("prompt", "negative_prompt", "plugins", "views", "prior", "eval", "image")
INHERITED_RUN = ("seed", "device", "threads", "progress")


def mesh_formats(formats: list[str]) -> list[str]:
    """The export formats written from a mesh (GLB, OBJ, turntable), as opposed to the representation itself."""
    from dreamcore.export.exporters import exporter_class

    return [f for f in formats if exporter_class(f).writes_mesh]


def stage_formats(cfg: Config, stage_representation: str) -> list[str]:
    """What a refinement stage with representation ``stage_representation`` writes of ``cfg.export.formats``:
    the mesh formats, and every format when it continues the first stage's kind of representation (Gaussians
    refined as Gaussians write the final ``model.ply`` too)."""
    if stage_representation == cfg.representation.name:
        return list(cfg.export.formats)
    return mesh_formats(cfg.export.formats)


def refined_formats(cfg: Config) -> list[str]:
    """The formats of ``cfg.export.formats`` its refinement stage writes ([] without one)."""
    if not cfg.refine.config:
        return []
    return stage_formats(cfg, _stage_file(cfg).representation.name)


def first_stage_formats(cfg: Config) -> list[str]:
    """What the first stage itself writes: everything, or with a refinement stage what that stage does not.
    (The refinement stage exists to make the final asset: when it would write nothing it is skipped.)"""
    refined = refined_formats(cfg)
    return [f for f in cfg.export.formats if f not in refined]


def _stage_file(cfg: Config) -> Config:
    r = cfg.refine
    unknown = [name for name in r.own if name not in INHERITED]
    if unknown:
        raise DreamcoreError(f"refine.own: {', '.join(unknown)} is not an inherited section (the stage already "
                             f"has its own everything else); choose among {', '.join(INHERITED)}")
    for item in r.overrides:
        key = item.split("=", 1)[0].strip()
        section, _, rest = key.partition(".")
        if (section in INHERITED and section not in r.own) or (section == "run" and rest in INHERITED_RUN):
            hint = f"; to give the stage its own, add {section} to refine.own" if section in INHERITED else ""
            raise DreamcoreError(f"refine.overrides: {key} is inherited from the first stage, so the override "
                                 f"would be ignored (set it for the whole job instead{hint})")
    return load_config(config_path(r.config), list(r.overrides))


def stage_config(cfg: Config, run_dir: Path) -> Config:
    """The refinement stage's config: its own file after ``refine.overrides``, the inherited parts of ``cfg``
    (but those in ``refine.own``), ``init.from_run`` = ``run_dir``, ``run.dir`` = ``run_dir / refine.dir``
    and the formats of :func:`stage_formats`."""
    import copy


    r = cfg.refine
    if not r.dir or Path(r.dir).is_absolute() or ".." in Path(r.dir).parts:
        raise DreamcoreError(f"refine.dir must be a sub-folder name of the run folder, got {r.dir!r}")
    stage = _stage_file(cfg)
    for name in INHERITED:
        if name not in r.own:
            setattr(stage, name, copy.deepcopy(getattr(cfg, name)))
    for name in INHERITED_RUN:
        setattr(stage.run, name, getattr(cfg.run, name))
    stage.run.dir = str(run_dir / r.dir)
    stage.init.from_run = str(run_dir)
    stage.export.formats = stage_formats(cfg, stage.representation.name)
    if stage.refine.config:
        raise DreamcoreError(f"the refinement stage {r.config} names a refinement of its own (refine.config="
                             f"{stage.refine.config}); chains are not supported")
    return stage


def promote(stage_dir: Path, run_dir: Path, files: dict) -> dict:
    """Copy the stage's exported files (``{"glb": path, ...}``) into ``run_dir``, each atomically (copy to a
    temporary name, then rename). Returns {key: new path}."""
    out = {}
    for key, src in files.items():
        src = Path(src)
        if src.parent.resolve() != stage_dir.resolve() or not src.is_file():
            continue
        dst = run_dir / src.name
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        out[key] = str(dst)
    return out
