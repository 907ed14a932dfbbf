"""DreamFusion-style system: a volumetric field rendered from random cameras, optimized by a guidance loss.

One training step (Poole et al. 2022, Alg. 1): render views (whole images, or random pixel subsets when the
prior allows it), apply the guidance against the prior with the prompt's (view-dependent) condition, add
regularizers (opacity sparsity, binary opacity, normal orientation). The runner owns the loop; this class owns the parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore import registry
from dreamcore.cameras import Cameras
from dreamcore.config import ComponentConfig
from dreamcore.config import Config as FullConfig
from dreamcore.errors import DreamcoreError
from dreamcore.guidance.views import conditions
from dreamcore.meshes.asset import SceneTransform
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled
from dreamcore import rng


@registry.register("system", "dreamfusion")
class DreamFusionSystem:
    @dataclass
    class Config(ComponentConfig):
        rays_per_view: int = 0  # > 0: train on that many random pixels per view (priors with pixel subsets only)
        lambda_opacity: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_opaque: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_orientation: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))

    def __init__(self, cfg: "DreamFusionSystem.Config", full: FullConfig) -> None:
        self.cfg, self.full = cfg, full
        self.prior = registry.build("prior", full.prior)
        if cfg.rays_per_view > 0 and not self.prior.supports_pixel_subsets:
            raise DreamcoreError(
                f"system.rays_per_view={cfg.rays_per_view} needs a prior that denoises pixel subsets; "
                f"prior '{full.prior.name}' needs whole images: set system.rays_per_view=0"
            )
        self.representation = registry.build("representation", full.representation)
        self.renderer = registry.build("renderer", full.renderer)
        self.background = registry.build("background", full.background)
        self.guidance = registry.build("guidance", full.guidance)
        self._check_channels()
        self.guidance.setup(self.prior, full.run.steps)
        self.embeddings = self.prior.encode_prompt(full.prompt, full.negative_prompt, full.views)

    def initialize_from(self, source) -> None:
        """Start from an earlier run's system (``init.from_run``): its field (and background, when of the same
        kind) become this run's starting point, e.g. an SDS coarse stage refined with VSD. A representation that
        converts from other kinds (DMTet from a NeRF's density) does so in its ``init_from_system``; its report
        (a dict) is returned."""
        convert = getattr(self.representation, "init_from_system", None)
        if convert is not None:
            return convert(source)
        src = source.representation
        if type(src) is not type(self.representation):
            raise DreamcoreError(f"init.from_run: representation '{self.full.representation.name}' cannot start "
                                 f"from a run with representation '{source.full.representation.name}'")
        try:
            self.representation.load_state_dict(src.state_dict())
            if type(source.background) is type(self.background):
                self.background.load_state_dict(source.background.state_dict())
        except RuntimeError as e:
            raise DreamcoreError(f"init.from_run: the earlier run's {self.full.representation.name} has other "
                                 f"sizes than this config's (keep representation.* equal): {e}") from None
        return {}

    def _check_channels(self) -> None:
        """Field, background and prior agree on the number of colour channels (latent fields: 4), at start."""
        c = self.color_channels
        bg = getattr(self.full.background, "color", None)
        if bg is not None and len(bg) != c:
            raise DreamcoreError(f"background.color has {len(bg)} values but the field renders {c} channels: "
                                 f"give it {c} (e.g. {[0.5] * c} for latents)")
        latent = bool(getattr(getattr(self.prior, "cfg", None), "latent_mode", False))
        if latent and c != self.prior.channels:
            raise DreamcoreError(f"prior.latent_mode renders latents directly: set representation.color_channels="
                                 f"{self.prior.channels} (now {c})")
        if c != 3 and not latent:
            raise DreamcoreError(f"representation.color_channels={c} renders latents: it needs a latent prior with "
                                 "prior.latent_mode=true")

    # -- what the runner checkpoints and optimizes -------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        mods = {"representation": self.representation, "background": self.background}
        if isinstance(self.guidance, nn.Module):
            mods["guidance"] = self.guidance
        return mods

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers stepped inside the step by a component (VSD's score model), checkpointed by the runner."""
        return {f"guidance.{k}": v for k, v in self.guidance.optimizers().items()}

    def parameter_groups(self) -> list[dict]:
        groups = self.representation.parameter_groups() + self.background.parameter_groups()
        return groups + self.guidance.parameter_groups()

    @property
    def scene_transform(self) -> SceneTransform:
        return getattr(self.prior, "scene_transform", SceneTransform())

    # -- the step ------------------------------------------------------------------------------------------------
    def render_training(self, cameras: Cameras, generator: torch.Generator) -> RenderOutput:
        """The training views (whole images, or random pixel subsets when ``rays_per_view`` > 0)."""
        res = self.full.camera.resolution
        pixels = self._sample_pixels(len(cameras), res, generator)
        return self.renderer(self.representation, cameras, res, res, self.background.colors(cameras),
                             pixel_index=pixels, generator=generator)

    def training_step(self, cameras: Cameras, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        render = self.render_training(cameras, generator)
        views = conditions(self.embeddings, cameras, len(cameras), self.full.views, self.prior.view_dependent)
        losses = dict(self.guidance(render, cameras, self.prior, views, step, generator))
        lam = self.cfg.lambda_opacity(step)
        if lam > 0:
            losses["opacity"] = lam * render.alpha.mean()
        lam = self.cfg.lambda_opaque(step)
        if lam > 0:
            losses["opaque"] = lam * opaque_penalty(render.alpha)
        lam = self.cfg.lambda_orientation(step)
        if lam > 0 and "orientation" in render.extras:
            losses["orientation"] = lam * render.extras["orientation"]
        return losses

    def after_step(self, step: int, generator: torch.Generator) -> None:
        self.representation.after_step(step, generator, self.renderer.step_size(self.representation))

    def _sample_pixels(self, b: int, res: int, generator: torch.Generator) -> Optional[Tensor]:
        n = self.cfg.rays_per_view
        if n <= 0 or n >= res * res:
            return None
        return torch.stack([rng.permutation(res * res, generator)[:n] for _ in range(b)])

    # -- evaluation and export ---------------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, cameras: Cameras, height: int, width: int, background: Tensor) -> RenderOutput:
        """Display renders (RGB over ``background`` [B, 3]); a latent field renders over its own background and
        its latents are shown through the prior's decoder map."""
        if self.color_channels == 3:
            return self.renderer(self.representation, cameras, height, width, background, shading="albedo")
        out = self.renderer(self.representation, cameras, height, width, self.background.colors(cameras),
                            shading="albedo")
        return replace(out, rgb=self.display(out.rgb))

    @torch.no_grad()
    def surface_color(self, points: Tensor, normals: Tensor) -> Tensor:
        """Base colour seen at surface points [N, 3]: short rays cast inward along −normal, volume rendered."""
        values = self.renderer.surface_color(self.representation, points, normals)
        return values if self.color_channels == 3 else self.display(values)

    @property
    def color_channels(self) -> int:
        return getattr(self.representation, "color_channels", 3)

    def display(self, values: Tensor) -> Tensor:
        """[..., C] field channels → [..., 3] colours (Latent-NeRF: the prior's latent → RGB map)."""
        to_rgb = getattr(self.prior, "latents_to_rgb", None)
        if to_rgb is None:
            raise DreamcoreError(f"a {self.color_channels}-channel field needs a prior that shows its channels as "
                                 f"colours (a latent prior with prior.latent_mode=true); '{self.full.prior.name}' has none")
        return to_rgb(values)

    def density(self, points: Tensor) -> Tensor:
        return self.representation.export_density(points)


def opaque_penalty(alpha: Tensor) -> Tensor:
    """Mean binary entropy of the pixels' opacity, −a·ln a − (1−a)·ln(1−a): ln 2 at a = ½, 0 at 0 and 1, so its
    gradient drives each pixel to empty or solid (threestudio's ``lambda_opaque``): a crisp silhouette."""
    a = alpha.clamp(1e-5, 1.0 - 1e-5)
    return -(a * a.log() + (1.0 - a) * (1.0 - a).log()).mean()
