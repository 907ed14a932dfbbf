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
widths below 32. ImageDream's image prompt (``ip_dim`` > 0: a perceiver resampler over CLIP image features and
extra key/value projections in the cross-attention) is refused for now.

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
    """Multi-head attention with LDM's names: ``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: Optional[int] = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        ctx = x if context is None else context
        b, n, _ = x.shape

        def split(v: Tensor) -> Tensor:
            return v.view(b, v.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx)))
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

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        bf, n, c = x.shape
        joint = x.reshape(bf // num_frames, num_frames * n, c)  # (b f) l c -> b (f l) c
        x = (self.attn1(self.norm1(joint)) + joint).reshape(bf, n, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, depth: int, groups: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [MultiViewTransformerBlock(inner, heads, head_dim, context_dim) for _ in range(depth)])
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
                 norm_groups: int = 32, ip_dim: int = 0) -> None:
        super().__init__()
        if ip_dim:
            raise DreamcoreError("this multi-view UNet has an image prompt (ip_dim > 0: ImageDream); "
                                 "dreamcore loads text-conditioned multi-view UNets (MVDream) only so far")
        if num_head_channels <= 0 and num_heads <= 0:
            raise DreamcoreError("multi-view UNet config: set num_head_channels or num_heads")
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if camera_dim:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def transformer(ch: int) -> SpatialTransformer:
            head_dim = num_head_channels if num_head_channels > 0 else ch // num_heads
            return SpatialTransformer(ch, ch // head_dim, head_dim, context_dim, transformer_depth, norm_groups)

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

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, camera: Optional[Tensor] = None,
                num_frames: int = 1) -> Tensor:
        """ε̂ (or v) for x [(B·F), C, H, W] at timesteps [(B·F)] with text context [(B·F), T, D] and cameras
        [(B·F), camera_dim]; the F views of each object are contiguous."""
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
        context = context.to(x.dtype)
        h, skips = x, []
        for stage in self.input_blocks:
            h = stage(h, emb, context, num_frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames)
        return self.out(h)
