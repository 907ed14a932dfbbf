"""File utilities every layer may use: where user paths point, and writing files atomically."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path

# the checkout when dreamcore runs from one (or is installed editable from one); in a wheel's install, site-packages
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIRS = ("assets", "configs")  # the data dreamcore ships: the default meshes and learned prior, the recipes


def package_data_dir(name: str) -> Path | None:
    """The folder ``name`` inside the installed package (a wheel holds configs/ and assets/ as dreamcore/configs and
    dreamcore/assets: pyproject's package-dir), found through importlib.resources; None in a checkout."""
    folder = importlib.resources.files("dreamcore") / name
    return folder if isinstance(folder, Path) and folder.is_dir() else None


def data_dir(name: str) -> Path:
    """A folder of shipped data (one of :data:`DATA_DIRS`): the installed package's copy, else the checkout's own
    (running from a checkout, or an editable install: the folders stay at the repository's root)."""
    if name not in DATA_DIRS:
        raise ValueError(f"{name!r} is not a shipped data folder ({', '.join(DATA_DIRS)})")
    return package_data_dir(name) or REPO_ROOT / name


def resolve_path(path: str | os.PathLike) -> Path:
    """A user path as given (relative to the working directory) when it exists, else the shipped data it names:
    ``assets/robot.glb``, ``assets/tiny-prior`` and ``configs/demo.yaml`` work from anywhere, whether dreamcore
    is installed from a wheel or runs from its checkout (where any path relative to the checkout works, as
    ``tools/`` scripts expect)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    if p.parts and p.parts[0] in DATA_DIRS:
        alt = data_dir(p.parts[0]).joinpath(*p.parts[1:])
    elif package_data_dir("configs") is None:  # a checkout: relative to it, as before
        alt = REPO_ROOT / p
    else:  # installed: nothing else of site-packages is the user's
        return p
    return alt if alt.exists() else p


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, flush it to disk, then rename it over ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_durably(tmp, data)
        os.replace(tmp, path)
    except OSError as e:  # (a full disk: the old file stays; the error names the file, not a descriptor)
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (fsync) before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
