"""VSD's LoRA score model on a tiny random-weight diffusers UNet: starts at the prior, trains only its own
parameters, leaves the frozen prior's predictions untouched, handles v-prediction, and checkpoints."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from dreamcore.cameras import orbit_cameras  # noqa: E402
from dreamcore.guidance.views import ViewConditions  # noqa: E402
from dreamcore.guidance.vsd import VSDGuidance  # noqa: E402
from dreamcore.priors.base import NoiseSchedule, Prior  # noqa: E402
from dreamcore.renderers.output import RenderOutput  # noqa: E402
from dreamcore.schedule import Scheduled  # noqa: E402


class TinyUNetPrior(Prior):
    """A latent-free prior around a random 2-block UNet: x is the render itself (3 channels, [−1, 1])."""

    def __init__(self, prediction_type="epsilon"):
        super().__init__()
        torch.manual_seed(0)
        self.unet = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
        self.schedule = NoiseSchedule.scaled_linear(prediction_type=prediction_type)

    def to_model_space(self, rgb, pixel_index=None):
        return rgb.permute(0, 3, 1, 2) * 2 - 1

    def predict_noise(self, x_t, t, embeddings, **kw):
        return self.unet(x_t, t, encoder_hidden_states=embeddings).sample


def _setup(prediction_type="epsilon", **cfg):
    prior = TinyUNetPrior(prediction_type)
    vsd = VSDGuidance(VSDGuidance.Config(guidance_scale=VSDGuidance.Config().guidance_scale, **cfg))
    vsd.setup(prior, total_steps=100)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 3, 8, generator=g)
    views = ViewConditions(emb, torch.zeros_like(emb), emb, torch.zeros_like(emb), ["default"] * 2)
    cams = orbit_cameras(torch.tensor([0.0, 20.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 3.0),
                         torch.full((2,), 40.0))
    rgb = torch.rand(2, 8, 8, 3, generator=g)
    render = RenderOutput(rgb=rgb, alpha=torch.ones(2, 8, 8, 1), depth=torch.zeros(2, 8, 8, 1))
    return prior, vsd, views, cams, render


def test_lora_score_starts_at_the_prior_and_uses_lora_only_in_its_own_calls():
    prior, vsd, views, cams, render = _setup()
    assert vsd.cfg.score_model == "auto" and type(vsd.score).__name__ == "LoRAScore"
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([50, 700])
    keep = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        base = prior.predict_epsilon(x, t, views.plain)
        assert torch.allclose(vsd.score(prior, x, t, views.plain, cams, keep), base, atol=1e-6)
    frozen = {k: v.clone() for k, v in prior.unet.state_dict().items() if "lora_" not in k}
    before = [p.detach().clone() for p in vsd.score.parameters()]
    for step in range(5):
        vsd(render, cams, prior, views, step, torch.Generator().manual_seed(step))
    # the scene optimizer never sees the score model; its own optimizer moved only LoRA + camera parameters
    assert vsd.parameter_groups() == []
    assert any(not torch.equal(a, b) for a, b in zip(before, vsd.score.parameters()))
    for k, v in prior.unet.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k]), k
    with torch.no_grad():
        assert torch.equal(prior.predict_epsilon(x, t, views.plain), base)  # adapters are off outside
        assert not torch.allclose(vsd.score(prior, x, t, views.plain, cams, keep), base, atol=1e-6)


def test_lora_training_fits_the_renders_and_v_prediction_targets_velocity():
    prior, vsd, views, cams, render = _setup("v_prediction", score_lr=Scheduled.constant(1e-2), camera_dropout=0.0)
    assert vsd.score.prediction_type == "v_prediction"
    x = prior.to_model_space(render.rgb)
    kw = dict(pixel_index=None, image_size=None)

    def fixed_loss():
        g = torch.Generator().manual_seed(123)
        tau = torch.randint(0, 1000, (2,), generator=g)
        eps = torch.randn(x.shape, generator=g)
        a, s = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(tau))
        with torch.no_grad():
            pred = vsd.score.raw(prior, a * x + s * eps, tau, views.plain, cams, torch.ones(2, dtype=torch.bool))
        return float(((pred - (a * eps - s * x)) ** 2).mean())

    # the loss train_score reports is the MSE against v = α ε′ − σ x for its own draws (replayed here)
    g = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    tau = torch.randint(0, 1000, (2,), generator=replay)
    eps = torch.randn(x.shape, generator=replay)
    a, s = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(tau))
    with torch.no_grad():
        pred = vsd.score.raw(prior, a * x + s * eps, tau, views.plain, cams, torch.ones(2, dtype=torch.bool))
    reported = vsd.train_score(prior, x, views, cams, g, kw)
    assert float(reported) == pytest.approx(float(((pred - (a * eps - s * x)) ** 2).mean()), rel=1e-5)
    start = fixed_loss()
    for _ in range(100):
        vsd.train_score(prior, x, views, cams, g, kw)
    assert fixed_loss() < 0.9 * start


def test_vsd_state_holds_only_the_score_model_and_round_trips():
    prior, vsd, views, cams, render = _setup()
    for step in range(3):
        vsd(render, cams, prior, views, step, torch.Generator().manual_seed(step))
    state = vsd.state_dict()
    n_unet = sum(p.numel() for p in prior.unet.parameters())
    assert 0 < sum(v.numel() for v in state.values()) < n_unet
    assert all(k.startswith("score.") for k in state)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100, 600])
    keep = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        trained = vsd.score(prior, x, t, views.plain, cams, keep)
    other_prior, other, *_ = _setup()
    other.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(other.score(other_prior, x, t, views.plain, cams, keep), trained, atol=1e-6)
