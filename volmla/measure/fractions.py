"""Partial-volume-aware phase volumes: each boundary voxel apportioned between two pure
grey levels (MSPaCMAn-style), out of core and exactly the same for any chunking.

A voxel on a particle's surface is a mixture of solid and void; one on a grain
boundary a mixture of two phases. Counting it whole for the phase it was classified as
rings a bright particle with a phantom middle phase and biases small particles' volumes.
The steps:

1. **context** (:func:`context_volume`): particle and phase ids are packed into one
   uint64 volume ``(particle << 8) | phase`` and a compiled 6-neighbour kernel
   (:func:`volmla.measure._neighbours.context`) run over it with a one-voxel halo
   (:func:`volmla.engine.overlap.halo_map`, ``nearest`` at the volume's faces, so the
   outside of the volume is not void) says where each voxel's volume goes: a phase
   voxel to its own (particle, phase), apportioned against the void when it touches
   void, else against the most frequent other phase of its particle that it touches,
   else counted whole; a void voxel (outside particles, or classified void inside one)
   next to a particle to the most frequent (particle, phase) among its neighbours,
   apportioned against the void;
2. **pure levels** (:func:`phase_levels`): per phase the median intensity of its pure
   voxels (those counted whole in step 1: no void and no other phase among their six
   neighbours), the void's the median of void voxels with no solid neighbour, and the
   noise ``sigma`` the smallest robust spread (interquartile range / 1.349) among them,
   all from one out-of-core histogram per class (exact for 8- and 16-bit data, 4096
   bins between the extremes otherwise);
3. **apportioning** (:func:`fraction_partial`, one task per block, no halo): a voxel of
   intensity ``I`` apportioned between levels ``L_a`` (its phase) and ``L_b`` (the
   partner, or the void) gives ``f = clip((I - L_b) / (L_a - L_b), 0, 1)`` to its
   phase and ``1 - f`` to the partner phase (nothing to the void). Two levels closer
   than ``resolve`` noise sigmas (default 3) cannot be told apart by one voxel's grey:
   such a voxel counts whole for its class (against another phase) or, on the void
   side, for nothing (a void voxel next to a phase as dark as the void). Fractions are
   summed per (particle, phase) in fixed point (:data:`FRACTION_BITS` bits), so the
   merged volumes are integers and bit-identical across chunkings;
4. the per-block rows are merged by (particle, phase) (:func:`merge_fractions`) and
   turned into the float ``vfrac_<phase>`` columns of the particle table
   (:func:`volmla.measure.particle_table` with ``intensity=``).

The apportioning is unbiased where the levels are right: the sum of the fractions over
a surface's inner and outer voxel layers is the volume under the blurred edge. It is as
good as the levels: radial cupping (beam hardening) moves the local levels by up to its
amplitude, so correct it first (``beam-hardening`` in :mod:`volmla.preprocess`) where it
is strong.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.preprocess.fov import FieldOfView, fill_outside
from volmla.types import VolumeLike

FRACTION_BITS = 20
"""Fixed-point bits of a voxel's fraction in the per-block sums (exact merges)."""
_ONE = 1 << FRACTION_BITS
ID_LIMIT = 1 << 48
"""Particle ids must lie below this to be packed with the phase and a partner code
(``(particle << 16) | (phase << 8) | partner`` in 64 bits)."""
DEFAULT_RESOLVE = 3.0
"""Two grey levels closer than this many noise sigmas are not apportioned between."""
_FLOAT_BINS = 4096

__all__ = [
    "DEFAULT_RESOLVE",
    "FRACTION_BITS",
    "ID_LIMIT",
    "PhaseLevels",
    "context_volume",
    "fraction_partial",
    "fraction_tasks",
    "fractional_volumes",
    "merge_fractions",
    "neighbour_map",
    "packed_labels",
    "phase_levels",
]


class PhaseLevels(NamedTuple):
    """Pure grey levels of the void (key 0) and the phases, and the noise sigma."""

    levels: dict[int, float]
    """Phase id -> median intensity of its pure voxels (0: the void)."""
    noise_sigma: float
    """The smallest robust spread (IQR / 1.349) among the classes."""
    voxels: dict[int, int]
    """Phase id -> number of pure voxels the level was taken from."""


def _pack_block(part: np.ndarray, phase: np.ndarray) -> np.ndarray:
    part = np.asarray(part)
    if part.size and part.dtype.itemsize >= 8 and int(part.max()) >= ID_LIMIT:
        raise VolmlaError(f"particle ids must lie below 2**48 for partial-volume measures, got {int(part.max())}")
    return (part.astype(np.uint64) << np.uint64(8)) | np.asarray(phase).astype(np.uint64)


def packed_labels(particles: da.Array, phases: da.Array) -> da.Array:
    """``(particle << 8) | phase`` as one lazy uint64 volume, in the particles' chunks.

    Parameters
    ----------
    particles, phases
        Dask arrays of the same shape (ids below ``2**48``; phases uint8).

    Returns
    -------
    dask.array.Array
        uint64, the particles' chunks.

    Examples
    --------
    >>> p = da.from_array(np.array([[[0, 2]]], np.uint32)); f = da.from_array(np.array([[[0, 1]]], np.uint8))
    >>> packed_labels(p, f).compute().tolist()
    [[[0, 513]]]
    """
    if phases.chunks != particles.chunks:
        phases = phases.rechunk(particles.chunks)
    return da.map_blocks(_pack_block, particles, phases, dtype=np.uint64, meta=np.empty((0, 0, 0), np.uint64))


def neighbour_map(packed: da.Array, kernel: str, dtype: Any) -> da.Array:
    """A compiled 6-neighbour kernel of :mod:`volmla.measure._neighbours` over packed
    labels with a one-voxel halo (``nearest`` at the volume's faces), lazily.

    Parameters
    ----------
    packed
        :func:`packed_labels`.
    kernel
        ``"context"``, ``"shell_candidates"`` or ``"phase_faces"``.
    dtype
        The kernel's output dtype.

    Returns
    -------
    dask.array.Array
        One value per voxel; the same for any chunking.
    """
    from volmla.engine.overlap import halo_map

    halo = tuple(1 if n > 1 else 0 for n in packed.shape)
    return halo_map(packed, _neighbour_block, halo=halo, boundary="nearest", dtype=np.dtype(dtype),
                    which=kernel, out_dtype=np.dtype(dtype).str)


def _neighbour_block(block: np.ndarray, *, which: str, out_dtype: str) -> np.ndarray:
    """The kernel on a block extended by the halo (and by one more ``edge`` voxel, so
    that the compiled loop needs no bounds checks); same shape as ``block``."""
    from volmla.measure import _neighbours

    ext = np.pad(np.ascontiguousarray(block, np.uint64), 1, mode="edge")
    out = np.empty(block.shape, np.dtype(out_dtype))
    getattr(_neighbours, which)(ext, out)
    return out


def context_volume(particles: VolumeLike, phases: VolumeLike) -> da.Array:
    """Step 1: per voxel ``(target << 8) | partner`` (see
    :func:`volmla.measure._neighbours.context`), lazily, in the particles' chunks.

    Parameters
    ----------
    particles, phases
        Particle ids (below ``2**48``) and phase ids, same shape.

    Returns
    -------
    dask.array.Array
        uint64; 0 where a voxel's volume goes nowhere.

    Examples
    --------
    >>> p = np.zeros((1, 1, 3), np.uint32); p[0, 0, 1] = 1
    >>> [int(v) >> 8 for v in context_volume(p, p.astype(np.uint8)).compute().ravel()]
    [257, 257, 257]
    """
    lab = as_volume(particles, name="particles", integer=True).data
    ph = as_volume(phases, name="phases", integer=True).data
    if lab.shape != ph.shape:
        raise VolmlaError(f"phases and particles must have the same shape, got {ph.shape} and {lab.shape}")
    return neighbour_map(packed_labels(lab, ph), "context", np.uint64)


# --------------------------------------------------------------------------- levels


def _class_block(ctx: np.ndarray, packed: np.ndarray, image: np.ndarray, *, lo: float, width: float, nbins: int,
                 n_classes: int) -> np.ndarray:
    """Per-block histogram of intensity per class: pure phase voxels (class = phase),
    void voxels with no solid neighbour (class 0)."""
    partner = (ctx & np.uint64(255)).astype(np.int64)
    phase = ((ctx >> np.uint64(8)) & np.uint64(255)).astype(np.int64)
    pure = (ctx != 0) & (partner == phase)
    cls = np.where(pure, phase, np.where((ctx == 0) & (packed == 0), 0, -1))
    keep = cls >= 0
    bins = np.clip(np.floor((np.asarray(image, np.float64)[keep] - lo) / width), 0, nbins - 1).astype(np.int64)
    return np.bincount(cls[keep] * nbins + bins, minlength=n_classes * nbins).reshape(1, 1, 1, -1)


def phase_levels(
    intensity: VolumeLike,
    phases: VolumeLike,
    particles: VolumeLike | None = None,
    *,
    context: da.Array | None = None,
    field_of_view: FieldOfView | None = None,
) -> PhaseLevels:
    """Step 2: the pure grey level of the void and of each phase, and the noise sigma.

    A global reduction (it computes): one pass for the extremes of the intensity and
    the largest phase id, one for the per-class histograms.

    Parameters
    ----------
    intensity
        The CT volume the phases were segmented from.
    phases
        Phase ids (0 = void).
    particles
        Particle ids; default: every solid voxel is one particle (phases alone).
    context
        :func:`context_volume` of these volumes, when the caller has it already.
    field_of_view
        The scan's field of view (:mod:`volmla.preprocess.fov`): the void outside it (the
        reconstruction's fill) is not counted as void.

    Returns
    -------
    PhaseLevels
        Levels of the classes that have pure voxels (phases without any are left
        out), the noise sigma and the voxels counted.

    Examples
    --------
    >>> ph = np.zeros((12, 12, 12), np.uint8); ph[3:9, 3:9, 3:9] = 1
    >>> img = np.where(ph == 1, 200, 50).astype(np.uint8)
    >>> phase_levels(img, ph).levels
    {0: 50.0, 1: 200.0}
    """
    from volmla.engine.cluster import compute
    from volmla.engine.reduce import Histogram, histogram_percentile

    ph = as_volume(phases, name="phases", integer=True).data
    lab = (ph > 0).astype(np.uint32) if particles is None else as_volume(particles, name="particles", integer=True).data
    image = as_volume(intensity, name="intensity", finite=True).data
    if image.shape != ph.shape or lab.shape != ph.shape:
        raise VolmlaError(f"intensity, phases and particles must have the same shape, got {image.shape}, {ph.shape} "
                          f"and {lab.shape}")
    ph = ph.rechunk(lab.chunks) if ph.chunks != lab.chunks else ph
    image = image.rechunk(lab.chunks) if image.chunks != lab.chunks else image
    ctx = context_volume(lab, ph) if context is None else context
    lo, hi, top = (float(v) for v in compute([image.min(), image.max(), ph.max()], desc="intensity range"))
    n_classes = int(top) + 1
    exact = np.issubdtype(image.dtype, np.integer) and hi - lo + 1 <= 65536
    nbins = int(hi - lo + 1) if exact else _FLOAT_BINS
    width = 1.0 if exact else max(hi - lo, 1e-12) / nbins
    packed = packed_labels(lab, ph)
    if field_of_view is not None:  # outside: neither void nor a pure phase (ctx is 0 there, packed is not)
        packed = fill_outside(packed, field_of_view, np.iinfo(np.uint64).max)
    joined = da.map_blocks(
        lambda c, p, i: _class_block(c, p, i, lo=lo, width=width, nbins=nbins, n_classes=n_classes),
        ctx, packed, image, dtype=np.int64, new_axis=[3],
        chunks=((1,) * ctx.numblocks[0], (1,) * ctx.numblocks[1], (1,) * ctx.numblocks[2], (n_classes * nbins,)),
        meta=np.empty((0, 0, 0, 0), np.int64),
    )
    (counts,) = compute([joined.sum(axis=(0, 1, 2), dtype=np.int64)], desc="phase levels")
    counts = np.asarray(counts, np.int64).reshape(n_classes, nbins)
    levels: dict[int, float] = {}
    spreads: list[float] = []
    voxels: dict[int, int] = {}
    for k in range(n_classes):
        total = int(counts[k].sum())
        if total == 0:
            continue
        hist = Histogram(counts[k], lo, width, exact)
        levels[k] = histogram_percentile(hist, 50.0)
        voxels[k] = total
        if total >= 64:
            spreads.append((histogram_percentile(hist, 75.0) - histogram_percentile(hist, 25.0)) / 1.349)
    positive = [s for s in spreads if s > 0]
    sigma = min(positive) if positive else (width if exact else 0.0)
    return PhaseLevels(levels, float(sigma), voxels)


# --------------------------------------------------------------------------- fractions


def _tables(levels: PhaseLevels, resolve: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level per class (256, NaN where unknown), whether two classes are resolved
    (256 x 256), and whether the class is resolved from the void (256)."""
    lut = np.full(256, np.nan)
    for k, v in levels.levels.items():
        lut[int(k)] = float(v)
    gap = resolve * max(levels.noise_sigma, 0.0)
    with np.errstate(invalid="ignore"):
        ok = np.abs(lut[:, None] - lut[None, :]) > gap
    ok &= np.isfinite(lut[:, None]) & np.isfinite(lut[None, :])
    return lut, ok, ok[:, 0].copy()


def fraction_partial(ctx: np.ndarray, packed: np.ndarray, image: np.ndarray, *, levels: PhaseLevels,
                     resolve: float = DEFAULT_RESOLVE) -> tuple[np.ndarray, np.ndarray]:
    """Step 3 on one block: the fixed-point volume each (particle, phase) gets.

    Parameters
    ----------
    ctx
        The block of :func:`context_volume`.
    packed
        The block of :func:`packed_labels` (which voxels lie inside their target).
    image
        The block's intensities.
    levels
        :func:`phase_levels`.
    resolve
        Levels closer than this many noise sigmas are not apportioned between.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Sorted unique keys ``(particle << 8) | phase`` (uint64) and their volumes in
        units of ``2**-FRACTION_BITS`` voxels (int64).

    Examples
    --------
    Void at 0, phase 1 at 100: a voxel of grey 25 next to the particle gives it a
    quarter voxel.

    >>> lv = PhaseLevels({0: 0.0, 1: 100.0}, 1.0, {})
    >>> ctx = np.array([[[(257 << 8) | 0]]], np.uint64)
    >>> keys, vol = fraction_partial(ctx, np.zeros((1, 1, 1), np.uint64), np.array([[[25.0]]]), levels=lv)
    >>> int(keys[0]), int(vol[0]) / 2**FRACTION_BITS
    (257, 0.25)
    """
    lut, ok, void_ok = _tables(levels, resolve)
    flat = np.asarray(ctx, np.uint64).ravel()
    sel = flat != 0
    c = flat[sel]
    own = np.asarray(packed, np.uint64).ravel()[sel]
    target = c >> np.uint64(8)
    a = (target & np.uint64(255)).astype(np.intp)
    b = (c & np.uint64(255)).astype(np.intp)
    grey = np.asarray(image).ravel()[sel].astype(np.float64)
    pure = a == b
    resolved = np.where(b == 0, void_ok[a], ok[a, b]) & ~pure
    la, lb = lut[a], lut[b]
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(resolved, np.clip((grey - lb) / (la - lb), 0.0, 1.0), 0.0)
    fixed = np.rint(f * _ONE).astype(np.int64)
    # unresolved: whole for a phase voxel (it is its target), nothing for a void voxel
    # next to a particle
    fixed = np.where(resolved, fixed, np.where(own == target, _ONE, 0))
    fixed = np.where(pure, _ONE, fixed)
    keys = [target]
    vols = [fixed]
    other = resolved & (b != 0)
    if other.any():  # the rest of a two-phase voxel goes to the partner phase
        keys.append((target[other] & ~np.uint64(255)) | b[other].astype(np.uint64))
        vols.append(_ONE - fixed[other])
    allk = np.concatenate(keys)
    allv = np.concatenate(vols)
    uk, inv = np.unique(allk, return_inverse=True)
    sums = np.zeros(uk.size, np.int64)
    np.add.at(sums, inv, allv)
    return uk, sums


def fraction_tasks(lab: da.Array, ph: da.Array, image: da.Array, *, levels: PhaseLevels,
                   resolve: float = DEFAULT_RESOLVE, context: da.Array | None = None) -> list[Any]:
    """One delayed :func:`fraction_partial` per block, to be computed together (with the
    other measurement tasks) and merged by :func:`merge_fractions`.

    Parameters
    ----------
    lab, ph, image
        Particle ids, phase ids and intensities (Dask arrays of one shape).
    levels
        :func:`phase_levels`.
    resolve
        As in :func:`fraction_partial`.
    context
        :func:`context_volume`, when the caller has it already.

    Returns
    -------
    list of dask.delayed.Delayed
    """
    import dask

    ph = ph.rechunk(lab.chunks) if ph.chunks != lab.chunks else ph
    image = image.rechunk(lab.chunks) if image.chunks != lab.chunks else image
    ctx = context_volume(lab, ph) if context is None else context
    kernel = functools.partial(_fraction_task, levels=levels, resolve=float(resolve))
    blocks = zip(ctx.to_delayed().ravel(), packed_labels(lab, ph).to_delayed().ravel(), image.to_delayed().ravel(),
                 strict=True)
    return [dask.delayed(kernel, pure=True)(c, p, i) for c, p, i in blocks]


def _fraction_task(ctx: np.ndarray, packed: np.ndarray, image: np.ndarray, *, levels: PhaseLevels,
                   resolve: float) -> dict[str, Any]:
    return {"fractions": fraction_partial(ctx, packed, image, levels=levels, resolve=resolve)}


def merge_fractions(partials: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The per-block fraction rows summed per (particle, phase): sorted keys and int64
    fixed-point volumes.

    Parameters
    ----------
    partials
        Computed results of :func:`fraction_tasks` (others are skipped).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
    """
    rows = [p["fractions"] for p in partials if "fractions" in p]
    if not rows:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    keys = np.concatenate([k for k, _ in rows])
    vals = np.concatenate([v for _, v in rows])
    uk, inv = np.unique(keys, return_inverse=True)
    sums = np.zeros(uk.size, np.int64)
    np.add.at(sums, inv, vals)
    return uk, sums


def fraction_columns(keys: np.ndarray, sums: np.ndarray, particle_ids: np.ndarray,
                     phase_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Merged fraction rows as one float column (voxels) per phase id, aligned with
    ``particle_ids`` (sorted).

    Parameters
    ----------
    keys, sums
        :func:`merge_fractions`.
    particle_ids
        The particle table's sorted ids.
    phase_ids
        The phases to return.

    Returns
    -------
    dict
        Phase id -> float64 array of ``len(particle_ids)``.
    """
    pid = keys >> np.uint64(8)
    phase = (keys & np.uint64(255)).astype(np.int64)
    at = np.searchsorted(particle_ids.astype(np.uint64), pid)
    at = np.minimum(at, max(len(particle_ids) - 1, 0))
    known = (len(particle_ids) > 0) & (particle_ids.astype(np.uint64)[at] == pid) if len(particle_ids) else np.zeros(0, bool)
    out = {}
    for k in phase_ids:
        col = np.zeros(len(particle_ids), np.int64)
        sel = known & (phase == int(k))
        np.add.at(col, at[sel], sums[sel])
        out[int(k)] = col / float(_ONE)
    return out


def fractional_volumes(
    particles: VolumeLike,
    phases: VolumeLike,
    intensity: VolumeLike,
    *,
    levels: PhaseLevels | None = None,
    resolve: float = DEFAULT_RESOLVE,
) -> dict[int, dict[int, float]]:
    """Partial-volume-aware phase volumes of every particle (steps 1-4), in voxels.

    Parameters
    ----------
    particles, phases, intensity
        Particle ids, phase ids and the CT volume, same shape.
    levels
        Pure levels; default :func:`phase_levels` of these volumes.
    resolve
        Levels closer than this many noise sigmas are not apportioned between.

    Returns
    -------
    dict
        ``{particle_id: {phase_id: voxels}}`` (floats; phases with no volume left out).

    Examples
    --------
    A 2-voxel particle of grey 100 against a void of grey 0, with a half-grey voxel
    beside it:

    >>> p = np.zeros((1, 1, 6), np.uint32); p[0, 0, 2:4] = 1
    >>> img = np.array([[[0, 50, 100, 100, 0, 0]]], np.float32)
    >>> fractional_volumes(p, p.astype(np.uint8), img, levels=PhaseLevels({0: 0.0, 1: 100.0}, 1.0, {}))
    {1: {1: 2.5}}
    """
    from volmla.engine.cluster import compute

    lab = as_volume(particles, name="particles", integer=True).data
    ph = as_volume(phases, name="phases", integer=True).data
    image = as_volume(intensity, name="intensity").data
    if not (lab.shape == ph.shape == image.shape):
        raise VolmlaError(f"particles, phases and intensity must have the same shape, got {lab.shape}, {ph.shape} "
                          f"and {image.shape}")
    check_resolve(resolve)
    ph = ph.rechunk(lab.chunks) if ph.chunks != lab.chunks else ph
    ctx = context_volume(lab, ph)
    if levels is None:
        levels = phase_levels(image, ph, lab, context=ctx)
    keys, sums = merge_fractions(compute(fraction_tasks(lab, ph, image, levels=levels, resolve=resolve, context=ctx),
                                         desc="partial volumes"))
    out: dict[int, dict[int, float]] = {}
    for k, s in zip(keys.tolist(), sums.tolist(), strict=True):
        if s:
            out.setdefault(k >> 8, {})[k & 255] = s / float(_ONE)
    return out


def check_resolve(resolve: float) -> float:
    """Validate ``resolve`` (a finite, non-negative number of noise sigmas)."""
    if not (isinstance(resolve, int | float) and math.isfinite(resolve) and resolve >= 0):
        raise VolmlaError(f"resolve must be a non-negative number of noise sigmas, got {resolve!r}")
    return float(resolve)
