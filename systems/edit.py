"""Editing a finished run with a prompt (``dreamcore edit SOURCE "target prompt" --source-prompt "..."``).

An edit is an ordinary run (``system.name: edit``) started from the SOURCE run (``init.from_run``), which it keeps,
frozen, for as long as it exists (:meth:`EditSystem.keeps_source`). The scene being edited is a copy of the
source's — a NeRF field or 3D Gaussians — and one step reads like the algorithm (Delta Denoising Score, Hertz et al.
2023, lifted to 3D as in ED-NeRF, Park et al. 2024, and DreamCatalyst, Kim et al. 2024):

1. render the edited scene at the step's cameras;
2. render the frozen source at the same cameras, pixels, backgrounds, shading and sample jitter (the run's
   generator replayed, :func:`same_draws`), so that the two renders differ only where the scenes do;
3. condition both on their prompts with the same view-dependent rule (target prompt → edited render, source
   prompt → source render);
4. an editing guidance (:class:`~dreamcore.guidance.editing.EditGuidance`: ``dds``, ``pds``) takes the pair,
   ∇ = w(t)[ε̃(x_t^tgt; y_tgt) − ε̃(x_t^src; y_src)] with the same t and ε on both branches; any other guidance
   (``sds``) pushes the edited render toward the target prompt alone — the plain-SDS baseline;
5. add the scene's regularizers and the optional preservation terms below.

Keeping the rest as it was (``system.region``: ``box:x0,y0,z0,x1,y1,z1`` in the source's ``model.glb`` frame, or
``mesh:part.glb``, :mod:`dreamcore.meshes.region`; ``system.falloff``: its soft ramp's width in scene units; the §
numbers are those of ``../shared/reference/multiview-and-editing.md``):

* a NeRF renders :class:`~dreamcore.representations.blended.BlendedField`, σ = m·σ_e + (1 − m)·σ_s (and so the
  colour): outside the region it *is* the source, so renders whose rays miss the region equal the source's
  exactly (why fields and not renders: that module's docstring);
* Gaussians: every parameter gradient of Gaussian i is multiplied by m(μ_i) (tensor hooks, as GaussianEditor's
  masked editing does, §4.6, with the soft mask of §4.7), and density control clones, splits, prunes and resets
  opacity only where m(μ_i) > 0: Gaussians whose centres lie outside the region keep their parameters bit for
  bit (Adam's update of a gradient that was always zero is 0);
* without a region everything is editable; two regularizers (off by default; with a region too) hold the edit to
  its source: ``identity_weight`` λ_id · mean over pixels and channels of (1 − f)(x − x_src)² — the render-space L2
  to the source render at the same pixels (§4.7.4), f = 1 on pixels whose rays meet the region's bounds (its
  screen footprint; f ≡ 0 without a region, so it then applies everywhere) — and ``correlation_weight``
  λ_c · (1 − ρ(σ_edit, σ_src)), Vox-E's volumetric correlation (Sella et al. 2023, §4.5: λ = 200 there, on a voxel
  grid's raw densities), ρ the Pearson correlation of the edited and the source densities at
  ``correlation_points`` uniform random points of the scene box (fields only).

Left to the source run's config (the edit's own config is the source's, with the edit recipe laid over it): the
prior, camera ranges, representation and renderer settings, background, regularizer weights and learning rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore import registry, rng
from dreamcore.cameras import Cameras
from dreamcore.config import Config as FullConfig
from dreamcore.config import ExportConfig
from dreamcore.errors import DreamcoreError
from dreamcore.export.exporters import ExportSource
from dreamcore.guidance.editing import EditGuidance, EditSource
from dreamcore.guidance.views import conditions
from dreamcore.meshes.asset import SceneTransform
from dreamcore.meshes.region import BakedRegion, MeshRegion, Region, parse_region
from dreamcore.renderers.output import RenderOutput
from dreamcore.representations.blended import BlendedField
from dreamcore.representations.gaussians import Gaussians
from dreamcore.representations.nerf import NeRFField
from dreamcore.rng import RunGenerator
from dreamcore.schedule import Scheduled
from dreamcore.system import System
from dreamcore.systems.dreamfusion import DreamFusionSystem
from dreamcore.systems.gaussian import GaussianSystem


def _weight(value: float):
    return field(default_factory=lambda: Scheduled.constant(value))


@registry.register("system", "edit")
class EditSystem(System):
    @dataclass
    class Config(GaussianSystem.Config):  # the source's system settings (rays_per_view, densify, ...) carry over
        source_prompt: str = ""  # what the source shows now (required), taken literally
        region: str = ""  # box:x0,y0,z0,x1,y1,z1 (the source's model.glb frame) or mesh:FILE; "" = all of it
        falloff: float = 0.0  # width of the region mask's soft ramp across its boundary, scene units
        region_grid: int = 96  # a mesh region's mask baked on a grid of this many cells (BakedRegion); 0: exact
        identity_weight: Scheduled = _weight(0.0)  # λ_id: render-space L2 to the source outside the footprint
        correlation_weight: Scheduled = _weight(0.0)  # λ_c: Vox-E's 1 − ρ(σ_edit, σ_src), fields only
        correlation_points: int = 4096

    def __init__(self, cfg: "EditSystem.Config", full: FullConfig) -> None:
        if not cfg.source_prompt.strip():
            raise DreamcoreError('an edit needs the source prompt, what the asset shows now: system.source_prompt='
                                 '"a toy robot" (dreamcore edit SOURCE "target" --source-prompt "...")')
        if not full.prompt.strip():
            raise DreamcoreError('an edit needs the target prompt, what the asset should become')
        self.cfg, self.full = cfg, full
        rep_class = registry.lookup("representation", full.representation.name)
        self.gaussians = issubclass(rep_class, Gaussians)
        if not (self.gaussians or issubclass(rep_class, NeRFField)):
            raise DreamcoreError(f"editing a '{full.representation.name}' run is not supported yet: the source must "
                                 "be a NeRF (representation.name=nerf) or Gaussians (gaussians) run")
        self._check_settings()
        # the scene being edited: a system of the source's kind, whose representation starts as the source's copy
        self.scene: DreamFusionSystem = (GaussianSystem if self.gaussians else DreamFusionSystem)(cfg, full)
        self.prior, self.background, self.guidance = self.scene.prior, self.scene.background, self.scene.guidance
        self.source_embeddings = self.prior.encode_prompt(cfg.source_prompt, full.negative_prompt, full.views)
        # the source run's representation, frozen (its system's prior and guidance are let go: a second copy of a
        # large prior would stay in memory for the whole edit)
        self.source: Optional[nn.Module] = None
        self.region: Optional[Region] = None
        self._gaussian_weights: Optional[Tensor] = None  # m(μ_i) of this step's Gaussians (gradient hooks)
        self._source_sh_degree = 0

    def _check_settings(self) -> None:
        cfg, full = self.cfg, self.full
        if cfg.correlation_points < 2:
            raise DreamcoreError(f"system.correlation_points must be ≥ 2, got {cfg.correlation_points}")
        if self.gaussians and any(v > 0 for _, v in cfg.correlation_weight.points):
            raise DreamcoreError("system.correlation_weight compares densities of fields (NeRF); this source is "
                                 "Gaussians: leave it 0 (system.identity_weight works for both)")
        if self.gaussians and cfg.region.strip():
            rep = full.representation
            if rep.brightness_equalize:
                raise DreamcoreError("representation.brightness_equalize rescales every Gaussian's colour, those "
                                     "outside the edit's region too: set it false for an edit with a region")
            if full.optimizer.weight_decay > 0:
                raise DreamcoreError("optimizer.weight_decay moves every Gaussian, those outside the edit's region "
                                     "too: set it 0 for an edit with a region")
        if full.image.path:
            raise DreamcoreError("editing an image-to-3D run is not supported yet (its picture would pull the edit "
                                 "back): set image.path= (empty) to edit it by its prompts alone")

    # -- the source ----------------------------------------------------------------------------------------------
    def initialize(self) -> None:
        raise DreamcoreError("an edit starts from a finished run: init.from_run=RUN_DIR "
                             '(dreamcore edit RUN_DIR "target prompt" --source-prompt "what it is now")')

    def initialize_from(self, source: System) -> dict:
        """A new edit: the edited scene starts as an exact copy of the source's (representation and background),
        then the source is kept (:meth:`attach_source`)."""
        src, own = source.representation, self.scene.representation
        if isinstance(src, BlendedField):
            raise DreamcoreError("editing the result of a NeRF edit is not supported yet: edit its source run "
                                 f"({source.full.init.from_run}) with both changes, or export it and start anew")
        if type(src) is not type(own):
            raise DreamcoreError(f"the source run's representation is '{src.kind}' but this edit's config builds "
                                 f"'{own.kind}': an edit keeps the source's representation (leave "
                                 "representation.name as the source run has it)")
        if self.gaussians:
            own.copy_from(src)
            own.set_active_sh_degree(int(src.active_sh_degree))
        else:
            own.init_from_system(source)  # every tensor copied: the same field, bit for bit
        if type(source.background) is type(self.background):
            try:
                self.background.load_state_dict(source.background.state_dict())
            except RuntimeError as e:
                raise DreamcoreError(f"the source run's background has other sizes than this edit's config (keep "
                                     f"background.* as the source has them): {e}") from None
        self.attach_source(source)
        return {"edit": {"source": self.full.init.from_run, "region": self.cfg.region or "all",
                         "representation": src.kind}}

    def keeps_source(self) -> bool:
        return True

    def attach_source(self, source: System) -> None:
        """Keep the frozen source's representation (a new edit's, or a resumed one's restored again): its renders
        are the edit's reference, its scene transform frames the region, and a field is blended with it."""
        if source.scene_transform != self.scene.scene_transform:
            raise DreamcoreError(f"this edit's prior frames the scene as {self.scene.scene_transform}, the source "
                                 f"run's as {source.scene_transform}: an edit keeps its source's frame (that of the "
                                 "region and of the exported files) — keep prior.reference.mesh, or list the "
                                 "source's mesh first in prior.reference.meshes")
        self.source = source.representation
        self.region = parse_region(self.cfg.region, source.scene_transform, self.cfg.falloff)
        if isinstance(self.region, MeshRegion) and self.cfg.region_grid > 0:  # a box's exact mask is cheap
            self.region = BakedRegion(self.region, self.cfg.region_grid)
        if not self.gaussians:
            self.scene.representation = BlendedField(self.scene.representation, source.representation, self.region)
            return
        self._source_sh_degree = int(source.representation.active_sh_degree)
        if self.region is not None:
            for p in self.scene.representation.parameters_by_name().values():
                p.register_hook(self._scale_by_region)
            self.scene.editable = lambda: self.region.mask(self.representation.means.detach()) > 0

    def source_on(self, like: Tensor) -> nn.Module:
        """The source's representation on ``like``'s device (the runner moves this run's own modules only; a
        NeRF's source travels inside the blended field)."""
        if next(self.source.parameters()).device != like.device:
            self.source.to(like.device)
        return self.source

    # -- the step ------------------------------------------------------------------------------------------------
    def training_step(self, cameras: Cameras, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Render the edited scene and the source alike, then the edit guidance on the pair (module docstring)."""
        if self.source is None:
            raise DreamcoreError("the edit has no source: it starts from init.from_run=RUN_DIR")
        editing = isinstance(self.guidance, EditGuidance)
        compare = editing or self.cfg.identity_weight(step) > 0
        self._weigh_gaussians()
        cameras = self.guidance.step_cameras(cameras, step)  # (SIR holds a round's views and light for its steps)
        views = conditions(self.scene.embeddings, cameras, len(cameras), self.full.views, self.prior.view_dependent)
        cameras = self.scene.show_whole(cameras, views, step, generator)
        replay = same_draws(generator) if compare else None
        shading = self.scene.step_shading(cameras, step)
        render = self.scene.render_training(cameras, generator, shading=shading)
        # the source at the same pixels, backgrounds, shading and jitter (frozen: no graph is kept; rendered in the
        # same grad mode, since the renderer splits rays into chunks — and its draws — by that mode)
        source = (self.scene.render_training(cameras, replay, self.source_on(render.rgb), shading=shading)
                  if compare else None)
        cameras = cameras.with_lighting(render.lighting)  # (both renders drew the same light)
        if editing:
            source_views = conditions(self.source_embeddings, cameras, len(cameras), self.full.views,
                                      self.prior.view_dependent)
            losses = dict(self.guidance.forward_edit(render, EditSource(source.rgb.detach(), source_views),
                                                     cameras, self.prior, views, step, generator))
        else:  # a plain guidance toward the target prompt alone: the baseline the editing methods are measured by
            losses = dict(self.guidance(render, cameras, self.prior, views, step, generator))
        losses.update(self.scene.regularizers(render, step))
        losses.update(self.preservation(render, source, cameras, step, generator))
        if not any(v.requires_grad for v in losses.values()):  # no ray met the region: a step with zero gradient
            losses["idle"] = sum(p.sum() for g in self.parameter_groups() for p in g["params"]) * 0.0
        return losses

    def preservation(self, render: RenderOutput, source: Optional[RenderOutput], cameras: Cameras, step: int,
                     generator: torch.Generator) -> dict[str, Tensor]:
        """The optional terms holding the edit to its source: ``identity`` (render-space L2 outside the region's
        screen footprint) and ``correlation`` (Vox-E's density correlation, fields)."""
        losses = {}
        lam = self.cfg.identity_weight(step)
        if lam > 0:
            keep = 1.0 - self.footprint(cameras, render)
            losses["identity"] = lam * (keep * (render.rgb - source.rgb.detach()) ** 2).mean()
        lam = self.cfg.correlation_weight(step)
        if lam > 0:
            bound = self.representation.bound
            points = (rng.uniform((self.cfg.correlation_points, 3), generator, like=render.rgb) * 2.0 - 1.0) * bound
            with torch.no_grad():
                original = self.source.density(points)
            losses["correlation"] = lam * (1.0 - pearson(self.representation.density(points), original))
        return losses

    def footprint(self, cameras: Cameras, render: RenderOutput) -> Tensor:
        """Per rendered pixel [B, H, W, 1] (or [B, N, 1, 1]), 1 where its ray meets the region's bounds, else 0;
        all 0 without a region."""
        shape = (*render.rgb.shape[:-1], 1)
        if self.region is None:
            return render.rgb.new_zeros(shape)
        lo, hi = (b.to(render.rgb) for b in self.region.bounds())
        return rays_meet_box(cameras, render.image_size, render.pixel_index, lo, hi).to(render.rgb).reshape(shape)

    def _weigh_gaussians(self) -> None:
        """m(μ_i) of the Gaussians as they are now: the factor their gradients get in this step's backward."""
        if self.gaussians and self.region is not None:
            self._gaussian_weights = self.region.mask(self.representation.means.detach())

    def _scale_by_region(self, grad: Tensor) -> Tensor:
        w = self._gaussian_weights
        return grad * w.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype)

    def take_carry(self) -> dict:
        return self.scene.take_carry()

    def give_carry(self, carry: dict) -> None:
        self.scene.give_carry(carry)

    def after_step(self, step: int, generator: torch.Generator) -> None:
        self.scene.after_step(step, generator)  # occupancy (the blend's), or density control (in the region)
        if self.gaussians:  # the edit shows the SH bands the source showed from its first step
            rep = self.representation
            grown = min(rep.cfg.sh_degree, (step + 1) // max(rep.cfg.sh_degree_every, 1))
            if self._source_sh_degree > grown:
                rep.set_active_sh_degree(self._source_sh_degree)

    # -- what the runner checkpoints and optimizes: the edited scene's (the source is restored from its folder) -----
    @property
    def representation(self):
        return self.scene.representation

    def trainable_modules(self) -> dict[str, nn.Module]:
        return self.scene.trainable_modules()

    def parameter_groups(self) -> list[dict]:
        return self.scene.parameter_groups()

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.scene.extra_optimizers()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.scene.attach_optimizer(optimizer)

    def lr_scales(self, step: int) -> dict[str, float]:
        return self.scene.lr_scales(step)

    # -- looking at the result: the edited scene, in the source's frame --------------------------------------------
    @property
    def scene_transform(self) -> SceneTransform:
        return self.scene.scene_transform

    def render_views(self, cameras: Cameras, height: int, width: int, background: Tensor) -> RenderOutput:
        return self.scene.render_views(cameras, height, width, background)

    def density(self, points: Tensor) -> Tensor:
        return self.scene.density(points)

    def surface_color(self, points: Tensor, normals: Tensor) -> Tensor:
        return self.scene.surface_color(points, normals)

    def export_source(self, export: ExportConfig) -> ExportSource:
        return self.scene.export_source(export)


def same_draws(generator: torch.Generator) -> torch.Generator:
    """A new generator in ``generator``'s state (its device draws, and the host draws of a
    :class:`~dreamcore.rng.RunGenerator`): it draws again what ``generator`` draws next."""
    if isinstance(generator, RunGenerator):
        copy = RunGenerator(generator.device)
        copy.set_host_state(generator.host_state())
    else:
        copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


def rays_meet_box(cameras: Cameras, image_size: tuple[int, int], pixel_index: Optional[Tensor], lo: Tensor,
                  hi: Tensor) -> Tensor:
    """Whether each pixel's ray (camera-forward, t ≥ 0) meets the box lo ≤ p ≤ hi: bool [B, H·W], or [B, N] at
    ``pixel_index`` [B, N] (slab test)."""
    origins, dirs = cameras.pixel_rays(*image_size, pixel_index)
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo.to(origins) - origins) * inv, (hi.to(origins) - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_far >= t_near


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation ρ = Σ(a − ā)(b − b̄) / √(Σ(a − ā)² Σ(b − b̄)²) of two [N] samples (0 when either is
    constant)."""
    a, b = a.float() - a.float().mean(), b.float() - b.float().mean()
    return (a * b).sum() / ((a * a).sum() * (b * b).sum()).sqrt().clamp_min(1e-12)
