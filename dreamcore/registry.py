"""Registry of named, typed components.

Each component class is registered under a kind ("representation", "renderer", "prior", "guidance",
"system", "background", ...) and a name, and carries a dataclass ``Config``.  YAML picks one by name::

    guidance:
      name: sds
      guidance_scale: 1.0

Adding a part never touches the runner: decorate the class with ``@register("guidance", "my-loss")``.
dreamcore's own parts are listed by module in :mod:`dreamcore.builtins` and imported on first lookup.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, TypeVar

from dreamcore.builtins import BUILTINS
from dreamcore.errors import DreamcoreError

T = TypeVar("T")

_REGISTRY: dict[str, dict[str, type]] = {}


def register(kind: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` selectable as ``{kind}.name: {name}``. ``cls.Config`` must be a dataclass."""

    def wrap(cls: type[T]) -> type[T]:
        table = _REGISTRY.setdefault(kind, {})
        builtin = BUILTINS.get(kind, {}).get(name)
        if builtin is not None and builtin != cls.__module__:
            raise DreamcoreError(f"{kind} '{name}' is a built-in name (of {builtin}); register {cls.__name__} "
                                 f"under another name")
        if name in table and table[name] is not cls:
            raise DreamcoreError(f"{kind} '{name}' is registered twice ({table[name].__module__} and {cls.__module__})")
        if not hasattr(cls, "Config"):
            raise TypeError(f"{cls.__name__} needs a dataclass attribute 'Config' to be registered")
        table[name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def names(kind: str) -> list[str]:
    """Registered names of one kind (built-in or registered by a plugin), sorted; imports nothing."""
    return sorted(set(_REGISTRY.get(kind, {})) | set(BUILTINS.get(kind, {})))


def lookup(kind: str, name: str) -> type:
    """The class registered as ``kind``/``name`` (a built-in part's module is imported on first use); a
    :class:`DreamcoreError` lists the valid names otherwise."""
    table = _REGISTRY.get(kind, {})
    if name not in table and name in BUILTINS.get(kind, {}):
        importlib.import_module(BUILTINS[kind][name])
        table = _REGISTRY.get(kind, {})
        if name not in table:
            raise RuntimeError(f"{BUILTINS[kind][name]} does not register {kind} '{name}' (dreamcore/builtins.py)")
    if name not in table:
        valid = names(kind)
        hint = difflib.get_close_matches(str(name), valid, n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        raise DreamcoreError(
            f"unknown {kind} '{name}'.{did_you_mean} Valid {kind} names: {', '.join(valid) or '(none)'}"
        )
    return table[name]


def kinds() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILTINS))


def load_builtins() -> None:
    """Import every built-in part's module (``dreamcore list`` and tests that inspect the classes)."""
    for table in BUILTINS.values():
        for module in sorted(set(table.values())):
            importlib.import_module(module)


def build(kind: str, cfg: Any, **kwargs: Any) -> Any:
    """Instantiate the registered class named by ``cfg.name`` with its parsed config."""
    cls = lookup(kind, cfg.name)
    return cls(cfg, **kwargs)
