"""Speed benchmark (issue 17): held-out quality against prior evaluations and wall clock, per method, measured side
by side in one invocation on this machine.

**Settings** (``--settings``): a recipe and its prompt/object, as an artist or the demo runs it —

* ``reference-nerf``: ``configs/demo.yaml`` (the closed-form reference prior of ``assets/robot.glb``, camera-
  conditioned, NeRF; ``make demo``'s 1000 steps);
* ``reference-gaussians``: ``configs/reference-gaussians.yaml`` without its mesh stage (``refine.config=``);
* ``learned-nerf`` / ``learned-gaussians``: ``configs/text-nerf.yaml`` / ``text-gaussians.yaml`` on the learned
  2D tiny prior (``assets/tiny-prior``), "a toy robot", scored against ``assets/robot.glb``;
* ``multiview-nerf``: ``configs/text-mv-nerf.yaml`` on ``assets/tiny-mv-prior``, the same object.

**Methods** (``--methods``): ``sds`` — the recipe as it is, at ``--sds-fractions`` of its steps (the last, 1.0,
is the recipe's own run: the quality to reach); ``sir`` — the same recipe with ``guidance.name=sir`` (MicroDreamer's
score-based iterative reconstruction, :mod:`dreamcore.guidance.sir`) and :data:`SIR_OVERRIDES` for the setting, at
``--sir-fractions`` of the recipe's steps; ``sir-long`` — the same with :data:`SIR_VARIANTS`' longer rounds.
Every run is one point: its ``metrics.json`` gives the prior evaluations (``prior_calls``: denoiser calls, CFG's
two rows in one; ``prior_rows``: the views they denoised), the training wall clock (``train_seconds``) and the
held-out scores (GLB PSNR and IoU at the recipe's ``eval`` views; the scene's own renders too).

**The target** (per setting): SIR reaches the GLB PSNR of SDS's full run (within ``--tolerance`` dB, default 0)
with at most 1/5 of its prior calls and in less training time. The report names SIR's cheapest point that
reaches it and the two ratios; "not reached" when none does.

**Rows** (``tools/bench_rows.py``): ``--rows`` (default ``bench/speed/rows``) ``/<setting>-<method>-<steps>-
<seed>.json``, keyed by the config hash of the run; a row with its job's hash is not run again. Runs go the
cheapest first (every method's smallest budget, then the next), one at a time on ``--threads`` threads;
``--budget MINUTES`` starts no run that would end past it (its expected time: the run's steps at the s/step of
the setting and method's present rows, else 0.3 s/step).

**The report** ``--out`` (default ``bench/speed.md``, with ``.json`` and ``.png``: per setting, GLB PSNR against
prior calls and against training seconds, one line per method) from every row present.

    .venv/bin/python tools/bench_speed.py --settings reference-nerf,learned-nerf --budget 40 --docs docs/benchmarks.md
    .venv/bin/python tools/bench_speed.py --settings reference-nerf --methods sir --sir-fractions 0.1,0.2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import bench_rows  # noqa: E402

OBJECT = ["prompt=a toy robot", "eval.mesh=assets/robot.glb"]
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "reference-nerf": ("demo", []),
    "reference-gaussians": ("reference-gaussians", ["refine.config="]),
    "learned-nerf": ("text-nerf", [*OBJECT, "prior.model=assets/tiny-prior"]),
    "learned-gaussians": ("text-gaussians", [*OBJECT, "prior.model=assets/tiny-prior"]),
    "multiview-nerf": ("text-mv-nerf", [*OBJECT, "prior.model=assets/tiny-mv-prior"]),
}
# SIR on each setting, the target's sampling as the setting's prior wants it. The closed-form reference prior: ω 1
# (its recipes' own), and D = 5 sampler steps — its x̂₀ is exact at every t, so more steps only cost calls — on the
# recipe's pixel subsets (a round's views rendered whole, without gradient, once for the target). The tiny priors:
# whole images (they take no subsets), ω 5 and η 0 (their own sampler's, tools/train_tiny_prior.py)
SIR_COMMON = ["guidance.name=sir", "guidance.eta=0.0"]
SIR_REFERENCE = [*SIR_COMMON, "guidance.guidance_scale=1.0", "guidance.denoise_steps=5"]
SIR_LEARNED = [*SIR_COMMON, "system.rays_per_view=0", "guidance.guidance_scale=5.0"]
SIR_OVERRIDES: dict[str, list[str]] = {
    "reference-nerf": SIR_REFERENCE,
    "reference-gaussians": SIR_REFERENCE,
    "learned-nerf": SIR_LEARNED,
    "learned-gaussians": SIR_LEARNED,
    "multiview-nerf": SIR_LEARNED,
}
# SIR's variants (methods beside sds): ``sir`` MicroDreamer's rounds as its defaults have them (15 inner steps, a
# 20-step sampler: about one prior call per step); ``sir-long`` longer rounds with a 10-step sampler (40 inner
# steps; MicroDreamer's ImageDream path samples with 10): about 0.15 calls per step
SIR_VARIANTS: dict[str, list[str]] = {
    "sir": [],
    "sir-long": ["guidance.round_steps=40", "guidance.denoise_steps=10"],
}
COMMON = ["run.progress=false", "run.val_every=0", "export.formats=[glb]", "run.checkpoint_every=0"]
ROWS = "bench/speed/rows"
SCORES = ("glb_psnr", "glb_iou", "scene_psnr", "scene_iou", "prior_calls", "prior_rows", "train_seconds",
          "seconds_per_step")


def recipe_steps(recipe: str, overrides: list[str]) -> int:
    from dreamcore.config import config_path, load_config

    return load_config(config_path(recipe), overrides).run.steps


def plan(settings: list[str], methods: list[str], fractions: dict[str, list[float]], seeds: int,
         extra: list[str] = (), sir_extra: list[str] = ()) -> list[dict]:
    """The runs: every setting × method × budget × seed, cheapest budgets first (seed 0 of everything first)."""
    jobs = []
    for setting in settings:
        recipe, base = SETTINGS[setting]
        full = recipe_steps(recipe, base)
        for method in methods:
            own = [] if method == "sds" else [*SIR_OVERRIDES[setting], *SIR_VARIANTS[method], *sir_extra]
            for frac in fractions["sds" if method == "sds" else "sir"]:
                steps = max(1, round(full * frac))
                for seed in range(seeds):
                    name = f"{setting}-{method}-{steps}-{seed}"
                    jobs.append({"name": name, "setting": setting, "method": method, "recipe": recipe,
                                 "steps": steps, "full_steps": full, "seed": seed,
                                 "overrides": [*base, *own, f"run.steps={steps}", f"run.seed={seed}", *COMMON,
                                               *extra]})
    return sorted(jobs, key=lambda j: (j["seed"], j["steps"] / j["full_steps"], j["setting"], j["method"]))


def job_hash(job: dict) -> str:
    from dreamcore.config import config_path, load_config, to_tree

    return bench_rows.config_hash(to_tree(load_config(config_path(job["recipe"]), job["overrides"])))


def expected_seconds(job: dict, rows: list[dict]) -> float:
    rates = [r["seconds"] / max(r["steps"], 1) for r in rows
             if r.get("setting") == job["setting"] and r.get("method") == job["method"] and r.get("seconds")]
    rate = sorted(rates)[len(rates) // 2] if rates else 0.3
    return rate * job["steps"] + 20.0  # + export and scoring


def run_one(job: dict, work: Path, threads: int, rows_dir: Path) -> dict:
    """The job's row: reused when its file holds the job's config hash, else made by ``dreamcore generate`` in a
    subprocess (a crash is one failed row, reported)."""
    row_file = rows_dir / f"{job['name']}.json"
    row = bench_rows.read_row(row_file)
    if row is not None and row["config_hash"] == job["config_hash"]:
        return {**row, "reused": True}
    run_dir = work / job["name"]
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    commit = bench_rows.git_commit()
    args = [sys.executable, "-m", "dreamcore.cli", "generate", "--config", job["recipe"], *job["overrides"],
            f"run.threads={threads}", f"run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    metrics_file = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**job, "failed": " | ".join(tail) or f"exit {proc.returncode}"}
    m = json.loads(metrics_file.read_text())
    row = {k: job[k] for k in ("name", "setting", "method", "recipe", "steps", "full_steps", "seed",
                               "config_hash")}
    row.update({k: m.get(k) for k in SCORES}, seconds=round(wall, 1), threads=threads, commit=commit,
               dir=bench_rows.relative_path(run_dir), made=time.strftime("%Y-%m-%d %H:%M:%S"))
    bench_rows.write_row(row_file, row)
    return row


# -- the report -----------------------------------------------------------------------------------------------------
def median(values: list[float]) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def points(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Per (setting, method): one point per step count, the medians over its seeds, by increasing steps."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"], r["steps"]), []).append(r)
    out: dict[tuple[str, str], list[dict]] = {}
    for (setting, method, steps), rs in sorted(groups.items()):
        p = {"steps": steps, "full_steps": rs[0]["full_steps"], "seeds": len(rs)}
        p.update({k: median([r.get(k) for r in rs]) for k in SCORES})
        out.setdefault((setting, method), []).append(p)
    return out


def verdict(sds: list[dict], sir: list[dict], tolerance: float) -> dict:
    """SIR's cheapest point at SDS's full-run GLB PSNR (− tolerance), and its ratios to that run."""
    full = [p for p in sds if p["steps"] == p["full_steps"]]
    if not full or not sir:
        return {"status": "incomplete"}
    ref = full[0]
    goal = ref["glb_psnr"] - tolerance
    reached = [p for p in sir if p["glb_psnr"] is not None and p["glb_psnr"] >= goal]
    if not reached:
        best = max(sir, key=lambda p: p["glb_psnr"] or -1)
        return {"status": "not reached", "goal": goal, "sds": ref, "best": best}
    p = min(reached, key=lambda q: q["prior_calls"])
    calls = p["prior_calls"] / max(ref["prior_calls"], 1)
    wall = p["train_seconds"] / max(ref["train_seconds"], 1e-9)
    ok = calls <= 0.2 and wall < 1.0
    return {"status": "pass" if ok else "FAIL", "goal": goal, "sds": ref, "sir": p, "calls_ratio": calls,
            "wall_ratio": wall}


def fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report(rows: list[dict], tolerance: float, note: str) -> tuple[str, dict]:
    pts = points(rows)
    lines = ["# Speed benchmark: quality against prior evaluations and wall clock", "",
             "GLB PSNR and IoU at each recipe's held-out views (medians over seeds) against the run's prior calls "
             "(denoiser calls; CFG's two rows are one call) and training seconds. Target per setting: SIR at SDS's "
             f"full-run GLB PSNR (− {tolerance:g} dB) with ≤ 1/5 of its prior calls and less training time. Made by "
             "`tools/bench_speed.py`; each row of a table is one run folder's metrics (rows in `bench/speed/rows`).",
             ""]
    verdicts = {}
    for setting in SETTINGS:
        mine = {m: ps for (s, m), ps in pts.items() if s == setting}
        if not mine:
            continue
        recipe = SETTINGS[setting][0]
        lines += [f"## {setting} (`configs/{recipe}.yaml`)", "",
                  "| method | steps | seeds | prior calls | prior rows | train s | s/step | GLB PSNR (dB) | GLB IoU | "
                  "scene PSNR (dB) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for method, ps in sorted(mine.items()):
            for p in ps:
                lines.append(f"| {method} | {p['steps']} | {p['seeds']} | {fmt(p['prior_calls'], 0)} | "
                             f"{fmt(p['prior_rows'], 0)} | {fmt(p['train_seconds'], 1)} | "
                             f"{fmt(p['seconds_per_step'], 3)} | {fmt(p['glb_psnr'])} | {fmt(p['glb_iou'], 3)} | "
                             f"{fmt(p['scene_psnr'])} |")
        lines.append("")
        for variant in [m for m in SIR_VARIANTS if m in mine] or ["sir"]:
            v = verdict(mine.get("sds", []), mine.get(variant, []), tolerance)
            verdicts[f"{setting}/{variant}"] = v
            if v["status"] == "incomplete":
                lines.append(f"Target ({variant}): not measured yet (needs SDS's full run and a {variant} point).")
            elif v["status"] == "not reached":
                lines.append(f"Target ({variant}): **not reached** — SDS's full run scores {v['sds']['glb_psnr']:.2f}"
                             f" dB; the best {variant} point {v['best']['glb_psnr']:.2f} dB ({v['best']['steps']} "
                             "steps).")
            else:
                lines.append(f"Target ({variant}): **{v['status']}** — {v['sir']['steps']} steps score "
                             f"{v['sir']['glb_psnr']:.2f} dB (SDS's {v['sds']['steps']} steps: "
                             f"{v['sds']['glb_psnr']:.2f} dB) with {v['calls_ratio']:.3f}× its prior calls and "
                             f"{v['wall_ratio']:.2f}× its training time.")
            lines.append("")
    lines += [note, ""]
    return "\n".join(lines), {"points": {f"{s}/{m}": ps for (s, m), ps in pts.items()}, "verdicts": verdicts}


def draw(pts: dict, path: Path) -> None:
    """Per setting two panels, GLB PSNR against prior calls and against training seconds (log x), one polyline
    per method (SDS grey, SIR red)."""
    import math

    from PIL import Image, ImageDraw

    settings = [s for s in SETTINGS if any(k.startswith(s + "/") for k in pts)]
    if not settings:
        return
    w, h, pad = 320, 200, 36
    img = Image.new("RGB", (2 * w, h * len(settings)), "white")
    d = ImageDraw.Draw(img)
    colors = {"sds": (110, 110, 110), "sir": (200, 40, 40), "sir-long": (220, 130, 0)}
    for i, setting in enumerate(settings):
        series = {k.split("/")[1]: v for k, v in pts.items() if k.startswith(setting + "/")}
        ys = [p["glb_psnr"] for ps in series.values() for p in ps if p["glb_psnr"] is not None]
        if not ys:
            continue
        y0, y1 = min(ys) - 0.5, max(ys) + 0.5
        for j, (key, label) in enumerate((("prior_calls", "prior calls"), ("train_seconds", "train s"))):
            xs = [p[key] for ps in series.values() for p in ps if p[key]]
            if not xs:
                continue
            x0, x1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
            ox, oy = j * w, i * h

            def at(x, y):
                return (ox + pad + (math.log10(x) - x0) / (x1 - x0) * (w - 2 * pad),
                        oy + h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad))

            d.rectangle([ox + pad, oy + pad, ox + w - pad, oy + h - pad], outline=(0, 0, 0))
            d.text((ox + pad, oy + 6), f"{setting}: GLB PSNR vs {label}", fill=(0, 0, 0))
            d.text((ox + pad, oy + h - pad + 4), f"{min(xs):.0f}", fill=(0, 0, 0))
            d.text((ox + w - pad - 30, oy + h - pad + 4), f"{max(xs):.0f}", fill=(0, 0, 0))
            d.text((ox + 2, oy + pad), f"{y1:.1f}", fill=(0, 0, 0))
            d.text((ox + 2, oy + h - pad - 10), f"{y0:.1f}", fill=(0, 0, 0))
            for k, (method, ps) in enumerate(sorted(series.items())):
                xy = [at(p[key], p["glb_psnr"]) for p in ps if p[key] and p["glb_psnr"] is not None]
                c = colors.get(method, (40, 40, 200))
                if len(xy) > 1:
                    d.line(xy, fill=c, width=2)
                for x, y in xy:
                    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
                d.text((ox + w - pad - 40, oy + pad + 4 + 12 * k), method, fill=c)
    img.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="reference-nerf,learned-nerf",
                    help=f"comma-separated, of: {', '.join(SETTINGS)}")
    ap.add_argument("--methods", default="sds,sir,sir-long")
    ap.add_argument("--sds-fractions", default="0.25,0.5,1.0", help="SDS's budgets as fractions of the recipe's "
                    "steps (1.0: the recipe's own run, the target)")
    ap.add_argument("--sir-fractions", default="0.1,0.2,0.4,0.8", help="SIR's budgets, fractions of the recipe's steps")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.0, help="dB below SDS's full run that still counts")
    ap.add_argument("--budget", type=float, default=None, metavar="MINUTES")
    ap.add_argument("--work", default="runs/bench-speed", help="run folders")
    ap.add_argument("--rows", default=ROWS)
    ap.add_argument("--out", default="bench/speed.md")
    ap.add_argument("--docs", default=None, metavar="PAGE", help="also rewrite this page's bench_speed section "
                    "(docs/benchmarks.md) with the tables")
    ap.add_argument("--sir-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for the SIR runs only (e.g. guidance.round_steps=10); repeatable")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    args = ap.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise SystemExit(f"--settings: unknown {bad}; valid: {', '.join(SETTINGS)}")
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - {"sds", *SIR_VARIANTS}:
        raise SystemExit(f"--methods: of sds, {', '.join(SIR_VARIANTS)}; got {methods}")
    fractions = {"sds": [float(f) for f in args.sds_fractions.split(",") if f],
                 "sir": [float(f) for f in args.sir_fractions.split(",") if f]}
    if any(not 0 < f <= 4 for fs in fractions.values() for f in fs):
        raise SystemExit("fractions of the recipe's steps lie in (0, 4]")
    rows_dir = Path(args.rows)
    jobs = plan(settings, methods, fractions, args.seeds, args.overrides, args.sir_set)
    for j in jobs:
        j["config_hash"] = job_hash(j)
    t0, done, failed, skipped = time.perf_counter(), 0, 0, 0
    for job in jobs:
        present = bench_rows.load_rows(rows_dir)
        row = bench_rows.read_row(rows_dir / f"{job['name']}.json")
        fresh = row is None or row["config_hash"] != job["config_hash"]
        if fresh and args.budget is not None and \
                (time.perf_counter() - t0 + expected_seconds(job, present)) / 60 > args.budget:
            skipped += 1
            continue
        out = run_one(job, Path(args.work), args.threads, rows_dir)
        if out.get("failed"):
            failed += 1
            print(f"{job['name']}: FAILED {out['failed']}", flush=True)
        else:
            done += 0 if out.get("reused") else 1
            print(f"{job['name']}: GLB PSNR {fmt(out.get('glb_psnr'))} dB, {out.get('prior_calls')} prior calls, "
                  f"{fmt(out.get('train_seconds'), 1)} s" + (" (row reused)" if out.get("reused") else ""), flush=True)
    rows = [r for r in bench_rows.load_rows(rows_dir) if r.get("setting") in SETTINGS]
    note = (f"This invocation: {len(jobs)} runs planned, {done} run in {time.perf_counter() - t0:.0f} s on "
            f"{args.threads} threads, {failed} failed, {skipped} left for a later budget; the report holds all "
            f"{len(rows)} rows of {rows_dir}.")
    text, data = report(rows, args.tolerance, note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    draw(data["points"], out.with_suffix(".png"))
    if args.docs:
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_speed", text)
    print(text)
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
