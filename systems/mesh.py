"""Mesh system: a surface representation (explicit mesh or DMTet) rasterized and optimized by a guidance loss.

Magic3D's refine stage (Lin et al. 2023, Sec. 3.2) and Fantasia3D's geometry/appearance stages: the same step as
DreamFusion's (render → guidance against the prior → regularizers) with a rasterizer instead of volume
rendering, plus the mesh regularizers (uniform Laplacian, normal consistency) on the rendered surface.

``init.from_run=RUN_DIR`` hands the earlier run's restored system to the representation's
``init_from_system`` (DMTet fits its SDF to the earlier density and its texture to the earlier colours).
Export is direct (no marching cubes): :meth:`export_mesh` writes the surface with its UVs (kept, or made by
xatlas and baked from the texture field), which :func:`dreamcore.runner.finish.export_run` calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from dreamcore import registry
from dreamcore.cameras import Cameras
from dreamcore.config import Config as FullConfig
from dreamcore.errors import DreamcoreError
from dreamcore.schedule import Scheduled
from systems.dreamfusion import DreamFusionSystem


@registry.register("system", "mesh")
class MeshSystem(DreamFusionSystem):
    @dataclass
    class Config(DreamFusionSystem.Config):
        lambda_laplacian: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_normal_consistency: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))
        lambda_sdf_sign: Scheduled = field(default_factory=lambda: Scheduled.constant(0.0))  # DMTet only

    def __init__(self, cfg: "MeshSystem.Config", full: FullConfig) -> None:
        super().__init__(cfg, full)
        if not hasattr(self.representation, "surface"):
            raise DreamcoreError(f"system 'mesh' needs a surface representation (mesh, dmtet), not "
                                 f"'{full.representation.name}'")
        if full.renderer.name != "mesh":
            raise DreamcoreError(f"system 'mesh' rasterizes: set renderer.name=mesh (got '{full.renderer.name}')")
        self.init_report: dict = {}

    def initialize_from(self, source) -> None:
        """``init.from_run``: the representation converts the earlier run (DMTet: SDF from its density)."""
        if getattr(self.representation, "init_from_system", None) is None:
            raise DreamcoreError(f"representation '{self.full.representation.name}' cannot start from an earlier "
                                 "run (init.from_run)")
        t0 = time.perf_counter()
        self.init_report = dict(super().initialize_from(source))
        self.init_report["seconds"] = round(time.perf_counter() - t0, 2)

    @property
    def scene_transform(self):
        """The explicit mesh's own file frame when it has one (exports go back to it), else the prior's."""
        own = getattr(self.representation, "transform", None)
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

    def density(self, points: Tensor) -> Tensor:
        density = getattr(self.representation, "export_density", None)
        if density is None:
            raise DreamcoreError(f"representation '{self.full.representation.name}' has no density field")
        return density(points)

    # -- export -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export_mesh(self, run_dir: Path, cfg: FullConfig) -> dict:
        """Write the surface directly: a UV-textured representation as it is (its UVs and texture image), a
        texture field through an xatlas atlas baked at ``export.texture_size``. Extracted surfaces (DMTet) are
        decimated to ``export.target_faces`` first; explicit meshes keep their triangles."""
        from dreamcore.export import export_textured_mesh
        from dreamcore.export.exporters import TexturedMesh, exporters_for

        e = cfg.export
        rep = self.representation
        t0 = time.perf_counter()
        options = {"turntable_frames": e.turntable_frames, "turntable_resolution": e.turntable_resolution,
                   "turntable_format": e.turntable_format}
        if getattr(rep.cfg, "texture", "field") == "uv":
            verts, faces, uvs, texture, _ = rep.export_arrays(e.texture_size)
            mesh = TexturedMesh(verts, faces, uvs, texture)
            run_dir.mkdir(parents=True, exist_ok=True)
            paths: dict = {}
            for exporter in exporters_for(e.formats):
                paths.update(exporter.write(run_dir, mesh, None, **options))
        else:
            surf = rep.surface()
            verts = surf.vertices.detach().cpu().numpy()
            faces = surf.faces.cpu().numpy()
            if len(faces) == 0:
                raise DreamcoreError("nothing to export: the surface is empty")
            if getattr(rep, "decimate_on_export", False):  # extracted surfaces (DMTet): export.target_faces
                from dreamcore.export.extract import decimate_closed

                verts, faces = decimate_closed(verts, faces, e.target_faces)  # and closed again where it pinched
            device = surf.vertices.device
            transform = self.scene_transform
            paths = export_textured_mesh(
                run_dir, verts, faces, lambda p, n: rep.albedo(p.to(device), None, None).cpu(), transform,
                formats=tuple(e.formats), texture_size=e.texture_size, **options)
        t1 = time.perf_counter()
        return {"files": {k: str(v) for k, v in paths.items()}, "faces": int(len(faces)),
                "vertices": int(len(verts)), "extract_seconds": 0.0, "write_seconds": round(t1 - t0, 2),
                **({"init": self.init_report} if self.init_report else {})}
