"""dreamcore's GPU check: one command that proves the CUDA paths on a bare GPU machine in a few minutes.

    python3 tools/gpu_check.py [--out DIR] [--wheels .gpu-wheels]      # on the GPU machine (make gpu-check)
    python3 tools/gpu_check.py --dry-run --out DIR                     # the same script on CPU at tiny sizes

Writes ``DIR/gpu-report.json`` and ``DIR/gpu-report.md`` with, in this order (each section catches its own
failure, so one broken part still leaves a report of the rest; ``--budget`` seconds bound the whole, parts not
started by then are marked skipped):

1. **environment**: GPU, driver, torch, CUDA, cuDNN, Python and the versions of the packages the paths use.
2. **device runs** (while gsplat and nerfacc compile, with the torch renderers): each system (NeRF, Gaussians,
   DMTet mesh; reference prior, so no weights are needed) trained a few steps on the CPU and on the GPU from
   several seeds; the two must agree in distribution (mean training PSNR within ``1 dB + 2·std`` of each other:
   the random streams of the two devices differ, the algorithm must not), and the host reads and CUDA
   synchronisations of a steady step are counted.
3. **cuda tests**: ``pytest -m cuda`` (gsplat vs the torch splat renderer, nerfacc vs the torch volume renderer,
   nvdiffrast when importable, sync debug mode over each system's step), one row per test with its outcome.
4. **timed recipes** at the real sizes: ``dreamfusion-sd``, ``dreamgaussian``, ``magic3d-refine`` at 512² and
   ``prolificdreamer`` (VSD with its LoRA) on a Stable-Diffusion-2.1-base-sized UNet and VAE with random weights
   (saved as a diffusers folder and loaded by the real loading code), in fp16 and bf16: seconds per step (median
   of N after warm-up), peak memory, and the shares of the step spent in the UNet forward passes, the VAE encoder
   (forward and backward), the render (forward and backward) and the rest, timed with CUDA events inside the
   step; the bound is the UNet + VAE time alone.

On the GPU machine, ``--wheels DIR`` installs the bundle of ``tools/gpu_wheels.sh`` with
``pip install --no-index --no-deps --target`` and puts it on the path first; the JIT builds of gsplat and nerfacc
start at once in the background and are waited for before the cuda tests.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the packages the CUDA paths use; their versions go into the report
PACKAGES = ("diffusers", "transformers", "gsplat", "nerfacc", "nvdiffrast", "trimesh", "safetensors", "triton")

# what makes each JIT-compiled package build its CUDA extension (run in a background process)
JIT_BUILDS = {
    "gsplat": "import gsplat.cuda._backend as b; assert b._C is not None, 'gsplat CUDA extension did not build'",
    "nerfacc": "import nerfacc.cuda._backend as b; assert b._C is not None, 'nerfacc CUDA extension did not build'",
}

SYSTEM_RUNS = {  # config: overrides (small scenes: the CPU side of the comparison must be quick)
    "reference-nerf": ["representation.n_levels=8", "representation.log2_table_size=15"],
    "reference-gaussians": ["representation.init_points=2000"],
    "reference-dmtet": ["representation.resolution=32"],
}

RECIPES = {  # recipe: overrides on top of the random SD folder
    "dreamfusion-sd": [],
    "dreamgaussian": ["prior.name=stable-diffusion"],
    "magic3d-refine": ["prior.name=stable-diffusion", "camera.resolution=512"],
    "prolificdreamer": ["prior.name=stable-diffusion"],
}

# Stable Diffusion 2.1-base's UNet and VAE (their published configs), and the tiny sizes of the dry run
SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 cross_attention_dim=1024, use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD21_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
                block_out_channels=(8, 8, 16, 16), norm_num_groups=4, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


# -- set-up -----------------------------------------------------------------------------------------------------
def install_wheels(folder: Path, target: Path) -> dict:
    """Install the wheel bundle into ``target`` (offline, no dependency resolution) and put it on the path."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return {"folder": str(folder), "wheels": [], "note": "no wheels found"}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"folder": str(folder), "wheels": [w.name for w in wheels],
            "megabytes": round(sum(w.stat().st_size for w in wheels) / 2**20, 1)}


def start_jit_builds(work: Path) -> dict:
    """Start the CUDA extension builds of gsplat and nerfacc in the background (the first import compiles)."""
    import torch

    from torch.utils.cpp_extension import CUDA_HOME

    major, minor = torch.cuda.get_device_capability()
    # nerfacc finds nvcc on PATH only, the builds need ninja (beside this python when it is a venv's)
    path = [os.path.dirname(sys.executable)] + ([os.path.join(CUDA_HOME, "bin")] if CUDA_HOME else [])
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", FAST_COMPILE="1",
               MAX_JOBS=str(max(1, (os.cpu_count() or 2) // len(JIT_BUILDS))),
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions"),
               PATH=os.pathsep.join(path + [os.environ.get("PATH", "")]))
    if CUDA_HOME:
        env["CUDA_HOME"] = CUDA_HOME
    os.environ.update({k: env[k] for k in ("TORCH_CUDA_ARCH_LIST", "TORCH_EXTENSIONS_DIR", "PATH", "FAST_COMPILE")
                       + (("CUDA_HOME",) if CUDA_HOME else ())})
    builds = {}
    for name, code in JIT_BUILDS.items():
        log = open(work / f"build-{name}.log", "w")
        builds[name] = (subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT),
                        time.perf_counter(), work / f"build-{name}.log")
    return builds


def wait_jit_builds(builds: dict, timeout: float) -> dict:
    out = {}
    for name, (proc, t0, log) in builds.items():
        try:
            rc = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        out[name] = {"ok": rc == 0, "seconds": round(time.perf_counter() - t0, 1),
                     "note": "" if rc == 0 else ("timed out" if rc is None else " | ".join(tail)[-400:])}
    return out


# -- sections ---------------------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import importlib.metadata as md

    import torch

    env = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
           "cpus": os.cpu_count()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    else:
        env["gpu"] = f"none (CPU dry run: {platform.processor() or platform.machine()})"
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    return env


def cuda_tests(work: Path, timeout: float) -> dict:
    """``pytest -m cuda`` in a child process; one row per test from its JUnit XML."""
    xml = work / "cuda-tests.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    files = sorted(str(f) for f in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in f.read_text())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           f"--junitxml={xml}", *files], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    rows = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, note = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    note = (el.get("message") or "").strip().splitlines()[0][:200] if el.get("message") else ""
            rows.append({"test": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}",
                         "outcome": outcome, "seconds": round(float(case.get("time", 0.0)), 2), "note": note})
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "error", "skipped")}
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "counts": counts,
            "tests": rows, "tail": proc.stdout.strip().splitlines()[-1:] if proc.returncode not in (0, 5) else []}


BROKEN_BUILDS: set[str] = set()  # JIT builds that failed: their renderers fall back to the torch path
BACKEND_OF = {"splat": "gsplat", "volume": "nerfacc"}


def _trainer(config: str, overrides: list[str], run_dir: Path):
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    cfg = load_config(config_path(config), overrides + [f"run.dir={run_dir}"])
    if BACKEND_OF.get(cfg.renderer.name) in BROKEN_BUILDS and getattr(cfg.renderer, "backend", "") == "auto":
        cfg.renderer.backend = "torch"
    return Trainer(cfg, RunDir(run_dir))


def _backend(trainer) -> str:
    r = trainer.system.renderer
    pick = getattr(r, "backend", None)
    name = pick(trainer.device) if callable(pick) else (pick or getattr(r.cfg, "backend", "-"))
    return f"{trainer.cfg.renderer.name}:{name}"


def _training_psnr(trainer) -> float:
    """PSNR of the scene's renders against the reference prior's own views at 4 turntable cameras."""
    import torch

    from dreamcore.cameras import turntable_cameras

    res = trainer.cfg.camera.resolution
    cams = turntable_cameras(4, 15.0, sum(trainer.cfg.camera.distance_range) / 2,
                             sum(trainer.cfg.camera.fov_range) / 2).to(trainer.device)
    white = torch.ones(4, 3, device=trainer.device)
    with torch.no_grad():
        out = trainer.system.render_views(cams, res, res, white).rgb
        ref = trainer.system.prior.reference_views(cams, res, res, white)[0].to(out.device)
    mse = (out.float() - ref.float()).pow(2).mean().clamp_min(1e-10)
    return float(-10.0 * torch.log10(mse))


def _steady_sync_counts(trainer, start: int, device: str) -> dict:
    """Host reads by dreamcore's code (all devices) and CUDA synchronisations (CUDA) over two steady steps."""
    import warnings

    import torch

    from dreamcore.runner.host_sync import count_host_reads

    syncs = None
    with count_host_reads() as reads:
        if device == "cuda":
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for s in range(start, start + 2):
                        trainer.train_step(s)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught) / 2
        else:
            for s in range(start, start + 2):
                trainer.train_step(s)
    return {"host_reads_per_step": {k: v / 2 for k, v in reads.items()}, "cuda_syncs_per_step": syncs}


def device_runs(work: Path, device: str, dry: bool, torch_renderers: bool = False) -> dict:
    """Each system a few steps on the CPU and on ``device`` from several seeds: training PSNR side by side.
    ``torch_renderers``: the torch renderers on both sides (while the CUDA extensions build in the background)."""
    import torch

    steps, seeds = (2, (0, 1)) if dry else (40, (0, 1, 2))
    small = ["run.progress=false", "run.val_every=0", "run.checkpoint_every=0", "run.log_every=100000",
             "camera.resolution=16" if dry else "camera.resolution=64", "camera.batch_size=2", "export.formats=[]",
             f"run.steps={steps + 2}"]
    if dry:
        small += ["prior.bank_views=4"]
    if torch_renderers:
        small += ["renderer.backend=torch"]
    rows = []
    for config, extra in SYSTEM_RUNS.items():
        if out_of_time():
            rows.append({"config": config, "skipped": "time budget", "agree": True})
            continue
        if dry:
            extra = {"reference-nerf": ["representation.n_levels=4", "representation.log2_table_size=12",
                                        "representation.max_resolution=64", "representation.occupancy_resolution=16",
                                        "system.rays_per_view=48"],
                     "reference-gaussians": ["representation.init_points=200"],
                     "reference-dmtet": ["representation.resolution=16"]}[config]
        other = device if device != "cpu" else "cpu-again"
        row = {"config": config}
        for side, dev in (("cpu", "cpu"), (other, device)):
            psnrs, secs = [], []
            for seed in seeds:
                seed = seed if side == "cpu" else seed + 100  # the dry run compares two CPU runs: other seeds
                trainer = _trainer(config, small + extra + [f"run.device={dev}", f"run.seed={seed}"],
                                   work / f"{config}-{side}-{seed}")
                t0 = time.perf_counter()
                for s in range(steps):
                    trainer.train_step(s)
                if dev == "cuda":
                    torch.cuda.synchronize()
                secs.append((time.perf_counter() - t0) / steps)
                trainer.check_finite()
                psnrs.append(_training_psnr(trainer))
                if seed in (seeds[0], seeds[0] + 100) and side != "cpu":
                    row["sync"] = _steady_sync_counts(trainer, steps, dev)
                    row["backend"] = _backend(trainer)
            row[side] = {"psnr": [round(p, 2) for p in psnrs], "s_per_step": round(statistics.median(secs), 4)}
        a, b = row["cpu"]["psnr"], row[other]["psnr"]
        spread = max(statistics.pstdev(a), statistics.pstdev(b))
        row["delta_db"] = round(statistics.mean(b) - statistics.mean(a), 2)
        row["tolerance_db"] = round(1.0 + 2.0 * spread, 2)
        row["agree"] = abs(row["delta_db"]) <= row["tolerance_db"]
        rows.append(row)
    return {"steps": steps, "seeds": len(seeds), "systems": rows, "ok": all(r["agree"] for r in rows)}


def random_sd_folder(folder: Path, dry: bool) -> Path:
    """A diffusers folder shaped like Stable Diffusion 2.1-base (random UNet and VAE; a one-layer text encoder
    of SD's width 1024 over the tiny prior's tokenizer, 77 tokens) — loaded by the prior's real code."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    dtype = torch.float32 if dry else torch.float16
    width = 32 if dry else 1024
    with torch.device("cpu" if dry else "cuda"):  # random init of 865M parameters: seconds on a GPU, not minutes
        UNet2DConditionModel(**(TINY_UNET if dry else SD21_UNET)).to(dtype).cpu().save_pretrained(folder / "unet")
        AutoencoderKL(**(TINY_VAE if dry else SD21_VAE)).to(dtype).cpu().save_pretrained(folder / "vae")
    shutil.copytree(ROOT / "assets" / "tiny-prior" / "tokenizer", folder / "tokenizer")
    tok_cfg = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = 77
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    vocab = json.loads((ROOT / "assets" / "tiny-prior" / "text_encoder" / "config.json").read_text())["vocab_size"]
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=width, num_hidden_layers=1,
                                 num_attention_heads=max(1, width // 64), max_position_embeddings=77,
                                 projection_dim=width, pad_token_id=0, bos_token_id=2, eos_token_id=3)
                  ).save_pretrained(folder / "text_encoder")
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="epsilon").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


class Clock:
    """Marks on the device's timeline: CUDA events on a GPU, the host clock on the CPU (synchronous there)."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def mark(self):
        import torch

        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a


class StepProbe:
    """Timestamps inside a training step: UNet forward passes, the VAE encoder forward and backward, the render
    forward and backward (from the gradient reaching the render to the end of the backward pass)."""

    def __init__(self, trainer, clock: Clock) -> None:
        self.clock, self.trainer = clock, trainer
        self.spans: list[tuple[str, object, object]] = []
        self.unet_calls = 0
        system = trainer.system
        prior = system.prior
        self.handles = []
        unet = getattr(prior, "unet", None)
        if unet is not None:
            self._time_module(unet, "unet", backward=False)
        vae = getattr(prior, "vae", None)
        if vae is not None:
            self._time_module(vae.encoder, "vae", backward=True)
        real_render = system.render_training
        real_backward = trainer.precision.backward

        def render_training(cameras, generator, *args, **kwargs):
            t0 = self.clock.mark()
            out = real_render(cameras, generator, *args, **kwargs)
            self.spans.append(("render", t0, self.clock.mark()))
            if out.rgb.requires_grad:
                out.rgb.register_hook(self._note("render_grad"))
            return out

        def backward(loss):
            real_backward(loss)
            self._marks["backward_end"] = self.clock.mark()

        system.render_training = render_training
        trainer.precision.backward = backward
        self._restore = lambda: (setattr(system, "render_training", real_render),
                                 setattr(trainer.precision, "backward", real_backward))
        self._marks: dict = {}

    def _note(self, key):
        def hook(grad):
            self._marks.setdefault(key, self.clock.mark())
            return grad
        return hook

    def _time_module(self, module, name: str, backward: bool) -> None:
        starts = []

        def pre(mod, args):
            if name == "unet":
                self.unet_calls += 1
            starts.append(self.clock.mark())
            if backward and args and getattr(args[0], "requires_grad", False):
                args[0].register_hook(lambda g: (self._bwd_end(name), g)[1])

        def post(mod, args, out):
            self.spans.append((name, starts.pop(), self.clock.mark()))
            t = out if hasattr(out, "register_hook") else getattr(out, "sample", None)
            if backward and t is not None and t.requires_grad:
                t.register_hook(lambda g: (self._bwd_start(name), g)[1])

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        self._bwd: dict = {}

    def _bwd_start(self, name):
        self._bwd.setdefault(name, []).append([self.clock.mark(), None])

    def _bwd_end(self, name):
        for pair in self._bwd.get(name, []):
            if pair[1] is None:
                pair[1] = self.clock.mark()
                return

    def step(self, s: int) -> dict:
        """Run training step ``s``; the seconds of each part (after the device is done)."""
        import torch

        self.spans, self._marks, self._bwd, self.unet_calls = [], {}, {}, 0
        t0 = self.clock.mark()
        self.trainer.train_step(s)
        t1 = self.clock.mark()
        if self.clock.cuda:
            torch.cuda.synchronize()
        parts = {"unet": 0.0, "vae": 0.0, "render": 0.0}
        for name, a, b in self.spans:
            parts[name] += self.clock.seconds(a, b)
        for name, pairs in self._bwd.items():
            parts[name] += sum(self.clock.seconds(a, b) for a, b in pairs if b is not None)
        if "render_grad" in self._marks and "backward_end" in self._marks:
            parts["render"] += self.clock.seconds(self._marks["render_grad"], self._marks["backward_end"])
        total = self.clock.seconds(t0, t1)
        parts["rest"] = max(total - sum(parts.values()), 0.0)
        parts["step"] = total
        parts["unet_calls"] = self.unet_calls
        return parts

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self._restore()


def timed_recipes(work: Path, device: str, dry: bool, dtypes: list[str], warmup: int, steps: int) -> dict:
    import torch

    folder = random_sd_folder(work / ("sd-tiny-random" if dry else "sd21-base-random"), dry)
    rows = []
    for recipe, extra in RECIPES.items():
        for dtype in dtypes:
            row = {"recipe": recipe, "dtype": dtype}
            if out_of_time():
                row.update(ok=True, skipped="time budget")
                rows.append(row)
                continue
            try:
                over = ["prompt=a toy robot", f"prior.model={folder}", f"prior.dtype={dtype}",
                        f"prior.cache_dir={work / 'prompt-cache'}", f"run.device={device}", "run.progress=false",
                        "run.val_every=0", "run.checkpoint_every=0", "run.log_every=100000", "export.formats=[]",
                        f"run.steps={warmup + steps + 10}"] + extra
                if dry:
                    over += ["camera.resolution=16", "prior.resolution=32"]
                    if recipe == "magic3d-refine":
                        over += ["representation.resolution=16"]
                    if recipe == "dreamgaussian":
                        over += ["representation.init_points=200"]
                    if recipe in ("dreamfusion-sd", "prolificdreamer"):
                        over += ["representation.n_levels=4", "representation.log2_table_size=12"]
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                trainer = _trainer(recipe, over, work / f"recipe-{recipe}-{dtype}")
                clock = Clock(device)
                for s in range(warmup):
                    trainer.train_step(s)
                probe = StepProbe(trainer, clock)
                samples = [probe.step(warmup + i) for i in range(steps)]
                probe.close()
                trainer.check_finite()
                med = {k: statistics.median(x[k] for x in samples) for k in samples[0]}
                step = med["step"]
                row.update(s_per_step=round(step, 4),
                           share={k: round(med[k] / step, 3) if step > 0 else 0.0
                                  for k in ("unet", "vae", "render", "rest")},
                           unet_calls=int(med["unet_calls"]),
                           bound_s=round(med["unet"] + med["vae"], 4),
                           over_bound=round(step / max(med["unet"] + med["vae"], 1e-9), 2),
                           peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
                           resolution=trainer.cfg.camera.resolution, backend=_backend(trainer), ok=True)
                del trainer, probe
            except Exception as e:  # one recipe's failure is a row, not the end of the report
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:400])
            rows.append(row)
    return {"warmup": warmup, "steps": steps, "model": "SD 2.1-base sized, random weights" if not dry else
            "tiny random UNet/VAE (dry run)", "recipes": rows, "ok": all(r["ok"] for r in rows)}


DEADLINE = [float("inf")]  # perf_counter time after which sections skip what they have not started


def out_of_time(margin: float = 20.0) -> bool:
    return time.perf_counter() > DEADLINE[0] - margin


# -- the report -------------------------------------------------------------------------------------------------
def run_section(report: dict, name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    try:
        report[name] = fn(*args)
        report[name]["status"] = "ok" if report[name].get("ok", True) else "failed"
    except Exception as e:
        report[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:600],
                        "traceback": traceback.format_exc().splitlines()[-6:]}
    report[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu-check] {name}: {report[name]['status']} ({report[name]['section_seconds']} s)", flush=True)


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    lines = [f"# dreamcore GPU check — {env.get('gpu', '?')}", "",
             f"{env.get('date', '')} · torch {env.get('torch')} · CUDA {env.get('cuda')} · driver "
             f"{env.get('driver', '-')} · Python {env.get('python')}" + (" · **dry run on CPU**" if report["dry_run"]
                                                                          else ""), ""]
    lines += ["| package | version |", "|---|---|"]
    lines += [f"| {k} | {v or 'not installed'} |" for k, v in env.get("packages", {}).items()]
    builds = report.get("jit_builds")
    if builds:
        lines += ["", "| JIT build | ok | s | note |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['ok']} | {v['seconds']} | {v['note']} |" for k, v in builds.items()]
    t = report.get("cuda_tests", {})
    lines += ["", f"## cuda tests: {t.get('status')}", ""]
    if "counts" in t:
        lines += [", ".join(f"{v} {k}" for k, v in t["counts"].items()), "", "| test | outcome | s | note |",
                  "|---|---|---|---|"]
        lines += [f"| {r['test']} | {r['outcome']} | {r['seconds']} | {r['note']} |" for r in t["tests"]]
    elif "error" in t:
        lines += [t["error"]]
    d = report.get("device_runs", {})
    lines += ["", f"## device runs: {d.get('status')}", ""]
    if "systems" in d:
        other = "cuda" if not report["dry_run"] else "cpu-again"
        lines += [f"{d['steps']} steps from {d['seeds']} seeds per side; training PSNR (dB) against the reference.", "",
                  f"| config | renderer | cpu PSNR | {other} PSNR | Δ dB | tolerance | agree | cpu s/step | "
                  f"{other} s/step | host reads/step | CUDA syncs/step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in d["systems"]:
            if "skipped" in r:
                lines.append(f"| {r['config']} | skipped: {r['skipped']} ||||||||||")
                continue
            sync = r.get("sync", {})
            reads = sum(sync.get("host_reads_per_step", {}).values())
            lines.append(f"| {r['config']} | {r.get('backend', '-')} | {r['cpu']['psnr']} | {r[other]['psnr']} | {r['delta_db']} | "
                         f"{r['tolerance_db']} | {r['agree']} | {r['cpu']['s_per_step']} | {r[other]['s_per_step']} | "
                         f"{reads:g} | {sync.get('cuda_syncs_per_step', '-')} |")
    elif "error" in d:
        lines += [d["error"]]
    r = report.get("timed_recipes", {})
    lines += ["", f"## timed recipes: {r.get('status')}", ""]
    if "recipes" in r:
        lines += [f"{r['model']}; median of {r['steps']} steps after {r['warmup']} warm-up steps. Shares of the "
                  "step: UNet forward passes, VAE encoder forward+backward, render forward+backward, the rest; "
                  "bound = UNet + VAE alone.", "",
                  "| recipe | dtype | res | renderer | s/step | UNet calls | UNet | VAE | render | rest | bound s | "
                  "step / bound | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["recipes"]:
            if "skipped" in x:
                lines.append(f"| {x['recipe']} | {x['dtype']} | skipped: {x['skipped']} ||||||||||")
                continue
            if not x["ok"]:
                lines.append(f"| {x['recipe']} | {x['dtype']} | failed: {x['error']} ||||||||||")
                continue
            sh = x["share"]
            lines.append(f"| {x['recipe']} | {x['dtype']} | {x['resolution']} | {x['backend']} | {x['s_per_step']} | {x['unet_calls']} | "
                         f"{sh['unet']:.0%} | {sh['vae']:.0%} | {sh['render']:.0%} | {sh['rest']:.0%} | {x['bound_s']} | "
                         f"{x['over_bound']} | {x['peak_gib'] if x['peak_gib'] is not None else '-'} |")
    elif "error" in r:
        lines += [r["error"]]
    lines += ["", f"total {report.get('seconds')} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the kit end to end without a GPU")
    ap.add_argument("--out", default=".", help="folder for gpu-report.json / .md")
    ap.add_argument("--wheels", default="", help="wheel folder from tools/gpu_wheels.sh to install first")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--dtypes", nargs="+", default=None, help="prior dtypes of the timed recipes")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["cuda_tests", "device_runs", "timed_recipes"])
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds: parts not started by then are skipped (the report is always written)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    DEADLINE[0] = t_start + a.budget
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work).resolve() if a.work else Path(tempfile.mkdtemp(prefix="dreamcore-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    report: dict = {"dry_run": a.dry_run}
    if a.wheels:
        report["wheels"] = install_wheels(Path(a.wheels).resolve(), work / "site")
    import torch

    device = "cpu" if a.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    if a.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    builds = start_jit_builds(work) if device == "cuda" else {}
    run_section(report, "environment", environment, device)
    if "device_runs" not in a.skip:  # while gsplat and nerfacc build: the torch renderers (no call into a
        # package mid-build), so these runs check run.device=cuda itself; the backends come next
        run_section(report, "device_runs", device_runs, work, device, a.dry_run, bool(builds))
    if builds:
        report["jit_builds"] = wait_jit_builds(builds, timeout=max(30.0, DEADLINE[0] - time.perf_counter() - 200))
        BROKEN_BUILDS.update(k for k, v in report["jit_builds"].items() if not v["ok"])
    if "cuda_tests" not in a.skip:
        run_section(report, "cuda_tests", cuda_tests, work, 240.0)
    if "timed_recipes" not in a.skip:
        dtypes = a.dtypes or (["fp32"] if a.dry_run else ["fp16", "bf16"])
        run_section(report, "timed_recipes", timed_recipes, work, device, a.dry_run, dtypes,
                    a.warmup if a.warmup is not None else (1 if a.dry_run else 5),
                    a.steps if a.steps is not None else (2 if a.dry_run else 10))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu-report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu-report.md").write_text(markdown(report))
    print(markdown(report))
    failed = [k for k, v in report.items() if isinstance(v, dict) and v.get("status") in ("error", "failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
