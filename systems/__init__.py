"""Named recipes composing dreamcore's layers. Importing this package registers them.

This folder is the package ``dreamcore.systems``: the wheel installs it as ``dreamcore/systems`` (pyproject's
``package-dir``); in the checkout ``dreamcore/systems/__init__.py`` loads it under that name."""

from dreamcore.systems import dreamfusion  # noqa: F401
from dreamcore.systems import edit  # noqa: F401
from dreamcore.systems import gaussian  # noqa: F401
from dreamcore.systems import mesh  # noqa: F401
