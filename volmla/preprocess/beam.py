"""Radial profiles about the rotation axis and the beam-hardening (cupping) correction.

A cylindrical sample scanned with a polychromatic beam looks darker in its middle than at
its rim ("cupping"). Both tools here work per integer radius, the distance of a voxel
from the z axis through ``center``:

1. :func:`radial_profile` sums the values (and counts the voxels) at each radius out of
   core; the sums are exact fixed-point integers, so they do not depend on the chunking
   (rings suppression, :mod:`volmla.preprocess.ring_artefacts`, uses it too);
2. :func:`beam_hardening` measures the cupping on one reference phase from a joint
   (radius, intensity) histogram, fits a polynomial in ``r^2`` to it and divides it out
   pointwise; its docstring narrates the steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.engine.reduce import Histogram, block_tables, histogram, min_max, otsu
from volmla.errors import VolmlaError
from volmla.preprocess._params import check_center, check_params
from volmla.preprocess._wiring import LazyVolume, like, pointwise_at
from volmla.preprocess.kernels import (
    _cupping_kernel,
    _float_dtype,
    _radial_block,
    _radial_hist_block,
    plane_r2,
)
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["RadialProfile", "beam_hardening", "radial_profile"]


class RadialProfile(NamedTuple):
    """Per-integer-radius sums (intensity units), voxel counts and mean squared radius."""

    sums: np.ndarray
    counts: np.ndarray
    r2: np.ndarray
    center: tuple[float, float]

    @property
    def mean(self) -> np.ndarray:
        """Mean value per radius bin (NaN where empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)


def _fixed_point_scale(maxabs: float, count: int, integer: bool) -> float:
    """Power-of-two scale so that ``count`` values up to ``maxabs`` sum exactly in float64."""
    if maxabs <= 0:
        return 1.0
    scale = 2.0 ** math.floor(math.log2(2.0**52 / (maxabs * max(count, 1))))
    return min(scale, 1.0) if integer else scale


def _center_of(data: da.Array, center: tuple[float, float] | None) -> tuple[float, float]:
    """``center``, or the xy centre of ``data`` when it is ``None``."""
    if center is not None:
        return center
    return ((data.shape[1] - 1) / 2.0, (data.shape[2] - 1) / 2.0)


def _radius_bins(shape: Sequence[int], center: Sequence[float]) -> int:
    """Integer radii ``0 .. r_max`` of a plane: ``r_max`` is the farthest corner's."""
    ny, nx = shape[1:]
    corners = [math.hypot(y - center[0], x - center[1]) for y in (0, ny - 1) for x in (0, nx - 1)]
    return int(max(corners)) + 1


def radial_profile(
    volume: VolumeLike,
    *,
    center: tuple[float, float] | None = None,
    threshold: float | None = None,
    maxabs: float | None = None,
) -> RadialProfile:
    """Per-integer-radius (distance from the z axis through ``center``) sums and counts.

    A global reduction (computes ``volume``). Values (and squared radii) are summed in
    fixed point with a power-of-two scale chosen from ``maxabs`` (default: the range from
    a min/max pass) and the number of voxels, so the sums are exact integers and do not
    depend on the chunking; the relative rounding is below ``2**-52 * n_voxels``.

    Parameters
    ----------
    volume
        3-D volume (NumPy, Dask or xarray).
    center
        ``(y, x)`` of the axis in voxels (default: the xy centre).
    threshold
        Only voxels above it are counted (default: all).
    maxabs
        Bound on ``|value|`` (default: from a min/max pass).

    Returns
    -------
    RadialProfile
        ``sums``, ``counts`` and mean ``r2`` per integer radius, and the ``center`` used.

    Examples
    --------
    >>> prof = radial_profile(da.ones((2, 3, 3), dtype=np.uint8))
    >>> prof.counts.tolist(), prof.mean.tolist(), prof.r2.tolist()
    ([2, 16], [1.0, 1.0], [0.0, 1.5])
    """
    from volmla.engine.cluster import compute

    data = as_volume(volume, name="intensity", finite=True).data
    c = _center_of(data, check_center(center))
    nbins = _radius_bins(data.shape, c)
    if maxabs is None:
        lo, hi = min_max(data)
        maxabs = max(abs(lo), abs(hi))
    scale = _fixed_point_scale(maxabs, data.size, bool(np.issubdtype(data.dtype, np.integer)))
    r2_scale = _fixed_point_scale(float(nbins) ** 2, data.size, False)
    table = block_tables(data, _radial_block, 3 * nbins, center=c, nbins=nbins, threshold=threshold,
                         scale=scale, r2_scale=r2_scale)
    (total,) = compute([table], desc="radial profile")
    sums, counts, r2_sums = np.asarray(total, np.int64).reshape(3, nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(counts > 0, r2_sums / r2_scale / np.maximum(counts, 1), np.nan)
    return RadialProfile(sums.astype(np.float64) / scale, counts, r2, c)


_BH_BINS = 1024
"""Intensity bins of beam-hardening's joint (radius, intensity) histogram."""
_BH_ITERATIONS = 20
_BIMODAL = 0.8


def _ring_r2(ny: int, nx: int, center: Sequence[float], nbins: int) -> np.ndarray:
    """Mean squared radius of the plane's pixels in each integer-radius bin (NaN where empty)."""
    sums, counts = np.zeros(nbins), np.zeros(nbins)
    step = max(1, 2**20 // max(nx, 1))
    for y0 in range(0, ny, step):
        rows = min(step, ny - y0)
        r2 = plane_r2((1, rows, nx), (0, y0, 0), center).ravel()
        k = np.sqrt(r2).astype(np.int64)
        sums += np.bincount(k, weights=r2, minlength=nbins)
        counts += np.bincount(k, minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _window_medians(table: np.ndarray, edges: np.ndarray, low: np.ndarray, high: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-radius median and count of the binned values inside ``(low[k], high[k]]``.

    Counts are spread uniformly within a bin, so a window edge may cut a bin.
    """
    medians, counts = np.full(len(table), np.nan), np.zeros(len(table))
    for k, h in enumerate(table):
        left, right = np.clip(edges[:-1], low[k], high[k]), np.clip(edges[1:], low[k], high[k])
        inside = h * (right - left) / (edges[1:] - edges[:-1])
        n = float(inside.sum())
        counts[k] = n
        if n <= 0:
            continue
        cum = np.cumsum(inside)
        j = int(np.searchsorted(cum, 0.5 * n))
        before = cum[j - 1] if j else 0.0
        medians[k] = left[j] + (0.5 * n - before) / inside[j] * (right[j] - left[j])
    return medians, counts


def _bright_split(hist: Histogram, threshold: float) -> float | None:
    """Otsu split of the values above ``threshold`` when they form two clear modes, the upper the smaller.

    Otsu's separability (between-class over total variance) is at most 3/4 for a unimodal
    distribution (a uniform one reaches it); above ``_BIMODAL`` the split is taken to
    separate a dominant phase from a brighter, less abundant one.
    """
    centers = hist.centers
    keep = (centers > threshold) & (hist.counts > 0)
    if int(keep.sum()) < 2:
        return None
    v, c = centers[keep], hist.counts[keep].astype(np.float64)
    split = otsu(Histogram(np.where(keep, hist.counts, 0), hist.first, hist.width, hist.exact))
    below = v <= split
    n0, n1 = c[below].sum(), c[~below].sum()
    if n0 <= 0 or n1 <= 0 or n1 >= n0:
        return None
    u = (v - v[0]) / (v[-1] - v[0])  # the ratio is scale-free; huge values would overflow its squares
    mean = (c * u).sum() / c.sum()
    total = (c * (u - mean) ** 2).sum() / c.sum()
    m0, m1 = (c[below] * u[below]).sum() / n0, (c[~below] * u[~below]).sum() / n1
    between = n0 * n1 / c.sum() ** 2 * (m0 - m1) ** 2
    return split if total > 0 and between / total > _BIMODAL else None


def beam_hardening(
    volume: VolumeLike,
    *,
    threshold: float | None = None,
    upper: float | None = None,
    center: tuple[float, float] | None = None,
    order: int = 2,
    min_count: int = 16,
) -> LazyVolume:
    """Radial cupping (beam-hardening) correction for cylindrical samples.

    The cupping is measured on one *reference* material, the dominant solid phase, so
    that phases whose abundance changes with the radius do not bend the profile:

    1. the reference is the voxels in ``(threshold, upper]``: ``threshold`` separates the
       solid from the background (default Otsu's threshold of the out-of-core
       :func:`~volmla.engine.reduce.histogram`); ``upper`` leaves out a brighter minor phase (sulphides,
       metals). By default it is Otsu's split of the values above ``threshold`` when
       they form two clear modes (Otsu separability above 0.8, which no unimodal
       distribution reaches) and the brighter one holds fewer voxels; else there is no
       upper bound;
    2. a joint histogram of integer radius (distance from the z axis through
       ``center``) and intensity (1024 bins over the volume's range) is computed out of
       core (integer counts, so independent of the chunking);
    3. per radius, the median of the reference values is taken from that table (a
       median, not a mean: the tails of neighbouring phases and partial-volume voxels
       inside the window barely move it), and a polynomial of degree ``order`` in
       ``r^2`` is fitted to it (weighted by the counts; radii with fewer than
       ``min_count`` reference voxels are left out);
    4. the window then follows the fitted profile (``threshold`` and ``upper`` scaled
       by it at each radius) and step 3 is repeated until the profile settles, so a
       cupping wider than the window's margin still keeps each radius's reference
       inside it;
    5. every voxel is divided by the fitted profile at its radius (beyond the last
       fitted radius, the profile there) and multiplied by its count-weighted mean
       level, so the reference stays at its mean intensity. Pointwise, no halo;
       float32 output.

    The reductions compute the input (two or three passes). Runs on the CPU.

    Parameters
    ----------
    volume
        3-D intensity volume (NumPy, Dask or xarray).
    threshold
        Lower bound of the reference window in intensity units (default Otsu).
    upper
        Upper bound of the reference window (default: automatic, step 1; a value above
        the volume's maximum means no bound).
    center
        ``(y, x)`` of the cylinder axis in voxels (default the xy centre).
    order
        Polynomial degree in ``r^2`` (1..4).
    min_count
        Minimum reference voxels for a radius to enter the fit.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step, with the fitted profile, added to
        its provenance).

    Examples
    --------
    >>> y, x = np.mgrid[:32, :32] - 15.5
    >>> cupped = np.broadcast_to((1000 + 2 * (y**2 + x**2)).astype(np.uint16), (4, 32, 32))
    >>> out = beam_hardening(da.from_array(cupped), threshold=0.0).compute()
    >>> bool(np.ptp(out) < 0.02 * np.ptp(cupped))  # integer radii leave ~1.3 %
    True
    """
    from volmla.engine.cluster import compute

    p = check_params("beam-hardening", dict(threshold=threshold, upper=upper, center=center, order=order,
                                            min_count=min_count))
    data = as_volume(volume, name="intensity", finite=True).data
    hist = histogram(data)
    filled = np.flatnonzero(hist.counts)
    lo = hist.first + hist.width * filled[0]
    hi = hist.first + hist.width * (filled[-1] + (0 if hist.exact else 1))
    thr = p["threshold"] if p["threshold"] is not None else otsu(hist)
    top = p["upper"] if p["upper"] is not None else _bright_split(hist, thr)
    top = math.inf if top is None else top
    if top <= thr:
        raise VolmlaError(f"upper must be above threshold ({thr:g}), got {top:g}")
    logger.info("beam-hardening: reference window (%g, %g]", thr, top)
    c = _center_of(data, check_center(p["center"]))
    ny, nx = data.shape[1:]
    nbins = _radius_bins(data.shape, c)
    width = float(max(1, math.ceil((hi - lo + 1) / _BH_BINS))) if hist.exact else ((hi - lo) / _BH_BINS or 1.0)
    vbins = int(math.floor((hi - lo) / width)) + 1
    lazy = block_tables(data, _radial_hist_block, nbins * vbins, center=c, nbins=nbins, lo=lo, width=width,
                        vbins=vbins)
    (total,) = compute([lazy], desc="radial histogram")
    table = np.asarray(total, np.float64).reshape(nbins, vbins)
    edges = lo + width * np.arange(vbins + 1, dtype=np.float64)
    r2 = _ring_r2(ny, nx, c, nbins)
    gain = np.ones(nbins)
    for _ in range(_BH_ITERATIONS):
        medians, counts = _window_medians(table, edges, thr * gain, top * gain)
        used = (counts >= p["min_count"]) & np.isfinite(r2)
        if int(used.sum()) < p["order"] + 1:
            raise VolmlaError(
                f"beam-hardening found reference voxels (in ({thr:g}, {top:g}]) at only {int(used.sum())} radii: "
                f"give another threshold/upper or a lower order (order {p['order']} needs {p['order'] + 1})"
            )
        coeffs = np.polynomial.polynomial.polyfit(r2[used], medians[used], p["order"], w=np.sqrt(counts[used]))
        r2_max = float(np.flatnonzero(used)[-1] + 1) ** 2
        profile = np.polynomial.polynomial.polyval(np.minimum(np.nan_to_num(r2), r2_max), coeffs)
        level = float((counts[used] * profile[used]).sum() / counts[used].sum())
        if not level > 0:  # the correction divides by the profile: a level at or below 0 has no meaning
            raise VolmlaError(f"beam-hardening needs a positive reference level (it divides by the radial profile), "
                              f"got a mean level of {level:g} in the reference window ({thr:g}, {top:g}]")
        new = np.maximum(profile, 1e-3 * abs(level)) / level
        done = float(np.abs(new - gain)[used].max()) < 1e-5
        gain = new
        if done:
            break
    out = pointwise_at(data, _cupping_kernel, _float_dtype(data.dtype), center=c,
                       coeffs=tuple(float(v) for v in coeffs), r2_max=r2_max, level=level)
    record = {"step": "beam-hardening", **p, "threshold": thr, "upper": None if math.isinf(top) else top,
              "center": list(c), "coefficients": [float(v) for v in coeffs], "level": level}
    return like(volume, out, record)


