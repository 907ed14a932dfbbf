"""dreamcore as a Python library: what the CLI, the batch worker and the studio do, as functions.

    import dreamcore

    run = dreamcore.generate("a toy robot", config="text-nerf", overrides={"run.steps": 500}, run_dir="out/robot")
    run = dreamcore.generate("a toy robot", config="image-to-3d", image="robot.png")   # image to 3D
    run.metrics["glb_psnr"]                       # metrics.json
    image = run.render(azimuth=45, elevation=20, resolution=256)   # a new view, from the last checkpoint
    image.save("robot-45.png")
    run.export("out/robot-hi", formats=["glb", "obj"], texture_size=2048)

    run = dreamcore.edit("out/robot", "a toy robot with a blue chest", source_prompt="a toy robot",
                         region="box:-0.3,0.1,-0.2,0.3,0.5,0.3")   # a new run: the robot, edited in that box

    run = dreamcore.load_run("out/robot")         # a finished (or interrupted) run folder
    dreamcore.list_components()                   # {"guidance": ["sds", "vsd", ...], ...}

    @dreamcore.register("guidance", "my-sds")     # a part of your own, chosen by name in a config
    class MySDS(...): ...

A prompt is taken literally, whatever it holds (it is never read as YAML); overrides are ``{"key.path": value}``
with Python values (or the CLI's ``"key=value"`` strings, whose values are YAML)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dreamcore import registry
from dreamcore.config import Config, job_config, load_config, override_lines
from dreamcore.errors import DreamcoreError

__all__ = ["Run", "Render", "generate", "edit", "resume", "load_run", "list_components", "register", "job_config",
           "override_lines"]

register = registry.register


def generate(prompt: str | None = None, config: str | Path = "text-nerf",
             overrides: Mapping[str, Any] | Sequence[str] | None = None, run_dir: str | Path | None = None,
             progress: bool = True, negative_prompt: str | None = None, seed: int | None = None,
             announce=print, image: str | Path | None = None) -> "Run":
    """Optimize one scene and export it, as ``dreamcore generate`` does; returns the finished :class:`Run`.
    ``prompt=None`` keeps the config's own (a reconstruction recipe); ``run_dir=None`` makes a new folder under
    ``runs/``; ``progress`` shows the step bar. ``image``: image-to-3D from that picture (PNG, JPEG or WebP;
    ``config="image-to-3d"``), kept in the run folder as ``reference.png``; the prompt may then be empty where
    the prior takes the picture as a condition (the tiny multi-view prior needs the object's name for now).
    Errors in the input (a bad picture too) are :class:`DreamcoreError` raised before any work; an interrupted
    run (Ctrl-C) keeps its checkpoint and can be continued with :func:`resume`."""
    from dreamcore.runner.generate import generate as run_generate

    cfg = job_config(prompt, config, overrides, run_dir, negative_prompt, seed, image=image)
    cfg.run.progress = bool(progress)
    return load_run(run_generate(cfg, announce=announce), load_system=False)


def edit(source: str | Path, prompt: str, source_prompt: str, region: str | None = None,
         falloff: float | None = None, config: str | Path = "edit-dds",
         overrides: Mapping[str, Any] | Sequence[str] | None = None, run_dir: str | Path | None = None,
         progress: bool = True, announce=print) -> "Run":
    """Edit the finished run in folder ``source`` (a NeRF or Gaussians run) toward ``prompt``, as ``dreamcore
    edit`` does; returns the new run (its own folder: ``run_dir``, or a new one under ``runs/``; the source is
    never written to). ``source_prompt`` says what the asset shows now; ``region`` (``box:x0,y0,z0,x1,y1,z1`` in
    the frame of the source's ``model.glb``, or ``mesh:part.glb``, a closed mesh; ""/None = all of it) is where it
    may change, with a soft edge ``falloff`` wide (scene units; None: as the config has it, default 0).
    ``config``: the edit recipe (``edit-dds``, ``edit-pds``, ``edit-sds``) laid over the source run's own config,
    then ``overrides``. Prompts are taken literally. Bad input is a :class:`DreamcoreError` before any work; an
    interrupted edit resumes with :func:`resume` like any run (its config names its source, ``init.from_run``,
    which must stay where it is)."""
    from dreamcore.runner.edit import edit_config
    from dreamcore.runner.generate import generate as run_generate

    cfg = edit_config(source, prompt, source_prompt, region, falloff, config, overrides, run_dir)
    cfg.run.progress = bool(progress)
    return load_run(run_generate(cfg, announce=announce), load_system=False)


def resume(run_dir: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None,
           progress: bool = True, announce=print) -> "Run":
    """Continue (or extend, e.g. ``{"run.steps": 3000}``) the run in ``run_dir`` from its last checkpoint."""
    from dreamcore.runner.generate import generate as run_generate
    from dreamcore.runner.generate import resume_config

    cfg = resume_config(run_dir, override_lines(overrides))
    cfg.run.progress = bool(progress)
    return load_run(run_generate(cfg, resume=True, announce=announce), load_system=False)


def load_run(path: str | Path, load_system: bool = False) -> "Run":
    """The run folder ``path`` (its ``config.yaml``; the scene is loaded from its last checkpoint when first
    needed, or now with ``load_system``)."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise DreamcoreError(f"{path} is not a dreamcore run folder (no config.yaml)")
    run = Run(path, load_config(path / "config.yaml", [f"run.dir={json.dumps(str(path))}"]))
    if load_system:
        run.system  # noqa: B018 - loads it now
    return run


def list_components() -> dict[str, list[str]]:
    """Every registered part by kind (built-in, and registered by plugins or :func:`register`)."""
    return {kind: registry.names(kind) for kind in registry.kinds()}


@dataclass
class Render:
    """One rendered view: ``rgb`` [H, W, 3] in [0, 1] over the background, ``alpha`` [H, W]."""

    rgb: np.ndarray
    alpha: np.ndarray

    def image(self):
        """The view as a PIL image (RGB, 8 bits)."""
        from PIL import Image

        return Image.fromarray((np.clip(self.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))

    def save(self, path: str | Path) -> Path:
        self.image().save(path)
        return Path(path)


@dataclass
class Run:
    """A run folder: its merged ``config``, ``metrics`` (``metrics.json``), exported ``files``, and its scene
    (``system``, ``representation``) restored from the last checkpoint on first use."""

    path: Path
    config: Config
    _system: Any = field(default=None, repr=False)

    @property
    def metrics(self) -> dict:
        try:
            return json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def files(self) -> dict[str, Path]:
        """The exported files present: glb, obj, mtl, png (texture), ply, turntable; and an image-to-3D run's
        picture as it used it (``reference``: reference.png, the cut-out)."""
        names = {"glb": "model.glb", "obj": "model.obj", "mtl": "model.mtl", "png": "model.png",
                 "ply": "model.ply", "turntable": "turntable.mp4", "reference": "reference.png"}
        out = {k: self.path / v for k, v in names.items() if (self.path / v).is_file()}
        if "turntable" not in out and (self.path / "turntable.gif").is_file():
            out["turntable"] = self.path / "turntable.gif"
        return out

    @property
    def system(self):
        """The scene as the runner optimized it (representation, renderer, prior), from the last checkpoint."""
        if self._system is None:
            from dreamcore.runner.init import load_run_system

            self._system = load_run_system(self.path)
        return self._system

    @property
    def representation(self):
        return self.system.representation

    def render(self, camera=None, *, azimuth: float = 0.0, elevation: float = 15.0, distance: float | None = None,
               fov: float | None = None, resolution: int = 256,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Render | list[Render]:
        """The scene seen from ``camera`` (a :class:`dreamcore.cameras.Cameras`: one Render per view), or from the
        orbit ``azimuth``/``elevation`` in degrees at ``distance`` and ``fov`` (default: the middle of the run's
        camera ranges) — azimuth 0 looks at the object's front, along −z. ``resolution`` pixels square."""
        import torch

        from dreamcore.cameras import Cameras, orbit_cameras

        if not (isinstance(resolution, int) and 8 <= resolution <= 4096):
            raise DreamcoreError(f"resolution must be a whole number of pixels in 8..4096, got {resolution!r}")
        c = self.config.camera
        single = camera is None
        if single:
            d = sum(c.distance_range) / 2 if distance is None else float(distance)
            f = sum(c.fov_range) / 2 if fov is None else float(fov)
            one = lambda v: torch.tensor([float(v)])  # noqa: E731
            camera = orbit_cameras(one(elevation), one(azimuth), one(d), one(f))
        elif not isinstance(camera, Cameras):
            raise DreamcoreError(f"camera must be a dreamcore.cameras.Cameras, got {type(camera).__name__}")
        bg = torch.tensor([list(background)], dtype=torch.float32).expand(len(camera), 3)
        with torch.no_grad():
            out = self.system.render_views(camera, resolution, resolution, bg)
        views = [Render(out.rgb[i].float().cpu().numpy(), out.alpha[i, ..., 0].float().cpu().numpy())
                 for i in range(len(camera))]
        return views[0] if single else views

    def export(self, out_dir: str | Path, formats: Iterable[str] = ("glb", "obj"), **export: Any) -> dict[str, Path]:
        """Write the scene's asset into ``out_dir`` in ``formats`` (registered exporters: glb, obj, ply,
        turntable), with any ``export`` setting changed (``texture_size=2048``, ``resolution=256``, ...);
        returns {format key: path}. The run folder itself is left as it is."""
        from dreamcore.runner.finish import export_run

        fields = {f.name for f in dataclasses.fields(self.config.export)}
        unknown = sorted(set(export) - fields)
        if unknown:
            raise DreamcoreError(f"unknown export setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        out_dir = Path(out_dir)
        if out_dir.resolve() == self.path.resolve():
            raise DreamcoreError("export into another folder than the run's own (dreamcore export RUN_DIR "
                                 "re-exports in place)")
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg = replace(self.config, export=replace(self.config.export, formats=list(formats), **export))
        from dreamcore.export.exporters import exporters_for

        exporters_for(cfg.export.formats)  # an unknown format fails now, naming the valid ones
        written = export_run(self.system, cfg, out_dir)
        return {k: Path(v) for k, v in written.get("files", {}).items()}
