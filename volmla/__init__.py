"""volmla: out-of-core 3D mineral liberation analysis of X-ray CT volumes.

One package per stage, in pipeline order: :mod:`volmla.ingest` -> :mod:`volmla.preprocess`
-> :mod:`volmla.segment` -> :mod:`volmla.particles` -> :mod:`volmla.measure` ->
:mod:`volmla.liberation`; :mod:`volmla.correlate` makes training labels from element maps,
:mod:`volmla.synthetic` phantoms with ground truth, :mod:`volmla.pipeline` whole runs. They
share the chunked engine (:mod:`volmla.engine`) and storage (:mod:`volmla.io`); the command
line (:mod:`volmla.cli`) is a thin layer over them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from volmla.errors import VolmlaError

if TYPE_CHECKING:
    from volmla.io import open_volume, write_volume

__all__ = ["VolmlaError", "open_volume", "write_volume", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``open_volume`` and ``write_volume`` on first use (PEP 562): importing ``volmla``
    (``volmla --version``, ``--help``) does not import Dask, xarray and Zarr."""
    if name in ("open_volume", "write_volume"):
        import volmla.io

        return getattr(volmla.io, name)
    raise AttributeError(f"module 'volmla' has no attribute {name!r}")
