"""RewardSDS / RewardVSD (dreamcore/guidance/reward.py) against its closed form on the Gaussian prior
(guidance-wave2.md §4), the registered rewards (dreamcore/guidance/rewards.py), the recipe, end-to-end runs on
NeRF, Gaussians and DMTet, and exact resume of RewardVSD's score model. float64 in the closed-form tests."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dreamcore import registry
from dreamcore.cameras import sample_orbit
from dreamcore.cli import main
from dreamcore.config import config_path, load_config, parse_component
from dreamcore.errors import DreamcoreError
from dreamcore.guidance.reward import RewardGuidance
from dreamcore.guidance.rewards import RewardContext, build_reward
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.schedule import Scheduled
from test_gaussians import GTINY
from test_guidance import D, gen, plain_views, render_of
from test_runner import TINY, assert_same_state

C = Scheduled.constant
T = 500  # the fixed timestep of the closed-form checks


def top2_mean(n: int) -> float:
    """m_N = E[mean of the two largest of N iid N(0, 1)] by quadrature of the order statistics' densities."""
    x = torch.linspace(-10, 10, 400001, dtype=D)
    pdf = torch.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    dx = (x[1] - x[0]).item()
    top = n * cdf ** (n - 1) * pdf  # the maximum
    second = n * (n - 1) * cdf ** (n - 2) * (1 - cdf) * pdf  # the second largest
    return 0.5 * ((x * top).sum() + (x * second).sum()).item() * dx


def toy(std=0.5, omega=3.0, seed=0):
    """Gaussian prior on one 3-channel pixel; y = 0, ∅ = 1, equal std: ε_ω = κ(x − μ_ω) + ρε."""
    mu = torch.randn(2, 3, 1, 1, generator=gen(seed), dtype=D)
    prior = GaussianPrior(mu, std)
    mu_w = mu[1] + omega * (mu[0] - mu[1])
    a, s = (v.item() for v in prior.schedule.alpha_sigma(torch.tensor([T])))
    d = a**2 * std**2 + s**2
    return prior, mu_w, dict(w=s**2, kappa=a * s / d, rho=s**2 / d)


def reward_guidance(model, omega=3.0, **reward) -> RewardGuidance:
    cfg = RewardGuidance.Config(guidance_scale=C(omega), t_min=C(T / 1000), t_max=C(T / 1000), weighting="sds")
    cfg.reward.model = model
    cfg.reward.duration = 1.0
    for k, v in reward.items():
        setattr(cfg.reward, k, v)
    return RewardGuidance(cfg)


def mean_gradient(guidance, prior, x, seed=0):
    guidance.setup(prior, 100)
    _, render = render_of(x)
    g = guidance.gradient(x, render, None, prior, plain_views(prior, x.shape[0]), 0, gen(seed))
    return g.mean(0), g.std(0) / x.shape[0] ** 0.5


# -- closed form ---------------------------------------------------------------------------------------------------
def test_order_statistic_constants_match_the_reference_doc():
    assert top2_mean(4) == pytest.approx(0.663, abs=1e-3)
    assert top2_mean(7) == pytest.approx(1.055, abs=1e-3)
    assert top2_mean(8) == pytest.approx(1.138, abs=1e-3)


@pytest.mark.parametrize("n_noises,ddim_steps", [(4, 0), (7, 15)])
def test_min_max_with_a_linear_reward_shifts_the_fixed_point_along_v(n_noises, ddim_steps):
    """R = ⟨x̂_0, v⟩: E[g] = 0.8 w κ (x − μ_ω) − w (1 − ρ) m_N v, so E[g] = 0 at x* = μ_ω + (1−ρ) m_N/(0.8κ) v
    (with the one-step x̂_0 and with the 15-step DDIM endpoint: both are increasing affine maps of ε)."""
    prior, mu_w, k = toy()
    v = torch.tensor([1.0, 2.0, -2.0], dtype=D) / 3.0
    guidance = reward_guidance({"name": "linear", "direction": v.tolist()}, n_noises=n_noises, ddim_steps=ddim_steps)
    m = top2_mean(n_noises)
    b = 20000 if ddim_steps == 0 else 4000
    x = torch.randn(1, 3, 1, 1, generator=gen(5), dtype=D).expand(b, -1, -1, -1).contiguous()
    mean, se = mean_gradient(guidance, prior, x, seed=1)
    expected = 0.8 * k["w"] * k["kappa"] * (x[0] - mu_w) - k["w"] * (1 - k["rho"]) * m * v.view(3, 1, 1)
    assert (mean - expected).abs().max() < 5 * se.max()
    sds_mean = k["w"] * k["kappa"] * (x[0] - mu_w)
    assert (mean - sds_mean).abs().max() > 20 * se.max()  # the reward term is far outside Monte-Carlo error
    # at the shifted fixed point the mean update vanishes
    shift = (1 - k["rho"]) * m / (0.8 * k["kappa"])
    x_star = (mu_w + shift * v.view(3, 1, 1))[None].expand(b, -1, -1, -1).contiguous()
    mean, se = mean_gradient(guidance, prior, x_star, seed=2)
    assert mean.abs().max() < 5 * se.max()


def test_a_constant_reward_is_0_8_sds_and_weighted_is_the_n_sample_average():
    prior, mu_w, k = toy()
    b, n = 4, 4
    x = torch.randn(b, 3, 1, 1, generator=gen(7), dtype=D)
    g = reward_guidance({"name": "constant"}, n_noises=n, ddim_steps=0)
    g.setup(prior, 100)
    _, render = render_of(x)
    got = g.gradient(x, render, None, prior, plain_views(prior, b), 0, gen(3))
    r = gen(3)  # replay: t, then the N noises
    torch.randint(T, T + 1, (b,), generator=r)
    per = []
    for _ in range(n):
        eps = torch.randn(x.shape, generator=r).to(x)
        per.append(k["w"] * (k["kappa"] * (x - mu_w) + k["rho"] * eps - eps))  # w (ε_ω − ε), closed form
    # ties keep index order: top-2 = noises 0, 1; bottom-2 = noises 2, 3
    assert torch.allclose(got, 0.9 * (per[0] + per[1]) / 2 - 0.1 * (per[2] + per[3]) / 2, atol=1e-10)
    weighted = reward_guidance({"name": "constant"}, n_noises=n, ddim_steps=0, strategy="weighted")
    weighted.setup(prior, 100)
    assert torch.allclose(weighted.gradient(x, render, None, prior, plain_views(prior, b), 0, gen(3)),
                          sum(per) / n, atol=1e-10)
    # in expectation: 0.8 × SDS's mean w κ (x − μ_ω)
    bb = 20000
    xs = x[:1].expand(bb, -1, -1, -1).contiguous()
    mean, se = mean_gradient(reward_guidance({"name": "constant"}, n_noises=n, ddim_steps=0), prior, xs)
    assert (mean - 0.8 * k["w"] * k["kappa"] * (x[0] - mu_w)).abs().max() < 5 * se.max()


def test_after_the_reward_duration_it_is_plain_single_noise_sds():
    prior, mu_w, k = toy()
    x = torch.randn(3, 3, 1, 1, generator=gen(8), dtype=D)
    g = reward_guidance({"name": "constant"}, n_noises=4, ddim_steps=0)
    g.cfg.reward.duration = 0.5
    g.setup(prior, 100)
    _, render = render_of(x)
    got = g.gradient(x, render, None, prior, plain_views(prior, 3), 50, gen(4))
    r = gen(4)
    torch.randint(T, T + 1, (3,), generator=r)
    eps = torch.randn(x.shape, generator=r).to(x)
    assert torch.allclose(got, k["w"] * (k["kappa"] * (x - mu_w) + (k["rho"] - 1) * eps), atol=1e-10)


def test_reward_vsd_starts_at_0_8_times_vsd_and_trains_its_score_model():
    """base vsd: the zero-initialized residual score model is ε_q = ε_y at the start, so g_i = w(ω−1)κ(μ_∅ − μ_y)
    for every noise (noise-free) and min-max gives exactly 0.8 of it."""
    omega = 3.0
    prior, _, k = toy(omega=omega)
    g = reward_guidance({"name": "linear"}, omega=omega, n_noises=4, ddim_steps=2, base="vsd")
    g.setup(prior, 100)
    assert set(g.optimizers()) == {"score"}
    x = torch.randn(2, 3, 1, 1, generator=gen(9))  # the score networks run in float32
    rgb, render = render_of(x)
    cams = sample_orbit(2, gen(0))
    got = g.gradient(x, render, cams, prior, plain_views(prior, 2), 0, gen(1))
    mu = prior.means
    expected = 0.8 * k["w"] * (omega - 1) * k["kappa"] * (mu[1] - mu[0])
    assert torch.allclose(got, expected.expand_as(got).float(), atol=1e-5)
    before = [p.detach().clone() for p in g.score.parameters()]
    loss = g(render, cams, prior, plain_views(prior, 2), 0, gen(1))["reward"]
    loss.backward()
    assert rgb.grad is not None and any(not torch.equal(a, p) for a, p in zip(before, g.score.parameters()))


def test_strategy_weights_and_bad_settings():
    g = reward_guidance({"name": "constant"}, n_noises=5)
    r = torch.tensor([[0.1], [0.5], [-1.0], [0.3], [0.0]], dtype=D)
    assert torch.allclose(g.combination(r)[:, 0], torch.tensor([0.0, 0.45, -0.05, 0.45, -0.05], dtype=D))
    g.cfg.reward.strategy = "best"
    assert torch.allclose(g.combination(r)[:, 0], torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0], dtype=D))
    g.cfg.reward.strategy = "weighted"
    assert torch.allclose(g.combination(r)[:, 0], torch.softmax(r[:, 0], 0))
    with pytest.raises(DreamcoreError, match="too few"):
        reward_guidance({"name": "constant"}, n_noises=1)
    with pytest.raises(DreamcoreError, match="unknown reward 'imagereward'.*clip"):
        reward_guidance({"name": "imagereward"})


# -- rewards -------------------------------------------------------------------------------------------------------
def test_the_reference_reward_prefers_the_true_view_and_handles_pixel_subsets():
    prior = registry.build("prior", load_config(None, ["prior.name=reference", "prior.bank_views=4"]).prior)
    cams = sample_orbit(2, gen(2)).with_background(torch.rand(2, 3, generator=gen(1)))
    truth, _ = prior.reference_views(cams, 16, 16, cams.background)
    x_true = truth.permute(0, 3, 1, 2) * 2 - 1
    x_off = x_true + 0.3 * torch.randn(x_true.shape, generator=gen(3))
    reward = build_reward({"name": "reference"})
    r = reward(torch.stack([x_off, x_true]), RewardContext(prior, cams, None, (16, 16)))
    assert r.shape == (2, 2) and torch.allclose(r[1], torch.zeros(2), atol=1e-6) and bool((r[0] < -0.05).all())
    idx = torch.tensor([[0, 5, 100, 255], [17, 18, 19, 200]])
    sub = x_off.reshape(2, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None]
    r_sub = reward(sub[None], RewardContext(prior, cams, idx, (16, 16)))
    direct = -(sub - x_true.reshape(2, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None]).pow(2)
    assert torch.allclose(r_sub[0], direct.flatten(1).mean(1), atol=1e-6)
    gauss = GaussianPrior(torch.zeros(1, 3, 1, 1), 1.0)
    with pytest.raises(DreamcoreError, match="reference views"):
        reward(x_true[None], RewardContext(gauss, cams, None, (16, 16)))


def test_the_clip_reward_fails_clearly_without_weights(tmp_path):
    missing = tmp_path / "no-clip-here"
    reward = build_reward({"name": "clip", "model": str(missing), "text": "a robot", "local_files_only": True})
    with pytest.raises(DreamcoreError, match=f"cannot load CLIP model '{missing}'"):
        reward.setup(None)
    hub = build_reward({"name": "clip", "text": "a robot", "local_files_only": True})
    with pytest.raises(DreamcoreError, match="openai/clip-vit-base-patch32"):
        hub.setup(None)
    with pytest.raises(DreamcoreError, match="needs the text"):
        build_reward({"name": "clip"}).setup(None)
    cfg = parse_component("reward", {"name": "clip", "text": "x"}, "guidance.reward.model")
    assert cfg.model == "openai/clip-vit-base-patch32"


# -- recipe, runs, resume ------------------------------------------------------------------------------------------
def test_the_recipe_loads_with_the_official_defaults():
    cfg = load_config(config_path("reward"), [])
    g = cfg.guidance
    assert g.name == "reward" and g.reward.base == "sds" and g.reward.n_noises == 7
    assert (g.reward.strategy, g.reward.lambda_max, g.reward.lambda_min, g.reward.n_max, g.reward.n_min) == \
        ("min-max", 0.9, 0.1, 2, 2)
    assert g.reward.duration == 0.7 and g.reward.ddim_steps == 15 and g.reward.ddim_guidance_scale == 7.5
    assert g.reward.model.name == "reference" and g.weighting == "sds"
    guidance = registry.build("guidance", g)
    assert guidance.omega(0) == 50.0
    assert g.t_min(0) == pytest.approx(0.98) and g.t_min(8000) == pytest.approx(0.02)
    assert g.t_max(4000) == pytest.approx(0.74) and g.t_max(8000) == pytest.approx(0.5)
    vsd = load_config(config_path("reward"), ["guidance.reward.base=vsd"]).guidance
    assert vsd.reward.base == "vsd"


FAST = ["guidance.name=reward", "guidance.reward.n_noises=2", "guidance.reward.ddim_steps=0",
        "guidance.reward.duration=1.0"]


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_reward_vsd_runs_on_nerf_and_resumes_exactly(tmp_path):
    common = [*TINY, *FAST, "guidance.reward.base=vsd", "guidance.reward.model.name=linear"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, "run.steps=4", f"run.dir={full}"]) == 0
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, "run.steps=2", f"run.dir={part}"]) == 0
    assert main(["generate", "--resume", str(part), "run.steps=4"]) == 0
    a, b = load_file(str(full / "ckpt/last.safetensors")), load_file(str(part / "ckpt/last.safetensors"))
    assert any(k.startswith("optim@guidance.score.") for k in a)
    assert any(k.startswith("model.guidance.score.") for k in a)
    assert_same_state(a, b)
    assert " reward=" in (full / "log.txt").read_text()
    assert "name: reward" in (full / "config.yaml").read_text()


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_reward_sds_trains_gaussians(tmp_path):
    run = tmp_path / "gs"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=3", *FAST,
                 f"run.dir={run}"]) == 0
    assert " reward=" in (run / "log.txt").read_text()
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_reward_sds_refines_a_dmtet_surface(tmp_path):
    run = tmp_path / "dmtet"
    assert main(["generate", "--config", "configs/reference-dmtet.yaml", "run.steps=2", "run.progress=false",
                 "run.val_every=0", "run.checkpoint_every=0", "prior.bank_views=4", "eval.views=2",
                 "eval.resolution=16", "camera.batch_size=2", "camera.resolution=24", "representation.resolution=16",
                 "export.formats=[]", *FAST, f"run.dir={run}"]) == 0
    assert " reward=" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2



@pytest.mark.slow
def test_a_reward_step_reads_nothing_back_on_a_learned_prior(tmp_path, monkeypatch):
    from test_host_sync import NERF, steady_reads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert steady_reads(tmp_path, "text-nerf", NERF + FAST + ["guidance.reward.model.name=linear",
                                                              "guidance.reward.ddim_steps=1"]) == {}


def test_the_reference_reward_refuses_a_prior_without_reference_views_at_setup():
    prior, _, _ = toy()
    with pytest.raises(DreamcoreError, match="reward 'reference' needs a prior with reference views"):
        reward_guidance({"name": "reference"}).setup(prior, 100)
