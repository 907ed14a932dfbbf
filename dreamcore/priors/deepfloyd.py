"""DeepFloyd IF stage I (Saharia et al. 2022's cascaded pixel diffusion, as released by DeepFloyd/StabilityAI)
as a dreamcore prior.

Pixel space: x = 2·rgb − 1 at 64 × 64 (the render resized, antialiased when shrinking) — no VAE, so SDS costs
one UNet call and no encoder backward. Conditions are T5-XXL encoder states [1, 77, 4096] of the lower-cased
prompt (the pipeline's preprocessing without caption cleaning), with the padding masked as in ``IFPipeline``.
The UNet predicts ε and a per-pixel interpolation of the log-variance ("learned_range", Nichol & Dhariwal 2021):
output [B, 6, H, W] = [ε; v]; the prior returns the ε half, which is all score distillation needs. Schedule:
squared-cosine β (Nichol & Dhariwal 2021), 1000 steps, from the model's scheduler config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.priors.diffusers_base import DiffusersConfig, DiffusersPrior
from dreamcore.priors.stable_diffusion import resize
from dreamcore.registry import register


@register("prior", "deepfloyd-if")
class DeepFloydIFPrior(DiffusersPrior):
    @dataclass
    class Config(DiffusersConfig):
        model: str = "DeepFloyd/IF-I-XL-v1.0"  # gated: accept the license on the hub, then download

    channels = 3
    default_max_length = 77

    @property
    def max_length(self) -> int:
        return self.cfg.max_length if self.cfg.max_length > 0 else 77  # IFPipeline's fixed length

    def load_text_encoders(self) -> list:
        from transformers import T5EncoderModel

        return [self.place(self.load(T5EncoderModel, "text_encoder"))]

    def load_models(self) -> None:
        from diffusers import UNet2DConditionModel

        self.unet = self.place(self.load(UNet2DConditionModel, "unet"))
        self.channels = int(self.unet.config.in_channels)
        self.resolution = self.cfg.resolution or int(self.unet.config.sample_size)

    def embed(self, text: str) -> Tensor:
        return super().embed(text.lower().strip())

    def encode_text(self, text: str) -> Tensor:
        (enc,) = self.text_encoders
        tokens = self.tokenize(self.tokenizers[0], text)
        with self.on_device(enc):
            return enc(tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device))[0]

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        """x [B, 3, R, R] in [−1, 1] (R = 64 for IF-I), with gradient."""
        self.whole_images_only(pixel_index, self.cfg.name)
        img = rgb.permute(0, 3, 1, 2).to(self.device)
        return resize(img, self.resolution) * 2.0 - 1.0

    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """ε̂ [B, 3, R, R]: the first half of the UNet's [ε; variance] output."""
        self.whole_images_only(pixel_index, self.cfg.name)
        with self.on_device(self.unet):
            out = self._unet_forward(self.unet_input(x_t), t.to(self.device),
                                     encoder_hidden_states=embeddings.to(self.device, self.dtype)).sample
        return out[:, : x_t.shape[1]].to(x_t.device, x_t.dtype)
