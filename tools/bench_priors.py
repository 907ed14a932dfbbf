"""Prior benchmark: the UNet forward and VAE encode+backward times that bound one score-distillation step.

Full-size architectures are built from hand-written configs (the released models' ``unet/config.json`` and
``vae/config.json`` for SD 2.1-base, SDXL-base-1.0 and IF-I-XL-v1.0) with random weights — nothing is
downloaded; timings do not depend on the weights' values. One SDS step with CFG costs one UNet forward at batch
2B (conditional + unconditional rows for B views) plus, for latent priors, one VAE encode with its backward at
batch B (the render's gradient goes through the encoder); IF works in pixel space and has no VAE.

    python tools/bench_priors.py --models sd21 --batch 1 2 --dtypes fp32 bf16 --out bench.md
    python tools/bench_priors.py --device cuda --dtypes fp16 bf16 --batch 1 2 4 --models sd21 sdxl if
    python tools/bench_priors.py --quick   # 1/8-width, 1/4-resolution versions: checks the code path in seconds

Writes a markdown table (stdout, and ``--out``): per model, dtype and batch size, the median seconds of a UNet
forward (no grad) and of a VAE encode + backward to the image: medians over ``--repeat`` runs after one
warm-up of the wall clock (``torch.cuda.synchronize`` around each on CUDA) and of the process CPU time (the
figure to read on a shared CPU: with ``--threads 1`` it is the single-core compute time).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

# -- the released architectures (values from their config.json; unlisted fields are diffusers' defaults) --------
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5,
)
SD_VAE = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, act_fn="silu",
)
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
IF_I_XL_UNET = dict(
    sample_size=64, in_channels=3, out_channels=6, layers_per_block=3, block_out_channels=[704, 1408, 2112, 2816],
    down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                      "SimpleCrossAttnDownBlock2D"],
    up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                    "ResnetUpsampleBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64, cross_attention_dim=2816,
    cross_attention_norm="group_norm", encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
    addition_embed_type="text", addition_embed_type_num_heads=64, act_fn="gelu",
    resnet_time_scale_shift="scale_shift", norm_num_groups=32,
)

# text-condition widths: tokens × features the UNet's cross-attention sees (and SDXL's pooled width)
MODELS = {
    "sd21": dict(title="SD 2.1-base", unet=SD21_UNET, vae=SD_VAE, text=(77, 1024)),
    "sdxl": dict(title="SDXL-base-1.0", unet=SDXL_UNET, vae=SDXL_VAE, text=(77, 2048), pooled=1280),
    "if": dict(title="IF-I-XL-v1.0 (stage I)", unet=IF_I_XL_UNET, vae=None, text=(77, 4096)),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WIDTH_KEYS = ("block_out_channels", "cross_attention_dim", "encoder_hid_dim", "addition_time_embed_dim",
              "projection_class_embeddings_input_dim")


def quick_version(spec: dict) -> dict:
    """The same block structure at 1/8 width and 1/4 resolution (for a fast check of the code path)."""
    spec = copy.deepcopy(spec)
    for part in ("unet", "vae"):
        cfg = spec.get(part)
        if cfg is None:
            continue
        for k in WIDTH_KEYS:
            if k in cfg:
                cfg[k] = [v // 8 for v in cfg[k]] if isinstance(cfg[k], list) else cfg[k] // 8
        cfg["norm_num_groups"] = 8
        cfg["sample_size"] = cfg["sample_size"] // 4
        if cfg.get("addition_embed_type") == "text":
            cfg["addition_embed_type_num_heads"] = 8
            cfg["attention_head_dim"] = 8
    spec["text"] = (spec["text"][0], spec["text"][1] // 8)
    if "pooled" in spec:
        spec["pooled"] //= 8
    return spec


def build(cls, cfg: dict, dtype: torch.dtype, device: str):
    """A model of the given config with random weights, allocated directly on the device in ``dtype``."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls(**cfg)
    model = model.to_empty(device=device).to(dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # small random weights keep activations finite in fp16
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p))
        for b in model.buffers():
            b.zero_()
    return model.eval().requires_grad_(False)


def count_params(cls, cfg: dict) -> int:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return sum(p.numel() for p in cls(**cfg).parameters())


def timed(fn, device: str, repeat: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of ``fn()`` over ``repeat`` runs after one warm-up (CPU time
    is the honest figure on a shared CPU; on CUDA the wall clock is what counts)."""
    def once():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    once()
    runs = [once() for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def bench_model(name: str, spec: dict, dtypes: list[str], batches: list[int], device: str, repeat: int) -> list[dict]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    rows = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        unet = build(UNet2DConditionModel, spec["unet"], dtype, device)
        ucfg = spec["unet"]
        for b in batches:
            x = torch.randn(b, ucfg["in_channels"], ucfg["sample_size"], ucfg["sample_size"]).to(device, dtype)
            t = torch.full((b,), 500, device=device)
            emb = torch.randn(b, *spec["text"]).to(device, dtype)
            kw = {}
            if "pooled" in spec:
                kw["added_cond_kwargs"] = {"text_embeds": torch.randn(b, spec["pooled"]).to(device, dtype),
                                           "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).repeat(b, 1)
                                           .to(device, dtype)}

            def unet_forward():
                with torch.no_grad():
                    return unet(x, t, encoder_hidden_states=emb, **kw).sample

            rows.append(dict(model=spec["title"], dtype=dname, batch=b, part=f"UNet forward ({ucfg['sample_size']}²)",
                             seconds=timed(unet_forward, device, repeat)))
            print(rows[-1], file=sys.stderr, flush=True)
        del unet
        if spec.get("vae") is not None:
            vcfg = spec["vae"]
            vae = build(AutoencoderKL, vcfg, dtype, device)
            for b in batches:
                img = torch.rand(b, 3, vcfg["sample_size"], vcfg["sample_size"]).to(device, dtype)

                def vae_encode_backward():
                    leaf = img.clone().requires_grad_(True)
                    z = vae.encode(leaf * 2 - 1).latent_dist.mode()
                    z.float().square().mean().backward()
                    return leaf.grad

                rows.append(dict(model=spec["title"], dtype=dname, batch=b,
                                 part=f"VAE encode+backward ({vcfg['sample_size']}²)",
                                 seconds=timed(vae_encode_backward, device, repeat)))
                print(rows[-1], file=sys.stderr, flush=True)
            del vae
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict], params: dict, device_name: str, threads: int, quick: bool) -> str:
    head = [f"Prior benchmark on {device_name} ({threads} thread(s)){' — QUICK: 1/8-width test models' if quick else ''}",
            "", "| model | parameters (UNet / VAE) | part | dtype | batch | wall s | CPU s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        head.append(f"| {r['model']} | {params[r['model']]} | {r['part']} | {r['dtype']} | {r['batch']} | "
                    f"{r['seconds'][0]:.3f} | {r['seconds'][1]:.3f} |")
    return "\n".join(head) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["sd21"], choices=sorted(MODELS))
    p.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                   help="default: fp16 bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="1/8-width, 1/4-resolution models (code-path check)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtypes = a.dtypes or (["fp16", "bf16"] if a.device.startswith("cuda") else ["fp32"])
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # random-weight models cast with .to(dtype): no advice needed

    rows, params = [], {}
    for name in a.models:
        spec = quick_version(MODELS[name]) if a.quick else MODELS[name]
        n_unet = count_params(UNet2DConditionModel, spec["unet"])
        n_vae = count_params(AutoencoderKL, spec["vae"]) if spec.get("vae") else 0
        params[spec["title"]] = f"{n_unet / 1e6:.0f} M / {n_vae / 1e6:.0f} M" if n_vae else f"{n_unet / 1e6:.0f} M / —"
        print(f"{spec['title']}: UNet {n_unet / 1e6:.1f} M parameters", file=sys.stderr, flush=True)
        rows += bench_model(name, spec, dtypes, a.batch, a.device, a.repeat)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    text = table(rows, params, dev, torch.get_num_threads(), a.quick)
    print(text)
    if a.out is not None:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
