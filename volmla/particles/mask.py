"""The solid mask and its clean-up: threshold, pore filling, dust removal.

Steps 1-3 of :func:`volmla.particles.label_particles`, each a lazy mask over the chunks
(the eager passes are small reductions):

1. **threshold**: a phase volume's nonzero voxels, or an intensity volume above a
   global threshold read off the out-of-core histogram of
   :func:`volmla.engine.reduce.histogram` (every integer value its own bin for
   8/16-bit data, :data:`HIST_BINS` bins between the global minimum and maximum
   otherwise): by default (``"auto"``, :func:`auto_threshold`) the volume is first
   denoised (a gaussian of :data:`DENOISE_SIGMA` voxels, from
   :mod:`volmla.preprocess`) and cut half-way between its void and solid modes (the
   histogram's highest bins below and above Otsu's threshold), which is where a
   boundary voxel half filled with solid lies: Otsu's threshold sits wherever the
   class sizes and spreads put it, and loses or adds a shell of partial-volume voxels
   around every particle. Or Otsu's threshold (:func:`otsu_threshold`), or a value;
2. **fill interior pores** (:func:`fill_holes`): the background is labelled
   (6-connected, like :func:`scipy.ndimage.binary_fill_holes`), the components present
   on the volume's six faces are read from the border planes, and every other
   background component is a hole and becomes solid. Exact for any chunking;
3. **drop dust** (:func:`remove_small`): solid components smaller than ``min_size``
   voxels are dropped; their sizes (:func:`component_sizes`) come from per-block
   ``fastremap.unique`` counts merged by label.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume, map_reduce
from volmla.engine.reduce import Histogram, histogram, otsu
from volmla.errors import VolmlaError
from volmla.particles.label import Labels, check_connectivity, label
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

HIST_BINS = 4096
"""Histogram bins for Otsu's threshold on float or 32/64-bit data."""

DENOISE_SIGMA = 0.5
"""Gaussian (voxels) applied before the ``"auto"`` threshold."""

__all__ = [
    "DENOISE_SIGMA",
    "HIST_BINS",
    "auto_threshold",
    "component_sizes",
    "fill_holes",
    "mode_midpoint",
    "otsu_threshold",
    "remove_small",
    "solid_mask",
]


# --------------------------------------------------------------------------- step 1


def otsu_threshold(volume: VolumeLike) -> float:
    """Otsu's threshold of a chunked volume from its out-of-core histogram.

    The histogram is :func:`volmla.engine.reduce.histogram`'s: one bin per value for
    integer data (exact), ``HIST_BINS`` bins between the global minimum and maximum
    otherwise; :func:`volmla.engine.reduce.otsu` reads the threshold off it.

    Parameters
    ----------
    volume
        3-D intensity volume (NumPy, Dask or xarray; boolean counts as 0/1).

    Returns
    -------
    float
        The threshold; the bright class lies above it.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.array([[[10, 10, 200, 200]]], np.uint8), chunks=2)
    >>> 10 <= otsu_threshold(x) < 200
    True
    """
    data = as_volume(volume).data
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    hist = histogram(data, bins=HIST_BINS)
    if np.count_nonzero(hist.counts) < 2:
        raise VolmlaError("cannot threshold a constant volume: give threshold=VALUE")
    return otsu(hist)  # empty end bins trimmed, as threshold_otsu's own image path does


def mode_midpoint(hist: Histogram) -> float:
    """Half-way between the void and solid modes of a histogram (the partial-volume edge).

    The modes are the highest bins below and above Otsu's threshold, after a light
    smoothing of the counts (a gaussian of 1 % of the occupied range, so single-bin
    spikes of integer data do not decide).

    Parameters
    ----------
    hist
        From :func:`volmla.engine.reduce.histogram`.

    Returns
    -------
    float
        The threshold; the solid lies above it.

    Examples
    --------
    >>> from volmla.engine.reduce import histogram
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(50, 5, 6000), rng.normal(150, 20, 2000)]).astype(np.uint8)
    >>> 95 < mode_midpoint(histogram(x.reshape(8, 10, 100))) < 105
    True
    """
    from scipy.ndimage import gaussian_filter1d

    counts = np.asarray(hist.counts, np.float64)
    used = np.flatnonzero(counts)
    if len(used) < 2:
        raise VolmlaError("cannot threshold a constant volume: give threshold=VALUE")
    first, last = int(used[0]), int(used[-1])
    smooth = gaussian_filter1d(counts[first : last + 1], max(0.01 * (last - first), 0.5), mode="constant")
    cut = int(np.clip(math.floor((otsu(hist) - hist.first) / hist.width) - first, 0, last - first - 1))
    void = int(np.argmax(smooth[: cut + 1]))
    solid = cut + 1 + int(np.argmax(smooth[cut + 1 :]))
    centre = (void + solid) / 2 + first + (0.0 if hist.exact else 0.5)  # exact bins hold one value each
    return float(hist.first + centre * hist.width)


def auto_threshold(volume: VolumeLike) -> float:
    """The ``"auto"`` threshold: :func:`mode_midpoint` of the volume's out-of-core histogram.

    Parameters
    ----------
    volume
        3-D intensity volume (already denoised, as :func:`solid_mask` does).

    Returns
    -------
    float
        The threshold; the solid lies above it.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.array([[[10, 10, 11, 9, 200, 201, 199, 200]]], np.uint8), chunks=2)
    >>> auto_threshold(x)
    105.0
    """
    data = as_volume(volume).data
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    return mode_midpoint(histogram(data, bins=HIST_BINS))


def solid_mask(
    volume: VolumeLike, *, threshold: Literal["auto", "otsu"] | float | None = "auto"
) -> da.Array:
    """Lazy boolean solid mask: ``volume > threshold``, or nonzero when ``threshold`` is None.

    Parameters
    ----------
    volume
        Intensity (with a threshold) or phase volume (``threshold=None``).
    threshold
        ``"auto"`` (the volume denoised by a gaussian of :data:`DENOISE_SIGMA` voxels,
        then :func:`auto_threshold`: one eager pass, two for float data), ``"otsu"``
        (:func:`otsu_threshold` of the volume as it is), a number, or None.

    Returns
    -------
    dask.array.Array
        Lazy boolean mask with the volume's chunks.

    Examples
    --------
    >>> solid_mask(np.array([[[0, 3]]]), threshold=None).compute().tolist()
    [[[False, True]]]
    """
    data = as_volume(volume, finite=True).data
    if threshold is None:
        return data != 0
    if isinstance(threshold, str):
        if threshold == "auto":
            from volmla.preprocess import gaussian

            smooth = as_volume(gaussian(data, sigma=DENOISE_SIGMA)).data
            value = auto_threshold(smooth)
            logger.info("auto threshold %g (denoised, half-way between the void and solid modes)", value)
            return smooth > value
        if threshold != "otsu":
            raise VolmlaError(f"threshold must be 'auto', 'otsu', a number or None, got {threshold!r}")
        value = otsu_threshold(data)
        logger.info("Otsu threshold %g", value)
    else:
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise VolmlaError(f"threshold must be 'auto', 'otsu', a number or None, got {threshold!r}") from None
        if not math.isfinite(value):
            raise VolmlaError(f"threshold must be finite, got {threshold!r}")
    return data > value


# --------------------------------------------------------------------------- steps 2-3


def _border_planes(labels: da.Array) -> list[da.Array]:
    return [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]


def _drop_ids(block: np.ndarray, ids: np.ndarray, *, keep: bool) -> np.ndarray:
    hit = np.isin(block, ids, kind="sort") if len(ids) else np.zeros(block.shape, bool)
    return (block > 0) & (hit if keep else ~hit)


def fill_holes(solid: VolumeLike) -> da.Array:
    """Fill interior pores: background components that do not reach the volume border.

    Same result as :func:`scipy.ndimage.binary_fill_holes` on the whole array
    (6-connected background), for any chunking. Two eager passes (labelling the
    background, reading its border planes).

    Parameters
    ----------
    solid
        3-D boolean (or 0/1) mask.

    Returns
    -------
    dask.array.Array
        Lazy boolean mask: ``solid`` with its interior pores set.

    Examples
    --------
    >>> m = np.ones((3, 3, 3), bool); m[1, 1, 1] = False
    >>> bool(fill_holes(m).compute().all())
    True
    """
    from volmla.engine.cluster import compute

    mask = as_volume(solid, name="solid").data.astype(bool)
    background = label(~mask, connectivity=6)
    planes = compute(_border_planes(background.labels), desc="border of the background")
    border = np.unique(np.concatenate([np.unique(p) for p in planes]))
    border = border[border > 0]
    logger.info("%d background components, %d reach the border", background.count, len(border))
    holes = da.map_blocks(
        _drop_ids, background.labels, border, keep=False, dtype=bool, meta=np.empty((0, 0, 0), bool)
    )
    return mask | holes


def _block_counts(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import fastremap

    ids, counts = fastremap.unique(np.asarray(block), return_counts=True)
    return ids, counts


def component_sizes(labels: Labels) -> np.ndarray:
    """Voxel count of every label ``0..count`` (per-block counts merged; one eager pass).

    Parameters
    ----------
    labels
        From :func:`volmla.particles.label.label`.

    Returns
    -------
    numpy.ndarray
        int64, ``sizes[k]`` the voxels of label ``k`` (``sizes[0]`` the background).

    Examples
    --------
    >>> component_sizes(label(np.array([[[1, 1, 0, 1]]]), connectivity=6)).tolist()
    [1, 2, 1]
    """
    sizes = np.zeros(labels.count + 1, np.int64)
    for ids, counts in map_reduce(labels.labels, _block_counts, desc="component sizes"):
        np.add.at(sizes, ids.astype(np.int64), counts)
    return sizes


def remove_small(solid: VolumeLike, *, min_size: int, connectivity: Literal[6, 18, 26] = 26) -> da.Array:
    """Drop solid components smaller than ``min_size`` voxels (lazy mask; two eager passes).

    Parameters
    ----------
    solid
        3-D boolean (or 0/1) mask.
    min_size
        Smallest component kept, in voxels (0 or 1: keep all).
    connectivity
        6, 18 or 26, for the components.

    Returns
    -------
    dask.array.Array
        Lazy boolean mask without the small components.

    Examples
    --------
    >>> m = np.zeros((1, 1, 6), bool); m[0, 0, :1] = m[0, 0, 3:] = True
    >>> remove_small(m, min_size=2).compute().astype(int).tolist()
    [[[0, 0, 0, 1, 1, 1]]]
    """
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise VolmlaError(f"min_size must be a non-negative integer (voxels), got {min_size!r}")
    mask = as_volume(solid, name="solid").data.astype(bool)
    if min_size <= 1:
        return mask
    components = label(mask, connectivity=check_connectivity(connectivity))  # type: ignore[arg-type]
    sizes = component_sizes(components)
    small = np.flatnonzero(sizes[1:] < min_size) + 1
    big = np.flatnonzero(sizes[1:] >= min_size) + 1
    logger.info("dust: %d of %d components below %d voxels", len(small), components.count, min_size)
    keep, ids = (True, big) if len(big) < len(small) else (False, small)
    return da.map_blocks(
        _drop_ids, components.labels, ids.astype(components.labels.dtype), keep=keep, dtype=bool,
        meta=np.empty((0, 0, 0), bool),
    )
