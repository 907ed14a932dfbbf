"""Stable Diffusion 1.x / 2.x (Rombach et al. 2022) as a dreamcore prior.

Model space: VAE latents z = s·μ_φ(2·rgb − 1) of the render resized to the model's resolution (512 for SD 1.x
and 2.1-base, 768 for 2.1), s the VAE's ``scaling_factor`` (0.18215); μ_φ is the encoder's posterior mean, so
the map is deterministic and differentiable — SDS gradients reach the render through the encoder
(DreamFusion-with-SD, as in threestudio's stable-diffusion guidance). ``latent_mode: true`` skips the VAE
(Latent-NeRF, Metzer et al. 2023): the render's channels are the latents, z = 2·render − 1, at the latent
resolution. Conditions are the text encoder's last hidden states [1, 77, D] (D = 768 for SD 1.x, 1024 for 2.x);
ε or v prediction follows the scheduler config (v for SD 2.x-768).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.errors import DreamcoreError
from dreamcore.priors.base import resize_to
from dreamcore.priors.diffusers_base import DiffusersConfig, DiffusersPrior
from dreamcore.registry import register


def resize(img: Tensor, size: int) -> Tensor:
    """[B, C, H, W] → [B, C, size, size] (bilinear; antialiased when shrinking)."""
    if img.shape[-2:] == (size, size):
        return img
    shrink = img.shape[-1] > size or img.shape[-2] > size
    return F.interpolate(img, (size, size), mode="bilinear", align_corners=False, antialias=shrink)


@dataclass
class LatentPriorConfig(DiffusersConfig):
    latent_mode: bool = False  # Latent-NeRF style: the render's channels are the latents (no VAE)


class LatentDiffusionPrior(DiffusersPrior):
    """A UNet over VAE latents with cross-attention on text (SD; SDXL extends it)."""

    Config = LatentPriorConfig
    channels = 4

    def load_models(self) -> None:
        from diffusers import UNet2DConditionModel

        self.unet = self.place(self.load(UNet2DConditionModel, "unet"))
        self.channels = int(self.unet.config.in_channels)
        self.vae = None
        self.vae_scale_factor = 8
        if not self.cfg.latent_mode:
            self.load_vae()
        native = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.resolution = self.cfg.resolution or native
        if self.resolution % self.vae_scale_factor:
            raise DreamcoreError(f"prior.resolution={self.resolution} must be a multiple of {self.vae_scale_factor}")
        self.latent_resolution = self.resolution // self.vae_scale_factor

    def load_vae(self) -> None:
        """The VAE (``vae/``), its downsampling factor, dtype, scaling and shift."""
        from diffusers import AutoencoderKL

        vae = self.load(AutoencoderKL, "vae")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        upcast = self.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        self.vae_dtype = torch.float32 if upcast else self.dtype  # SDXL's VAE overflows in fp16
        self.vae = self.place(vae, self.vae_dtype)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """z [B, 4, h, w] (float32) from rendered colours [B, H, W, C], with gradient."""
        self.whole_images_only(pixel_index, self.cfg.name)
        img = rgb.permute(0, 3, 1, 2).to(self.device)
        if self.cfg.latent_mode:
            if img.shape[1] != self.channels:
                raise DreamcoreError(
                    f"prior.latent_mode needs a {self.channels}-channel render (the latents); this render has "
                    f"{img.shape[1]}: use a representation with {self.channels} colour channels or latent_mode=false")
            return resize(img * 2.0 - 1.0, self.latent_resolution).float()
        img = resize(img, self.resolution) * 2.0 - 1.0
        with self.on_device(self.vae):
            z = self.vae.encode(img.to(self.vae_dtype)).latent_dist.mode()
        z = (z - self.shift_factor) * self.scaling_factor
        return z.to(torch.promote_types(z.dtype, torch.float32))  # fp16/bf16 → fp32 for the guidance

    @torch.no_grad()
    def to_image(self, x: Tensor, like: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """The VAE's decoding of latents x [B, 4, h, w] (undoing the scale and shift), resized to the render
        ``like``; latent-mode fields (no VAE between) read back as the base class does."""
        if self.cfg.latent_mode or self.vae is None:
            return super().to_image(x, like, pixel_index)
        self.whole_images_only(pixel_index, self.cfg.name)
        with self.on_device(self.vae):
            z = x / self.scaling_factor + self.shift_factor
            img = (self.vae.decode(z.to(self.device, self.vae_dtype)).sample.float() + 1.0) / 2.0
        return resize_to(img, like.detach())

    def unet_kwargs(self, embeddings: Tensor) -> dict:
        return {"encoder_hidden_states": embeddings.to(self.device, self.dtype)}

    @property
    def latent_mode(self) -> bool:
        return bool(self.cfg.latent_mode)

    @torch.no_grad()
    def latents_to_rgb(self, values: Tensor, probes: int = 64) -> Tensor:
        """Display colours [..., 3] of latent-mode render values [..., C] (z = 2·value − 1, as in
        :meth:`to_model_space`): an affine map z ↦ A z + b fitted by least squares to the VAE decoder's mean
        colour of constant latent tiles, at ``probes`` of the values themselves plus as many fixed random latents.
        It previews and bakes Latent-NeRF fields (val images, GLB textures); the VAE is loaded for it on first use."""
        from diffusers import AutoencoderKL

        vae = getattr(self, "_display_vae", None) or self.vae
        if vae is None:  # latent mode skips the VAE for training; previews load it once
            vae = self._display_vae = self.place(self.load(AutoencoderKL, "vae"), torch.float32)
        scale = float(vae.config.scaling_factor)
        shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        c = values.shape[-1]
        z = values.reshape(-1, c).float() * 2.0 - 1.0
        pick = z[torch.linspace(0, z.shape[0] - 1, min(probes, z.shape[0])).long()]
        fixed = torch.rand(probes, c, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
        probe = torch.cat([pick, fixed.to(pick)], 0)
        colours = []
        for i in range(0, probe.shape[0], 16):
            tiles = (probe[i:i + 16] / scale + shift)[:, :, None, None].expand(-1, -1, 8, 8)
            with self.on_device(vae):
                img = vae.decode(tiles.to(self.device, next(vae.parameters()).dtype)).sample.float()
            colours.append(((img + 1.0) / 2.0).clamp(0.0, 1.0).mean((2, 3)).cpu())
        design = torch.cat([probe.cpu(), torch.ones(probe.shape[0], 1)], 1)
        fit = torch.linalg.lstsq(design, torch.cat(colours, 0)).solution  # [C + 1, 3]
        rgb = torch.cat([z.cpu(), torch.ones(z.shape[0], 1)], 1) @ fit
        return rgb.clamp(0.0, 1.0).reshape(*values.shape[:-1], 3).to(values.device, values.dtype)

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """The UNet's raw output (ε or v per ``schedule.prediction_type``), same shape/dtype/device as x_t."""
        self.whole_images_only(pixel_index, self.cfg.name)
        with self.on_device(self.unet):
            out = self._unet_forward(self.unet_input(x_t), t.to(self.device), **self.unet_kwargs(embeddings)).sample
        return out.to(x_t.device, x_t.dtype)


@register("prior", "stable-diffusion")
class StableDiffusionPrior(LatentDiffusionPrior):
    """SD 1.x / 2.x: one CLIP text encoder, conditions [1, L, D] (see the module docstring)."""

    @dataclass
    class Config(LatentPriorConfig):
        model: str = "stabilityai/stable-diffusion-2-1-base"

    def load_text_encoders(self) -> list:
        from transformers import CLIPTextModel

        return [self.place(self.load(CLIPTextModel, "text_encoder"))]

    def encode_text(self, text: str) -> Tensor:
        (enc,) = self.text_encoders
        tokens = self.tokenize(self.tokenizers[0], text)
        mask = None
        if getattr(enc.config, "use_attention_mask", False):  # as StableDiffusionPipeline.encode_prompt
            mask = tokens.attention_mask.to(self.device)
        with self.on_device(enc):
            return enc(tokens.input_ids.to(self.device), attention_mask=mask)[0]
