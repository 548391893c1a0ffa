"""Random fracture of unbroken material: fragment seeds at a size law, fragment labelling.

A fracture realisation is a Laguerre (power) tessellation of space whose cells are the
fragments, intersected with the solid voxels of the phase volume:

1. **size law** (:class:`SizeLaw`): the cumulative volume (mass) passing ``F(d)`` is a
   Rosin-Rammler law ``1 - exp(-(d/d63)^m)`` or a Gates-Gaudin-Schuhmann law
   ``(d/dmax)^m``, both set by their P80 (``F(P80) = 0.8``) and uniformity ``m``,
   truncated below 3 voxels (the smallest fragment a voxel grid resolves) and above the
   99.9 % passing size (Rosin-Rammler) or ``dmax`` (GGS);
2. **seeds** (:func:`draw_seeds`): in each of 48 log-spaced size classes a Poisson number
   of seeds, uniform in the volume plus a margin of the largest fragment radius (so the
   tessellation is stationary up to the border), with a mean count that gives the class
   its share of volume (``dF / (pi/6 d^3)`` per unit volume); each seed carries the power
   weight ``r^2 = (d/2)^2``, a boundary penalty ``w d^2`` and a detachment draw. All of it
   comes from one NumPy generator seeded by ``seed``: the fragments are a function of the
   seed set only. The size scale is calibrated (:func:`calibrate`) so the volume-weighted
   P80 of the cells of a seed set equals the target (seeds that overlap make cells that
   are not their spheres); only the P80: the cells spread less than the law (see
   :func:`calibrate`), which :func:`fit_size_law` measures (the law's uniformity that
   best matches a set of particles' passing sizes at their P80);
3. **labelling** (:func:`fragment_block`, a pure Numba kernel on one block): each solid
   voxel ``x`` takes the seed of least power distance ``|x - c|^2 - r^2`` plus the seed's
   penalty when the voxel's phase differs from the phase at the seed (``boundary_weight``
   0 = random fracture, 1 = fractures follow phase boundaries across a band about one
   fragment wide); ties go to the lower seed index. Per tile of 8^3-16^3 voxels the
   candidate seeds are found exactly on cell grids of the seeds, one per radius class
   (:func:`index_seeds`; rings of grid cells are added until no seed outside them can
   beat the tile's best upper bound), so a block's answer never depends on where the
   block ends: any chunking gives the same labels;
4. **keys**: a voxel's key is ``(seed + 1) * 256``, plus its phase for a seed drawn as
   detaching (``detachment``: that fragment breaks along every phase boundary in it and
   releases its grains); the keys' connected components
   (:func:`volmla.particles.label.label`, done by :mod:`volmla.breakage.api`) are the
   particles, since a fragment clipped by pores or bent to phase boundaries can fall
   apart into pieces.

One module (past 500 lines) because the seed law, its calibration, the seed index and
the kernel share one contract (what a seed is and how far it can win) that is only
checked as a whole by the brute-force and chunking tests.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import numba
import numpy as np

from volmla.errors import VolmlaError

__all__ = [
    "LAWS",
    "Law",
    "Calibration",
    "MIN_FRAGMENT",
    "SeedIndex",
    "Seeds",
    "SizeLaw",
    "calibrate",
    "cells_p80",
    "draw_seeds",
    "fragment_block",
    "index_seeds",
    "interior_cells",
    "passing_size",
    "LawFit",
    "fit_size_law",
    "law_quantiles",
    "size_law",
]

Law = Literal["rosin-rammler", "gates-gaudin-schuhmann"]
LAWS: tuple[str, ...] = ("rosin-rammler", "gates-gaudin-schuhmann")
MIN_FRAGMENT = 3.0
"""Smallest grind size and fragment diameter (voxels): a 3-voxel fragment is the least a grid resolves."""

KEY_STRIDE = 256  # keys are (seed + 1) * 256 + phase (uint8 phases)
_CLASSES = 48


class SizeLaw(NamedTuple):
    """A fragment size law in voxels: cumulative volume passing between ``d_lo`` and ``d_hi``."""

    law: str
    p80: float
    m: float
    d_lo: float
    d_hi: float

    def passing(self, d: np.ndarray) -> np.ndarray:
        """Untruncated cumulative volume fraction passing size ``d`` (voxels)."""
        d = np.asarray(d, float)
        if self.law == "rosin-rammler":
            d63 = self.p80 / (-math.log(0.2)) ** (1.0 / self.m)
            return np.asarray(1.0 - np.exp(-((d / d63) ** self.m)))
        dmax = self.p80 / 0.8 ** (1.0 / self.m)
        return np.asarray(np.clip(d / dmax, 0.0, 1.0) ** self.m)


def size_law(law: str, p80: float, m: float, *, d_lo: float = MIN_FRAGMENT) -> SizeLaw:
    """The truncated size law of fragments with this P80 and uniformity ``m``.

    Parameters
    ----------
    law
        ``"rosin-rammler"`` or ``"gates-gaudin-schuhmann"``.
    p80
        80 % passing size (voxels, or micrometres with ``d_lo`` in micrometres).
    m
        Uniformity (Rosin-Rammler) or distribution modulus (GGS), positive.
    d_lo
        The smallest fragment size (default :data:`MIN_FRAGMENT` voxels).

    Returns
    -------
    SizeLaw

    Examples
    --------
    >>> s = size_law("gates-gaudin-schuhmann", 8.0, 1.0)
    >>> round(s.d_hi, 3), round(float(s.passing(np.array(8.0))), 3)
    (10.0, 0.8)
    """
    if law not in LAWS:
        raise VolmlaError(f"law must be one of {LAWS}, got law={law!r}")
    if not (math.isfinite(m) and m > 0):
        raise VolmlaError(f"uniformity must be a positive number, got uniformity={m!r}")
    if law == "rosin-rammler":
        d63 = p80 / (-math.log(0.2)) ** (1.0 / m)
        d_hi = d63 * (-math.log(1e-3)) ** (1.0 / m)
    else:
        d_hi = p80 / 0.8 ** (1.0 / m)
    return SizeLaw(law, float(p80), float(m), float(d_lo), float(max(d_hi, d_lo * 1.01)))


class Seeds(NamedTuple):
    """One fracture realisation's seeds (global voxel coordinates, z, y, x)."""

    centres: np.ndarray  # (n, 3) float64
    r2: np.ndarray  # (n,) power weights
    penalty: np.ndarray  # (n,) added where a voxel's phase differs from the seed's
    detach: np.ndarray  # (n,) bool: the fragment splits along its phase boundaries
    phase: np.ndarray  # (n,) uint8: the phase at the seed (0 = void or unknown: no penalty)


def draw_seeds(
    extent: tuple[float, float, float],
    law: SizeLaw,
    *,
    seed: int,
    boundary_weight: float = 0.0,
    detachment: float = 0.0,
    scale: float = 1.0,
) -> Seeds:
    """Seeds of a Laguerre tessellation whose cells follow ``law`` (times ``scale``).

    Parameters
    ----------
    extent
        The volume's size along (z, y, x) in the law's units (its shape times the voxel size).
    law
        The fragment size law (:func:`size_law`).
    seed
        Seed of the one random generator this realisation uses.
    boundary_weight
        0..1: the penalty ``boundary_weight * d^2`` of each seed.
    detachment
        0..1: probability that a seed's fragment releases its grains.
    scale
        Factor on every seed diameter (from :func:`calibrate`).

    Returns
    -------
    Seeds
        Seeds in index order; ``phase`` zero (set it from the volume for a boundary weight).

    Examples
    --------
    >>> s = draw_seeds((20, 20, 20), size_law("rosin-rammler", 6.0, 1.2), seed=1)
    >>> s.centres.shape[1], bool((s.r2 > 0).all())
    (3, True)
    """
    rng = np.random.default_rng(seed)
    edges = np.geomspace(law.d_lo, law.d_hi, _CLASSES + 1)
    mass = np.diff(law.passing(edges))
    mass = mass / mass.sum()
    margin = 0.5 * law.d_hi * scale + law.d_lo
    lo = np.full(3, -margin)
    span = np.asarray(extent, float) + 2 * margin
    mid = np.sqrt(edges[:-1] * edges[1:]) * scale
    counts = rng.poisson(float(np.prod(span)) * mass / (np.pi / 6 * mid**3))
    cls = np.repeat(np.arange(_CLASSES), counts)
    n = cls.size
    d = np.exp(rng.uniform(np.log(edges[cls]), np.log(edges[cls + 1]))) * scale
    centres = lo + rng.random((n, 3)) * span
    detach = rng.random(n) < detachment
    return Seeds(centres, (d / 2) ** 2, boundary_weight * d**2, detach, np.zeros(n, np.uint8))


class Calibration(NamedTuple):
    """The seed-diameter factor that makes the cells of a law's seeds reach its P80."""

    scale: float


@functools.lru_cache(maxsize=64)
def calibrate(law: SizeLaw, *, seed: int) -> Calibration:
    """The seed scale that gives cells of the law's P80.

    The cells of a seed set are not its spheres (seeds overlap, small ones are swallowed),
    so the scale is measured: the law is tessellated in cubes of 96 voxels where its P80
    is 12 voxels (the truncation at :data:`MIN_FRAGMENT` scaled alike, so the shape of the
    law is the one used), the volume-weighted 80 % passing size of the interior cells of
    two seed sets is measured (Miles-Lantuejoul weights, :func:`passing_size`) and the
    diameters are corrected; twice. Results are cached per (law, seed).

    Only the P80 is calibrated: a Laguerre tessellation of Poisson-placed seeds is
    narrower than the law its seeds are drawn at (for Rosin-Rammler ``m = 1.2`` the cells'
    P20 / P80 is about 0.44 where the law's is 0.34), since large seeds meet neighbours
    and small ones are swallowed; seed counts re-weighted per size class do not widen it
    (more large seeds overlap more), a packing of the seeds would. Fitted by
    :func:`fit_size_law` (96^3, P80 12 voxels) the cells' uniformity is 1.96 for a
    Rosin-Rammler ``m = 1.5``, 3.37 for ``m = 3`` and 1.78 for a Gates-Gaudin-Schuhmann
    ``m = 1.5``. Drawing the seeds at a uniformity corrected by the fit brings those
    within about 10 %, but the fit of one calibration window is too noisy for wide laws
    (``m <= 1.2``: large cells, few in the window) to correct them reliably, so it is not
    done.

    Parameters
    ----------
    law
        The size law.
    seed
        Generator seed.

    Returns
    -------
    Calibration
        ``scale`` for :func:`draw_seeds`.

    Examples
    --------
    >>> 0.5 < calibrate(size_law("rosin-rammler", 6.0, 1.5), seed=0).scale < 1.5
    True
    """
    unit = 12.0 / law.p80
    work = SizeLaw(law.law, 12.0, law.m, law.d_lo * unit, law.d_hi * unit)
    solid = np.ones((96, 96, 96), np.uint8)
    scale = 1.0
    for k in range(2):
        vols, exts = [], []
        for j in range(2):
            seeds = draw_seeds(solid.shape, work, seed=seed + 7919 * (2 * k + j + 1), scale=scale)
            v, e = interior_cells(fragment_block(solid, (0, 0, 0), seeds))
            vols.append(v)
            exts.append(e)
        p80 = passing_size(np.concatenate(vols), 0.8, extents=np.concatenate(exts), shape=solid.shape)
        if not math.isfinite(p80) or p80 <= 0:
            break
        scale *= work.p80 / p80
    return Calibration(float(scale))


def interior_cells(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Volumes and bounding-box extents (voxels) of the cells of a key block that miss its border.

    Parameters
    ----------
    keys
        A block of fragment keys (0 = void).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Voxel counts ``(n,)`` and bounding-box sizes ``(n, 3)`` of the interior cells.

    Examples
    --------
    >>> k = np.zeros((5, 5, 5), np.uint64); k[1:3, 1:4, 1:2] = 256; k[4] = 512
    >>> v, e = interior_cells(k)
    >>> v.tolist(), e.tolist()
    ([6.0], [[2.0, 3.0, 1.0]])
    """
    from scipy import ndimage as ndi

    ids, inv = np.unique(keys, return_inverse=True)
    lab = inv.reshape(keys.shape).astype(np.int64) + (0 if ids[0] == 0 else 1)
    boxes = [b for b in ndi.find_objects(lab)]
    vol = np.bincount(lab.ravel(), minlength=len(boxes) + 1)[1:].astype(float)
    lo = np.array([[sl.start for sl in b] for b in boxes], float).reshape(-1, 3)
    hi = np.array([[sl.stop for sl in b] for b in boxes], float).reshape(-1, 3)
    inside = ~((lo == 0) | (hi == np.asarray(keys.shape, float))).any(axis=1)
    return vol[inside], (hi - lo)[inside]


def cells_p80(keys: np.ndarray) -> float:
    """Volume-weighted 80 % passing ESD (voxels) of the interior cells of a key block.

    Parameters
    ----------
    keys
        A block of fragment keys (0 = void).

    Returns
    -------
    float
        :func:`passing_size` of :func:`interior_cells`, Miles-Lantuejoul weighted.
    """
    vol, ext = interior_cells(keys)
    return passing_size(vol, 0.8, extents=ext, shape=keys.shape)


def _quantiles(volumes: np.ndarray, qs: np.ndarray, extents: np.ndarray | None, shape: tuple[int, ...] | None) -> np.ndarray:
    w = volumes.astype(float)
    if extents is not None and shape is not None:
        room = np.clip(np.asarray(shape, float) - extents, 1.0, None)
        w = w * (np.prod(np.asarray(shape, float)) / np.prod(room, axis=1))
    esd = np.cbrt(6.0 * volumes / np.pi)
    order = np.argsort(esd)
    cum = np.cumsum(w[order]) / w.sum()
    return np.asarray(np.interp(qs, cum, esd[order]))


def passing_size(
    volumes: np.ndarray, q: float, *, extents: np.ndarray | None = None, shape: tuple[int, ...] | None = None
) -> float:
    """Volume-weighted ``q`` passing ESD (units of ``volumes**(1/3)``) of particles not cut by the border.

    With ``extents`` (per-particle bounding-box sizes) and the window ``shape`` each
    particle is weighted by the Miles-Lantuejoul factor ``prod(shape) / prod(shape -
    extent)``, the inverse of the chance that a particle of that box lies inside the
    window: large fragments, more often cut by the border, are not under-counted. The
    cumulative passing curve is interpolated linearly between particle sizes.

    Parameters
    ----------
    volumes
        Particle volumes.
    q
        Fraction passing, 0..1 (0.8 for P80).
    extents
        ``(n, 3)`` bounding-box sizes (voxels), with ``shape``.
    shape
        The window's shape (voxels).

    Returns
    -------
    float
        The passing size; NaN without particles.

    Examples
    --------
    >>> round(passing_size(np.array([1000.0]), 0.8), 3)
    12.407
    """
    if volumes.size == 0:
        return float("nan")
    return float(_quantiles(volumes, np.array([q]), extents, shape)[0])


class LawFit(NamedTuple):
    """A size law fitted to particle sizes: its P80, uniformity and the rms misfit (log size)."""

    p80: float
    m: float
    rms: float


_FIT_QUANTILES = np.linspace(0.1, 0.9, 17)


def law_quantiles(law: SizeLaw, qs: np.ndarray) -> np.ndarray:
    """Sizes at which the law truncated to ``[d_lo, d_hi]`` (as seeds are drawn) passes ``qs``.

    Parameters
    ----------
    law
        The size law.
    qs
        Cumulative volume fractions, 0..1.

    Returns
    -------
    numpy.ndarray
        The passing sizes.

    Examples
    --------
    >>> s = size_law("gates-gaudin-schuhmann", 8.0, 1.0, d_lo=0.0)
    >>> law_quantiles(s, np.array([0.5, 0.8])).round(3).tolist()
    [5.0, 8.0]
    """
    d = np.geomspace(max(law.d_lo, 1e-6 * law.d_hi), law.d_hi, 2000)
    f = law.passing(d)
    f = (f - f[0]) / (f[-1] - f[0])
    return np.asarray(np.interp(qs, f, d))


def fit_size_law(
    volumes: np.ndarray, law: str, *, d_lo: float = MIN_FRAGMENT, extents: np.ndarray | None = None,
    shape: tuple[int, ...] | None = None,
) -> LawFit:
    """Fit a size law's uniformity to particle volumes at their P80, the truncation at ``d_lo`` kept.

    The particles' volume-weighted passing sizes at 10, 15, ..., 90 % (Miles-Lantuejoul
    weighted with ``extents`` and ``shape``, as :func:`passing_size`) give the P80; the
    uniformity ``m`` is the one whose law, truncated at ``d_lo`` as :func:`draw_seeds`
    draws it and passing 80 % at that P80, matches those sizes best in log size (least
    squares);
    ``rms`` is the remaining misfit (0.05: sizes off by about 5 % on average), which says
    how well the law's shape fits at all. (P80 and ``m`` fitted together trade off
    against each other under the truncation; the P80 is the law's anchor.)

    Parameters
    ----------
    volumes
        Particle volumes (voxels, or the law's units cubed).
    law
        ``"rosin-rammler"`` or ``"gates-gaudin-schuhmann"``.
    d_lo
        The truncation of the law (the smallest fragment size).
    extents, shape
        Bounding-box sizes ``(n, 3)`` and the window's shape, for the border weights.

    Returns
    -------
    LawFit
        ``p80``, ``m`` and ``rms``; NaN without particles.

    Examples
    --------
    >>> s = size_law("gates-gaudin-schuhmann", 10.0, 1.5, d_lo=3.0)
    >>> d = law_quantiles(s, (np.arange(400) + 0.5) / 400)  # equal volume in each of 400 sizes
    >>> f = fit_size_law(np.repeat(np.pi / 6 * d**3, np.round(40 * (d.max() / d) ** 3).astype(int)),
    ...                  "gates-gaudin-schuhmann", d_lo=3.0)
    >>> round(f.p80, 1), round(f.m, 1), f.rms < 0.01  # P80 of the law truncated at 3: 10.2
    (10.2, 1.5, True)
    """
    from scipy.optimize import minimize_scalar

    if law not in LAWS:
        raise VolmlaError(f"law must be one of {LAWS}, got law={law!r}")
    v = np.asarray(volumes, float)
    if v.size < 2:
        return LawFit(float("nan"), float("nan"), float("nan"))
    got = np.log(_quantiles(v, _FIT_QUANTILES, extents, shape))
    p80 = float(_quantiles(v, np.array([0.8]), extents, shape)[0])
    if p80 <= d_lo:
        return LawFit(p80, float("nan"), float("nan"))

    def misfit(logm: float) -> float:
        m = math.exp(logm)
        anchor = p80  # the law's own P80 whose truncated form passes 80 % at the particles' P80
        for _ in range(4):
            anchor *= p80 / float(law_quantiles(size_law(law, anchor, m, d_lo=d_lo), np.array([0.8]))[0])
            anchor = max(anchor, d_lo * 1.001)
        want = np.log(law_quantiles(size_law(law, anchor, m, d_lo=d_lo), _FIT_QUANTILES))
        return float(np.mean((want - got) ** 2))

    fit = minimize_scalar(misfit, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return LawFit(p80, float(math.exp(fit.x)), float(math.sqrt(fit.fun)))


class SeedIndex(NamedTuple):
    """Cell grids over the seeds, one per radius class, for the kernel's exact neighbour search."""

    glo: np.ndarray  # (C, 3) grid origin per class
    h: np.ndarray  # (C,) cell size per class
    gshape: np.ndarray  # (C, 3) grid shape per class
    start_off: np.ndarray  # (C + 1,) offsets of each class's cell-start table in ``start``
    start: np.ndarray  # concatenated cell-start tables (into ``order``)
    order: np.ndarray  # seed ids sorted by (class, cell)
    rmax2: np.ndarray  # (C,) largest power weight per class


def index_seeds(seeds: Seeds, *, classes: int = 3) -> SeedIndex:
    """Grids over the seeds split into ``classes`` log-equal radius classes.

    A voxel's search must reach as far as the largest seed could win from, so one grid
    with one bound scans many small seeds out to the largest radius; a grid per radius
    class stops scanning each class at its own bound (the few large seeds far, the many
    small ones near).

    Parameters
    ----------
    seeds
        The seeds.
    classes
        Number of radius classes.

    Returns
    -------
    SeedIndex
    """
    centres = np.ascontiguousarray(seeds.centres, np.float64)
    r = np.sqrt(np.asarray(seeds.r2, np.float64))
    n = r.size
    edges = np.geomspace(max(r.min(), 1e-9), r.max() * (1 + 1e-12) + 1e-12, classes + 1) if n else np.zeros(classes + 1)
    cls = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, classes - 1)
    glo = np.zeros((classes, 3))
    h = np.ones(classes)
    gshape = np.ones((classes, 3), np.int64)
    rmax2 = np.zeros(classes)
    starts: list[np.ndarray] = []
    orders: list[np.ndarray] = []
    start_off = np.zeros(classes + 1, np.int64)
    base = 0
    for c in range(classes):
        ids = np.flatnonzero(cls == c)
        if ids.size:
            pts = centres[ids]
            glo[c] = pts.min(axis=0)
            h[c] = max(2.0, float(np.cbrt(np.prod(np.ptp(pts, axis=0) + 1.0) / ids.size)) * 1.5)
            cell = np.floor((pts - glo[c]) / h[c]).astype(np.int64)
            gshape[c] = cell.max(axis=0) + 1
            flat = (cell[:, 0] * gshape[c, 1] + cell[:, 1]) * gshape[c, 2] + cell[:, 2]
            rank = np.argsort(flat, kind="stable")
            orders.append(ids[rank].astype(np.int64))
            starts.append(np.searchsorted(flat[rank], np.arange(int(np.prod(gshape[c])) + 1)).astype(np.int64) + base)
            rmax2[c] = float(np.max(seeds.r2[ids]))
            base += ids.size
        else:
            starts.append(np.full(2, base, np.int64))
        start_off[c + 1] = start_off[c] + starts[-1].size
    order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
    return SeedIndex(glo, h, gshape, start_off, np.concatenate(starts), order, rmax2)


def fragment_block(
    phases: np.ndarray,
    origin: tuple[int, ...] | np.ndarray,
    seeds: Seeds,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    index: SeedIndex | None = None,
    tile: int = 8,
) -> np.ndarray:
    """Fragment keys of one block (0 where the phase is 0): a pure function of the seeds.

    Parameters
    ----------
    phases
        Phase block (uint8, 0 = void).
    origin
        Global index of the block's first voxel.
    seeds
        The realisation's seeds (all of them; the kernel finds those in reach), in the
        units of ``spacing``.
    spacing
        Voxel size (z, y, x) in the seeds' units: voxel ``i`` lies at ``i * spacing``.
    index
        :func:`index_seeds` of ``seeds`` (built here when not given; build it once per
        realisation for many blocks).
    tile
        Edge of the voxel tiles that share a candidate list (speed only: any tile gives
        the same answer).

    Returns
    -------
    numpy.ndarray
        uint64 keys ``(seed + 1) * 256 (+ phase where the seed detaches)``.

    Examples
    --------
    >>> s = Seeds(np.array([[0.0, 0, 0], [0, 0, 3]]), np.ones(2), np.zeros(2), np.zeros(2, bool), np.zeros(2, np.uint8))
    >>> fragment_block(np.ones((1, 1, 4), np.uint8), (0, 0, 0), s).ravel().tolist()
    [256, 256, 512, 512]
    """
    ph = np.ascontiguousarray(phases, dtype=np.uint8)
    out = np.zeros(ph.shape, np.uint64)
    if seeds.r2.size == 0 or not ph.any():
        return out
    idx = index if index is not None else index_seeds(seeds)
    _label(ph, np.asarray(origin, np.int64), np.ascontiguousarray(seeds.centres, np.float64),
           np.asarray(seeds.r2, np.float64), np.asarray(seeds.penalty, np.float64), np.asarray(seeds.phase, np.uint8),
           np.asarray(seeds.detach, np.bool_), idx.glo, idx.h, idx.gshape, idx.start_off, idx.start, idx.order,
           idx.rmax2, np.asarray(spacing, np.float64), int(tile), out)
    return out


@numba.njit(cache=True, nogil=True)
def _label(ph, origin, centres, r2, pen, sph, detach, glo, h, gshape, start_off, start, order, rmax2, sp, tile, out):  # pragma: no cover
    nz, ny, nx = ph.shape
    ncls = h.size
    cand = np.empty(order.size, np.int64)
    seen = np.empty(order.size, np.int64)
    lower = np.empty(order.size, np.float64)
    clo = np.empty(3, np.int64)
    chi = np.empty(3, np.int64)
    for tz in range(0, nz, tile):
        for ty in range(0, ny, tile):
            for tx in range(0, nx, tile):
                ez, ey, ex = min(tz + tile, nz), min(ty + tile, ny), min(tx + tile, nx)
                solid = False
                for z in range(tz, ez):
                    for y in range(ty, ey):
                        for x in range(tx, ex):
                            if ph[z, y, x] != 0:
                                solid = True
                if not solid:
                    continue
                blo = ((origin[0] + tz) * sp[0], (origin[1] + ty) * sp[1], (origin[2] + tx) * sp[2])
                bhi = ((origin[0] + ez - 1) * sp[0], (origin[1] + ey - 1) * sp[1], (origin[2] + ex - 1) * sp[2])
                upper = np.inf
                nseen = 0
                for c in range(ncls):
                    if start[start_off[c + 1] - 1] == start[start_off[c]]:
                        continue  # an empty class
                    for a in range(3):
                        clo[a] = int(math.floor((blo[a] - glo[c, a]) / h[c]))
                        chi[a] = int(math.floor((bhi[a] - glo[c, a]) / h[c]))
                    k = 0
                    while True:
                        # the ring of cells at Chebyshev distance k from the tile's cells
                        for cz in range(max(clo[0] - k, 0), min(chi[0] + k + 1, gshape[c, 0])):
                            for cy in range(max(clo[1] - k, 0), min(chi[1] + k + 1, gshape[c, 1])):
                                edge = (cz == clo[0] - k or cz == chi[0] + k or cy == clo[1] - k or cy == chi[1] + k)
                                for cx in range(max(clo[2] - k, 0), min(chi[2] + k + 1, gshape[c, 2])):
                                    if k > 0 and not edge and cx != clo[2] - k and cx != chi[2] + k:
                                        continue
                                    f = start_off[c] + (cz * gshape[c, 1] + cy) * gshape[c, 2] + cx
                                    for j in range(start[f], start[f + 1]):
                                        s = order[j]
                                        far = 0.0
                                        for a in range(3):
                                            q = centres[s, a]
                                            dd = max(abs(q - blo[a]), abs(q - bhi[a]))
                                            far += dd * dd
                                        u = far - r2[s] + pen[s]
                                        if u < upper:
                                            upper = u
                                        seen[nseen] = s
                                        nseen += 1
                        # distance from the tile to the outside of the scanned cells
                        reach = np.inf
                        covered = True
                        for a in range(3):
                            if clo[a] - k > 0:
                                covered = False
                                reach = min(reach, blo[a] - (glo[c, a] + (clo[a] - k) * h[c]))
                            if chi[a] + k + 1 < gshape[c, a]:
                                covered = False
                                reach = min(reach, glo[c, a] + (chi[a] + k + 1) * h[c] - bhi[a])
                        if covered or (reach > 0 and reach * reach > upper + rmax2[c]):
                            break
                        k += 1
                ncand = 0
                for i in range(nseen):
                    s = seen[i]
                    near = 0.0
                    for a in range(3):
                        q = centres[s, a]
                        dd = 0.0
                        if q < blo[a]:
                            dd = blo[a] - q
                        elif q > bhi[a]:
                            dd = q - bhi[a]
                        near += dd * dd
                    if near - r2[s] <= upper:
                        cand[ncand] = s
                        lower[ncand] = near - r2[s]
                        ncand += 1
                # candidates by their lower bound: a voxel's search stops at the first that cannot win
                rank = np.argsort(lower[:ncand])
                cs = cand[:ncand][rank]
                lb = lower[:ncand][rank]
                for z in range(tz, ez):
                    gz = (origin[0] + z) * sp[0]
                    for y in range(ty, ey):
                        gy = (origin[1] + y) * sp[1]
                        for x in range(tx, ex):
                            p = ph[z, y, x]
                            if p == 0:
                                continue
                            gx = (origin[2] + x) * sp[2]
                            best = np.inf
                            bi = -1
                            for i in range(ncand):
                                if lb[i] > best:
                                    break
                                s = cs[i]
                                dz = gz - centres[s, 0]
                                dy = gy - centres[s, 1]
                                dx = gx - centres[s, 2]
                                v = dz * dz + dy * dy + dx * dx - r2[s]
                                if sph[s] != 0 and sph[s] != p:
                                    v += pen[s]
                                if v < best or (v == best and s < bi):
                                    best = v
                                    bi = s
                            key = np.uint64(bi + 1) * np.uint64(KEY_STRIDE)
                            if detach[bi]:
                                key += np.uint64(p)
                            out[z, y, x] = key
    return out
