"""The guidance contract and the configuration every method shares.

A guidance is called once per training step with the render, its cameras, the prior, the views' conditions
(:class:`~dreamcore.guidance.views.ViewConditions`), the step and the run's generator, and returns named
losses whose gradient w.r.t. the render is the method's update direction (averaged over the batch, via
:func:`~dreamcore.guidance.common.inject_gradient`). Methods that own trainable state (VSD's score model) keep
it as submodules (checkpointed with the run) and their own optimizers (:meth:`Guidance.optimizers`).

To add a method: subclass :class:`Guidance`, extend :class:`GuidanceConfig` with its fields, implement
:meth:`Guidance.gradient` (the update g at x) or :meth:`Guidance.forward`, and ``@register("guidance", name)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from dreamcore.cameras import Cameras
from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.timesteps import DreamTimeConfig, ScheduleKind, TimestepSampler
from dreamcore.guidance.views import ViewConditions
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled


def scheduled(value: float):
    return field(default_factory=lambda: Scheduled.constant(value))


@dataclass
class GuidanceConfig(ComponentConfig):
    """Fields shared by all methods. ``guidance_scale`` is ω in diffusers' convention (ε_∅ + ω(ε_y − ε_∅));
    ``scale_convention: threestudio`` reads it as threestudio's s (ω = s + 1) — converted at load time."""

    guidance_scale: Scheduled = scheduled(100.0)
    scale_convention: Literal["diffusers", "threestudio"] = "diffusers"
    weighting: common.Weighting = "sds"
    t_min: Scheduled = scheduled(0.02)
    t_max: Scheduled = scheduled(0.98)
    t_schedule: ScheduleKind = "uniform"
    t_random_until: float = 0.0  # fraction of the run sampled uniformly before a deterministic schedule
    t_shared: bool = False  # one t for the whole batch (LucidDreamer, threestudio's unified guidance)
    dreamtime: DreamTimeConfig = field(default_factory=DreamTimeConfig)
    grad_clip: Scheduled = scheduled(0.0)  # Debiased SDS score clipping |g| ≤ c(k), after w(t); 0 = off
    weight: Scheduled = scheduled(1.0)  # the loss weight λ(k)


class Guidance(nn.Module):
    """Base class: shared config handling, timestep sampling, clipping and injection."""

    Config = GuidanceConfig
    loss_name = "guidance"
    supports_pixel_subsets = True  # False: the method needs whole rendered images (system.rays_per_view=0)

    def __init__(self, cfg: GuidanceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.total_steps = 1000  # the system sets run.steps
        self.timesteps = TimestepSampler(cfg.t_schedule, cfg.t_random_until, cfg.t_shared, cfg.dreamtime)
        offset = 1.0 if cfg.scale_convention == "threestudio" else 0.0
        self._omega = Scheduled(tuple((s, v + offset) for s, v in cfg.guidance_scale.points))

    # -- shared pieces -----------------------------------------------------------------------------------------
    def omega(self, step: int) -> float:
        """ω(k) in diffusers' convention (converted from threestudio's s when so configured)."""
        return self._omega(step)

    def sample_t(self, batch: int, step: int, prior, generator: torch.Generator) -> Tensor:
        """t [batch]: one draw per group of views the prior denoises jointly (``prior.views_per_sample``;
        MVDream shares t within a group), repeated over the group's views."""
        c = self.cfg
        group = prior.views_per_sample if batch > 1 else 1
        if batch % group:
            raise DreamcoreError(f"a batch of {batch} views is not a whole number of the prior's {group}-view groups")
        t = self.timesteps(batch // group, step, self.total_steps, prior.schedule.alphas_cumprod, c.t_min(step),
                           c.t_max(step), generator)
        return t.repeat_interleave(group) if group > 1 else t

    def weights(self, prior, t: Tensor) -> Tensor:
        a, s = prior.schedule.alpha_sigma(t)
        return common.weighting(self.cfg.weighting, a, s)

    def finish(self, x: Tensor, grad: Tensor, step: int) -> dict[str, Tensor]:
        """nan_to_num, Debiased-SDS clipping, then the injected loss scaled by λ(k)."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        clip = self.cfg.grad_clip(step)
        if clip > 0:
            grad = grad.clamp(-clip, clip)
        return {self.loss_name: self.cfg.weight(step) * common.inject_gradient(x, grad)}

    @staticmethod
    def prior_kwargs(render: RenderOutput, cameras: Cameras) -> dict:
        return dict(cameras=cameras, pixel_index=render.pixel_index, image_size=render.image_size)

    # -- what subclasses implement -------------------------------------------------------------------------------
    def gradient(self, x: Tensor, render: RenderOutput, cameras: Cameras, prior, views: ViewConditions,
                 step: int, generator: torch.Generator) -> Tensor:
        """The update direction g at x (same shape as x), before clipping and λ."""
        raise NotImplementedError

    def forward(self, render: RenderOutput, cameras: Cameras, prior, views: ViewConditions, step: int,
                generator: torch.Generator) -> dict[str, Tensor]:
        x = prior.to_model_space(render.rgb, render.pixel_index)
        with torch.no_grad():
            grad = self.gradient(x.detach(), render, cameras, prior, views, step, generator)
        return self.finish(x, grad, step)

    def step_cameras(self, cameras: Cameras, step: int) -> Cameras:  # noqa: ARG002
        """The views step ``step`` renders, given the runner's draw ``cameras``: that draw for most methods; a
        method that holds its views for several steps (SIR's rounds) returns the held ones."""
        return cameras

    def whole_images(self, step: int) -> bool:  # noqa: ARG002
        """True: before step ``step`` trains on pixel subsets (``system.rays_per_view``), the method wants a look
        at its views as whole images (SIR's round start, whose target is made from them): the system renders
        them without gradient and passes them to :meth:`see_whole`."""
        return False

    def see_whole(self, render, cameras: Cameras, prior, views, step: int, generator: torch.Generator) -> None:
        """The whole, gradient-free render of step ``step``'s views that :meth:`whole_images` asked for."""

    def setup(self, prior, total_steps: int) -> None:
        """Called once by the system before training (and before a checkpoint is restored)."""
        self.total_steps = total_steps

    def parameter_groups(self) -> list[dict]:
        """Parameters for the scene's optimizer (none by default)."""
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers the guidance steps itself (checkpointed by the runner)."""
        return {}
