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

The model index's ``vae`` entry decides which.

**Image-conditioned folders** (ImageDream, Wang & Shi 2023; the community layout ``ashawkey/imagedream-ipmv-
diffusers`` adds ``image_encoder/`` (CLIP ViT-H/14 vision) and ``feature_extractor/``; dreamcore's tiny
``--image-conditioning`` prior has a reference frame and no CLIP) take a picture through
:meth:`MultiViewPrior.set_reference_image`. Each group of F views then gets a fifth, clean frame: the reference
image in model space (VAE latent or pixels, over white) at the group's timestep, its camera all zeros (ImageDream:
the views' cameras are then taken relative to the reference, which is the model's azimuth 0, so the prior's front
azimuth becomes minus the reference camera's azimuth) or its own (the tiny prior); and, with CLIP, the image's
16 resampled tokens after the text in every cross-attention. The unconditional branch sees the dropped image
(zero frame, zero camera, the tokens of zero CLIP features — ImageDream's own). Which branch a row is travels
inside the condition tensors that :meth:`encode_prompt` returns: [text tokens | image tokens | one flag token
(first number 1: the image, 0: dropped)], so the guidance layer is unchanged. Text-only use of such a folder:
no image set, every row dropped. The prior contract is unchanged: image tensors and cameras in, never a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
        self.unet = self.place(self.load(MultiViewUNet, "unet"))
        self.load_image_encoder(index)
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

    def load_image_encoder(self, index: dict) -> None:
        """ImageDream's CLIP image encoder and its preprocessing (``image_encoder/``, ``feature_extractor/``) when
        the folder has them; they must come with a UNet that has an image prompt (``ip_dim``) and vice versa."""
        c, unet = self.cfg, self.unet
        self.image_encoder = self.feature_extractor = None
        self.reference_x: Optional[Tensor] = None  # [1, C, r, r] the reference frame in model space
        self.reference_cameras: Optional[Cameras] = None
        self.reference_tokens: Optional[Tensor] = None  # [1, ip_dim, D] the image's tokens
        self._dropped_tokens: Optional[Tensor] = None
        has_encoder = hub.has_part(index, "image_encoder")
        if has_encoder != bool(unet.config.ip_dim):
            raise DreamcoreError(
                f"prior.model={c.model!r}: " + ("an image_encoder/ part but a UNet without an image prompt (ip_dim 0)"
                                                if has_encoder else
                                                f"a UNet with an image prompt (ip_dim {unet.config.ip_dim}) but no "
                                                "image_encoder/ part"))
        if has_encoder:
            from transformers import CLIPImageProcessor, CLIPVisionModel

            if not hub.has_part(index, "feature_extractor"):
                raise DreamcoreError(f"prior.model={c.model!r}: an image_encoder/ without its feature_extractor/")
            self.image_encoder = self.place(self.load(CLIPVisionModel, "image_encoder")).eval().requires_grad_(False)
            self.feature_extractor = self.load(CLIPImageProcessor, "feature_extractor")
        self.accepts_image = bool(unet.has_reference_frame)

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

    def front_azimuth(self) -> float:
        """The prior's azimuth of dreamcore's front: ``prior.front_azimuth``, except for a model whose reference
        frame has the zero camera (ImageDream) once an image is set: the reference camera is then the model's
        azimuth 0, so dreamcore's azimuth ψ is the model's ψ − ψ_ref."""
        if self.reference_cameras is not None and self.unet.config.reference_camera == "zero":
            return -math.degrees(float(self.reference_cameras.azimuth[0]))
        return self.cfg.front_azimuth

    def camera_numbers(self, cameras: Cameras) -> Tensor:
        """[B, 16] the camera condition of each view."""
        return camera_condition(cameras, self.front_azimuth())

    # -- the image condition (ImageDream) ------------------------------------------------------------------------
    @torch.no_grad()
    def set_reference_image(self, rgb: Tensor, camera: Cameras) -> None:
        """The picture every group is conditioned on (see the module docstring): ``rgb`` [H, W, 3] in [0, 1] over
        white, ``camera`` one camera. Set before :meth:`encode_prompt`."""
        if not self.accepts_image:
            super().set_reference_image(rgb, camera)
        if rgb.dim() != 3 or rgb.shape[-1] != 3 or len(camera) != 1:
            raise DreamcoreError(f"set_reference_image: expected rgb [H, W, 3] and one camera, got "
                                 f"{tuple(rgb.shape)} and {len(camera)} cameras")
        rgb = rgb.float().clamp(0, 1)
        if rgb.shape[0] != self.resolution or rgb.shape[1] != self.resolution:  # area: no aliasing when shrinking
            rgb = torch.nn.functional.interpolate(rgb.permute(2, 0, 1)[None], size=(self.resolution,) * 2,
                                                  mode="area" if rgb.shape[0] > self.resolution else "bilinear")
            rgb = rgb[0].permute(1, 2, 0)
        self.reference_x = self.to_model_space(rgb[None]).detach().float()
        self.reference_cameras = camera
        if self.image_encoder is not None:
            pixels = self.feature_extractor(images=(rgb * 255).round().to(torch.uint8).cpu().numpy(),
                                            return_tensors="pt").pixel_values
            with self.on_device(self.image_encoder):
                hidden = self.image_encoder(pixels.to(self.device, self.dtype), output_hidden_states=True)
            self.reference_tokens = self.unet.image_tokens(hidden.hidden_states[-2]).float()

    def dropped_tokens(self) -> Tensor:
        """[1, ip_dim, D] the tokens of the dropped image: the resampler applied to zero CLIP features."""
        if self._dropped_tokens is None:
            enc = self.image_encoder.config
            n = (enc.image_size // enc.patch_size) ** 2 + 1
            zeros = torch.zeros(1, n, self.unet.config.ip_embedding_dim, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self._dropped_tokens = self.unet.image_tokens(zeros).float()
        return self._dropped_tokens

    def with_image(self, emb: Tensor, present: bool) -> Tensor:
        """A text condition [1, T, D] extended to [1, T (+ ip_dim) + 1, D]: the image's tokens (or the dropped
        image's) when the model has an image prompt, then the flag token (first number 1 or 0)."""
        parts = [emb.float()]
        if self.image_encoder is not None:
            parts.append((self.reference_tokens if present else self.dropped_tokens()).to(emb.device))
        flag = torch.zeros(1, 1, emb.shape[-1], device=emb.device)
        flag[..., 0] = 1.0 if present else 0.0
        return torch.cat(parts + [flag], dim=1)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", views=None):
        """The text conditions, extended by :meth:`with_image` for an image-conditioned model: the prompt's with
        the image (when one is set), the negative and empty prompts' with the dropped image."""
        present = self.accepts_image and self.reference_x is not None
        if present and not prompt.strip():  # a picture alone is a condition (ImageDream's prompt may be empty)
            from dreamcore.priors.base import PromptEmbeddings

            uncond = self.uncond_embedding(negative_prompt)
            e = PromptEmbeddings(cond={"default": self.embed("")}, uncond=uncond, prompt="",
                                 null=uncond if not negative_prompt else self.uncond_embedding(""))
            if self.cfg.free_text_encoder:
                self.free_text_encoders()
        else:
            e = super().encode_prompt(prompt, negative_prompt, views)
        if not self.accepts_image:
            return e
        return replace(e, cond={k: self.with_image(v, present) for k, v in e.cond.items()},
                       uncond=self.with_image(e.uncond, False),
                       null=None if e.null is None else self.with_image(e.null, False))

    def model_rows(self, per_view: Tensor) -> Tensor:
        """[(G·F), …] → [(G·(F+1)), …] with a zero row for each group's reference frame (image-conditioned
        models); unchanged otherwise."""
        if not self.accepts_image:
            return per_view
        f = self.views_per_sample
        v = per_view.reshape(-1, f, *per_view.shape[1:])
        return torch.cat([v, torch.zeros_like(v[:, :1])], 1).flatten(0, 1)

    def reference_frames(self, present: Tensor, size: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """For groups whose rows carry the image (``present`` [G] bool): the reference frames [G, C, r, r] (zeros
        where dropped; r = ``size``, default the model's) and their cameras [G, 16] (zeros where dropped, and
        always for ``reference_camera: zero``)."""
        g, r = present.shape[0], size or self.latent_resolution
        frames = torch.zeros(g, self.channels, r, r, device=self.device)
        cams = torch.zeros(g, 16, device=self.device)
        if self.reference_x is not None and bool(present.any()):
            if self.reference_x.shape[-1] != r:
                raise DreamcoreError(f"the reference image is {self.reference_x.shape[-1]}² in model space and the "
                                     f"views {r}²: set it at the prior's resolution ({self.resolution} px)")
            frames[present] = self.reference_x.to(self.device, frames.dtype)
            if self.unet.config.reference_camera == "own":
                cams[present] = self.camera_numbers(self.reference_cameras).to(self.device, cams.dtype)
        return frames, cams

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
        emb = embeddings.to(self.device, self.dtype)
        t = t.to(self.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        if not self.accepts_image:
            with self.on_device(self.unet):
                out = self._unet_forward(self.unet_input(x_t), t, context=emb, camera=cam, num_frames=f)
            return out.to(x_t.device, x_t.dtype)
        # each group of F views gets its reference frame last: F + 1 frames, the reference's output dropped
        g = x_t.shape[0] // f
        x = self.unet_input(x_t)
        present = emb[::f, -1, 0] > 0.5
        ref, ref_cam = self.reference_frames(present, x.shape[-1])
        context = emb[:, :-1]

        def with_frame(v: Tensor, last: Tensor) -> Tensor:
            v = v.reshape(g, f, *v.shape[1:])
            return torch.cat([v, last.reshape(g, 1, *v.shape[2:]).to(v.dtype)], 1).flatten(0, 1)

        x5 = with_frame(x, torch.zeros_like(x[::f]))  # overwritten by the UNet with ``ip_img``
        with self.on_device(self.unet):
            out = self._unet_forward(x5, with_frame(t, t[::f]), context=with_frame(context, context[::f]),
                                     camera=with_frame(cam, ref_cam), num_frames=f + 1, ip_img=ref.to(x.dtype))
        out = out.reshape(g, f + 1, *out.shape[1:])[:, :f].flatten(0, 1)
        return out.to(x_t.device, x_t.dtype)
