"""volmla: out-of-core 3D mineral liberation analysis of X-ray CT volumes."""

from __future__ import annotations

from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume

__all__ = ["VolmlaError", "open_volume", "write_volume", "__version__"]
__version__ = "0.1.0"
