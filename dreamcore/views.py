"""View-dependent prompts: the ``views`` config section and the text each view label gets.

DreamFusion (Poole et al. 2022, §3.2) appends "front/side/back/overhead view" to the prompt by camera angle
(the labels of cameras are :func:`dreamcore.cameras.view_labels`). The priors encode these texts
(``encode_prompt(..., views=cfg)``) and the guidance picks each view's condition
(:mod:`dreamcore.guidance.views`); both read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from dreamcore.cameras import VIEW_LABELS, view_label_index, view_labels

LABELS = VIEW_LABELS


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


def label_index(elevation_deg: Tensor, azimuth_deg: Tensor, cfg: ViewPromptConfig) -> Tensor:
    """Each view's index into :data:`LABELS` [B] on the cameras' device (no host read)."""
    return view_label_index(elevation_deg, azimuth_deg, cfg.front_threshold, cfg.back_threshold,
                            cfg.overhead_threshold)


def label_views(elevation_deg: Tensor, azimuth_deg: Tensor, cfg: ViewPromptConfig) -> list[str]:
    """One label per view with the section's thresholds (:func:`dreamcore.cameras.view_labels`)."""
    return view_labels(elevation_deg, azimuth_deg, cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold)
