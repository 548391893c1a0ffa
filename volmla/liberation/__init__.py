"""Liberation statistics from the particle table, and the analysis that writes them.

All statistics are computed from the per-particle table of :mod:`volmla.measure` over
the particles that do not touch the volume border (``include_border=False``, the
default). The package reads as the analysis does:

- :mod:`~volmla.liberation.stats`: pure DataFrame statistics: modal mineralogy,
  liberation degree (Eq. 1) and by size class (Eq. 2), the liberation spectrum
  (12 grade classes, encoding in its docstring), locking, association and the
  theoretical grade-recovery curves;
- :mod:`~volmla.liberation.uncertainty`: bootstrap 95 % intervals of LD and modal
  mineralogy;
- :mod:`~volmla.liberation.subvolumes`: the representativeness check (size
  frequencies over equal sub-volumes, t-based 95 % intervals);
- :mod:`~volmla.liberation.sectioning`: virtual 2-D sections of the volumes and the
  stereological comparison of 2-D with 3-D liberation;
- :mod:`~volmla.liberation.summary`: the ``summary.json`` data contract
  (:class:`Summary`) and :func:`liberation_summary`;
- :mod:`~volmla.liberation.analysis`: :func:`analyse`, which checks its options once,
  measures, computes all of the above and writes the outputs atomically;
- :mod:`~volmla.liberation.report`: the PNG plots and the self-contained HTML report.
"""

from __future__ import annotations

from volmla.liberation.analysis import analyse, check_options, check_out_dir, check_volumes
from volmla.liberation.sectioning import section_table, sections, stereology
from volmla.liberation.stats import (
    DEFAULT_SIZE_CLASSES,
    LOCKING_CLASSES,
    SPECTRUM_CLASSES,
    SizeBy,
    association,
    check_densities,
    default_size_edges,
    grade_class,
    grade_recovery,
    liberation_by_size,
    liberation_degree,
    liberation_spectrum,
    locking,
    modal_mineralogy,
    size_class,
)
from volmla.liberation.subvolumes import PieceGrid, check_pieces, representativeness
from volmla.liberation.summary import Summary, liberation_summary
from volmla.liberation.uncertainty import Interval, Uncertainty, bootstrap

__all__ = [
    "DEFAULT_SIZE_CLASSES",
    "LOCKING_CLASSES",
    "SPECTRUM_CLASSES",
    "Interval",
    "PieceGrid",
    "SizeBy",
    "Summary",
    "Uncertainty",
    "analyse",
    "association",
    "bootstrap",
    "check_densities",
    "check_options",
    "check_out_dir",
    "check_pieces",
    "check_volumes",
    "default_size_edges",
    "grade_class",
    "grade_recovery",
    "liberation_by_size",
    "liberation_degree",
    "liberation_spectrum",
    "liberation_summary",
    "locking",
    "modal_mineralogy",
    "representativeness",
    "section_table",
    "sections",
    "size_class",
    "stereology",
]
