"""Train a tiny text-conditioned pixel-space diffusion prior on multi-view renders of coloured meshes.

    python tools/train_tiny_prior.py --object assets/robot.glb:"a toy robot" --object car.glb:"a toy car" \\
        --out runs/tiny-prior [--seed 0] [--resolution 32] [--steps 2000] [--batch 32] [--threads 1] \\
        [--views-per-object 3000] [--prediction-type epsilon|v_prediction] [--eval-samples 8] [--quick]
    python tools/train_tiny_prior.py --views 4 --object ... --out runs/tiny-mv-prior   # multi-view prior
        [--attention-resolutions 2,4] [--baseline-2d assets/tiny-prior | --no-baseline]
        [--image-conditioning [--image-dropout 0.5]]   # + ImageDream's reference frame: text- and image-to-3D
    python tools/train_tiny_prior.py --eval-only runs/tiny-prior      # re-score a saved folder (2D or multi-view)
    python tools/train_tiny_prior.py --bench [--views 4]              # s/step at 32/64 px, 1/2 threads

Two kinds of prior come out of it. With ``--views 1`` (the default) a 2D text-to-image prior whose captions name
the view ("a toy robot, side view"), as described first below; with ``--views N`` > 1 a multi-view prior of the
MVDream kind (Shi et al. 2023) that denoises N views of one object together, each tagged with its camera (the
section "Multi-view mode" says what changes).

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

Multi-view mode (``--views N`` > 1; everything not named here is as above):

* Data. Images come in groups of N views of one object: an anchor camera from ``sample_orbit`` in the same ranges,
  turned by ``dreamcore.cameras.view_groups`` into N cameras at its elevation, distance and fov with azimuths
  360°/N apart. ``--views-per-object`` still counts images, so each object gets ``views-per-object // N`` groups
  (held-out groups come from their own seeded stream). Each view keeps the 16 numbers of its camera,
  ``dreamcore.priors.mv_cameras.camera_condition`` with the default front azimuth of 90° (the value the
  ``multiview`` prior uses when it loads the folder). All views of a group share one background and one caption;
  the caption is the plain prompt (the camera, not a view word, says where the view is from) and is dropped to ""
  for 10 % of the groups.
* Model. ``dreamcore.priors.mv_unet.MultiViewUNet`` in pixel space: widths ``--unet-channels`` (model_channels =
  the first, channel_mult = the widths over it), one ResBlock per level, a transformer block (self-attention over
  the tokens of all N views of the object, then cross-attention to the text) at the downsampling factors
  ``--attention-resolutions`` (default 2,4: R/2 and R/4) and in the middle, ``--attention-heads`` heads at every
  attention level (so the head width is the level's width over the head count, as in the 2D model), the camera
  numbers embedded by an MLP and added to the timestep embedding. 4.15 M parameters at the default widths and
  32 px (3.88 M with attention at R/4 and the middle only), plus the same tiny text encoder, trained jointly.
* Training. ``--batch`` counts images and must be a multiple of N (batch/N groups per step); one timestep per
  group, shared by its views, independent noise per view, the same loss, optimizer, schedule and EMA.
* Evaluation. For each prompt, ``--eval-samples`` groups (default 8): anchor cameras from a seeded stream in the
  training ranges, expanded by ``view_groups``, and the N views sampled jointly with the 2D sampler (DDIM 50
  steps, CFG 5 with the cameras in both passes; ε starts every view from the forward-diffused data mean, v from
  noise). Every object is rendered at exactly those cameras; for each group and object one solid background is
  fitted in closed form over the group's views (the same least squares as above, pooled over the views) and the
  PSNR is taken over the N views together. Reported per prompt and overall: prompt accuracy (the best-scoring
  object is the named one), multi-view consistency (PSNR to the named object's renders at the group's cameras;
  also with a background fitted per view), and the same two figures for a 2D baseline: N independent samples of a
  2D tiny prior folder (``--baseline-2d``, by default ``assets/tiny-prior``; skipped with a note for
  ``--no-baseline``, ``--quick`` without ``--baseline-2d``, a missing folder or another resolution), each asked
  for the view word of its camera (``view_prompts(prompt, ViewPromptConfig())[label]``, labelled as the 2D data)
  and sampled with that folder's own prediction type, data mean and scheduler. Also the x̂0 MSE at t = 20, 400,
  950 on held-out groups (with their cameras). The samples of one group meet the renders' background fit as one
  image, so a 2D baseline whose views pick different backgrounds loses there; the per-view-background figure
  separates that from the object's shape and colour.
* Output. The same folder layout, with ``model_index.json`` naming ``DreamcoreTinyMultiViewPipeline`` and
  ``"unet": ["dreamcore", "MultiViewUNet"]`` (``unet/`` written by ``save_pretrained``, loaded by
  ``MultiViewUNet.from_pretrained``); ``dreamcore_prior.json`` records ``"views": N`` and
  ``"front_azimuth": 90.0`` besides the settings, timings and evaluation; ``samples.png`` has one row per sample
  group: its N views, the named object's N renders at the same cameras, and the 2D baseline's N samples.
  ``--eval-only`` reads the view count from ``dreamcore_prior.json``.

Image conditioning (``--views N --image-conditioning``; ImageDream, Wang & Shi 2023, its "pixel controller"
without the CLIP image prompt; everything not named here is as in the multi-view mode):

* Model. The same MultiViewUNet with ``reference_frame=True, reference_camera="own"`` (no extra parameters): each
  group holds its N views and, last, a clean reference frame (N + 1 frames, contiguous), which the UNet writes
  over the last row of each group from its ``ip_img`` argument, at the group's timestep and caption, with its own
  16 camera numbers; the views reach it through the multi-view self-attention; its output is dropped.
* Training. For each sampled group, drawn after the rest of the batch: a view of the same object from another
  training group (a random group of that object, then a random view, from the seeded generator: an independent
  random camera in the training ranges), composited over white (the engine feeds the picture over white),
  x = 2·rgb − 1, with that view's camera numbers from the GroupSet. With probability ``--image-dropout`` (0.5) the
  picture is dropped: an all-zero frame and an all-zero camera, as the engine's dropped image. Caption dropout
  (10 %) stays independent, so 5 % of the groups drop both (the CFG unconditional of image-to-3D) and half the
  groups train exactly the text-only task, which keeps the folder usable for text-to-3D. The loss is over the N
  views only.
* Evaluation. The text-only figures above are kept, with the picture dropped in both CFG passes (they mean what
  they mean for a text-only folder), and the same sample groups (same cameras, same initial noise) are sampled
  again given a picture: a held-out render of the named object at a random held-out camera, over white, with its
  camera (CFG against the empty prompt + the dropped image, as ImageDream). ``dreamcore_prior.json``'s evaluation
  gains ``image_conditioning``: prompt accuracy and consistency PSNR with and without the picture, overall and per
  object, and which render each group got; the x̂0 MSE gains ``cond_image``/``uncond_image``; ``samples.png``
  gains the picture and the samples given it; the settings record ``image_conditioning`` and ``image_dropout``,
  the integration notes the reference frame and how to feed it. ``--init-from`` refuses a text-only folder for an
  image-conditioned run and the other way round (the UNet configs differ). The folder loads unchanged as
  ``prior.name: multiview`` (its ``accepts_image`` is then true).

Determinism: every random draw (cameras, batches, timesteps, noise, backgrounds, caption dropout, samples) comes
from an explicit ``torch.Generator`` seeded from ``--seed``; the networks' initialisation, which torch modules draw
from the global generator, runs inside ``torch.random.fork_rng`` seeded from ``--seed`` (the caller's global state
is restored). Training length is a number of steps, so the same command and thread count give the same folder.

Output folder of the 2D mode (diffusers format, fp32 safetensors, ≈ 17 MB at the default size):
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

from dreamcore.cameras import Cameras, sample_orbit, view_groups  # noqa: E402
from dreamcore.files import resolve_path, sha256_file  # noqa: E402
from dreamcore.meshes.io import load_mesh, normalize  # noqa: E402
from dreamcore.meshes.render import render_mesh  # noqa: E402

from dreamcore.views import LABELS, ViewPromptConfig, label_views, view_prompts  # noqa: E402

PIPELINE_CLASS = "DreamcoreTinyPipeline"
MV_PIPELINE_CLASS = "DreamcoreTinyMultiViewPipeline"
FRONT_AZIMUTH = 90.0  # camera_condition's default, which the multiview prior that loads the folder uses too
META_FILE = "dreamcore_prior.json"
MESH_SUFFIXES = ("glb", "gltf", "obj", "ply")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # ids 0..3
MSE_TIMESTEPS = (20, 400, 950)
FLOORS = {"prompt_accuracy": 0.90, "view_accuracy": 0.70}
MAX_FOLDER_MB = 25.0
MAX_MV_FOLDER_MB = 30.0
DEFAULT_BASELINE_2D = ROOT / "assets" / "tiny-prior"


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
    # multi-view mode (recorded only when views > 1; see settings_json)
    views: int = 1  # views denoised jointly; 1 = the 2D prior
    attention_resolutions: tuple[int, ...] = (2, 4)  # MultiViewUNet: downsampling factors with attention
    init_from: str = ""  # multi-view mode: start from this folder's weights (a continued training), else fresh
    # image conditioning (multi-view mode; recorded only when on, see settings_json): ImageDream's reference frame
    image_conditioning: bool = False  # a clean reference picture as a last frame of each group (its own camera)
    # probability that a group's reference is dropped (all-zero frame and camera): half the groups train the
    # text-only task the folder keeps serving, half the image task; caption dropout stays independent, so
    # caption_dropout·image_dropout = 5 % of the groups drop both (the CFG unconditional of image-to-3D)
    image_dropout: float = 0.5
    # the caption's dropout in the groups that HAVE the picture (the others keep caption_dropout): with every
    # object named by its prompt the picture is redundant beside it, and an 800-step continuation at 0.1 learned to
    # ignore it (consistency with vs without the picture 17.0 → 17.0 dB); at 0.5 a quarter of all groups are
    # picture-only, so the picture must identify the object (ImageDream: the prompt may be empty)
    image_caption_dropout: float = 0.5


IMAGE_SETTINGS = ("image_conditioning", "image_dropout", "image_caption_dropout")
MV_ONLY_SETTINGS = ("views", "attention_resolutions", "init_from") + IMAGE_SETTINGS


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
    color, alpha = render_cameras(asset, cams, s, chunk)
    return color, alpha, torch.rad2deg(cams.elevation), torch.rad2deg(cams.azimuth)


def render_cameras(asset, cams: Cameras, s: Settings, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Renders of one normalized asset over black from the given cameras, in chunks: premultiplied colour
    [n, 3, H, W] and alpha [n, 1, H, W] (albedo shading, ``s.supersample``, ``s.resolution`` px)."""
    colors, alphas = [], []
    for start in range(0, len(cams), chunk):
        out = render_mesh(asset, cams[start:start + chunk], s.resolution, s.resolution, supersample=s.supersample,
                          shading="albedo", background=torch.zeros(3))
        colors.append(out.rgb.permute(0, 3, 1, 2).contiguous())
        alphas.append(out.alpha.permute(0, 3, 1, 2).contiguous())
    return torch.cat(colors), torch.cat(alphas)


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


@dataclass
class GroupSet:
    """Multi-view renders: G groups of ``views`` views of one object each, the views of a group contiguous
    ((g v) order, image i belongs to group i // views): premultiplied colour ``color`` [G·views, 3, H, W],
    coverage ``alpha`` [G·views, 1, H, W], the cameras' condition ``camera`` [G·views, 16]
    (``camera_condition`` with the front azimuth 90°), elevation/azimuth in degrees [G·views], and the object
    index of each group ``obj`` [G]."""

    color: Tensor
    alpha: Tensor
    camera: Tensor
    elevation: Tensor
    azimuth: Tensor
    obj: Tensor
    views: int

    @property
    def groups(self) -> int:
        return int(self.obj.shape[0])

    def __len__(self) -> int:
        return self.color.shape[0]

    def image_index(self, group_index: Tensor) -> Tensor:
        """The image indices [len(group_index)·views] of the given groups, each group's views contiguous."""
        return (group_index[:, None] * self.views + torch.arange(self.views)[None]).reshape(-1)


def group_cameras(n_groups: int, views: int, gen: torch.Generator, s: Settings) -> Cameras:
    """``n_groups`` anchor cameras from ``sample_orbit`` in the Settings' ranges, each expanded by
    ``view_groups`` into ``views`` cameras 360°/views apart in azimuth: [n_groups·views] cameras."""
    anchors = sample_orbit(n_groups, gen, s.elevation_range, s.azimuth_range, s.distance_range, s.fov_range,
                           s.uniform_sphere)
    return view_groups(anchors, views)


def build_groups(assets: list, groups_per_object: int, s: Settings, stream: str) -> tuple[GroupSet, float]:
    """Render ``groups_per_object`` groups of ``s.views`` views of each asset, the cameras of asset i from the
    seeded stream ``stream/<i>``; returns the set and the rendering time in seconds."""
    from dreamcore.priors.mv_cameras import camera_condition

    parts = []
    t0 = time.perf_counter()
    for i, asset in enumerate(assets):
        cams = group_cameras(groups_per_object, s.views, generator(s.seed, f"{stream}/{i}"), s)
        color, alpha = render_cameras(asset, cams, s)
        parts.append((color, alpha, camera_condition(cams), torch.rad2deg(cams.elevation),
                      torch.rad2deg(cams.azimuth), torch.full((groups_per_object,), i, dtype=torch.long)))
    seconds = time.perf_counter() - t0
    return GroupSet(*(torch.cat(p) for p in zip(*parts)), views=s.views), seconds


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
    from transformers import CLIPTextModel

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
        text = CLIPTextModel(text_encoder_config(s, vocab_size))
    return unet, text


def text_encoder_config(s: Settings, vocab_size: int):
    """The tiny CLIPTextModel's config (width ``text_width``, ``text_layers`` layers, ``max_length`` positions)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=s.text_width, intermediate_size=2 * s.text_width,
        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads, max_position_embeddings=s.max_length,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, projection_dim=s.text_width)


def mv_unet_config(s: Settings) -> dict:
    """The MultiViewUNet config of the multi-view mode: widths ``unet_channels`` = model_channels·channel_mult,
    one ResBlock per level, transformers (multi-view self-attention + text cross-attention) at the downsampling
    factors ``attention_resolutions`` and in the middle, ``attention_heads`` heads at every attention level
    (num_heads, so the head width is width/heads: 16 and 32 at the default widths, the split of the 2D model).
    With ``image_conditioning`` the last frame of each group is a clean reference picture with its own camera
    (``reference_frame=True, reference_camera="own"``; no parameters are added)."""
    ch = tuple(int(c) for c in s.unet_channels)
    if len(ch) != 3:
        raise SystemExit(f"--unet-channels needs 3 widths, got {ch}")
    if any(c % ch[0] for c in ch):
        raise SystemExit(f"--unet-channels {ch}: with --views every width must be a multiple of the first")
    if any(c % s.attention_heads for c in ch):
        raise SystemExit(f"--unet-channels {ch}: every width must be a multiple of --attention-heads "
                         f"{s.attention_heads}")
    levels = tuple(2 ** k for k in range(len(ch)))
    if not s.attention_resolutions or any(r not in levels for r in s.attention_resolutions):
        raise SystemExit(f"--attention-resolutions {tuple(s.attention_resolutions)}: give downsampling factors "
                         f"among {levels}")
    cfg = dict(image_size=s.resolution, in_channels=3, out_channels=3, model_channels=ch[0], num_res_blocks=1,
               attention_resolutions=tuple(int(r) for r in s.attention_resolutions),
               channel_mult=tuple(c // ch[0] for c in ch), num_head_channels=-1, num_heads=s.attention_heads,
               context_dim=s.text_width, transformer_depth=1, camera_dim=16, norm_groups=norm_groups(ch), ip_dim=0)
    if s.image_conditioning:  # ImageDream's reference frame without its CLIP image prompt, with its own camera
        cfg.update(reference_frame=True, reference_camera="own")
    return cfg


def build_mv_models(s: Settings, vocab_size: int):
    """Fresh MultiViewUNet and CLIPTextModel (initialised from the seeded ``init`` stream, as build_models)."""
    from transformers import CLIPTextModel

    from dreamcore.priors.mv_unet import MultiViewUNet

    cfg = mv_unet_config(s)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(subseed(s.seed, "init"))
        unet = MultiViewUNet(**cfg)
        text = CLIPTextModel(text_encoder_config(s, vocab_size))
    return unet, text


def load_weights_from(folder: Path, unet, text_encoder, tokenizer, s: Settings) -> None:
    """Continue training a multi-view folder: its UNet and text encoder weights replace the fresh ones. The
    folder must have the same architecture (UNet config), prediction type and vocabulary (the same prompts)."""
    from transformers import CLIPTextModel

    from dreamcore.priors.mv_unet import MultiViewUNet

    meta_file = folder / META_FILE
    if not meta_file.is_file() or json.loads(meta_file.read_text()).get("views", 1) != s.views:
        raise SystemExit(f"--init-from {folder}: not a {s.views}-view folder written by this tool")
    meta = json.loads(meta_file.read_text())
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if meta.get("vocabulary") != vocab:
        raise SystemExit(f"--init-from {folder}: its vocabulary differs (other prompts): {meta.get('vocabulary')}")
    if meta["settings"].get("prediction_type") != s.prediction_type:
        raise SystemExit(f"--init-from {folder}: it predicts {meta['settings'].get('prediction_type')}, not "
                         f"{s.prediction_type} (give --prediction-type to match)")
    source = MultiViewUNet.from_pretrained(str(folder / "unet"))
    def plain(config) -> dict:
        return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))

    src_cfg, new_cfg = plain(source.config), plain(unet.config)
    if source.has_reference_frame and not unet.has_reference_frame:
        raise SystemExit(f"--init-from {folder}: an image-conditioned folder (UNet reference_frame "
                         f"{src_cfg.get('reference_frame')}) cannot be continued as a text-only one: give "
                         "--image-conditioning, or train fresh")
    if unet.has_reference_frame and not source.has_reference_frame:
        # a text-only folder taught to take a picture: the reference frame adds no parameters (it is one more
        # frame in the multi-view self-attention, with a camera through the same MLP), so every weight carries over
        print(f"--init-from {folder}: a text-only folder, continued with the image condition (reference frame)",
              flush=True)
        for key in ("reference_frame", "reference_camera"):
            src_cfg.pop(key, None)
            new_cfg.pop(key, None)
    if src_cfg != new_cfg:
        diff = sorted(k for k in set(src_cfg) | set(new_cfg) if src_cfg.get(k) != new_cfg.get(k))
        raise SystemExit(f"--init-from {folder}: its UNet config differs from the one asked for ({', '.join(diff)})")
    unet.load_state_dict(source.state_dict())
    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(str(folder / "text_encoder")).state_dict())
    print(f"continuing from {folder} ({meta['settings'].get('steps')} steps, seed {meta['settings'].get('seed')})",
          flush=True)


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

    losses, t_training = optimize(
        unet, text_encoder, lambda gen: train_step(unet, text_encoder, sched, views, cond_ids, s, gen), s, log_every)

    mean_img = data_mean(views, s.white_fraction)
    save_folder(out, unet, text_encoder, tokenizer, sched, mean_img)
    meta = {
        "format": "dreamcore tiny pixel-space prior",
        "objects": [asdict(o) for o in objects],
        "captions": captions,
        "settings": settings_json(s),
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


WHITE = (1.0, 1.0, 1.0)  # the reference picture's background: the engine feeds the picture over white


def has_reference_frame(unet) -> bool:
    """Whether a multi-view UNet takes a clean reference frame last in each group (``--image-conditioning``)."""
    return bool(getattr(unet, "has_reference_frame", False))


def with_reference_rows(v: Tensor, last: Tensor, views: int) -> Tensor:
    """[(G·views), …] rows and one more row per group ``last`` [G, …] -> [(G·(views + 1)), …]: each group's views,
    then its extra row (the layout of the multiview prior's ``predict_noise``: the reference frame goes last)."""
    g = v.shape[0] // views
    v = v.reshape(g, views, *v.shape[1:])
    return torch.cat([v, last.reshape(g, 1, *v.shape[2:]).to(v.dtype)], 1).flatten(0, 1)


def view_rows(out: Tensor, views: int) -> Tensor:
    """[(G·(views + 1)), …] -> [(G·views), …]: the reference rows dropped."""
    return out.reshape(-1, views + 1, *out.shape[1:])[:, :views].flatten(0, 1)


def mv_forward(unet, x: Tensor, t: Tensor, context: Tensor, camera: Tensor, views: int,
               ref: Optional[Tensor] = None, ref_camera: Optional[Tensor] = None) -> Tensor:
    """The UNet's output for the views x [(G·views), C, H, W] (timesteps [(G·views)], text [(G·views), L, D],
    cameras [(G·views), 16]). A UNet with a reference frame gets, last in each group, the clean reference image
    ``ref`` [G, C, H, W] in model space (its ``ip_img``; the row of x there is a placeholder the UNet overwrites)
    with the group's timestep and text and the camera ``ref_camera`` [G, 16]; None = the dropped image (all-zero
    frame and camera). Its output rows are dropped: [(G·views), C, H, W] either way."""
    if not has_reference_frame(unet):
        if ref is not None:
            raise SystemExit("a reference image was given to a multi-view UNet without a reference frame")
        return unet(x, t, context, camera=camera, num_frames=views)
    g = x.shape[0] // views
    if ref is None:
        ref = torch.zeros(g, *x.shape[1:], dtype=x.dtype)
    if ref_camera is None:
        ref_camera = torch.zeros(g, camera.shape[-1], dtype=camera.dtype)
    out = unet(with_reference_rows(x, torch.zeros_like(x[::views]), views), with_reference_rows(t, t[::views], views),
               with_reference_rows(context, context[::views], views),
               camera=with_reference_rows(camera, ref_camera, views), num_frames=views + 1, ip_img=ref.to(x.dtype))
    return view_rows(out, views)


def reference_images(data: GroupSet, obj: Tensor, gen: torch.Generator,
                     exclude_group: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """For each wanted object ``obj`` [K]: the image index of a random view of a random group of that object in
    ``data`` (drawn from ``gen``: the group's rank among the object's groups, then the view), never the group
    ``exclude_group`` [K] when given and the object has another, so its camera is independent of that group's.
    Returns (image indices [K], x in [−1, 1] over white [K, 3, H, W]: the picture as the engine feeds it)."""
    k = obj.shape[0]
    order = torch.argsort(data.obj, stable=True)  # groups sorted by object
    counts = torch.bincount(data.obj, minlength=int(max(int(data.obj.max()), int(obj.max()))) + 1)
    if (counts[obj] == 0).any():
        raise SystemExit("reference_images: an object without groups to take a reference view from")
    starts = torch.cumsum(counts, 0) - counts
    pool = counts[obj]
    u = torch.rand(k, generator=gen)
    if exclude_group is not None:
        rank_of = torch.empty_like(order)
        rank_of[order] = torch.arange(order.shape[0])
        own = rank_of[exclude_group] - starts[obj]
        other = pool > 1
        size = torch.where(other, pool - 1, pool)  # the object's other groups (itself when it has no other)
        rank = torch.minimum((u * size).long(), size - 1)
        rank = torch.where(other & (rank >= own), rank + 1, rank)
    else:
        rank = torch.minimum((u * pool).long(), pool - 1)
    group = order[starts[obj] + rank]
    img = group * data.views + torch.randint(data.views, (k,), generator=gen)
    x = composite(data.color[img], data.alpha[img], torch.tensor(WHITE).expand(k, 3)) * 2.0 - 1.0
    return img, x


def reference_batch(data: GroupSet, gi: Tensor, gen: torch.Generator,
                    dropout: float) -> tuple[Tensor, Tensor, Tensor]:
    """The training references of the groups ``gi`` [G]: a view of the same object from another training group
    (:func:`reference_images`), over white, in [−1, 1] [G, 3, H, W], its camera numbers (the GroupSet's
    ``camera``) [G, 16], and which were dropped [G] (probability ``dropout``): their frame and camera are exact
    zeros, as the engine's dropped image."""
    img, x = reference_images(data, data.obj[gi], gen, exclude_group=gi)
    cam = data.camera[img].clone()
    drop = torch.rand(gi.shape[0], generator=gen) < dropout
    x[drop] = 0.0
    cam[drop] = 0.0
    return x, cam, drop


def train_step_mv(unet, text_encoder, sched, data: GroupSet, cond_ids: Tensor, s: Settings,
                  gen: torch.Generator) -> Tensor:
    """One multi-view diffusion loss: ``s.batch // views`` random groups, one background, one caption (the plain
    prompt, dropped to the last row of ``cond_ids``, the empty prompt, per group) and one timestep per group,
    independent noise per view; the UNet sees each view's camera and the group's views jointly.

    With ``s.image_conditioning`` each group also gets its reference frame, last (:func:`reference_batch`, drawn
    after everything above: a clean view of the same object from another group's camera, over white, with that
    camera; dropped with ``s.image_dropout`` to an all-zero frame and camera), at the group's timestep and
    caption; its output row is not in the loss (:func:`mv_forward` drops it). The caption is dropped with
    ``s.image_caption_dropout`` in the groups that keep their picture (the picture alone must then name the
    object) and with ``s.caption_dropout`` in the others."""
    n = data.views
    g = s.batch // n
    gi = torch.randint(data.groups, (g,), generator=gen)
    idx = data.image_index(gi)
    bg = random_backgrounds(g, gen, s.white_fraction).repeat_interleave(n, 0)
    x0 = composite(data.color[idx], data.alpha[idx], bg) * 2.0 - 1.0
    drop = torch.rand(g, generator=gen) < s.caption_dropout
    t = torch.randint(0, sched.config.num_train_timesteps, (g,), generator=gen).repeat_interleave(n)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = sched.add_noise(x0, noise, t)
    if s.image_conditioning != has_reference_frame(unet):
        raise SystemExit("train_step_mv: --image-conditioning and the UNet's reference_frame disagree")
    if s.image_conditioning:  # drawn last: a text-only run draws exactly what it drew before this option existed
        ref, ref_cam, ref_dropped = reference_batch(data, gi, gen, s.image_dropout)
        with_picture = torch.rand(g, generator=gen) < s.image_caption_dropout
        drop = torch.where(ref_dropped, drop, with_picture)
    cap = torch.where(drop, torch.full_like(data.obj[gi], cond_ids.shape[0] - 1), data.obj[gi]).repeat_interleave(n)
    emb = encode(text_encoder, cond_ids)[cap]
    if not s.image_conditioning:
        pred = unet(x_t, t, emb, camera=data.camera[idx], num_frames=n)
    else:
        pred = mv_forward(unet, x_t, t, emb, data.camera[idx], n, ref, ref_cam)
    return F.mse_loss(pred, training_target(sched, x0, noise, t))


def check_views(s: Settings) -> None:
    """The multi-view mode's requirements on the batch and the data sizes (clear errors before any work)."""
    if s.views < 1:
        raise SystemExit(f"--views {s.views}: need at least 1 view")
    if s.views == 1:
        return
    if s.batch % s.views:
        raise SystemExit(f"--batch {s.batch} is not a multiple of --views {s.views}: a batch holds whole groups of "
                         f"{s.views} views (e.g. --batch {max(1, s.batch // s.views) * s.views} or "
                         f"{(s.batch // s.views + 1) * s.views})")
    for flag, n in (("--views-per-object", s.views_per_object), ("--eval-views-per-object", s.eval_views_per_object)):
        if n < s.views:
            raise SystemExit(f"{flag} {n} is less than one group of --views {s.views}")


def train_mv(objects: list[ObjectSpec], out: Path, s: Settings, ev: EvalSettings, log_every: int = 25,
             baseline_2d: Optional[Path] = None) -> dict:
    """The multi-view mode (``s.views`` > 1): render groups, train the MultiViewUNet and the text encoder, save
    and evaluate; returns the metadata written to ``dreamcore_prior.json``."""
    check_views(s)
    t_start = time.perf_counter()
    prompts = [o.prompt for o in objects]
    if len(set(prompts)) != len(prompts):
        raise SystemExit("two --object entries have the same prompt")
    n = s.views
    g_train, g_eval = s.views_per_object // n, s.eval_views_per_object // n
    assets = load_assets(objects, s.radius)
    print(f"rendering {g_train} training + {g_eval} held-out groups of {n} views of {len(objects)} objects at "
          f"{s.resolution}px ...", flush=True)
    data, t_train = build_groups(assets, g_train, s, "train-groups")
    held_out, t_eval = build_groups(assets, g_eval, s, "eval-groups")
    n_img = len(data) + len(held_out)
    render_rate = n_img / max(t_train + t_eval, 1e-9)
    print(f"  {n_img} images in {t_train + t_eval:.1f}s ({render_rate:.0f} img/s)", flush=True)

    tokenizer = build_tokenizer(prompts + [""], s.max_length)
    cond_ids = tokenize(tokenizer, prompts + [""], s.max_length)
    unet, text_encoder = build_mv_models(s, len(tokenizer))
    if s.init_from:
        load_weights_from(Path(s.init_from), unet, text_encoder, tokenizer, s)
    sched = ddpm_scheduler(s.prediction_type)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"MultiViewUNet {n_unet / 1e6:.3f} M params ({n} views, attention at R/"
          f"{', R/'.join(str(r) for r in s.attention_resolutions)} + middle), text encoder {n_text / 1e6:.3f} M, "
          f"vocabulary {len(tokenizer)}, {len(prompts)} prompts", flush=True)
    if s.image_conditioning:
        print(f"image conditioning: a reference frame last in each group (its own camera), dropped for "
              f"{100 * s.image_dropout:.0f} % of the groups", flush=True)

    losses, t_training = optimize(
        unet, text_encoder, lambda gen: train_step_mv(unet, text_encoder, sched, data, cond_ids, s, gen), s,
        log_every)

    mean_img = data_mean(data, s.white_fraction)
    save_folder(out, unet, text_encoder, tokenizer, sched, mean_img, pipeline_class=MV_PIPELINE_CLASS,
                unet_entry=("dreamcore", "MultiViewUNet"))
    meta = {
        "format": "dreamcore tiny pixel-space multi-view prior",
        "views": n,
        "front_azimuth": FRONT_AZIMUTH,
        "objects": [asdict(o) for o in objects],
        "captions": prompts,
        "settings": settings_json(s),
        "parameters": {"unet": n_unet, "text_encoder": n_text},
        "vocabulary": tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))),
        "loss": losses,
        "timings": {
            "render_s": round(t_train + t_eval, 2), "render_images_per_s": round(render_rate, 1),
            "train_s": round(t_training, 1), "train_s_per_step": round(t_training / max(1, s.steps), 3),
            "threads": torch.get_num_threads(),
        },
        "integration": integration_notes_mv(s),
    }
    evaluation = evaluate_mv(out, ev, objects=objects, settings=s, assets=assets, held_out=held_out,
                             baseline_2d=baseline_2d)
    meta["evaluation"] = evaluation
    meta["timings"]["evaluate_s"] = evaluation.pop("seconds")
    meta["timings"]["total_s"] = round(time.perf_counter() - t_start, 1)
    finish(out, meta)
    return meta


def optimize(unet, text_encoder, step_loss, s: Settings, log_every: int) -> tuple[list[tuple[int, float]], float]:
    """The training loop shared by both modes: ``s.steps`` steps of AdamW on ``step_loss(gen)`` (the batch's
    loss, drawn from the seeded ``train`` stream) with gradient clipping, warm-up + cosine lr and EMA; at the end
    the EMA weights are copied into the models, which are left in eval mode. Returns the logged window-mean
    losses and the training time in seconds."""
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
        loss = step_loss(gen)
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
    return losses, t_training


def _jsonable(d):
    """Tuples -> lists, recursively (JSON round trip)."""
    return json.loads(json.dumps(d))


def settings_json(s: Settings) -> dict:
    """The Settings as recorded in dreamcore_prior.json: the multi-view keys only in the multi-view mode (a 2D
    folder records exactly what it did before the mode existed), the image-conditioning keys only when it is on."""
    d = _jsonable(asdict(s))
    if s.views == 1:
        for k in MV_ONLY_SETTINGS:
            d.pop(k)
    elif not s.image_conditioning:  # a text-only multi-view folder records what it did before the option existed
        for k in IMAGE_SETTINGS:
            d.pop(k)
    return d


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


def integration_notes_mv(s: Settings) -> dict:
    """What the multiview prior needs to use a multi-view folder (also in report.md); an image-conditioned one
    adds its reference frame, how to feed it and how to drop it."""
    n = s.views
    notes = {
        "model_space": f"pixels x = 2*rgb - 1 in [-1, 1], [(B*{n}), 3, {s.resolution}, {s.resolution}] (no VAE)",
        "unet": f"dreamcore.priors.mv_unet.MultiViewUNet (unet/): unet(x, t, context, camera, num_frames={n}), "
                f"the {n} views of one object contiguous in the batch",
        "condition": f"text_encoder(input_ids)[0] of the plain prompt (no view words; last_hidden_state, no "
                     f"attention mask): [1, {s.max_length}, {s.text_width}] float32, repeated per view",
        "camera": f"dreamcore.priors.mv_cameras.camera_condition(cameras, front_azimuth={FRONT_AZIMUTH}) "
                  "[(B*F), 16] per view; the unconditional pass gets the same cameras",
        "views": f"groups of {n} cameras from dreamcore.cameras.view_groups (one elevation, distance and fov, "
                 f"azimuths 360/{n} = {360 / n:g} degrees apart), one timestep and one background per group",
        "tokenizer": f"AutoTokenizer, padding='max_length', max_length={s.max_length} (= model_max_length), "
                     "truncation=True; lower-cases itself; unknown words -> [UNK]",
        "uncond": "the empty prompt '' ([BOS] [EOS] [PAD]...), trained with 10% caption dropout per group",
        "prediction_type": s.prediction_type,
        "schedule": "Stable Diffusion's: scaled_linear beta 0.00085..0.012, 1000 steps (scheduler/)",
        "backgrounds": f"trained on solid backgrounds shared by a group's views: white with p={s.white_fraction:.3g}, "
                       "else uniform random",
        "sampling_start": "epsilon models: start DDIM from sqrt(abar_T)*data_mean + sqrt(1-abar_T)*noise "
                          "(data_mean.safetensors, every view); v_prediction: pure noise",
    }
    if not s.image_conditioning:
        return notes
    notes["unet"] = (f"dreamcore.priors.mv_unet.MultiViewUNet (unet/, reference_frame=true, reference_camera='own'): "
                     f"unet(x, t, context, camera, num_frames={n + 1}, ip_img=ref), each group's {n} views "
                     "contiguous, then its reference frame")
    notes["reference_frame"] = (
        f"the picture, last in each group of {n} + 1 frames: rgb composited over WHITE, x = 2*rgb - 1 at "
        f"{s.resolution} px, passed as ip_img [G, 3, {s.resolution}, {s.resolution}] (the UNet overwrites rows "
        f"{n}, {2 * n + 1}, ... of x with it: no noise), with the group's timestep and text context and its own "
        f"camera camera_condition(reference camera, front_azimuth={FRONT_AZIMUTH}); its output row is dropped. "
        "MultiViewPrior.set_reference_image(rgb over white, camera) does all of this")
    notes["dropped_image"] = ("an all-zero frame AND an all-zero camera: text-to-3D (no picture: every row), and "
                              "the unconditional CFG pass of image-to-3D")
    notes["uncond"] = ("the empty prompt '' ([BOS] [EOS] [PAD]...) with the dropped image; trained with "
                       f"{100 * s.image_dropout:.0f}% image dropout per group, the caption dropped in "
                       f"{100 * s.caption_dropout:.0f}% of the groups without the picture (so "
                       f"{100 * s.caption_dropout * s.image_dropout:.0f}% drop both) and in "
                       f"{100 * s.image_caption_dropout:.0f}% of those with it (picture only)")
    notes["image_training"] = ("the reference of a training group: a view of the same object from another group's "
                               "random camera (elevation, azimuth, distance and fov of the training ranges)")
    return notes


def save_folder(out: Path, unet, text_encoder, tokenizer, sched, mean_img: Tensor,
                pipeline_class: str = PIPELINE_CLASS,
                unet_entry: tuple[str, str] = ("diffusers", "UNet2DConditionModel")) -> None:
    """Write the diffusers-format parts (safetensors) and model_index.json (the multi-view mode names its
    pipeline and the UNet's library/class through ``pipeline_class`` and ``unet_entry``)."""
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
    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__,
             "_transformers_version": transformers.__version__,
             "unet": list(unet_entry), "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def finish(out: Path, meta: dict) -> None:
    """Write dreamcore_prior.json and report.md (after samples.png, so the size counts everything) and make the
    files readable as the umask allows (safetensors writes its files owner-only)."""
    meta.setdefault("timings", {})
    multi_view = int(meta.get("views", 1)) > 1
    report = render_report_mv if multi_view else render_report
    limit = MAX_MV_FOLDER_MB if multi_view else MAX_FOLDER_MB
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.md").write_text(report(meta))
    size = folder_mb(out)
    meta["folder_mb"] = round(size, 2)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.md").write_text(report(meta))
    umask = os.umask(0)
    os.umask(umask)
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)
    if size > limit:
        print(f"warning: the folder is {size:.1f} MB (> {limit} MB): use narrower --unet-channels",
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


def load_mv_folder(folder: Path):
    """(MultiViewUNet, text_encoder, tokenizer, scheduler, data mean or None) from a multi-view folder, offline,
    in eval mode."""
    from diffusers import DDPMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    from dreamcore.priors.mv_unet import MultiViewUNet

    folder = Path(folder)
    unet = MultiViewUNet.from_pretrained(str(folder / "unet"), local_files_only=True).eval()
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


def ddim_scheduler(sched, steps: int):
    """The evaluation's DDIM sampler (η = 0, "trailing" spacing) over the training schedule ``sched``."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=sched.config.num_train_timesteps, beta_start=sched.config.beta_start,
                         beta_end=sched.config.beta_end, beta_schedule=sched.config.beta_schedule,
                         prediction_type=sched.config.prediction_type, clip_sample=False, set_alpha_to_one=False,
                         timestep_spacing="trailing")
    ddim.set_timesteps(steps)
    return ddim


@torch.no_grad()
def ddim_sample(unet, cond: Tensor, uncond: Tensor, sched, ev: EvalSettings, mean_img: Optional[Tensor],
                gen: torch.Generator) -> Tensor:
    """DDIM (η = 0, "trailing" spacing) with CFG ε_u + ω(ε_c − ε_u) (applied to the output, ε or v) for the
    conditions ``cond`` [S, L, D]; returns samples [S, 3, H, W] in [−1, 1] (clamped)."""
    ddim = ddim_scheduler(sched, ev.ddim_steps)
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


def report_objects(meta: dict) -> list[str]:
    """report.md's objects table (both modes)."""
    return ["| prompt | file | sha256 |", "|---|---|---|"] + [
        f"| {o['prompt']} | {o['file']} | `{o['sha256'][:16]}…` |" for o in meta.get("objects", [])]


def report_timings_and_loss(meta: dict) -> list[str]:
    """report.md's timing lines and a sparse loss curve (both modes)."""
    lines = [f"- {k}: {v}" for k, v in meta.get("timings", {}).items()]
    if meta.get("loss"):
        pts = meta["loss"]
        pick = pts[:: max(1, len(pts) // 8)] + ([pts[-1]] if pts[-1] not in pts[:: max(1, len(pts) // 8)] else [])
        lines += ["", "Loss (window means): " + " · ".join(f"{st}: {lv:.4f}" for st, lv in pick)]
    return lines


def report_integration(meta: dict) -> list[str]:
    """report.md's notes on using the folder as an engine prior (both modes)."""
    notes = meta.get("integration")
    return ["", "## Using it as an engine prior", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] if notes else []


def render_report(meta: dict) -> str:
    """report.md: settings, timings, evaluation, integration notes."""
    s = meta.get("settings", {})
    lines = ["# Tiny pixel-space prior", "",
             f"Trained by `tools/train_tiny_prior.py` (seed {s.get('seed')}, {s.get('steps')} steps at batch "
             f"{s.get('batch')}, {s.get('resolution')} px, {s.get('prediction_type')}).", "", "## Objects", "",
             *report_objects(meta)]
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
    lines += report_timings_and_loss(meta)
    ev = meta.get("evaluation")
    if ev:
        st = ev["settings"]
        lines += ["", "## Evaluation", "",
                  f"{st['samples_per_caption']} DDIM samples per caption ({st['ddim_steps']} steps, trailing, CFG "
                  f"{st['cfg']}), scored against {ev['held_out_renders']} held-out renders of all objects with a "
                  "fitted solid background. Sampling took "
                  f"{ev.get('sampling_s')} s ({ev.get('sampling_s_per_sample')} s/sample).", "",
                  format_table(ev), "", "![samples](samples.png)"]
    lines += report_integration(meta)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ multi-view evaluation
@torch.no_grad()
def ddim_sample_mv(unet, cond: Tensor, uncond: Tensor, camera: Tensor, views: int, sched, ev: EvalSettings,
                   mean_img: Optional[Tensor], gen: torch.Generator, ref: Optional[Tensor] = None,
                   ref_camera: Optional[Tensor] = None) -> Tensor:
    """The 2D sampler (DDIM η = 0, trailing spacing, CFG on the output) for groups of ``views`` views denoised
    jointly: conditions ``cond`` [G·views, L, D], the empty prompt ``uncond`` [1, L, D], cameras ``camera``
    [G·views, 16] (both passes get them); independent noise per view, ε-models start every view from the
    forward-diffused data mean. Returns [G·views, 3, H, W] in [−1, 1] (clamped).

    A UNet with a reference frame (``--image-conditioning``) gets it last in each group (:func:`mv_forward`): the
    conditional pass the picture ``ref`` [G, 3, H, W] (in [−1, 1], over white) with its camera ``ref_camera``
    [G, 16], the unconditional pass the dropped image (ImageDream's CFG: empty prompt + dropped image); without
    ``ref`` both passes drop it (text-only use)."""
    ddim = ddim_scheduler(sched, ev.ddim_steps)
    n = cond.shape[0]
    res = int(unet.config.image_size)
    noise = torch.randn(n, 3, res, res, generator=gen)
    t_first = int(ddim.timesteps[0])
    if sched.config.prediction_type == "epsilon" and mean_img is not None:
        abar = ddim.alphas_cumprod[t_first]
        x = abar.sqrt() * mean_img[None] + (1.0 - abar).sqrt() * noise
    else:
        x = noise
    chunk = max(1, ev.batch // views) * views  # whole groups per forward pass
    framed = has_reference_frame(unet)
    if ref is not None and not framed:
        raise SystemExit("ddim_sample_mv: a reference image for a UNet without a reference frame")
    out = []
    for start in range(0, n, chunk):
        xb = x[start:start + chunk]
        cb = cond[start:start + chunk]
        camb = camera[start:start + chunk]
        ub = uncond.expand(cb.shape[0], -1, -1)
        refs = {}
        if framed:
            gb = xb.shape[0] // views
            g0 = start // views
            zeros_x, zeros_c = torch.zeros(gb, *xb.shape[1:]), torch.zeros(gb, camb.shape[-1])
            refs = dict(ref=torch.cat([zeros_x, zeros_x if ref is None else ref[g0:g0 + gb]]),
                        ref_camera=torch.cat([zeros_c, zeros_c if ref_camera is None else ref_camera[g0:g0 + gb]]))
        for t in ddim.timesteps:
            tt = torch.full((2 * xb.shape[0],), int(t), dtype=torch.long)
            if framed:
                pred = mv_forward(unet, torch.cat([xb, xb]), tt, torch.cat([ub, cb]), torch.cat([camb, camb]),
                                  views, **refs)
            else:
                pred = unet(torch.cat([xb, xb]), tt, torch.cat([ub, cb]), camera=torch.cat([camb, camb]),
                            num_frames=views)
            pu, pc = pred.chunk(2)
            xb = ddim.step(pu + ev.cfg * (pc - pu), t, xb).prev_sample
        out.append(xb)
    return torch.cat(out).clamp(-1.0, 1.0)


def side_by_side(x: Tensor, views: int) -> Tensor:
    """[G·views, C, H, W] -> [G, C, H, views·W]: a group's views next to each other, as one image."""
    gv, c, h, w = x.shape
    return x.reshape(gv // views, views, c, h, w).permute(0, 2, 3, 1, 4).reshape(gv // views, c, h, views * w)


def paired_fitted_mse(samples: Tensor, color: Tensor, alpha: Tensor, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """``fitted_mse`` of sample i against render i only: MSE [S] and fitted backgrounds [S, 3]."""
    mse, bg = [], []
    for i in range(0, samples.shape[0], chunk):
        m, b = fitted_mse(samples[i:i + chunk], color[i:i + chunk], alpha[i:i + chunk])
        k = torch.arange(m.shape[0])
        mse.append(m[k, k])
        bg.append(b[k, k])
    return torch.cat(mse), torch.cat(bg)


def score_groups(samples01: Tensor, group_obj: Tensor, color: Tensor, alpha: Tensor, views: int) -> dict:
    """Score sample groups [G·views, 3, H, W] (in [0, 1]) against every object's renders at the groups' cameras
    (``color`` [O, G·views, 3, H, W], ``alpha`` [O, G·views, 1, H, W]). Per group and object one solid
    background is fitted over the group's views (the training data share it) and the PSNR is taken over the
    views together: ``psnr`` [G, O], ``bg`` [G, O, 3]; ``psnr_named`` [G] (the multi-view consistency of the
    group), ``psnr_other`` [G] (best other object), ``prompt_hit`` [G] (the best object is the named one);
    ``psnr_named_view_bg`` [G]: the same with a background fitted per view (the mean MSE over the views)."""
    n_obj = color.shape[0]
    g = group_obj.shape[0]
    wide = side_by_side(samples01, views)
    mse, bg = zip(*(paired_fitted_mse(wide, side_by_side(color[o], views), side_by_side(alpha[o], views))
                    for o in range(n_obj)))
    p = psnr(torch.stack(mse, 1))  # [G, O]
    bg = torch.stack(bg, 1)  # [G, O, 3]
    rows = torch.arange(g)
    named = p[rows, group_obj]
    same = torch.arange(n_obj)[None] == group_obj[:, None]
    other = (torch.where(same, torch.tensor(float("-inf")), p).max(1).values if n_obj > 1
             else torch.full_like(named, float("nan")))
    view_obj = group_obj.repeat_interleave(views)
    per_view, _ = paired_fitted_mse(samples01, color[view_obj, torch.arange(view_obj.shape[0])],
                                    alpha[view_obj, torch.arange(view_obj.shape[0])])
    return {"psnr": p, "bg": bg, "psnr_named": named, "psnr_other": other,
            "prompt_hit": (p.argmax(1) == group_obj).float(),
            "psnr_named_view_bg": psnr(per_view.reshape(g, views).mean(1))}


def mse_groups(ev: EvalSettings, held: GroupSet) -> int:
    """How many held-out groups the x̂0 MSE uses: ``ev.mse_images`` images in whole groups (at least one)."""
    return max(1, min(ev.mse_images // held.views, held.groups))


@torch.no_grad()
def x0_mse_mv(unet, text_encoder, sched, cond_ids: Tensor, held: GroupSet, s: Settings, ev: EvalSettings) -> dict:
    """x̂0 MSE ([0, 1] scale) on held-out groups (prompt and empty prompt, with the cameras) at t in
    MSE_TIMESTEPS; about ``ev.mse_images`` images in whole groups, one background per group. A UNet with a
    reference frame: ``cond``/``uncond`` with the dropped image (the text-only figures), and ``cond_image``/
    ``uncond_image`` with a reference view of each group's object from another held-out group (over white, its
    camera; drawn from its own stream, so the text-only figures use the same draws as a text-only folder's)."""
    gen = generator(ev.seed, "eval-mse")
    n = held.views
    k = mse_groups(ev, held)
    gi = torch.randperm(held.groups, generator=gen)[:k]
    idx = held.image_index(gi)
    bg = random_backgrounds(k, gen, s.white_fraction).repeat_interleave(n, 0)
    x0 = composite(held.color[idx], held.alpha[idx], bg) * 2.0 - 1.0
    emb_all = encode(text_encoder, cond_ids)
    cond = emb_all[held.obj[gi].repeat_interleave(n)]
    uncond = emb_all[-1:].expand_as(cond)
    cam = held.camera[idx]
    chunk = max(1, ev.batch // n) * n
    passes = [("cond", cond, None), ("uncond", uncond, None)]
    if has_reference_frame(unet):
        ref_img, ref = reference_images(held, held.obj[gi], generator(ev.seed, "eval-mse-reference"), exclude_group=gi)
        image = (ref, held.camera[ref_img])
        passes += [("cond_image", cond, image), ("uncond_image", uncond, image)]
    out = {}
    for t_val in MSE_TIMESTEPS:
        t = torch.full((x0.shape[0],), t_val, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        abar = sched.alphas_cumprod[t]
        row = {}
        for name, emb, image in passes:
            preds = []
            for i in range(0, x0.shape[0], chunk):
                kw = {} if image is None else dict(ref=image[0][i // n:(i + chunk) // n],
                                                   ref_camera=image[1][i // n:(i + chunk) // n])
                preds.append(mv_forward(unet, x_t[i:i + chunk], t[i:i + chunk], emb[i:i + chunk], cam[i:i + chunk],
                                        n, **kw))
            x0_hat = to_x0(torch.cat(preds), x_t, abar, sched.config.prediction_type)
            row[name] = float(((x0_hat - x0) / 2.0).pow(2).mean())
        out[str(t_val)] = row
    return out


@torch.no_grad()
def baseline_2d_samples(folder: Optional[Path], objects: list[ObjectSpec], cams: Cameras, group_obj: Tensor,
                        views: int, ev: EvalSettings, s: Settings) -> dict:
    """The 2D baseline of the multi-view evaluation: for every view of every sample group, an independent sample
    of the 2D tiny prior in ``folder`` asked for the view word of that camera (the engine's
    ``view_prompts(prompt, ViewPromptConfig())[label]``, labelled by ``label_views`` as the 2D data), sampled
    with the folder's own prediction type, data mean and scheduler and the same DDIM/CFG settings. Returns
    {"note", "folder", and when it ran: "samples01" [G·views, 3, H, W], "captions", "unknown_words",
    "sampling_s"}; skipped (with the reason in "note") without a folder, for another resolution or a folder that
    is not a 2D prior."""
    if folder is None:
        return {"folder": None, "note": "skipped (--no-baseline, or --quick without --baseline-2d)"}
    folder = Path(folder)
    cfg_path = folder / "unet" / "config.json"
    if not cfg_path.is_file():
        return {"folder": str(folder), "note": f"skipped: no 2D prior folder at {folder}"}
    unet_cfg = json.loads(cfg_path.read_text())
    if "sample_size" not in unet_cfg or "image_size" in unet_cfg:
        return {"folder": str(folder), "note": f"skipped: {folder} is not a 2D tiny prior (UNet2DConditionModel)"}
    if int(unet_cfg["sample_size"]) != s.resolution:
        return {"folder": str(folder), "note": f"skipped: {folder} samples {unet_cfg['sample_size']} px, this "
                                               f"prior {s.resolution} px"}
    unet, text_encoder, tokenizer, sched, mean_img = load_folder(folder)
    view_cfg = ViewPromptConfig()
    labels = label_views(torch.rad2deg(cams.elevation), torch.rad2deg(cams.azimuth), view_cfg)
    view_obj = group_obj.repeat_interleave(views).tolist()
    texts = [view_prompts(objects[o].prompt, view_cfg)[lab] for o, lab in zip(view_obj, labels)]
    distinct = list(dict.fromkeys(texts))
    length = int(text_encoder.config.max_position_embeddings)
    ids = tokenize(tokenizer, distinct + [""], length)
    unknown = int((ids[:-1] == tokenizer.unk_token_id).sum()) if tokenizer.unk_token_id is not None else 0
    emb = encode(text_encoder, ids)
    cap = torch.tensor([distinct.index(t) for t in texts], dtype=torch.long)
    print(f"2D baseline {folder}: {len(texts)} independent samples ({len(distinct)} view captions) ...", flush=True)
    t0 = time.perf_counter()
    samples = ddim_sample(unet, emb[cap], emb[-1:], sched, ev, mean_img, generator(ev.seed, "eval-mv-baseline"))
    note = f"{folder} ({sched.config.prediction_type})"
    if unknown:
        note += f"; {unknown} caption words unknown to its tokenizer (other prompts than it was trained on)"
    return {"folder": str(folder), "note": note, "samples01": (samples + 1.0) / 2.0, "captions": distinct,
            "unknown_words": unknown, "sampling_s": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def evaluate_mv(folder: Path, ev: EvalSettings, objects: Optional[list[ObjectSpec]] = None,
                settings: Optional[Settings] = None, assets: Optional[list] = None,
                held_out: Optional[GroupSet] = None, baseline_2d: Optional[Path] = None) -> dict:
    """Score a saved multi-view folder (loaded with from_pretrained): ``ev.samples_per_caption`` sample groups per
    object at seeded anchor cameras (expanded by view_groups), each scored against every object's renders at
    exactly those cameras (prompt accuracy, multi-view consistency PSNR), the same for the 2D baseline, the x̂0
    MSE on held-out groups; writes samples.png and returns the figures.

    An image-conditioned folder (its UNet has a reference frame): the figures above are its text-only ones (the
    image dropped in both CFG passes, so they mean what they mean for a text-only folder), and the
    ``image_conditioning`` block adds the same groups sampled with a picture (same cameras, same initial noise):
    for each group a held-out render of the named object at a random held-out camera, over white, with that
    camera (the stream ``eval-mv-reference``), CFG against the empty prompt + dropped image (ImageDream's)."""
    from dreamcore.priors.mv_cameras import camera_condition

    t0 = time.perf_counter()
    folder = Path(folder)
    if settings is None or objects is None:
        meta = json.loads((folder / META_FILE).read_text())
        settings = settings or settings_from_json(meta["settings"])
        objects = objects or [ObjectSpec(**o) for o in meta["objects"]]
    s = settings
    n = s.views
    if assets is None:
        assets = load_assets(objects, s.radius)
    if held_out is None:  # the same held-out groups as at training time (same seed and count)
        held_out, _ = build_groups(assets, s.eval_views_per_object // n, s, "eval-groups")
    unet, text_encoder, tokenizer, sched, mean_img = load_mv_folder(folder)
    prompts = [o.prompt for o in objects]
    cond_ids = tokenize(tokenizer, prompts + [""], s.max_length)
    emb = encode(text_encoder, cond_ids)
    per = ev.samples_per_caption
    group_obj = torch.arange(len(objects)).repeat_interleave(per)
    g = group_obj.shape[0]
    cams = group_cameras(g, n, generator(ev.seed, "eval-mv-cameras"), s)
    print(f"evaluating: {len(objects)} prompts x {per} groups of {n} views ({ev.ddim_steps} DDIM steps, CFG "
          f"{ev.cfg}) against every object's renders at the groups' cameras ...", flush=True)
    t_s = time.perf_counter()
    samples = ddim_sample_mv(unet, emb[group_obj.repeat_interleave(n)], emb[-1:], camera_condition(cams), n, sched,
                             ev, mean_img, generator(ev.seed, "eval-mv-samples"))
    t_sampling = time.perf_counter() - t_s
    samples01 = (samples + 1.0) / 2.0
    renders = [render_cameras(a, cams, s) for a in assets]
    color = torch.stack([r[0] for r in renders])
    alpha = torch.stack([r[1] for r in renders])
    sc = score_groups(samples01, group_obj, color, alpha, n)
    base = baseline_2d_samples(baseline_2d, objects, cams, group_obj, n, ev, s)
    bsc = score_groups(base["samples01"], group_obj, color, alpha, n) if "samples01" in base else None
    mean01 = ((mean_img if mean_img is not None else torch.zeros(3, s.resolution, s.resolution)) + 1.0) / 2.0
    msc = score_groups(mean01[None].expand(g * n, -1, -1, -1), group_obj, color, alpha, n)
    multi = len(objects) > 1
    rows = []
    for k, prompt in enumerate(prompts):
        sel = group_obj == k
        rows.append({
            "prompt": prompt, "object": k, "groups": int(sel.sum()),
            "prompt_accuracy": float(sc["prompt_hit"][sel].mean()),
            "consistency_psnr": float(sc["psnr_named"][sel].mean()),
            "psnr_other": float(sc["psnr_other"][sel].mean()) if multi else None,
            "baseline_2d_prompt_accuracy": float(bsc["prompt_hit"][sel].mean()) if bsc else None,
            "baseline_2d_consistency_psnr": float(bsc["psnr_named"][sel].mean()) if bsc else None,
        })
    image = None
    if has_reference_frame(unet):
        ref_img, ref = reference_images(held_out, group_obj, generator(ev.seed, "eval-mv-reference"))
        print(f"evaluating with the image: the same {g} groups, each given a held-out render of its object ...",
              flush=True)
        t_i = time.perf_counter()
        image_samples = ddim_sample_mv(unet, emb[group_obj.repeat_interleave(n)], emb[-1:], camera_condition(cams),
                                       n, sched, ev, mean_img, generator(ev.seed, "eval-mv-samples"), ref=ref,
                                       ref_camera=held_out.camera[ref_img])
        t_image = time.perf_counter() - t_i
        image01 = (image_samples + 1.0) / 2.0
        isc = score_groups(image01, group_obj, color, alpha, n)
        image = {"ref_img": ref_img, "ref01": (ref + 1.0) / 2.0, "samples01": image01, "sc": isc,
                 "sampling_s": round(t_image, 1)}
    b = {"folder": base["folder"], "note": base["note"]}
    if bsc is not None:
        b.update({"prompt_accuracy": float(bsc["prompt_hit"].mean()),
                  "consistency_psnr": float(bsc["psnr_named"].mean()),
                  "consistency_psnr_view_bg": float(bsc["psnr_named_view_bg"].mean()),
                  "psnr_other": float(bsc["psnr_other"].mean()) if multi else None,
                  "unknown_words": base["unknown_words"], "sampling_s": base["sampling_s"]})
    result = {
        "settings": asdict(ev),
        "views": n,
        "groups_per_object": per,
        "groups": g,
        "samples": g * n,
        "prompt_accuracy": float(sc["prompt_hit"].mean()),
        "consistency_psnr": float(sc["psnr_named"].mean()),
        "consistency_psnr_view_bg": float(sc["psnr_named_view_bg"].mean()),
        "psnr_other": float(sc["psnr_other"].mean()) if multi else None,
        "baseline_2d": b,
        "consistency_gain_db": (float(sc["psnr_named"].mean()) - b["consistency_psnr"]) if bsc else None,
        "data_mean_psnr": float(msc["psnr_named"].mean()),
        "per_object": rows,
        "held_out_groups": held_out.groups,
        "x0_mse_groups": mse_groups(ev, held_out),
        "x0_mse": x0_mse_mv(unet, text_encoder, sched, cond_ids, held_out, s, ev),
        "sampling_s": round(t_sampling, 1),
        "sampling_s_per_group": round(t_sampling / max(1, g), 3),
    }
    if image is not None:
        result["image_conditioning"] = image_figures(image, sc, group_obj, prompts, held_out, multi)
    save_grid_mv(folder / "samples.png", samples01, group_obj, prompts, color, alpha, sc["bg"], n,
                 base.get("samples01"), image)
    print(format_table_mv(result), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def image_figures(image: dict, sc: dict, group_obj: Tensor, prompts: list[str], held_out: GroupSet,
                  multi: bool) -> dict:
    """The ``image_conditioning`` block of a multi-view evaluation: prompt accuracy and consistency PSNR of the
    groups sampled with the picture (``image["sc"]``) beside the same groups sampled without it (``sc``), overall
    and per object, and which held-out render each group was given."""
    isc = image["sc"]

    def figures(x: dict, sel=None) -> dict:
        sel = torch.ones_like(group_obj, dtype=torch.bool) if sel is None else sel
        out = {"prompt_accuracy": float(x["prompt_hit"][sel].mean()),
               "consistency_psnr": float(x["psnr_named"][sel].mean())}
        if sel.all():
            out["consistency_psnr_view_bg"] = float(x["psnr_named_view_bg"].mean())
            out["psnr_other"] = float(x["psnr_other"].mean()) if multi else None
        return out

    with_image, without = figures(isc), figures(sc)
    per_object = []
    for k, prompt in enumerate(prompts):
        sel = group_obj == k
        w, wo = figures(isc, sel), figures(sc, sel)
        per_object.append({"prompt": prompt, "object": k, "groups": int(sel.sum()), "with_image": w,
                           "without_image": wo,
                           "consistency_gain_db": w["consistency_psnr"] - wo["consistency_psnr"]})
    n = held_out.views
    refs = [{"group": k, "object": int(group_obj[k]), "held_out_group": int(i) // n, "view": int(i) % n,
             "elevation": round(float(held_out.elevation[i]), 2), "azimuth": round(float(held_out.azimuth[i]), 2)}
            for k, i in enumerate(image["ref_img"].tolist())]
    return {
        "reference": "per sample group, a held-out render of the named object at a random held-out camera (seeded "
                     "stream eval-mv-reference), over white, its own camera; the same cameras and initial noise "
                     "as the text-only samples; CFG against the empty prompt + dropped image",
        "with_image": with_image,
        "without_image": without,
        "consistency_gain_db": with_image["consistency_psnr"] - without["consistency_psnr"],
        "prompt_accuracy_gain": with_image["prompt_accuracy"] - without["prompt_accuracy"],
        "per_object": per_object,
        "references": refs,
        "sampling_s": image["sampling_s"],
    }


def save_grid_mv(path: Path, samples01: Tensor, group_obj: Tensor, prompts: list[str], color: Tensor,
                 alpha: Tensor, bg: Tensor, views: int, baseline01: Optional[Tensor] = None,
                 image: Optional[dict] = None) -> None:
    """samples.png of the multi-view mode: one row per sample group (its prompt at the left): the group's views,
    a gap, the named object's renders at the same cameras on the background fitted to the group, and, when the
    2D baseline ran, a gap and its independent samples for the same cameras; for an image-conditioned folder
    (``image``: evaluate_mv's) then the group's reference picture and its views sampled with it."""
    from PIL import Image, ImageDraw

    res = samples01.shape[-1]
    scale = max(1, 64 // res)
    cell = res * scale + 2
    gap = 8
    head = 16
    g = group_obj.shape[0]
    # (title, cells, the picture of cell v of group k)
    blocks = [("multi-view sample" + (" (no image)" if image is not None else ""), views,
               lambda k, v: samples01[k * views + v]),
              ("renders of the named object", views,
               lambda k, v: composite(color[int(group_obj[k]), k * views + v][None],
                                      alpha[int(group_obj[k]), k * views + v][None],
                                      bg[k, int(group_obj[k])][None])[0])]
    if baseline01 is not None:
        blocks.append(("2D baseline (independent views)", views, lambda k, v: baseline01[k * views + v]))
    if image is not None:
        blocks.append(("picture", 1, lambda k, v: image["ref01"][k]))
        blocks.append(("multi-view sample given the picture", views, lambda k, v: image["samples01"][k * views + v]))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 12 + int(max(probe.textlength(p) for p in prompts))
    lefts = []
    x = label_w
    for title, cells, _ in blocks:
        lefts.append(x)
        x += max(cells * cell, int(probe.textlength(title)) + 4 if cells == 1 else 0) + gap
    img = Image.new("RGB", (x, head + g * cell), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for (title, _, _), left in zip(blocks, lefts):
        draw.text((left, 2), title, fill=(0, 0, 0))

    def paste(t: Tensor, x: int, y: int) -> None:
        arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8")
        img.paste(Image.fromarray(arr).resize((res * scale, res * scale), Image.NEAREST), (x, y))

    for k in range(g):
        y = head + k * cell + 1
        draw.text((4, y + cell // 2 - 6), prompts[int(group_obj[k])], fill=(0, 0, 0))
        for (_, cells, cell_image), left in zip(blocks, lefts):
            for v in range(cells):
                paste(cell_image(k, v), left + v * cell, y)
    img.save(path)


def format_table_mv(result: dict) -> str:
    """The multi-view evaluation as a markdown table (per object, then totals and the x̂0 MSE)."""
    def f(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:.0f} %" if pct else f"{v:.1f}"

    lines = ["| prompt | groups | consistency PSNR (dB) | PSNR other (dB) | prompt acc | 2D baseline PSNR (dB) | "
             "2D baseline prompt acc |", "|---|---|---|---|---|---|---|"]
    for r in result["per_object"]:
        lines.append(f"| {r['prompt']} | {r['groups']} | {f(r['consistency_psnr'])} | {f(r['psnr_other'])} | "
                     f"{f(r['prompt_accuracy'], True)} | {f(r['baseline_2d_consistency_psnr'])} | "
                     f"{f(r['baseline_2d_prompt_accuracy'], True)} |")
    b = result["baseline_2d"]
    lines.append(f"| **all ({result['groups']} groups of {result['views']})** | | "
                 f"**{f(result['consistency_psnr'])}** | **{f(result['psnr_other'])}** | "
                 f"**{f(result['prompt_accuracy'], True)}** | **{f(b.get('consistency_psnr'))}** | "
                 f"**{f(b.get('prompt_accuracy'), True)}** |")
    lines += ["", f"2D baseline: {b['note']}"]
    if result.get("consistency_gain_db") is not None:
        lines.append(f"multi-view minus 2D baseline consistency: {result['consistency_gain_db']:+.1f} dB; with a "
                     f"background fitted per view instead of per group: {result['consistency_psnr_view_bg']:.1f} "
                     f"dB vs {b['consistency_psnr_view_bg']:.1f} dB")
    else:
        lines.append(f"with a background fitted per view instead of per group: "
                     f"{result['consistency_psnr_view_bg']:.1f} dB")
    lines += [f"reference: the data mean image at every view scores {result['data_mean_psnr']:.1f} dB to the named "
              "object", "",
              f"x̂0 MSE on {result['x0_mse_groups']} of the {result['held_out_groups']} held-out groups:", "",
              "| t | x̂0 MSE, prompt | x̂0 MSE, empty prompt |", "|---|---|---|"]
    image = "cond_image" in next(iter(result["x0_mse"].values()), {})
    if image:
        lines[-2:] = ["| t | x̂0 MSE, prompt | x̂0 MSE, empty prompt | prompt + picture | empty prompt + picture |",
                      "|---|---|---|---|---|"]
    for t, row in result["x0_mse"].items():
        lines.append(f"| {t} | {row['cond']:.5f} | {row['uncond']:.5f} |" + (
            f" {row['cond_image']:.5f} | {row['uncond_image']:.5f} |" if image else ""))
    if result.get("image_conditioning"):
        lines += ["", format_table_image(result["image_conditioning"])]
    return "\n".join(lines)


def format_table_image(block: dict) -> str:
    """The image-conditioned figures (evaluate_mv's ``image_conditioning`` block): each object's consistency PSNR
    and prompt accuracy sampled with its picture beside the same groups sampled with the image dropped."""
    lines = ["With the picture vs. without (the same groups, cameras and initial noise):", "",
             "| prompt | groups | consistency PSNR without → with (dB) | gain (dB) | prompt acc without → with |",
             "|---|---|---|---|---|"]

    def row(name: str, groups, wo: dict, w: dict) -> str:
        gain = w["consistency_psnr"] - wo["consistency_psnr"]
        return (f"| {name} | {groups} | {wo['consistency_psnr']:.1f} → {w['consistency_psnr']:.1f} | {gain:+.1f} | "
                f"{100 * wo['prompt_accuracy']:.0f} % → {100 * w['prompt_accuracy']:.0f} % |")

    for r in block["per_object"]:
        lines.append(row(r["prompt"], r["groups"], r["without_image"], r["with_image"]))
    lines.append(row("**all**", sum(r["groups"] for r in block["per_object"]), block["without_image"],
                     block["with_image"]))
    lines += ["", f"Picture: {block['reference']}; with a background fitted per view: "
                  f"{block['without_image']['consistency_psnr_view_bg']:.1f} → "
                  f"{block['with_image']['consistency_psnr_view_bg']:.1f} dB. Sampling with the picture took "
                  f"{block['sampling_s']} s."]
    return "\n".join(lines)


def render_report_mv(meta: dict) -> str:
    """report.md of a multi-view folder: settings, timings, evaluation, integration notes."""
    s = meta.get("settings", {})
    n = meta.get("views")
    image = bool(s.get("image_conditioning"))
    lines = ["# Tiny pixel-space multi-view prior" + (", image-conditioned" if image else ""), "",
             f"Trained by `tools/train_tiny_prior.py --views {n}{' --image-conditioning' if image else ''}` (seed "
             f"{s.get('seed')}, {s.get('steps')} steps at "
             f"batch {s.get('batch')} = {s.get('batch', 0) // max(1, n or 1)} groups of {n} views, "
             f"{s.get('resolution')} px, {s.get('prediction_type')}; camera condition with front azimuth "
             f"{meta.get('front_azimuth')}°).", "", "## Objects", "",
             *report_objects(meta)]
    lines += ["", "## Data and model", "",
              f"- {s.get('views_per_object', 0) // max(1, n or 1)} training + "
              f"{s.get('eval_views_per_object', 0) // max(1, n or 1)} held-out groups of {n} views per object: "
              f"anchor cameras with elevation {s.get('elevation_range')} "
              f"({'area-uniform' if s.get('uniform_sphere') else 'uniform in degrees'}), azimuth "
              f"{s.get('azimuth_range')}, distance {s.get('distance_range')}, fov {s.get('fov_range')}, each "
              f"expanded to {n} views {360 / max(1, n or 1):g}° apart; albedo shading, supersample "
              f"{s.get('supersample')}.",
              f"- Captions: the plain prompt (the camera carries the view), dropped to \"\" for "
              f"{100 * s.get('caption_dropout', 0):.0f} % of the groups.",
              f"- Backgrounds: one per group, white with p = {s.get('white_fraction', 0):.3g}, else uniform random "
              "colour.",
              f"- MultiViewUNet widths {s.get('unet_channels')}, attention at downsampling factors "
              f"{s.get('attention_resolutions')} and the middle, {s.get('attention_heads')} heads: "
              f"{meta.get('parameters', {}).get('unet', 0) / 1e6:.3f} M params; text encoder "
              f"{meta.get('parameters', {}).get('text_encoder', 0) / 1e6:.3f} M (width {s.get('text_width')}, "
              f"{s.get('max_length')} positions); vocabulary {len(meta.get('vocabulary', []))}.",
              f"- Folder size: {meta.get('folder_mb', '?')} MB.", "", "## Timings", ""]
    if s.get("image_conditioning"):
        lines[-4:-4] = [
            f"- Image conditioning (ImageDream's reference frame, `reference_frame: true`, `reference_camera: own`): "
            f"each group of {n} views gets a last, clean frame — a view of the same object from another training "
            "group's random camera, composited over white, with that camera's 16 numbers, at the group's timestep "
            f"and caption; its output is not in the loss. Dropped (all-zero frame and camera) for "
            f"{100 * s.get('image_dropout', 0):.0f} % of the groups; the caption dropped in "
            f"{100 * s.get('caption_dropout', 0):.0f} % of those (so "
            f"{100 * s.get('image_dropout', 0) * s.get('caption_dropout', 0):.0f} % drop both: the unconditional "
            "of image-to-3D) and in "
            f"{100 * s.get('image_caption_dropout', s.get('caption_dropout', 0)):.0f} % of the groups that keep "
            "the picture (picture only); the folder keeps serving text-to-3D with the image dropped."]
    lines += report_timings_and_loss(meta)
    ev = meta.get("evaluation")
    if ev:
        st = ev["settings"]
        lines += ["", "## Evaluation", "",
                  *(["This folder is image-conditioned: the first table and the x̂0 MSE's prompt columns are its "
                     "text-only figures (the image dropped in both CFG passes, as for a text-only folder); the last "
                     "table gives the same groups sampled with a picture.", ""]
                    if ev.get("image_conditioning") else []),
                  f"{ev['groups_per_object']} sample groups of {ev['views']} views per prompt ({st['ddim_steps']} "
                  f"DDIM steps, trailing, CFG {st['cfg']}) at seeded cameras; every object is rendered at exactly "
                  "those cameras and, per group and object, one solid background is fitted over the views before "
                  "the PSNR over the views is taken. Consistency = PSNR to the named object; prompt accuracy = the "
                  "best object is the named one. The 2D baseline samples each view independently with its view "
                  f"word. Sampling took {ev.get('sampling_s')} s ({ev.get('sampling_s_per_group')} s/group).", "",
                  format_table_mv(ev), "", "![samples](samples.png)"]
    lines += report_integration(meta)
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
            unet, text = build_mv_models(sr, 32) if sr.views > 1 else build_models(sr, 32)
            sched = ddpm_scheduler(sr.prediction_type)
            params = list(unet.parameters()) + list(text.parameters())
            opt = torch.optim.AdamW(params, lr=sr.lr, weight_decay=sr.weight_decay)
            gen = generator(0, "bench")
            if sr.views > 1:  # random groups of views with random camera numbers
                n = 16 * sr.views
                data = GroupSet(torch.rand(n, 3, res, res, generator=gen), torch.rand(n, 1, res, res, generator=gen),
                                torch.randn(n, 16, generator=gen), torch.zeros(n), torch.zeros(n),
                                torch.randint(0, 4, (16,), generator=gen), sr.views)
                ids = torch.randint(4, 32, (5, sr.max_length), generator=gen)
                step_loss = lambda: train_step_mv(unet, text, sched, data, ids, sr, gen)  # noqa: E731
            else:
                n = 64
                views = ViewSet(torch.rand(n, 3, res, res, generator=gen), torch.rand(n, 1, res, res, generator=gen),
                                torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                                torch.randint(0, 4, (n,), generator=gen), torch.zeros(n), torch.zeros(n))
                ids = torch.randint(4, 32, (5, sr.max_length), generator=gen)
                step_loss = lambda: train_step(unet, text, sched, views, ids, sr, gen)  # noqa: E731
            times = []
            for i in range(steps + 1):
                t0 = time.perf_counter()
                loss = step_loss()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, sr.grad_clip)
                opt.step()
                if i > 0:
                    times.append(time.perf_counter() - t0)
            times.sort()
            rows.append({"resolution": res, "threads": th, "batch": sr.batch, "s_per_step": times[len(times) // 2],
                         "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3)})
            if sr.views > 1:
                rows[-1]["views"] = sr.views
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
    mv = p.add_argument_group("multi-view mode (--views N > 1)")
    mv.add_argument("--views", type=int, default=1,
                    help="views denoised jointly (default 1: the 2D prior); N > 1 trains a camera-conditioned "
                         "MultiViewUNet on groups of N views 360/N degrees apart (--batch must be a multiple of N; "
                         "--views-per-object counts images, i.e. views-per-object // N groups; --eval-samples "
                         "counts groups per prompt)")
    mv.add_argument("--attention-resolutions", type=str, default=None,
                    help="downsampling factors with (multi-view) attention, e.g. 2,4 (the default: R/2, R/4; the "
                         "middle always has it) or 4")
    mv.add_argument("--baseline-2d", type=Path, default=None, metavar="DIR",
                    help=f"2D tiny prior scored as the baseline (default {DEFAULT_BASELINE_2D.relative_to(ROOT)}; "
                         "skipped with a note if absent; --quick scores one only when named here)")
    mv.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                    help="continue training this multi-view folder's weights (same objects and model size)")
    mv.add_argument("--no-baseline", action="store_true", help="skip the 2D baseline of the evaluation")
    mv.add_argument("--image-conditioning", action="store_true",
                    help="also condition on a picture (ImageDream's reference frame): each group gets a clean view "
                         "of its object from another random camera, over white, as a last frame with its own camera; "
                         "one folder then serves text-to-3D (image dropped) and image-to-3D")
    mv.add_argument("--image-dropout", type=float, default=None, metavar="P",
                    help="with --image-conditioning: probability that a group's picture is dropped (all-zero frame "
                         "and camera; default 0.5); the groups without it keep the 10%% caption dropout")
    mv.add_argument("--image-caption-dropout", type=float, default=None, metavar="P",
                    help="with --image-conditioning: the caption's dropout in the groups that keep their picture "
                         "(default 0.5: a picture alone must name the object)")
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
        attention_heads=a.attention_heads, text_width=a.text_width, max_length=a.max_length, views=a.views,
    )
    if a.attention_resolutions:
        s.attention_resolutions = tuple(int(x) for x in a.attention_resolutions.split(","))
    if a.init_from is not None:
        if a.views == 1:
            raise SystemExit("--init-from continues a multi-view folder: give --views N > 1")
        s.init_from = str(a.init_from)
    if a.image_conditioning or a.image_dropout is not None or a.image_caption_dropout is not None:
        if not a.image_conditioning:
            raise SystemExit("--image-dropout and --image-caption-dropout go with --image-conditioning")
        if a.views == 1:
            raise SystemExit("--image-conditioning is a multi-view option: give --views N > 1")
        s.image_conditioning = True
        if a.image_dropout is not None:
            if not 0.0 <= a.image_dropout <= 1.0:
                raise SystemExit(f"--image-dropout {a.image_dropout}: a probability in [0, 1]")
            s.image_dropout = float(a.image_dropout)
        if a.image_caption_dropout is not None:
            if not 0.0 <= a.image_caption_dropout <= 1.0:
                raise SystemExit(f"--image-caption-dropout {a.image_caption_dropout}: a probability in [0, 1]")
            s.image_caption_dropout = float(a.image_caption_dropout)
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
    if a.no_baseline or (a.quick and a.baseline_2d is None):  # --quick scores a baseline only when named
        baseline = None
    else:
        baseline = a.baseline_2d if a.baseline_2d is not None else DEFAULT_BASELINE_2D
    if a.bench:
        check_views(s)
        rows = bench(s)
        table = ["| resolution | threads | batch | s/step | UNet params (M) |", "|---|---|---|---|---|"]
        table += [f"| {r['resolution']} | {r['threads']} | {r['batch']} | {r['s_per_step']:.2f} | {r['params_M']} |"
                  for r in rows]
        if s.views > 1:
            table[0] = f"multi-view UNet, {s.views} views per group\n" + table[0]
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
        if int(meta.get("views", 1)) > 1:
            recorded.views = int(meta["views"])
            result = evaluate_mv(folder, ev, objects=objects, settings=recorded, baseline_2d=baseline)
        else:
            result = evaluate(folder, ev, objects=objects, settings=recorded)
        meta.setdefault("timings", {})["evaluate_s"] = result.pop("seconds")
        meta["evaluation"] = result
        finish(folder, meta)
        return 0
    if not a.object or a.out is None:
        build_parser().error("give --object MESH:PROMPT (at least one) and --out DIR, or --eval-only DIR, or --bench")
    objects = [parse_object(o) for o in a.object]
    log_every = _pick(a.log_every, "log_every", a.quick, 1 if a.quick else 25)
    check_views(s)
    if s.views > 1:
        meta = train_mv(objects, a.out, s, ev, log_every=log_every, baseline_2d=baseline)
    else:
        meta = train(objects, a.out, s, ev, log_every=log_every)
    print(f"wrote {a.out} ({meta['folder_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
