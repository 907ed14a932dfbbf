"""Text-only benchmark: text-to-3D recipes × guidances × priors on the objects the tiny priors were trained on.

For every object of the prior folder (``dreamcore_prior.json``: the objects it was trained on) and ``--seeds``
seeds, each recipe (``--recipes``; default the two 2D recipes ``text-nerf``, ``text-gaussians`` and the two
multi-view ones ``text-mv-nerf``, ``text-mv-gaussians``) runs with each guidance (``--guidances``, default every
registered one: a recipe's own guidance at the recipe's own settings, any other at the method's defaults plus
:data:`GUIDANCE_OVERRIDES`) on each prior kind that suits it:

* ``learned`` (2D recipes) — the tiny pixel-space model (``prior.name=pixel-diffusion prior.model=<--prior-folder>``):
  it knows the object only from single 2D images and the words of their captions;
* ``reference`` (2D recipes) — the view-labelled reference prior of the same mesh (``prior.name=reference
  prior.camera_conditioned=false``): an exact, memorizing 2D prior of the object's views, with "front view" etc.
  meaning the views so labelled, and no camera;
* ``multiview`` (the recipes whose own ``prior.name`` is ``multiview``, and only those) — the tiny multi-view
  model (``prior.name=multiview prior.model=<--mv-prior-folder>``, default ``assets/tiny-mv-prior``): it denoises
  four views of one object together, each tagged with its camera. Left out with a note when that folder does not
  exist, unless asked for by name (``--priors``, ``--recipes`` or ``--mv-prior-folder``).

Each run is an ordinary ``dreamcore generate`` whose exported ``model.glb`` is scored against the named object
(``eval.mesh``, read only after the run) at held-out cameras — silhouette IoU, PSNR, depth error, Janus score —
and, across seeds, the diversity (mean pairwise RMS difference of the seeds' GLB renders on a ring of views).

Object accuracy asks whether the asset is recognisably the object it was asked for rather than one of the others:
the GLB and every benchmark object (normalized into the scene as the runs' scoring normalizes them) are rendered
at one fixed set of held-out cameras (:data:`ACCURACY`: 16 seeded orbit views over the recipes' eval elevations,
64 px, white background); the score is the fraction of those cameras at which the GLB's PSNR to the named object
beats its PSNR to each other object. It is computed here, after the runs (finished runs reused from an earlier
invocation get it too), and kept in the run folder (``object_accuracy.json``); with one object it is undefined.

The tables report medians over seeds; timings are measured in this one invocation on whatever machine runs it.
Floors: 2D rows — IoU ≥ 0.80, PSNR ≥ 18 dB, Janus ≤ 0.20; multi-view rows — IoU ≥ 0.90, Janus 0 (≤ 0.005),
object accuracy ≥ 0.95; both ≤ 600 s per run. Per object, the report also gives the PSNR gain of each multi-view
recipe over its 2D counterpart on the learned prior (text-mv-nerf over text-nerf, text-mv-gaussians over
text-gaussians; same guidance, same invocation), which should be ≥ 2 dB.

Every finished run becomes a **row** (``tools/bench_rows.py``): ``--rows`` (default ``bench/text_to_3d/rows``)
``/<recipe>-<guidance>-<prior>-<object>-<seed>.json`` with its scores, object accuracy, teacher gap (GLB PSNR minus
the prior's own sample PSNR to that object, from its ``dreamcore_prior.json``), wall time, thread count, commit and
config hash, and the GLB's ring frames beside it (``.png``). A run whose row has the hash of the config it would
run with is not run again; the report, its ``.json`` and the picture are built from every row present, so a grid
is filled a few runs at a time and committed as it grows. Runs go one seed of every method first; ``--budget
MINUTES`` starts no run that would end past the budget (its expected time: the median of the present rows of the
same recipe).

Writes ``--out`` (default ``bench/text_to_3d.md``) and a picture beside it (``.png``: the true objects on the top
row, then one row per method, labelled, with the turntable frames of each object and seed); with ``--docs
docs/benchmarks.md`` the same tables replace that page's marked ``bench_text_to_3d`` section
(``tools/docs_section.py``).

    .venv/bin/python tools/bench_text_to_3d.py --docs docs/benchmarks.md   # + its tables there (hours on 2 cores)
    .venv/bin/python tools/bench_text_to_3d.py --guidances sds --seeds 1
    .venv/bin/python tools/bench_text_to_3d.py --recipes text-mv-nerf,text-nerf --guidances sds --seeds 1
    .venv/bin/python tools/bench_text_to_3d.py --guidances sds --budget 60   # an hour's worth of missing rows
    .venv/bin/python tools/bench_text_to_3d.py --quick --work /tmp/q   # CI's short grid (~15 min)
    .venv/bin/python tools/bench_text_to_3d.py --smoke               # a smoke run of the tool itself
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamcore.files import resolve_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rows  # noqa: E402  (tools/, beside this script)

PRIORS = ("learned", "reference", "multiview")
PRIORS_2D = ("learned", "reference")
RECIPES = ("text-nerf", "text-gaussians", "text-mv-nerf", "text-mv-gaussians")
MV_FOLDER = "assets/tiny-mv-prior"
FLOORS = {"glb_iou": 0.80, "glb_psnr": 18.0, "glb_janus": 0.20, "seconds": 600.0}
# multi-view rows: no Janus at all (0 at the report's two decimals), a tighter silhouette, the right object
MV_FLOORS = {"glb_iou": 0.90, "glb_janus": 0.005, "object_accuracy": 0.95, "seconds": 600.0}
UPPER_BOUNDS = ("glb_janus", "seconds")  # floors that are ceilings
FLOOR_NAMES = {"glb_iou": "IoU", "glb_psnr": "PSNR", "glb_janus": "Janus", "object_accuracy": "obj acc",
               "seconds": "s/run"}
# each multi-view recipe against its 2D counterpart (same representation) on the learned prior
MV_BASELINES = {"text-mv-nerf": "text-nerf", "text-mv-gaussians": "text-gaussians"}
MV_GAIN_DB = 2.0
# object accuracy's held-out cameras: one seeded set for every run (the recipes' eval elevations, a fixed orbit)
ACCURACY = {"views": 16, "seed": 2024, "elevation_range": [-10.0, 80.0], "distance": 3.2, "fov": 40.0,
            "resolution": 64}
# per-guidance settings when a recipe runs a method other than its own (the rest are the method's defaults)
# ω = 7.5 — the recipes' own, what the tiny prior's CFG is tuned for — where a method's official ω was set for SD
# at threestudio's 100 (stein: DreamFusion's; cds, cfd, reward: their repos' SD values; rsd: SDS's, which it extends)
GUIDANCE_OVERRIDES: dict[str, list[str]] = {
    m: ["guidance.guidance_scale=7.5"] for m in ("stein", "cds", "cfd", "reward", "rsd")}
# reward: no CLIP weights here and the similarity reward needs the reference prior, so the row runs the linear probe
# reward on the one-step x̂_0 — it measures the method's cost and that ranking N noises keeps the run healthy, not
# what a learned reward buys
GUIDANCE_OVERRIDES["reward"] += ["guidance.reward.model.name=linear", "guidance.reward.ddim_steps=0"]
# sir: the targets sampled as the tiny priors want their samples (ω 5, η 0: tools/train_tiny_prior.py's sampler);
# MicroDreamer's ω 3 / η 0.5 were set for Stable-Zero123 (pilots on text-mv-nerf: bench/speed.md)
GUIDANCE_OVERRIDES["sir"] = ["guidance.guidance_scale=5.0", "guidance.eta=0.0"]
COMMON = ["run.progress=false", "run.val_every=0", "export.formats=[glb]"]
SMOKE = ["run.steps=6", "run.checkpoint_every=0", "camera.batch_size=1", "eval.views=4", "eval.resolution=32",
         "eval.janus_views=4", "export.resolution=48", "export.texture_size=64"]
# --quick: CI's short grid — the 2D recipe and its multi-view counterpart on the four objects, one seed, each recipe
# with its schedules scaled to 3/8 of its steps (text-nerf and text-mv-nerf: 300 of 800); about 10 min on 2 cores
QUICK = ["run.time_scale=0.375"]
QUICK_RECIPES = ["text-nerf", "text-mv-nerf"]
QUICK_PRIORS = ["learned", "multiview"]
QUICK_OBJECTS = 4
RING = 4  # frames per object and seed in the picture (azimuths 0, 90, 180, 270)
RING_RES = 48  # px of each ring frame kept beside a row (the picture and the diversity are made from them)
ROWS = "bench/text_to_3d/rows"


def prior_objects(folder: Path) -> list[dict]:
    """The objects a prior folder was trained on: [{"prompt", "path"}] with paths that exist here."""
    meta = json.loads((folder / "dreamcore_prior.json").read_text())
    out = []
    for o in meta["objects"]:
        for cand in (o.get("path", ""), f"assets/{o['file']}", str(folder / o["file"])):
            if cand and resolve_path(cand).is_file():
                out.append({"prompt": o["prompt"], "path": str(resolve_path(cand))})
                break
        else:
            raise SystemExit(f"{folder}: cannot find the mesh of {o['prompt']!r} ({o['file']}): give --object")
    return out


def default_objects(*folders: Path) -> list[dict]:
    """The objects of the first of ``folders`` that lists them (the 2D prior's, else the multi-view prior's)."""
    for folder in folders:
        if (folder / "dreamcore_prior.json").is_file():
            return prior_objects(folder)
    raise SystemExit(f"no dreamcore_prior.json in {', '.join(map(str, folders))}: give the objects with --object")


def parse_object(spec: str) -> dict:
    path, _, prompt = spec.partition(":")
    if not prompt.strip() or not resolve_path(path).is_file():
        raise SystemExit(f"--object {spec!r}: expected an existing MESH:PROMPT")
    return {"prompt": prompt.strip(), "path": str(resolve_path(path))}


@functools.lru_cache(maxsize=None)
def recipe_config(recipe: str):
    from dreamcore.config import config_path, load_config

    return load_config(config_path(recipe))


def recipe_guidance(recipe: str) -> str:
    return recipe_config(recipe).guidance.name


def is_multiview(recipe: str) -> bool:
    """Whether the recipe's own prior is the multi-view one (it then runs on the ``multiview`` prior kind only)."""
    return recipe_config(recipe).prior.name == "multiview"


def pairs(recipe: str, prior: str) -> bool:
    """Whether ``recipe`` runs on ``prior``: multi-view recipes on ``multiview`` only, 2D ones never on it."""
    return (prior == "multiview") == is_multiview(recipe)


def smoke_overrides(recipe: str) -> list[str]:
    """:data:`SMOKE`, with one whole group of the prior's views per step for a multi-view recipe."""
    if not is_multiview(recipe):
        return list(SMOKE)
    views = int(getattr(recipe_config(recipe).prior, "views", 4))
    return [f"camera.batch_size={views}" if o.startswith("camera.batch_size=") else o for o in SMOKE]


def run_overrides(recipe: str, guidance: str, prior: str, obj: dict, seed: int, folder: Path,
                  mv_folder: Path | None = None) -> list[str]:
    """The ``key=value`` list of one run (prompt, prior, guidance, seed, the scored mesh)."""
    out = [f"prompt={obj['prompt']}", f"run.seed={seed}", f"eval.mesh={obj['path']}"]
    if prior == "learned":
        out += ["prior.name=pixel-diffusion", f"prior.model={folder}"]
    elif prior == "multiview":
        out += ["prior.name=multiview", f"prior.model={mv_folder or resolve_path(MV_FOLDER)}"]
    else:
        out += ["prior.name=reference", "prior.camera_conditioned=false", f"prior.reference.mesh={obj['path']}"]
    if guidance != recipe_guidance(recipe):
        out += [f"guidance.name={guidance}"] + GUIDANCE_OVERRIDES.get(guidance, [])
    return out


def slug(*parts) -> str:
    return "-".join(str(p).replace(" ", "_").replace("/", "_") for p in parts)


def run_args(job: dict, extra: list[str]) -> list[str]:
    """The ``key=value`` overrides a run is started with (its config hash is taken of the config they make)."""
    return [*job["overrides"], *COMMON, *extra]


def planned_hash(job: dict, extra: list[str]) -> str:
    """The config hash (:func:`bench_rows.config_hash`) of the run ``job`` would start."""
    from dreamcore.config import config_path, load_config, to_tree

    return bench_rows.config_hash(to_tree(load_config(config_path(job["recipe"]), run_args(job, extra))))


def folder_hash(run_dir: Path) -> str | None:
    """The config hash of a finished run folder's ``config.yaml`` (None when it cannot be read)."""
    from dreamcore.config import load_config, to_tree

    try:
        return bench_rows.config_hash(to_tree(load_config(run_dir / "config.yaml")))
    except Exception:  # noqa: BLE001 - an unreadable folder is run again, whatever is wrong with it
        return None


def teacher_psnr(folder: Path | None, prompt: str) -> float | None:
    """The prior's own sample PSNR to the named object, from its ``dreamcore_prior.json`` evaluation: the 2D
    tool's mean over that object's captions of ``psnr_named``, the multi-view tool's ``consistency_psnr`` of the
    object; None for a prior without one (the reference prior)."""
    try:
        meta = json.loads((Path(folder) / "dreamcore_prior.json").read_text())
    except (OSError, ValueError, TypeError):
        return None
    ev = meta.get("evaluation") or {}
    names = [o.get("prompt") for o in meta.get("objects", [])]
    if prompt not in names:
        return None
    for o in ev.get("per_object", []):
        if o.get("prompt") == prompt and isinstance(o.get("consistency_psnr"), (int, float)):
            return float(o["consistency_psnr"])
    vals = [c["psnr_named"] for c in ev.get("per_caption", [])
            if c.get("object") == names.index(prompt) and isinstance(c.get("psnr_named"), (int, float))]
    return sum(vals) / len(vals) if vals else None


def save_ring(glb: Path, path: Path, prior: str | None, object_path: str | None) -> None:
    """The GLB's :data:`RING` frames (:data:`RING_RES` px, side by side) as a PNG beside its row."""
    import numpy as np
    from PIL import Image

    frames = ring_frames(glb, RING_RES, prior, object_path)
    arr = (frames.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(np.concatenate(list(arr), axis=1)).save(path)


def load_ring(path: Path):
    """[RING, R, R, 3] frames in [0, 1] from a PNG written by :func:`save_ring`; None when it is missing."""
    import numpy as np
    import torch
    from PIL import Image

    if not Path(path).is_file():
        return None
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    r = arr.shape[0]
    return torch.from_numpy(arr).reshape(r, arr.shape[1] // r, r, 3).permute(1, 0, 2, 3).contiguous()


def make_row(job: dict, metrics: dict, seconds: float | None, threads: int | None, commit: str | None,
             scored: list[dict], rows_dir: Path, teacher: float | None) -> dict:
    """The row of a finished run (:mod:`bench_rows`): its scores, object accuracy, teacher gap, wall time, thread
    count, commit and config hash, written to ``rows_dir/<name>.json`` with its ring frames beside it. A job's
    ``row_keys`` (another benchmark's, e.g. the image-to-3D view) are kept in the row too."""
    run_dir = Path(job["dir"])
    rows_dir = Path(rows_dir)
    rows_dir.mkdir(parents=True, exist_ok=True)
    keep = ("recipe", "guidance", "prior", "object", "seed", "name", "config_hash", *job.get("row_keys", ()))
    row = {k: job[k] for k in keep}
    row["object_path"] = bench_rows.relative_path(job["object_path"])
    row["dir"] = bench_rows.relative_path(run_dir)  # where the run folder was (not kept by the benchmark)
    row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    row["object_accuracy"] = run_object_accuracy({**job, **metrics}, scored)
    row["teacher_psnr"] = teacher
    psnr = metrics.get("glb_psnr")
    row["teacher_gap"] = psnr - teacher if isinstance(psnr, (int, float)) and teacher is not None else None
    row.update({"seconds": seconds, "threads": threads, "cpu_count": os.cpu_count(), "commit": commit,
                "made": time.strftime("%Y-%m-%d %H:%M:%S")})
    glb = run_dir / "model.glb"
    if glb.is_file():
        save_ring(glb, rows_dir / f"{job['name']}.png", job.get("prior"), job.get("object_path"))
        row["ring"] = f"{job['name']}.png"
    bench_rows.write_row(rows_dir / f"{job['name']}.json", row)
    return row


def run_one(job: dict, extra: list[str], threads: int, scored: list[dict] | None = None,
            rows_dir: Path | None = None, teacher: float | None = None) -> dict:
    """One run's result: its row (``rows_dir``) when the row's config hash is the job's (no run at all); else the
    finished run folder when its ``config.yaml`` has that hash; else ``dreamcore generate`` in a subprocess (its
    own process: a crash is one failed row), with the job's ``cli`` arguments (e.g. ``--image PICTURE --prompt
    TEXT``) before its overrides. A finished run becomes a row."""
    run_dir = Path(job["dir"])
    scored = scored if scored is not None else [{"prompt": job["object"], "path": job["object_path"]}]
    row_file = Path(rows_dir) / f"{job['name']}.json" if rows_dir is not None else None
    want = job.get("config_hash")
    if row_file is not None and want:
        row = bench_rows.read_row(row_file)
        if row is not None and row["config_hash"] == want:
            return {**job, **row, "row_file": str(row_file), "reused": True}
    metrics_file, wall_file = run_dir / "metrics.json", run_dir / "bench_seconds.txt"
    commit_file, threads_file = run_dir / "bench_commit.txt", run_dir / "bench_threads.txt"
    if metrics_file.is_file() and (not want or folder_hash(run_dir) == want):
        # a finished run: its scores, and the wall time, threads and commit it ran with
        seconds = float(wall_file.read_text()) if wall_file.is_file() else None
        m = json.loads(metrics_file.read_text())
        out = {**job, **m, "seconds": seconds, "reused": True}
        if row_file is not None and want:
            commit = commit_file.read_text().strip() if commit_file.is_file() else None
            ran_threads = int(threads_file.read_text()) if threads_file.is_file() else None
            out.update(make_row(job, m, seconds, ran_threads, commit, scored, rows_dir, teacher), reused=True)
        return out
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    commit = bench_rows.git_commit()
    commit_file.write_text(f"{commit}\n")
    threads_file.write_text(f"{threads}\n")
    args = [sys.executable, "-m", "dreamcore.cli", "generate", *job.get("cli", ()), "--config", job["recipe"],
            *run_args(job, extra), f"run.threads={threads}", f"run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not metrics_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  FAILED {job['name']}: {' | '.join(tail)}", flush=True)
        return {**job, "error": " | ".join(tail), "seconds": round(wall, 1)}
    m = json.loads(metrics_file.read_text())
    wall_file.write_text(f"{wall:.1f}\n")
    print(f"  {job['name']}: IoU {m.get('glb_iou')} PSNR {m.get('glb_psnr')} Janus {m.get('glb_janus')} "
          f"{wall:.0f} s", flush=True)
    out = {**job, **m, "seconds": round(wall, 1)}
    if row_file is not None and want:
        out.update(make_row(job, m, round(wall, 1), threads, commit, scored, rows_dir, teacher))
    return out


def ring_of(asset, resolution: int, elevation: float = 15.0):
    """[RING, H, W, 3] renders of a mesh asset (in the scene frame) at azimuths 0, 90, 180, 270 over white."""
    import torch

    from dreamcore.cameras import turntable_cameras
    from dreamcore.meshes.render import render_mesh

    cams = turntable_cameras(RING, elevation, 3.2, 40.0)
    return render_mesh(asset, cams, resolution, resolution, supersample=2, background=torch.ones(RING, 3)).rgb


def glb_in_scene(glb: Path, prior: str | None = None, object_path: str | None = None):
    """An exported GLB in the scene frame of its run, where the scoring renders it: a ``reference`` run writes
    its GLB in the frame of the reference mesh (the scene transform undone), the other priors in the scene's."""
    from dataclasses import replace

    from dreamcore.meshes.io import load_mesh, normalize

    asset = load_mesh(glb)
    if prior == "reference" and object_path:
        transform = normalize(load_mesh(object_path))[1]
        asset = replace(asset, vertices=transform.to_scene(asset.vertices))
    return asset


def ring_frames(glb: Path, resolution: int, prior: str | None = None, object_path: str | None = None):
    """The ring of an exported GLB (in the scene frame of its run)."""
    return ring_of(glb_in_scene(glb, prior, object_path), resolution)


def target_frames(path: str, resolution: int):
    """The ring of the true object, normalized into the scene as the runs' scoring does."""
    from dreamcore.meshes.io import load_mesh, normalize

    return ring_of(normalize(load_mesh(path))[0], resolution)


def accuracy_cameras():
    """The held-out cameras of object accuracy (:data:`ACCURACY`): the same seeded orbit views for every run."""
    import torch

    from dreamcore.cameras import sample_orbit

    a = ACCURACY
    g = torch.Generator().manual_seed(a["seed"])
    return sample_orbit(a["views"], g, tuple(a["elevation_range"]), (-180.0, 180.0), (a["distance"],) * 2,
                        (a["fov"],) * 2)


def accuracy_views(asset):
    """[V, R, R, 3] renders of an asset (scene frame) at :func:`accuracy_cameras` over white."""
    import torch

    from dreamcore.meshes.render import render_mesh

    cams, r = accuracy_cameras(), ACCURACY["resolution"]
    return render_mesh(asset, cams, r, r, supersample=2, background=torch.ones(len(cams), 3)).rgb


@functools.lru_cache(maxsize=None)
def object_views(path: str):
    """:func:`accuracy_views` of a benchmark object, normalized into the scene as the runs' scoring does."""
    from dreamcore.meshes.io import load_mesh, normalize

    return accuracy_views(normalize(load_mesh(path))[0])


def nearest_objects(views, objects: list[str]) -> list[int]:
    """For each view of ``views`` [V, R, R, 3], the index into ``objects`` (mesh paths) of the object whose render
    at that camera is nearest in PSNR; -1 where the best PSNR is shared (a tie is no recognition)."""
    from dreamcore.metrics import psnr

    renders = [object_views(p) for p in objects]
    out = []
    for v in range(len(views)):
        scores = [psnr(views[v], r[v]) for r in renders]
        best = max(scores)
        out.append(scores.index(best) if scores.count(best) == 1 else -1)
    return out


def object_accuracy(glb: Path, target: str, objects: list[str], prior: str | None = None,
                    nearest: list | None = None) -> float | None:
    """The fraction of :func:`accuracy_cameras` at which the GLB's render (in its run's scene frame, see
    :func:`glb_in_scene`) is nearer, in PSNR, to the object at ``target`` (a mesh path) than to every other object
    of ``objects``; None with no other object. ``nearest``: filled with each view's nearest object path (None
    at a tie)."""
    objects = list(dict.fromkeys([target, *objects]))
    if len(objects) < 2:
        return None
    idx = nearest_objects(accuracy_views(glb_in_scene(glb, prior, target)), objects)
    if nearest is not None:
        nearest.extend(objects[i] if i >= 0 else None for i in idx)
    return sum(i == 0 for i in idx) / len(idx)


def run_object_accuracy(result: dict, objects: list[dict]) -> float | None:
    """:func:`object_accuracy` of a finished run against ``objects``, kept in ``object_accuracy.json`` in its
    folder (reused while the objects and :data:`ACCURACY` are the same; a rerun of the run replaces its folder)."""
    run_dir = Path(result["dir"])
    glb = run_dir / "model.glb"
    if "error" in result or not glb.is_file():
        return None
    paths = list(dict.fromkeys([result["object_path"], *(o["path"] for o in objects)]))
    key = {"target": result["object_path"], "objects": paths, **ACCURACY}
    cache = run_dir / "object_accuracy.json"
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return saved["object_accuracy"]
        except (ValueError, KeyError, AttributeError):
            pass  # unreadable: computed again
    nearest: list = []
    value = object_accuracy(glb, result["object_path"], paths, result.get("prior"), nearest)
    prompts = {o["path"]: o["prompt"] for o in objects}
    cache.write_text(json.dumps({"key": key, "object_accuracy": value,
                                 "nearest": [prompts.get(p, p) if p else None for p in nearest]}, indent=1) + "\n")
    return value


def result_frames(r: dict, resolution: int = RING_RES):
    """A result's ring frames: from its row's ring PNG when it has one (the run folder may be gone), else rendered
    from the GLB in its run folder; None when neither exists."""
    if r.get("ring") and r.get("row_file"):
        frames = load_ring(Path(r["row_file"]).parent / r["ring"])
        if frames is not None:
            if frames.shape[1] != resolution:
                import torch.nn.functional as F

                frames = F.interpolate(frames.permute(0, 3, 1, 2), size=(resolution, resolution), mode="area")
                frames = frames.permute(0, 2, 3, 1)
            return frames
    glb = Path(r["dir"]) / "model.glb" if r.get("dir") else None
    if glb is not None and glb.is_file():
        return ring_frames(glb, resolution, r.get("prior"), r.get("object_path"))
    return None


def diversity(rows: list[dict], resolution: int = RING_RES) -> float | None:
    """Mean pairwise RMS difference of the seeds' GLB ring renders (0: every seed made the same asset)."""
    frames = [f for f in (result_frames(r, resolution) for r in rows) if f is not None]
    if len(frames) < 2:
        return None
    pairs_ = [float((a - b).pow(2).mean().sqrt()) for a, b in itertools.combinations(frames, 2)]
    return sum(pairs_) / len(pairs_)


def median(values):
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def mean(values):
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def row_floors(row: dict) -> dict:
    """The floors of a row: :data:`MV_FLOORS` for multi-view rows, :data:`FLOORS` for 2D ones."""
    return MV_FLOORS if row["prior"] == "multiview" else FLOORS


def floor_failures(row: dict, floors: dict | None = None) -> list[str]:
    """The names of the floors (default :func:`row_floors`) a summary row misses (a missing figure misses its
    floor)."""
    out = []
    for key, bound in (row_floors(row) if floors is None else floors).items():
        v = row.get(key)
        if v is None or (v > bound if key in UPPER_BOUNDS else v < bound):
            out.append(FLOOR_NAMES[key])
    return out


def gain_rows(rows: list[dict]) -> list[dict]:
    """Per object and guidance: the GLB PSNR (median over seeds) of each multi-view recipe minus that of its 2D
    counterpart (:data:`MV_BASELINES`) on the learned prior, where both were run and scored."""
    by = {(r["recipe"], r["guidance"], r["prior"], r["object"]): r for r in rows}
    out = []
    for r in rows:
        base = MV_BASELINES.get(r["recipe"])
        b = by.get((base, r["guidance"], "learned", r["object"])) if r["prior"] == "multiview" else None
        if b is None or r["glb_psnr"] is None or b["glb_psnr"] is None:
            continue
        gain = r["glb_psnr"] - b["glb_psnr"]
        out.append({"recipe": r["recipe"], "baseline": base, "guidance": r["guidance"], "object": r["object"],
                    "psnr": r["glb_psnr"], "baseline_psnr": b["glb_psnr"], "gain": gain, "pass": gain >= MV_GAIN_DB})
    return out


def summarize(results: list[dict], objects: list[dict], seeds: int,
              scored: list[dict] | None = None) -> tuple[list[dict], str]:
    """Rows per (recipe, guidance, prior, object) with medians over seeds, and the markdown report. ``scored``:
    the objects object accuracy chose among (default ``objects``)."""
    scored = objects if scored is None else scored
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["recipe"], r["guidance"], r["prior"], r["object"]), []).append(r)
    rows = []
    for (recipe, guidance, prior, obj), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"recipe": recipe, "guidance": guidance, "prior": prior, "object": obj, "runs": len(rs),
               "failed": len(rs) - len(ok)}
        for key in ("glb_iou", "glb_psnr", "glb_depth_rel", "glb_janus", "glb_chamfer_rel", "object_accuracy",
                    "teacher_gap", "seconds"):
            row[key] = median([r.get(key) for r in ok])
        row["commits"] = sorted({str(r.get("commit") or "?") for r in ok})
        row["diversity"] = diversity(ok)
        row["missed"] = floor_failures(row)
        row["floors"] = bool(ok) and not row["missed"]
        rows.append(row)
    rows.sort(key=lambda r: (r["recipe"], r["guidance"], PRIORS.index(r["prior"]), r["object"]))
    f, mv = FLOORS, MV_FLOORS
    lines = ["# Text-only benchmark", "",
             f"Objects: {', '.join(o['prompt'] for o in objects)}; {seeds} seed(s) each. Medians over seeds of the "
             "exported GLB scored at held-out views against the named object (never seen by the run). "
             f"Object accuracy (obj acc): the fraction of {ACCURACY['views']} fixed held-out views at which the GLB "
             "is nearer, in PSNR, to the named object than to each of the others "
             f"({', '.join(o['prompt'] for o in scored)}; undefined with one). "
             f"Floors of the 2D rows: IoU ≥ {f['glb_iou']}, PSNR ≥ {f['glb_psnr']} dB, Janus ≤ {f['glb_janus']}, "
             f"≤ {f['seconds']:.0f} s per run; of the multi-view rows: IoU ≥ {mv['glb_iou']}, Janus 0 "
             f"(≤ {mv['glb_janus']}), obj acc ≥ {mv['object_accuracy']}, ≤ {mv['seconds']:.0f} s per run.", "",
             "Teacher gap: GLB PSNR minus the prior's own samples' PSNR to the named object (its "
             "`dreamcore_prior.json`: the 2D tool's per-caption mean, the multi-view tool's consistency; – for the "
             "reference prior): how much of its teacher's fidelity the 3D result keeps. Runs: the seeds scored; "
             "commit: the commit(s) the rows were made at.", "",
             "| recipe | guidance | prior | object | IoU | PSNR (dB) | depth err | Janus | Chamfer | obj acc | "
             "teacher gap (dB) | diversity | s/run | runs | commit | floors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        verdict = "pass" if r["floors"] else "FAIL" + (f": {', '.join(r['missed'])}" if r["missed"] else "")
        lines.append(f"| {r['recipe']} | {r['guidance']} | {r['prior']} | {r['object']} | {fmt(r['glb_iou'], 3)} | "
                     f"{fmt(r['glb_psnr'])} | {fmt(r['glb_depth_rel'], 4)} | {fmt(r['glb_janus'])} | "
                     f"{fmt(r['glb_chamfer_rel'], 4)} | {fmt(r['object_accuracy'])} | "
                     f"{'–' if r['teacher_gap'] is None else format(r['teacher_gap'], '+.2f')} | "
                     f"{fmt(r['diversity'], 3)} | {fmt(r['seconds'], 0)} | {r['runs']} | {', '.join(r['commits'])} | "
                     f"{verdict}{failed} |")
    per_method: dict[tuple, list[dict]] = {}
    for r in rows:
        per_method.setdefault((r["recipe"], r["guidance"], r["prior"]), []).append(r)
    lines += ["", "Per method, over objects (mean of the per-object medians; objects passing every floor of the row's "
              "kind):", "",
              "| recipe | guidance | prior | IoU | PSNR (dB) | Janus | obj acc | objects at the floors |",
              "|---|---|---|---|---|---|---|---|"]
    for (recipe, guidance, prior), rs in per_method.items():
        avg = lambda k: mean([r[k] for r in rs])  # noqa: E731
        lines.append(f"| {recipe} | {guidance} | {prior} | {fmt(avg('glb_iou'), 3)} | {fmt(avg('glb_psnr'))} | "
                     f"{fmt(avg('glb_janus'))} | {fmt(avg('object_accuracy'))} | "
                     f"{sum(r['floors'] for r in rs)}/{len(rs)} |")
    gains = gain_rows(rows)
    if gains:
        lines += ["", "GLB PSNR gain of each multi-view recipe over its 2D recipe on the learned prior, per object "
                  f"(same guidance, this invocation; medians over seeds; asked: ≥ {MV_GAIN_DB:g} dB):", "",
                  "| multi-view recipe | 2D recipe | guidance | object | PSNR multi-view (dB) | PSNR 2D (dB) | "
                  f"gain (dB) | ≥ {MV_GAIN_DB:g} dB |", "|---|---|---|---|---|---|---|---|"]
        for g in gains:
            lines.append(f"| {g['recipe']} | {g['baseline']} | {g['guidance']} | {g['object']} | {fmt(g['psnr'])} | "
                         f"{fmt(g['baseline_psnr'])} | {g['gain']:+.2f} | {'pass' if g['pass'] else 'FAIL'} |")
    return rows, "\n".join(lines) + "\n"


def picture(path: Path, results: list[dict], objects: list[dict], seeds: int, res: int = 40) -> None:
    """The true objects on the first row, then one labelled row per method (recipe/guidance/prior): for each
    object and seed the GLB's RING frames."""
    import numpy as np
    from PIL import Image, ImageDraw

    methods = sorted({(r["recipe"], r["guidance"], r["prior"]) for r in results},
                     key=lambda m: (m[0], m[1], PRIORS.index(m[2])))
    by = {(r["recipe"], r["guidance"], r["prior"], r["object"], r["seed"]): r for r in results}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([190] + [int(measure.textlength("/".join(m))) + 10 for m in methods])
    gap = 6
    block = RING * res + gap
    width = label_w + len(objects) * seeds * block
    img = Image.new("RGB", (width, (len(methods) + 1) * (res + 4) + 14), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    def paste(frames, x, y):
        arr = (frames.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        img.paste(Image.fromarray(np.concatenate(list(arr), axis=1)), (x, y))

    for oi, o in enumerate(objects):
        x0 = label_w + oi * seeds * block
        draw.text((x0, 1), o["prompt"], fill=(0, 0, 0))
        truth = target_frames(o["path"], res)
        for s in range(seeds):
            paste(truth, x0 + s * block, 14)
    draw.text((4, 14 + res // 2 - 6), "true object", fill=(0, 0, 0))
    for mi, m in enumerate(methods):
        y = 14 + (mi + 1) * (res + 4)
        draw.text((4, y + res // 2 - 6), "/".join(m), fill=(0, 0, 0))
        for oi, o in enumerate(objects):
            for s in range(seeds):
                r = by.get((*m, o["prompt"], s))
                frames = result_frames(r, res) if r else None
                if frames is not None:
                    paste(frames, label_w + (oi * seeds + s) * block, y)
    img.save(path)


def usable_priors(recipes: list[str], priors: list[str], mv_folder: Path, asked: bool) -> list[str]:
    """``priors`` less ``multiview`` when the multi-view prior folder is missing (with a note; an error when
    ``asked``: the multi-view runs were asked for by name), with a note for each recipe left with no prior."""
    priors = list(priors)
    mv_recipes = [r for r in recipes if is_multiview(r)]
    if "multiview" in priors and mv_recipes and not mv_folder.is_dir():
        missing = (f"no multi-view prior at {mv_folder} (tools/train_tiny_prior.py --views 4 trains one; "
                   "--mv-prior-folder names another)")
        if asked:
            raise SystemExit(f"{missing}: cannot run {', '.join(mv_recipes)}")
        print(f"note: {missing}: the multiview rows ({', '.join(mv_recipes)}) are left out", flush=True)
        priors.remove("multiview")
    for r in recipes:
        if not any(pairs(r, p) for p in priors):
            print(f"note: {r} runs on {'multiview' if is_multiview(r) else ' or '.join(PRIORS_2D)} only, not "
                  f"among the priors {','.join(priors) or '(none)'}: left out", flush=True)
    return priors


def plan(recipes: list[str], guidances: list[str], priors: list[str], objects: list[dict], seeds: int,
         folder: Path, mv_folder: Path, work: Path) -> list[dict]:
    """The runs: every recipe × guidance × paired prior (:func:`pairs`) × object × seed."""
    jobs = []
    for recipe, guidance, prior, obj, seed in itertools.product(recipes, guidances, priors, objects, range(seeds)):
        if not pairs(recipe, prior):
            continue
        name = slug(recipe, guidance, prior, obj["prompt"], seed)
        jobs.append({"name": name, "recipe": recipe, "guidance": guidance, "prior": prior, "object": obj["prompt"],
                     "object_path": obj["path"], "seed": seed, "dir": str(work / name),
                     "overrides": run_overrides(recipe, guidance, prior, obj, seed, folder, mv_folder)})
    return jobs


def informative_order(jobs: list[dict]) -> list[dict]:
    """The most informative runs first: every method and object at seed 0, then every one at seed 1, ..."""
    return sorted(jobs, key=lambda j: j["seed"])  # stable: recipe × guidance × prior × object order within a seed


class BudgetGate:
    """Whether a run may start under a budget of ``minutes`` (None: always): a run whose row is already there
    costs nothing; another starts only if the time spent plus its expected time (the median wall time of the
    present rows of its recipe and guidance, else of its recipe, else nothing: :attr:`matches`) stays within the
    budget."""

    matches: tuple[tuple[str, ...], ...] = (("recipe", "guidance"), ("recipe",))

    def __init__(self, minutes: float | None, rows: list[dict], t0: float):
        self.limit = None if minutes is None else 60.0 * minutes
        self.t0 = t0
        self.rows = rows

    def expected(self, job: dict) -> float:
        for match in self.matches:
            secs = [r["seconds"] for r in self.rows if all(r.get(k) == job[k] for k in match)
                    and isinstance(r.get("seconds"), (int, float))]
            if secs:
                return statistics.median(secs)
        return 0.0

    def may_start(self, job: dict, rows_dir: Path | None = None) -> bool:
        if self.limit is None:
            return True
        if rows_dir is not None:
            row = bench_rows.read_row(Path(rows_dir) / f"{job['name']}.json")
            if row is not None and row["config_hash"] == job.get("config_hash"):
                return True
        return time.perf_counter() - self.t0 + self.expected(job) <= self.limit


def run_all(jobs: list[dict], run, budget: float | None, rows_dir: Path, workers: int,
            gate_class=BudgetGate) -> tuple[list[dict], float]:
    """``run(job)`` for every job, ``workers`` at a time, those the budget (``gate_class``, MINUTES or None) lets
    start; the others come back marked ``skipped``. Returns the results and the start time."""
    t0 = time.perf_counter()
    gate = gate_class(budget, bench_rows.load_rows(rows_dir), t0)

    def one(j):
        if not gate.may_start(j, rows_dir):
            return {**j, "skipped": "budget"}
        return run(j)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs)), t0


def shown_objects(objects: list[dict], present: list[dict]) -> list[dict]:
    """``objects``, then the other objects of the rows ``present`` (a report shows every row)."""
    names = {o["prompt"] for o in objects}
    return list(objects) + list({r["object"]: {"prompt": r["object"], "path": str(resolve_path(r["object_path"]))}
                                 for r in present if r["object"] not in names}.values())


def invocation_note(jobs: list[dict], results: list[dict], t0: float, present: list[dict], rows_dir: Path,
                    how: str, reused_from: str = "rows") -> str:
    """The report's closing line: what this invocation planned, ran (``how``), reused, lost and left."""
    skipped = sum(bool(r.get("skipped")) for r in results)
    failed = sum("error" in r for r in results)
    ran = sum(not r.get("reused") and not r.get("skipped") and "error" not in r for r in results)
    return (f"\nThis invocation: {len(jobs)} runs planned, {ran} run in {time.perf_counter() - t0:.0f} s ({how}), "
            f"{len(jobs) - ran - skipped - failed} reused from {reused_from}, {failed} failed"
            + (f", {skipped} left for a later budget" if skipped else "")
            + f"; the report holds all {len(present)} rows of {bench_rows.relative_path(rows_dir)}.\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior-folder", default="assets/tiny-prior", help="the learned 2D prior (and its objects)")
    ap.add_argument("--mv-prior-folder", default=None,
                    help=f"the multi-view prior of the multiview prior kind (default {MV_FOLDER})")
    ap.add_argument("--object", action="append", default=[], metavar="MESH:PROMPT",
                    help="objects to run (default: the prior folder's own)")
    ap.add_argument("--recipes", default=None, help=f"comma-separated (default {','.join(RECIPES)})")
    ap.add_argument("--guidances", default="", help="comma-separated (default: every registered guidance)")
    ap.add_argument("--priors", default=None, help=f"comma-separated (default {','.join(PRIORS)}; each recipe "
                    "runs on those that suit it)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each on --threads threads)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="bench/text-to-3d-runs", help="run folders (kept: a rerun reuses them)")
    ap.add_argument("--out", default="bench/text_to_3d.md")
    ap.add_argument("--rows", default=None, help=f"row files, one per finished run (default {ROWS}; with --quick "
                    "or --smoke, WORK/rows)")
    ap.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="start no run that would end past this many minutes (runs ordered one seed of every "
                    "method first); the rows so far make the report")
    ap.add_argument("--docs", default=None, metavar="PAGE",
                    help="also rewrite this page's bench_text_to_3d section (docs/benchmarks.md) with the tables")
    ap.add_argument("--quick", action="store_true",
                    help=f"CI's short grid: {' and '.join(QUICK_RECIPES)} (unless --recipes) on the first "
                    f"{QUICK_OBJECTS} objects, 1 seed, the recipe's guidance, schedules scaled to 3/8 of the steps")
    ap.add_argument("--smoke", action="store_true",
                    help="smoke run of the tool: 1 object (object accuracy still against all), 1 seed, sds, 6 steps")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    args = ap.parse_args(argv)
    from dreamcore.guidance.editing import generation_methods

    if args.quick and args.smoke:
        raise SystemExit("--quick and --smoke: choose one")
    folder = resolve_path(args.prior_folder)
    mv_folder = resolve_path(args.mv_prior_folder or MV_FOLDER)
    default_recipes, default_priors = (QUICK_RECIPES, QUICK_PRIORS) if args.quick else (RECIPES, PRIORS)
    recipes = [r for r in (args.recipes or ",".join(default_recipes)).split(",") if r]
    priors = [p for p in (args.priors or ",".join(default_priors)).split(",") if p]
    bad = [p for p in priors if p not in PRIORS]
    if bad:
        raise SystemExit(f"--priors: unknown {bad}; valid: {', '.join(PRIORS)}")
    asked = args.mv_prior_folder is not None or args.priors is not None or args.recipes is not None
    priors = usable_priors(recipes, priors, mv_folder, asked)
    objects = [parse_object(o) for o in args.object] or default_objects(folder, mv_folder)
    scored = list(objects)  # object accuracy chooses among all of them, even when a short run runs a few
    guidances = [g for g in args.guidances.split(",") if g] or generation_methods()
    extra = list(args.overrides)
    quick = {}
    if args.smoke:
        objects, guidances, args.seeds = objects[:1], guidances[:1] if args.guidances else ["sds"], 1
        quick = {r: smoke_overrides(r) for r in recipes}
    elif args.quick:
        objects = objects if args.object else objects[:QUICK_OBJECTS]
        guidances = guidances if args.guidances else sorted({recipe_guidance(r) for r in recipes})
        args.seeds = 1
        quick = {r: list(QUICK) for r in recipes}
    work = Path(args.work)
    short = args.quick or args.smoke  # their rows stay beside their runs, away from the benchmark's own
    rows_dir = Path(args.rows) if args.rows else (work / "rows" if short else resolve_path(ROWS))
    jobs = informative_order(plan(recipes, guidances, priors, objects, args.seeds, folder, mv_folder, work))
    if not jobs:
        raise SystemExit("no runs: no recipe of --recipes runs on a prior of --priors")
    for j in jobs:
        j["config_hash"] = planned_hash(j, quick.get(j["recipe"], []) + extra)
    teachers = {"learned": folder, "multiview": mv_folder}
    combos = list(dict.fromkeys(f"{j['recipe']}/{j['prior']}" for j in jobs))
    print(f"{len(jobs)} runs ({len(combos)} recipe/prior pairs: {', '.join(combos)}; × {len(guidances)} guidances × "
          f"{len(objects)} objects × {args.seeds} seeds), {args.jobs} at a time; rows in {rows_dir}"
          + (f"; budget {args.budget:g} min" if args.budget else ""), flush=True)
    results, t0 = run_all(jobs, lambda j: run_one(j, quick.get(j["recipe"], []) + extra, args.threads, scored,
                                                  rows_dir, teacher_psnr(teachers.get(j["prior"]), j["object"])),
                          args.budget, rows_dir, args.jobs)
    failed = [r for r in results if "error" in r]
    # the report: every row present (this invocation's and earlier ones'), and this invocation's failures
    present = bench_rows.load_rows(rows_dir)
    report_results = present + failed
    shown = shown_objects(objects, present)
    seeds = max([r.get("seed", 0) + 1 for r in report_results] + [1])
    rows, report = summarize(report_results, shown, seeds, scored)
    report += invocation_note(jobs, results, t0, present, rows_dir, f"{args.jobs} at a time", "rows or run folders")
    results = report_results
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    (out.with_suffix(".json")).write_text(json.dumps({"rows": rows, "gains": gain_rows(rows), "runs": results},
                                                     indent=1, default=str))
    picture(out.with_suffix(".png"), results, shown, seeds)
    if args.docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_text_to_3d", report)
    print(report)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
