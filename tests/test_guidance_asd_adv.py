"""Adversarial Score Distillation (``asd-adv``): γ = 0 is VSD bit for bit; the discriminator loss is
‖ε_φ − ε′‖² + γ‖ε_φ − ε_pre,c‖² with replayed draws (ε and v targets); on the Gaussian toy the trained
discriminator reaches the closed-form optimum 4ε_q − 3ε_pre,c, so g = VSD + 3w(ε_pre,c − ε_q); CLI runs on
NeRF / Gaussians / DMTet, exact resume, and the recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.errors import DreamcoreError
from dreamcore.guidance import common
from dreamcore.guidance.asd_adv import AdversarialSDGuidance, pretrained_conditional
from dreamcore.guidance.views import ViewConditions
from dreamcore.guidance.vsd import VSDGuidance
from dreamcore.priors.analytic import GaussianPrior
from dreamcore.schedule import Scheduled
from test_gaussians import GTINY
from test_guidance import gen, plain_views, render_of
from test_guidance_closed_form import cams
from test_runner import TINY, assert_same_state

F = torch.float32
C = Scheduled.constant
KW = dict(pixel_index=None, image_size=None)


def means(k=3, shape=(2, 2, 2), seed=0):
    return torch.randn(k, *shape, generator=gen(seed)).to(F)


def view_conditions(prior, b):
    """cond (view-dependent, id 2) differs from plain (id 0): the γ term must use cond, the score model plain."""
    e = lambda k: GaussianPrior.embedding(k).expand(b, 1)  # noqa: E731
    return ViewConditions(e(2), e(1), e(0), e(1), ["default"] * b)


def test_gamma_zero_reproduces_vsd_exactly_and_the_default_differs():
    prior = GaussianPrior(means(), [0.3, 0.9, 0.5])
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    views = view_conditions(prior, 4)
    out = {}
    for name, cls, extra in (("vsd", VSDGuidance, {}), ("asd0", AdversarialSDGuidance, {"gamma": 0.0}),
                             ("asd", AdversarialSDGuidance, {})):
        torch.manual_seed(0)
        g = cls(cls.Config(score_lr=C(1e-2), **extra))
        g.setup(prior, 10)
        r, grads, losses = gen(7), [], []
        for k in range(3):
            rgb, render = render_of(x)
            sum(g(render, cams(4), prior, views, k, r).values()).backward()
            grads.append(rgb.grad.clone())
            losses.append(g.last_score_loss)
        out[name] = (torch.stack(grads), torch.stack(losses))
    assert torch.equal(out["vsd"][0], out["asd0"][0]) and torch.equal(out["vsd"][1], out["asd0"][1])
    assert torch.equal(out["vsd"][0][0], out["asd"][0][0])  # same generator step before any discriminator update
    assert not torch.allclose(out["vsd"][0][2], out["asd"][0][2], atol=1e-6)  # γ changed the discriminator
    assert not torch.allclose(out["vsd"][1], out["asd"][1])


@pytest.mark.parametrize("gamma", [-0.75, 0.5])
def test_discriminator_loss_is_dsm_plus_gamma_distance_to_the_frozen_conditional(gamma):
    """Zero-initialized residual net: ε_φ = ε_prior(x_τ; plain) at the first update, so the returned loss is
    known in closed form from replayed draws (τ, ε′)."""
    prior = GaussianPrior(means(), [0.3, 0.9, 0.5])
    asd = AdversarialSDGuidance(AdversarialSDGuidance.Config(gamma=gamma))
    asd.setup(prior, 10)
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    views = view_conditions(prior, 4)
    loss = asd.train_score(prior, x, views, cams(4), gen(3), KW)
    r = gen(3)
    tau = torch.randint(0, 1000, (4,), generator=r)
    eps = torch.randn(x.shape, generator=r)
    x_tau = prior.schedule.add_noise(x, eps, tau)
    pred = prior.predict_epsilon(x_tau, tau, views.plain)
    pre = prior.predict_epsilon(x_tau, tau, views.cond)
    expected = ((pred - eps) ** 2).mean() + gamma * ((pred - pre) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    wrong = ((pred - eps) ** 2).mean() + gamma * ((pred - prior.predict_epsilon(x_tau, tau, views.plain)) ** 2).mean()
    assert abs(loss.item() - wrong.item()) > 1e-3  # the γ term uses the view-dependent prompt


def test_perp_neg_conditional_target_is_the_official_cfg_free_combination():
    """With Perp-Neg negatives, ε_pre,c = ε_pos + Σ_i w_i perp(ε_neg,i, ε_pos) (ε_∅ not subtracted)."""
    prior = GaussianPrior(means(k=4), [0.3, 0.9, 0.5, 0.7])
    b = 3
    e = lambda k: GaussianPrior.embedding(k).expand(b, 1)  # noqa: E731
    w1, w2 = torch.tensor([-0.5, -1.0, -2.0]), torch.tensor([-0.1, 0.0, -0.3])
    views = ViewConditions(e(2), e(1), e(0), e(1), ["default"] * b, negatives=[(e(3), w1), (e(0), w2)])
    x_t = torch.randn(b, 2, 2, 2, generator=gen(2)).to(F)
    t = torch.tensor([100, 500, 900])
    out = pretrained_conditional(prior, x_t, t, views, None, KW)
    pos = prior.predict_epsilon(x_t, t, e(2))
    expected = pos + common.broadcast(w1, pos) * common.perpendicular(prior.predict_epsilon(x_t, t, e(3)), pos) \
        + common.broadcast(w2, pos) * common.perpendicular(prior.predict_epsilon(x_t, t, e(0)), pos)
    assert torch.allclose(out, expected, atol=1e-6) and not torch.allclose(out, pos, atol=1e-3)


def test_v_prediction_lora_discriminator_uses_velocity_targets_with_the_clean_render():
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from test_vsd_lora import TinyUNetPrior

    prior = TinyUNetPrior("v_prediction")
    asd = AdversarialSDGuidance(AdversarialSDGuidance.Config())
    asd.setup(prior, 10)
    assert type(asd.score).__name__ == "LoRAScore" and asd.score.prediction_type == "v_prediction"
    g = gen(0)
    emb = torch.randn(2, 3, 8, generator=g)
    views = ViewConditions(emb + 1.0, torch.zeros_like(emb), emb, torch.zeros_like(emb), ["default"] * 2)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    with torch.no_grad():
        r = gen(5)
        tau = torch.randint(0, 1000, (2,), generator=r)
        eps = torch.randn(x.shape, generator=r)
        x_tau = prior.schedule.add_noise(x, eps, tau)
        v_pred = prior.predict_noise(x_tau, tau, views.plain)  # zero-init LoRA: the prior itself
        pre = prior.predict_epsilon(x_tau, tau, views.cond)
        a, s = (common.broadcast(v, x) for v in prior.schedule.alpha_sigma(tau))
        expected = ((v_pred - (a * eps - s * x)) ** 2).mean() - 0.75 * ((v_pred - (a * pre - s * x)) ** 2).mean()
    loss = asd.train_score(prior, x, views, cams(2), gen(5), KW)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


class LinearScore(torch.nn.Module):
    """A stand-in discriminator at one timestep: ε_φ(x_τ) = a x_τ + b (affine, like every Gaussian score)."""

    prediction_type = "epsilon"

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0))
        self.b = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, prior, x_t, t, embeddings, cameras, keep, pixel_index=None, image_size=None):
        return self.a * x_t + self.b

    raw = forward


def test_trained_discriminator_reaches_4_eps_q_minus_3_eps_pre_and_g_is_vsd_plus_three_gaps():
    """Renders q = N(m, s_q²), prior y = N(μ, s²), τ = 500: ε_q, ε_pre,c are affine in x_τ, so the affine model's
    optimum of L_φ is the pointwise (ε_q + γ ε_pre,c)/(1 + γ) = 4ε_q − 3ε_pre,c at γ = −0.75."""
    m, s_q, mu, s = 0.0, 0.5, 1.0, 0.3
    prior = GaussianPrior(torch.tensor([mu, -mu], dtype=F).view(2, 1, 1, 1), s)
    asd = AdversarialSDGuidance(AdversarialSDGuidance.Config(guidance_scale=C(1.0), score_t_min=0.5,
                                                             score_t_max=0.5, camera_dropout=0.0))
    asd.setup(prior, 10)
    asd.score = LinearScore()
    asd._optimizer = torch.optim.Adam(asd.score.parameters(), lr=0.05)
    n = 1024
    views, cm, r = plain_views(prior, n), cams(n), gen(11)
    for k in range(400):
        for group in asd._optimizer.param_groups:
            group["lr"] = 0.05 if k < 200 else (0.005 if k < 320 else 0.0005)
        x = (m + s_q * torch.randn(n, 1, 1, 1, generator=r)).to(F)
        asd.train_score(prior, x, views, cm, r, KW)
    a, sig = (v.item() for v in prior.schedule.alpha_sigma(torch.tensor([500])))
    slope_q, slope_p = sig / (a**2 * s_q**2 + sig**2), sig / (a**2 * s**2 + sig**2)
    a_star, b_star = 4 * slope_q - 3 * slope_p, -4 * slope_q * a * m + 3 * slope_p * a * mu
    assert asd.score.a.item() == pytest.approx(a_star, abs=0.03)
    assert asd.score.b.item() == pytest.approx(b_star, abs=0.03)
    assert abs(b_star - 0.0) > 1.0 and abs(a_star - slope_q) > 0.15  # far from VSD's optimum (ε_q itself)
    # the generator's update at the trained discriminator: g = w(ε_pre − ε_q) + 3w(ε_pre − ε_q), ω = 1
    x_t = torch.linspace(-2, 2, 9, dtype=F).view(9, 1, 1, 1)
    eps_q = slope_q * (x_t - a * m)
    eps_pre = slope_p * (x_t - a * mu)
    with torch.no_grad():
        g = sig**2 * (eps_pre - asd.score(prior, x_t, None, None, None, None))
    assert torch.allclose(g, sig**2 * ((eps_pre - eps_q) + 3 * (eps_pre - eps_q)), atol=0.06)


def test_gamma_at_or_below_minus_one_is_refused():
    with pytest.raises(DreamcoreError, match="γ must be > −1"):
        AdversarialSDGuidance(AdversarialSDGuidance.Config(gamma=-1.0)).setup(GaussianPrior(means(), 0.5), 10)


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_trains_gaussians(tmp_path):
    run = tmp_path / "gs"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=3",
                 "guidance.name=asd-adv", "guidance.weighting=ism", f"run.dir={run}"]) == 0
    assert " asd_adv=" in (run / "log.txt").read_text()
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0


DTINY = ["run.steps=2", "run.checkpoint_every=2", "run.val_every=0", "run.val_resolution=16", "run.progress=false",
         "camera.resolution=24", "camera.batch_size=2", "representation.resolution=16", "export.formats=[]",
         "eval.views=2", "eval.resolution=16", "prior.bank_views=4"]


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_refines_a_dmtet_surface(tmp_path):
    run = tmp_path / "dmtet"
    assert main(["generate", "--config", "configs/reference-dmtet.yaml", *DTINY, "guidance.name=asd-adv",
                 f"run.dir={run}"]) == 0
    assert " asd_adv=" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_runs_on_nerf_through_generate_and_resumes_exactly_with_the_discriminators_optimizer(tmp_path):
    common_args = [*TINY, "run.steps=4", "run.checkpoint_every=2", "guidance.name=asd-adv", "guidance.score_steps=2"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common_args, f"run.dir={full}"]) == 0
    assert " asd_adv=" in (full / "log.txt").read_text() and "gamma: -0.75" in (full / "config.yaml").read_text()
    assert json.loads((full / "metrics.json").read_text())["steps"] == 4
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common_args, "run.steps=2",
                 f"run.dir={part}"]) == 0
    assert main(["generate", "--resume", str(part), "run.steps=4"]) == 0
    a, b = load_file(str(full / "ckpt/last.safetensors")), load_file(str(part / "ckpt/last.safetensors"))
    assert any(k.startswith("optim@guidance.score.") for k in a)
    assert any(k.startswith("model.guidance.score.") for k in a)
    assert_same_state(a, b)


def test_recipe_loads_with_the_official_defaults():
    from dreamcore import registry
    from dreamcore.config import config_path, load_config

    cfg = load_config(config_path("asd-adv"), [])
    g = registry.build("guidance", cfg.guidance)
    assert isinstance(g, AdversarialSDGuidance) and cfg.guidance.gamma == -0.75
    assert g.omega(0) == 7.5 and cfg.guidance.weighting == "sds" and cfg.guidance.camera_dropout == 0.1
    assert cfg.guidance.t_max(4999) == 0.98 and cfg.guidance.t_max(5001) == 0.5 and cfg.guidance.t_min(0) == 0.02
    assert cfg.guidance.score_lr(0) == 1e-4 and cfg.run.steps == 25000
