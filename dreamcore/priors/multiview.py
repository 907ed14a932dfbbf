"""Multi-view diffusion priors (MVDream, Shi et al. 2023) as a dreamcore prior: ``prior.name: multiview``.

The model denoises F = ``prior.views`` views of one object jointly (:class:`~dreamcore.priors.mv_unet.MultiViewUNet`:
self-attention across the views), each view conditioned on the prompt and on its camera
(:func:`~dreamcore.priors.mv_cameras.camera_condition`). The prior asks for its views through
:meth:`Prior.view_group`: for each random anchor camera, F cameras at the anchor's elevation, distance and fov,
azimuths 360°/F apart (MVDream's layout); batches reach :meth:`predict_noise` as whole groups, contiguous, and
the guidance draws one timestep per group (``Guidance.sample_t``).

Two kinds of folder share this code, both diffusers-style pipelines read through
:func:`dreamcore.priors.hub.load_part` (a local folder or a hub id, offline-aware):

* **latent** (the real MVDream, ``ashawkey/mvdream-sd2.1-diffusers`` layout: ``model_index.json``, ``unet/``
  (config.json + diffusion_pytorch_model.safetensors in LDM parameter names), ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``): x = s·μ_φ(2·rgb − 1) at 256² (32² latents), as for Stable Diffusion;
* **pixel** (dreamcore's tiny multi-view prior, ``tools/train_tiny_prior.py --views 4``: no ``vae/``):
  x = 2·rgb − 1 at the UNet's ``image_size``.

The model index's ``vae`` entry decides which. ImageDream folders (an ``image_encoder/``; UNet ``ip_dim`` > 0) are
refused for now. The prior contract is unchanged: image tensors and cameras in, never a scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore.cameras import Cameras
from dreamcore.errors import DreamcoreError
from dreamcore.priors import hub
from dreamcore.priors.mv_cameras import camera_condition
from dreamcore.priors.stable_diffusion import LatentPriorConfig, StableDiffusionPrior, resize
from dreamcore.registry import register


@register("prior", "multiview")
class MultiViewPrior(StableDiffusionPrior):
    """A camera-conditioned multi-view diffusion model over pixels or VAE latents (see the module docstring); its
    text encoder is read as Stable Diffusion's (CLIP, last hidden states [1, 77, D])."""

    @dataclass
    class Config(LatentPriorConfig):
        model: str = "assets/tiny-mv-prior"  # dreamcore's own; a real one: prior.model=ashawkey/mvdream-sd2.1-diffusers
        views: int = 4  # views denoised jointly (MVDream's num_frames)
        # the prior's azimuth of dreamcore's front view (MVDream's community convention: 90°, its view index 1)
        front_azimuth: float = 90.0

    view_dependent = False  # the camera, not a "front/back view" prompt suffix, carries the view

    def __init__(self, cfg: "MultiViewPrior.Config") -> None:
        if cfg.views < 1:
            raise DreamcoreError(f"prior.views={cfg.views}: need at least 1 view per sample")
        if cfg.latent_mode:
            raise DreamcoreError("prior.latent_mode is not supported by the multiview prior (it renders RGB)")
        self.views_per_sample = int(cfg.views)
        super().__init__(cfg)

    def load_models(self) -> None:
        from dreamcore.priors.mv_unet import MultiViewUNet

        c = self.cfg
        index = hub.model_index(c.model, c.revision, c.local_files_only)
        if hub.has_part(index, "image_encoder"):
            raise DreamcoreError(f"prior.model={c.model!r} has an image encoder (an ImageDream folder): image-"
                                 "conditioned multi-view priors are not supported yet; give a text-only (MVDream) one")
        self.unet = self.place(self.load(MultiViewUNet, "unet"))
        self.channels = int(self.unet.config.in_channels)
        self.vae = None
        self.vae_scale_factor = 1
        if hub.has_part(index, "vae"):
            self.load_vae()
        self.resolution = c.resolution or int(self.unet.config.image_size) * self.vae_scale_factor
        if self.resolution % self.vae_scale_factor:
            raise DreamcoreError(f"prior.resolution={self.resolution} must be a multiple of {self.vae_scale_factor}")
        self.latent_resolution = self.resolution // self.vae_scale_factor
        if self.unet.config.camera_dim != 16:
            raise DreamcoreError(f"prior.model={c.model!r}: its UNet takes {self.unet.config.camera_dim} camera "
                                 "numbers; the multiview prior gives 16 (a flattened camera-to-world matrix)")

    def configure_attention(self, unet: nn.Module) -> None:
        """The multi-view UNet always runs PyTorch's scaled_dot_product_attention."""
        if self.cfg.attention_slicing:
            raise DreamcoreError("prior.attention_slicing is not available for the multiview prior")

    def time_embedding(self) -> tuple[nn.Module, int]:
        """LDM's ``time_embed`` (the camera MLP's output is added after it, as a VSD score model's is)."""
        return self.unet.time_embed, int(self.unet.time_embed[2].out_features)

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """x [B, C, R, R]: VAE latents (latent folders) or 2·rgb − 1 (pixel folders), with gradient."""
        if self.vae is not None:
            return super().to_model_space(rgb, pixel_index)
        self.whole_images_only(pixel_index, self.cfg.name)
        return resize(rgb.permute(0, 3, 1, 2).to(self.device), self.resolution) * 2.0 - 1.0

    def camera_numbers(self, cameras: Cameras) -> Tensor:
        """[B, 16] the camera condition of each view."""
        return camera_condition(cameras, self.cfg.front_azimuth)

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """The UNet's ε (or v) for x_t [(G·F), C, R, R]: G groups of F views, one camera per view."""
        self.whole_images_only(pixel_index, self.cfg.name)
        if cameras is None:
            raise DreamcoreError("the multiview prior needs each view's camera (predict_noise got none)")
        f = self.views_per_sample
        if x_t.shape[0] % f or len(cameras) != x_t.shape[0]:
            raise DreamcoreError(f"the multiview prior denoises groups of {f} views: got {x_t.shape[0]} images "
                                 f"and {len(cameras)} cameras (camera.batch_size must be a multiple of {f})")
        cam = self.camera_numbers(cameras).to(self.device, self.dtype)
        with self.on_device(self.unet):
            out = self._unet_forward(self.unet_input(x_t), t.to(self.device),
                                     context=embeddings.to(self.device, self.dtype), camera=cam, num_frames=f)
        return out.to(x_t.device, x_t.dtype)
