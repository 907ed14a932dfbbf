"""Splat renderer benchmark: seconds per render (forward) and per render + backward of 4 views at several
resolutions, for each available backend (``torch`` everywhere, ``gsplat`` with CUDA), on a Gaussian scene from a
run folder (``--run``, its last checkpoint) or ``--points`` random Gaussians in a ball. Also reports the two
backends' agreement (mean |Δrgb|) where both run. Writes a markdown table to ``--out``.

    .venv/bin/python tools/bench_splat.py --run runs/gaussians --res 64 256 512
    .venv/bin/python tools/bench_splat.py --points 20000 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dreamcore.cameras import orbit_cameras  # noqa: E402
from dreamcore.renderers.splat import SplatRenderer, gsplat_available  # noqa: E402
from dreamcore.representations.gaussians import Gaussians  # noqa: E402


def load_scene(run: str | None, points: int, device: str) -> Gaussians:
    g = Gaussians(Gaussians.Config(init_points=points, init_radius=0.7))
    if run:
        from safetensors.torch import load_file

        t = load_file(str(Path(run) / "ckpt" / "last.safetensors"))
        prefix = "model.representation."
        g.load_state_dict({k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)})
    return g.to(device)


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--points", type=int, default=10000)
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/splat.md")
    a = ap.parse_args(argv)
    g = load_scene(a.run, a.points, a.device)
    backends = ["torch"] + (["gsplat"] if a.device == "cuda" and gsplat_available() else [])
    az = torch.linspace(-180, 180, a.views + 1)[:-1]
    cams = orbit_cameras(torch.full((a.views,), 15.0), az, torch.full((a.views,), 3.2),
                         torch.full((a.views,), 40.0)).to(a.device)
    bg = torch.ones(a.views, 3, device=a.device)
    rows = [f"Gaussians: {len(g)}, views per render: {a.views}, device: {a.device}", "",
            "| backend | resolution | forward s | forward + backward s | mean abs Δrgb vs torch |", "|---|---|---|---|---|"]
    for res in a.res:
        ref = None
        for name in backends:
            r = SplatRenderer(SplatRenderer.Config(backend=name))

            def fwd():
                with torch.no_grad():
                    return r(g, cams, res, res, bg)

            def fwd_bwd():
                g.zero_grad(set_to_none=True)
                r(g, cams, res, res, bg).rgb.mean().backward()

            t_f, t_fb = timed(fwd, a.repeats, a.device), timed(fwd_bwd, a.repeats, a.device)
            img = fwd().rgb
            diff = "" if ref is None else f"{float((img - ref).abs().mean()):.2e}"
            ref = img if ref is None else ref
            rows.append(f"| {name} | {res} | {t_f:.3f} | {t_fb:.3f} | {diff} |")
            print(rows[-1], flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
