"""Differentiable mesh rasterization: coverage, barycentrics, depth, occlusion, gradients, backends."""

from __future__ import annotations

import math

import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.config import parse_component
from dreamcore.meshes.diffraster import EdgeTopology, antialias, pixel_barycentrics, rasterize_differentiable
from dreamcore.meshes.raster import rasterize, vertices_to_clip
from dreamcore.meshes.regularizers import laplacian_loss, normal_consistency_loss
from dreamcore.meshes.surface import Surface
from dreamcore.renderers.mesh import MeshRenderer, nvdiffrast_available
from dreamcore import registry


def _clip2d(xy: torch.Tensor, z: float = 0.0) -> torch.Tensor:
    """[V, 2] NDC points -> [1, V, 4] clip coordinates with w = 1."""
    n = xy.shape[0]
    return torch.cat([xy, torch.full((n, 1), z, dtype=xy.dtype), torch.ones(n, 1, dtype=xy.dtype)], 1)[None]


def _coverage(xy: torch.Tensor, size: int) -> torch.Tensor:
    clip = _clip2d(xy)
    faces = torch.tensor([[0, 1, 2]])
    frags, idx, fid, bary, w = rasterize_differentiable(clip, faces, size, size)
    img = clip.new_zeros(1, size, size, 1).index_put(idx, torch.ones_like(bary[:, :1]))
    return antialias(img, clip, faces, frags, EdgeTopology.of(faces))


def _pixel_area(xy: torch.Tensor, size: int) -> float:
    s = (xy.detach().double() + 1.0) * size / 2
    return 0.5 * abs(float((s[1, 0] - s[0, 0]) * (s[2, 1] - s[0, 1]) - (s[1, 1] - s[0, 1]) * (s[2, 0] - s[0, 0])))


def test_antialiased_coverage_of_a_triangle_is_its_area():
    xy = torch.tensor([[-0.7, -0.6], [0.8, -0.3], [-0.1, 0.75]], dtype=torch.float64)
    for size in (16, 32, 64):
        cov = _coverage(xy, size)
        area = _pixel_area(xy, size)
        assert 0.0 <= float(cov.min()) and float(cov.max()) <= 1.0
        # hard coverage counts pixel centres; the antialiased sum is the area up to the per-edge linear model
        assert abs(float(cov.sum()) - area) < 0.005 * area + 0.5, (size, float(cov.sum()), area)
    hard = rasterize(_clip2d(xy), torch.tensor([[0, 1, 2]]), 64, 64).mask.sum()
    assert abs(float(hard) - _pixel_area(xy, 64)) > abs(float(_coverage(xy, 64).sum()) - _pixel_area(xy, 64))


def test_vertical_edge_covers_the_exact_fraction_of_its_pixel_column():
    # a rectangle (two triangles) whose right edge sits at x = 10.3 px: pixel column 10 spans [10, 11] and is
    # covered over 0.3 of its width; its centre (10.5) is outside, so that coverage comes from the antialiasing
    size = 16
    x_edge = 10.3 / size * 2 - 1
    xy = torch.tensor([[-1.5, -1.5], [x_edge, -1.5], [x_edge, 1.5], [-1.5, 1.5]], dtype=torch.float64)
    clip = _clip2d(xy)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags, idx, fid, bary, w = rasterize_differentiable(clip, faces, size, size)
    img = clip.new_zeros(1, size, size, 1).index_put(idx, torch.ones_like(bary[:, :1]))
    out = antialias(img, clip, faces, frags, EdgeTopology.of(faces))[0, :, :, 0]
    assert torch.allclose(out[:, 9], torch.ones(size, dtype=torch.float64))
    assert torch.allclose(out[:, 10], torch.full((size,), 0.3, dtype=torch.float64))  # [10, 10.3] of [10, 11]
    assert torch.allclose(out[:, 11], torch.zeros(size, dtype=torch.float64))
    # the shared diagonal is no silhouette: the interior stays exactly 1
    assert torch.equal(out[:, :10], torch.ones(size, 10, dtype=torch.float64))


def test_barycentrics_are_perspective_correct_and_match_the_reference_rasterizer():
    cams = orbit_cameras(torch.tensor([25.0]), torch.tensor([40.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    verts = torch.tensor([[-0.8, -0.5, 0.3], [0.9, -0.2, -0.6], [0.1, 0.8, 0.2]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    h = w = 48
    clip = vertices_to_clip(verts, cams.world_to_clip(h, w).double())
    frags = rasterize(clip, faces, h, w)
    idx, fid, bary, wclip = pixel_barycentrics(clip, faces, frags)
    assert idx[0].numel() > 100
    assert torch.allclose(bary.float(), frags.bary[idx], atol=1e-5)
    assert torch.allclose(wclip.float(), frags.depth[idx], atol=1e-4)
    assert torch.allclose(bary.sum(1), torch.ones_like(bary[:, 0]))
    # the interpolated 3D point lies on the ray through the pixel centre (perspective-correct)
    point = (verts[faces[fid]] * bary[..., None]).sum(1)
    origins, dirs = cams.rays(h, w)
    o = origins[idx].double()
    d = dirs[idx].double()
    r = point - o
    off_ray = (r - (r * d).sum(-1, keepdim=True) * d).norm(dim=-1)
    assert float(off_ray.max()) < 1e-5


def _scene():
    """Two triangles, the near one (z = 0.5) partly in front of the far one (z = −0.5), seen from +Z (no edge
    at exactly 45° on screen, where the antialiasing axis switches)."""
    verts = torch.tensor([
        [-0.6, -0.6, -0.5], [0.6, -0.6, -0.5], [0.0, 0.7, -0.5],
        [-0.2, -0.3, 0.5], [0.9, -0.1, 0.5], [0.35, 0.55, 0.5],
    ], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    cams = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    return verts, faces, cams


def _renderer(**kw) -> MeshRenderer:
    return registry.build("renderer", parse_component("renderer", {"name": "mesh", "backend": "torch", **kw}, "r"))


def test_occlusion_order_depth_and_normals():
    verts, faces, cams = _scene()
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    r = _renderer(antialias=False)
    out = r.render_surface(Surface.of(verts, faces), lambda p, f, b: colors[f], cams, 32, 32,
                           torch.ones(1, 3, dtype=torch.float64))
    frags = rasterize(vertices_to_clip(verts, cams.world_to_clip(32, 32).double()), faces, 32, 32)
    both = (out.rgb[0, :, :, 2] == 1.0) & (out.rgb[0, :, :, 0] == 0.0)
    assert int(both.sum()) > 20  # the near (blue) face is drawn where both overlap
    assert bool((frags.face_id[0][both] == 1).all())
    # depth = distance from the camera at (0, 0, 3) to the plane z = 0.5 along the pixel ray
    _, dirs = cams.rays(32, 32)
    expected = 2.5 / (-dirs[0, :, :, 2]).double()
    near = frags.face_id[0] == 1
    assert torch.allclose(out.depth[0, :, :, 0][near], expected[near], atol=1e-4)
    assert torch.allclose(out.normal[0][near], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(int(near.sum()), 3))
    assert torch.equal(out.alpha[0, :, :, 0] > 0, frags.face_id[0] >= 0)


def test_gradients_match_finite_differences():
    verts, faces, cams = _scene()
    h = w = 24
    weights = torch.rand(1, h, w, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bg = torch.tensor([[0.2, 0.9, 0.4]], dtype=torch.float64)
    r = _renderer()

    def loss(v: torch.Tensor) -> torch.Tensor:
        albedo = lambda p, f, b: 0.5 + 0.4 * torch.sin(3.0 * p)  # noqa: E731  (a smooth colour field)
        out = r.render_surface(Surface.of(v, faces), albedo, cams, h, w, bg, mode="lambertian",
                               light=torch.tensor([[0.3, 0.2, 1.0]], dtype=torch.float64) / 1.063)
        return (torch.cat([out.rgb, out.alpha], -1) * weights).sum()

    v = verts.clone().requires_grad_(True)
    loss(v).backward()
    grad = v.grad
    fd = torch.zeros_like(verts)
    eps = 1e-5
    for i in range(verts.shape[0]):
        for k in range(3):
            vp, vm = verts.clone(), verts.clone()
            vp[i, k] += eps
            vm[i, k] -= eps
            fd[i, k] = (loss(vp) - loss(vm)) / (2 * eps)
    assert float(grad.abs().max()) > 1.0  # silhouettes and shading move with the geometry
    assert torch.allclose(grad, fd, rtol=1e-4, atol=1e-4), (grad, fd)


def test_renderer_matches_the_reference_mesh_renderer_without_antialiasing():
    from dreamcore.meshes.io import load_mesh, normalize
    from dreamcore.meshes.render import render_mesh

    asset, _ = normalize(load_mesh("assets/robot.glb"))
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.tensor([3.2, 3.0]),
                         torch.tensor([40.0, 40.0]))
    r = _renderer(antialias=False)
    bg = torch.ones(2, 3)
    out = r.render_surface(Surface.of(asset.vertices, asset.faces), lambda p, f, b: torch.ones_like(p), cams,
                           48, 48, bg)
    ref = render_mesh(asset, cams, 48, 48, background=bg)
    assert torch.equal(out.alpha, ref.alpha)
    # depth agrees except where a pixel centre lies on an edge (a barycentric is 0): there the two paths may take
    # either neighbouring face, which at grazing angles differ by a few 1e-4 in depth
    from dreamcore.meshes.raster import rasterize, vertices_to_clip

    frags = rasterize(vertices_to_clip(asset.vertices, cams.world_to_clip(48, 48)), asset.faces, 48, 48)
    interior = (frags.bary.amin(-1) > 1e-6)[..., None]
    assert interior.sum() > 0.95 * (ref.alpha > 0).sum()  # all but a few covered pixels are compared
    assert torch.allclose(out.depth[interior], ref.depth[interior], atol=1e-4)
    # antialiased coverage is close to a 4x4 supersampled one
    from dreamcore.representations.mesh import weld

    welded, index = weld(asset.vertices)  # seams split for UVs would read as silhouettes
    aa = _renderer().render_surface(Surface.of(welded, index[asset.faces]), lambda p, f, b: torch.ones_like(p),
                                    cams, 48, 48, bg)
    ss = render_mesh(asset, cams, 48, 48, background=bg, supersample=4)
    assert float((aa.alpha - ss.alpha).abs().mean()) < float((ref.alpha - ss.alpha).abs().mean())


def test_pixel_subsets_gather_the_whole_image():
    verts, faces, cams = _scene()
    r = _renderer()

    class Rep:
        def surface(self):
            return Surface.of(verts.float(), faces)

        def albedo(self, p, f, b):
            return torch.sigmoid(p)

    full = r(Rep(), cams, 16, 16, torch.ones(1, 3))
    pix = torch.tensor([[0, 17, 100, 255]])
    sub = r(Rep(), cams, 16, 16, torch.ones(1, 3), pixel_index=pix)
    assert sub.rgb.shape == (1, 4, 1, 3)
    assert torch.equal(sub.rgb[0, :, 0], full.rgb.reshape(1, -1, 3)[0, pix[0]])


def test_topology_and_regularizers():
    # a square of two triangles folded by 90 degrees along the shared diagonal
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    topo = EdgeTopology.of(faces)
    assert topo.neighbor.tolist() == [[-1, -1, 1], [0, -1, -1]]
    assert float(normal_consistency_loss(flat, faces, topo)) == pytest.approx(0.0, abs=1e-7)
    folded = flat.clone()
    folded[3] = torch.tensor([0.5, 0.5, 1.0 / math.sqrt(2)])  # rotated about the diagonal by 90°
    # the fold angle between the face normals
    n0 = torch.tensor([0.0, 0, 1])
    v = folded[faces[1]]
    n1 = torch.nn.functional.normalize(torch.cross(v[1] - v[0], v[2] - v[0], dim=-1), dim=0)
    assert float(normal_consistency_loss(folded, faces, topo)) == pytest.approx(1.0 - float(n0 @ n1), abs=1e-6)
    # uniform Laplacian: a vertex at its neighbours' mean contributes 0; moving it off-centre costs |offset|²
    grid = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    fan = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    base = laplacian_loss(grid, fan)
    moved = grid.clone()
    moved[0, 2] = 0.3
    assert float(laplacian_loss(moved, fan)) > float(base)


@pytest.mark.cuda
@pytest.mark.skipif(not nvdiffrast_available(), reason="nvdiffrast needs CUDA and the nvdiffrast package")
def test_nvdiffrast_matches_the_torch_reference():
    from dreamcore.meshes.io import load_mesh, normalize

    asset, _ = normalize(load_mesh("assets/robot.glb"))
    dev = torch.device("cuda")
    cams = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.tensor([3.2, 3.0]),
                         torch.tensor([40.0, 40.0])).to(dev)
    surf = Surface.of(asset.vertices.to(dev), asset.faces.to(dev))
    albedo = lambda p, f, b: 0.5 + 0.5 * torch.sin(4.0 * p)  # noqa: E731
    bg = torch.ones(2, 3, device=dev)
    outs = {}
    for backend in ("torch", "nvdiffrast"):
        r = _renderer(backend=backend)
        outs[backend] = r.render_surface(surf, albedo, cams, 128, 128, bg, mode="lambertian")
    t, n = outs["torch"], outs["nvdiffrast"]
    hard = (t.alpha == 1) & (n.alpha == 1)
    assert float(hard.float().mean()) > 0.1
    assert float(((t.alpha - n.alpha).abs() > 0.5).float().mean()) < 0.002
    assert float((t.rgb - n.rgb).abs().mean()) < 0.01
    assert torch.allclose(t.depth[hard[..., 0]], n.depth[hard[..., 0]], atol=1e-3)


def test_backend_choice():
    from dreamcore.errors import DreamcoreError

    auto = registry.build("renderer", parse_component("renderer", {"name": "mesh"}, "r"))
    assert auto.backend == ("nvdiffrast" if nvdiffrast_available() else "torch")
    if not nvdiffrast_available():
        with pytest.raises(DreamcoreError, match="nvdiffrast"):
            registry.build("renderer", parse_component("renderer", {"name": "mesh", "backend": "nvdiffrast"}, "r"))
