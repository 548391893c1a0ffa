"""Synthetic volumes with exact ground truth: the CT phantom (and correlative data).

``from volmla.synthetic import phantom, write_phantom`` gives the lazy phantom and its
OME-Zarr writer (see :mod:`volmla.synthetic.phantom`).
"""

from __future__ import annotations

from volmla.synthetic.correlative import correlative_labels, simulate_element_maps  # noqa: F401
from volmla.synthetic.phantom import ATTENUATION as ATTENUATION
from volmla.synthetic.phantom import PHASES as PHASES
from volmla.synthetic.phantom import Phantom as Phantom
from volmla.synthetic.phantom import check_phantom_output as check_phantom_output
from volmla.synthetic.phantom import phantom as phantom
from volmla.synthetic.phantom import write_phantom as write_phantom
