"""Simulated 3-D breakage of unbroken material (a scanned drill core or rock piece).

``from volmla.breakage import breakage, break_volume``: fracture a phase volume into
fragments at a size law (:mod:`volmla.breakage.fracture`: Laguerre cells of seeds drawn
at a Rosin-Rammler or Gates-Gaudin-Schuhmann law with a given P80, fractures bent to
phase boundaries by a weight, detachment of grains), label them as particles, measure
their liberation, and sweep grind sizes and realisations into a liberation curve
(:mod:`volmla.breakage.sweep`; orchestration in :mod:`volmla.breakage.api`).
"""

from __future__ import annotations

from volmla.breakage.api import (
    MAX_PHASES,
    Breakage,
    Fragments,
    Law,
    break_volume,
    breakage,
    check_phases,
)
from volmla.breakage.fracture import (
    LAWS,
    MIN_FRAGMENT,
    LawFit,
    Seeds,
    SizeLaw,
    fit_size_law,
    size_law,
)
from volmla.breakage.sweep import curve_intervals, grind_sizes, measured_law, measured_p80

__all__ = [
    "LAWS",
    "MAX_PHASES",
    "MIN_FRAGMENT",
    "Breakage",
    "Fragments",
    "Law",
    "LawFit",
    "Seeds",
    "SizeLaw",
    "break_volume",
    "breakage",
    "check_phases",
    "curve_intervals",
    "fit_size_law",
    "grind_sizes",
    "measured_law",
    "measured_p80",
    "size_law",
]
