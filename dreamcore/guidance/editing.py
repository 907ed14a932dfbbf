"""The contract of guidance that edits an existing asset against a frozen copy of it.

Editing by score distillation (Delta Denoising Score, Hertz et al. 2023; Posterior Distillation Sampling, Koo et
al. 2024; DreamCatalyst, Kim et al. 2024) compares two branches at every step: the scene being edited, rendered
and conditioned on the *target* prompt, and the untouched source scene, rendered at the same cameras and
conditioned on the *source* prompt. Both branches are noised with the same t and the same noise, so whatever the
prior says about both (its noise-prediction bias, what the two prompts agree on) cancels in their difference.

What a system hands an :class:`EditGuidance` each step, besides what every guidance gets (the edited render, its
cameras, the prior, the target prompt's :class:`~dreamcore.guidance.views.ViewConditions`, the step and the run's
generator), is an :class:`EditSource`:

* ``rgb``: the frozen source scene rendered at the **same** cameras as the edited render, laid out like
  :attr:`RenderOutput.rgb <dreamcore.renderers.output.RenderOutput.rgb>` ([B, H, W, C], composited over the same
  backgrounds; for a ray-subset render [B, N, 1, C] at the same ``pixel_index``). It is treated as a constant:
  nothing flows back into the source.
* ``views``: the source prompt's conditions for those views (same batch, same view labels).

The system calls :meth:`EditGuidance.forward_edit` instead of ``forward``: it maps both renders to the prior's model
space (``prior.to_model_space``, the source under ``no_grad``), asks :meth:`EditGuidance.edit_gradient` for the
update g at the edited x, and injects it as every guidance does (:meth:`Guidance.finish`: nan-to-num, clipping,
λ(k), ∂L/∂x = g/B). A plain ``forward`` (a generation run naming an editing method) is refused with a message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.cameras import Cameras
from dreamcore.errors import DreamcoreError
from dreamcore.guidance.base import Guidance
from dreamcore.guidance.views import ViewConditions
from dreamcore.renderers.output import RenderOutput


@dataclass
class EditSource:
    """The frozen source at this step's cameras: ``rgb`` (rendered like the edited render, [B, H, W, C] or
    [B, N, 1, C] at the same ``pixel_index``) and ``views`` (the source prompt's conditions for those views)."""

    rgb: Tensor
    views: ViewConditions


class EditGuidance(Guidance):
    """Base class of methods that edit against a frozen source: implement :meth:`edit_gradient`. Callers that list
    methods for generation runs leave out the subclasses of this class (``issubclass(cls, EditGuidance)``)."""

    def _refuse(self) -> DreamcoreError:
        name = self.cfg.name or self.loss_name
        return DreamcoreError(
            f"guidance '{name}' edits an existing asset and needs a source: run it with "
            f"`dreamcore edit SOURCE \"target prompt\" --source-prompt \"what it is now\"` "
            f"(it cannot generate from a prompt alone)")

    # -- what subclasses implement -------------------------------------------------------------------------------
    def edit_gradient(self, x: Tensor, x_src: Tensor, render: RenderOutput, cameras: Cameras, prior,
                      views: ViewConditions, source_views: ViewConditions, step: int,
                      generator: torch.Generator) -> Tensor:
        """The update g at the edited x (same shape as x), given the source's x_src at the same cameras; before
        clipping and λ."""
        raise NotImplementedError

    # -- the edit step -------------------------------------------------------------------------------------------
    def forward_edit(self, render: RenderOutput, source: EditSource, cameras: Cameras, prior,
                     views: ViewConditions, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Named losses whose gradient w.r.t. the edited render is g/B (see the module docstring)."""
        if tuple(source.rgb.shape) != tuple(render.rgb.shape):
            raise DreamcoreError(f"the source render {tuple(source.rgb.shape)} must be taken at the same cameras "
                                 f"and pixels as the edited render {tuple(render.rgb.shape)}")
        if source.views.batch != views.batch:
            raise DreamcoreError(f"{source.views.batch} source-prompt conditions for {views.batch} views")
        x = prior.to_model_space(render.rgb, render.pixel_index)
        with torch.no_grad():
            x_src = prior.to_model_space(source.rgb.detach().to(render.rgb), render.pixel_index)
            grad = self.edit_gradient(x.detach(), x_src, render, cameras, prior, views, source.views, step,
                                      generator)
        return self.finish(x, grad, step)

    # -- a plain guidance call has no source ---------------------------------------------------------------------
    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        raise self._refuse()

    def forward(self, render: RenderOutput, cameras: Cameras, prior, views: ViewConditions, step: int,
                generator: torch.Generator) -> dict[str, Tensor]:
        raise self._refuse()


def generation_methods() -> list[str]:
    """The registered guidance names that generate from a prompt alone (every method but the editing ones): what
    a list of methods for generation runs, benchmarks and tests iterates over."""
    from dreamcore import registry

    return [n for n in registry.names("guidance") if not issubclass(registry.lookup("guidance", n), EditGuidance)]
