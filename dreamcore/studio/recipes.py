"""The studio's choices: the text-to-3D, reconstruction, image-to-3D and edit recipes of ``configs/`` (each described
by the sentence its file opens with) and the quality presets, which are plain overrides laid under the page's own."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dreamcore.config import config_path

# recipes that make an object from a prompt (the rest reconstruct a given mesh or refine another run); the first is
# the page's default: the multi-view prior's NeRF, the one without Janus objects (README, the multi-view benchmark)
TEXT_RECIPES = ("text-mv-nerf", "text-mv-gaussians", "text-nerf", "text-gaussians", "dreamfusion", "dreamfusion-sd",
                "dreamfusion-if", "dreamgaussian", "magic3d-coarse", "prolificdreamer", "luciddreamer", "latent-nerf", "sjc",
                "stabledreamer")
RECONSTRUCT_RECIPES = ("reference-nerf", "reference-gaussians", "reference-dmtet")
# recipes that make an object from a picture (the Image to 3D tab; image.path)
IMAGE_RECIPES = ("image-to-3d", "image-to-3d-nerf")
# the edit methods (the gallery's Edit this asset; dreamcore edit --config): laid over a finished job's own config
EDIT_RECIPES = ("edit-dds", "edit-pds", "edit-sds")

# quality presets: how long the run is (run.time_scale, which scales the recipe's schedules with its step count)
# and how big its outputs are. draft: at most DRAFT_STEPS steps (a couple of minutes on a laptop CPU with the
# reference prior); high: twice the recipe's steps, up to HIGH_STEPS (recipes already longer keep theirs)
DRAFT_STEPS = 300
HIGH_STEPS = 2000
PRESETS: dict[str, list[str]] = {
    "draft": ["run.val_every=50", "run.checkpoint_every=50", "run.log_every=10", "export.resolution=128",
              "export.texture_size=512", "export.turntable_frames=12", "eval.views=4"],
    "standard": ["run.val_every=100", "run.log_every=10"],
    "high": ["run.val_every=200", "run.log_every=10", "export.resolution=256", "export.texture_size=2048"],
}


def time_scale(preset: str, steps: int) -> float:
    """The preset's ``run.time_scale`` for a recipe of ``steps`` steps (after the page's own overrides)."""
    if preset == "draft":
        return min(1.0, DRAFT_STEPS / max(1, steps))
    if preset == "high":
        return max(1.0, min(2.0, HIGH_STEPS / max(1, steps)))
    return 1.0


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    path: Path


# words whose full stop ends no sentence ("Wang et al. 2023", "e.g. prior.name=...")
_ABBREVIATIONS = {"al", "e.g", "i.e", "cf", "vs", "etc", "sec", "fig", "eq"}


def _first_sentence(text: str) -> str:
    """``text`` up to and including its first sentence's end: a ``.``, ``!`` or ``?`` followed by a space or the
    end, outside brackets, quotes and backticks and not after an abbreviation; all of ``text`` when it has none."""
    depth, quote, tick = 0, False, False
    for i, ch in enumerate(text):
        if ch == "`":
            tick = not tick
        elif tick:
            continue
        elif ch == '"':
            quote = not quote
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch in ".!?" and not depth and not quote and (i + 1 == len(text) or text[i + 1].isspace()):
            word = re.split(r"[\s(]", text[:i])[-1].lower()
            if ch == "." and word in _ABBREVIATIONS:
                continue
            return text[: i + 1]
    return text


def describe(path: Path) -> str:
    """The first sentence of a config file's opening comment, whole however many lines it spans (the comment's
    command lines, ``# dreamcore ...`` or indented, end it)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if not text.strip() or text.startswith((" " * 2, "\t")) or text.strip().startswith("dreamcore "):
            if lines:
                break
            continue
        lines.append(text.strip())
    return _first_sentence(" ".join(lines))


def recipes(names: tuple[str, ...] = TEXT_RECIPES) -> list[Recipe]:
    """The named recipes that exist in ``configs/``, in the given order."""
    out = []
    for name in names:
        try:
            path = config_path(name)
        except Exception:  # noqa: BLE001 - a recipe not shipped in this checkout is not offered
            continue
        out.append(Recipe(name, describe(path), path))
    return out


def preset_overrides(preset: str, cfg) -> list[str]:
    """The preset's overrides for ``cfg`` (the recipe as the page's own overrides leave it): its sizes and,
    unless it keeps the recipe's length, ``run.time_scale``. A draft also searches the export's density level
    (¼×, ½×, 1× and 2× the recipe's ``export.isosurface``, the one whose mesh's silhouettes best match the
    field's own renders) unless the recipe searches already: a short run's field is softer than a finished one,
    and at its fixed level the mesh comes out thinner than what it renders (robot, reference-nerf, 300 steps:
    GLB IoU 0.90 at level 20, 0.96 with the search); not for ``export.surface: depth``, which has no level."""
    if preset not in PRESETS:
        from dreamcore.errors import DreamcoreError

        raise DreamcoreError(f"unknown quality preset {preset!r} (choose from {', '.join(PRESETS)})")
    scale = round(time_scale(preset, cfg.run.steps), 4)
    out = [*PRESETS[preset], *([f"run.time_scale={scale:g}"] if scale != 1.0 else [])]
    searched = cfg.export.surface == "density"  # a surface fused from the renders has no level to search
    if preset == "draft" and searched and not cfg.export.isosurface_search and cfg.export.isosurface > 0:
        iso = cfg.export.isosurface
        out.append(f"export.isosurface_search=[{iso / 4:g},{iso / 2:g},{iso:g},{iso * 2:g}]")
    return out
