"""Grains: the connected components of each phase inside each particle.

1. every voxel gets the key ``particle_id * 256 + phase`` (uint64; 0 outside particles
   and for phase 0), block by block;
2. :func:`volmla.particles.label.label` in multilabel mode labels the components of each
   key, so a grain never crosses a particle or phase boundary, and numbers them ``1..n``
   by their first voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_dataarray, as_volume, unsigned_ids
from volmla.errors import VolmlaError
from volmla.particles.label import Labels, check_connectivity, label
from volmla.types import VolumeLike

__all__ = ["check_phase_dtype", "label_grains", "particle_phase_arrays"]


def label_grains(particles: VolumeLike, phases: VolumeLike, *, connectivity: Literal[6, 18, 26] = 26) -> Labels:
    """Grains: connected components of one phase inside one particle.

    Parameters
    ----------
    particles
        Particle labels (0 = background; a negative id is refused).
    phases
        Phase volume (uint8, 0 = void) of the same shape; another integer dtype is
        read as uint8 when its values lie in 0..255 (one pass checks them).
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
        Phases of the same shape: uint8, or another integer dtype whose values lie in
        0..255 (checked in one pass, then read as uint8); others are refused.

    Returns
    -------
    tuple of dask.array.Array
        ``(particles, phases)``, the phases as uint8, rechunked to the particles' chunks.

    Raises
    ------
    VolmlaError
        When the shapes differ, the particles are not integer, or the phases are not
        integer ids in 0..255.
    """
    part = as_volume(particles, name="particles").data
    found = as_volume(phases, name="phases")
    phase, where = found.data, found.attrs.get("path") or "the phase volume"
    if part.shape != phase.shape:
        raise VolmlaError(f"particles and phases must have the same shape, got {part.shape} and {phase.shape}")
    check_phase_dtype(phase.dtype, where)
    if not np.issubdtype(part.dtype, np.integer):
        raise VolmlaError(f"particles must be integer labels, got dtype {part.dtype}")
    if phase.dtype != np.uint8:
        # another integer dtype (int8 from another tool, uint16): phase ids read as uint8,
        # as the measurement reads them; one pass checks they fit
        from volmla.engine.reduce import min_max

        lo, hi = (int(v) for v in min_max(phase)) if phase.size else (0, 0)
        if lo < 0 or hi > 255:
            raise VolmlaError(f"phases must be uint8 phase ids 0..255, but {where} ({phase.dtype}) holds "
                              f"{lo if lo < 0 else hi}")
        phase = phase.astype(np.uint8)
    # explicitly on one grid: map_blocks (dask 2026.8) does not rechunk operands on other grids
    return part, phase if phase.chunks == part.chunks else phase.rechunk(part.chunks)


def check_phase_dtype(dtype: np.dtype, where: str | Path) -> None:
    """Refuse a phase volume's dtype that cannot hold phase ids (float, bool).

    Any integer dtype is read as uint8 (the data contract's phases) once its values are
    checked to lie in 0..255 (:func:`particle_phase_arrays`, one pass).

    Parameters
    ----------
    dtype
        The phase volume's dtype.
    where
        The volume, for the message.

    Raises
    ------
    VolmlaError
        When ``dtype`` is not an integer dtype.

    Examples
    --------
    >>> check_phase_dtype(np.dtype(np.int8), "p.zarr")
    >>> check_phase_dtype(np.dtype(np.float32), "p.zarr")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: phases must be uint8 phase ids 0..255, but p.zarr is float32
    """
    if not np.issubdtype(dtype, np.integer):
        raise VolmlaError(f"phases must be uint8 phase ids 0..255, but {where} is {dtype}")


def _grain_key(part: np.ndarray, phase: np.ndarray) -> np.ndarray:
    # a negative id would wrap to a huge key: refused, as the measurement refuses it
    part, phase = unsigned_ids(part, what="particle"), unsigned_ids(phase, what="phase")
    key = part.astype(np.uint64) * np.uint64(256) + phase.astype(np.uint64)
    key[(part == 0) | (phase == 0)] = 0
    return key
