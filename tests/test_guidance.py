"""Method-agnostic guidance machinery (guidance.md §16.2): gradient injection, the ε/x̂_0 identity, v→ε
conversion, the CFG conventions and Perp-Neg, timestep schedules, and view-dependent prompting.

Closed-form priors (:mod:`dreamcore.priors.analytic`) stand in for a diffusion model; float64 throughout."""

import math

import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.guidance import common
from dreamcore.guidance.base import Guidance, GuidanceConfig
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.guidance.timesteps import DreamTimeConfig, TimestepSampler, dreamtime_density
from dreamcore.guidance.views import ViewConditions, conditions
from dreamcore.views import ViewPromptConfig, label_views, view_prompts
from dreamcore.priors.analytic import GaussianPrior, ReferenceSetPrior, sd_schedule
from dreamcore.priors.base import NoiseSchedule
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian(k=3, c=2, h=2, w=2, std=0.5, seed=0, **kw) -> GaussianPrior:
    means = torch.randn(k, c, h, w, generator=gen(seed), dtype=D)
    return GaussianPrior(means, std, **kw)


def plain_views(prior, b: int) -> ViewConditions:
    return conditions(prior.encode_prompt("p"), None, b, ViewPromptConfig(enabled=False))


def render_of(x: torch.Tensor) -> tuple[torch.Tensor, RenderOutput]:
    """A render holding x itself ([B, C, H, W] → rgb [B, H, W, C]) as the leaf being optimized."""
    rgb = x.detach().permute(0, 2, 3, 1).clone().requires_grad_(True)
    b, h, w = rgb.shape[:3]
    return rgb, RenderOutput(rgb=rgb, alpha=torch.ones(b, h, w, 1, dtype=D), depth=torch.zeros(b, h, w, 1, dtype=D))


# -- gradient injection ----------------------------------------------------------------------------------------------
def test_inject_gradient_is_grad_over_batch_and_drops_nans():
    x = torch.randn(4, 3, 2, 2, dtype=D, requires_grad=True)
    g = torch.randn(4, 3, 2, 2, dtype=D)
    loss = common.inject_gradient(x, g)
    assert loss.item() == pytest.approx(0.5 * g.pow(2).sum().item() / 4)
    loss.backward()
    assert torch.allclose(x.grad, g / 4, atol=1e-15)
    x.grad = None
    g[0, 0, 0, 0] = float("nan")
    common.inject_gradient(x, g).backward()
    assert x.grad[0, 0, 0, 0] == 0 and torch.isfinite(x.grad).all()


def test_guidance_loss_gradient_is_its_update_direction_over_batch():
    """∂L/∂x through the full forward (render → model space → loss) equals gradient(x)/B for the same draws,
    scaled by the loss weight λ(k)."""
    prior = gaussian()
    x = torch.randn(3, 2, 2, 2, dtype=D, generator=gen(1))
    rgb, render = render_of(x)
    views = plain_views(prior, 3)
    cfg = SDSGuidance.Config(guidance_scale=Scheduled.constant(7.5), weight=Scheduled(((0.0, 1.0), (10.0, 3.0))))
    sds = SDSGuidance(cfg)
    sds.setup(prior, 100)
    losses = sds(render, None, prior, views, 5, gen(3))
    losses["sds"].backward()
    g = sds.gradient(x, render, None, prior, views, 5, gen(3))
    assert torch.allclose(rgb.grad.permute(0, 3, 1, 2), 2.0 * g / 3, atol=1e-12)


# -- the ε / x̂_0 identity and prediction types ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "refs"])
def test_key_identity_eps_residual_is_scaled_x0_residual(kind):
    """ε̂ − ε = (α_t/σ_t)(x − x̂_0(x_t)) for x_t = α_t x + σ_t ε, any predictor."""
    prior = gaussian() if kind == "gaussian" else ReferenceSetPrior(torch.randn(5, 2, 2, 2, dtype=D, generator=gen(2)))
    emb = prior.encode_prompt("p").cond["default"].expand(4, -1)
    x = torch.randn(4, 2, 2, 2, dtype=D, generator=gen(4))
    eps = torch.randn(4, 2, 2, 2, dtype=D, generator=gen(5))
    t = torch.tensor([1, 250, 600, 999])
    x_t = prior.schedule.add_noise(x, eps, t)
    eps_hat = prior.predict_epsilon(x_t, t, emb)
    x0 = common.predicted_x0(prior.schedule, x_t, eps_hat, t)
    a, s = prior.schedule.alpha_sigma(t)
    assert torch.allclose(eps_hat - eps, common.broadcast(a / s, x) * (x - x0), atol=1e-10)
    assert torch.allclose(x0, prior.optimal_x0(x_t, t, emb), atol=1e-12)


def test_v_prediction_converts_exactly_to_epsilon():
    """An analytic v-model v = α ε* − σ x̂_0* converts back to ε* exactly (ε = α v + σ x_t)."""
    eps_prior = gaussian(std=[0.3, 0.7, 1.0])
    v_prior = GaussianPrior(eps_prior.means, eps_prior.stds, prediction_type="v_prediction")
    x_t = torch.randn(4, 2, 2, 2, dtype=D, generator=gen(6))
    t = torch.tensor([0, 300, 700, 999])
    emb = torch.tensor([[0.0], [1.0], [2.0], [1.0]], dtype=D)
    v = v_prior.predict_noise(x_t, t, emb)
    eps = eps_prior.predict_noise(x_t, t, emb)
    assert not torch.allclose(v, eps)
    assert torch.allclose(v_prior.predict_epsilon(x_t, t, emb), eps, atol=1e-12)


def test_noise_schedule_matches_stable_diffusion():
    ac = NoiseSchedule.scaled_linear().alphas_cumprod
    assert ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(1 - 0.00085, rel=1e-7)
    assert ac[1].item() == pytest.approx((1 - 0.00085) * (1 - (0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) / 999) ** 2),
                                         rel=1e-6)
    assert ac[-1].item() == pytest.approx(0.0047, abs=1e-4)  # diffusers' SD 1.x/2.x value (0.00466)
    assert torch.allclose(sd_schedule().alphas_cumprod.float(), ac)
    assert bool((ac[1:] < ac[:-1]).all())


def test_weightings():
    a, s = torch.tensor([0.6], dtype=D), torch.tensor([0.8], dtype=D)
    assert common.weighting("sds", a, s).item() == pytest.approx(0.64)
    assert common.weighting("uniform", a, s).item() == 1.0
    assert common.weighting("fantasia3d", a, s).item() == pytest.approx(0.6 * 0.64)
    assert common.weighting("ism", a, s).item() == pytest.approx(0.8 / 0.6)
    with pytest.raises(ValueError):
        common.weighting("nope", a, s)


# -- CFG conventions, Perp-Neg, scheduled scalars ----------------------------------------------------------------------
def test_cfg_diffusers_convention_and_threestudio_conversion_at_load():
    c, u = torch.tensor([1.0]), torch.tensor([0.0])
    assert common.classifier_free(c, u, 1.0).item() == 1.0
    assert common.classifier_free(c, u, 7.5).item() == 7.5
    assert common.omega_from_threestudio(100.0) == 101.0
    ts = Guidance(GuidanceConfig(guidance_scale=Scheduled(((0.0, 100.0), (10.0, 20.0))), scale_convention="threestudio"))
    df = Guidance(GuidanceConfig(guidance_scale=Scheduled(((0.0, 100.0), (10.0, 20.0)))))
    assert (ts.omega(0), ts.omega(5), ts.omega(10)) == (101.0, 61.0, 21.0)
    assert (df.omega(0), df.omega(5), df.omega(10)) == (100.0, 60.0, 20.0)


def test_threestudio_four_list_schedule_parses_to_linear_interpolation():
    s = Scheduled.parse([5000, 0.98, 0.5, 5001])
    assert s(0) == 0.98 and s(5000) == 0.98 and s(5000.5) == pytest.approx(0.74) and s(5001) == 0.5 and s(9e9) == 0.5
    clip = Scheduled.parse([0, 2.0, 8.0, 1000])
    assert (clip(0), clip(250), clip(1000), clip(5000)) == (2.0, 3.5, 8.0, 8.0)
    pairs = Scheduled.parse([[0, 1.0], [10, 2.0], [20, 0.0]])
    assert (pairs(5), pairs(15), pairs(-1)) == (1.5, 1.0, 1.0)


def test_perpendicular_is_orthogonal_per_sample():
    a = torch.randn(3, 2, 4, 4, dtype=D, generator=gen(7))
    b = torch.randn(3, 2, 4, 4, dtype=D, generator=gen(8)) * torch.tensor([1.0, 10.0, 0.1], dtype=D).view(3, 1, 1, 1)
    p = common.perpendicular(a, b)
    assert torch.allclose((p * b).sum((1, 2, 3)), torch.zeros(3, dtype=D), atol=1e-10)
    assert torch.allclose(common.perpendicular(2.5 * b, b), torch.zeros_like(b), atol=1e-12)
    # the projected-out part is parallel to b: a = p + c b per sample
    c = ((a - p) * b).sum((1, 2, 3)) / (b * b).sum((1, 2, 3))
    assert torch.allclose(a - p, common.broadcast(c, b) * b, atol=1e-12)
    assert torch.isfinite(common.perpendicular(a, torch.zeros_like(a))).all()  # the ‖b‖² guard


def test_perp_neg_with_negative_equal_to_positive_is_plain_cfg():
    prior = gaussian(k=3)
    b = 4
    views = plain_views(prior, b)
    x_t = torch.randn(b, 2, 2, 2, dtype=D, generator=gen(9))
    t = torch.tensor([100, 400, 700, 900])
    w = torch.tensor([-1.0, -2.0, 0.5, -3.0], dtype=D)
    pn = ViewConditions(views.cond, views.uncond, views.plain, views.null, views.labels,
                        negatives=[(views.cond, w), (views.cond, 2 * w)])
    eps_pn, raw = common.guided_epsilon(prior, x_t, t, pn, 7.5)
    eps_cfg, _ = common.guided_epsilon(prior, x_t, t, views, 7.5)
    assert torch.allclose(eps_pn, eps_cfg, atol=1e-12)
    # a genuinely different negative changes the result only by its perpendicular part
    other = prior.embedding(2).expand(b, 1)
    pn2 = ViewConditions(views.cond, views.uncond, views.plain, views.null, views.labels, negatives=[(other, w)])
    eps_pn2, raw = common.guided_epsilon(prior, x_t, t, pn2, 7.5)
    e_pos = raw["cond"] - raw["uncond"]
    e_neg = prior.predict_epsilon(x_t, t, other) - raw["uncond"]
    expected = raw["uncond"] + 7.5 * (e_pos + common.broadcast(w, e_pos) * common.perpendicular(e_neg, e_pos))
    assert torch.allclose(eps_pn2, expected, atol=1e-12)
    assert torch.allclose(((eps_pn2 - eps_cfg) * e_pos).sum((1, 2, 3)), torch.zeros(b, dtype=D), atol=1e-9)


# -- timestep schedules ----------------------------------------------------------------------------------------------
AC = sd_schedule().alphas_cumprod


def test_uniform_timesteps_cover_their_inclusive_bounds():
    s = TimestepSampler("uniform")
    t = s(20000, 0, 100, AC, 0.02, 0.5, gen(0))
    assert t.min().item() == 20 and t.max().item() == 500 and t.unique().numel() == 481
    assert common.timestep_bounds(0.5, 0.2, 1000) == (500, 500)  # kept non-empty
    assert common.timestep_bounds(0.0, 1.0, 1000) == (0, 999)
    assert s(4, 0, 100, AC, 0.3, 0.3, gen(0)).tolist() == [300] * 4


def test_shared_timestep_is_one_per_batch():
    t = TimestepSampler("uniform", shared=True)(64, 0, 100, AC, 0.02, 0.98, gen(1))
    assert t.shape == (64,) and t.unique().numel() == 1
    per_view = TimestepSampler("uniform")(64, 0, 100, AC, 0.02, 0.98, gen(1))
    assert per_view.unique().numel() > 1


@pytest.mark.parametrize("kind", ["linear", "sqrt"])
def test_deterministic_anneal_endpoints_and_midpoint(kind):
    s = TimestepSampler(kind)
    at = lambda k: s(2, k, 1000, AC, 0.25, 0.98, gen(0)).tolist()  # noqa: E731
    assert at(0) == [980, 980] and at(1000) == [250, 250]
    mid = 250 + 730 * (1 - (0.5 if kind == "linear" else 0.5**0.5))
    assert at(500) == [round(mid)] * 2
    ts = [at(k)[0] for k in range(0, 1001, 50)]
    assert all(b <= a for a, b in zip(ts, ts[1:]))


def test_dreamtime_is_monotone_and_follows_its_density():
    cfg = DreamTimeConfig()
    s = TimestepSampler("dreamtime", dreamtime=cfg)
    k_total = 4000
    ts = torch.tensor([int(s(1, k, k_total, AC, 0.0, 0.999, gen(0))) for k in range(k_total + 1)])
    assert bool((ts[1:] <= ts[:-1]).all())
    p = dreamtime_density(AC, cfg)
    assert p.sum().item() == pytest.approx(1.0) and int(p.argmax()) >= cfg.m2
    # the fraction of steps spent at t ≥ τ is the tail mass Σ_{t ≥ τ} p(t)
    for tau in (200, 400, 500, 650, 800, 900):
        frac = (ts >= tau).double().mean().item()
        assert frac == pytest.approx(p[tau:].sum().item(), abs=0.01)
    # histogram over 10 bins of t
    hist = torch.histc(ts.double(), bins=10, min=0, max=1000) / ts.numel()
    ref = torch.stack([p[i * 100:(i + 1) * 100].sum() for i in range(10)])
    assert torch.allclose(hist, ref, atol=0.01)


def test_random_until_samples_uniformly_first_then_follows_the_schedule():
    s = TimestepSampler("linear", random_until=0.3)
    early = torch.cat([s(8, k, 1000, AC, 0.02, 0.98, gen(k)) for k in range(0, 300, 30)])
    expected = torch.cat([torch.randint(20, 981, (8,), generator=gen(k)) for k in range(0, 300, 30)])
    assert torch.equal(early, expected)
    assert s(3, 300, 1000, AC, 0.02, 0.98, gen(0)).tolist() == [980] * 3  # the schedule starts over at k₀
    assert s(3, 650, 1000, AC, 0.02, 0.98, gen(0)).tolist() == [500] * 3
    assert s(3, 1000, 1000, AC, 0.02, 0.98, gen(0)).tolist() == [20] * 3


def test_unknown_schedule_fails():
    with pytest.raises(ValueError):
        TimestepSampler("cosine")


# -- view-dependent prompting ----------------------------------------------------------------------------------------
VIEW_TABLE = [  # azimuth, elevation, default thresholds (45/45/60), CSD thresholds (30/30/60)
    (0, 59, "front", "front"), (44, 59, "front", "side"), (-44, 59, "front", "side"), (46, 59, "side", "side"),
    (-46, 59, "side", "side"), (134, 59, "side", "side"), (-134, 59, "side", "side"), (136, 59, "back", "side"),
    (-136, 59, "back", "side"), (180, 59, "back", "back"), (-180, 59, "back", "back"), (360, 59, "front", "front"),
    (224, 59, "back", "side"), (0, 61, "overhead", "overhead"), (180, 61, "overhead", "overhead"),
    (90, 61, "overhead", "overhead"), (25, 59, "front", "front"), (-155, 59, "back", "back"),
]


def test_view_labels_table():
    el = torch.tensor([float(r[1]) for r in VIEW_TABLE])
    az = torch.tensor([float(r[0]) for r in VIEW_TABLE])
    assert label_views(el, az, ViewPromptConfig()) == [r[2] for r in VIEW_TABLE]
    csd = ViewPromptConfig(front_threshold=30.0, back_threshold=30.0)
    assert label_views(el, az, csd) == [r[3] for r in VIEW_TABLE]
    low = ViewPromptConfig(overhead_threshold=30.0)
    assert label_views(torch.tensor([31.0, 29.0]), torch.tensor([0.0, 0.0]), low) == ["overhead", "front"]


def test_view_prompt_texts():
    suffix = view_prompts("a cat", ViewPromptConfig())
    assert suffix == {"default": "a cat", "front": "a cat, front view", "side": "a cat, side view",
                      "back": "a cat, back view", "overhead": "a cat, overhead view"}
    prefix = view_prompts("a cat", ViewPromptConfig(style="prefix"))
    assert prefix["front"] == "front view of a cat" and prefix["back"] == "backside view of a cat"
    assert prefix["overhead"] == "overhead view of a cat" and prefix["default"] == "a cat"
    explicit = view_prompts("a cat", ViewPromptConfig(prompt_back="the cat's tail", style="prefix"))
    assert explicit["back"] == "the cat's tail" and explicit["side"] == "side view of a cat"


def _view_prior():
    names = {"y": 0, "uncond": 1, "null": 2, "front": 3, "side": 4, "back": 5, "overhead": 6}
    return ReferenceSetPrior(torch.randn(7, 1, 1, 1, dtype=D), labels=["y", "u", "n", "front", "side", "back",
                                                                        "overhead"]), names


def _cams(az, el):
    n = len(az)
    return orbit_cameras(torch.tensor(el, dtype=torch.float32), torch.tensor(az, dtype=torch.float32),
                         torch.full((n,), 3.0), torch.full((n,), 40.0))


def test_conditions_pick_each_views_label():
    prior, _ = _view_prior()
    emb = prior.encode_prompt("p")
    cams = _cams([0.0, 90.0, 180.0, 30.0], [10.0, 10.0, 10.0, 70.0])
    v = conditions(emb, cams, 4, ViewPromptConfig())
    assert v.labels == ["front", "side", "back", "overhead"]
    for i, lbl in enumerate(v.labels):
        assert torch.equal(v.cond[i], emb.cond[lbl][0])
    assert torch.equal(v.plain, emb.cond["default"].expand(4, -1)) and not v.negatives
    off = conditions(emb, cams, 4, ViewPromptConfig(), view_dependent=False)
    assert off.labels == ["default"] * 4 and torch.equal(off.cond, off.plain)


def test_perp_neg_view_weights_and_continuous_interpolation():
    cfg = ViewPromptConfig(perp_neg=True)
    f = lambda p, r: p[0] * math.exp(-p[1] * r) + p[2]  # noqa: E731
    assert abs(f(cfg.f_front_side, 1.0)) < 1e-3 and abs(f(cfg.f_side_back, 1.0)) < 1e-3
    prior, _ = _view_prior()
    emb = prior.encode_prompt("p")
    az = [0.0, 45.0, 89.999, 90.0, 90.001, 135.0, 180.0, -90.0, 30.0]
    el = [0.0] * 8 + [80.0]
    v = conditions(emb, _cams(az, el), len(az), cfg)
    e = {k: emb.cond[k][0] for k in ("front", "side", "back", "overhead")}
    assert torch.allclose(v.cond[0], e["front"]) and torch.allclose(v.cond[6], e["back"], atol=1e-6)
    assert torch.allclose(v.cond[1], 0.5 * e["front"] + 0.5 * e["side"], atol=1e-6)
    assert torch.allclose(v.cond[5], 0.5 * e["side"] + 0.5 * e["back"], atol=1e-6)
    for i in (2, 3, 4, 7):  # |ψ| ≈ 90 from either side: y⁺ ≈ E_side
        assert torch.allclose(v.cond[i], e["side"], atol=1e-4)
    assert torch.allclose(v.cond[8], e["overhead"])
    (n1, w1), (n2, w2) = v.negatives
    # front view: negatives (front, side) with weights (−f_fs(1), −f_sf(0)); f_fs(1) ≈ 0
    assert torch.allclose(n1[0], e["front"]) and torch.allclose(n2[0], e["side"])
    assert abs(w1[0].item()) < 1e-3 and w2[0].item() == pytest.approx(-(4.0 - 2.426))
    # back view: negatives (side, front), side weight −f_sb(0), front weight −f_fsb(0)
    assert torch.allclose(n1[6], e["side"]) and torch.allclose(n2[6], e["front"])
    assert w1[6].item() == pytest.approx(-(1.0 - 0.606), abs=1e-6) and w2[6].item() == pytest.approx(-(1 + 0.967))
    # across |ψ| = 90 the negatives swap slots (front half: (front, side), back half: (side, front)) but each
    # view's weight is continuous: front ≈ −f_fs(0) = −f_fsb(1), side ≈ −f_sf(1) = −f_sb(1) ≈ 0
    def weight_of(i, label):
        return sum(w[i].item() for n, w in v.negatives if torch.allclose(n[i], e[label]))

    for i in (2, 3, 4, 7):
        assert weight_of(i, "front") == pytest.approx(-(4.0 - 2.426), abs=2e-3)
        assert abs(weight_of(i, "side")) < 2e-3
    assert w1[8].item() == 0.0 and w2[8].item() == 0.0  # overhead: no negatives


# -- the analytic priors themselves ----------------------------------------------------------------------------------
def test_analytic_priors_on_pixel_subsets_match_full_images():
    gp = gaussian(h=3, w=4, std=[0.2, 0.5, 1.0])
    rp = ReferenceSetPrior(torch.randn(4, 2, 3, 4, dtype=D, generator=gen(1)))
    x_t = torch.randn(2, 2, 3, 4, dtype=D, generator=gen(2))
    t = torch.tensor([50, 700])
    pix = torch.tensor([[0, 5, 11], [3, 3, 7]])
    sub = x_t.flatten(2).gather(2, pix[:, None].expand(-1, 2, -1))[..., None]  # [B, C, N, 1]
    for prior, emb in ((gp, torch.tensor([[0.0], [2.0]], dtype=D)), (rp, rp.weights().expand(2, -1))):
        full = prior.predict_noise(x_t, t, emb).flatten(2).gather(2, pix[:, None].expand(-1, 2, -1))[..., None]
        if prior is gp:  # a Gaussian's marginal on a pixel subset is the same Gaussian on those pixels
            assert torch.allclose(prior.predict_noise(sub, t, emb, pixel_index=pix, image_size=(3, 4)), full)
        else:  # the references' posterior depends only on the pixels seen
            assert prior.predict_noise(sub, t, emb, pixel_index=pix, image_size=(3, 4)).shape == sub.shape


def test_gaussian_prior_conditions_are_integer_ids():
    prior = gaussian(k=4, names={"y": 2, "uncond": 0, "front": 3})
    assert prior.channels == 2
    emb = prior.encode_prompt("anything", "neg")
    assert emb.cond["default"].item() == 2 and emb.cond["front"].item() == 3
    assert emb.uncond.item() == 0 and emb.null.item() == 0  # null falls back to uncond
    with pytest.raises(ValueError):
        prior.predict_noise(torch.zeros(1, 2, 2, 2, dtype=D), torch.tensor([5]), torch.tensor([[0.5]]))
    with pytest.raises(ValueError):
        gaussian(k=2, names={"y": 5})


def test_reference_set_posterior_is_one_hot_at_low_noise_and_the_weights_at_high_noise():
    refs = torch.randn(4, 2, 3, 3, dtype=D, generator=gen(3))
    prior = ReferenceSetPrior(refs, labels=["y", "y", "u", "front"])
    emb = prior.encode_prompt("p")
    assert torch.equal(emb.cond["default"], torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=D))
    assert torch.equal(emb.cond["front"], torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=D))
    assert torch.equal(emb.uncond, torch.full((1, 4), 0.25, dtype=D)) and torch.equal(emb.null, emb.uncond)
    x = refs[2:3] + 0.01 * torch.randn(1, 2, 3, 3, dtype=D, generator=gen(4))  # near an unconditional-only ref
    t0 = torch.tensor([0])
    assert torch.allclose(prior.posterior(x, t0, emb.uncond), torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=D))
    p_cond = prior.posterior(x, t0, emb.cond["default"])
    assert p_cond[0, 2:].sum() == 0 and p_cond.max() == pytest.approx(1.0)  # the nearest *conditional* ref
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=D)
    x_t = prior.schedule.add_noise(x, torch.randn(1, 2, 3, 3, dtype=D, generator=gen(5)), torch.tensor([999]))
    t = torch.tensor([999])
    a, sig = prior.schedule.alpha_sigma(t)
    logits = w.log() - ((x_t - a * refs) ** 2).flatten(1).sum(1) / (2 * sig**2)
    assert torch.allclose(prior.posterior(x_t, t, w), torch.softmax(logits, 1))  # Bayes' rule, term by term
    # as α_t → 0 the data term vanishes and the posterior falls back to the weights (the prior over references)
    faint = ReferenceSetPrior(0.01 * refs)
    assert torch.allclose(faint.posterior(x_t, t, w), w, atol=2e-3)
    # weights act as mixture weights: interpolating two conditions mixes their posteriors' data
    mix = 0.5 * emb.cond["front"] + 0.5 * emb.uncond
    p = prior.posterior(x_t, torch.tensor([999]), mix)
    assert p[0, 3] > p[0, 0]
