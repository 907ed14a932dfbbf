"""A field being edited inside a region: a frozen source field and a trainable copy of it, blended by a soft 3D mask.

For points x of the scene, with m(x) ∈ [0, 1] the region's mask (:meth:`dreamcore.meshes.region.Region.mask`; m ≡ 1
without a region, so the whole field is editable)::

    σ(x) = m(x)·σ_e(x) + (1 − m(x))·σ_s(x),      c(x) = m(x)·c_e(x) + (1 − m(x))·c_s(x),

σ_e, c_e the edited field (trained; it starts as an exact copy of the source, so σ = σ_s at the first step) and
σ_s, c_s the frozen source. This is the localized editing of Vox-E (Sella et al. 2023, "Vox-E: Text-guided Voxel
Editing of 3D Objects": voxels labelled "keep" take the original density and colour) with a given soft region in
place of its attention-derived one, and the "blend the NeRF's field by a soft 3D mask" of
``../shared/reference/multiview-and-editing.md`` (§4.5, §4.7).

Why blend the fields and not the renders: a pixel is an integral along its ray. Where every sample of a ray has
m = 0 the blended field *is* the source's — m·σ_e + 1·σ_s is σ_s bit for bit — so the ray gets the same samples
(the occupancy grid is queried the same way, below), the same densities, the same early stop and the same colour:
outside the region's screen footprint the edit's render equals the source's exactly, however far the edited
field has moved. Blending two *renders* by a 2D mask cannot do that: a pixel whose ray passes in front of or
behind the region sees both, so any 2D mask either leaks the edit into the source's pixels or cuts the edit off
at the region's silhouette, and the depth order between edited and kept parts is lost (an edited part would show
through kept geometry in front of it). In 3D the volume rendering composes the two by depth on its own.

What the volume renderer asks of a field, answered here:

* ``forward(points) -> (σ, albedo)``: the blend above; the source is evaluated only where m < 1 and the edited
  field only where m > 0 (a region's mask is asked only inside its bounds, :meth:`Region.bounds`; 0 elsewhere).
* ``occupancy.query(points)``: per point, the source's own grid where m = 0 (so that the source's samples are
  exactly the source's) and the edited field's grid where m > 0 (it starts as a copy of the source's grid and is
  updated with the blended density, :meth:`after_step`). The nerfacc backend marches a whole grid instead: the
  source's cells, or-ed with the edited grid's cells that meet the region's bounds (exact except on rays through
  those cells).
* ``density``, ``normals`` (central differences of the blended density), ``bound``, ``color_channels``,
  :meth:`export_density` (marching cubes, with the same occupancy query).

Checkpoints hold the edited field only (``edited.*``, its occupancy grid included); the source is restored from
its own run folder (the edit system's :meth:`~dreamcore.system.System.attach_source`). Parameter groups are the
edited field's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from dreamcore.errors import DreamcoreError
from dreamcore.meshes.region import Region
from dreamcore.precision import no_autocast
from dreamcore.representations.base import Representation


def keep_out_of_state_dict(module: nn.Module, name: str) -> None:
    """Leave submodule ``module.<name>`` out of ``module``'s state dict: not saved, and taken as it is on loading
    (its entries are filled in from itself). For a frozen source that is restored from its own run folder, never
    from the checkpoints of the run that uses it."""
    def drop(mod: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:  # noqa: ARG001
        for key in [k for k in state_dict if k.startswith(f"{prefix}{name}.")]:
            del state_dict[key]

    def fill(mod: nn.Module, state_dict: dict, prefix: str, *args) -> None:  # noqa: ARG001
        for key, value in getattr(mod, name).state_dict(prefix=f"{prefix}{name}.").items():
            state_dict.setdefault(key, value)

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_pre_hook(fill)


def difference_normals(density, points: Tensor, eps: float) -> Tensor:
    """Outward unit normals −∇σ/‖∇σ‖ [N, 3] by central differences of step ``eps``."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
    shifted = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1).reshape(-1, 3)
    s = density(shifted).reshape(-1, 2, 3)
    grad = (s[:, 0] - s[:, 1]) / (2 * eps)
    return -grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class BlendedField(Representation):
    """The edited field ``edited`` (trainable, of the source's kind) blended with the frozen ``source`` by
    ``region``'s mask (None: the edited field alone). Both must be volume fields with an occupancy grid and a
    ``cfg`` of the NeRF field's occupancy settings (:class:`~dreamcore.representations.nerf.NeRFField`)."""

    def __init__(self, edited: Representation, source: Representation, region: Optional[Region]) -> None:
        super().__init__()
        if type(edited) is not type(source):
            raise DreamcoreError(f"a blended field needs two fields of one kind, got '{edited.kind}' (edited) and "
                                 f"'{source.kind}' (source)")
        self.edited = edited
        self.source = source.requires_grad_(False).eval()
        keep_out_of_state_dict(self, "source")
        self.region = region
        self.bound = edited.bound
        self.color_channels = edited.color_channels
        lo, hi = region.bounds() if region is not None else (torch.zeros(3), torch.zeros(3))
        self.register_buffer("region_lo", lo.detach().float().reshape(3), persistent=False)
        self.register_buffer("region_hi", hi.detach().float().reshape(3), persistent=False)
        self.occupancy = BlendedOccupancy(self)

    @property
    def kind(self) -> str:
        return f"{self.edited.kind} (edited)"

    def train(self, mode: bool = True) -> "BlendedField":
        super().train(mode)
        self.source.eval()  # frozen, always
        return self

    # -- the blend -----------------------------------------------------------------------------------------------
    def weight(self, points: Tensor) -> Tensor:
        """m(x) [N] ∈ [0, 1]: the region's mask (1 everywhere without a region), exactly 0 outside its bounds."""
        n = points.shape[0]
        if self.region is None:
            return points.new_ones(n)
        m = points.new_zeros(n)
        near = ((points >= self.region_lo) & (points <= self.region_hi)).all(dim=-1).nonzero(as_tuple=True)[0]
        if near.numel():
            m[near] = self.region.mask(points[near]).to(m.dtype)
        return m

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [N, 3] → (σ [N], albedo [N, C]) of the blend (module docstring)."""
        if self.region is None:
            return self.edited(points)
        m = self.weight(points)
        sigma = points.new_zeros(points.shape[0])
        albedo = points.new_zeros(points.shape[0], self.color_channels)
        kept = (m < 1).nonzero(as_tuple=True)[0]
        if kept.numel():  # (1 − 0)·σ_s is σ_s exactly: outside the region the blend is the source, bit for bit
            s, a = self.source(points[kept])
            w = 1.0 - m[kept]
            sigma = sigma.index_put((kept,), w * s)
            albedo = albedo.index_put((kept,), w[:, None] * a)
        edited = (m > 0).nonzero(as_tuple=True)[0]
        if edited.numel():
            s, a = self.edited(points[edited])
            w = m[edited]
            sigma = sigma.index_put((edited,), w * s, accumulate=True)
            albedo = albedo.index_put((edited,), w[:, None] * a, accumulate=True)
        return sigma, albedo

    def density(self, points: Tensor) -> Tensor:
        return self.forward(points)[0]

    def normals(self, points: Tensor) -> Tensor:
        """[N, 3] outward unit normals of the blended density (central differences, the edited field's
        ``normal_eps``)."""
        with no_autocast(points.device.type):  # differences of reduced-precision densities would be noise
            return difference_normals(self.density, points, self.edited.cfg.normal_eps)

    # -- training hooks ------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """The edited field's groups: the source is frozen."""
        return self.edited.parameter_groups()

    def after_step(self, step: int, generator: torch.Generator, render_step: float = 0.0) -> None:
        """The edited field's occupancy grid follows the *blended* density, on the field's own schedule (its
        ``occupancy_*`` settings); without a region the blend is the edited field and it updates itself."""
        if self.region is None:
            self.edited.after_step(step, generator, render_step)
            return
        c = self.edited.cfg
        if step >= c.occupancy_warmup and step % c.occupancy_update_every == 0:
            self.edited.occupancy.update(self.density, generator, c.occupancy_decay,
                                         c.occupancy_threshold / render_step, c.occupancy_dilation,
                                         c.occupancy_empty_fraction)

    def export_density(self, points: Tensor) -> Tensor:
        """The blended density for mesh extraction, zero where the occupancy query says empty (as the field's own
        export does, so that outside the region it is the source's export density)."""
        occupied = self.occupancy.query(points)
        out = points.new_zeros(points.shape[0])
        if bool(occupied.any()):
            out[occupied] = self.density(points[occupied])
        return out


class BlendedOccupancy:
    """``field.occupancy`` of a :class:`BlendedField`: what the volume renderer marches with (module docstring).
    Not a module: the grids are the source's and the edited field's own (checkpointed with the edited field)."""

    def __init__(self, field: BlendedField) -> None:
        self.field = field

    @property
    def resolution(self) -> int:
        return self.field.edited.occupancy.resolution

    @property
    def bound(self) -> float:
        return self.field.edited.occupancy.bound

    def query(self, points: Tensor) -> Tensor:
        """[N, 3] → [N] bool: the source's grid where m = 0, the edited field's where m > 0."""
        f = self.field
        own = f.edited.occupancy.query(points)
        if f.region is None:
            return own
        return torch.where(f.weight(points) > 0, own, f.source.occupancy.query(points))

    def occupied_box(self) -> Optional[tuple[Tensor, Tensor]]:
        """A box around every point :meth:`query` can accept: the union of the two grids' boxes."""
        f = self.field
        boxes = [b for b in (f.edited.occupancy.occupied_box(),
                             None if f.region is None else f.source.occupancy.occupied_box()) if b is not None]
        if not boxes:
            return None
        return (torch.stack([b[0] for b in boxes]).amin(0), torch.stack([b[1] for b in boxes]).amax(0))

    @property
    def occupied(self) -> Tensor:
        """The whole grid [R, R, R] (the nerfacc backend's): the source's cells, or-ed with the edited grid's
        cells that meet the region's bounds."""
        f = self.field
        own = f.edited.occupancy.occupied
        if f.region is None:
            return own
        r, b = self.resolution, self.bound
        edges = torch.linspace(-b, b, r + 1, device=own.device)
        lo, hi = f.region_lo.to(own.device), f.region_hi.to(own.device)
        meets = [(edges[1:] >= lo[a]) & (edges[:-1] <= hi[a]) for a in range(3)]  # per axis, cells meeting bounds
        near = meets[0][:, None, None] & meets[1][None, :, None] & meets[2][None, None, :]
        return f.source.occupancy.occupied | (own & near)
