"""DeepFloyd IF stage I (Saharia et al. 2022's cascaded pixel diffusion, as released by DeepFloyd/StabilityAI)
as a dreamcore prior.

Pixel space: x = 2·rgb − 1 at 64 × 64 (the render resized, antialiased when shrinking) — no VAE, so SDS costs
one UNet call and no encoder backward. Conditions are T5-XXL encoder states [1, 77, 4096] of the lower-cased
prompt (the pipeline's preprocessing without caption cleaning), with the padding masked as in ``IFPipeline``.
The UNet predicts ε and a per-pixel interpolation of the log-variance ("learned_range", Nichol & Dhariwal 2021):
output [B, 6, H, W] = [ε; v]; the prior returns the ε half, which is all score distillation needs. Schedule:
squared-cosine β (Nichol & Dhariwal 2021), 1000 steps, from the model's scheduler config. Everything but the
text encoder is the pixel-space prior's (:class:`~dreamcore.priors.pixel.PixelDiffusionPrior`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dreamcore.priors.diffusers_base import DiffusersConfig
from dreamcore.priors.pixel import PixelDiffusionPrior
from dreamcore.registry import register


@register("prior", "deepfloyd-if")
class DeepFloydIFPrior(PixelDiffusionPrior):
    @dataclass
    class Config(DiffusersConfig):
        model: str = "DeepFloyd/IF-I-XL-v1.0"  # gated: accept the license on the hub, then download

    default_max_length = 77

    @property
    def max_length(self) -> int:
        return self.cfg.max_length if self.cfg.max_length > 0 else 77  # IFPipeline's fixed length

    def load_text_encoders(self) -> list:
        from transformers import T5EncoderModel

        return [self.place(self.load(T5EncoderModel, "text_encoder"))]

    def embed(self, text: str) -> Tensor:
        return super().embed(text.lower().strip())

    def encode_text(self, text: str) -> Tensor:
        (enc,) = self.text_encoders
        tokens = self.tokenize(self.tokenizers[0], text)
        with self.on_device(enc):
            return enc(tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device))[0]
