"""What every diffusers-backed prior shares: loading, dtype/device, memory options, cached prompt embeddings.

Subclasses (Stable Diffusion, SDXL, DeepFloyd IF) load their UNet (and VAE) in :meth:`load_models`, say how a
text becomes a condition tensor in :meth:`encode_text`, and implement ``to_model_space`` / ``predict_noise``.
The noise schedule comes from the model's own scheduler config: ᾱ_t = Π_s (1 − β_s) over its β schedule
(scaled-linear for SD/SDXL, squared-cosine for IF) and its ``prediction_type`` (ε or v, Salimans & Ho 2022).

Memory/speed options (all in ``prior.*``): ``dtype`` (auto = fp16 on CUDA, fp32 on CPU), ``attention``
(``sdpa``: PyTorch scaled_dot_product_attention, ``default``: plain matmul), ``attention_slicing``,
``vae_slicing``/``vae_tiling``, ``cpu_offload`` (UNet/VAE/text encoder live on the CPU and visit the device only
for their own calls), ``compile`` (``torch.compile`` of the UNet forward), ``channels_last``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from dreamcore.priors import hub
from dreamcore.priors.base import NoiseSchedule, PromptEmbeddings, Prior
from dreamcore.priors.prompt_cache import EmbeddingCache
from dreamcore.views import view_prompts


@dataclass
class DiffusersConfig(ComponentConfig):
    model: str = ""  # hub id or local diffusers-format folder
    revision: str = ""
    variant: str = ""  # e.g. fp16: read the half-precision weight files where the model ships them
    local_files_only: bool = False  # never touch the network (HF_HUB_OFFLINE=1 does the same)
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    device: str = "auto"
    resolution: int = 0  # image size the model sees; 0 = the model's native size
    attention: Literal["sdpa", "default"] = "sdpa"
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: tracing only, no code generation)
    channels_last: bool = False
    cache_dir: str = ""  # prompt-embedding cache; "" = $DREAMCORE_CACHE or ~/.cache/dreamcore
    cache_prompts: bool = True
    free_text_encoder: bool = True  # drop the text encoder(s) once the run's prompts are encoded
    max_length: int = 0  # tokens per prompt; 0 = the tokenizer's limit (77 for CLIP)


def _diffusers():
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DreamcoreError("real diffusion priors need diffusers and transformers: "
                             "pip install 'dreamcore[diffusers]'") from e
    import diffusers

    return diffusers


class DiffusersPrior(Prior):
    """Base of the diffusers priors (see the module docstring)."""

    Config = DiffusersConfig
    text_parts: tuple[str, ...] = ("tokenizer", "text_encoder")  # their change invalidates cached embeddings
    default_max_length = 77

    @classmethod
    def preflight(cls, cfg: DiffusersConfig) -> None:
        _diffusers()
        hub.check_available(cfg.model, cfg.revision, cfg.local_files_only)

    def __init__(self, cfg: DiffusersConfig) -> None:
        super().__init__()
        self.cfg = cfg
        _diffusers()
        self.device = self._pick_device(cfg.device)
        self.dtype = self._pick_dtype(cfg.dtype, self.device)
        hub.local_folder(cfg.model)  # path typos and an empty model fail here
        self.schedule = self._load_schedule()  # the smallest part first: a missing model fails fast
        self.tokenizers = self.load_tokenizers()
        self._text_encoders: Optional[list[nn.Module]] = None
        self.text_encoder_loads = 0
        self.load_models()
        for m in self.children():
            m.requires_grad_(False)
            m.eval()
        self._configure_memory()
        ident = hub.identity(cfg.model, cfg.revision, self.text_parts)
        self.prompt_cache = EmbeddingCache(cfg.cache_dir or None, f"{type(self).__name__}|{ident}|{self.max_length}",
                                           cfg.cache_prompts)

    # -- loading -------------------------------------------------------------------------------------------------
    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DreamcoreError(f"prior.device={name} but CUDA is not available: use prior.device=auto or cpu")
        return dev

    @staticmethod
    def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
        if name == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return hub.DTYPES[name]

    def load(self, cls: Any, subfolder: str, dtype: Optional[torch.dtype] = None, **kw) -> Any:
        """One part through :func:`dreamcore.priors.hub.load_part` with this prior's settings."""
        c = self.cfg
        weights = isinstance(cls, type) and issubclass(cls, nn.Module)  # variants name weight files only
        return hub.load_part(cls, c.model, subfolder, revision=c.revision, variant=c.variant if weights else "",
                             local_files_only=c.local_files_only, dtype=dtype, **kw)

    def _load_schedule(self) -> NoiseSchedule:
        from diffusers import DDPMScheduler

        sched = self.load(DDPMScheduler, "scheduler")  # DDPM reads any scheduler's β config
        kind = sched.config.prediction_type
        if kind not in ("epsilon", "v_prediction", "sample"):
            raise DreamcoreError(f"prior.model={self.cfg.model!r}: unsupported prediction_type {kind!r}")
        self.scheduler_config = dict(sched.config)
        return NoiseSchedule(sched.alphas_cumprod.float().clone(), kind)

    def load_tokenizers(self) -> list:
        from transformers import AutoTokenizer

        return [self.load(AutoTokenizer, "tokenizer")]

    def load_text_encoders(self) -> list[nn.Module]:
        raise NotImplementedError

    def load_models(self) -> None:
        raise NotImplementedError

    def place(self, module: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
        """Move a loaded part to its home: the device, or the CPU under ``cpu_offload``."""
        dtype = dtype or self.dtype
        if any(p.dtype != dtype for p in module.parameters()):
            module = module.to(dtype)
        return module.to("cpu" if self.cfg.cpu_offload else self.device)

    def _configure_memory(self) -> None:
        c = self.cfg
        unet = getattr(self, "unet", None)
        vae = getattr(self, "vae", None)
        if unet is not None:
            self.configure_attention(unet)
            if c.channels_last:
                unet.to(memory_format=torch.channels_last)
        if vae is not None:
            if c.vae_slicing:
                vae.use_slicing = True
            if c.vae_tiling:
                vae.enable_tiling()
            if c.channels_last:
                vae.to(memory_format=torch.channels_last)
        if c.vae_slicing and vae is None:
            raise DreamcoreError(f"prior.vae_slicing: prior '{c.name}' has no VAE")
        # not a registered submodule (the UNet is already one): the callable used for noise prediction
        forward = torch.compile(unet, backend=c.compile_backend) if (c.compile and unet is not None) else unet
        object.__setattr__(self, "_unet_forward", forward)

    def configure_attention(self, unet: nn.Module) -> None:
        """``prior.attention`` and ``prior.attention_slicing`` on a diffusers UNet's attention processors."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0() if self.cfg.attention == "sdpa" else AttnProcessor())
        if self.cfg.attention_slicing:
            unet.set_attention_slice("auto")

    @contextlib.contextmanager
    def on_device(self, module: nn.Module):
        """Under ``cpu_offload``, the module visits the device for the duration of the block. A module with
        trainable parameters (VSD's LoRA adapters on the UNet) stays on the device: its gradients are
        accumulated after the block, onto parameters that must still live where the graph was built."""
        if not self.cfg.cpu_offload:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            if not any(p.requires_grad for p in module.parameters()):
                module.to("cpu")

    # -- prompts -------------------------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        if self.cfg.max_length > 0:
            return self.cfg.max_length
        m = getattr(self.tokenizers[0], "model_max_length", 0) or 0
        return int(m) if 0 < m < 100_000 else self.default_max_length

    def tokenize(self, tokenizer, text: str) -> dict[str, Tensor]:
        return tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True,
                         return_tensors="pt")

    def warn_truncation(self, text: str) -> None:
        """Prompts longer than the token limit lose their tail (as in the pipelines): say which words."""
        tok = self.tokenizers[0]
        ids = tok(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        keep = self.max_length - tok.num_special_tokens_to_add()
        if len(ids) > keep:
            lost = tok.decode(ids[keep:], skip_special_tokens=True).strip()
            warnings.warn(f"prompt is longer than the text encoder's {self.max_length} tokens; this part is "
                          f"ignored: {lost!r}", UserWarning, stacklevel=3)

    @property
    def text_encoders(self) -> list[nn.Module]:
        if self._text_encoders is None:
            self._text_encoders = [m.requires_grad_(False).eval() for m in self.load_text_encoders()]
            self.text_encoder_loads += 1
        return self._text_encoders

    def free_text_encoders(self) -> None:
        self._text_encoders = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode_text(self, text: str) -> Tensor:
        """The condition tensor [1, …] of one text (uncached; subclasses)."""
        raise NotImplementedError

    def embed(self, text: str) -> Tensor:
        """The condition of ``text`` [1, …] float32 on the device, from the disk cache when present."""
        self.warn_truncation(text)
        hit = self.prompt_cache.get(text)
        if hit is not None:
            return hit["embedding"].to(self.device)
        with torch.no_grad():
            emb = self.encode_text(text).float()
        self.prompt_cache.put(text, {"embedding": emb})
        return emb.to(self.device)

    def uncond_embedding(self, negative_prompt: str) -> Tensor:
        return self.embed(negative_prompt)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", views=None) -> PromptEmbeddings:
        """cond per view label (the prompt and, with ``views``, its "…, front view" variants), uncond (the
        negative prompt, empty by default) and null (the empty prompt)."""
        if not prompt.strip():
            raise DreamcoreError('the prompt is empty: give one, e.g. dreamcore generate "a hamburger" ...')
        texts = {"default": prompt}
        if views is not None and getattr(views, "enabled", True) and self.view_dependent:
            texts = view_prompts(prompt, views)
        cond = {k: self.embed(v) for k, v in texts.items()}
        uncond = self.uncond_embedding(negative_prompt)
        null = uncond if not negative_prompt else self.uncond_embedding("")
        if self.cfg.free_text_encoder:
            self.free_text_encoders()
        return PromptEmbeddings(cond=cond, uncond=uncond, prompt=prompt, null=null)

    # -- noise prediction helpers --------------------------------------------------------------------------------
    def unet_input(self, x_t: Tensor) -> Tensor:
        x = x_t.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    @staticmethod
    def whole_images_only(pixel_index: Optional[Tensor], name: str) -> None:
        if pixel_index is not None:
            raise DreamcoreError(f"prior '{name}' denoises whole images, not pixel subsets: set system.rays_per_view=0")
