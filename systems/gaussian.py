"""Gaussian-splatting system (DreamGaussian / LucidDreamer / GaussianDreamer style): the DreamFusion step —
render, guidance, regularizers — on 3D Gaussians, plus what Gaussians need around it: initialization (random
ball, a mesh / point-cloud file, or an earlier run via ``init.from_run``), per-parameter learning-rate
schedules, the active SH degree, and adaptive density control (Kerbl et al. 2023) with optimizer surgery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from dreamcore import registry
from dreamcore.cameras import Cameras, Lighting
from dreamcore.config import Config as FullConfig
from dreamcore.errors import DreamcoreError
from dreamcore.renderers.output import RenderOutput
from dreamcore.representations import densify
from dreamcore.representations.gaussians import Gaussians
from dreamcore.systems.dreamfusion import DreamFusionSystem


@registry.register("system", "gaussian")
class GaussianSystem(DreamFusionSystem):
    @dataclass
    class Config(DreamFusionSystem.Config):
        densify: densify.DensifyConfig = field(default_factory=densify.DensifyConfig)

    def __init__(self, cfg: "GaussianSystem.Config", full: FullConfig) -> None:
        super().__init__(cfg, full)
        if not isinstance(self.representation, Gaussians):
            raise DreamcoreError(f"system.name=gaussian needs representation.name=gaussians, "
                                 f"got '{full.representation.name}'")
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._render: Optional[RenderOutput] = None
        # which Gaussians density control may clone, split, prune or reset (bool [N], asked before each densification
        # and opacity reset); None: all of them. The edit system keeps those outside its region as they are.
        self.editable: Optional[Callable[[], Tensor]] = None

    def initialize(self) -> None:
        """A new run's Gaussians: the representation's own ball, or points sampled on ``init_file`` (mapped
        into the prior's scene frame)."""
        rep = self.representation
        if rep.cfg.init == "file":
            if not rep.cfg.init_file:
                raise DreamcoreError("representation.init=file needs representation.init_file=PATH")
            rep.init_from_file(rep.cfg.init_file, self.scene_transform,
                               torch.Generator().manual_seed(self.full.run.seed))

    def initialize_from(self, source) -> dict:
        """``init.from_run``: an earlier run's Gaussians continued as they are; from any other representation,
        Gaussians where its density exceeds the threshold, in its colours."""
        rep = self.representation
        if isinstance(source.representation, type(rep)):
            rep.copy_from(source.representation)
            return {}
        level = rep.cfg.init_density_threshold or source.full.export.isosurface
        rep.init_from_density(source, level, torch.Generator().manual_seed(self.full.run.seed))
        return {}

    # -- runner hooks ------------------------------------------------------------------------------------------
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def lr_scales(self, step: int) -> dict[str, float]:
        return self.representation.lr_scales(step)

    def render_training(self, cameras: Cameras, generator: torch.Generator,
                        representation: Optional[torch.nn.Module] = None, whole: bool = False,
                        shading: Optional[str | Lighting] = None) -> RenderOutput:
        render = super().render_training(cameras, generator, representation, whole, shading)
        if representation is None:  # this run's own Gaussians: their screen-space gradients drive densification
            self._render = render
        return render

    def take_carry(self) -> dict:
        """The step's render as plain tensors (colours, alpha, size; the splat centres' screen positions with their
        gradient, and radii), taken away (:meth:`System.take_carry`)."""
        render, self._render = self._render, None
        if render is None:
            return {}
        carry = {"rgb": render.rgb.detach(), "alpha": render.alpha.detach(), "image_size": render.image_size}
        if "means2d" in render.extras:
            grad = render.extras["means2d"].grad
            carry["means2d"] = render.extras["means2d"].detach().clone()
            carry["means2d_grad"] = None if grad is None else grad.detach().clone()
        if "radii" in render.extras:
            carry["radii"] = render.extras["radii"].detach()
        return carry

    def give_carry(self, carry: dict) -> None:
        """A render rebuilt from :meth:`take_carry`'s tensors, on this system's device, for :meth:`after_step`."""
        if not carry:
            return
        device = self.representation.means.device
        extras = {}
        if "means2d" in carry:
            means2d = carry["means2d"].to(device)
            if carry["means2d_grad"] is not None:
                means2d.grad = carry["means2d_grad"].to(device)
            extras["means2d"] = means2d
        if "radii" in carry:
            extras["radii"] = carry["radii"].to(device)
        self._render = RenderOutput(rgb=carry["rgb"], alpha=carry["alpha"], depth=torch.zeros_like(carry["alpha"]),
                                    image_size=carry["image_size"], extras=extras)

    def after_step(self, step: int, generator: torch.Generator) -> None:
        rep, c = self.representation, self.cfg.densify
        render, self._render = self._render, None
        rep.after_step(step, generator, render=render)  # the render: Brightness-Equalized Generation's statistic
        s = step + 1  # steps completed
        if not c.enabled or s >= c.stop:
            return
        if render is not None and "means2d" in render.extras:
            h, w = render.image_size
            densify.accumulate(rep, render.extras["means2d"], render.extras["radii"], w, h)
        if s >= c.start and s % c.every == 0:
            prune_screen = c.opacity_reset_every > 0 and s > c.opacity_reset_every
            densify.densify_and_prune(rep, c, self.optimizer, generator, prune_screen, self._editable())
        if c.opacity_reset_every > 0 and s % c.opacity_reset_every == 0:
            densify.reset_opacity(rep, c.reset_opacity, self.optimizer, self._editable())

    def _editable(self) -> Optional[Tensor]:
        return None if self.editable is None else self.editable()
