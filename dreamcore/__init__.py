"""dreamcore: text-to-3D score distillation.

Layers (one package each): cameras, representations, renderers, priors, guidance, export, runner.
Parts are registered by name (:mod:`dreamcore.registry`) and chosen in YAML configs.

The Python API (:mod:`dreamcore.api`): ``dreamcore.generate(prompt, config=..., overrides={...}, run_dir=...)``
→ :class:`~dreamcore.api.Run`, ``dreamcore.edit(run_dir, prompt, source_prompt=..., region=...)`` → a new Run,
``dreamcore.load_run(path)``, ``dreamcore.resume(path)``,
``dreamcore.list_components()`` and ``dreamcore.register``. They are imported on first use, so ``import
dreamcore`` stays light (no torch) and the package itself depends on no layer above the core.
"""

import importlib

from dreamcore.errors import DreamcoreError

__version__ = "0.1.0"
API = ("generate", "edit", "resume", "load_run", "list_components", "register", "Run", "Render")
__all__ = ["DreamcoreError", "__version__", *API]


def __getattr__(name: str):
    """The API's names, from :mod:`dreamcore.api` when first used (PEP 562)."""
    if name in API:
        return getattr(importlib.import_module("dreamcore.api"), name)
    raise AttributeError(f"module 'dreamcore' has no attribute {name!r}")
