"""Score models of the *rendered* distribution q_θ for VSD/ESD (Wang et al. 2023, "ProlificDreamer", §4).

Both start equal to the frozen prior and learn a camera-conditioned correction online:

* :class:`LoRAScore` — for priors with a diffusers UNet (``prior.unet``): LoRA adapters (peft) on the UNet's
  attention projections (zero-initialized up-projections) plus a camera embedding MLP(16 → time-embedding
  width, zero-initialized output) of the flattened 4×4 camera-to-world matrix, added to the time embedding (ProlificDreamer installs it
  as the UNet's class embedding; a hook does the same without changing the prior). Adapters and camera hook
  are active only inside this model's calls, so the same UNet serves the frozen prior.
* :class:`ResidualScoreNet` — for priors without a UNet (the closed-form reference prior): ε_q = ε_prior(x_t; y)
  + r_φ(x_t, t, c, pixel position), r_φ a per-pixel MLP with a zero-initialized output layer (so it also starts
  at the prior). Per-pixel, it works on random pixel subsets like the reference prior.

The unconditional camera is the zero vector (trained with probability ``camera_dropout``), which ESD's
camera-marginal score needs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore.cameras import Cameras


def camera_features(cameras: Cameras, keep: Optional[Tensor] = None) -> Tensor:
    """Flattened c2w [B, 16]; rows where ``keep`` is False are zeros (the unconditional camera)."""
    c = cameras.c2w.reshape(len(cameras), 16).float()
    if keep is not None:
        c = c * keep.view(-1, 1).to(c)
    return c


def sinusoidal(x: Tensor, dims: int, max_period: float = 1000.0) -> Tensor:
    """[N] → [N, dims] sinusoidal features (the diffusion timestep embedding of Ho et al.)."""
    half = dims // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    ang = x.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], -1)


def pixel_positions(x_t: Tensor, pixel_index: Optional[Tensor], image_size: Optional[tuple[int, int]]) -> Tensor:
    """Pixel centres in [−1, 1]² for each element of x_t's spatial grid: [B, P, 2]."""
    b = x_t.shape[0]
    if image_size is None:
        image_size = (x_t.shape[2], x_t.shape[3])
    h, w = image_size
    if pixel_index is None:
        pixel_index = torch.arange(h * w, device=x_t.device)[None].expand(b, -1)
    row = torch.div(pixel_index, w, rounding_mode="floor").float()
    col = (pixel_index % w).float()
    return torch.stack([(col + 0.5) / w * 2 - 1, (row + 0.5) / h * 2 - 1], -1)


class ResidualScoreNet(nn.Module):
    """ε_q(x_t; y, t, c) = ε_prior(x_t; y, t, c) + r_φ(x_t, t, c, uv) (per-pixel MLP, zero-initialized output)."""

    prediction_type = "epsilon"

    def __init__(self, channels: int, hidden: int = 64, layers: int = 3, frequencies: int = 6) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.camera = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 32))
        width_in = channels + 32 + 32 + 2 + 4 * frequencies
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(width_in if i == 0 else hidden, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*mods)
        self.out = nn.Linear(hidden, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def residual(self, x_t: Tensor, t: Tensor, cam: Tensor, pixel_index: Optional[Tensor],
                 image_size: Optional[tuple[int, int]]) -> Tensor:
        b, c = x_t.shape[:2]
        pix = x_t.reshape(b, c, -1).transpose(1, 2)  # [B, P, C]
        p = pix.shape[1]
        uv = pixel_positions(x_t, pixel_index, image_size)  # [B, P, 2]
        k = 2.0 ** torch.arange(self.frequencies, device=x_t.device) * math.pi
        fourier = torch.cat([(uv[..., None] * k).sin().flatten(-2), (uv[..., None] * k).cos().flatten(-2)], -1)
        t_emb = sinusoidal(t.to(x_t.device), 32)[:, None].expand(-1, p, -1)
        c_emb = self.camera(cam.to(x_t.device))[:, None].expand(-1, p, -1)
        h = self.trunk(torch.cat([pix, t_emb, c_emb, uv, fourier], -1))
        return self.out(h).transpose(1, 2).reshape(x_t.shape)

    def forward(self, prior, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Cameras, keep: Tensor,
                pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        """ε_q [same shape as x_t]."""
        with torch.no_grad():
            base = prior.predict_epsilon(x_t, t, embeddings, cameras=cameras, pixel_index=pixel_index,
                                         image_size=image_size)
        cam = camera_features(cameras, keep)
        return base + self.residual(x_t, t, cam, pixel_index, image_size)

    def raw(self, prior, x_t, t, embeddings, cameras, keep, pixel_index=None, image_size=None) -> Tensor:
        """The model's output in its own prediction type (ε here) — what the score-matching loss compares."""
        return self.forward(prior, x_t, t, embeddings, cameras, keep, pixel_index, image_size)


class LoRAScore(nn.Module):
    """LoRA adapters + camera embedding on the prior's own UNet (see the module docstring)."""

    adapter = "dreamcore_vsd"

    def __init__(self, prior, rank: int = 4, alpha: Optional[float] = None) -> None:
        super().__init__()
        try:
            from peft import LoraConfig
        except ImportError as e:  # pragma: no cover - depends on the environment
            from dreamcore.errors import DreamcoreError

            raise DreamcoreError("VSD with a UNet prior needs peft: pip install 'dreamcore[diffusers]'") from e
        unet = prior.unet
        object.__setattr__(self, "_unet", unet)  # not a submodule: the UNet belongs to the prior
        for p in unet.parameters():
            p.requires_grad_(False)
        cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=True,
                         target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        unet.add_adapter(cfg, adapter_name=self.adapter)
        lora = [p for n, p in unet.named_parameters() if "lora_" in n and self.adapter in n]
        for p in lora:
            p.requires_grad_(True)
        self.lora = nn.ParameterList(lora)
        time_embedding, width = prior.time_embedding()
        self.camera = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.camera[2].weight)  # start exactly at the prior (ProlificDreamer's is random)
        nn.init.zeros_(self.camera[2].bias)
        self.prediction_type = prior.schedule.prediction_type
        self._cam: Optional[Tensor] = None
        object.__setattr__(self, "_rows", prior.model_rows)  # per-view → the denoiser's rows (reference frames)
        time_embedding.register_forward_hook(self._add_camera)
        unet.disable_adapters()

    def _add_camera(self, module, inputs, output):  # noqa: ARG002
        if self._cam is None:
            return output
        return output + self.camera(self._cam.to(output)).to(output.dtype)

    @contextmanager
    def active(self, cam: Tensor):
        self._unet.enable_adapters()
        self._cam = self._rows(cam)
        try:
            yield
        finally:
            self._cam = None
            self._unet.disable_adapters()

    def raw(self, prior, x_t, t, embeddings, cameras, keep, pixel_index=None, image_size=None) -> Tensor:
        with self.active(camera_features(cameras, keep)):
            return prior.predict_noise(x_t, t, embeddings, cameras=cameras, pixel_index=pixel_index,
                                       image_size=image_size)

    def forward(self, prior, x_t, t, embeddings, cameras, keep, pixel_index=None, image_size=None) -> Tensor:
        with self.active(camera_features(cameras, keep)):
            return prior.predict_epsilon(x_t, t, embeddings, cameras=cameras, pixel_index=pixel_index,
                                         image_size=image_size)
