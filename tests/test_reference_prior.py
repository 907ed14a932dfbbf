import pytest
import torch

from dreamcore.cameras import sample_orbit
from dreamcore.config import load_config
from dreamcore.errors import DreamcoreError
from dreamcore.priors.reference import ReferencePrior
from dreamcore.registry import build


@pytest.fixture(scope="module")
def prior():
    return build("prior", load_config(None, ["prior.name=reference"]).prior)


def test_shipped_asset_is_normalized(prior):
    v = prior.asset.vertices
    assert v.norm(dim=-1).max().item() == pytest.approx(0.9, abs=1e-4)
    assert prior.scene_transform.scale > 0


def cond(prior, b):
    e = prior.encode_prompt("the object").cond["default"]
    return e.expand(b, -1)


def test_camera_conditioned_denoiser_is_the_render_at_that_camera(prior):
    cams = sample_orbit(3, torch.Generator().manual_seed(2))
    cams = cams.with_background(torch.rand(3, 3, generator=torch.Generator().manual_seed(1)))
    ref, _ = prior.reference_views(cams, 32, 32, cams.background)
    x0 = ref.permute(0, 3, 1, 2) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([50, 400, 900])
    x_t = prior.schedule.add_noise(x0, noise, t)
    eps = prior.predict_noise(x_t, t, cond(prior, 3), cameras=cams)
    assert torch.allclose(eps, noise, atol=1e-4)
    # for any other image x the SDS residual is (alpha/sigma)(x - x_c): the noise cancels
    x = torch.rand_like(x0) * 2 - 1
    x_t = prior.schedule.add_noise(x, noise, t)
    eps = prior.predict_noise(x_t, t, cond(prior, 3), cameras=cams)
    a, s = (v.view(-1, 1, 1, 1) for v in prior.schedule.alpha_sigma(t))
    assert torch.allclose(eps - noise, a / s * (x - x0), atol=1e-3)


def test_pixel_subsets_equal_full_image_pixels(prior):
    cams = sample_orbit(2, torch.Generator().manual_seed(4))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    t = torch.tensor([300, 700])
    full = prior.predict_noise(x, t, cond(prior, 2), cameras=cams)
    idx = torch.tensor([[0, 5, 100, 255], [17, 18, 19, 200]])
    sub_x = x.reshape(2, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None]
    sub = prior.predict_noise(sub_x, t, cond(prior, 2), cameras=cams, pixel_index=idx, image_size=(16, 16))
    ref = full.reshape(2, 3, -1).gather(2, idx[:, None].expand(-1, 3, -1))[..., None]
    assert torch.allclose(sub, ref, atol=1e-5)


def test_unconditional_denoiser_picks_the_nearest_bank_view_at_low_noise(prior):
    rgb_black, alpha = prior.bank(16, 16)
    x0 = (rgb_black[7:8] + (1 - alpha[7:8])) * 2 - 1  # bank view 7 over white
    t = torch.tensor([5])
    eps = prior.predict_noise(prior.schedule.add_noise(x0, torch.zeros_like(x0), t), t, prior.encode_prompt('x').uncond)
    assert eps.abs().max() < 1e-3
    # at very high noise it is the mean of the bank
    t = torch.tensor([999])
    x_t = torch.zeros(1, 3, 16, 16)
    x_hat = prior.denoise(x_t, t, prior.encode_prompt('x').uncond, None, None, None)
    mean = ((rgb_black + (1 - alpha)) * 2 - 1).mean(0, keepdim=True)
    assert torch.allclose(x_hat, mean, atol=0.05)


def test_neighbours_blend_near_views(prior):
    cfg = load_config(None, ["prior.neighbors=4", "prior.neighbor_sigma_deg=10"]).prior
    p = ReferencePrior(cfg)
    cams = sample_orbit(1, torch.Generator().manual_seed(6))
    x_hat = p.denoise(torch.zeros(1, 3, 16, 16), torch.tensor([999]), cond(p, 1), cams, None, None)
    centre, _ = p.reference_views(cams, 16, 16, torch.ones(1, 3))
    assert not torch.allclose(x_hat, centre.permute(0, 3, 1, 2) * 2 - 1, atol=1e-3)  # blended at high noise


def test_bad_mesh_and_empty_prompt_fail_clearly(tmp_path, prior):
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"not a mesh at all")
    with pytest.raises(DreamcoreError, match="broken.glb"):
        build("prior", load_config(None, [f"prior.reference.mesh={bad}"]).prior)
    with pytest.raises(DreamcoreError, match="not found|does not exist|No such"):
        build("prior", load_config(None, [f"prior.reference.mesh={tmp_path / 'missing.obj'}"]).prior)
    with pytest.raises(DreamcoreError, match="prompt is empty"):
        prior.encode_prompt("   ")


def test_view_labels_select_bank_views_and_extra_objects_join_the_data(tmp_path, prior):
    """Unconditioned by camera, "front view" is the bank's front views; a second object doubles every data set."""
    import trimesh

    from dreamcore.views import ViewPromptConfig, label_views

    cfg = load_config(None, ["prior.camera_conditioned=false", "prior.bank_views=24"]).prior
    p = ReferencePrior(cfg)
    emb = p.encode_prompt("x", views=ViewPromptConfig())
    labels = label_views(torch.rad2deg(p.bank_cameras.elevation), torch.rad2deg(p.bank_cameras.azimuth),
                         ViewPromptConfig())
    front = emb.cond["front"][0, 1:]
    assert emb.cond["front"][0, 0] == 0 and front.sum().item() == pytest.approx(1.0)
    assert all((w > 0) == (lbl == "front") for w, lbl in zip(front.tolist(), labels))
    # at low noise a front-view condition denoises a back-view bank image to a front one (never itself)
    rgb_black, alpha = p.bank(16, 16)
    back = labels.index("back")
    x0 = (rgb_black[back:back + 1] + (1 - alpha[back:back + 1])) * 2 - 1
    t = torch.tensor([400])
    x_hat = p.denoise(p.schedule.add_noise(x0, torch.zeros_like(x0), t), t, emb.cond["front"], None, None, None)
    assert (x_hat - x0).abs().mean() > 0.01
    box = trimesh.creation.box(extents=(1.0, 0.5, 0.3))
    box.visual.vertex_colors = [200, 30, 30, 255]
    box.export(tmp_path / "box.glb")
    cfg2 = load_config(None, [f"prior.reference.extra_meshes=[{tmp_path / 'box.glb'}]", "prior.bank_views=8"]).prior
    p2 = ReferencePrior(cfg2)
    assert p2.num_objects == 2 and p2.bank(8, 8)[0].shape[0] == 16
    cams = sample_orbit(1, torch.Generator().manual_seed(3))
    robot, _ = p2.reference_views(cams, 16, 16, torch.ones(1, 3))
    other, _ = p2.reference_views(cams, 16, 16, torch.ones(1, 3), obj=1)
    assert not torch.allclose(robot, other)
    # at high noise the camera-conditioned denoiser averages the two objects' renders at that camera
    x_hat = p2.denoise(torch.zeros(1, 3, 16, 16), torch.tensor([999]), cond(p2, 1), cams, None, None)
    mean = (robot + other).permute(0, 3, 1, 2) - 1  # ((r + o)/2) * 2 - 1
    assert torch.allclose(x_hat, mean, atol=0.05)
