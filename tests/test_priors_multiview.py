"""Multi-view priors (``prior.name: multiview``): the camera numbers against MVDream's own formula, the view
groups, cross-view attention confined to one object, loading tiny random pipelines in MVDream's diffusers layout
(latent and pixel), the full-size architecture from its published config, one timestep per group, SDS's
x̂₀-reconstruction form and its rescale, a closed-form joint prior's stationary point and pull between views,
and ``dreamcore generate`` on the multi-view recipes."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import tiny_diffusers  # noqa: E402
from dreamcore.cameras import orbit_cameras, sample_orbit, view_groups  # noqa: E402
from dreamcore.cli import main  # noqa: E402
from dreamcore.errors import DreamcoreError  # noqa: E402
from dreamcore.guidance.sds import SDSGuidance, rescaled_x0  # noqa: E402
from dreamcore.guidance.views import conditions  # noqa: E402
from dreamcore.priors.analytic import JointGaussianPrior  # noqa: E402
from dreamcore.priors.base import PromptEmbeddings  # noqa: E402
from dreamcore.priors.multiview import MultiViewPrior  # noqa: E402
from dreamcore.priors.mv_cameras import camera_condition  # noqa: E402
from dreamcore.priors.mv_unet import MultiViewUNet  # noqa: E402
from dreamcore.renderers.output import RenderOutput  # noqa: E402
from dreamcore.schedule import Scheduled  # noqa: E402
from dreamcore.views import ViewPromptConfig  # noqa: E402

# MVDream's unet/config.json as published with the community diffusers conversion (ashawkey/mvdream-sd2.1-diffusers)
MVDREAM_UNET_CONFIG = {
    "_class_name": "MultiViewUNetModel", "_diffusers_version": "0.25.0", "attention_resolutions": [4, 2, 1],
    "camera_dim": 16, "channel_mult": [1, 2, 4, 4], "context_dim": 1024, "image_size": 32, "in_channels": 4,
    "model_channels": 320, "num_head_channels": 64, "num_res_blocks": 2, "out_channels": 4, "transformer_depth": 1,
}


def mvdream_pose(elevation: float, azimuth: float) -> np.ndarray:
    """MVDream's camera (bytedance/MVDream, mvdream/camera_utils.py), written out from its formula: a look-at
    pose on the unit sphere of a y-up world at (cos e sin a, sin e, cos e cos a), columns (right, up, −forward),
    then the world turned to z-up by (x, y, z) → (x, −z, y); translation normalized; flattened row-major."""
    e, a = math.radians(elevation), math.radians(azimuth)
    pos = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    forward = -pos / np.linalg.norm(pos)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, up, -forward], axis=1)
    pose[:3, 3] = pos
    pose = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]) @ pose
    pose[:3, 3] /= np.linalg.norm(pose[:3, 3])
    return pose.reshape(16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-mv")
    return {"latent": tiny_diffusers.save_multiview(root / "latent", latent=True),
            "pixel": tiny_diffusers.save_multiview(root / "pixel", latent=False)}


def make_prior(folder, tmp_path, **kw) -> MultiViewPrior:
    return MultiViewPrior(MultiViewPrior.Config(name="multiview", model=str(folder), cache_dir=str(tmp_path / "c"),
                                                **kw))


# -- cameras -----------------------------------------------------------------------------------------------------
def test_camera_numbers_are_mvdreams_formula_with_dreamcores_front_at_its_azimuth_90():
    el = [15.0, 0.0, -10.0, 40.0, 75.0]
    az = [0.0, 90.0, -135.0, 33.0, 180.0]
    cams = orbit_cameras(torch.tensor(el), torch.tensor(az), torch.tensor([3.0, 2.5, 3.3, 1.0, 4.0]),
                         torch.full((5,), 40.0))
    ours = camera_condition(cams).double().numpy()
    for i in range(5):
        np.testing.assert_allclose(ours[i], mvdream_pose(el[i], az[i] + 90.0), atol=1e-6)
    # front_azimuth moves where dreamcore's front lands (0: MVDream's own azimuth 0)
    zero = camera_condition(cams, front_azimuth=0.0).double().numpy()
    np.testing.assert_allclose(zero[2], mvdream_pose(el[2], az[2]), atol=1e-6)
    # distance is not encoded: the translation has unit length
    assert np.allclose(np.linalg.norm(ours.reshape(5, 4, 4)[:, :3, 3], axis=1), 1.0, atol=1e-6)


def test_view_groups_share_elevation_distance_fov_and_background_with_azimuths_90_degrees_apart():
    anchors = sample_orbit(3, torch.Generator().manual_seed(0))
    anchors = anchors.with_background(torch.rand(3, 3, generator=torch.Generator().manual_seed(1)))
    cams = view_groups(anchors, 4)
    assert len(cams) == 12
    for name in ("elevation", "distance", "fov_y"):
        assert torch.allclose(getattr(cams, name), getattr(anchors, name).repeat_interleave(4), atol=1e-6)
    assert torch.equal(cams.background, anchors.background.repeat_interleave(4, 0))
    az = torch.rad2deg(cams.azimuth).reshape(3, 4)
    steps = (az - az[:, :1]) % 360.0
    assert torch.allclose(steps, torch.tensor([0.0, 90.0, 180.0, 270.0]).expand(3, 4), atol=1e-3)
    assert torch.allclose(cams.c2w[::4], anchors.c2w, atol=1e-5)  # each group starts at its anchor
    assert view_groups(anchors, 1) is anchors


# -- the UNet ------------------------------------------------------------------------------------------------------
def test_self_attention_spans_the_views_of_one_object_and_no_other():
    unet = tiny_diffusers.multiview_unet(3, 3, image_size=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=g)
    ctx = torch.randn(8, 5, 16, generator=g)
    cam = camera_condition(view_groups(sample_orbit(2, g), 4))
    t = torch.full((8,), 300)
    with torch.no_grad():
        base = unet(x, t, ctx, cam, num_frames=4)
        x2 = x.clone()
        x2[2] += 1.0  # a change in view 2 of the first object
        out = unet(x2, t, ctx, cam, num_frames=4)
        alone = unet(x, t, ctx, cam, num_frames=1)
        alone2 = unet(x2, t, ctx, cam, num_frames=1)
        other_cam = cam.clone()
        other_cam[0] = camera_condition(orbit_cameras(*(torch.tensor([50.0]), torch.tensor([10.0]),
                                                        torch.tensor([3.0]), torch.tensor([40.0]))))[0]
        moved = unet(x, t, ctx, other_cam, num_frames=4)
    diff = (out - base).abs().flatten(1).amax(1)
    assert all(diff[i] > 1e-4 for i in (0, 1, 3))  # the object's other views see it
    assert torch.allclose(out[4:], base[4:], atol=1e-6)  # the second object does not
    assert torch.allclose(alone2[[0, 1, 3]], alone[[0, 1, 3]], atol=1e-6)  # one frame: views independent
    assert (moved[0] - base[0]).abs().max() > 1e-4  # the camera conditions the prediction


def test_full_size_architecture_from_the_published_config_has_mvdreams_parameters():
    """867.57 M parameters = SD 2.1-base's UNet (865.91 M) + the camera MLP (16→1280→1280); LDM names."""
    config = {k: v for k, v in MVDREAM_UNET_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = MultiViewUNet(**config)
    n = sum(p.numel() for p in unet.parameters())
    camera = sum(p.numel() for p in unet.camera_embed.parameters())
    assert camera == 16 * 1280 + 1280 + 1280 * 1280 + 1280
    assert n - camera == 865_910_724  # SD 2.1-base UNet
    keys = set(unet.state_dict())
    for name in ("time_embed.0.weight", "camera_embed.2.bias", "input_blocks.0.0.weight",
                 "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "input_blocks.3.0.op.weight",
                 "middle_block.1.proj_in.weight", "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
                 "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight", "out.2.weight"):
        assert name in keys, name
    assert not any(k.endswith("to_q.bias") or k.endswith("to_k.bias") for k in keys)


def test_saved_unet_reloads_identically_and_a_missing_weight_is_an_error(tmp_path):
    unet = tiny_diffusers.multiview_unet()
    unet.save_pretrained(str(tmp_path / "unet"))
    back = MultiViewUNet.from_pretrained(str(tmp_path / "unet"))
    x, ctx = torch.randn(4, 4, 8, 8), torch.randn(4, 3, 16)
    cam = camera_condition(view_groups(sample_orbit(1, torch.Generator().manual_seed(2)), 4))
    with torch.no_grad():
        assert torch.equal(unet(x, torch.full((4,), 10), ctx, cam, 4), back(x, torch.full((4,), 10), ctx, cam, 4))
    from safetensors.torch import load_file, save_file

    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    del sd["camera_embed.0.weight"]
    save_file(sd, str(path))
    with pytest.raises(Exception, match="camera_embed.0.weight"):
        MultiViewUNet.from_pretrained(str(tmp_path / "unet"))


# -- the prior -----------------------------------------------------------------------------------------------------
def test_latent_and_pixel_folders_load_through_the_same_prior(folders, tmp_path):
    lat = make_prior(folders["latent"], tmp_path)
    assert (lat.channels, lat.resolution, lat.latent_resolution, lat.views_per_sample) == (4, 16, 8, 4)
    pix = make_prior(folders["pixel"], tmp_path)
    assert (pix.channels, pix.resolution, pix.vae) == (3, 8, None)
    assert not lat.view_dependent
    rgb = torch.rand(4, 20, 20, 3, requires_grad=True)
    for prior in (lat, pix):
        cams = prior.view_group(sample_orbit(1, torch.Generator().manual_seed(0)))
        x = prior.to_model_space(rgb)
        emb = prior.encode_prompt("a chair").cond["default"].expand(4, -1, -1)
        eps = prior.predict_noise(x.detach(), torch.full((4,), 400), emb, cameras=cams)
        assert eps.shape == x.shape and torch.isfinite(eps).all()
        x.sum().backward()  # the render gets gradients through the model space
        assert rgb.grad is not None and rgb.grad.abs().sum() > 0
        rgb.grad = None
        with pytest.raises(DreamcoreError, match="camera"):
            prior.predict_noise(x.detach(), torch.full((4,), 400), emb)
        with pytest.raises(DreamcoreError, match="groups of 4"):
            prior.predict_noise(x.detach()[:3], torch.full((3,), 400), emb[:3], cameras=cams[:3])


def every_guidance():
    from dreamcore.guidance.editing import generation_methods

    return generation_methods()  # the editing methods (dds, pds) need a source: tests/test_guidance_edit.py


# -- ImageDream: the image condition ------------------------------------------------------------------------------
# ImageDream's UNet config (bytedance/ImageDream sd_v2_base_ipmv.yaml as the community conversion keeps it): MVDream's
# with a 16-token image prompt at weight 1
IMAGEDREAM_UNET_CONFIG = {**MVDREAM_UNET_CONFIG, "ip_dim": 16, "ip_weight": 1.0}


def test_full_size_imagedream_architecture_adds_the_resampler_and_image_key_values_only():
    """ImageDream = MVDream + a perceiver resampler (4 layers, 12 heads × 64, 16 queries, CLIP ViT-H width 1280 →
    1024) + to_k_ip/to_v_ip in every cross-attention; its reference frame uses the zero camera."""
    base = {k: v for k, v in MVDREAM_UNET_CONFIG.items() if not k.startswith("_")}
    config = {k: v for k, v in IMAGEDREAM_UNET_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        mv, idream = MultiViewUNet(**base), MultiViewUNet(**config)
    assert idream.has_reference_frame and not mv.has_reference_frame
    assert idream.config.reference_camera == "zero"
    shapes = {k: tuple(v.shape) for k, v in idream.state_dict().items()}
    assert shapes["image_embed.latents"] == (1, 16, 1024)
    assert shapes["image_embed.proj_in.weight"] == (1024, 1280)
    assert shapes["image_embed.layers.3.0.to_q.weight"] == (768, 1024)
    assert shapes["image_embed.layers.3.0.to_kv.weight"] == (1536, 1024)
    assert shapes["image_embed.layers.3.0.to_out.weight"] == (1024, 768)
    assert shapes["image_embed.layers.0.1.1.weight"] == (4096, 1024)
    assert shapes["image_embed.norm_out.weight"] == (1024,)
    resampler = sum(p.numel() for p in idream.image_embed.parameters())
    attn2 = [k for k in shapes if k.endswith("attn2.to_k.weight")]
    ip = sum(2 * math.prod(shapes[k]) for k in attn2)
    assert all(shapes[k.replace("to_k", "to_k_ip")] == shapes[k] for k in attn2)
    assert not any("ip" in k for k in shapes if "attn1" in k)  # self-attention unchanged
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(idream) == n(mv) + resampler + ip


def ip_unet_inputs(unet, g=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = 5  # 4 views + the reference frame
    cams = torch.randn(g * f, 16, generator=gen)
    x = torch.randn(g * f, unet.config.in_channels, 8, 8, generator=gen)
    ctx = torch.randn(g * f, 3, 16, generator=gen)
    return x, torch.full((g * f,), 300), ctx, cams, f, gen


def test_the_reference_frame_reaches_the_views_of_its_group_only_and_the_image_tokens_every_view():
    unet = tiny_diffusers.multiview_unet(3, 3, image="imagedream")
    x, t, ctx, cams, f, gen = ip_unet_inputs(unet, g=2)
    ip = torch.randn(2 * f, 5, tiny_diffusers.CLIP_VISION_WIDTH, generator=gen)
    ref = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        base = unet(x, t, ctx, cams, f, ip=ip, ip_img=ref)
        # the reference rows of x are overwritten: what the caller put there does not matter
        x2 = x.clone()
        x2[f - 1::f] = 7.0
        assert torch.equal(unet(x2, t, ctx, cams, f, ip=ip, ip_img=ref), base)
        # another reference image for group 0 changes group 0's views, not group 1's
        ref2 = ref.clone()
        ref2[0] += 1.0
        out = unet(x, t, ctx, cams, f, ip=ip, ip_img=ref2)
        assert (out[:f - 1] - base[:f - 1]).abs().amax() > 1e-4
        assert torch.allclose(out[f:], base[f:], atol=1e-6)
        # the image tokens reach every view (through attn2's own keys and values)
        ip2 = ip.clone()
        ip2[:f] += 1.0
        out = unet(x, t, ctx, cams, f, ip=ip2, ip_img=ref)
        assert all((out[i] - base[i]).abs().amax() > 1e-5 for i in range(f - 1))
        # precomputed tokens appended to the context are the same as CLIP features through the resampler
        tokens = unet.image_tokens(ip)
        assert torch.allclose(unet(x, t, torch.cat([ctx, tokens], 1), cams, f, ip_img=ref), base, atol=1e-6)
    with pytest.raises(DreamcoreError, match="ip_img"):
        unet(x, t, ctx, cams, f, ip=ip)


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-imagedream")
    return {"imagedream": tiny_diffusers.save_multiview(root / "imagedream", latent=True, image="imagedream"),
            "frame": tiny_diffusers.save_multiview(root / "frame", latent=False, image="frame")}


def orbit(elevations, azimuths):
    n = len(elevations)
    return orbit_cameras(torch.tensor(elevations), torch.tensor(azimuths), torch.full((n,), 3.2), torch.full((n,), 40.0))


def picture(seed=0, size=20):
    return torch.rand(size, size, 3, generator=torch.Generator().manual_seed(seed))


def group_noise(prior, seed=0):
    g = torch.Generator().manual_seed(seed)
    cams = prior.view_group(sample_orbit(1, g))
    r = prior.latent_resolution
    return torch.randn(4, prior.channels, r, r, generator=g), cams


@pytest.mark.parametrize("kind", ["imagedream", "frame"])
def test_an_image_conditioned_folder_takes_a_picture_and_its_unconditional_branch_drops_it(image_folders, tmp_path,
                                                                                           kind):
    prior = make_prior(image_folders[kind], tmp_path)
    assert prior.accepts_image
    x, cams = group_noise(prior)
    ref_cam = orbit([0.0], [0.0])
    t = torch.full((4,), 500)

    def eps(image_seed):
        if image_seed is not None:
            prior.set_reference_image(picture(image_seed), ref_cam)
        e = prior.encode_prompt("a chair")
        cond, uncond = e.cond["default"], e.uncond
        assert cond.shape[1] == uncond.shape[1] and cond[0, -1, 0] == (1.0 if image_seed is not None else 0.0)
        assert uncond[0, -1, 0] == 0.0
        with torch.no_grad():
            return (prior.predict_noise(x, t, cond.expand(4, -1, -1), cameras=cams),
                    prior.predict_noise(x, t, uncond.expand(4, -1, -1), cameras=cams))

    cond_a, uncond_a = eps(1)
    cond_b, uncond_b = eps(2)
    assert cond_a.shape == x.shape and torch.isfinite(cond_a).all()
    assert (cond_a - cond_b).abs().amax() > 1e-5  # the picture conditions the views
    assert torch.equal(uncond_a, uncond_b)  # the unconditional branch never sees it
    # text-only use of the same folder: every row is the dropped image (ImageDream's views were relative to the
    # reference at dreamcore's azimuth 0, i.e. the model's front azimuth was 0)
    prior2 = make_prior(image_folders[kind], tmp_path, front_azimuth=0.0 if kind == "imagedream" else 90.0)
    e = prior2.encode_prompt("a chair")
    assert e.cond["default"][0, -1, 0] == 0.0
    with torch.no_grad():
        assert torch.equal(prior2.predict_noise(x, t, e.uncond.expand(4, -1, -1), cameras=cams), uncond_a)


def test_imagedream_views_are_relative_to_the_reference_and_the_tiny_prior_gives_it_its_own_camera(image_folders,
                                                                                                    tmp_path):
    idream = make_prior(image_folders["imagedream"], tmp_path)
    cams = orbit([10.0, 10.0], [0.0, 90.0])
    assert torch.allclose(idream.camera_numbers(cams), camera_condition(cams, 90.0))  # no image: the usual front
    idream.set_reference_image(picture(), orbit([0.0], [30.0]))
    # the reference (dreamcore azimuth 30) is ImageDream's azimuth 0: a view at 30 + ψ is the model's ψ
    assert torch.allclose(idream.camera_numbers(orbit([10.0], [120.0])),
                          torch.tensor(mvdream_pose(10.0, 90.0), dtype=torch.float32)[None], atol=1e-5)
    frames, ref_cams = idream.reference_frames(torch.tensor([True, False]))
    assert torch.equal(ref_cams, torch.zeros(2, 16))  # ImageDream: the zero camera
    assert frames[0].abs().sum() > 0 and torch.equal(frames[1], torch.zeros_like(frames[1]))
    tiny = make_prior(image_folders["frame"], tmp_path)
    ref = orbit([0.0], [30.0])
    tiny.set_reference_image(picture(), ref)
    _, ref_cams = tiny.reference_frames(torch.tensor([True, False]))
    assert torch.allclose(ref_cams[0], camera_condition(ref, 90.0)[0]) and torch.equal(ref_cams[1], torch.zeros(16))
    # its reference frame is the picture in model space (2·rgb − 1 at the prior's size), over the white it was given
    white = torch.ones(20, 20, 3)
    tiny.set_reference_image(white, ref)
    assert torch.allclose(tiny.reference_x, torch.ones_like(tiny.reference_x))


def test_image_parts_and_image_prompt_must_come_together(image_folders, folders, tmp_path):
    import shutil

    lone = tmp_path / "lone-encoder"
    shutil.copytree(folders["latent"], lone)
    shutil.copytree(image_folders["imagedream"] / "image_encoder", lone / "image_encoder")
    shutil.copytree(image_folders["imagedream"] / "feature_extractor", lone / "feature_extractor")
    index = json.loads((lone / "model_index.json").read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModel"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (lone / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamcoreError, match="without an image prompt"):
        make_prior(lone, tmp_path)
    blind = tmp_path / "no-encoder"
    shutil.copytree(image_folders["imagedream"], blind)
    index = json.loads((blind / "model_index.json").read_text())
    index["image_encoder"] = index["feature_extractor"] = [None, None]
    (blind / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamcoreError, match="no image_encoder"):
        make_prior(blind, tmp_path)
    with pytest.raises(DreamcoreError, match="takes no image"):
        make_prior(folders["pixel"], tmp_path).set_reference_image(picture(), orbit([0.0], [0.0]))


@pytest.mark.parametrize("name", every_guidance())
def test_every_guidance_steps_on_an_image_conditioned_prior(image_folders, tmp_path, name):
    """Each registered method on one 4-view group with the picture set: the reference frame rides along inside
    the prior (VSD's family too: its LoRA camera rows skip the reference frame)."""
    from dreamcore import registry
    from dreamcore.config import parse_component

    prior = make_prior(image_folders["frame"], tmp_path)
    prior.set_reference_image(picture(), orbit([0.0], [0.0]))
    extra = {"reward": {"model": {"name": "linear"}, "ddim_steps": 0}} if name == "reward" else {}
    method = registry.build("guidance", parse_component("guidance", {"name": name, **extra}, "guidance"))
    method.setup(prior, 10)
    g = torch.Generator().manual_seed(0)
    cams = prior.view_group(sample_orbit(1, g)).with_background(torch.ones(4, 3))
    rgb = torch.rand(4, 8, 8, 3, generator=g).requires_grad_(True)
    render = RenderOutput(rgb=rgb, alpha=torch.ones(4, 8, 8, 1), depth=torch.zeros(4, 8, 8, 1))
    views = conditions(prior.encode_prompt("a chair"), cams, 4, ViewPromptConfig(enabled=False), view_dependent=False)
    total = sum(method(render, cams, prior, views, 1, g).values())
    assert torch.isfinite(total)
    total.backward()
    assert (rgb.grad.flatten(1).abs().sum(1) > 0).all()


# -- guidance ------------------------------------------------------------------------------------------------------
def joint_prior(correlation=0.6, f=4, seed=0) -> JointGaussianPrior:
    mean = torch.randn(f, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return JointGaussianPrior(mean, std=0.5, correlation=correlation)


def render_of(x):
    rgb = x.detach().permute(0, 2, 3, 1).clone().requires_grad_(True)
    b, h, w = rgb.shape[:3]
    return RenderOutput(rgb=rgb, alpha=torch.ones(b, h, w, 1, dtype=x.dtype), depth=torch.zeros(b, h, w, 1, dtype=x.dtype))


def sds(**kw) -> SDSGuidance:
    cfg = SDSGuidance.Config(name="sds", guidance_scale=Scheduled.constant(1.0), **kw)
    return SDSGuidance(cfg)


def test_one_timestep_per_group_of_views():
    prior = joint_prior()
    g = sds()
    t = g.sample_t(12, 0, prior, torch.Generator().manual_seed(0))
    groups = t.reshape(3, 4)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) > 1
    with pytest.raises(DreamcoreError, match="4-view groups"):
        g.sample_t(6, 0, prior, torch.Generator().manual_seed(0))


def test_joint_prior_sds_is_stationary_at_the_mean_and_pulls_the_other_views_as_predicted():
    """E_ε[g] = ασ[δ̄/(α²λ₁+σ²) + (δ−δ̄)/(α²λ₀+σ²)] for δ = x − μ (analytic.py): moving view 0 alone by a makes
    the update of every other view ασ·a/F·[1/(α²λ₁+σ²) − 1/(α²λ₀+σ²)] — negative for ρ > 0, so descent drags
    them along; zero for a 2D prior (ρ = 0). Checked by Monte Carlo over 4096 groups at a fixed t."""
    t_frac, groups, a_shift = 0.2, 4096, 0.5
    for rho in (0.6, 0.0):
        prior = joint_prior(rho)
        x = prior.mean.repeat(groups, 1, 1, 1)
        x[0::4] += a_shift
        g = sds(t_min=Scheduled.constant(t_frac), t_max=Scheduled.constant(t_frac), weighting="uniform")
        render = render_of(x)
        views = conditions(prior.encode_prompt("p"), None, x.shape[0], ViewPromptConfig(enabled=False))
        grad = g.gradient(x, render, None, prior, views, 0, torch.Generator().manual_seed(1))
        mean_grad = grad.reshape(groups, 4, -1).mean((0, 2))  # per view, averaged over groups and elements
        tt = torch.tensor([int(1000 * t_frac)])
        al, si = (v.item() for v in prior.schedule.alpha_sigma(tt))
        lam1, lam0 = prior.eigenvalues()
        k1, k0 = 1 / (al**2 * lam1 + si**2), 1 / (al**2 * lam0 + si**2)
        own = al * si * a_shift * (k1 / 4 + 0.75 * k0)
        other = al * si * a_shift / 4 * (k1 - k0)
        tol = 4 * si / math.sqrt(groups * 12)  # Monte Carlo error of the noise term
        assert abs(mean_grad[0].item() - own) < tol + 0.02 * abs(own)
        for v in (1, 2, 3):
            assert abs(mean_grad[v].item() - other) < tol + 0.02 * abs(other) + 1e-12
        if rho > 0:
            assert other < -3 * tol  # a real pull, beyond the noise
        at_mean = g.gradient(prior.mean.repeat(groups, 1, 1, 1), render, None, prior, views,
                             0, torch.Generator().manual_seed(2))
        assert at_mean.mean((0, 2, 3)).abs().max() < 3 * tol  # stationary at μ


def test_x0_reconstruction_is_sds_with_weight_sigma_over_alpha_and_rescale_matches_its_formula():
    prior = joint_prior(0.3)
    x = prior.mean.repeat(2, 1, 1, 1) + 0.2
    views = conditions(prior.encode_prompt("p"), None, 8, ViewPromptConfig(enabled=False))
    common = dict(t_min=Scheduled.constant(0.2), t_max=Scheduled.constant(0.9))
    recon = sds(x0_reconstruction=True, **common).gradient(x, render_of(x), None, prior, views, 0,
                                                           torch.Generator().manual_seed(5))
    plain = sds(weighting="ism", **common).gradient(x, render_of(x), None, prior, views, 0,
                                                    torch.Generator().manual_seed(5))
    assert torch.allclose(recon, plain, atol=1e-9)
    x0, x0c = torch.randn(8, 3, 2, 2, dtype=torch.float64), torch.randn(8, 3, 2, 2, dtype=torch.float64) * 0.5
    out = rescaled_x0(x0, x0c, 4, 0.5)
    s = x0c[:4].std() / x0[:4].std()
    assert torch.allclose(out[:4], 0.5 * s * x0[:4] + 0.5 * x0[:4])
    with pytest.raises(DreamcoreError, match="x0_reconstruction"):
        sds(x0_rescale=0.5)


@pytest.mark.parametrize("name", every_guidance())
def test_every_guidance_takes_a_step_on_whole_view_groups(folders, tmp_path, name):
    """Each registered method on one 4-view group: a finite loss whose gradient reaches every view of the render
    (VSD's family attaches its LoRA score to the multi-view UNet)."""
    from dreamcore.config import parse_component

    prior = make_prior(folders["pixel"], tmp_path)
    extra = {"reward": {"model": {"name": "linear"}, "ddim_steps": 0}} if name == "reward" else {}
    guidance = parse_component("guidance", {"name": name, **extra}, "guidance")
    from dreamcore import registry

    method = registry.build("guidance", guidance)
    method.setup(prior, 10)
    g = torch.Generator().manual_seed(0)
    cams = prior.view_group(sample_orbit(1, g)).with_background(torch.ones(4, 3))
    rgb = torch.rand(4, 8, 8, 3, generator=g).requires_grad_(True)
    render = RenderOutput(rgb=rgb, alpha=torch.ones(4, 8, 8, 1), depth=torch.zeros(4, 8, 8, 1))
    views = conditions(prior.encode_prompt("a chair"), cams, 4, ViewPromptConfig(enabled=False), view_dependent=False)
    losses = method(render, cams, prior, views, 1, g)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert rgb.grad is not None and (rgb.grad.flatten(1).abs().sum(1) > 0).all()


# -- runs ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["text-mv-nerf", "text-mv-gaussians"])
def test_generate_runs_the_multiview_recipe_on_a_tiny_folder(folders, tmp_path, recipe):
    out = tmp_path / "run"
    rc = main(["generate", "a chair", "--config", f"configs/{recipe}.yaml", f"prior.model={folders['pixel']}",
               f"prior.cache_dir={tmp_path / 'c'}", "run.steps=4", f"run.dir={out}", "run.val_every=0",
               "export.resolution=32", "export.formats=[glb]", "eval.views=2", "camera.batch_size=8"])
    assert rc == 0
    assert (out / "model.glb").stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4


def test_a_batch_that_is_not_whole_groups_fails_before_training(folders, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["generate", "a chair", "--config", "configs/text-mv-nerf.yaml", f"prior.model={folders['pixel']}",
               f"prior.cache_dir={tmp_path / 'c'}", "run.steps=4", f"run.dir={out}", "camera.batch_size=6"])
    assert rc != 0
    assert "camera.batch_size=6" in capsys.readouterr().err
    assert not (out / "ckpt").exists() or not any((out / "ckpt").iterdir())


def with_full_size_unet(prior: MultiViewPrior, published: dict) -> MultiViewPrior:
    """``prior`` with its tiny UNet swapped for the published architecture ``published`` (a unet/config.json) with
    seeded random weights, frozen."""
    torch.manual_seed(0)
    unet = MultiViewUNet(**{k: v for k, v in published.items() if not k.startswith("_")}).eval().requires_grad_(False)
    prior.unet = unet
    object.__setattr__(prior, "_unet_forward", unet)
    return prior


@pytest.mark.slow
def test_full_size_mvdream_unet_with_random_weights_runs_one_guidance_step(folders, tmp_path):
    """The published architecture (867 M parameters, random weights) inside the prior: one SDS step with CFG on
    one 4-view group of 32² latents (MVDream's 256² renders), as on a real checkpoint."""
    prior = with_full_size_unet(make_prior(folders["latent"], tmp_path), MVDREAM_UNET_CONFIG)
    unet = prior.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 32, 32, generator=g)
    cams = prior.view_group(sample_orbit(1, g))
    emb = prior.encode_prompt("a chair")
    ctx = torch.randn(1, 77, 1024, generator=g)  # SD 2.1's text states (the tiny folder's encoder is 16 wide)
    views = conditions(type(emb)({"default": ctx}, torch.zeros_like(ctx), "a chair", null=torch.zeros_like(ctx)),
                       cams, 4, ViewPromptConfig(enabled=False), view_dependent=False)
    guidance = SDSGuidance(SDSGuidance.Config(name="sds", guidance_scale=Scheduled.constant(50.0),
                                              x0_reconstruction=True, x0_rescale=0.5))
    render = RenderOutput(rgb=torch.rand(4, 8, 8, 3), alpha=torch.ones(4, 8, 8, 1), depth=torch.zeros(4, 8, 8, 1))
    with torch.no_grad():
        grad = guidance.gradient(x, render, cams, prior, views, 0, g)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().mean() > 0


@pytest.mark.slow
def test_full_size_imagedream_unet_with_random_weights_runs_one_guidance_step(image_folders, tmp_path):
    """The published ImageDream UNet (MVDream's + the 16-token image prompt, random weights) inside the prior with a
    picture set: one SDS step (ImageDream's ω = 5, x̂₀ form, rescale 0.2) on a 4-view group + its reference frame of
    32² latents; the picture's tokens stand in for CLIP ViT-H's (the tiny folder's encoder is 12 wide)."""
    prior = with_full_size_unet(make_prior(image_folders["imagedream"], tmp_path), IMAGEDREAM_UNET_CONFIG)
    unet = prior.unet
    g = torch.Generator().manual_seed(0)
    prior.reference_x = torch.randn(1, 4, 32, 32, generator=g)
    prior.reference_cameras = orbit([0.0], [0.0])
    with torch.no_grad():
        prior.reference_tokens = unet.image_tokens(torch.randn(1, 257, 1280, generator=g))
    x = torch.randn(4, 4, 32, 32, generator=g)
    cams = prior.view_group(sample_orbit(1, g))
    ctx = torch.randn(1, 77, 1024, generator=g)
    cond, uncond = prior.with_image(ctx, True), prior.with_image(torch.zeros_like(ctx), False)
    assert cond.shape == (1, 77 + 16 + 1, 1024)
    views = conditions(PromptEmbeddings({"default": cond}, uncond, "a chair", null=uncond), cams, 4,
                       ViewPromptConfig(enabled=False), view_dependent=False)
    guidance = SDSGuidance(SDSGuidance.Config(name="sds", guidance_scale=Scheduled.constant(5.0),
                                              x0_reconstruction=True, x0_rescale=0.2))
    render = RenderOutput(rgb=torch.rand(4, 8, 8, 3), alpha=torch.ones(4, 8, 8, 1), depth=torch.zeros(4, 8, 8, 1))
    with torch.no_grad():
        grad = guidance.gradient(x, render, cams, prior, views, 0, g)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().mean() > 0
