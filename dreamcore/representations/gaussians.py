"""3D Gaussians (Kerbl et al. 2023, "3D Gaussian Splatting for Real-Time Radiance Field Rendering").

Each Gaussian i has a mean μ_i, a covariance Σ_i = R_i S_i S_iᵀ R_iᵀ (S = diag(exp(log_scale)), R from the
unit quaternion q = (w, x, y, z)), an opacity o_i = sigmoid(logit) and a view-dependent colour from real
spherical harmonics of degree ≤ ``sh_degree``: c(d) = clamp(Σ_lm k_lm Y_lm(d) + ½, 0, 1), DC coefficient
first (k_00 = ``sh_dc``, the rest in ``sh_rest``, 3DGS's order and constants). The active degree grows by one
every ``sh_degree_every`` steps (3DGS uses 1000).

Initialization: random points in a ball, points on a mesh / in a point-cloud file, or from an earlier run's
system (``init.from_run``): points where its ``density`` is high, coloured by its ``surface_color``.
The parameters keep their identity when the number of Gaussians changes (``param.data`` is replaced), so the
optimizer's groups stay valid; :mod:`dreamcore.representations.densify` edits the Adam moments to match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.registry import register
from dreamcore.representations.base import Representation
from dreamcore.representations.gaussian_shape import covariance, quat_to_rotmat  # noqa: F401 (re-exported)
from dreamcore.schedule import Scheduled, step_count


SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)

PARAMETER_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")


def _sched(v: float):
    return field(default_factory=lambda: Scheduled.constant(v))


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """DC coefficient whose colour is ``rgb``: c = C0·k + ½."""
    return (rgb - 0.5) / SH_C0


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Σ_lm k_lm Y_lm(d) for coefficients [..., (degree+1)², 3] and unit directions [..., 3] → [..., 3]."""
    out = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return out
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + SH_C2[0] * xy * coeffs[..., 4, :] + SH_C2[1] * yz * coeffs[..., 5, :]
           + SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :] + SH_C2[3] * xz * coeffs[..., 7, :]
           + SH_C2[4] * (xx - yy) * coeffs[..., 8, :])
    if degree < 3:
        return out
    return (out + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :] + SH_C3[1] * xy * z * coeffs[..., 10, :]
            + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
            + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :] + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
            + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :])


@register("representation", "gaussians")
class Gaussians(Representation):
    @dataclass
    class Config(ComponentConfig):
        bound: float = 1.0  # scene box half-size (mesh export grid; points are kept inside it)
        sh_degree: int = 0  # maximum spherical-harmonic degree (0..3)
        sh_degree_every: int = step_count(1000)  # steps per added SH degree
        init: Literal["sphere", "file"] = "sphere"  # init.from_run=RUN_DIR takes precedence
        init_points: int = 4096
        init_radius: float = 0.6  # ball radius of random initial points
        init_file: str = ""  # mesh (area-weighted surface samples) or point cloud, in the scene frame
        init_file_in_reference_frame: bool = True  # map init_file through the prior's scene transform
        init_scale: float = 0.0  # initial isotropic scale; 0 = mean distance to the 3 nearest neighbours
        init_opacity: float = 0.1
        init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)
        init_density_threshold: float = 0.0  # from_run: keep points with density above this (0 = export.isosurface)
        # learning rates (absolute; the optimizer's lr multiplies them, set optimizer.lr: 1 to read them as is)
        lr_means: Scheduled = _sched(1.6e-4)
        lr_scales: Scheduled = _sched(5e-3)
        lr_quats: Scheduled = _sched(1e-3)
        lr_opacity: Scheduled = _sched(5e-2)
        lr_sh_dc: Scheduled = _sched(2.5e-3)
        lr_sh_rest: Scheduled = _sched(1.25e-4)
        # Brightness-Equalized Generation (GCS-BEG, LMozart/ECCV2024-GCS-BEG@a3bd9ae train.py): while
        # beg_start < k < beg_stop (k the 1-based iteration), if the beg_quantile-quantile brightness exceeds
        # beg_threshold, every SH coefficient is multiplied by beg_rate (colours contract toward grey ½)
        brightness_equalize: bool = False
        beg_start: int = step_count(1000)
        beg_stop: int = step_count(4500)
        beg_quantile: float = 0.85
        beg_threshold: float = 0.9  # lgt_thresh
        beg_rate: float = 0.8  # reset_rate

    def __init__(self, cfg: "Gaussians.Config") -> None:
        super().__init__()
        if not 0 <= cfg.sh_degree <= 3:
            raise DreamcoreError(f"representation.sh_degree must be 0..3, got {cfg.sh_degree}")
        if cfg.init_points < 1:
            raise DreamcoreError(f"representation.init_points must be ≥ 1, got {cfg.init_points}")
        self.cfg = cfg
        self.bound = cfg.bound
        k = (cfg.sh_degree + 1) ** 2
        n = cfg.init_points
        self.means = nn.Parameter(torch.zeros(n, 3))
        self.log_scales = nn.Parameter(torch.zeros(n, 3))
        self.quats = nn.Parameter(torch.zeros(n, 4))
        self.opacity_logits = nn.Parameter(torch.zeros(n))
        self.sh_dc = nn.Parameter(torch.zeros(n, 1, 3))
        self.sh_rest = nn.Parameter(torch.zeros(n, k - 1, 3))
        self.register_buffer("active_sh_degree", torch.zeros((), dtype=torch.int64))
        self._sh_degree: Optional[int] = 0  # the buffer's value on the host (None: read it once, after a load)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_sh_degree", None))
        # densification statistics (checkpointed, so a resumed run densifies exactly as an uninterrupted one)
        self.register_buffer("grad_accum", torch.zeros(n))
        self.register_buffer("grad_count", torch.zeros(n))
        self.register_buffer("max_radii", torch.zeros(n))
        g = torch.Generator().manual_seed(0)
        u = torch.randn(n, 3, generator=g)
        r = cfg.init_radius * torch.rand(n, 1, generator=g) ** (1 / 3)
        self.set_points(u / u.norm(dim=-1, keepdim=True).clamp_min(1e-9) * r,
                        torch.tensor(cfg.init_color).expand(n, 3))

    # -- state ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in PARAMETER_NAMES}

    @torch.no_grad()
    def set_points(self, points: Tensor, colors: Tensor, scales: Optional[Tensor] = None) -> None:
        """Replace all Gaussians by isotropic ones at ``points`` [N, 3] with ``colors`` [N, 3] (SH rest zero),
        scale ``scales`` [N] (default: ``init_scale`` or the mean distance to the 3 nearest neighbours)."""
        n = points.shape[0]
        if n == 0:
            raise DreamcoreError("Gaussian initialization produced no points")
        if scales is None:
            scales = (torch.full((n,), self.cfg.init_scale) if self.cfg.init_scale > 0
                      else nearest_neighbour_scale(points))
        dev = self.means.device
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        values = {
            "means": points.float(),
            "log_scales": torch.log(scales.float().clamp_min(1e-7))[:, None].expand(n, 3).clone(),
            "quats": quats,
            "opacity_logits": torch.full((n,), math.log(self.cfg.init_opacity / (1 - self.cfg.init_opacity))),
            "sh_dc": rgb_to_sh_dc(colors.float())[:, None, :].clone(),
            "sh_rest": torch.zeros(n, self.sh_rest.shape[1], 3),
        }
        for name, v in values.items():
            getattr(self, name).data = v.to(dev)
            getattr(self, name).grad = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the densification statistics, sized to the current number of Gaussians."""
        n, dev = len(self), self.means.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.grad_count = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        """Checkpoints hold however many Gaussians the run had: take the stored shapes before loading."""
        for name in PARAMETER_NAMES:
            key = prefix + name
            if key in state_dict:
                p = getattr(self, name)
                if p.shape != state_dict[key].shape:
                    p.data = torch.empty(state_dict[key].shape, dtype=p.dtype, device=p.device)
                    p.grad = None
        for name in ("grad_accum", "grad_count", "max_radii"):
            key = prefix + name
            if key in state_dict and getattr(self, name).shape != state_dict[key].shape:
                setattr(self, name, torch.empty(state_dict[key].shape, device=self.means.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- activated quantities --------------------------------------------------------------------------------------
    @property
    def scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacity(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def sh(self) -> Tensor:
        """[N, (d+1)², 3] coefficients, DC first."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def colors(self, view_dirs: Optional[Tensor] = None) -> Tensor:
        """Colours [..., N, 3] for unit directions camera → Gaussian [..., N, 3] (None: the DC colour alone)."""
        if self._sh_degree is None:
            self._sh_degree = int(self.active_sh_degree)
        degree = self._sh_degree if view_dirs is not None else 0
        if degree == 0:
            c = SH_C0 * self.sh_dc[:, 0, :]
            if view_dirs is not None:
                c = c.expand(*view_dirs.shape[:-1], 3)
        else:
            k = (degree + 1) ** 2
            c = eval_sh(degree, self.sh()[:, :k], view_dirs)
        return (c + 0.5).clamp(0.0, 1.0)

    def albedo(self) -> Tensor:
        return self.colors(None)

    def covariances(self) -> Tensor:
        return covariance(self.log_scales, self.quats)

    # -- training hooks -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        return [{"params": [p], "lr_scale": self.lr_scales(0)[f"gaussians.{name}"], "name": f"gaussians.{name}"}
                for name, p in self.parameters_by_name().items()]

    def splat_parameters(self) -> dict[str, Tensor]:
        return self.parameters_by_name()

    def lr_scales(self, step: int) -> dict[str, float]:
        c = self.cfg
        lrs = {"means": c.lr_means, "log_scales": c.lr_scales, "quats": c.lr_quats, "opacity_logits": c.lr_opacity,
               "sh_dc": c.lr_sh_dc, "sh_rest": c.lr_sh_rest}
        return {f"gaussians.{k}": float(v(step)) for k, v in lrs.items()}

    def after_step(self, step: int, generator: torch.Generator, render_step: float = 0.0,  # noqa: ARG002
                   render=None) -> None:
        every = max(self.cfg.sh_degree_every, 1)
        self.set_active_sh_degree(min(self.cfg.sh_degree, (step + 1) // every))
        c = self.cfg
        if c.brightness_equalize and c.beg_start < step + 1 < c.beg_stop:
            level = (render_brightness(render.rgb, render.alpha, c.beg_quantile) if render is not None
                     else self.brightness_level(c.beg_quantile))
            self.equalize_brightness(level)

    @torch.no_grad()
    def brightness_level(self, q: float) -> Tensor:
        """BEG's statistic from the Gaussians themselves (when no render is passed to :meth:`after_step`): the
        opacity-weighted q-quantile of the channel-mean DC colour, a stand-in for the quantile over rendered
        pixels (renders are mostly covered by opaque Gaussians). A 0-d tensor; nothing is read to the host."""
        bright, order = self.albedo().mean(-1).sort()
        w = self.opacity.detach()[order].cumsum(0)
        k = torch.searchsorted(w, (q * w[-1]).reshape(1)).clamp_max(len(bright) - 1)
        return bright[k][0]

    @torch.no_grad()
    def equalize_brightness(self, level: Tensor) -> None:
        """Multiply all SH coefficients by ``beg_rate`` if ``level`` > ``beg_threshold`` (decided on the device)."""
        scale = torch.where(level > self.cfg.beg_threshold, self.cfg.beg_rate, 1.0).to(self.sh_dc.dtype)
        self.sh_dc.mul_(scale)
        self.sh_rest.mul_(scale)

    def set_active_sh_degree(self, degree: int) -> None:
        """The SH bands in use (the buffer is checkpointed; its host copy spares a read per render)."""
        self._sh_degree = int(degree)
        self.active_sh_degree.fill_(self._sh_degree)

    # -- export ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export_density(self, points: Tensor, chunk: int = 1 << 22) -> Tensor:
        """D(x) = Σ_i o_i exp(−½ (x − μ_i)ᵀ Σ_i⁻¹ (x − μ_i)) [N] (kernels cut at 3σ), via a coarse cell grid."""
        from dreamcore.representations.gaussian_field import kernel_sum

        return kernel_sum(self, points, None, chunk)[0]

    @torch.no_grad()
    def export_color(self, points: Tensor, normals: Optional[Tensor] = None, offset: float = 0.05) -> Tensor:
        """Base colour [N, 3] at surface ``points``: with ``normals``, what a short ray cast inward from
        ``offset`` outside sees (un-premultiplied); elsewhere the opacity·kernel-weighted mean DC colour, or the
        nearest Gaussian's where no kernel reaches."""
        from dreamcore.representations.gaussian_field import kernel_sum, ray_composite

        albedo = self.albedo()
        out = points.new_zeros(points.shape[0], 3)
        todo = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
        if normals is not None:
            seen, acc = ray_composite(self, points, normals, albedo, offset)
            hit = acc > 0.05
            out[hit] = seen[hit] / acc[hit, None]
            todo = ~hit
        if bool(todo.any()):
            dens, rgb = kernel_sum(self, points[todo], albedo)
            fill = rgb / dens.clamp_min(1e-8)[:, None]
            far = dens < 1e-4
            if bool(far.any()):
                idx = torch.cdist(points[todo][far], self.means.detach()).argmin(dim=1)
                fill[far] = albedo[idx]
            out[todo] = fill
        return out.clamp(0.0, 1.0)

    # -- initialization --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_file(self, path: str, transform=None, generator: Optional[torch.Generator] = None) -> None:
        """Points sampled on a mesh's surface (area-weighted, vertex/texture colours) or a point cloud's points."""
        points, colors = sample_file(path, self.cfg.init_points, generator)
        if transform is not None and self.cfg.init_file_in_reference_frame:
            points = transform.to_scene(points)
        self.set_points(points, colors)

    @torch.no_grad()
    def copy_from(self, other: "Gaussians") -> None:
        """Continue another run's Gaussians as they are (a Gaussians → Gaussians stage: StableDreamer's latent
        stage): every parameter copied; SH bands beyond this run's ``sh_degree`` dropped, missing ones zero."""
        dev = self.means.device
        for name in PARAMETER_NAMES:
            src = getattr(other, name).detach().float()
            if name == "sh_rest":
                n, k = src.shape[0], self.sh_rest.shape[1]
                rest = torch.zeros(n, k, 3)
                m = min(k, src.shape[1])
                rest[:, :m] = src[:, :m].cpu()
                src = rest
            getattr(self, name).data = src.clone().to(dev)
            getattr(self, name).grad = None
        self.reset_stats()

    @torch.no_grad()
    def init_from_density(self, system, threshold: float, generator: torch.Generator, resolution: int = 64) -> None:
        """Points where an earlier run's ``density`` exceeds ``threshold`` (jittered grid cells, up to
        ``init_points``), coloured by its ``surface_color`` with normals from the density gradient."""
        b = self.bound
        axis = torch.linspace(-b, b, resolution)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        dens = torch.cat([system.density(grid[i:i + 65536]) for i in range(0, len(grid), 65536)])
        inside = grid[dens > threshold]
        if len(inside) == 0:
            raise DreamcoreError(f"init.from_run: the earlier run's density never exceeds {threshold}: nothing to "
                                 "start from (set representation.init_density_threshold lower)")
        h = 2 * b / (resolution - 1)
        pick = torch.randint(len(inside), (self.cfg.init_points,), generator=generator)
        pts = inside[pick] + (torch.rand(len(pick), 3, generator=generator) - 0.5) * h
        normals = density_normals(system.density, pts, h)
        colors = torch.cat([system.surface_color(pts[i:i + 8192], normals[i:i + 8192])
                            for i in range(0, len(pts), 8192)])
        self.set_points(pts, colors.cpu().float(), torch.full((len(pts),), 0.5 * h))


def render_brightness(rgb: Tensor, alpha: Optional[Tensor], q: float = 0.85, min_alpha: float = 0.5) -> Tensor:
    """BEG's statistic from renders [B, H, W, 3] (or [B, N, 1, 3]): per view the q-quantile of the per-pixel channel
    mean over the object's pixels, then the q-quantile across views (a 0-d tensor). The official code takes the
    non-zero pixels of its renders; renders here are composited over a background, so the object's pixels are those
    with ``alpha`` > ``min_alpha`` (all non-zero pixels when ``alpha`` is None)."""
    bright = rgb.detach().float().mean(-1).flatten(1)
    keep = bright > 0 if alpha is None else alpha.detach().float().flatten(1) > min_alpha
    per_view = torch.nanquantile(torch.where(keep, bright, torch.full_like(bright, float("nan"))), q, dim=1)
    return torch.nanquantile(per_view, q)


def density_normals(density, points: Tensor, eps: float) -> Tensor:
    """Outward unit normals −∇D/‖∇D‖ by central differences [N, 3]."""
    offs = torch.eye(3) * eps
    pts = torch.cat([points[:, None] + offs, points[:, None] - offs], 1).reshape(-1, 3)
    d = torch.cat([density(pts[i:i + 65536]) for i in range(0, len(pts), 65536)]).reshape(-1, 2, 3).cpu()
    grad = d[:, 0] - d[:, 1]
    return -grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def nearest_neighbour_scale(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """Mean distance to the ``k`` nearest other points [N] (3DGS's initial scale), at least 1e-4."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01)
    k = min(k, n - 1)
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(points[i:i + chunk], points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(dim=1))
    return torch.cat(out).clamp_min(1e-4)


def sample_file(path: str, n: int, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """``n`` points [n, 3] and colours [n, 3] from a mesh (GLB/glTF/OBJ/PLY/STL with faces, sampled by area)
    or a PLY point cloud (a random subset of its points; grey where it has no colours)."""
    from pathlib import Path

    import numpy as np

    from dreamcore.meshes.parts import MeshFileError

    p = Path(path)
    if not p.is_file():
        raise DreamcoreError(f"representation.init_file={path}: no such file")
    if p.suffix.lower() == ".ply":
        from dreamcore.meshes.ply import read_points

        try:
            points, cols, _, face, _ = read_points(p)
        except MeshFileError as e:
            raise DreamcoreError(f"representation.init_file={path}: {e.problem}") from None
        if not any(len(face.get(k, [])) for k in ("vertex_indices", "vertex_index")):
            if len(points) == 0 or not np.isfinite(points).all():
                raise DreamcoreError(f"representation.init_file={path}: the point cloud is empty or holds NaN/Inf")
            pts = torch.as_tensor(points, dtype=torch.float32)
            colors = (torch.as_tensor(cols, dtype=torch.float32) if cols is not None
                      else torch.full((len(pts), 3), 0.5))
            pick = torch.randint(len(pts), (n,), generator=generator) if len(pts) > n else torch.arange(len(pts))
            return pts[pick], colors[pick]
    from dreamcore.meshes.io import load_mesh
    from dreamcore.meshes.render import surface_albedo

    try:
        asset = load_mesh(p)
    except MeshFileError as e:
        raise DreamcoreError(f"representation.init_file={path}: {e.problem}") from None
    v, f = asset.vertices, asset.faces
    tri = v[f]
    area = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    fid = torch.multinomial(area / area.sum(), n, replacement=True, generator=generator)
    r = torch.rand(n, 2, generator=generator)
    s = r[:, :1].sqrt()
    bary = torch.cat([1 - s, s * (1 - r[:, 1:]), s * r[:, 1:]], dim=-1)
    pts = (tri[fid] * bary[..., None]).sum(1)
    colors = surface_albedo(asset, fid, bary)
    return pts, colors.reshape(n, 3).float()
