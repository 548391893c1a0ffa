"""Synthetic volumes with exact ground truth: the CT phantom (and correlative data).

``from volmla.synthetic import phantom, write_phantom`` gives the lazy phantom and its
OME-Zarr writer (:mod:`volmla.synthetic.phantom`), built from the seeded catalogue
(:mod:`volmla.synthetic.catalogue`), the block renderer (:mod:`volmla.synthetic.render`)
and the counter-based noise (:mod:`volmla.synthetic.noise`).
``crushed_ore`` (:mod:`volmla.synthetic.crushed`) is the in-memory phantom that looks
like a real scan of crushed ore (touching irregular particles, partial volume, PSF,
cupping, rings, noise) with its truth from a finer grid.
"""

from __future__ import annotations

from volmla.synthetic.catalogue import PHASES, Catalogue
from volmla.synthetic.correlative import correlative_labels, simulate_element_maps
from volmla.synthetic.crushed import (
    GREY,
    LEVELS,
    MODAL_WEIGHTS,
    CrushedOre,
    crushed_ore,
    truth_liberation,
    write_crushed_ore,
)
from volmla.synthetic.noise import normal_noise
from volmla.synthetic.phantom import Phantom, check_phantom_output, phantom, write_phantom
from volmla.synthetic.render import ATTENUATION, grain_block
from volmla.synthetic.sem import SEM_CLASSES, SemSample, sem_image, write_sem_images

__all__ = [
    "ATTENUATION",
    "GREY",
    "LEVELS",
    "MODAL_WEIGHTS",
    "PHASES",
    "SEM_CLASSES",
    "Catalogue",
    "CrushedOre",
    "Phantom",
    "SemSample",
    "check_phantom_output",
    "correlative_labels",
    "crushed_ore",
    "grain_block",
    "normal_noise",
    "phantom",
    "sem_image",
    "simulate_element_maps",
    "truth_liberation",
    "write_crushed_ore",
    "write_phantom",
    "write_sem_images",
]
