"""The closed-form reference prior: the exact denoiser of renders of a given mesh (no weights needed).

Data: renders x_i = R(M, c_i) of a mesh M (pixel space, [−1, 1], render resolution). For the empirical
distribution Σ_i w_i δ(x − x_i) under x_t = α_t x + σ_t ε, the minimum-MSE denoiser is

    x̂_0(x_t) = Σ_i softmax_i( log w_i − ‖x_t − α_t x_i‖² / (2σ_t²) ) · x_i,     ε̂ = (x_t − α_t x̂_0) / σ_t.

* Camera-conditioned (``camera_conditioned: true``, the prompt's condition): the data points are the render at the
  query camera c and ``neighbors`` renders on a ring ``neighbor_sigma_deg`` away, weighted by a Gaussian kernel in
  angle. With ``neighbors: 0`` x̂_0 is the render at c, so ε̂ − ε = (α_t/σ_t)(x − x_c): SDS becomes a randomly
  weighted per-pixel reconstruction loss, and any subset of pixels is a valid input (its marginal's denoiser is
  the same formula on those pixels), which is what lets the NeRF train on random rays.
* Unconditioned (the negative/empty prompt, or ``camera_conditioned: false``): a bank of ``bank_views`` renders
  from random views, all at once, as a 2D model trained on random views would see them.
* View-dependent prompts (``camera_conditioned: false``): "front view" etc. restrict the bank to the views
  carrying that label, like a text-to-image model that learned what "front view" means.
* Shaded (``shaded: true``, a light-conditioned prior): the camera condition also carries the light the scene's
  view was shaded under (``Cameras.lighting``: albedo, lambertian or textureless, a direction, the ambient share,
  DreamFusion's random shading), and the camera-conditioned data are the mesh's renders under that same light
  (face normals, shade = ambient + (1 − ambient)·max(0, n·l)). Albedo-only views leave a flat face of one colour
  undetermined inside the silhouettes; shaded views show its orientation, so the scene's density normals are
  taught where the surface is. The unconditional bank stays albedo (it serves CFG at ω > 1 only).
* Several objects (``reference.extra_meshes``): every data set holds the renders of each object, equally
  weighted — a multi-modal prior for mode-seeking vs. diversity experiments. Metrics score the first object.
* Prompts that name objects (``reference.meshes: {"<prompt>": file, ...}``, e.g. a source asset and its edited
  variant for editing): the objects are the map's files in order (``mesh`` and ``extra_meshes`` are not used),
  all placed by the FIRST file's normalization so that variants of one asset stay registered with it. A prompt
  that is a key conditions on its own object only — its renders at the camera, or its bank views (view labels
  included); the negative/empty prompt is the whole bank of all objects, like a text-to-image model's
  unconditional branch; any other prompt is refused, naming the known ones. Metrics score the object the run's
  prompt names (:meth:`ReferencePrior.reference_object`).
A condition is a vector [flag, w_1 … w_M]: flag 1 selects the camera-conditioned data, flag 0 the bank with
weights w (so interpolating two view conditions mixes their views, as embedding interpolation does). With
``reference.meshes`` it is [flag, w_1 … w_M, o_1 … o_K]: per-object weights o multiply each object's data
weights (o_k = 0 leaves object k out exactly; interpolating two prompts' conditions mixes their objects). Without
the map the vector and every number are as before.
Each render is composited over the query view's background, so the prior is also background-conditioned.
The schedule is Stable Diffusion's (scaled-linear β 0.00085→0.012, 1000 steps).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from dreamcore.cameras import Cameras, Lighting, orbit_cameras, sample_orbit
from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path
from dreamcore.priors.base import NoiseSchedule, PromptEmbeddings, Prior
from dreamcore.registry import register
from dreamcore.views import LABELS, label_views

@dataclass
class ReferenceSource:
    """The mesh whose renders are the data. ``radius``: it is scaled to fit a sphere of this radius.

    ``meshes`` maps prompts to mesh files (``prior.reference.meshes={"a toy robot": assets/robot.glb, "a toy robot
    with a blue chest": edited.glb}`` on the command line): when it is given it replaces ``mesh`` (which is then
    not read) and cannot be combined with ``extra_meshes``; each prompt conditions on its own object, all objects
    share the first file's placement in the scene (see the module's docstring). A config file's map and an
    override's map are merged key by key, as every mapping of the config is."""

    mesh: str = "assets/robot.glb"
    radius: float = 0.9
    supersample: int = 2
    extra_meshes: list[str] = field(default_factory=list)  # more objects for the same prompt: a multi-modal prior
    meshes: dict[str, str] = field(default_factory=dict)  # prompt → mesh file: objects chosen by the prompt
    # big meshes: above ``big_mesh_faces`` faces (all objects together) the prior asks for ``big_mesh_views``
    # fixed training views (camera.views = -1) and renders each view once into a cache
    big_mesh_faces: int = 200_000
    big_mesh_views: int = 256
    render_cache: int = -1  # renders kept (views × objects × resolutions); -1: 4 per training view for big meshes


@register("prior", "reference")
class ReferencePrior(Prior):
    supports_pixel_subsets = True

    @dataclass
    class Config(ComponentConfig):
        reference: ReferenceSource = field(default_factory=ReferenceSource)
        camera_conditioned: bool = True
        neighbors: int = 0
        neighbor_sigma_deg: float = 5.0
        bank_views: int = 64
        bank_seed: int = 0
        bank_elevation_range: tuple[float, float] = (-30.0, 85.0)
        shaded: bool = False  # render the camera-conditioned data under the query view's light (Cameras.lighting)

    def __init__(self, cfg: "ReferencePrior.Config") -> None:
        super().__init__()
        from dreamcore.meshes.io import load_mesh, normalize

        self.cfg = cfg
        # prompt (stripped) → object index, when ``reference.meshes`` names the objects by prompt; {} otherwise
        self.prompt_objects: dict[str, int] = {}
        if cfg.reference.meshes:
            self._load_prompted(cfg.reference)
        else:
            path = resolve_path(cfg.reference.mesh)
            self.mesh_path = path
            self.asset, self.scene_transform = normalize(load_mesh(path), cfg.reference.radius)
            self.extra_assets = [normalize(load_mesh(resolve_path(p)), cfg.reference.radius)[0]
                                 for p in cfg.reference.extra_meshes]
        self.schedule = NoiseSchedule.scaled_linear()
        self.view_dependent = not cfg.camera_conditioned
        g = torch.Generator().manual_seed(cfg.bank_seed)
        self.bank_cameras = sample_orbit(cfg.bank_views, g, elevation_range=cfg.bank_elevation_range)
        self._bank: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}
        faces = sum(int(a.faces.shape[0]) for a in [self.asset] + self.extra_assets)
        self.big = faces > cfg.reference.big_mesh_faces
        cache = cfg.reference.render_cache
        self.cache_limit = (4 * cfg.reference.big_mesh_views * (cfg.neighbors + 1) if self.big else 0) \
            if cache < 0 else cache
        self._cache: "OrderedDict[tuple, tuple[Tensor, Tensor]]" = OrderedDict()
        self.cache_hits = self.cache_misses = 0

    def _load_prompted(self, ref: ReferenceSource) -> None:
        """The objects of ``ref.meshes``: its distinct files in order (a file named by two prompts is one object),
        the first normalized to ``ref.radius`` and every other placed by the same transform, so that an edited
        variant stays where its source is."""
        from dataclasses import replace

        from dreamcore.meshes.io import load_mesh, normalize

        if ref.extra_meshes:
            raise DreamcoreError("prior.reference.meshes names the objects by prompt; prior.reference.extra_meshes "
                                 "cannot be added to it (give every object a prompt in prior.reference.meshes)")
        files: dict[Path, int] = {}
        paths: list[Path] = []
        for prompt, file in ref.meshes.items():
            key = prompt.strip()
            if not key:
                raise DreamcoreError("prior.reference.meshes has an empty prompt as a key; each key is the prompt "
                                     "that selects its mesh")
            if key in self.prompt_objects:
                raise DreamcoreError(f"prior.reference.meshes names the prompt {key!r} twice")
            if not str(file).strip():
                raise DreamcoreError(f"prior.reference.meshes[{prompt!r}] names no mesh file")
            path = resolve_path(file)
            ident = path.resolve()
            if ident not in files:
                files[ident] = len(paths)
                paths.append(path)
            self.prompt_objects[key] = files[ident]
        assets = []
        for path in paths:
            try:
                assets.append(load_mesh(path))
            except DreamcoreError as e:
                raise DreamcoreError(f"prior.reference.meshes: {e}") from None
        self.mesh_path = paths[0]
        self.asset, self.scene_transform = normalize(assets[0], ref.radius)
        self.extra_assets = [replace(a, vertices=self.scene_transform.to_scene(a.vertices)) for a in assets[1:]]

    def reference_object(self, prompt: str) -> int:
        """Index into :meth:`reference_assets` of the object ``prompt`` names (``reference.meshes``); 0 — the
        mesh — without a map. A prompt the map does not hold is refused, listing the ones it does."""
        if not self.prompt_objects:
            return 0
        key = prompt.strip()
        if key not in self.prompt_objects:
            known = ", ".join(repr(p) for p in self.prompt_objects)
            raise DreamcoreError(f"the prompt {prompt!r} names no object of prior.reference.meshes; its prompts are: "
                                 f"{known}")
        return self.prompt_objects[key]

    def training_views(self) -> int:
        """A fixed set of views for big meshes (their renders are cached), else fresh random views."""
        return self.cfg.reference.big_mesh_views if self.big else 0

    # -- contract --------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str = "", views=None) -> PromptEmbeddings:
        """Conditions [1, 1 + M]: the prompt is the camera-conditioned data (or the whole bank), the negative
        and empty prompts the whole bank, a view label the bank views with that label."""
        if not prompt.strip():
            raise DreamcoreError("the prompt is empty: give one with prompt=\"...\" (the reference prior accepts any text)")
        m = self.cfg.bank_views
        # with reference.meshes every condition ends with per-object weights: the prompt's object alone, or all
        # objects for the unconditional (negative/empty prompt) condition; without it nothing is appended
        own = all_objects = torch.zeros(0)
        if self.prompt_objects:
            own = torch.zeros(self.num_objects)
            own[self.reference_object(prompt)] = 1.0
            all_objects = torch.ones(self.num_objects)
        uniform = torch.cat([torch.zeros(1), torch.full((m,), 1.0 / m)])[None]
        unconditional = torch.cat([uniform, all_objects[None]], 1)
        default = torch.cat([torch.ones(1), torch.zeros(m)])[None] if self.cfg.camera_conditioned else uniform
        cond = {"default": torch.cat([default, own[None]], 1)}
        if views is not None and self.view_dependent:
            labels = label_views(torch.rad2deg(self.bank_cameras.elevation), torch.rad2deg(self.bank_cameras.azimuth),
                                 views)
            for name in LABELS:
                mask = torch.tensor([lbl == name for lbl in labels], dtype=torch.float32)
                w = mask / mask.sum() if mask.sum() > 0 else uniform[0, 1:]
                cond[name] = torch.cat([torch.zeros(1), w, own])[None]
        return PromptEmbeddings(cond=cond, uncond=unconditional, prompt=prompt, null=unconditional)

    def to_model_space(self, rgb: Tensor, pixel_index: Optional[Tensor] = None) -> Tensor:
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras] = None,
                      pixel_index: Optional[Tensor] = None, image_size: Optional[tuple[int, int]] = None) -> Tensor:
        x0 = self.denoise(x_t, t, embeddings, cameras, pixel_index, image_size)
        a, s = self.schedule.alpha_sigma(t)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        return (x_t - a.view(shape) * x0) / s.view(shape)

    # -- the closed form -------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Optional[Cameras],
                pixel_index: Optional[Tensor], image_size: Optional[tuple[int, int]]) -> Tensor:
        """x̂_0 [B, 3, H, W] (or [B, 3, N, 1]) for each batch element's condition."""
        b = x_t.shape[0]
        if image_size is None:
            image_size = (x_t.shape[2], x_t.shape[3])
        h, w = image_size
        bg = self._backgrounds(cameras, b, x_t.device)
        a, s = self.schedule.alpha_sigma(t)
        emb = embeddings.reshape(b, -1).to(x_t.device)
        m = self.cfg.bank_views
        obj_w = self._object_weights(emb)  # [b, K] or None (no per-object weights: all objects equally)
        cond = emb[:, 0] >= 0.5
        out = torch.empty_like(x_t)
        if bool(cond.any()):
            if cameras is None:
                raise ValueError("the camera-conditioned reference prior needs the cameras of x_t")
            idx = cond.nonzero(as_tuple=True)[0]
            objects = self._used_objects(obj_w, idx)
            data, logw = self._camera_data(cameras[idx], h, w, bg[idx], objects)
            if obj_w is not None:
                logw = logw + _log_weights(obj_w[idx][:, objects]).repeat_interleave(self.cfg.neighbors + 1, 1)
            pix = None if pixel_index is None else pixel_index[idx]
            out[idx] = _posterior_mean(x_t[idx], a[idx], s[idx], _pixels(data, pix), logw)
        rest = ~cond
        if bool(rest.any()):
            idx = rest.nonzero(as_tuple=True)[0]
            rgb_black, alpha = self.bank(h, w, x_t.device)  # [K·M,3,H,W], [K·M,1,H,W]
            objects = self._used_objects(obj_w, idx)
            if len(objects) < self.num_objects:
                rows = torch.cat([torch.arange(k * m, (k + 1) * m) for k in objects]).to(rgb_black.device)
                rgb_black, alpha = rgb_black[rows], alpha[rows]
            data = rgb_black[None] + (1.0 - alpha[None]) * bg[idx][:, None, :, None, None]  # [b,M,3,H,W]
            data = data * 2.0 - 1.0
            pix = None if pixel_index is None else pixel_index[idx]
            logw = emb[idx, 1:1 + m].clamp_min(1e-30).log().repeat(1, len(objects))
            if obj_w is not None:
                logw = logw + _log_weights(obj_w[idx][:, objects]).repeat_interleave(m, 1)
            out[idx] = _posterior_mean(x_t[idx], a[idx], s[idx], _pixels(data, pix), logw)
        return out

    def _object_weights(self, emb: Tensor) -> Optional[Tensor]:
        """The per-object weights [b, K] that end the conditions of a prior with ``reference.meshes`` (a row
        with no positive weight counts all objects), or None for conditions without them ([flag, w_1 … w_M])."""
        m = self.cfg.bank_views
        if emb.shape[1] == 1 + m:
            return None
        if emb.shape[1] != 1 + m + self.num_objects:
            raise ValueError(f"a reference prior condition has 1 + {m} bank weights (+ {self.num_objects} object "
                             f"weights with reference.meshes); got {emb.shape[1]} values")
        o = emb[:, 1 + m:].clamp_min(0.0)
        return torch.where((o > 0).any(1, keepdim=True), o, torch.ones_like(o))

    def _used_objects(self, obj_w: Optional[Tensor], idx: Tensor) -> list[int]:
        """The objects some row ``idx`` gives a positive weight (all without object weights): only their data
        are rendered."""
        if obj_w is None:
            return list(range(self.num_objects))
        return [k for k in range(self.num_objects) if bool((obj_w[idx, k] > 0).any())]

    def _backgrounds(self, cameras: Optional[Cameras], b: int, device) -> Tensor:
        if cameras is not None and cameras.background is not None:
            return cameras.background.to(device)
        return torch.ones(b, 3, device=device)

    def _camera_data(self, cameras: Cameras, h: int, w: int, bg: Tensor,
                     objects: Optional[list[int]] = None) -> tuple[Tensor, Tensor]:
        """Renders at each camera and its ring of neighbours, for each of ``objects`` (all by default), object-major:
        data [B, O·(K+1), 3, H, W] in [−1, 1], log-weights [B, O·(K+1)]."""
        objects = list(range(self.num_objects)) if objects is None else objects
        k = self.cfg.neighbors
        el = torch.rad2deg(cameras.elevation)
        az = torch.rad2deg(cameras.azimuth)
        fov = torch.rad2deg(cameras.fov_y)
        ring = torch.arange(k, dtype=torch.float32) * (2 * math.pi / max(k, 1))
        sig = self.cfg.neighbor_sigma_deg
        d_el = torch.cat([torch.zeros(1), sig * torch.sin(ring)]).to(el.device)
        d_az = torch.cat([torch.zeros(1), sig * torch.cos(ring)]).to(el.device)
        cams = orbit_cameras(
            (el[:, None] + d_el[None]).clamp(-89.9, 89.9).reshape(-1),
            (az[:, None] + d_az[None] / torch.cos(torch.deg2rad(el[:, None])).clamp_min(0.1)).reshape(-1),
            cameras.distance[:, None].expand(-1, k + 1).reshape(-1),
            fov[:, None].expand(-1, k + 1).reshape(-1),
        )
        if self.cfg.shaded and cameras.lighting is not None:
            cams = cams.with_lighting(cameras.lighting.repeat_interleave(k + 1))
        b = len(cameras)
        datas = []
        for obj in objects:
            rgb_black, alpha = self.render_reference(cams, h, w, obj)
            rgb_black = rgb_black.reshape(b, k + 1, 3, h, w)
            alpha = alpha.reshape(b, k + 1, 1, h, w)
            datas.append((rgb_black + (1.0 - alpha) * bg[:, None, :, None, None]) * 2.0 - 1.0)
        logw = torch.cat([torch.zeros(1), torch.full((k,), -0.5)]).repeat(len(objects))[None].expand(b, -1)
        return torch.cat(datas, 1), logw.to(datas[0].device)

    @property
    def num_objects(self) -> int:
        return 1 + len(self.extra_assets)

    def render_reference(self, cameras: Cameras, h: int, w: int, obj: int = 0) -> tuple[Tensor, Tensor]:
        """Renders of reference object ``obj`` over black (premultiplied colour) [B, 3, H, W], alpha [B, 1, H, W];
        from the render cache (least recently used entries dropped past ``cache_limit``) when it is on."""
        light = cameras.lighting if self.cfg.shaded else None
        if self.cache_limit <= 0:
            return self._render(cameras, h, w, obj, light)
        lights = [("albedo",)] * len(cameras) if light is None else \
            [(light.mode, light.ambient) + tuple(round(float(x), 5) for x in row) for row in light.direction]
        keys = [(obj, h, w) + tuple(round(float(x), 5) for x in (el, az, d, f)) + lit
                for el, az, d, f, lit in zip(cameras.elevation, cameras.azimuth, cameras.distance, cameras.fov_y,
                                             lights)]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        self.cache_hits += len(keys) - len(missing)
        self.cache_misses += len(missing)
        found = {i: self._cache[k] for i, k in enumerate(keys) if k in self._cache}
        if missing:
            rows = torch.tensor(missing)
            rgb, alpha = self._render(cameras[rows], h, w, obj, None if light is None else light[rows])
            for j, i in enumerate(missing):
                found[i] = (rgb[j].cpu(), alpha[j].cpu())
                self._cache[keys[i]] = found[i]
        for k in keys:
            if k in self._cache:
                self._cache.move_to_end(k)
        while len(self._cache) > self.cache_limit:
            self._cache.popitem(last=False)
        rgb = torch.stack([found[i][0] for i in range(len(keys))])
        alpha = torch.stack([found[i][1] for i in range(len(keys))])
        return rgb.to(cameras.device), alpha.to(cameras.device)

    def _render(self, cameras: Cameras, h: int, w: int, obj: int,
                lighting: Optional[Lighting] = None) -> tuple[Tensor, Tensor]:
        from dreamcore.meshes.render import render_mesh

        device = cameras.device
        asset = self.asset if obj == 0 else self.extra_assets[obj - 1]
        out = render_mesh(asset, cameras.to(asset.vertices.device), h, w,
                          supersample=self.cfg.reference.supersample, background=torch.zeros(3),
                          lighting=None if lighting is None else lighting.to(asset.vertices.device))
        rgb, alpha = out.rgb.permute(0, 3, 1, 2).contiguous(), out.alpha.permute(0, 3, 1, 2).contiguous()
        return rgb.to(device), alpha.to(device)

    def reference_assets(self) -> list:
        return [self.asset] + list(self.extra_assets)

    def reference_views(self, cameras: Cameras, h: int, w: int, background: Tensor,
                        obj: int = 0) -> tuple[Tensor, Tensor]:
        """Ground-truth images [B, H, W, 3] over ``background`` [B, 3] and alpha [B, H, W, 1] (for metrics)."""
        rgb_black, alpha = self._render(cameras, h, w, obj)
        rgb = rgb_black + (1.0 - alpha) * background[:, :, None, None]
        return rgb.permute(0, 2, 3, 1), alpha.permute(0, 2, 3, 1)

    def bank(self, h: int, w: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """The unconditional data: ``bank_views`` renders from random views of each object, object-major
        [K·M, 3, H, W] and [K·M, 1, H, W] (cached per resolution and device)."""
        key = (h, w, str(device))
        if key not in self._bank:
            renders = [self._render(self.bank_cameras.to(device), h, w, obj) for obj in range(self.num_objects)]
            self._bank[key] = (torch.cat([r for r, _ in renders]), torch.cat([a for _, a in renders]))
        return self._bank[key]


def _log_weights(o: Tensor) -> Tensor:
    """log o, with −inf (exactly no weight) where o is 0."""
    return torch.where(o > 0, o.clamp_min(torch.finfo(o.dtype).tiny).log(), torch.full_like(o, -math.inf))


def _pixels(data: Tensor, pixel_index: Optional[Tensor]) -> Tensor:
    """data [B, M, C, H, W] → the same, or [B, M, C, N, 1] restricted to ``pixel_index`` [B, N]."""
    if pixel_index is None:
        return data
    b, m, c = data.shape[:3]
    flat = data.reshape(b, m, c, -1)
    idx = pixel_index[:, None, None, :].expand(b, m, c, -1)
    return flat.gather(3, idx)[..., None]


def _posterior_mean(x_t: Tensor, a: Tensor, s: Tensor, data: Tensor, logw: Tensor) -> Tensor:
    """Σ_i softmax_i(log w_i − ‖x_t − α x_i‖²/(2σ²)) x_i for x_t [B, C, ...], data [B, M, C, ...]."""
    b = x_t.shape[0]
    diff = (x_t[:, None] - a.view(b, 1, *([1] * (x_t.dim() - 1))) * data).reshape(b, data.shape[1], -1)
    logits = logw - diff.pow(2).sum(-1) / (2.0 * s.view(b, 1) ** 2)
    p = torch.softmax(logits, dim=1)
    return torch.einsum("bm,bm...->b...", p, data)
