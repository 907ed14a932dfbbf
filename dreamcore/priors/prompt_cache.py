"""On-disk cache of text-encoder outputs, keyed by model identity, encoder settings and prompt text.

Text encoders are large (T5-XXL is ~10 GB in fp16) and a run needs only a handful of prompts (the prompt, its
view-dependent variants, the negative and the empty prompt). Each text's embedding is stored once as
``<root>/<sha[:2]>/<sha>.safetensors`` (float32), sha = SHA-256 of (model identity, encoder kind, text); a
second run with the same prompts never loads the text encoder. The root is ``prior.cache_dir``, else
``$DREAMCORE_CACHE/prompt-embeddings``, else ``~/.cache/dreamcore/prompt-embeddings``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, save_file
from torch import Tensor


def default_root() -> Path:
    base = os.environ.get("DREAMCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dreamcore")
    return Path(base) / "prompt-embeddings"


class EmbeddingCache:
    """get/put of named tensors per text for one (model, encoder settings) ``namespace``."""

    def __init__(self, root: Optional[str | Path], namespace: str, enabled: bool = True) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        self.namespace = namespace
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path(self, text: str) -> Path:
        sha = hashlib.sha256(json.dumps([self.namespace, text]).encode()).hexdigest()
        return self.root / sha[:2] / f"{sha}.safetensors"

    def get(self, text: str) -> Optional[dict[str, Tensor]]:
        if not self.enabled:
            return None
        p = self.path(text)
        if not p.is_file():
            self.misses += 1
            return None
        try:
            out = load_file(str(p))
        except Exception:  # a truncated file from a killed run: recompute
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, text: str, tensors: dict[str, Tensor]) -> None:
        if not self.enabled:
            return
        p = self.path(text)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"namespace": self.namespace, "text": text[:1000]})
        os.replace(tmp, p)  # atomic: readers never see a partial file
