"""Editing benchmark (issue 38): edit a reconstruction of an object toward a variant of it that differs only inside
a box, with each editing guidance, with and without the box as the edit's region, and score what changed inside
the box and what stayed outside it. Weight-free: the prior is the closed-form reference prior of two meshes.

**The pair** (:func:`build_target`). The source A is a mesh (default ``assets/robot.glb``); the target A′ is A with
a part replaced inside an axis-aligned box given in A's own coordinates (the frame of the runs' ``model.glb``): the
faces of A whose centroids lie in the box are removed and a closed shape of another colour filling the box (a box,
or the ellipsoid inscribed in it) is added. Each object's box is chosen so that every removed face lies wholly in
it (the tool checks it and prints the box), so A′ differs from A inside the box only. A′ is written as a GLB (one
material per colour, as ``dreamcore.meshes.io.load_mesh`` reads it) to ``WORK/meshes/``. The robot's box is its
chest: the front of the torso and the textured chest panel become a deep-blue block standing 0.1 out of it.

**The source run**: ``configs/reference-nerf.yaml`` (``--representations nerf``) or ``reference-gaussians.yaml``
(``gaussians``, with ``refine.config=`` so that its ``model.glb`` is extracted as the edit's is) with
``prompt=<source prompt>`` and ``prior.reference.meshes={"<source prompt>": A, "<target prompt>": A′}`` (the
source first: the scene frame is A's), at the recipe's defaults. One per object, representation and seed, shared
by its edits.

**The edits**: for each method of ``--methods`` (``dds``, ``pds``, ``sds``: ``configs/edit-<method>.yaml``) and
region of ``--regions`` (``box``: the box as ``--region box:...``; ``none``: the whole asset editable, no
identity terms — the recipes' defaults), ``dreamcore.edit(SOURCE, <target prompt>, source_prompt=<source
prompt>, region=..., config="edit-<method>", overrides=...)`` with ``guidance.guidance_scale=1`` (what the recipes'
comments ask of the closed-form prior), ``--steps`` steps (default the recipe's, 400) and the recipe's other
settings; ``key=value`` arguments are added to every edit. Wall time: the whole ``dreamcore.edit`` call (training,
export of ``model.glb``, the run's own scoring).

**The scores**, at :data:`SCORING`'s held-out cameras (16 orbit cameras, elevation 15–30°, azimuths all around,
distance 3.2, fov 40°, a seed of this tool's own), 64 px, over white. The box's **footprint** in a view is the set
of pixels with a ray that passes through the box: the ray through the pixel's centre (from the camera forward; what
a field's render casts) or one of the 2 × 2 rays through its subpixels' centres (what the supersampled mesh
renders cast) — a slab test, ``dreamcore.systems.edit.rays_meet_box``, the test the edit's identity term uses.
Everything an edit with the box as its region may change is seen in it, and nothing seen outside it lies in the
box. Pooled over the views' pixels:

* inside — silhouette IoU (alpha > ½) and PSNR of the edited run's renders (``Run.render``) against A′'s renders
  (``dreamcore.meshes.render.render_mesh``, supersampled 2×) on the footprint: floors IoU ≥ 0.90, PSNR ≥ 25 dB;
* outside — PSNR of the edited run's renders against the SOURCE run's own renders at the same cameras on the
  pixels outside the footprint (≥ 35 dB; ∞ when identical, written as 100 dB with its MSE 0);
* the exported GLB — its vertices outside the box (A's frame): the distance of each to the surface of the source
  run's ``model.glb`` (exact point-to-triangle distance) as a fraction of that GLB's bounding-box diagonal; the
  fraction within 0.5 % and the 99th percentile (floor: p99 ≤ 0.5 %, i.e. at least 99 % of them within); and the
  GLBs' renders scored as the runs' are (inside against A′, outside against the source's GLB);
* the edit's wall time (≤ 300 s on 2 cores).

The source run gets a row too: how far it starts from A′ inside the box (the "before" line of the table), and its
reconstruction of A (PSNR, IoU over all pixels).

**Rows** (``tools/bench_rows.py``): ``--rows`` (default ``bench/edit/rows``) ``/<object>-<representation>-
<method>-<region>-<seed>.json`` per edit and ``.../<object>-<representation>-source-<seed>.json`` per source,
each with its renders at the picture's cameras beside it (``.png``). An edit's config hash is that of the merged
config it would run with (the source's planned config with the recipe and its overrides laid over it, as ``dreamcore
edit`` merges them), its ``init.from_run`` replaced by the source's config hash, with :data:`SCORING` added; the
mesh files named (A and A′) enter by their content alone, not by where they lie. A row with its job's hash is not
run again, so the grid is filled a few runs at a time; a source run is made (or its finished folder under ``WORK``
reused) only when one of its edits must run or its own row is missing. Runs go seed by seed, each source before its
edits; ``--budget MINUTES`` starts no run that would end past the budget (expected time: the median of the present
rows of its kind, representation and method). Runs are made in this process, one at a time, on ``--threads``.

**The report** ``--out`` (default ``bench/edit.md``, with ``.json`` and ``.png``: per object and representation,
source, target and every edit side by side at three cameras) from every row present: per object and representation
a table method × region → inside IoU, inside PSNR, outside PSNR, the GLB's vertices outside the box within 0.5 %
(and their p99), s/edit, with the floors pass or FAIL naming the missed ones (medians over seeds), under a "source
(no edit)" line; then the GLBs' renders. ``--docs PAGE`` rewrites that page's ``bench_edit`` section
(``tools/docs_section.py``).

    .venv/bin/python tools/bench_edit.py --docs docs/benchmarks.md   # robot × {nerf, gaussians} × 3 × 2
    .venv/bin/python tools/bench_edit.py --representations nerf --methods dds --regions box --budget 20
    .venv/bin/python tools/bench_edit.py --steps 200 optimizer.lr=0.02  # other edit settings: new rows
    .venv/bin/python tools/bench_edit.py --quick                         # a smoke run of the tool itself (~1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamcore.files import resolve_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rows  # noqa: E402  (tools/, beside this script)
import bench_text_to_3d as text  # noqa: E402

# objects with their box (A's own frame: x0,y0,z0,x1,y1,z1), prompts, and the replacement's shape and colour
OBJECTS = {
    "robot": {"path": "assets/robot.glb", "source": "a toy robot", "target": "a toy robot with a blue chest",
              # the torso's front (its faces on a 0.1 × 0.0875 grid: the box's sides fall between face centroids,
              # so every removed face lies in it; y1 is above the chest panel's top, 0.24, and below the centroids
              # of the next row's faces, 0.2417) and the chest panel; the block stands 0.1 out of the torso
              "box": (-0.31, -0.32, 0.05, 0.31, 0.241, 0.35), "shape": "box", "color": (0.05, 0.12, 0.75)},
}
CUSTOM = {"source": "the object", "target": "the object with a blue part", "shape": "box", "color": (0.05, 0.12, 0.75)}
REPRESENTATIONS = {"nerf": "reference-nerf", "gaussians": "reference-gaussians"}
SOURCE_OVERRIDES = {"gaussians": ["refine.config="]}  # the GLB by marching cubes of the Gaussians, as an edit's
METHODS = ("dds", "pds", "sds")
REGIONS = ("box", "none")
# what the recipes' comments ask of the closed-form reference prior (ω = 1: its conditional denoiser alone)
EDIT_OVERRIDES = ["guidance.guidance_scale=1.0"]
COMMON = ["run.progress=false", "run.val_every=0", "export.formats=[glb]"]
# held-out cameras and how they are scored (part of every edit's hash: a change is a new row)
SCORING = {"views": 16, "seed": 3838, "elevation_range": [15.0, 30.0], "distance": 3.2, "fov": 40.0,
           "resolution": 64, "supersample": 2, "footprint": "a pixel's centre ray or a subpixel's meeting the box",
           "glb_tolerance": 0.005}
PICTURE = {"azimuths": [0.0, 45.0, 90.0], "elevation": 20.0, "resolution": 64}
FLOORS = {"inside_iou": 0.90, "inside_psnr": 25.0, "outside_psnr": 35.0, "glb_outside_p99": 0.005, "seconds": 300.0}
UPPER_BOUNDS = ("glb_outside_p99", "seconds")
FLOOR_NAMES = {"inside_iou": "inside IoU", "inside_psnr": "inside PSNR", "outside_psnr": "outside PSNR",
               "glb_outside_p99": "GLB outside", "seconds": "s/edit"}
PSNR_CAP = 100.0  # the PSNR written for identical pixels (their MSE is kept too: 0)
# --quick: tests/test_edit.py's tiny sizes (a few steps; this checks the tool, not the method)
QUICK_SOURCE = ["run.steps=30", "run.checkpoint_every=0", "camera.resolution=24", "camera.batch_size=2",
                "system.rays_per_view=48", "eval.views=2", "eval.resolution=16", "prior.bank_views=4",
                "export.resolution=40", "export.texture_size=64", "export.target_faces=2000"]
QUICK_NERF = ["representation.n_levels=4", "representation.log2_table_size=12", "representation.max_resolution=64",
              "representation.occupancy_resolution=16", "representation.occupancy_update_every=2",
              "export.isosurface=1.0"]
QUICK_GAUSSIANS = ["run.steps=12", "representation.init_points=300", "system.densify.start=2",
                   "system.densify.every=2", "system.densify.stop=6"]
QUICK_EDIT = ["run.steps=6", "run.checkpoint_every=0"]
QUICK_SCORING = {"views": 4, "resolution": 32}
QUICK_PICTURE = {"resolution": 32}
ROWS = "bench/edit/rows"


def quiet(*_):
    return None


# -- the pair ------------------------------------------------------------------------------------------------------
def parse_box(text_: str) -> tuple[float, ...]:
    """``x0,y0,z0,x1,y1,z1`` → six floats with x0 < x1, y0 < y1, z0 < z1 (SystemExit naming what is wrong)."""
    try:
        box = tuple(float(v) for v in text_.split(","))
    except ValueError:
        box = ()
    if len(box) != 6 or not all(map(math.isfinite, box)) or not all(box[i] < box[i + 3] for i in range(3)):
        raise SystemExit(f"box {text_!r}: six numbers x0,y0,z0,x1,y1,z1 with x0 < x1, y0 < y1, z0 < z1")
    return box


def parse_object(spec: str) -> dict:
    """An ``--object``: a name of :data:`OBJECTS`, or ``MESH:x0,y0,z0,x1,y1,z1[:SOURCE PROMPT[:TARGET PROMPT]]``
    (the box in the mesh's own coordinates; a blue box fills it)."""
    if spec in OBJECTS:
        return {"name": spec, **OBJECTS[spec], "path": str(resolve_path(OBJECTS[spec]["path"]).resolve())}
    parts = spec.split(":")
    if len(parts) < 2:
        raise SystemExit(f"--object {spec!r}: one of {', '.join(OBJECTS)}, or MESH:x0,y0,z0,x1,y1,z1"
                         "[:SOURCE PROMPT[:TARGET PROMPT]]")
    path = resolve_path(parts[0]).resolve()
    if not path.is_file():
        raise SystemExit(f"--object {spec!r}: no mesh file {path}")
    obj = {"name": text.slug(Path(parts[0]).stem), **CUSTOM, "path": str(path), "box": parse_box(parts[1])}
    if len(parts) > 2 and parts[2].strip():
        obj["source"] = parts[2].strip()
    if len(parts) > 3 and parts[3].strip():
        obj["target"] = parts[3].strip()
    if obj["source"] == obj["target"]:
        raise SystemExit(f"--object {spec!r}: the source and target prompts must differ")
    return obj


def box_region(obj: dict) -> str:
    return "box:" + ",".join(f"{v:g}" for v in obj["box"])


def inside_box(points: torch.Tensor, lo, hi) -> torch.Tensor:
    """[N] bool: ``lo ≤ p ≤ hi`` on every axis (the closed box)."""
    lo, hi = torch.as_tensor(lo, dtype=points.dtype), torch.as_tensor(hi, dtype=points.dtype)
    return ((points >= lo) & (points <= hi)).all(-1)


def filling_shape(lo, hi, shape: str):
    """(vertices [V, 3], faces [F, 3]) of a closed mesh filling the box lo..hi: the box itself, or the ellipsoid
    inscribed in it (``sphere``)."""
    import trimesh

    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if shape == "box":
        m = trimesh.creation.box(bounds=np.stack([lo, hi]))
    elif shape == "sphere":
        m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
        m.vertices = m.vertices * (hi - lo) / 2 + (lo + hi) / 2
    else:
        raise SystemExit(f"shape {shape!r}: box or sphere")
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


def build_target(asset, box, shape: str = "box", color=(0.05, 0.12, 0.75)):
    """A′: ``asset`` (a MeshAsset in its own frame) without the faces whose centroids lie in ``box``, plus a closed
    ``shape`` filling the box with a material of its own (``color``, display values). Returns (A′, info): the
    removed and added face counts and ``spill``, how far the removed faces reach outside the box (0: A′ differs
    from A inside the box only)."""
    from dreamcore.meshes.asset import Material

    lo, hi = torch.tensor(box[:3], dtype=torch.float32), torch.tensor(box[3:], dtype=torch.float32)
    tri = asset.vertices[asset.faces]  # [F, 3, 3]
    removed = inside_box(tri.mean(1), lo, hi)
    if not bool(removed.any()):
        raise SystemExit(f"box {box}: no face of the mesh has its centroid in it")
    corners = tri[removed].reshape(-1, 3)
    spill = float((torch.maximum(lo - corners, corners - hi).clamp_min(0)).norm(dim=-1).max())
    verts, faces = filling_shape(box[:3], box[3:], shape)
    n = asset.vertices.shape[0]
    new_v = torch.as_tensor(verts, dtype=asset.vertices.dtype)
    new_f = torch.as_tensor(faces, dtype=asset.faces.dtype) + n
    material = len(asset.materials)
    face_material = asset.face_material if asset.face_material is not None else torch.zeros(
        len(asset.faces), dtype=torch.int64)
    out = replace(
        asset,
        vertices=torch.cat([asset.vertices, new_v]),
        faces=torch.cat([asset.faces[~removed], new_f]),
        uvs=None if asset.uvs is None else torch.cat([asset.uvs, asset.uvs.new_zeros(len(new_v), 2)]),
        vertex_colors=None if asset.vertex_colors is None else torch.cat(
            [asset.vertex_colors, asset.vertex_colors.new_ones(len(new_v), 3)]),
        face_material=torch.cat([face_material[~removed], torch.full((len(new_f),), material, dtype=torch.int64)]),
        materials=[*asset.materials, Material(base_color=tuple(float(c) for c in color))])
    return out, {"removed_faces": int(removed.sum()), "added_faces": len(new_f), "spill": round(spill, 6)}


def write_target(obj: dict, folder: Path) -> dict:
    """Build A′ of ``obj`` and write it as ``folder/<name>-target.glb`` (glTF colours as dreamcore writes them:
    factors and vertex colours linear, textures sRGB); returns ``obj`` with ``target_path`` and the build info."""
    from dreamcore.meshes.io import asset_to_trimesh, load_mesh

    target, info = build_target(load_mesh(obj["path"]), obj["box"], obj["shape"], obj["color"])
    if info["spill"] > 1e-6:
        print(f"warning: {obj['name']}: removed faces reach {info['spill']:.4f} outside the box: A′ differs from A "
              "outside it there too", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{obj['name']}-target.glb"
    data = asset_to_trimesh(target, linear_colors=True).export(file_type="glb")
    if not path.is_file() or path.read_bytes() != data:  # the same bytes leave the file (and its mtime) alone
        path.write_bytes(data)
    return {**obj, "target_path": str(path.resolve()), **info}


def scene_transform(obj: dict, radius: float = 0.9):
    """A's scene transform (the reference prior normalizes the first of ``prior.reference.meshes``)."""
    from dreamcore.meshes.io import load_mesh, normalize

    return normalize(load_mesh(obj["path"]), radius)[1]


def scene_box(obj: dict, radius: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """The box in the scene frame (lo [3], hi [3])."""
    t = scene_transform(obj, radius)
    box = torch.tensor(obj["box"], dtype=torch.float64)
    return t.to_scene(box[:3]).float(), t.to_scene(box[3:]).float()


def mesh_in_scene(path, obj: dict, radius: float = 0.9):
    """A mesh file in A's own frame (A, A′, a run's ``model.glb``) placed in the scene frame."""
    from dreamcore.meshes.io import load_mesh

    asset = load_mesh(path)
    return replace(asset, vertices=scene_transform(obj, radius).to_scene(asset.vertices))


# -- the scores ----------------------------------------------------------------------------------------------------
def scoring_cameras(scoring: dict):
    """The held-out cameras of :data:`SCORING` (a seeded orbit of their own)."""
    from dreamcore.cameras import sample_orbit

    g = torch.Generator().manual_seed(scoring["seed"])
    return sample_orbit(scoring["views"], g, tuple(scoring["elevation_range"]), (-180.0, 180.0),
                        (scoring["distance"],) * 2, (scoring["fov"],) * 2)


def picture_cameras(picture: dict, scoring: dict):
    from dreamcore.cameras import orbit_cameras

    n = len(picture["azimuths"])
    return orbit_cameras(torch.full((n,), picture["elevation"]), torch.tensor(picture["azimuths"]),
                         torch.full((n,), scoring["distance"]), torch.full((n,), scoring["fov"]))


def footprint(cameras, resolution: int, lo, hi, supersample: int = 1) -> torch.Tensor:
    """[V, H, W] bool: the pixels with a ray that passes through the box lo..hi (scene frame): the ray through the
    pixel centre (forward from the camera: what a field's render casts), or with ``supersample`` s > 1 any of the
    s × s rays through the centres of its subpixels (the mesh renderer's supersampling grid, so that no subpixel
    outside the footprint sees the box either)."""
    from dreamcore.systems.edit import rays_meet_box

    s, n = max(1, int(supersample)), len(cameras)
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    hit = rays_meet_box(cameras, (resolution, resolution), None, lo, hi).reshape(n, resolution, resolution)
    if s > 1:
        sub = rays_meet_box(cameras, (resolution * s, resolution * s), None, lo, hi)
        hit = hit | sub.reshape(n, resolution, s, resolution, s).any(dim=4).any(dim=2)
    return hit


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean squared difference of images a, b [V, H, W, C] over the pixels of ``mask`` [V, H, W] (all channels);
    None when the mask is empty."""
    if not bool(mask.any()):
        return None
    return float(((a.double() - b.double()) ** 2)[mask].mean())


def psnr_of(mse: float | None) -> float | None:
    """PSNR (dB, images in [0, 1]) of an MSE: :data:`PSNR_CAP` for 0 (identical), None for None."""
    if mse is None:
        return None
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, -10.0 * math.log10(mse))


def masked_iou(alpha_a: torch.Tensor, alpha_b: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5):
    """Silhouette IoU (alpha > ``threshold``) of alphas [V, H, W] over the pixels of ``mask``, pooled over views
    (1.0 when neither covers any of them; None for an empty mask)."""
    if not bool(mask.any()):
        return None
    a, b = (alpha_a > threshold) & mask, (alpha_b > threshold) & mask
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def region_scores(rgb, alpha, reference_rgb, reference_alpha, kept_rgb, mask) -> dict:
    """Inside the footprint ``mask`` against the target's renders (IoU, PSNR), outside it against the kept source's
    renders (PSNR); images [V, H, W, 3], alphas [V, H, W]."""
    inside = masked_mse(rgb, reference_rgb, mask)
    outside = masked_mse(rgb, kept_rgb, ~mask)
    return {"inside_iou": masked_iou(alpha, reference_alpha, mask), "inside_psnr": psnr_of(inside),
            "inside_mse": inside, "outside_psnr": psnr_of(outside), "outside_mse": outside,
            "footprint": float(mask.double().mean())}


def glb_outside(vertices: torch.Tensor, source_vertices: torch.Tensor, source_faces: torch.Tensor, box,
                tolerance: float = 0.005) -> dict:
    """The vertices of an edit's GLB outside ``box`` (all in A's frame) against the source GLB's surface: the
    distance of each to it (exact, point to triangle) over the source GLB's bounding-box diagonal — the fraction
    within ``tolerance``, the 99th percentile and the largest (distances past 10 % of the diagonal are counted as
    10 %)."""
    from dreamcore.meshes.region import _FaceClusters, surface_distance

    box_t = torch.tensor(box, dtype=torch.float64)
    used = source_vertices[source_faces.unique()].double()
    diag = float((used.amax(0) - used.amin(0)).norm())
    out = vertices.double()[~inside_box(vertices.double(), box_t[:3], box_t[3:])]
    if len(out) == 0 or diag <= 0:
        return {"glb_outside_vertices": int(len(out)), "glb_outside_within": None, "glb_outside_p99": None,
                "glb_outside_max": None}
    d = surface_distance(out, _FaceClusters(source_vertices.double()[source_faces]), band=0.1 * diag) / diag
    return {"glb_outside_vertices": int(len(out)), "glb_outside_within": float((d <= tolerance).double().mean()),
            "glb_outside_p99": float(torch.quantile(d, 0.99)), "glb_outside_max": float(d.max())}


class Renders:
    """rgb [V, H, W, 3] and alpha [V, H, W] over white."""

    def __init__(self, rgb: torch.Tensor, alpha: torch.Tensor):
        self.rgb, self.alpha = rgb.float(), alpha.float()


def run_renders(run_dir: Path, cameras, resolution: int) -> Renders:
    """A run's scene (``dreamcore.load_run(...).render``) at ``cameras``, over white."""
    import dreamcore

    views = dreamcore.load_run(run_dir).render(cameras, resolution=resolution)
    return Renders(torch.from_numpy(np.stack([v.rgb for v in views])),
                   torch.from_numpy(np.stack([v.alpha for v in views])))


def mesh_renders(asset, cameras, resolution: int, supersample: int = 2) -> Renders:
    from dreamcore.meshes.render import render_mesh

    m = render_mesh(asset, cameras, resolution, resolution, supersample=supersample,
                    background=torch.ones(len(cameras), 3))
    return Renders(m.rgb, m.alpha[..., 0])


def glb_asset(run_dir: Path):
    """A run's ``model.glb`` (A's frame), or None when it has none (or an empty one)."""
    from dreamcore.meshes.io import load_mesh

    glb = Path(run_dir) / "model.glb"
    try:
        return load_mesh(glb) if glb.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable or empty mesh is scored as missing
        return None


class Scorer:
    """What every edit of one (object, representation, seed) is scored against, made once: the cameras, the
    footprint, A′'s renders, the source run's renders and GLB."""

    def __init__(self, obj: dict, source_dir: Path, scoring: dict, picture: dict):
        self.obj, self.scoring, self.picture = obj, scoring, picture
        r = scoring["resolution"]
        self.cameras = scoring_cameras(scoring)
        self.lo, self.hi = scene_box(obj)
        self.mask = footprint(self.cameras, r, self.lo, self.hi, scoring["supersample"])
        self.target = mesh_renders(mesh_in_scene(obj["target_path"], obj), self.cameras, r, scoring["supersample"])
        self.source = run_renders(source_dir, self.cameras, r)
        self.source_glb = glb_asset(source_dir)
        self.source_glb_renders = None if self.source_glb is None else mesh_renders(
            self._in_scene(self.source_glb), self.cameras, r, scoring["supersample"])

    def _in_scene(self, asset):
        return replace(asset, vertices=scene_transform(self.obj).to_scene(asset.vertices))

    def source_scores(self) -> dict:
        """Where the source starts: inside the footprint against A′, and its reconstruction of A (all pixels)."""
        whole = mesh_renders(mesh_in_scene(self.obj["path"], self.obj), self.cameras, self.scoring["resolution"],
                             self.scoring["supersample"])
        s = region_scores(self.source.rgb, self.source.alpha, self.target.rgb, self.target.alpha, self.source.rgb,
                          self.mask)
        everything = torch.ones_like(self.mask)
        s["recon_psnr"] = psnr_of(masked_mse(self.source.rgb, whole.rgb, everything))
        s["recon_iou"] = masked_iou(self.source.alpha, whole.alpha, everything)
        if self.source_glb_renders is not None:
            g = region_scores(self.source_glb_renders.rgb, self.source_glb_renders.alpha, self.target.rgb,
                              self.target.alpha, self.source_glb_renders.rgb, self.mask)
            s.update({f"glb_{k}": v for k, v in g.items() if k != "footprint"})
            s["glb_outside_within"], s["glb_outside_p99"] = 1.0, 0.0
        return s

    def edit_scores(self, edit_dir: Path) -> dict:
        edit = run_renders(edit_dir, self.cameras, self.scoring["resolution"])
        s = region_scores(edit.rgb, edit.alpha, self.target.rgb, self.target.alpha, self.source.rgb, self.mask)
        glb = glb_asset(edit_dir)
        if glb is not None and self.source_glb is not None:
            g = mesh_renders(self._in_scene(glb), self.cameras, self.scoring["resolution"], self.scoring["supersample"])
            gs = region_scores(g.rgb, g.alpha, self.target.rgb, self.target.alpha, self.source_glb_renders.rgb,
                               self.mask)
            s.update({f"glb_{k}": v for k, v in gs.items() if k != "footprint"})
            s.update(glb_outside(glb.vertices, self.source_glb.vertices, self.source_glb.faces, self.obj["box"],
                                 self.scoring["glb_tolerance"]))
        return s

    def strip(self, run_dir: Path | None) -> np.ndarray:
        """[R, n·R, 3] uint8: a run's renders at the picture's cameras side by side (A′'s when ``run_dir`` is
        None)."""
        cams, r = picture_cameras(self.picture, self.scoring), self.picture["resolution"]
        rgb = (mesh_renders(mesh_in_scene(self.obj["target_path"], self.obj), cams, r).rgb if run_dir is None
               else run_renders(run_dir, cams, r).rgb)
        return (np.concatenate(list(rgb.clamp(0, 1).numpy()), axis=1) * 255 + 0.5).astype(np.uint8)


# -- what runs -----------------------------------------------------------------------------------------------------
def meshes_override(obj: dict) -> str:
    return "prior.reference.meshes=" + json.dumps({obj["source"]: obj["path"], obj["target"]: obj["target_path"]},
                                                  ensure_ascii=False)


def source_job(obj: dict, rep: str, seed: int, work: Path, quick: bool, steps: int | None) -> dict:
    overrides = [f"prompt={json.dumps(obj['source'], ensure_ascii=False)}", meshes_override(obj), f"run.seed={seed}",
                 *SOURCE_OVERRIDES.get(rep, []), *COMMON]
    if quick:
        overrides += QUICK_SOURCE + (QUICK_NERF if rep == "nerf" else QUICK_GAUSSIANS)
    if steps:
        overrides.append(f"run.steps={steps}")
    name = text.slug(obj["name"], rep, "source", seed)
    return {"kind": "source", "name": name, "object": obj["name"], "representation": rep, "method": "source",
            "region": "", "seed": seed, "recipe": REPRESENTATIONS[rep], "overrides": overrides,
            "dir": str(work / name)}


def source_tree(job: dict) -> dict:
    from dreamcore.config import config_path, load_config, to_tree

    return to_tree(load_config(config_path(job["recipe"]), job["overrides"]))


def edit_job(obj: dict, source: dict, method: str, region: str, work: Path, quick: bool, steps: int | None,
             extra: list[str]) -> dict:
    overrides = [*EDIT_OVERRIDES, *(QUICK_EDIT if quick else []), *([f"run.steps={steps}"] if steps else []), *extra]
    name = text.slug(obj["name"], source["representation"], method, region, source["seed"])
    return {"kind": "edit", "name": name, "object": obj["name"], "representation": source["representation"],
            "method": method, "region": region, "seed": source["seed"], "recipe": f"edit-{method}",
            "region_spec": box_region(obj) if region == "box" else None, "overrides": overrides,
            "source": source["name"], "source_dir": source["dir"], "prompt": obj["target"],
            "source_prompt": obj["source"], "dir": str(work / name)}


def edit_tree(job: dict, source_cfg_tree: dict, source_hash: str) -> dict:
    """The merged config the edit would run with, as ``dreamcore.runner.edit.edit_config`` merges it (the source's
    config, its system renamed ``edit``, the recipe, the overrides, then the region and the prompts), its
    ``init.from_run`` the source's config hash instead of a folder."""
    from dreamcore.config import config_path, load_config, prompt_line, to_tree

    tree = json.loads(json.dumps(source_cfg_tree))
    tree["system"] = {**tree.get("system", {}), "name": "edit"}
    lines = ['run.dir=""', *job["overrides"]]
    if job["region_spec"] is not None:
        lines.append(f"system.region={json.dumps(job['region_spec'])}")
    lines += [prompt_line("prompt", job["prompt"]),
              f"system.source_prompt={json.dumps(job['source_prompt'], ensure_ascii=False)}", 'init.from_run="SOURCE"']
    out = to_tree(load_config(config_path(job["recipe"]), lines, base=tree))
    out["init"]["from_run"] = {"source_config_hash": source_hash}
    return out


def by_content(tree: dict) -> dict:
    """A config tree with the files of ``prior.reference.meshes`` replaced by the SHA-256 of their bytes (for its
    hash: the target rebuilt in another work folder is the same pair, a changed one is a new pair)."""
    tree = json.loads(json.dumps(tree))
    meshes = (tree.get("prior") or {}).get("reference", {}).get("meshes")
    if isinstance(meshes, dict):
        tree["prior"]["reference"]["meshes"] = {
            k: {"mesh_sha256": bench_rows.content_hash(str(resolve_path(v).resolve()))} for k, v in meshes.items()}
    return tree


def plan(objects: list[dict], reps: list[str], methods: list[str], regions: list[str], seeds: int, work: Path,
         quick: bool, steps: int | None, source_steps: int | None, extra: list[str], scoring: dict) -> list[dict]:
    """Seed by seed, each source then its edits, every job with its config hash (module docstring)."""
    jobs = []
    for seed in range(seeds):
        for obj in objects:
            for rep in reps:
                src = source_job(obj, rep, seed, work, quick, source_steps)
                raw = source_tree(src)
                tree = by_content(raw)
                src["config_hash"] = bench_rows.config_hash({**tree, "bench_scoring": scoring})
                src["source_hash"] = bench_rows.config_hash(tree)
                jobs.append(src)
                for region in regions:
                    for method in methods:
                        e = edit_job(obj, src, method, region, work, quick, steps, extra)
                        e["config_hash"] = bench_rows.config_hash(
                            {**by_content(edit_tree(e, raw, src["source_hash"])), "bench_scoring": scoring})
                        jobs.append(e)
    return jobs


class BudgetGate(text.BudgetGate):
    """The text-only benchmark's budget, a run's expected time taken from the rows of its kind, representation and
    method."""

    matches = (("kind", "representation", "method"), ("kind", "representation"), ("kind",))


def reusable_row(job: dict, rows_dir: Path) -> dict | None:
    row = bench_rows.read_row(rows_dir / f"{job['name']}.json")
    return row if row is not None and row["config_hash"] == job["config_hash"] else None


def source_ready(job: dict) -> bool:
    """Whether the source's folder under WORK is this job's finished run (its planned hash, a checkpoint)."""
    d = Path(job["dir"])
    stamp = d / "bench_hash.txt"
    return (stamp.is_file() and stamp.read_text().strip() == job["source_hash"] and (d / "metrics.json").is_file()
            and (d / "ckpt").is_dir())


def run_source(job: dict, threads: int) -> float:
    """Make the source run (in this process); returns its wall time."""
    import shutil

    from dreamcore.config import config_path, load_config
    from dreamcore.runner.generate import generate

    d = Path(job["dir"])
    if d.exists():
        shutil.rmtree(d)
    cfg = load_config(config_path(job["recipe"]), [*job["overrides"], f"run.threads={threads}", f"run.dir={d}"])
    t0 = time.perf_counter()
    generate(cfg, announce=quiet)
    wall = time.perf_counter() - t0
    (d / "bench_hash.txt").write_text(job["source_hash"] + "\n")
    (d / "bench_seconds.txt").write_text(f"{wall:.1f}\n")
    return wall


def run_edit(job: dict, threads: int) -> float:
    """The edit (``dreamcore.edit``, in this process) into its folder under WORK; returns its wall time."""
    import shutil

    import dreamcore

    d = Path(job["dir"])
    if d.exists():
        shutil.rmtree(d)
    t0 = time.perf_counter()
    dreamcore.edit(job["source_dir"], job["prompt"], job["source_prompt"], region=job["region_spec"],
                   config=job["recipe"], overrides=[*job["overrides"], f"run.threads={threads}"], run_dir=d,
                   progress=False, announce=quiet)
    return time.perf_counter() - t0


def make_row(job: dict, scores: dict, seconds: float, threads: int, commit: str | None, metrics: dict,
             strip: np.ndarray, rows_dir: Path) -> dict:
    from PIL import Image

    keep = ("kind", "name", "object", "representation", "method", "region", "seed", "recipe", "config_hash")
    row = {k: job[k] for k in keep}
    row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in scores.items()})
    row.update({f"run_{k}": metrics.get(k) for k in ("scene_psnr", "scene_iou", "glb_psnr", "glb_iou")})
    row.update({"seconds": round(seconds, 1), "threads": threads, "cpu_count": os.cpu_count(), "commit": commit,
                "made": time.strftime("%Y-%m-%d %H:%M:%S"), "dir": bench_rows.relative_path(job["dir"]),
                "picture": f"{job['name']}.png"})
    rows_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(rows_dir / row["picture"])
    bench_rows.write_row(rows_dir / f"{job['name']}.json", row)
    return row


def run_all(jobs: list[dict], objects: dict, rows_dir: Path, threads: int, budget: float | None, scoring: dict,
            picture: dict) -> tuple[list[dict], float]:
    """Every job in order: its row when it has its hash; else (budget permitting) the run and its row. A source is
    made (or its finished folder under WORK reused) when one of its edits must run or its own row is missing; its
    edits fail when it cannot be made and wait for a later budget when it may not start."""
    t0 = time.perf_counter()
    gate = BudgetGate(budget, bench_rows.load_rows(rows_dir), t0)
    needed = {j["source"] for j in jobs if j["kind"] == "edit" and reusable_row(j, rows_dir) is None}
    scorers: dict[str, Scorer] = {}
    lost: dict[str, str] = {}  # source name → why its edits cannot run ("budget", or its error)
    results = []

    def prepare_source(job: dict, row: dict | None) -> dict:
        """The source's run (made unless its folder is this job's finished run), its scorer, and its row (written
        when missing or when the run was made again)."""
        ready = source_ready(job)
        d = Path(job["dir"])
        if not ready:
            if not gate.may_start(job, None):
                raise TimeoutError("budget")
            commit = bench_rows.git_commit()
            print(f"  source {job['name']} ...", flush=True)
            run_source(job, threads)
            (d / "bench_commit.txt").write_text(f"{commit}\n")
        scorer = scorers[job["name"]] = Scorer(objects[job["object"]], d, scoring, picture)
        if row is not None and ready:
            return {**job, **row, "reused": True}
        seconds = float((d / "bench_seconds.txt").read_text())
        commit = (d / "bench_commit.txt").read_text().strip() if (d / "bench_commit.txt").is_file() else None
        metrics = json.loads((d / "metrics.json").read_text())
        row = make_row(job, scorer.source_scores(), seconds, threads, commit, metrics, scorer.strip(d), rows_dir)
        print(f"  {job['name']}: reconstruction PSNR {text.fmt(row['recon_psnr'])} dB; inside the box against the "
              f"target IoU {text.fmt(row['inside_iou'], 3)}, PSNR {text.fmt(row['inside_psnr'])} dB; {seconds:.0f} s",
              flush=True)
        return {**job, **row, "reused": ready}

    for job in jobs:
        row = reusable_row(job, rows_dir)
        if job["kind"] == "source":
            if row is not None and job["name"] not in needed:
                results.append({**job, **row, "reused": True})
                continue
            try:
                results.append(prepare_source(job, row))
            except TimeoutError:
                lost[job["name"]] = "budget"
                results.append({**job, "skipped": "budget"})
            except Exception as e:  # noqa: BLE001 - one failed run is one failed row
                lost[job["name"]] = f"its source failed: {type(e).__name__}: {e}"
                print(f"  FAILED {job['name']}: {type(e).__name__}: {e}", flush=True)
                results.append({**job, "error": f"{type(e).__name__}: {e}"})
            continue
        if row is not None:
            results.append({**job, **row, "reused": True})
            continue
        why = lost.get(job["source"])
        if why == "budget" or (why is None and not gate.may_start(job, rows_dir)):
            results.append({**job, "skipped": "budget"})
            continue
        if why is not None:
            results.append({**job, "error": why})
            continue
        try:
            commit = bench_rows.git_commit()
            seconds = run_edit(job, threads)
            d = Path(job["dir"])
            metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
            scorer = scorers[job["source"]]
            row = make_row(job, scorer.edit_scores(d), seconds, threads, commit, metrics, scorer.strip(d), rows_dir)
        except Exception as e:  # noqa: BLE001 - one failed edit is one failed row
            print(f"  FAILED {job['name']}: {type(e).__name__}: {e}", flush=True)
            results.append({**job, "error": f"{type(e).__name__}: {e}"})
            continue
        results.append({**job, **row, "reused": False})
        print(f"  {job['name']}: inside IoU {text.fmt(row['inside_iou'], 3)}, PSNR {text.fmt(row['inside_psnr'])} dB; "
              f"outside PSNR {show_psnr(row, 'outside')} dB; GLB vertices outside within 0.5 %: "
              f"{pct(row.get('glb_outside_within'))}; {seconds:.0f} s", flush=True)
    return results, t0


# -- the report ----------------------------------------------------------------------------------------------------
def pct(v, digits=1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def show_psnr(row: dict, side: str, prefix: str = "") -> str:
    """A row's ``<prefix><side>_psnr``, ∞ where its MSE is 0 (identical pixels)."""
    mse = row.get(f"{prefix}{side}_mse")
    if mse == 0:
        return "∞"
    return text.fmt(row.get(f"{prefix}{side}_psnr"))


def floor_failures(row: dict) -> list[str]:
    out = []
    for key, bound in FLOORS.items():
        v = row.get(key)
        if v is None or (v > bound if key in UPPER_BOUNDS else v < bound):
            out.append(FLOOR_NAMES[key])
    return out


def summarize(results: list[dict], scoring: dict | None = None) -> tuple[list[dict], str]:
    """Medians over seeds per (object, representation, method, region), and the markdown report (``scoring``: the
    cameras the rows were scored at, as the report describes them; default :data:`SCORING`)."""
    sc = scoring or SCORING
    el = "–".join(f"{v:g}" for v in sc["elevation_range"])
    keys = ("inside_iou", "inside_psnr", "inside_mse", "outside_psnr", "outside_mse", "glb_inside_iou",
            "glb_inside_psnr", "glb_inside_mse", "glb_outside_psnr", "glb_outside_mse", "glb_outside_within",
            "glb_outside_p99", "glb_outside_max", "recon_psnr", "recon_iou", "run_glb_psnr", "seconds", "footprint")
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if r.get("skipped"):
            continue
        groups.setdefault((r["object"], r["representation"], r["kind"], r["method"], r.get("region", "")), []).append(r)
    method_order = {m: i for i, m in enumerate(METHODS)}
    rows = []
    for (obj, rep, kind, method, region), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"object": obj, "representation": rep, "kind": kind, "method": method, "region": region,
               "runs": len(rs), "failed": len(rs) - len(ok)}
        for k in keys:
            row[k] = text.median([r.get(k) for r in ok])
        row["commits"] = sorted({str(r.get("commit") or "?") for r in ok})
        if kind == "edit":
            row["missed"] = floor_failures(row)
            row["floors"] = bool(ok) and not row["missed"]
        rows.append(row)
    reps = list(REPRESENTATIONS)
    rows.sort(key=lambda r: (r["object"], reps.index(r["representation"]) if r["representation"] in reps else 9,
                             r["representation"], r["kind"] != "source",
                             REGIONS.index(r["region"]) if r["region"] in REGIONS else 9,
                             method_order.get(r["method"], 9), r["method"]))
    f, fmt = FLOORS, text.fmt
    lines = ["# Editing benchmark", "",
             "Each source run reconstructs the object with the closed-form reference prior of two meshes, the object "
             "(the source prompt) and its target — the object with a part replaced inside a box (the target "
             "prompt); each edit then edits it toward the target prompt (`dreamcore edit`, the recipe "
             "`configs/edit-<method>.yaml`, ω = 1), with the box as its region (`box`) or the whole asset "
             f"editable (`none`). Scored at {sc['views']} held-out cameras (elevation {el}°, a seed of the tool's "
             f"own), {sc['resolution']} px over white, pooled over the views: **inside** — the box's footprint, the "
             "pixels with a ray through the box (through the pixel's centre or one of its 2 × 2 subpixels'): "
             "silhouette IoU and PSNR of the edited run's renders against the target's; **outside** — "
             "the other pixels: PSNR against the source run's own renders (∞: identical); **GLB outside** — the "
             "exported `model.glb`'s vertices outside the box within 0.5 % of the source GLB's bounding-box "
             "diagonal of its surface (and their 99th percentile). Medians over seeds. Floors (issue 38): inside "
             f"IoU ≥ {f['inside_iou']:.2f}, inside PSNR ≥ {f['inside_psnr']:g} dB, outside PSNR ≥ "
             f"{f['outside_psnr']:g} dB, GLB p99 ≤ {100 * f['glb_outside_p99']:g} %, ≤ {f['seconds']:.0f} s an "
             "edit (the whole `dreamcore.edit` call: training, export, the run's own scoring). The `source (no "
             "edit)` line is where every edit starts: the source run against the target inside the box (its s/edit: "
             "the source run's own time)."]
    for obj, rep in dict.fromkeys((r["object"], r["representation"]) for r in rows):
        part = [r for r in rows if r["object"] == obj and r["representation"] == rep]
        src = next((r for r in part if r["kind"] == "source"), None)
        lines += ["", f"**{obj}, {rep}**" + (f" (source: reconstruction PSNR {fmt(src['recon_psnr'])} dB, IoU "
                                             f"{fmt(src['recon_iou'], 3)}; the box's footprint "
                                             f"{pct(src['footprint'])} of the pixels)" if src else ""), "",
                  "| method | region | inside IoU | inside PSNR (dB) | outside PSNR (dB) | GLB outside within 0.5 % | "
                  "GLB p99 | s/edit | runs | commit | floors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in part:
            if r["kind"] == "source":
                lines.append(f"| source (no edit) | – | {fmt(r['inside_iou'], 3)} | {fmt(r['inside_psnr'])} | ∞ | "
                             f"100.0 % | 0.00 % | {fmt(r['seconds'], 0)} | {r['runs']} | {', '.join(r['commits'])} "
                             "| – |")
                continue
            failed = f" ({r['failed']} failed)" if r["failed"] else ""
            verdict = "pass" if r["floors"] else ("FAIL: " + (", ".join(r["missed"]) if r["runs"] > r["failed"]
                                                               else "no finished run"))
            lines.append(f"| {r['method']} | {r['region']} | {fmt(r['inside_iou'], 3)} | {fmt(r['inside_psnr'])} | "
                         f"{show_psnr(r, 'outside')} | {pct(r['glb_outside_within'])} | "
                         f"{pct(r['glb_outside_p99'], 2)} | {fmt(r['seconds'], 0)} | {r['runs']} | "
                         f"{', '.join(r['commits'])} | {verdict}{failed} |")
    if any(r.get("glb_inside_iou") is not None for r in rows):
        lines += ["", "The exported GLBs rendered at the same cameras (inside: against the target; outside: against "
                  "the source run's GLB; whole: the run's own `glb_psnr` against the target at its eval cameras):",
                  "", "| object | representation | method | region | GLB inside IoU | GLB inside PSNR (dB) | "
                  "GLB outside PSNR (dB) | GLB whole PSNR (dB) | largest outside distance |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r.get("glb_inside_iou") is None:
                continue
            name = ("source (no edit)", "–") if r["kind"] == "source" else (r["method"], r["region"])
            lines.append(f"| {r['object']} | {r['representation']} | {name[0]} | {name[1]} | "
                         f"{fmt(r['glb_inside_iou'], 3)} | {fmt(r['glb_inside_psnr'])} | "
                         f"{show_psnr(r, 'outside', 'glb_')} | {fmt(r['run_glb_psnr'])} | "
                         f"{pct(r['glb_outside_max'], 2) if r['kind'] == 'edit' else '–'} |")
    return rows, "\n".join(lines) + "\n"


def picture(path: Path, results: list[dict], objects: dict, rows_dir: Path, scoring: dict, pic: dict) -> None:
    """Per object and representation (the lowest seed present): source, target, then every edit, each its renders
    at the picture's cameras stacked top to bottom, labelled."""
    from PIL import Image, ImageDraw

    done = [r for r in results if "error" not in r and not r.get("skipped") and r.get("picture")]
    blocks = list(dict.fromkeys((r["object"], r["representation"]) for r in done))
    r_px, n = pic["resolution"], len(pic["azimuths"])
    cols = []
    for obj, rep in blocks:
        rs = sorted((r for r in done if r["object"] == obj and r["representation"] == rep),
                    key=lambda r: (r["seed"], r["kind"] != "source",
                                   REGIONS.index(r["region"]) if r["region"] in REGIONS else 9,
                                   METHODS.index(r["method"]) if r["method"] in METHODS else 9))
        seed = rs[0]["seed"]
        cols.append((obj, rep, [r for r in rs if r["seed"] == seed]))
    width = max([len(c[2]) + 1 for c in cols] or [1]) * (r_px + 4) + 4
    top, label_h = 14, 24
    img = Image.new("RGB", (max(width, 200), max(1, len(cols)) * (top + label_h + n * r_px + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    y = 0
    for obj, rep, rs in cols:
        draw.text((4, y + 1), f"{obj}, {rep} (seed {rs[0]['seed']})", fill=(0, 0, 0))
        cells = [("source" if r["kind"] == "source" else f"{r['method']}\n{r['region']}", rows_dir / r["picture"])
                 for r in rs]
        target = objects.get(obj)
        if target is not None and "target_path" in target:
            cells.insert(1 if cells and cells[0][0] == "source" else 0, ("target", target_strip(target, scoring, pic)))
        for i, (label, src) in enumerate(cells):
            x = 4 + i * (r_px + 4)
            for k, line in enumerate(label.split("\n")):
                draw.text((x, y + top + 11 * k), line[: max(4, r_px // 6)], fill=(0, 0, 0))
            strip = np.asarray(Image.open(src).convert("RGB")) if isinstance(src, Path) and src.is_file() else (
                src if isinstance(src, np.ndarray) else None)
            if strip is None:
                continue
            frames = strip.reshape(strip.shape[0], -1, strip.shape[0], 3).transpose(1, 0, 2, 3)  # [n, R, R, 3]
            img.paste(Image.fromarray(np.concatenate(list(frames), axis=0)).resize((r_px, r_px * len(frames))),
                      (x, y + top + label_h))
        y += top + label_h + n * r_px + 6
    img.save(path)


def target_strip(obj: dict, scoring: dict, pic: dict) -> np.ndarray:
    cams, r = picture_cameras(pic, scoring), pic["resolution"]
    rgb = mesh_renders(mesh_in_scene(obj["target_path"], obj), cams, r).rgb
    return (np.concatenate(list(rgb.clamp(0, 1).numpy()), axis=1) * 255 + 0.5).astype(np.uint8)


def invocation_note(jobs: list[dict], results: list[dict], t0: float, present: list[dict], rows_dir: Path,
                    threads: int) -> str:
    ran = sum(not r.get("reused", True) and not r.get("skipped") and "error" not in r for r in results)
    failed = sum("error" in r for r in results)
    skipped = sum(bool(r.get("skipped")) for r in results)
    return (f"\nThis invocation: {len(jobs)} runs planned ({sum(j['kind'] == 'edit' for j in jobs)} edits), {ran} "
            f"run and scored in {time.perf_counter() - t0:.0f} s ({threads} thread(s)), "
            f"{len(results) - ran - failed - skipped} reused from rows, {failed} failed"
            + (f", {skipped} left for a later budget" if skipped else "")
            + f"; the report holds all {len(present)} rows of {bench_rows.relative_path(rows_dir)}.\n")


# -- the command ---------------------------------------------------------------------------------------------------
def split_list(value: str, valid, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in valid]
    if not items or bad:
        raise SystemExit(f"{what}: {value!r}; valid: {', '.join(valid)}")
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--object", action="append", default=[], metavar="NAME|MESH:BOX[:SOURCE[:TARGET]]",
                    help=f"objects (default robot; names: {', '.join(OBJECTS)})")
    ap.add_argument("--representations", default=None, help="comma-separated: nerf, gaussians (default both; "
                    "--quick: nerf)")
    ap.add_argument("--methods", default=None, help="comma-separated: dds, pds, sds (default all; --quick: dds)")
    ap.add_argument("--regions", default=",".join(REGIONS), help="comma-separated: box, none (default both)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="steps of each edit (default the recipe's, 400)")
    ap.add_argument("--source-steps", type=int, default=None, help="steps of each source run (default its recipe's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="bench/edit-runs", help="the target meshes and the run folders")
    ap.add_argument("--out", default="bench/edit.md")
    ap.add_argument("--rows", default=None, help=f"row files (default {ROWS}; with --quick, WORK/rows)")
    ap.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="start no run that would end past this many minutes")
    ap.add_argument("--docs", default=None, metavar="PAGE", help="also rewrite this page's bench_edit section "
                    "(docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="smoke run: toy sizes, a few steps, dds, nerf")
    ap.add_argument("overrides", nargs="*", help="key=value for every edit")
    args = ap.parse_args(argv)

    reps = split_list(args.representations or ("nerf" if args.quick else ",".join(REPRESENTATIONS)),
                      REPRESENTATIONS, "--representations")
    methods = split_list(args.methods or ("dds" if args.quick else ",".join(METHODS)), METHODS, "--methods")
    regions = split_list(args.regions, REGIONS, "--regions")
    if args.seeds < 1:
        raise SystemExit("--seeds must be ≥ 1")
    for o in args.overrides:
        if "=" not in o:
            raise SystemExit(f"{o!r}: overrides are key=value")
    scoring = {**SCORING, **(QUICK_SCORING if args.quick else {})}
    pic = {**PICTURE, **(QUICK_PICTURE if args.quick else {})}
    work = Path(args.work)
    rows_dir = Path(args.rows) if args.rows else (work / "rows" if args.quick else resolve_path(ROWS))
    objects = {}
    for spec in args.object or ["robot"]:
        obj = write_target(parse_object(spec), work / "meshes")
        objects[obj["name"]] = obj
        print(f"{obj['name']}: box {box_region(obj)} (its own frame); target "
              f"{bench_rows.relative_path(obj['target_path'])}: {obj['removed_faces']} faces removed, a "
              f"{obj['shape']} of {obj['added_faces']} faces added; "
              f"prompts {obj['source']!r} → {obj['target']!r}", flush=True)
    jobs = plan(list(objects.values()), reps, methods, regions, args.seeds, work, args.quick, args.steps,
                args.source_steps, list(args.overrides), scoring)
    edits = [j for j in jobs if j["kind"] == "edit"]
    print(f"{len(edits)} edits ({len(objects)} objects × {len(reps)} representations × {len(methods)} methods × "
          f"{len(regions)} regions × {args.seeds} seeds) from {len(jobs) - len(edits)} source runs, {args.threads} "
          f"thread(s); runs in {work}; rows in {rows_dir}" + (f"; budget {args.budget:g} min" if args.budget else ""),
          flush=True)
    results, t0 = run_all(jobs, objects, rows_dir, args.threads, args.budget, scoring, pic)
    failed = [r for r in results if "error" in r]
    present = bench_rows.load_rows(rows_dir)
    report_results = present + failed
    rows, report = summarize(report_results, scoring)
    report += invocation_note(jobs, results, t0, present, rows_dir, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "floors": FLOORS, "scoring": scoring, "picture": pic,
         "objects": [{k: (bench_rows.relative_path(v) if k in ("path", "target_path") else v) for k, v in o.items()}
                     for o in objects.values()],
         "runs": report_results}, indent=1, default=str))
    picture(out.with_suffix(".png"), present, objects, rows_dir, scoring, pic)
    if args.docs:
        from docs_section import replace_section  # tools/, beside this script

        replace_section(args.docs, "bench_edit", report)
    print(report)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
