"""Image-to-3D benchmark: one rendered picture of an object in, an asset out, scored against the object all around.

For every object (default: those of the multi-view prior folder's ``dreamcore_prior.json``, else the 2D one's, as
``tools/bench_text_to_3d.py`` finds them; ``--object MESH:PROMPT`` for others), every view of ``--views`` (default
``front,45,back``: azimuth 0, 45 and 180 at elevation 0; a view is ``front``, ``side`` or ``back`` or numbers
``AZ`` / ``AZ:EL`` in degrees) and ``--seeds`` seeds, each recipe (``--recipes``, default ``image-to-3d``) runs
``dreamcore generate --image PICTURE --prompt PROMPT --config RECIPE image.azimuth=AZ image.elevation=EL
eval.mesh=MESH ...`` with each prior kind of ``--priors``:

* ``multiview`` — the tiny multi-view prior (``prior.name=multiview prior.model=<--mv-prior-folder>``, default
  ``assets/tiny-mv-image-prior`` where it exists, else ``assets/tiny-mv-prior``) with ``image.condition_prior=true``:
  an image-conditioned folder (ImageDream's reference frame) gets the picture as its condition, a text-only one
  acts through the reference-view losses alone;
* ``2d`` — the Zero123-less baseline: the tiny 2D prior (``prior.name=pixel-diffusion prior.model=<--prior-folder>``,
  default ``assets/tiny-prior``) with view prompts on, as ``configs/text-nerf.yaml`` has them (``views.enabled``,
  ``views.interpolate``); the reference-view losses do the rest. ``camera.batch_size`` stays the recipe's (4: any
  batch suits a 2D prior).

``--prompt-mode`` (comma-separated): ``named`` (the object's prompt, default) and/or ``empty`` (the picture alone:
only for a multi-view folder whose UNet takes a reference frame; other pairs are left out with a note).

**The picture** (:func:`render_picture`): the object's mesh normalized into the scene as the runs' scoring
normalizes it (``eval.radius``), rendered over white at the reference camera the image loader itself builds
(:func:`dreamcore.reference_image.reference_camera`: the view's azimuth and elevation, distance and fov the
middles of the recipe's camera ranges), ``--picture-size`` (256) pixels a side, written as an RGBA PNG into
``WORK/pictures/`` (never over the assets). ``--fill measured`` (default) passes the picture's own fill (its
silhouette's long side over the bounding sphere's projected diameter, which the loader cannot know from a photo)
as ``image.fill``, so the picture is framed at the object's true size; ``--fill recipe`` keeps the recipe's
(0.85), a number sets it. The loader still centres the silhouette, which an object's own projection need not be:
the report gives each picture's **framing IoU** — the framed picture's silhouette against the object's render at
the reference camera, ``eval.resolution`` px — the ceiling of the reference view before any 3D is made (the
held-out scores are taken in one frame, the recipe's ``eval.align: bbox``).

Every finished run becomes a **row** (``tools/bench_rows.py``, as the text-only benchmark's): ``--rows`` (default
``bench/image_to_3d/rows``) ``/<recipe>-<prior>-<object>-<view>-<seed>.json`` (prior ``multiview_empty`` for the
picture-only mode) with the run's scores — ``glb_iou``, ``glb_psnr``, ``glb_janus``, ``glb_depth_rel`` at the
held-out cameras in the scene frame, ``ref_psnr`` / ``ref_iou`` at the picture's camera — wall time, thread count,
commit and config hash, and the GLB's ring frames beside it (``.png``). The config hash is that of the merged
config the run starts with, its ``image.path`` replaced by the SHA-256 of the picture's bytes (a re-rendered,
identical picture in another work folder is the same run; a changed one is a new run). A run whose row has its
hash is not run again (a run folder without its row is run again: its ``config.yaml`` names its own cut-out, not
the picture). Runs go one seed of everything first; ``--budget MINUTES`` starts no run that would end past the
budget (expected time: the median of the present rows of the same recipe and prior kind).

The report ``--out`` (default ``bench/image_to_3d.md``, with ``.json`` and a ``.png`` picture: per object and
view the input picture, then each prior kind's GLB ring) is built from every row present: medians over seeds per
(recipe, prior, prompt mode, object, view) — IoU, PSNR, Janus, depth error, ref PSNR, s/run, runs, commits — and
the floors of issue 37 (IoU ≥ 0.90, PSNR ≥ 20 dB, Janus 0 (≤ 0.005), ≤ 600 s a run), pass or FAIL naming the
missed ones; then multiview against 2d side by side per object and view. ``--docs PAGE`` rewrites that page's
``bench_image_to_3d`` section (``tools/docs_section.py``).

    .venv/bin/python tools/bench_image_to_3d.py --docs docs/benchmarks.md        # everything (hours on 2 cores)
    .venv/bin/python tools/bench_image_to_3d.py --views front --seeds 1 --budget 60
    .venv/bin/python tools/bench_image_to_3d.py --priors multiview --prompt-mode named,empty --views front
    .venv/bin/python tools/bench_image_to_3d.py --quick                          # a smoke run of the tool itself
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import itertools
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamcore.files import resolve_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rows  # noqa: E402  (tools/, beside this script)
import bench_text_to_3d as text  # noqa: E402

RECIPES = ("image-to-3d",)
PRIORS = ("multiview", "2d")
PROMPT_MODES = ("named", "empty")
MV_FOLDERS = ("assets/tiny-mv-image-prior", "assets/tiny-mv-prior")  # the first that exists
PRIOR_2D = "assets/tiny-prior"
NAMED_VIEWS = {"front": (0.0, 0.0), "side": (90.0, 0.0), "back": (180.0, 0.0)}
VIEWS = "front,45,back"
PICTURE_SIZE = 256
# issue 37's floors, for every row: IoU and PSNR at held-out cameras all around, no Janus, 10 minutes on 2 cores
FLOORS = {"glb_iou": 0.90, "glb_psnr": 20.0, "glb_janus": 0.005, "seconds": 600.0}
# the 2D baseline's view prompts: configs/text-nerf.yaml's (views.enabled by default, interpolated by azimuth)
VIEW_PROMPTS = ["views.enabled=true", "views.interpolate=true"]
# --quick: tests/test_image_to_3d.py's TINY sizes (stage 1) and its DMTet stage at toy sizes
QUICK = ["run.steps=6", "run.checkpoint_every=0", "eval.views=4", "eval.resolution=32", "eval.janus_views=4",
         "export.resolution=32", "export.texture_size=64", "export.isosurface_search=[]"]
QUICK_GAUSSIANS = ["representation.init_points=300", "system.densify.start=2", "system.densify.every=2",
                   "system.densify.stop=5"]
QUICK_REFINE = ("refine.overrides=[run.steps=2,run.checkpoint_every=2,run.val_every=0,camera.resolution=24,"
                "representation.resolution=16,representation.n_levels=4,representation.log2_table_size=12,"
                "representation.max_resolution=64,representation.init_texture_steps=10,"
                "representation.init_texture_points=2000,export.texture_size=64,export.target_faces=300]")
ROWS = "bench/image_to_3d/rows"
ROW_KEYS = ("prompt_mode", "view", "azimuth", "elevation", "fill", "framing_iou")


# -- what runs -----------------------------------------------------------------------------------------------------
def parse_view(spec: str) -> dict:
    """A ``--views`` item: ``front`` / ``side`` / ``back``, or ``AZ`` / ``AZ:EL`` in degrees → {view, azimuth,
    elevation} (``view``: the name, else ``az45`` / ``az30_el20``)."""
    spec = spec.strip()
    if spec in NAMED_VIEWS:
        az, el = NAMED_VIEWS[spec]
        return {"view": spec, "azimuth": az, "elevation": el}
    try:
        parts = [float(p) for p in spec.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not all(map(math.isfinite, parts)) or not -90 <= (parts + [0.0])[1] <= 90:
        raise SystemExit(f"--views: {spec!r} is neither {', '.join(NAMED_VIEWS)} nor AZ or AZ:EL degrees "
                         "(elevation in [-90, 90])")
    az, el = parts[0], (parts[1] if len(parts) == 2 else 0.0)
    label = f"az{az:g}" + (f"_el{el:g}" if len(parts) == 2 else "")
    return {"view": label, "azimuth": az, "elevation": el}


def default_mv_folder() -> Path:
    """:data:`MV_FOLDERS`' first existing folder (the image-conditioned one once trained), else the last."""
    return next((resolve_path(f) for f in MV_FOLDERS if resolve_path(f).is_dir()), resolve_path(MV_FOLDERS[-1]))


def image_conditioned(folder: Path) -> bool:
    """Whether a multi-view prior folder's UNet takes the picture as a reference frame (``reference_frame``, by
    default whenever it has ImageDream's image prompt: ``ip_dim`` > 0, as ``MultiViewUNet.has_reference_frame``)."""
    try:
        cfg = json.loads((Path(folder) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    flag = cfg.get("reference_frame")
    return bool(cfg.get("ip_dim")) if flag is None else bool(flag)


def combos(priors: list[str], modes: list[str], folder: Path, mv_folder: Path, asked: bool) -> list[tuple]:
    """The (prior kind, prompt mode) pairs that can run, with a note for each left out: ``empty`` only on an
    image-conditioned multi-view folder; a missing prior folder leaves its kind out (an error when ``asked``)."""
    folders = {"multiview": mv_folder, "2d": folder}
    out = []
    for prior in priors:
        if not folders[prior].is_dir():
            missing = f"no {prior} prior at {folders[prior]}"
            if asked:
                raise SystemExit(f"{missing}: cannot run the {prior} rows")
            print(f"note: {missing}: the {prior} rows are left out", flush=True)
            continue
        for mode in modes:
            if mode == "empty" and not (prior == "multiview" and image_conditioned(mv_folder)):
                why = "a 2D prior" if prior == "2d" else f"{mv_folder} takes no picture (a text-only folder)"
                print(f"note: --prompt-mode empty needs an image-conditioned multi-view prior, not {why}: the "
                      f"{prior} picture-only rows are left out", flush=True)
                continue
            out.append((prior, mode))
    return out


def prior_overrides(prior: str, folder: Path, mv_folder: Path) -> list[str]:
    """The prior of a prior kind (module docstring)."""
    if prior == "multiview":
        return ["prior.name=multiview", f"prior.model={mv_folder}", "image.condition_prior=true"]
    return ["prior.name=pixel-diffusion", f"prior.model={folder}", *VIEW_PROMPTS]


def quick_overrides(recipe: str, prior: str) -> list[str]:
    """:data:`QUICK` for a recipe (its Gaussians' and DMTet stage's toy sizes where it has them), one whole group
    of the multi-view prior's views per step, one view for the 2D prior."""
    cfg = text.recipe_config(recipe)
    out = list(QUICK)
    if cfg.representation.name == "gaussians":
        out += QUICK_GAUSSIANS
    if cfg.refine.config:
        out.append(QUICK_REFINE)
    views = int(getattr(cfg.prior, "views", 4)) if cfg.prior.name == "multiview" else 4
    return out + [f"camera.batch_size={views if prior == 'multiview' else 1}"]


def plan(recipes: list[str], pairs: list[tuple], objects: list[dict], views: list[dict], seeds: int,
         pictures: dict, folder: Path, mv_folder: Path, work: Path) -> list[dict]:
    """The runs: every recipe × (prior kind, prompt mode) × object × view × seed; ``pictures[(recipe, object,
    view)]``: the picture's ``path``, ``fill`` and ``framing_iou`` (:func:`make_pictures`)."""
    jobs = []
    for recipe, (prior, mode), obj, view, seed in itertools.product(recipes, pairs, objects, views, range(seeds)):
        pic = pictures[(recipe, obj["prompt"], view["view"])]
        label = prior if mode == "named" else f"{prior}_{mode}"
        name = text.slug(recipe, label, obj["prompt"], view["view"], seed)
        prompt = obj["prompt"] if mode == "named" else ""
        jobs.append({
            "name": name, "recipe": recipe, "guidance": text.recipe_guidance(recipe), "prior": prior,
            "prompt_mode": mode, "object": obj["prompt"], "object_path": obj["path"], **view, "seed": seed,
            "dir": str(work / name), "picture": pic["path"], "fill": pic["fill"],
            "framing_iou": pic["framing_iou"], "prompt": prompt, "row_keys": ROW_KEYS,
            "cli": ["--image", pic["path"], "--prompt", prompt],
            "overrides": [f"image.azimuth={view['azimuth']:g}", f"image.elevation={view['elevation']:g}",
                          f"image.fill={pic['fill']:g}", f"eval.mesh={obj['path']}", f"run.seed={seed}",
                          *prior_overrides(prior, folder, mv_folder)]})
    return jobs


def planned_hash(job: dict, extra: list[str]) -> str:
    """The config hash of the run ``job`` would start (the config ``dreamcore generate --image`` merges), its
    ``image.path`` replaced by the SHA-256 of the picture's bytes (module docstring)."""
    from dreamcore.config import job_config, to_tree

    tree = to_tree(job_config(job["prompt"], job["recipe"], text.run_args(job, extra), image=job["picture"]))
    tree["image"]["path"] = {"picture_sha256": hashlib.sha256(Path(job["picture"]).read_bytes()).hexdigest()}
    return bench_rows.config_hash(tree)


class BudgetGate(text.BudgetGate):
    """The text-only benchmark's budget, a run's expected time taken from the rows of its recipe and prior kind."""

    matches = (("recipe", "prior"), ("recipe",))


# -- the picture ---------------------------------------------------------------------------------------------------
def picture_camera(recipe: str, azimuth: float, elevation: float):
    """The camera of a view: the image loader's reference camera for the recipe (its camera ranges' middles)."""
    from dataclasses import replace

    from dreamcore.reference_image import reference_camera

    cfg = text.recipe_config(recipe)
    image = replace(cfg.image, azimuth=float(azimuth), elevation=float(elevation))
    return reference_camera(image, cfg.camera.distance_range, cfg.camera.fov_range)


@functools.lru_cache(maxsize=8)
def scene_object(path: str, radius: float):
    """A benchmark object normalized into the scene as the runs' scoring normalizes it (``eval.radius``)."""
    from dreamcore.meshes.io import load_mesh, normalize

    return normalize(load_mesh(path), radius)[0]


def render_picture(path: str, camera, size: int, radius: float = 0.9):
    """(rgb [S, S, 3] over white, alpha [S, S, 1]) of the object at ``path`` seen by ``camera``."""
    import torch

    from dreamcore.meshes.render import render_mesh

    out = render_mesh(scene_object(str(path), radius), camera, size, size, supersample=2,
                      background=torch.ones(1, 3))
    return out.rgb[0].clamp(0, 1), out.alpha[0].clamp(0, 1)


def picture_fill(alpha, camera, radius: float = 0.9) -> float:
    """The picture's fill: its silhouette's (alpha ≥ ½) long side over the scene sphere's projected diameter
    (:func:`dreamcore.reference_image.frame_fraction`), what ``image.fill`` means."""
    import torch

    from dreamcore.reference_image import frame_fraction

    rows, cols = torch.nonzero(alpha[..., 0] >= 0.5, as_tuple=True)
    if len(rows) == 0:
        raise SystemExit("a benchmark picture is empty: the object is not in view")
    side = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    s = frame_fraction(radius, float(camera.distance[0]), math.degrees(float(camera.fov_y[0])))
    return side / (s * alpha.shape[0])


def png_bytes(rgb, alpha) -> bytes:
    """An RGBA PNG of a picture (8 bits)."""
    import numpy as np
    from PIL import Image

    rgba = np.concatenate([rgb.numpy(), alpha.numpy()], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def framing_iou(picture: Path, recipe: str, view: dict, fill: float, object_path: str) -> float:
    """The framed picture's silhouette (the image loader's, at ``eval.resolution``) against the object's render at
    the reference camera: what the reference view can reach before any 3D is made."""
    from dataclasses import replace

    from dreamcore.reference_image import load_reference

    cfg = text.recipe_config(recipe)
    image = replace(cfg.image, path=str(picture), azimuth=view["azimuth"], elevation=view["elevation"], fill=fill)
    r = cfg.eval.resolution
    ref = load_reference(image, r, cfg.camera.distance_range, cfg.camera.fov_range)
    _, truth = render_picture(object_path, ref.camera, r, cfg.eval.radius)
    a, b = ref.alpha[0, ..., 0] > 0.5, truth[..., 0] > 0.5
    return round(float((a & b).sum()) / max(1, int((a | b).sum())), 4)


def make_pictures(recipes: list[str], objects: list[dict], views: list[dict], size: int, fill: str,
                  work: Path) -> dict:
    """Render every (recipe, object, view) picture into ``work/pictures`` (rewritten only when its bytes
    change): {(recipe, prompt, view): {"path", "fill", "framing_iou"}}. ``fill``: ``measured``, ``recipe`` or a
    number (module docstring)."""
    from dreamcore.files import atomic_write_bytes

    out = {}
    folder = Path(work) / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    for recipe, obj, view in itertools.product(recipes, objects, views):
        cfg = text.recipe_config(recipe)
        cam = picture_camera(recipe, view["azimuth"], view["elevation"])
        rgb, alpha = render_picture(obj["path"], cam, size, cfg.eval.radius)
        path = folder / f"{text.slug(recipe, obj['prompt'], view['view'], size)}.png"
        data = png_bytes(rgb, alpha)
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
        if fill == "measured":
            f = round(picture_fill(alpha, cam, cfg.image.radius), 4)
        else:
            f = float(cfg.image.fill if fill == "recipe" else fill)
        out[(recipe, obj["prompt"], view["view"])] = {
            "path": str(path.resolve()), "fill": f, "framing_iou": framing_iou(path, recipe, view, f, obj["path"])}
    return out


# -- the report ----------------------------------------------------------------------------------------------------
def method(r: dict) -> str:
    """A row's prior kind as the report names it (``multiview``, ``2d``, ``multiview (picture only)``)."""
    return r["prior"] if r.get("prompt_mode", "named") == "named" else f"{r['prior']} (picture only)"


def summarize(results: list[dict], objects: list[dict], views: list[str]) -> tuple[list[dict], str]:
    """Rows per (recipe, prior kind, prompt mode, object, view) with medians over seeds, and the markdown report
    (the floors, then multiview against 2d per object and view)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r["recipe"], r["prior"], r.get("prompt_mode", "named"), r["object"], r.get("view", "front"))
        groups.setdefault(key, []).append(r)
    order = {v: i for i, v in enumerate(views)}
    rows = []
    for (recipe, prior, mode, obj, view), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"recipe": recipe, "prior": prior, "prompt_mode": mode, "object": obj, "view": view,
               "runs": len(rs), "failed": len(rs) - len(ok)}
        for key in ("glb_iou", "glb_psnr", "glb_janus", "glb_depth_rel", "ref_psnr", "ref_iou", "framing_iou",
                    "seconds"):
            row[key] = text.median([r.get(key) for r in ok])
        row["commits"] = sorted({str(r.get("commit") or "?") for r in ok})
        row["missed"] = text.floor_failures(row, FLOORS)
        row["floors"] = bool(ok) and not row["missed"]
        rows.append(row)
    rows.sort(key=lambda r: (r["recipe"], r["object"], order.get(r["view"], len(order)), r["view"],
                             PRIORS.index(r["prior"]) if r["prior"] in PRIORS else 9,
                             PROMPT_MODES.index(r["prompt_mode"]) if r["prompt_mode"] in PROMPT_MODES else 9))
    f, fmt = FLOORS, text.fmt
    lines = ["# Image-to-3D benchmark", "",
             f"Objects: {', '.join(o['prompt'] for o in objects)}; views: {', '.join(views)}. Each run starts from "
             "one picture of the object (rendered at that view, framed by the image loader) and is scored by its "
             "exported GLB at held-out cameras all around against the object (medians over seeds). Floors (issue "
             f"37): IoU ≥ {f['glb_iou']:.2f}, PSNR ≥ {f['glb_psnr']:g} dB, Janus 0 (≤ {f['glb_janus']}), "
             f"≤ {f['seconds']:.0f} s per run. Framing IoU: the framed picture's silhouette against the object's "
             "render at the picture's camera (the loader centres the object, which its own projection need not "
             "be) — the reference view's ceiling. Ref PSNR: the asset at the picture's camera against the "
             "picture. Runs: the seeds scored; commit: the commit(s) the rows were made at.", "",
             "| recipe | prior | object | view | IoU | PSNR (dB) | Janus | depth err | ref PSNR (dB) | framing IoU | "
             "s/run | runs | commit | floors |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        missed = ", ".join(r["missed"]) if r["runs"] > r["failed"] else "no finished run"
        verdict = "pass" if r["floors"] else f"FAIL: {missed}"
        lines.append(f"| {r['recipe']} | {method(r)} | {r['object']} | {r['view']} | {fmt(r['glb_iou'], 3)} | "
                     f"{fmt(r['glb_psnr'])} | {fmt(r['glb_janus'])} | {fmt(r['glb_depth_rel'], 4)} | "
                     f"{fmt(r['ref_psnr'])} | {fmt(r['framing_iou'], 3)} | {fmt(r['seconds'], 0)} | {r['runs']} | "
                     f"{', '.join(r['commits'])} | {verdict}{failed} |")
    per: dict[tuple, list[dict]] = {}
    for r in rows:
        per.setdefault((r["recipe"], method(r)), []).append(r)
    lines += ["", "Per recipe and prior, over objects and views (means of the medians):", "",
              "| recipe | prior | IoU | PSNR (dB) | Janus | views at the floors |", "|---|---|---|---|---|---|"]
    for (recipe, m), rs in per.items():
        avg = lambda k: text.mean([r[k] for r in rs])  # noqa: E731
        lines.append(f"| {recipe} | {m} | {fmt(avg('glb_iou'), 3)} | {fmt(avg('glb_psnr'))} | "
                     f"{fmt(avg('glb_janus'))} | {sum(r['floors'] for r in rs)}/{len(rs)} |")
    pairs = side_by_side(rows)
    if pairs:
        lines += ["", "Multi-view prior against the 2D prior with view prompts (the Zero123-less baseline), same "
                  "picture, the object's prompt (medians over seeds):", "",
                  "| recipe | object | view | IoU multiview | IoU 2d | PSNR multiview (dB) | PSNR 2d (dB) | "
                  "Janus multiview | Janus 2d |", "|---|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            mv, b = p["multiview"] or {}, p["2d"] or {}
            lines.append(f"| {p['recipe']} | {p['object']} | {p['view']} | {fmt(mv.get('glb_iou'), 3)} | "
                         f"{fmt(b.get('glb_iou'), 3)} | {fmt(mv.get('glb_psnr'))} | {fmt(b.get('glb_psnr'))} | "
                         f"{fmt(mv.get('glb_janus'))} | {fmt(b.get('glb_janus'))} |")
    return rows, "\n".join(lines) + "\n"


def side_by_side(rows: list[dict]) -> list[dict]:
    """Per recipe, object and view with a named-prompt row of either prior kind: {"multiview": row or None,
    "2d": row or None}, in the report's order."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if r["prompt_mode"] != "named" or r["prior"] not in PRIORS:
            continue
        key = (r["recipe"], r["object"], r["view"])
        out.setdefault(key, {"recipe": key[0], "object": key[1], "view": key[2], "multiview": None, "2d": None})
        out[key][r["prior"]] = r
    return list(out.values())


def picture(path: Path, results: list[dict], objects: list[dict], views: list[dict], res: int = 40) -> None:
    """One labelled row per object and view: the input picture (re-rendered at ``res``), then each prior kind's
    GLB ring (its lowest seed present), under a header naming the prior kinds."""
    import numpy as np
    from PIL import Image, ImageDraw

    methods = sorted({(r["recipe"], method(r)) for r in results}, key=lambda m: (m[0], m[1] != "multiview", m[1]))
    best: dict[tuple, dict] = {}
    for r in sorted((r for r in results if "error" not in r), key=lambda r: -r.get("seed", 0)):
        best[(r["recipe"], method(r), r["object"], r.get("view"))] = r
    recipes = sorted({m[0] for m in methods}) or list(RECIPES)
    blocks = [(o, v) for o in objects for v in views]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([120] + [int(measure.textlength(f"{o['prompt']}, {v['view']}")) + 10 for o, v in blocks])
    block, gap, top = text.RING * res, 6, 14
    width = label_w + res + gap + len(methods) * (block + gap)
    img = Image.new("RGB", (width, top + len(blocks) * (res + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((label_w, 1), "picture", fill=(0, 0, 0))
    for mi, m in enumerate(methods):
        draw.text((label_w + res + gap + mi * (block + gap), 1), "/".join(m), fill=(0, 0, 0))
    for bi, (o, v) in enumerate(blocks):
        y = top + bi * (res + 4)
        draw.text((4, y + res // 2 - 6), f"{o['prompt']}, {v['view']}", fill=(0, 0, 0))
        cam = picture_camera(recipes[0], v["azimuth"], v["elevation"])
        rgb, _ = render_picture(o["path"], cam, res, text.recipe_config(recipes[0]).eval.radius)
        img.paste(Image.fromarray((rgb.numpy() * 255 + 0.5).astype(np.uint8)), (label_w, y))
        for mi, m in enumerate(methods):
            r = best.get((*m, o["prompt"], v["view"]))
            frames = text.result_frames(r, res) if r else None
            if frames is not None:
                arr = (frames.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
                img.paste(Image.fromarray(np.concatenate(list(arr), axis=1)),
                          (label_w + res + gap + mi * (block + gap), y))
    img.save(path)


# -- the command ---------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior-folder", default=PRIOR_2D, help="the 2D prior of the 2d prior kind")
    ap.add_argument("--mv-prior-folder", default=None, help=f"the multi-view prior (default the first of "
                    f"{', '.join(MV_FOLDERS)} that exists)")
    ap.add_argument("--object", action="append", default=[], metavar="MESH:PROMPT",
                    help="objects to run (default: the multi-view prior folder's own, else the 2D one's)")
    ap.add_argument("--views", default=VIEWS, help=f"comma-separated: {', '.join(NAMED_VIEWS)}, AZ or AZ:EL "
                    f"(default {VIEWS})")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated image-to-3D recipes")
    ap.add_argument("--priors", default=None, help=f"comma-separated (default {','.join(PRIORS)})")
    ap.add_argument("--prompt-mode", default="named", help="comma-separated: named (the object's prompt) and/or "
                    "empty (the picture alone; image-conditioned multi-view folders only)")
    ap.add_argument("--picture-size", type=int, default=PICTURE_SIZE, help="px a side of the rendered pictures")
    ap.add_argument("--fill", default="measured", help="image.fill: measured (the picture's own, default), recipe, "
                    "or a number")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each on --threads threads)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="bench/image-to-3d-runs", help="pictures and run folders")
    ap.add_argument("--out", default="bench/image_to_3d.md")
    ap.add_argument("--rows", default=None, help=f"row files (default {ROWS}; with --quick, WORK/rows)")
    ap.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="start no run that would end past this many minutes (one seed of everything first)")
    ap.add_argument("--docs", default=None, metavar="PAGE",
                    help="also rewrite this page's bench_image_to_3d section (docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 object, 1 seed, toy steps and sizes")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    args = ap.parse_args(argv)

    folder = resolve_path(args.prior_folder)
    mv_folder = resolve_path(args.mv_prior_folder) if args.mv_prior_folder else default_mv_folder()
    recipes = [r for r in args.recipes.split(",") if r]
    priors = [p for p in (args.priors or ",".join(PRIORS)).split(",") if p]
    modes = [m for m in args.prompt_mode.split(",") if m]
    for what, got, valid in (("--priors", priors, PRIORS), ("--prompt-mode", modes, PROMPT_MODES)):
        if not got or any(x not in valid for x in got):
            raise SystemExit(f"{what}: {','.join(got) or '(none)'}; valid: {', '.join(valid)}")
    if args.fill not in ("measured", "recipe"):
        try:
            float(args.fill)
        except ValueError:
            raise SystemExit(f"--fill {args.fill!r}: measured, recipe or a number") from None
    views = [parse_view(v) for v in args.views.split(",") if v.strip()]
    pairs = combos(priors, modes, folder, mv_folder, args.priors is not None or args.mv_prior_folder is not None)
    if not pairs:
        raise SystemExit("no runs: no prior kind of --priors can run in the --prompt-mode asked")
    objects = [text.parse_object(o) for o in args.object] or text.default_objects(mv_folder, folder)
    extra = list(args.overrides)
    if args.quick:
        objects, views, args.seeds = objects[:1], views[:1], 1
    work = Path(args.work)
    rows_dir = Path(args.rows) if args.rows else (work / "rows" if args.quick else resolve_path(ROWS))
    pictures = make_pictures(recipes, objects, views, args.picture_size, args.fill, work)
    jobs = text.informative_order(plan(recipes, pairs, objects, views, args.seeds, pictures, folder, mv_folder, work))
    quick = {j["name"]: quick_overrides(j["recipe"], j["prior"]) if args.quick else [] for j in jobs}
    for j in jobs:
        j["config_hash"] = planned_hash(j, quick[j["name"]] + extra)
    print(f"{len(jobs)} runs ({', '.join(f'{p}/{m}' for p, m in pairs)} × {len(recipes)} recipes × {len(objects)} "
          f"objects × {len(views)} views × {args.seeds} seeds), {args.jobs} at a time; pictures in {work / 'pictures'}"
          f"; rows in {rows_dir}" + (f"; budget {args.budget:g} min" if args.budget else ""), flush=True)
    results, t0 = text.run_all(jobs, lambda j: text.run_one(j, quick[j["name"]] + extra, args.threads, None,
                                                            rows_dir), args.budget, rows_dir, args.jobs, BudgetGate)
    failed = [r for r in results if "error" in r]
    # the report: every row present (this invocation's and earlier ones'), and this invocation's failures
    present = bench_rows.load_rows(rows_dir)
    report_results = present + failed
    shown = text.shown_objects(objects, present)
    labels = {v["view"] for v in views}
    shown_views = list(views) + list({r["view"]: {k: r[k] for k in ("view", "azimuth", "elevation")}
                                      for r in present if r.get("view") not in labels and "azimuth" in r}.values())
    rows, report = summarize(report_results, shown, [v["view"] for v in shown_views])
    report += text.invocation_note(jobs, results, t0, present, rows_dir,
                                   f"{args.jobs} at a time, {args.threads} thread(s) each")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "side_by_side": side_by_side(rows),
                                                    "pictures": [{"recipe": k[0], "object": k[1], "view": k[2], **v}
                                                                 for k, v in pictures.items()],
                                                    "runs": report_results}, indent=1, default=str))
    picture(out.with_suffix(".png"), report_results, shown, shown_views)
    if args.docs:
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_image_to_3d", report)
    print(report)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
