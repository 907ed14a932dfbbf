"""The pure-PyTorch splat rasterizer against closed forms: one Gaussian's footprint, compositing order of two,
alpha clamp and transmittance cut, pixel subsets, normals, gradients by finite differences; gsplat parity on CUDA."""

import math

import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.renderers.splat import SplatRenderer, gsplat_available
from dreamcore.renderers.splat_kernel import ALPHA_MIN, project, rasterize
from dreamcore.representations.gaussians import Gaussians, covariance, rgb_to_sh_dc


def front_camera(n=1, distance=3.0, fov=40.0):
    return orbit_cameras(torch.zeros(n), torch.zeros(n), torch.full((n,), distance), torch.full((n,), fov))


def make_gaussians(means, scales, opacity, colors, quats=None):
    n = len(means)
    g = Gaussians(Gaussians.Config(init_points=n, init_scale=0.1))
    g.means.data = torch.as_tensor(means, dtype=torch.float32)
    g.log_scales.data = torch.log(torch.as_tensor(scales, dtype=torch.float32))
    if quats is not None:
        g.quats.data = torch.as_tensor(quats, dtype=torch.float32)
    o = torch.as_tensor(opacity, dtype=torch.float32)
    g.opacity_logits.data = torch.log(o / (1 - o))
    g.sh_dc.data = rgb_to_sh_dc(torch.as_tensor(colors, dtype=torch.float32))[:, None]
    return g


def render(g, cams, res=32, bg=(1.0, 1.0, 1.0), **kw):
    r = SplatRenderer(SplatRenderer.Config(backend="torch", **kw))
    return r(g, cams, res, res, torch.tensor([bg]).expand(len(cams), 3), shading="albedo")


def closed_form_footprint(res, focal, var_x, var_y, opacity):
    c = torch.arange(res) + 0.5 - res / 2
    dy, dx = torch.meshgrid(c, c, indexing="ij")
    a = opacity * torch.exp(-0.5 * (dx ** 2 / var_x + dy ** 2 / var_y))
    return torch.where(a >= ALPHA_MIN, a, torch.zeros_like(a))


@pytest.mark.parametrize("scales", [(0.1, 0.1, 0.1), (0.15, 0.05, 0.3)])
def test_one_gaussian_footprint_is_the_closed_form_2d_gaussian(scales):
    """On the optical axis at depth z, an axis-aligned Gaussian projects to N(centre, diag((f s_x/z)², (f s_y/z)²)
    + 0.3 I) exactly (EWA's Jacobian has no z column there)."""
    res, z, op = 32, 3.0, 0.8
    cams = front_camera(distance=z)
    g = make_gaussians([[0.0, 0.0, 0.0]], [scales], [op], [[0.2, 0.4, 0.6]])
    out = render(g, cams, res)
    f = float(cams.focal(res))
    ref = closed_form_footprint(res, f, (f * scales[0] / z) ** 2 + 0.3, (f * scales[1] / z) ** 2 + 0.3, op)
    assert torch.allclose(out.alpha[0, ..., 0], ref, atol=1e-5)
    expected_rgb = ref[..., None] * torch.tensor([0.2, 0.4, 0.6]) + (1 - ref[..., None])
    assert torch.allclose(out.rgb[0], expected_rgb, atol=1e-5)
    # depth: α · distance to the camera
    assert torch.allclose(out.depth[0, ..., 0], ref * z, atol=1e-4)


def test_projected_centres_match_the_camera_projection_matrix():
    gen = torch.Generator().manual_seed(0)
    means = (torch.rand(20, 3, generator=gen) - 0.5) * 1.2
    cams = orbit_cameras(torch.tensor([20.0, -10.0]), torch.tensor([30.0, 150.0]), torch.tensor([3.0, 3.3]),
                         torch.tensor([40.0, 35.0]))
    h, w = 48, 48
    cov = covariance(torch.full((20, 3), math.log(0.05)), torch.tensor([[1.0, 0, 0, 0]]).expand(20, 4))
    proj = project(means, cov, cams.c2w, cams.focal(h), h, w)
    clip = torch.einsum("bij,nj->bni", cams.world_to_clip(h, w), torch.cat([means, torch.ones(20, 1)], 1))
    ndc = clip[..., :2] / clip[..., 3:]
    uv = torch.stack([(ndc[..., 0] + 1) * 0.5 * w, (1 - ndc[..., 1]) * 0.5 * h], -1)
    assert torch.allclose(proj.means2d, uv, atol=1e-3)
    assert torch.allclose(proj.depths, clip[..., 3], atol=1e-5)


def test_two_gaussians_composite_front_to_back_whatever_their_order():
    """C = c₁α₁ + c₂α₂(1 − α₁) + bg(1 − α₁)(1 − α₂) with 1 the nearer Gaussian (camera on +Z)."""
    res = 16
    cams = front_camera()
    near = ([0.0, 0.0, 0.5], [0.1] * 3, 0.6, [1.0, 0.0, 0.0])
    far = ([0.0, 0.0, -0.5], [0.1] * 3, 0.7, [0.0, 1.0, 0.0])
    outs = []
    for pair in ((near, far), (far, near)):
        g = make_gaussians(*[[p[k] for p in pair] for k in range(4)])
        outs.append(render(g, cams, res, bg=(0.0, 0.0, 1.0)))
    assert torch.allclose(outs[0].rgb, outs[1].rgb, atol=1e-6)
    f = float(cams.focal(res))
    a1 = closed_form_footprint(res, f, (f * 0.1 / 2.5) ** 2 + 0.3, (f * 0.1 / 2.5) ** 2 + 0.3, 0.6)
    a2 = closed_form_footprint(res, f, (f * 0.1 / 3.5) ** 2 + 0.3, (f * 0.1 / 3.5) ** 2 + 0.3, 0.7)
    expected = torch.stack([a1, a2 * (1 - a1), (1 - a1) * (1 - a2)], -1)
    assert torch.allclose(outs[0].rgb[0], expected, atol=1e-5)
    assert torch.allclose(outs[0].depth[0, ..., 0], a1 * 2.5 + a2 * (1 - a1) * 3.5, atol=1e-4)


def test_alpha_clamp_and_transmittance_cut():
    """α ≤ 0.99; a stack of Gaussians with α = 0.95 at the centre pixel stops before T < 10⁻⁴: three of them
    count (T = 0.05³ = 1.25·10⁻⁴), the fourth would give 6.25·10⁻⁶."""
    res = 4  # centre pixel offset (0.5, 0.5) px from the Gaussians' centres: make them large on screen
    cams = front_camera()
    g = make_gaussians([[0.0, 0.0, 0.0]], [[0.5, 0.5, 0.5]], [0.99999], [[1.0, 1.0, 1.0]])
    var = (float(cams.focal(res)) * 0.5 / 3) ** 2 + 0.3  # o·exp(power) < 0.99: not clamped
    assert float(render(g, cams, res).alpha.detach().max()) == pytest.approx(0.99999 * math.exp(-0.25 / var), rel=1e-5)
    g = make_gaussians([[0.0, 0.0, 0.0]], [[20.0, 20.0, 0.5]], [0.99999], [[1.0, 1.0, 1.0]])
    alpha = render(g, cams, res).alpha.detach()
    assert torch.allclose(alpha, torch.full_like(alpha, 0.99))  # o·exp(power) > 0.99: clamped
    zs = [0.3, 0.1, -0.1, -0.3, -0.5]
    g = make_gaussians([[0, 0, z] for z in zs], [[500.0, 500.0, 0.001]] * 5, [0.95] * 5,
                       [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 1, 1]])
    out = render(g, cams, res, bg=(0.0, 0.0, 0.0))
    a = 0.95  # huge footprint: α = 0.95·exp(≈0)
    t = out.alpha[0, ..., 0]
    assert torch.allclose(t, torch.full_like(t, 1 - (1 - a) ** 3), atol=1e-4)
    expected = torch.tensor([a, a * (1 - a), a * (1 - a) ** 2])
    assert torch.allclose(out.rgb[0, 0, 0], expected, atol=1e-4)


def test_pixel_subsets_equal_the_full_image_and_tile_size_does_not_matter():
    g = Gaussians(Gaussians.Config(init_points=300, init_radius=0.6))
    gen = torch.Generator().manual_seed(1)
    g.sh_dc.data = torch.randn(300, 1, 3, generator=gen)
    g.opacity_logits.data = torch.randn(300, generator=gen)
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 3.0),
                         torch.full((2,), 40.0))
    r = SplatRenderer(SplatRenderer.Config(backend="torch", tile_size=8))
    bg = torch.rand(2, 3, generator=gen)
    full = r(g, cams, 24, 24, bg)
    idx = torch.stack([torch.randperm(576, generator=gen)[:50] for _ in range(2)])
    sub = r(g, cams, 24, 24, bg, pixel_index=idx)
    assert sub.rgb.shape == (2, 50, 1, 3)
    gathered = full.rgb.reshape(2, -1, 3).gather(1, idx[..., None].expand(-1, -1, 3))
    assert torch.allclose(sub.rgb[:, :, 0], gathered, atol=1e-6)
    other = SplatRenderer(SplatRenderer.Config(backend="torch", tile_size=5))(g, cams, 24, 24, bg)
    assert torch.allclose(other.rgb, full.rgb, atol=1e-6) and torch.allclose(other.alpha, full.alpha, atol=1e-6)


def test_normals_from_the_shortest_axis_face_the_camera_and_depth_normals_agree():
    cams = front_camera()
    for quat in ([1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]):  # the disc's normal +Z, or flipped to −Z
        g = make_gaussians([[0.0, 0.0, 0.0]], [[0.3, 0.3, 0.001]], [0.9], [[1, 1, 1]], quats=[quat])
        out = render(g, cams, 16)
        n = out.normal[0, 8, 8] / out.alpha[0, 8, 8]
        assert torch.allclose(n, torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    # a tilted plane of small flat Gaussians: both normal modes recover the plane's normal
    k = torch.linspace(-0.6, 0.6, 41)
    uu, vv = torch.meshgrid(k, k, indexing="ij")
    v_axis = torch.tensor([0.0, math.cos(0.4), math.sin(0.4)])
    pts = uu.reshape(-1, 1) * torch.tensor([1.0, 0.0, 0.0]) + vv.reshape(-1, 1) * v_axis
    n = len(pts)
    q = [[math.cos(0.2), math.sin(0.2), 0.0, 0.0]] * n  # rotates +Z by 0.4 rad about x
    plane = make_gaussians(pts, [[0.03, 0.03, 0.001]] * n, [0.9] * n, [[1, 1, 1]] * n, quats=q)
    truth = torch.tensor([0.0, -math.sin(0.4), math.cos(0.4)])
    for mode in ("gaussians", "depth"):
        out = render(plane, cams, 32, normals=mode)
        nrm = out.normal[0, 10:22, 10:22].detach()
        nrm = nrm / nrm.norm(dim=-1, keepdim=True)
        assert float((nrm * truth).sum(-1).min()) > 0.99, mode


def test_gradients_match_finite_differences_in_float64():
    torch.manual_seed(0)
    cams = orbit_cameras(torch.tensor([10.0, -20.0]), torch.tensor([15.0, 100.0]), torch.tensor([2.5, 2.8]),
                         torch.tensor([40.0, 45.0]))
    c2w = cams.c2w.double()
    focal = cams.focal(10).double()
    means = ((torch.rand(4, 3) - 0.5) * 0.6).double().requires_grad_()
    log_scales = torch.log(0.08 + 0.1 * torch.rand(4, 3)).double().requires_grad_()
    quats = torch.randn(4, 4).double().requires_grad_()
    logits = torch.randn(4).double().requires_grad_()
    feats = torch.rand(2, 4, 3).double().requires_grad_()
    idx = torch.stack([torch.randperm(100)[:40] for _ in range(2)])

    def f(means, log_scales, quats, logits, feats):
        proj = project(means, covariance(log_scales, quats), c2w, focal, 10, 10)
        out, acc = rasterize(proj, torch.sigmoid(logits), feats, 10, 10, idx, tile=4)
        return out, acc

    assert torch.autograd.gradcheck(f, (means, log_scales, quats, logits, feats), eps=1e-6, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not gsplat_available(), reason="gsplat needs CUDA and the gsplat package")
def test_gsplat_matches_the_reference_rasterizer():
    g = Gaussians(Gaussians.Config(init_points=2000, init_radius=0.6)).cuda()
    gen = torch.Generator().manual_seed(2)
    g.sh_dc.data = torch.randn(2000, 1, 3, generator=gen).cuda()
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 3.0),
                         torch.full((2,), 40.0)).to("cuda")
    bg = torch.ones(2, 3, device="cuda")
    ref = SplatRenderer(SplatRenderer.Config(backend="torch"))(g, cams, 64, 64, bg)
    fast = SplatRenderer(SplatRenderer.Config(backend="gsplat"))(g, cams, 64, 64, bg)
    assert (ref.rgb - fast.rgb).abs().mean() < 2e-3 and (ref.rgb - fast.rgb).abs().max() < 5e-2
    assert (ref.alpha - fast.alpha).abs().mean() < 2e-3
