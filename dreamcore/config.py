"""Typed configuration: YAML files + ``key=value`` overrides parsed into dataclasses, failing fast.

* Every section is a dataclass; an unknown key names the valid ones, a wrong type names the expected one.
* Component sections (``representation``, ``renderer``, ``background``, ``prior``, ``guidance``, ``system``)
  carry ``name`` and are parsed with the registered class's own ``Config``.
* ``extends: other.yaml`` (relative to the file) merges a base config under the file's own keys.
* Scalars typed :class:`~dreamcore.schedule.Scheduled` accept a number or ``[[step, value], ...]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

from dreamcore import registry
from dreamcore.errors import DreamcoreError
from dreamcore.files import data_dir, resolve_path
from dreamcore.reference_image import ImageConfig
from dreamcore.schedule import Scheduled, step_count
from dreamcore.views import ViewPromptConfig


@dataclass
class ComponentConfig:
    """Base of every registered component's config: ``name`` selects the class."""

    name: str = ""


def component(kind: str, default_name: str) -> Any:
    """A dataclass field holding the config of a registered component of ``kind``."""
    return field(default_factory=lambda: {"name": default_name}, metadata={"component": kind})


@dataclass
class CameraConfig:
    """Random orbit cameras (degrees). Elevation is sampled uniformly on the sphere's area when ``uniform_sphere``."""

    elevation_range: tuple[float, float] = (-10.0, 60.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (3.0, 3.4)
    fov_range: tuple[float, float] = (38.0, 42.0)
    uniform_sphere: bool = True
    batch_size: int = 4
    resolution: int = 64
    # training views: 0 = a fresh random view each time; N = a fixed set of N random views drawn once from the
    # ranges above (a multi-view data set; a reference prior then renders each view once and caches it);
    # -1 = what the prior asks for (the reference prior asks for a set when its mesh is big)
    views: int = -1


@dataclass
class OptimizerConfig:
    """Adam on the representation's parameter groups; ``lr`` scales each group's own relative rate."""

    lr: Scheduled = field(default_factory=lambda: Scheduled.constant(0.01))
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 0.0
    grad_clip: float = 0.0


@dataclass
class PicardConfig:
    """``run.picard``: DreamPropeller's Picard-parallel optimization (:mod:`dreamcore.runner.picard`). A window of
    ``window`` future steps has its gradients evaluated at the current guesses of the trajectory (in ``workers``
    processes, or one after another in this one at 0), then one sequential optimizer rollout accepts steps for as
    long as it agrees with the guesses within ``threshold`` (0: exactly, which reproduces the step-seeded
    sequential run bit for bit). ``window: 0`` is off: the plain sequential loop."""

    window: int = 0
    threshold: float = 0.0  # fixed-point error 1e6·Σ‖θ' − θ‖²/#params above which a guess is rejected
    workers: int = 0  # gradient processes (each its own system and prior); 0: in this process
    adapt: Literal["none", "median", "mean"] = "none"  # τ ← ema·τ + (1 − ema)·agg(errors of the round)
    ema: float = 0.9

    def __post_init__(self) -> None:
        for key in ("window", "workers"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DreamcoreError(f"run.picard.{key} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold >= 0):
            raise DreamcoreError(f"run.picard.threshold must be a finite number >= 0, got {self.threshold!r}")
        if not (isinstance(self.ema, (int, float)) and 0.0 <= self.ema <= 1.0):
            raise DreamcoreError(f"run.picard.ema must be a number in [0, 1], got {self.ema!r}")


@dataclass
class RunConfig:
    dir: str = ""
    steps: int = step_count(1000)
    seed: int = 0
    checkpoint_every: int = 250
    val_every: int = 250
    val_views: int = 4
    val_resolution: int = 128
    log_every: int = 50
    progress: bool = True
    device: str = "auto"
    threads: int = 0
    # arithmetic of the scene's forward and backward (autocast): fp32, bf16, or fp16 with a dynamic loss scale;
    # priors keep their own prior.dtype
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # a run this many times as long (0.25: a quick draft; 2: a longer, finer one): multiplies run.steps and every
    # step count and schedule of the recipe (the fields typed Scheduled or marked step_count: lr and timestep
    # anneals, loss weights, densification, SH growth; not the checkpoint, validation and log intervals) when
    # the config is loaded; the merged config.yaml holds the scaled values and 1.0 here
    time_scale: float = 1.0
    # reseed the run's generator at every step from (seed, step) (and again, apart, for the step's after_step draws),
    # so that a step's draws do not depend on the steps before it; always on with run.picard
    step_seeds: bool = False
    picard: PicardConfig = field(default_factory=PicardConfig)


@dataclass
class ExportConfig:
    """Mesh extraction and writing. ``formats`` names registered exporters (glb, obj, turntable)."""

    formats: list[str] = field(default_factory=lambda: ["glb", "obj", "turntable"])
    resolution: int = 192
    isosurface: float = 20.0  # density level of the surface (threestudio uses 25 for similar fields)
    # levels to try instead: the one whose mesh's silhouettes best match the field's own renders (alpha > ½) at
    # ``isosurface_views`` views is exported (a soft field's level-20 surface is thinner than what it renders)
    isosurface_search: list[float] = field(default_factory=list)
    isosurface_views: int = 12
    # what the surface is: "density" (the level set above) or "depth" (the scene's own renders fused: truncated
    # signed distances of rendered depth from ``fusion_views`` views all around at ``fusion_resolution`` px, 0 = the
    # training resolution camera.resolution; ``fusion_truncation`` grid cells; dreamcore.export.fusion), for
    # representations whose density does not follow their renders (3D Gaussians)
    surface: Literal["density", "depth"] = "density"
    fusion_views: int = 48
    fusion_resolution: int = 0
    fusion_truncation: float = 6.0
    fill_cavities: bool = True
    keep_components: int = 1
    min_component_ratio: float = 0.02
    target_faces: int = 40000
    smooth_iterations: int = 10  # Taubin smoothing (volume-preserving) of the extracted surface; 0 = off
    texture_size: int = 1024
    turntable_frames: int = 48
    turntable_resolution: int = 256
    turntable_format: Literal["mp4", "gif"] = "mp4"


@dataclass
class EvalConfig:
    """Held-out views scored against the object the run should make: ``mesh`` (normalized into the scene like
    the reference prior's, to fit a sphere of ``radius``), else the reference prior's own mesh; no scores
    without either. ``mesh`` is read after the run only, to score it: nothing in training sees it."""

    views: int = 16
    resolution: int = 64
    depth_resolution: int = 128  # ray-cast depth of the GLB against the target (glb_depth_err_rel)
    seed: int = 12345
    elevation_range: tuple[float, float] = (-30.0, 60.0)
    mesh: str = ""
    radius: float = 0.9
    janus_views: int = 8  # a ring of azimuths at ``janus_elevation`` for the Janus score
    janus_elevation: float = 15.0
    # the exported GLB's frame before it is scored: "none" (as written: text-to-3D makes the object in the scene's
    # own frame), "bbox" (moved and scaled as ``mesh`` is normalized — its bounding-box centre to the origin, its
    # farthest vertex to ``radius`` — so that both are in one frame: image-to-3D, where the picture's framing
    # fixes no absolute position or size); its rotation is never changed (a back on the front still scores)
    align: Literal["none", "bbox"] = "none"


@dataclass
class InitConfig:
    """Start from an earlier run (multi-stage pipelines: NeRF → DMTet, NeRF → Gaussians)."""

    from_run: str = ""  # a run folder; the representation is initialized from its last checkpoint


@dataclass
class RefineConfig:
    """A second stage run into ``<run.dir>/<dir>`` when this run finishes, started from it (``init.from_run``):
    DreamGaussian's and Magic3D's mesh refinement in one command. It inherits this run's prompt, negative
    prompt, plugins, view prompts, prior, eval, image (image-to-3D's picture) and run seed/device/threads/
    progress (except the sections named in ``own``), and writes the mesh formats of ``export.formats`` — all of
    them when it keeps this run's kind of representation — which are then copied into this run's folder (this
    run writes the rest, e.g. ``ply`` before a mesh stage)."""

    config: str = ""  # the stage's YAML (a path relative to the config file that names it); "" = no refinement
    dir: str = "refine"
    overrides: list[str] = field(default_factory=list)  # key=value for the stage, after its own file
    # inherited sections the stage takes from its own file instead (e.g. [prior]: StableDreamer's image-space
    # prior, then a latent one); any of prompt, negative_prompt, plugins, views, prior, eval, image
    own: list[str] = field(default_factory=list)


@dataclass
class Config:
    prompt: str = ""
    negative_prompt: str = ""
    plugins: list[str] = field(default_factory=list)
    run: RunConfig = field(default_factory=RunConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    views: ViewPromptConfig = field(default_factory=ViewPromptConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    system: Any = component("system", "dreamfusion")
    representation: Any = component("representation", "nerf")
    renderer: Any = component("renderer", "volume")
    background: Any = component("background", "solid")
    prior: Any = component("prior", "reference")
    guidance: Any = component("guidance", "sds")
    init: InitConfig = field(default_factory=InitConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # image-to-3D: the picture (dreamcore.reference_image)


# --------------------------------------------------------------------------------------------------------------
# loading


def config_path(name: str) -> Path:
    """A config file as given (relative to the working directory), else a shipped one: ``reference-nerf``,
    ``reference-nerf.yaml`` or ``configs/reference-nerf.yaml`` (the installed package's ``configs``, or the
    checkout's: :func:`dreamcore.files.data_dir`)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = data_dir("configs")
    for cand in (resolve_path(name), shipped / name, shipped / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise DreamcoreError(f"config file not found: {name} (configs shipped: {', '.join(shipped_configs())})")


def shipped_configs() -> list[str]:
    """The names of the shipped configs (``configs/*.yaml``): what ``--config NAME`` finds anywhere."""
    return sorted(q.stem for q in data_dir("configs").glob("*.yaml"))


def load_yaml_tree(path: str | Path) -> dict:
    """Read a YAML config, resolving ``extends:`` chains (paths relative to the including file)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise DreamcoreError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml errors carry position info
        raise DreamcoreError(f"cannot parse config {path}: {e}") from None
    data = OmegaConf.to_container(node, resolve=True) or {}
    if not isinstance(data, dict):
        raise DreamcoreError(f"config {path} must be a mapping at top level")
    refine = data.get("refine")
    if isinstance(refine, dict) and refine.get("config"):  # relative to this file, like ``extends``
        refine["config"] = str((path.parent / str(refine["config"])).resolve())
    base = data.pop("extends", None)
    if base:
        parent = load_yaml_tree((path.parent / base).resolve())
        data = merge_trees(parent, data)
    return data


def merge_trees(base: dict, over: dict) -> dict:
    """Recursive dict merge; when a component's ``name`` changes, the base section is dropped."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if "name" in v and v["name"] != out[k].get("name"):
                out[k] = dict(v)
            else:
                out[k] = merge_trees(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``a.b=1`` strings into a nested dict, values read as YAML (so ``[1,2]`` is a list)."""
    import yaml

    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise DreamcoreError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        if not key:
            raise DreamcoreError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DreamcoreError(f"override '{item}' sets a key under a non-mapping value")
        node[parts[-1]] = value
    return tree


def override_lines(overrides: "Mapping[str, Any] | Sequence[str] | None") -> list[str]:
    """``{"run.steps": 500, "prompt": "a: b"}`` as the override lines the config loader reads back to exactly
    those values (each value written as JSON, which YAML reads unchanged); ``"key=value"`` strings pass as they
    are (their values are YAML, as on the command line)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key.strip():
                raise DreamcoreError(f"an override key must be a dotted name such as 'run.steps', got {key!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise DreamcoreError(f"override {key}: {value} is not a finite number")
            out.append(f"{key}={json.dumps(_plain(value), ensure_ascii=False)}")
        return out
    if isinstance(overrides, str):
        raise DreamcoreError("overrides are a mapping {'run.steps': 500} or a list of 'key=value' strings, "
                             f"got the string {overrides!r}")
    return [str(o) for o in overrides]


def _plain(value: Any) -> Any:
    """A value as JSON can hold it (tuples as lists, paths as strings)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def prompt_line(key: str, text: str) -> str:
    """``prompt=...`` (or ``negative_prompt=...``) for ``text`` taken literally; an empty prompt is an error."""
    if not isinstance(text, str):
        raise DreamcoreError(f"the {key.replace('_', ' ')} must be text, got {type(text).__name__}")
    if key == "prompt" and not text.strip():
        raise DreamcoreError("the prompt is empty: describe the object, e.g. \"a toy robot\"")
    return f"{key}={json.dumps(text, ensure_ascii=False)}"


def job_config(prompt: str | None, config: str | Path = "text-nerf",
               overrides: "Mapping[str, Any] | Sequence[str] | None" = None, run_dir: str | Path | None = None,
               negative_prompt: str | None = None, seed: int | None = None,
               image: str | Path | None = None) -> Config:
    """The merged config of a run: ``config`` (a shipped recipe's name or a YAML path), then ``overrides``, then
    the prompt, negative prompt, seed, picture (``image.path``, image-to-3D) and run folder given here (taken
    literally). With a picture the prompt may be empty."""
    lines = override_lines(overrides)
    if prompt is not None:
        empty_allowed = image is not None and isinstance(prompt, str)  # the picture says what the object is
        lines.append(f"prompt={json.dumps(prompt, ensure_ascii=False)}" if empty_allowed
                     else prompt_line("prompt", prompt))
    if negative_prompt is not None:
        lines.append(prompt_line("negative_prompt", negative_prompt))
    if seed is not None:
        lines.append(f"run.seed={int(seed)}")
    if image is not None:
        if not str(image).strip():
            raise DreamcoreError("the image path is empty: name a PNG, JPEG or WebP picture")
        lines.append(f"image.path={json.dumps(str(image), ensure_ascii=False)}")
    if run_dir is not None:
        lines.append(f"run.dir={json.dumps(str(run_dir))}")
    return load_config(config_path(str(config)), lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Merge YAML (``path``), an optional base tree and dotlist ``overrides`` into a typed :class:`Config`."""
    tree: dict = dict(base or {})
    if path is not None:
        tree = merge_trees(tree, load_yaml_tree(path))
    if overrides:
        tree = merge_trees(tree, parse_overrides(overrides))
    if "mesh" in tree:  # top-level alias (configs/texture.yaml): ``mesh=X.obj`` is ``representation.path=X.obj``
        rep = tree.get("representation")
        rep = {"name": rep} if isinstance(rep, str) else dict(rep or {})
        rep["path"] = tree.pop("mesh")
        tree["representation"] = rep
    load_plugins(tree.get("plugins", []) or [])
    return apply_time_scale(parse(Config, tree, ""))


def apply_time_scale(cfg: "Config") -> "Config":
    """``run.time_scale`` = f applied: every step count (``step_count`` fields) rounded from f × its value (an
    interval stays ≥ 1, 0 stays 0) and every schedule's steps multiplied by f; a refinement stage gets the same
    factor through ``refine.overrides``. Then ``run.time_scale`` is 1.0, so loading the result again (the run
    folder's config.yaml on resume) changes nothing."""
    f = cfg.run.time_scale
    if f == 1.0:
        return cfg
    if not (math.isfinite(f) and f > 0):
        raise DreamcoreError(f"run.time_scale must be a positive number, got {f!r}")

    def scale(obj: Any) -> Any:
        if isinstance(obj, Scheduled):
            return obj.scaled(f)
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            return obj
        changes = {}
        for fd in dataclasses.fields(obj):
            value = getattr(obj, fd.name)
            if fd.metadata.get("steps") and isinstance(value, (int, float)) and not isinstance(value, bool):
                scaled = value * f
                if isinstance(value, int):
                    scaled = max(1, round(scaled)) if value > 0 else value
                changes[fd.name] = scaled
            elif isinstance(value, Scheduled) or dataclasses.is_dataclass(value):
                changes[fd.name] = scale(value)
        return dataclasses.replace(obj, **changes) if changes else obj

    out = scale(cfg)
    out.run.time_scale = 1.0
    if out.refine.config:
        out.refine.overrides = [*out.refine.overrides, f"run.time_scale={f!r}"]
    return out


def load_plugins(plugins: list[str]) -> None:
    """Import user files or modules that register extra components (``plugins: [my_guidance.py]``)."""
    import importlib
    import importlib.util
    import sys

    from dreamcore.trust import refuse_code

    for p in plugins:
        refuse_code(f"plugin {str(p)!r}")  # a job a web page sent runs no code of its own (dreamcore/trust.py)
        try:
            if str(p).endswith(".py"):
                fp = Path(p).expanduser().resolve()
                if not fp.is_file():
                    raise DreamcoreError(f"plugin file not found: {p}")
                mod_name = f"dreamcore_plugin_{fp.stem}"
                if mod_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(mod_name, fp)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(p)
        except DreamcoreError:
            raise
        except Exception as e:
            raise DreamcoreError(f"plugin '{p}' failed to import: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------------------------
# typed parsing


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data`` (a dict), checking every key and type."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DreamcoreError(f"config '{path or '<root>'}' must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        hint = difflib.get_close_matches(str(k), fields, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        owner = f" for {path} '{data.get('name')}'" if "name" in fields and data.get("name") else ""
        raise DreamcoreError(
            f"unknown config key '{_where(path, k)}'{did}. Valid keys{owner}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if "component" in f.metadata:
                kwargs[name] = parse_component(f.metadata["component"], f.default_factory(), _where(path, name))  # type: ignore[misc]
            continue
        value = data[name]
        if "component" in f.metadata:
            if isinstance(value, dict) and "name" not in value:
                value = {**f.default_factory(), **value}  # type: ignore[misc]
            kwargs[name] = parse_component(f.metadata["component"], value, _where(path, name))
        else:
            kwargs[name] = convert(hints[name], value, _where(path, name))
    return cls(**kwargs)


def parse_component(kind: str, data: Any, path: str) -> Any:
    if isinstance(data, ComponentConfig):
        return data
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or not data.get("name"):
        raise DreamcoreError(f"config '{path}' needs a 'name' (one of: {', '.join(registry.names(kind))})")
    cls = registry.lookup(kind, data["name"])
    return parse(cls.Config, data, path)


def convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to type ``tp`` or raise naming ``where`` and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if tp is Scheduled:
        return Scheduled.parse(value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(a, value, where)
            except DreamcoreError as e:
                errors.append(str(e))
        raise DreamcoreError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise DreamcoreError(f"{where}: '{value}' is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise DreamcoreError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise DreamcoreError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise DreamcoreError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise DreamcoreError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise DreamcoreError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot ("1e-3") as strings
            try:
                return float(value)
            except ValueError:
                pass
        raise DreamcoreError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise DreamcoreError(f"{where}: expected a string, got {value!r}")
    raise DreamcoreError(f"{where}: unsupported config type {tp}")


# settings added after runs were recorded whose neutral value leaves a run as it was before they existed: key →
# (neutral value, what goes from the tree at that value). Hashes that name runs (batch job names, benchmark rows)
# leave them out (:func:`without_neutral`), so adding such a setting never renames or invalidates older runs; a
# new setting that does not change the default run belongs here
NEUTRAL_SETTINGS: dict[str, tuple[Any, Union[str, tuple[str, ...]]]] = {
    "image.path": ("", "image"),  # no picture: the whole image section is off
    # a density surface: the depth fusion's settings are unused
    "export.surface": ("density", ("export.surface", "export.fusion_views", "export.fusion_resolution",
                                   "export.fusion_truncation")),
    "representation.init_surface": ("density", "representation.init_surface"),  # DMTet's start from a run
    "eval.align": ("none", "eval.align"),
    "prior.reference.meshes": ({}, "prior.reference.meshes"),  # the reference prior's prompt → mesh map (editing)
    "run.step_seeds": (False, "run.step_seeds"),
    "run.picard": ({"window": 0, "threshold": 0.0, "workers": 0, "adapt": "none", "ema": 0.9}, "run.picard"),
}


def without_neutral(tree: dict) -> dict:
    """A copy of a config tree (:func:`to_tree`) without the :data:`NEUTRAL_SETTINGS` that are at their neutral
    value."""
    import copy

    tree = copy.deepcopy(tree)

    def find(dotted: str):
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        return (node, leaf) if isinstance(node, dict) else (None, leaf)

    for key, (neutral, drops) in NEUTRAL_SETTINGS.items():
        node, leaf = find(key)
        if node is not None and leaf in node and node[leaf] == neutral:
            for drop in (drops,) if isinstance(drops, str) else drops:
                parent, last = find(drop)
                if parent is not None:
                    parent.pop(last, None)
    return tree


def to_tree(obj: Any) -> Any:
    """A parsed config back to plain YAML-able data (what the run folder's ``config.yaml`` holds)."""
    if isinstance(obj, Scheduled):
        return obj.to_yaml()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_tree(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_tree(v) for k, v in obj.items()}
    return obj


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_tree(cfg), sort_keys=False)
