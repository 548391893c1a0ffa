"""The solid mask and its clean-up: threshold (a local partial-volume cut), pore filling, dust removal.

Steps 1-3 of :func:`volmla.particles.label_particles`, each a lazy mask over the chunks
(the eager passes are small reductions):

1. **threshold**: a phase volume's nonzero voxels; or an intensity volume above Otsu's
   threshold (:func:`otsu_threshold`) or a given value; or, by default (``"auto"``),
   a cut placed for partial volume voxel by voxel, so that it holds on scans with
   cupping, blur and bright phases (one global cut added ~11 % solid on hard phantoms,
   fusing neighbours):

   a. **denoise**: a gaussian of :data:`DENOISE_SIGMA` voxels (:mod:`volmla.preprocess`);
   b. **cupping** (:func:`flatten_cupping`): the void's mean level per distance from
      the z axis (an exact, chunk-independent radial profile of the voxels below the
      global mode midpoint), a polynomial in ``r^2`` fitted to it, divided out;
   c. **levels**: the void and solid modes of the flattened volume's out-of-core
      histogram (:func:`volmla.engine.reduce.histogram_modes`: the highest bin below
      Otsu's threshold, and the darkest solid peak, so that an abundant bright phase
      does not become the solid level: :func:`mode_midpoint` is half-way between them,
      where a voxel half filled with solid lies, whereas Otsu's threshold sits wherever
      the class sizes put it);
   d. **local cut** (:func:`local_solid`, a pure kernel through
      :func:`volmla.engine.overlap.halo_map` with :data:`LOCAL_HALO`, so exact for any
      chunking): an unsharp mask deepens the blurred gaps and creases between touching
      particles, and each voxel is cut half-way between the void and its local solid
      level: the main solid's, or a bright phase's (sulphides) where one lies within
      :data:`BRIGHT_RADIUS` and no main solid is next to it, so the blur rim around a
      bright particle stays void;
   e. **fill weight** (:func:`local_fill`, :func:`auto_solid`, from the same levels): how
      full of solid the scan looks around each voxel, for the split's relief
      (:func:`volmla.particles.split.split_block`'s ``weight``): the blur fills the
      creases where particles touch past the half-way cut, but leaves them greyer than
      the particles' insides;
2. **fill interior pores** (:func:`fill_holes`): the background is labelled
   (6-connected, like :func:`scipy.ndimage.binary_fill_holes`), the components present
   on the volume's six faces are read from the border planes, and every other
   background component is a hole and becomes solid. Exact for any chunking;
3. **drop dust** (:func:`remove_small`): solid components smaller than ``min_size``
   voxels are dropped; their sizes (:func:`component_sizes`) come from per-block
   ``fastremap.unique`` counts merged by label.

The module is one piece (about 640 lines): the three steps are one mask's life, and the
``"auto"`` cut's pieces (levels, cupping, local kernels) share its histogram and constants.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume, map_reduce
from volmla.engine.reduce import Histogram, histogram, histogram_modes, min_max, otsu
from volmla.errors import VolmlaError
from volmla.particles.label import Labels, check_connectivity, label
from volmla.preprocess.fov import FieldOfView, fill_outside, inside_histogram, void_outside
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

HIST_BINS = 4096
"""Histogram bins for Otsu's threshold on float or 32/64-bit data."""

DENOISE_SIGMA = 0.5
"""Gaussian (voxels) applied before the ``"auto"`` threshold."""

SHARPEN_SIGMA = 1.5
"""Gaussian (voxels) of the ``"auto"`` mask's unsharp mask (:func:`local_solid`)."""

SHARPEN_AMOUNT = 0.5
"""Amount of the ``"auto"`` mask's unsharp mask: ``u + amount * (u - gaussian(u))``."""

BRIGHT = 0.6
"""A phase is *bright* (cut half-way to its own level) when it lies more than this
fraction of the void-to-solid contrast above the main solid."""

BRIGHT_RADIUS = 2
"""Voxels within which a bright phase sets the local solid level (:func:`local_solid`)."""

CORE_LOW = 0.75
"""Main-solid core: normalised values between this and ``1 + BRIGHT``."""

LOCAL_HALO = max(int(4.0 * SHARPEN_SIGMA + 0.5), 1 + BRIGHT_RADIUS)
"""Halo of :func:`local_solid`: the unsharp mask's gaussian (truncated at 4 sigma), and
the core's erosion (1) and growth (``BRIGHT_RADIUS``)."""

RELIEF_SIGMA = 1.0
"""Gaussian (voxels) of the solid fraction that weights the split's relief (:func:`local_fill`)."""

RELIEF_POWER = 3
"""Power of the smoothed solid fraction in :func:`local_fill` (``benchmarks/bench_particles.py``,
hard phantoms, in-memory split of seeds 0-2: matched 0.789 with the distance alone, 0.809,
0.813, 0.816, 0.814, 0.811 with powers 1, 2, 3, 4, 6; a gaussian of 1.5 did worse; easy
phantoms the same for all)."""

FILL_HALO = LOCAL_HALO + math.ceil(4.0 * RELIEF_SIGMA)
"""Halo of :func:`local_fill`: :data:`LOCAL_HALO` and its own gaussian (truncated at 4 sigma)."""

CUPPING_ORDER = 2
"""Degree in ``r^2`` of the void profile fitted by :func:`flatten_cupping`."""

CUPPING_LIMIT = 2.0
"""Largest gain (and smallest, its inverse) :func:`flatten_cupping` applies."""

__all__ = [
    "BRIGHT",
    "BRIGHT_RADIUS",
    "CORE_LOW",
    "CUPPING_LIMIT",
    "CUPPING_ORDER",
    "DENOISE_SIGMA",
    "FILL_HALO",
    "HIST_BINS",
    "LOCAL_HALO",
    "RELIEF_POWER",
    "RELIEF_SIGMA",
    "SHARPEN_AMOUNT",
    "SHARPEN_SIGMA",
    "AutoSolid",
    "auto_solid",
    "auto_threshold",
    "component_sizes",
    "fill_holes",
    "flatten_cupping",
    "local_fill",
    "local_solid",
    "local_solid_fill",
    "mode_midpoint",
    "otsu_threshold",
    "remove_small",
    "solid_mask",
]


# --------------------------------------------------------------------------- step 1


def otsu_threshold(volume: VolumeLike, *, field_of_view: FieldOfView | None = None) -> float:
    """Otsu's threshold of a chunked volume from its out-of-core histogram.

    The histogram is :func:`volmla.engine.reduce.histogram`'s: one bin per value for
    integer data (exact), ``HIST_BINS`` bins between the global minimum and maximum
    otherwise; :func:`volmla.engine.reduce.otsu` reads the threshold off it.

    Parameters
    ----------
    volume
        3-D intensity volume (NumPy, Dask or xarray; boolean counts as 0/1).
    field_of_view
        Count only the voxels inside it (:func:`volmla.preprocess.fov.inside_histogram`).

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
    hist = _histogram(data, field_of_view)
    if np.count_nonzero(hist.counts) < 2:
        raise VolmlaError("cannot threshold a constant volume: give threshold=VALUE")
    return otsu(hist)  # empty end bins trimmed, as threshold_otsu's own image path does


def _modes(hist: Histogram) -> tuple[float, float]:
    """:func:`~volmla.engine.reduce.histogram_modes`, refusing a constant volume in the mask's words."""
    if np.count_nonzero(hist.counts) < 2:
        raise VolmlaError("cannot threshold a constant volume: give threshold=VALUE")
    return histogram_modes(hist)


def _histogram(data: da.Array, field_of_view: FieldOfView | None) -> Histogram:
    """The volume's histogram, of the inside of its field of view when one is given."""
    if field_of_view is None:
        return histogram(data, bins=HIST_BINS)
    return inside_histogram(data, field_of_view, bins=HIST_BINS)


def mode_midpoint(hist: Histogram) -> float:
    """Half-way between the void and solid modes of a histogram (the partial-volume edge).

    The modes are :func:`~volmla.engine.reduce.histogram_modes`' (the void's highest bin
    below Otsu's threshold, the darkest solid peak above the void), after a light
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
    void, solid = _modes(hist)
    return (void + solid) / 2


def auto_threshold(volume: VolumeLike) -> float:
    """:func:`mode_midpoint` of a volume's out-of-core histogram (the global ``"auto"`` level).

    :func:`solid_mask` with ``threshold="auto"`` starts from it and then places the cut
    voxel by voxel (:func:`flatten_cupping`, :func:`local_solid`).

    Parameters
    ----------
    volume
        3-D intensity volume.

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


def _void_gain_block(block: np.ndarray, *, origin: Sequence[int], center: tuple[float, float],
                     coeffs: tuple[float, ...], r2_max: float, level: float) -> np.ndarray:
    from volmla.preprocess.kernels import plane_r2

    r2 = np.minimum(plane_r2(block.shape, origin, center), r2_max)
    profile = np.polynomial.polynomial.polyval(r2, coeffs)
    gain = np.clip(level / np.maximum(profile, 1e-12), 1 / CUPPING_LIMIT, CUPPING_LIMIT).astype(np.float32)
    return block * gain[None]


def flatten_cupping(volume: VolumeLike, *, threshold: float | None = None,
                    field_of_view: FieldOfView | None = None) -> da.Array:
    """Divide out a radial cupping measured on the void (resin, air) between the particles.

    Cupping (beam hardening) darkens the middle of each slice; a global threshold then
    loses solid there and adds it at the rim. The void is one material present at every
    radius, so its level per radius is a steady measure of the cupping where the solid's
    mix of phases changes from radius to radius:

    1. the mean of the voxels below ``threshold`` (default :func:`auto_threshold`) per
       integer distance from the z axis (:func:`volmla.preprocess.radial_profile`: exact
       fixed-point sums, independent of the chunking);
    2. a polynomial of degree :data:`CUPPING_ORDER` in ``r^2`` fitted to it (weighted by
       the counts; radii with fewer than 16 voxels left out);
    3. every voxel multiplied by the mean void level over the fitted profile at its
       radius (the gain clipped to ``1 / CUPPING_LIMIT .. CUPPING_LIMIT``), lazily.

    The volume comes back unchanged (and a log line says why) when the void is too dark
    to carry the cupping (mean below a quarter of the way to the solid mode: air at about
    zero) or too few radii hold void.

    Parameters
    ----------
    volume
        3-D intensity volume, already denoised (the void's partial-volume rims below the
        threshold barely move the means).
    threshold
        The void lies below it (default :func:`auto_threshold`).
    field_of_view
        The scan's field of view (:mod:`volmla.preprocess.fov`): its axis is the one the
        cupping is measured about, and only radii inside it (more than one voxel from its
        edge) enter the fit; the histogram counts its inside only. None: the slices'
        centre, every radius.

    Returns
    -------
    dask.array.Array
        float32, lazy.

    Examples
    --------
    >>> y, x = np.mgrid[:32, :32] - 15.5
    >>> cup = 1 - 0.2 * (1 - (y**2 + x**2) / 512)
    >>> solid = np.broadcast_to((y % 8 < 4) & (x % 8 < 4), (4, 32, 32))
    >>> vol = np.where(solid, 200.0, 100.0) * cup
    >>> flat = flatten_cupping(vol).compute()
    >>> bool(np.ptp(vol[~solid]) > 15), bool(np.ptp(flat[~solid]) < 2)
    (True, True)
    """
    from volmla.engine.blocks import map_blocks_at
    from volmla.preprocess import radial_profile

    data = as_volume(volume, finite=True).data.astype(np.float32)
    hist = _histogram(data, field_of_view)
    void_mode, solid_mode = _modes(hist)
    cut = (void_mode + solid_mode) / 2 if threshold is None else float(threshold)
    # the inside's histogram does not bound the outside's values: radial_profile then reads the range itself
    maxabs = None if field_of_view is not None else max(abs(hist.first), abs(hist.first + hist.width * len(hist.counts)))
    center = None if field_of_view is None else field_of_view.center
    prof = radial_profile(-data, threshold=-cut, maxabs=maxabs, center=center)  # counts the voxels below the cut
    used = (prof.counts >= 16) & np.isfinite(prof.r2)
    if field_of_view is not None:
        used &= prof.r2 < max(field_of_view.radius - 1.0, 0.0) ** 2
    if int(used.sum()) <= CUPPING_ORDER:
        logger.info("cupping not corrected: void at only %d radii", int(used.sum()))
        return data
    means = -prof.sums[used] / prof.counts[used]
    level = float(-prof.sums[used].sum() / prof.counts[used].sum())
    if level < 0.25 * solid_mode:
        logger.info("cupping not corrected: the void (%g) is too dark to measure it", level)
        return data
    coeffs = np.polynomial.polynomial.polyfit(prof.r2[used], means, CUPPING_ORDER, w=np.sqrt(prof.counts[used]))
    r2_max = float(prof.r2[used].max())
    logger.info("cupping from the void: level %g, profile coefficients %s", level, np.round(coeffs, 6).tolist())
    return map_blocks_at(data, _void_gain_block, np.float32, center=prof.center,
                        coeffs=tuple(float(c) for c in coeffs), r2_max=r2_max, level=level)


@functools.cache
def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return np.asarray(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2 <= radius**2)


def local_solid(block: np.ndarray, *, void: float, solid: float) -> np.ndarray:
    """The ``"auto"`` cut on one block: partial-volume midpoint, local solid level, gaps kept.

    The per-block kernel of :func:`solid_mask` (pure; SciPy's ``reflect`` boundary, so
    :func:`volmla.engine.overlap.halo_map` with :data:`LOCAL_HALO` makes it exact for
    any chunking). With ``u = (block - void) / (solid - void)`` (0 void, 1 main solid):

    1. **gaps and necks kept**: ``u`` is sharpened by an unsharp mask (a gaussian of
       :data:`SHARPEN_SIGMA`, amount :data:`SHARPEN_AMOUNT`): the blur of the scan fills
       the thin void between particles and the creases where they touch, which then
       fuse; the unsharp mask deepens such narrow dark valleys again;
    2. **bright phases** (sulphides, metals): a voxel with a brighter-than-solid value
       ``hi > 1 + BRIGHT`` within :data:`BRIGHT_RADIUS` (the largest ``u`` there) and no
       main-solid core near it (voxels with ``0.75 < u < 1 + BRIGHT`` whose whole
       radius-1 ball is so, grown by ``BRIGHT_RADIUS``) is cut half-way to that bright
       level instead, so the partial-volume and blur rim around a bright particle is not
       counted as solid; next to main solid (a bright grain inside an intergrown
       particle) the main level is kept, so no notch is cut into the particle;
    3. solid is where the sharpened ``u`` exceeds half the local solid level.

    Parameters
    ----------
    block
        Denoised, cupping-flattened intensities (an extended block).
    void, solid
        The void and (main) solid levels.

    Returns
    -------
    numpy.ndarray
        Boolean block, same shape.

    Examples
    --------
    >>> b = np.zeros((1, 1, 9), np.float32); b[0, 0, 3:6] = 100
    >>> local_solid(b, void=0.0, solid=100.0).astype(int).tolist()
    [[[0, 0, 0, 1, 1, 1, 0, 0, 0]]]
    """
    sharp, level = _sharp_level(block, void=void, solid=solid)
    return np.asarray(sharp > np.float32(0.5) * level)


def _sharp_level(block: np.ndarray, *, void: float, solid: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2 of :func:`local_solid`: the sharpened ``u`` and the local solid level."""
    from scipy import ndimage as ndi

    u = (np.asarray(block, np.float32) - np.float32(void)) / np.float32(solid - void)
    bright = np.float32(1 + BRIGHT)
    hi = ndi.maximum_filter(u, footprint=_ball(BRIGHT_RADIUS), mode="reflect")
    core = (u > np.float32(CORE_LOW)) & (u < bright)
    core = ndi.minimum_filter(core, footprint=_ball(1), mode="reflect")
    near_core = ndi.maximum_filter(core, footprint=_ball(BRIGHT_RADIUS), mode="reflect")
    level = np.where((hi > bright) & ~near_core, hi, np.float32(1))
    sharp = u + np.float32(SHARPEN_AMOUNT) * (u - ndi.gaussian_filter(u, SHARPEN_SIGMA, mode="reflect", truncate=4.0))
    return sharp, level


def local_fill(block: np.ndarray, *, void: float, solid: float) -> np.ndarray:
    """How full of solid each voxel and its surroundings look: the weight of the split's relief.

    The per-block kernel (pure; exact for any chunking through
    :func:`volmla.engine.overlap.halo_map` with :data:`FILL_HALO`) of
    :attr:`AutoSolid.fill`: the sharpened ``u`` of :func:`local_solid` over its local
    solid level, clipped to ``0..1``, smoothed by a gaussian of :data:`RELIEF_SIGMA`,
    to the power :data:`RELIEF_POWER`. Deep inside a particle it is 1; it drops towards
    the surface and in the creases that the blur fills where two particles touch (the
    creases pass the half-way cut, widening the mask's neck, but stay greyer than the
    particles' insides), so the distance map weighted by it
    (:func:`volmla.particles.split.split_block`'s ``weight``) keeps lower saddles at
    blurred contacts than the binary mask's distance alone.

    Parameters
    ----------
    block
        Denoised, cupping-flattened intensities (an extended block).
    void, solid
        The void and (main) solid levels.

    Returns
    -------
    numpy.ndarray
        float32 in ``0..1``, same shape.

    Examples
    --------
    >>> b = np.zeros((1, 1, 15), np.float32); b[0, 0, 3:12] = 100
    >>> w = local_fill(b, void=0.0, solid=100.0)[0, 0]
    >>> bool(w[7] > 0.9 and w[3] < w[5] < w[7] and w.max() <= 1)
    True
    """
    return _fill(*_sharp_level(block, void=void, solid=solid))


def _fill(sharp: np.ndarray, level: np.ndarray) -> np.ndarray:
    """:func:`local_fill` from the sharpened ``u`` and the local solid level."""
    from scipy import ndimage as ndi

    frac = np.clip(sharp / level, np.float32(0), np.float32(1))
    smooth = np.asarray(ndi.gaussian_filter(frac, RELIEF_SIGMA, mode="reflect", truncate=4.0), np.float32)
    return np.asarray(smooth**RELIEF_POWER, np.float32)


def local_solid_fill(block: np.ndarray, *, void: float, solid: float) -> np.ndarray:
    """:func:`local_solid` and :func:`local_fill` of one block from one sharpening.

    Both kernels start from the same sharpened ``u`` and local level (the costly part:
    three ball filters and a gaussian); :func:`auto_solid` computes them once per block.
    Pure, exact for any chunking with :data:`FILL_HALO`.

    Parameters
    ----------
    block
        Denoised, cupping-flattened intensities (an extended block).
    void, solid
        The void and (main) solid levels.

    Returns
    -------
    numpy.ndarray
        float32, same shape: the fill where the voxel is solid, its negative elsewhere
        (``-0.0`` for a fill of 0), so ``~numpy.signbit`` is the mask and ``abs`` the fill.

    Examples
    --------
    >>> b = np.zeros((1, 1, 9), np.float32); b[0, 0, 3:6] = 100
    >>> both = local_solid_fill(b, void=0.0, solid=100.0)
    >>> (~np.signbit(both)).astype(int).tolist() == local_solid(b, void=0.0, solid=100.0).astype(int).tolist()
    True
    >>> bool((np.abs(both) == local_fill(b, void=0.0, solid=100.0)).all())
    True
    """
    sharp, level = _sharp_level(block, void=void, solid=solid)
    solid_voxels = sharp > np.float32(0.5) * level
    fill = _fill(sharp, level)
    return np.where(solid_voxels, fill, -fill).astype(np.float32, copy=False)


def _signed_mask(block: np.ndarray) -> np.ndarray:
    return ~np.signbit(block)


class AutoSolid(NamedTuple):
    """The ``"auto"`` solid mask and its fill weight (:func:`auto_solid`)."""

    mask: da.Array
    """Lazy boolean solid mask (:func:`local_solid` per block)."""
    fill: da.Array
    """Lazy float32 weight in ``0..1`` for the split's relief (:func:`local_fill` per block)."""


def auto_solid(volume: VolumeLike, *, field_of_view: FieldOfView | None = None) -> AutoSolid:
    """The ``"auto"`` solid mask and, from the same levels, the fill weight of the split's relief.

    Denoised by a gaussian of :data:`DENOISE_SIGMA` voxels, the cupping divided out
    (:func:`flatten_cupping`), the void and solid modes read off the out-of-core
    histogram (five eager passes, shared by both outputs), then per block with a halo:
    :func:`local_solid` (the mask, halo :data:`LOCAL_HALO`) and :func:`local_fill` (the
    weight, halo :data:`FILL_HALO`). Both are exact for any chunking.

    With a ``field_of_view`` (:mod:`volmla.preprocess.fov`) the voxels outside it are
    first set to the void mode of the inside's histogram, so they are void to every later
    step, the cupping is measured about its axis, the levels count its inside only, and
    the mask is void outside.

    Parameters
    ----------
    volume
        3-D intensity volume.
    field_of_view
        The scan's field of view, or None (every voxel is data).

    Returns
    -------
    AutoSolid
        ``mask`` (lazy bool) and ``fill`` (lazy float32), with the volume's chunks.

    Examples
    --------
    >>> vol = np.full((8, 8, 12), 10.0, np.float32); vol[2:6, 2:6, 2:10] = 200
    >>> found = auto_solid(vol)
    >>> int(found.mask.sum().compute()), bool(found.fill.max().compute() <= 1)
    (128, True)
    """
    from volmla.engine.overlap import halo_map
    from volmla.preprocess import gaussian

    data = as_volume(volume, finite=True).data
    fov = field_of_view
    if fov is not None:  # the outside is void to the filters and the levels, not the fill value
        data = void_outside(data, fov)
    smooth = as_volume(gaussian(data, sigma=DENOISE_SIGMA)).data
    flat = flatten_cupping(smooth, field_of_view=fov)
    void, solid = _modes(_histogram(flat, fov))
    logger.info("auto mask: void %g, solid %g (cupping flattened), cut locally half-way", void, solid)
    # a volume thinner than the weight's halo is one block along that axis: the halo is cut to fit
    halo = tuple(FILL_HALO if n == 1 else min(FILL_HALO, n - 1) for n in flat.shape)
    if min((h for h, n in zip(halo, flat.shape, strict=True) if n > 1), default=LOCAL_HALO) < LOCAL_HALO:
        # thinner than the mask's own halo: the mask keeps it (the two kernels apart)
        mask = halo_map(flat, local_solid, halo=LOCAL_HALO, boundary="reflect", dtype=bool, void=void, solid=solid)
        fill = halo_map(flat, local_fill, halo=halo, boundary="reflect", dtype=np.float32, void=void, solid=solid)
        return AutoSolid(_void_outside(mask, fov), fill)
    # one sharpening per block for both (stored together, they are computed in one pass)
    both = halo_map(flat, local_solid_fill, halo=halo, boundary="reflect", dtype=np.float32, void=void, solid=solid)
    mask = da.map_blocks(_signed_mask, both, dtype=bool)
    return AutoSolid(_void_outside(mask, fov), da.map_blocks(np.abs, both, dtype=np.float32))


def solid_mask(
    volume: VolumeLike, *, threshold: Literal["auto", "otsu"] | float | None = "auto",
    field_of_view: FieldOfView | None = None,
) -> da.Array:
    """Lazy boolean solid mask: ``volume > threshold``, or nonzero when ``threshold`` is None.

    Parameters
    ----------
    volume
        Intensity (with a threshold) or phase volume (``threshold=None``).
    threshold
        ``"auto"``: the volume denoised by a gaussian of :data:`DENOISE_SIGMA` voxels,
        its cupping divided out (:func:`flatten_cupping`), the void and solid modes read
        off its out-of-core histogram, and each voxel cut half-way between them (or
        half-way to a bright phase next to it), after an unsharp mask that keeps the
        gaps between particles open (:func:`local_solid`, with a halo of
        :data:`LOCAL_HALO`); five eager passes (reductions). ``"otsu"``
        (:func:`otsu_threshold` of the volume as it is), a number (one eager pass, the
        volume's min and max: a number at or above every voxel, no solid, or below
        every voxel, no void, is refused), or None.
    field_of_view
        The scan's field of view (:mod:`volmla.preprocess.fov`): the levels are read off
        its inside and the mask is void outside it. None: every voxel is data.

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
    fov = field_of_view
    if threshold is None:
        return _void_outside(data != 0, fov)
    if isinstance(threshold, str):
        if threshold == "auto":
            return auto_solid(data, field_of_view=fov).mask
        if threshold != "otsu":
            raise VolmlaError(f"threshold must be 'auto', 'otsu', a number or None, got {threshold!r}")
        value = otsu_threshold(data, field_of_view=fov)
        logger.info("Otsu threshold %g", value)
    else:
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise VolmlaError(f"threshold must be 'auto', 'otsu', a number or None, got {threshold!r}") from None
        if not math.isfinite(value):
            raise VolmlaError(f"threshold must be finite, got {threshold!r}")
        _check_cuts(data, value)
    return _void_outside(data > value, fov)


def _void_outside(mask: da.Array, fov: FieldOfView | None) -> da.Array:
    return mask if fov is None else fill_outside(mask, fov, False)


def _check_cuts(data: da.Array, value: float) -> None:
    """One pass: a given threshold leaves some solid (a voxel above it) and some void."""
    if not data.size:
        return
    lo, hi = min_max(data)
    if hi <= value:
        raise VolmlaError(f"threshold={value:g} is at or above every voxel (max {hi:g}): no solid")
    if lo > value:
        raise VolmlaError(f"threshold={value:g} is below every voxel (min {lo:g}): no void")


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
    planes = compute(_border_planes(background.labels.data), desc="border of the background")
    border = np.unique(np.concatenate([np.unique(p) for p in planes]))
    border = border[border > 0]
    logger.info("%d background components, %d reach the border", background.count, len(border))
    holes = da.map_blocks(
        _drop_ids, background.labels.data, border, keep=False, dtype=bool, meta=np.empty((0, 0, 0), bool)
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
    for ids, counts in map_reduce(labels.labels.data, _block_counts, desc="component sizes"):
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
        _drop_ids, components.labels.data, ids.astype(components.labels.dtype), keep=keep, dtype=bool,
        meta=np.empty((0, 0, 0), bool),
    )
