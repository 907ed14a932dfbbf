"""Coupled Score Distillation (``coupled``): λ = 0 is VSD bit for bit; the update is VSD + λ·2·w(t)(ε̃_MV − ε) at
one shared t with replayed draws; on an independent-view Gaussian the particles reach VSD's fixed point; on a
correlated joint Gaussian over the batch's views the MV term contracts the view differences at
ασ/(α²s²(1−ρ)+σ²) (faster than an independent prior's ασ/(α²s²+σ²)); CLI runs on NeRF / Gaussians / DMTet,
exact resume, and the recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.cli import main
from dreamcore.guidance import common
from dreamcore.guidance.coupled import CoupledSDGuidance
from dreamcore.guidance.views import ViewConditions
from dreamcore.guidance.vsd import VSDGuidance
from dreamcore.priors.analytic import GaussianPrior, _AnalyticPrior
from dreamcore.schedule import Scheduled
from test_gaussians import GTINY
from test_guidance import gen, plain_views, render_of
from test_guidance_closed_form import AnalyticParticleScore, _particles, _run_particles, cams
from test_runner import TINY, assert_same_state

F = torch.float32
C = Scheduled.constant


def means(k=3, shape=(2, 2, 2), seed=0):
    return torch.randn(k, *shape, generator=gen(seed)).to(F)


class JointGaussianPrior(_AnalyticPrior):
    """Each group of V consecutive rows is V views of one object, jointly Gaussian per element:
    N(μ_k 1, s²[(1 − ρ)I + ρ 11ᵀ]) (k the condition id). Diffused: Σ_t = α²Σ + σ²I = A I + B 11ᵀ with
    A = α²s²(1 − ρ) + σ², B = α²s²ρ, so ε* = σ Σ_t⁻¹ (X_t − αM), Σ_t⁻¹ r = (r − B/(A + V B) Σ_views r)/A."""

    def __init__(self, means: torch.Tensor, std: float, rho: float, views: int) -> None:
        super().__init__(None, "epsilon")
        self.register_buffer("means", means.clone())
        self.s, self.rho, self.v = std, rho, views
        self.channels = means.shape[1]
        self.names = {"y": 0, "uncond": 1, "null": 1}

    embedding = staticmethod(GaussianPrior.embedding)
    encode_prompt = GaussianPrior.encode_prompt

    def optimal_epsilon(self, x_t, t, embeddings, pixel_index=None):
        mu = self.means[GaussianPrior.ids(self, embeddings)].to(x_t)
        a, s = self._alpha_sigma(t, x_t)
        r = (s * (x_t - a * mu)).view(-1, self.v, *x_t.shape[1:])
        a, s = a.view(-1, self.v, *a.shape[1:])[:, :1], s.view(-1, self.v, *s.shape[1:])[:, :1]  # t shared
        big_a = a**2 * self.s**2 * (1 - self.rho) + s**2
        big_b = a**2 * self.s**2 * self.rho
        out = (r - big_b / (big_a + self.v * big_b) * r.sum(1, keepdim=True)) / big_a
        return out.reshape(x_t.shape)


def test_lambda_zero_reproduces_vsd_exactly():
    prior = GaussianPrior(means(), [0.3, 0.9, 0.5])
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    views = plain_views(prior, 4)
    out = []
    for cls, extra in ((VSDGuidance, {}), (CoupledSDGuidance, {"coupling": C(0.0)})):
        torch.manual_seed(0)
        g = cls(cls.Config(score_lr=C(1e-2), t_max=C(0.98), **extra))
        g.setup(prior, 10)
        r, grads, losses = gen(7), [], []
        for k in range(3):
            rgb, render = render_of(x)
            sum(g(render, cams(4), prior, views, k, r).values()).backward()
            grads.append(rgb.grad.clone())
            losses.append(g.last_score_loss)
        out.append((torch.stack(grads), torch.stack(losses)))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert not torch.equal(out[0][0][0], out[0][0][2])  # the score model moved between steps


def test_update_is_vsd_plus_twice_lambda_times_multiview_sds_at_one_shared_t():
    """Replayed draws (VSD's t, ε; then the MV term's single t and its ε): with the zero-initialized score net,
    ε_q = ε_prior(x_t; plain), so g = w(t_b)(ε̃_7.5 − ε_q) + 0.5 · 2 · w(t)(ε̃_MV,3 − ε′), the MV prior set apart."""
    prior = GaussianPrior(means(), [0.3, 0.9, 0.5])
    mv = GaussianPrior(means(seed=1), 0.4)
    g = CoupledSDGuidance(CoupledSDGuidance.Config(guidance_scale=C(7.5), mv_guidance_scale=C(3.0),
                                                   coupling=C(0.5)))
    g.setup(prior, 100)
    g.set_multiview_prior(mv)
    assert not any("mv" in k for k in g.state_dict())  # the frozen MV prior is not checkpointed
    x = torch.randn(4, 2, 2, 2, generator=gen(1)).to(F)
    rgb, render = render_of(x)
    views = plain_views(prior, 4)
    g(render, cams(4), prior, views, 0, gen(5))["coupled"].backward()
    r = gen(5)
    t = torch.randint(20, 981, (4,), generator=r)
    eps = torch.randn(x.shape, generator=r)
    t_mv = torch.randint(20, 981, (1,), generator=r).expand(4)
    eps_mv = torch.randn(x.shape, generator=r)
    x_t, x_mv = prior.schedule.add_noise(x, eps, t), mv.schedule.add_noise(x, eps_mv, t_mv)
    e = lambda p, xt, tt, emb: p.predict_epsilon(xt, tt, emb)  # noqa: E731
    vsd = common.classifier_free(e(prior, x_t, t, views.cond), e(prior, x_t, t, views.uncond), 7.5) - e(
        prior, x_t, t, views.plain)
    sds_mv = common.classifier_free(e(mv, x_mv, t_mv, views.cond), e(mv, x_mv, t_mv, views.uncond), 3.0) - eps_mv
    w = lambda tt: common.broadcast(prior.schedule.alpha_sigma(tt)[1] ** 2, x)  # noqa: E731
    expected = w(t) * vsd + 0.5 * 2.0 * w(t_mv) * sds_mv
    assert torch.allclose(4 * rgb.grad.permute(0, 3, 1, 2), expected, atol=1e-5)
    assert not torch.allclose(4 * rgb.grad.permute(0, 3, 1, 2), w(t) * vsd + 0.5 * w(t_mv) * sds_mv, atol=1e-3)


def test_independent_view_gaussian_keeps_vsds_fixed_point():
    """ε_q = the particles' Gaussian fit; the MV term on a per-view prior is SDS at a shared t, whose mean also
    vanishes at μ* = μ_y + (ω − 1)(μ_y − μ_∅): the particles' mean converges to VSD's fixed point (ω = 3: 0.9)."""
    mu = torch.tensor([0.5, 0.3], dtype=F).view(2, 1, 1, 1)
    prior = GaussianPrior(mu, 0.3)
    g = CoupledSDGuidance(CoupledSDGuidance.Config(guidance_scale=C(3.0), mv_guidance_scale=C(3.0),
                                                   coupling=C(0.5), t_max=C(0.98)))
    g.setup(prior, 150)
    q = AnalyticParticleScore()
    g.score = q
    g.train_score = lambda *a, **k: torch.zeros(())  # ε_q is exact: nothing to train
    x = _run_particles(g, prior, _particles(64), 150, 0.5, fit=q.fit)
    assert x.mean().item() == pytest.approx(0.9, abs=0.01)
    assert 0.02 < x.std().item() < 0.3  # between SDS's collapse and VSD's N(μ*, 0.3²)


def _mean_mv_gradient(g, prior, x, n, seed):
    """E_ε[w(t)(ε̃_MV − ε)] at fixed t by Monte Carlo: n independent copies of the V views in one batch."""
    v = x.shape[0]
    xs = x.repeat(n, 1, 1, 1)
    views = plain_views(prior, v * n)
    kw = dict(cameras=None, pixel_index=None, image_size=None)
    out = g.mv_gradient(xs, None, prior, views, 0, gen(seed), kw)
    return out.view(n, v, *x.shape[1:]).mean(0)


def test_correlated_joint_gaussian_pulls_the_views_together():
    s, rho, v = 1.0, 0.8, 4
    mu = torch.tensor([0.5, 0.3], dtype=F).view(2, 1, 1, 1)
    joint, indep = JointGaussianPrior(mu, s, rho, v), GaussianPrior(mu, s)
    g = CoupledSDGuidance(CoupledSDGuidance.Config(mv_guidance_scale=C(7.5), t_min=C(0.2), t_max=C(0.2)))
    g.setup(joint, 10)
    mu_w = 0.5 + 6.5 * 0.2
    x = (mu_w + 0.5 + torch.tensor([0.6, -0.2, 0.3, -0.9])).to(F).view(4, 1, 1, 1)  # mean mode off μ* too
    a, sig = (q.item() for q in joint.schedule.alpha_sigma(torch.tensor([200])))
    w = sig**2
    mean, diff = x.mean(), x - x.mean()
    kappa_diff = a * sig / (a**2 * s**2 * (1 - rho) + sig**2)
    kappa_mean = a * sig / (a**2 * s**2 * (1 + (v - 1) * rho) + sig**2)
    kappa_ind = a * sig / (a**2 * s**2 + sig**2)
    assert kappa_diff > 2.5 * kappa_ind > 2.5 * kappa_mean
    gj = _mean_mv_gradient(g, joint, x, 8000, 3).flatten()
    assert gj.mean().item() == pytest.approx(w * kappa_mean * (mean.item() - mu_w), abs=0.01)
    assert torch.allclose(gj - gj.mean(), w * kappa_diff * diff.flatten(), atol=0.01)
    gi = _mean_mv_gradient(g, indep, x, 8000, 4).flatten()
    assert torch.allclose(gi, w * kappa_ind * (x.flatten() - mu_w), atol=0.01)
    # a few SGD steps on the mean MV update: the joint prior shrinks the spread between views much faster
    spread = {}
    for name, p in (("joint", joint), ("indep", indep)):
        y = x.clone()
        for k in range(5):
            y = y - 1.0 * _mean_mv_gradient(g, p, y, 500, 10 + k).view_as(y)
        spread[name] = (y - y.mean()).abs().max().item()
    assert spread["joint"] < 0.8 * spread["indep"]


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_trains_gaussians(tmp_path):
    run = tmp_path / "gs"
    assert main(["generate", "--config", "configs/reference-gaussians.yaml", *GTINY, "run.steps=3",
                 "guidance.name=coupled", f"run.dir={run}"]) == 0
    assert " coupled=" in (run / "log.txt").read_text()
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["scene_iou"] <= 1.0


DTINY = ["run.steps=2", "run.checkpoint_every=2", "run.val_every=0", "run.val_resolution=16", "run.progress=false",
         "camera.resolution=24", "camera.batch_size=2", "representation.resolution=16", "export.formats=[]",
         "eval.views=2", "eval.resolution=16", "prior.bank_views=4"]


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_refines_a_dmtet_surface(tmp_path):
    run = tmp_path / "dmtet"
    assert main(["generate", "--config", "configs/reference-dmtet.yaml", *DTINY, "guidance.name=coupled",
                 f"run.dir={run}"]) == 0
    assert " coupled=" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


@pytest.mark.slow  # an end-to-end run: CI's slow pass
def test_runs_on_nerf_through_generate_and_resumes_exactly_with_the_score_models_optimizer(tmp_path):
    common_args = [*TINY, "run.steps=4", "run.checkpoint_every=2", "guidance.name=coupled", "guidance.score_steps=2"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *common_args, f"run.dir={full}"]) == 0
    assert " coupled=" in (full / "log.txt").read_text() and "coupling:" in (full / "config.yaml").read_text()
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

    cfg = load_config(config_path("coupled"), [])
    g = registry.build("guidance", cfg.guidance)
    c = cfg.guidance
    assert isinstance(g, CoupledSDGuidance) and c.coupling(0) == 0.5 and c.mv_loss_factor == 2.0
    assert g.omega(0) == 7.5 and c.mv_guidance_scale(0) == 7.5 and c.weighting == "sds"
    assert c.t_max(1999) == 0.98 and c.t_max(2001) == 0.5 and c.t_min(0) == 0.02
    assert c.score_lr(0) == 1e-4 and c.score_steps == 1 and c.camera_dropout == 0.1
    assert cfg.run.steps == 4000 and cfg.representation.name == "gaussians" and cfg.camera.batch_size == 4
    assert cfg.representation.init_points == 1000 and cfg.representation.sh_degree == 0
