"""The Python API (dreamcore/api.py), used as the README shows it: generate a run, load it back, render it from a
new camera, export it again elsewhere, list and register components."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import dreamcore
from dreamcore.cameras import turntable_cameras
from dreamcore.errors import DreamcoreError
from dreamcore.guidance.sds import SDSGuidance
from dreamcore.meshes.io import load_mesh

TINY = {"run.steps": 2, "export.resolution": 32, "export.formats": ["glb"], "eval.views": 1, "run.val_views": 1,
        "run.val_resolution": 32, "export.texture_size": 64, "export.isosurface_views": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return dreamcore.generate("a toy robot", config="text-nerf", overrides=TINY,
                              run_dir=tmp_path_factory.mktemp("api") / "robot", progress=False)


def test_generate_returns_the_finished_run(run):
    assert run.metrics["steps"] == 2 and run.files["glb"] == run.path / "model.glb"
    again = dreamcore.load_run(run.path)
    assert again.config.prompt == "a toy robot" and again.metrics == run.metrics
    assert type(again.representation).__name__ == "NeRFField"


def test_render_from_a_new_camera(run):
    loaded = dreamcore.load_run(run.path)
    white = loaded.render(azimuth=30, elevation=20, resolution=48)
    black = loaded.render(azimuth=30, elevation=20, resolution=48, background=(0.0, 0.0, 0.0))
    assert white.rgb.shape == (48, 48, 3) and white.alpha.shape == (48, 48)
    assert 0.0 <= white.rgb.min() and white.rgb.max() <= 1.0
    assert white.alpha[24, 24] > 0.5 > white.alpha[0, 0]  # the object in the middle, empty corners
    assert np.allclose(white.rgb[0, 0], 1.0, atol=0.05) and np.allclose(black.rgb[0, 0], 0.0, atol=0.05)
    views = loaded.render(turntable_cameras(3, 15.0, 3.2, 40.0), resolution=32)
    assert len(views) == 3 and all(v.rgb.shape == (32, 32, 3) for v in views)
    with pytest.raises(DreamcoreError, match="resolution"):
        loaded.render(resolution=3)


def test_render_saves_a_png(run, tmp_path):
    path = dreamcore.load_run(run.path).render(resolution=32).save(tmp_path / "view.png")
    from PIL import Image

    assert Image.open(path).size == (32, 32)


def test_export_elsewhere_with_other_settings(run, tmp_path):
    before = (run.path / "model.glb").stat().st_mtime_ns
    files = dreamcore.load_run(run.path).export(tmp_path / "again", formats=["glb", "obj"], texture_size=128)
    assert files["glb"].parent == tmp_path / "again" and files["obj"].is_file()
    assert len(load_mesh(files["glb"]).faces) > 0
    assert (run.path / "model.glb").stat().st_mtime_ns == before  # the run folder is left as it was
    with pytest.raises(DreamcoreError, match="unknown export setting"):
        dreamcore.load_run(run.path).export(tmp_path / "x", texture_sise=128)
    with pytest.raises(DreamcoreError, match="another folder"):
        dreamcore.load_run(run.path).export(run.path)


def test_load_run_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(DreamcoreError, match="not a dreamcore run folder"):
        dreamcore.load_run(tmp_path)


def test_list_and_register_components(tmp_path):
    components = dreamcore.list_components()
    assert {"sds", "vsd"} <= set(components["guidance"]) and "nerf" in components["representation"]

    @dreamcore.register("guidance", "api-test-sds")
    class HalfSDS(SDSGuidance):
        """SDS at half weight: a part of one's own, chosen by name in a config."""

        @dataclass
        class Config(SDSGuidance.Config):
            name: str = "api-test-sds"

        def gradient(self, *args, **kwargs):
            return 0.5 * super().gradient(*args, **kwargs)

    assert "api-test-sds" in dreamcore.list_components()["guidance"]
    run = dreamcore.generate("a toy robot", config="text-nerf", overrides={**TINY, "guidance.name": "api-test-sds"},
                             run_dir=tmp_path / "own", progress=False)
    assert run.config.guidance.name == "api-test-sds" and run.files["glb"].is_file()


def test_the_package_exports_the_api_lazily():
    import subprocess
    import sys

    code = "import sys, dreamcore; assert 'torch' not in sys.modules; dreamcore.list_components; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    with pytest.raises(AttributeError):
        dreamcore.no_such_function  # noqa: B018
