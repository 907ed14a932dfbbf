"""Consistent Flow Distillation (dreamcore/guidance/cfd.py): the update against its formula and its clean-flow
closed form on the Gaussian prior (fixed ε + deterministic t + SGD steps Δσ̃ ⇒ a sample μ_ω + sε, where SDS's
fresh noise collapses to μ_ω), the multi-view noise field (N(0, 1) per pixel, correlation 1 for the same surface
footprint seen by two cameras, ≈ overlap for misaligned ones, 0 otherwise), the official defaults, and CLI runs on
NeRF, Gaussians and DMTet with an exact resume. float64 where a closed form is checked."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from dreamcore import registry
from dreamcore.cameras import Cameras, look_at, orbit_cameras
from dreamcore.cli import main
from dreamcore.guidance import common
from dreamcore.guidance.cfd import CFDGuidance, SurfaceNoise
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of
from test_runner import TINY, assert_same_state, run_and_resume

C = Scheduled.constant


def cfd(prior, **kw) -> CFDGuidance:
    kw.setdefault("noise_table", 1 << 14)
    kw.setdefault("background_table", 1 << 13)
    g = CFDGuidance(CFDGuidance.Config(**kw))
    g.setup(prior, 1000)
    return g.double()


def sigma_tilde(prior, t: int) -> float:
    if t < 0:
        return 0.0
    a, s = prior.schedule.alpha_sigma(torch.tensor([t]))
    return (s / a).item()


# -- synthetic geometry: a sphere's exact depth ----------------------------------------------------------------------
def sphere_render(cams: Cameras, res: int, radius: float = 0.8) -> RenderOutput:
    o, d = cams.rays(res, res)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius**2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    depth = torch.where(hit, t, torch.zeros_like(t))[..., None]
    normal = torch.nn.functional.normalize(o + t[..., None] * d, dim=-1) * hit[..., None]
    return RenderOutput(rgb=torch.zeros(len(cams), res, res, 3), alpha=hit.float()[..., None], depth=depth,
                        normal=normal)


def cam(az=20.0, el=10.0, dist=3.2, fov=40.0) -> Cameras:
    return orbit_cameras(torch.tensor([el]), torch.tensor([az]), torch.tensor([dist]), torch.tensor([fov]))


def field(cell=0.01, supersample=8, channels=4, seed=0) -> SurfaceNoise:
    n = SurfaceNoise(channels, 1 << 18, 1 << 13, cell, supersample, 0.1)
    n.initialize(gen(seed))
    return n


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


# -- the update ------------------------------------------------------------------------------------------------------
def test_gradient_is_twice_sigma_tilde_times_guided_epsilon_minus_the_fixed_field():
    """g = 2 σ̃_t (ε_ω(α x + σ ε_mv) − ε_mv) at t = round(1000 t_anneal(k)); ε_mv is the fixed per-pixel field
    (here all background: no depth), the same for every view and every step when γ = 0."""
    prior = GaussianPrior(torch.randn(2, 2, 4, 4, generator=gen(0), dtype=D), 0.5)
    g_cfd = cfd(prior, guidance_scale=C(3.0), scale_convention="diffusers", noise_decay=C(0.0))
    x = torch.randn(3, 2, 4, 4, generator=gen(1), dtype=D)
    _, render = render_of(x)
    views = plain_views(prior, 3)
    for step in (0, 1250, 20000):
        g = g_cfd.gradient(x, render, None, prior, views, step, gen(5))
        t = round(1000 * g_cfd.cfg.t_anneal(step))
        eps = g_cfd.noise.background[:16].T.reshape(1, 2, 4, 4).expand(3, 2, 4, 4)
        a, s = (v.item() for v in prior.schedule.alpha_sigma(torch.tensor([t])))
        x_t = a * x + s * eps
        e = [s * (x_t - a * prior.means[k]) / (a**2 * 0.25 + s**2) for k in (0, 1)]
        e_w = e[1] + 3.0 * (e[0] - e[1])
        assert torch.allclose(g, 2 * (s / a) * (e_w - eps), atol=1e-12), step
    half = cfd(prior, guidance_scale=C(3.0), scale_convention="diffusers", noise_decay=C(0.0), grad_scale=1.0)
    half.noise.load_state_dict(g_cfd.noise.state_dict())
    assert torch.allclose(half.gradient(x, render, None, prior, views, 0, gen(5)),
                          g_cfd.gradient(x, render, None, prior, views, 0, gen(5)) / 2, atol=1e-14)


def test_official_timestep_schedule_and_scale_conventions():
    prior = GaussianPrior(torch.zeros(2, 1, 1, 1, dtype=D), 0.5)
    g = cfd(prior)
    assert [g.timestep(k, 1000) for k in (0, 1250, 2500, 12500, 25000, 30000)] == [980, 836, 692, 404, 212, 212]
    plain = SimpleNamespace(negatives=[])
    perp = SimpleNamespace(negatives=[(torch.zeros(1, 1), torch.zeros(1))])
    assert g.guidance_omega(0, plain) == 71.0  # ε_c + s(ε_c − ε_u), s = 70
    assert g.guidance_omega(0, perp) == 70.0  # ε_u + s(e⁺ + Σ perp)
    d = cfd(prior, guidance_scale=C(7.5), scale_convention="diffusers")
    assert d.guidance_omega(0, plain) == d.guidance_omega(0, perp) == 7.5
    assert g.cfg.noise_decay(0) == 0.01 and g.cfg.noise_decay(7500) == pytest.approx(0.00505)
    assert g.cfg.noise_decay(10000) == 0.0001 and g.cfg.weighting == "ism" and g.cfg.grad_scale == 2.0


def _flow(prior, beta: float, omega: float, n: int, seed: int = 0):
    """Plain SGD on x through the injected loss with η_k = (σ̃_k − σ̃_{k+1})/σ̃_k, t_k = 980 − k (k = 0 … 980)."""
    g = cfd(prior, guidance_scale=C(omega), scale_convention="diffusers", noise_decay=C(0.0), grad_scale=1.0,
            sqrt_beta=C(beta), t_anneal=Scheduled(((0.0, 0.98), (980.0, 0.0))), background_table=n)
    x0 = torch.randn(1, 1, int(n**0.5), int(n**0.5), generator=gen(seed + 100), dtype=D)
    x = x0.clone()
    views = plain_views(prior, 1)
    r = gen(seed)
    for k in range(981):
        t = 980 - k
        assert g.timestep(k, 1000) == t
        rgb, render = render_of(x)
        g(render, None, prior, views, k, r)["cfd"].backward()
        eta = (sigma_tilde(prior, t) - sigma_tilde(prior, t - 1)) / sigma_tilde(prior, t)
        x = x - eta * rgb.grad.permute(0, 3, 1, 2)
    return x0, x, g.noise.background[:n, 0].reshape(x.shape)


def test_fixed_noise_clean_flow_samples_the_gaussian_where_sds_collapses_to_its_mode():
    """Gaussian toy with s_c = s_u = s: ε_ω = κ(x − μ_ω) + ρε. CFD is exactly Euler on the PF-ODE of c = z − σ̃ε,
    whose solution is u(σ̃) = z₀ √(s² + σ̃²)/√(s² + σ̃₀²) − σ̃ε (z = u + σ̃ε, u = x − μ_ω), so
    x → μ_ω + s(x₀ − μ_ω + σ̃₀ε)/√(s² + σ̃₀²) ≈ μ_ω + sε: a sample. SDS (fresh noise, β = 0) → μ_ω."""
    s, omega = 0.5, 2.0
    mu = torch.tensor([0.7, -0.3], dtype=D).view(2, 1, 1, 1)
    prior = GaussianPrior(mu, s)
    mu_w = (mu[1] + omega * (mu[0] - mu[1])).item()
    x0, x, eps = _flow(prior, 1.0, omega, 1024)
    # the exact Euler recursion of the ODE
    u = x0 - mu_w
    for k in range(981):
        t = 980 - k
        st, sn = sigma_tilde(prior, t), sigma_tilde(prior, t - 1)
        u = u - (st - sn) * (st * u - s**2 * eps) / (s**2 + st**2)
    assert torch.allclose(x - mu_w, u, atol=1e-10)
    # its continuous limit, a sample of N(μ_ω, s²) driven by the fixed ε
    s0 = sigma_tilde(prior, 980)
    exact = s * (x0 - mu_w + s0 * eps) / math.sqrt(s**2 + s0**2)
    err = (x - mu_w - exact).abs().max().item()
    assert err < 0.02 * s, err
    assert (x - mu_w).std().item() == pytest.approx(s, rel=0.08)
    assert corr(x - mu_w, eps) > 0.99
    # SDS: the same schedule with fresh noise every step ends (nearly) at the mode μ_ω
    # (its mean follows the same contraction of x₀ − μ_ω, by s/√(s² + σ̃₀²) ≈ 0.04, without the sample's sε)
    _, x_sds, _ = _flow(prior, 0.0, omega, 1024)
    spread = (x_sds - mu_w).std().item()
    assert spread < 0.35 * s, spread
    drift = s * (x0 - mu_w).mean().item() / math.sqrt(s**2 + s0**2)
    assert (x_sds - mu_w).mean().item() == pytest.approx(drift, abs=4 * spread / 32)


# -- the noise field -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("render_res,model_res", [(64, 64), (128, 32)])
def test_field_is_unit_normal_per_pixel_and_nearly_independent_between_pixels(render_res, model_res):
    """A sphere filling most of the view: the field at model resolution (64² from 64²: a pixel prior; 32² from
    128²: a latent-like 4× downsample, where integral noise keeps it unit-variance); background pixels hold the
    fixed per-pixel background rows; channels are independent."""
    n = field()
    c = cam(dist=2.4)
    render = sphere_render(c, render_res)
    det, hit = n((1, 4, model_res, model_res), render, c)
    on = hit.expand_as(det)
    v = det[on]
    k = v.numel()
    assert k > 1500
    assert abs(v.mean().item()) < 4 / k**0.5 + 0.02  # + a little for the neighbours' shared cubes
    assert v.var().item() == pytest.approx(1.0, abs=4 * (2 / k) ** 0.5 + 0.03)
    a, b = det[..., :, :-1], det[..., :, 1:]
    m = (hit[..., :, :-1] & hit[..., :, 1:]).expand_as(a)
    assert abs(corr(a[m], b[m])) < 0.2
    idx = torch.arange(model_res**2).view(model_res, model_res)
    bg = n.background[idx].permute(2, 0, 1)[None]
    assert torch.equal(det[~on], bg[~on])
    ch = det[:, 0][hit[:, 0]], det[:, 1][hit[:, 0]]
    assert abs(corr(*ch)) < 4 / ch[0].numel() ** 0.5


def test_the_same_footprint_seen_by_a_rolled_camera_gets_the_same_noise():
    """Camera B = camera A rolled 90° about its axis: its pixel (j, H−1−i) sees exactly A's pixel (i, j)'s
    footprint, so the field is the same there (correlation ≈ 1) and unrelated elsewhere (≈ 0)."""
    ca = cam(az=30.0, el=20.0)
    c2w = ca.c2w.clone()
    c2w[:, :3, 0], c2w[:, :3, 1] = ca.c2w[:, :3, 1], -ca.c2w[:, :3, 0]
    cb = Cameras(c2w, ca.fov_y, ca.elevation, ca.azimuth, ca.distance)
    n = field()
    for res, model in ((64, 64), (64, 16)):
        da, ha = n((1, 4, model, model), sphere_render(ca, res), ca)
        db, hb = n((1, 4, model, model), sphere_render(cb, res), cb)
        matched = db.flip(-1).transpose(-2, -1)
        m = (ha & hb.flip(-1).transpose(-2, -1)).expand_as(da)
        assert m.sum() > 200
        assert corr(da[m], matched[m]) > 0.98
        m0 = (ha & hb).expand_as(da)
        assert abs(corr(da[m0], db[m0])) < 0.1


def test_cross_view_correlation_is_the_footprint_overlap_and_zero_for_other_points():
    """Two orbit cameras 25° apart on a sphere: each model pixel of A against the pixel of B that contains its
    surface point. Pixel grids are misaligned, so the overlap is (1 − |Δrow|)(1 − |Δcol|) ≈ 0.56 on average;
    pixels of B one step away on the surface share (almost) nothing."""
    ca, cb = cam(az=20.0), cam(az=45.0, dist=3.0)
    n = field()
    h = 64
    da, _ = n((1, 4, h, h), sphere_render(ca, h), ca)
    db, _ = n((1, 4, h, h), sphere_render(cb, h), cb)
    o, d = ca.rays(h, h)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - 0.64)
    p = (o + (-b - disc.clamp_min(0).sqrt())[..., None] * d).reshape(-1, 3)
    w2c = torch.linalg.inv(cb.c2w)[0]
    pc = p @ w2c[:3, :3].T + w2c[:3, 3]
    f = cb.focal(h)[0]
    col, row = pc[:, 0] / -pc[:, 2] * f + h / 2, -pc[:, 1] / -pc[:, 2] * f + h / 2
    facing = ((cb.position[0] - p) * p).sum(-1) > 0.3 * 0.8
    ok = (disc.reshape(-1) > 0) & facing & (col >= 1) & (col < h - 1) & (row >= 1) & (row < h - 1)
    ia, jb = ok.nonzero()[:, 0], row[ok].long() * h + col[ok].long()
    va, vb = da.reshape(4, -1)[:, ia], db.reshape(4, -1)[:, jb]
    assert ia.numel() > 500
    assert 0.4 < corr(va, vb) < 0.75
    assert abs(corr(va, db.reshape(4, -1)[:, jb + 2])) < 0.06


def test_pixel_subsets_use_the_same_background_rows_and_a_unit_normal_surface_noise():
    c = cam()
    whole = sphere_render(c, 32)
    n = field(cell=0.02)
    det, hit = n((1, 4, 32, 32), whole, c)
    idx = torch.randperm(32 * 32, generator=gen(3))[:600][None]
    take = lambda v: v.reshape(1, 32 * 32, -1)[:, idx[0]][:, :, None]  # noqa: E731
    sub = RenderOutput(rgb=torch.zeros(1, 600, 1, 3), alpha=take(whole.alpha), depth=take(whole.depth),
                       normal=take(whole.normal), pixel_index=idx, image_size=(32, 32))
    sdet, shit = n((1, 4, 600, 1), sub, c)
    on_sub, on_whole = shit[0, 0, :, 0], hit.reshape(-1)[idx[0]]
    assert (on_sub == on_whole).float().mean() > 0.9  # silhouettes differ: the whole image interpolates alpha
    off = ~on_sub & ~on_whole
    assert torch.equal(sdet[0][:, off, 0], det.reshape(4, -1)[:, idx[0][off]])
    v = sdet[0][:, on_sub, 0]
    assert v.var().item() == pytest.approx(1.0, abs=4 * (2 / v.numel()) ** 0.5)
    # the tangent-plane footprint is close to the interpolated one at the same pixel; a fronto-parallel one less so
    both = on_sub & on_whole
    assert corr(sdet[0][:, both, 0], det.reshape(4, -1)[:, idx[0][both]]) > 0.75
    flat, _ = n((1, 4, 600, 1), RenderOutput(sub.rgb, sub.alpha, sub.depth, None, idx, (32, 32)), c)
    assert 0.3 < corr(flat[0][:, both, 0], det.reshape(4, -1)[:, idx[0][both]]) < 0.75
    again, _ = n((1, 4, 600, 1), sub, c)
    assert torch.equal(again, sdet)


def test_refresh_keeps_unit_variance_and_decorrelates_by_sqrt_one_minus_gamma():
    n = field(channels=2)
    before = n.table.clone()
    n.refresh(0.36, gen(1))
    assert n.table.var().item() == pytest.approx(1.0, rel=0.02)
    assert corr(before, n.table) == pytest.approx(0.8, abs=0.01)
    same = n.table.clone()
    n.refresh(0.0, gen(2))
    assert torch.equal(same, n.table)


def test_recipe_loads_with_the_official_defaults():
    from dreamcore.config import config_path, load_config

    cfg = load_config(config_path("cfd"), [])
    guidance = registry.build("guidance", cfg.guidance)
    assert isinstance(guidance, CFDGuidance) and guidance.omega(0) == 71.0
    assert [guidance.timestep(k, 1000) for k in (0, 2500, 12500, 25000)] == [980, 692, 404, 212]
    assert cfg.guidance.noise_decay(0) == 0.01 and cfg.guidance.noise_decay(10000) == 0.0001
    assert cfg.run.steps == 25000 and cfg.prior.name == "stable-diffusion"
    assert cfg.views.front_threshold == 30.0 and cfg.views.back_threshold == 30.0


# -- end to end --------------------------------------------------------------------------------------------------------
GTINY = [
    "run.steps=3", "run.checkpoint_every=3", "run.val_every=0", "run.val_resolution=16", "run.progress=false",
    "camera.resolution=24", "camera.batch_size=2", "system.rays_per_view=48", "representation.init_points=300",
    "export.formats=[]", "eval.views=2", "eval.resolution=16", "prior.bank_views=4",
]
SMALL = ["guidance.noise_table=4096", "guidance.background_table=1024"]


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_nerf_run_and_its_resume_is_bit_identical_including_the_noise_field(tmp_path):
    common_ = [*TINY, "run.checkpoint_every=2", "guidance.name=cfd", *SMALL]
    a, b, full = run_and_resume(tmp_path, "configs/reference-nerf.yaml", common_, 2, 4)
    assert a["model.guidance.noise.table"].shape == (4096, 3)
    assert a["model.guidance.noise.table"].abs().sum() > 0
    assert_same_state(a, b)
    assert " cfd=" in (full / "log.txt").read_text()


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_gaussians_run(tmp_path):
    run = tmp_path / "g"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "guidance.name=cfd", *SMALL,
                 f"run.dir={run}"]) == 0
    assert " cfd=" in (run / "log.txt").read_text()
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_dmtet_run_whole_images_through_the_rasterizer(tmp_path):
    run = tmp_path / "m"
    assert main(["generate", "--config", "configs/reference-dmtet.yaml", "run.steps=2", "run.checkpoint_every=2",
                 "run.val_every=0", "run.progress=false", "camera.resolution=24", "camera.batch_size=2",
                 "representation.resolution=16", "export.formats=[]", "eval.views=2", "eval.resolution=16",
                 "prior.bank_views=4", "guidance.name=cfd", *SMALL, f"run.dir={run}"]) == 0
    assert " cfd=" in (run / "log.txt").read_text()


@pytest.mark.slow
def test_a_dmtet_step_on_the_learned_tiny_prior_reads_nothing_back(tmp_path, monkeypatch):
    """Whole 32² images through the pixel-diffusion UNet (a real prior), the field built on the rasterized surface."""
    from test_host_sync import steady_reads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = ["prior.name=pixel-diffusion", "prior.model=assets/tiny-prior", "camera.resolution=32",
             "prompt=a toy robot", "representation.resolution=16", "guidance.name=cfd", *SMALL]
    assert steady_reads(tmp_path, "reference-dmtet", extra) == {}


def test_latent_prior_gets_a_four_channel_field_at_latent_resolution(tmp_path):
    """Tiny SD (VAE factor 2, 16 px → 8² latents): the field lives in latent space, C = 4, one value per latent
    pixel integrating its 2 × 2-pixel footprint (render 16²), unit-variance on the surface."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    import tiny_diffusers
    from dreamcore.guidance.views import conditions
    from dreamcore.priors.stable_diffusion import StableDiffusionPrior
    from dreamcore.views import ViewPromptConfig

    folder = tiny_diffusers.save_stable_diffusion(tmp_path / "sd", "epsilon")
    prior = StableDiffusionPrior(StableDiffusionPrior.Config(name="stable-diffusion", model=str(folder),
                                                             cache_dir=str(tmp_path / "cache")))
    g = CFDGuidance(CFDGuidance.Config(noise_table=1 << 12, background_table=1 << 10, noise_cell=0.05))
    g.setup(prior, 100)
    cams = orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 2.4),
                         torch.full((2,), 40.0))
    render = sphere_render(cams, 16)
    render.rgb.requires_grad_(True)
    views = conditions(prior.encode_prompt("a cat"), cams, 2, ViewPromptConfig(enabled=False))
    losses = g(render, cams, prior, views, 0, gen(0))
    losses["cfd"].backward()
    assert render.rgb.grad is not None and torch.isfinite(render.rgb.grad).all()
    x = prior.to_model_space(render.rgb.detach())
    assert x.shape == (2, 4, 8, 8) and g.noise.table.shape == (1 << 12, 4)
    det, hit = g.noise(x.shape, render, cams)
    assert hit.float().mean() > 0.3 and det.shape == x.shape
