"""``pip install .`` (a wheel, not editable) works outside the checkout: the wheel holds one top-level package,
``dreamcore``, with the repository's ``systems/``, ``configs/`` and ``assets/`` inside it (pyproject's package-dir),
and the installed copy finds its recipes and assets there, from any working directory.

The wheel is built from a copy of the sources (the checkout's own build/ could hold stale files) and installed
with ``pip install --target`` into a scratch folder; commands run with this interpreter (its torch and the rest)
from another folder, with only that scratch folder on PYTHONPATH and ``-P`` (the working directory is not put on
sys.path). PYTHONPATH comes before site-packages, so the scratch copy wins over an editable install's finder; each
check asserts that every dreamcore module it imported came from the scratch copy. .ci/run does the same in a
fresh venv with ``pip install dist/*.whl[diffusers]``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "dreamcore", "systems", "configs", "assets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building without isolation needs setuptools in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = (tmp / "dist").glob("dreamcore-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a scratch folder (no dependencies: this interpreter's are used)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def run_outside(site: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``args`` run with this interpreter from ``cwd`` (not the checkout), with only ``site`` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(a if len(a) < 80 else "<code>" for a in args)
    assert proc.returncode == 0, f"{shown} (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


# every dreamcore module this process imported comes from the scratch copy (not the checkout, not an editable
# install); placed at the end of each snippet below
FROM_SITE = """
import sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
loaded = {n: m for n, m in sys.modules.items() if n == "dreamcore" or n.startswith("dreamcore.")}
assert "dreamcore.systems" in loaded, sorted(loaded)
elsewhere = {n: getattr(m, "__file__", None) for n, m in loaded.items()
             if getattr(m, "__file__", None) and site not in Path(m.__file__).resolve().parents}
assert not elsewhere, elsewhere
assert not any(n == "systems" or n.startswith("systems.") for n in sys.modules), "a top-level systems module"
"""


def test_the_wheel_holds_one_package_with_the_systems_configs_and_assets(wheel):
    with zipfile.ZipFile(wheel) as z:
        members = {n for n in z.namelist() if not n.endswith("/")}
        outside = sorted(n for n in members if not re.match(r"dreamcore/|dreamcore-[^/]+\.dist-info/", n))
        assert not outside, f"files outside the dreamcore package: {outside}"
        # dreamcore/systems/__init__.py of the checkout only stands in for systems/ there: the wheel has the real one
        assert z.read("dreamcore/systems/__init__.py") == (ROOT / "systems" / "__init__.py").read_bytes()
    stand_in = ROOT / "dreamcore" / "systems"
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dreamcore").rglob("*.py")
                if "__pycache__" not in p.parts and stand_in not in p.parents}
    for folder in ("systems", "configs", "assets"):
        expected |= {f"dreamcore/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / folder).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(expected - members)
    assert not missing, f"missing from the wheel (a new subpackage? list it in pyproject.toml): {missing}"
    assert {"dreamcore/configs/text-nerf.yaml", "dreamcore/assets/robot.glb",
            "dreamcore/assets/tiny-prior/unet/diffusion_pytorch_model.safetensors"} <= members


def test_the_installed_copy_finds_its_configs_and_assets_from_anywhere(installed, tmp_path):
    assert not (installed / "systems").exists()
    code = """
import sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import dreamcore.systems
from dreamcore.config import config_path, load_config
from dreamcore.files import data_dir, resolve_path
inside = lambda p: site in Path(p).resolve().parents
demo = config_path("demo")
assert inside(demo) and demo.name == "demo.yaml", demo
assert inside(resolve_path(load_config(demo).prior.reference.mesh)), load_config(demo).prior.reference.mesh
assert all(inside(config_path(n)) for n in ("text-nerf", "text-nerf.yaml", "configs/text-nerf.yaml")), "configs"
assert inside(data_dir("configs")) and inside(data_dir("assets"))
tiny = resolve_path("assets/tiny-prior")
assert inside(tiny) and (tiny / "model_index.json").is_file(), tiny
cfg = load_config(config_path("reference-gaussians"))  # extends and refine.config: relative to the shipped file
assert inside(cfg.refine.config) and Path(cfg.refine.config).is_file(), cfg.refine.config
assert inside(config_path("magic3d-refine")) and load_config(config_path("magic3d-refine")).system.name
(Path.cwd() / "assets").mkdir()
(Path.cwd() / "assets" / "robot.glb").write_bytes(b"mine")  # a user's own file of that name comes first
assert resolve_path("assets/robot.glb") == Path("assets/robot.glb")
from dreamcore import registry
registry.load_builtins()
assert registry.lookup("system", "mesh").__module__ == "dreamcore.systems.mesh"
""" + FROM_SITE
    run_outside(installed, tmp_path / "elsewhere", sys.executable, "-P", "-c", code, str(installed))


def test_the_installed_command_lists_parts_and_shows_the_studio_help(installed, tmp_path):
    script = installed / "bin" / "dreamcore"  # the console script pip wrote (this interpreter's shebang)
    assert script.is_file()
    out = run_outside(installed, tmp_path, str(script), "list").stdout
    assert "system: dreamfusion, edit, gaussian, mesh" in out and "prior:" in out and "pixel-diffusion" in out
    assert "--runs" in run_outside(installed, tmp_path, str(script), "studio", "--help").stdout


def test_the_installed_copy_generates_from_a_shipped_recipe_and_prior(installed, tmp_path):
    pytest.importorskip("diffusers")  # text-nerf's learned prior (dreamcore[diffusers])
    run = tmp_path / "run"
    code = ("import sys\nfrom dreamcore.cli import main\n"
            "rc = main(['generate', 'a penguin', '--config', 'text-nerf', 'run.steps=5', f'run.dir={sys.argv[2]}',"
            " 'run.checkpoint_every=0', 'run.val_every=0', 'run.progress=false', 'eval.views=2',"
            " 'eval.resolution=32', 'eval.janus_views=2', 'export.formats=[glb]', 'export.resolution=48',"
            " 'export.texture_size=64'])\n"
            "assert rc == 0, rc\n") + FROM_SITE
    t0 = time.perf_counter()
    run_outside(installed, tmp_path / "elsewhere", sys.executable, "-P", "-c", code, str(installed), str(run))
    assert (run / "model.glb").stat().st_size > 0
    assert "model: assets/tiny-prior" in (run / "config.yaml").read_text()  # found inside the package
    print(f"5-step text-nerf run from the wheel: {time.perf_counter() - t0:.1f} s")
