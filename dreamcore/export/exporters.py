"""Registered exporters (``export.formats: [glb, obj, turntable]``): each writes one kind of file from the
textured mesh. Add a format with ``@register("exporter", "name")`` and a ``write`` method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dreamcore.config import ComponentConfig
from dreamcore.meshes.asset import SceneTransform, textured_asset
from dreamcore.registry import lookup, register


@dataclass
class TexturedMesh:
    """An unwrapped mesh in the scene frame: verts [V, 3], faces [F, 3], uvs [V, 2] (glTF), texture [S, S, 3]."""

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray


def exporters_for(formats) -> list:
    """Instances of the registered exporters named in ``formats``; an unknown name raises before any work."""
    return [lookup("exporter", name)() for name in formats]


@register("exporter", "glb")
class GLBExporter:
    """``model.glb``: glTF 2.0 binary, Y-up, PBR metallic-roughness with the baked baseColorTexture."""

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, mesh: TexturedMesh, transform: Optional[SceneTransform], **_) -> dict[str, Path]:
        from dreamcore.export.writers import write_glb

        return {"glb": write_glb(run_dir / "model.glb", mesh.verts, mesh.faces, mesh.uvs, mesh.texture, transform)}


@register("exporter", "obj")
class OBJExporter:
    """``model.obj`` + ``model.mtl`` + ``model.png``."""

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, mesh: TexturedMesh, transform: Optional[SceneTransform], **_) -> dict[str, Path]:
        from dreamcore.export.writers import write_obj

        return write_obj(run_dir / "model.obj", mesh.verts, mesh.faces, mesh.uvs, mesh.texture, transform)


@register("exporter", "turntable")
class TurntableExporter:
    """``turntable.mp4`` (or ``.gif``): the textured asset orbiting, Lambertian-shaded."""

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, mesh: TexturedMesh, transform: Optional[SceneTransform], *,
              turntable_frames: int = 48, turntable_resolution: int = 256, turntable_format: str = "mp4",
              **_) -> dict[str, Path]:
        from dreamcore.export.turntable import write_turntable

        asset = textured_asset(mesh.verts, mesh.faces, mesh.uvs, mesh.texture)
        path = write_turntable(run_dir / f"turntable.{turntable_format}", asset, frames=turntable_frames,
                               resolution=turntable_resolution)
        return {"turntable": path}
