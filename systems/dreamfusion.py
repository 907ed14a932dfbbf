"""DreamFusion-style system: a volumetric field rendered from random cameras, optimized by a guidance loss.

One training step (Poole et al. 2022, Alg. 1): render views (whole images, or random pixel subsets when the
prior allows it), apply the guidance against the prior with the prompt's (view-dependent) condition, add
regularizers (opacity sparsity, binary opacity, normal orientation). The runner owns the loop; this class owns the parts.
With an ``image`` (image-to-3D) the step also renders the picture's own camera and adds the reference-view losses
of :mod:`dreamcore.systems.reference_view`; the Gaussian and mesh systems inherit the step, so all three take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore import registry
from dreamcore.cameras import Cameras, Lighting, sample_orbit
from dreamcore.config import ComponentConfig
from dreamcore.config import Config as FullConfig
from dreamcore.config import ExportConfig
from dreamcore.errors import DreamcoreError
from dreamcore.export.exporters import ExportOptions, ExportSource, Splats
from dreamcore.guidance.views import conditions
from dreamcore.renderers.background import build_background
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled, step_count
from dreamcore.system import System
from dreamcore.systems.reference_view import ReferenceView
from dreamcore import rng


@registry.register("system", "dreamfusion")
class DreamFusionSystem(System):
    @dataclass
    class Config(ComponentConfig):
        rays_per_view: int = 0  # > 0: train on that many random pixels per view (priors with pixel subsets only)
        lambda_opacity: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_opaque: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_orientation: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        # >= 0: from this step on the training views are rendered albedo whatever renderer.shading says (a shaded
        # phase shapes the surface, the albedo phase then settles the colours); -1: the renderer's shading throughout
        albedo_from: int = step_count(-1)

    def __init__(self, cfg: "DreamFusionSystem.Config", full: FullConfig) -> None:
        self.cfg, self.full = cfg, full
        # image-to-3D (``image.path``): the picture's reference-view losses beside the guidance
        self.reference: Optional[ReferenceView] = ReferenceView(full.image, full) if full.image.path else None
        self.prior = registry.build("prior", full.prior)
        if cfg.rays_per_view > 0 and not self.prior.supports_pixel_subsets:
            raise DreamcoreError(
                f"system.rays_per_view={cfg.rays_per_view} needs a prior that denoises pixel subsets; "
                f"prior '{full.prior.name}' needs whole images: set system.rays_per_view=0"
            )
        self.representation = registry.build("representation", full.representation)
        self.renderer = registry.build("renderer", full.renderer)
        self.background = build_background(full.background)
        self.guidance = registry.build("guidance", full.guidance)
        if cfg.rays_per_view > 0 and not self.guidance.supports_pixel_subsets:
            raise DreamcoreError(f"system.rays_per_view={cfg.rays_per_view}: guidance '{full.guidance.name}' needs "
                                 "whole images; set system.rays_per_view=0")
        self._check_channels()
        self.guidance.setup(self.prior, full.run.steps)
        if self.reference is not None:  # an image-conditioned prior sees the picture (before the prompt's encoding)
            self.reference.condition(self.prior)
        self.embeddings = self.prior.encode_prompt(full.prompt, full.negative_prompt, full.views)

    def initialize_from(self, source: System) -> dict:
        """Start from an earlier run's system (``init.from_run``): its field (and background, when both are of
        the same kinds) become this run's starting point, e.g. an SDS coarse stage refined with VSD. A
        representation that converts from other kinds (DMTet from a NeRF's density) does so in its
        ``init_from_system``; its report (a dict) is returned."""
        report = self.representation.init_from_system(source)
        same = type(source.representation) is type(self.representation)
        if same and type(source.background) is type(self.background):
            try:
                self.background.load_state_dict(source.background.state_dict())
            except RuntimeError as e:
                raise DreamcoreError(f"init.from_run: the earlier run's background has other sizes than this "
                                     f"config's (keep background.* equal): {e}") from None
        return report

    def _check_channels(self) -> None:
        """Field, background and prior agree on the number of colour channels (latent fields: 4), at start."""
        c = self.color_channels
        if self.background.channels != c:
            raise DreamcoreError(f"the background gives {self.background.channels} colour channels (background.color "
                                 f"has one value per channel) but the field renders {c}: give background.color {c} "
                                 f"values (e.g. {[0.5] * c} for latents)")
        latent = self.prior.latent_mode
        if latent and c != self.prior.channels:
            raise DreamcoreError(f"prior.latent_mode renders latents directly: set representation.color_channels="
                                 f"{self.prior.channels} (now {c})")
        if c != 3 and not latent:
            raise DreamcoreError(f"representation.color_channels={c} renders latents: it needs a latent prior with "
                                 "prior.latent_mode=true")
        if c != 3 and self.reference is not None:
            raise DreamcoreError(f"image.path: the picture is compared with RGB renders, but this field renders {c} "
                                 "latent channels (representation.color_channels=3 and prior.latent_mode=false)")

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

    # -- the step ------------------------------------------------------------------------------------------------
    def render_training(self, cameras: Cameras, generator: torch.Generator,
                        representation: Optional[nn.Module] = None, whole: bool = False,
                        shading: Optional[str | Lighting] = None) -> RenderOutput:
        """The training views (whole images, or random pixel subsets when ``rays_per_view`` > 0 and not
        ``whole``) of this run's representation, or of ``representation`` seen the same way (an edit's frozen
        source); ``shading`` overrides the renderer's (a mode or a light; None: its own choice)."""
        res = self.full.camera.resolution
        pixels = None if whole else self._sample_pixels(len(cameras), res, generator)
        scene = self.representation if representation is None else representation
        return self.renderer(scene, cameras, res, res, self.background.colors(cameras), pixel_index=pixels,
                             generator=generator, shading=shading)

    def show_whole(self, cameras: Cameras, views, step: int, generator: torch.Generator) -> Cameras:
        """Where the step trains on pixel subsets and the guidance wants its views whole first
        (:meth:`Guidance.whole_images`, SIR's round start): render them whole without gradient and hand them over.
        Returns the cameras tagged with the light of that render (the step's own render is shaded alike), else
        ``cameras`` as they are."""
        if self.cfg.rays_per_view > 0 and self.guidance.whole_images(step):
            with torch.no_grad():
                whole = self.render_training(cameras, generator, whole=True, shading=self.step_shading(cameras, step))
            cameras = cameras.with_lighting(whole.lighting)
            self.guidance.see_whole(whole, cameras, self.prior, views, step, generator)
        return cameras

    def training_step(self, cameras: Cameras, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        cameras = self.guidance.step_cameras(cameras, step)  # (SIR holds a round's views and light for its steps)
        views = conditions(self.embeddings, cameras, len(cameras), self.full.views, self.prior.view_dependent)
        cameras = self.show_whole(cameras, views, step, generator)
        render = self.render_training(cameras, generator, shading=self.step_shading(cameras, step))
        cameras = cameras.with_lighting(render.lighting)  # a light-conditioned prior sees the light of the views
        losses = dict(self.guidance(render, cameras, self.prior, views, step, generator))
        losses.update(self.regularizers(render, step))
        if self.reference is not None:  # image-to-3D: the picture at its own camera
            losses.update(self.reference.losses(self, step, generator))
        return losses

    def step_shading(self, cameras: Cameras, step: int) -> Optional[str | Lighting]:
        """What the step's views are shaded under: the light the cameras carry (views held with their light, SIR's
        rounds: the target was made under it), else :meth:`shading_at`."""
        return cameras.lighting if cameras.lighting is not None else self.shading_at(step)

    def shading_at(self, step: int) -> Optional[str]:
        """The training views' shading at ``step``: albedo from ``albedo_from`` on, else the renderer's choice."""
        start = self.cfg.albedo_from
        return "albedo" if 0 <= start <= step else None

    def regularizers(self, render: RenderOutput, step: int) -> dict[str, Tensor]:
        """The render's regularizers at their scheduled weights (those at 0 left out): opacity sparsity, binary
        opacity, normal orientation."""
        losses = {}
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
        return self.representation.color_channels

    def display(self, values: Tensor) -> Tensor:
        """[..., C] field channels → [..., 3] colours (Latent-NeRF: the prior's latent → RGB map)."""
        return self.prior.latents_to_rgb(values)

    def export_source(self, export: ExportConfig) -> ExportSource:
        """A mesh by marching cubes of :meth:`density`, coloured by :meth:`surface_color`
        (:func:`dreamcore.export.field_mesh`); Gaussians also give themselves (``model.ply``)."""
        from dreamcore.export import field_mesh

        rep, transform = self.representation, self.scene_transform
        options = ExportOptions(export.turntable_frames, export.turntable_resolution, export.turntable_format)

        def mesh():
            agreement = self.silhouette_agreement(export) if export.isosurface_search else None
            return field_mesh(self.density, self.surface_color, rep.bound, export, transform, agreement,
                              fused=lambda: self.fused_depth(export))

        params = rep.splat_parameters()
        splats = None if params is None else (lambda: Splats(**params, transform=transform))
        return ExportSource(rep.kind, options, mesh=mesh, splats=splats)

    @torch.no_grad()
    def fused_depth(self, export: ExportConfig) -> "np.ndarray":
        """``export.surface: depth``'s grid: the scene's albedo renders (alpha, depth) at ``export.fusion_views``
        views spread over the sphere at the run's mean camera distance and field of view, fused on the
        ``export.resolution``³ grid (:func:`dreamcore.export.fusion.fuse_depth`); rendered at
        ``export.fusion_resolution`` px, by default the training resolution (the scale the scene was fitted at)."""
        from dreamcore.export.fusion import fuse_depth, sphere_views

        cam, rep = self.full.camera, self.representation
        if export.fusion_views < 1 or export.fusion_resolution < 0 or export.fusion_truncation <= 0:
            raise DreamcoreError(f"export.fusion_views={export.fusion_views} (≥ 1), fusion_resolution="
                                 f"{export.fusion_resolution} (≥ 0), fusion_truncation={export.fusion_truncation} "
                                 "(> 0 grid cells): out of range")
        device = next(rep.parameters()).device
        views = sphere_views(export.fusion_views, 0.5 * sum(cam.distance_range), 0.5 * sum(cam.fov_range))
        size = export.fusion_resolution or cam.resolution

        def render(cameras: Cameras, res: int):
            out = self.render_views(cameras.to(device), res, res, torch.ones(len(cameras), 3, device=device))
            return out.alpha, out.depth

        cell = 2.0 * rep.bound / (export.resolution - 1)
        return fuse_depth(render, views, size, export.resolution, rep.bound, export.fusion_truncation * cell)

    @torch.no_grad()
    def silhouette_agreement(self, export: ExportConfig):
        """``export.isosurface_search``'s score of a candidate mesh (verts, faces): the silhouette IoU between
        the mesh and the scene's own renders (alpha > ½) at ``export.isosurface_views`` views of the run's camera
        ranges (their own seed, not the held-out views)."""
        from dreamcore.meshes.asset import MeshAsset
        from dreamcore.meshes.render import render_mesh
        from dreamcore.metrics import silhouette_iou

        cam, r = self.full.camera, 64
        cams = sample_orbit(export.isosurface_views, torch.Generator().manual_seed(2024), cam.elevation_range,
                            (-180.0, 180.0), cam.distance_range, cam.fov_range)
        device = next(self.representation.parameters()).device
        field_alpha = self.render_views(cams.to(device), r, r, torch.ones(len(cams), 3, device=device)).alpha.cpu()

        def agreement(verts, faces) -> float:
            mesh = MeshAsset(torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces, dtype=torch.int64))
            return silhouette_iou(render_mesh(mesh, cams, r, r, supersample=2).alpha, field_alpha)

        return agreement


def opaque_penalty(alpha: Tensor) -> Tensor:
    """Mean binary entropy of the pixels' opacity, −a·ln a − (1−a)·ln(1−a): ln 2 at a = ½, 0 at 0 and 1, so its
    gradient drives each pixel to empty or solid (threestudio's ``lambda_opaque``): a crisp silhouette."""
    a = alpha.clamp(1e-5, 1.0 - 1e-5)
    return -(a * a.log() + (1.0 - a) * (1.0 - a).log()).mean()
