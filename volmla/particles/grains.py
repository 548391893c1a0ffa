"""Grains: the connected components of each phase inside each particle.

1. every voxel gets the key ``particle_id * 256 + phase`` (uint64; 0 outside particles
   and for phase 0), block by block;
2. :func:`volmla.particles.label.label` in multilabel mode labels the components of each
   key, so a grain never crosses a particle or phase boundary, and numbers them ``1..n``
   by their first voxel.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_dataarray, as_volume, unsigned_ids
from volmla.errors import VolmlaError
from volmla.particles.label import Labels, check_connectivity, label
from volmla.types import VolumeLike

__all__ = ["label_grains", "particle_phase_arrays"]


def label_grains(particles: VolumeLike, phases: VolumeLike, *, connectivity: Literal[6, 18, 26] = 26) -> Labels:
    """Grains: connected components of one phase inside one particle.

    Parameters
    ----------
    particles
        Particle labels (0 = background; a negative id is refused).
    phases
        Phase volume (uint8, 0 = void) of the same shape.
    connectivity
        6, 18 or 26.

    Returns
    -------
    Labels
        Grain ids ``1..count`` as a lazy DataArray on the particles' grid (coordinates,
        voxel size); voxels outside particles or of phase 0 are 0.

    Examples
    --------
    >>> p = np.array([[[1, 1, 1, 2]]], np.uint32); f = np.array([[[1, 2, 1, 1]]], np.uint8)
    >>> label_grains(p, f).labels.values.tolist()
    [[[1, 2, 3, 4]]]
    """
    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    part, phase = particle_phase_arrays(particles, phases)
    key = da.map_blocks(_grain_key, part, phase, dtype=np.uint64, meta=np.empty((0, 0, 0), np.uint64))
    found = label(key, connectivity=connectivity, multilabel=True)
    grains = as_dataarray(found.labels.data, like=particles, name="grains", kind="labels",
                          record={"step": "grains", "connectivity": connectivity, "count": found.count})
    return Labels(grains, found.count)


def particle_phase_arrays(particles: VolumeLike, phases: VolumeLike) -> tuple[da.Array, da.Array]:
    """Particle labels and a phase volume as Dask arrays on one grid, checked.

    Parameters
    ----------
    particles
        Integer particle labels.
    phases
        uint8 phases of the same shape.

    Returns
    -------
    tuple of dask.array.Array
        ``(particles, phases)``, the phases rechunked to the particles' chunks.
    """
    part, phase = as_volume(particles, name="particles").data, as_volume(phases, name="phases").data
    if part.shape != phase.shape:
        raise VolmlaError(f"particles and phases must have the same shape, got {part.shape} and {phase.shape}")
    if not np.issubdtype(phase.dtype, np.integer) or phase.dtype.itemsize > 1:
        raise VolmlaError(f"phases must be uint8, got dtype {phase.dtype}")
    if not np.issubdtype(part.dtype, np.integer):
        raise VolmlaError(f"particles must be integer labels, got dtype {part.dtype}")
    # explicitly on one grid: map_blocks (dask 2026.8) does not rechunk operands on other grids
    return part, phase if phase.chunks == part.chunks else phase.rechunk(part.chunks)


def _grain_key(part: np.ndarray, phase: np.ndarray) -> np.ndarray:
    # a negative id would wrap to a huge key: refused, as the measurement refuses it
    part, phase = unsigned_ids(part, what="particle"), unsigned_ids(phase, what="phase")
    key = part.astype(np.uint64) * np.uint64(256) + phase.astype(np.uint64)
    key[(part == 0) | (phase == 0)] = 0
    return key
