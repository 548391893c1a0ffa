"""Particles from a learned border/interior map: a U-Net's background / interior / boundary classes.

A U-Net trained with ``target="particles"`` (:func:`volmla.segment.train.train`; classes
:data:`volmla.segment.PARTICLE_CLASSES`: 0 background, 1 interior, 2 boundary, where a
particle voxel is *boundary* when a face neighbour belongs to the background or to
another particle) and run by :func:`volmla.segment.infer.segment` gives a class map from
which :func:`volmla.particles.label_particles` (``threshold="interior"``) takes:

1. **the solid**: every voxel the network calls interior or boundary. Learned from the
   scan's own grey in context, it follows partial volume, blur and noise better than a
   cut of the grey (hard phantoms: 2.4 % of the solid lost and 4.2 % added, against
   3.4 % and 5.9 % for the ``"auto"`` cut; ``benchmarks/bench_particles.py --learned``);
2. **the split's relief**: the distance map times :func:`interior_fill`, the interior
   class smoothed by a gaussian of :data:`INTERIOR_SIGMA` voxels. The boundary layer the
   network draws between touching particles lowers the relief there, so the saddle
   between two particles stays low even where blur has filled the crease between them
   (which fuses them in a cut of the grey). The markers are still the distance map's
   maxima, merged by the saddle-depth criterion of :func:`volmla.particles.split.merge_basins`,
   so a particle whose interior the network breaks into pieces is not split by that alone.

Both are pure per-block kernels (exact for any chunking through
:func:`volmla.engine.overlap.halo_map`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.segment import PARTICLE_CLASSES
from volmla.types import VolumeLike

INTERIOR = PARTICLE_CLASSES.index("interior")
"""Class id of a particle's interior in the map (:data:`volmla.segment.PARTICLE_CLASSES`)."""

CLASSES = len(PARTICLE_CLASSES)
"""Class ids of the map: 0 background, 1 interior, 2 boundary."""

MAP_PHASES = {i: name for i, name in enumerate(PARTICLE_CLASSES) if i > 0}
"""The phase names of a map volume as ``volmla segment`` writes it: ``{1: "interior", 2: "boundary"}``."""

INTERIOR_SIGMA = 0.5
"""Gaussian (voxels) of the interior class in :func:`interior_fill`."""

INTERIOR_HALO = math.ceil(4.0 * INTERIOR_SIGMA)
"""Halo of :func:`interior_fill` (its gaussian truncated at 4 sigma)."""

__all__ = ["CLASSES", "INTERIOR", "INTERIOR_HALO", "INTERIOR_SIGMA", "MAP_PHASES", "LearnedSolid", "check_particle_map",
           "interior_fill", "learned_solid"]


class LearnedSolid(NamedTuple):
    """The solid and the split's relief weight from a class map (:func:`learned_solid`)."""

    mask: da.Array
    """Lazy boolean solid: interior or boundary."""
    fill: da.Array
    """Lazy float32 weight in ``0..1``: :func:`interior_fill` per block."""


def interior_fill(block: np.ndarray) -> np.ndarray:
    """The interior class smoothed by a gaussian of :data:`INTERIOR_SIGMA`: the split's relief weight.

    Pure (SciPy's ``reflect`` boundary, so a halo of :data:`INTERIOR_HALO` makes it exact
    for any chunking).

    Parameters
    ----------
    block
        Class ids (0 background, 1 interior, 2 boundary).

    Returns
    -------
    numpy.ndarray
        float32 in ``0..1``, same shape: 1 deep inside a particle, lower towards its
        boundary layer, lowest between two touching particles.

    Examples
    --------
    >>> b = np.array([[[0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0]]], np.uint8)
    >>> w = interior_fill(b)[0, 0]
    >>> bool(w[3] > w[5] and w[8] > w[6] and w.max() <= 1)
    True
    """
    from scipy import ndimage as ndi

    core = (np.asarray(block) == INTERIOR).astype(np.float32)
    smooth = ndi.gaussian_filter(core, INTERIOR_SIGMA, mode="reflect", truncate=4.0)
    return np.clip(smooth, np.float32(0), np.float32(1)).astype(np.float32, copy=False)


def check_particle_map(phases: Any, where: Any) -> None:
    """Refuse reading a phase volume named otherwise as a particle map (``threshold="interior"``).

    A volume whose phase names are the map's (:data:`MAP_PHASES`), or that has none (a
    user's own map), is read as one; a volume whose phases are named otherwise (the
    minerals of a segmentation) is not a map: its phase 2 would be read as boundary.

    Parameters
    ----------
    phases
        The volume's phase names (``{id: name}``, its ``phases`` attribute), or None.
    where
        The volume, for the message.

    Raises
    ------
    VolmlaError
        When the volume has phase names that are not the map's.

    Examples
    --------
    >>> check_particle_map({1: "interior", 2: "boundary"}, "map.zarr")
    >>> check_particle_map({1: "quartz", 2: "pyrite"}, "phases.zarr")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: threshold=interior reads a particle map (phases background, interior, boundary); \
phases.zarr's phases are quartz, pyrite
    """
    if not phases:
        return
    try:
        names = {int(k): str(v) for k, v in dict(phases).items()}
    except (TypeError, ValueError):
        names = {}
    if names == MAP_PHASES:
        return
    listed = ", ".join(names[k] for k in sorted(names)) if names else str(phases)
    raise VolmlaError(f"threshold=interior reads a particle map (phases {', '.join(PARTICLE_CLASSES)}); "
                      f"{where}'s phases are {listed}")


def _check_classes(data: da.Array) -> None:
    """One pass: a class map holds integer ids 0..2 and some interior."""
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise VolmlaError(f"an interior/boundary map holds integer class ids 0, 1, 2, got dtype {data.dtype}")
    low, top, interior = da.compute(data.min(), data.max(), (data == INTERIOR).any())
    for value in (int(low), int(top)):
        if not 0 <= value < CLASSES:
            raise VolmlaError(f"an interior/boundary map holds class ids 0 (background), 1 (interior) and "
                              f"2 (boundary), but this volume holds {value}")
    if not bool(interior):
        raise VolmlaError("the interior/boundary map holds no interior voxel (class 1): no particle to label")


def learned_solid(volume: VolumeLike) -> LearnedSolid:
    """The solid and the split's relief weight from a U-Net's background / interior / boundary map.

    Parameters
    ----------
    volume
        Class ids (0 background, 1 interior, 2 boundary), e.g. ``volmla segment`` with a
        model trained on particle ids (``volmla train --target particles``).

    Returns
    -------
    LearnedSolid
        ``mask`` (lazy bool, interior or boundary) and ``fill`` (lazy float32,
        :func:`interior_fill` per block), with the volume's chunks.

    Raises
    ------
    VolmlaError
        When the volume is not integer, holds ids above 2 or no interior (one pass).

    Examples
    --------
    >>> m = np.zeros((6, 6, 12), np.uint8); m[1:5, 1:5, 1:11] = 2; m[2:4, 2:4, 2:10] = 1
    >>> found = learned_solid(m)
    >>> int(found.mask.sum().compute()), bool(found.fill.max().compute() <= 1)
    (160, True)
    """
    from volmla.engine.overlap import halo_map

    data = as_volume(volume, name="interior/boundary map").data
    _check_classes(data)
    halo = tuple(INTERIOR_HALO if n == 1 else min(INTERIOR_HALO, n - 1) for n in data.shape)
    fill = halo_map(data, interior_fill, halo=halo, boundary="reflect", dtype=np.float32)
    return LearnedSolid(data != 0, fill)
