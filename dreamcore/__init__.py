"""dreamcore: text-to-3D score distillation.

Layers (one package each): cameras, representations, renderers, priors, guidance, export, runner.
Parts are registered by name (:mod:`dreamcore.registry`) and chosen in YAML configs.
"""

from dreamcore.errors import DreamcoreError

__version__ = "0.1.0"
__all__ = ["DreamcoreError", "__version__"]
