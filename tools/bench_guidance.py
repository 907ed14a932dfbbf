"""Guidance benchmark: every registered guidance × the NeRF representation on reference-prior scenes.

Two experiments, one markdown table each, written to ``--out`` (default ``bench/guidance.md``) and, with
``--docs docs/benchmarks.md``, into that page's marked ``bench_guidance`` section (``tools/docs_section.py``):

1. Reconstruction — ``configs/reference-nerf.yaml`` on ``--mesh`` (camera-conditioned reference prior) for
   ``--steps`` steps per method, exported to GLB: held-out PSNR / silhouette IoU of the field and of the GLB,
   visible-surface Chamfer, and seconds per step (all from the run's ``metrics.json``; timings are measured in
   this one run, on whatever machine runs it, so read them as ratios).
2. Diversity — a two-object reference (``--mesh`` and a procedurally built second object, both at every
   camera) optimized from ``--seeds`` seeds per method at a smaller size: for each seed the object whose
   held-out views the scene matches best, and that PSNR. "modes" counts distinct objects reached over the seeds
   (diversity); a low best-object PSNR means a blend of both (mode averaging) rather than one clean object.

CFG-bearing methods run at ω = 1: with the conditional reference prior the conditional denoiser is exact and
extrapolating it only over-saturates. Everything else keeps the method's official defaults.

    .venv/bin/python tools/bench_guidance.py --docs docs/benchmarks.md   # + its tables there (≈ 30 min on 2 cores)
    .venv/bin/python tools/bench_guidance.py --quick         # a smoke run of the tool itself
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamcore.guidance.editing import generation_methods  # noqa: E402
from dreamcore.config import load_config  # noqa: E402
from dreamcore.errors import DreamcoreError  # noqa: E402
from dreamcore.runner.generate import generate  # noqa: E402

# per-method settings on the reference prior (see the module docstring)
METHOD_OVERRIDES = {
    "sds": ["guidance.guidance_scale=1.0"],
    "sjc": ["guidance.guidance_scale=1.0"],
    "vsd": ["guidance.guidance_scale=1.0"],
    "esd": ["guidance.guidance_scale=1.0"],
    "ism": ["guidance.guidance_scale=1.0"],
    "nfsd": ["guidance.guidance_scale=1.0"],
    "sdi": ["guidance.guidance_scale=1.0", "guidance.inversion_guidance_scale=1.0"],
    "csd": [],
    # wave 2 (issue 14): ω = 1 wherever ω multiplies an exact conditional; asd-async keeps its official ω (at
    # ω = 1 its classifier term, (ω − 1)(ε_y − ε_∅), vanishes); bsd has no ω
    "stein": ["guidance.guidance_scale=1.0"],
    "asd-async": [],
    "bsd": [],
    # reward: the reference prior's one-step x̂_0 at ω = 1 is exact, so the official 15 DDIM steps to the scored image
    # only add 30 prior calls per noise; score x̂_0 directly
    "reward": ["guidance.guidance_scale=1.0", "guidance.reward.ddim_steps=0"],
    "cds": ["guidance.guidance_scale=1.0"],
    "cfd": ["guidance.guidance_scale=1.0"],
    "gcs": ["guidance.guidance_scale=1.0"],
    "asd-adv": ["guidance.guidance_scale=1.0"],
    "coupled": ["guidance.guidance_scale=1.0", "guidance.mv_guidance_scale=1.0"],
    # issue 39: DSD's ODE and both branches, and RSD's SDS part, at the exact conditional
    "dsd": ["guidance.guidance_scale=1.0"],
    "rsd": ["guidance.guidance_scale=1.0"],
}
COMMON = ["run.progress=false", "run.val_every=0", "run.checkpoint_every=0"]
EXPORT = ["export.formats=[glb]", "export.resolution=128", "export.texture_size=512", "export.target_faces=20000"]
SMALL = ["camera.resolution=32", "camera.batch_size=4", "system.rays_per_view=128", "eval.resolution=32",
         "representation.n_levels=8", "representation.max_resolution=256"]


def second_object(path: Path) -> Path:
    """A vertex-coloured lamp-like object (cone shade on a stem on a disc base), unlike the robot."""
    import numpy as np
    import trimesh

    up = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # trimesh's +z axis → +y (up)
    parts = []
    for mesh, y, colour in ((trimesh.creation.cylinder(radius=0.5, height=0.1), -0.75, (40, 40, 200)),
                            (trimesh.creation.cylinder(radius=0.07, height=1.2), -0.1, (230, 230, 230)),
                            (trimesh.creation.cone(radius=0.55, height=0.6), 0.35, (240, 160, 20))):
        mesh.apply_transform(up)
        mesh.apply_translation([0.0, y, 0.0])
        mesh.visual.vertex_colors = np.tile(np.array([*colour, 255], dtype=np.uint8), (len(mesh.vertices), 1))
        parts.append(mesh)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.util.concatenate(parts).export(path)
    return path


def run(name: str, overrides: list[str], out_dir: Path) -> dict:
    """One run's metrics.json (a finished run in ``out_dir`` is reused); a run that fails is a row with its error
    and the s/step its log last reported, not the end of the benchmark."""
    if (out_dir / "metrics.json").is_file():
        m = json.loads((out_dir / "metrics.json").read_text())
        print(f"  {name}: reused {out_dir}", flush=True)
        return m
    cfg = load_config(ROOT / "configs" / "reference-nerf.yaml", overrides + [f"run.dir={out_dir}"])
    t0 = time.perf_counter()
    try:
        generate(cfg, resume=(out_dir / "ckpt").is_dir(), announce=lambda *_: None)
    except DreamcoreError as e:
        logged = re.findall(r"s/step=([0-9.]+)", (out_dir / "log.txt").read_text()) if out_dir.is_dir() else []
        print(f"  {name}: FAILED: {e}", flush=True)
        return {"error": str(e), "seconds_per_step": float(logged[-1]) if logged else float("nan")}
    m = json.loads((out_dir / "metrics.json").read_text())
    m["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  {name}: {json.dumps({k: v for k, v in m.items() if k != 'export'})}", flush=True)
    return m


def reconstruction(methods: list[str], args, work: Path) -> list[dict]:
    rows = []
    for name in methods:
        o = [f"guidance.name={name}", *METHOD_OVERRIDES.get(name, []), *COMMON, *EXPORT, f"run.steps={args.steps}",
             f"prior.reference.mesh={args.mesh}", f"run.threads={args.threads}"]
        if args.quick:
            o += SMALL
        m = run(name, o, work / "recon" / name)
        rows.append({"method": name, **m})
    return rows


def diversity(methods: list[str], args, work: Path) -> list[dict]:
    other = second_object(work / "lamp.glb")
    rows = []
    for name in methods:
        modes, best = [], []
        sec = []
        for seed in range(args.seeds):
            o = [f"guidance.name={name}", *METHOD_OVERRIDES.get(name, []), *COMMON, *SMALL, "export.formats=[]",
                 f"run.steps={args.diversity_steps}", f"run.seed={seed}", f"prior.reference.mesh={args.mesh}",
                 f"prior.reference.extra_meshes=[{other}]", f"run.threads={args.threads}", "eval.views=8"]
            m = run(f"{name} seed {seed}", o, work / "diversity" / f"{name}-{seed}")
            sec.append(m["seconds_per_step"])
            if "error" in m:
                modes.append(-1)
                continue
            per_object = m["scene_psnr_objects"]
            k = max(range(len(per_object)), key=per_object.__getitem__)
            modes.append(k)
            best.append(per_object[k])
        rows.append({"method": name, "modes": len(set(modes) - {-1}), "objects": modes,
                     "best_psnr": round(statistics.mean(best), 2) if best else float("nan"),
                     "seconds_per_step": round(statistics.mean(sec), 4)})
    return rows


def markdown(recon: list[dict], div: list[dict], args) -> str:
    lines = [f"# Guidance benchmark (reference prior, NeRF)\n"]
    if recon:
        lines += [
             f"Reconstruction of `{args.mesh}`, {args.steps} steps per method; 16 held-out views at 64×64 "
             f"(their own seed). s/step is measured in this run; compare ratios.\n",
             "| guidance | scene PSNR | scene IoU | GLB PSNR | GLB IoU | GLB Chamfer | s/step | × SDS |",
             "|---|---|---|---|---|---|---|---|"]
    sds = next((r["seconds_per_step"] for r in recon if r["method"] == "sds"), None)
    for r in recon:
        ratio = f"{r['seconds_per_step'] / sds:.2f}" if sds else "–"
        if "error" in r:
            lines.append(f"| `{r['method']}` | failed: {r['error'].split(':')[0]} | | | | | "
                         f"{r['seconds_per_step']:.3f} | {ratio} |")
            continue
        lines.append(f"| `{r['method']}` | {r.get('scene_psnr', float('nan')):.2f} | {r.get('scene_iou', 0):.3f} | "
                     f"{r.get('glb_psnr', float('nan')):.2f} | {r.get('glb_iou', 0):.3f} | "
                     f"{100 * r.get('glb_chamfer_rel', float('nan')):.2f} % | {r['seconds_per_step']:.3f} | {ratio} |")
    if div:
        lines += ["", f"Diversity: two objects (`{args.mesh}` and a lamp) in the prior at every camera, "
                  f"{args.seeds} seeds × {args.diversity_steps} steps at 32×32. modes = distinct objects reached; "
                  "best PSNR = mean over seeds of the PSNR to the object each scene matches best (a blend of both "
                  "scores low against either).\n",
                  "(object −1: the run failed.)\n",
                  "| guidance | modes | object per seed | best-object PSNR | s/step | × SDS |",
                  "|---|---|---|---|---|---|"]
        sds_div = next((r["seconds_per_step"] for r in div if r["method"] == "sds"), None)
        for r in div:
            ratio = f"{r['seconds_per_step'] / sds_div:.2f}" if sds_div else "–"
            lines.append(f"| `{r['method']}` | {r['modes']}/2 | {r['objects']} | {r['best_psnr']:.2f} | "
                         f"{r['seconds_per_step']:.3f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="", help="comma-separated guidance names (default: all registered)")
    ap.add_argument("--mesh", default="assets/robot.glb")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--diversity-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-diversity", action="store_true")
    ap.add_argument("--no-reconstruction", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="delete --work first (otherwise finished runs are reused)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the tool, not the methods")
    ap.add_argument("--work", default="bench/guidance-runs")
    ap.add_argument("--out", default="bench/guidance.md")
    ap.add_argument("--docs", default=None, metavar="PAGE",
                    help="also rewrite this page's bench_guidance section (docs/benchmarks.md) with the tables")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seeds, args.diversity_steps = 20, 2, 10
    methods = [m for m in args.methods.split(",") if m] or generation_methods()
    work = Path(args.work)
    if work.exists() and args.fresh:
        import shutil

        shutil.rmtree(work)
    recon = [] if args.no_reconstruction else (print("reconstruction", flush=True),
                                               reconstruction(methods, args, work))[1]
    div = [] if args.no_diversity else (print("diversity", flush=True), diversity(methods, args, work))[1]
    text = markdown(recon, div, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if args.docs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_guidance", text)
    print(text)


if __name__ == "__main__":
    main()
