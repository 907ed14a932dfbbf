import pytest
import torch

from dreamcore.cameras import orbit_cameras
from dreamcore.guidance import common
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.priors.base import NoiseSchedule, PromptEmbeddings, Prior
from dreamcore.renderers.output import RenderOutput
from dreamcore.schedule import Scheduled


class AffinePrior(Prior):
    """ε̂(x_t; y) = k_y · x_t: a toy prior with a known prediction per condition (0 = cond, -1 = uncond)."""

    def __init__(self, prediction_type="epsilon"):
        super().__init__()
        self.schedule = NoiseSchedule.scaled_linear(prediction_type=prediction_type)

    def encode_prompt(self, prompt, negative_prompt=""):
        return PromptEmbeddings({"default": torch.zeros(1, 1)}, torch.full((1, 1), -1.0), prompt)

    def to_model_space(self, render):
        return render.rgb.permute(0, 3, 1, 2) * 2 - 1

    def predict_noise(self, x_t, t, embeddings, **kw):
        k = torch.where(embeddings.reshape(-1) >= 0, 0.5, 0.2).view(-1, 1, 1, 1)
        return k * x_t


def _render(b=2, h=4, w=4):
    rgb = torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    return rgb, RenderOutput(rgb=rgb, alpha=torch.ones(b, h, w, 1), depth=torch.zeros(b, h, w, 1))


@pytest.mark.parametrize("omega", [1.0, 7.5])
def test_sds_gradient_equals_formula(omega):
    prior = AffinePrior()
    cfg = SDSGuidance.Config(guidance_scale=Scheduled.constant(omega), weighting="sds")
    guidance = SDSGuidance(cfg)
    rgb, render = _render()
    cams = orbit_cameras(torch.zeros(2), torch.zeros(2), torch.full((2,), 3.0), torch.full((2,), 40.0))
    emb = prior.encode_prompt("x")
    loss = guidance(render, cams, prior, emb, step=0, generator=torch.Generator().manual_seed(9))["sds"]
    loss.backward()
    # replay the same random draws
    g = torch.Generator().manual_seed(9)
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    t = common.sample_timesteps(2, 0.02, 0.98, 1000, g)
    noise = torch.randn(x.shape, generator=g)
    a, s = prior.schedule.alpha_sigma(t)
    x_t = a.view(-1, 1, 1, 1) * x + s.view(-1, 1, 1, 1) * noise
    eps = 0.2 * x_t + omega * (0.5 * x_t - 0.2 * x_t)
    grad_x = (s**2).view(-1, 1, 1, 1) * (eps - noise) / 2  # / B
    expected = (grad_x * 2).permute(0, 2, 3, 1)  # chain rule through x = 2 rgb - 1
    assert torch.allclose(rgb.grad, expected, atol=1e-5)


def test_cfg_convention_and_threestudio_conversion():
    c, u = torch.tensor([1.0]), torch.tensor([0.0])
    assert common.classifier_free(c, u, 1.0).item() == 1.0
    assert common.classifier_free(c, u, 7.5).item() == 7.5
    assert common.omega_from_threestudio(100.0) == 101.0


def test_timestep_range_and_weightings(generator):
    t = common.sample_timesteps(10000, 0.02, 0.5, 1000, generator)
    assert t.min().item() == 20 and t.max().item() == 500
    a, s = torch.tensor([0.6]), torch.tensor([0.8])
    assert common.weighting("sds", a, s).item() == pytest.approx(0.64)
    assert common.weighting("uniform", a, s).item() == 1.0
    assert common.weighting("fantasia3d", a, s).item() == pytest.approx(0.6 * 0.64)


def test_v_prediction_converts_exactly_to_epsilon():
    sched = NoiseSchedule.scaled_linear()
    x0 = torch.randn(3, 3, 4, 4)
    eps = torch.randn(3, 3, 4, 4)
    t = torch.tensor([10, 500, 990])
    a, s = (v.view(-1, 1, 1, 1) for v in sched.alpha_sigma(t))
    x_t = a * x0 + s * eps
    v = a * eps - s * x0

    class VPrior(AffinePrior):
        def predict_noise(self, x_t, t, embeddings, **kw):
            return v

    p = VPrior("v_prediction")
    assert torch.allclose(p.predict_epsilon(x_t, t, torch.zeros(3, 1)), eps, atol=1e-5)


def test_inject_gradient_is_grad_over_batch():
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    common.inject_gradient(x, g).backward()
    assert torch.allclose(x.grad, g / 4)


def test_noise_schedule_matches_stable_diffusion():
    ac = NoiseSchedule.scaled_linear().alphas_cumprod
    assert ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert ac[-1].item() == pytest.approx(0.0046, abs=2e-4)  # diffusers' SD value
