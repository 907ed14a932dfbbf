"""Adaptive density control and its optimizer surgery: counts, Adam moments of untouched Gaussians kept, new ones
zero, removed ones gone; statistics accumulation; opacity reset."""

import math

import torch

from dreamcore.representations import densify
from dreamcore.representations.gaussians import Gaussians


def stepped(n=6, seed=0):
    """Gaussians with an Adam optimizer that has taken two steps (non-zero, row-distinct moments)."""
    torch.manual_seed(seed)
    g = Gaussians(Gaussians.Config(init_points=n, init_scale=0.005, init_opacity=0.5))
    opt = torch.optim.Adam([{"params": [p], "name": k} for k, p in g.parameters_by_name().items()], lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        loss = (g.means * torch.randn_like(g.means)).sum() + (g.opacity * torch.randn(n)).sum() \
            + (g.sh_dc * torch.randn_like(g.sh_dc)).sum() + (g.log_scales * torch.randn_like(g.log_scales)).sum() \
            + (g.quats * torch.randn_like(g.quats)).sum()
        loss.backward()
        opt.step()
    return g, opt


def rows(opt, p, key="exp_avg"):
    return opt.state[p][key]


def test_select_and_append_rows_edit_adam_moments_row_by_row():
    g, opt = stepped()
    p = g.means
    before = rows(opt, p).clone(), rows(opt, p, "exp_avg_sq").clone(), p.data.clone()
    keep = torch.tensor([True, False, True, True, False, True])
    densify.select_rows(p, keep, opt)
    assert p.shape == (4, 3) and rows(opt, p).shape == (4, 3)
    assert torch.equal(rows(opt, p), before[0][keep]) and torch.equal(rows(opt, p, "exp_avg_sq"), before[1][keep])
    assert torch.equal(p.data, before[2][keep])
    densify.append_rows(p, torch.ones(3, 3), opt)
    assert p.shape == (7, 3) and torch.equal(rows(opt, p)[:4], before[0][keep])
    assert torch.count_nonzero(rows(opt, p)[4:]) == 0 and torch.count_nonzero(rows(opt, p, "exp_avg_sq")[4:]) == 0
    assert opt.param_groups[0]["params"][0] is p  # same parameter object: the optimizer's groups stay valid
    opt.zero_grad()
    g.means.sum().backward()
    opt.step()  # Adam runs on the resized parameter and state


def test_densify_clones_small_splits_large_and_prunes_transparent_gaussians():
    g, opt = stepped(6)
    cfg = densify.DensifyConfig(grad_threshold=1.0, percent_dense=0.01, extent=1.0, min_opacity=0.1,
                                max_world_scale=0.5)
    with torch.no_grad():
        g.log_scales.data[3] = math.log(0.05)  # large: split when its gradient is high
        g.log_scales.data[4] = math.log(0.05)
        g.opacity_logits.data[5] = -5.0  # transparent: pruned
    g.grad_accum[:] = torch.tensor([2.0, 0.0, 3.0, 2.0, 0.5, 0.0])
    g.grad_count[:] = 1.0
    # rows 0, 2 clone (small, high gradient); row 3 splits; rows 1, 4 untouched; row 5 pruned
    params = {k: p for k, p in g.parameters_by_name().items() if p.numel()}  # sh_rest is empty at degree 0
    snap = {k: (p.data.clone(), rows(opt, p).clone()) for k, p in params.items()}
    counts = densify.densify_and_prune(g, cfg, opt, torch.Generator().manual_seed(0), prune_screen=False)
    assert counts["cloned"] == 2 and counts["split"] == 1 and counts["total"] == 6 - 1 - 1 + 2 + 2
    # order: kept originals [0, 1, 2, 4], then clones of [0, 2], then two samples of 3
    assert g.sh_rest.shape == (8, 0, 3)
    for k, p in params.items():
        data, m = snap[k]
        assert torch.equal(p.data[:4], data[[0, 1, 2, 4]]), k
        assert torch.equal(rows(opt, p)[:4], m[[0, 1, 2, 4]]), k
        assert torch.count_nonzero(rows(opt, p)[4:]) == 0, k
        if k != "means" and k != "log_scales":
            assert torch.equal(p.data[4:6], data[[0, 2]]) and torch.equal(p.data[6:], data[[3, 3]]), k
    assert torch.allclose(g.log_scales.data[6:], snap["log_scales"][0][[3, 3]] - math.log(1.6))
    assert not torch.equal(g.means.data[6], g.means.data[7])
    assert (g.means.data[6:] - snap["means"][0][3]).norm(dim=-1).max() < 0.05 * 5
    assert len(g.grad_accum) == 8 and float(g.grad_accum.abs().sum()) == 0.0


def test_densification_respects_the_budget_and_prunes_by_size():
    g, opt = stepped(6)
    g.grad_accum[:] = torch.arange(6.0)
    g.grad_count[:] = 1.0
    cfg = densify.DensifyConfig(grad_threshold=0.5, max_gaussians=8, min_opacity=0.0, max_world_scale=0.0)
    densify.densify_and_prune(g, cfg, opt, torch.Generator().manual_seed(0), prune_screen=False)
    assert len(g) == 8  # two clones: of the largest gradients (rows 4 and 5)
    assert torch.equal(g.means.data[6:], g.means.data[[4, 5]])
    g.max_radii[:] = torch.tensor([1.0, 50.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    with torch.no_grad():
        g.log_scales.data[2] = math.log(0.5)
    cfg = densify.DensifyConfig(grad_threshold=1e9, max_screen_radius=20.0, max_world_scale=0.1, min_opacity=0.0)
    counts = densify.densify_and_prune(g, cfg, opt, torch.Generator().manual_seed(0), prune_screen=True)
    assert counts["pruned"] == 2 and len(g) == 6 and len(rows(opt, g.means)) == 6


def test_gradient_statistics_are_ndc_scaled_means_over_views_that_saw_each_gaussian():
    g = Gaussians(Gaussians.Config(init_points=3))
    means2d = torch.zeros(2, 3, 2, requires_grad=True)
    (means2d * torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [5.0, 5.0], [0.0, 0.0]]])).sum().backward()
    radii = torch.tensor([[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    densify.accumulate(g, means2d, radii, width=20, height=10)
    # (W/2, H/2) = (10, 5): view 0: [10, 10, —]; view 1: [10, —, —]
    assert torch.allclose(g.grad_accum, torch.tensor([20.0, 10.0, 0.0]))
    assert torch.equal(g.grad_count, torch.tensor([2.0, 1.0, 0.0]))
    assert torch.equal(g.max_radii, torch.tensor([4.0, 3.0, 0.0]))


def test_opacity_reset_clamps_and_zeroes_the_moments():
    g, opt = stepped(4)
    with torch.no_grad():
        g.opacity_logits.data[:] = torch.tensor([-6.0, 0.0, 2.0, 5.0])
    densify.reset_opacity(g, 0.01, opt)
    assert torch.allclose(g.opacity, torch.tensor([torch.sigmoid(torch.tensor(-6.0)).item(), 0.01, 0.01, 0.01]))
    assert torch.count_nonzero(rows(opt, g.opacity_logits)) == 0
    assert torch.count_nonzero(rows(opt, g.means)) > 0
