"""The volume renderer's ``nerfacc`` backend (``renderer.backend: nerfacc``): nerfacc's CUDA occupancy-grid
traversal and packed compositing, with the maths of the torch reference in :mod:`dreamcore.renderers.volume`.

Written against nerfacc 0.5.3 (``nerfacc/estimators/occ_grid.py``, ``nerfacc/volrend.py``,
``nerfacc/cuda/csrc/grid.cu``). ``import nerfacc`` is pure Python and works anywhere; its kernels are a CUDA
extension that loads (or JIT-builds, the first time, with ``nvcc``) on first use, so :func:`nerfacc_available`
checks CUDA, the import and the extension.

What is the same as the torch path, and how:

* occupancy: one ``nerfacc.OccGridEstimator`` per dreamcore :class:`OccupancyGrid` (1 level, the grid's
  resolution, roi aabb [−b, b]³). Its ``binaries`` are overwritten from dreamcore's ``occupied`` before every
  render (one [R³] bool copy on the device); dreamcore's grid is the one that is updated and checkpointed, and
  nerfacc's own ``occs``/``_update`` are never used. Both grids number cells the same way (see
  :func:`nerfacc_binaries`).
* samples: nerfacc marches from each ray's near plane in steps of ``render_step_size`` and keeps the samples
  whose midpoints fall inside an occupied cell and before the far plane. Passing the near plane
  ``t_near + (u − ½)·step`` (``t_near`` = box entry clamped at 0, ``u`` the ray's jitter) puts the midpoints at
  ``t_near + (k + u)·step``: the torch path's lattice. ``u`` = ½ without a generator; with one, ``u`` is one
  draw per ray of the run's generator, the same draw (and the same count of draws) as the torch path makes.
  nerfacc's own ``stratified=True`` is never used: it jitters with ``torch.rand_like`` from the global torch
  generator (occ_grid.py, ``sampling``), which would make renders depend on global state.
* early stop: nerfacc's ``early_stop_eps`` = ``min_transmittance`` (samples with T_i ≥ eps are kept; the torch
  path keeps T_i > eps, the same up to ties), and samples of zero optical depth are dropped after the field
  is evaluated, as the torch path drops them (they carry no weight; dropping them keeps their gradients out).
  ``alpha_thre`` stays 0 (nerfacc clamps it to the mean of its own, unused, ``occs``).
* compositing: ``nerfacc.render_weight_from_density`` and ``nerfacc.accumulate_along_rays`` (packed by ray),
  then the torch path's shading (albedo / lambertian / textureless with ``ambient``), normals and
  orientation term. ``nerfacc.rendering`` is not used: it normalizes depth by opacity and takes 3 channels only.

Known differences (all well under a step's quadrature error): nerfacc accumulates ``t += step`` in float32 (a
midpoint drifts by up to ~k·1e-7 after k steps; the torch path computes each one directly), its transmittance
scan is float32 (the torch path's is float64), and a sample within that drift of a cell face or the far plane
may fall on the other side.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Optional

import torch
from torch import Tensor

from dreamcore.cameras import Lighting
from dreamcore.errors import DreamcoreError
from dreamcore.renderers.shading import weighted_normals

_INSTALL_HINT = ("pip install nerfacc (or pip install 'dreamcore[cuda]') on a machine with CUDA, "
                 "or set renderer.backend=torch (auto picks nerfacc only where it works)")


def _probe() -> Optional[str]:
    """Why the nerfacc backend cannot run here, or None when it can (uncached; see :func:`nerfacc_available`)."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    try:
        import nerfacc  # noqa: F401
    except Exception as e:  # noqa: BLE001  (an installed but broken package counts as missing)
        return f"the nerfacc package does not import ({type(e).__name__}: {e})"
    try:  # nerfacc loads its CUDA extension lazily; a JIT build happens here the first time
        from nerfacc.cuda._backend import _C
    except Exception as e:  # noqa: BLE001
        return f"nerfacc's CUDA extension did not load ({type(e).__name__}: {e})"
    if _C is None:
        return "nerfacc's CUDA extension did not load (no CUDA toolkit: nvcc is needed to build it)"
    return None


@functools.lru_cache(maxsize=None)
def nerfacc_unavailable_reason() -> Optional[str]:
    """Cached :func:`_probe`: None when nerfacc can render here, else what is missing."""
    return _probe()


def nerfacc_available() -> bool:
    """CUDA is there, ``import nerfacc`` works and its CUDA extension loads (the answer is cached; the first call
    on a CUDA machine may JIT-build nerfacc's extension, as nerfacc itself does on first use)."""
    return nerfacc_unavailable_reason() is None


def require_nerfacc() -> None:
    """Raise the user-facing error for ``renderer.backend=nerfacc`` where nerfacc cannot run."""
    reason = nerfacc_unavailable_reason()
    if reason is not None:
        raise DreamcoreError(f"renderer.backend=nerfacc needs CUDA and the nerfacc package, but {reason}: "
                             f"{_INSTALL_HINT}")


# -- the occupancy grid -----------------------------------------------------------------------------------------
def nerfacc_binaries(occupied: Tensor) -> Tensor:
    """dreamcore's ``OccupancyGrid.occupied`` [R, R, R] → nerfacc's ``OccGridEstimator.binaries`` [1, R, R, R].

    dreamcore: cell ``ijk = floor((p/b + 1)/2 · R)`` clamped to [0, R−1], stored at ``occupied[i, j, k]`` with i
    along x (flat index ``(i·R + j)·R + k``; ``OccupancyGrid.cell_index``). nerfacc 0.5.3, aabb
    ``[−b, −b, −b, b, b, b]``: the traversal's cell is ``floor((p − aabb_min)/(aabb_max − aabb_min) · R)``
    clamped (``setup_traversal`` in ``nerfacc/cuda/csrc/include/utils_grid.cuh``), looked up at flat index
    ``x·R_y·R_z + y·R_z + z + level·R³`` of ``binaries`` [levels, R_x, R_y, R_z] (``traverse_grids_kernel`` in
    ``nerfacc/cuda/csrc/grid.cu``; the same as ``nerfacc.grid._query``). (p/b + 1)/2 = (p + b)/(2b): the same
    cell, and the same x-major order, so level 0 is ``occupied`` itself, without a transpose."""
    if occupied.dim() != 3 or len(set(occupied.shape)) != 1:
        raise ValueError(f"expected a cubic [R, R, R] occupancy grid, got {tuple(occupied.shape)}")
    return occupied.to(torch.bool).reshape(1, *occupied.shape)


_ESTIMATORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def occupancy_estimator(grid):
    """The ``nerfacc.OccGridEstimator`` kept for dreamcore's OccupancyGrid ``grid`` (built on first use, rebuilt if
    the grid's resolution, bound or device changed), its ``binaries`` set from ``grid.occupied``."""
    import nerfacc

    occupied = grid.occupied
    r, b, device = int(grid.resolution), float(grid.bound), occupied.device
    est = _ESTIMATORS.get(grid)
    if (est is None or not isinstance(est, nerfacc.OccGridEstimator) or tuple(est.binaries.shape) != (1, r, r, r)
            or est.binaries.device != device or getattr(est, "_dreamcore_bound", None) != b):
        est = nerfacc.OccGridEstimator(roi_aabb=[-b, -b, -b, b, b, b], resolution=r, levels=1).to(device)
        est._dreamcore_bound = b
        _ESTIMATORS[grid] = est
    est.binaries.copy_(nerfacc_binaries(occupied))
    return est


# -- rendering --------------------------------------------------------------------------------------------------
def _ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry (clamped at 0) and exit distances of rays with [−bound, bound]³: the same arithmetic as
    :func:`dreamcore.renderers.volume.ray_aabb` (not imported: that module imports this one; a test checks
    that the two agree)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    return torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0), torch.maximum(t0, t1).amin(dim=-1)


def _jitter(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """One U[0, 1) per ray from the run's generator, drawn on the generator's device and placed like ``like``:
    for a CPU generator the numbers ``volume.march`` draws (``torch.rand(n, generator=g)``)."""
    return torch.rand(n, generator=generator, device=generator.device).to(like)


def sample_rays_nerfacc(field, o: Tensor, d: Tensor, generator: Optional[torch.Generator], step: float,
                        min_transmittance: float, max_distance: float = math.inf) -> tuple[Tensor, Tensor, Tensor]:
    """The samples the torch path's ``march`` + ``_drop_occluded`` give (before its τ > 0 filter), from nerfacc's
    estimator: (ray index [S] int64, t_start [S], t_end [S]), sorted by ray then distance."""
    t_near, t_far = _ray_box(o, d, field.bound)
    t_far = t_far.clamp(max=max_distance)
    if not bool((t_far > t_near).any()):  # no ray meets the box: the torch path draws no jitter either
        empty = o.new_zeros(0)
        return empty.long(), empty, empty
    near = t_near if generator is None else t_near + (_jitter(o.shape[0], generator, t_near) - 0.5) * step

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        t_mid = 0.5 * (t_starts + t_ends)
        pts = o[ray_indices] + d[ray_indices] * t_mid[:, None].to(o.dtype)
        return field.density(pts).float()

    estimator = occupancy_estimator(field.occupancy)
    ray_index, t_start, t_end = estimator.sampling(
        o.detach().float().contiguous(), d.detach().float().contiguous(),  # nerfacc's kernels read float32
        sigma_fn=sigma_fn if min_transmittance > 0 else None,
        near_plane=-1e10, t_min=near.float(), t_max=t_far.float(),  # per-ray planes (the scalars only clamp them)
        render_step_size=float(step), early_stop_eps=float(max(min_transmittance, 0.0)), alpha_thre=0.0,
        stratified=False, cone_angle=0.0,
    )
    return ray_index.long(), t_start.to(o.dtype), t_end.to(o.dtype)


def render_rays_nerfacc(field, o: Tensor, d: Tensor, light: Tensor, mode: str,
                        generator: Optional[torch.Generator], step: float, min_transmittance: float,
                        ambient: float, max_distance: float = math.inf, shade_min_weight: float = 0.0):
    """``VolumeRenderer._render_rays`` through nerfacc: (rgb [R, C], acc [R, 1], depth [R, 1], normal [R, 3],
    orientation [1]) for rays ``o``, ``d`` [R, 3], lights ``light`` [R, 3] and shading ``mode``."""
    import nerfacc

    n = o.shape[0]
    channels = getattr(field, "color_channels", 3)
    ray_index, t_start, t_end = sample_rays_nerfacc(field, o, d, generator, step, min_transmittance, max_distance)
    if ray_index.numel() == 0:
        return _nothing(o, n, channels)
    t_mid = 0.5 * (t_start + t_end)
    pts = o[ray_index] + d[ray_index] * t_mid[:, None]
    sigma, albedo = field(pts)
    keep = (sigma.detach() * (t_end - t_start)) > 0  # the torch path keeps only samples with τ > 0
    if not bool(keep.all()):
        ray_index, t_start, t_end, t_mid = ray_index[keep], t_start[keep], t_end[keep], t_mid[keep]
        pts, sigma, albedo = pts[keep], sigma[keep], albedo[keep]
        if ray_index.numel() == 0:
            return _nothing(o, n, channels)
    w, _, _ = nerfacc.render_weight_from_density(t_start, t_end, sigma, ray_indices=ray_index, n_rays=n)
    acc = nerfacc.accumulate_along_rays(w, None, ray_indices=ray_index, n_rays=n)
    depth = nerfacc.accumulate_along_rays(w, t_mid[:, None], ray_indices=ray_index, n_rays=n)
    orient = o.new_zeros(())
    if mode == "albedo":
        color = albedo
        normal = o.new_zeros(n, 3)
    else:
        nrm = weighted_normals(field, pts, w, shade_min_weight)
        shade = Lighting(mode, light, ambient).shade(nrm, ray_index)  # (light: one per ray)
        color = albedo * shade if mode == "lambertian" else shade.expand(-1, 3)
        normal = nerfacc.accumulate_along_rays(w, nrm, ray_indices=ray_index, n_rays=n)
        # DreamFusion's orientation loss, as the torch path: visible normals facing away from the camera
        orient = (w.detach() * (nrm * d[ray_index]).sum(-1).clamp_min(0.0) ** 2).sum()
    rgb = nerfacc.accumulate_along_rays(w, color, ray_indices=ray_index, n_rays=n)
    return rgb, acc, depth, normal, orient.reshape(1)


def _nothing(o: Tensor, n: int, channels: int):
    """What the torch path returns for rays that meet no sample."""
    z = o.new_zeros
    return z(n, channels), z(n, 1), z(n, 1), z(n, 3), z(1)
