"""Phases by region, not by voxel: pooled, flattened, partial-volume-corrected grey.

This module is one piece (~1,100 lines) because its steps share one key volume (particle
and contrast group per voxel) and one set of levels; split, each part would re-derive
them.

A per-voxel classifier cannot tell two minerals apart whose grey levels lie within the
noise of each other (quartz and feldspar ~1 noise sigma apart): every voxel is a coin
toss weighted by 1 sigma, and a free particle of ~1,400 voxels then carries far more
than the 1 % of foreign voxels the free rule (grade > 0.99) allows. Averaging ``n``
voxels of one grain shrinks the noise by ``sqrt(n)``; so each voxel is classified by the
mean over its *region*, the interior voxels of its own particle and contrast group
around it, after cupping, rings and partial volume are taken out, so that a phase has
one level everywhere. Out of core and the same for any chunking (pointwise maps, halo
maps, exact integer tables):

1. **levels from the sparse labels** (:func:`label_levels`): labelled voxels whose 3x3x3
   box holds no other label and whose ``(2 erode + 1)^3`` box lies in one particle (or
   all in the void: the partial volume of a blurred surface, above or below the
   labelled plane too, stays out) are binned by their distance ``r`` from the scan axis
   (z, through the centre of the (y, x) plane), in bins of :data:`RING_BIN` voxels, with
   the void away from every particle; per (class, bin) count, grey sum and sum of
   squares are exact integers (:func:`volmla.engine.reduce.block_tables`). A weighted
   least-squares fit of ``level_k * g(r)``, ``g = 1 + a s``, ``s = (r / r_max)^2`` (the
   parabolic cupping of beam hardening; one parameter, fixed by the solid labels and
   the void together), gives the gain and one level per phase; the void's narrow
   radial residual (less its running median over :data:`RING_SMOOTH` voxels) is the
   ring profile, and gain and rings are fitted in turn (the gain to the means less the
   rings) until the gain settles;
   the noise sigma is the spread about the fit (of the phases with at least
   :data:`MIN_NOISE_VOXELS` pure voxels: labels without one such phase are refused).
   A phase with no pure labelled voxel (a small inclusion) takes the mean of all its
   labelled voxels. One labelled plane is enough (the cupping is fitted against the
   radius within a plane) when it holds enough pure voxels. The fit runs twice: the
   second leaves out the labelled voxels with a mixture in their 3x3x3 box (step 5's
   :data:`MIX_SIGMAS`, on the flattened grey of the first fit), so that a bright
   phase's blur above or below a labelled plane does not lift the levels. Nothing is
   tuned per volume: the labels (the correlative planes) fix the levels, as they fix a
   forest;
2. **flatten** (:func:`flatten_cupping`): ``c = (intensity - ring(r)) / g(r)``;
3. **contrast groups**: phases whose levels lie within :data:`GROUP_GAP` noise sigmas of
   the next form a group (quartz and feldspar); groups further apart are told apart
   per voxel, at the midpoints between them (46,000 against 22,000 grey is ~30 sigma),
   so a small bright inclusion (a sulphide, gold) keeps its voxels: it is never pooled
   with the grey around it. Inside a particle every voxel is solid (``pores=True``
   calls voxels near the void level pores);
4. **partial volume** (:func:`estimate_psf`): the level map (void outside particles,
   each group's mean level inside) blurred by the PSF is what the scan shows without
   noise; ``c - (blur(map) - map)`` takes out what the void and the bright groups lend
   their neighbours (a voxel under the surface of a quartz grain reads ~0.5 sigma
   darker at a PSF of 0.8 voxels, which is feldspar minus half the gap). The PSF sigma
   is the one of :data:`PSF_SIGMAS` whose blur best matches the grey at the edges of a
   central crop. The map's void/solid edges are the particles' (binary) unless a known
   sub-voxel solid fraction is given (``solid_fraction=``); with the CT's own particles
   the binary edge is what fails on hard phantoms (README, ``bench_truth --pv-geometry``).
   Levels without a void level (no void voxel away from the particles) get no
   correction where voxels lie outside particles: the map's outside would be a guess.
   Steps 2 and 4 alone: :func:`corrected_grey`;
5. **regions** (one compiled kernel per block, halo ``radius + depth``,
   :func:`volmla.engine.overlap.halo_map`): a voxel of a group of several phases takes
   the phase whose level is nearest the Gaussian-weighted (sigma ``radius / 2``) mean
   of the corrected grey over the *interior* voxels (at least ``depth`` erosions inside
   their own particle and group; the shell, a mixture, never counts) of its particle
   and group within ``radius``. At ``radius=3`` a deep voxel pools ~150 voxels (noise /
   12), one under the surface ~50 (noise / 7): 1 sigma of contrast becomes 7-12. A
   voxel of a darker group with no interior of its group in reach, next to the
   interior of a brighter group of its particle, is that brighter phase blurred into
   the void (the rim of a free sulphide reads as quartz grey). A voxel of a
   several-phase group whose corrected grey lies more than :data:`MIX_SIGMAS` noise
   sigmas above the group's brightest level is a mixture with a brighter group (a third
   of a sulphide voxel): it and its six neighbours count in no pool (nor, in step 7, in
   a grain's interior), and it takes the phase of its group's pool around it;
6. **cleaning** (:func:`volmla.segment.regions.clean_phases`, on the corrected grey and
   these levels): shell rims of a bright phase go to its interior, grains below
   ``min_grain`` voxels without grey contrast go to their surroundings;
7. **grains as regions**: every grain of a several-phase group with at least
   ``min_grain`` interior voxels is reclassified as one region, by the mean corrected
   grey over its interior voxels (noise / sqrt(n)).

Measured (``benchmarks/bench_truth.py``, true particles, 3 seeds x 2 levels at 80^3):
see ``benchmarks/results/truth.json`` (``regions_pv``) against the forest (``today``).
Where it falls short: on the hard level (contrast 1 noise sigma, particles of radius
~5.5 voxels split in up to six grains), a particle's ball of ``radius`` spans both of
its grains, so two small grains can blend into one phase (a false free particle).
Diagnosed on 9 hard seeds at 80^3 (true particles): the wrongly free particles are small
(50-1,100 voxels, a minority phase of 10-50 % measured as 0), the wrongly locked ones
are free particles of 100-4,500 voxels carrying 5-25 % speckle of the other phase of
their group; the two errors partly cancel in LD, and which particles flip changes from
seed to seed (max |LD error| 0.015-0.100 over seeds 0-8 with the defaults, mean 0.056;
0.025-0.114, mean 0.065, before mixed voxels were left out of pools and levels). Two
opt-in steps were measured against that (before that change), neither a consistent gain
yet, so both are off:

- ``per_particle=True``: particles whose own equivalent radius asks for a smaller region
  (:data:`AUTO_RADIUS_FRACTION` of it below ``radius``) pool over ``radius - 1``.
  Quartz LD errors fall on 8 of 9 hard seeds, feldspar ones rise (free feldspar
  particles collect quartz speckle); the mean max |LD error| stays 0.063.
- ``refine=True`` (step 5b): the levels of a pooled group are re-measured on the scan as
  the mean corrected grey of the voxels :data:`REFINE_DEPTH` inside their provisional
  grains, and step 5 runs again (one more global pass and one more region pass). It
  rescued seed 6, where the labelled levels then left 47 % of the feldspar voxels
  quartz (modal error 0.11 -> 0.03; the default now gets 0.014 there), but moves the
  quartz-feldspar boundary on others (seed 1: modal 0.025 -> 0.06); mean max |LD error|
  0.068. The deep voxels put both levels
  ~0.1 noise sigma below the labelled ones, and the grey next to a surface or to the
  other phase of the group stays biased up (the level map blurs group means only).

Both together: mean max |LD error| over hard seeds 0-8 0.046 against 0.063 (worst 0.071
against 0.113; better on 5 seeds, worse on 2), but max |modal error| above 0.01 on 8 of
9 seeds (5 with the defaults), and easy seed 0 at 0.032 against 0.012.

A third, ``mrf=True`` (step 5c, :func:`volmla.segment.mrf.potts_phases`): a Potts field
over the pooled classes, on the voxels' own corrected grey. Over hard and easy seeds 0-5
(``benchmarks/results/truth_mrf.json``) mean max |LD error| 0.035 against 0.036 (better
on 3 hard seeds, worse on 3; worst 0.098 against 0.113), voxel accuracy within 0.3 %:
off. On hard seed 0 the 25 wrongly free particles' minority grains (8-90 voxels, 0-21 of
them interior) read, blurred, at most 0.43 noise sigma beyond the mid-grey of the two
levels (the gap is 0.94) and on the majority's side in 11 of 25: no boundary price
recovers them from this grey."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import numba
import numpy as np

from volmla.engine.blocks import as_volume, shared
from volmla.engine.scratch import session_scratch, store, store_together
from volmla.engine.windows import window_map
from volmla.errors import VolmlaError
from volmla.measure.fractions import PhaseLevels
from volmla.preprocess.fov import FieldOfView, fill_outside
from volmla.segment.regions import (
    DEFAULT_CONTRAST,
    MIN_GRAIN,
    _relabel_block,
    clean_phases,
    merge_grain_rows,
)
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_ERODE",
    "AUTO_RADIUS_FRACTION",
    "MAX_PSF",
    "DEFAULT_RADIUS",
    "auto_radius",
    "check_psf",
    "CorrectedGrey",
    "corrected_grey",
    "GROUP_GAP",
    "LabelLevels",
    "MIN_LEVEL_VOXELS",
    "MIN_NOISE_VOXELS",
    "estimate_psf",
    "fit_levels",
    "flatten_cupping",
    "label_levels",
    "region_phases",
    "region_psf",
]

MIX_SIGMAS = 3.0
"""A voxel of a pooled group (quartz and feldspar) reading more than this many noise
sigmas above the group's brightest level is a mixture with a brighter group (a voxel
that is partly sulphide, or a labelled voxel's neighbour under a sulphide's blur): it
and its six neighbours are left out of every pool (judged on the partial-volume
corrected grey the pools average, so a voxel the correction explains stays in), and
labelled voxels with one in their 3x3x3 box are left out of the level fit (judged on the
flattened grey the levels are fitted on); the voxel takes its phase from its group's
pool around it. At 3 sigmas noise alone flags 0.13 % of a group's voxels. Why: on the
hard phantoms the quartz voxels next to pyrite read ~1.5 noise sigmas high even after
the correction (its binary level map cannot hold a voxel that is a third pyrite),
which lifted the pools of the darker phase, and labelled voxels under pyrite's blur
above or below a labelled plane lifted the levels (seed 6: feldspar 0.4 sigmas high,
45 % of it called quartz). Over seeds 0-8 at 80^3 with the true particles
(``benchmarks/results/truth_regions.json``) the mean max |LD error| fell from 0.065 to
0.056 on the hard level and from 0.014 to 0.013 on the easy one, the worst modal error
from 0.127 to 0.053, voxel accuracy rose from 91.3 to 92.7 % (hard). The darker side
is not flagged: a floor at the darkest level less 3 sigmas also caught the partial
volume of the void inside small particles, took their interior and cost 0.5 % of
accuracy."""


WEIGHT_SIGMA = 0.5
"""Sigma of a region's Gaussian weights, as a fraction of its radius."""
DEFAULT_RADIUS = 3
"""The region radius when the particles give no size (too few of :data:`AUTO_MIN_VOXELS`)."""
AUTO_RADIUS_FRACTION = 0.5
"""``radius="auto"``: this fraction of the median equivalent-sphere radius of the particles,
so a region stays inside one grain of a typical particle (small particles hold few,
small grains; large ones carry more noise to average away)."""
AUTO_RADIUS_RANGE = (3, 5)
"""Bounds of the ``auto`` radius (voxels)."""
AUTO_MIN_VOXELS = 100
"""Particles smaller than this are left out of the ``auto`` radius (dust, border cuts)."""
"""Radius (voxels) of the region a voxel is classified by (step 4)."""
GROUP_GAP = 6.0
"""Noise sigmas between neighbouring phase levels above which the phases are told apart
per voxel (separate contrast groups) rather than by pooled regions."""
DEFAULT_DEPTH = 1
"""Erosions (voxels) a voxel of a region's mean should have survived (step 4)."""
LEAST_WEIGHT = 8.0
"""Gaussian weight (voxels at the centre) the deepest interior must reach before a
shallower one is pooled too."""
RING_BIN = 0.25
"""Width (voxels of radius) of the bins of the level fit and of the ring profile."""
RING_SMOOTH = 4.0
"""Half-width (voxels of radius) of the running median that is the slow part of the
void's radial residual; what stands out of it is the ring profile. A median ignores a
ring (about 2.5 voxels wide) where a smoothing filter would spread it into its
neighbours and take a third of its height off."""
RING_LEAST = 32
"""Void voxels a radius bin needs for its ring value."""
PSF_SIGMAS = tuple(round(0.1 * i, 1) for i in range(21))
"""Candidate PSF sigmas (voxels) of :func:`estimate_psf`."""
MAX_PSF = 10.0
"""The largest PSF sigma (voxels) a caller may give: a blur of tens of voxels is a typo
(its halo would read blocks tens of voxels wider)."""
PSF_CROP = 128
"""Voxels per axis of the central crop the PSF is estimated on."""
FOV_MARGIN = 4.0
"""Edges within this many voxels of a field of view's circle are left out of the PSF fit."""
DEFAULT_ERODE = 2
"""Half-width (voxels) of the box around a labelled voxel that must hold one label and
one particle for the voxel to count towards the levels (partial volume spreads over ~2
PSF sigmas of a boundary)."""
MIN_NOISE_VOXELS = 64
"""Pure labelled voxels a solid phase needs for the noise sigma to be measured on it;
with no such phase the labels are refused (one line), never a guessed noise."""
MIN_LEVEL_VOXELS = 25
"""Below this many pure labelled voxels the level of a solid phase within :data:`GROUP_GAP`
noise sigmas of another (known to ~1/sqrt(n) noise sigmas, 0.2 at 25) is used with a
logged warning."""
REFINE_DEPTH = 2
"""Step 5b: voxels this far inside their provisional grain (a box of half-width 2 all one
phase of one particle) re-measure the levels: away from the blur of other phases."""
_QBITS = 16
_MIXED = 64  # key flag of a mixed voxel (:data:`MIX_SIGMAS`); group codes + 1 stay below it
_MAX_ID = 2**44  # particle * 256 + group is exact in float64


class LabelLevels(NamedTuple):
    """What :func:`label_levels` fits from the sparse labels."""

    levels: dict[int, float]
    """Phase id (0 = void) -> grey level on the scan axis (after flattening)."""
    noise_sigma: float
    """The smallest noise sigma among the solid phases (about the fit)."""
    gain: float
    """``a`` of the cupping gain ``g = 1 + a s``, ``s = (r / r_max)^2`` (a parabola in r)."""
    voxels: dict[int, int]
    """Phase id -> pure labelled voxels the level was fitted on."""
    rings: tuple[float, ...] = ()
    """Additive ring profile per :data:`RING_BIN` of radius (empty: none)."""

    def phase_levels(self) -> PhaseLevels:
        """The same levels as :class:`volmla.measure.fractions.PhaseLevels`."""
        return PhaseLevels(dict(self.levels), float(self.noise_sigma), dict(self.voxels))


# --------------------------------------------------------------------------- geometry


def _radius(origin: Sequence[int], block_shape: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Distance from the scan axis (the centre of the slice) of every (y, x) of a block."""
    from volmla.preprocess.kernels import plane_r2

    return np.sqrt(plane_r2(block_shape, origin, ((shape[1] - 1) / 2.0, (shape[2] - 1) / 2.0)))


def _r_max(shape: Sequence[int]) -> float:
    return math.hypot(shape[1] / 2.0, shape[2] / 2.0)


def _gain(r: np.ndarray, gain: float, r_max: float) -> np.ndarray:
    return 1.0 + gain * (r / r_max) ** 2


# --------------------------------------------------------------------------- step 1


def _pure_block(packed: np.ndarray, *, erode: int, void_class: int) -> np.ndarray:
    """Labels (``packed & 255``) whose box of half-width ``erode`` holds one particle
    (``packed >> 8``) and whose 3x3x3 box no other label (unlabelled voxels aside; two
    phases of a particle differ by far less than a phase and the void); unlabelled
    voxels whose box holds no particle get ``void_class`` (0: not counted); else 0."""
    from scipy import ndimage as ndi

    packed = np.asarray(packed, np.uint64)
    lab = (packed & np.uint64(255)).astype(np.uint8)
    part = packed >> np.uint64(8)
    size = 2 * erode + 1
    hi = ndi.maximum_filter(lab, size=3)
    lo = ndi.minimum_filter(np.where(lab > 0, lab, np.uint8(255)), size=3)
    same = (hi == lab) & (lo == lab) & (lab > 0)
    one = ndi.minimum_filter(part, size=size) == part
    one &= ndi.maximum_filter(part, size=size) == part
    out = np.where(same & one, lab, 0)
    if void_class:
        out = np.where((lab == 0) & one & (part == 0), void_class, out)
    return out.astype(np.uint8)


def _pack_particle_label(part: np.ndarray, lab: np.ndarray) -> np.ndarray:
    part = np.asarray(part)
    if part.size and int(part.max()) >= _MAX_ID:
        raise VolmlaError(f"particle ids must lie below 2**44 for region_phases, got {int(part.max())}")
    return (part.astype(np.uint64) << np.uint64(8)) | np.asarray(lab).astype(np.uint64)


def _pack_levels_block(pure: np.ndarray, raw: np.ndarray, image: np.ndarray, *, lo: float,
                       scale: float) -> np.ndarray:
    """``raw label << 24 | pure class << 16 | quantised grey``."""
    q = np.clip(np.rint((np.asarray(image, np.float64) - lo) * scale), 0, 2**_QBITS - 1).astype(np.int64)
    return (np.asarray(raw).astype(np.int64) << (_QBITS + 8)) | (np.asarray(pure).astype(np.int64) << _QBITS) | q


def _level_table(packed: np.ndarray, *, origin: Sequence[int], shape: Sequence[int], n_classes: int,
                 n_bins: int) -> np.ndarray:
    """Per (class, radius bin): count, grey sum, grey sum of squares (int64). Classes:
    the pure ones (``0 .. top + 1``), then every labelled voxel by its label."""
    packed = np.asarray(packed)
    pure = (packed >> _QBITS) & 255
    raw = packed >> (_QBITS + 8)
    first = (n_classes + 1) // 2  # top + 2
    sel = np.concatenate([(pure > 0).ravel(), (raw > 0).ravel()])
    cls = np.concatenate([pure.ravel(), raw.ravel() + first])
    packed = np.concatenate([packed.ravel(), packed.ravel()])
    out = np.zeros((n_classes, n_bins, 3), np.int64)
    if not sel.any():
        return out.ravel()
    block_shape = np.shape(raw)
    r = np.broadcast_to(_radius(origin, block_shape, shape)[None], block_shape).ravel()
    r = np.concatenate([r, r])
    b = np.minimum((r[sel] / RING_BIN).astype(np.int64), n_bins - 1)
    key = cls[sel] * n_bins + b
    q = packed[sel] & (2**_QBITS - 1)
    n = n_classes * n_bins
    out[..., 0] = np.bincount(key, minlength=n).reshape(n_classes, n_bins)
    out[..., 1] = _int_bincount(key, q, n).reshape(n_classes, n_bins)
    out[..., 2] = _int_bincount(key, q * q, n).reshape(n_classes, n_bins)
    return out.ravel()


def _int_bincount(key: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.int64)
    np.add.at(out, key, values)
    return out


def fit_levels(table: np.ndarray, *, r_max: float, lo: float, scale: float) -> LabelLevels:  # noqa: C901
    """Step 1 after the blocks: the cupping gain and the levels from the binned sums.

    Parameters
    ----------
    table
        ``(2 top + 3, bins, 3)``: count, quantised grey sum and sum of squares per
        radius bin (:data:`RING_BIN` voxels wide) of: the pure voxels of each sparse
        label class ``0 .. top`` (``phase + 1``), the unlabelled void away from every
        particle, then every labelled voxel of each class (used for a phase without
        pure voxels, such as a small inclusion).
    r_max
        The radius that ``s = (r / r_max)^2`` is scaled by.
    lo, scale
        The quantisation: grey = ``lo + q / scale``.

    Returns
    -------
    LabelLevels
        Levels, noise sigma, gain and voxel counts.
    """
    first = (table.shape[0] + 1) // 2
    raw_table = table[first:]
    table = table[:first].copy()
    for k in range(2, first - 1):
        if table[k, :, 0].sum() == 0:  # no pure voxel: every labelled one
            table[k] = raw_table[k]
    n = table[..., 0].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = lo + table[..., 1] / np.maximum(n, 1) / scale
    centres = (np.arange(table.shape[1]) + 0.5) * RING_BIN
    s = (centres / r_max) ** 2
    void_extra = table.shape[0] - 1
    present = [k for k in range(table.shape[0] - 1) if n[k].sum() > 0]
    solid = [k for k in present if k >= 2]
    if not solid:
        raise VolmlaError("labels must mark at least one solid phase (sparse labels hold phase + 1)")
    void = [k for k in (1, void_extra) if n[k].sum() > 0]
    fitted = solid + void
    radii = np.count_nonzero(n[fitted].sum(axis=0) > 0)  # a gain needs at least 3 radii
    # the gain and the rings together: rings are additive and the same for every material
    # at a radius, so the gain is fitted to the means less the rings, and the rings are
    # re-measured about the new gain (a ring of a noise sigma left in the means moved a
    # 15 % gain by up to 0.017 on the hard phantoms: a few hundred grey values, a third
    # of the quartz-feldspar gap)
    a, rings = 0.0, np.zeros(n.shape[1])
    for _ in range(20):
        a_new, levels = _fit_gain(n, np.nan_to_num(m) - rings[None], s, fitted, fit=bool(radii >= 3), start=a)
        rings = _ring_profile(n, m, 1.0 + a_new * s, void=void)
        done = abs(a_new - a) <= 1e-9
        a = a_new
        if done:
            break
    g = 1.0 + a * s
    out_levels: dict[int, float] = {}
    voxels: dict[int, int] = {}
    sigmas: list[float] = []
    for k in present:
        nk = n[k].sum()
        if k < 2:
            out_levels[k - 1] = float((n[k] * (np.nan_to_num(m[k]) - rings) / g).sum() / nk)
        else:
            out_levels[k - 1] = float(levels[k])
        voxels[k - 1] = int(nk)
        if k >= 2 and nk >= MIN_NOISE_VOXELS:
            # spread about the fitted profile, from the exact sums (quantised units)
            mu = (out_levels[k - 1] * g + rings - lo) * scale
            ss = (table[k, :, 2] - 2 * mu * table[k, :, 1] + n[k] * mu * mu).sum()
            sigmas.append(math.sqrt(max(float(ss), 0.0) / (nk - 1)) / scale)
    if not any(v > 0 for v in sigmas):
        most = max(int(n[k].sum()) for k in solid)
        raise VolmlaError(f"labels hold too few pure voxels to measure the noise: no solid phase has {MIN_NOISE_VOXELS} "
                          f"labelled voxels away from other labels and particle surfaces (the most: {most}); label "
                          "larger areas or more planes")
    sigma = min(v for v in sigmas if v > 0)
    for k in solid:
        near = min((abs(out_levels[k - 1] - out_levels[j - 1]) for j in solid if j != k), default=math.inf)
        if voxels[k - 1] < MIN_LEVEL_VOXELS and near <= GROUP_GAP * sigma:
            logger.warning("phase %d: its grey level rests on %d labelled voxels only (known to about %.2f noise "
                           "sigmas, %.1f from the next phase's); label more of it", k - 1, voxels[k - 1],
                           1.0 / math.sqrt(max(voxels[k - 1], 1)), near / sigma)
    return LabelLevels(out_levels, float(sigma), float(a), voxels, tuple(float(v) for v in rings))


def _fit_gain(n: np.ndarray, m: np.ndarray, s: np.ndarray, fitted: list[int], *, fit: bool,
              start: float) -> tuple[float, np.ndarray]:
    """Least squares gain ``a`` of ``m[k] = level_k (1 + a s)`` over the fitted classes,
    alternating with their levels; with ``fit=False`` (too few radii) ``a = 0``.

    Returns the gain and the levels (one per row of ``n``, 0 for classes not fitted)."""
    a = start if fit else 0.0
    levels = np.zeros(n.shape[0])
    for _ in range(100):
        g = 1.0 + a * s
        for k in fitted:
            levels[k] = float((n[k] * m[k] * g).sum() / (n[k] * g * g).sum())
        if not fit:
            return 0.0, levels
        num = sum(float((n[k] * levels[k] * s * (m[k] - levels[k])).sum()) for k in fitted)
        den = sum(float((n[k] * (levels[k] * s) ** 2).sum()) for k in fitted)
        new = num / den if den > 0 else 0.0
        if abs(new - a) <= 1e-12:
            return new, levels
        a = new
    return a, levels


def _ring_profile(n: np.ndarray, m: np.ndarray, g: np.ndarray, *, void: list[int]) -> np.ndarray:
    """Ring artefacts: the additive, narrow radial profile of the void about its
    cupped level, less its running median over :data:`RING_SMOOTH` voxels of radius, so
    that a void whose cupping differs from the solid's adds no slow term."""
    if not void:
        return np.zeros(n.shape[1])
    cnt = sum(n[k] for k in void)
    tot = sum(n[k] * np.nan_to_num(m[k]) for k in void)
    with np.errstate(invalid="ignore", divide="ignore"):
        level = float((tot / g).sum() / cnt.sum())
        resid = np.where(cnt > 0, tot / np.maximum(cnt, 1) - level * g, 0.0)
    ok = cnt >= RING_LEAST  # trust bins with a few dozen voxels
    half = int(round(RING_SMOOTH / RING_BIN))
    padded = np.pad(np.where(ok, resid, np.nan), half, mode="constant", constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a window without a trusted bin
        slow = np.nan_to_num(np.nanmedian(windows, axis=1))
    return np.where(ok, resid - slow, 0.0)


def label_levels(intensity: VolumeLike, labels: VolumeLike, *, particles: VolumeLike | None = None,
                 erode: int = DEFAULT_ERODE, field_of_view: FieldOfView | None = None) -> LabelLevels:
    """Step 1: the phase levels and the cupping gain fitted from sparse labels.

    A global reduction (it computes): the intensity range, then one pass over the
    labelled voxels.

    Parameters
    ----------
    intensity
        The CT volume.
    labels
        Sparse labels of the same shape (``phase + 1``, 0 unlabelled), e.g. the
        correlative planes.
    particles
        Particle ids, when known: a labelled voxel then also needs its whole box in
        one particle (or all void), which keeps the partial volume across a particle's
        surface above or below a labelled plane out of the levels.
    erode
        Half-width (voxels) of the box around a labelled voxel that must carry no other
        label (and, with ``particles``, one particle): a blurred boundary is a mixture
        for ~2 PSF sigmas (default :data:`DEFAULT_ERODE`).
    field_of_view
        The scan's field of view (:mod:`volmla.preprocess.fov`): no voxel outside it
        enters the fit (its fill, or the void level put there, is no void of the scan,
        and it would bend the cupping's parabola at the radii beyond the circle).

    Returns
    -------
    LabelLevels
        Level per labelled phase (on the scan axis), noise sigma, gain, voxel counts.
        Where phases form a pooled group, fitted a second time without the labelled
        voxels next to a mixture with a brighter group (:data:`MIX_SIGMAS`; the first
        fit stands if too few pure voxels are left).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ph = np.ones((4, 32, 32), np.uint8); ph[:, :, 16:] = 2
    >>> img = np.where(ph == 1, 1000.0, 1200.0) + rng.normal(0, 10, ph.shape)
    >>> lv = label_levels(img.astype(np.float32), ph + 1)
    >>> round(lv.levels[1], -1), round(lv.levels[2], -1)
    (1000.0, 1200.0)
    """
    from volmla.engine.cluster import compute
    from volmla.engine.overlap import halo_map
    from volmla.engine.reduce import block_tables, min_max

    image = as_volume(intensity, name="intensity").data
    shape = tuple(getattr(labels, "shape", np.shape(labels)))
    if shape != image.shape:
        raise VolmlaError(f"labels must have the shape of the intensity {image.shape}, got {shape}")
    lab = as_volume(labels, name="labels", integer=True, chunks=image.chunks).data
    lab = lab if lab.chunks == image.chunks else lab.rechunk(image.chunks)
    if isinstance(erode, bool) or not isinstance(erode, int | np.integer) or erode < 0:
        raise VolmlaError(f"erode must be a non-negative integer (voxels), got {erode!r}")
    part = None
    if particles is not None:
        part = as_volume(particles, name="particles", integer=True, chunks=image.chunks).data
        if part.shape != image.shape:
            raise VolmlaError(f"particles must have the shape of the intensity {image.shape}, got {part.shape}")
        part = part if part.chunks == image.chunks else part.rechunk(image.chunks)
    lo, hi = min_max(image)
    (top,) = compute([lab.max()], desc="label classes")
    top = int(top)
    if top < 2:
        raise VolmlaError("labels must mark at least one solid phase (sparse labels hold phase + 1)")
    if top > 255:
        raise VolmlaError(f"labels must hold phase + 1 below 256, got {top}")
    exact = np.issubdtype(image.dtype, np.integer) and hi - lo < 2**_QBITS
    scale = 1.0 if exact else (2**_QBITS - 1) / max(hi - lo, 1e-300)
    shape = image.shape
    n_bins = int(_r_max(shape) / RING_BIN) + 2
    n_classes = 2 * top + 3  # pure 0..top, deep void, then every labelled voxel 0..top

    def fit(lab: da.Array, desc: str) -> LabelLevels:
        keyed = lab.astype(np.uint64) if part is None else da.map_blocks(
            _pack_particle_label, part, lab, dtype=np.uint64, meta=np.empty((0, 0, 0), np.uint64))
        pure = _like(halo_map(keyed, _pure_block, halo=max(int(erode), 0), boundary="constant", cval=0,
                              dtype=np.uint8, erode=int(erode), void_class=0 if part is None else top + 1), image)
        if field_of_view is not None:
            pure = fill_outside(pure, field_of_view, 0)
        packed = da.map_blocks(functools.partial(_pack_levels_block, lo=float(lo), scale=scale), pure, lab, image,
                               dtype=np.int64, meta=np.empty((0, 0, 0), np.int64))
        table = block_tables(packed, _level_table, n_classes * n_bins * 3, shape=shape, n_classes=n_classes,
                             n_bins=n_bins)
        (summed,) = compute([table], desc=desc)
        return fit_levels(np.asarray(summed, np.int64).reshape(n_classes, n_bins, 3), r_max=_r_max(shape),
                          lo=float(lo), scale=scale)

    first = fit(lab, "label levels")
    groups = _groups(first, contrast=0.0, pores=False)
    if not np.isfinite(groups.ceilings).any():
        return first
    # labelled voxels next to a mixture with a brighter group (MIX_SIGMAS, on the grey
    # the levels are fitted on) carry its blur: a bright phase above or below a labelled
    # plane lifted the levels (hard phantom seed 6: feldspar 0.4 noise sigmas high, half
    # its voxels called quartz)
    inside = part if part is not None else da.ones(shape, np.uint8, chunks=image.chunks)
    mixed = da.map_blocks(functools.partial(_mixed_block, **_key_groups(groups)), inside,
                          flatten_cupping(image, first), dtype=bool, meta=np.empty((0, 0, 0), bool))
    near = _like(halo_map(mixed, _grown_block, halo=1, boundary="constant", cval=0, dtype=bool), image)
    kept = da.where(near, 0, lab).astype(lab.dtype)
    try:
        return fit(kept, "label levels away from mixtures")
    except VolmlaError as err:  # too few pure voxels left: the first fit stands
        logger.warning("label levels: kept the fit with the voxels next to mixtures (%s)", err)
        return first


# --------------------------------------------------------------------------- step 2


def _flatten_block(image: np.ndarray, *, gain: float, rings: tuple[float, ...], shape: Sequence[int],
                   block_info: dict[Any, Any] | None = None) -> np.ndarray:
    origin = [lo for lo, _ in block_info[0]["array-location"]] if block_info else [0, 0, 0]
    r = _radius(origin, image.shape, shape)
    g = _gain(r, gain, _r_max(shape))
    ring = np.interp(r, (np.arange(len(rings)) + 0.5) * RING_BIN, rings) if rings else 0.0
    return ((np.asarray(image, np.float64) - ring) / g[None]).astype(np.float32)


def flatten_cupping(intensity: VolumeLike, levels: LabelLevels) -> da.Array:
    """Step 2: the intensity divided by the cupping gain of :func:`label_levels`, lazily.

    Parameters
    ----------
    intensity
        The CT volume.
    levels
        From :func:`label_levels`.

    Returns
    -------
    dask.array.Array
        float32, the intensity's chunks; a phase has one level across the field.

    Examples
    --------
    >>> lv = LabelLevels({1: 100.0}, 1.0, 2.0, {1: 1})
    >>> img = np.full((1, 2, 2), 150.0)  # every voxel at s = 0.25: gain 1.5
    >>> flatten_cupping(img, lv).compute().ravel().tolist()
    [100.0, 100.0, 100.0, 100.0]
    """
    image = as_volume(intensity, name="intensity").data
    return da.map_blocks(functools.partial(_flatten_block, gain=levels.gain, rings=tuple(levels.rings),
                                           shape=image.shape), image,
                         dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))


# --------------------------------------------------------------------------- steps 3-5


class _Groups(NamedTuple):
    bounds: np.ndarray  # grey bounds between solid groups (ascending)
    pore: float  # below this a particle voxel is void (-inf: no void level)
    phases: np.ndarray  # (groups + 1, width) phase ids per group code (code 0: void), 0-padded
    levels: np.ndarray  # (groups + 1, width) their levels, inf-padded
    pooled: np.ndarray  # (groups + 1,) bool: the group has several phases
    ceilings: np.ndarray  # (groups + 1,) above this a voxel of a pooled group is a mixture (inf: none)


def _groups(levels: LabelLevels, *, contrast: float, pores: bool) -> _Groups:
    solid = sorted((v, k) for k, v in levels.levels.items() if k > 0)
    gap = GROUP_GAP * levels.noise_sigma
    groups: list[list[tuple[float, int]]] = [[solid[0]]]
    for item in solid[1:]:
        if item[0] - groups[-1][-1][0] > gap:
            groups.append([item])
        else:
            groups[-1].append(item)
    bounds = np.array([(a[-1][0] + b[0][0]) / 2.0 for a, b in zip(groups[:-1], groups[1:], strict=True)])
    width = max(len(g) for g in groups)
    phases = np.zeros((len(groups) + 1, width), np.uint8)
    lev = np.full((len(groups) + 1, width), np.inf)
    for i, g in enumerate(groups, start=1):
        phases[i, : len(g)] = [k for _, k in g]
        lev[i, : len(g)] = [v for v, _ in g]
    pooled = np.array([False] + [len(g) > 1 for g in groups])
    pore = -np.inf
    if pores and 0 in levels.levels and levels.levels[0] < solid[0][0]:
        pore = min(levels.levels[0] + contrast * levels.noise_sigma, (levels.levels[0] + solid[0][0]) / 2.0)
    ceilings = np.full(len(groups) + 1, np.inf)
    if len(groups) < _MIXED:  # the flag needs the code to stay below it
        for i, g in enumerate(groups, start=1):
            if len(g) > 1:
                ceilings[i] = g[-1][0] + MIX_SIGMAS * levels.noise_sigma
    return _Groups(bounds, float(pore), phases, lev, pooled, ceilings)


def _mixed(code: np.ndarray, grey: np.ndarray, ceilings: np.ndarray) -> np.ndarray:
    """Voxels of a solid group whose grey lies above its ceiling."""
    return (code > 0) & (np.asarray(grey, np.float64) > ceilings[np.maximum(code, 0)])


def _unmixed_grains_block(grains: np.ndarray, part: np.ndarray, flat: np.ndarray, corrected: np.ndarray, *,
                          bounds: np.ndarray, pore: float, ceilings: np.ndarray) -> np.ndarray:
    """Grain ids with the mixed voxels (:data:`MIX_SIGMAS`, on the corrected grey) set to
    0, so that neither they nor their neighbours count as a grain's interior."""
    mixed = _mixed_block(part, flat, corrected, bounds=bounds, pore=pore, ceilings=ceilings)
    return np.where(mixed, 0, np.asarray(grains)).astype(np.asarray(grains).dtype)


def _mixed_block(part: np.ndarray, flat: np.ndarray, grey: np.ndarray | None = None, *, bounds: np.ndarray,
                 pore: float, ceilings: np.ndarray) -> np.ndarray:
    """:func:`_mixed` on one block: groups from the flattened grey, the test on ``grey``
    (default: the flattened grey too)."""
    return _mixed(_codes(part, flat, bounds, pore), flat if grey is None else grey, ceilings)


def _grown_block(mask: np.ndarray) -> np.ndarray:
    """A mask grown by its 3x3x3 box (one voxel of halo)."""
    from scipy import ndimage as ndi

    return ndi.maximum_filter(np.asarray(mask), size=3)


def _key_groups(groups: _Groups) -> dict[str, Any]:
    return {"bounds": groups.bounds, "pore": groups.pore, "ceilings": groups.ceilings}


def _codes(part: np.ndarray, flat: np.ndarray, bounds: np.ndarray, pore: float) -> np.ndarray:
    """Group code per voxel: -1 outside particles, 0 a pore, 1.. the solid groups."""
    c = np.asarray(flat, np.float64)
    code = np.where(c < pore, 0, 1 + np.searchsorted(bounds, c, side="right"))
    return np.where(np.asarray(part) > 0, code, -1)


def _region_keys(part: np.ndarray, flat: np.ndarray, *, bounds: np.ndarray, pore: float,
                 small: np.ndarray | None = None, ceilings: np.ndarray | None = None,
                 corrected: np.ndarray | None = None) -> np.ndarray:
    """Step 3 on one block: ``particle * 256 + 128 * small + 64 * mixed + group code + 1``
    (0 outside particles; the group code from the flattened grey; ``small``: the sorted
    ids of the particles pooled over the smaller radius; ``mixed``: the ``corrected``
    grey (default: the flattened) lies above ``ceilings`` of its group,
    :data:`MIX_SIGMAS`), exact in float64 (ids below ``2**44``)."""
    part = np.asarray(part)
    if part.size and int(part.max()) >= _MAX_ID:
        raise VolmlaError(f"particle ids must lie below 2**44 for region_phases, got {int(part.max())}")
    code = _codes(part, flat, bounds, pore)
    key = np.where(code >= 0, part.astype(np.float64) * 256.0 + code + 1, 0.0)
    if ceilings is not None:
        key = np.where(_mixed(code, flat if corrected is None else corrected, ceilings), key + float(_MIXED), key)
    if small is not None and small.size:
        at = np.minimum(np.searchsorted(small, part.astype(np.uint64)), small.size - 1)
        key = np.where((code >= 0) & (small[at] == part), key + 128.0, key)
    return key


def _key_block(part: np.ndarray, flat: np.ndarray, corrected: np.ndarray, *, small: np.ndarray | None = None,
               **groups: Any) -> np.ndarray:
    """Step 3 on one block, as the region kernel reads it: ``corrected + 1j * key``
    (:func:`_region_keys`; ``groups``: its bounds, pore and ceilings)."""
    key = _region_keys(part, flat, small=small, corrected=corrected, **groups)
    return np.asarray(corrected, np.float64) + 1j * key


def _stored_key_block(part: np.ndarray, flat: np.ndarray, corrected: np.ndarray, *,
                      small: np.ndarray | None = None, **groups: Any) -> np.ndarray:
    """:func:`_region_keys` as uint64, to store (piecewise constant: a few bytes a block)."""
    return _region_keys(part, flat, small=small, corrected=corrected, **groups).astype(np.uint64)


def _region_windows(keys: np.ndarray, corrected: np.ndarray, *, halo: tuple[int, int, int],
                    **kwargs: Any) -> np.ndarray:
    """:func:`_region_block` on windows read from the stored keys and corrected grey."""
    ext = np.asarray(corrected, np.float64) + 1j * np.asarray(keys, np.float64)
    return _region_block(ext, halo=halo, **kwargs)


def _level_map_block(part: np.ndarray, flat: np.ndarray, *, bounds: np.ndarray, pore: float,
                     group_levels: np.ndarray) -> np.ndarray:
    """The grey each voxel would have without noise or blur, as far as its group
    says: the void level outside particles, a group's mean level inside."""
    code = _codes(part, flat, bounds, pore)
    return group_levels[code + 1].astype(np.float32)


def _fraction_map_block(part: np.ndarray, flat: np.ndarray, frac: np.ndarray, *, bounds: np.ndarray,
                        pore: float, group_levels: np.ndarray) -> np.ndarray:
    """The level map from a known solid fraction: ``void + fraction * (level - void)``,
    the level of the voxel's group inside particles (the void's in a pore) and of the
    darkest solid group outside them."""
    code = _codes(part, flat, bounds, pore)
    level = np.where(code == 0, group_levels[0], group_levels[np.maximum(code, 1) + 1])
    f = np.asarray(frac, np.float64)
    f = np.where(np.isfinite(f), np.clip(f, 0.0, 1.0), np.asarray(part) > 0)  # unknown: the particles' edge
    return (group_levels[0] + f * (level - group_levels[0])).astype(np.float32)


def _edge_block(lmap: np.ndarray) -> np.ndarray:
    """Voxels whose 3x3x3 box holds more than one level (within a voxel of an edge)."""
    from scipy import ndimage as ndi

    return ndi.maximum_filter(lmap, size=3) != ndi.minimum_filter(lmap, size=3)


def _kept(ph: da.Array, name: str, *, scratch: Any, like: da.Array) -> da.Array:
    """``ph`` with ``like``'s chunks, stored once on ``scratch`` (recomputed per use without one)."""
    ph = _like(ph, like)
    if scratch is None:
        return ph
    return _like(store(ph, scratch / f"{name}.zarr", desc=f"storing the {name} phases"), like)


def _like(a: da.Array, ref: da.Array) -> da.Array:
    """``a`` in ``ref``'s chunks (a halo map merges chunks thinner than its halo)."""
    return a if a.chunks == ref.chunks else a.rechunk(ref.chunks)


def _blur(block: np.ndarray, *, sigma: float) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(np.asarray(block, np.float32), sigma, mode="nearest")


def _psf_halo(sigma: float) -> int:
    return int(4.0 * sigma + 0.5) + 1


def _sq_resid(flat: np.ndarray, blurred: np.ndarray, edge: np.ndarray, *, unit: float) -> np.ndarray:
    d = (np.asarray(flat, np.float64) - np.asarray(blurred, np.float64)) / unit
    return np.rint(np.where(edge, d * d, 0.0) * 1024.0).astype(np.int64)


def estimate_psf(flat: da.Array, lmap: da.Array, *, noise_sigma: float,
                 field_of_view: FieldOfView | None = None) -> float:
    """The gaussian PSF sigma (voxels) that best explains the grey at the edges.

    On a central crop of at most :data:`PSF_CROP` voxels per axis, the level map (void,
    phase groups) is blurred with each sigma of :data:`PSF_SIGMAS`; the one whose blur
    is nearest the flattened grey (sum of squares over the voxels within one voxel of
    an edge, exact integers) wins.

    Parameters
    ----------
    flat
        Flattened intensity (:func:`flatten_cupping`).
    lmap
        Level map (void level outside particles, group levels inside).
    noise_sigma
        The unit of the residuals.
    field_of_view
        The scan's field of view: only edges more than :data:`FOV_MARGIN` voxels inside
        it count (a particle cut by the circle ends there in a step the scan never
        blurred).

    Returns
    -------
    float
        The PSF sigma.
    """
    from volmla.engine.cluster import compute
    from volmla.engine.overlap import halo_map

    crop = tuple(slice(max((n - PSF_CROP) // 2, 0), max((n - PSF_CROP) // 2, 0) + min(n, PSF_CROP))
                 for n in flat.shape)
    f, lm = flat[crop], lmap[crop]
    edge = _like(halo_map(lm, _edge_block, halo=1, boundary="nearest", dtype=bool), f)
    if field_of_view is not None:
        cy, cx = field_of_view.center
        inner = FieldOfView((cy - crop[1].start, cx - crop[2].start), max(field_of_view.radius - FOV_MARGIN, 0.0), 0.0)
        edge = fill_outside(edge, inner, False)
    sums = []
    for sigma in PSF_SIGMAS:
        blurred = lm if sigma == 0 else _like(halo_map(lm, _blur, halo=_psf_halo(sigma), boundary="nearest",
                                                       dtype=np.float32, sigma=sigma), f)
        sums.append(da.map_blocks(functools.partial(_sq_resid, unit=max(noise_sigma, 1e-300)), f, blurred, edge,
                                  dtype=np.int64, meta=np.empty((0, 0, 0), np.int64)).sum(dtype=np.int64))
    totals = compute(sums, desc="PSF")
    return float(PSF_SIGMAS[int(np.argmin(np.asarray(totals, np.int64)))])


@numba.njit(nogil=True, cache=True)
def _erode(key: np.ndarray, inside: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Voxels of ``inside`` whose six neighbours are ``inside`` with the same key."""
    nz, ny, nx = key.shape
    out = np.zeros((nz, ny, nx), np.bool_)
    for z in range(1, nz - 1):
        for y in range(1, ny - 1):
            for x in range(1, nx - 1):
                k = key[z, y, x]
                if k != 0 and inside[z, y, x] and inside[z - 1, y, x] and inside[z + 1, y, x] \
                        and inside[z, y - 1, x] and inside[z, y + 1, x] and inside[z, y, x - 1] \
                        and inside[z, y, x + 1] and key[z - 1, y, x] == k and key[z + 1, y, x] == k \
                        and key[z, y - 1, x] == k and key[z, y + 1, x] == k and key[z, y, x - 1] == k \
                        and key[z, y, x + 1] == k:
                    out[z, y, x] = True
    return out


@numba.njit(nogil=True, cache=True)
def _pooled_means(c: np.ndarray, key: np.ndarray, depth: np.ndarray, pooled: np.ndarray, dz: np.ndarray,
                  dy: np.ndarray, dx: np.ndarray, w: np.ndarray, h: int,
                  least: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Per voxel of a particle: the Gaussian-weighted mean of ``c`` over the same-key
    voxels of the ball, from the deepest interior level (``depth``: erosions survived)
    down until the weights reach ``least`` (never the shell, depth 0); and, where the
    ball holds no interior of the voxel's own group, the brighter group of its particle
    whose interior weighs most in the ball (-1: none). A mixed voxel (key flag 64) pools
    the unflagged voxels of its group; flagged voxels are in no one's pool."""
    nz, ny, nx = c.shape
    top = 0
    for v in depth.ravel():
        top = max(top, v)
    s = np.zeros(top + 1)
    sw = np.zeros(top + 1)
    s0 = np.zeros(top + 1)
    sw0 = np.zeros(top + 1)
    other = np.zeros(256)
    out = np.full((nz - 2 * h, ny - 2 * h, nx - 2 * h), np.nan)
    adopt = np.full((nz - 2 * h, ny - 2 * h, nx - 2 * h), -1, np.int64)
    for z in range(h, nz - h):
        for y in range(h, ny - h):
            for x in range(h, nx - h):
                k = key[z, y, x]
                if k == 0:
                    continue
                low = np.int64(k) % 256
                code = low % 64
                kt = k - 64.0 * ((low % 128) // 64)  # a mixed voxel pools its group around it
                ws = low // 128 if pooled[code - 1] else 0  # the smaller region: pooled groups only
                s[:] = 0.0
                sw[:] = 0.0
                s0[:] = 0.0
                sw0[:] = 0.0
                for i in range(dz.size):
                    zz, yy, xx = z + dz[i], y + dy[i], x + dx[i]
                    if key[zz, yy, xx] == kt:
                        d = depth[zz, yy, xx]
                        wi = w[ws, i]
                        s[d] += wi * c[zz, yy, xx]
                        sw[d] += wi
                        if ws > 0:  # the whole ball too: whether its own interior is in reach
                            s0[d] += w[0, i] * c[zz, yy, xx]
                            sw0[d] += w[0, i]
                acc = 0.0
                accw = 0.0
                for d in range(top, 0, -1):
                    acc += s[d]
                    accw += sw[d]
                    if accw >= least:
                        break
                if accw == 0 and ws > 0:
                    for d in range(top, 0, -1):
                        acc += s0[d]
                        accw += sw0[d]
                        if accw >= least:
                            break
                if accw > 0:
                    if pooled[code - 1]:
                        out[z - h, y - h, x - h] = acc / accw
                    continue
                # no interior of its own group: a mixture of a brighter group and the void?
                other[:] = 0.0
                part = np.floor(k / 256.0)
                for i in range(dz.size):
                    zz, yy, xx = z + dz[i], y + dy[i], x + dx[i]
                    kk = key[zz, yy, xx]
                    if kk != 0 and depth[zz, yy, xx] > 0 and np.floor(kk / 256.0) == part:
                        kl = (np.int64(kk) % 256) % 128
                        if kl < 64:  # mixed voxels are no group's interior
                            other[kl] += w[0, i]
                best = -1
                bw = 0.0
                for j in range(code + 1, 64):
                    if other[j] > bw:
                        bw = other[j]
                        best = j
                adopt[z - h, y - h, x - h] = best - 1 if best > 0 else -1
    return out, adopt


def _offsets(radius: int, small: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ball offsets of ``radius`` and their Gaussian weights: row 0 for ``radius``, row 1
    for the smaller radius ``small`` (0: the same as row 0) over the same offsets."""
    r = np.arange(-radius, radius + 1)
    dz, dy, dx = (a.ravel() for a in np.meshgrid(r, r, r, indexing="ij"))
    d2 = dz * dz + dy * dy + dx * dx
    ball = d2 <= radius * radius
    d2 = d2[ball]
    rows = []
    for rad in (radius, small or radius):
        sig = rad * WEIGHT_SIGMA
        rows.append(np.where(d2 <= rad * rad, np.exp(-d2 / (2 * sig * sig)), 0.0))
    return (dz[ball].astype(np.int64), dy[ball].astype(np.int64), dx[ball].astype(np.int64), np.stack(rows))


def _region_block(ext: np.ndarray, *, halo: tuple[int, int, int], groups: _Groups, radius: int,
                  depth: int, small_radius: int = 0) -> np.ndarray:
    """Step 5 on one extended block: the phase of every voxel."""
    c = np.ascontiguousarray(ext.real)
    key = np.ascontiguousarray(ext.imag)
    h = halo[0]
    assert halo == (h, h, h)
    dz, dy, dx, w = _offsets(radius, small_radius)
    level = np.zeros(key.shape, np.int64)
    inside = key != 0
    for _ in range(depth):
        inside = _erode(key, inside)
        level += inside
    mean, adopt = _pooled_means(c, key, level, groups.pooled, dz, dy, dx, w, h, LEAST_WEIGHT)
    inner = (slice(h, c.shape[0] - h), slice(h, c.shape[1] - h), slice(h, c.shape[2] - h))
    k = key[inner]
    own = c[inner]
    inside = k > 0
    code = np.where(inside, np.mod(np.mod(k, 256), 64).astype(np.int64) - 1, 0)
    code = np.where(adopt >= 0, adopt, code)
    value = np.where(np.isnan(mean), own, mean)
    dist = np.abs(value[..., None] - groups.levels[code])
    best = np.argmin(dist, axis=-1)
    phase = np.take_along_axis(groups.phases[code], best[..., None], axis=-1)[..., 0]
    return np.where(inside, phase, 0).astype(np.uint8)


# --------------------------------------------------------------------------- step 5b


def _deep_block(keyp: np.ndarray, *, half: int) -> np.ndarray:
    """``phase`` where the voxel's box of half-width ``half`` is all one (particle, phase)
    (``keyp = particle << 8 | phase``), else 0."""
    from scipy import ndimage as ndi

    keyp = np.asarray(keyp, np.uint64)
    size = 2 * half + 1
    same = (ndi.minimum_filter(keyp, size=size) == keyp) & (ndi.maximum_filter(keyp, size=size) == keyp)
    return np.where(same, keyp & np.uint64(255), 0).astype(np.uint8)


def _level_sums(packed: np.ndarray, origin: Sequence[int]) -> np.ndarray:
    """Per phase 0..255: deep voxels and their fixed-point grey sum (``phase << 40 | q + 2**39``)."""
    packed = np.asarray(packed, np.int64).ravel()
    phase = packed >> 40
    sel = phase > 0
    q = (packed[sel] & (2**40 - 1)) - 2**39
    out = np.zeros((2, 256), np.int64)
    out[0] = np.bincount(phase[sel], minlength=256)[:256]
    np.add.at(out[1], phase[sel], q)
    return out.ravel()


def _pack_deep(deep: np.ndarray, corrected: np.ndarray, *, scale: float) -> np.ndarray:
    q = np.clip(np.rint(np.asarray(corrected, np.float64) * scale), -(2**39) + 1, 2**39 - 1).astype(np.int64)
    return (np.asarray(deep).astype(np.int64) << 40) | (q + 2**39)


def _refine_levels(ph: da.Array, lab: da.Array, corrected: da.Array, levels: LabelLevels,
                   groups: _Groups) -> tuple[LabelLevels, _Groups]:
    """Step 5b: the level of every phase of a pooled group re-measured on the scan itself,
    as the mean corrected grey of the voxels of its provisional grains at least
    :data:`REFINE_DEPTH` voxels inside them (one global pass; exact integer sums)."""
    from volmla.engine.cluster import compute
    from volmla.engine.overlap import halo_map
    from volmla.engine.reduce import block_tables

    keyp = da.map_blocks(_pack_particle_label, lab, ph, dtype=np.uint64, meta=np.empty((0, 0, 0), np.uint64))
    deep = _like(halo_map(keyp, _deep_block, halo=REFINE_DEPTH, boundary="constant", cval=0, dtype=np.uint8,
                          half=REFINE_DEPTH), lab)
    scale = 2.0**16 / max(levels.noise_sigma, 1e-300)
    packed = da.map_blocks(functools.partial(_pack_deep, scale=scale), deep, corrected.rechunk(lab.chunks),
                           dtype=np.int64, meta=np.empty((0, 0, 0), np.int64))
    (table,) = compute([block_tables(packed, _level_sums, 2 * 256)], desc="level refinement")
    n, total = np.asarray(table, np.int64).reshape(2, 256)
    new = dict(levels.levels)
    lev = groups.levels.copy()
    for g in range(1, groups.phases.shape[0]):
        if not groups.pooled[g]:
            continue
        for j, k in enumerate(groups.phases[g]):
            if k > 0 and n[k] >= MIN_NOISE_VOXELS:
                new[int(k)] = float(total[k] / n[k] / scale)
                lev[g, j] = new[int(k)]
    logger.info("regions: levels refined on the scan %s (from the labels %s)",
                {k: round(v, 1) for k, v in new.items()}, {k: round(v, 1) for k, v in levels.levels.items()})
    return levels._replace(levels=new), groups._replace(levels=lev)


# --------------------------------------------------------------------------- step 7


def _interior_block(grains: np.ndarray) -> np.ndarray:
    """Voxels of a grain whose six neighbours are of the same grain."""
    g = np.asarray(grains)
    inner = (slice(1, -1),) * 3
    core = g[inner]
    ok = core != 0
    for axis in range(3):
        for step in (-1, 1):
            sl = [slice(1, -1)] * 3
            sl[axis] = slice(1 + step, g.shape[axis] - 1 + step)
            ok &= g[tuple(sl)] == core
    out = np.zeros(g.shape, bool)
    out[inner] = ok
    return out


def _grain_sums(grains: np.ndarray, interior: np.ndarray, flat: np.ndarray, ph: np.ndarray, *,
                scale: float) -> dict[str, np.ndarray]:
    """Step 7 on one block: per grain, its phase, interior voxels and fixed-point grey sum."""
    g = np.asarray(grains).ravel()
    sel = g != 0
    gs = g[sel].astype(np.uint64)
    uk, first, inv = np.unique(gs, return_index=True, return_inverse=True)
    inside = np.asarray(interior).ravel()[sel]
    q = np.where(inside, np.rint(np.asarray(flat, np.float64).ravel()[sel] * scale), 0).astype(np.int64)
    sums = np.zeros(uk.size, np.int64)
    np.add.at(sums, inv, q)
    return {"grain": uk, "phase": np.asarray(ph).ravel()[sel][first].astype(np.int64),
            "n": np.bincount(inv, weights=inside, minlength=uk.size).astype(np.int64), "sum": sums}


def _grain_decisions(rows: list[dict[str, np.ndarray]], groups: _Groups, *, scale: float,
                     min_grain: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 7 after the blocks: grains of a pooled group with at least ``min_grain``
    interior voxels take the phase whose level is nearest their interior mean."""
    uk, merged = merge_grain_rows(rows, summed=("n", "sum"))
    if not uk.size:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint8)
    n, sums, phase = merged["n"], merged["sum"], merged["phase"]
    group = np.zeros(256, np.int64)
    for g in range(1, groups.phases.shape[0]):
        group[groups.phases[g][groups.phases[g] > 0]] = g
    code = group[phase]
    mean = sums / np.maximum(n, 1) / scale
    best = np.argmin(np.abs(mean[:, None] - groups.levels[code]), axis=1)
    target = groups.phases[code, best].astype(np.int64)
    change = (n >= max(min_grain, 1)) & groups.pooled[code] & (target != phase) & (target > 0)
    return uk[change], target[change].astype(np.uint8)


# --------------------------------------------------------------------------- public


def _particle_volumes(particles: VolumeLike) -> np.ndarray:
    """Voxels per particle id (index 0: the background); one global pass."""
    from volmla.engine.cluster import compute
    from volmla.engine.reduce import block_tables

    lab = as_volume(particles, name="particles", integer=True).data
    (top,) = compute([lab.max()], desc="particle count")
    n = int(top) + 1
    counts = block_tables(lab, lambda b, origin: np.bincount(b.ravel().astype(np.int64), minlength=n)[:n], n)
    (volumes,) = compute([counts], desc="particle volumes")
    return np.asarray(volumes, np.int64)


def _small_particles(volumes: np.ndarray, radius: int) -> np.ndarray:
    """Sorted ids of the particles whose own size asks for a smaller region than ``radius``:
    :data:`AUTO_RADIUS_FRACTION` of their equivalent radius below it."""
    r_eq = np.cbrt(3.0 * volumes.astype(np.float64) / (4.0 * np.pi))
    ids = np.flatnonzero((volumes > 0) & (AUTO_RADIUS_FRACTION * r_eq < radius))
    return ids[ids > 0].astype(np.uint64)


def auto_radius(particles: VolumeLike) -> int:
    """The region radius for particles of these sizes (one global pass: their volumes).

    :data:`AUTO_RADIUS_FRACTION` of the median equivalent-sphere radius
    ``(3 V / 4 pi)^(1/3)`` of the particles of at least :data:`AUTO_MIN_VOXELS` voxels,
    rounded down and kept in :data:`AUTO_RADIUS_RANGE`; :data:`DEFAULT_RADIUS` without
    such particles. Measured (``benchmarks/bench_truth.py``, the demo): crushed ore of
    median r_eq 4.5 and 7.2 voxels takes 3 (4 made one easy seed's LD error 0.037 instead
    of 0.008); the demo's particles (r_eq 8.5) take 4 (3 left its quartz and feldspar LD
    0.16 and 0.29 below the truth, 4 within 0.02).

    Parameters
    ----------
    particles
        Particle ids (0 = background).

    Returns
    -------
    int
        Voxels.

    Examples
    --------
    >>> p = np.zeros((20, 20, 20), np.uint32); p[2:18, 2:18, 2:18] = 1  # r_eq ~ 9.9
    >>> auto_radius(p)
    4
    """
    v = _particle_volumes(particles)[1:].astype(np.float64)
    v = v[v >= AUTO_MIN_VOXELS]
    if not v.size:
        return DEFAULT_RADIUS
    r_eq = float(np.median(np.cbrt(3.0 * v / (4.0 * np.pi))))
    lo, hi = AUTO_RADIUS_RANGE
    return int(min(max(math.floor(AUTO_RADIUS_FRACTION * r_eq), lo), hi))


def check_psf(psf_sigma: Any) -> None:
    """Refuse (one line) a PSF sigma that is neither None nor a number of voxels in ``0..MAX_PSF``.

    Examples
    --------
    >>> check_psf(0.8)
    >>> check_psf(-1)
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: psf_sigma must be a number of voxels from 0 to 10 (or None: estimated), got -1
    """
    if psf_sigma is not None and not (isinstance(psf_sigma, int | float) and not isinstance(psf_sigma, bool)
                                      and math.isfinite(psf_sigma) and 0 <= psf_sigma <= MAX_PSF):
        raise VolmlaError(f"psf_sigma must be a number of voxels from 0 to {MAX_PSF:g} (or None: estimated), "
                          f"got {psf_sigma!r}")


class CorrectedGrey(NamedTuple):
    """What :func:`corrected_grey` returns."""

    flat: da.Array
    """The grey with cupping and rings taken out (step 2), float32."""
    corrected: da.Array
    """``flat`` with the partial volume taken out too (step 4), float32."""
    psf_sigma: float
    """The PSF sigma (voxels) of the correction (0: none)."""


def corrected_grey(
    intensity: VolumeLike,
    particles: VolumeLike,
    levels: LabelLevels,
    *,
    psf_sigma: float | None = None,
    solid_fraction: VolumeLike | None = None,
    contrast: float = DEFAULT_CONTRAST,
    pores: bool = False,
    field_of_view: FieldOfView | None = None,
) -> CorrectedGrey:
    """The grey :func:`region_phases` classifies: flattened (step 2) and corrected for
    partial volume (step 4), lazily, in the particles' chunks.

    Parameters
    ----------
    intensity
        The CT volume.
    particles
        Particle ids, same shape; voxels outside particles are void.
    levels
        The levels fitted on the sparse labels (:func:`label_levels`).
    psf_sigma
        Gaussian PSF sigma (voxels); None: estimated (:func:`estimate_psf`, one pass over
        a central crop), or 0 with a warning when ``levels`` hold no void level and some
        voxels lie outside particles (the level map's outside is unknown; one more pass
        says whether any does); 0: no partial-volume correction. A sigma above 0 needs
        the void level unless the particles fill the volume.
    solid_fraction
        A known sub-voxel solid fraction for the level map's edges (as in
        :func:`region_phases`); None: the particles' binary edges.
    contrast, pores
        As in :func:`region_phases` (which voxels of a particle count as pores).
    field_of_view
        The scan's field of view, for the PSF's estimate (:func:`estimate_psf`).

    Returns
    -------
    CorrectedGrey
        ``flat``, ``corrected`` (lazy float32) and the ``psf_sigma`` used.

    Examples
    --------
    >>> ph = np.zeros((24, 24, 24), np.uint8); ph[4:20, 4:20, 4:20] = 1
    >>> img = np.array([100.0, 1000.0])[ph].astype(np.float32)
    >>> levels = LabelLevels({0: 100.0, 1: 1000.0}, 10.0, 0.0, {0: 1000, 1: 1000})
    >>> grey = corrected_grey(img, ph.astype(np.uint32), levels, psf_sigma=0.0)
    >>> float(grey.corrected[12, 12, 12].compute()), grey.psf_sigma
    (1000.0, 0.0)
    """
    from volmla.engine.overlap import halo_map

    check_psf(psf_sigma)
    shapes = [tuple(getattr(v, "shape", np.shape(v))) for v in (intensity, particles, solid_fraction) if v is not None]
    if len(set(shapes)) > 1:
        raise VolmlaError(f"intensity, particles and solid_fraction must have the same shape, got {shapes}")
    lab = as_volume(particles, name="particles", integer=True).data
    image = as_volume(intensity, name="intensity", chunks=lab.chunks).data
    image = image if image.chunks == lab.chunks else image.rechunk(lab.chunks)
    groups = _groups(levels, contrast=float(contrast), pores=bool(pores))
    flat = flatten_cupping(image, levels)
    void_level = levels.levels.get(0)
    if void_level is None and psf_sigma != 0:
        from volmla.engine.cluster import compute

        (outside,) = compute([(lab == 0).any()], desc="void outside particles")
        if outside:
            # a level map with a guessed void (0 grey) fitted a PSF of 0.4 voxel to a sharp
            # phantom and lifted its faces by 4 noise sigmas
            if psf_sigma:
                raise VolmlaError(f"psf_sigma={psf_sigma} needs the void's grey level, and the levels hold none: "
                                  "label some void, or pass psf_sigma=0")
            logger.warning("partial volume: not corrected, the levels hold no void level (no void voxel, "
                           "labelled or not, away from every particle)")
            return CorrectedGrey(flat, flat, 0.0)
    # partial volume: subtract what the blur of the level map adds at each voxel (no void
    # level: the particles fill the volume, and the map's void value is never used)
    void_level = 0.0 if void_level is None else float(void_level)
    glev = np.array([void_level, void_level] + [float(np.mean(row[np.isfinite(row)])) for row in groups.levels[1:]])
    if solid_fraction is None:
        lmap = da.map_blocks(functools.partial(_level_map_block, bounds=groups.bounds, pore=groups.pore,
                                               group_levels=glev), lab, flat, dtype=np.float32,
                             meta=np.empty((0, 0, 0), np.float32))
    else:
        frac = as_volume(solid_fraction, name="solid_fraction", chunks=lab.chunks).data
        frac = frac if frac.chunks == lab.chunks else frac.rechunk(lab.chunks)
        lmap = da.map_blocks(functools.partial(_fraction_map_block, bounds=groups.bounds, pore=groups.pore,
                                               group_levels=glev), lab, flat, frac, dtype=np.float32,
                             meta=np.empty((0, 0, 0), np.float32))
    if psf_sigma is None:
        psf_sigma = estimate_psf(flat, lmap, noise_sigma=levels.noise_sigma, field_of_view=field_of_view)
    corrected = flat
    if psf_sigma > 0:
        blurred = _like(halo_map(lmap, _blur, halo=_psf_halo(psf_sigma), boundary="nearest", dtype=np.float32,
                                 sigma=float(psf_sigma)), lmap)
        corrected = flat - (blurred - lmap)
    return CorrectedGrey(flat, corrected, float(psf_sigma))


def region_psf(
    intensity: VolumeLike,
    particles: VolumeLike,
    levels: LabelLevels,
    *,
    psf_sigma: float | None = None,
    solid_fraction: VolumeLike | None = None,
    contrast: float = DEFAULT_CONTRAST,
    pores: bool = False,
    field_of_view: FieldOfView | None = None,
    **region_options: Any,
) -> float:
    """The PSF sigma (voxels) :func:`region_phases` corrects with, given the same options.

    ``psf_sigma`` as given, else estimated (:func:`estimate_psf`, one pass over a central
    crop; 0 with a warning where the levels hold no void level and some voxels lie outside
    particles). A caller that records the sigma estimates it here once and hands it to
    :func:`region_phases` as ``psf_sigma``.

    Parameters
    ----------
    intensity, particles, levels, psf_sigma, solid_fraction, contrast, pores, field_of_view
        As in :func:`region_phases`.
    **region_options
        The other options of :func:`region_phases` (they do not change the PSF), so that
        one dict of options serves both calls.

    Returns
    -------
    float

    Examples
    --------
    >>> ph = np.zeros((24, 24, 24), np.uint8); ph[4:20, 4:20, 4:20] = 1
    >>> levels = LabelLevels({0: 100.0, 1: 1000.0}, 10.0, 0.0, {0: 1000, 1: 1000})
    >>> region_psf(np.array([100.0, 1000.0])[ph], ph.astype(np.uint32), levels, psf_sigma=0.6, radius=3)
    0.6
    """
    return corrected_grey(intensity, particles, levels, psf_sigma=psf_sigma, solid_fraction=solid_fraction,
                          contrast=contrast, pores=pores, field_of_view=field_of_view).psf_sigma


def region_phases(
    intensity: VolumeLike,
    particles: VolumeLike,
    labels: VolumeLike | None = None,
    *,
    levels: LabelLevels | None = None,
    radius: int | Literal["auto"] = "auto",
    min_grain: int = MIN_GRAIN,
    contrast: float = DEFAULT_CONTRAST,
    depth: int = DEFAULT_DEPTH,
    psf_sigma: float | None = None,
    solid_fraction: VolumeLike | None = None,
    grains: bool = True,
    pores: bool = False,
    per_particle: bool = False,
    refine: bool = False,
    mrf: bool = False,
    field_of_view: FieldOfView | None = None,
) -> da.Array:
    """Phases inside particles classified by region (pooled, flattened, partial-volume
    corrected grey).

    The steps are in the module docstring. The levels and the grain tables are global
    reductions (computed here); the phase volume comes back lazily, in the particles'
    chunks, and is the same for any chunking.

    Parameters
    ----------
    intensity
        The CT volume.
    particles
        Particle ids (below ``2**44``), same shape; voxels outside particles are void.
    labels
        Sparse labels (``phase + 1``, 0 unlabelled), e.g. correlative planes: the phase
        levels and the cupping are fitted on them. Give either ``labels`` or ``levels``.
    levels
        Levels already fitted (:func:`label_levels`).
    radius
        Radius (voxels, >= 1) of the region a voxel is classified by; the Gaussian
        weights have sigma ``radius / 2``. ``"auto"`` (default): :func:`auto_radius` of
        the particles.
    min_grain
        Grains of fewer voxels without grey contrast go to their surroundings, and
        grains of at least this many interior voxels are reclassified as one region
        (:data:`volmla.segment.regions.MIN_GRAIN`; 0 turns both off).
    contrast
        Noise sigmas that make a small grain a real inclusion (as in
        :func:`volmla.segment.regions.clean_phases`), and above the void level that
        make a particle voxel solid with ``pores=True``.
    depth
        How far (voxels, 6-connected) a voxel must lie inside its particle and group to
        enter a region's mean (>= 1: the shell, a mixture, never does); with more, the
        deepest voxels are used first and shallower ones only where the deep ones weigh
        less than :data:`LEAST_WEIGHT` (default :data:`DEFAULT_DEPTH`, enough once the
        partial volume is corrected).
    psf_sigma
        Gaussian PSF sigma (voxels) of the partial-volume correction (step 4); None:
        estimated (:func:`estimate_psf`); 0: no correction.
    solid_fraction
        The solid fraction (0-1) of every voxel, same shape, when it is known below the
        voxel (from a finer scan, a mesh, or a phantom's truth): the level map of the
        partial-volume correction becomes ``void + fraction * (group level - void)``
        (the darkest solid group's level outside particles) instead of the particles'
        binary edges (values clipped to 0-1; a non-finite one keeps the particles'
        edge). Default None: the particles' edges. Measured on hard phantoms
        (``benchmarks/bench_truth.py --pv-geometry``): with the CT's own particles the
        true fraction takes hard seed 1's largest LD error from 0.165 to 0.034, so the
        binary edge is what fails end to end there.
    grains
        Reclassify whole grains by their pooled interior grey (step 7).
    pores
        Call a particle voxel void (a pore) when its grey lies within ``contrast``
        noise sigmas of the void level (and below the mid-grey to the darkest phase).
        Off by default: the particles are the solid, and a voxel on a blurred surface
        is a mixture that the partial-volume measure apportions, not a pore.
    per_particle
        Pool the voxels of particles smaller than ``2 radius`` (equivalent radius) over
        ``radius - 1`` (at least 2), so a region stays inside one grain of a small
        particle; one more global pass (particle volumes). Off by default (module
        docstring: measured, not yet a consistent gain).
    refine
        Step 5b: re-measure the levels of the pooled groups on the scan's own provisional
        grains and classify again (module docstring; off by default).
    mrf
        Step 5c: re-decide the phases of the pooled groups by a Potts field inside each
        particle, started from the pooled classes (:func:`volmla.segment.mrf.potts_phases`
        with its defaults; off by default).
    field_of_view
        The scan's cylindrical field of view (:mod:`volmla.preprocess.fov`): the levels
        and the PSF are fitted on its inside only. None: every voxel is data.

    Returns
    -------
    dask.array.Array
        uint8 phase ids (0 = void).

    Examples
    --------
    Two phases 1 noise sigma apart, split down the middle of one particle: voxel by
    voxel 31 % would be wrong, by region only some next to the boundary are.

    >>> rng = np.random.default_rng(0)
    >>> ph = np.zeros((24, 24, 24), np.uint8); ph[2:22, 2:22, 2:12] = 1; ph[2:22, 2:22, 12:22] = 2
    >>> img = np.array([100.0, 1000.0, 1010.0])[ph] + rng.normal(0, 10, ph.shape)
    >>> labels = np.zeros_like(ph); labels[12] = ph[12] + 1
    >>> out = region_phases(img.astype(np.float32), (ph > 0).astype(np.uint32), labels).compute()
    >>> bool((out != ph).mean() < 0.02)
    True
    """
    from volmla.engine.cluster import compute
    from volmla.engine.overlap import halo_map
    from volmla.particles import label_grains

    if (labels is None) == (levels is None):
        raise VolmlaError("region_phases needs labels=SPARSE_LABELS or levels= (one of them)")
    if radius != "auto" and (isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 1):
        raise VolmlaError(f"radius must be 'auto' or an integer >= 1 (voxels), got {radius!r}")
    for name, flag in (("per_particle", per_particle), ("refine", refine), ("grains", grains), ("pores", pores),
                       ("mrf", mrf)):
        if not isinstance(flag, bool | np.bool_):
            raise VolmlaError(f"{name} must be True or False, got {flag!r}")
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 1:
        raise VolmlaError(f"depth must be an integer >= 1 (voxels), got {depth!r}")
    if isinstance(min_grain, bool) or not isinstance(min_grain, int | np.integer) or min_grain < 0:
        raise VolmlaError(f"min_grain must be a non-negative integer (voxels), got {min_grain!r}")
    if not (isinstance(contrast, int | float) and math.isfinite(contrast) and contrast >= 0):
        raise VolmlaError(f"contrast must be a non-negative number of noise sigmas, got {contrast!r}")
    check_psf(psf_sigma)
    shapes = [tuple(getattr(v, "shape", np.shape(v))) for v in (intensity, particles)]
    for extra in (labels, solid_fraction):
        if extra is not None:
            shapes.append(tuple(getattr(extra, "shape", np.shape(extra))))
    if len(set(shapes)) > 1:
        raise VolmlaError(f"intensity, particles, labels and solid_fraction must have the same shape, got {shapes}")
    lab = as_volume(particles, name="particles", integer=True).data
    image = as_volume(intensity, name="intensity", chunks=lab.chunks).data
    image = image if image.chunks == lab.chunks else image.rechunk(lab.chunks)
    if radius == "auto":
        radius = auto_radius(lab)
        logger.info("regions: radius %d voxels (from the particles' sizes)", radius)
    if levels is None:
        assert labels is not None
        levels = label_levels(image, labels, particles=lab, field_of_view=field_of_view)
    if not any(k > 0 for k in levels.levels):
        raise VolmlaError("levels must hold at least one solid phase")
    groups = _groups(levels, contrast=float(contrast), pores=bool(pores))
    if groups.phases.shape[0] > 127:
        raise VolmlaError(f"region_phases handles at most 126 contrast groups, got {groups.phases.shape[0] - 1}")
    grey = corrected_grey(image, lab, levels, psf_sigma=psf_sigma, solid_fraction=solid_fraction,
                          contrast=float(contrast), pores=bool(pores), field_of_view=field_of_view)
    flat, corrected = grey.flat, grey.corrected
    scratch = session_scratch("volmla-regions-", what="the pooled phase volume")
    small = None
    small_radius = 0
    if per_particle and int(radius) > 2 and groups.pooled.any():
        small_radius = int(radius) - 1
        small = _small_particles(_particle_volumes(lab), int(radius))
        logger.info("regions: %d particles pooled over radius %d", small.size, small_radius)
    h = int(radius) + int(depth)
    geometry: dict[str, Any] = {"radius": int(radius), "depth": int(depth), "small_radius": small_radius}
    region: Callable[..., da.Array]
    if scratch is not None:
        # every later pass (regions, refinement, cleaning, grains as regions) reads the
        # corrected grey and the region keys from scratch: no pass recomputes the blur's
        # chain, and each region task reads its own window (no wavefront of neighbour
        # blocks held in memory, :mod:`volmla.engine.windows`)
        keys = da.map_blocks(functools.partial(_stored_key_block, **_key_groups(groups)),
                             lab, flat, corrected, small=shared(small), dtype=np.uint64,
                             meta=np.empty((0, 0, 0), np.uint64))
        stored = store_together([(corrected, scratch / "corrected.zarr", "intensity"),
                                 (keys, scratch / "keys.zarr", "labels")],
                                desc="storing the corrected grey and region keys")
        corrected = _like(stored[0], lab)
        sources = [scratch / "keys.zarr", scratch / "corrected.zarr"]

        def region(*, groups: _Groups) -> da.Array:
            return window_map(functools.partial(_region_windows, groups=groups, **geometry), sources,
                              chunks=lab.chunks, halo=(h, h, h), dtype=np.uint8, name="regions")
    else:
        keyed = da.map_blocks(functools.partial(_key_block, **_key_groups(groups)),
                              lab, flat, corrected, small=shared(small), dtype=np.complex128, meta=np.empty((0, 0, 0), np.complex128))
        region = functools.partial(halo_map, keyed, _region_block, halo=h, boundary="constant", cval=0.0,
                                   dtype=np.uint8, crops=True, **geometry)
    # the cleaning and the grains as regions read the phases in ~7 passes (grain labelling
    # scans and relabels, tables, the final write): each stage's result is stored once on
    # scratch, so the region kernel runs once and no pass holds a wide graph's intermediates
    kept = functools.partial(_kept, scratch=scratch, like=lab)
    ph = kept(region(groups=groups), "pooled")
    if refine and groups.pooled.any():
        levels, groups = _refine_levels(ph, lab, corrected, levels, groups)
        ph = kept(region(groups=groups), "refined")
    if mrf and groups.pooled.any():
        from volmla.segment.mrf import potts_phases

        ph = kept(potts_phases(corrected, lab, ph, levels=levels), "potts")
    plevels = levels.phase_levels()
    if min_grain > 1:
        ph = clean_phases(ph, lab, corrected, min_grain=int(min_grain), contrast=float(contrast), levels=plevels)
    if not grains or min_grain < 1 or not groups.pooled.any():
        return ph
    ph = kept(ph, "cleaned")
    # step 7: grains as regions (grain labels, per-block rows of interior sums, decisions, relabel)
    ph = ph if ph.chunks == lab.chunks else ph.rechunk(lab.chunks)
    glab = label_grains(lab, ph).labels.data
    glab = glab if glab.chunks == lab.chunks else glab.rechunk(lab.chunks)
    unmixed = da.map_blocks(functools.partial(_unmixed_grains_block, **_key_groups(groups)), glab, lab,
                            flat.rechunk(lab.chunks), corrected.rechunk(lab.chunks), dtype=glab.dtype,
                            meta=np.empty((0, 0, 0), glab.dtype))
    interior = _like(halo_map(unmixed, _interior_block, halo=1, boundary="constant", cval=0, dtype=bool), lab)
    scale = 2.0**16 / max(levels.noise_sigma, 1e-300)
    kernel = functools.partial(_grain_sums, scale=scale)
    tasks = [dask.delayed(kernel, pure=True)(*blocks) for blocks in zip(
        *(a.to_delayed().ravel() for a in (glab, interior, corrected.rechunk(lab.chunks), ph)), strict=True)]
    rows: list[dict[str, np.ndarray]] = compute(tasks, desc="grain regions")
    ids, new = _grain_decisions(rows, groups, scale=scale, min_grain=int(min_grain))
    return da.map_blocks(_relabel_block, ph, glab, ids=shared(ids), new=shared(new), dtype=np.uint8,
                         meta=np.empty((0, 0, 0), np.uint8))
