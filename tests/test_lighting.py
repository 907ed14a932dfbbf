"""The light a view is shaded under travels with its cameras to the prior (issue 40's light-conditioned reference
prior): Lighting's formula, the mesh renderer shading under a given light, the shaded reference prior's exact
denoiser, and the system handing the render's light to the prior."""

from __future__ import annotations

import math

import pytest
import torch

from dreamcore.cameras import Lighting, orbit_cameras, sample_orbit
from dreamcore.config import load_config
from dreamcore.meshes.asset import MeshAsset
from dreamcore.meshes.render import render_mesh
from dreamcore.registry import build

ALBEDO = torch.tensor([0.8, 0.4, 0.2])


def _front_quad() -> MeshAsset:
    """A square in the z = 0 plane facing +z (towards a camera at azimuth 0), one colour."""
    v = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return MeshAsset(v, f, vertex_colors=ALBEDO.expand(4, 3).clone())


def _front_camera(n: int = 1):
    z = torch.zeros(n)
    return orbit_cameras(z, z, torch.full((n,), 3.0), torch.full((n,), 30.0))


def test_lighting_travels_with_cameras_and_refuses_bad_input():
    cams = sample_orbit(5, torch.Generator().manual_seed(0))
    light = Lighting("lambertian", torch.nn.functional.normalize(torch.randn(5, 3), dim=-1), 0.3)
    lit = cams.with_lighting(light)
    assert lit.lighting is light and cams.lighting is None
    sub = lit[torch.tensor([4, 1])]
    assert torch.equal(sub.lighting.direction, light.direction[[4, 1]]) and sub.lighting.mode == "lambertian"
    assert torch.equal(lit[2].lighting.direction, light.direction[2:3])
    assert lit.to("cpu").lighting.ambient == 0.3
    assert torch.equal(light.repeat_interleave(3).direction[3:6], light.direction[1:2].expand(3, 3))
    with pytest.raises(ValueError, match="lighting for 5 views given to 2 cameras"):
        cams[:2].with_lighting(light)
    with pytest.raises(ValueError, match="lighting mode"):
        Lighting("phong", light.direction, 0.3)


@pytest.mark.parametrize("angle_deg", [0.0, 60.0, 120.0])
@pytest.mark.parametrize("mode", ["albedo", "lambertian", "textureless"])
def test_mesh_render_shades_a_flat_face_as_the_formula(mode, angle_deg):
    """shade = a + (1 − a)·max(0, n·l): n·l = cos θ for a light θ away from the face's normal (0 past 90°)."""
    ambient = 0.25
    theta = math.radians(angle_deg)
    light = Lighting(mode, torch.tensor([[math.sin(theta), 0.0, math.cos(theta)]]), ambient)
    out = render_mesh(_front_quad(), _front_camera(), 16, 16, lighting=light, background=torch.zeros(3))
    center = out.rgb[0, 8, 8]
    shade = ambient + (1 - ambient) * max(0.0, math.cos(theta))
    expected = {"albedo": ALBEDO, "lambertian": ALBEDO * shade, "textureless": torch.full((3,), shade)}[mode]
    assert torch.allclose(center, expected, atol=1e-5)
    assert out.alpha[0, 8, 8, 0] == 1.0


def test_mesh_render_lights_each_view_by_its_own_direction():
    dirs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    out = render_mesh(_front_quad(), _front_camera(2), 8, 8, lighting=Lighting("textureless", dirs, 0.3),
                      supersample=2)
    assert torch.allclose(out.rgb[:, 4, 4], torch.tensor([[1.0] * 3, [0.3] * 3]), atol=1e-5)


@pytest.fixture(scope="module")
def shaded_prior():
    return build("prior", load_config(None, ["prior.name=reference", "prior.shaded=true"]).prior)


def _lit_cameras(n: int, mode: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    cams = sample_orbit(n, g).with_background(torch.rand(n, 3, generator=g))
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return cams.with_lighting(Lighting(mode, dirs, 0.3))


@pytest.mark.parametrize("mode", ["lambertian", "textureless"])
def test_shaded_reference_prior_denoises_to_the_render_under_the_query_light(shaded_prior, mode):
    prior = shaded_prior
    cams = _lit_cameras(3, mode, 7)
    shaded = render_mesh(prior.asset, cams, 24, 24, supersample=2, lighting=cams.lighting,
                         background=cams.background)
    albedo = render_mesh(prior.asset, cams, 24, 24, supersample=2, background=cams.background)
    assert (shaded.rgb - albedo.rgb).abs().max() > 0.1  # the light changes the data
    x0 = shaded.rgb.permute(0, 3, 1, 2) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([50, 400, 900])
    cond = prior.encode_prompt("the object").cond["default"].expand(3, -1)
    eps = prior.predict_noise(prior.schedule.add_noise(x0, noise, t), t, cond, cameras=cams)
    assert torch.allclose(eps, noise, atol=1e-4)
    # a pixel subset sees the same data
    idx = torch.tensor([[0, 100, 300, 575]] * 3)
    sub = x0.reshape(3, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None]
    sub_t = prior.schedule.add_noise(sub, torch.zeros_like(sub), t)
    eps = prior.predict_noise(sub_t, t, cond, cameras=cams, pixel_index=idx, image_size=(24, 24))
    assert eps.abs().max() < 1e-3
    # metrics' ground truth stays albedo whatever light the cameras carry
    truth, _ = prior.reference_views(cams, 24, 24, cams.background)
    assert torch.allclose(truth, albedo.rgb, atol=1e-6)


def test_unshaded_prior_ignores_the_light(shaded_prior):
    plain = build("prior", load_config(None, ["prior.name=reference"]).prior)
    cams = _lit_cameras(2, "textureless", 9)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    t = torch.tensor([200, 600])
    cond = plain.encode_prompt("the object").cond["default"].expand(2, -1)
    lit = plain.predict_noise(x, t, cond, cameras=cams)
    unlit = plain.predict_noise(x, t, cond, cameras=cams.with_lighting(None))
    assert torch.equal(lit, unlit)
    shaded = shaded_prior.predict_noise(x, t, cond, cameras=cams)
    assert not torch.allclose(shaded, unlit, atol=1e-3)
    # an albedo light is the unshaded data
    albedo = cams.with_lighting(Lighting("albedo", cams.lighting.direction, 0.3))
    assert torch.allclose(shaded_prior.predict_noise(x, t, cond, cameras=albedo), unlit, atol=1e-6)


@pytest.mark.parametrize("representation", ["nerf", "gaussians"])
def test_system_hands_the_render_light_to_the_prior(representation, monkeypatch):
    """The prior is asked with the cameras tagged by the very light the training views were shaded under."""
    renderer = "volume" if representation == "nerf" else "splat"
    cfg = load_config("configs/reference-nerf.yaml", [
        f"representation.name={representation}", f"renderer.name={renderer}", "renderer.shading=random",
        "renderer.shading_probs=[0.0, 0.5, 0.5]", "prior.shaded=true", "camera.resolution=16",
        "system.rays_per_view=0", "run.steps=4"])
    from dreamcore.runner.init import build_system

    system = build_system(cfg)
    seen, rendered = [], []
    predict = system.prior.predict_noise
    render = system.renderer.__class__.__call__

    def spy_predict(x_t, t, emb, cameras=None, **kw):
        seen.append(cameras.lighting)
        return predict(x_t, t, emb, cameras=cameras, **kw)

    def spy_render(self, *a, **kw):
        out = render(self, *a, **kw)
        rendered.append(out.lighting)
        return out

    monkeypatch.setattr(system.prior, "predict_noise", spy_predict)
    monkeypatch.setattr(system.renderer.__class__, "__call__", spy_render)
    g = torch.Generator().manual_seed(0)
    modes = set()
    for step in range(6):
        cams = sample_orbit(cfg.camera.batch_size, g)
        system.training_step(cams, step, g)
        assert seen[-1] is rendered[-1] and seen[-1] is not None
        assert torch.allclose(seen[-1].direction.norm(dim=-1), torch.ones(len(cams)), atol=1e-5)
        modes.add(seen[-1].mode)
    assert modes <= {"lambertian", "textureless"} and modes


def test_weighted_normals_only_where_the_ray_weight_counts():
    from dreamcore.renderers.shading import weighted_normals

    class Sphere:
        calls = 0

        def normals(self, p):
            Sphere.calls += len(p)
            return torch.nn.functional.normalize(p, dim=-1)

    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    w = torch.rand(50, generator=torch.Generator().manual_seed(1)) * 2e-3
    field = Sphere()
    full = weighted_normals(field, pts, w, 0.0)
    assert Sphere.calls == 50 and torch.allclose(full, torch.nn.functional.normalize(pts, dim=-1))
    cut = weighted_normals(field, pts, w, 1e-3)
    heavy = w > 1e-3
    assert Sphere.calls == 50 + int(heavy.sum())
    assert torch.equal(cut[heavy], full[heavy]) and torch.equal(cut[~heavy], torch.zeros(int((~heavy).sum()), 3))
    cut.sum().backward()  # the kept normals carry their gradient to the points
    assert pts.grad[heavy].abs().sum() > 0 and torch.equal(pts.grad[~heavy], torch.zeros(int((~heavy).sum()), 3))


def test_albedo_from_ends_the_shaded_phase(monkeypatch):
    from dreamcore.runner.init import build_system

    cfg = load_config("configs/reference-nerf.yaml", [
        "renderer.shading=random", "renderer.shading_probs=[0.0, 0.5, 0.5]", "prior.shaded=true",
        "camera.resolution=16", "system.rays_per_view=0", "system.albedo_from=3"])
    system = build_system(cfg)
    seen = []
    predict = system.prior.predict_noise

    def spy(x_t, t, emb, cameras=None, **kw):
        seen.append(cameras.lighting.mode)
        return predict(x_t, t, emb, cameras=cameras, **kw)

    monkeypatch.setattr(system.prior, "predict_noise", spy)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        system.training_step(sample_orbit(2, g), step, g)
    assert all(m != "albedo" for m in seen[:3]) and seen[3:] == ["albedo"] * 3
    assert system.shading_at(2) is None and system.shading_at(3) == "albedo"


@pytest.mark.parametrize("rays", [0, 64])
def test_sir_rounds_render_under_the_light_their_target_was_made_under(rays, monkeypatch):
    """SIR holds a round's views for its inner steps; with shaded training it holds their light too: every render of
    a round (the whole one its target comes from and the inner steps') is shaded under one light, and the shaded
    prior makes the target under that light. A new round draws a new light."""
    from dreamcore.runner.init import build_system

    cfg = load_config("configs/reference-nerf.yaml", [
        "guidance.name=sir", "guidance.round_steps=3", "guidance.init_steps=2", "guidance.denoise_steps=5",
        "guidance.guidance_scale=1.0", "renderer.shading=random", "renderer.shading_probs=[0.0, 0.5, 0.5]",
        "prior.shaded=true", "camera.resolution=16", f"system.rays_per_view={rays}", "run.steps=11"])
    system = build_system(cfg)
    system.guidance.setup(system.prior, 11)
    asked, rendered = [], []
    predict = system.prior.predict_noise
    render = system.renderer.__class__.__call__

    def spy_predict(x_t, t, emb, cameras=None, **kw):
        asked.append((step_now[0], cameras.lighting))
        return predict(x_t, t, emb, cameras=cameras, **kw)

    def spy_render(self, *a, **kw):
        out = render(self, *a, **kw)
        rendered.append((step_now[0], out.lighting))
        return out

    monkeypatch.setattr(system.prior, "predict_noise", spy_predict)
    monkeypatch.setattr(system.renderer.__class__, "__call__", spy_render)
    g = torch.Generator().manual_seed(0)
    step_now = [0]
    for step in range(6):
        step_now[0] = step
        system.training_step(sample_orbit(cfg.camera.batch_size, g), step, g)
    rounds = [system.guidance.round_of(s) for s in range(6)]
    assert rounds == [0, 0, 1, 1, 1, 2]
    per_round: dict[int, list] = {}
    for step, light in rendered + asked:
        per_round.setdefault(rounds[step], []).append(light)
    firsts = []
    for k, lights in per_round.items():
        first = lights[0]
        assert first is not None and first.mode in ("lambertian", "textureless")
        for light in lights:  # the renders and the prior's calls of round k: one light
            assert light.mode == first.mode and torch.equal(light.direction, first.direction)
        firsts.append(first.direction)
    assert len(firsts) == 3 and not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])
    assert {s for s, _ in asked} >= {0, 2, 5}  # each round's target was made by the prior
