"""Classical phase segmentation by intensity: multi-Otsu thresholds and k-means.

1. Histogram: one out-of-core pass (:func:`volmla.engine.reduce.histogram`: per-block
   ``bincount`` for integer volumes, else 4096 equal bins over the global range), summed
   over blocks. This global reduction and the k-means sample are the only computes here.
2. ``threshold``: multi-Otsu on that histogram (trimmed to the values present, rebinned
   to 256 bins) cuts K classes, numbered 0..K-1 by increasing intensity (0 = void).
3. ``kmeans``: K-means (best of 10 initialisations) fitted on a random sample of voxels
   drawn from every block (seeded per block), centres sorted by intensity, then every
   block is assigned to the nearest centre.

The random forest on filter features lives in :mod:`volmla.segment.forest`.
"""

from __future__ import annotations

import logging

import dask
import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

OTSU_BINS = 4096
"""Histogram bins for float volumes (integer volumes get one bin per value)."""

__all__ = [
    "OTSU_BINS",
    "kmeans_centres",
    "kmeans_segment",
    "multiotsu_thresholds",
    "threshold_segment",
]


def _check_classes(classes: int) -> int:
    if not isinstance(classes, int | np.integer) or not 2 <= classes <= 255:
        raise VolmlaError(f"classes must be an integer in 2..255, got {classes!r}")
    return int(classes)


# ----------------------------------------------------------------------------- threshold


def multiotsu_thresholds(volume: VolumeLike, *, classes: int = 3) -> np.ndarray:
    """Multi-Otsu thresholds (``classes - 1`` values) from the out-of-core histogram.

    Parameters
    ----------
    volume
        Intensity volume.
    classes
        Number of classes K (2..255).

    Returns
    -------
    numpy.ndarray
        ``K - 1`` increasing thresholds (float64).

    Examples
    --------
    >>> multiotsu_thresholds(np.array([[[0, 0, 10, 10]]], np.uint8), classes=2).tolist()
    [0.0]
    """
    from skimage.filters import threshold_multiotsu

    from volmla.engine.reduce import histogram

    classes = _check_classes(classes)
    hist = histogram(as_volume(volume).data, bins=OTSU_BINS)
    counts = hist.counts
    edges = hist.first + np.arange(len(counts) + 1, dtype=np.float64) * hist.width
    if hist.exact:  # one bin per grey value: edges between values, trimmed to the values present
        edges -= 0.5
        nz = np.flatnonzero(counts)
        first, last = (int(nz[0]), int(nz[-1])) if len(nz) else (0, 0)
        counts, edges = counts[first : last + 1], edges[first : last + 2]
    if len(counts) > 256:  # rebin: multi-Otsu's lookup table grows with bins squared
        new_edges = np.linspace(edges[0], edges[-1], 257)
        centres = (edges[:-1] + edges[1:]) / 2
        counts = np.histogram(centres, bins=new_edges, weights=counts)[0]
        edges = new_edges
    if np.count_nonzero(counts) < classes:
        raise VolmlaError(f"the volume has fewer than {classes} distinct intensities: cannot cut {classes} classes")
    centres = (edges[:-1] + edges[1:]) / 2
    return np.asarray(threshold_multiotsu(classes=classes, hist=(counts, centres)), dtype=np.float64)


def _digitize(block: np.ndarray, *, cuts: np.ndarray) -> np.ndarray:
    return np.digitize(block, cuts).astype(np.uint8)


def threshold_segment(volume: VolumeLike, *, classes: int = 3) -> da.Array:
    """K intensity classes (0..K-1 by increasing intensity) cut at multi-Otsu thresholds.

    Parameters
    ----------
    volume
        Intensity volume (NumPy, Dask or xarray).
    classes
        Number of classes K (2..255).

    Returns
    -------
    dask.array.Array
        Lazy uint8 class ids.

    Examples
    --------
    >>> phases = threshold_segment(vol, classes=4)  # doctest: +SKIP
    """
    data = as_volume(volume, name="intensity", finite=True).data
    cuts = multiotsu_thresholds(data, classes=classes)
    logger.info("multi-Otsu thresholds %s", cuts.tolist())
    return da.map_blocks(_digitize, data, cuts=cuts, dtype=np.uint8)


# ----------------------------------------------------------------------------- k-means


def _sample_block(block: np.ndarray, *, n: int, seed: int, index: int) -> np.ndarray:
    flat = block.ravel()
    rng = np.random.default_rng([seed, index])
    return flat[rng.integers(0, flat.size, size=min(n, flat.size))].astype(np.float64)


def kmeans_centres(volume: VolumeLike, *, classes: int = 3, sample: int = 200_000, seed: int = 0) -> np.ndarray:
    """K-means centres (sorted) of a random voxel sample drawn from every block.

    Parameters
    ----------
    volume
        Intensity volume.
    classes
        Number of clusters K (2..255).
    sample
        Voxels drawn in all (spread evenly over the blocks).
    seed
        Sampling and k-means seed.

    Returns
    -------
    numpy.ndarray
        The K centres, increasing.
    """
    from sklearn.cluster import KMeans

    from volmla.engine.cluster import compute

    classes = _check_classes(classes)
    data = as_volume(volume, name="intensity", finite=True).data
    blocks = data.to_delayed().ravel()
    per_block = max(1, int(np.ceil(sample / len(blocks))))
    parts = [dask.delayed(_sample_block)(b, n=per_block, seed=seed, index=i) for i, b in enumerate(blocks)]
    values = np.concatenate(compute(parts, desc="sampling voxels"))
    if len(np.unique(values)) < classes:
        raise VolmlaError(f"the volume has fewer than {classes} distinct intensities: cannot form {classes} clusters")
    fit = KMeans(n_clusters=classes, n_init=10, random_state=seed).fit(values[:, None])
    return np.sort(fit.cluster_centers_.ravel())


def kmeans_segment(volume: VolumeLike, *, classes: int = 3, sample: int = 200_000, seed: int = 0) -> da.Array:
    """K intensity classes by k-means, numbered 0..K-1 by increasing mean intensity.

    Parameters
    ----------
    volume
        Intensity volume (NumPy, Dask or xarray).
    classes
        Number of classes K (2..255).
    sample
        Voxels drawn to fit the centres.
    seed
        Sampling and k-means seed.

    Returns
    -------
    dask.array.Array
        Lazy uint8 class ids.

    Examples
    --------
    >>> phases = kmeans_segment(vol, classes=4, seed=0)  # doctest: +SKIP
    """
    data = as_volume(volume, name="intensity", finite=True).data
    centres = kmeans_centres(data, classes=classes, sample=sample, seed=seed)
    logger.info("k-means centres %s", centres.tolist())
    return da.map_blocks(_digitize, data, cuts=(centres[1:] + centres[:-1]) / 2, dtype=np.uint8)
