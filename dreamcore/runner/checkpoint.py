"""Atomic checkpoints: one safetensors file holding model tensors, optimizer state and the RNG state, with the
remaining (JSON) state in its metadata. Written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint; ``ckpt/last.json`` mirrors the metadata for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamcore.errors import DreamcoreError
from dreamcore.files import atomic_write_bytes

CKPT_NAME = "last.safetensors"


def _optimizer_prefix(name: str) -> str:
    return "optim." if name == "" else f"optim@{name}."


def save_checkpoint(ckpt_dir: Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, extra: dict[str, Any] | None = None,
                    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None) -> Path:
    """Write ``ckpt_dir/last.safetensors`` for the state after ``step`` completed steps. ``extra_optimizers``
    (e.g. VSD's score-model optimizer) are stored beside the main one under their names."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for k, v in mod.state_dict().items():
            tensors[f"model.{name}.{k}"] = v.detach().cpu().contiguous()
    meta: dict[str, Any] = {"step": step, "format": 1}
    for oname, opt in {"": optimizer, **(extra_optimizers or {})}.items():
        state = opt.state_dict()
        prefix = _optimizer_prefix(oname)
        for pid, st in state["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{prefix}{pid}.{k}"] = v.detach().cpu().contiguous().clone()
        meta["param_groups" if oname == "" else f"param_groups@{oname}"] = [dict(g) for g in state["param_groups"]]
    tensors["rng.torch"] = generator.get_state().clone()
    if hasattr(generator, "host_state"):  # the run's host-side random.Random (dreamcore.rng.RunGenerator)
        meta["rng.host"] = generator.host_state()
    meta.update(extra or {})
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = save(tensors, metadata={"dreamcore": json.dumps(meta)})
    atomic_write_bytes(ckpt_dir / CKPT_NAME, data)
    atomic_write_bytes(ckpt_dir / "last.json", json.dumps(meta, indent=1).encode())
    return ckpt_dir / CKPT_NAME


def load_checkpoint(ckpt_dir: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                    generator: torch.Generator | None,
                    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns its metadata (``step`` etc.)."""
    from safetensors import safe_open

    path = ckpt_dir / CKPT_NAME
    if not path.is_file():
        raise DreamcoreError(f"no checkpoint in {ckpt_dir} (expected {CKPT_NAME}); nothing to resume")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["dreamcore"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise DreamcoreError(f"checkpoint {path} is unreadable: {e}") from None
    for name, mod in modules.items():
        prefix = f"model.{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = mod.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise DreamcoreError(f"checkpoint {path} does not match the config's {name}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    named = {"": optimizer} if optimizer is not None else {}
    for oname, opt in {**named, **(extra_optimizers or {})}.items():
        groups_key = "param_groups" if oname == "" else f"param_groups@{oname}"
        if groups_key not in meta:
            raise DreamcoreError(f"checkpoint {path} has no state for optimizer '{oname or 'main'}'")
        prefix = _optimizer_prefix(oname)
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith(prefix):
                pid, key = k[len(prefix):].split(".", 1)
                state.setdefault(int(pid), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": meta[groups_key]})
    if generator is not None:
        generator.set_state(tensors["rng.torch"])
        if "rng.host" in meta and hasattr(generator, "set_host_state"):
            generator.set_host_state(meta["rng.host"])
    return meta
