"""View-dependent prompting: which condition each training view gets.

DreamFusion (Poole et al. 2022, §3.2) appends "front/side/back/overhead view" to the prompt by camera angle;
threestudio's prompt processor adds embedding interpolation between neighbouring views and Perp-Neg
(Armandpour et al. 2023) negative weights. Angles in degrees, azimuth ψ wrapped to [−180, 180). The labels
of cameras are :func:`dreamcore.cameras.view_labels`, the texts per label :func:`dreamcore.views.view_prompts`.

Interpolation and Perp-Neg (threestudio's scheme): for |ψ| < 90, r = 1 − |ψ|/90, y⁺ = r E_front + (1−r) E_side,
negatives (front, side) with weights (−f_fs(r), −f_sf(1−r)); for |ψ| ≥ 90, r = 2 − |ψ|/90,
y⁺ = r E_side + (1−r) E_back, negatives (side, front) with weights (−f_sb(r), −f_fsb(r)); overhead views get
E_overhead and no negatives. f(r) = a·e^{−b r} + c. The weights are stored negative, so the combination in
:func:`dreamcore.guidance.common.perp_neg` *adds* w_i · perp(e_i, e⁺).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor

from dreamcore.cameras import Cameras, wrap_azimuth
from dreamcore.views import LABELS, ViewPromptConfig, label_index


def _decay(f: tuple[float, float, float], r: Tensor) -> Tensor:
    a, b, c = f
    return a * torch.exp(-b * r) + c


@dataclass
class ViewConditions:
    """Per-view conditions for one batch, as embedding tensors with a leading batch dimension.

    ``cond``: the (view-dependent, possibly interpolated) prompt y; ``uncond``: the negative prompt ∅;
    ``plain``: the view-independent prompt (VSD's score model); ``null``: the empty prompt (CSD);
    ``negatives``: Perp-Neg pairs (embedding [B, …], weight [B], negative numbers); ``label_index``: each
    view's index into :data:`~dreamcore.views.LABELS` [B] on the device (or the label names themselves)."""

    cond: Tensor
    uncond: Tensor
    plain: Tensor
    null: Tensor
    label_index: Union[Tensor, list[str]]
    negatives: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The views' label names (a host read when they are held as indices: for reports and tests)."""
        if isinstance(self.label_index, Tensor):
            return [LABELS[i] for i in self.label_index.tolist()]
        return list(self.label_index)

    @property
    def batch(self) -> int:
        return self.cond.shape[0]


def conditions(embeddings, cameras: Optional[Cameras], batch: int, cfg: ViewPromptConfig,
               view_dependent: bool = True) -> ViewConditions:
    """Pick each view's condition from a prompt's embeddings (see the module docstring)."""
    emb = embeddings
    plain = emb.cond["default"].expand(batch, *emb.cond["default"].shape[1:])
    uncond = emb.uncond.expand(batch, *emb.uncond.shape[1:])
    null_src = emb.null if emb.null is not None else emb.uncond
    null = null_src.expand(batch, *null_src.shape[1:])
    if not (cfg.enabled and view_dependent) or cameras is None:
        return ViewConditions(plain, uncond, plain, null, ["default"] * batch)
    el = torch.rad2deg(cameras.elevation)
    az = torch.rad2deg(cameras.azimuth)
    labels = label_index(el, az, cfg)
    if not (cfg.interpolate or cfg.perp_neg):
        table = torch.cat([emb.cond.get(lbl, emb.cond["default"]) for lbl in LABELS], 0)
        cond = table.index_select(0, labels.to(table.device))
        return ViewConditions(cond, uncond, plain, null, labels)
    return _interpolated(emb, el, az, labels, cfg, uncond, plain, null)


def _interpolated(emb, el: Tensor, az: Tensor, labels: Tensor, cfg: ViewPromptConfig, uncond: Tensor,
                  plain: Tensor, null: Tensor) -> ViewConditions:
    e = {k: emb.cond.get(k, emb.cond["default"]) for k in LABELS}
    a = wrap_azimuth(az).abs()
    front_half = a < 90.0
    r = torch.where(front_half, 1.0 - a / 90.0, 2.0 - a / 90.0)  # [B]
    over = el > cfg.overhead_threshold
    shape = (-1,) + (1,) * (e["front"].dim() - 1)
    rv = r.view(shape).to(e["front"].dtype)
    fh = front_half.view(shape)
    pos = torch.where(fh, rv * e["front"] + (1 - rv) * e["side"], rv * e["side"] + (1 - rv) * e["back"])
    pos = torch.where(over.view(shape), e["overhead"].expand_as(pos), pos)
    negatives = []
    if cfg.perp_neg:
        n1 = torch.where(fh, e["front"].expand_as(pos), e["side"].expand_as(pos))
        n2 = torch.where(fh, e["side"].expand_as(pos), e["front"].expand_as(pos))
        w1 = torch.where(front_half, -_decay(cfg.f_front_side, r), -_decay(cfg.f_side_back, r))
        w2 = torch.where(front_half, -_decay(cfg.f_side_front, 1.0 - r), -_decay(cfg.f_front_side_back, r))
        w1 = torch.where(over, torch.zeros_like(w1), w1)
        w2 = torch.where(over, torch.zeros_like(w2), w2)
        negatives = [(n1, w1), (n2, w2)]
    return ViewConditions(pos, uncond, plain, null, labels, negatives)

