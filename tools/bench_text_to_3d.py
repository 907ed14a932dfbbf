"""Text-only benchmark: text-to-3D recipes × guidances × priors on the objects a learned tiny prior knows.

For every object prompt of the prior folder (``dreamcore_prior.json``: the objects it was trained on) and
``--seeds`` seeds, each recipe (``--recipes``, default ``text-nerf`` and ``text-gaussians``) runs with each
guidance (``--guidances``, default every registered one, at the recipe's own settings for its own guidance and
at the method's defaults plus :data:`GUIDANCE_OVERRIDES` otherwise) on each prior:

* ``learned`` — the tiny pixel-space model (``prior.name=pixel-diffusion prior.model=<folder>``): it knows the
  object only from 2D images and the words of its captions;
* ``reference`` — the view-labelled reference prior of the same mesh (``prior.name=reference
  prior.camera_conditioned=false``): an exact, memorizing 2D prior of the object's views, with "front view" etc.
  meaning the views so labelled, and no camera.

Each run is an ordinary ``dreamcore generate`` whose exported ``model.glb`` is scored against the named object
(``eval.mesh``, read only after the run) at held-out cameras — silhouette IoU, PSNR, depth error, Janus score —
and, across seeds, the diversity (mean pairwise RMS difference of the seeds' GLB renders on a ring of views).
The table reports medians over seeds; timings are measured in this one run on whatever machine runs it.

Writes ``--out`` (default ``bench/text_to_3d.md``) and a picture beside it (``.png``: one row per method, the
turntable frames of each object and seed, the true object on top); with ``--docs docs/benchmarks.md`` the same
tables replace that page's marked ``bench_text_to_3d`` section (``tools/docs_section.py``).

    .venv/bin/python tools/bench_text_to_3d.py --docs docs/benchmarks.md   # + its tables there (hours on 2 cores)
    .venv/bin/python tools/bench_text_to_3d.py --guidances sds --seeds 1
    .venv/bin/python tools/bench_text_to_3d.py --quick               # a smoke run of the tool itself
"""

from __future__ import annotations

import argparse
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

PRIORS = ("learned", "reference")
FLOORS = {"glb_iou": 0.80, "glb_psnr": 18.0, "glb_janus": 0.20, "seconds": 600.0}
# per-guidance settings when a recipe runs a method other than its own (the rest are the method's defaults)
# ω = 7.5 — the recipes' own, what the tiny prior's CFG is tuned for — where a method's official ω was set for SD
# at threestudio's 100 (stein: DreamFusion's; cds, cfd, reward: their repos' SD values)
GUIDANCE_OVERRIDES: dict[str, list[str]] = {
    m: ["guidance.guidance_scale=7.5"] for m in ("stein", "cds", "cfd", "reward")}
# reward: no CLIP weights here and the similarity reward needs the reference prior, so the row runs the linear probe
# reward on the one-step x̂_0 — it measures the method's cost and that ranking N noises keeps the run healthy, not
# what a learned reward buys
GUIDANCE_OVERRIDES["reward"] += ["guidance.reward.model.name=linear", "guidance.reward.ddim_steps=0"]
COMMON = ["run.progress=false", "run.val_every=0", "export.formats=[glb]"]
QUICK = ["run.steps=6", "run.checkpoint_every=0", "camera.batch_size=1", "eval.views=4", "eval.resolution=32",
         "eval.janus_views=4", "export.resolution=48", "export.texture_size=64"]
RING = 4  # frames per object and seed in the picture (azimuths 0, 90, 180, 270)


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


def parse_object(spec: str) -> dict:
    path, _, prompt = spec.partition(":")
    if not prompt.strip() or not resolve_path(path).is_file():
        raise SystemExit(f"--object {spec!r}: expected an existing MESH:PROMPT")
    return {"prompt": prompt.strip(), "path": str(resolve_path(path))}


def recipe_guidance(recipe: str) -> str:
    from dreamcore.config import config_path, load_config

    return load_config(config_path(recipe)).guidance.name


def run_overrides(recipe: str, guidance: str, prior: str, obj: dict, seed: int, folder: Path) -> list[str]:
    """The ``key=value`` list of one run (prompt, prior, guidance, seed, the scored mesh)."""
    out = [f"prompt={obj['prompt']}", f"run.seed={seed}", f"eval.mesh={obj['path']}"]
    if prior == "learned":
        out += ["prior.name=pixel-diffusion", f"prior.model={folder}"]
    else:
        out += ["prior.name=reference", "prior.camera_conditioned=false", f"prior.reference.mesh={obj['path']}"]
    if guidance != recipe_guidance(recipe):
        out += [f"guidance.name={guidance}"] + GUIDANCE_OVERRIDES.get(guidance, [])
    return out


def slug(*parts) -> str:
    return "-".join(str(p).replace(" ", "_").replace("/", "_") for p in parts)


def run_one(job: dict, extra: list[str], threads: int) -> dict:
    """``dreamcore generate`` in a subprocess (its own process: a crash is one failed row); returns its metrics."""
    run_dir = Path(job["dir"])
    metrics_file, wall_file = run_dir / "metrics.json", run_dir / "bench_seconds.txt"
    if metrics_file.is_file():  # a finished run: its scores, and the wall time it took when it ran
        seconds = float(wall_file.read_text()) if wall_file.is_file() else None
        return {**job, **json.loads(metrics_file.read_text()), "seconds": seconds, "reused": True}
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    args = [sys.executable, "-m", "dreamcore.cli", "generate", "--config", job["recipe"], *job["overrides"],
            *COMMON, *extra, f"run.threads={threads}", f"run.dir={run_dir}"]
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
    return {**job, **m, "seconds": round(wall, 1)}


def ring_of(asset, resolution: int, elevation: float = 15.0):
    """[RING, H, W, 3] renders of a mesh asset (in the scene frame) at azimuths 0, 90, 180, 270 over white."""
    import torch

    from dreamcore.cameras import turntable_cameras
    from dreamcore.meshes.render import render_mesh

    cams = turntable_cameras(RING, elevation, 3.2, 40.0)
    return render_mesh(asset, cams, resolution, resolution, supersample=2, background=torch.ones(RING, 3)).rgb


def ring_frames(glb: Path, resolution: int):
    """The ring of an exported GLB (written in the scene frame of its run)."""
    from dreamcore.meshes.io import load_mesh

    return ring_of(load_mesh(glb), resolution)


def target_frames(path: str, resolution: int):
    """The ring of the true object, normalized into the scene as the runs' scoring does."""
    from dreamcore.meshes.io import load_mesh, normalize

    return ring_of(normalize(load_mesh(path))[0], resolution)


def diversity(rows: list[dict], resolution: int = 48) -> float | None:
    """Mean pairwise RMS difference of the seeds' GLB ring renders (0: every seed made the same asset)."""
    frames = [ring_frames(Path(r["dir"]) / "model.glb", resolution) for r in rows
              if (Path(r["dir"]) / "model.glb").is_file()]
    if len(frames) < 2:
        return None
    pairs = [float((a - b).pow(2).mean().sqrt()) for a, b in itertools.combinations(frames, 2)]
    return sum(pairs) / len(pairs)


def median(values):
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def summarize(results: list[dict], objects: list[dict], seeds: int) -> tuple[list[dict], str]:
    """Rows per (recipe, guidance, prior, object) with medians over seeds, and the markdown report."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["recipe"], r["guidance"], r["prior"], r["object"]), []).append(r)
    rows = []
    for (recipe, guidance, prior, obj), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"recipe": recipe, "guidance": guidance, "prior": prior, "object": obj, "runs": len(rs),
               "failed": len(rs) - len(ok)}
        for key in ("glb_iou", "glb_psnr", "glb_depth_rel", "glb_janus", "glb_chamfer_rel", "seconds"):
            row[key] = median([r.get(key) for r in ok])
        row["diversity"] = diversity(ok)
        row["floors"] = bool(ok) and all(row[k] is not None for k in FLOORS) and (
            row["glb_iou"] >= FLOORS["glb_iou"] and row["glb_psnr"] >= FLOORS["glb_psnr"]
            and row["glb_janus"] <= FLOORS["glb_janus"] and row["seconds"] <= FLOORS["seconds"])
        rows.append(row)
    rows.sort(key=lambda r: (r["recipe"], r["guidance"], PRIORS.index(r["prior"]), r["object"]))
    lines = ["# Text-only benchmark", "",
             f"Objects: {', '.join(o['prompt'] for o in objects)}; {seeds} seed(s) each. Medians over seeds of the "
             "exported GLB scored at held-out views against the named object (never seen by the run). "
             f"Floors: IoU ≥ {FLOORS['glb_iou']}, PSNR ≥ {FLOORS['glb_psnr']} dB, Janus ≤ {FLOORS['glb_janus']}, "
             f"≤ {FLOORS['seconds']:.0f} s per run.", "",
             "| recipe | guidance | prior | object | IoU | PSNR (dB) | depth err | Janus | Chamfer | diversity | "
             "s/run | floors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(f"| {r['recipe']} | {r['guidance']} | {r['prior']} | {r['object']} | {fmt(r['glb_iou'], 3)} | "
                     f"{fmt(r['glb_psnr'])} | {fmt(r['glb_depth_rel'], 4)} | {fmt(r['glb_janus'])} | "
                     f"{fmt(r['glb_chamfer_rel'], 4)} | {fmt(r['diversity'], 3)} | {fmt(r['seconds'], 0)} | "
                     f"{'pass' if r['floors'] else 'FAIL'}{failed} |")
    per_method: dict[tuple, list[dict]] = {}
    for r in rows:
        per_method.setdefault((r["recipe"], r["guidance"], r["prior"]), []).append(r)
    lines += ["", "Per method, over objects (mean of the per-object medians; objects passing every floor):", "",
              "| recipe | guidance | prior | IoU | PSNR (dB) | Janus | objects at the floors |", "|---|---|---|---|---|---|---|"]
    for (recipe, guidance, prior), rs in per_method.items():
        mean = lambda k: (sum(r[k] for r in rs if r[k] is not None) / max(1, sum(r[k] is not None for r in rs)))  # noqa: E731
        lines.append(f"| {recipe} | {guidance} | {prior} | {mean('glb_iou'):.3f} | {mean('glb_psnr'):.2f} | "
                     f"{mean('glb_janus'):.2f} | {sum(r['floors'] for r in rs)}/{len(rs)} |")
    return rows, "\n".join(lines) + "\n"


def picture(path: Path, results: list[dict], objects: list[dict], seeds: int, res: int = 40) -> None:
    """One row per method (recipe/guidance/prior): for each object and seed the GLB's RING frames; the true
    objects on the first row."""
    import numpy as np
    from PIL import Image, ImageDraw

    methods = sorted({(r["recipe"], r["guidance"], r["prior"]) for r in results},
                     key=lambda m: (m[0], m[1], PRIORS.index(m[2])))
    by = {(r["recipe"], r["guidance"], r["prior"], r["object"], r["seed"]): r for r in results}
    label_w, gap = 190, 6
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
        for s in range(seeds):
            paste(target_frames(o["path"], res), x0 + s * block, 14)
    draw.text((4, 14 + res // 2 - 6), "true object", fill=(0, 0, 0))
    for mi, m in enumerate(methods):
        y = 14 + (mi + 1) * (res + 4)
        draw.text((4, y + res // 2 - 6), "/".join(m), fill=(0, 0, 0))
        for oi, o in enumerate(objects):
            for s in range(seeds):
                r = by.get((*m, o["prompt"], s))
                glb = Path(r["dir"]) / "model.glb" if r else None
                if glb is not None and glb.is_file():
                    paste(ring_frames(glb, res), label_w + (oi * seeds + s) * block, y)
    img.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior-folder", default="assets/tiny-prior", help="the learned prior (and its objects)")
    ap.add_argument("--object", action="append", default=[], metavar="MESH:PROMPT",
                    help="objects to run (default: the prior folder's own)")
    ap.add_argument("--recipes", default="text-nerf,text-gaussians")
    ap.add_argument("--guidances", default="", help="comma-separated (default: every registered guidance)")
    ap.add_argument("--priors", default=",".join(PRIORS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each on --threads threads)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="bench/text-to-3d-runs", help="run folders (kept: a rerun reuses them)")
    ap.add_argument("--out", default="bench/text_to_3d.md")
    ap.add_argument("--docs", default=None, metavar="PAGE",
                    help="also rewrite this page's bench_text_to_3d section (docs/benchmarks.md) with the tables")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 object, 1 seed, sds, a few steps")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    args = ap.parse_args(argv)
    from dreamcore import registry

    folder = resolve_path(args.prior_folder)
    objects = [parse_object(o) for o in args.object] or prior_objects(folder)
    guidances = [g for g in args.guidances.split(",") if g] or registry.names("guidance")
    priors = [p for p in args.priors.split(",") if p]
    recipes = [r for r in args.recipes.split(",") if r]
    extra = list(args.overrides)
    if args.quick:
        objects, guidances, args.seeds = objects[:1], guidances[:1] if args.guidances else ["sds"], 1
        extra = QUICK + extra
    bad = [p for p in priors if p not in PRIORS]
    if bad:
        raise SystemExit(f"--priors: unknown {bad}; valid: {', '.join(PRIORS)}")
    work = Path(args.work)
    jobs = []
    for recipe, guidance, prior, obj, seed in itertools.product(recipes, guidances, priors, objects,
                                                                range(args.seeds)):
        name = slug(recipe, guidance, prior, obj["prompt"], seed)
        jobs.append({"name": name, "recipe": recipe, "guidance": guidance, "prior": prior, "object": obj["prompt"],
                     "seed": seed, "dir": str(work / name),
                     "overrides": run_overrides(recipe, guidance, prior, obj, seed, folder)})
    print(f"{len(jobs)} runs ({len(recipes)} recipes × {len(guidances)} guidances × {len(priors)} priors × "
          f"{len(objects)} objects × {args.seeds} seeds), {args.jobs} at a time", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda j: run_one(j, extra, args.threads), jobs))
    rows, report = summarize(results, objects, args.seeds)
    reused = sum(bool(r.get("reused")) for r in results)
    report += (f"\nTotal wall time {time.perf_counter() - t0:.0f} s for {len(jobs)} runs ({args.jobs} at a time"
               + (f"; {reused} reused from an earlier run, their own times in s/run" if reused else "") + ").\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    (out.with_suffix(".json")).write_text(json.dumps({"rows": rows, "runs": results}, indent=1, default=str))
    picture(out.with_suffix(".png"), results, objects, args.seeds)
    if args.docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_text_to_3d", report)
    print(report)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
