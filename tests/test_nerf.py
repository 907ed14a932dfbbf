import math
from dataclasses import dataclass

import pytest
import torch

from dreamcore.cameras import orbit_cameras, sample_orbit
from dreamcore.config import load_config
from dreamcore.representations.hashgrid import HashGridEncoding
from dreamcore.representations.nerf import NeRFField
from dreamcore.representations.occupancy import OccupancyGrid
from dreamcore.packed import exclusive_segment_cumsum
from dreamcore.renderers.volume import (PackedSamples, VolumeRenderer, march, ray_aabb,
                                        render_weights)


def test_hash_encoding_interpolates_grid_corners_and_is_continuous():
    enc = HashGridEncoding(n_levels=4, n_features=2, log2_table_size=12, base_resolution=4, max_resolution=32)
    enc.table.data.normal_(generator=torch.Generator().manual_seed(0))
    # level 0 is dense with 5^3 corners: corner (1, 0, 0) is row 1*25? -> index x + y*5 + z*25 with x fastest
    p = torch.tensor([[-1.0 + 2.0 / 4, -1.0, -1.0]])
    assert torch.allclose(enc(p)[0, :2], enc.table[1])
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    d = enc(x + 1e-5) - enc(x)
    assert d.abs().max() < 2e-3  # Lipschitz: |Δf| ≤ res · |Δx| · max|table| / bound
    assert enc(x).shape == (64, 8)


def test_hash_encoding_gradients_reach_table():
    enc = HashGridEncoding(n_levels=3, log2_table_size=10, base_resolution=4, max_resolution=64)
    enc(torch.rand(32, 3)).sum().backward()
    assert enc.table.grad is not None and enc.table.grad.abs().sum() > 0


def test_density_blob_initial_shape():
    cfg = load_config(None).representation
    field = NeRFField(cfg)
    with torch.no_grad():
        inside = field.density(torch.zeros(1, 3))
        outside = field.density(torch.tensor([[0.95, 0.0, 0.0]]))
    assert inside > 50 * outside


def test_nerf_normals_point_outward_on_blob():
    field = NeRFField(load_config(None).representation)
    p = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.3, 0.0]])
    with torch.no_grad():
        n = field.normals(p)
    assert torch.allclose(n, torch.tensor([[1.0, 0, 0], [0, -1.0, 0]]), atol=0.05)


def test_ray_box_intersection():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 5.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far = ray_aabb(o, d, 1.0)
    assert near[0] == pytest.approx(2.0) and far[0] == pytest.approx(4.0)
    assert far[1] < near[1]


def test_segment_cumsum_and_weights_match_closed_form():
    ray = torch.tensor([0, 0, 0, 2, 2])
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.equal(exclusive_segment_cumsum(v, ray, 3), torch.tensor([0.0, 1.0, 3.0, 0.0, 4.0]))
    # constant density sigma over 10 samples of length 0.1: total opacity 1 - exp(-sigma)
    n = 10
    s = PackedSamples(torch.zeros(n, dtype=torch.long), torch.arange(n) * 0.1, torch.arange(1, n + 1) * 0.1)
    w, trans = render_weights(torch.full((n,), 2.0), s, 1)
    assert w.sum().item() == pytest.approx(1 - math.exp(-2.0), rel=1e-5)
    assert trans[-1].item() == pytest.approx(math.exp(-0.2 * 9), rel=1e-5)


@dataclass
class _SlabField:
    """Analytic field: density ``sigma`` where |z| < half, colour red in front (z > 0), blue behind."""

    sigma: float = 50.0
    half: float = 0.25
    bound: float = 1.0

    def __post_init__(self):
        self.occupancy = OccupancyGrid(16, 1.0)

    def __call__(self, p):
        inside = (p[:, 2].abs() < self.half).float()
        front = (p[:, 2] > 0).float()[:, None]
        col = front * torch.tensor([1.0, 0, 0]) + (1 - front) * torch.tensor([0, 0, 1.0])
        return self.sigma * inside, col

    def density(self, p):
        return self(p)[0]


def _front_camera():
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([20.0]))


def test_volume_render_of_a_slab_matches_analytic_opacity_and_order():
    field = _SlabField(sigma=4.0)
    r = VolumeRenderer(VolumeRenderer.Config(samples_per_diagonal=1024, min_transmittance=1e-6))
    out = r(field, _front_camera(), 4, 4, torch.zeros(1, 3))
    # centre pixels: ray crosses the slab (thickness 0.5, nearly perpendicular): opacity 1 - exp(-sigma * 0.5)
    a = out.alpha[0, 1:3, 1:3, 0]
    assert torch.allclose(a, torch.full_like(a, 1 - math.exp(-2.0)), atol=0.02)
    # the front half (red) is seen first: red carries more weight than blue
    rgb = out.rgb[0, 1, 1]
    expected_red = 1 - math.exp(-1.0)
    assert rgb[0].item() == pytest.approx(expected_red, abs=0.02)
    assert rgb[2].item() == pytest.approx((1 - math.exp(-1.0)) * math.exp(-1.0), abs=0.02)
    assert out.depth[0, 1, 1, 0] / out.alpha[0, 1, 1, 0] == pytest.approx(3.0 - 0.0, abs=0.1)


def test_early_termination_does_not_change_an_opaque_render():
    field = _SlabField(sigma=200.0)
    exact = VolumeRenderer(VolumeRenderer.Config(min_transmittance=0.0))(field, _front_camera(), 4, 4, torch.ones(1, 3))
    fast = VolumeRenderer(VolumeRenderer.Config(min_transmittance=1e-4))(field, _front_camera(), 4, 4, torch.ones(1, 3))
    assert torch.allclose(exact.rgb, fast.rgb, atol=1e-3)


def test_pixel_subset_render_equals_full_render_pixels():
    field = _SlabField(sigma=3.0)
    r = VolumeRenderer(VolumeRenderer.Config())
    cams = _front_camera()
    full = r(field, cams, 8, 8, torch.ones(1, 3))
    idx = torch.tensor([[0, 9, 27, 36, 63]])
    sub = r(field, cams, 8, 8, torch.ones(1, 3), pixel_index=idx)
    assert sub.rgb.shape == (1, 5, 1, 3)
    assert torch.allclose(sub.rgb[0, :, 0], full.rgb.reshape(1, 64, 3)[0, idx[0]], atol=1e-6)


def test_occupancy_grid_shrinks_to_the_object(generator):
    grid = OccupancyGrid(16, 1.0)
    sphere = lambda p: 100.0 * (p.norm(dim=-1) < 0.5).float()  # noqa: E731
    for _ in range(3):
        grid.update(sphere, generator, decay=0.3, threshold=1.0, dilation=0)
    assert grid.query(torch.zeros(1, 3)).item()
    assert not grid.query(torch.tensor([[0.9, 0.9, 0.9]])).item()
    tight = grid.occupied_fraction()
    assert 0.03 < tight < 0.1  # sphere of radius 0.5 fills 6.5% of the box
    grid.update(sphere, generator, decay=0.3, threshold=1.0, dilation=1)
    assert grid.occupied_fraction() > tight * 1.3  # one more cell all around
    assert grid.query(torch.tensor([[0.6, 0.0, 0.0]])).item()


def test_march_skips_empty_cells(generator):
    grid = OccupancyGrid(8, 1.0)
    grid.occupied.zero_()
    grid.occupied[3:5, 3:5, 3:5] = True
    o = torch.tensor([[0.0, 0.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0]])
    s = march(o, d, grid, 1.0, 0.01, generator)
    z = 3.0 - 0.5 * (s.t_start + s.t_end)
    assert len(z) > 0 and z.abs().max() <= 0.25 + 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_march_enumerates_exactly_the_samples_of_the_plain_formula(seed):
    """The march looks up only the samples that can meet the box around the occupied cells; the samples (ray,
    t, in order) and the generator's draws are those of enumerating every sample in the scene box."""
    from dreamcore.renderers.volume import march_reference

    g = torch.Generator().manual_seed(seed)
    grid = OccupancyGrid(16, 1.0)
    grid.occupied.zero_()
    lo = torch.randint(0, 10, (3,), generator=g)
    grid.occupied[lo[0]:lo[0] + 5, lo[1]:lo[1] + 3, lo[2]:lo[2] + 6] = torch.rand(5, 3, 6, generator=g) < 0.6
    grid.occupied[2, 13, 7] = True  # a stray cell far from the rest
    cams = sample_orbit(3, g, (-80.0, 80.0), (-180.0, 180.0), (2.0, 3.5), (30.0, 60.0))
    o, d = cams.pixel_rays(24, 24)
    o, d = o.reshape(-1, 3).clone(), d.reshape(-1, 3)
    o[:5] = torch.rand(5, 3, generator=g) * 1.6 - 0.8  # some rays start inside the box
    for max_distance in (math.inf, 2.6):
        for jitter in (True, False):
            g1, g2 = (torch.Generator().manual_seed(seed + 10) if jitter else None for _ in range(2))
            a = march(o, d, grid, 1.0, 0.013, g1, max_distance)
            b = march_reference(o, d, grid, 1.0, 0.013, g2, max_distance)
            assert len(a.ray_index) > 50
            assert torch.equal(a.ray_index, b.ray_index) and torch.equal(a.t_start, b.t_start)
            assert torch.equal(a.t_end, b.t_end)
            if jitter:
                assert torch.equal(g1.get_state(), g2.get_state())
    grid.occupied.zero_()  # nothing occupied: no samples, and the same draws
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert len(march(o, d, grid, 1.0, 0.013, g1).ray_index) == 0 == len(march_reference(o, d, grid, 1.0, 0.013, g2).ray_index)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_occupancy_update_revisits_occupied_cells_and_a_sample_of_empty_ones(generator):
    grid = OccupancyGrid(16, 1.0)
    sphere = lambda p: 100.0 * (p.norm(dim=-1) < 0.5).float()  # noqa: E731
    grid.update(sphere, generator, decay=0.3, threshold=1.0, dilation=0)
    seen = []

    def counting(p):
        seen.append(len(p))
        return sphere(p)

    occupied = int(grid.occupied.sum())
    grid.update(counting, generator, decay=0.3, threshold=1.0, dilation=0, empty_fraction=0.0)
    assert sum(seen) == occupied  # only the occupied cells were evaluated
    assert int(grid.occupied.sum()) == occupied  # and the occupancy is unchanged
    seen.clear()
    grid.update(counting, generator, decay=0.3, threshold=1.0, dilation=0, empty_fraction=0.25)
    empty = 16**3 - occupied
    assert occupied + 0.15 * empty < sum(seen) < occupied + 0.35 * empty


def test_a_four_channel_field_composites_every_channel_and_refuses_shading():
    """Latent-NeRF: C = 4 channels composite like colours (each channel = its own slab render)."""
    from dreamcore.errors import DreamcoreError

    field = NeRFField(NeRFField.Config(color_channels=4, n_levels=4, log2_table_size=12, max_resolution=64,
                                       occupancy_resolution=16))
    assert field(torch.zeros(5, 3))[1].shape == (5, 4)
    r = VolumeRenderer(VolumeRenderer.Config())
    bg = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    out = r(field, _front_camera(), 6, 6, bg, shading="albedo")
    assert out.rgb.shape == (1, 6, 6, 4)
    # every channel composites over its own background value: C(bg₂) − C(bg₁) = (1 − α)(bg₂ − bg₁)
    bg2 = torch.tensor([[0.9, 0.0, 0.5, 1.0]])
    out2 = r(field, _front_camera(), 6, 6, bg2, shading="albedo")
    assert torch.allclose(out2.rgb - out.rgb, (1 - out.alpha) * (bg2 - bg)[0], atol=1e-5)
    assert 0.01 < out.alpha.min() and out.alpha.max() > 0.5  # both partial and opaque pixels were checked
    with pytest.raises(DreamcoreError, match="albedo only"):
        r(field, _front_camera(), 6, 6, bg, shading="lambertian")
    with pytest.raises(DreamcoreError, match="background has 3 channels"):
        r(field, _front_camera(), 6, 6, torch.ones(1, 3), shading="albedo")


def test_shading_draws_follow_their_probabilities_and_lights_sit_near_the_camera():
    from dreamcore.renderers.shading import light_directions, pick_shading

    g = torch.Generator().manual_seed(0)
    draws = [pick_shading("random", (0.2, 0.5, 0.3), g) for _ in range(3000)]
    for mode, p in [("albedo", 0.2), ("lambertian", 0.5), ("textureless", 0.3)]:
        assert draws.count(mode) / 3000 == pytest.approx(p, abs=0.03)
    assert pick_shading("random", (0.2, 0.5, 0.3), None) == "albedo" and pick_shading("lambertian", (1, 0, 0), g) == "lambertian"
    cams = orbit_cameras(torch.tensor([30.0, 0.0]), torch.tensor([0.0, 90.0]), torch.tensor([3.0, 3.0]),
                         torch.tensor([40.0, 40.0]))
    exact = light_directions(cams, None)
    assert torch.allclose(exact, cams.position / cams.position.norm(dim=-1, keepdim=True))
    jittered = light_directions(cams, torch.Generator().manual_seed(1))
    assert torch.allclose(jittered.norm(dim=-1), torch.ones(2)) and not torch.allclose(jittered, exact)


@pytest.mark.parametrize("levels,log2,base,top,features", [(12, 15, 16, 256, 2), (4, 12, 4, 32, 2),
                                                             (6, 19, 16, 2048, 2), (5, 12, 8, 64, 1),
                                                             (5, 12, 8, 64, 4)])
def test_hash_encoding_fast_path_matches_the_reference_formula(levels, log2, base, top, features):
    """int32 per-kind indices, the corner-major gather (rows of two features as one int64, other widths as rows)
    and the per-feature scatter-add backward against int64 indices through ``embedding``: the same rows exactly;
    features and table and point gradients equal up to summation order, with and without gradients."""
    enc = HashGridEncoding(n_levels=levels, n_features=features, log2_table_size=log2, base_resolution=base,
                           max_resolution=top)
    enc.table.data.normal_(generator=torch.Generator().manual_seed(0))
    assert enc.n_dense < levels  # both kinds of level are exercised
    x = torch.rand(3000, 3, generator=torch.Generator().manual_seed(1)) * 2.2 - 1.1  # some beyond the bound
    x[:4] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    i_fast, w_fast = enc.corner_indices(x)
    i_ref, w_ref = enc.reference_corner_indices(x)
    assert torch.equal(i_fast, i_ref) and torch.equal(w_fast, w_ref)
    g = torch.randn(3000, levels * features, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (enc.forward, enc.reference):
        enc.table.grad = None
        p = x.clone().requires_grad_()
        out = fn(p)
        out.backward(g)
        grads.append((out.detach(), enc.table.grad.clone(), p.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert grads[0][2].abs().sum() > 0  # gradients reach the points through the weights
    with torch.no_grad():  # the path without the autograd function
        assert torch.allclose(enc(x), grads[1][0], rtol=1e-5, atol=1e-6)
