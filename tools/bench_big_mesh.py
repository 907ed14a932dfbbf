"""Big input meshes: load time, one-time render cost and seconds per training step against the robot.

Builds a bumpy textured sphere at each ``--faces`` count with a ``--texture``² base-colour texture (GLB), then
for ``reference-nerf`` (the mesh as the reference prior's object) and ``texture`` (the mesh as ``mesh=``, the
representation being textured) times ``--steps`` training steps after a warm-up. For the reference prior it
reports the step with the render cache (the default for big meshes: a fixed set of training views, each
rendered once) and without it (``prior.reference.render_cache=0 camera.views=0``: a render every step), and the
one-time cost of rendering the whole view set. Ratios are to the shipped robot's step, measured in this run.

    .venv/bin/python tools/bench_big_mesh.py --faces 100000 1000000 --out bench/big_mesh.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_sphere(faces: int, texture: int, path: Path) -> int:
    """A bumpy UV sphere with about ``faces`` triangles and a ``texture``² gradient/checker texture."""
    import trimesh
    from PIL import Image

    k = max(8, int(np.sqrt(faces / 4)))
    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[k, k])
    v = mesh.vertices
    bump = 1 + 0.05 * np.sin(8 * np.arctan2(v[:, 1], v[:, 0])) * np.cos(6 * v[:, 2])
    mesh.vertices = v * bump[:, None]
    uv = np.stack([(np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi)) % 1.0, (v[:, 2] + 1) / 2], 1)
    yy, xx = np.mgrid[0:texture, 0:texture]
    img = np.stack([xx * 255 // texture, yy * 255 // texture, ((xx // 256 + yy // 256) % 2) * 200], -1)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(img.astype(np.uint8)),
                                                   metallicFactor=0.0, roughnessFactor=1.0)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh.export(path)
    return len(mesh.faces)


def time_steps(config: str, overrides: list[str], steps: int, warmup: int, run_dir: Path) -> dict:
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    cfg = load_config(config_path(config), overrides + [f"run.dir={run_dir}"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, RunDir(run_dir))
    setup = time.perf_counter() - t0
    prior = getattr(trainer.system, "prior", None)
    prefill = 0.0
    if trainer.view_set is not None and getattr(prior, "cache_limit", 0) > 0:  # render the view set once
        t0 = time.perf_counter()
        res = cfg.camera.resolution
        for i in range(0, len(trainer.view_set), 16):
            prior.render_reference(trainer.view_set[torch.arange(i, min(i + 16, len(trainer.view_set)))], res, res)
        prefill = time.perf_counter() - t0
    for s in range(warmup):
        trainer.train_step(s)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        trainer.train_step(s)
    return {"setup_s": setup, "prefill_s": prefill, "step_s": (time.perf_counter() - t0) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--texture", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/big_mesh.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dreamcore.meshes.io import load_mesh

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        meshes = [("robot (shipped)", ROOT / "assets/robot.glb", None)]
        for n in args.faces:
            path = tmp / f"sphere-{n}.glb"
            meshes.append((f"sphere {n // 1000}k faces, {args.texture}² texture", path, make_sphere(n, args.texture, path)))
        base = {}
        for label, path, _ in meshes:
            t0 = time.perf_counter()
            asset = load_mesh(path)
            load_s = time.perf_counter() - t0
            faces = int(asset.faces.shape[0])
            common = [f"run.threads={args.threads}"]
            cases = [("reference-nerf", "cached", [f"prior.reference.mesh={path}"]),
                     ("reference-nerf", "no cache", [f"prior.reference.mesh={path}", "prior.reference.render_cache=0",
                                                     "camera.views=0"]),
                     ("texture", "mesh=", [f"mesh={path}"])]
            for config, mode, overrides in cases:
                if mode == "no cache" and faces <= 200_000 and label.startswith("robot"):
                    continue
                r = time_steps(config, overrides + common, args.steps, args.warmup, tmp / f"run-{len(rows)}")
                key = (config, "cached" if mode == "no cache" else mode)
                if label.startswith("robot"):
                    base[key] = r["step_s"]
                ratio = r["step_s"] / base[key] if key in base else float("nan")
                rows.append((label, faces, config, mode, load_s, r["setup_s"], r["prefill_s"], r["step_s"], ratio))
                print(rows[-1], flush=True)
    lines = ["# Big input meshes: cost per training step", "",
             f"{args.steps} steps after {args.warmup} warm-up steps, {args.threads} threads, this machine. "
             "`ratio` = s/step over the shipped robot's s/step in the same config, measured in this run. "
             "`prefill` = rendering the reference at every fixed training view once (paid in the first steps).", "",
             "| mesh | faces | config | reference renders | load (s) | setup (s) | prefill (s) | s/step | ratio |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for label, faces, config, mode, load_s, setup, prefill, step, ratio in rows:
        lines.append(f"| {label} | {faces} | {config} | {mode} | {load_s:.1f} | {setup:.1f} | {prefill:.1f} | "
                     f"{step:.3f} | {ratio:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
