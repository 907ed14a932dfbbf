"""Stein Score Distillation (dreamcore/guidance/stein.py) against its closed forms (guidance-wave2.md §1): the
control variate ε φ − σ ∇φ has zero mean (Monte Carlo; the project page's sign does not), φ ≡ 1 with μ* = −ρ is
noise-free with SDS's mean on the Gaussian prior, the μ estimators find −ρ; baselines that cannot load fail
clearly; the recipe; runs on NeRF (with exact resume of μ and its optimizer), Gaussians and DMTet."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dreamcore import registry
from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.guidance.stein import BASELINES, SteinGuidance
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled
from test_gaussians import GTINY
from test_guidance import D, gen, plain_views, render_of
from test_runner import TINY, assert_same_state

C = Scheduled.constant


def toy(std=1.0, omega=3.0, t=200, shape=(3, 1, 1), seed=0):
    """Gaussian prior, y = 0, ∅ = 1, equal std: ε_ω = κ(x − μ_ω) + ρε; constants at timestep t."""
    mu = torch.randn(2, *shape, generator=gen(seed), dtype=D)
    prior = GaussianPrior(mu, std)
    a, s = (v.item() for v in prior.schedule.alpha_sigma(torch.tensor([t])))
    d = a**2 * std**2 + s**2
    return prior, mu[1] + omega * (mu[0] - mu[1]), dict(w=s**2, kappa=a * s / d, rho=s**2 / d, sigma=s)


def stein(t=200, omega=3.0, **kw) -> SteinGuidance:
    return SteinGuidance(SteinGuidance.Config(guidance_scale=C(omega), t_min=C(t / 1000), t_max=C(t / 1000),
                                              weighting="sds", **kw))


def depth_render(x, seed=1):
    """A render of x whose depth is a fixed random map, the same for every batch element."""
    _, render = render_of(x)
    b, c, h, w = x.shape
    depth = torch.rand(1, h, w, 1, generator=gen(seed), dtype=D).expand(b, -1, -1, -1)
    return RenderOutput(rgb=render.rgb, alpha=render.alpha, depth=depth)


def test_the_control_variate_has_zero_mean_and_the_pages_sign_does_not():
    """φ = 1 − Pearson(depth, a·x_t) (non-linear in x_t): E_ε[ε φ − σ ∇φ] = 0 by Stein's identity; the project
    page's ε φ + σ ∇φ has mean 2σ E[∇φ] ≠ 0."""
    prior, _, k = toy(std=0.5, t=300, shape=(3, 4, 4))
    g = stein(t=300, baseline="analytic")
    g.setup(prior, 100)
    b = 20000
    x = torch.randn(1, 3, 4, 4, generator=gen(3), dtype=D).expand(b, -1, -1, -1).contiguous()
    render = depth_render(x)
    noise = torch.randn(x.shape, generator=gen(4), dtype=D)
    t = torch.full((b,), 300)
    x_t = prior.schedule.add_noise(x, noise, t)
    sigma = torch.full((b,), k["sigma"], dtype=D)
    h = g.control_variate(x_t, noise, sigma, render, prior)
    z = h.mean(0) / (h.std(0) / b**0.5)  # 48 standardized means: ~N(0, 1) each when E[h] = 0
    assert z.abs().max() < 5 and z.pow(2).mean().sqrt() < 1.4
    phi, grad = g.baseline.value_and_grad(x_t, render, prior)
    assert phi.std() > 0.05  # φ really varies with ε
    page = noise * phi.view(-1, 1, 1, 1) + k["sigma"] * grad
    se_page = page.std(0) / b**0.5
    assert (page.mean(0).abs() / se_page).max() > 15


def test_for_any_phi_and_mu_the_mean_update_is_sdss():
    prior, mu_w, k = toy(std=0.5, t=300, shape=(3, 4, 4))
    b = 20000
    x = torch.randn(1, 3, 4, 4, generator=gen(5), dtype=D).expand(b, -1, -1, -1).contiguous()
    g = stein(t=300, baseline="analytic", mu="fixed", mu_init=0.7)
    g.setup(prior, 100)
    out = g.gradient(x, depth_render(x), None, prior, plain_views(prior, b), 0, gen(6))
    se = out.std(0) / b**0.5
    assert ((out.mean(0) - k["w"] * k["kappa"] * (x[0] - mu_w)).abs() / se).max() < 5


def test_phi_one_with_mu_star_minus_rho_is_noise_free_and_mu_minus_one_is_sds():
    prior, mu_w, k = toy()
    b = 4000
    x = torch.randn(b, 3, 1, 1, generator=gen(1), dtype=D)
    views = plain_views(prior, b)
    best = stein(baseline="constant", mu="fixed", mu_init=-k["rho"])
    best.setup(prior, 100)
    _, render = render_of(x)
    got = best.gradient(x, render, None, prior, views, 0, gen(2))
    assert torch.allclose(got, k["w"] * k["kappa"] * (x - mu_w), atol=1e-10)  # zero variance given x
    sds_like = stein(baseline="constant", mu="fixed", mu_init=-1.0)
    sds_like.setup(prior, 100)
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(3.0), t_min=C(0.2), t_max=C(0.2), weighting="sds"))
    g_sds = sds.gradient(x, render, None, prior, views, 0, gen(2))
    assert torch.allclose(sds_like.gradient(x, render, None, prior, views, 0, gen(2)), g_sds, atol=1e-12)
    residual = g_sds - k["w"] * k["kappa"] * (x - mu_w)  # SDS's noise: variance w²(1 − ρ)²
    assert residual.var().item() == pytest.approx((k["w"] * (1 - k["rho"])) ** 2, rel=0.05)


def test_the_optimal_estimate_finds_minus_rho_from_earlier_steps_only():
    prior, mu_w, k = toy()
    b = 2000
    x = (mu_w + 0.2 * torch.randn(3, 1, 1, generator=gen(1), dtype=D)).expand(b, -1, -1, -1).contiguous()
    views = plain_views(prior, b)
    g = stein(baseline="constant", mu="optimal")
    g.setup(prior, 100)
    rgb, render = render_of(x)
    g(render, None, prior, views, 0, gen(0))
    assert g.last_mu.item() == -1.0  # step 0 used μ_init: nothing was estimated before it
    bin_ = 200 * 10 // 1000
    estimate = -(g.mu_num[bin_] / g.mu_den[bin_]).item()
    assert estimate == pytest.approx(-k["rho"], abs=0.02)
    assert int((g.mu_den > 0).sum()) == 1  # only the bin of t = 200 was seen
    out = g.gradient(x, render, None, prior, views, 1, gen(1))
    sds_var = (k["w"] * (1 - k["rho"])) ** 2
    assert out.var(0).max().item() < 0.01 * sds_var


def test_the_learned_mu_descends_from_sds_toward_minus_rho():
    prior, _, k = toy()
    b = 256
    x = torch.randn(b, 3, 1, 1, generator=gen(1), dtype=D)
    views = plain_views(prior, b)
    g = stein(baseline="constant", mu="learned", mu_lr=0.05)
    g.setup(prior, 100)
    assert set(g.optimizers()) == {"mu"}
    r = gen(0)
    for step in range(80):
        _, render = render_of(x)
        g(render, None, prior, views, step, r)
    assert g.mu_table[2].item() == pytest.approx(-k["rho"], abs=0.1)
    assert k["rho"] < 0.3 and g.mu_table[0].item() == -1.0  # unvisited bins keep μ_init


def test_baselines_choose_and_fail_clearly(tmp_path):
    assert {"analytic", "constant", "depth"} <= set(BASELINES)
    assert stein().baseline.name == "analytic"
    missing = tmp_path / "no-midas"
    auto = stein(depth_model=str(missing), depth_local_files_only=True)
    assert auto.baseline.name == "depth"
    prior, _, _ = toy()
    with pytest.raises(DreamcoreError, match=f"cannot load depth model '{missing}'"):
        auto.setup(prior, 100)
    hub = stein(baseline="depth", depth_model="Intel/dpt-hybrid-midas", depth_local_files_only=True)
    with pytest.raises(DreamcoreError, match="Intel/dpt-hybrid-midas"):
        hub.setup(prior, 100)
    with pytest.raises(DreamcoreError, match="needs a depth estimator"):
        stein(baseline="depth").setup(prior, 100)


def test_the_recipe_loads():
    cfg = load_config(config_path("stein"), [])
    g = cfg.guidance
    assert (g.name, g.baseline, g.mu, g.mu_init, g.weighting) == ("stein", "auto", "learned", -1.0, "sds")
    guidance = registry.build("guidance", g)
    assert guidance.omega(0) == 101.0 and guidance.baseline.name == "analytic"


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_stein_runs_on_nerf_and_resumes_exactly(tmp_path):
    common = [*TINY, "guidance.name=stein"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, "run.steps=4", f"run.dir={full}"]) == 0
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common, "run.steps=2", f"run.dir={part}"]) == 0
    assert main(["generate", "--resume", str(part), "run.steps=4"]) == 0
    a, b = load_file(str(full / "ckpt/last.safetensors")), load_file(str(part / "ckpt/last.safetensors"))
    assert any(k.startswith("optim@guidance.mu.") for k in a)
    assert "model.guidance.mu_table" in a and "model.guidance.depth_map" in a
    assert not torch.equal(a["model.guidance.mu_table"], torch.full((10,), -1.0))  # μ was trained
    assert_same_state(a, b)
    assert " stein=" in (full / "log.txt").read_text()


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_stein_with_the_optimal_mu_trains_gaussians(tmp_path):
    run = tmp_path / "gs"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=3",
                 "guidance.name=stein", "guidance.mu=optimal", f"run.dir={run}"]) == 0
    assert " stein=" in (run / "log.txt").read_text()
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0
    state = load_file(str(run / "ckpt/last.safetensors"))
    assert bool((state["model.guidance.mu_den"] > 0).any())


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_stein_refines_a_dmtet_surface(tmp_path):
    run = tmp_path / "dmtet"
    assert main(["generate", "--config", "configs/reference-dmtet.yaml", "run.steps=2", "run.progress=false",
                 "run.val_every=0", "run.checkpoint_every=0", "prior.bank_views=4", "eval.views=2",
                 "eval.resolution=16", "camera.batch_size=2", "camera.resolution=24", "representation.resolution=16",
                 "export.formats=[]", "guidance.name=stein", f"run.dir={run}"]) == 0
    assert " stein=" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("mu", ["learned", "optimal"])
def test_a_stein_step_reads_nothing_back_on_a_learned_prior(tmp_path, monkeypatch, mu):
    from test_host_sync import NERF, steady_reads

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert steady_reads(tmp_path, "text-nerf", NERF + ["guidance.name=stein", f"guidance.mu={mu}"]) == {}
