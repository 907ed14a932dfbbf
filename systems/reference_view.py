"""The reference-view losses of image-to-3D, beside the prior's guidance: at the picture's own camera
(:func:`dreamcore.reference_image.reference_camera`) the scene is rendered and pulled toward the picture,

    L_ref = r · ( λ_rgb · MSE(rgb, picture over the render's background) + λ_mask · MSE(alpha, mask) ),

with r = min(1, (step + 1) / run.steps) when ``image.ramp`` (DreamGaussian's linear warm-up: the prior shapes the
object first, the picture takes over as the run ends). The picture is composited over the same background colour
the render uses (a random one per step where ``background.random_prob`` asks for it), so neither term can be met
by colouring empty space; the render is albedo (the picture's lighting is the surface's colour to us). With
``system.rays_per_view`` > 0 a random subset of the reference pixels is rendered, an unbiased estimate of both
means.

Weights, and where they come from. DreamGaussian (``main.py``, ``configs/image.yaml``) uses 10 000·r·MSE(rgb)
and 1 000·r·MSE(alpha) at 256² beside a latent SDS; threestudio's Magic123 port (``configs/magic123-coarse-
sd.yaml``) 1 000 (MSE over the rendered background) and 100 (BCE on the mask). Both are 10 : 1, which is kept.
The absolute scale is set against our own SDS instead of copied, because theirs reaches pixels through a VAE:
ours has threestudio's loss form (0.5·‖x − sg(x − g)‖² summed / batch, so each prior pixel gets g / B), and every
prior here denoises at its own fixed size (renders are resized to it), so the SDS gradient on one render pixel
falls as 1/(H·W) exactly as a mean-squared error's does — the balance does not depend on ``camera.resolution``,
only on the prior. Measured on ``configs/image-to-3d.yaml`` (tiny multi-view prior, 32², B = 4, ω 7.5): the SDS
gradient per render pixel and channel averages 0.01–0.16 in |·| over the run's timestep range (≈ 0.08 typical),
while λ_rgb·MSE gives 2·λ_rgb/(3·32²)·error, i.e. 0.65·error per 1 000 of λ_rgb. λ_rgb = 3 000 (2.0·error) lets the
picture win over a typical SDS pull once the colour error exceeds ≈ 0.04 (28 dB) at r = 1. A 300-step pilot on
the robot's front picture (one seed, image.fill = 0.96, scored at 16 held-out views against the mesh): λ_rgb
1 000 / 3 000 / 10 000 (λ_mask a tenth) gave reference-view PSNR 21.0 / 23.2 / 24.9 dB and IoU 0.87 / 0.88 / 0.95,
held-out scene IoU 0.823 / 0.822 / 0.813 and GLB IoU 0.761 / 0.762 / 0.734, Janus 0 each: 3 000 / 300 is the
default, a picture fitted better at no cost to the other sides (10 000 begins to cost them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.reference_image import Cutout, ImageConfig, ReferenceImage, load_reference

if TYPE_CHECKING:
    from dreamcore.config import Config


class ReferenceView:
    """The ``image`` section's losses for one system. The picture is read when first needed (a finished run
    loaded to be viewed or exported never reads it); :func:`dreamcore.runner.generate.generate` has checked it
    before any work."""

    def __init__(self, cfg: ImageConfig, full: "Config", cutout: Optional[Cutout] = None) -> None:
        if not cfg.path:
            raise DreamcoreError("image.path is empty")
        if cfg.fill <= 0:
            raise DreamcoreError(f"image.fill={cfg.fill:g}: a positive fraction")
        self.cfg, self.full = cfg, full
        self._cutout = cutout
        self._image: Optional[ReferenceImage] = None

    def image(self, device: torch.device | str = "cpu") -> ReferenceImage:
        """The framed picture and its camera on ``device`` (read and framed once)."""
        c = self.full.camera
        if self._image is None:
            self._image = load_reference(self.cfg, c.resolution, c.distance_range, c.fov_range, self._cutout)
        if self._image.rgb.device != torch.device(device):
            self._image = self._image.to(device)
        return self._image

    def condition(self, prior) -> bool:
        """Give the picture, framed as for the reference view at ``image.prior_resolution`` over white, to a prior
        that takes one (``Prior.accepts_image`` and ``image.condition_prior``); True when it did. Call before
        the prior encodes the prompt."""
        if not (self.cfg.condition_prior and prior.accepts_image):
            return False
        c = self.full.camera
        ref = load_reference(self.cfg, self.cfg.prior_resolution, c.distance_range, c.fov_range, self._cutout)
        prior.set_reference_image(ref.over(torch.ones(1, 3))[0], ref.camera)
        return True

    def ramp(self, step: int) -> float:
        """r: DreamGaussian's linear warm-up, (step + 1) / run.steps capped at 1; 1 without ``image.ramp``."""
        if not self.cfg.ramp:
            return 1.0
        return min(1.0, (step + 1) / max(1, self.full.run.steps))

    def losses(self, system, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``ref_rgb`` and ``ref_mask`` (those with a positive weight) of one step, rendered by ``system`` (a
        :class:`~dreamcore.systems.dreamfusion.DreamFusionSystem`: its renderer, representation, background and
        pixel sampling)."""
        r = self.ramp(step)
        w_rgb, w_mask = r * self.cfg.lambda_rgb(step), r * self.cfg.lambda_mask(step)
        if w_rgb <= 0 and w_mask <= 0:
            return {}
        device = next(system.representation.parameters()).device
        ref = self.image(device)
        n = ref.resolution
        cams = ref.camera.with_background(system.background.sample_training(1, generator))
        background = system.background.colors(cams)
        pixels = system._sample_pixels(1, n, generator)
        render = system.renderer(system.representation, cams, n, n, background, pixel_index=pixels,
                                 generator=generator, shading="albedo")
        target_rgb, target_alpha = ref.over(background), ref.alpha
        if pixels is not None:  # the render is [1, P, 1, C] at those pixels
            target_rgb, target_alpha = gather(target_rgb, pixels), gather(target_alpha, pixels)
        out = {}
        if w_rgb > 0:
            out["ref_rgb"] = w_rgb * (render.rgb - target_rgb).pow(2).mean()
        if w_mask > 0:
            out["ref_mask"] = w_mask * (render.alpha - target_alpha).pow(2).mean()
        return out


def gather(image: Tensor, pixels: Tensor) -> Tensor:
    """[B, H, W, C] at row-major ``pixels`` [B, P] → [B, P, 1, C] (a ray-subset render's layout)."""
    b, h, w, c = image.shape
    flat = image.reshape(b, h * w, c)
    return torch.gather(flat, 1, pixels[..., None].expand(-1, -1, c))[:, :, None, :]
