"""Diverse Score Distillation (Xu et al. 2024, "Diverse Score Distillation"; official code
BillyXYB/Diverse-Score-Distillation).

SDS renoises the render with fresh noise every step, so its update averages over noises and seeks a mode. DSD instead
fixes one **seed noise** ε_s for the whole run. Each step follows the DDIM ODE from that seed down to a timestep t_Δ
a little noisier than t, and renoises the render with the noise predicted there:

    t_Δ = clamp(t + ⌊u · min(r (t − t_lo), T − 1 − t)⌋, δ_min, T − 1),   u ~ U[0, 1),  t_lo = ⌊T t_min(k)⌋
    x̃_{T−1} = ε_s,  x̃ ← DDIM(η = 0) with ε̃_ω over ⌊linspace(T − 1, 0, n + 1)⌋, the points above t_Δ, then t_Δ
    ε_p = ε̃_ω(x̃_{t_Δ}, t_Δ)                       (a function of the seed and the step, never of the render)
    x_t = α_t x + σ_t ε_p,   x_{t_Δ} = α_{t_Δ} x + σ_{t_Δ} ε_p
    g = w(t) [ ε̃_ω(x_t; y, t) − ε̃_{ω_Δ}(x_{t_Δ}; y, t_Δ) ],   w = 1 − ᾱ_t,  ω_Δ = 1.

Why this works: if x = x̂₀(x̃_{t_Δ}), the DDIM identity gives x_{t_Δ} = x̃_{t_Δ} exactly, and x_t is the next DDIM
iterate toward t. The update pulls the render toward the one-step estimate along its seed's ODE path, so different
seeds lead to different results, where SDS collapses to a mode. Closed forms (derived here and checked by
``tests/test_guidance_dsd.py``), with ω = 1 on the analytic Gaussian prior N(μ, s²), D = α²s² + σ², κ = ασ/D:

    g = w(t) [ (κ_t − κ_{t_Δ})(x − μ) + (σ_t²/D_t − σ_{t_Δ}²/D_{t_Δ}) ε_p ],

* Point mass (s = 0): g = w(t)(α_t/σ_t − α_{t_Δ}/σ_{t_Δ})(x − μ). The seed drops out.
* Otherwise: ε_p is affine in ε_s, so the render settles at μ + c·ε_s + m. That is a seed-determined sample whose
  spread c is fixed by (t, t_Δ, s). It is not s in general.
* The linear part is attractive only while κ grows with the signal-to-noise ratio, i.e. while α s/σ < 1. At lower
  noise on a wide Gaussian, DSD pushes away from μ.
* At t_Δ = t, the update is CSD's w(t)(ω − 1)(ε_y − ε_∅).

The seed is a buffer of this module (:class:`~dreamcore.guidance.cds.FixedNoise`). It is drawn from the run's
generator on first use, so it is deterministic from the run seed, and checkpoints carry it. With ``share_noise``
(default), one seed covers the object: one row for a 2D prior, or one per view of a multi-view group, repeated for
every group of the batch. With ``share_noise: false`` every batch row has its own seed: independent particles, as in
the paper's 2D experiments. For pixel subsets, the field covers the whole image and is gathered at the rendered pixels
(as CDS does). t_Δ is drawn once per view group (multi-view priors denoise a group at one t), or once per batch with
``t_shared``.

Defaults and sources (BillyXYB/Diverse-Score-Distillation@557923c):
* the update: ``threestudio/models/guidance/stable_diffusion_dsd_guidance.py::compute_grad_dsd`` and ``__call__``
  [code]: w = 1 − ᾱ_t (hard-coded there; ``weighting: sds`` here); plus-ratio r = 0.1 (hard-coded); u ~ U[0, 1);
  the seed 1×4×64×64 is drawn once at start-up; the ODE is ``n_ddim_steps`` = 10 DDIM steps on the grid
  ⌊linspace(999, 0, 11)⌋ (points above t_Δ, then t_Δ), with the run's guidance scale. The ε at t_Δ uses
  guidance scale 1.0.
* ``configs/dsd.yaml`` [code]: guidance_scale 7.5 with ``use_perp_neg: true``. That Perp-Neg path composes in
  diffusers' form, so ω = 7.5 here (its plain path would read 7.5 as threestudio's s, i.e. ω = 8.5, and its
  "1.0" as ω = 2). Here ω_Δ = 1 is the Perp-Neg path's reading, which is the default that actually runs.
  Perp-Neg itself is ``views.perp_neg``. Further: weighting sds; min/max_step_percent 0.32 / 0.98 with
  ``t_anneal`` + ``sqrt_anneal``, i.e. the deterministic t = t_lo + (t_hi − t_lo)(1 − √(k/K)) (``t_schedule:
  sqrt`` here, rounded where the official code truncates: at most one step apart); δ_min 1, then 10 once the anneal's progress √(k/K) passes 0.75 (``update_step``). On SD's schedule
  that second value only matters below t = 10, so never at t_min = 0.32. Batch 1, 10 000 steps, SD-2.1-base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig, scheduled
from dreamcore.guidance.cds import FixedNoise
from dreamcore.guidance.timesteps import ScheduleKind
from dreamcore.registry import register
from dreamcore.schedule import Scheduled
from dreamcore import rng

LATE = 0.75  # δ_min switches to ``delta_min_late`` once the anneal's progress passes this (official ``update_step``)


def ode_grid(num_steps: int, ode_steps: int) -> list[int]:
    """⌊linspace(T − 1, 0, n + 1)⌋: the official ``get_ddim_steps`` grid (truncated to integers), computed exactly
    on the host: ⌊(T − 1)(n − i)/n⌋, i = 0 … n."""
    return [(num_steps - 1) * (ode_steps - i) // ode_steps for i in range(ode_steps + 1)]


@register("guidance", "dsd")
class DSDGuidance(Guidance):
    @dataclass
    class Config(GuidanceConfig):
        guidance_scale: Scheduled = scheduled(7.5)  # ω (diffusers) of ε̃ at t and along the ODE
        delta_guidance_scale: Scheduled = scheduled(1.0)  # ω_Δ of the second branch at t_Δ
        weighting: common.Weighting = "sds"  # 1 − ᾱ_t
        t_min: Scheduled = scheduled(0.32)
        t_max: Scheduled = scheduled(0.98)
        t_schedule: ScheduleKind = "sqrt"  # t_max → t_min as 1 − √(k/K)
        plus_ratio: Scheduled = scheduled(0.1)  # r: t_Δ − t ≤ r (t − t_lo)
        plus_random: bool = True  # the gap times u ~ U[0, 1) (false: the whole gap)
        delta_min: int = 1  # t_Δ ≥ δ_min …
        delta_min_late: int = 10  # … and ≥ this once the anneal passes 75 %
        ode_steps: int = 10  # n: DDIM grid points from T − 1 to 0 (the ODE uses those above t_Δ)
        share_noise: bool = True  # one seed for the object (per view of a group); false: one per batch row

    loss_name = "dsd"

    def __init__(self, cfg: "DSDGuidance.Config") -> None:
        super().__init__(cfg)
        if cfg.ode_steps < 1:
            raise DreamcoreError(f"guidance.ode_steps={cfg.ode_steps}: at least 1 DDIM step")
        self.noise = FixedNoise(shared=False)

    # -- pieces ------------------------------------------------------------------------------------------------
    def delta_min(self, step: int) -> int:
        """δ_min at step k: ``delta_min_late`` once the anneal's progress (√(k/K) under ``t_schedule: sqrt``, else
        k/K) exceeds 0.75."""
        frac = min(max(step / max(self.total_steps, 1), 0.0), 1.0)
        progress = frac**0.5 if self.cfg.t_schedule == "sqrt" else frac
        return self.cfg.delta_min_late if progress > LATE else self.cfg.delta_min

    def delta_timesteps(self, t: Tensor, step: int, prior, generator: torch.Generator) -> Tensor:
        """t_Δ ≥ t [B] (long), one u per view group (or per batch with ``t_shared``)."""
        c = self.cfg
        num = prior.schedule.num_steps
        lo, _ = common.timestep_bounds(c.t_min(step), c.t_max(step), num)
        delta = common.plus_ratio_delta(t, lo, num, c.plus_ratio(step))
        if c.plus_random:
            b = t.shape[0]
            group = prior.views_per_sample if b > 1 else 1
            n = 1 if c.t_shared else b // group
            u = rng.uniform((n,), generator, device=t.device).to(torch.float64)
            delta = delta * (u.expand(b) if c.t_shared else u.repeat_interleave(group))
        return (t + delta.floor().long()).clamp(self.delta_min(step), num - 1)

    def seed_noise(self, x: Tensor, render, prior, generator: torch.Generator) -> Tensor:
        """ε_s for each row of x (gathered at ``render.pixel_index`` for pixel subsets)."""
        b, ch = x.shape[:2]
        pixel_index = render.pixel_index
        spatial = tuple(render.image_size) if pixel_index is not None else tuple(x.shape[2:])
        rows = min(prior.views_per_sample, b) if self.cfg.share_noise else b
        field = self.noise(x.new_empty((rows, ch) + spatial), generator)  # drawn once, then the buffer
        if rows != b:
            field = field[torch.arange(b, device=field.device) % rows]
        if pixel_index is None:
            return field
        idx = pixel_index.to(field.device)[:, None, :].expand(b, ch, pixel_index.shape[1])
        return field.flatten(2).gather(2, idx)[..., None]

    def ode_epsilon(self, seed: Tensor, t_delta: Tensor, lowest: int, prior, views, omega: float, kw: dict) -> Tensor:
        """ε_p = ε̃_ω(x̃_{t_Δ}, t_Δ), x̃ the DDIM path from x̃_{T−1} = ε_s. Grid intervals that start at or below
        ``lowest`` (≤ every row's t_Δ) are skipped on the host; rows already at t_Δ stay put."""
        grid = ode_grid(prior.schedule.num_steps, self.cfg.ode_steps)
        x = seed
        t_from = t_delta.clamp_min(grid[0])
        for g_from, g_to in zip(grid[:-1], grid[1:]):
            if g_from <= lowest:
                break
            t_to = t_delta.clamp_min(g_to)
            eps, _ = common.guided_epsilon(prior, x, t_from, views, omega, **kw)
            moved = common.ddim_step(prior.schedule, x, eps, t_from, t_to)
            x = torch.where((t_to < t_from).view(-1, *([1] * (x.dim() - 1))), moved, x)
            t_from = t_to
        eps_p, _ = common.guided_epsilon(prior, x, t_delta, views, omega, **kw)
        return eps_p

    # -- the update --------------------------------------------------------------------------------------------
    def gradient(self, x, render, cameras, prior, views, step, generator) -> Tensor:
        c = self.cfg
        kw = self.prior_kwargs(render, cameras)
        omega = self.omega(step)
        t = self.sample_t(x.shape[0], step, prior, generator)
        t_delta = self.delta_timesteps(t, step, prior, generator)
        seed = self.seed_noise(x, render, prior, generator)
        lo, _ = common.timestep_bounds(c.t_min(step), c.t_max(step), prior.schedule.num_steps)
        eps_p = self.ode_epsilon(seed, t_delta, max(lo, self.delta_min(step)), prior, views, omega, kw)
        x_t = prior.schedule.add_noise(x, eps_p, t)
        x_delta = prior.schedule.add_noise(x, eps_p, t_delta)
        eps_t, _ = common.guided_epsilon(prior, x_t, t, views, omega, **kw)
        eps_delta, _ = common.guided_epsilon(prior, x_delta, t_delta, views, c.delta_guidance_scale(step), **kw)
        return common.broadcast(self.weights(prior, t), x) * (eps_t - eps_delta)
