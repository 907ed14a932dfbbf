"""Score-based Iterative Reconstruction (``sir``, MicroDreamer) against its closed forms (sir.py's docstring).

On the Gaussian prior N(μ, s²) one DDIM step t → t' maps d = z − α_t μ to d·(α_{t'}α_t s² + σ_{t'}σ_t)/D_t
(D_t = α_t² s² + σ_t²; the clean end t' = −1 has α = 1, σ = 0), for inversion and sampling alike (ω = 1, η = 0,
one condition). So the target is affine: y − μ = F(α₁(x − μ) + σ₁ n) with F the product of the step factors and n
the forward noise, and the rounds as a Markov chain x ← y(x) have the stationary variance B²/(1 − A²),
A = Fα₁, B = Fσ₁ — s² exactly in the exact flow (F = s/√D₁), a little off it on a coarse DDIM grid. SDS on the
same prior collapses every particle to μ. float64 throughout."""

import json

import pytest
import torch
import yaml

from dreamcore.cameras import orbit_cameras
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.guidance.sir import SIRGuidance, ddim_grid, reconstruction_targets, round_levels
from dreamcore.priors.analytic import GaussianPrior, JointGaussianPrior
from dreamcore.schedule import Scheduled
from test_guidance import D, gen, plain_views, render_of

C = Scheduled.constant


def sir(steps=100, **kw):
    g = SIRGuidance(SIRGuidance.Config(**kw))
    return g


def one_gaussian(mu=0.7, s=0.5, shape=(1, 1, 1, 1)):
    return GaussianPrior(torch.full(shape, mu, dtype=D), s)  # one condition: y = ∅


def ab(prior, t):
    if t < 0:
        return 1.0, 0.0
    a, s = prior.schedule.alpha_sigma(torch.tensor([t]))
    return a.item(), s.item()


def affine_target(prior, s, t1, t2, grid):
    """(A, B) with y − μ = A(x − μ) + B n for ω = 1, η = 0 (module docstring of this file)."""
    a1, s1 = ab(prior, t1)
    path = [t1] + [t for t in grid if t1 < t <= t2]
    path += [t for t in grid if t <= t2][::-1][1:] + [-1]
    f = 1.0
    for t, tn in zip(path[:-1], path[1:]):
        a, sg = ab(prior, t)
        an, sn = ab(prior, tn)
        f *= (an * a * s**2 + sn * sg) / (a**2 * s**2 + sg**2)
    return f * a1, f * s1


# -- the schedule ---------------------------------------------------------------------------------------------------
def test_grid_and_round_levels_follow_microdreamer():
    grid = ddim_grid(1000, 20)
    assert grid[:3] == [1, 51, 101] and grid[-1] == 951 and len(grid) == 20
    # t₂ falls linearly from index ⌊D(1 − t_start)⌋ of the descending grid to D(1 − t_end) = 16; in floating point
    # 20·(1 − 0.9) = 1.999…, so the first index is 1 (t₂ = 901), as in MicroDreamer's own int(); t₁ ≈ 0.6 t₂
    levels = [round_levels(k, 20, grid, 1000, 0.9, 0.2, 0.6) for k in range(20)]
    t2s = [t2 for _, t2 in levels]
    assert t2s[0] == 901 and t2s[-1] == grid[::-1][15] == 201
    assert all(a >= b for a, b in zip(t2s, t2s[1:])) and len(set(t2s)) > 10
    assert levels[0][0] == grid[int(901 / 1000 * 20 * 0.6)] == 501
    assert all(t1 <= t2 for t1, t2 in levels)
    with pytest.raises(Exception, match="denoise_steps"):
        ddim_grid(1000, 0)


def test_rounds_fill_the_run():
    g = sir(round_steps=10, init_steps=5)
    g.setup(one_gaussian(), 45)
    assert g.rounds == 5  # 5 + 4 × 10
    assert [g.round_of(k) for k in (0, 4, 5, 14, 15, 44)] == [0, 0, 1, 1, 2, 4]
    assert g.levels(0) == (None, 951)  # the initial generation from pure noise
    assert g.levels(1)[1] == 901 and g.levels(4)[1] < g.levels(2)[1]


# -- the target --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t1,t2", [(301, 501), (501, 851), (51, 201)])
def test_target_is_the_replayed_affine_map(t1, t2):
    mu, s = 0.7, 0.5
    prior = one_gaussian(mu, s, (1, 2, 3, 3))
    grid = ddim_grid(1000, 20)
    x = torch.randn(4, 2, 3, 3, generator=gen(1), dtype=D)
    y, calls = reconstruction_targets(prior, x, plain_views(prior, 4), 1.0, t1, t2, grid, 0.0, gen(5))
    n = torch.randn(4, 2, 3, 3, generator=gen(5)).to(D)  # the forward noise: the generator's first draw
    a, b = affine_target(prior, s, t1, t2, grid)
    assert torch.allclose(y, mu + a * (x - mu) + b * n, atol=1e-10)
    inversions = len([t for t in grid if t1 < t <= t2])
    assert calls == inversions + len([t for t in grid if t <= t2])


def test_full_generation_from_noise_is_the_replayed_map_of_the_noise():
    """t₁ None: z = n at the top of the grid (t = 951, where α is not quite 0: MicroDreamer's leading grid), DDIM to
    0, so y − μ = F(n − α_top μ): nearly N(μ, s²), its mean pulled toward 0 by F α_top μ."""
    mu, s = 0.7, 0.5
    prior = one_gaussian(mu, s)
    grid = ddim_grid(1000, 50)
    y, calls = reconstruction_targets(prior, torch.zeros(20000, 1, 1, 1, dtype=D), plain_views(prior, 20000), 1.0,
                                      None, grid[-1], grid, 0.0, gen(2))
    assert calls == 50
    n = torch.randn(20000, 1, 1, 1, generator=gen(2)).to(D)
    a_top, s_top = ab(prior, grid[-1])
    f = affine_target(prior, s, grid[-1], grid[-1], grid)[1] / s_top  # the sampling path's factor
    assert torch.allclose(y, mu + f * (n - a_top * mu), atol=1e-10)
    assert y.std().item() == pytest.approx(s, rel=0.05) and y.mean().item() == pytest.approx(mu, abs=0.05)


def test_rounds_as_a_markov_chain_sample_the_prior_where_sds_collapses_to_the_mean():
    mu, s, n = 0.7, 0.5, 8000
    prior = one_gaussian(mu, s)
    grid = ddim_grid(1000, 50)
    t1, t2 = 481, 801
    a, b = affine_target(prior, s, t1, t2, grid)
    stationary = b**2 / (1 - a**2)
    assert stationary == pytest.approx(s**2, rel=0.15)  # DDIM's discretization on a 50-step grid: 0.223 for 0.25
    fine = ddim_grid(1000, 1000)  # the exact flow's limit: s² itself
    a_f, b_f = affine_target(prior, s, 480, 800, fine)
    assert b_f**2 / (1 - a_f**2) == pytest.approx(s**2, rel=0.02)
    x = torch.full((n, 1, 1, 1), mu, dtype=D)
    views = plain_views(prior, n)
    g = gen(3)
    for _ in range(25):  # exact reconstruction: the scene becomes its target each round
        x, _ = reconstruction_targets(prior, x, views, 1.0, t1, t2, grid, 0.0, g)
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.var().item() == pytest.approx(stationary, rel=0.06)

    # SDS on the same prior from the same spread: every particle goes to μ (Polyak average of its iterates)
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=C(1.0), t_schedule="linear", t_min=C(0.5), t_max=C(0.5)))
    sds.setup(prior, 1000)
    z = mu + s * torch.randn(256, 1, 1, 1, generator=gen(4), dtype=D)
    sv = plain_views(prior, 256)
    acc, g = torch.zeros_like(z), gen(0)
    for k in range(400):
        rgb, render = render_of(z)
        sum(sds(render, None, prior, sv, 0, g).values()).backward()
        z = z - 1.0 * 256 * rgb.grad.permute(0, 3, 1, 2)
        if k >= 200:
            acc += z / 200
    assert acc.std().item() < 0.1 * s and acc.mean().item() == pytest.approx(mu, abs=0.02)


def test_cfg_moves_the_target_toward_the_conditional_mean():
    """Two conditions (y: μ_y = 1, ∅: μ_∅ = −1), render at 0: ω = 1 pulls the target's mean toward μ_y, ω = 3
    pushes it further along μ_y − μ_∅ (CFG extrapolates past μ_y, as in images)."""
    means = torch.tensor([1.0, -1.0], dtype=D).view(2, 1, 1, 1)
    prior = GaussianPrior(means, 0.3)
    grid = ddim_grid(1000, 20)
    x = torch.full((2000, 1, 1, 1), 0.0, dtype=D)
    views = plain_views(prior, 2000)
    m1 = reconstruction_targets(prior, x, views, 1.0, 301, 501, grid, 0.0, gen(1))[0].mean().item()
    m3 = reconstruction_targets(prior, x, views, 3.0, 301, 501, grid, 0.0, gen(1))[0].mean().item()
    assert 0.0 < m1 < 1.0 and m3 > m1 + 0.5


# -- the module: rounds, held views and targets, checkpointing --------------------------------------------------------
def _cams(azimuth):
    return orbit_cameras(torch.tensor([10.0, 10.0]), torch.tensor([azimuth, azimuth + 90.0]), torch.full((2,), 3.0),
                         torch.full((2,), 40.0))


def test_a_round_holds_its_views_and_target_and_the_next_draws_new_ones():
    prior = one_gaussian(0.2, 0.4, (1, 3, 4, 4))
    g = sir(round_steps=3, init_steps=2, guidance_scale=C(1.0), eta=0.0, denoise_steps=10)
    g.setup(prior, 11)
    views = plain_views(prior, 2)
    gn = gen(0)
    targets, held = [], []
    for step in range(8):
        cams = g.step_cameras(_cams(30.0 * step), step)
        held.append(float(cams.azimuth[0]))
        x = torch.randn(2, 3, 4, 4, generator=gen(100 + step), dtype=D)
        rgb, render = render_of(x)
        loss = sum(g(render, cams, prior, views, step, gn).values())
        loss.backward()
        y = g.held.target.clone()  # the target as an image [B, H, W, C] (this prior's model space is the image)
        assert y.shape == rgb.shape
        targets.append(y)
        # the loss is Σ|I − Y| / B over images in [−1, 1], 2Σ|rgb − Y| / B: its gradient is 2 sign(rgb − Y) / B
        assert torch.allclose(rgb.grad, 2 * torch.sign(rgb.detach() - y) / 2)
        assert loss.item() == pytest.approx(2 * (rgb.detach() - y).abs().sum().item() / 2)
    rounds = [g.round_of(k) for k in range(8)]
    assert rounds == [0, 0, 1, 1, 1, 2, 2, 2]
    first = {0: 0, 1: 2, 2: 5}
    for k in range(8):
        assert held[k] == pytest.approx(torch.deg2rad(torch.tensor(30.0 * first[rounds[k]])).item(), abs=1e-6)
        assert torch.equal(targets[k], targets[first[rounds[k]]])
    assert not torch.equal(targets[0], targets[2]) and not torch.equal(targets[2], targets[5])
    grid = ddim_grid(1000, 10)
    expected = len(grid)  # round 0: a full generation
    for k in (1, 2):
        t1, t2 = g.levels(k)
        expected += len([t for t in grid if t1 < t <= t2]) + len([t for t in grid if t <= t2])
    assert prior.denoiser_calls == expected and prior.denoised_rows == 2 * expected


def test_a_checkpoint_taken_mid_round_resumes_into_the_same_round():
    prior = one_gaussian(0.2, 0.4, (1, 3, 4, 4))
    a = sir(round_steps=4, init_steps=2, denoise_steps=10)
    a.setup(prior, 10)
    views = plain_views(prior, 2)
    for step in range(4):  # round 1 starts at step 2
        cams = a.step_cameras(_cams(20.0 * step), step)
        _, render = render_of(torch.randn(2, 3, 4, 4, generator=gen(step), dtype=D))
        a(render, cams, prior, views, step, gen(step))
    b = sir(round_steps=4, init_steps=2, denoise_steps=10)
    b.setup(prior, 10)
    b.load_state_dict(a.state_dict())
    cams = b.step_cameras(_cams(123.0), 4)  # still round 1: the held views, not the new draw
    assert torch.equal(cams.c2w, a.held.c2w)
    _, render = render_of(torch.randn(2, 3, 4, 4, generator=gen(9), dtype=D))
    calls = prior.denoiser_calls
    b(render, cams, prior, views, 4, gen(9))
    assert torch.equal(b.held.target, a.held.target) and prior.denoiser_calls == calls  # no new target was made


def test_multiview_groups_get_targets_from_the_joint_prior():
    prior = JointGaussianPrior(torch.zeros(4, 1, 2, 2, dtype=D), 0.5, 0.9)
    grid = ddim_grid(1000, 20)
    y, _ = reconstruction_targets(prior, torch.zeros(4000 * 4, 1, 2, 2, dtype=D), plain_views(prior, 16000), 1.0,
                                  None, grid[-1], grid, 0.0, gen(1))
    y = y.view(4000, 4, -1)[:, :, 0]
    corr = torch.corrcoef(y.T)
    assert corr[0, 1].item() == pytest.approx(0.9, abs=0.05)  # the views of one sample agree as the prior says


def test_pixel_subsets_fit_the_held_targets_pixels_and_need_a_whole_first_step():
    from dreamcore.renderers.output import RenderOutput

    prior = one_gaussian(0.2, 0.4, (1, 3, 4, 4))
    g = sir(round_steps=3, init_steps=2, denoise_steps=10)
    g.setup(prior, 10)
    views = plain_views(prior, 2)

    def subset(step, idx):
        rgb = torch.rand(2, idx.shape[1], 1, 3, generator=gen(50 + step), dtype=D).requires_grad_(True)
        return rgb, RenderOutput(rgb=rgb, alpha=rgb[..., :1], depth=rgb[..., :1], pixel_index=idx)

    idx = torch.tensor([[0, 5, 15], [3, 3, 9]])
    cams = g.step_cameras(_cams(0.0), 0)
    assert not g.whole_images(0)  # round 0 generates from noise: the views' size is all it needs
    render = subset(0, idx)[1]
    render.image_size = (4, 4)
    g(render, cams, prior, views, 0, gen(0))
    assert g.held.target.shape == (2, 4, 4, 3)
    cams = g.step_cameras(_cams(20.0), 2)  # round 1 starts at step 2: its target is made from the whole views
    assert g.whole_images(2)
    with pytest.raises(Exception, match="whole images"):
        g(render, cams, prior, views, 2, gen(0))
    _, whole = render_of(torch.randn(2, 3, 4, 4, generator=gen(1), dtype=D))
    g.see_whole(whole, cams, prior, views, 2, gen(0))
    assert not g.whole_images(2) and not g.whole_images(3)
    y = g.held.target.reshape(2, 16, 3)
    g(subset(2, idx)[1], cams, prior, views, 2, gen(0))["sir"]
    rgb, render = subset(3, idx)
    loss = g(render, g.step_cameras(_cams(40.0), 3), prior, views, 3, gen(1))["sir"]
    assert torch.equal(g.held.target.reshape(2, 16, 3), y)
    picked = torch.stack([y[b, idx[b]] for b in range(2)]).unsqueeze(2)
    # the rays against the target's pixels there, scaled by H·W/N to estimate the whole image's sum
    assert loss.item() == pytest.approx(2 * 16 / 3 * (rgb.detach() - picked).abs().sum().item() / 2)
    g.step_cameras(_cams(80.0), 5)  # round 2: a new target is wanted
    assert g.whole_images(5)


# -- through ``dreamcore generate`` -----------------------------------------------------------------------------------
def test_resume_mid_round_is_exact_through_generate(tmp_path):
    """Rounds of 4 steps after an initial 2: a checkpoint at step 4 lies inside round 1; the resumed run renders
    the held views against the held target and ends in the same state as the uninterrupted one."""
    from test_runner import TINY, assert_same_state, run_and_resume

    common = [*TINY, "system.rays_per_view=0", "guidance.name=sir", "guidance.round_steps=4", "guidance.init_steps=2",
              "guidance.denoise_steps=10", "run.checkpoint_every=4"]
    a, b, full = run_and_resume(tmp_path, "configs/reference-nerf.yaml", common, 4, 8)
    assert any(k.startswith("model.guidance.held.target") for k in a)
    assert_same_state(a, b)
    assert " sir=" in (full / "log.txt").read_text()
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["prior_calls"] > 0 and metrics["prior_rows"] >= 2 * metrics["prior_calls"]


def test_pixel_subsets_run_through_generate_with_whole_round_targets(tmp_path):
    """On the reference prior (pixel subsets) the inner steps train on rays; the held target is a whole image."""
    from safetensors.torch import load_file

    from dreamcore.cli import main

    from test_runner import TINY

    run = tmp_path / "r"
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *TINY, "system.rays_per_view=16",
                 "guidance.name=sir", "guidance.round_steps=2", "guidance.init_steps=1", "guidance.denoise_steps=4",
                 "run.steps=4", "run.checkpoint_every=4", f"run.dir={run}"]) == 0
    target = load_file(str(run / "ckpt/last.safetensors"))["model.guidance.held.target"]
    res = yaml.safe_load((run / "config.yaml").read_text())["camera"]["resolution"]
    assert target.shape[1:] == (res, res, 3) and res * res > 16
