"""Pixel-space text-to-image diffusion (no VAE) as a dreamcore prior: a diffusers ``UNet2DConditionModel`` over
images x = 2·rgb − 1 at its own resolution, conditioned by cross-attention on a CLIP text encoder's last hidden
states [1, L, D] — dreamcore's tiny prior (``tools/train_tiny_prior.py``, shipped in ``assets/tiny-prior``) or
any model of that layout. DeepFloyd IF's stage I (:mod:`dreamcore.priors.deepfloyd`) is the same with a T5
encoder and a learned-variance output.

SDS costs one UNet call per condition and no encoder backward: the render is resized (antialiased when
shrinking) to the model's resolution and rescaled, x = 2·resize(rgb) − 1, differentiably. ε or v prediction and
the β schedule come from the model's scheduler config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.priors.diffusers_base import DiffusersConfig, DiffusersPrior
from dreamcore.priors.stable_diffusion import resize
from dreamcore.registry import register


@register("prior", "pixel-diffusion")
class PixelDiffusionPrior(DiffusersPrior):
    """A pixel-space UNet with a CLIP text encoder (see the module docstring)."""

    @dataclass
    class Config(DiffusersConfig):
        model: str = "assets/tiny-prior"  # dreamcore's own, trained by tools/train_tiny_prior.py

    channels = 3

    def load_text_encoders(self) -> list:
        from transformers import CLIPTextModel

        return [self.place(self.load(CLIPTextModel, "text_encoder"))]

    def load_models(self) -> None:
        from diffusers import UNet2DConditionModel

        self.unet = self.place(self.load(UNet2DConditionModel, "unet"))
        self.channels = int(self.unet.config.in_channels)
        self.resolution = self.cfg.resolution or int(self.unet.config.sample_size)

    def encode_text(self, text: str) -> Tensor:
        (enc,) = self.text_encoders
        tokens = self.tokenize(self.tokenizers[0], text)
        with self.on_device(enc):
            return enc(tokens.input_ids.to(self.device))[0]

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """x [B, C, R, R] in [−1, 1] (R the model's resolution), with gradient."""
        self.whole_images_only(pixel_index, self.cfg.name)
        img = rgb.permute(0, 3, 1, 2).to(self.device)
        return resize(img, self.resolution) * 2.0 - 1.0

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """The UNet's ε (or v) for x_t [B, C, R, R]; of a [prediction; variance] output only the first half."""
        self.whole_images_only(pixel_index, self.cfg.name)
        with self.on_device(self.unet):
            out = self._unet_forward(self.unet_input(x_t), t.to(self.device), **self.unet_kwargs(embeddings)).sample
        return out[:, : x_t.shape[1]].to(x_t.device, x_t.dtype)

    def unet_kwargs(self, embeddings: Tensor) -> dict:
        return {"encoder_hidden_states": embeddings.to(self.device, self.dtype)}
