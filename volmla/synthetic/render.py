"""Rendering the phantom block by block, bit-identical for any chunking.

1. each block evaluates only the particles whose bounding box (the ellipsoid's
   longest semi-axis times the largest possible shape-noise radius) intersects it.
   For every voxel it keeps the particle of smallest *normalised distance*
   ``|p| / (1 + noise(p / |p|))`` (``p`` the voxel in the particle's ellipsoid frame),
   among those where it is below 1; ties go to the earlier particle. So overlapping
   particles are split along a well-defined surface and every voxel belongs to one
   particle. Inside a particle the voxel takes the nearest grain seed (a Voronoi
   cell): the grain id, unique over the volume, gives the phase and the particle id
   through two lookup tables (:func:`grain_block`);
2. the ideal attenuation image maps phase 0 to the matrix (epoxy) grey value, a few
   small spherical pores in the matrix to a darker one, and phases 1..3 to the table
   below; a gaussian (``blur_sigma``, partial-volume effect) runs through the halo
   engine (:func:`volmla.engine.overlap.halo_map`, halo ``int(4 * sigma + 0.5)``), so it is
   exact at chunk borders;
3. beam-hardening cupping multiplies by ``1 - cupping * (1 - (r / r_max) ** 2)``
   (``r`` the distance from the z axis through the xy centre, ``r_max`` the distance
   to the xy corner), optional ring artefacts add narrow gaussian rings about that
   axis, and additive gaussian noise comes from a counter-based generator
   (:func:`volmla.synthetic.noise.normal_noise`). Rounded and clipped to uint16.

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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np

from volmla.synthetic.catalogue import _MAX_NOISE, PHASES, Catalogue, _monomials
from volmla.synthetic.noise import normal_noise

__all__ = ["ATTENUATION", "TRUNCATE", "derive_volumes", "grain_array", "grain_block"]

ATTENUATION: dict[str, float] = {
    "pore": 4000.0,
    "matrix": 10000.0,
    "quartz": 22000.0,
    "feldspar": 22900.0,
    "pyrite": 46000.0,
}

TRUNCATE = 4.0  # scipy's gaussian truncate
_RING_WIDTH = 0.6  # voxels


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


def grain_array(cat: Catalogue, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> da.Array:
    """The lazy ground-truth grain ids (uint32), one :func:`grain_block` per block.

    Parameters
    ----------
    cat
        The phantom catalogue.
    shape
        Volume shape ``(z, y, x)``.
    chunks
        Chunk shape ``(z, y, x)``.

    Returns
    -------
    dask.array.Array
    """
    normal = da.core.normalize_chunks(chunks, shape)
    return da.map_blocks(
        _grain_task, dtype=np.uint32, chunks=normal, meta=np.empty((0, 0, 0), np.uint32), cat=cat
    )


def derive_volumes(grains: da.Array, cat: Catalogue, params: Mapping[str, Any]) -> dict[str, da.Array]:
    """Phases, particles and intensity from the grain ids (steps 2 and 3), lazily.

    Parameters
    ----------
    grains
        Grain ids (from :func:`grain_array`, or read back from storage).
    cat
        The catalogue they were drawn from.
    params
        The phantom parameters (``seed``, ``blur_sigma``, ``noise_sigma``, ``cupping``,
        ``rings``, ``ring_strength``).

    Returns
    -------
    dict
        ``intensity`` (uint16), ``phases`` (uint8) and ``particles`` (uint32), with the
        grains' chunks.
    """
    from scipy import ndimage as ndi

    from volmla.engine.overlap import halo_map

    shape = tuple(int(s) for s in grains.shape)
    phases = da.map_blocks(_lookup, grains, cat.grain_phase, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    particles = da.map_blocks(
        _lookup, grains, cat.grain_particle, dtype=np.uint32, meta=np.empty((0, 0, 0), np.uint32)
    )
    table = np.asarray([ATTENUATION[k] for k in ("pore", "matrix", *PHASES.values())], dtype=np.float32)
    ideal = da.map_blocks(_ideal_task, grains, cat, table, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))
    sigma = float(params["blur_sigma"])
    if sigma > 0:
        halo = int(TRUNCATE * sigma + 0.5)
        ideal = halo_map(ideal, ndi.gaussian_filter, halo=halo, boundary="reflect", sigma=sigma, truncate=TRUNCATE)
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
