"""tools/gpu_wheels.sh: the wheel bundle for the offline GPU machine pins each package once, exactly, and covers
every third-party import of dreamcore/ and systems/ that the machine's image lacks (no network: ``--list`` only)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_wheels.sh"

# The Python packages of the GPU machine's image (the H200 device's 'cuda' image, Python 3.12.3, torch 2.11.0+cu130),
# copied from the workplace's device notes (KINDS.md, "Python packages already there", as read on 2026-11-17).
# The bundle must not repeat these: /tmp/site comes first on PYTHONPATH there and would shadow the image's copy.
GPU_MACHINE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()

# Import names whose distribution is named differently (the rest: the import name, normalized).
DIST_OF_IMPORT = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "mcubes": "PyMCubes",
    "DracoPy": "DracoPy",
    "fast_simplification": "fast-simplification",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}

# Imported by dreamcore but deliberately not in the bundle, with the reason.
NOT_BUNDLED = {
    # source-only (no wheel on PyPI; built from its GitHub source with a C++/CUDA toolchain and EGL headers);
    # MeshRenderer's backend "auto" falls back to the PyTorch rasterizer when it is missing.
    "nvdiffrast": "no wheel on PyPI",
    # the batch layer's optional backend (dreamcore[ray], ~80 MB); the GPU check runs single jobs, not batches
    "ray": "optional batch backend, not used by the GPU check",
    # the studio's web app (dreamcore[studio]); the GPU check runs no server
    "gradio": "optional web app, not used by the GPU check",
}

FIRST_PARTY = {"dreamcore", "systems"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)$")


def norm(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> set[str]:
    """Top-level names of every absolute import (module level or inside functions) in dreamcore/ and systems/."""
    names = set()
    for package in sorted(FIRST_PARTY):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY and n != "__future__"}


def dist_of(import_name: str) -> str:
    return norm(DIST_OF_IMPORT.get(import_name, import_name))


@pytest.fixture(scope="module")
def pins() -> dict[str, tuple[str, str]]:
    """normalized name -> (name as written, version), from ``tools/gpu_wheels.sh --list``."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    proc = subprocess.run([bash, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines, "--list printed nothing"
    out: dict[str, tuple[str, str]] = {}
    for line in lines:
        m = PIN.match(line)
        assert m, f"not an exact name==version pin: {line!r}"
        key = norm(m.group(1))
        assert key not in out, f"{m.group(1)} is pinned twice"
        out[key] = (m.group(1), m.group(2))
    return out


def test_the_import_scan_sees_dreamcores_dependencies():
    found = third_party_imports()
    assert {"torch", "numpy", "omegaconf", "diffusers"} <= found, found


def test_every_import_missing_on_the_gpu_machine_is_bundled(pins):
    on_machine = {norm(p) for p in GPU_MACHINE_PACKAGES}
    needed = {dist_of(n) for n in third_party_imports()} - on_machine - {norm(n) for n in NOT_BUNDLED}
    missing = sorted(needed - set(pins))
    assert not missing, f"imported by dreamcore/systems, not on the GPU machine, not in tools/gpu_wheels.sh: {missing}"


def test_the_bundle_repeats_nothing_the_gpu_machine_has(pins):
    on_machine = {norm(p) for p in GPU_MACHINE_PACKAGES}
    assert not sorted(set(pins) & on_machine), "these would shadow the GPU image's own copies"


def test_left_out_packages_are_still_imported_and_not_pinned(pins):
    imported = {dist_of(n) for n in third_party_imports()}
    for name in NOT_BUNDLED:
        assert norm(name) in imported, f"{name} is no longer imported: drop it from NOT_BUNDLED"
        assert norm(name) not in pins


def test_pins_fall_inside_pyprojects_ranges(pins):
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    for line in declared:
        req = requirements.Requirement(line)
        if norm(req.name) in pins:
            version = pins[norm(req.name)][1]
            assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {line!r}"
