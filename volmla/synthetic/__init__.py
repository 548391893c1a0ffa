"""Synthetic volumes with exact ground truth: the CT phantom (and correlative data).

``from volmla.synthetic import phantom, write_phantom`` gives the lazy phantom and its
OME-Zarr writer (:mod:`volmla.synthetic.phantom`), built from the seeded catalogue
(:mod:`volmla.synthetic.catalogue`), the block renderer (:mod:`volmla.synthetic.render`)
and the counter-based noise (:mod:`volmla.synthetic.noise`).
"""

from __future__ import annotations

from volmla.synthetic.catalogue import PHASES, Catalogue
from volmla.synthetic.correlative import correlative_labels, simulate_element_maps
from volmla.synthetic.noise import normal_noise
from volmla.synthetic.phantom import Phantom, check_phantom_output, phantom, write_phantom
from volmla.synthetic.render import ATTENUATION, grain_block

__all__ = [
    "ATTENUATION",
    "PHASES",
    "Catalogue",
    "Phantom",
    "check_phantom_output",
    "correlative_labels",
    "grain_block",
    "normal_noise",
    "phantom",
    "simulate_element_maps",
    "write_phantom",
]
