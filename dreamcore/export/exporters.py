"""The exporter contract and the registered mesh exporters (``export.formats: [glb, obj, ply, turntable]``).

Every format goes through one contract: an :class:`Exporter` writes its files from an :class:`ExportSource`, the
scene as the system hands it over. A source gives a textured mesh (made on first request and shared by every
mesh format: marching cubes of a field, a DMTet surface, an explicit mesh as it is) and, for Gaussians, the
splats themselves; an exporter asks for what it writes. Add a format with::

    @register("exporter", "my-format")
    class MyExporter(Exporter):
        @dataclass
        class Config(ComponentConfig):
            pass

        def write(self, run_dir, source):
            mesh = source.mesh()  # TexturedMesh: verts, faces, uvs, texture, transform
            return {"my-format": write_my_format(run_dir / "model.xyz", mesh)}

``writes_mesh = False`` marks a format written from the representation itself (``ply``): a refinement stage
that turns the scene into a mesh does not write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch import Tensor

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import SceneTransform, textured_asset
from dreamcore.registry import lookup, register


@dataclass
class TexturedMesh:
    """An unwrapped mesh: verts [V, 3], faces [F, 3], uvs [V, 2] (glTF), texture [S, S, 3]. ``transform`` maps
    the verts (scene frame) back to the frame files are written in; None: the verts are in it already."""

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray
    transform: Optional[SceneTransform] = None


@dataclass
class Splats:
    """3D Gaussians in the 3DGS layout, scene frame (see :mod:`dreamcore.export.ply`); ``transform`` as for
    :class:`TexturedMesh`."""

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh_dc: Tensor
    sh_rest: Tensor
    transform: Optional[SceneTransform] = None


@dataclass
class ExportOptions:
    """The settings of ``export`` that exporters read."""

    turntable_frames: int = 48
    turntable_resolution: int = 256
    turntable_format: str = "mp4"


class ExportSource:
    """What exporters write from. ``mesh`` builds the textured mesh (called once, on the first :meth:`mesh`; it
    returns the mesh and a report of how it was made, for ``metrics.json``); ``splats`` the Gaussians, where the
    scene is made of them; ``kind`` names the scene's representation in messages."""

    def __init__(self, kind: str, options: Optional[ExportOptions] = None,
                 mesh: Optional[Callable[[], tuple[TexturedMesh, dict]]] = None,
                 splats: Optional[Callable[[], Splats]] = None) -> None:
        self.kind = kind
        self.options = options or ExportOptions()
        self._make_mesh, self._make_splats = mesh, splats
        self._mesh: Optional[TexturedMesh] = None
        self.report: dict = {}  # filled when the mesh is made

    @classmethod
    def of_mesh(cls, mesh: TexturedMesh, options: Optional[ExportOptions] = None) -> "ExportSource":
        return cls("mesh", options, mesh=lambda: (mesh, {}))

    def mesh(self) -> TexturedMesh:
        if self._mesh is None:
            if self._make_mesh is None:
                raise DreamcoreError(f"this run's representation '{self.kind}' gives no mesh to export")
            self._mesh, self.report = self._make_mesh()
            if len(self._mesh.faces) == 0:
                raise DreamcoreError("nothing to export: the mesh is empty")
        return self._mesh

    def splats(self) -> Splats:
        if self._make_splats is None:
            raise DreamcoreError(f"export format 'ply' writes Gaussians; this run's representation is '{self.kind}'")
        return self._make_splats()


class Exporter:
    """Base of exporters: :meth:`write` the format's files into ``run_dir``, returning {label: path}."""

    writes_mesh: bool = True  # False: written from the representation itself, not from its mesh

    def write(self, run_dir: Path, source: ExportSource) -> dict[str, Path]:
        raise NotImplementedError


def exporters_for(formats) -> list[Exporter]:
    """Instances of the registered exporters named in ``formats``; an unknown name raises before any work."""
    return [exporter_class(name)() for name in formats]


def exporter_class(name: str) -> type[Exporter]:
    cls = lookup("exporter", name)
    if not issubclass(cls, Exporter):
        raise DreamcoreError(f"exporter '{name}' ({cls.__module__}.{cls.__name__}) does not subclass "
                             "dreamcore.export.exporters.Exporter")
    return cls


def write_formats(run_dir: Path, source: ExportSource, formats) -> dict[str, Path]:
    """Every format of ``formats`` written from ``source`` into ``run_dir`` (the mesh made once, if asked for)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for exporter in exporters_for(formats):
        paths.update(exporter.write(run_dir, source))
    return paths


@register("exporter", "glb")
class GLBExporter(Exporter):
    """``model.glb``: glTF 2.0 binary, Y-up, PBR metallic-roughness with the baked baseColorTexture."""

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, source: ExportSource) -> dict[str, Path]:
        from dreamcore.export.writers import write_glb

        m = source.mesh()
        return {"glb": write_glb(run_dir / "model.glb", m.verts, m.faces, m.uvs, m.texture, m.transform)}


@register("exporter", "obj")
class OBJExporter(Exporter):
    """``model.obj`` + ``model.mtl`` + ``model.png``."""

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, source: ExportSource) -> dict[str, Path]:
        from dreamcore.export.writers import write_obj

        m = source.mesh()
        return write_obj(run_dir / "model.obj", m.verts, m.faces, m.uvs, m.texture, m.transform)


@register("exporter", "turntable")
class TurntableExporter(Exporter):
    """``turntable.mp4`` (or ``.gif``): the textured asset orbiting, Lambertian-shaded."""

    @dataclass
    class Config(ComponentConfig):
        pass

    def write(self, run_dir: Path, source: ExportSource) -> dict[str, Path]:
        from dreamcore.export.turntable import write_turntable

        m, o = source.mesh(), source.options
        asset = textured_asset(m.verts, m.faces, m.uvs, m.texture)
        path = write_turntable(run_dir / f"turntable.{o.turntable_format}", asset, frames=o.turntable_frames,
                               resolution=o.turntable_resolution)
        return {"turntable": path}
