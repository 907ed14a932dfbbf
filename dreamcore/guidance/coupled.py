"""Coupled Score Distillation (Yang, Qian, Zuo, Li, arXiv 2505.04262): VSD on each view plus a multi-view
term that couples the views of a batch through a joint (multi-view) prior — "joint = marginals × copula"
(the official code calls the coupling weight ``Sklar``). Registered as ``coupled`` (our ``csd`` is classifier
score distillation).

For the B views of a batch (x_1 … x_B in the prior's model space):

    g_v = w(t_v) [ ε̃_pre(x_t^v; y) − ε̃_q(x_t^v; y, c_v) ]                               (VSD, per view)
        + λ(k) · f · w(t) [ ε̃_MV(x_t^1 … x_t^B; y, t)_v − ε_v ]                        (multi-view SDS)

The first line is :class:`~dreamcore.guidance.vsd.VSDGuidance` unchanged (its LoRA/residual score model, its
optimizer, its draws, in the same order). The second is SDS through the multi-view prior with **one t shared
by the whole batch** and its own noise ε (drawn after VSD's, so λ = 0 reproduces VSD exactly), CFG ω_MV in
diffusers' convention, the same weighting w, and f = ``mv_loss_factor`` = 2: the official MV loss is
MSE(sum)/4 without the ½ of our injection (guidance-wave2.md §13.4), i.e. twice the usual g.

The multi-view prior: by default the run's prior evaluated on the batch's own renders — the issue's reading
for single-view priors. A per-view prior then makes the MV term B independent SDS terms at a shared t (same
fixed point as VSD, tested on the Gaussian toy); a prior whose prediction couples the rows of a call (MVDream
in the official code, a correlated joint Gaussian in the tests) pulls the views together. Another prior with
the same model space can be set with :meth:`CoupledSDGuidance.set_multiview_prior` (not checkpointed: it is
frozen). The official code renders {ψ, ψ+90°, ψ+180°, ψ+270°} for the MV term; here the views are whatever
the camera sampler drew for the batch (use ``camera.batch_size=4``).

Defaults and sources — official code FengY3337/Coupled-Score-Distillation@266f420 (as recorded in
shared/reference/guidance-wave2.md §12: ``main.py``, ``utils.py``, ``guidance/sd.py::train_step``,
``guidance/mvdream_utils_iteration.py::train_step``):

* λ: ``Sklar`` 'constant' schedule = its final value 0.5 (default and README runs); the linear one rises from 0
  over 1000 iterations — here ``coupling: [[0, 0.0], [1000, 0.5]]`` [code];
* ω = 7.5 for both terms (diffusers), w = 1 − ᾱ_t, t ~ U[0.02, 0.98]·1000 and t_max 0.5 after 2000 iterations
  (``t5_iters``) for both terms [code];
* LoRA lr 1e-4, one LoRA update per iteration, camera (pose) dropout 0.1, v-prediction LoRA targets [code];
* 4000 iterations, 3DGS, SH degree 0 (recipe configs/coupled.yaml) [code];
* the MV loss without ½ (f = 2) [code]; the paper's derivation of the coupling term was not read [paper: abstract].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamcore import rng
from dreamcore.guidance import common
from dreamcore.guidance.base import scheduled
from dreamcore.guidance.vsd import VSDGuidance
from dreamcore.registry import register
from dreamcore.schedule import Scheduled


@register("guidance", "coupled")
class CoupledSDGuidance(VSDGuidance):
    @dataclass
    class Config(VSDGuidance.Config):
        t_max: Scheduled = Scheduled(((2000.0, 0.98), (2001.0, 0.5)))  # t5_iters = 2000
        coupling: Scheduled = scheduled(0.5)  # λ(k), the official 'Sklar' weight
        mv_guidance_scale: Scheduled = scheduled(7.5)  # ω_MV (diffusers)
        mv_loss_factor: float = 2.0  # the official MV loss lacks the ½

    loss_name = "coupled"

    def __init__(self, cfg: "CoupledSDGuidance.Config") -> None:
        super().__init__(cfg)
        self.__dict__["_mv_prior"] = None  # frozen, not a submodule: never in the checkpoint

    def set_multiview_prior(self, prior) -> None:
        """Use ``prior`` (same model space as the run's prior) for the multi-view term; None: the run's prior."""
        self.__dict__["_mv_prior"] = prior

    def mv_gradient(self, x: Tensor, cameras, prior, views, step: int, generator: torch.Generator,
                    kw: dict) -> Tensor:
        """w(t) (ε̃_MV(x_t) − ε) at one t shared by the batch (without λ and f)."""
        b = x.shape[0]
        t = self.sample_t(1, step, prior, generator).expand(b)
        noise = rng.normal(x.shape, generator, like=x)
        x_t = prior.schedule.add_noise(x, noise, t)
        eps, _ = common.guided_epsilon(prior, x_t, t, views, self.cfg.mv_guidance_scale(step), **kw)
        return common.broadcast(self.weights(prior, t), x) * (eps - noise)

    def extra_gradient(self, grad: Tensor, x: Tensor, cameras, prior, views, step: int, generator, kw: dict) -> Tensor:
        """VSD's g plus λ(k)·f·(the multi-view term); λ = 0 draws nothing more (VSD bit for bit)."""
        lam = self.cfg.coupling(step)
        if lam == 0.0:
            return grad
        mv_prior = self._mv_prior if self._mv_prior is not None else prior
        return grad + (lam * self.cfg.mv_loss_factor) * self.mv_gradient(x, cameras, mv_prior, views, step,
                                                                          generator, kw)
