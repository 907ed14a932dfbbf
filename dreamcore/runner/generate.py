"""``dreamcore generate``: one config to one optimized, exported and scored scene in a run folder."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from dreamcore import registry
from dreamcore.config import Config, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.runner.finish import check_scoring_target, evaluate_run, export_run, reference_fit
from dreamcore.runner.refine import first_stage_formats, promote, refined_formats, stage_config
from dreamcore.runner.rundir import REFERENCE_NAME, RunDir, default_run_dir, follow_reference
from dreamcore.runner.trainer import Trainer


@contextlib.contextmanager
def collect_log(name: str):
    """Collect the messages of logger ``name`` (INFO and above) into a list while the block runs."""
    notes: list[str] = []

    class _ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger = logging.getLogger(name)
    handler = _ListHandler(logging.INFO)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def generate(cfg: Config, resume: bool = False, announce=print) -> Path:
    """Optimize ``cfg`` into ``cfg.run.dir`` (or a new folder under ``runs/``), export and evaluate."""
    from dreamcore.export.exporters import exporters_for

    exporters_for(cfg.export.formats)  # an unknown format fails now, not after the optimization
    check_scoring_target(cfg)  # so does a missing eval.mesh
    if not cfg.prompt.strip() and not cfg.image.path:
        raise DreamcoreError('the prompt is empty: pass it as `dreamcore generate "a red chair"` or prompt="..."')
    run = RunDir(Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg))
    picture = reference_picture(cfg, run.path)  # a bad picture is refused now, before any work
    run.check_not_busy()  # another live process works in this folder: say who, before any work
    if run.has_checkpoint() and not resume:
        raise DreamcoreError(
            f"{run.path} already holds a run; resume it with `dreamcore generate --resume {run.path}` "
            "or choose another run.dir"
        )
    cfg.run.dir = str(run.path)
    if cfg.refine.config:
        stage = stage_config(cfg, run.path)  # a bad refinement config fails now, not after the first stage
        if "prior" in cfg.refine.own:  # and so does a missing model of a stage's own prior
            registry.lookup("prior", stage.prior.name).preflight(stage.prior)
    with collect_log("dreamcore.meshes") as notes:  # what the mesh readers said, for the run's log.txt
        trainer = Trainer(cfg, run, resume=resume)  # loads the prior and checkpoint: bad input fails before any write
    with run.locked():  # one process per run folder (a second is refused, naming this one's PID)
        if picture is not None:
            keep_reference(picture, cfg, run)
        run.write_config(cfg)
        if trainer.recovered:
            run.log(f"warning: {trainer.recovered}")
            announce(f"warning: {trainer.recovered}")
        for note in notes:
            run.log(f"mesh: {note}")
        run.log(f"{'resume' if resume else 'start'}: prompt={cfg.prompt!r} steps={cfg.run.steps}")
        announce(f"run folder: {run.path} (step {trainer.step}/{cfg.run.steps})")
        trainer.fit()
        trainer.validate()
        t0 = time.perf_counter()
        picard = ({"picard_rounds": trainer.picard_rounds, "picard_gradient_evals": trainer.picard_gradient_evals}
                  if cfg.run.picard.window > 0 else {})  # run.picard: its rounds beside the accepted steps
        metrics = {"steps": trainer.step, **picard, "train_seconds": round(trainer.seconds, 1),
                   "seconds_per_step": round(trainer.seconds / max(trainer.step, 1), 4),
                   "prior_calls": trainer.system.prior.denoiser_calls,  # (restored from the checkpoint on resume)
                   "prior_rows": trainer.system.prior.denoised_rows,
                   **finish_run(trainer.system, cfg, run.path)}
        metrics["finish_seconds"] = round(time.perf_counter() - t0, 1)
        if refined_formats(cfg):  # the final asset comes from the refinement stage
            run.write_metrics(metrics)
            run.log(f"stage 1 done; refinement stage {cfg.refine.config}")
            del trainer
            metrics = run_refinement(cfg, run.path, metrics, announce)
        run.write_metrics(metrics)
        run.log("done: " + json.dumps({k: v for k, v in metrics.items() if k != "export"}))
    return run.path


def reference_picture(cfg: Config, run_dir: Path):
    """The cut-out of ``image.path`` (image-to-3D), read and keyed now so that a bad picture is refused before
    any work; None without one. A run folder names its own copy (:func:`keep_reference`), found beside its
    config when the folder was moved since."""
    from dreamcore.reference_image import cut_out

    if not cfg.image.path:
        return None
    follow_reference(cfg, run_dir)
    return cut_out(cfg.image.path, cfg.image)


def keep_reference(picture, cfg: Config, run: RunDir) -> None:
    """Write the picture's cut-out into the run folder as ``reference.png`` (the only file written for it; its
    name never comes from the picture's) and point ``image.path`` there, so config.yaml names what the run
    used and a resume or refinement stage reads the same pixels."""
    from dreamcore.files import atomic_write_bytes

    own = (run.path / REFERENCE_NAME).resolve()
    source = Path(picture.source).expanduser().resolve()
    if source != own:
        atomic_write_bytes(own, picture.png_bytes())
        h, w = picture.rgba.shape[:2]
        run.log(f"image: {picture.source} -> {REFERENCE_NAME} ({w - 2}×{h - 2} pixels of object; background: "
                f"{picture.method})")
    cfg.image.path = str(own)


def run_refinement(cfg: Config, run_dir: Path, metrics: dict, announce=print) -> dict:
    """Run (or resume) the refinement stage of the finished first stage in ``run_dir``; copy its exported files
    up and return the combined metrics: the stage's own (final asset), the first stage's under ``"stage1"``."""
    stage = stage_config(cfg, run_dir)
    stage_dir = Path(stage.run.dir)
    resume = RunDir(stage_dir).has_checkpoint()
    announce(f"refinement stage: {cfg.refine.config} -> {stage_dir}" + (" (resuming)" if resume else ""))
    generate(stage, resume=resume, announce=announce)
    refined = json.loads((stage_dir / "metrics.json").read_text())
    files = promote(stage_dir, run_dir, refined.get("export", {}).get("files", {}))
    combined = {k: v for k, v in refined.items() if k != "export"}
    combined["export"] = {**metrics.get("export", {}), **refined.get("export", {})}
    combined["export"]["files"] = {**metrics.get("export", {}).get("files", {}), **files}
    combined["stage1"] = {k: v for k, v in metrics.items() if k != "export"}
    combined["refine_dir"] = str(stage_dir)
    return combined


def finish_run(system, cfg: Config, run_dir: Path) -> dict:
    """Export what this stage writes (all formats, or only the non-mesh ones when a refinement stage follows)
    and score it: {"export": ..., metrics...}."""
    formats = first_stage_formats(cfg)
    export = export_run(system, replace(cfg, export=replace(cfg.export, formats=formats)), run_dir) if formats else {}
    return {"export": export, **evaluate_run(system, cfg, run_dir, score_glb=not refined_formats(cfg)),
            **reference_fit(system, cfg)}


def resume_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The saved config of a run folder with ``overrides`` applied (e.g. ``run.steps=2000`` to extend it)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DreamcoreError(f"{run_dir} is not a dreamcore run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", overrides)
    cfg.run.dir = str(run_dir)
    return cfg
