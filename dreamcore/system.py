"""The system contract: what the runner asks of a system (``system.name``), and nothing more.

A system composes the parts of one kind of run — representation, renderer, background, prior, guidance — and
exposes them to the runner through the methods below. The runner (``dreamcore.runner``) depends on this class
only; systems (``dreamcore.systems``) subclass it and never import the runner. Hooks a system may leave alone
have defaults, so the runner calls each one unconditionally.

The runner's use, in order: build (``registry.build("system", cfg.system, full=cfg)``); a new run calls
:meth:`initialize`, or :meth:`initialize_from` with an earlier run's restored system (``init.from_run``); a
resumed run restores :meth:`trainable_modules` from its checkpoint instead — first handing a system that
:meth:`keeps_source` its ``init.from_run`` system again (:meth:`attach_source`). Then the optimizer is made from
:meth:`parameter_groups` and handed to :meth:`attach_optimizer`; each step sets learning rates with
:meth:`lr_scales`, calls :meth:`training_step` (the losses), steps, and calls :meth:`after_step`. Validation
and scoring call :meth:`render_views`; export writes every format from :meth:`export_source`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dreamcore.cameras import Cameras
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import SceneTransform

if TYPE_CHECKING:  # (annotations only)
    from dreamcore.config import Config, ExportConfig
    from dreamcore.export.exporters import ExportSource
    from dreamcore.priors.base import Prior
    from dreamcore.renderers.background import Background
    from dreamcore.renderers.output import RenderOutput
    from dreamcore.representations.base import Representation


class System:
    """Base of systems. Subclasses set the attributes and implement the methods that raise here."""

    full: "Config"  # the run's whole config
    prior: "Prior"
    representation: "Representation"
    background: "Background"

    # -- state -------------------------------------------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules checkpointed and moved to the run's device, by name."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups (``params``, ``lr_scale``, ``name``) of every trainable part."""
        raise NotImplementedError

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers stepped inside :meth:`training_step` by a part (VSD's score model), by name: the runner
        checkpoints and restores them with its own."""
        return {}

    def initialize(self) -> None:
        """Set the starting state of a new run (a Gaussian cloud sampled from ``representation.init_file``).
        Not called for a resumed run (its checkpoint holds the state) nor for ``init.from_run``."""
        return None

    def initialize_from(self, source: "System") -> dict:
        """Start from an earlier run's restored, frozen system (``init.from_run``); returns a report."""
        raise DreamcoreError(f"system '{self.full.system.name}' cannot start from another run (init.from_run)")

    def keeps_source(self) -> bool:
        """Whether this run needs its ``init.from_run`` system for as long as it exists, not only to start from (an
        edit renders and blends its frozen source at every step, and keeps it out of its own checkpoints). Such a
        run gets the source again through :meth:`attach_source` whenever it is restored from a checkpoint
        (resume, re-export, :func:`dreamcore.load_run`), before the checkpoint is loaded."""
        return False

    def attach_source(self, source: "System") -> None:
        """Take the restored, frozen ``init.from_run`` system of a run that :meth:`keeps_source` (a resumed or
        reloaded run; a new one gets it through :meth:`initialize_from`)."""
        return None

    # -- the step ----------------------------------------------------------------------------------------------
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The runner's optimizer, for systems that edit its state (Gaussian densification)."""
        return None

    def lr_scales(self, step: int) -> dict[str, float]:  # noqa: ARG002
        """Per-group learning-rate factors at ``step``, by group name ({}: each group's own ``lr_scale``)."""
        return {}

    def training_step(self, cameras: Cameras, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """The named loss terms of one step at ``cameras`` (their sum is minimized)."""
        raise NotImplementedError

    def after_step(self, step: int, generator: torch.Generator) -> None:
        """After the optimizer step (densification, occupancy updates)."""
        return None

    def take_carry(self) -> dict:
        """What the last :meth:`training_step` left for :meth:`after_step` (a Gaussian system's render: screen-space
        gradients and radii for densification), as plain detached tensors, and forgotten here; {} when nothing.
        Picard-parallel runs (``run.picard``) evaluate a step in one copy of the system and apply its
        ``after_step`` in another."""
        return {}

    def give_carry(self, carry: dict) -> None:
        """Hand back what :meth:`take_carry` took (perhaps from another copy of this system), for :meth:`after_step`."""
        return None

    # -- looking at the scene ----------------------------------------------------------------------------------
    @property
    def scene_transform(self) -> SceneTransform:
        """Maps the reference frame (a mesh file's own) to the normalized scene: exports are written in it."""
        return self.prior.scene_transform

    def render_views(self, cameras: Cameras, height: int, width: int, background: Tensor) -> "RenderOutput":
        """Display renders: RGB over ``background`` [B, 3], alpha, depth."""
        raise NotImplementedError

    def density(self, points: Tensor) -> Tensor:
        """Density [N] at ``points`` [N, 3] (marching cubes; a later stage's starting geometry)."""
        return self.representation.export_density(points)

    def fused_depth(self, export: "ExportConfig") -> "np.ndarray":
        """The scene's rendered depth fused into a grid, positive inside (``export.surface: depth``,
        :mod:`dreamcore.export.fusion`): for systems that render a field."""
        raise DreamcoreError(f"system '{self.full.system.name}' renders no depth to fuse (export.surface=depth, "
                             "representation.init_surface=depth)")

    def surface_color(self, points: Tensor, normals: Tensor) -> Tensor:
        """Base colour [N, 3] seen at surface ``points`` with outward ``normals`` (texture baking)."""
        raise DreamcoreError(f"system '{self.full.system.name}' gives no surface colour")

    def export_source(self, export: "ExportConfig") -> "ExportSource":
        """What the exporters of ``export.formats`` write from (:mod:`dreamcore.export.exporters`)."""
        raise NotImplementedError
