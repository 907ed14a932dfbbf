"""One written contract per kind of part: the runner and the systems call hooks of base classes
(``Representation``, ``Prior``, ``System``, ``Exporter``) instead of probing parts with getattr/hasattr, a part
that does not take the contract is refused by name, and the README's examples of a new representation, prior and
exporter run through ``dreamcore generate``."""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dreamcore import registry
from dreamcore.cli import main
from dreamcore.config import ComponentConfig
from dreamcore.errors import DreamcoreError
from test_runner import TINY

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ["export.resolution=40", "export.texture_size=64", "export.isosurface=1.0"]


def probes(path: Path) -> list[str]:
    """The probes in a file, as 'line: source': hasattr, and getattr with a fallback (two-argument getattr of a
    config field by name is a read, not a probe)."""
    tree = ast.parse(path.read_text())
    return [f"{n.lineno}: {ast.unparse(n)}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and (n.func.id == "hasattr" or (n.func.id == "getattr" and len(n.args) == 3))]


@pytest.mark.parametrize("path", ["dreamcore/runner/trainer.py", "dreamcore/runner/finish.py",
                                  "dreamcore/runner/refine.py", "dreamcore/runner/init.py",
                                  "dreamcore/runner/generate.py", "systems/dreamfusion.py", "systems/gaussian.py",
                                  "systems/mesh.py"])
def test_the_runner_and_systems_do_not_probe_parts(path):
    assert probes(ROOT / path) == []


def register_loose(kind: str, name: str) -> None:
    """Register (once per process) a part of ``kind`` that takes no base class: built from its config like any
    part (``__init__(cfg, **kwargs)``), but outside the kind's contract."""
    if name in registry.names(kind):
        return

    @registry.register(kind, name)
    class Loose:
        @dataclass
        class Config(ComponentConfig):
            pass

        def __init__(self, cfg=None, **kwargs):
            pass


def test_a_system_outside_the_contract_is_refused_by_name():
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.init import build_system

    register_loose("system", "not-a-system")
    cfg = load_config(config_path("reference-nerf"), ["system.name=not-a-system"])
    with pytest.raises(DreamcoreError, match="not-a-system.*does not subclass dreamcore.system.System"):
        build_system(cfg)


def test_a_background_outside_the_contract_is_refused_by_name():
    from dreamcore.config import config_path, load_config
    from dreamcore.runner.init import build_system

    register_loose("background", "loose-backdrop")
    cfg = load_config(config_path("reference-nerf"), ["background.name=loose-backdrop"])
    with pytest.raises(DreamcoreError, match="background 'loose-backdrop'.*does not subclass"):
        build_system(cfg)


def test_an_exporter_outside_the_contract_is_refused_by_name():
    from dreamcore.export.exporters import exporters_for

    register_loose("exporter", "loose-format")
    with pytest.raises(DreamcoreError, match="exporter 'loose-format'.*does not subclass"):
        exporters_for(["glb", "loose-format"])


def test_every_builtin_part_takes_its_contract():
    from dreamcore.export.exporters import Exporter
    from dreamcore.priors.base import Prior
    from dreamcore.renderers.background import Background
    from dreamcore.representations.base import Representation
    from dreamcore.system import System

    from dreamcore.builtins import BUILTINS

    registry.load_builtins()
    for kind, base in (("representation", Representation), ("prior", Prior), ("system", System),
                       ("exporter", Exporter), ("background", Background)):
        assert BUILTINS[kind]
        for name in BUILTINS[kind]:
            assert issubclass(registry.lookup(kind, name), base), (kind, name)


def readme_example(kind: str, tmp_path: Path) -> tuple[Path, str]:
    m = re.search(rf"<!-- {kind}-example: (\S+) -->\s*```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert m, f"README.md lost its {kind} example"
    path = tmp_path / m.group(1)
    path.write_text(m.group(2))
    return path, m.group(2)


def test_the_readme_representation_and_exporter_examples_run(tmp_path):
    rep, _ = readme_example("representation", tmp_path)
    stl, _ = readme_example("exporter", tmp_path)
    run = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("representation.")]
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *tiny, f"plugins=[{rep},{stl}]",
                 "representation.name=voxels", "representation.resolution=16", "export.formats=[glb,stl]",
                 *EXPORT, f"run.dir={run}"]) == 0
    assert "name: voxels" in (run / "config.yaml").read_text()
    data = (run / "model.stl").read_bytes()
    (faces,) = struct.unpack("<I", data[80:84])
    assert faces > 0 and len(data) == 84 + 50 * faces
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["export"]["faces"] == faces  # the mesh was made once and shared with the GLB
    assert (run / "model.glb").is_file()


def test_the_readme_prior_example_is_the_exact_prior_of_its_colour_and_runs(tmp_path):
    path, _ = readme_example("prior", tmp_path)
    run = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("prior.") and not a.startswith("system.rays")]
    assert main(["generate", "--config", "configs/reference-nerf.yaml", *tiny, f"plugins=[{path}]",
                 "prior.name=solid-colour", "export.formats=[glb]", *EXPORT, f"run.dir={run}"]) == 0
    assert (run / "model.glb").is_file() and "name: solid-colour" in (run / "config.yaml").read_text()
    cls = registry.lookup("prior", "solid-colour")  # registered by the run's plugin
    prior = cls(cls.Config(colour=[1.0, 0.5, 0.0]))
    c = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)  # the colour in model space
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 800])
    x_t = prior.schedule.add_noise(c, eps, t)
    assert torch.allclose(prior.predict_noise(x_t, t, torch.zeros(2, 1)), eps, atol=1e-4)
