"""Image to 3D (``dreamcore generate --image``): the picture read by its bytes and refused in words when bad, its
background removed (alpha, or a key on the border colour), the object framed as the priors' renders frame it, the
reference camera's convention, the reference-view losses pulling a scene toward the picture, and one short run
that keeps the cut-out in the run folder."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dreamcore import registry
from dreamcore.cameras import orbit_cameras
from dreamcore.cli import main
from dreamcore.config import config_path, load_config
from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path
from dreamcore.reference_image import (ImageConfig, cut_out, frame, frame_fraction, load_reference, read_picture,
                                       reference_camera, remove_background, sniff_format)

ROBOT_FILL = 0.96  # the robot's long side over its bounding sphere's projected diameter, front view (module doc)


# -- pictures ------------------------------------------------------------------------------------------------------
def shape_mask(h: int = 96, w: int = 128) -> np.ndarray:
    """A known object: a disc and a bar under it, off-centre, with a key-coloured window inside the disc."""
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 < 22 ** 2
    bar = (yy > 58) & (yy < 78) & (xx > 30) & (xx < 95)
    return disc | bar


def paint(mask: np.ndarray, background=(40, 120, 200), noise: float = 3.0, seed: int = 0) -> np.ndarray:
    """RGB uint8: ``mask`` painted in several colours (one window the background's own colour, enclosed)
    over a plain background with a little sensor noise."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = background
    yy, xx = np.mgrid[0:h, 0:w]
    obj = np.where((xx < 60)[..., None], [220, 60, 40], [250, 210, 60]).astype(np.float32)
    img[mask] = obj[mask]
    window = (yy - 40) ** 2 + (xx - 50) ** 2 < 6 ** 2  # inside the disc, the background's colour
    img[window] = background
    img += rng.normal(0.0, noise, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def save(array: np.ndarray, path, fmt: str = "PNG", **kw):
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def robot_pictures(tmp_path_factory):
    """The shipped robot rendered from the front (azimuth 0, elevation 0, distance 3.2, fov 40) at 192² on white:
    as RGB (to be keyed) and as RGBA, and its 48² render at the same camera."""
    from dreamcore.meshes.io import load_mesh, normalize
    from dreamcore.meshes.render import render_mesh

    root = tmp_path_factory.mktemp("robot")
    asset = normalize(load_mesh(resolve_path("assets/robot.glb")), 0.9)[0]
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    cam = orbit_cameras(one(0), one(0), one(3.2), one(40))
    big = render_mesh(asset, cam, 192, 192, supersample=2, background=torch.ones(1, 3))
    small = render_mesh(asset, cam, 48, 48, supersample=2, background=torch.ones(1, 3))
    rgb = (big.rgb[0].numpy() * 255 + 0.5).astype(np.uint8)
    alpha = (big.alpha[0, ..., 0].numpy() * 255 + 0.5).astype(np.uint8)
    return SimpleNamespace(rgb=save(rgb, root / "robot.png"), rgba=save(np.dstack([rgb, alpha]), root / "robot-a.png"),
                           alpha=alpha > 127, small=small)


# -- background removal --------------------------------------------------------------------------------------------
def test_an_alpha_channel_is_the_mask(tmp_path):
    mask = shape_mask()
    rgb = paint(mask, noise=40.0)  # a busy background under the transparent part: alpha decides, not colour
    path = save(np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)]), tmp_path / "a.png")
    pic, alpha = read_picture(path)
    recovered, method = remove_background(pic, alpha)
    assert "alpha" in method
    assert iou(recovered > 0.5, mask) > 0.95


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_plain_background_is_keyed_on_the_border_colour(tmp_path, fmt):
    mask = shape_mask()
    path = save(paint(mask), tmp_path / "k.img", fmt, **({"quality": 92} if fmt != "PNG" else {}))
    pic, alpha = read_picture(path)
    assert alpha is None
    recovered, method = remove_background(pic, alpha, tolerance=0.1, edge=2)
    assert "border colour (40, 120, 200)" in method or fmt != "PNG"
    assert iou(recovered > 0.5, mask) > 0.95  # the enclosed background-coloured window stays object
    soft = (recovered > 0.02) & (recovered < 0.98)
    from scipy import ndimage

    to_boundary = np.minimum(ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))
    assert (to_boundary[soft] <= 3).all()  # a soft edge, not a soft object


def test_an_opaque_alpha_channel_is_keyed_like_rgb(tmp_path, robot_pictures):
    rgb = np.asarray(Image.open(robot_pictures.rgb))
    path = save(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), tmp_path / "opaque.png")
    recovered, method = remove_background(*read_picture(path))
    assert "border colour (255, 255, 255)" in method
    assert iou(recovered > 0.5, robot_pictures.alpha) > 0.95  # white eyes and highlights inside stay


def test_the_type_is_read_from_the_bytes_not_the_name(tmp_path):
    jpeg_named_png = save(paint(shape_mask()), tmp_path / "photo.png", "JPEG", quality=90)
    assert sniff_format(jpeg_named_png.read_bytes()[:16]) == "JPEG"
    pic, alpha = read_picture(jpeg_named_png)
    assert pic.shape == (96, 128, 3) and alpha is None


# -- refusals ------------------------------------------------------------------------------------------------------
def refused(path, match, cfg=None):
    with pytest.raises(DreamcoreError, match=match) as e:
        cut_out(path, cfg or ImageConfig(path=str(path)))
    assert str(path) in str(e.value)  # the file is named
    return str(e.value)


def test_bad_pictures_are_refused_in_words_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all\n")
    refused(text, "is not a PNG, JPEG or WebP image")
    full = save(paint(shape_mask()), tmp_path / "full.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full[: len(full) // 2])
    refused(truncated, "damaged or truncated")
    refused(tmp_path / "missing.png", "no such file")
    refused(tmp_path, "not a regular file")
    plain = save(np.full((64, 64, 3), 200, np.uint8), tmp_path / "plain.png")
    refused(plain, "empty after removing the background")
    clear = save(np.zeros((64, 64, 4), np.uint8), tmp_path / "clear.png")
    refused(clear, "empty after removing the background")
    noise = save(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / "noise.png")
    refused(noise, "no background found")
    big = save(paint(shape_mask(), noise=30.0), tmp_path / "big.png")
    refused(big, "over the limit", ImageConfig(path=str(big), max_mb=1e-3))


def test_a_bad_picture_is_refused_before_any_work(tmp_path, capsys):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"GIF89a" + bytes(64))
    out = tmp_path / "run"
    assert main(["generate", "--image", str(bad), "a toy robot", "--config", "configs/image-to-3d.yaml",
                 f"run.dir={out}"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a PNG, JPEG or WebP image" in err
    assert not out.exists()
    with pytest.raises(DreamcoreError, match="unknown config key 'image.colour'"):
        load_config(config_path("image-to-3d"), ["image.colour=1"])


# -- framing -------------------------------------------------------------------------------------------------------
def test_the_object_is_centred_and_scaled_as_the_priors_renders_are(tmp_path):
    mask = shape_mask()
    canvas = np.zeros((300, 220, 4), np.uint8)  # the object far off-centre on a large transparent canvas
    canvas[180:276, 20:148, :3] = paint(mask)
    canvas[180:276, 20:148, 3] = np.where(mask, 255, 0)
    path = save(canvas, tmp_path / "off.png")
    cfg = ImageConfig(path=str(path), fill=0.8)
    ref = load_reference(cfg, 64, (3.0, 3.4), (38.0, 42.0))
    s = frame_fraction(0.9, 3.2, 40.0)
    assert s == pytest.approx(0.9 / (3.2 * math.tan(math.radians(20.0))))
    a = ref.alpha[0, ..., 0] > 0.5
    rows, cols = torch.nonzero(a, as_tuple=True)
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert max(h, w) == pytest.approx(0.8 * s * 64, abs=1.5)  # long side = fill · s of the frame
    assert h / w == pytest.approx(mask.any(1).sum() / mask.any(0).sum(), rel=0.1)
    assert (rows.max() + rows.min() + 1) / 2 == pytest.approx(32, abs=1.0)  # bounding box centred
    assert (cols.max() + cols.min() + 1) / 2 == pytest.approx(32, abs=1.0)
    assert float(ref.rgb[ref.alpha.expand_as(ref.rgb) == 0].abs().max()) == 0.0


def test_a_front_picture_lands_where_the_object_renders(robot_pictures):
    """A front picture of the shipped robot, framed with its own fill, covers the robot's render at the reference
    camera: framing and camera agree with the scene the prior learned."""
    for picture in (robot_pictures.rgb, robot_pictures.rgba):
        ref = load_reference(ImageConfig(path=str(picture), fill=ROBOT_FILL), 48, (3.0, 3.4), (38.0, 42.0))
        assert iou(ref.alpha[0, ..., 0].numpy() > 0.5, robot_pictures.small.alpha[0, ..., 0].numpy() > 0.5) > 0.85


def test_the_cut_out_reads_back_to_itself(tmp_path, robot_pictures):
    """reference.png (the cut-out) read again gives the same cut-out: a resumed run sees the same pixels."""
    first = cut_out(robot_pictures.rgb, ImageConfig(path="x"))
    copy = tmp_path / "reference.png"
    copy.write_bytes(first.png_bytes())
    again = cut_out(copy, ImageConfig(path="x"))
    assert "alpha" in again.method
    np.testing.assert_array_equal(first.rgba, again.rgba)
    a, b = frame(first, 32, 0.7), frame(again, 32, 0.7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# -- the reference camera ------------------------------------------------------------------------------------------
def test_the_reference_camera_is_a_front_view_on_plus_z_by_default():
    cam = reference_camera(ImageConfig(path="x"), (3.0, 3.4), (38.0, 42.0))
    assert torch.allclose(cam.position[0], torch.tensor([0.0, 0.0, 3.2]), atol=1e-5)
    forward = -cam.c2w[0, :3, 2]  # OpenGL: the camera looks down its −Z axis
    assert torch.allclose(forward, torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    assert torch.allclose(cam.c2w[0, :3, 1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)  # +Y up
    assert math.degrees(float(cam.fov_y[0])) == pytest.approx(40.0)
    up = reference_camera(ImageConfig(path="x", elevation=30.0), (3.0, 3.4), (38.0, 42.0))
    assert up.position[0, 1] > 0 and up.position[0, 2] > 0  # positive elevation: from above
    side = reference_camera(ImageConfig(path="x", azimuth=90.0, distance=2.5, fov=49.1), (3.0, 3.4), (38.0, 42.0))
    assert torch.allclose(side.position[0], torch.tensor([2.5, 0.0, 0.0]), atol=1e-5)  # +90°: the +X side
    same = orbit_cameras(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([2.5]), torch.tensor([49.1]))
    assert torch.allclose(side.c2w, same.c2w) and torch.allclose(side.fov_y, same.fov_y)


# -- the losses ----------------------------------------------------------------------------------------------------
def scene(kind: str, **image):
    """A tiny untrained scene (``kind``: gaussians or nerf) and the ``image`` section's ReferenceView on it."""
    from dreamcore.config import parse_component
    from dreamcore.renderers.background import build_background
    from dreamcore.systems.reference_view import ReferenceView

    torch.manual_seed(0)
    if kind == "gaussians":
        rep = registry.build("representation", parse_component("representation", {
            "name": "gaussians", "init_points": 400, "init_radius": 0.6, "init_opacity": 0.3}, "representation"))
        renderer = registry.build("renderer", parse_component("renderer", {"name": "splat"}, "renderer"))
    else:
        rep = registry.build("representation", parse_component("representation", {"name": "nerf"}, "representation"))
        renderer = registry.build("renderer", parse_component("renderer", {"name": "volume",
                                                                           "samples_per_diagonal": 64}, "renderer"))
    background = build_background(parse_component("background", {"name": "solid", "random_prob": 1.0},
                                                   "background"))
    full = load_config(None, ["camera.resolution=24", "run.steps=10", *(f"image.{k}={v}" for k, v in image.items())])
    system = SimpleNamespace(representation=rep, renderer=renderer, background=background,
                             _sample_pixels=lambda b, res, g: None)
    return system, ReferenceView(full.image, full), full


@pytest.mark.parametrize("kind", ["gaussians", "nerf"])
def test_the_reference_losses_pull_a_render_toward_the_picture(robot_pictures, kind):
    system, view, _ = scene(kind, path=robot_pictures.rgba, ramp="false")
    params = [p for g in system.representation.parameter_groups() for p in g["params"]]
    opt = torch.optim.Adam(params, lr=0.02 if kind == "gaussians" else 0.01)
    g = torch.Generator().manual_seed(0)
    first = None
    for step in range(8):
        losses = view.losses(system, step, g)
        assert set(losses) == {"ref_rgb", "ref_mask"}
        total = sum(losses.values())
        first = float(total.detach()) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        last = float(sum(view.losses(system, 8, torch.Generator().manual_seed(0)).values()))
    assert last < 0.8 * first


def test_the_weights_warm_up_linearly_and_pixel_subsets_estimate_the_same_loss(robot_pictures):
    system, view, full = scene("gaussians", path=robot_pictures.rgba, lambda_rgb=10, lambda_mask=1)
    assert view.ramp(0) == pytest.approx(0.1) and view.ramp(4) == pytest.approx(0.5) and view.ramp(99) == 1.0
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - the same background colour each time
    with torch.no_grad():
        whole = view.losses(system, 9, g())
        system._sample_pixels = lambda b, res, gen: torch.randperm(res * res)[None]  # every pixel, shuffled
        subset = view.losses(system, 9, g())
    for k in whole:
        assert float(subset[k]) == pytest.approx(float(whole[k]), rel=1e-4)
    assert float(whole["ref_rgb"]) > 0 and float(whole["ref_mask"]) > 0


# -- runs ----------------------------------------------------------------------------------------------------------
TINY = ["run.steps=6", "run.val_every=0", "run.progress=false", "run.checkpoint_every=3", "export.resolution=32",
        "export.formats=[glb]", "export.isosurface_search=[]", "export.texture_size=64", "eval.views=2",
        "eval.resolution=16", "representation.init_points=300", "system.densify.start=2", "system.densify.every=2",
        "system.densify.stop=5"]


# the DMTet stage at toy sizes (batch 4: one group of the multi-view prior's views)
REFINE_TINY = ("refine.overrides=[run.steps=2,run.checkpoint_every=2,run.val_every=0,camera.resolution=24,"
               "representation.resolution=16,representation.n_levels=4,representation.log2_table_size=12,"
               "representation.max_resolution=64,representation.init_texture_steps=10,"
               "representation.init_texture_points=2000,export.texture_size=64,export.target_faces=300]")


def test_generate_with_an_image_keeps_its_cut_out_in_the_run_folder(tmp_path, robot_pictures):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "photo.png"
    photo.write_bytes(robot_pictures.rgb.read_bytes())
    out = tmp_path / "run"
    assert main(["generate", "--image", str(photo), "a toy robot", "--config", "configs/image-to-3d.yaml", *TINY,
                 f"run.dir={out}", REFINE_TINY]) == 0
    assert (out / "model.glb").stat().st_size > 0 and (out / "refine" / "model.glb").is_file()
    assert sorted(p.name for p in photos.iterdir()) == ["photo.png"]  # nothing written beside the picture
    kept = Image.open(out / "reference.png")
    assert kept.mode == "RGBA" and kept.getextrema()[3][0] == 0  # the cut-out, its background gone
    cfg = load_config(out / "config.yaml")
    assert cfg.image.path == str((out / "reference.png").resolve())  # config.yaml names the copy
    assert load_config(out / "refine" / "config.yaml").image.path == str((out / "refine" / "reference.png").resolve())
    assert f"image: {photo} -> reference.png" in (out / "log.txt").read_text()
    assert " ref_rgb=" in (out / "log.txt").read_text() and " ref_rgb=" in (out / "refine" / "log.txt").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["stage1"]["ref_iou"] <= 1.0 and "ref_psnr" in metrics


def test_the_api_takes_an_image_and_the_run_resumes_without_the_original(tmp_path, robot_pictures):
    import dreamcore

    photo = tmp_path / "photo.webp"
    Image.open(robot_pictures.rgba).save(photo, format="WEBP", lossless=True)
    with pytest.raises(DreamcoreError, match="is not a regular file"):
        dreamcore.generate(config="image-to-3d", image=tmp_path, run_dir=tmp_path / "never")  # a folder
    assert not (tmp_path / "never").exists()
    run = dreamcore.generate("a toy robot", config="image-to-3d", image=photo, run_dir=tmp_path / "api",
                             overrides=[*TINY, "refine.config=", "run.steps=3"], progress=False,
                             announce=lambda *_: None)
    assert run.files["glb"].is_file() and run.files["reference"].is_file()
    photo.unlink()  # the run reads its own copy from now on, wherever its folder goes
    moved = tmp_path / "moved"
    run.path.rename(moved)
    run = dreamcore.resume(moved, {"run.steps": 5}, progress=False, announce=lambda *_: None)
    assert run.metrics["steps"] == 5 and "ref_psnr" in run.metrics
    assert load_config(moved / "config.yaml").image.path == str((moved / "reference.png").resolve())


# -- an image-conditioned prior sees the picture ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_prior_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    import tiny_diffusers

    return tiny_diffusers.save_multiview(tmp_path_factory.mktemp("tiny-frame") / "frame", latent=False, image="frame")


def test_an_image_conditioned_prior_gets_the_picture_framed_over_white(tmp_path, robot_pictures, image_prior_folder):
    from dreamcore.config import parse_component
    from dreamcore.priors.multiview import MultiViewPrior
    from dreamcore.systems.reference_view import ReferenceView

    cfg = load_config(config_path("image-to-3d"), [f"image.path={robot_pictures.rgba}"])
    prior = MultiViewPrior(parse_component("prior", {"name": "multiview", "model": str(image_prior_folder),
                                                     "cache_dir": str(tmp_path / "c")}, "prior"))
    view = ReferenceView(cfg.image, cfg)
    assert view.condition(prior)
    ref = load_reference(cfg.image, prior.resolution, cfg.camera.distance_range, cfg.camera.fov_range)
    expected = ref.over(torch.ones(1, 3)).permute(0, 3, 1, 2) * 2 - 1  # the pixel prior's model space
    assert prior.reference_x.shape == expected.shape
    assert (prior.reference_x - expected).abs().mean() < 0.05  # framed at 256 px, then area-resized
    assert torch.allclose(prior.reference_cameras.c2w, view.image().camera.c2w)
    off = load_config(config_path("image-to-3d"), [f"image.path={robot_pictures.rgba}", "image.condition_prior=false"])
    fresh = MultiViewPrior(parse_component("prior", {"name": "multiview", "model": str(image_prior_folder),
                                                     "cache_dir": str(tmp_path / "c")}, "prior"))
    assert not ReferenceView(off.image, off).condition(fresh) and fresh.reference_x is None


def test_a_picture_alone_is_a_prompt_for_an_image_conditioned_prior(tmp_path, robot_pictures, image_prior_folder,
                                                                    capsys):
    common = ["generate", "--image", str(robot_pictures.rgb), "", "--config", "configs/image-to-3d.yaml", *TINY,
              f"prior.model={image_prior_folder}", f"prior.cache_dir={tmp_path / 'c'}", "refine.config=",
              "run.steps=2"]
    assert main(common + [f"run.dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run" / "model.glb").is_file()
    # without the picture in the prior, an empty prompt is no condition at all: refused in words
    assert main(common + [f"run.dir={tmp_path / 'off'}", "image.condition_prior=false"]) != 0
    assert "prompt is empty" in capsys.readouterr().err


def test_scoring_in_one_frame_moves_the_glb_as_the_target_was_normalized(tmp_path):
    """eval.align=bbox: a GLB that is the object shifted and scaled (what a centred, rescaled picture gives) scores
    as the object itself; as written (align none) it does not. Its rotation is never changed."""
    from dataclasses import replace

    from dreamcore.meshes.asset import SceneTransform
    from dreamcore.meshes.io import asset_to_trimesh, load_mesh, normalize
    from dreamcore.meshes.render import render_mesh
    from dreamcore.runner.finish import evaluate_run

    robot = normalize(load_mesh(resolve_path("assets/robot.glb")), 0.9)[0]
    moved = replace(robot, vertices=robot.vertices * 0.7 + torch.tensor([0.25, -0.1, 0.15]))
    turned = replace(robot, vertices=robot.vertices * torch.tensor([-1.0, 1.0, -1.0]))  # 180° about +Y

    class Scene:  # the scored run's field: only its renders are used
        scene_transform = SceneTransform()
        representation = torch.nn.Linear(1, 1)

        def render_views(self, cams, h, w, background):
            return render_mesh(robot, cams, h, w, background=background)

    def score(asset, align):
        run = tmp_path / f"{align}-{id(asset)}"
        run.mkdir()
        asset_to_trimesh(asset, linear_colors=True).export(run / "model.glb")
        cfg = load_config(config_path("image-to-3d"), ["eval.mesh=assets/robot.glb", f"eval.align={align}",
                                                       "eval.views=6", "eval.resolution=32", "eval.janus_views=4"])
        return evaluate_run(Scene(), cfg, run)

    as_written, aligned = score(moved, "none"), score(moved, "bbox")
    assert as_written["glb_iou"] < 0.6 and aligned["glb_iou"] > 0.95
    assert aligned["glb_align"]["scale"] == pytest.approx(1 / 0.7, rel=1e-3)
    assert score(turned, "bbox")["glb_janus"] > 0.5  # a back on the front is not aligned away
    with pytest.raises(DreamcoreError, match="eval.align"):
        load_config(config_path("image-to-3d"), ["eval.align=icp"])


def test_the_nerf_image_recipe_runs_and_scores_in_one_frame(tmp_path, robot_pictures):
    out = tmp_path / "nerf"
    assert main(["generate", "--image", str(robot_pictures.rgb), "a toy robot", "--config",
                 "configs/image-to-3d-nerf.yaml", "run.steps=3", "run.val_every=0", "run.progress=false",
                 "run.checkpoint_every=0", "export.resolution=32", "export.formats=[glb]", "export.isosurface_search=[]",
                 "export.texture_size=64", "eval.views=2", "eval.resolution=16", "eval.mesh=assets/robot.glb",
                 f"run.dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "model.glb").is_file() and (out / "reference.png").is_file()
    assert "glb_align" in metrics and "ref_psnr" in metrics and " ref_rgb=" in (out / "log.txt").read_text()
