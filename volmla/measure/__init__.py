"""Per-particle and per-grain measurements in one pass over the chunks.

The tables are reductions, never one mask or one task per label (the
``labeled_comprehension`` anti-pattern). :func:`measure` runs five steps, in modules of
one concern each:

1. the particle volume is cut into its Dask blocks (:mod:`volmla.measure.tables`:
   in-memory NumPy inputs into slabs of whole planes, or rows: contiguous views, never
   copied or hashed); phases (and grains) are rechunked to the same blocks;
2. a compiled kernel (:func:`block_partial`, :mod:`volmla.measure.partials` over
   :mod:`volmla.measure._scan`) reduces each block in a single pass to small partial
   tables keyed by the global label;
3. surface area and phase contacts are voxel-face counts: each block is measured as if
   alone, and a small task per block face (:func:`face_partial`) takes off the faces
   inside a particle that crosses it;
4. the partial tables are merged by label (:mod:`volmla.measure.merge`); every merged
   quantity is an integer, so the tables are the same for any chunking;
5. the derived columns (volume, ESD, surface, sphericity, centroid, box, grades) are
   built with their units (:mod:`volmla.measure.tables`); given the intensity, the
   boundary voxels are apportioned between pure grey levels in the same computation
   (:mod:`volmla.measure.fractions`: ``vfrac_<phase>``), and grades are over the solid
   phases only.

:func:`particle_table` and :func:`grain_table` return one table each; :func:`measure`
returns all of them (:class:`Tables`), with the phase-contact matrix.
"""

from __future__ import annotations

from volmla.measure.fractions import PhaseLevels, context_volume, fractional_volumes, phase_levels
from volmla.measure.partials import PARTIAL_COLUMNS, Rows, block_partial, face_partial
from volmla.measure.tables import (
    BACKGROUND,
    CONTACT_COLUMNS,
    GRAIN_COLUMNS,
    SOLID,
    SURFACE_CORRECTION,
    Tables,
    grain_table,
    measure,
    particle_columns,
    particle_table,
    resolve_phase_names,
    resolve_voxel_size,
)

__all__ = [
    "BACKGROUND",
    "CONTACT_COLUMNS",
    "GRAIN_COLUMNS",
    "PARTIAL_COLUMNS",
    "SOLID",
    "SURFACE_CORRECTION",
    "PhaseLevels",
    "Rows",
    "Tables",
    "block_partial",
    "context_volume",
    "face_partial",
    "fractional_volumes",
    "grain_table",
    "measure",
    "particle_columns",
    "particle_table",
    "phase_levels",
    "resolve_phase_names",
    "resolve_voxel_size",
]
