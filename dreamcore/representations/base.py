"""The representation contract: what systems, renderers and exporters may ask of the optimizable 3D state.

A representation is an ``nn.Module`` that owns the scene's parameters (hash-grid field, Gaussians, DMTet, mesh).
It knows nothing of priors, guidance or the runner. :class:`Representation` lists the hooks the rest of the code
calls, each with the default that fits a representation which does not need it, so that no caller has to probe
for a method; :class:`SurfaceRepresentation` adds what a rasterized surface (mesh, DMTet) offers.

Add one::

    @register("representation", "my-field")
    class MyField(Representation):
        @dataclass
        class Config(ComponentConfig):
            bound: float = 1.0

        def __init__(self, cfg):
            super().__init__()
            self.cfg, self.bound = cfg, cfg.bound
            ...

        def parameter_groups(self):
            return [{"params": list(self.parameters()), "name": "my-field"}]

and give it what its renderer reads (a volume field: ``forward(points) -> (density, albedo)``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.asset import SceneTransform


class Representation(nn.Module):
    """Base of every representation. Subclasses implement :meth:`parameter_groups`; the rest has defaults."""

    bound: float = 1.0  # half-size of the scene box [-bound, bound]³ (export grids, initialization)
    color_channels: int = 3  # channels of the rendered colour (4: Latent-NeRF's latents)
    # the frame of a file the representation was loaded from (an explicit mesh): exports go back to it; None
    # when the scene is in the prior's frame
    transform: Optional[SceneTransform] = None
    decimate_on_export: bool = False  # its extracted surfaces are over-tessellated: export.target_faces applies

    @property
    def kind(self) -> str:
        """The registered name (``representation.name``), for messages."""
        return getattr(type(self), "registered_name", type(self).__name__)

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups: ``{"params": [...], "lr_scale": float, "name": str}`` (names key per-group
        learning-rate schedules, :meth:`lr_scales`)."""
        raise NotImplementedError

    def lr_scales(self, step: int) -> dict[str, float]:  # noqa: ARG002
        """Per-group learning-rate factors at ``step``, by group name, replacing the groups' ``lr_scale``
        (Gaussians' exponential position schedule); {} keeps every group's own."""
        return {}

    def after_step(self, step: int, generator: torch.Generator, render_step: float = 0.0) -> None:  # noqa: ARG002
        """After each optimizer step (occupancy-grid updates, SH degree); ``render_step`` is the renderer's
        step size where it has one."""
        return None

    def export_density(self, points: Tensor) -> Tensor:
        """Density [N] at ``points`` [N, 3] for marching cubes and for a later stage started from this run."""
        raise DreamcoreError(f"representation '{self.kind}' has no density field")

    def init_from_system(self, source) -> dict:
        """Start from an earlier run's restored system (``init.from_run``). By default only a run of the same
        kind and sizes can be continued (its state copied); representations that convert from other kinds
        (DMTet from a NeRF's density) override this. Returns a report (a dict) for ``metrics.json``."""
        src = source.representation
        if type(src) is not type(self):
            raise DreamcoreError(f"init.from_run: representation '{self.kind}' cannot start from a run with "
                                 f"representation '{src.kind}'")
        try:
            self.load_state_dict(src.state_dict())
        except RuntimeError as e:
            raise DreamcoreError(f"init.from_run: the earlier run's {self.kind} has other sizes than this config's "
                                 f"(keep representation.* equal): {e}") from None
        return {}

    def splat_parameters(self) -> Optional[dict[str, Tensor]]:
        """The 3D Gaussians' parameters in the 3DGS layout (``means``, ``log_scales``, ``quats``,
        ``opacity_logits``, ``sh_dc``, ``sh_rest``) for ``model.ply``; None for anything that is not Gaussians."""
        return None


class SurfaceRepresentation(Representation):
    """A representation that is a triangle surface (explicit mesh, DMTet): rasterized, regularized on its
    triangles, exported directly (no marching cubes)."""

    def surface(self):
        """The current :class:`~dreamcore.meshes.surface.Surface` (vertices with autograd, faces, topology)."""
        raise NotImplementedError

    def albedo(self, points: Tensor, face_id: Optional[Tensor], bary: Optional[Tensor]) -> Tensor:
        """Base colour [K, 3] at surface ``points`` (face ids and barycentrics for a UV texture)."""
        raise NotImplementedError

    def regularizers(self, names=("laplacian", "normal_consistency")) -> dict[str, Tensor]:
        """The mesh regularizers named in ``names`` that this surface has (others are left out)."""
        raise NotImplementedError

    def uv_mesh(self, texture_size: int) -> Optional[tuple]:
        """(verts, faces, uvs, texture [S, S, 3]) of a surface that carries its own UV texture, verts in its file's
        frame; None when its colour is a field to be baked into a new atlas at export."""
        return None
