"""``dreamcore.systems`` when dreamcore runs from its checkout without being installed (``tools/gpu_check.py`` puts
the checkout on the path): the repository's ``systems/`` folder, loaded under this name.

An installed dreamcore never runs this file: the wheel maps ``systems/`` to ``dreamcore/systems`` (pyproject's
``package-dir``) and ships that folder's ``__init__.py`` in place of this one; an editable install finds the same
folder through the same mapping (or through this file, when the checkout is on the path)."""

import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

_folder = _Path(__file__).resolve().parents[2] / "systems"
_spec = _util.spec_from_file_location(__name__, _folder / "__init__.py", submodule_search_locations=[str(_folder)])
_module = _util.module_from_spec(_spec)
_sys.modules[__name__] = _module  # the import statement hands out the real package, not this stand-in
_spec.loader.exec_module(_module)
