"""A training step reads nothing back to the host (on a GPU each read stalls the queue until the device is done).

The counter (:mod:`dreamcore.runner.host_sync`) wraps ``Tensor.item``, ``float``/``int``/``bool``, ``.cpu()``,
``.tolist()`` and ``.numpy()`` while steps that are not logging, validation or checkpoint steps run, for every
system on the learned tiny prior (a diffusers UNet, as on a GPU), and fails on any read made by dreamcore's code
outside the torch reference implementations whose CUDA counterparts are the GPU path:"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamcore.config import config_path, load_config
from dreamcore.runner.host_sync import count_host_reads
from dreamcore.runner.rundir import RunDir
from dreamcore.runner.trainer import Trainer

# reference implementations that size packed samples or candidate lists on the host; on CUDA the volume renderer
# runs through nerfacc (renderer.backend=auto) and the mesh rasterizer through nvdiffrast
REFERENCE_PATHS = {
    "dreamcore/renderers/volume.py": "torch volume renderer (packed samples); CUDA: renderer.backend=nerfacc",
    "dreamcore/meshes/raster.py": "torch rasterizer (candidate lists); CUDA: renderer.backend=nvdiffrast",
}

LEARNED = ["prior.name=pixel-diffusion", "prior.model=assets/tiny-prior", "camera.resolution=32"]
QUIET = ["run.steps=40", "run.log_every=1000", "run.val_every=0", "run.checkpoint_every=0", "run.progress=false",
         "camera.batch_size=2", "export.formats=[]"]
NERF = ["representation.n_levels=4", "representation.log2_table_size=12", "representation.max_resolution=64",
        "representation.occupancy_resolution=16"]

SYSTEMS = {
    "dreamfusion / NeRF / SDS": ("text-nerf", NERF),
    "dreamfusion / NeRF / VSD + LoRA": ("text-nerf", NERF + ["guidance.name=vsd", "guidance.score_steps=1"]),
    "gaussian / SDS": ("text-gaussians", ["representation.init_points=500"]),
    "mesh / DMTet / SDS": ("reference-dmtet", ["prior.name=pixel-diffusion", "prior.model=assets/tiny-prior",
                                              "camera.resolution=32", "prompt=a toy robot",
                                              "representation.resolution=16"]),
}


def steady_reads(tmp_path, config: str, extra: list[str], steps=(3, 5), also=()) -> dict[str, int]:
    cfg = load_config(config_path(config), QUIET + LEARNED + extra + [f"run.dir={tmp_path}",
                                                                      f"prior.cache_dir={tmp_path / 'cache'}"])
    trainer = Trainer(cfg, RunDir(tmp_path))
    for s in range(steps[0]):  # warm-up: first-step set-up (prompt encodings, occupancy's first update) may read
        trainer.train_step(s)
    with count_host_reads(also) as reads:
        for s in range(*steps):
            trainer.train_step(s)
            trainer.step = s + 1
    return {site: n for site, n in reads.items() if site.split(":")[0] not in REFERENCE_PATHS}


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_a_training_step_reads_nothing_back(tmp_path, monkeypatch, system):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, extra = SYSTEMS[system]
    assert steady_reads(tmp_path, config, extra) == {}


def test_the_counter_sees_a_read_in_the_step(tmp_path, monkeypatch):
    """The check above would fail if a loss were read every step (as the trainer once did)."""
    import dreamcore.systems.dreamfusion as dreamfusion

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = dreamfusion.DreamFusionSystem.training_step

    def reading(self, *a, **k):
        losses = real(self, *a, **k)
        float(losses["sds"])
        return losses

    monkeypatch.setattr(dreamfusion.DreamFusionSystem, "training_step", reading)
    reads = steady_reads(tmp_path, "text-nerf", NERF, also=(str(Path(__file__).parent),))
    assert reads == {"tests/test_host_sync.py:reading": 2}


# packed rendering sizes its samples on the host on CUDA too (nerfacc does the same inside its own code)
CUDA_STRUCTURAL = {**REFERENCE_PATHS,
                   "dreamcore/renderers/nerfacc_backend.py": "packed samples (boolean selection of live samples)"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("system", list(SYSTEMS))
def test_a_cuda_step_synchronises_only_where_packed_rendering_must(tmp_path, monkeypatch, system):
    """torch.cuda.set_sync_debug_mode: every synchronising CUDA call of two steady steps, by the source line that
    made it; dreamcore's own code may make them only in the packed-rendering paths above."""
    import warnings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, extra = SYSTEMS[system]
    cfg = load_config(config_path(config), QUIET + LEARNED + extra + [f"run.dir={tmp_path}", "run.device=cuda",
                                                                      f"prior.cache_dir={tmp_path / 'cache'}"])
    trainer = Trainer(cfg, RunDir(tmp_path))
    for s in range(3):
        trainer.train_step(s)
    torch.cuda.synchronize()
    root = str(Path(__file__).resolve().parents[1]) + "/"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for s in range(3, 5):
                trainer.train_step(s)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    trainer.check_finite()
    ours = sorted({f"{w.filename[len(root):]}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
                   and w.filename.startswith(root) and "/.venv/" not in w.filename})
    assert [s for s in ours if s.split(":")[0] not in CUDA_STRUCTURAL] == [], ours
