"""volmla: out-of-core 3D mineral liberation analysis of X-ray CT volumes.

One package per stage, in pipeline order: :mod:`volmla.ingest` -> :mod:`volmla.preprocess`
-> :mod:`volmla.segment` -> :mod:`volmla.particles` -> :mod:`volmla.measure` ->
:mod:`volmla.liberation`; :mod:`volmla.correlate` makes training labels from element maps,
:mod:`volmla.synthetic` phantoms with ground truth, :mod:`volmla.pipeline` whole runs. They
share the chunked engine (:mod:`volmla.engine`) and storage (:mod:`volmla.io`); the command
line (:mod:`volmla.cli`) is a thin layer over them.
"""

from __future__ import annotations

from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume

__all__ = ["VolmlaError", "open_volume", "write_volume", "__version__"]
__version__ = "0.1.0"
