"""The multi-view UNet of MVDream (Shi et al. 2023, "MVDream: Multi-view Diffusion for 3D Generation", §3.1):
Stable Diffusion's LDM UNet whose self-attention spans the F views of one object, with each view's camera
embedded and added to the timestep embedding.

Architecture (LDM ``openaimodel`` layout, parameter names as in the LDM checkpoints and the community diffusers
conversion of MVDream, so that ``unet/diffusion_pytorch_model.safetensors`` loads strictly):

* ``time_embed``: sinusoidal(t) over ``model_channels`` ([cos, sin] halves, frequencies exp(−ln 10⁴·k/half)) →
  Linear → SiLU → Linear to E = 4·``model_channels``; ``camera_embed``: the view's 16 camera numbers →
  Linear(16, E) → SiLU → Linear(E, E), **added** to the time embedding (it reaches every ResBlock as t does).
* ``input_blocks`` / ``middle_block`` / ``output_blocks`` / ``out``: ResBlocks (GroupNorm–SiLU–conv, + the
  embedding projected to the width, GroupNorm–SiLU–dropout–conv, skip), and at the downsampling factors in
  ``attention_resolutions`` a spatial transformer (GroupNorm, linear ``proj_in``, ``transformer_depth`` blocks,
  linear ``proj_out``, residual). Widths ``model_channels``·``channel_mult``; heads of ``num_head_channels``.
* The transformer block is the only multi-view part: its self-attention (``attn1``) regroups the tokens
  [(B·F), L, C] → [B, F·L, C], so that every pixel attends to every pixel of the F views of its object; the text
  cross-attention (``attn2``, context [(B·F), T, ``context_dim``]) and the GEGLU feed-forward stay per view.
  F = ``num_frames`` is an argument of :meth:`MultiViewUNet.forward` (4 for MVDream); the views of one object are
  contiguous in the batch ((b f) order), so the batch is a multiple of F.

With ``num_frames=1`` and no camera it is a plain LDM UNet. ``norm_groups`` (32 in LDM) lets a tiny model use
widths below 32.

ImageDream (Wang & Shi 2023) is the same UNet with an image condition, two parts (names as in its community
diffusers conversion, ``ashawkey/imagedream-ipmv-diffusers``):

* the **image prompt** (``ip_dim`` = 16 tokens > 0): :class:`ImagePromptResampler` (``image_embed``) turns CLIP
  ViT-H/14 penultimate features into ``ip_dim`` tokens appended after the text tokens; every cross-attention
  gets ``to_k_ip``/``to_v_ip`` for them, added with weight ``ip_weight``;
* the **reference frame** (ImageDream's pixel controller): each group holds F − 1 views and, last, the clean
  model-space reference image at the same timestep (rows F−1, 2F−1, … of x are overwritten with it), which the
  views reach only through the multi-view self-attention; its output is dropped. Its camera is the all-zero
  16-vector in ImageDream (``reference_camera: zero``: the views' cameras are then relative to the reference,
  which is the model's azimuth 0); dreamcore's tiny image-conditioned prior gives it its own camera
  (``reference_camera: own``). ``reference_frame`` (default: ``ip_dim`` > 0) turns it on without an image
  prompt (the tiny prior has no CLIP).

Saved and loaded as a diffusers model (``save_pretrained`` / ``from_pretrained`` of ``config.json`` +
``diffusion_pytorch_model.safetensors``), which is how dreamcore's tiny multi-view prior ships and how the
converted MVDream checkpoint (``ashawkey/mvdream-sd2.1-diffusers``) lays out its ``unet/`` folder.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from dreamcore.errors import DreamcoreError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[B, dim] sinusoidal embedding of (possibly fractional) timesteps t [B], LDM's [cos, sin] order."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Attention(nn.Module):
    """Multi-head attention with LDM's names: ``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with.

    With ``ip_tokens`` = n > 0 (ImageDream's image prompt, cross-attention only) the context's last n tokens are
    the image tokens, attended through their own projections ``to_k_ip``/``to_v_ip``:
    out = Attn(q, K text, V text) + ``ip_weight``·Attn(q, K_ip image, V_ip image)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: Optional[int] = None, ip_tokens: int = 0,
                 ip_weight: float = 1.0) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))
        self.ip_tokens, self.ip_weight = int(ip_tokens), float(ip_weight)
        if self.ip_tokens:
            self.to_k_ip = nn.Linear(context_dim or dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim or dim, inner, bias=False)

    def split(self, v: Tensor) -> Tensor:
        return v.view(v.shape[0], v.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        ctx = x if context is None else context
        b, n, _ = x.shape
        q = self.split(self.to_q(x))
        if self.ip_tokens:
            if ctx.shape[1] <= self.ip_tokens:
                raise DreamcoreError(f"multi-view UNet: the context has {ctx.shape[1]} tokens, expected the text's "
                                     f"followed by {self.ip_tokens} image tokens")
            ctx, image = ctx[:, :-self.ip_tokens], ctx[:, -self.ip_tokens:]
        out = F.scaled_dot_product_attention(q, self.split(self.to_k(ctx)), self.split(self.to_v(ctx)))
        if self.ip_tokens:
            out = out + self.ip_weight * F.scaled_dot_product_attention(
                q, self.split(self.to_k_ip(image)), self.split(self.to_v_ip(image)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiViewTransformerBlock(nn.Module):
    """Self-attention across the F views of an object, then per-view text cross-attention and feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, ip_tokens: int = 0,
                 ip_weight: float = 1.0) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, ip_tokens, ip_weight)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        bf, n, c = x.shape
        joint = x.reshape(bf // num_frames, num_frames * n, c)  # (b f) l c -> b (f l) c
        x = (self.attn1(self.norm1(joint)) + joint).reshape(bf, n, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, depth: int, groups: int,
                 ip_tokens: int = 0, ip_weight: float = 1.0) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [MultiViewTransformerBlock(inner, heads, head_dim, context_dim, ip_tokens, ip_weight)
             for _ in range(depth)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_frames)
        return self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w) + x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None].to(x.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class PerceiverAttention(nn.Module):
    """The resampler's attention: learned queries (``latents``) attend to the image features and to themselves
    (keys and values of [features; latents]), each side LayerNorm-ed first (``norm1`` features, ``norm2``
    latents); ``to_kv`` holds K and V stacked; no biases."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        b, n, _ = latents.shape

        def split(v: Tensor) -> Tensor:
            return v.view(b, v.shape[1], self.heads, -1).transpose(1, 2)

        k, v = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(split(self.to_q(latents)), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class ImagePromptResampler(nn.Module):
    """ImageDream's image prompt (Wang & Shi 2023, §3.2 "global/local controller"; the "local_resample" mode of
    its released checkpoints): a perceiver resampler (Alayrac et al. 2022; as in IP-Adapter) turning the CLIP
    image encoder's penultimate hidden states [B, 257, ``embedding_dim``] into ``tokens`` image tokens
    [B, tokens, ``output_dim``]: ``proj_in``, ``depth`` × (attention of the learned queries ``latents`` to
    [features; latents] + a GELU MLP (LayerNorm, ×``ff_mult``, no biases), both residual), ``proj_out``,
    ``norm_out``. Published sizes: dim = output = the UNet's context_dim (1024), 4 layers of 12 heads × 64,
    16 queries, CLIP ViT-H/14 features of width 1280."""

    def __init__(self, dim: int, tokens: int, embedding_dim: int, output_dim: int, depth: int, heads: int,
                 head_dim: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, tokens, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList([nn.ModuleList([
            PerceiverAttention(dim, heads, head_dim),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          nn.Linear(dim * ff_mult, dim, bias=False))]) for _ in range(depth)])

    def forward(self, features: Tensor) -> Tensor:
        x = self.proj_in(features)
        latents = self.latents.expand(features.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class Stage(nn.Sequential):
    """LDM's ``TimestepEmbedSequential``: hands the embedding to ResBlocks and the text/views to transformers."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class MultiViewUNet(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """MVDream's multi-view UNet (see the module docstring); config keys as in its ``unet/config.json``. LoRA
    adapters attach through diffusers' peft integration (VSD's score model targets ``to_q/to_k/to_v/to_out.0``)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 32, in_channels: int = 4, out_channels: int = 4, model_channels: int = 320,
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (4, 2, 1),
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_head_channels: int = 64, num_heads: int = -1,
                 context_dim: int = 1024, transformer_depth: int = 1, camera_dim: Optional[int] = 16,
                 norm_groups: int = 32, ip_dim: int = 0, ip_weight: float = 1.0, ip_embedding_dim: int = 1280,
                 ip_resampler_depth: int = 4, ip_resampler_heads: int = 12, ip_resampler_head_dim: int = 64,
                 reference_frame: Optional[bool] = None, reference_camera: str = "zero") -> None:
        super().__init__()
        if reference_camera not in ("zero", "own"):
            raise DreamcoreError(f"multi-view UNet config: reference_camera={reference_camera!r}, expected 'zero' "
                                 "(ImageDream) or 'own'")
        if num_head_channels <= 0 and num_heads <= 0:
            raise DreamcoreError("multi-view UNet config: set num_head_channels or num_heads")
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if camera_dim:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        if ip_dim:
            self.image_embed = ImagePromptResampler(context_dim, ip_dim, ip_embedding_dim, context_dim,
                                                    ip_resampler_depth, ip_resampler_heads, ip_resampler_head_dim)

        def transformer(ch: int) -> SpatialTransformer:
            head_dim = num_head_channels if num_head_channels > 0 else ch // num_heads
            return SpatialTransformer(ch, ch // head_dim, head_dim, context_dim, transformer_depth, norm_groups,
                                      ip_dim, ip_weight)

        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skips, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, norm_groups)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(Stage(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Stage(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage(ResBlock(ch, emb_dim, ch, norm_groups), transformer(ch),
                                  ResBlock(ch, emb_dim, ch, norm_groups))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb_dim, mult * model_channels, norm_groups)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(*layers))
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, ch), nn.SiLU(),
                                 nn.Conv2d(model_channels, out_channels, 3, padding=1))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """diffusers' loading, made strict: a checkpoint whose weights do not match the config's parameters
        one for one (missing, unexpected or differently shaped) is an error, never a half-random model."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            said = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:6]))}{' ...' if len(v) > 6 else ''}"
                             for k, v in problems.items() if v)
            raise DreamcoreError(f"multi-view UNet weights do not match its config.json ({said})")
        return (model, info) if want_info else model

    @property
    def has_reference_frame(self) -> bool:
        """Whether the last frame of each group is a clean reference image (ImageDream's pixel controller): set by
        ``reference_frame``, and by default whenever the model has an image prompt (``ip_dim`` > 0)."""
        flag = self.config.reference_frame
        return bool(self.config.ip_dim) if flag is None else bool(flag)

    def image_tokens(self, features: Tensor) -> Tensor:
        """[B, ip_dim, context_dim] image tokens of CLIP image features [B, 257, ip_embedding_dim] (zeros for the
        dropped image, as ImageDream's unconditional branch: the resampler's queries still give tokens)."""
        if not self.config.ip_dim:
            raise DreamcoreError("multi-view UNet: image tokens asked of a model without an image prompt (ip_dim 0)")
        return self.image_embed(features)

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, camera: Optional[Tensor] = None,
                num_frames: int = 1, ip: Optional[Tensor] = None, ip_img: Optional[Tensor] = None) -> Tensor:
        """ε̂ (or v) for x [(B·F), C, H, W] at timesteps [(B·F)] with text context [(B·F), T, D] and cameras
        [(B·F), camera_dim]; the F views of each object are contiguous.

        Image-conditioned models (ImageDream): the last frame of each group is the reference frame; ``ip_img``
        [B, C, H, W] (its clean model-space image, zeros for the dropped image) replaces rows F−1, 2F−1, … of x
        (the caller passes the group's timestep for it too, and drops its output), and the image tokens follow
        the text in every cross-attention: from ``ip`` [(B·F), 257, ip_embedding_dim] (CLIP features, through
        :meth:`image_tokens`), or, when ``ip`` is None, already appended to ``context`` by the caller."""
        if x.shape[0] % num_frames:
            raise DreamcoreError(f"multi-view UNet: a batch of {x.shape[0]} images is not a whole number of "
                                 f"{num_frames}-view groups")
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        if camera is not None:
            if not self.config.camera_dim:
                raise DreamcoreError("multi-view UNet: a camera was given to a model without camera_dim")
            emb = emb + self.camera_embed(camera.to(x.dtype))
        if self.has_reference_frame:
            if ip_img is None or ip_img.shape[0] * num_frames != x.shape[0]:
                raise DreamcoreError("multi-view UNet with a reference frame: give ip_img, one clean reference "
                                     f"image per group of {num_frames} frames (the last frame of each group)")
            x = x.clone()
            x[num_frames - 1::num_frames] = ip_img.to(x.dtype)
        context = context.to(x.dtype)
        if ip is not None:
            context = torch.cat([context, self.image_tokens(ip.to(x.dtype))], dim=1)
        h, skips = x, []
        for stage in self.input_blocks:
            h = stage(h, emb, context, num_frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames)
        return self.out(h)
