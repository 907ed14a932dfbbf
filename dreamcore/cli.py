"""Command line: ``dreamcore generate|edit|demo|export|batch|list``. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from dreamcore.errors import DreamcoreError, storage_problem

def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """Positional words that are not key=value (the prompt) and the overrides."""
    words = [a for a in args if "=" not in a]
    return words, [a for a in args if "=" in a]


def cmd_generate(ns: argparse.Namespace) -> int:
    from dreamcore.api import generate, resume

    words, overrides = _split(ns.args)
    if ns.resume:
        if words or ns.prompt is not None or ns.negative_prompt is not None or ns.image is not None:
            raise DreamcoreError("--resume takes key=value overrides only (the run keeps its prompt and picture), "
                                 f"got {' '.join(words + (['--image'] if ns.image is not None else []))!r}")
        run = resume(ns.resume, overrides, progress=True)
    else:
        if words and ns.prompt is not None:
            raise DreamcoreError(f"give the prompt once: as words or with --prompt, not both ({' '.join(words)!r})")
        # taken literally, whatever it holds ("a chair: red", "a cat # fluffy", "yes"); --prompt for one that
        # starts with "-" or holds "="
        prompt = ns.prompt if ns.prompt is not None else (" ".join(words) if words else None)
        # --image: image-to-3D (the prompt may then be left out; configs/image-to-3d.yaml is the recipe)
        run = generate(prompt, ns.config or ("image-to-3d" if ns.image is not None else "dreamfusion"), overrides,
                       negative_prompt=ns.negative_prompt, progress=True, image=ns.image)
    _report(run.path)
    return 0


def cmd_edit(ns: argparse.Namespace) -> int:
    """Edit a finished run toward a target prompt, into a new run folder (the source is only read)."""
    from dreamcore.api import edit

    words, overrides = _split(ns.args)
    if words and ns.prompt is not None:
        raise DreamcoreError(f"give the target prompt once: as words or with --prompt, not both ({' '.join(words)!r})")
    prompt = ns.prompt if ns.prompt is not None else " ".join(words)
    if ns.source_prompt is None:
        raise DreamcoreError('dreamcore edit needs --source-prompt "what the asset shows now" (e.g. "a toy robot")')
    run = edit(ns.source, prompt, ns.source_prompt, region=ns.region, falloff=ns.falloff,
               config=ns.config or "edit-dds", overrides=overrides, progress=True)
    _report(run.path)
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.generate import generate

    overrides = list(ns.args)
    if not any(o.startswith("run.dir=") for o in overrides):
        overrides.append(f"run.dir=runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    run = generate(load_config(config_path("demo"), overrides))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    _report(run)
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    """Re-export (and re-score) a run from its last checkpoint, e.g. with another texture size."""
    from dreamcore.runner.generate import finish_run, resume_config
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    cfg = resume_config(ns.run_dir, list(ns.args))
    run = RunDir(Path(ns.run_dir))
    run.check_not_busy()  # a run still training there: say who
    trainer = Trainer(cfg, run, resume=True)
    with run.locked():
        metrics = {"steps": trainer.step, **finish_run(trainer.system, cfg, run.path)}
        previous = run.path / "metrics.json"
        refined = json.loads(previous.read_text()) if cfg.refine.config and previous.is_file() else {}
        if "stage1" in refined:  # keep the refined asset's figures; only the first stage's are new
            print(f"this run's mesh comes from its refinement stage: re-export that with "
                  f"`dreamcore export {run.path / cfg.refine.dir}` (its files are not copied up again)")
            refined["stage1"] = {k: v for k, v in metrics.items() if k != "export"}
            metrics = refined
        run.write_metrics(metrics)
    _report(run.path)
    return 0


def cmd_batch(ns: argparse.Namespace) -> int:
    """Many prompts, one run folder each under ``--out``; the same command again (or ``--resume DIR``) skips
    finished jobs and resumes unfinished ones. Exit status 1 when a job failed (batch.md says why)."""
    from dreamcore.batch.driver import make_spec, parse_shard, resume_spec, run_batch
    from dreamcore.batch.jobs import parse_seeds

    options = {"backend": ns.backend, "ray_address": ns.ray_address, "gpus_per_job": ns.gpus_per_job,
               "cpus_per_job": ns.cpus_per_job, "retries": ns.retries}
    words, overrides = _split(ns.args)
    if ns.resume:
        if words or overrides or ns.config or ns.seeds or ns.out:
            raise DreamcoreError("--resume DIR takes the batch from its folder: give only backend options with it")
        out, spec = Path(ns.resume), resume_spec(Path(ns.resume), options)
    else:
        if len(words) != 1:
            raise DreamcoreError("dreamcore batch takes one PROMPTS file (one prompt a line, or JSONL), "
                                 f"then key=value overrides; got {words or 'none'}")
        if not ns.out:
            raise DreamcoreError("dreamcore batch needs --out DIR, the folder that holds the batch's run folders")
        if any(o.split("=", 1)[0] in ("run.dir", "prompt", "run.seed") for o in overrides):
            raise DreamcoreError("run.dir, prompt and run.seed are set per job by the batch (use --out, the "
                                 "prompt file and --seeds)")
        out = Path(ns.out)
        spec = make_spec(words[0], ns.config or "dreamfusion", overrides, parse_seeds(ns.seeds), options)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a scheduler's stop: as Ctrl-C, the jobs save and stop
    try:
        summary = run_batch(spec, out, shard=parse_shard(ns.shard))
    except KeyboardInterrupt:
        print(f"dreamcore: batch interrupted; the running jobs saved their checkpoints. Continue with the same "
              f"command or `dreamcore batch --resume {out}`", file=sys.stderr)
        return 130
    return 0 if summary["failed"] == 0 else 1


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def cmd_studio(ns: argparse.Namespace) -> int:
    from dreamcore.studio.app import read_limits, serve

    limits = read_limits(ns.limits, max_upload_mb=ns.max_upload_mb, max_image_mb=ns.max_image_mb,
                         max_queue=ns.max_queue, max_per_page=ns.max_per_page, max_steps=ns.max_steps)
    serve(ns.host, ns.port, ns.runs, ns.auth, ns.slots, ns.threads, limits=limits, cache_dir=ns.cache_dir)
    return 0


def cmd_list(ns: argparse.Namespace) -> int:  # noqa: ARG001
    from dreamcore import registry
    from dreamcore.config import shipped_configs

    for kind in registry.kinds():
        print(f"{kind}: {', '.join(registry.names(kind))}")
    # the shipped recipes, each a name `generate --config` and `batch --config` take
    print(f"recipe: {', '.join(shipped_configs())}")
    return 0


def _report(run: Path) -> None:
    glb = run / "model.glb"
    if glb.is_file():
        print(f"GLB: {glb.resolve()}")
    metrics = run / "metrics.json"
    if metrics.is_file():
        print(f"metrics ({metrics}):")
        print(json.dumps({k: v for k, v in json.loads(metrics.read_text()).items() if k != "export"}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dreamcore", description="Text-to-3D score distillation.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="optimize one scene from a prompt and export it")
    g.add_argument("--config", "-c", metavar="RECIPE|YAML",
                   help="a recipe name from `dreamcore list` (e.g. text-nerf, reference-nerf) or the path of a YAML "
                        "config (default: dreamfusion)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its folder")
    g.add_argument("--prompt", "-p", default=None, help="the prompt, taken literally (for one that starts with - "
                   "or holds =); else the words before the overrides")
    g.add_argument("--negative-prompt", "-n", default=None, help="the negative prompt, taken literally")
    g.add_argument("--image", "-i", default=None, metavar="PICTURE",
                   help="image to 3D: a PNG, JPEG or WebP picture of the object (its background removed, framed "
                        "and seen from image.azimuth/image.elevation, default the front); default recipe "
                        "image-to-3d. The prompt (the object's name) is optional")
    g.add_argument("args", nargs="*", help='the prompt words and/or key=value overrides (e.g. run.steps=500)')
    g.set_defaults(func=cmd_generate)
    ed = sub.add_parser("edit", help="edit a finished NeRF or Gaussians run toward a new prompt (a new run folder)")
    ed.add_argument("source", metavar="SOURCE", help="the folder of the finished run to edit (never written to)")
    ed.add_argument("--source-prompt", "-s", default=None, help="what the asset shows now, taken literally "
                    "(required)")
    ed.add_argument("--prompt", "-p", default=None, help="the target prompt, taken literally (for one that starts "
                    "with - or holds =); else the words before the overrides")
    ed.add_argument("--region", "-r", default=None, metavar="SPEC", help="where it may change: box:x0,y0,z0,x1,y1,z1 "
                    "(the frame of the source's model.glb) or mesh:part.glb (a closed mesh); default: all of it")
    ed.add_argument("--falloff", type=float, default=None, help="width of the region's soft edge, scene units "
                    "(default 0: a hard edge)")
    ed.add_argument("--config", "-c", metavar="RECIPE|YAML", help="the edit recipe laid over the source run's "
                    "config: edit-dds (default), edit-pds, edit-sds, or a YAML path")
    ed.add_argument("args", nargs="*", help="the target prompt's words and/or key=value overrides (e.g. "
                    "run.steps=200 run.dir=out/blue-chest)")
    ed.set_defaults(func=cmd_edit)
    d = sub.add_parser("demo", help="reference prior on the shipped asset: NeRF + SDS + export, on CPU")
    d.add_argument("args", nargs="*", help="key=value overrides")
    d.set_defaults(func=cmd_demo)
    e = sub.add_parser("export", help="re-export a run from its checkpoint (key=value overrides allowed)")
    e.add_argument("run_dir")
    e.add_argument("args", nargs="*")
    e.set_defaults(func=cmd_export)
    b = sub.add_parser("batch", help="many prompts, one run folder each (local processes or a Ray cluster)")
    b.add_argument("args", nargs="*", help="PROMPTS file (text, or JSONL with prompt/seed/overrides/image, or edit "
                   "lines: edit/prompt/source_prompt/region/falloff/config), then key=value")
    b.add_argument("--config", "-c", metavar="RECIPE|YAML",
                   help="every job's config: a recipe name from `dreamcore list` or the path of a YAML config")
    b.add_argument("--out", "-o", help="the batch folder (on storage every node sees, for a cluster)")
    b.add_argument("--seeds", help="comma-separated seeds: every prompt runs once per seed")
    b.add_argument("--resume", metavar="DIR", help="continue the batch in DIR from its folder alone")
    b.add_argument("--backend", choices=["local", "ray"], default=None, help="local processes (default) or Ray")
    b.add_argument("--ray-address", default=None, help="auto or HOST:PORT of a running cluster (default: a new "
                   "local one)")
    b.add_argument("--gpus-per-job", type=float, default=None, help="GPUs each job asks for (default 1)")
    b.add_argument("--cpus-per-job", type=int, default=None, help="CPU threads each job uses (default: all for local, 1 for ray)")
    b.add_argument("--retries", type=int, default=None, help="re-runs of a job whose process or node was lost "
                   "(default 3; a job's own error is not retried)")
    b.add_argument("--shard", metavar="I/N", help="run only jobs I, I+N, ... (one SLURM array task each)")
    b.set_defaults(func=cmd_batch)
    s = sub.add_parser("studio", help="the web app (Gradio): queue jobs, watch them, view and download the assets")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (another than localhost needs --auth)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--runs", default="runs/studio", help="the runs folder: the app's only state")
    s.add_argument("--auth", default=None, metavar="FILE", help="a file whose first line is user:password (each "
                   "job then belongs to its user); user:password itself also works, but shows the password to "
                   "every user of the machine in `ps` — the file form keeps it out")
    s.add_argument("--slots", type=int, default=0, help="jobs at once (default: one per visible GPU, else 1)")
    s.add_argument("--threads", type=int, default=0, help="CPU threads per job (default: all)")
    s.add_argument("--limits", default=None, metavar="FILE", help="a YAML mapping of the studio's limits "
                   "(max_steps, max_resolution, max_grid, max_texture_size, max_batch_size, max_views, max_points, "
                   "max_upload_mb, max_image_mb, max_queue, max_per_page; the defaults: StudioLimits in "
                   "dreamcore/studio/safety.py); "
                   "the flags below override it")
    s.add_argument("--max-upload-mb", type=float, default=None, help="mesh upload size limit in MB")
    s.add_argument("--max-image-mb", type=float, default=None, help="picture upload size limit in MB (Image to "
                   "3D; default 10)")
    s.add_argument("--max-queue", type=int, default=None, help="jobs queued or running on the server")
    s.add_argument("--max-per-page", type=int, default=None, help="jobs queued or running per page, or per user "
                   "with --auth")
    s.add_argument("--max-steps", type=int, default=None, help="run.steps of a job (its refinement stage's too)")
    s.add_argument("--cache-dir", default=None, help="Gradio's temp dir: uploads staged, files the page is sent "
                   "(default: .<runs name>-gradio beside the runs folder; never inside it)")
    s.set_defaults(func=cmd_studio)
    ls = sub.add_parser("list", help="list registered components")
    ls.set_defaults(func=cmd_list)
    return p


def _show_log() -> None:
    """Library messages (a texture not found, an STL without colour) go to stderr as ``dreamcore: warning: ...``."""
    logger = logging.getLogger("dreamcore")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dreamcore: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for level in (logging.INFO, logging.WARNING):
        logging.addLevelName(level, logging.getLevelName(level).lower())


def main(argv: list[str] | None = None) -> int:
    _show_log()
    parser = build_parser()
    # prompt words and key=value overrides may come before or after options: collect the leftovers too
    ns, extra = parser.parse_known_args(argv)
    flags = [a for a in extra if a.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    if extra:
        if not hasattr(ns, "args"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        ns.args = list(ns.args) + extra
    try:
        return ns.func(ns)
    except DreamcoreError as e:
        print(f"dreamcore: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"dreamcore: error: could not write{where}: {problem}; what the run had saved "
              "before (its checkpoints) is kept. Fix the storage and resume.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
