"""Rewards for reward-weighted score distillation (:mod:`dreamcore.guidance.reward`, RewardSDS/RewardVSD).

A reward scores candidate clean images x̂_0 — in the prior's model space, one per noise sample — and returns one
number per image: ``reward(x0 [N, B, C, H, W] (or [N, B, C, P, 1] for pixel subsets), context) → [N, B]``.
Higher is better. Registered as kind ``reward`` (``guidance.reward.model.name``):

* ``reference`` — −mean((x̂_0 − x_ref)²): similarity to the ground-truth view of the reference prior
  (``prior.reference_views(cameras, h, w, background)``, mapped to model space with ``prior.to_model_space``;
  gathered at the render's pixel subset when there is one). Needs a prior that exposes ``reference_views``.
* ``linear`` — ⟨x̂_0, v⟩ with a fixed unit direction v (per channel, averaged over pixels): the closed-form probe
  (on the Gaussian prior the ranking of N noises is then by ⟨ε_i, v⟩, guidance-wave2.md §4).
* ``constant`` — the same value for every image (the ranking carries no information: min-max is 0.8 × SDS).
* ``clip`` — cosine similarity of CLIP image and text embeddings (the role ImageReward / the LAION aesthetic
  predictor play in the official code), weights loaded with transformers' ``from_pretrained`` from the hub id or
  folder ``model``; a clear :class:`~dreamcore.errors.DreamcoreError` names the model when it cannot be loaded.

A reward uses only what the guidance layer may import: the prior's public methods and the render's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.registry import register


@dataclass
class RewardContext:
    """What a reward may look at besides x̂_0: the prior, the views' cameras and the render's pixel layout."""

    prior: Any
    cameras: Optional[Cameras]
    pixel_index: Optional[Tensor]
    image_size: Optional[tuple[int, int]]


class Reward:
    """Base class: ``setup(prior)`` once, then ``__call__(x0 [N, B, ...], context) → [N, B]``."""

    Config = ComponentConfig

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def setup(self, prior) -> None:  # noqa: ARG002 - loads weights / checks the prior
        return None

    def __call__(self, x0: Tensor, context: RewardContext) -> Tensor:
        raise NotImplementedError


def pixels_of(prior, x: Tensor) -> Tensor:
    """Model-space images [B, C, H, W] → colours [B, 3, H, W] in [0, 1]: VAE-decoded for latent priors (their
    ``vae``), else (x + 1)/2 for 3-channel pixel-space priors. Differentiable."""
    vae = getattr(prior, "vae", None)
    if x.shape[1] == 3 and vae is None:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    if vae is None:
        raise DreamcoreError(f"this reward needs colours, but prior '{type(prior).__name__}' renders "
                             f"{x.shape[1]}-channel latents without a VAE to decode them (prior.latent_mode=false)")
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    z = x / scale + shift
    img = vae.decode(z.to(next(vae.parameters()).dtype)).sample.float()
    return ((img + 1.0) / 2.0).clamp(0.0, 1.0)


@register("reward", "reference")
class ReferenceReward(Reward):
    """R = −mean((x̂_0 − x_ref)²) per image, x_ref the reference prior's ground-truth view in model space."""

    def setup(self, prior) -> None:
        if not prior.reference_assets():
            raise DreamcoreError(f"reward 'reference' needs a prior with reference views (the reference prior); "
                                 f"prior '{type(prior).__name__}' has none: use guidance.reward.model.name=clip")

    def __call__(self, x0: Tensor, context: RewardContext) -> Tensor:
        prior, cams = context.prior, context.cameras
        if not prior.reference_assets():
            raise DreamcoreError(f"reward 'reference' needs a prior with reference views (the reference prior); "
                                 f"prior '{type(prior).__name__}' has none: use guidance.reward.model.name=clip")
        if cams is None:
            raise DreamcoreError("reward 'reference' needs the cameras of the rendered views")
        b = x0.shape[1]
        h, w = context.image_size if context.image_size is not None else x0.shape[-2:]
        bg = cams.background if cams.background is not None else torch.ones(b, 3, device=cams.device)
        with torch.no_grad():
            rgb, _ = prior.reference_views(cams, h, w, bg)  # [B, H, W, 3] in [0, 1]
            if context.pixel_index is not None:
                flat = rgb.reshape(b, h * w, rgb.shape[-1])
                idx = context.pixel_index.to(flat.device)[..., None].expand(-1, -1, flat.shape[-1])
                rgb = flat.gather(1, idx)[:, :, None]  # [B, P, 1, 3]
            ref = prior.to_model_space(rgb.to(x0.dtype), context.pixel_index).to(x0)
        return -(x0 - ref[None]).pow(2).flatten(2).mean(-1)


@register("reward", "linear")
class LinearReward(Reward):
    """R = Σ_c v_c · mean_pixels x̂_0[c] with v = ``direction`` / ‖direction‖ (all channels equally when empty):
    for a 1-pixel image this is ⟨x̂_0, v⟩ with ‖v‖ = 1."""

    @dataclass
    class Config(ComponentConfig):
        direction: list[float] = field(default_factory=list)

    def __call__(self, x0: Tensor, context: RewardContext) -> Tensor:  # noqa: ARG002
        c = x0.shape[2]
        v = torch.tensor(self.cfg.direction, dtype=x0.dtype, device=x0.device) if self.cfg.direction \
            else torch.ones(c, dtype=x0.dtype, device=x0.device)
        if v.shape[0] != c:
            raise DreamcoreError(f"guidance.reward.model.direction has {v.shape[0]} values for {c} channels")
        v = v / v.norm().clamp_min(1e-12)
        return (x0.flatten(3).mean(-1) * v).sum(-1)


@register("reward", "constant")
class ConstantReward(Reward):
    """R ≡ ``value``: no preference among the noises."""

    @dataclass
    class Config(ComponentConfig):
        value: float = 0.0

    def __call__(self, x0: Tensor, context: RewardContext) -> Tensor:  # noqa: ARG002
        return torch.full(x0.shape[:2], self.cfg.value, dtype=x0.dtype, device=x0.device)


@register("reward", "clip")
class CLIPReward(Reward):
    """R = cos(CLIP_image(decode(x̂_0)), CLIP_text(``text``)); weights from transformers' ``from_pretrained``."""

    @dataclass
    class Config(ComponentConfig):
        model: str = "openai/clip-vit-base-patch32"
        text: str = ""  # what the image should show (the run's prompt, usually)
        local_files_only: bool = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.model = None
        self._text: Optional[Tensor] = None

    def setup(self, prior) -> None:  # noqa: ARG002
        c = self.cfg
        if not c.text.strip():
            raise DreamcoreError("reward 'clip' needs the text to score against: set guidance.reward.model.text")
        try:
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError as e:
            raise DreamcoreError(f"reward 'clip' needs transformers to load CLIP model '{c.model}': "
                                 "pip install 'dreamcore[diffusers]'") from e
        try:
            self.model = CLIPModel.from_pretrained(c.model, local_files_only=c.local_files_only).eval()
            tokenizer = CLIPTokenizer.from_pretrained(c.model, local_files_only=c.local_files_only)
        except Exception as e:  # missing weights, no network, not a CLIP folder
            raise DreamcoreError(f"reward 'clip' cannot load CLIP model '{c.model}' ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}); download it or point "
                                 f"guidance.reward.model.model at a local CLIP folder") from None
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            tokens = tokenizer([c.text], padding=True, return_tensors="pt")
            text = self.model.get_text_features(**tokens)
        self._text = text / text.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, x0: Tensor, context: RewardContext) -> Tensor:
        if self.model is None:
            raise RuntimeError("CLIPReward.setup(prior) was not called")
        if context.pixel_index is not None:
            raise DreamcoreError("reward 'clip' scores whole images: set system.rays_per_view=0")
        n, b = x0.shape[:2]
        img = pixels_of(context.prior, x0.flatten(0, 1))
        size = int(self.model.config.vision_config.image_size)
        img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=img.device).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=img.device).view(1, 3, 1, 1)
        self.model.to(img.device)
        feats = self.model.get_image_features(pixel_values=((img - mean) / std).to(next(self.model.parameters())))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        score = feats.float() @ self._text.to(feats.device).float().T
        return score.view(n, b).to(x0.dtype)


def build_reward(cfg) -> Reward:
    """The reward named by ``cfg`` (a parsed reward config, or a mapping with ``name``)."""
    from dreamcore import registry
    from dreamcore.config import parse_component

    cfg = parse_component("reward", cfg, "guidance.reward.model")
    return registry.build("reward", cfg)
