"""Named recipes composing dreamcore's layers. Importing this package registers them."""

from systems import dreamfusion  # noqa: F401
from systems import gaussian  # noqa: F401
from systems import mesh  # noqa: F401
