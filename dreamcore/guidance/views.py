"""View-dependent prompting: which condition each training view gets.

DreamFusion (Poole et al. 2022, §3.2) appends "front/side/back/overhead view" to the prompt by camera angle;
threestudio's prompt processor adds embedding interpolation between neighbouring views and Perp-Neg
(Armandpour et al. 2023) negative weights. Angles in degrees, azimuth ψ wrapped to [−180, 180).

Labels (later rules win): ``side``; ``front`` if |ψ| < θ_f; ``back`` if |ψ| > 180 − θ_b; ``overhead`` if
elevation φ > θ_o.

Interpolation and Perp-Neg (threestudio's scheme): for |ψ| < 90, r = 1 − |ψ|/90, y⁺ = r E_front + (1−r) E_side,
negatives (front, side) with weights (−f_fs(r), −f_sf(1−r)); for |ψ| ≥ 90, r = 2 − |ψ|/90,
y⁺ = r E_side + (1−r) E_back, negatives (side, front) with weights (−f_sb(r), −f_fsb(r)); overhead views get
E_overhead and no negatives. f(r) = a·e^{−b r} + c. The weights are stored negative, so the combination in
:func:`dreamcore.guidance.common.perp_neg` *adds* w_i · perp(e_i, e⁺).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import Tensor

from dreamcore.cameras import Cameras

LABELS = ("front", "side", "back", "overhead")


@dataclass
class ViewPromptConfig:
    """The ``views`` config section."""

    enabled: bool = True
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    style: Literal["suffix", "prefix"] = "suffix"  # "<prompt>, front view" or "front view of <prompt>"
    prompt_front: str = ""  # explicit per-view prompts override the generated ones
    prompt_side: str = ""
    prompt_back: str = ""
    prompt_overhead: str = ""
    interpolate: bool = False  # blend neighbouring view embeddings by azimuth instead of switching
    perp_neg: bool = False  # Perp-Neg: subtract the perpendicular part of the other views' directions
    f_front_side: tuple[float, float, float] = (4.0, 0.5, -2.426)
    f_side_front: tuple[float, float, float] = (4.0, 0.5, -2.426)
    f_side_back: tuple[float, float, float] = (1.0, 0.5, -0.606)
    f_front_side_back: tuple[float, float, float] = (1.0, 0.5, 0.967)


def view_prompts(prompt: str, cfg: ViewPromptConfig) -> dict[str, str]:
    """The text of each view's prompt (``default`` is the prompt itself)."""
    out = {"default": prompt}
    names = {"front": "front", "side": "side", "back": "back", "overhead": "overhead"}
    prefix = {"front": "front view of", "side": "side view of", "back": "backside view of",
              "overhead": "overhead view of"}
    for label in LABELS:
        explicit = getattr(cfg, f"prompt_{label}")
        if explicit:
            out[label] = explicit
        elif cfg.style == "prefix":
            out[label] = f"{prefix[label]} {prompt}"
        else:
            out[label] = f"{prompt}, {names[label]} view"
    return out


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    return (azimuth_deg + 180.0) % 360.0 - 180.0


def label_views(elevation_deg: Tensor, azimuth_deg: Tensor, cfg: ViewPromptConfig) -> list[str]:
    """One label per view (DreamFusion's scheme with configurable thresholds)."""
    az = wrap_azimuth(azimuth_deg)
    out = []
    for e, a in zip(elevation_deg.tolist(), az.tolist()):
        label = "side"
        if -cfg.front_threshold < a < cfg.front_threshold:
            label = "front"
        if a > 180.0 - cfg.back_threshold or a < -180.0 + cfg.back_threshold:
            label = "back"
        if e > cfg.overhead_threshold:
            label = "overhead"
        out.append(label)
    return out


def _decay(f: tuple[float, float, float], r: Tensor) -> Tensor:
    a, b, c = f
    return a * torch.exp(-b * r) + c


@dataclass
class ViewConditions:
    """Per-view conditions for one batch, as embedding tensors with a leading batch dimension.

    ``cond``: the (view-dependent, possibly interpolated) prompt y; ``uncond``: the negative prompt ∅;
    ``plain``: the view-independent prompt (VSD's score model); ``null``: the empty prompt (CSD);
    ``negatives``: Perp-Neg pairs (embedding [B, …], weight [B], negative numbers)."""

    cond: Tensor
    uncond: Tensor
    plain: Tensor
    null: Tensor
    labels: list[str]
    negatives: list[tuple[Tensor, Tensor]] = field(default_factory=list)

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
    el = torch.rad2deg(cameras.elevation).cpu()
    az = torch.rad2deg(cameras.azimuth).cpu()
    labels = label_views(el, az, cfg)
    if not (cfg.interpolate or cfg.perp_neg):
        cond = torch.cat([emb.cond.get(lbl, emb.cond["default"]) for lbl in labels], 0)
        return ViewConditions(cond, uncond, plain, null, labels)
    return _interpolated(emb, el, az, labels, cfg, uncond, plain, null)


def _interpolated(emb, el: Tensor, az: Tensor, labels: list[str], cfg: ViewPromptConfig, uncond: Tensor,
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

