"""Particles: solid mask -> connected components -> watershed split -> labels.

:func:`label_particles` runs these steps on a chunked volume, never holding it whole:

1. **solid mask** (:func:`volmla.particles.mask.solid_mask`): a phase volume's nonzero
   voxels, or an intensity volume above a global threshold: a given value, or Otsu's
   threshold from an *out-of-core* histogram;
2. **interior pores filled** (optional, :func:`volmla.particles.mask.fill_holes`): exact
   for any chunking;
3. **dust removal** (optional, :func:`volmla.particles.mask.remove_small`): solid
   components smaller than ``min_size`` voxels are dropped;
4. **split touching particles** (optional, default,
   :func:`volmla.particles.split.split_touching`): a distance-transform watershed per
   block with a halo, each basin keyed by its marker's global position;
5. **global relabelling**: :func:`volmla.particles.label.label` in multilabel mode on the
   keys stitches the pieces of a basin across blocks (equal keys join, different keys
   stay apart) and numbers the particles ``1..n`` by their first voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dask.array as da

from volmla.engine.blocks import as_volume
from volmla.particles.label import Labels, check_connectivity, label
from volmla.particles.mask import fill_holes as _fill_holes
from volmla.particles.mask import remove_small, solid_mask
from volmla.particles.split import split_touching
from volmla.types import VolumeLike

__all__ = ["label_particles"]


def label_particles(
    volume: VolumeLike,
    *,
    threshold: Literal["otsu"] | float | None = "otsu",
    min_size: int = 0,
    fill_holes: bool = False,
    split: bool = True,
    h: float = 2.0,
    max_radius: float = 24.0,
    connectivity: Literal[6, 18, 26] = 26,
    scratch: str | Path | None = None,
) -> Labels:
    """Label the particles of a volume: threshold, fill pores, drop dust, split, relabel.

    Parameters
    ----------
    volume
        Intensity volume (thresholded), or a phase volume whose nonzero voxels are
        solid (give ``threshold=None``). Dask, xarray or NumPy, 3-D (z, y, x).
    threshold
        ``"otsu"`` (out-of-core histogram), a value (solid is ``> value``), or None
        (solid is nonzero).
    min_size
        Drop solid components smaller than this many voxels (0: keep all).
    fill_holes
        Fill interior pores (background not connected to the volume border).
    split
        Separate touching particles by a distance-transform watershed.
    h
        Minimal dynamic (voxels) of a distance maximum to seed its own particle; larger
        values split less.
    max_radius
        Largest particle radius (voxels) the split is exact for; sets the halo
        (:func:`volmla.particles.split.split_halo`).
    connectivity
        6, 18 or 26, for components and the watershed.
    scratch
        A folder (on storage every worker reaches) where the watershed keys are stored
        once, so the two labelling passes read them instead of recomputing the split.
        The caller removes it once the labels are written. None: recompute.

    Returns
    -------
    Labels
        Particle ids ``1..count`` (uint32), numbered by first voxel in C order.

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((8, 8, 8), np.uint8); vol[2:6, 2:6, 2:6] = 200
    >>> label_particles(vol, threshold=100).count
    1
    """
    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    # In-memory input stays one block: the split is exact across blocks only within
    # max_radius, so a NumPy volume gets the in-memory answer, as before.
    volume = as_volume(volume, chunks=getattr(volume, "shape", None)).data
    solid = solid_mask(volume, threshold=threshold)
    if fill_holes:
        solid = _fill_holes(solid)
    if min_size:
        solid = remove_small(solid, min_size=min_size, connectivity=connectivity)
    if not split:
        return label(solid, connectivity=connectivity)
    keys = split_touching(solid, h=h, max_radius=max_radius, connectivity=connectivity)
    if scratch is not None:
        keys = _stored(keys, Path(scratch) / "split-keys.zarr")
    return label(keys, connectivity=connectivity, multilabel=True)


def _stored(data: da.Array, path: Path) -> da.Array:
    """Write ``data`` to a scratch Zarr array once and read it back lazily.

    :func:`~volmla.particles.label.label` makes two passes over its input (scan, then relabel);
    storing the watershed keys first means the distance map and watershed run once.
    """
    from volmla.engine.cluster import compute

    data = data.rechunk(data.chunksize)
    compute([data.to_zarr(str(path), overwrite=True, compute=False)], desc="storing split keys")
    return da.from_zarr(str(path))
