"""Registry of named, typed components.

Each component class is registered under a kind ("representation", "renderer", "prior", "guidance",
"system", "background", ...) and a name, and carries a dataclass ``Config``.  YAML picks one by name::

    guidance:
      name: sds
      guidance_scale: 1.0

Adding a part never touches the runner: decorate the class with ``@register("guidance", "my-loss")``.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

from dreamcore.errors import DreamcoreError

T = TypeVar("T")

_REGISTRY: dict[str, dict[str, type]] = {}


def register(kind: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` selectable as ``{kind}.name: {name}``. ``cls.Config`` must be a dataclass."""

    def wrap(cls: type[T]) -> type[T]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not cls:
            raise DreamcoreError(f"{kind} '{name}' is registered twice ({table[name].__module__} and {cls.__module__})")
        if not hasattr(cls, "Config"):
            raise TypeError(f"{cls.__name__} needs a dataclass attribute 'Config' to be registered")
        table[name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    ensure_builtins()
    return sorted(_REGISTRY.get(kind, {}))


def lookup(kind: str, name: str) -> type:
    """The class registered as ``kind``/``name``; a :class:`DreamcoreError` lists the valid names otherwise."""
    ensure_builtins()
    table = _REGISTRY.get(kind, {})
    if name not in table:
        hint = difflib.get_close_matches(str(name), table, n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        raise DreamcoreError(
            f"unknown {kind} '{name}'.{did_you_mean} Valid {kind} names: {', '.join(sorted(table)) or '(none)'}"
        )
    return table[name]


def kinds() -> list[str]:
    ensure_builtins()
    return sorted(_REGISTRY)


_BUILTINS_LOADED = False


def ensure_builtins() -> None:
    """Import the modules that register dreamcore's own parts and the named systems (idempotent)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import dreamcore.builtins  # noqa: F401  (imports register everything)


def build(kind: str, cfg: Any, **kwargs: Any) -> Any:
    """Instantiate the registered class named by ``cfg.name`` with its parsed config."""
    cls = lookup(kind, cfg.name)
    return cls(cfg, **kwargs)
