"""A synthetic CT phantom of multi-phase particles with exact ground truth.

The phantom is generated chunk by chunk, so it can be as large as the disk allows, and
it is bit-identical for a given seed whatever the chunking:

1. a small global *catalogue* is drawn from the seed up front (NumPy ``SeedSequence``,
   one child stream each for particles, pores and rings): particle centres, equivalent
   sphere diameters (log-uniform in ``esd_range``), ellipsoid semi-axes and rotations,
   low-order angular shape noise (coefficients of the monomials of degree 1..3 of the
   unit direction, i.e. spherical harmonics up to degree 3), and per particle one grain
   seed (a liberated, single-phase particle) or two or three seeds with distinct
   phases (an intergrown particle). Particles are placed by random sequential addition
   with a spatial hash; a fraction ``touching_fraction`` is placed against an earlier
   particle so that pairs really touch or overlap slightly. Centres are uniform over
   the volume, so particles near the faces are cut by the border;
2. each block evaluates only the particles whose bounding box (the ellipsoid's
   longest semi-axis times the largest possible shape-noise radius) intersects it.
   For every voxel it keeps the particle of smallest *normalised distance*
   ``|p| / (1 + noise(p / |p|))`` (``p`` the voxel in the particle's ellipsoid frame),
   among those where it is below 1; ties go to the earlier particle. So overlapping
   particles are split along a well-defined surface and every voxel belongs to one
   particle. Inside a particle the voxel takes the nearest grain seed (a Voronoi
   cell): the grain id, unique over the volume, gives the phase and the particle id
   through two lookup tables;
3. the ideal attenuation image maps phase 0 to the matrix (epoxy) grey value, a few
   small spherical pores in the matrix to a darker one, and phases 1..3 to the table
   below; a gaussian (``blur_sigma``, partial-volume effect) runs through the halo
   engine (:func:`volmla.overlap.halo_map`, halo ``int(4 * sigma + 0.5)``), so it is
   exact at chunk borders;
4. beam-hardening cupping multiplies by ``1 - cupping * (1 - (r / r_max) ** 2)``
   (``r`` the distance from the z axis through the xy centre, ``r_max`` the distance
   to the xy corner), optional ring artefacts add narrow gaussian rings about that
   axis, and additive gaussian noise comes from a counter-based generator: a
   splitmix64 hash of (seed, global voxel index) gives two 32-bit uniforms, turned
   into a normal deviate by Box-Muller. Rounded and clipped to uint16.

Attenuation table (grey values before cupping and noise, default ``noise_sigma`` 1500):

========  =====  =========================================================
phase     grey   note
========  =====  =========================================================
pore       4000  void in the matrix (phase 0)
matrix    10000  low-attenuation mounting resin (phase 0)
quartz    22000  phase 1
feldspar  22900  phase 2: 0.6 noise sigma above quartz (the confusable pair)
pyrite    46000  phase 3: much brighter
========  =====  =========================================================
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

__all__ = [
    "ATTENUATION",
    "PHASES",
    "Catalogue",
    "Phantom",
    "check_phantom_output",
    "grain_block",
    "normal_noise",
    "phantom",
    "write_phantom",
]

PHASES: dict[int, str] = {1: "quartz", 2: "feldspar", 3: "pyrite"}
ATTENUATION: dict[str, float] = {
    "pore": 4000.0,
    "matrix": 10000.0,
    "quartz": 22000.0,
    "feldspar": 22900.0,
    "pyrite": 46000.0,
}
PHASE_WEIGHTS = (0.5, 0.35, 0.15)
NAMES = ("intensity", "phases", "particles", "grains")
DEFAULTS: dict[str, Any] = {
    "shape": (128, 128, 128),
    "seed": 0,
    "voxel_size": 2.0,
    "chunks": 64,
    "rings": False,
    "n_particles": None,
    "solid_fraction": 0.3,
    "esd_range": (16.0, 48.0),
    "liberated_fraction": 0.4,
    "touching_fraction": 0.15,
    "roughness": 0.08,
    "n_pores": None,
    "noise_sigma": 1500.0,
    "blur_sigma": 0.8,
    "cupping": 0.08,
    "ring_strength": 0.8,
}

_MAX_NOISE = 0.35  # |shape noise| is clipped to this: a particle never reaches past 1.35 semi-axes
_TRUNCATE = 4.0  # scipy's gaussian truncate
_RING_WIDTH = 0.6  # voxels
_SEPARATION = 1.1  # placed particles keep centres this many (r_i + r_j) apart
_TOUCH = 0.9  # touching particles are placed at this many (r_i + r_j)
_ATTEMPTS = 40
_REBUILD = 128
_BORDER_GAIN = 1.15  # more particles to make up for the parts cut by the border
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = 2**64 - 1


class Phantom(NamedTuple):
    """The four volumes of a phantom, lazy ``xarray.DataArray`` s with volmla attrs."""

    intensity: xr.DataArray
    phases: xr.DataArray
    particles: xr.DataArray
    grains: xr.DataArray


class Catalogue(NamedTuple):
    """Everything drawn from the seed; small (tens of floats per particle)."""

    centre: np.ndarray  # (n, 3) float64, voxel coordinates (z, y, x)
    rot: np.ndarray  # (n, 3, 3) float64, columns are the ellipsoid axes
    axes: np.ndarray  # (n, 3) float64 semi-axes in voxels
    coef: np.ndarray  # (n, 19) float64 shape-noise coefficients
    reach: np.ndarray  # (n,) float64 bounding radius in voxels
    grain_start: np.ndarray  # (n,) int64 first grain id of each particle
    grain_count: np.ndarray  # (n,) int64
    grain_seed: np.ndarray  # (G + 1, 3) float64 seeds in the particle's local frame (row 0 unused)
    grain_phase: np.ndarray  # (G + 1,) uint8, 0 for background
    grain_particle: np.ndarray  # (G + 1,) uint32, 0 for background
    pore_centre: np.ndarray  # (m, 3) float64
    pore_radius: np.ndarray  # (m,) float64
    ring_radius: np.ndarray  # (k,) float64
    ring_amp: np.ndarray  # (k,) float64, in units of the noise sigma


# --------------------------------------------------------------------------- noise


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _seed_key(seed: int) -> np.uint64:
    z = (int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return np.uint64(z ^ (z >> 31))


def normal_noise(seed: int, index: np.ndarray) -> np.ndarray:
    """Standard normal deviates as a pure function of ``(seed, index)``.

    A counter-based generator: the splitmix64 hash of ``seed`` and each global voxel
    index gives two 32-bit uniforms in (0, 1), turned into one normal deviate by
    Box-Muller. The value at an index never depends on which other indices are drawn,
    so noise is the same whatever the chunking.

    Parameters
    ----------
    seed
        Non-negative integer.
    index
        Integer array of global (flat, C-order) voxel indices.

    Returns
    -------
    numpy.ndarray
        float64, same shape as ``index``.

    Examples
    --------
    >>> import numpy as np
    >>> a = normal_noise(3, np.arange(10))
    >>> bool((normal_noise(3, np.arange(4, 6)) == a[4:6]).all())
    True
    """
    idx = np.ascontiguousarray(index, dtype=np.uint64)
    h = _splitmix64(_seed_key(seed) + (idx + np.uint64(1)) * _GOLDEN)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos((2.0 * np.pi) * u2)


# --------------------------------------------------------------------------- catalogue


def _monomials(u0: np.ndarray, u1: np.ndarray, u2: np.ndarray) -> list[np.ndarray]:
    """The 19 monomials of degree 1..3 of a unit direction (spherical harmonics <= 3)."""
    sq0, sq1, sq2 = u0 * u0, u1 * u1, u2 * u2
    return [
        u0, u1, u2,
        sq0, sq1, sq2, u0 * u1, u0 * u2, u1 * u2,
        sq0 * u0, sq1 * u1, sq2 * u2, sq0 * u1, sq0 * u2, sq1 * u0, sq1 * u2, sq2 * u0, sq2 * u1,
        u0 * u1 * u2,
    ]  # fmt: skip


def _expected_volume(esd_range: tuple[float, float]) -> float:
    lo, hi = esd_range
    if hi - lo < 1e-9:
        mean_cube = lo**3
    else:
        mean_cube = (hi**3 - lo**3) / (3.0 * math.log(hi / lo))
    return math.pi / 6.0 * mean_cube


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    radii: np.ndarray,
    touching_fraction: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Random sequential addition; returns the centres, the kept radii and the touches.

    Radii come biggest first. Each particle gets ``_ATTEMPTS`` proposals drawn in one
    go; the first that keeps ``_SEPARATION * (r_i + r_j)`` from every placed particle
    (but its touching partner) wins, and a particle that finds no room is dropped.
    Placed centres live in a KD-tree rebuilt every ``_REBUILD`` additions; the newer
    ones are checked directly.
    """
    from scipy.spatial import cKDTree

    n = len(radii)
    centres = np.zeros((n, 3))
    kept = np.zeros(n)
    count = touching = 0
    tree, in_tree = None, 0
    upper = np.asarray(shape, dtype=np.float64) - 1.0
    touch_draw = rng.random(n)
    for i in range(n):
        r = float(radii[i])
        if count and touch_draw[i] < touching_fraction:
            partner = rng.integers(count, size=_ATTEMPTS)
            direction = rng.normal(size=(_ATTEMPTS, 3))
            direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
            proposals = centres[partner] + direction * (_TOUCH * (r + kept[partner]))[:, None]
        else:
            partner = np.full(_ATTEMPTS, -1)
            proposals = rng.random((_ATTEMPTS, 3)) * upper
        ok = np.all((proposals >= 0) & (proposals <= upper), axis=1)
        # the newest particles, not yet in the tree: direct distances
        fresh = np.arange(in_tree, count)
        if len(fresh):
            d2 = np.sum((proposals[:, None, :] - centres[None, fresh]) ** 2, axis=2)
            clash = d2 < (_SEPARATION * (r + kept[fresh]))[None, :] ** 2
            clash &= fresh[None, :] != partner[:, None]
            ok &= ~clash.any(axis=1)
        if tree is not None and ok.any():
            reach = _SEPARATION * (r + float(kept[:in_tree].max()))
            candidates = np.flatnonzero(ok)
            lists = tree.query_ball_point(proposals[candidates], reach)
            lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
            if lengths.sum():
                near = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
                which = np.repeat(candidates, lengths)
                d2 = np.sum((centres[near] - proposals[which]) ** 2, axis=1)
                clash = (d2 < (_SEPARATION * (r + kept[near])) ** 2) & (near != partner[which])
                ok[which[clash]] = False
        if not ok.any():
            continue
        a = int(np.argmax(ok))
        centres[count], kept[count] = proposals[a], r
        count += 1
        touching += int(partner[a] >= 0)
        if count - in_tree >= _REBUILD:
            tree, in_tree = cKDTree(centres[:count]), count
    return centres[:count], kept[:count], touching


def _catalogue(
    shape: tuple[int, int, int],
    seed: int,
    *,
    n_particles: int | None,
    solid_fraction: float,
    esd_range: tuple[float, float],
    liberated_fraction: float,
    touching_fraction: float,
    roughness: float,
    n_pores: int | None,
) -> tuple[Catalogue, dict[str, Any]]:
    """Draw the global catalogue from the seed (step 1)."""
    particle_rng, pore_rng, ring_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    nvox = float(np.prod(shape))
    if n_particles is None:
        n_particles = max(1, round(_BORDER_GAIN * solid_fraction * nvox / _expected_volume(esd_range)))
    lo, hi = esd_range
    esd = np.exp(particle_rng.uniform(math.log(lo), math.log(hi), size=n_particles))
    esd = np.sort(esd)[::-1]  # big first: random sequential addition packs better
    centre, radius, touching = _place(particle_rng, shape, esd / 2.0, touching_fraction)
    n = len(radius)

    # shapes: volume-preserving ellipsoid aspect, random rotation, angular noise
    aspect = np.exp(particle_rng.normal(0.0, 0.18, size=(n, 3)))
    axes = radius[:, None] * aspect / np.prod(aspect, axis=1, keepdims=True) ** (1.0 / 3.0)
    q, r = np.linalg.qr(particle_rng.normal(size=(n, 3, 3)))
    rot = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    rot[:, :, 0] *= np.sign(np.linalg.det(rot))[:, None]  # proper rotations
    scale = np.full(19, roughness)
    scale[:3] *= 0.5
    coef = particle_rng.normal(0.0, 1.0, size=(n, 19)) * scale
    # grains: one (liberated) or two or three of distinct phases, weighted sampling
    # without replacement by the Gumbel top-k trick
    liberated = particle_rng.random(n) < liberated_fraction
    counts = np.where(liberated, 1, particle_rng.integers(2, 4, size=n)).astype(np.int64)
    gumbel = np.log(np.asarray(PHASE_WEIGHTS)) - np.log(-np.log(particle_rng.random((n, 3))))
    order = np.argsort(-gumbel, axis=1, kind="stable") + 1
    direction = particle_rng.normal(size=(n, 3, 3))
    direction /= np.maximum(np.linalg.norm(direction, axis=2, keepdims=True), 1e-12)
    # seeds in the inner 60 % of the unit ball, mapped to the particle's local frame
    local = direction * (0.6 * particle_rng.random((n, 3, 1)) ** (1.0 / 3.0)) * axes[:, None, :]
    used = np.arange(3)[None, :] < counts[:, None]
    seeds = np.concatenate([np.zeros((1, 3)), local[used]])
    phases = np.concatenate([[0], order[used]]).astype(np.uint8)
    owners = np.concatenate([[0], np.repeat(np.arange(1, n + 1), counts)]).astype(np.uint32)
    starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    reach = axes.max(axis=1) * (1.0 + _MAX_NOISE) if n else np.zeros(0)

    if n_pores is None:
        n_pores = max(1, round(nvox / 50.0**3))
    pore_centre = pore_rng.random((n_pores, 3)) * (np.asarray(shape, dtype=np.float64) - 1.0)
    pore_radius = pore_rng.uniform(1.5, 3.5, size=n_pores)

    r_max = math.hypot((shape[1] - 1) / 2.0, (shape[2] - 1) / 2.0)
    n_rings = max(3, round(r_max / 8.0))
    ring_radius = np.sort(ring_rng.uniform(2.0, max(r_max, 3.0), size=n_rings))
    ring_amp = ring_rng.uniform(0.5, 1.0, size=n_rings) * ring_rng.choice([-1.0, 1.0], size=n_rings)

    grain_phase = phases
    cat = Catalogue(
        centre=centre,
        rot=rot,
        axes=axes,
        coef=coef,
        reach=reach,
        grain_start=starts,
        grain_count=counts,
        grain_seed=seeds,
        grain_phase=grain_phase,
        grain_particle=owners,
        pore_centre=pore_centre,
        pore_radius=pore_radius,
        ring_radius=ring_radius,
        ring_amp=ring_amp,
    )
    esd_kept = 2.0 * radius
    summary = {
        "n_particles": int(n),
        "n_particles_asked": int(n_particles),
        "n_grains": int(counts.sum()) if n else 0,
        "n_liberated": int((counts == 1).sum()),
        "n_placed_touching": int(touching),
        "n_pores": int(n_pores),
        "esd_vox": {
            "min": round(float(esd_kept.min()), 3) if n else None,
            "mean": round(float(esd_kept.mean()), 3) if n else None,
            "max": round(float(esd_kept.max()), 3) if n else None,
        },
        "grains_per_phase": {name: int((grain_phase == k).sum()) for k, name in PHASES.items()},
    }
    return cat, summary


# --------------------------------------------------------------------------- block kernels


def _select(centre: np.ndarray, reach: np.ndarray, region: Sequence[tuple[int, int]]) -> np.ndarray:
    """Indices of the spheres ``(centre, reach)`` whose bounding box meets ``region``."""
    if len(reach) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = np.floor(centre - reach[:, None])
    hi = np.ceil(centre + reach[:, None]) + 1.0
    start = np.asarray([r[0] for r in region], dtype=np.float64)
    stop = np.asarray([r[1] for r in region], dtype=np.float64)
    return np.flatnonzero(np.all((lo < stop) & (hi > start), axis=1))


def _sub(region: Sequence[tuple[int, int]], lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[int, int], ...]:
    return tuple((max(r[0], int(a)), min(r[1], int(b))) for r, a, b in zip(region, lo, hi, strict=True))


def grain_block(cat: Catalogue, region: Sequence[tuple[int, int]]) -> np.ndarray:
    """Ground-truth grain ids of one block (step 2), a pure function of its region.

    Parameters
    ----------
    cat
        The phantom catalogue.
    region
        ``((z0, z1), (y0, y1), (x0, x1))`` global voxel ranges of the block.

    Returns
    -------
    numpy.ndarray
        uint32 grain ids, 0 outside particles; ``cat.grain_particle[ids]`` gives the
        particle ids and ``cat.grain_phase[ids]`` the phases.
    """
    shape = tuple(b - a for a, b in region)
    label = np.zeros(shape, dtype=np.uint32)
    best = np.ones(shape, dtype=np.float64)
    for i in _select(cat.centre, cat.reach, region):
        c = cat.centre[i]
        sub = _sub(region, np.floor(c - cat.reach[i]), np.ceil(c + cat.reach[i]) + 1.0)
        if any(a >= b for a, b in sub):
            continue
        local = tuple(slice(a - r[0], b - r[0]) for (a, b), r in zip(sub, region, strict=True))
        dz = (np.arange(sub[0][0], sub[0][1], dtype=np.float64) - c[0])[:, None, None]
        dy = (np.arange(sub[1][0], sub[1][1], dtype=np.float64) - c[1])[None, :, None]
        dx = (np.arange(sub[2][0], sub[2][1], dtype=np.float64) - c[2])[None, None, :]
        rot, ax = cat.rot[i], cat.axes[i]
        # local frame l = rot.T @ d, written out so every voxel sees the same arithmetic
        frame = [rot[0, k] * dz + rot[1, k] * dy + rot[2, k] * dx for k in range(3)]
        p = [frame[k] / ax[k] for k in range(3)]
        q = np.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2])
        near = q < 1.0 + _MAX_NOISE
        if not near.any():
            continue
        qn = q[near]
        safe = np.maximum(qn, 1e-12)
        u = [p[k][near] / safe for k in range(3)]
        noise = np.zeros_like(qn)
        for weight, mono in zip(cat.coef[i], _monomials(*u), strict=True):
            noise = noise + weight * mono
        nd = qn / (1.0 + np.clip(noise, -_MAX_NOISE, _MAX_NOISE))
        best_sub = best[local]
        win = nd < best_sub[near]
        if not win.any():
            continue
        start, count = int(cat.grain_start[i]), int(cat.grain_count[i])
        if count == 1:
            gid = np.full(int(win.sum()), start, dtype=np.uint32)
        else:
            fl = [frame[k][near][win] for k in range(3)]
            dist = np.stack(
                [
                    (fl[0] - s[0]) * (fl[0] - s[0]) + (fl[1] - s[1]) * (fl[1] - s[1]) + (fl[2] - s[2]) * (fl[2] - s[2])
                    for s in cat.grain_seed[start : start + count]
                ]
            )
            gid = (start + np.argmin(dist, axis=0)).astype(np.uint32)
        where = np.zeros(near.shape, dtype=bool)
        where[near] = win
        best_sub[where] = nd[win]
        label_sub = label[local]
        label_sub[where] = gid
    return label


def _pore_block(cat: Catalogue, region: Sequence[tuple[int, int]]) -> np.ndarray:
    """Boolean mask of the pore spheres in one block."""
    shape = tuple(b - a for a, b in region)
    mask = np.zeros(shape, dtype=bool)
    for i in _select(cat.pore_centre, cat.pore_radius, region):
        c, r = cat.pore_centre[i], cat.pore_radius[i]
        sub = _sub(region, np.floor(c - r), np.ceil(c + r) + 1.0)
        if any(a >= b for a, b in sub):
            continue
        local = tuple(slice(a - g[0], b - g[0]) for (a, b), g in zip(sub, region, strict=True))
        dz = (np.arange(sub[0][0], sub[0][1], dtype=np.float64) - c[0])[:, None, None]
        dy = (np.arange(sub[1][0], sub[1][1], dtype=np.float64) - c[1])[None, :, None]
        dx = (np.arange(sub[2][0], sub[2][1], dtype=np.float64) - c[2])[None, None, :]
        mask[local] |= dz * dz + dy * dy + dx * dx < r * r
    return mask


def _ideal_block(
    grains: np.ndarray, cat: Catalogue, region: Sequence[tuple[int, int]], table: np.ndarray
) -> np.ndarray:
    """Noise-free grey values (step 3 before the blur), float32."""
    phase = np.take(cat.grain_phase, grains)
    ideal = np.take(table[1:], phase)
    ideal[(phase == 0) & _pore_block(cat, region)] = table[0]
    return ideal


def _finish_block(
    blurred: np.ndarray,
    region: Sequence[tuple[int, int]],
    shape: tuple[int, int, int],
    *,
    seed: int,
    noise_sigma: float,
    cupping: float,
    rings: bool,
    ring_strength: float,
    ring_radius: np.ndarray,
    ring_amp: np.ndarray,
) -> np.ndarray:
    """Cupping, rings and counter-based noise (step 4), then uint16."""
    (z0, z1), (y0, y1), (x0, x1) = region
    cy, cx = (shape[1] - 1) / 2.0, (shape[2] - 1) / 2.0
    r_max = max(math.hypot(cy, cx), 1.0)
    yy = (np.arange(y0, y1, dtype=np.float64) - cy)[:, None]
    xx = (np.arange(x0, x1, dtype=np.float64) - cx)[None, :]
    r = np.sqrt(yy * yy + xx * xx)
    gain = 1.0 - cupping * (1.0 - (r / r_max) ** 2)
    offset = np.zeros_like(r)
    if rings:
        for rr, amp in zip(ring_radius, ring_amp, strict=True):
            offset = offset + (ring_strength * noise_sigma * amp) * np.exp(-((r - rr) ** 2) / (2.0 * _RING_WIDTH**2))
    out = np.empty(blurred.shape, dtype=np.uint16)
    plane = (np.arange(y0, y1, dtype=np.uint64)[:, None] * np.uint64(shape[2])) + np.arange(x0, x1, dtype=np.uint64)[None, :]
    for k, z in enumerate(range(z0, z1)):
        index = plane + np.uint64(z * shape[1] * shape[2])
        value = blurred[k].astype(np.float64) * gain + offset
        if noise_sigma:
            value = value + noise_sigma * normal_noise(seed, index)
        out[k] = np.clip(np.rint(value), 0, 65535).astype(np.uint16)
    return out


# --------------------------------------------------------------------------- dask wiring


def _region(block_info: Mapping[Any, Any] | None) -> list[tuple[int, int]]:
    assert block_info is not None
    return [(int(a), int(b)) for a, b in block_info[None]["array-location"]]


def _grain_task(cat: Catalogue, block_info: Mapping[Any, Any] | None = None) -> np.ndarray:
    return grain_block(cat, _region(block_info))


def _ideal_task(grains: np.ndarray, cat: Catalogue, table: np.ndarray, block_info: Any = None) -> np.ndarray:
    return _ideal_block(grains, cat, _region(block_info), table)


def _finish_task(blurred: np.ndarray, block_info: Any = None, **kwargs: Any) -> np.ndarray:
    return _finish_block(blurred, _region(block_info), **kwargs)


def _lookup(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.take(table, block)


def _grain_array(cat: Catalogue, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> da.Array:
    normal = da.core.normalize_chunks(chunks, shape)
    return da.map_blocks(
        _grain_task, dtype=np.uint32, chunks=normal, meta=np.empty((0, 0, 0), np.uint32), cat=cat
    )


def _derive(grains: da.Array, cat: Catalogue, params: Mapping[str, Any]) -> dict[str, da.Array]:
    """Phases, particles and intensity from the grain ids (steps 3 and 4)."""
    from scipy import ndimage as ndi

    from volmla.overlap import halo_map

    shape = tuple(int(s) for s in grains.shape)
    phases = da.map_blocks(_lookup, grains, cat.grain_phase, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    particles = da.map_blocks(
        _lookup, grains, cat.grain_particle, dtype=np.uint32, meta=np.empty((0, 0, 0), np.uint32)
    )
    table = np.asarray([ATTENUATION[k] for k in ("pore", "matrix", *PHASES.values())], dtype=np.float32)
    ideal = da.map_blocks(_ideal_task, grains, cat, table, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    sigma = float(params["blur_sigma"])
    if sigma > 0:
        halo = int(_TRUNCATE * sigma + 0.5)
        ideal = halo_map(ideal, ndi.gaussian_filter, halo=halo, boundary="reflect", sigma=sigma, truncate=_TRUNCATE)
    intensity = da.map_blocks(
        _finish_task,
        ideal,
        dtype=np.uint16,
        meta=np.empty((0, 0, 0), np.uint16),
        shape=shape,
        seed=int(params["seed"]),
        noise_sigma=float(params["noise_sigma"]),
        cupping=float(params["cupping"]),
        rings=bool(params["rings"]),
        ring_strength=float(params["ring_strength"]),
        ring_radius=cat.ring_radius,
        ring_amp=cat.ring_amp,
    )
    return {"intensity": intensity, "phases": phases, "particles": particles}


# --------------------------------------------------------------------------- public API


def _check_params(
    *,
    shape: Sequence[int],
    seed: int,
    chunks: int | Sequence[int],
    n_particles: int | None,
    solid_fraction: float,
    esd_range: Sequence[float],
    liberated_fraction: float,
    touching_fraction: float,
    roughness: float,
    n_pores: int | None,
    noise_sigma: float,
    blur_sigma: float,
    cupping: float,
    rings: bool,
    ring_strength: float,
) -> dict[str, Any]:
    def integers(name: str, value: Any, lo: int) -> tuple[int, int, int]:
        values = [value] * 3 if isinstance(value, int | np.integer) else list(value)
        if len(values) != 3 or not all(isinstance(v, int | np.integer) and v >= lo for v in values):
            raise VolmlaError(f"{name} must be one integer >= {lo} or three (z, y, x), got {value!r}")
        return tuple(int(v) for v in values)  # type: ignore[return-value]

    shape_t = integers("shape", shape, 8)
    chunks_t = tuple(min(c, s) for c, s in zip(integers("chunks", chunks, 1), shape_t, strict=True))
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise VolmlaError(f"seed must be a non-negative integer, got {seed!r}")
    if n_particles is not None and (not isinstance(n_particles, int | np.integer) or n_particles < 1):
        raise VolmlaError(f"n_particles must be a positive integer or None, got {n_particles!r}")
    if n_pores is not None and (not isinstance(n_pores, int | np.integer) or n_pores < 0):
        raise VolmlaError(f"n_pores must be a non-negative integer or None, got {n_pores!r}")
    esd = tuple(float(v) for v in esd_range)
    if len(esd) != 2 or not 1.0 <= esd[0] <= esd[1]:
        raise VolmlaError(f"esd_range must be (lo, hi) voxels with 1 <= lo <= hi, got {tuple(esd_range)}")
    for name, value, lo, hi in (
        ("solid_fraction", solid_fraction, 0.0, 0.6),
        ("liberated_fraction", liberated_fraction, 0.0, 1.0),
        ("touching_fraction", touching_fraction, 0.0, 1.0),
        ("roughness", roughness, 0.0, 0.3),
        ("cupping", cupping, 0.0, 0.9),
    ):
        if not lo <= float(value) <= hi:
            raise VolmlaError(f"{name} must lie in [{lo}, {hi}], got {value}")
    for name, value in (("noise_sigma", noise_sigma), ("blur_sigma", blur_sigma), ("ring_strength", ring_strength)):
        if not (np.isfinite(value) and float(value) >= 0):
            raise VolmlaError(f"{name} must be a non-negative number, got {value}")
    if int(_TRUNCATE * blur_sigma + 0.5) >= min(shape_t):
        raise VolmlaError(f"blur_sigma {blur_sigma} is too large for shape {list(shape_t)}")
    return {
        "shape": list(shape_t),
        "seed": int(seed),
        "chunks": list(chunks_t),
        "n_particles": None if n_particles is None else int(n_particles),
        "solid_fraction": float(solid_fraction),
        "esd_range_vox": list(esd),
        "liberated_fraction": float(liberated_fraction),
        "touching_fraction": float(touching_fraction),
        "roughness": float(roughness),
        "n_pores": None if n_pores is None else int(n_pores),
        "noise_sigma": float(noise_sigma),
        "blur_sigma": float(blur_sigma),
        "cupping": float(cupping),
        "rings": bool(rings),
        "ring_strength": float(ring_strength),
    }


def _build(params: Mapping[str, Any]) -> tuple[Catalogue, dict[str, Any]]:
    return _catalogue(
        tuple(params["shape"]),
        params["seed"],
        n_particles=params["n_particles"],
        solid_fraction=params["solid_fraction"],
        esd_range=tuple(params["esd_range_vox"]),
        liberated_fraction=params["liberated_fraction"],
        touching_fraction=params["touching_fraction"],
        roughness=params["roughness"],
        n_pores=params["n_pores"],
    )


def _provenance(params: Mapping[str, Any], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    from volmla import __version__

    record = {
        "step": "phantom",
        "volmla": __version__,
        "params": {k: v for k, v in params.items() if k != "chunks"},
        "attenuation": dict(ATTENUATION),
        "noise": "splitmix64(seed, voxel index) -> Box-Muller",
        "catalogue": dict(summary),
    }
    return [json.loads(json.dumps(record))]


def _wrap(arrays: Mapping[str, da.Array], voxel_size: tuple[float, float, float], provenance: list[dict[str, Any]]) -> Phantom:
    from volmla.io import DIMS

    out = {}
    for name in NAMES:
        data = arrays[name]
        coords = {d: np.arange(n, dtype=np.float64) * s for d, n, s in zip(DIMS, data.shape, voxel_size, strict=True)}
        attrs = {
            "voxel_size_um": voxel_size,
            "unit": "micrometer",
            "kind": {"intensity": "intensity", "phases": "phases"}.get(name, "labels"),
            "phases": dict(PHASES) if name == "phases" else {},
            "provenance": [dict(p) for p in provenance],
        }
        out[name] = xr.DataArray(data, dims=DIMS, coords=coords, attrs=attrs, name=name)
    return Phantom(**out)


def phantom(
    *,
    shape: int | Sequence[int] = (128, 128, 128),
    seed: int = 0,
    voxel_size: float | Sequence[float] = 2.0,
    chunks: int | Sequence[int] = 64,
    rings: bool = False,
    n_particles: int | None = None,
    solid_fraction: float = 0.3,
    esd_range: Sequence[float] = (16.0, 48.0),
    liberated_fraction: float = 0.4,
    touching_fraction: float = 0.15,
    roughness: float = 0.08,
    n_pores: int | None = None,
    noise_sigma: float = 1500.0,
    blur_sigma: float = 0.8,
    cupping: float = 0.08,
    ring_strength: float = 0.8,
) -> Phantom:
    """A lazy synthetic CT volume of multi-phase particles with its ground truth.

    Parameters
    ----------
    shape
        ``(z, y, x)`` voxels (each at least 8), or one number for a cube.
    seed
        Everything (catalogue and noise) is a deterministic function of the seed; the
        result does not depend on ``chunks``.
    voxel_size
        Micrometres, one number or ``(z, y, x)``; only recorded (geometry is in voxels).
    chunks
        Dask chunk edge(s).
    rings
        Add ring artefacts about the z axis through the xy centre.
    n_particles
        Particles to place; ``None`` derives it from ``solid_fraction``, so the count
        scales with the volume (a few tens at 128^3 with the default sizes). Placement
        may drop a few that find no room.
    solid_fraction
        Target fraction of the volume in particles when ``n_particles`` is None.
    esd_range
        ``(lo, hi)`` equivalent sphere diameters in voxels, drawn log-uniformly.
    liberated_fraction
        Probability that a particle is one grain of one phase; the others have two or
        three grains of distinct phases.
    touching_fraction
        Probability that a particle is placed against an earlier one (they touch or
        overlap slightly; the ground truth splits them).
    roughness
        Standard deviation of the angular shape-noise coefficients (0 = ellipsoids).
    n_pores
        Small pores (darker than the matrix) to scatter; ``None``: one per 50^3 voxels.
    noise_sigma
        Standard deviation of the additive gaussian noise, in grey values.
    blur_sigma
        Partial-volume gaussian blur, in voxels (0 = none).
    cupping
        Beam-hardening strength: the centre of the xy plane is ``1 - cupping`` as
        bright as the corners, parabolic in radius.
    ring_strength
        Ring amplitude in units of ``noise_sigma`` (used with ``rings``).

    Returns
    -------
    Phantom
        ``intensity`` (uint16), ``phases`` (uint8, 0 matrix/pores, 1 quartz, 2 feldspar,
        3 pyrite), ``particles`` and ``grains`` (uint32, 0 background, ids unique over
        the volume), lazy DataArrays with ``voxel_size_um``, ``unit``, ``kind``,
        ``phases`` and ``provenance`` attrs. Grey values follow the module's
        attenuation table (also in the provenance record).

    Examples
    --------
    >>> ph = phantom(shape=(32, 32, 32), seed=1, esd_range=(6, 12))
    >>> ph.phases.dtype, ph.particles.dtype, ph.intensity.dtype
    (dtype('uint8'), dtype('uint32'), dtype('uint16'))
    """
    return _make(
        shape=shape,
        seed=seed,
        voxel_size=voxel_size,
        chunks=chunks,
        rings=rings,
        n_particles=n_particles,
        solid_fraction=solid_fraction,
        esd_range=esd_range,
        liberated_fraction=liberated_fraction,
        touching_fraction=touching_fraction,
        roughness=roughness,
        n_pores=n_pores,
        noise_sigma=noise_sigma,
        blur_sigma=blur_sigma,
        cupping=cupping,
        ring_strength=ring_strength,
    )[0]


def _params(**options: Any) -> dict[str, Any]:
    """Validate the phantom options (defaults filled in) into a JSON-able dict."""
    from volmla.io import normalise_voxel_size

    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise VolmlaError(f"unknown phantom option(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **options}
    shape = options.pop("shape")
    vs = normalise_voxel_size(options.pop("voxel_size"))
    try:
        shape = [int(shape)] * 3 if isinstance(shape, int | np.integer) else list(shape)
    except TypeError:
        raise VolmlaError(f"shape must be one integer or three (z, y, x), got {shape!r}") from None
    params = _check_params(shape=shape, **options)
    params["voxel_size_um"] = list(vs)
    return params


def _make(**options: Any) -> tuple[Phantom, Catalogue, dict[str, Any]]:
    """Validate the options, draw the catalogue and wire the lazy volumes."""
    params = _params(**options)
    vs = tuple(params["voxel_size_um"])
    cat, summary = _build(params)
    logger.info("phantom %s seed %d: %s", params["shape"], params["seed"], summary)
    grains = _grain_array(cat, tuple(params["shape"]), tuple(params["chunks"]))
    arrays = {"grains": grains, **_derive(grains, cat, params)}
    return _wrap(arrays, vs, _provenance(params, summary)), cat, params


def _outputs(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / f"{name}.zarr" for name in NAMES}


def _job(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What an output is a result of: the parameters but the chunking (which changes nothing)."""
    kept = {k: v for k, v in params.items() if k != "chunks"}
    return {"command": "phantom", "volume": name, "params": json.loads(json.dumps(kept))}


def _plan(out_dir: Path, *, overwrite: bool, params: Mapping[str, Any]) -> dict[str, str]:
    """What writing each output would do: new, resume, replace or done (same job, complete)."""
    from volmla.io import check_output, job_fingerprint

    if out_dir.exists() and not out_dir.is_dir():
        raise VolmlaError(f"output {out_dir} exists and is not a folder")
    plan: dict[str, str] = {}
    for name, path in _outputs(out_dir).items():
        job = _job(params, name)
        try:
            plan[name] = check_output(path, overwrite=overwrite, job=job)
        except VolmlaError:
            block = _volmla_block(path)
            done = job_fingerprint(job) in (block.get("job"), block.get("request"))
            if not (block.get("complete") and done):
                raise
            plan[name] = "done"
    if all(state == "done" for state in plan.values()):
        raise VolmlaError(f"output {out_dir} exists: pass --overwrite to replace it")
    return plan


def _volmla_block(path: Path) -> dict[str, Any]:
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}
    return dict(attrs.get("volmla", {}))


def check_phantom_output(out_dir: str | Path, *, overwrite: bool = False, **options: Any) -> dict[str, str]:
    """Check, without writing, that :func:`write_phantom` may write into ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder.
    overwrite
        Whether existing outputs may be replaced.
    **options
        The :func:`phantom` keywords that :func:`write_phantom` will get.

    Returns
    -------
    dict
        Per volume name: ``"new"``, ``"resume"`` (an interrupted write of the same job),
        ``"replace"`` or ``"done"`` (complete, same job: an interrupted run skips it).
        Raises :class:`~volmla.errors.VolmlaError` when an output exists and may not be
        replaced.
    """
    return _plan(Path(out_dir), overwrite=overwrite, params=_params(**options))


def write_phantom(
    out_dir: str | Path,
    *,
    shape: int | Sequence[int] = (128, 128, 128),
    seed: int = 0,
    chunks: int | Sequence[int] = 64,
    overwrite: bool = False,
    voxel_size: float | Sequence[float] = 2.0,
    rings: bool = False,
    levels: int = 1,
    **options: Any,
) -> dict[str, Path]:
    """Write a phantom's four volumes as OME-Zarr into ``out_dir``.

    All four outputs are checked before anything is written. The grain ids are written
    first and the other volumes derived from the stored grains, so the geometry is
    evaluated once. A run interrupted part-way resumes: complete volumes of the same
    job are kept, an interrupted one resumes chunk by chunk.

    Parameters
    ----------
    out_dir
        Output folder; gets ``intensity.zarr``, ``phases.zarr``, ``particles.zarr``,
        ``grains.zarr``.
    shape, seed, chunks, voxel_size, rings
        As for :func:`phantom`; ``chunks`` are also the storage chunks.
    overwrite
        Replace existing outputs.
    levels
        Multiscale levels to write.
    **options
        Other :func:`phantom` keywords (``n_particles``, ``esd_range``, ...).

    Returns
    -------
    dict
        Volume name -> written path.

    Examples
    --------
    >>> paths = write_phantom("/tmp/ph", shape=(32, 32, 32), overwrite=True)  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['grains', 'intensity', 'particles', 'phases']
    """
    from volmla.io import open_volume, write_volume

    out_dir = Path(out_dir)
    options = {"shape": shape, "seed": seed, "chunks": chunks, "voxel_size": voxel_size, "rings": rings, **options}
    plan = _plan(out_dir, overwrite=overwrite, params=_params(**options))
    ph, cat, params = _make(**options)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _outputs(out_dir)
    storage = tuple(c[0] for c in ph.grains.data.chunks)

    def write(name: str, data: xr.DataArray) -> None:
        if plan[name] == "done":
            logger.info("%s is complete, kept", paths[name])
            return
        write_volume(
            data,
            paths[name],
            chunks=storage,
            levels=levels,
            overwrite=plan[name] == "replace",
            job=_job(params, name),
        )

    write("grains", ph.grains)
    stored = open_volume(paths["grains"]).data
    derived = _derive(stored, cat, params)
    for name in ("phases", "particles", "intensity"):
        like = getattr(ph, name)
        write(name, like.copy(data=derived[name]))
    return paths
