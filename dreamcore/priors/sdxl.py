"""Stable Diffusion XL (Podell et al. 2023) as a dreamcore prior.

Two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG): the condition is the concatenation of both penultimate
hidden states [1, 77, 768 + 1280], plus ViT-bigG's pooled, projected embedding [1, 1280] and the "added time
ids" (original size, crop top-left, target size) = (R, R, 0, 0, R, R) for resolution R (1024 natively), which
enter the UNet's time embedding. An empty negative prompt is the zero condition
(``force_zeros_for_empty_prompt``, as in the pipeline). Model space: VAE latents as for SD (the SDXL VAE is
kept in fp32 when the UNet runs in fp16: its ``force_upcast``).

So that every guidance can treat a condition as one tensor (batching, view interpolation, Perp-Neg), the pooled
embedding rides along as one extra token: condition = [hidden states (77 rows); pooled zero-padded to the
hidden width (1 row)] → [1, 78, 2048].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.priors.stable_diffusion import LatentDiffusionPrior, LatentPriorConfig
from dreamcore.registry import register


@dataclass
class SDXLConfig(LatentPriorConfig):
    model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    force_zeros_for_empty_prompt: bool = True


@register("prior", "sdxl")
class SDXLPrior(LatentDiffusionPrior):
    Config = SDXLConfig
    text_parts = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")

    def load_tokenizers(self) -> list:
        from transformers import AutoTokenizer

        return [self.load(AutoTokenizer, "tokenizer"), self.load(AutoTokenizer, "tokenizer_2")]

    def load_text_encoders(self) -> list:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return [self.place(self.load(CLIPTextModel, "text_encoder")),
                self.place(self.load(CLIPTextModelWithProjection, "text_encoder_2"))]

    def load_models(self) -> None:
        super().load_models()
        ucfg = self.unet.config
        if ucfg.addition_embed_type != "text_time":
            raise DreamcoreError(f"prior.model={self.cfg.model!r} is not an SDXL UNet (addition_embed_type="
                                 f"{ucfg.addition_embed_type!r}); use prior.name=stable-diffusion for SD 1.x/2.x")
        r = self.resolution
        self.time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32)
        self.pooled_dim = int(ucfg.projection_class_embeddings_input_dim - 6 * ucfg.addition_time_embed_dim)

    def encode_text(self, text: str) -> Tensor:
        states, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            ids = self.tokenize(tok, text).input_ids.to(self.device)
            with self.on_device(enc):
                out = enc(ids, output_hidden_states=True)
            pooled = out[0]  # the last encoder's projected pooled output [1, P]
            states.append(out.hidden_states[-2])
        hidden = torch.cat(states, -1)  # [1, L, D]
        return self.pack(hidden, pooled)

    def pack(self, hidden: Tensor, pooled: Tensor) -> Tensor:
        """[1, L, D] and [1, P] → [1, L + 1, D] (P ≤ D)."""
        d, p = hidden.shape[-1], pooled.shape[-1]
        if p > d:
            raise DreamcoreError(f"SDXL pooled embedding ({p}) wider than the hidden states ({d})")
        row = torch.zeros(hidden.shape[0], 1, d, dtype=hidden.dtype, device=hidden.device)
        row[..., :p] = pooled[:, None]
        return torch.cat([hidden, row], 1)

    def uncond_embedding(self, negative_prompt: str) -> Tensor:
        if not negative_prompt and self.cfg.force_zeros_for_empty_prompt:
            width = int(self.unet.config.cross_attention_dim)  # = the two encoders' widths together
            return torch.zeros(1, self.max_length + 1, width, device=self.device)
        return self.embed(negative_prompt)

    def unet_kwargs(self, embeddings: Tensor) -> dict:
        emb = embeddings.to(self.device, self.dtype)
        b = emb.shape[0]
        return {"encoder_hidden_states": emb[:, :-1],
                "added_cond_kwargs": {"text_embeds": emb[:, -1, :self.pooled_dim],
                                      "time_ids": self.time_ids.to(self.device, self.dtype).expand(b, -1)}}
