"""Checkpoints: one safetensors file holding model tensors, optimizer state and the RNG state, with the
remaining (JSON) state in its metadata; ``ckpt/last.json`` mirrors that metadata and adds the file's SHA-256.

Crash safety: the new file is written to a temporary name and flushed; the previous checkpoint pair becomes
``prev.safetensors``/``prev.json``; then the new pair is renamed into place. A checkpoint is *good* when its
file's SHA-256 is the one a JSON beside it records, so whatever moment a process is killed at (or a disk fills
up, or a file is truncated later), :func:`find_good` finds a good checkpoint at most one interval old, and
:func:`load_checkpoint` says so when it had to fall back."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamcore.errors import DreamcoreError, storage_problem
from dreamcore.files import atomic_write_bytes, sha256_file, write_durably
from dreamcore.rng import RunGenerator

CKPT_NAME = "last.safetensors"
PREV_NAME = "prev.safetensors"


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
    if isinstance(generator, RunGenerator):  # the run's host-side random.Random beside the device generator
        meta["rng.host"] = generator.host_state()
    meta.update(extra or {})
    data = save(tensors, metadata={"dreamcore": json.dumps(meta)})
    record = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    last, tmp = ckpt_dir / CKPT_NAME, ckpt_dir / f".{CKPT_NAME}.tmp"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_durably(tmp, data)  # the whole new file first: a full disk fails here, nothing replaced yet
        if _is_good(last, ckpt_dir / "last.json"):  # keep the current good pair as the fallback
            os.replace(ckpt_dir / "last.json", ckpt_dir / "prev.json")
            os.replace(last, ckpt_dir / PREV_NAME)
        os.replace(tmp, last)
        st = last.stat()
        _DIGESTS[(str(last.resolve()), st.st_size, st.st_mtime_ns)] = record["sha256"]
        atomic_write_bytes(ckpt_dir / "last.json", json.dumps(record, indent=1).encode())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        good = find_good(ckpt_dir)
        kept = (f"the checkpoint of step {good[1]['step']} ({good[0].name}) is intact" if good
                else "no earlier checkpoint exists")
        why = storage_problem(e) or e.strerror or str(e)
        raise DreamcoreError(f"could not write the checkpoint of step {step} in {ckpt_dir}: {why}; {kept}. "
                             "Free space (or fix the folder) and resume.") from None
    return last


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → SHA-256 of files this process wrote or read


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "sha256" in rec else None


def _matches(path: Path, rec: dict[str, Any]) -> bool:
    """Whether ``path`` is the file record ``rec`` describes (size first: a truncated file costs no hashing)."""
    return path.is_file() and path.stat().st_size == rec.get("bytes") and _sha256(path) == rec["sha256"]


def _is_good(path: Path, record_path: Path) -> bool:
    rec = _record(record_path)
    return rec is not None and _matches(path, rec)


def find_good(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest good checkpoint (file, its record) in ``ckpt_dir``: a file whose SHA-256 one of the JSON
    records beside it holds (either record matches either file, so every interleaving of a save is covered);
    None when there is none. A checkpoint from before checksums (no ``sha256`` in ``last.json``) is taken as
    good when it is the only one."""
    records = [r for r in (_record(ckpt_dir / "last.json"), _record(ckpt_dir / "prev.json")) if r is not None]
    found = []
    for path in (ckpt_dir / CKPT_NAME, ckpt_dir / PREV_NAME):
        rec = next((r for r in records if _matches(path, r)), None)  # (digests are cached per file)
        if rec is not None:
            found.append((path, rec))
    if found:
        return max(found, key=lambda pr: int(pr[1].get("step", -1)))
    legacy = ckpt_dir / CKPT_NAME
    if legacy.is_file() and not records and not (ckpt_dir / PREV_NAME).exists():
        try:
            return legacy, json.loads((ckpt_dir / "last.json").read_text())
        except (OSError, ValueError):
            return legacy, {}
    return None


def has_checkpoint(ckpt_dir: Path) -> bool:
    """Whether ``ckpt_dir`` holds any checkpoint file (good or not: a resume then says what it found)."""
    return (ckpt_dir / CKPT_NAME).is_file() or (ckpt_dir / PREV_NAME).is_file()


def load_checkpoint(ckpt_dir: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                    generator: torch.Generator | None,
                    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None) -> dict[str, Any]:
    """Restore the newest good checkpoint (:func:`find_good`); returns its metadata (``step`` etc.), with
    ``"recovered"`` set to a sentence for the user when ``last.safetensors`` was damaged and an older one used."""
    from safetensors import safe_open

    if not has_checkpoint(ckpt_dir):
        raise DreamcoreError(f"no checkpoint in {ckpt_dir} (expected {CKPT_NAME}); nothing to resume")
    good = find_good(ckpt_dir)
    if good is None:
        raise DreamcoreError(f"every checkpoint in {ckpt_dir} is damaged (its SHA-256 differs from the one recorded "
                             "in last.json/prev.json, or the file is truncated); the run cannot be resumed")
    path = good[0]
    recovered = ""
    if path.name != CKPT_NAME:
        recovered = (f"{ckpt_dir / CKPT_NAME} is missing or damaged (truncated, or its SHA-256 is not the one "
                     f"recorded); resuming from the previous checkpoint, step {good[1].get('step')}")
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
        if "rng.host" in meta and isinstance(generator, RunGenerator):
            generator.set_host_state(meta["rng.host"])
    if recovered:
        meta["recovered"] = recovered
    return meta
