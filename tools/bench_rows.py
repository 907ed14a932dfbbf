"""Benchmark rows: one small JSON file per finished run, committed as soon as it exists, so that a grid of runs
is filled a few runs at a time across sessions and machines and never lost with the runs' folders.

A row is keyed by the **config hash** of its run: the SHA-256 of the run's merged config (what its ``config.yaml``
holds) with the keys that cannot change the result left out (:data:`UNSCORED_KEYS`: the run folder, the thread
count, the progress bar; settings added later at their neutral value, ``dreamcore.config.NEUTRAL_SETTINGS``), every
absolute path under the checkout
written relative to it (a fresh clone elsewhere gives the same hash), and every file or folder the config names
replaced by the SHA-256 of its content (a prior folder's weights, the scored mesh: a retrained prior is a new row,
a moved checkout is not). A benchmark reuses a row whose hash matches the run it would start, and runs again
otherwise. The commit the row was made at and the machine's thread count are kept in the row (shown by the
reports) but are not in the hash: the code changes every session, and a grid that is only valid at one commit
could never be filled across sessions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# config keys that cannot change a run's scores (dotted paths into the merged config tree)
UNSCORED_KEYS = ("run.dir", "run.threads", "run.progress")
# files of a folder that describe it rather than make it (a prior's report and sample sheet)
DESCRIPTIVE_SUFFIXES = (".md", ".png", ".log")


@functools.lru_cache(maxsize=None)
def content_hash(path: str) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and contents, sorted; hidden files and
    :data:`DESCRIPTIVE_SUFFIXES` left out)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or f.suffix in DESCRIPTIVE_SUFFIXES:
            continue
        h.update(str(rel.as_posix()).encode() + b"\0" + content_hash(str(f)).encode() + b"\0")
    return h.hexdigest()


def _named_path(value: str, root: Path) -> Path | None:
    """The existing file or folder a config string names (absolute, or relative to ``root``), else None. Only
    strings that look like paths (a separator or a file suffix) are tried: ``"nerf"`` is a name, not a folder."""
    if not value or len(value) > 4096 or "\n" in value or not ("/" in value or Path(value).suffix):
        return None
    p = Path(value)
    p = p if p.is_absolute() else root / p
    try:
        return p if p.exists() else None
    except OSError:
        return None


def relative_path(path: str | Path, root: Path = ROOT) -> str:
    """``path`` relative to the checkout when it lies inside it (as rows and hashes write it), else absolute."""
    path = Path(path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def canonical_tree(tree, root: Path = ROOT):
    """``tree`` with the files and folders it names replaced by ``{"path": relative, "sha256": content}``."""
    if isinstance(tree, dict):
        return {str(k): canonical_tree(v, root) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [canonical_tree(v, root) for v in tree]
    if isinstance(tree, str):
        p = _named_path(tree, root)
        if p is not None:
            return {"path": relative_path(p, root), "sha256": content_hash(str(p.resolve()))}
    return tree


def config_hash(tree: dict, root: Path = ROOT, unscored: tuple[str, ...] = UNSCORED_KEYS) -> str:
    """The config hash of a run's merged config tree (see the module docstring)."""
    from dreamcore.config import without_neutral

    tree = without_neutral(json.loads(json.dumps(tree, default=str)))  # a plain-JSON copy
    for dotted in unscored:
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps(canonical_tree(tree, root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's commit (12 hex digits), with ``+changes`` when tracked files differ from it; None outside
    a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def read_row(path: Path) -> dict | None:
    """A row file's content, or None when it is missing or unreadable (then the run is made again)."""
    try:
        row = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and isinstance(row.get("config_hash"), str) else None


def write_row(path: Path, row: dict) -> None:
    """Write a row atomically (a row is whole or absent, never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def load_rows(folder: Path) -> list[dict]:
    """Every readable row of a rows folder (sorted by file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    rows = []
    for f in sorted(folder.glob("*.json")):
        row = read_row(f)
        if row is not None:
            rows.append({**row, "row_file": str(f)})
    return rows
