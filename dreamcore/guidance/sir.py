"""Score-based Iterative Reconstruction (Chen et al. 2024, "MicroDreamer: Efficient 3D Generation in ~20 Seconds
by Score-based Iterative Reconstruction").

No score-distillation gradient: the prior turns renders into images, and the scene is fitted to them. A run is a
sequence of **rounds**; round k holds one set of views for its M inner steps:

    1. at the round's first step, render the views c_k and take x = the render in model space (no gradient);
    2. t₂(k) = G[⌊(k/K)(D(1 − t_end) − D(1 − t_start)) + D(1 − t_start)⌋] on the D-step DDIM grid G (descending),
       so t₂ falls linearly from ≈ t_start·T to ≈ t_end·T over the K rounds;
       t₁ = G_asc[⌊(t₂/T)·D·r⌋] (r = ``inversion_ratio``, ≈ r·t₂);
    3. target y_k: x forward-noised to t₁ with fresh ε, DDIM-inverted with the unconditional ε from t₁ up the grid
       to t₂, then DDIM-sampled from t₂ down to the clean image with CFG ω and stochasticity η;
       round 0 (``init_from_noise``) instead samples from pure noise at the top of the grid (a full generation);
    4. each inner step minimizes λ · Σ|I − Y_k| / B (L1 summed over the views' pixels and channels, over the batch
       size B) with Y_k = D(y_k) the target as an image (``Prior.to_image``: a latent prior's VAE decoding, the
       pixel priors' inverse map) held fixed, at the same views c_k. Images count in [−1, 1], diffusion's range
       (2·|I − Y| for colours in [0, 1]): for a pixel prior at the render's size that is the L1 of model space.

The inner steps may fit random pixel subsets of the held views (``system.rays_per_view`` > 0, on priors that take
them): at a round's first step the system renders the views whole without gradient (:meth:`whole_images`,
:meth:`see_whole`) to make Y_k (not for round 0's generation from noise, which reads only their size), and every
inner step compares its rays with Y_k's pixels there, the sum scaled by H·W/N (an unbiased estimate of the whole
image's loss).

Round 0 runs ``init_steps`` inner steps, the others ``round_steps``; K is the number of rounds the run's steps
hold. With ω = 1 and η = 0 the target map is "noise to t₁, then the ODE to 0" (t₂ drops out in the exact flow),
and on a Gaussian prior N(μ, s²) the rounds as a Markov chain
x_{k+1} = y_k(x_k) have the stationary law N(μ, s²) in the exact flow (SIR samples where SDS, with the same prior,
collapses to μ); the DDIM discretization moves the variance by a little, which the tests derive.

The views of a round are the runner's draw at its first step (the trainer's random cameras, or a multi-view
prior's view groups), kept for the round's inner steps through :meth:`Guidance.step_cameras`, with the light
of the render its target was made from (shaded training, ``renderer.shading: random``: the inner steps render
under that light, and a light-conditioned prior made the target under it). The round's views
and targets are buffers of this module, so a checkpoint taken mid-round resumes into the same round.

Prior calls per round (each on the B views at once; CFG doubles the rows, not the calls): ≈ (t₂ − t₁)/Δ
inversion calls plus t₂/Δ sampling calls, Δ = T/D (the prior counts its calls: ``Prior.denoiser_calls``).

Defaults and sources (ML-GSAI/MicroDreamer@174b58d, ``main.py::{get_denoise_schedule, train_step}``,
``guidance/mvdream_utils.py::train_step``, ``configs/image_sai.yaml``) [code]: D = ``denoise_steps`` 20,
t_start 0.9, t_end 0.2, r 0.6 (fixed in the MVDream path), η 0.5 (image_sai; 0 for MVDream/ImageDream), CFG 3.0
(image_sai), inner steps 15 per round and 15 for the initial generation, L1 summed over pixels / B, DDIM
timesteps from diffusers' ``DDIMScheduler.set_timesteps`` (``leading`` spacing with offset 1 in SD's scheduler
config: G = {1, 1 + Δ, …}), inversion by ``DDIMInverseScheduler`` over the same grid. Where MicroDreamer schedules
the inner steps (``steps_schedule``), its shipped configs hold them constant; here they are constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore.cameras import SHADING_MODES, Cameras, Lighting
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.registry import register
from dreamcore.schedule import Scheduled, step_count
from dreamcore import rng


def ddim_grid(num_train_steps: int, denoise_steps: int, offset: int = 1) -> list[int]:
    """The D-step DDIM timesteps, ascending: {offset, offset + Δ, …}, Δ = T // D (diffusers' ``leading``)."""
    if not 1 <= denoise_steps <= num_train_steps:
        raise DreamcoreError(f"guidance.denoise_steps={denoise_steps}: between 1 and the prior's "
                             f"{num_train_steps} training steps")
    delta = num_train_steps // denoise_steps
    return [min(i * delta + offset, num_train_steps - 1) for i in range(denoise_steps)]


def round_levels(k: int, rounds: int, grid: list[int], num_train_steps: int, t_start: float, t_end: float,
                 inversion_ratio: float) -> tuple[int, int]:
    """(t₁, t₂) of round ``k`` of ``rounds`` (module docstring, step 2) on the ascending D-step ``grid`` of a
    prior with ``num_train_steps`` steps."""
    d = len(grid)
    start, end = d * (1.0 - t_start), d * (1.0 - t_end)
    t2 = grid[::-1][min(int(k / max(rounds, 1) * (end - start) + start), d - 1)]
    t1 = grid[min(int(t2 / num_train_steps * d * inversion_ratio), d - 1)]
    return min(t1, t2), t2


def reconstruction_targets(prior, x: Tensor, views, omega: float, t1: Optional[int], t2: int, grid: list[int],
                           eta: float, generator: Optional[torch.Generator], **kw) -> tuple[Tensor, int]:
    """y and the number of prior calls: x forward-noised to ``t1``, DDIM-inverted (unconditional ε) up ``grid``
    to ``t2``, then DDIM-sampled down ``grid`` from ``t2`` to the clean image with CFG ``omega`` and ``eta``.
    ``t1=None``: start from pure noise at ``t2`` (a full generation). ``kw``: cameras etc. for the prior."""
    b = x.shape[0]

    def at(t: int) -> Tensor:
        return torch.full((b,), t, dtype=torch.long, device=x.device)

    calls = 0
    noise = rng.normal(x.shape, generator, like=x)
    if t1 is None:
        z = noise
    else:
        z = prior.schedule.add_noise(x, noise, at(t1))
        cur = t1
        for nxt in [t for t in grid if t1 < t <= t2]:
            eps = common.predict_rows(prior, z, at(cur), [views.uncond], **kw)[0]
            z = common.ddim_step(prior.schedule, z, eps, at(cur), at(nxt))
            calls += 1
            cur = nxt
    levels = [t for t in grid if t <= t2][::-1] + [-1]  # t2 … grid[0], then the clean image
    for cur, nxt in zip(levels[:-1], levels[1:]):
        eps, _ = common.guided_epsilon(prior, z, at(cur), views, omega, **kw)
        z = common.ddim_step(prior.schedule, z, eps, at(cur), at(nxt), eta=eta, generator=generator)
        calls += 1
    return z, calls


class _Held(nn.Module):
    """Tensors held as buffers whose shapes are set on first use (and adopted from a loaded checkpoint)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        for n in names:
            self.register_buffer(n, torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty(state_dict[key].shape, dtype=state_dict[key].dtype,
                                                  device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register("guidance", "sir")
class SIRGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(3.0)  # ω of the target's sampling (diffusers' convention)
        denoise_steps: int = 20  # D: the DDIM grid of inversion and sampling
        t_start: float = 0.9  # t₂ of the first reconstruction round, as a fraction of T
        t_end: float = 0.2  # t₂ of the last round
        inversion_ratio: float = 0.6  # r: t₁ ≈ r·t₂
        eta: float = 0.5  # η of the target's sampling
        round_steps: int = step_count(15)  # M: inner steps per round
        init_steps: int = step_count(15)  # inner steps of round 0
        init_from_noise: bool = True  # round 0 generates its target from pure noise

    loss_name = "sir"

    def __init__(self, cfg: "SIRGuidance.Config") -> None:
        super().__init__(cfg)
        if cfg.round_steps < 1 or cfg.init_steps < 1:
            raise DreamcoreError(f"guidance.round_steps={cfg.round_steps}, init_steps={cfg.init_steps}: each at "
                                 "least 1 inner step")
        if not 0.0 < cfg.t_end <= cfg.t_start <= 1.0:
            raise DreamcoreError(f"guidance.t_start={cfg.t_start}, t_end={cfg.t_end}: need 0 < t_end ≤ t_start ≤ 1")
        if not 0.0 <= cfg.inversion_ratio <= 1.0:
            raise DreamcoreError(f"guidance.inversion_ratio={cfg.inversion_ratio}: a fraction in [0, 1]")
        if cfg.eta < 0:
            raise DreamcoreError(f"guidance.eta={cfg.eta}: η ≥ 0")
        self.held = _Held("c2w", "fov_y", "elevation", "azimuth", "distance", "background", "target", "round",
                          "light_mode", "light_direction", "light_ambient")
        self._round = -1  # host mirror of held.round (no device read per step)
        self._light: Optional[Lighting] = None  # host mirror of the held light
        self.grid: list[int] = []
        self.num_train_steps = 1000

    # -- the schedule of rounds ----------------------------------------------------------------------------------
    def setup(self, prior, total_steps: int) -> None:
        super().setup(prior, total_steps)
        if prior is not None:
            self.num_train_steps = prior.schedule.num_steps
            self.grid = ddim_grid(self.num_train_steps, self.cfg.denoise_steps)

    @property
    def rounds(self) -> int:
        """K: the rounds the run's steps hold (round 0 of ``init_steps``, the others of ``round_steps``)."""
        c = self.cfg
        rest = max(self.total_steps - c.init_steps, 0)
        return 1 + -(-rest // c.round_steps)

    def round_of(self, step: int) -> int:
        c = self.cfg
        return 0 if step < c.init_steps else 1 + (step - c.init_steps) // c.round_steps

    def levels(self, k: int) -> tuple[Optional[int], int]:
        """(t₁, t₂) of round k; t₁ None for a round that generates from noise."""
        c = self.cfg
        if k == 0 and c.init_from_noise:
            return None, self.grid[-1]
        # the rounds after the initial generation share t₂'s schedule (MicroDreamer's _denoise_step stays 0
        # through its init round)
        k_sched = k - 1 if c.init_from_noise else k
        return round_levels(k_sched, self.rounds - (1 if c.init_from_noise else 0), self.grid, self.num_train_steps,
                            c.t_start, c.t_end, c.inversion_ratio)

    # -- the contract ----------------------------------------------------------------------------------------------
    def step_cameras(self, cameras: Cameras, step: int) -> Cameras:
        """The round's views: the runner's draw at the round's first step, held for its inner steps."""
        k = self.round_of(step)
        if k != self._mirror_round():
            h = self.held
            h.c2w, h.fov_y, h.elevation, h.azimuth, h.distance = (
                cameras.c2w, cameras.fov_y, cameras.elevation, cameras.azimuth, cameras.distance)
            h.background = cameras.background if cameras.background is not None else torch.zeros(0)
            h.target = torch.zeros(0)  # the new round's target is made from its first render, under its light
            self.hold_lighting(None)
            h.round = torch.tensor(k)
            self._round = k
            return cameras
        h = self.held
        bg = h.background if h.background.numel() else None
        return Cameras(h.c2w, h.fov_y, h.elevation, h.azimuth, h.distance, bg, self.held_lighting())

    def hold_lighting(self, lighting: Optional[Lighting]) -> None:
        """Keep the light the round's target was made under: its inner steps render under it (the system renders
        cameras that carry a light under that light), so a shaded render is compared with a target shaded alike."""
        h = self.held
        self._light = lighting
        if lighting is None:
            h.light_mode, h.light_direction, h.light_ambient = torch.zeros(0), torch.zeros(0), torch.zeros(0)
            return
        h.light_mode = torch.tensor(SHADING_MODES.index(lighting.mode))
        h.light_direction = lighting.direction.detach().clone()
        h.light_ambient = torch.tensor(float(lighting.ambient))

    def held_lighting(self) -> Optional[Lighting]:
        """The round's light (None before its target exists); read from the buffers once after a restore."""
        h = self.held
        if self._light is None and h.light_direction.numel():
            self._light = Lighting(SHADING_MODES[int(h.light_mode)], h.light_direction, float(h.light_ambient))
        return self._light

    def _mirror_round(self) -> int:
        if self._round < 0 and self.held.round.numel():  # restored from a checkpoint: one read at the start
            self._round = int(self.held.round)
        return self._round

    def whole_images(self, step: int) -> bool:
        """A round's first step (no target held yet) looks at its views whole, its target being made from them;
        not a round that generates from noise (round 0): its target needs only the views' size."""
        if self.held.target.numel():
            return False
        if not self.grid:
            return True
        return self.levels(self.round_of(step))[0] is not None

    def see_whole(self, render, cameras, prior, views, step, generator) -> None:
        self.make_target(render, cameras, prior, views, step, generator)

    @torch.no_grad()
    def make_target(self, render, cameras, prior, views, step, generator) -> None:
        """The round's target Y_k (module docstring, step 3) from its views' whole render, held as an image; from
        a pixel subset only for a round that generates from noise (the views' size is all it reads)."""
        if not self.grid:
            self.setup(prior, self.total_steps)
        t1, t2 = self.levels(self.round_of(step))
        rgb = render.rgb.detach()
        if render.pixel_index is not None:
            if t1 is not None:
                raise DreamcoreError("guidance 'sir' makes a round's target from whole images: before a round's "
                                     "first step on pixel subsets the system shows it the whole views "
                                     "(Guidance.whole_images)")
            rgb = rgb.new_zeros(rgb.shape[0], *render.image_size, rgb.shape[-1])
        x = prior.to_model_space(rgb, None)
        kw = {**self.prior_kwargs(render, cameras), "pixel_index": None, "image_size": None}
        y, _ = reconstruction_targets(prior, x, views, self.omega(step), t1, t2, self.grid, self.cfg.eta, generator,
                                      **kw)
        self.held.target = prior.to_image(y, rgb).detach()
        self.hold_lighting(cameras.lighting)

    def forward(self, render, cameras, prior, views, step, generator) -> dict[str, Tensor]:
        rgb, subset = render.rgb, render.pixel_index
        if self.held.target.dim() != 4 or (subset is None and self.held.target.shape != rgb.shape):
            self.make_target(render, cameras, prior, views, step, generator)  # a round's first step
        y = self.held.target.to(rgb)
        scale = 1.0
        if subset is not None:  # the held target's pixels at this step's rays, the sum rescaled to the whole image
            b, h, w, c = y.shape
            y = torch.gather(y.reshape(b, h * w, c), 1, subset.unsqueeze(-1).expand(-1, -1, c)).unsqueeze(2)
            scale = h * w / subset.shape[1]
        return {self.loss_name: self.cfg.weight(step) * 2.0 * scale * (rgb - y).abs().sum() / rgb.shape[0]}
