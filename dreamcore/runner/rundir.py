"""The run folder: config.yaml, ckpt/, val/, model.*, turntable.*, metrics.json, log.txt."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from dreamcore.config import Config, dump_yaml
from dreamcore.files import atomic_write_bytes


def default_run_dir(cfg: Config) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", cfg.prompt.lower()).strip("-")[:40] or "run"
    return Path("runs") / f"{cfg.system.name}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunDir:
    path: Path

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "ckpt"

    def has_checkpoint(self) -> bool:
        return (self.ckpt_dir / "last.safetensors").is_file()

    def write_config(self, cfg: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.yaml", dump_yaml(cfg).encode())

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_bytes(self.path / "metrics.json", json.dumps(metrics, indent=2).encode())

    def log(self, line: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
