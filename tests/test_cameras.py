import math

import torch

from dreamcore.cameras import look_at, orbit_cameras, sample_orbit, turntable_cameras


def test_orbit_convention_front_is_plus_z_and_y_up():
    cams = orbit_cameras(torch.tensor([0.0, 90.0 - 1e-3]), torch.tensor([0.0, 0.0]), torch.tensor([3.0, 3.0]),
                         torch.tensor([40.0, 40.0]))
    assert torch.allclose(cams.position[0], torch.tensor([0.0, 0.0, 3.0]), atol=1e-5)
    assert cams.position[1, 1] > 2.99  # elevation 90 = above (+Y)
    # camera looks down its -Z: the centre ray points at the origin
    o, d = cams.rays(2, 2)
    centre = d[0].mean(dim=(0, 1))
    assert torch.allclose(centre / centre.norm(), torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    # +Y up in the image: the top row looks higher than the bottom row
    assert d[0, 0, 0, 1] > d[0, 1, 0, 1]
    # azimuth +90 sees the +X side
    side = orbit_cameras(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    assert torch.allclose(side.position[0], torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)


def test_projection_matches_rays():
    g = torch.Generator().manual_seed(1)
    cams = sample_orbit(3, g)
    h = w = 16
    o, d = cams.rays(h, w)
    pts = o + 2.5 * d  # points along pixel (5, 9)
    p = torch.cat([pts[:, 5, 9], torch.ones(3, 1)], -1)
    clip = torch.einsum("bij,bj->bi", cams.world_to_clip(h, w), p)
    ndc = clip[:, :2] / clip[:, 3:]
    assert torch.allclose(ndc[:, 0], torch.full((3,), 2 * 9.5 / w - 1), atol=1e-4)
    assert torch.allclose(ndc[:, 1], torch.full((3,), 1 - 2 * 5.5 / h), atol=1e-4)


def test_sampling_respects_ranges_and_is_seeded():
    a = sample_orbit(256, torch.Generator().manual_seed(3), (-10, 60), (-180, 180), (2.0, 2.5), (30, 40))
    b = sample_orbit(256, torch.Generator().manual_seed(3), (-10, 60), (-180, 180), (2.0, 2.5), (30, 40))
    assert torch.equal(a.c2w, b.c2w)
    el = torch.rad2deg(a.elevation)
    assert el.min() >= -10 - 1e-4 and el.max() <= 60 + 1e-4
    assert a.distance.min() >= 2.0 and a.distance.max() <= 2.5
    assert torch.allclose(a.position.norm(dim=-1), a.distance, atol=1e-4)
    # rotation part is orthonormal
    r = a.c2w[:, :3, :3]
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(256, 3, 3), atol=1e-5)


def test_look_at_straight_down_is_valid():
    c2w = look_at(torch.tensor([[0.0, 3.0, 0.0]]))
    assert torch.isfinite(c2w).all()
    assert torch.allclose(torch.linalg.det(c2w[:, :3, :3]), torch.ones(1), atol=1e-5)


def test_turntable_even_spacing():
    cams = turntable_cameras(8)
    az = torch.rad2deg(cams.azimuth)
    assert math.isclose(float((az[1] - az[0]) % 360), 45.0, abs_tol=1e-3)
