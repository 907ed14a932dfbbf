"""Tiny random-weight diffusers pipelines saved to a folder, for testing the real loading code offline.

Everything is made here: a character-level CLIP BPE tokenizer (and a T5 unigram one) from a small vocabulary,
a 2-layer text encoder, a 2-block UNet, a 2-block VAE and a scheduler, saved with the pipeline's own
``save_pretrained`` so the folder has the layout of a downloaded model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = list(string.ascii_lowercase + string.digits + ",.!'-")
MAX_TOKENS = 32


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
    for c in CHARS:
        vocab[c + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("e", "r</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in CHARS] + [("\u2581" + c, -2.5) for c in CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def clip_text_encoder(vocab_size: int, hidden: int = 16, projection: int = 0, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def unet(in_channels=4, out_channels=4, cross_dim=16, seed=0, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=out_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_dim, attention_head_dim=2,
        norm_num_groups=4, **extra).eval()


def vae(seed=0, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=16, **extra).eval()


def sd_scheduler(prediction_type="epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def save_stable_diffusion(folder: Path, prediction_type: str = "epsilon") -> Path:
    """A tiny SD pipeline (native resolution 16 px = latents 8 × 8, vae scale factor 2) saved to ``folder``."""
    from diffusers import StableDiffusionPipeline

    tok = clip_tokenizer()
    pipe = StableDiffusionPipeline(vae=vae(), text_encoder=clip_text_encoder(len(tok)), tokenizer=tok, unet=unet(),
                                   scheduler=sd_scheduler(prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return Path(folder)


def save_sdxl(folder: Path) -> Path:
    """A tiny SDXL pipeline: two CLIP encoders (widths 16 + 16 = cross-attention 32, pooled projection 16),
    a text_time UNet (6 time ids × 8 + 16 = 64 added-embedding inputs), VAE, scheduler."""
    from diffusers import StableDiffusionXLPipeline

    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    u = unet(cross_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
             projection_class_embeddings_input_dim=6 * 8 + 16, transformer_layers_per_block=1)
    pipe = StableDiffusionXLPipeline(vae=vae(), text_encoder=clip_text_encoder(len(tok), seed=1),
                                     text_encoder_2=clip_text_encoder(len(tok2), projection=16, seed=2),
                                     tokenizer=tok, tokenizer_2=tok2, unet=u, scheduler=sd_scheduler(),
                                     force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(str(folder))
    return Path(folder)


def save_deepfloyd_if(folder: Path) -> Path:
    """A tiny IF stage I: T5 encoder (d_model 16), a pixel UNet with learned variance (6 output channels),
    T5 states projected by ``encoder_hid_proj`` and pooled into the time embedding (``addition_embed_type:
    text``), and IF's scheduler (squared-cosine β, learned_range variance, thresholding)."""
    from diffusers import DDPMScheduler, IFPipeline
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    torch.manual_seed(3)
    enc = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)).eval()
    u = unet(in_channels=3, out_channels=6, cross_dim=16, seed=4, encoder_hid_dim=16, addition_embed_type="text",
             addition_embed_type_num_heads=2, resnet_time_scale_shift="scale_shift")
    u.register_to_config(sample_size=16)
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                          clip_sample=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    pipe = IFPipeline(tokenizer=tok, text_encoder=enc, unet=u, scheduler=sched, safety_checker=None,
                      feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return Path(folder)


CLIP_VISION_WIDTH = 12  # the tiny image encoder's hidden size (ImageDream's CLIP ViT-H/14: 1280)


def multiview_unet(in_channels=4, out_channels=4, context_dim=16, image_size=8, seed=0, image=None):
    """A tiny MVDream-layout multi-view UNet (widths 8/16, attention at both levels, camera MLP). ``image``:
    "imagedream" adds ImageDream's image prompt (4 resampled tokens of a 12-wide CLIP, zero-camera reference
    frame); "frame" only the reference frame, with its own camera (dreamcore's tiny image-conditioned prior)."""
    from dreamcore.priors.mv_unet import MultiViewUNet

    extra = {}
    if image == "imagedream":
        extra = dict(ip_dim=4, ip_embedding_dim=CLIP_VISION_WIDTH, ip_resampler_depth=1, ip_resampler_heads=2,
                     ip_resampler_head_dim=4)
    elif image == "frame":
        extra = dict(reference_frame=True, reference_camera="own")
    torch.manual_seed(seed)
    return MultiViewUNet(image_size=image_size, in_channels=in_channels, out_channels=out_channels, model_channels=8,
                         num_res_blocks=1, attention_resolutions=(1, 2), channel_mult=(1, 2), num_head_channels=4,
                         context_dim=context_dim, camera_dim=16, norm_groups=4, **extra).eval()


def clip_vision(seed=0):
    """A tiny CLIP vision tower (16² images, 8² patches: 5 tokens of width 12) and its preprocessing."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=CLIP_VISION_WIDTH, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=2, image_size=16, patch_size=8, projection_dim=8)
    proc = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return CLIPVisionModel(cfg).eval(), proc


def save_multiview(folder: Path, latent: bool = True, prediction_type: str = "epsilon", image=None) -> Path:
    """A tiny multi-view pipeline in the community MVDream diffusers layout (``model_index.json`` naming the
    ``MVDreamPipeline`` parts; ``unet/`` in LDM parameter names). ``latent``: with a VAE (latents 8², images 16²),
    as the real MVDream; else pixel space (images 8², no VAE), as dreamcore's tiny multi-view prior. ``image``:
    "imagedream" — ImageDream's layout (+ ``image_encoder/``, ``feature_extractor/``, a UNet with an image
    prompt); "frame" — a reference frame only (dreamcore's tiny ``--image-conditioning`` prior)."""
    import json

    folder = Path(folder)
    tok = clip_tokenizer()
    parts = {"unet": multiview_unet(4 if latent else 3, 4 if latent else 3, image=image),
             "text_encoder": clip_text_encoder(len(tok)), "tokenizer": tok, "scheduler": sd_scheduler(prediction_type)}
    if latent:
        parts["vae"] = vae()
    if image == "imagedream":
        parts["image_encoder"], parts["feature_extractor"] = clip_vision()
    for name, part in parts.items():
        part.save_pretrained(str(folder / name))
    with_clip = image == "imagedream"
    index = {"_class_name": "MVDreamPipeline", "_diffusers_version": "0.25.0",
             "unet": ["mv_unet", "MultiViewUNetModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
             "vae": ["diffusers", "AutoencoderKL"] if latent else [None, None],
             "feature_extractor": ["transformers", "CLIPImageProcessor"] if with_clip else [None, None],
             "image_encoder": ["transformers", "CLIPVisionModel"] if with_clip else [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
