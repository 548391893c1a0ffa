"""The phantom's catalogue: everything drawn from the seed, before any voxel exists.

A small global catalogue is drawn from the seed up front (NumPy ``SeedSequence``, one
child stream each for particles, pores and rings):

1. particle sizes: equivalent sphere diameters, log-uniform in ``esd_range``, biggest
   first; their number follows from ``solid_fraction`` unless given;
2. placement (:func:`_place`): random sequential addition with a spatial hash; a
   fraction ``touching_fraction`` is placed against an earlier particle so that pairs
   really touch or overlap slightly. Centres are uniform over the volume, so particles
   near the faces are cut by the border;
3. shapes: volume-preserving ellipsoid semi-axes, random rotations, low-order angular
   shape noise (coefficients of the monomials of degree 1..3 of the unit direction,
   i.e. spherical harmonics up to degree 3);
4. grains: per particle one grain seed (a liberated, single-phase particle) or two or
   three seeds with distinct phases (an intergrown particle), phases weighted by
   :data:`PHASE_WEIGHTS`;
5. pores in the matrix and ring artefact radii and amplitudes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = ["PHASES", "PHASE_WEIGHTS", "Catalogue", "draw_catalogue"]

PHASES: dict[int, str] = {1: "quartz", 2: "feldspar", 3: "pyrite"}
PHASE_WEIGHTS = (0.5, 0.35, 0.15)

_MAX_NOISE = 0.35  # |shape noise| is clipped to this: a particle never reaches past 1.35 semi-axes
_SEPARATION = 1.1  # placed particles keep centres this many (r_i + r_j) apart
_TOUCH = 0.9  # touching particles are placed at this many (r_i + r_j)
_ATTEMPTS = 40
_REBUILD = 128
_BORDER_GAIN = 1.15  # more particles to make up for the parts cut by the border


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


def draw_catalogue(
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
    """Draw the global catalogue from the seed (steps 1-5 of the module docstring).

    Parameters
    ----------
    shape
        Volume shape ``(z, y, x)``.
    seed
        Non-negative integer; the catalogue is a deterministic function of it.
    n_particles, solid_fraction, esd_range, liberated_fraction, touching_fraction, roughness, n_pores
        As for :func:`volmla.synthetic.phantom`.

    Returns
    -------
    tuple
        The :class:`Catalogue` and a JSON-able summary (counts, sizes, grains per phase)
        for the provenance record.
    """
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
