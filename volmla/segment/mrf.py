"""A Potts Markov random field over the phases of a contrast group, inside each particle.

Pooling grey over a fixed ball (:mod:`volmla.segment.pooled`, step 5) averages the noise
away, but a ball that reaches across the boundary of two grains 1 noise sigma apart
blends them. A Potts field lets the boundary fall where the grey says, at a price per
unit of its area, and works on the voxels' own grey:

1. **energy**: a voxel ``i`` of a contrast group of several phases (quartz and
   feldspar) takes the phase ``k`` of its group that minimises, over the whole field,
   ``sum_i (c_i - L_k)^2 / (2 sigma^2) + beta * #{neighbour pairs of different phase}``
   (``c``: the flattened, partial-volume corrected grey; ``L_k``, ``sigma``: the levels
   and noise of :class:`~volmla.segment.pooled.LabelLevels`). Only pairs of 6- (or 26-)
   neighbours in the same particle and the same contrast group count: a particle's
   surface, a bright inclusion and the next particle cost nothing. Voxels of a group of
   one phase (the void, pyrite) keep their phase. A voxel of the *shell* (a 6-neighbour
   outside its particle or group) has no data term: its grey is a mixture (the pooled
   regions leave it out for the same reason; with it, the field drifts towards the
   brighter phase of the group), and it follows its neighbours;
2. **the price** ``beta`` (units of the data term) ``"auto"``: :data:`BETA_SCALE` times
   the break-even of a spherical grain of :data:`~volmla.segment.regions.MIN_GRAIN`
   voxels (radius ``r``, the smallest grain the cleaning keeps): its expected data gain,
   ``V`` times the Kullback-Leibler divergence ``d^2 / 2`` of the two nearest levels of
   the group (``d`` in noise sigmas), against the cut pairs of its surface, ``A`` times
   the mean pairs a unit of area cuts (:data:`CUT_PER_AREA`: 1.5 for 6-neighbours, 9.2
   for 26), so ``beta = BETA_SCALE (d^2 / 2) r / (3 cut)`` (0.21 at ``d = 0.94``, the
   hard phantoms, before the scale). The price scales with the contrast, so the same
   rule holds for a group 1 or 3 sigmas apart. At the break-even itself (scale 1) the
   mean field of step 3 stays below its ordering point (``beta = 1/3`` for two phases
   and six neighbours): it leaves ~20 % speckle that the cleaning cannot take out (the
   LD errors grow to 0.2-0.4); the scale of 2 is the smallest of 1, 2, 3, 4 that does
   not, measured on hard seeds 0-3 and easy seed 0 (``benchmarks/bench_truth.py``);
3. **mean field** (one compiled kernel per block): each voxel holds a distribution
   ``q_i`` over its group's phases, started from its phase as given (the pooled class
   of :func:`~volmla.segment.pooled.region_phases`, one-hot; ``init="voxel"``: from its
   own likelihood); every iteration replaces all of them at once (synchronous) by
   ``q_i(k) ~ exp((-(c_i - L_k)^2 / (2 sigma^2) + beta * sum_j q_j(k)) / T)`` over its
   neighbours ``j`` in the field, half-damped (:data:`DAMPING`) so that the two halves
   of the 6-neighbour lattice cannot swap phases from one iteration to the next, with
   the temperature ``T`` falling geometrically from 1 to ``cold`` (deterministic
   annealing: towards the most probable field rather than each voxel's marginal); the
   phase is the most probable one after ``iterations``. Two distributions per voxel
   of the extended block are held (float64: ~40 bytes per voxel with the packed input
   for a group of two phases);
4. **chunking**: after ``t`` iterations a voxel has read what lies within ``t`` voxels
   of it (its shell test, like its first iteration, reads its neighbours), so
   ``iterations`` need a halo of ``iterations`` voxels
   (:func:`volmla.engine.overlap.halo_map`), and each voxel sums its neighbours in a
   fixed order: the result is bit-identical for every chunking.

:func:`~volmla.segment.pooled.region_phases` runs it (``mrf=True``) between the pooled
classification and the grain cleaning. Measured (``benchmarks/results/truth_mrf.json``,
true particles, 80^3): the field moves the voxel accuracy inside particles by a few
tenths of a percent and the LD errors both ways from seed to seed, so it is off by
default; the hard level's remaining errors are not in the boundaries the field places
(module docstring of :mod:`volmla.segment.pooled`).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import dask.array as da
import numba
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.segment.pooled import LabelLevels
from volmla.segment.regions import MIN_GRAIN
from volmla.types import VolumeLike

__all__ = ["BETA_SCALE", "CUT_PER_AREA", "DAMPING", "DEFAULT_COLD", "DEFAULT_ITERATIONS", "auto_beta", "potts_phases"]

DEFAULT_ITERATIONS = 8
"""Mean-field iterations (and the halo, voxels): information crosses a grain of radius ~4."""
DAMPING = 0.5
"""Share of the new distribution in each synchronous update."""
BETA_SCALE = 2.0
"""Multiplier of the break-even price of ``beta="auto"`` (measured: module docstring)."""
DEFAULT_COLD = 0.1
"""The last iteration's temperature (the first one's is 1): towards the most probable field."""
CUT_PER_AREA = {6: 1.5, 26: (3.0 + 6.0 * math.sqrt(2.0) + 4.0 * math.sqrt(3.0)) / 2.0}
"""Neighbour pairs a unit area of randomly oriented surface cuts, per connectivity
(the mean of ``|n . d|`` over the sphere, ``|d| / 2``, summed over the pair directions)."""
_MAX_ID = 2**44


def _groups_of(levels: LabelLevels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per phase id (0..255): its group (0: a group of one phase, left as it is) and its
    slot; per group of several phases: its phases and levels (inf-padded)."""
    from volmla.segment.pooled import _groups

    groups = _groups(levels, contrast=0.0, pores=False)
    keep = np.flatnonzero(groups.pooled)
    phases = np.concatenate([np.zeros((1, groups.phases.shape[1]), np.int64),
                             groups.phases[keep].astype(np.int64)])
    lev = np.concatenate([np.full((1, groups.levels.shape[1]), np.inf), groups.levels[keep]])
    gid = np.zeros(256, np.int64)
    slot = np.zeros(256, np.int64)
    for i in range(1, phases.shape[0]):
        for j, k in enumerate(phases[i]):
            if k > 0:
                gid[k], slot[k] = i, j
    return gid, slot, phases, lev


def auto_beta(levels: LabelLevels, *, connectivity: Literal[6, 26] = 6, min_grain: int = MIN_GRAIN) -> float:
    """The Potts price per cut neighbour pair (units of the data term) of ``beta="auto"``.

    ``BETA_SCALE * (d^2 / 2) * r / (3 * CUT_PER_AREA[connectivity])``: ``d`` the smallest
    gap (noise sigmas) between two levels of a contrast group, ``r`` the radius of a
    sphere of ``min_grain`` voxels (module docstring, step 2).

    Parameters
    ----------
    levels
        Levels and noise sigma (:func:`volmla.segment.pooled.label_levels`).
    connectivity
        6 or 26 neighbours.
    min_grain
        Voxels of the smallest grain worth its surface.

    Returns
    -------
    float
        ``beta``; 0 when no contrast group has two phases.

    Examples
    --------
    >>> round(auto_beta(LabelLevels({1: 100.0, 2: 110.0}, 10.0, 0.0, {1: 99, 2: 99})), 3)
    0.471
    """
    _, _, _, lev = _groups_of(levels)
    if lev.shape[0] < 2:
        return 0.0
    gaps = np.diff(lev[1:], axis=1)
    d = float(np.min(gaps[np.isfinite(gaps)])) / max(levels.noise_sigma, 1e-300)
    r = (3.0 * max(int(min_grain), 1) / (4.0 * math.pi)) ** (1.0 / 3.0)
    return BETA_SCALE * 0.5 * d * d * r / (3.0 * CUT_PER_AREA[connectivity])


def _neighbours(connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.arange(-1, 2)
    dz, dy, dx = (a.ravel() for a in np.meshgrid(r, r, r, indexing="ij"))
    n = np.abs(dz) + np.abs(dy) + np.abs(dx)
    keep = (n == 1) if connectivity == 6 else (n > 0)
    return dz[keep].astype(np.int64), dy[keep].astype(np.int64), dx[keep].astype(np.int64)


@numba.njit(nogil=True, cache=True)
def _mean_field(c: np.ndarray, part: np.ndarray, phase: np.ndarray, gid: np.ndarray, slot: np.ndarray,
                gphases: np.ndarray, glevels: np.ndarray, inv2: float, beta: float, iterations: int,
                damping: float, from_voxel: bool, cold: float, dz: np.ndarray, dy: np.ndarray,
                dx: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Steps 1 and 3 on one (extended) block: the phases after ``iterations`` synchronous,
    damped mean-field updates; neighbours outside the block are absent."""
    nz, ny, nx = c.shape
    w = gphases.shape[1]
    grp = np.zeros((nz, ny, nx), np.int64)
    q = np.zeros((nz, ny, nx, w), np.float64)
    new = np.zeros((nz, ny, nx, w), np.float64)
    f = np.zeros(w)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                p = phase[z, y, x]
                g = gid[p] if part[z, y, x] != 0 else 0
                grp[z, y, x] = g
                if g == 0:
                    continue
                if not from_voxel:
                    q[z, y, x, slot[p]] = 1.0
                    continue
                top = -np.inf
                for k in range(w):
                    lev = glevels[g, k]
                    f[k] = -(c[z, y, x] - lev) ** 2 * inv2 if np.isfinite(lev) else -np.inf
                    top = max(top, f[k])
                s = 0.0
                for k in range(w):
                    f[k] = math.exp(f[k] - top) if np.isfinite(f[k]) else 0.0
                    s += f[k]
                for k in range(w):
                    q[z, y, x, k] = f[k] / s
    # the shell (a voxel with a 6-neighbour outside its particle or group) is a mixture:
    # its grey does not count, it follows its neighbours
    data = np.zeros((nz, ny, nx), np.bool_)
    for z in range(1, nz - 1):
        for y in range(1, ny - 1):
            for x in range(1, nx - 1):
                g = grp[z, y, x]
                if g == 0:
                    continue
                pid = part[z, y, x]
                ok = True
                for zz, yy, xx in ((z - 1, y, x), (z + 1, y, x), (z, y - 1, x), (z, y + 1, x), (z, y, x - 1),
                                   (z, y, x + 1)):
                    if grp[zz, yy, xx] != g or part[zz, yy, xx] != pid:
                        ok = False
                data[z, y, x] = ok
    for it in range(iterations):
        # temperature from 1 down to ``cold`` (geometric): cold < 1 anneals towards the MAP
        temp = cold ** (it / max(iterations - 1, 1))
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    g = grp[z, y, x]
                    if g == 0:
                        continue
                    pid = part[z, y, x]
                    for k in range(w):
                        lev = glevels[g, k]
                        if not np.isfinite(lev):
                            f[k] = -np.inf
                        elif data[z, y, x]:
                            f[k] = -(c[z, y, x] - lev) ** 2 * inv2
                        else:
                            f[k] = 0.0
                    for i in range(dz.size):
                        zz, yy, xx = z + dz[i], y + dy[i], x + dx[i]
                        if zz < 0 or yy < 0 or xx < 0 or zz >= nz or yy >= ny or xx >= nx:
                            continue
                        if grp[zz, yy, xx] != g or part[zz, yy, xx] != pid:
                            continue
                        for k in range(w):
                            f[k] += beta * q[zz, yy, xx, k]
                    top = -np.inf
                    for k in range(w):
                        top = max(top, f[k])
                    s = 0.0
                    for k in range(w):
                        f[k] = math.exp((f[k] - top) / temp) if np.isfinite(f[k]) else 0.0
                        s += f[k]
                    for k in range(w):
                        new[z, y, x, k] = (1.0 - damping) * q[z, y, x, k] + damping * f[k] / s
        q, new = new, q
    out = phase.copy()
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                g = grp[z, y, x]
                if g == 0:
                    continue
                best = 0
                for k in range(1, w):
                    if q[z, y, x, k] > q[z, y, x, best]:
                        best = k
                out[z, y, x] = gphases[g, best]
    return out


def _pack_block(corrected: np.ndarray, part: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """``corrected + 1j * (particle * 256 + phase)`` (exact in float64 below 2**44 particles)."""
    part = np.asarray(part)
    if part.size and int(part.max()) >= _MAX_ID:
        raise VolmlaError(f"particle ids must lie below 2**44 for potts_phases, got {int(part.max())}")
    key = part.astype(np.float64) * 256.0 + np.asarray(phases).astype(np.float64)
    return np.asarray(corrected, np.float64) + 1j * key


def _potts_block(ext: np.ndarray, *, halo: tuple[int, int, int], tables: tuple[np.ndarray, ...],
                 inv2: float, beta: float, iterations: int, damping: float, from_voxel: bool,
                 connectivity: int, cold: float) -> np.ndarray:
    """Step 3 on one extended block, cropped to the block."""
    c = np.ascontiguousarray(ext.real)
    key = ext.imag
    part = np.floor(key / 256.0).astype(np.int64)
    phase = (key - part * 256.0).astype(np.int64)
    gid, slot, gphases, glevels = tables
    out = _mean_field(c, part, phase, gid, slot, gphases, glevels, inv2, beta, iterations, damping, from_voxel,
                      cold, *_neighbours(connectivity))
    inner = tuple(slice(h, n - h) for h, n in zip(halo, out.shape, strict=True))
    return out[inner].astype(np.uint8)


def potts_phases(
    corrected: VolumeLike,
    particles: VolumeLike,
    phases: VolumeLike,
    *,
    levels: LabelLevels,
    beta: float | Literal["auto"] = "auto",
    iterations: int = DEFAULT_ITERATIONS,
    connectivity: Literal[6, 26] = 6,
    init: Literal["phases", "voxel"] = "phases",
    cold: float = DEFAULT_COLD,
) -> da.Array:
    """Phases of the contrast groups re-decided by a Potts field inside each particle, lazily.

    The steps are in the module docstring; the same result for any chunking (a halo of
    ``iterations`` voxels).

    Parameters
    ----------
    corrected
        Grey on one level per phase: flattened and partial-volume corrected
        (:func:`volmla.segment.pooled.region_phases` builds it).
    particles
        Particle ids (below ``2**44``), same shape; 0 is the background.
    phases
        The phases to start from (uint8): a voxel whose phase belongs to a contrast group
        of several phases (``levels``) may change within that group; all others stay.
    levels
        Levels and noise sigma (:func:`volmla.segment.pooled.label_levels`); phases within
        :data:`~volmla.segment.pooled.GROUP_GAP` noise sigmas form a group.
    beta
        Price of a neighbour pair of different phases, in units of the data term
        (``(grey - level)^2 / (2 sigma^2)``); ``"auto"`` (default): :func:`auto_beta`.
    iterations
        Mean-field iterations (>= 0; also the halo, voxels).
    connectivity
        6 or 26 neighbours (each pair weighs ``beta``).
    init
        ``"phases"``: start from ``phases`` (one-hot); ``"voxel"``: from each voxel's own
        likelihood under its group's levels.
    cold
        Temperature of the last iteration (the first one's is 1, geometric in between;
        ``0 < cold <= 1``): 1 gives each voxel's mean-field marginal, lower anneals
        towards the most probable field (default :data:`DEFAULT_COLD`).

    Returns
    -------
    dask.array.Array
        uint8 phases, in the particles' chunks.

    Examples
    --------
    Two phases 1 noise sigma apart, split down the middle of one particle, started from
    a per-voxel guess: the field takes most of the speckle out.

    >>> rng = np.random.default_rng(0)
    >>> truth = np.zeros((16, 16, 16), np.uint8); truth[2:14, 2:14, 2:8] = 1; truth[2:14, 2:14, 8:14] = 2
    >>> lv = LabelLevels({0: 0.0, 1: 100.0, 2: 110.0}, 10.0, 0.0, {0: 99, 1: 99, 2: 99})
    >>> c = np.array([0.0, 100.0, 110.0])[truth] + rng.normal(0, 10, truth.shape)
    >>> guess = np.where(truth > 0, np.where(c > 105.0, 2, 1), 0).astype(np.uint8)
    >>> out = potts_phases(c, (truth > 0).astype(np.uint32), guess, levels=lv).compute()
    >>> bool((out != truth).mean() < 0.5 * (guess != truth).mean())
    True
    """
    from volmla.engine.overlap import halo_map

    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer) or iterations < 0:
        raise VolmlaError(f"iterations must be a non-negative integer, got {iterations!r}")
    if connectivity not in (6, 26):
        raise VolmlaError(f"connectivity must be one of (6, 26), got {connectivity!r}")
    if init not in ("phases", "voxel"):
        raise VolmlaError(f"init must be one of ('phases', 'voxel'), got {init!r}")
    if beta != "auto" and (isinstance(beta, bool) or not isinstance(beta, int | float)
                           or not math.isfinite(beta) or beta < 0):
        raise VolmlaError(f"beta must be 'auto' or a non-negative number, got {beta!r}")
    if isinstance(cold, bool) or not isinstance(cold, int | float) or not 0 < cold <= 1:
        raise VolmlaError(f"cold must be a number in (0, 1], got {cold!r}")
    if not any(k > 0 for k in levels.levels):
        raise VolmlaError("levels must hold at least one solid phase")
    if not (math.isfinite(levels.noise_sigma) and levels.noise_sigma > 0):
        raise VolmlaError(f"levels must carry a positive noise sigma, got {levels.noise_sigma!r}")
    shapes = [tuple(getattr(v, "shape", np.shape(v))) for v in (corrected, particles, phases)]
    if len(set(shapes)) > 1:
        raise VolmlaError(f"corrected, particles and phases must have the same shape, got {shapes}")
    lab = as_volume(particles, name="particles", integer=True).data
    ph = as_volume(phases, name="phases", integer=True, chunks=lab.chunks).data
    c = as_volume(corrected, name="corrected", chunks=lab.chunks).data
    ph = ph if ph.chunks == lab.chunks else ph.rechunk(lab.chunks)
    c = c if c.chunks == lab.chunks else c.rechunk(lab.chunks)
    b = auto_beta(levels, connectivity=connectivity) if beta == "auto" else float(beta)
    tables = _groups_of(levels)
    if tables[2].shape[0] < 2 or iterations == 0:
        return ph.astype(np.uint8)
    packed = da.map_blocks(_pack_block, c, lab, ph, dtype=np.complex128, meta=np.empty((0, 0, 0), np.complex128))
    kernel = functools.partial(_potts_block, tables=tables, inv2=0.5 / levels.noise_sigma**2, beta=b,
                               iterations=int(iterations), damping=DAMPING, from_voxel=init == "voxel",
                               connectivity=int(connectivity), cold=float(cold))
    # beyond the volume's faces lies the void (no neighbours): a halo across a whole axis is enough
    halo = tuple(min(int(iterations), max(n - 1, 0)) for n in lab.shape)
    out = halo_map(packed, kernel, halo=halo, boundary="constant", cval=0.0, dtype=np.uint8, crops=True)
    return out if out.chunks == lab.chunks else out.rechunk(lab.chunks)
