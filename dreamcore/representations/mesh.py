"""An explicit triangle mesh from a file: optimizable vertex offsets and a texture (3D field or UV image).

The file is loaded with :func:`dreamcore.meshes.io.load_mesh` and normalized like the reference prior's mesh
(bounding-box centre at the origin, farthest vertex at ``radius``), so the same file lines up with a
reference prior of it. Vertices duplicated at UV seams are welded by position for the geometry (offsets,
normals, silhouettes, regularizers); the UVs stay on the original vertices. Vertex positions are
``p = p_0 + δ`` with ``δ`` optimized when ``optimize_geometry`` (Magic3D's refine stage optimizes the
vertices of its DMTet surface the same way; Laplacian and normal-consistency losses keep it smooth).

Texture: ``field`` (a hash-grid colour field, baked into an xatlas atlas at export) or ``uv`` (a UV texture
image, the file's UVs when it has them, xatlas's otherwise, exported as is). With ``optimize_geometry: false``
and a UV texture the exported mesh is the input geometry bit for bit (texture-only mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path
from dreamcore.meshes.diffraster import interpolate_at
from dreamcore.meshes.regularizers import laplacian_loss, normal_consistency_loss
from dreamcore.meshes.surface import Surface
from dreamcore.registry import register
from dreamcore.representations.base import SurfaceRepresentation
from dreamcore.representations.texture import FieldTexture, FieldTextureConfig, UVTexture


def weld(vertices: Tensor) -> tuple[Tensor, Tensor]:
    """Merge bit-identical positions: returns (unique [U, 3], index [V] with ``vertices = unique[index]``)."""
    unique, index = torch.unique(vertices, dim=0, return_inverse=True)
    return unique, index


@register("representation", "mesh")
class MeshRepresentation(SurfaceRepresentation):
    @dataclass
    class Config(FieldTextureConfig, ComponentConfig):
        path: str = ""  # GLB / OBJ / PLY file (``mesh=...`` at the top level of configs/texture.yaml)
        radius: float = 0.9  # normalization, as prior.reference.radius
        optimize_geometry: bool = True
        offset_lr_scale: float = 0.01
        texture: Literal["field", "uv"] = "field"
        uv: Literal["keep", "xatlas"] = "keep"  # keep the file's UVs when it has them
        texture_size: int = 512
        texture_levels: int = 6
        texture_lr_scale: float = 1.0

    def __init__(self, cfg: "MeshRepresentation.Config") -> None:
        super().__init__()
        from dreamcore.meshes.io import load_mesh, normalize

        self.cfg = cfg
        self.bound = 1.0
        if not cfg.path:
            raise DreamcoreError("representation 'mesh' needs a mesh file: representation.path=X.obj (or mesh=X.obj "
                                 "with configs/texture.yaml)")
        path = resolve_path(cfg.path)
        asset = load_mesh(path)
        self.source_path = Path(path)
        self.original = asset  # the file's own frame: exported unchanged in texture-only mode
        scene, self.transform = normalize(asset, cfg.radius)
        welded, index = weld(scene.vertices)
        self.register_buffer("base", welded, persistent=False)
        self.register_buffer("faces", index[asset.faces], persistent=False)  # welded faces
        self.register_buffer("split_index", index, persistent=False)  # file vertex -> welded vertex
        self.offset = nn.Parameter(torch.zeros_like(welded), requires_grad=cfg.optimize_geometry)
        self._uv_faces: Optional[Tensor] = None
        self._uvs: Optional[Tensor] = None
        if cfg.texture == "uv":
            self._setup_uvs(asset)
            self.texture = UVTexture(cfg.texture_size, cfg.texture_levels)  # starts grey (sigmoid(0) = 0.5)
        else:
            self.texture = FieldTexture.from_config(1.0, cfg)
        self._surface_cache: Optional[tuple] = None

    def _setup_uvs(self, asset) -> None:
        """UVs on the file's vertices (kept) or from xatlas on the welded mesh (split at seams)."""
        if asset.uvs is not None and self.cfg.uv == "keep":
            self._uvs, self._uv_faces = asset.uvs.float(), asset.faces.clone()
            self._uv_vertex = torch.arange(asset.vertices.shape[0])  # uv vertex -> file vertex
            return
        from dreamcore.meshes.uv import unwrap

        file_welded, file_index = weld(asset.vertices)
        _, faces_uv, uvs, vmapping = unwrap(file_welded.numpy(), file_index[asset.faces].numpy(),
                                            resolution=self.cfg.texture_size)
        # uv vertex k sits at welded vertex vmapping[k]; keep one file vertex per welded position
        first_file = torch.full((file_welded.shape[0],), -1, dtype=torch.int64)
        first_file[file_index.flip(0)] = torch.arange(asset.vertices.shape[0] - 1, -1, -1)
        self._uvs = torch.from_numpy(uvs).float()
        self._uv_faces = torch.from_numpy(faces_uv).long()
        self._uv_vertex = first_file[torch.from_numpy(vmapping)]

    # -- the renderer's contract ---------------------------------------------------------------------------------
    def vertices(self) -> Tensor:
        return self.base + self.offset if self.cfg.optimize_geometry else self.base

    def surface(self) -> Surface:
        if not self.cfg.optimize_geometry:  # fixed geometry: one topology for the whole run
            if self._surface_cache is None or self._surface_cache[0].device != self.base.device:
                self._surface_cache = (self.base, Surface.of(self.base, self.faces))
            return self._surface_cache[1]
        if self._surface_cache is None or self._surface_cache[0].device != self.base.device:
            self._surface_cache = (self.base, Surface.of(self.base, self.faces))
        return Surface(self.vertices(), self.faces, self._surface_cache[1].topology)

    def albedo(self, points: Tensor, face_id: Optional[Tensor], bary: Optional[Tensor]) -> Tensor:
        """[K, 3] base colour at surface points (face ids and barycentrics for a UV texture)."""
        if isinstance(self.texture, FieldTexture):
            return self.texture(points)
        if face_id is None or bary is None:
            raise DreamcoreError("a UV-textured mesh is coloured through its faces, not at free points")
        uvs = self._uvs.to(points.device)
        uv = interpolate_at(uvs, self._uv_faces.to(points.device), face_id, bary.to(uvs.dtype))
        return self.texture(uv)

    def regularizers(self, names=("laplacian", "normal_consistency")) -> dict[str, Tensor]:
        surf = self.surface()
        terms = {"laplacian": lambda: laplacian_loss(surf.vertices, surf.faces),
                 "normal_consistency": lambda: normal_consistency_loss(surf.vertices, surf.faces, surf.topology)}
        return {k: terms[k]() for k in names if k in terms}

    # -- training hooks --------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        groups = []
        if self.cfg.optimize_geometry:
            groups.append({"params": [self.offset], "lr_scale": self.cfg.offset_lr_scale, "name": "offset"})
        if isinstance(self.texture, FieldTexture):
            groups += self.texture.parameter_groups(self.cfg.grid_lr_scale, self.cfg.mlp_lr_scale)
        else:
            groups.append({"params": list(self.texture.parameters()), "lr_scale": self.cfg.texture_lr_scale,
                           "name": "texture"})
        return groups

    def after_step(self, step: int, generator: torch.Generator, render_step: float) -> None:  # noqa: ARG002
        return None

    def init_from_system(self, source) -> dict:  # noqa: ARG002
        raise DreamcoreError("representation 'mesh' cannot start from an earlier run (init.from_run): it starts "
                             "from its own file (representation.path)")

    # -- export -------------------------------------------------------------------------------------------------------
    def uv_mesh(self, texture_size: int) -> Optional[tuple]:
        if self.cfg.texture != "uv":
            return None
        verts, faces, uvs, texture, _ = self.export_arrays(texture_size)
        return verts, faces, uvs, texture

    @torch.no_grad()
    def export_arrays(self, texture_size: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """(verts [V', 3], faces [F, 3], uvs [V', 2], texture [S, S, 3], in_original_frame) of a UV-textured
        mesh, the texture resampled to ``texture_size`` when given (bilinear, antialiased when shrinking).
        Fixed geometry: the file's own vertex values (bit for bit), in its own frame."""
        if self._uvs is None:
            raise DreamcoreError("export_arrays needs representation.texture=uv")
        file_vertex = self._uv_vertex
        if self.cfg.optimize_geometry:
            welded = self.vertices().detach().cpu()
            pos = self.transform.to_original(welded[self.split_index[file_vertex].cpu()].double()).float()
        else:
            pos = self.original.vertices[file_vertex]
        image = self.texture.image().detach().cpu()
        if texture_size and texture_size != image.shape[0]:
            image = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(texture_size, texture_size),
                                                    mode="bilinear", align_corners=False,
                                                    antialias=texture_size < image.shape[0])[0].permute(1, 2, 0)
        texture = image.clamp(0.0, 1.0).numpy()
        return pos.numpy(), self._uv_faces.numpy(), self._uvs.numpy(), texture, True

    def export_density(self, points: Tensor) -> Tensor:
        raise DreamcoreError("an explicit mesh has no density field; it is exported directly")
