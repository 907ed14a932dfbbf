"""Stable Diffusion prior on tiny random-weight pipelines saved to a folder: loading through the user's path,
agreement with diffusers' own pipeline step (CFG included, ε and v), gradients through the VAE, the prompt
cache, the offline error, dtypes, and short ``dreamcore generate`` runs with SDS/VSD/ISM/CSD."""

import json
import os
import re
import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import tiny_diffusers  # noqa: E402
from dreamcore.cli import main  # noqa: E402
from dreamcore.errors import DreamcoreError  # noqa: E402
from dreamcore.guidance import common  # noqa: E402
from dreamcore.views import ViewPromptConfig  # noqa: E402
from dreamcore.priors.stable_diffusion import StableDiffusionPrior  # noqa: E402
from dreamcore.renderers.output import RenderOutput  # noqa: E402
from dreamcore.schedule import Scheduled  # noqa: E402


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    return {kind: tiny_diffusers.save_stable_diffusion(root / kind, kind) for kind in ("epsilon", "v_prediction")}


def make_prior(folder, tmp_path, **kw):
    cfg = StableDiffusionPrior.Config(name="stable-diffusion", model=str(folder), cache_dir=str(tmp_path / "cache"),
                                      **kw)
    return StableDiffusionPrior(cfg)


def render(b=2, size=12, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(b, size, size, 3, generator=g).requires_grad_(requires_grad)
    return RenderOutput(rgb=rgb, alpha=torch.ones(b, size, size, 1), depth=torch.zeros(b, size, size, 1))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_cfg_noise_prediction_matches_the_diffusers_pipeline_step(sd_folders, tmp_path, kind):
    """One DDIM step of StableDiffusionPipeline from t = 999 to the clean image (trailing spacing, ᾱ_prev = 1)
    returns x̂_0 = (x_t − σ ε̃)/α with ε̃ the CFG mix: our prompt encoding, ε (v converted) and CFG must give it."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    prior = make_prior(sd_folders[kind], tmp_path)
    assert prior.schedule.prediction_type == kind
    pipe = StableDiffusionPipeline.from_pretrained(str(sd_folders[kind]))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                               set_alpha_to_one=True)
    assert torch.allclose(pipe.scheduler.alphas_cumprod, prior.schedule.alphas_cumprod, atol=1e-6)
    emb = prior.encode_prompt("a red hamburger", "soggy")
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    omega = 7.5
    expected = pipe(prompt="a red hamburger", negative_prompt="soggy", latents=x_t.clone(), num_inference_steps=1,
                    guidance_scale=omega, height=16, width=16, output_type="latent").images
    t = torch.tensor([999])
    with torch.no_grad():
        eps_c, eps_u = common.predict_rows(prior, x_t, t, [emb.cond["default"], emb.uncond])
    x0 = common.predicted_x0(prior.schedule, x_t, common.classifier_free(eps_c, eps_u, omega), t)
    assert torch.allclose(x0, expected, atol=1e-4), (x0 - expected).abs().max()
    # the conditions are the pipeline's own prompt embeddings
    pe, ne = pipe.encode_prompt("a red hamburger", "cpu", 1, True, "soggy")
    assert torch.allclose(emb.cond["default"], pe, atol=1e-6) and torch.allclose(emb.uncond, ne, atol=1e-6)


def test_v_prediction_is_converted_to_epsilon(sd_folders, tmp_path):
    prior = make_prior(sd_folders["v_prediction"], tmp_path)
    emb = prior.encode_prompt("a chair").cond["default"].expand(2, -1, -1)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([30, 800])
    with torch.no_grad():
        v = prior.unet(x_t, t, encoder_hidden_states=emb).sample
        eps = prior.predict_epsilon(x_t, t, emb)
    a, s = (z.view(-1, 1, 1, 1) for z in prior.schedule.alpha_sigma(t))
    assert torch.allclose(prior.predict_noise(x_t, t, emb), v)
    assert torch.allclose(eps, a * v + s * x_t, atol=1e-6)


def test_gradient_reaches_the_render_through_the_vae_encoder(sd_folders, tmp_path):
    prior = make_prior(sd_folders["epsilon"], tmp_path)
    r = render(requires_grad=True)
    z = prior.to_model_space(r.rgb)
    assert z.shape == (2, 4, 8, 8) and prior.resolution == 16  # 12 px render resized to the model's 16 px
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    (z * w).sum().backward()
    grad = r.rgb.grad
    assert grad is not None and grad.abs().sum() > 0
    # the autograd directional derivative agrees with a central finite difference (VAE in float64 for this)
    prior.vae.double()
    prior.vae_dtype = torch.float64
    rgb = r.rgb.detach().double().requires_grad_(True)
    zz = prior.to_model_space(rgb)
    w = torch.randn(zz.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (g,) = torch.autograd.grad((zz * w).sum(), rgb)
    d = torch.randn(rgb.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        plus = (prior.to_model_space(rgb + h * d) * w).sum()
        minus = (prior.to_model_space(rgb - h * d) * w).sum()
    fd = float((plus - minus) / (2 * h))
    assert zz.dtype == torch.float64
    assert fd == pytest.approx(float((g * d).sum()), rel=1e-5, abs=1e-9)
    prior.vae.float()
    prior.vae_dtype = torch.float32
    # the SDS loss's gradient lands on the render too
    from dreamcore.guidance.sds import SDSGuidance
    from dreamcore.guidance.views import conditions

    r2 = render(requires_grad=True)
    emb = prior.encode_prompt("a hamburger")
    views = conditions(emb, None, 2, ViewPromptConfig(enabled=False))
    sds = SDSGuidance(SDSGuidance.Config(guidance_scale=Scheduled.constant(7.5)))
    losses = sds(r2, None, prior, views, 0, torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    assert r2.rgb.grad.abs().sum() > 0


def test_prompt_embeddings_are_cached_on_disk_and_the_text_encoder_is_not_loaded_again(sd_folders, tmp_path):
    views = ViewPromptConfig()
    first = make_prior(sd_folders["epsilon"], tmp_path)
    a = first.encode_prompt("a hamburger", "blurry", views)
    assert set(a.cond) == {"default", "front", "side", "back", "overhead"}
    assert first.text_encoder_loads == 1 and first.prompt_cache.misses == 7  # 5 views, negative, empty
    assert first._text_encoders is None  # freed after encoding (free_text_encoder: true)
    assert not torch.allclose(a.cond["front"], a.cond["back"])
    second = make_prior(sd_folders["epsilon"], tmp_path)
    calls = []
    second.load_text_encoders = lambda: calls.append(1) or []
    b = second.encode_prompt("a hamburger", "blurry", views)
    assert calls == [] and second.text_encoder_loads == 0 and second.prompt_cache.hits == 7
    for k in a.cond:
        assert torch.equal(a.cond[k], b.cond[k])
    assert torch.equal(a.uncond, b.uncond) and torch.equal(a.null, b.null)
    # new text-encoder weights (a changed file in the local folder) are a different key
    weights = next((sd_folders["epsilon"] / "text_encoder").glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = make_prior(sd_folders["epsilon"], tmp_path)
    third.encode_prompt("a hamburger", "blurry", views)
    assert third.text_encoder_loads == 1 and third.prompt_cache.hits == 0
    # another prompt is a miss; caching off always encodes
    assert second.prompt_cache.get("a different prompt") is None
    off = make_prior(sd_folders["epsilon"], tmp_path, cache_prompts=False, free_text_encoder=False)
    off.encode_prompt("a hamburger")
    assert off.text_encoder_loads == 1 and off._text_encoders is not None


def test_long_prompts_warn_with_the_truncated_part(sd_folders, tmp_path):
    prior = make_prior(sd_folders["epsilon"], tmp_path)
    text = "a burger with extra cheese, pickles and onions"  # > 32 tokens (character-level vocabulary)
    tok = prior.tokenizers[0]
    kept = tok.decode(prior.tokenize(tok, text).input_ids[0], skip_special_tokens=True)
    with pytest.warns(UserWarning, match="ignored") as rec:
        prior.embed(text)
    lost = re.search(r"ignored: '(.*)'", str(rec[0].message)).group(1)
    assert lost.endswith("onions") and (kept + lost).replace(" ", "") == text.replace(" ", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.embed("a burger")


def test_offline_missing_model_fails_at_start_naming_the_model(monkeypatch, tmp_path, sd_folders, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DreamcoreError, match=r"someorg/not-downloaded.*huggingface-cli download someorg/not-downl"):
        make_prior("someorg/not-downloaded", tmp_path)
    with pytest.raises(DreamcoreError, match="no such folder"):
        make_prior(str(tmp_path / "missing-folder"), tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scheduler").symlink_to(sd_folders["epsilon"] / "scheduler")
    with pytest.raises(DreamcoreError, match="no 'tokenizer/' part"):
        make_prior(broken, tmp_path)
    run = tmp_path / "run"
    code = main(["generate", "a hamburger", "--config", "configs/dreamfusion-sd.yaml", "prior.model=someorg/missing",
                 f"run.dir={run}"])
    err = capsys.readouterr().err
    assert code == 2 and "someorg/missing" in err and "Traceback" not in err
    assert not (run / "ckpt").exists()


def test_dtypes_and_memory_options(sd_folders, tmp_path):
    ref = make_prior(sd_folders["epsilon"], tmp_path)
    assert ref.dtype == torch.float32 and next(ref.unet.parameters()).dtype == torch.float32  # auto on CPU
    bf = make_prior(sd_folders["epsilon"], tmp_path, dtype="bf16", attention="default", attention_slicing=True,
                    vae_slicing=True, channels_last=True, cpu_offload=True)
    assert next(bf.unet.parameters()).dtype == torch.bfloat16 and next(bf.vae.parameters()).dtype == torch.bfloat16
    emb = ref.encode_prompt("a hamburger").cond["default"].expand(2, -1, -1)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    with torch.no_grad():
        a = ref.predict_epsilon(x_t, t, emb)
        b = bf.predict_epsilon(x_t, t, emb)
        za, zb = ref.to_model_space(render().rgb), bf.to_model_space(render().rgb)
    assert b.dtype == torch.float32 and zb.dtype == torch.float32
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 0.05
    assert (za - zb).abs().max() < 0.05 * za.abs().max() + 0.05
    with pytest.raises(DreamcoreError, match="CUDA is not available"):
        if not torch.cuda.is_available():
            make_prior(sd_folders["epsilon"], tmp_path, device="cuda")
        else:
            raise DreamcoreError("CUDA is not available (skipped: CUDA present)")
    with pytest.raises(DreamcoreError, match="rays_per_view=0"):
        ref.predict_noise(x_t, t, emb, pixel_index=torch.zeros(2, 4, dtype=torch.long))


def test_latent_mode_takes_the_render_channels_as_latents(sd_folders, tmp_path):
    prior = make_prior(sd_folders["epsilon"], tmp_path, latent_mode=True)
    assert prior.vae is None
    lat = torch.rand(1, 8, 8, 4, requires_grad=True)
    z = prior.to_model_space(lat)
    assert torch.allclose(z, lat.permute(0, 3, 1, 2) * 2 - 1)
    with pytest.raises(DreamcoreError, match="4-channel render"):
        prior.to_model_space(render().rgb)


SD_RUN = ["run.steps=3", "run.checkpoint_every=3", "run.val_every=0", "run.progress=false", "run.val_resolution=16",
          "camera.resolution=16", "representation.n_levels=4", "representation.log2_table_size=12",
          "representation.max_resolution=64", "representation.occupancy_resolution=16", "export.formats=[]"]


@pytest.mark.parametrize("method", ["sds", pytest.param("vsd", marks=pytest.mark.slow),
                                    pytest.param("ism", marks=pytest.mark.slow), pytest.param("csd", marks=pytest.mark.slow)])
def test_generate_runs_with_the_tiny_sd_prior(sd_folders, tmp_path, method):
    run = tmp_path / method
    extra = ["guidance.score_steps=1"] if method == "vsd" else []
    assert main(["generate", "a hamburger", "--config", "configs/dreamfusion-sd.yaml", *SD_RUN,
                 f"prior.model={sd_folders['epsilon']}", f"prior.cache_dir={tmp_path / 'cache'}",
                 f"guidance.name={method}", *extra, f"run.dir={run}"]) == 0
    log = (run / "log.txt").read_text()
    assert f" {method}=" in log
    assert json.loads((run / "ckpt" / "last.json").read_text())["step"] == 3
    assert "name: stable-diffusion" in (run / "config.yaml").read_text()


def test_vsd_lora_attaches_to_the_real_prior_unet_and_leaves_the_prior_unchanged(sd_folders, tmp_path):
    from dreamcore.cameras import orbit_cameras
    from dreamcore.guidance.views import conditions
    from dreamcore.guidance.vsd import VSDGuidance

    prior = make_prior(sd_folders["v_prediction"], tmp_path)
    vsd = VSDGuidance(VSDGuidance.Config())
    vsd.setup(prior, total_steps=10)
    assert type(vsd.score).__name__ == "LoRAScore" and vsd.score.prediction_type == "v_prediction"
    cams = orbit_cameras(torch.tensor([0.0, 20.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 3.0),
                         torch.full((2,), 40.0))
    views = conditions(prior.encode_prompt("a hamburger"), cams, 2, ViewPromptConfig(enabled=False))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    keep = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        base = prior.predict_epsilon(x, t, views.plain)
        assert torch.allclose(vsd.score(prior, x, t, views.plain, cams, keep), base, atol=1e-5)
    for step in range(2):
        vsd(render(), cams, prior, views, step, torch.Generator().manual_seed(step))
    with torch.no_grad():
        assert torch.equal(prior.predict_epsilon(x, t, views.plain), base)
        assert not torch.allclose(vsd.score(prior, x, t, views.plain, cams, keep), base, atol=1e-6)


@pytest.mark.slow
def test_compiled_unet_predicts_the_same(sd_folders, tmp_path):
    ref = make_prior(sd_folders["epsilon"], tmp_path)
    comp = make_prior(sd_folders["epsilon"], tmp_path, compile=True, compile_backend="aot_eager")  # no C++ build
    assert comp._unet_forward is not comp.unet
    emb = ref.encode_prompt("a hamburger").cond["default"].expand(2, -1, -1)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    with torch.no_grad():
        assert torch.allclose(comp.predict_epsilon(x_t, t, emb), ref.predict_epsilon(x_t, t, emb), atol=1e-4)


def test_fp16_weight_variant_files_are_read(sd_folders, tmp_path):
    """``prior.variant=fp16`` reads ``*.fp16.safetensors`` (what the hub ships as half-precision weights)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(sd_folders["epsilon"]), dtype=torch.float16)
    pipe.save_pretrained(str(tmp_path / "fp16"), variant="fp16")
    assert list((tmp_path / "fp16" / "unet").glob("*.fp16.safetensors"))
    prior = make_prior(tmp_path / "fp16", tmp_path, variant="fp16", dtype="bf16")
    assert next(prior.unet.parameters()).dtype == torch.bfloat16
    with pytest.raises(DreamcoreError, match="could not load its 'unet'"):
        make_prior(sd_folders["epsilon"], tmp_path, variant="fp16")  # that folder has no fp16 files


def test_vae_tiling_encodes_large_renders_tile_by_tile_with_gradient(sd_folders, tmp_path):
    prior = make_prior(sd_folders["epsilon"], tmp_path, vae_tiling=True, resolution=32)  # tiles of 16 px
    calls = []
    tiled = prior.vae._tiled_encode
    prior.vae._tiled_encode = lambda x, *a, **k: calls.append(x.shape) or tiled(x, *a, **k)
    r = render(size=32, requires_grad=True)
    z = prior.to_model_space(r.rgb)
    assert calls and z.shape == (2, 4, 16, 16) and torch.isfinite(z).all()
    z.square().mean().backward()
    assert r.rgb.grad.abs().sum() > 0


def test_cpu_offload_returns_frozen_parts_to_the_cpu_and_keeps_trainable_ones_on_the_device(sd_folders, tmp_path):
    class Spy(torch.nn.Linear):  # records where it is sent
        def __init__(self, trainable):
            super().__init__(2, 2)
            self.requires_grad_(trainable)
            self.moves = []

        def to(self, *args, **kwargs):
            self.moves.append(str(args[0]))
            return self

    prior = make_prior(sd_folders["epsilon"], tmp_path, cpu_offload=True)
    prior.device = torch.device("cuda")  # where parts would visit (nothing is really moved by the spies)
    frozen, trainable = Spy(False), Spy(True)
    for module in (frozen, trainable):
        with prior.on_device(module):
            pass
    assert frozen.moves == ["cuda", "cpu"] and trainable.moves == ["cuda"]


def test_the_readme_recipe_configs_load_with_their_defaults():
    from dreamcore.config import load_config
    from dreamcore.registry import lookup

    sd = load_config("configs/dreamfusion-sd.yaml", [])
    assert sd.prior.name == "stable-diffusion" and sd.prior.model == "stabilityai/stable-diffusion-2-1-base"
    assert sd.system.rays_per_view == 0 and sd.guidance.guidance_scale(0) == 101.0 and sd.camera.resolution == 64
    fl = load_config("configs/dreamfusion-if.yaml", [])
    assert fl.prior.name == "deepfloyd-if" and fl.prior.model == "DeepFloyd/IF-I-XL-v1.0"
    assert fl.guidance.guidance_scale(0) == 21.0
    assert lookup("prior", "sdxl").Config().model == "stabilityai/stable-diffusion-xl-base-1.0"


def test_latent_nerf_trains_in_latent_space_and_exports_rgb(sd_folders, tmp_path):
    """configs/latent-nerf.yaml: a 4-channel NeRF is the latents (no VAE per step); previews and the GLB texture
    go through the decoder-fitted latent → RGB map."""
    run = tmp_path / "latent"
    assert main(["generate", "a hamburger", "--config", "configs/latent-nerf.yaml", *SD_RUN, "export.formats=[glb]",
                 "export.resolution=32", "export.texture_size=64", "run.val_every=3",
                 f"prior.model={sd_folders['epsilon']}", f"prior.cache_dir={tmp_path / 'cache'}",
                 f"run.dir={run}"]) == 0
    from PIL import Image

    from dreamcore.runner.init import load_run_system

    val = Image.open(next((run / "val").glob("*.png")))
    assert val.mode == "RGB"
    assert (run / "model.glb").stat().st_size > 0
    system = load_run_system(run)
    assert system.representation.color_channels == 4 and system.prior.vae is None  # trained without the VAE
    from dreamcore.cameras import orbit_cameras

    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), torch.full((1,), 3.0), torch.full((1,), 40.0))
    shown = system.render_views(cams, 8, 8, torch.ones(1, 3))
    assert shown.rgb.shape == (1, 8, 8, 3) and bool(((shown.rgb >= 0) & (shown.rgb <= 1)).all())


def test_latents_to_rgb_is_the_decoder_fit_and_mismatched_channels_fail_at_start(sd_folders, tmp_path):
    prior = make_prior(sd_folders["epsilon"], tmp_path, latent_mode=True)
    g = torch.Generator().manual_seed(3)
    values = torch.rand(200, 4, generator=g)
    rgb = prior.latents_to_rgb(values)
    # an affine fit to the decoder's colours of constant latent tiles: deterministic, and closer to the decoder's
    # own colours of the values than the best constant colour
    assert rgb.shape == (200, 3) and torch.allclose(rgb, prior.latents_to_rgb(values), atol=1e-6)
    vae = prior._display_vae
    z = values[:16] * 2 - 1
    with torch.no_grad():
        tiles = (z / vae.config.scaling_factor)[:, :, None, None].expand(-1, -1, 8, 8)
        truth = ((vae.decode(tiles).sample + 1) / 2).clamp(0, 1).mean((2, 3))
    mean_guess = truth.mean(0, keepdim=True).expand_as(truth)
    assert (rgb[:16] - truth).pow(2).mean() < (mean_guess - truth).pow(2).mean()  # better than a constant colour
    for extra, message in [(["representation.color_channels=3"], "representation.color_channels=4"),
                           (["background.color=[1,1,1]"], "background.color has 3 values"),
                           (["prior.latent_mode=false"], "needs a latent prior")]:
        assert main(["generate", "a hamburger", "--config", "configs/latent-nerf.yaml", *SD_RUN, *extra,
                     f"prior.model={sd_folders['epsilon']}", f"prior.cache_dir={tmp_path / 'cache'}",
                     f"run.dir={tmp_path / 'bad'}"]) == 2
        assert not (tmp_path / "bad" / "ckpt").exists()


def test_to_image_decodes_latents_through_the_vae_at_the_renders_size(sd_folders, tmp_path):
    """``Prior.to_image`` (SIR's and GCS's target as an image): the VAE's decoding of the unscaled latents, resized
    to the render; the encoder's map and this one differ only by the (random) VAE here."""
    prior = make_prior(sd_folders["epsilon"], tmp_path)
    rgb = render(1, 12).rgb
    z = prior.to_model_space(rgb)
    img = prior.to_image(z, rgb)
    with torch.no_grad():
        want = (prior.vae.decode(z / prior.scaling_factor + prior.shift_factor).sample + 1) / 2
    want = torch.nn.functional.interpolate(want, (12, 12), mode="bilinear", align_corners=False)
    assert img.shape == rgb.shape and torch.allclose(img, want.permute(0, 2, 3, 1), atol=1e-5)
    assert not torch.allclose(img, prior.to_image(z + 0.5, rgb))
