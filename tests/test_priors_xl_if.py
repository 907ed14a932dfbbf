"""SDXL and DeepFloyd IF stage I on tiny random-weight pipelines: agreement with the diffusers pipelines' own
step (two text encoders, pooled embeddings and added time ids; T5 states and the learned-variance split),
the zero negative condition, caching, and a short ``dreamcore generate`` with each."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import tiny_diffusers  # noqa: E402
from dreamcore.cli import main  # noqa: E402
from dreamcore.errors import DreamcoreError  # noqa: E402
from dreamcore.guidance import common  # noqa: E402
from dreamcore.views import ViewPromptConfig  # noqa: E402
from dreamcore.priors.deepfloyd import DeepFloydIFPrior  # noqa: E402
from dreamcore.priors.sdxl import SDXLPrior  # noqa: E402
from dreamcore.priors.stable_diffusion import StableDiffusionPrior  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-xl-if")
    return {"sdxl": tiny_diffusers.save_sdxl(root / "sdxl"), "if": tiny_diffusers.save_deepfloyd_if(root / "if")}


def one_step_ddim(pipe):
    """Swap in DDIM, 1 trailing step from t = 999 to the clean image: the output is x̂_0 of the CFG mix."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                               set_alpha_to_one=True, clip_sample=False, thresholding=False)
    pipe.scheduler.register_to_config(variance_type="fixed_small")  # IF: split off the variance before the step
    return pipe


def ours(prior, x_t, emb, omega):
    t = torch.tensor([999])
    with torch.no_grad():
        eps_c, eps_u = common.predict_rows(prior, x_t, t, [emb.cond["default"], emb.uncond])
    return common.predicted_x0(prior.schedule, x_t, common.classifier_free(eps_c, eps_u, omega), t)


def test_sdxl_matches_the_pipeline_step_with_pooled_embeddings_and_time_ids(folders, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    prior = SDXLPrior(SDXLPrior.Config(name="sdxl", model=str(folders["sdxl"]), cache_dir=str(tmp_path / "c")))
    assert prior.resolution == 16 and prior.pooled_dim == 16
    assert prior.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]]
    pipe = one_step_ddim(StableDiffusionXLPipeline.from_pretrained(str(folders["sdxl"])))
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for negative in ["", "soggy"]:  # empty: the zero condition (force_zeros_for_empty_prompt)
        emb = prior.encode_prompt("a red hamburger", negative)
        assert emb.cond["default"].shape == (1, tiny_diffusers.MAX_TOKENS + 1, 32)  # + the pooled row
        expected = pipe(prompt="a red hamburger", negative_prompt=negative or None, latents=x_t.clone(),
                        num_inference_steps=1, guidance_scale=5.0, height=16, width=16, output_type="latent").images
        assert torch.allclose(ours(prior, x_t, emb, 5.0), expected, atol=1e-4)
    assert torch.count_nonzero(prior.encode_prompt("a chair").uncond) == 0
    pe, ne, pp, npool = pipe.encode_prompt("a red hamburger", negative_prompt="soggy", do_classifier_free_guidance=True)
    emb = prior.encode_prompt("a red hamburger", "soggy")
    assert torch.allclose(emb.cond["default"][:, :-1], pe, atol=1e-6)
    assert torch.allclose(emb.cond["default"][:, -1, :16], pp, atol=1e-6)
    assert torch.allclose(emb.uncond[:, -1, :16], npool, atol=1e-6)
    # the pooled row interpolates with the rest (view-dependent prompts stay one tensor per condition)
    views = prior.encode_prompt("a red hamburger", "", ViewPromptConfig())
    assert set(views.cond) == {"default", "front", "side", "back", "overhead"}


def test_sdxl_needs_an_sdxl_folder(folders, tmp_path):
    sd = tiny_diffusers.save_stable_diffusion(tmp_path / "sd")
    with pytest.raises(DreamcoreError, match="tokenizer_2"):  # SD folders have one tokenizer
        SDXLPrior(SDXLPrior.Config(name="sdxl", model=str(sd), cache_dir=str(tmp_path / "c")))
    mixed = tmp_path / "mixed"  # SDXL's text side, SD's UNet
    mixed.mkdir()
    for sub in ("scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae"):
        (mixed / sub).symlink_to(folders["sdxl"] / sub)
    (mixed / "unet").symlink_to(sd / "unet")
    with pytest.raises(DreamcoreError, match="not an SDXL UNet.*prior.name=stable-diffusion"):
        SDXLPrior(SDXLPrior.Config(name="sdxl", model=str(mixed), cache_dir=str(tmp_path / "c")))
    assert StableDiffusionPrior(StableDiffusionPrior.Config(name="stable-diffusion", model=str(sd),
                                                            cache_dir=str(tmp_path / "c"))).channels == 4


def test_deepfloyd_if_matches_the_pipeline_step_and_splits_the_learned_variance(folders, tmp_path):
    from diffusers import IFPipeline

    prior = DeepFloydIFPrior(DeepFloydIFPrior.Config(name="deepfloyd-if", model=str(folders["if"]),
                                                     cache_dir=str(tmp_path / "c")))
    assert prior.resolution == 16 and prior.channels == 3 and prior.max_length == 77
    assert prior.schedule.prediction_type == "epsilon"
    pipe = one_step_ddim(IFPipeline.from_pretrained(str(folders["if"])))
    assert torch.allclose(pipe.scheduler.alphas_cumprod, prior.schedule.alphas_cumprod, atol=1e-6)
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    emb = prior.encode_prompt("A Red Hamburger", "soggy")
    assert emb.cond["default"].shape == (1, 77, 16)
    # IFPipeline draws its own start noise: give it ours through prepare_intermediate_images
    pipe.prepare_intermediate_images = lambda *a, **k: x_t.clone()
    expected = pipe(prompt="A Red Hamburger", negative_prompt="soggy", num_inference_steps=1, guidance_scale=7.0,
                    height=16, width=16, output_type="pt", clean_caption=False).images
    assert torch.allclose(ours(prior, x_t, emb, 7.0), expected, atol=1e-4)
    with torch.no_grad():
        full = prior.unet(x_t, torch.tensor([500]), encoder_hidden_states=emb.cond["default"]).sample
        eps = prior.predict_noise(x_t, torch.tensor([500]), emb.cond["default"])
    assert full.shape[1] == 6 and torch.equal(eps, full[:, :3])
    r = torch.rand(2, 24, 24, 3, requires_grad=True)
    x = prior.to_model_space(r)
    assert x.shape == (2, 3, 16, 16)
    x.sum().backward()
    assert r.grad.abs().sum() > 0


RUN = ["run.steps=2", "run.checkpoint_every=2", "run.val_every=0", "run.progress=false", "run.val_resolution=16",
       "camera.resolution=16", "representation.n_levels=4", "representation.log2_table_size=12",
       "representation.max_resolution=64", "representation.occupancy_resolution=16", "export.formats=[]"]


@pytest.mark.parametrize("name", ["sdxl", "deepfloyd-if"])
def test_generate_runs_with_each_prior(folders, tmp_path, name):
    run = tmp_path / name
    folder = folders["sdxl" if name == "sdxl" else "if"]
    config = "configs/dreamfusion-if.yaml" if name == "deepfloyd-if" else "configs/dreamfusion-sd.yaml"
    assert main(["generate", "a hamburger", "--config", config, *RUN, f"prior.name={name}",
                 f"prior.model={folder}", f"prior.cache_dir={tmp_path / 'c'}", f"run.dir={run}"]) == 0
    assert " sds=" in (run / "log.txt").read_text()
    saved = (run / "config.yaml").read_text()
    assert f"name: {name}" in saved and ("guidance_scale: 21.0" in saved) == (name == "deepfloyd-if")
