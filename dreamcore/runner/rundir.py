"""The run folder: config.yaml, ckpt/, val/, model.*, turntable.*, metrics.json, log.txt, and ``.lock``.

One process at a time works in a run folder: :meth:`RunDir.locked` holds an exclusive ``flock`` on
``.lock`` (which names the holder's PID) for as long as the run is written to. The kernel drops the lock when
the holder exits however it exits (SIGKILL included), so a stale file never blocks a resume."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from dreamcore.config import Config, dump_yaml
from dreamcore.errors import DreamcoreError
from dreamcore.files import atomic_write_bytes

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented)
    fcntl = None

LOCK_NAME = ".lock"
REFERENCE_NAME = "reference.png"  # image-to-3D: the cut-out of the run's picture, which its config.yaml names


def follow_reference(cfg: Config, run_dir: Path) -> None:
    """Point ``image.path`` at ``run_dir``'s own ``reference.png`` when it names a run folder's copy that is no
    longer where it was (the folder was moved or copied since)."""
    path = Path(cfg.image.path).expanduser() if cfg.image.path else None
    own = run_dir / REFERENCE_NAME
    if path is not None and path.name == REFERENCE_NAME and not path.exists() and own.is_file():
        cfg.image.path = str(own.resolve())


class RunBusyError(DreamcoreError):
    """Another live process holds the run folder's lock."""


def prompt_slug(prompt: str) -> str:
    """The prompt as a folder-name stem: lower-case letters and digits joined by ``-``, at most 40 characters."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40]


def default_run_dir(cfg: Config) -> Path:
    slug = prompt_slug(cfg.prompt) or "run"
    return Path("runs") / f"{cfg.system.name}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunDir:
    path: Path

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "ckpt"

    def has_checkpoint(self) -> bool:
        from dreamcore.runner.checkpoint import has_checkpoint

        return has_checkpoint(self.ckpt_dir)

    def lock_holder(self) -> str | None:
        """Who holds this folder's lock ("PID 123 on host"), or None when no live process does."""
        path = self.path / LOCK_NAME
        if fcntl is None or not path.is_file():
            return None
        with open(path) as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return _holder_text(f.read())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return None

    @contextlib.contextmanager
    def locked(self):
        """Hold the folder's lock while the block runs; a second process gets a clear error naming the first."""
        if fcntl is None:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunBusyError(self._busy(_holder_text(os.pread(fd, 256, 0).decode(errors="replace")))) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def check_not_busy(self) -> None:
        """Fail now, before any work, when another live process holds this folder."""
        holder = self.lock_holder()
        if holder:
            raise RunBusyError(self._busy(holder))

    def _busy(self, holder: str) -> str:
        return (f"{self.path} is in use by {holder} (lock file {self.path / LOCK_NAME}); wait for that run to end, "
                "stop it, or choose another run.dir")

    def write_config(self, cfg: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.yaml", dump_yaml(cfg).encode())

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_bytes(self.path / "metrics.json", json.dumps(metrics, indent=2).encode())

    def log(self, line: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def _holder_text(text: str) -> str:
    try:
        rec = json.loads(text)
        return f"process {int(rec['pid'])} on {rec.get('host', '?')} (since {rec.get('since', '?')})"
    except (ValueError, KeyError, TypeError):
        return "another process"
