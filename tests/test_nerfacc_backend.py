"""The volume renderer's nerfacc backend (``renderer.backend: auto|torch|nerfacc``).

On every machine: backend selection and its errors; the occupancy-grid layout against nerfacc 0.5.3's index
formula; and the backend's own code (near planes, jitter, early stop, τ > 0 filter, shading, gradients) run
against the torch reference on CPU through the ``fake_nerfacc`` fixture — a pure-PyTorch stand-in written here from nerfacc's
documented semantics (``OccGridEstimator.sampling`` in ``nerfacc/estimators/occ_grid.py``, the traversal in
``nerfacc/cuda/csrc/grid.cu``, ``render_weight_from_density`` / ``accumulate_along_rays`` in
``nerfacc/volrend.py``), up to a training step of reference-nerf. With CUDA and nerfacc (``@pytest.mark.cuda``):
the same parity against the real package, and a training step on CUDA.

Tolerances. The samples are the same lattice (checked directly, to 1e-4 of a step of 0.0135): nerfacc
accumulates ``t += step`` in float32 (grid.cu, ``t_last += dt``), so after k ≤ 300 steps a midpoint sits up to
~3e-5 from the torch path's directly computed one. Over a fully occupied grid a pixel then differs by at most a
sample on the early-stop threshold (T = ``min_transmittance`` = 1e-4, weight ≤ 1e-4) plus one at the box's
faces (σ·step ≲ 1e-4 for the blob there) plus the drift's effect on σ (~1e-6 measured): rgb and alpha 3e-4,
depth (Σ w·t, t ≤ 4.5) 1.5e-3. Over a carved grid a sample within the drift of a face between an occupied and
an empty cell may fall on either side; the empty cell's density was below the occupancy threshold (σ·step <
0.01) one dilation cell further out, so such a pixel differs by < 1e-2 (depth 5e-2), and rarely: the mean
|Δ alpha| stays under 1e-4. Gradients: relative norm 2 % (the same samples, float32 against float64 scans).
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import Tensor, nn

from dreamcore.cameras import orbit_cameras
from dreamcore.errors import DreamcoreError
from dreamcore.packed import exclusive_segment_cumsum
from dreamcore.renderers import nerfacc_backend as nb
from dreamcore.renderers.nerfacc_backend import nerfacc_available, nerfacc_binaries
from dreamcore.renderers.volume import VolumeRenderer, ray_aabb
from dreamcore.representations.nerf import NeRFField
from dreamcore.representations.occupancy import OccupancyGrid


# -- helpers ------------------------------------------------------------------------------------------------------
def small_field(seed: int = 0, channels: int = 3, bound: float = 1.0) -> NeRFField:
    cfg = NeRFField.Config(n_levels=4, log2_table_size=12, max_resolution=64, occupancy_resolution=16,
                           color_channels=channels, bound=bound)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        field = NeRFField(cfg)
        field.encoding.table.data.uniform_(-0.5, 0.5)  # structure beyond the blob
    return field


def carve(field: NeRFField, seed: int = 0) -> None:
    """One occupancy update (as training does): the cells far from the blob become empty."""
    step = 2.0 * math.sqrt(3.0) * field.bound / 256
    with torch.no_grad():
        field.occupancy.update(field.density, torch.Generator().manual_seed(seed), 0.3, 0.01 / step, 1, 1.0)
    assert 0.05 < field.occupancy.occupied_fraction() < 0.9


def cameras(n: int = 2, device="cpu"):
    return orbit_cameras(torch.tensor([10.0, -30.0, 60.0][:n]), torch.tensor([0.0, 120.0, 250.0][:n]),
                         torch.full((n,), 3.0), torch.full((n,), 40.0)).to(device)


def nerfacc_path(monkeypatch) -> None:
    """Make ``backend: auto`` take the nerfacc path whatever the device (the CPU runs use FakeNerfacc)."""
    monkeypatch.setattr(VolumeRenderer, "backend", lambda self, device: "nerfacc")


def render(renderer, field, cams, res=20, generator=None, shading="albedo", **kw):
    c = getattr(field, "color_channels", 3)
    bg = torch.linspace(0.2, 0.8, c, device=cams.device).expand(len(cams), c)
    return renderer(field, cams, res, res, bg, generator=generator, shading=shading, **kw)


def assert_close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    err = (a - b).abs().max().item()
    assert err <= atol, f"{what}: max |Δ| = {err:.3g} > {atol}"


def assert_parity(out, ref, carved: bool) -> None:
    """The module doc's tolerances: a fully occupied grid, or a carved one where a sample may cross a face."""
    pix, depth = (1e-2, 5e-2) if carved else (3e-4, 1.5e-3)
    assert_close(out.alpha, ref.alpha, pix, "alpha")
    assert_close(out.rgb, ref.rgb, pix, "rgb")
    assert_close(out.depth, ref.depth, depth, "depth")
    assert (out.alpha - ref.alpha).abs().mean().item() < 1e-4
    if ref.normal is not None:
        assert_close(out.normal, ref.normal, 2 * pix, "normal")
        o, r = out.extras["orientation"].item(), ref.extras["orientation"].item()
        assert o == pytest.approx(r, rel=1e-2, abs=1e-4)


def sample_sets(field, o, d, seed, renderer_cfg=None):
    """(torch path's samples after early stop, nerfacc path's samples) for the same rays and jitter seed."""
    from dreamcore.renderers.volume import march

    r = VolumeRenderer(renderer_cfg or VolumeRenderer.Config())
    step = r.step_size(field)
    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref = r._drop_occluded(field, o, d, march(o, d, field.occupancy, field.bound, step, g), o.shape[0])
        g = None if seed is None else torch.Generator().manual_seed(seed)
        new = nb.sample_rays_nerfacc(field, o, d, g, step, r.cfg.min_transmittance)
    return ref, new, step


def assert_same_samples(ref, new, n_rays: int, step: float) -> None:
    """The same samples up to float32 drift (module doc): a ray may gain or lose a sample that sits within the
    drift of a cell face, the box or the far plane (measured: 5 of 6912 rays over a carved grid); every other
    ray has the same samples, each within 1e-4 (< 1 % of a step) of the torch path's."""
    ray_index, t_start, t_end = new
    counts_ref = torch.bincount(ref.ray_index, minlength=n_rays)
    counts = torch.bincount(ray_index, minlength=n_rays)
    differ = counts != counts_ref
    assert differ.float().mean() < 0.01 and (counts - counts_ref).abs().max() <= 2, int(differ.sum())
    mine, theirs = ~differ[ray_index], ~differ[ref.ray_index]
    assert torch.equal(ray_index[mine], ref.ray_index[theirs])
    assert (t_start[mine] - ref.t_start[theirs]).abs().max() < 1e-4
    assert (t_end[mine] - ref.t_end[theirs]).abs().max() < 1e-4
    assert ((t_end - t_start) - step).abs().max() < 1e-5


def grads(field: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in field.parameters() if p.grad is not None])


# -- a pure-PyTorch stand-in for nerfacc 0.5.3 (CPU) -----------------------------------------------------------
def _box(o: Tensor, d: Tensor, lo: Tensor, hi: Tensor):
    """nerfacc's slab test (utils_grid.cuh ``ray_aabb_intersect``): entry is not clamped at 0; a hit needs
    t_max > 0."""
    with torch.no_grad():
        inv = 1.0 / d
        t0, t1 = (lo - o) * inv, (hi - o) * inv
        tmin = torch.minimum(t0, t1).nan_to_num(nan=-math.inf).amax(-1)
        tmax = torch.maximum(t0, t1).nan_to_num(nan=math.inf).amin(-1)
    return tmin, tmax, (tmax >= tmin) & (tmax > 0)


def nerfacc_cell_query(binaries: Tensor, aabb: Tensor, pts: Tensor) -> Tensor:
    """Occupancy of ``pts`` by nerfacc 0.5.3's index formula, on the flat buffer: cell
    ``floor((p − aabb_min)/(aabb_max − aabb_min)·R)`` clamped to [0, R−1] (``setup_traversal``,
    nerfacc/cuda/csrc/include/utils_grid.cuh lines 72–76), flat id ``x·R_y·R_z + y·R_z + z + level·R³``
    (``traverse_grids_kernel``, nerfacc/cuda/csrc/grid.cu lines 187–192), level 0."""
    res = torch.tensor(binaries.shape[1:], device=pts.device)
    lo, hi = aabb[:3], aabb[3:]
    ijk = torch.minimum(((pts - lo) / (hi - lo) * res).floor().long().clamp_min(0), res - 1)
    flat = ijk[:, 0] * res[1] * res[2] + ijk[:, 1] * res[2] + ijk[:, 2]
    inside = ((pts >= lo) & (pts <= hi)).all(-1)
    return inside & binaries.reshape(-1)[flat]


class FakeOccGridEstimator(nn.Module):
    def __init__(self, roi_aabb, resolution=128, levels=1):
        super().__init__()
        assert levels == 1
        self.register_buffer("aabbs", torch.tensor([roi_aabb], dtype=torch.float32))
        self.register_buffer("binaries", torch.zeros(1, resolution, resolution, resolution, dtype=torch.bool))
        self.register_buffer("occs", torch.zeros(resolution ** 3))

    @torch.no_grad()
    def sampling(self, rays_o, rays_d, sigma_fn=None, alpha_fn=None, near_plane=0.0, far_plane=1e10, t_min=None,
                 t_max=None, render_step_size=1e-3, early_stop_eps=1e-4, alpha_thre=0.0, stratified=False,
                 cone_angle=0.0):
        assert rays_o.dtype == rays_d.dtype == torch.float32 and not stratified and cone_angle == 0.0
        assert alpha_fn is None and alpha_thre == 0.0
        near = torch.full_like(rays_o[:, 0], near_plane)
        far = torch.full_like(rays_o[:, 0], far_plane)
        near = near if t_min is None else near.clamp(min=t_min)
        far = far if t_max is None else far.clamp(max=t_max)
        entry, exit_, hit = _box(rays_o, rays_d, self.aabbs[0, :3], self.aabbs[0, 3:])
        lo, hi = torch.maximum(entry, near), torch.minimum(exit_, far)
        hit = hit & (hi > lo)
        dt = torch.tensor(render_step_size, dtype=torch.float32)
        span = (hi - near)[hit]
        k_max = int(math.ceil(span.max().item() / render_step_size)) + 2 if len(span) else 0
        edges = [near.clone()]
        for _ in range(k_max):  # t_last += dt in float32, as the kernel marches
            edges.append(edges[-1] + dt)
        edges = torch.stack(edges, 1)  # [R, K+1]
        t_last, t_next = edges[:, :-1], edges[:, 1:]
        mid = t_last + dt * 0.5
        pts = rays_o[:, None] + rays_d[:, None] * mid[..., None]
        occ = nerfacc_cell_query(self.binaries, self.aabbs[0], pts.reshape(-1, 3)).reshape(mid.shape)
        valid = hit[:, None] & (mid >= lo[:, None]) & (mid < hi[:, None]) & occ
        ray_indices, k = valid.nonzero(as_tuple=True)
        t_starts, t_ends = t_last[ray_indices, k], t_next[ray_indices, k]
        if sigma_fn is not None and early_stop_eps > 0 and len(t_starts):
            sig = sigma_fn(t_starts, t_ends, ray_indices)
            assert sig.shape == t_starts.shape
            trans = torch.exp(-exclusive_segment_cumsum(sig * (t_ends - t_starts), ray_indices, rays_o.shape[0]))
            keep = trans >= early_stop_eps
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends


def fake_render_weight_from_density(t_starts, t_ends, sigmas, packed_info=None, ray_indices=None, n_rays=None,
                                    prefix_trans=None):
    tau = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-tau)
    trans = torch.exp(-exclusive_segment_cumsum(tau, ray_indices, n_rays))
    return trans * alphas, trans, alphas


def fake_accumulate_along_rays(weights, values=None, ray_indices=None, n_rays=None):
    src = weights[:, None] if values is None else weights[:, None] * values
    return src.new_zeros(n_rays, src.shape[-1]).index_add(0, ray_indices, src)


@pytest.fixture
def fake_nerfacc(monkeypatch):
    mod = types.ModuleType("nerfacc")
    mod.__version__ = "0.5.3-fake"
    mod.OccGridEstimator = FakeOccGridEstimator
    mod.render_weight_from_density = fake_render_weight_from_density
    mod.accumulate_along_rays = fake_accumulate_along_rays
    monkeypatch.setitem(sys.modules, "nerfacc", mod)
    return mod


# -- selection and errors ------------------------------------------------------------------------------------------
def test_auto_renders_with_torch_on_cpu_bit_identically():
    field = small_field()
    cams = cameras()
    auto = VolumeRenderer(VolumeRenderer.Config())
    assert auto.cfg.backend == "auto" and auto.backend(torch.device("cpu")) == "torch"
    a = render(auto, field, cams, generator=torch.Generator().manual_seed(3))
    t = render(VolumeRenderer(VolumeRenderer.Config(backend="torch")), field, cams,
               generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.rgb, t.rgb) and torch.equal(a.alpha, t.alpha) and torch.equal(a.depth, t.depth)


def test_explicit_nerfacc_without_cuda_or_the_package_fails_clearly():
    from dreamcore.config import load_config
    from dreamcore.registry import build

    if nerfacc_available():
        pytest.skip("nerfacc works here")
    with pytest.raises(DreamcoreError, match=r"renderer\.backend=nerfacc needs CUDA and the nerfacc package") as e:
        build("renderer", load_config(None, ["renderer.backend=nerfacc"]).renderer)
    msg = str(e.value)
    assert "pip install nerfacc" in msg and "renderer.backend=torch" in msg
    if not torch.cuda.is_available():
        assert "no CUDA device" in msg


def test_the_probe_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in nb._probe()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "nerfacc", None)  # import nerfacc → ImportError
    assert "nerfacc package does not import" in nb._probe()
    broken = types.ModuleType("nerfacc")
    monkeypatch.setitem(sys.modules, "nerfacc", broken)
    monkeypatch.setitem(sys.modules, "nerfacc.cuda", types.ModuleType("nerfacc.cuda"))
    backend = types.ModuleType("nerfacc.cuda._backend")
    backend._C = None  # what nerfacc leaves when no CUDA toolkit could build its extension
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", backend)
    assert "CUDA extension did not load" in nb._probe()


def test_explicit_nerfacc_refuses_a_field_on_the_cpu(monkeypatch):
    import dreamcore.renderers.volume as volume

    monkeypatch.setattr(volume, "require_nerfacc", lambda: None)  # as on a CUDA machine with nerfacc
    r = VolumeRenderer(VolumeRenderer.Config(backend="nerfacc"))
    with pytest.raises(DreamcoreError, match="renders fields on CUDA.*renderer.backend=torch"):
        render(r, small_field(), cameras(1), res=4)


# -- the occupancy grid's layout -----------------------------------------------------------------------------------
def hand_built_grid(r: int = 8, bound: float = 1.5) -> OccupancyGrid:
    grid = OccupancyGrid(r, bound)
    grid.occupied.zero_()
    for ijk in [(1, 2, 3), (6, 0, 7), (0, 0, 0), (7, 7, 7), (3, 5, 1), (4, 4, 4)]:  # none a permutation of another
        grid.occupied[ijk] = True
    return grid


def query_points(grid: OccupancyGrid, n: int = 4000) -> Tensor:
    g = torch.Generator().manual_seed(0)
    b, r = grid.bound, grid.resolution
    centres = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
    centres = ((centres + 0.5) / r * 2 - 1) * b
    rand = (torch.rand(n, 3, generator=g) * 2 - 1) * b
    near_faces = ((torch.randint(0, r + 1, (n, 3), generator=g) / r * 2 - 1) * b
                  + (torch.rand(n, 3, generator=g) - 0.5) * 1e-3)  # next to cell faces, some just outside the box
    return torch.cat([centres, rand, near_faces])


def test_dreamcore_grid_maps_onto_nerfacc_binaries_cell_for_cell():
    grid = hand_built_grid()
    binaries = nerfacc_binaries(grid.occupied)
    assert binaries.shape == (1, 8, 8, 8) and binaries.dtype == torch.bool
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    pts = query_points(grid)
    ours, theirs = grid.query(pts), nerfacc_cell_query(binaries, aabb, pts)
    assert int(ours.sum()) > 6 * 8  # every occupied cell's centre and many more points hit
    assert torch.equal(ours, theirs)
    # the test can tell a wrong layout: x and z swapped (k-major) disagrees
    swapped = binaries.permute(0, 3, 2, 1).contiguous()
    assert not torch.equal(ours, nerfacc_cell_query(swapped, aabb, pts))
    with pytest.raises(ValueError, match="cubic"):
        nerfacc_binaries(torch.zeros(4, 4, 5, dtype=torch.bool))


def test_the_mapping_matches_the_installed_nerfacc_query():
    """Against nerfacc's own (pure-PyTorch) ``nerfacc.grid._query`` and estimator, where the package imports."""
    nerfacc = pytest.importorskip("nerfacc")
    from nerfacc.grid import _query

    grid = hand_built_grid()
    est = nb.occupancy_estimator(grid)
    assert isinstance(est, nerfacc.OccGridEstimator) and torch.equal(est.binaries, nerfacc_binaries(grid.occupied))
    assert torch.equal(est.aabbs[0], torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]))
    pts = query_points(grid)
    pts = pts[(pts.abs() <= 1.5).all(-1)]
    value, _ = _query(pts, est.binaries, est.aabbs[0])
    assert torch.equal(value, grid.query(pts))


def test_the_estimator_is_kept_per_grid_and_follows_its_updates(fake_nerfacc):
    grid = hand_built_grid()
    est = nb.occupancy_estimator(grid)
    assert nb.occupancy_estimator(grid) is est
    grid.occupied[2, 2, 2] = True
    assert bool(nb.occupancy_estimator(grid).binaries[0, 2, 2, 2])
    assert nb.occupancy_estimator(hand_built_grid()) is not est  # another grid, another estimator


def test_the_backends_ray_box_is_the_renderers():
    g = torch.Generator().manual_seed(1)
    o = torch.randn(500, 3, generator=g) * 2
    d = torch.randn(500, 3, generator=g)
    d[:50, 0] = 0.0
    d = d / d.norm(dim=-1, keepdim=True)
    for a, b in zip(nb._ray_box(o, d, 1.0), ray_aabb(o, d, 1.0)):
        assert torch.equal(a, b)


# -- the backend's code on CPU, against the torch reference, through FakeNerfacc -----------------------------------
@pytest.mark.parametrize("seed", [None, 3])
def test_nerfacc_samples_are_the_torch_paths_lattice(fake_nerfacc, seed):
    field = small_field()
    carve(field)
    o, d = cameras().rays(24, 24)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    o = torch.cat([o, torch.tensor([[0.1, -0.2, 0.3]]).expand(50, 3)])  # and rays that start inside the box
    d = torch.cat([d, torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)),
                                                    dim=-1)])
    ref, new, step = sample_sets(field, o, d, seed)
    assert len(ref.ray_index) > 20000
    assert_same_samples(ref, new, o.shape[0], step)


@pytest.mark.parametrize("carved", [False, True])
def test_nerfacc_path_matches_the_torch_path_deterministically(fake_nerfacc, monkeypatch, carved):
    field = small_field()
    if carved:
        carve(field)
    cams = cameras()
    ref = render(VolumeRenderer(VolumeRenderer.Config(backend="torch")), field, cams)
    nerfacc_path(monkeypatch)
    out = render(VolumeRenderer(VolumeRenderer.Config()), field, cams)
    assert ref.alpha.max() > 0.9 and ref.alpha.min() < 0.1  # opaque and empty pixels both checked
    assert_parity(out, ref, carved)


@pytest.mark.parametrize("shading", ["lambertian", "textureless"])
def test_jittered_shaded_renders_match_and_draw_the_same_numbers(fake_nerfacc, monkeypatch, shading):
    field = small_field(1)
    carve(field, 1)
    cams = cameras()
    g_ref, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = render(VolumeRenderer(VolumeRenderer.Config(backend="torch")), field, cams, generator=g_ref,
                 shading=shading)
    nerfacc_path(monkeypatch)
    global_state = torch.get_rng_state()
    out = render(VolumeRenderer(VolumeRenderer.Config()), field, cams, generator=g_new, shading=shading)
    assert torch.equal(torch.get_rng_state(), global_state)  # nothing drawn from torch's global generator
    assert torch.equal(g_ref.get_state(), g_new.get_state())  # the same draws from the run's generator
    assert_parity(out, ref, carved=True)
    again = render(VolumeRenderer(VolumeRenderer.Config()), field, cams, generator=torch.Generator().manual_seed(5),
                   shading=shading)
    assert torch.equal(again.rgb, out.rgb)  # deterministic given the generator


def gradient_pair(device: str, backend_new: str, monkeypatch=None):
    cams = cameras(2, device)
    idx = torch.randint(0, 24 * 24, (2, 150), generator=torch.Generator().manual_seed(0)).to(device)
    w = torch.rand(2, 150, 1, 3, generator=torch.Generator().manual_seed(1)).to(device)

    def grad_of(backend):
        field = small_field(2)
        carve(field, 2)
        field = field.to(device)
        out = render(VolumeRenderer(VolumeRenderer.Config(backend=backend)), field, cams, res=24, pixel_index=idx,
                     generator=torch.Generator().manual_seed(7), shading="lambertian")
        ((out.rgb * w).sum() + out.alpha.sum() + 0.1 * out.depth.sum() + out.extras["orientation"]).backward()
        return grads(field)

    ref = grad_of("torch")
    if monkeypatch is not None:
        nerfacc_path(monkeypatch)
    return ref, grad_of(backend_new)


def test_gradients_match_the_torch_path(fake_nerfacc, monkeypatch):
    ref, new = gradient_pair("cpu", "auto", monkeypatch)
    assert ref.norm() > 0
    assert (new - ref).norm() / ref.norm() < 0.02


class SlabField:
    """Density ``sigma`` where |z| < 0.25 and exactly 0 elsewhere (samples with τ = 0 that the torch path drops)."""

    bound, color_channels = 1.0, 3

    def __init__(self, sigma: float):
        self.sigma, self.occupancy = sigma, OccupancyGrid(16, 1.0)

    def __call__(self, p):
        front = (p[:, 2:3] > 0).float()
        return self.sigma * (p[:, 2].abs() < 0.25).float(), torch.cat([front, 0.5 * front, 1 - front], -1)

    def density(self, p):
        return self(p)[0]


def test_zero_density_samples_and_early_stop_on_a_slab(fake_nerfacc, monkeypatch):
    cams = cameras(1)
    refs = [render(VolumeRenderer(VolumeRenderer.Config(backend="torch", min_transmittance=m)), SlabField(s), cams)
            for s, m in [(4.0, 1e-4), (300.0, 1e-4), (4.0, 0.0)]]
    nerfacc_path(monkeypatch)
    outs = [render(VolumeRenderer(VolumeRenderer.Config(min_transmittance=m)), SlabField(s), cams)
            for s, m in [(4.0, 1e-4), (300.0, 1e-4), (4.0, 0.0)]]
    for out, ref in zip(outs, refs):
        assert_parity(out, ref, carved=False)
    assert refs[1].alpha.max() > 0.999  # the opaque slab stopped its rays


def test_short_rays_latents_and_misses(fake_nerfacc, monkeypatch):
    """surface_color's short rays (max_distance), a 4-channel field, and rays that miss the box."""
    field = small_field(3, channels=4)
    torch_r = VolumeRenderer(VolumeRenderer.Config(backend="torch"))
    pts = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    pts = 0.4 * pts / pts.norm(dim=-1, keepdim=True)
    nrm = pts / pts.norm(dim=-1, keepdim=True)
    cams = cameras()
    ref_c = torch_r.surface_color(field, pts, nrm)
    ref_img = render(torch_r, field, cams)
    away = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    away.c2w[:, :3, :3] = -away.c2w[:, :3, :3]  # looks away from the box: every ray misses
    g_ref = torch.Generator().manual_seed(0)
    render(torch_r, field, away, generator=g_ref, shading="albedo")
    nerfacc_path(monkeypatch)
    r = VolumeRenderer(VolumeRenderer.Config())
    assert_close(r.surface_color(field, pts, nrm), ref_c, 1e-3, "surface colour")
    img = render(r, field, cams)
    assert img.rgb.shape == ref_img.rgb.shape == (2, 20, 20, 4)
    assert_parity(img, ref_img, carved=False)
    g = torch.Generator().manual_seed(0)
    miss = render(r, field, away, generator=g, shading="albedo")
    assert torch.equal(miss.alpha, torch.zeros_like(miss.alpha))
    assert torch.equal(g.get_state(), g_ref.get_state())  # as the torch path: no jitter when no ray meets the box


def reference_nerf_step(tmp_path, device: str, backend: str):
    """One training step of a small reference-nerf run: (losses, the field's gradient)."""
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.rundir import RunDir
    from dreamcore.runner.trainer import Trainer

    run = tmp_path / f"{device}-{backend}"
    cfg = load_config(config_path("reference-nerf"), [
        "run.steps=1", "run.val_every=0", "run.progress=false", f"run.device={device}", f"renderer.backend={backend}",
        "camera.resolution=32", "camera.batch_size=2", "system.rays_per_view=64", "export.formats=[]",
        "representation.occupancy_resolution=32", "prior.bank_views=4", f"run.dir={run}",
    ])
    trainer = Trainer(cfg, RunDir(run))
    losses = trainer.train_step(0)
    params = [p for p in trainer.system.representation.parameters() if p.grad is not None]
    assert losses and params
    return losses, torch.cat([p.grad.reshape(-1) for p in params])


def test_a_reference_nerf_training_step_through_the_nerfacc_path(fake_nerfacc, monkeypatch, tmp_path):
    ref_losses, ref_grad = reference_nerf_step(tmp_path, "cpu", "torch")
    nerfacc_path(monkeypatch)
    losses, grad = reference_nerf_step(tmp_path, "cpu", "auto")
    assert losses.keys() == ref_losses.keys()
    for k in losses:
        assert losses[k].item() == pytest.approx(ref_losses[k].item(), rel=1e-4), k
    assert ref_grad.norm() > 0 and (grad - ref_grad).norm() / ref_grad.norm() < 0.02


# -- CUDA: the real nerfacc ----------------------------------------------------------------------------------------
@pytest.fixture
def cuda_nerfacc():
    if not nerfacc_available():
        pytest.skip(f"the nerfacc backend cannot run here: {nb.nerfacc_unavailable_reason()}")


@pytest.mark.cuda
@pytest.mark.parametrize("seed", [None, 3])
def test_cuda_nerfacc_samples_are_the_torch_paths_lattice(cuda_nerfacc, seed):
    field = small_field()
    carve(field)
    field = field.cuda()
    o, d = cameras(3, "cuda").rays(48, 48)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    ref, new, step = sample_sets(field, o, d, seed)
    assert len(ref.ray_index) > 100000
    assert_same_samples(ref, new, o.shape[0], step)


@pytest.mark.cuda
@pytest.mark.parametrize("carved", [False, True])
def test_cuda_nerfacc_matches_the_torch_path(cuda_nerfacc, carved):
    field = small_field()
    if carved:
        carve(field)
    field = field.cuda()
    cams = cameras(3, "cuda")
    ref = render(VolumeRenderer(VolumeRenderer.Config(backend="torch")), field, cams, res=48)
    new = render(VolumeRenderer(VolumeRenderer.Config(backend="nerfacc")), field, cams, res=48)
    assert VolumeRenderer(VolumeRenderer.Config()).backend(torch.device("cuda")) == "nerfacc"
    assert ref.alpha.max() > 0.9 and ref.alpha.min() < 0.1
    assert_parity(new, ref, carved)
    # jittered with a (CPU) generator: both backends draw the same numbers from it
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = render(VolumeRenderer(VolumeRenderer.Config(backend="torch")), field, cams, res=48, generator=g1,
               shading="lambertian")
    b = render(VolumeRenderer(VolumeRenderer.Config(backend="nerfacc")), field, cams, res=48, generator=g2,
               shading="lambertian")
    assert torch.equal(g1.get_state(), g2.get_state())
    assert_parity(b, a, carved)


@pytest.mark.cuda
def test_cuda_nerfacc_gradients_match_the_torch_path(cuda_nerfacc):
    ref, new = gradient_pair("cuda", "nerfacc")
    assert ref.norm() > 0 and torch.isfinite(new).all()
    assert (new - ref).norm() / ref.norm() < 0.02


@pytest.mark.cuda
def test_cuda_reference_nerf_trains_a_step_with_nerfacc(cuda_nerfacc, tmp_path):
    losses, grad = reference_nerf_step(tmp_path, "cuda", "nerfacc")
    assert all(bool(torch.isfinite(v).all()) for v in losses.values())
    assert bool(torch.isfinite(grad).all()) and grad.norm() > 0
