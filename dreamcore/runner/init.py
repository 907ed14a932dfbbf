"""Loading an earlier run as the starting point of a new stage (``init.from_run``).

A stage that refines another (Magic3D's NeRF → DMTet, NeRF → Gaussians) asks for the earlier run's *system*,
restored from its last checkpoint and frozen, and converts what it needs from it: ``system.density(points)``
for geometry, ``system.surface_color(points, normals)`` for colour. The earlier run's own config rebuilds it,
so any registered representation can be a source.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamcore import registry
from dreamcore.config import load_config
from dreamcore.errors import DreamcoreError
from dreamcore.runner import checkpoint
from dreamcore.runner.rundir import RunDir
from dreamcore.system import System


def build_system(cfg) -> System:
    """The system of ``cfg`` (``system.name``), checked against the contract the runner depends on."""
    system = registry.build("system", cfg.system, full=cfg)
    if not isinstance(system, System):
        raise DreamcoreError(f"system '{cfg.system.name}' ({type(system).__module__}.{type(system).__name__}) does "
                             "not subclass dreamcore.system.System, the contract the runner calls")
    return system


def load_run_system(run_dir: str | Path, device: torch.device | str = "cpu") -> System:
    """The system of run folder ``run_dir`` with its last checkpoint loaded, in eval mode, without gradients."""
    run = RunDir(Path(run_dir))
    if not (run.path / "config.yaml").is_file():
        raise DreamcoreError(f"init.from_run={run_dir}: not a dreamcore run folder (no config.yaml)")
    if not run.has_checkpoint():
        raise DreamcoreError(f"init.from_run={run_dir}: the run has no checkpoint yet (ckpt/last.safetensors)")
    cfg = load_config(run.path / "config.yaml", [])
    system = build_system(cfg)
    reattach_source(system, cfg, device)
    modules = system.trainable_modules()
    checkpoint.load_checkpoint(run.ckpt_dir, modules, None, None)
    for mod in modules.values():
        mod.to(device).eval().requires_grad_(False)
    return system


def reattach_source(system: System, cfg, device: torch.device | str = "cpu") -> None:
    """Hand a restored run whose system keeps its source (:meth:`System.keeps_source`, an edit) its
    ``init.from_run`` system again, before its checkpoint is loaded; other systems need nothing."""
    if not system.keeps_source():
        return
    if not cfg.init.from_run:
        raise DreamcoreError(f"system '{cfg.system.name}' keeps the run it started from, but this run's config "
                             "names none (init.from_run is empty)")
    system.attach_source(load_run_system(cfg.init.from_run, device))
