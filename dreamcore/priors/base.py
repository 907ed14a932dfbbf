"""The prior contract: what every guidance may ask of a 2D diffusion model.

A prior sees image tensors, never a scene or a render: ``to_model_space`` takes rendered colours (the caller
unpacks its render), ``predict_noise`` the noised images with the views' cameras (their ``background``), pixel
indices and image size. It works on images ``x`` in its own model space ([B, C, H, W], or [B, C, N, 1] for pixel subsets when
``supports_pixel_subsets``), noised as x_t = α_t x + σ_t ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t). It predicts the
noise for one condition per batch element; classifier-free guidance is composed by the guidance, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamcore.cameras import Cameras, view_groups
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import SceneTransform


@dataclass
class NoiseSchedule:
    """Discrete VP schedule: ``alphas_cumprod`` [T] (ᾱ_t) and what the network predicts."""

    alphas_cumprod: Tensor
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def scaled_linear(cls, steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon") -> "NoiseSchedule":
        """Stable Diffusion's schedule: β_t linear in √β from ``beta_start`` to ``beta_end``."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, 0).float(), prediction_type)

    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def table(self, device: torch.device) -> Tensor:
        """``alphas_cumprod`` on ``device``, copied there once (no host-to-device copy per step)."""
        if device == self.alphas_cumprod.device:
            return self.alphas_cumprod
        key = str(device)
        source, copy = self._on_device.get(key, (None, None))
        if source is not self.alphas_cumprod:  # first use on this device, or the table was replaced
            copy = self.alphas_cumprod.to(device)
            self._on_device[key] = (self.alphas_cumprod, copy)
        return copy

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """α_t, σ_t as [B] tensors for integer timesteps t [B]."""
        a = self.table(t.device)[t]
        return a.sqrt(), (1.0 - a).sqrt()

    def add_noise(self, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a, s = self.alpha_sigma(t)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return a.view(shape).to(x.dtype) * x + s.view(shape).to(x.dtype) * noise


@dataclass
class PromptEmbeddings:
    """Conditions for a prompt: ``cond`` per view label (``"default"`` always present) and ``uncond`` (negative /
    empty prompt). Each value is one condition with a leading batch dimension of 1."""

    cond: dict[str, Tensor]
    uncond: Tensor
    prompt: str = ""
    extras: dict[str, Tensor] = field(default_factory=dict)
    null: Optional[Tensor] = None  # the empty prompt's condition when it differs from ``uncond`` (CSD, NFSD)


class Prior(nn.Module):
    """Base class of priors. Subclasses set ``schedule`` and implement the three methods
    (:meth:`encode_prompt`, :meth:`to_model_space`, :meth:`predict_noise`); the other hooks have defaults that
    fit a plain text-to-image model, and the runner and systems call them without probing."""

    schedule: NoiseSchedule
    channels: int = 3  # channels of the model space x (4 for latent priors)
    supports_pixel_subsets: bool = False
    view_dependent: bool = True
    # the frame of the object the prior knows (the reference prior's mesh file); identity for a text prior
    scene_transform: SceneTransform = SceneTransform()
    # how many views of one object the model denoises jointly (MVDream: 4); 1 for a 2D image prior. Batches the
    # prior sees are whole groups of these views, contiguous, sharing one timestep (see :meth:`view_group`)
    views_per_sample: int = 1
    # whether the prior takes a picture of the object as a condition (:meth:`set_reference_image`; ImageDream)
    accepts_image: bool = False
    # :meth:`predict_epsilon` calls made and the rows (views) they denoised: what a run's steps cost in prior
    # evaluations (``metrics.json``'s ``prior_calls``/``prior_rows``; CFG's two rows are one call; the trainer
    # checkpoints them, so a resumed run reports the run's total)
    denoiser_calls: int = 0
    denoised_rows: int = 0

    def set_reference_image(self, rgb: Tensor, camera: Cameras) -> None:
        """Condition the prior on a picture of the object: ``rgb`` [H, W, 3] in [0, 1] over white (keyed, centred
        and scaled as the prior's training renders), seen from ``camera`` (one camera, scene frame). Call before
        :meth:`encode_prompt`: the conditions it returns then carry the image, the unconditional ones the
        dropped image. Only priors with :attr:`accepts_image`."""
        raise DreamcoreError(f"prior '{type(self).__name__}' takes no image condition (it has no image input; "
                             "an ImageDream-style multiview prior does)")

    def model_rows(self, per_view: Tensor) -> Tensor:
        """Per-view values [B, …] laid out as the rows the denoiser runs on: the same rows for most priors; an
        image-conditioned multi-view prior adds each group's reference frame (zeros there). What a hook inside
        the denoiser adds per row (VSD's camera embedding on the time embedding) goes through this."""
        return per_view

    @property
    def latent_mode(self) -> bool:
        """True when the scene renders the model's latents directly (Latent-NeRF: no VAE between)."""
        return False

    def latents_to_rgb(self, values: Tensor) -> Tensor:
        """Display colours [..., 3] of rendered latents [..., C] (latent-mode priors only)."""
        raise DreamcoreError(f"a {values.shape[-1]}-channel field needs a prior that shows its channels as colours "
                             f"(a latent prior with prior.latent_mode=true); '{type(self).__name__}' has none")

    def reference_assets(self) -> list:
        """The objects this prior was built from (:class:`~dreamcore.meshes.asset.MeshAsset`, scene frame): the
        reference prior's mesh and its extra objects. Runs are scored against them and validation images show
        them (:meth:`reference_views`); [] for a prior that only knows words."""
        return []

    def reference_views(self, cameras: Cameras, h: int, w: int, background: Tensor,
                        obj: int = 0) -> tuple[Tensor, Tensor]:
        """Ground-truth images [B, H, W, 3] over ``background`` [B, 3] and alpha [B, H, W, 1] of object ``obj`` of
        :meth:`reference_assets`; only for priors that have some."""
        raise DreamcoreError(f"prior '{type(self).__name__}' has no reference views (it knows no object)")

    def reference_object(self, prompt: str) -> int:
        """Which of :meth:`reference_assets` ``prompt`` describes — the object a run with that prompt is scored
        against and shown beside: 0 (the first) unless the prior maps prompts to objects (the reference prior's
        ``reference.meshes``)."""
        return 0

    @classmethod
    def preflight(cls, cfg) -> None:
        """Cheap checks of ``cfg`` without building the prior (a later stage's prior is checked before the first
        stage starts, so that a missing model does not surface only after hours of work). Raises DreamcoreError."""

    def training_views(self) -> int:
        """How many fixed training views this prior asks for when ``camera.views`` is -1 (0: fresh random
        views each step)."""
        return 0

    def view_group(self, anchors: Cameras) -> Cameras:
        """The cameras the prior wants rendered for each anchor camera: the anchor itself for a 2D prior;
        :attr:`views_per_sample` views around the object (:func:`dreamcore.cameras.view_groups`) for a
        multi-view prior, each group contiguous."""
        return view_groups(anchors, self.views_per_sample)

    def time_embedding(self) -> tuple[nn.Module, int]:
        """For priors whose denoiser is a UNet (``self.unet``, which VSD's LoRA score adapts): its time-embedding
        module, whose output reaches every ResBlock, and that output's width — where a score model adds its
        camera embedding (:mod:`dreamcore.guidance.variational`). The default reads a diffusers
        ``UNet2DConditionModel``; other UNets override it."""
        module = self.unet.time_embedding
        return module, int(module.linear_2.out_features)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", views=None) -> PromptEmbeddings:
        """Conditions for ``prompt`` (and its per-view variants, :func:`dreamcore.views.view_prompts`,
        when ``views`` — a :class:`~dreamcore.views.ViewPromptConfig` — is given)."""
        raise NotImplementedError

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """Differentiable map from rendered colours ``rgb`` ([B, H, W, C] in [0, 1], composited over their
        background; [B, N, 1, C] for a pixel subset, whose indices into the image are ``pixel_index`` [B, N]) to
        the model's input x. Priors that denoise whole images only refuse a ``pixel_index``."""
        raise NotImplementedError

    @torch.no_grad()
    def to_image(self, x: Tensor, like: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """Colours in the layout of the render ``like`` ([B, H, W, C], or [B, N, 1, C] for a pixel subset) whose
        model-space value is ``x``: the inverse of :meth:`to_model_space`, without gradient (a guidance's target
        shown as a render: SIR's, GCS's consistency term). Here for priors whose map is affine per value after a
        resize, x = a·resize(I) + b (pixel-space priors, latent-mode fields): a and b are read back from the
        map of a black and a white render, and the result is resized to the render's size. VAE priors decode."""
        like = like.detach()
        zero = self.to_model_space(torch.zeros_like(like), pixel_index)
        one = self.to_model_space(torch.ones_like(like), pixel_index)
        img = (x - zero) / (one - zero)
        return resize_to(img, like)

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """ε̂(x_t; y, t) for each batch element's condition ``embeddings[b]`` (same shape as x_t).

        Must not disable autograd itself for trainable priors (VSD trains LoRA adapters through it); the
        guidances call it under ``torch.no_grad()`` where no gradient is wanted."""
        raise NotImplementedError

    def predict_epsilon(self, x_t: Tensor, t: Tensor, embeddings: Tensor, **kw) -> Tensor:
        """Like :meth:`predict_noise` but always ε: v-prediction is converted, ε = α_t v + σ_t x_t."""
        self.denoiser_calls += 1
        self.denoised_rows += x_t.shape[0]
        out = self.predict_noise(x_t, t, embeddings, **kw)
        kind = self.schedule.prediction_type
        if kind == "epsilon":
            return out
        a, s = self.schedule.alpha_sigma(t)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        a, s = a.view(shape).to(x_t.dtype), s.view(shape).to(x_t.dtype)
        if kind == "v_prediction":
            return a * out + s * x_t
        return (x_t - a * out) / s  # "sample": out is x̂_0


def resize_to(img: Tensor, like: Tensor) -> Tensor:
    """[B, C, h, w] → the layout of ``like`` [B, H, W, C] (bilinear where the sizes differ), in its dtype."""
    h, w = like.shape[1:3]
    if tuple(img.shape[-2:]) != (h, w):
        img = F.interpolate(img.float(), (h, w), mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).to(like)
