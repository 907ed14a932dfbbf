"""Mesh system: a surface representation (explicit mesh or DMTet) rasterized and optimized by a guidance loss.

Magic3D's refine stage (Lin et al. 2023, Sec. 3.2) and Fantasia3D's geometry/appearance stages: the same step as
DreamFusion's (render → guidance against the prior → regularizers) with a rasterizer instead of volume
rendering, plus the mesh regularizers (uniform Laplacian, normal consistency) on the rendered surface.

``init.from_run=RUN_DIR`` hands the earlier run's restored system to the representation's
``init_from_system`` (DMTet fits its SDF to the earlier density and its texture to the earlier colours).
Export is direct (no marching cubes): :meth:`export_source` gives the surface with its UVs (kept, or made by
xatlas and baked from the texture field) to every exporter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dreamcore import registry
from dreamcore.cameras import Cameras
from dreamcore.config import Config as FullConfig
from dreamcore.config import ExportConfig
from dreamcore.errors import DreamcoreError
from dreamcore.export.exporters import ExportOptions, ExportSource, TexturedMesh
from dreamcore.representations.base import SurfaceRepresentation
from dreamcore.schedule import Scheduled
from dreamcore.systems.dreamfusion import DreamFusionSystem


@registry.register("system", "mesh")
class MeshSystem(DreamFusionSystem):
    @dataclass
    class Config(DreamFusionSystem.Config):
        lambda_laplacian: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_normal_consistency: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_sdf_sign: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))  # DMTet only

    def __init__(self, cfg: "MeshSystem.Config", full: FullConfig) -> None:
        super().__init__(cfg, full)
        if not isinstance(self.representation, SurfaceRepresentation):
            raise DreamcoreError(f"system 'mesh' needs a surface representation (mesh, dmtet), not "
                                 f"'{full.representation.name}'")
        if full.renderer.name != "mesh":
            raise DreamcoreError(f"system 'mesh' rasterizes: set renderer.name=mesh (got '{full.renderer.name}')")
        self.init_report: dict = {}

    def initialize_from(self, source) -> dict:
        """``init.from_run``: the representation converts the earlier run (DMTet: SDF from its density)."""
        t0 = time.perf_counter()
        self.init_report = dict(super().initialize_from(source))
        self.init_report["seconds"] = round(time.perf_counter() - t0, 2)
        return self.init_report

    @property
    def scene_transform(self):
        """The explicit mesh's own file frame when it has one (exports go back to it), else the prior's."""
        own = self.representation.transform
        return own if own is not None else super().scene_transform

    def training_step(self, cameras: Cameras, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        losses = super().training_step(cameras, step, generator)
        weights = {"laplacian": self.cfg.lambda_laplacian(step),
                   "normal_consistency": self.cfg.lambda_normal_consistency(step),
                   "sdf_sign": self.cfg.lambda_sdf_sign(step)}
        active = tuple(name for name, w in weights.items() if w > 0)
        if active:
            reg = self.representation.regularizers(active)
            for name in active:
                if name in reg:
                    losses[name] = weights[name] * reg[name]
        return losses

    def after_step(self, step: int, generator: torch.Generator) -> None:
        self.representation.after_step(step, generator, 0.0)

    @torch.no_grad()
    def surface_color(self, points: Tensor, normals: Tensor) -> Tensor:  # noqa: ARG002
        return self.representation.albedo(points, None, None)

    # -- export -------------------------------------------------------------------------------------------------
    def export_source(self, export: ExportConfig) -> ExportSource:
        """The surface itself (no marching cubes): a UV-textured representation as it is (its UVs and texture
        image, in its file's frame), a texture field through an xatlas atlas baked at ``export.texture_size``.
        Extracted surfaces (DMTet) are decimated to ``export.target_faces`` first; explicit meshes keep their
        triangles."""
        options = ExportOptions(export.turntable_frames, export.turntable_resolution, export.turntable_format)
        return ExportSource(self.representation.kind, options, mesh=lambda: self._surface_mesh(export))

    @torch.no_grad()
    def _surface_mesh(self, e: ExportConfig) -> tuple[TexturedMesh, dict]:
        from dreamcore.export import textured_mesh

        rep = self.representation
        own = rep.uv_mesh(e.texture_size)
        if own is not None:
            verts, faces, uvs, texture = own
            mesh = TexturedMesh(verts, faces, uvs, texture, None)  # already in its file's frame
        else:
            surf = rep.surface()
            verts = surf.vertices.detach().cpu().numpy()
            faces = surf.faces.cpu().numpy()
            if len(faces) == 0:
                raise DreamcoreError("nothing to export: the surface is empty")
            if rep.decimate_on_export:  # extracted surfaces (DMTet): export.target_faces
                from dreamcore.export.extract import decimate_closed

                verts, faces = decimate_closed(verts, faces, e.target_faces)  # and closed again where it pinched
            device = surf.vertices.device
            mesh = textured_mesh(verts, faces, lambda p, n: rep.albedo(p.to(device), None, None).cpu(),
                                 self.scene_transform, texture_size=e.texture_size)
        report = {"faces": int(len(faces)), "vertices": int(len(verts)), "extract_seconds": 0.0}
        return mesh, {**report, **({"init": self.init_report} if self.init_report else {})}
