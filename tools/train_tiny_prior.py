"""Train a tiny text-conditioned pixel-space diffusion prior on multi-view renders of coloured meshes.

    python tools/train_tiny_prior.py --object assets/robot.glb:"a toy robot" --object car.glb:"a toy car" \\
        --out runs/tiny-prior [--seed 0] [--resolution 32] [--steps 2000] [--batch 32] [--threads 1] \\
        [--views-per-object 3000] [--prediction-type epsilon|v_prediction] [--eval-samples 8] [--quick]
    python tools/train_tiny_prior.py --eval-only runs/tiny-prior      # re-score a saved folder
    python tools/train_tiny_prior.py --bench                          # s/step at 32/64 px, 1/2 threads

Method (the feasibility study ``shared/reference/tiny-prior.md``; DDPM, Ho et al. 2020; DDIM, Song et al. 2021;
classifier-free guidance, Ho & Salimans 2022; v-prediction, Salimans & Ho 2022):

* Data. Each ``--object PATH:PROMPT`` mesh is loaded with dreamcore's ``load_mesh`` and ``normalize(radius=0.9)``
  (as the reference prior does) and rendered by ``render_mesh`` (albedo shading, 2×2 supersampling) over black,
  which gives the premultiplied colour c and the coverage a, from cameras of dreamcore's ``sample_orbit``
  (azimuth uniform over 360°, elevation −10..80° so that "overhead" views exist, distance 3.0..3.4, fov 38..42°).
  A training image is ``c + (1 − a)·b`` with a solid background b drawn afresh every time the image is used:
  white with probability ``--white-fraction`` (1/3), else uniform in [0, 1]³. The caption of a view is the
  engine's own view-dependent prompt, ``view_prompts(prompt)[label_views(el, az)]`` =
  "PROMPT, front|side|back|overhead view" (front |az| < 45°, back |az| > 135°, side otherwise, overhead el > 60°).
  A separate seeded set of held-out views per object is rendered for evaluation.
* Model. A diffusers ``UNet2DConditionModel`` in pixel space (3 channels, x = 2·rgb − 1 ∈ [−1, 1]), widths
  (32, 64, 128), one layer per block, cross-attention at the two lower resolutions (4.1 M parameters at 32 px),
  conditioned on the last hidden state [B, L, 64] of a tiny transformers ``CLIPTextModel`` (2 layers, width 64),
  trained jointly, over a word-level tokenizer built here from the captions' words (``tokenizers`` WordLevel,
  lower-cased, punctuation split off, unknown words -> [UNK]).
* Diffusion. DDPM with Stable Diffusion's schedule (scaled-linear β 0.00085..0.012, 1000 steps), ε- or
  v-prediction, MSE loss, 10 % of captions dropped to "" (the engine's unconditional prompt). AdamW (lr 5e-4,
  100 warm-up steps (a tenth of shorter runs), cosine to 5e-5 over ``--steps``, weight decay 0.01, gradient
  clipping 1.0), EMA 0.999 with warm-up (decay_k = min(0.999, (1 + k)/(10 + k))); the EMA weights are saved.
* Evaluation. Per caption, N DDIM samples (50 steps, "trailing" spacing, CFG ω = 5: ε_u + ω(ε_c − ε_u)).
  With ε-prediction x_T = √ᾱ_T·mean + √(1 − ᾱ_T)·ε starts from the forward-diffused data mean: SD's schedule keeps
  √ᾱ_999 = 0.068 of signal, which a pixel-space ε model reads as colour, so pure noise gives colour casts and
  wrong objects (study §3); v-prediction samples start from pure noise. Each sample is compared with every
  held-out render of every object; the render's background is unknown, so for each render the best solid
  background per channel is fitted in closed form (b = Σ(1−a)(s−c) / Σ(1−a)², clamped to [0, 1]) before the
  PSNR is taken. Reported: PSNR to the nearest render of the named object and of the other objects, prompt
  accuracy (the nearest render over all objects is of the named object), view accuracy (the nearest render of
  the named object carries the caption's view word), and the x̂0 MSE ([0, 1] scale) at t = 20, 400, 950.

Determinism: every random draw (cameras, batches, timesteps, noise, backgrounds, caption dropout, samples) comes
from an explicit ``torch.Generator`` seeded from ``--seed``; the networks' initialisation, which torch modules draw
from the global generator, runs inside ``torch.random.fork_rng`` seeded from ``--seed`` (the caller's global state
is restored). Training length is a number of steps, so the same command and thread count give the same folder.

Output folder (diffusers format, fp32 safetensors, ≈ 17 MB at the default size):
``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` (DDPMScheduler),
``data_mean.safetensors`` (the data mean image in [−1, 1], for the ε sampler's start), ``dreamcore_prior.json``
(objects with sha256, settings, timings, evaluation), ``report.md`` and ``samples.png`` (one row per caption: N
samples, then the 2 nearest held-out renders on their fitted backgrounds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dreamcore.cameras import sample_orbit  # noqa: E402
from dreamcore.files import resolve_path, sha256_file  # noqa: E402
from dreamcore.meshes.io import load_mesh, normalize  # noqa: E402
from dreamcore.meshes.render import render_mesh  # noqa: E402

from dreamcore.views import LABELS, ViewPromptConfig, label_views, view_prompts  # noqa: E402

PIPELINE_CLASS = "DreamcoreTinyPipeline"
META_FILE = "dreamcore_prior.json"
MESH_SUFFIXES = ("glb", "gltf", "obj", "ply")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # ids 0..3
MSE_TIMESTEPS = (20, 400, 950)
FLOORS = {"prompt_accuracy": 0.90, "view_accuracy": 0.70}
MAX_FOLDER_MB = 25.0


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class Settings:
    """Everything that determines the output folder (recorded in ``dreamcore_prior.json``)."""

    seed: int = 0
    resolution: int = 32
    steps: int = 2000
    batch: int = 32
    views_per_object: int = 3000
    eval_views_per_object: int = 300
    prediction_type: str = "epsilon"
    white_fraction: float = 1.0 / 3.0
    caption_dropout: float = 0.1
    elevation_range: tuple[float, float] = (-10.0, 80.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (3.0, 3.4)
    fov_range: tuple[float, float] = (38.0, 42.0)
    uniform_sphere: bool = True  # elevation area-uniform, as the engine's training cameras (sample_orbit default)
    supersample: int = 2
    radius: float = 0.9
    unet_channels: tuple[int, ...] = (32, 64, 128)
    attention_heads: int = 4  # diffusers' ``attention_head_dim`` of UNet2DConditionModel (really the head count)
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 16  # tokens per caption incl. BOS/EOS = the text encoder's positions
    lr: float = 5e-4
    lr_min: float = 5e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class EvalSettings:
    """How a folder is scored (not part of the weights)."""

    samples_per_caption: int = 8
    ddim_steps: int = 50
    cfg: float = 5.0
    mse_images: int = 64
    batch: int = 64
    seed: int = 0


@dataclass
class ObjectSpec:
    """One ``--object PATH:PROMPT``."""

    path: str
    prompt: str
    file: str = ""
    sha256: str = ""


QUICK = dict(steps=8, batch=8, views_per_object=48, eval_views_per_object=24, unet_channels=(16, 32, 32),
             samples_per_caption=2, ddim_steps=10, mse_images=8)


# ------------------------------------------------------------------------------------------------ helpers
def subseed(seed: int, name: str) -> int:
    """A 63-bit seed for the named random stream, derived from ``seed`` (independent streams per name)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the named stream."""
    return torch.Generator().manual_seed(subseed(seed, name))


def parse_object(spec: str) -> ObjectSpec:
    """``PATH:PROMPT`` -> ObjectSpec (the first ``.glb:``/``.obj:``/... separates them, so paths may hold colons)."""
    m = re.match(rf"^(.+?\.(?:{'|'.join(MESH_SUFFIXES)})):(.*)$", spec, flags=re.IGNORECASE)
    if m is None or not m.group(2).strip():
        raise SystemExit(f"--object {spec!r}: expected MESH_PATH:PROMPT, e.g. assets/robot.glb:\"a toy robot\" "
                         f"(mesh formats: {', '.join(MESH_SUFFIXES)})")
    return ObjectSpec(path=m.group(1), prompt=m.group(2).strip())


def captions_for(prompt: str) -> list[str]:
    """The engine's view-dependent captions of ``prompt``, in ``LABELS`` order (front, side, back, overhead)."""
    texts = view_prompts(prompt, ViewPromptConfig())
    return [texts[label] for label in LABELS]


def norm_groups(channels: Sequence[int]) -> int:
    """GroupNorm group count: the largest divisor of 32 that divides every width."""
    g = 32
    for c in channels:
        g = math.gcd(g, int(c))
    return g


def fmt_s(seconds: float) -> str:
    """Seconds as ``12.3s`` or ``4m05s``."""
    seconds = max(0.0, float(seconds))
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.1f}s"


def folder_mb(folder: Path) -> float:
    """Total size of the files under ``folder`` in MB (10⁶ bytes)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


# ------------------------------------------------------------------------------------------------ data
@dataclass
class ViewSet:
    """Renders of all objects: premultiplied colour ``color`` [N, 3, H, W] in [0, 1], coverage ``alpha``
    [N, 1, H, W], object index ``obj`` [N], view label index ``label`` [N] (into LABELS), caption id
    ``caption`` [N] = obj·4 + label, and the cameras' elevation/azimuth in degrees [N]."""

    color: Tensor
    alpha: Tensor
    obj: Tensor
    label: Tensor
    caption: Tensor
    elevation: Tensor
    azimuth: Tensor

    def __len__(self) -> int:
        return self.color.shape[0]


def render_views(asset, n: int, gen: torch.Generator, s: Settings,
                 chunk: int = 256) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` renders of one normalized asset over black from random orbit cameras, in chunks: colour [n, 3, H, W]
    (premultiplied), alpha [n, 1, H, W], elevation and azimuth [n] in degrees."""
    cams = sample_orbit(n, gen, s.elevation_range, s.azimuth_range, s.distance_range, s.fov_range, s.uniform_sphere)
    colors, alphas = [], []
    for start in range(0, n, chunk):
        out = render_mesh(asset, cams[start:start + chunk], s.resolution, s.resolution, supersample=s.supersample,
                          shading="albedo", background=torch.zeros(3))
        colors.append(out.rgb.permute(0, 3, 1, 2).contiguous())
        alphas.append(out.alpha.permute(0, 3, 1, 2).contiguous())
    return torch.cat(colors), torch.cat(alphas), torch.rad2deg(cams.elevation), torch.rad2deg(cams.azimuth)


def load_assets(objects: list[ObjectSpec], radius: float) -> list:
    """Load and normalize every object's mesh (filling in its file name and sha256)."""
    assets = []
    for o in objects:
        path = resolve_path(o.path)
        if not path.is_file():
            raise SystemExit(f"--object {o.path}: no such file")
        digest = sha256_file(path)
        if o.sha256 and o.sha256 != digest:
            print(f"warning: {path} differs from the file the prior was trained on (sha256 {digest[:12]} != "
                  f"{o.sha256[:12]})", file=sys.stderr)
        o.file, o.sha256 = path.name, digest
        assets.append(normalize(load_mesh(path), radius=radius)[0])
    return assets


def build_views(assets: list, n_per_object: int, s: Settings, stream: str) -> tuple[ViewSet, float]:
    """Render ``n_per_object`` views of each asset from the seeded stream ``stream/<i>``; returns the set and the
    rendering time in seconds."""
    cfg = ViewPromptConfig()
    parts = []
    t0 = time.perf_counter()
    for i, asset in enumerate(assets):
        color, alpha, el, az = render_views(asset, n_per_object, generator(s.seed, f"{stream}/{i}"), s)
        label = torch.tensor([LABELS.index(x) for x in label_views(el, az, cfg)], dtype=torch.long)
        obj = torch.full((n_per_object,), i, dtype=torch.long)
        parts.append((color, alpha, obj, label, obj * len(LABELS) + label, el, az))
    seconds = time.perf_counter() - t0
    return ViewSet(*(torch.cat(p) for p in zip(*parts))), seconds


def random_backgrounds(n: int, gen: torch.Generator, white_fraction: float) -> Tensor:
    """[n, 3] solid backgrounds: white with probability ``white_fraction``, else uniform in [0, 1]³."""
    bg = torch.rand(n, 3, generator=gen)
    white = torch.rand(n, generator=gen) < white_fraction
    return torch.where(white[:, None], torch.ones_like(bg), bg)


def composite(color: Tensor, alpha: Tensor, bg: Tensor) -> Tensor:
    """Premultiplied colour over solid backgrounds bg [B, 3]: ``c + (1 − a)·b`` in [0, 1]."""
    return color + (1.0 - alpha) * bg[:, :, None, None]


def data_mean(views: ViewSet, white_fraction: float) -> Tensor:
    """The mean training image [3, H, W] in [−1, 1] under the background mix (closed form: E[b] per channel)."""
    mean_bg = white_fraction + (1.0 - white_fraction) * 0.5
    img = views.color.mean(0) + (1.0 - views.alpha.mean(0)) * mean_bg
    return img * 2.0 - 1.0


# ------------------------------------------------------------------------------------------------ tokenizer & models
def tokenizer_words(texts: Sequence[str]) -> list[str]:
    """The distinct lower-cased words and punctuation marks of ``texts`` in order of first appearance."""
    pre = _pre_tokenizer()
    words: dict[str, None] = {}
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t.lower()):
            words.setdefault(w, None)
    return list(words)


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_tokenizer(texts: Sequence[str], max_length: int):
    """A word-level ``PreTrainedTokenizerFast`` over the words of ``texts``: NFKC + lower-casing, split at white
    space and punctuation, unknown words -> [UNK], "[BOS] … [EOS]" added, [PAD] padding, ``model_max_length``."""
    from tokenizers import Tokenizer, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in tokenizer_words(texts):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", pair="[BOS] $A [EOS] $B [EOS]",
        special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_length, padding_side="right")
    longest = max(len(fast(t).input_ids) for t in texts)
    if longest > max_length:
        raise SystemExit(f"a caption has {longest} tokens with BOS/EOS but --max-length is {max_length}")
    return fast


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> Tensor:
    """[len(texts), L] input ids, padded to ``max_length`` exactly as the engine tokenizes a prompt."""
    return tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def build_models(s: Settings, vocab_size: int):
    """Fresh UNet2DConditionModel and CLIPTextModel (initialised from the seeded ``init`` stream)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ch = tuple(int(c) for c in s.unet_channels)
    if len(ch) != 3:
        raise SystemExit(f"--unet-channels needs 3 widths, got {ch}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(subseed(s.seed, "init"))
        unet = UNet2DConditionModel(
            sample_size=s.resolution, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=ch,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=s.text_width, attention_head_dim=s.attention_heads, norm_num_groups=norm_groups(ch))
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=s.text_width, intermediate_size=2 * s.text_width,
            num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads, max_position_embeddings=s.max_length,
            pad_token_id=0, bos_token_id=2, eos_token_id=3, projection_dim=s.text_width))
    return unet, text


def ddpm_scheduler(prediction_type: str):
    """Stable Diffusion's training schedule (scaled-linear β 0.00085..0.012, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type, clip_sample=False, steps_offset=1)


def encode(text_encoder, ids: Tensor) -> Tensor:
    """Condition [B, L, width]: the text encoder's last hidden state (no attention mask, as SD's pipeline)."""
    return text_encoder(ids)[0]


# ------------------------------------------------------------------------------------------------ training
def lr_factor(step: int, s: Settings) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from lr to lr_min at ``steps``."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    span = max(1, s.steps - s.warmup_steps)
    p = min(1.0, (step - s.warmup_steps) / span)
    lo = s.lr_min / s.lr
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


class EMA:
    """Exponential moving average of parameters with warm-up: decay_k = min(decay, (1 + k) / (10 + k))."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for sh, p in zip(self.shadow, self.params):
            sh.lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for sh, p in zip(self.shadow, self.params):
            p.copy_(sh)


def training_target(sched, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """ε, or v = √ᾱ·ε − √(1−ᾱ)·x0 under v-prediction."""
    if sched.config.prediction_type == "epsilon":
        return noise
    return sched.get_velocity(x0, noise, t)


def train_step(unet, text_encoder, sched, views: ViewSet, cond_ids: Tensor, s: Settings,
               gen: torch.Generator) -> Tensor:
    """One diffusion loss on a random batch (caption dropout to the last row of ``cond_ids``, the empty prompt)."""
    n = len(views)
    idx = torch.randint(n, (s.batch,), generator=gen)
    bg = random_backgrounds(s.batch, gen, s.white_fraction)
    x0 = composite(views.color[idx], views.alpha[idx], bg) * 2.0 - 1.0
    drop = torch.rand(s.batch, generator=gen) < s.caption_dropout
    cap = torch.where(drop, torch.full_like(views.caption[idx], cond_ids.shape[0] - 1), views.caption[idx])
    t = torch.randint(0, sched.config.num_train_timesteps, (s.batch,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = sched.add_noise(x0, noise, t)
    emb = encode(text_encoder, cond_ids)[cap]  # every distinct caption once, then gathered
    pred = unet(x_t, t, encoder_hidden_states=emb).sample
    return F.mse_loss(pred, training_target(sched, x0, noise, t))


def train(objects: list[ObjectSpec], out: Path, s: Settings, ev: EvalSettings, log_every: int = 25) -> dict:
    """Render, train, save and evaluate; returns the metadata written to ``dreamcore_prior.json``."""
    t_start = time.perf_counter()
    prompts = [o.prompt for o in objects]
    if len(set(prompts)) != len(prompts):
        raise SystemExit("two --object entries have the same prompt")
    assets = load_assets(objects, s.radius)
    print(f"rendering {s.views_per_object} training + {s.eval_views_per_object} held-out views of "
          f"{len(objects)} objects at {s.resolution}px ...", flush=True)
    views, t_train = build_views(assets, s.views_per_object, s, "train-views")
    eval_views, t_eval = build_views(assets, s.eval_views_per_object, s, "eval-views")
    n_img = len(views) + len(eval_views)
    render_rate = n_img / max(t_train + t_eval, 1e-9)
    print(f"  {n_img} images in {t_train + t_eval:.1f}s ({render_rate:.0f} img/s)", flush=True)

    captions = [c for p in prompts for c in captions_for(p)]
    tokenizer = build_tokenizer(captions + [""], s.max_length)
    cond_ids = tokenize(tokenizer, captions + [""], s.max_length)
    unet, text_encoder = build_models(s, len(tokenizer))
    sched = ddpm_scheduler(s.prediction_type)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"UNet {n_unet / 1e6:.3f} M params, text encoder {n_text / 1e6:.3f} M, vocabulary {len(tokenizer)}, "
          f"{len(captions)} captions", flush=True)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, s))
    ema = EMA(params, s.ema_decay)
    gen = generator(s.seed, "train")
    unet.train()
    text_encoder.train()
    losses: list[tuple[int, float]] = []
    window: list[float] = []
    t0 = time.perf_counter()
    for step in range(s.steps):
        loss = train_step(unet, text_encoder, sched, views, cond_ids, s, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        lr_sched.step()
        ema.update()
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == s.steps:
            el = time.perf_counter() - t0
            rate = el / (step + 1)
            mean_loss = sum(window) / len(window)
            losses.append((step + 1, mean_loss))
            window = []
            print(f"step {step + 1}/{s.steps}  loss {mean_loss:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{rate:.2f} s/step  ETA {fmt_s(rate * (s.steps - step - 1))}", flush=True)
    t_training = time.perf_counter() - t0
    ema.copy_to_params()
    unet.eval()
    text_encoder.eval()

    mean_img = data_mean(views, s.white_fraction)
    save_folder(out, unet, text_encoder, tokenizer, sched, mean_img)
    meta = {
        "format": "dreamcore tiny pixel-space prior",
        "objects": [asdict(o) for o in objects],
        "captions": captions,
        "settings": _jsonable(asdict(s)),
        "label_fractions": {LABELS[k]: float((views.label == k).float().mean()) for k in range(len(LABELS))},
        "parameters": {"unet": n_unet, "text_encoder": n_text},
        "vocabulary": tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))),
        "loss": losses,
        "timings": {
            "render_s": round(t_train + t_eval, 2), "render_images_per_s": round(render_rate, 1),
            "train_s": round(t_training, 1), "train_s_per_step": round(t_training / max(1, s.steps), 3),
            "threads": torch.get_num_threads(),
        },
        "integration": integration_notes(s),
    }
    evaluation = evaluate(out, ev, eval_views=eval_views, objects=objects, settings=s)
    meta["evaluation"] = evaluation
    meta["timings"]["evaluate_s"] = evaluation.pop("seconds")
    meta["timings"]["total_s"] = round(time.perf_counter() - t_start, 1)
    finish(out, meta)
    return meta


def _jsonable(d):
    """Tuples -> lists, recursively (JSON round trip)."""
    return json.loads(json.dumps(d))


def integration_notes(s: Settings) -> dict:
    """What an engine prior needs to use the folder (also in report.md)."""
    return {
        "model_space": f"pixels x = 2*rgb - 1 in [-1, 1], [B, 3, {s.resolution}, {s.resolution}] (no VAE)",
        "condition": f"text_encoder(input_ids)[0] (last_hidden_state, no attention mask): [1, {s.max_length}, "
                     f"{s.text_width}] float32",
        "tokenizer": f"AutoTokenizer, padding='max_length', max_length={s.max_length} (= model_max_length), "
                     "truncation=True; lower-cases itself; unknown words -> [UNK]",
        "uncond": "the empty prompt '' ([BOS] [EOS] [PAD]...), trained with 10% caption dropout",
        "prediction_type": s.prediction_type,
        "schedule": "Stable Diffusion's: scaled_linear beta 0.00085..0.012, 1000 steps (scheduler/)",
        "backgrounds": f"trained on solid backgrounds: white with p={s.white_fraction:.3g}, else uniform random",
        "views": "captions '<prompt>, front|side|back|overhead view' with dreamcore's default ViewPromptConfig",
        "sampling_start": "epsilon models: start DDIM from sqrt(abar_T)*data_mean + sqrt(1-abar_T)*noise "
                          "(data_mean.safetensors); v_prediction: pure noise",
    }


def save_folder(out: Path, unet, text_encoder, tokenizer, sched, mean_img: Tensor) -> None:
    """Write the diffusers-format parts (safetensors) and model_index.json."""
    import diffusers
    import transformers
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if (out / part).exists():
            shutil.rmtree(out / part)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    cfg_path = out / "tokenizer" / "tokenizer_config.json"  # the class model_index.json names (loads in 4.x too)
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    sched.save_pretrained(out / "scheduler")
    save_file({"mean": mean_img.contiguous()}, str(out / "data_mean.safetensors"))
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
             "_transformers_version": transformers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def finish(out: Path, meta: dict) -> None:
    """Write dreamcore_prior.json and report.md (after samples.png, so the size counts everything) and make the
    files readable as the umask allows (safetensors writes its files owner-only)."""
    meta.setdefault("timings", {})
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.md").write_text(render_report(meta))
    size = folder_mb(out)
    meta["folder_mb"] = round(size, 2)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.md").write_text(render_report(meta))
    umask = os.umask(0)
    os.umask(umask)
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)
    if size > MAX_FOLDER_MB:
        print(f"warning: the folder is {size:.1f} MB (> {MAX_FOLDER_MB} MB): use narrower --unet-channels",
              file=sys.stderr)


# ------------------------------------------------------------------------------------------------ loading
def load_folder(folder: Path):
    """(unet, text_encoder, tokenizer, scheduler, data mean or None) from a saved folder, offline, in eval mode."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True).eval()
    text = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    sched = DDPMScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
    mean = None
    if (folder / "data_mean.safetensors").is_file():
        from safetensors.torch import load_file

        mean = load_file(str(folder / "data_mean.safetensors"))["mean"]
    return unet, text, tok, sched, mean


# ------------------------------------------------------------------------------------------------ evaluation
def to_x0(pred: Tensor, x_t: Tensor, abar: Tensor, kind: str) -> Tensor:
    """x̂0 from the network output (ε or v) at ᾱ [B]."""
    a = abar.sqrt().view(-1, 1, 1, 1)
    s = (1.0 - abar).sqrt().view(-1, 1, 1, 1)
    if kind == "epsilon":
        return (x_t - s * pred) / a
    return a * x_t - s * pred


@torch.no_grad()
def ddim_sample(unet, cond: Tensor, uncond: Tensor, sched, ev: EvalSettings, mean_img: Optional[Tensor],
                gen: torch.Generator) -> Tensor:
    """DDIM (η = 0, "trailing" spacing) with CFG ε_u + ω(ε_c − ε_u) (applied to the output, ε or v) for the
    conditions ``cond`` [S, L, D]; returns samples [S, 3, H, W] in [−1, 1] (clamped)."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=sched.config.num_train_timesteps, beta_start=sched.config.beta_start,
                         beta_end=sched.config.beta_end, beta_schedule=sched.config.beta_schedule,
                         prediction_type=sched.config.prediction_type, clip_sample=False, set_alpha_to_one=False,
                         timestep_spacing="trailing")
    ddim.set_timesteps(ev.ddim_steps)
    n = cond.shape[0]
    res = int(unet.config.sample_size)
    noise = torch.randn(n, 3, res, res, generator=gen)
    t_first = int(ddim.timesteps[0])
    if sched.config.prediction_type == "epsilon" and mean_img is not None:
        abar = ddim.alphas_cumprod[t_first]
        x = abar.sqrt() * mean_img[None] + (1.0 - abar).sqrt() * noise
    else:
        x = noise
    out = []
    for start in range(0, n, ev.batch):
        xb = x[start:start + ev.batch]
        cb = cond[start:start + ev.batch]
        ub = uncond.expand(cb.shape[0], -1, -1)
        for t in ddim.timesteps:
            tt = torch.full((2 * xb.shape[0],), int(t), dtype=torch.long)
            pred = unet(torch.cat([xb, xb]), tt, encoder_hidden_states=torch.cat([ub, cb])).sample
            pu, pc = pred.chunk(2)
            xb = ddim.step(pu + ev.cfg * (pc - pu), t, xb).prev_sample
        out.append(xb)
    return torch.cat(out).clamp(-1.0, 1.0)


def fitted_mse(samples: Tensor, color: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """MSE [S, M] between samples [S, 3, H, W] (in [0, 1]) and each render m composited over its best solid
    background, fitted per channel in closed form (least squares of s ≈ c + (1 − a)·b, b clamped to [0, 1]);
    also returns the backgrounds [S, M, 3]. Vectorized with inner products over pixels."""
    s = samples.flatten(2)  # [S, 3, P]
    c = color.flatten(2)  # [M, 3, P]
    u = (1.0 - alpha).flatten(1)  # [M, P]
    p = s.shape[-1]
    ss = (s * s).sum(-1)  # [S, 3]
    cc = (c * c).sum(-1)  # [M, 3]
    sc = torch.einsum("scp,mcp->smc", s, c)
    su = torch.einsum("scp,mp->smc", s, u)
    cu = (c * u[:, None]).sum(-1)  # [M, 3]
    uu = (u * u).sum(-1)  # [M]
    rc = su - cu[None]  # Σ u (s − c)
    b = torch.where(uu[None, :, None] > 1e-8, rc / uu.clamp_min(1e-8)[None, :, None], torch.zeros_like(rc))
    b = b.clamp(0.0, 1.0)
    sq = ss[:, None] - 2.0 * sc + cc[None] - 2.0 * b * rc + b * b * uu[None, :, None]  # Σ (s − c − u b)²
    return sq.clamp_min(0.0).sum(-1) / (3 * p), b


def psnr(mse: Tensor) -> Tensor:
    """PSNR in dB of an MSE on the [0, 1] scale."""
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def score_samples(samples01: Tensor, sample_caption: Tensor, eval_views: ViewSet, n_objects: int) -> dict:
    """Per-sample nearest-render figures: named/other-object PSNR, prompt and view hits, nearest indices."""
    mse, bg = fitted_mse(samples01, eval_views.color, eval_views.alpha)
    p = psnr(mse)  # [S, M]
    obj = sample_caption // len(LABELS)
    lab = sample_caption % len(LABELS)
    same = eval_views.obj[None, :] == obj[:, None]  # [S, M]
    neg = torch.tensor(float("-inf"))
    p_named = torch.where(same, p, neg)
    best_named, idx_named = p_named.max(1)
    other = torch.where(~same, p, neg).max(1).values if n_objects > 1 else torch.full_like(best_named, float("nan"))
    idx_all = p.argmax(1)
    return {
        "psnr": p, "bg": bg, "psnr_named": best_named, "psnr_other": other,
        "prompt_hit": (eval_views.obj[idx_all] == obj).float(),
        "view_hit": (eval_views.label[idx_named] == lab).float(),
    }


@torch.no_grad()
def x0_mse(unet, text_encoder, sched, cond_ids: Tensor, eval_views: ViewSet, s: Settings, ev: EvalSettings) -> dict:
    """x̂0 MSE ([0, 1] scale) on held-out renders (true caption and empty prompt) at t in MSE_TIMESTEPS."""
    gen = generator(ev.seed, "eval-mse")
    n = len(eval_views)
    k = min(ev.mse_images, n)
    idx = torch.randperm(n, generator=gen)[:k]
    x0 = composite(eval_views.color[idx], eval_views.alpha[idx], random_backgrounds(k, gen, s.white_fraction)) * 2 - 1
    emb_all = encode(text_encoder, cond_ids)
    cond = emb_all[eval_views.caption[idx]]
    uncond = emb_all[-1:].expand_as(cond)
    out = {}
    for t_val in MSE_TIMESTEPS:
        t = torch.full((k,), t_val, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        abar = sched.alphas_cumprod[t]
        row = {}
        for name, emb in (("cond", cond), ("uncond", uncond)):
            pred = torch.cat([unet(x_t[i:i + ev.batch], t[i:i + ev.batch],
                                   encoder_hidden_states=emb[i:i + ev.batch]).sample for i in range(0, k, ev.batch)])
            x0_hat = to_x0(pred, x_t, abar, sched.config.prediction_type)
            row[name] = float(((x0_hat - x0) / 2.0).pow(2).mean())
        out[str(t_val)] = row
    return out


@torch.no_grad()
def evaluate(folder: Path, ev: EvalSettings, eval_views: Optional[ViewSet] = None,
             objects: Optional[list[ObjectSpec]] = None, settings: Optional[Settings] = None) -> dict:
    """Score a saved folder (loaded with from_pretrained); writes samples.png and returns the figures."""
    t0 = time.perf_counter()
    folder = Path(folder)
    if settings is None or objects is None:
        meta = json.loads((folder / META_FILE).read_text())
        settings = settings or settings_from_json(meta["settings"])
        objects = objects or [ObjectSpec(**o) for o in meta["objects"]]
    if eval_views is None:  # the same held-out views as at training time (same seed and count)
        assets = load_assets(objects, settings.radius)
        eval_views, _ = build_views(assets, settings.eval_views_per_object, settings, "eval-views")
    s = settings
    unet, text_encoder, tokenizer, sched, mean_img = load_folder(folder)
    captions = [c for o in objects for c in captions_for(o.prompt)]
    cond_ids = tokenize(tokenizer, captions + [""], s.max_length)
    emb = encode(text_encoder, cond_ids)
    n_cap = len(captions)
    n = ev.samples_per_caption
    sample_caption = torch.arange(n_cap).repeat_interleave(n)
    print(f"evaluating: {n_cap} captions x {n} DDIM samples ({ev.ddim_steps} steps, CFG {ev.cfg}) against "
          f"{len(eval_views)} held-out renders ...", flush=True)
    t_s = time.perf_counter()
    samples = ddim_sample(unet, emb[sample_caption], emb[-1:], sched, ev, mean_img, generator(ev.seed, "eval-samples"))
    t_sampling = time.perf_counter() - t_s
    samples01 = (samples + 1.0) / 2.0
    sc = score_samples(samples01, sample_caption, eval_views, len(objects))
    rows = []
    for k, cap in enumerate(captions):
        sel = sample_caption == k
        rows.append({
            "caption": cap, "object": int(k // len(LABELS)), "view": LABELS[k % len(LABELS)],
            "psnr_named": float(sc["psnr_named"][sel].mean()),
            "psnr_other": float(sc["psnr_other"][sel].mean()) if len(objects) > 1 else None,
            "prompt_accuracy": float(sc["prompt_hit"][sel].mean()), "view_accuracy": float(sc["view_hit"][sel].mean()),
        })
    mean_score = score_samples(((mean_img if mean_img is not None else torch.zeros(3, s.resolution, s.resolution))
                                [None] + 1.0) / 2.0, torch.zeros(1, dtype=torch.long), eval_views, len(objects))
    result = {
        "settings": asdict(ev),
        "samples": int(samples.shape[0]),
        "held_out_renders": len(eval_views),
        "prompt_accuracy": float(sc["prompt_hit"].mean()),
        "view_accuracy": float(sc["view_hit"].mean()),
        "view_accuracy_by_label": {lbl: float(sc["view_hit"][sample_caption % len(LABELS) == i].mean())
                                   for i, lbl in enumerate(LABELS)},
        "psnr_named": float(sc["psnr_named"].mean()),
        "psnr_other": float(sc["psnr_other"].mean()) if len(objects) > 1 else None,
        "baseline_data_mean_psnr": float(mean_score["psnr_named"][0]),
        "per_caption": rows,
        "x0_mse": x0_mse(unet, text_encoder, sched, cond_ids, eval_views, s, ev),
        "sampling_s": round(t_sampling, 1),
        "sampling_s_per_sample": round(t_sampling / max(1, samples.shape[0]), 3),
    }
    result["floors"] = {k: {"floor": v, "value": result[k], "pass": result[k] >= v} for k, v in FLOORS.items()}
    save_grid(folder / "samples.png", samples01, sample_caption, captions, sc, eval_views)
    print(format_table(result), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def settings_from_json(d: dict) -> Settings:
    """Settings from a recorded dict (lists back to tuples, unknown keys ignored)."""
    known = {f for f in Settings.__dataclass_fields__}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
    return Settings(**kw)


def save_grid(path: Path, samples01: Tensor, sample_caption: Tensor, captions: list[str], sc: dict,
              eval_views: ViewSet) -> None:
    """samples.png: one row per caption (its label at the left), the samples, a gap, then the 2 held-out renders
    nearest to the row's samples, each on the background fitted to its best-matching sample."""
    from PIL import Image, ImageDraw

    res = samples01.shape[-1]
    scale = max(1, 64 // res)
    cell = res * scale + 2
    n = int((sample_caption == 0).sum())
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 12 + int(max(probe.textlength(c) for c in captions))
    width = label_w + (n + 2) * cell + 8
    img = Image.new("RGB", (width, len(captions) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    def paste(t: Tensor, x: int, y: int) -> None:
        arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8")
        img.paste(Image.fromarray(arr).resize((res * scale, res * scale), Image.NEAREST), (x, y))

    for k, cap in enumerate(captions):
        y = k * cell + 1
        draw.text((4, y + cell // 2 - 6), cap, fill=(0, 0, 0))
        rows = (sample_caption == k).nonzero().squeeze(1)
        for j, i in enumerate(rows.tolist()):
            paste(samples01[i], label_w + j * cell, y)
        best, which = sc["psnr"][rows].max(0)  # per render: its best PSNR over the row's samples
        top = best.topk(min(2, best.numel())).indices
        for j, m in enumerate(top.tolist()):
            b = sc["bg"][rows[which[m]], m]
            paste(composite(eval_views.color[m:m + 1], eval_views.alpha[m:m + 1], b[None])[0],
                  label_w + (n + j) * cell + 8, y)
    img.save(path)


def format_table(result: dict) -> str:
    """The evaluation as a markdown table (per caption, then totals and the x̂0 MSE)."""
    lines = ["| caption | PSNR named (dB) | PSNR other (dB) | prompt acc | view acc |", "|---|---|---|---|---|"]
    for r in result["per_caption"]:
        other = "–" if r["psnr_other"] is None else f"{r['psnr_other']:.1f}"
        lines.append(f"| {r['caption']} | {r['psnr_named']:.1f} | {other} | "
                     f"{100 * r['prompt_accuracy']:.0f} % | {100 * r['view_accuracy']:.0f} % |")
    other = "–" if result["psnr_other"] is None else f"{result['psnr_other']:.1f}"
    lines.append(f"| **all ({result['samples']} samples)** | **{result['psnr_named']:.1f}** | "
                 f"**{other}** | **{100 * result['prompt_accuracy']:.1f} %** | "
                 f"**{100 * result['view_accuracy']:.1f} %** |")
    lines += ["", "view accuracy by view word: " + ", ".join(
        f"{k} {100 * v:.0f} %" for k, v in result["view_accuracy_by_label"].items()),
        f"baseline: the data mean image scores {result['baseline_data_mean_psnr']:.1f} dB to its nearest render",
        "", "| t | x̂0 MSE, caption | x̂0 MSE, empty prompt |", "|---|---|---|"]
    for t, row in result["x0_mse"].items():
        lines.append(f"| {t} | {row['cond']:.5f} | {row['uncond']:.5f} |")
    lines += ["", "floors: " + ", ".join(
        f"{k} {100 * v['value']:.1f} % (>= {100 * v['floor']:.0f} %: {'PASS' if v['pass'] else 'FAIL'})"
        for k, v in result["floors"].items())]
    return "\n".join(lines)


def render_report(meta: dict) -> str:
    """report.md: settings, timings, evaluation, integration notes."""
    s = meta.get("settings", {})
    tm = meta.get("timings", {})
    lines = ["# Tiny pixel-space prior", "",
             f"Trained by `tools/train_tiny_prior.py` (seed {s.get('seed')}, {s.get('steps')} steps at batch "
             f"{s.get('batch')}, {s.get('resolution')} px, {s.get('prediction_type')}).", "", "## Objects", "",
             "| prompt | file | sha256 |", "|---|---|---|"]
    lines += [f"| {o['prompt']} | {o['file']} | `{o['sha256'][:16]}…` |" for o in meta.get("objects", [])]
    lines += ["", "## Data and model", "",
              f"- {s.get('views_per_object')} training + {s.get('eval_views_per_object')} held-out views per object; "
              f"elevation {s.get('elevation_range')} "
              f"({'area-uniform' if s.get('uniform_sphere') else 'uniform in degrees'}), "
              f"azimuth {s.get('azimuth_range')}, distance {s.get('distance_range')}, fov {s.get('fov_range')}; "
              f"albedo shading, supersample {s.get('supersample')}.",
              f"- Backgrounds: white with p = {s.get('white_fraction', 0):.3g}, else uniform random colour.",
              f"- View labels in the training set: " + ", ".join(
                  f"{k} {100 * v:.0f} %" for k, v in meta.get("label_fractions", {}).items()),
              f"- UNet widths {s.get('unet_channels')}: {meta.get('parameters', {}).get('unet', 0) / 1e6:.3f} M "
              f"params; text encoder {meta.get('parameters', {}).get('text_encoder', 0) / 1e6:.3f} M "
              f"(width {s.get('text_width')}, {s.get('max_length')} positions); vocabulary "
              f"{len(meta.get('vocabulary', []))}.",
              f"- Folder size: {meta.get('folder_mb', '?')} MB.", "", "## Timings", ""]
    lines += [f"- {k}: {v}" for k, v in tm.items()]
    if meta.get("loss"):
        pts = meta["loss"]
        pick = pts[:: max(1, len(pts) // 8)] + ([pts[-1]] if pts[-1] not in pts[:: max(1, len(pts) // 8)] else [])
        lines += ["", "Loss (window means): " + " · ".join(f"{st}: {lv:.4f}" for st, lv in pick)]
    ev = meta.get("evaluation")
    if ev:
        st = ev["settings"]
        lines += ["", "## Evaluation", "",
                  f"{st['samples_per_caption']} DDIM samples per caption ({st['ddim_steps']} steps, trailing, CFG "
                  f"{st['cfg']}), scored against {ev['held_out_renders']} held-out renders of all objects with a "
                  "fitted solid background. Sampling took "
                  f"{ev.get('sampling_s')} s ({ev.get('sampling_s_per_sample')} s/sample).", "",
                  format_table(ev), "", "![samples](samples.png)"]
    notes = meta.get("integration")
    if notes:
        lines += ["", "## Using it as an engine prior", ""] + [f"- **{k}**: {v}" for k, v in notes.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ benchmark
def bench(s: Settings, resolutions=(32, 64), threads=(1, 2), steps: int = 3) -> list[dict]:
    """s/step of one training step (forward, backward, AdamW) at batch ``s.batch`` on random data, after one
    warm-up step, for each resolution and thread count (median of ``steps``)."""
    from transformers import CLIPTextModel  # noqa: F401  (import cost outside the timing)

    rows = []
    old = torch.get_num_threads()
    for res in resolutions:
        for th in threads:
            torch.set_num_threads(th)
            sr = Settings(**{**asdict(s), "resolution": res})
            unet, text = build_models(sr, 32)
            sched = ddpm_scheduler(sr.prediction_type)
            params = list(unet.parameters()) + list(text.parameters())
            opt = torch.optim.AdamW(params, lr=sr.lr, weight_decay=sr.weight_decay)
            gen = generator(0, "bench")
            n = 64
            views = ViewSet(torch.rand(n, 3, res, res, generator=gen), torch.rand(n, 1, res, res, generator=gen),
                            torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                            torch.randint(0, 4, (n,), generator=gen), torch.zeros(n), torch.zeros(n))
            ids = torch.randint(4, 32, (5, sr.max_length), generator=gen)
            times = []
            for i in range(steps + 1):
                t0 = time.perf_counter()
                loss = train_step(unet, text, sched, views, ids, sr, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, sr.grad_clip)
                opt.step()
                if i > 0:
                    times.append(time.perf_counter() - t0)
            times.sort()
            rows.append({"resolution": res, "threads": th, "batch": sr.batch, "s_per_step": times[len(times) // 2],
                         "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3)})
            print(f"  {res}px, {th} thread(s), batch {sr.batch}: {rows[-1]['s_per_step']:.2f} s/step", flush=True)
    torch.set_num_threads(old)
    return rows


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--object", action="append", default=[], metavar="MESH:PROMPT",
                   help='a mesh and its prompt, e.g. assets/robot.glb:"a toy robot" (repeat per object)')
    p.add_argument("--out", type=Path, help="output folder (diffusers format)")
    p.add_argument("--eval-only", type=Path, metavar="DIR", help="re-run the evaluation of a saved folder")
    p.add_argument("--bench", action="store_true", help="time training steps at 32/64 px with 1/2 threads and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="image size (default 32)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2000; --quick 8)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32; --quick 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core box a second thread was 9x slower)")
    p.add_argument("--views-per-object", type=int, default=None, help="training renders per object (default 3000)")
    p.add_argument("--eval-views-per-object", type=int, default=None, help="held-out renders per object (default 300)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon")
    p.add_argument("--white-fraction", type=float, default=1.0 / 3.0,
                   help="fraction of training images on white (the rest: uniform random colours)")
    p.add_argument("--elevation-sampling", choices=("sphere", "degrees"), default="sphere",
                   help="area-uniform elevation (the engine's default) or uniform in degrees")
    p.add_argument("--unet-channels", type=str, default=None, help="UNet widths, e.g. 32,64,128 (the default)")
    p.add_argument("--attention-heads", type=int, default=4, help="heads of the UNet's cross-attention")
    p.add_argument("--text-width", type=int, default=64, help="text encoder width = cross-attention dim")
    p.add_argument("--max-length", type=int, default=16, help="tokens per caption incl. BOS/EOS")
    p.add_argument("--eval-samples", type=int, default=None, help="DDIM samples per caption (default 8)")
    p.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps (default 50)")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale for the samples")
    p.add_argument("--eval-mse-images", type=int, default=None, help="held-out images for the x̂0 MSE (default 64)")
    p.add_argument("--log-every", type=int, default=None, help="print every N steps (default 25; --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: 8 steps, batch 8, 48+24 views, widths 16,32,32, 2 samples x 10 steps")
    return p


def _quiet_progress_bars() -> None:
    """No tqdm bars from save_pretrained/from_pretrained in the log."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


def _pick(value, key: str, quick: bool, default):
    return value if value is not None else (QUICK[key] if quick and key in QUICK else default)


def settings_from_args(a) -> tuple[Settings, EvalSettings]:
    """Resolve the CLI (explicit values win over --quick's, which win over the defaults)."""
    d, de = Settings(), EvalSettings()
    channels = tuple(int(x) for x in a.unet_channels.split(",")) if a.unet_channels else None
    s = Settings(
        seed=a.seed, resolution=_pick(a.resolution, "resolution", a.quick, d.resolution),
        steps=_pick(a.steps, "steps", a.quick, d.steps), batch=_pick(a.batch, "batch", a.quick, d.batch),
        views_per_object=_pick(a.views_per_object, "views_per_object", a.quick, d.views_per_object),
        eval_views_per_object=_pick(a.eval_views_per_object, "eval_views_per_object", a.quick,
                                    d.eval_views_per_object),
        prediction_type=a.prediction_type, white_fraction=a.white_fraction,
        uniform_sphere=a.elevation_sampling == "sphere",
        unet_channels=_pick(channels, "unet_channels", a.quick, d.unet_channels),
        attention_heads=a.attention_heads, text_width=a.text_width, max_length=a.max_length,
    )
    s.warmup_steps = min(d.warmup_steps, max(1, s.steps // 10))  # 100, or a tenth of a short run
    ev = EvalSettings(
        samples_per_caption=_pick(a.eval_samples, "samples_per_caption", a.quick, de.samples_per_caption),
        ddim_steps=_pick(a.ddim_steps, "ddim_steps", a.quick, de.ddim_steps), cfg=a.cfg,
        mse_images=_pick(a.eval_mse_images, "mse_images", a.quick, de.mse_images), seed=a.seed)
    return s, ev


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    _quiet_progress_bars()
    s, ev = settings_from_args(a)
    if a.bench:
        rows = bench(s)
        table = ["| resolution | threads | batch | s/step | UNet params (M) |", "|---|---|---|---|---|"]
        table += [f"| {r['resolution']} | {r['threads']} | {r['batch']} | {r['s_per_step']:.2f} | {r['params_M']} |"
                  for r in rows]
        print("\n".join(table))
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "bench.json").write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    if a.eval_only:
        folder = a.eval_only
        meta = json.loads((folder / META_FILE).read_text())
        recorded = settings_from_json(meta["settings"])
        objects = [parse_object(o) for o in a.object] if a.object else [ObjectSpec(**o) for o in meta["objects"]]
        if a.object:  # same prompts, new paths: keep the recorded hashes for the check
            for o, r in zip(objects, meta["objects"]):
                o.sha256 = r["sha256"]
        ev.seed = recorded.seed
        result = evaluate(folder, ev, objects=objects, settings=recorded)
        meta.setdefault("timings", {})["evaluate_s"] = result.pop("seconds")
        meta["evaluation"] = result
        finish(folder, meta)
        return 0
    if not a.object or a.out is None:
        build_parser().error("give --object MESH:PROMPT (at least one) and --out DIR, or --eval-only DIR, or --bench")
    objects = [parse_object(o) for o in a.object]
    meta = train(objects, a.out, s, ev, log_every=_pick(a.log_every, "log_every", a.quick, 1 if a.quick else 25))
    print(f"wrote {a.out} ({meta['folder_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
