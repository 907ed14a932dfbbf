"""Loading diffusers-format model parts (``from_pretrained``) from a local folder or the Hugging Face Hub.

One function, :func:`load_part`, is the only place dreamcore calls ``from_pretrained``. It resolves
``prior.model`` (an existing folder wins over a hub id), honours offline mode (``HF_HUB_OFFLINE=1`` or
``prior.local_files_only``), and turns every way a model can be missing into a :class:`DreamcoreError` that
names the model and says how to get it — raised while the prior is built, before a run writes anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from dreamcore.errors import DreamcoreError
from dreamcore.files import resolve_path

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set to 1/true)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def local_folder(model: str) -> Optional[Path]:
    """The folder ``model`` names, or None when it is a hub id. A path-like name that does not exist is an error
    (a typo in a path must not silently become a download)."""
    if not model.strip():
        raise DreamcoreError("prior.model is empty: give a hub id (prior.model=stabilityai/stable-diffusion-2-1-base) "
                             "or a local diffusers-format folder (prior.model=/path/to/model)")
    p = resolve_path(model)  # as given, else relative to the checkout (``assets/tiny-prior`` from anywhere)
    if p.is_dir():
        return p.resolve()
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") != 1 or os.sep != "/" and os.sep in model
    if looks_like_path:
        raise DreamcoreError(f"prior.model={model!r}: no such folder. Give an existing diffusers-format folder "
                             "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id.")
    return None


def how_to_get(model: str) -> str:
    return (f"Download it once with `huggingface-cli download {model}` (gated models also need "
            f"`huggingface-cli login` and accepting the license on huggingface.co/{model}), then run again "
            "(HF_HUB_OFFLINE=1 works after that), or set prior.model to a local diffusers-format folder.")


def check_available(model: str, revision: str = "", local_files_only: bool = False) -> None:
    """Fail now, naming the model, when ``model`` cannot be loaded later: a folder without ``model_index.json``,
    or (offline) a hub id absent from the local cache. Online, a hub id is left to ``from_pretrained``."""
    folder = local_folder(model)
    if folder is not None:
        if not (folder / "model_index.json").is_file():
            raise DreamcoreError(f"prior.model={model!r}: the folder has no model_index.json; it must be a "
                                 "diffusers-format pipeline folder (saved with pipeline.save_pretrained)")
        return
    if not (local_files_only or offline()):
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "model_index.json", revision=revision or None), str):
        raise DreamcoreError(f"prior.model={model!r} is not in the local cache (offline mode). {how_to_get(model)}")


def model_index(model: str, revision: str = "", local_files_only: bool = False) -> dict:
    """The pipeline's ``model_index.json`` (which parts it has: ``{"vae": ["diffusers", "AutoencoderKL"], ...}``,
    a part of ``[null, null]`` absent), from the folder or the hub (the cache only when offline)."""
    folder = local_folder(model)
    if folder is not None:
        path = folder / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(model, "model_index.json", revision=revision or None,
                                        local_files_only=local_files_only or offline()))
        except Exception as e:  # noqa: BLE001 - every way the hub can fail
            raise DreamcoreError(f"prior.model={model!r}: could not read its model_index.json ({e}). "
                                 f"{how_to_get(model)}") from e
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DreamcoreError(f"prior.model={model!r}: unreadable model_index.json ({e})") from e


def has_part(index: dict, part: str) -> bool:
    """Whether a ``model_index.json`` lists ``part`` with a class (not absent, not ``[null, null]``)."""
    entry = index.get(part)
    return isinstance(entry, (list, tuple)) and any(v is not None for v in entry)


def load_part(cls: Any, model: str, subfolder: str, *, revision: str = "", variant: str = "",
              local_files_only: bool = False, dtype: Optional[torch.dtype] = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(model, subfolder=...)`` with dreamcore's offline handling and error messages.

    ``dtype`` is applied after loading (with ``.to``) so the same call works across diffusers/transformers
    versions; pass ``variant="fp16"`` to read half-precision weight files where a model ships them."""
    folder = local_folder(model)
    if folder is not None and not (folder / subfolder).is_dir():
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise DreamcoreError(f"prior.model={model!r}: the folder has no '{subfolder}/' part (found: {found}); "
                             "it must be a diffusers-format pipeline folder (e.g. saved with "
                             "pipeline.save_pretrained or downloaded with huggingface-cli download)")
    opts: dict[str, Any] = dict(subfolder=subfolder, **kwargs)
    if revision:
        opts["revision"] = revision
    if variant:
        opts["variant"] = variant
    if folder is None and (local_files_only or offline()):
        opts["local_files_only"] = True
    try:
        part = cls.from_pretrained(str(folder) if folder is not None else model, **opts)
    except DreamcoreError:
        raise
    except (OSError, ValueError, EnvironmentError) as e:  # missing files, no network, gated repo, bad variant
        where = "the local folder" if folder is not None else (
            "the local cache (offline mode)" if "local_files_only" in opts else "the hub or the local cache")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"prior.model={model!r}: could not load its '{subfolder}' from {where} ({first})."
        raise DreamcoreError(msg if folder is not None else f"{msg} {how_to_get(model)}") from e
    if dtype is not None and hasattr(part, "to"):
        part = part.to(dtype)
    return part


def identity(model: str, revision: str, parts: tuple[str, ...]) -> str:
    """A string that changes when the named parts of the model change: the hub id and revision, or for a local
    folder its path and the size/mtime of the parts' files (a key for caches of derived data)."""
    folder = local_folder(model)
    if folder is None:
        return json.dumps({"hub": model, "revision": revision or "main"})
    stamp = []
    for part in parts:
        for f in sorted((folder / part).glob("*")):
            if f.is_file():
                st = f.stat()
                stamp.append((f"{part}/{f.name}", st.st_size, int(st.st_mtime_ns)))
    digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    return json.dumps({"folder": str(folder), "files": digest})
