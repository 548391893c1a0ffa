"""A CT phantom of crushed ore that looks like a real scan, with its physical truth.

Where :mod:`volmla.synthetic.phantom` is the chunked, disk-sized generator, this one is
in memory (phantoms up to about 256^3 scan voxels: the fine grid at ``oversample=2`` is
then 512^3, about 0.7 GB of uint32 labels plus uint8 materials) and is built for
accuracy checks of particle separation, phase segmentation and liberation:

1. **particles** (:func:`_draw_shape`): random convex polyhedra, an ellipsoid with
   random (elongated) semi-axes and orientation cut by 6-14 random half-spaces at 70-97 %
   of its support, scaled to an equivalent-sphere radius drawn from a log-normal law;
2. **placement in clusters** (:func:`_place`): clusters of 1-10 particles (geometric law,
   mean ``cluster_mean``) are added until the solid fills ``density`` of the volume. A
   cluster starts where it overlaps nothing; each new member is pushed along a random
   direction against a random member until the two overlap by a bounded depth (a few %
   of the radius, ``overlap``), measured on 192 surface points of each particle, and is
   refused if it overlaps another member deeper than that or comes closer than ``gap``
   voxels to a particle of another cluster;
3. **fine rendering** at ``oversample`` x the scan resolution (:func:`_render`): every
   fine voxel inside two particles goes to one of them by the plane that bisects their
   overlap lens (through the lens centroid, normal to the line between the centres), so
   contacts are flat discs. Inside a particle the voxel takes its Voronoi cell among 1-6
   grain seeds; free particles have one grain, intergrown ones at least two phases, drawn
   with the modal weights :data:`MODAL_WEIGHTS`. Optional pores (air) inside particles;
4. **the truth**, from the fine grid: ``particles`` and ``phases`` at scan resolution by
   majority of the ``oversample^3`` fine voxels (ties to the lower id, so to void; the
   phase is the majority among the fine voxels of the chosen particle), the solid
   fraction per scan voxel, the per-particle table (exact fine-voxel counts) and the
   liberation summary of :func:`volmla.liberation.liberation_summary` on it;
5. **the scan** (:func:`_scan`): grey values averaged down from the fine grid (partial
   volume), a gaussian PSF, radial cupping, optional rings about the z axis, gaussian
   noise; uint16 (rounded, clipped) or float32.

Difficulty levels (:data:`LEVELS`; every entry can be overridden by its keyword):

======  ======  =======  ======  ========  =====  =======  =====  ====  ===
level   radius  density  noise   contrast  PSF    cupping  rings  free  gap
======  ======  =======  ======  ========  =====  =======  =====  ====  ===
easy    8.0     0.30     800     1.5       0.6    0.08     0      0.45  1.0
hard    5.5     0.36     1300    1.0       0.8    0.15     3      0.35  0.5
======  ======  =======  ======  ========  =====  =======  =====  ====  ===

``radius`` is the median equivalent-sphere radius in scan voxels, ``contrast`` the
feldspar-quartz grey difference in noise sigmas. Grey values: resin 10000, pore (air)
2000, quartz 22000, feldspar ``22000 + contrast * noise_sigma``, pyrite 46000.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from volmla.errors import VolmlaError
from volmla.synthetic.catalogue import PHASES

__all__ = [
    "GREY",
    "LEVELS",
    "MODAL_WEIGHTS",
    "CrushedOre",
    "crushed_ore",
    "truth_liberation",
    "write_crushed_ore",
]

Level = Literal["easy", "hard"]

LEVELS: dict[str, dict[str, Any]] = {
    "easy": {
        "radius": 8.0,
        "radius_sigma": 0.3,
        "density": 0.30,
        "noise_sigma": 800.0,
        "contrast": 1.5,
        "psf_sigma": 0.6,
        "cupping": 0.08,
        "rings": 0,
        "free_fraction": 0.45,
        "overlap": (0.02, 0.06),
        "gap": 1.0,
    },
    "hard": {
        "radius": 5.5,
        "radius_sigma": 0.35,
        "density": 0.36,
        "noise_sigma": 1300.0,
        "contrast": 1.0,
        "psf_sigma": 0.8,
        "cupping": 0.15,
        "rings": 3,
        "free_fraction": 0.35,
        "overlap": (0.03, 0.10),
        "gap": 0.5,
    },
}
"""Per-level defaults of :func:`crushed_ore` (see the module docstring's table)."""

MODAL_WEIGHTS: dict[str, float] = {"quartz": 0.55, "feldspar": 0.35, "pyrite": 0.10}
"""Probability of each phase for a free particle and for each grain of an intergrown one."""

GREY: dict[str, float] = {"resin": 10000.0, "pore": 2000.0, "quartz": 22000.0, "pyrite": 46000.0}
"""Grey values before blur, cupping and noise; feldspar is ``quartz + contrast * noise_sigma``."""

_PORE = 4  # material code of air in a pore (0 resin, 1..3 the phases)
_KMAX = 14  # most cutting planes per particle
_NDIR = 192  # surface points per particle for the overlap tests
_ATTEMPTS = 32
_BATCH = 8  # member placements tried at once
_MAX_CLUSTER = 10
_RING_WIDTH = 0.6


class CrushedOre(NamedTuple):
    """A crushed-ore phantom: the scan, its truth at scan resolution, and truth tables.

    Attributes
    ----------
    intensity
        The simulated CT (z, y, x), uint16 (or float32 with ``dtype="float32"``).
    noiseless
        float32, the same before noise (partial volume, PSF, cupping and rings).
    particles
        uint32 true particle ids ``1..n`` by majority of the fine voxels, 0 = void.
    phases
        uint8, 0 void, 1 quartz, 2 feldspar, 3 pyrite: the majority among the fine
        voxels of the voxel's particle.
    solid_fraction
        float32, the fraction of each scan voxel covered by solid (fine grid).
    table
        One row per particle (see :func:`crushed_ore`).
    liberation
        The true liberation summary (:func:`truth_liberation`).
    params
        Every parameter as used (level defaults resolved), grey values and what the
        placement achieved (``n_particles``, ``n_clusters``, ``n_contacts``,
        ``achieved_density``).
    """

    intensity: np.ndarray
    noiseless: np.ndarray
    particles: np.ndarray
    phases: np.ndarray
    solid_fraction: np.ndarray
    table: pd.DataFrame
    liberation: dict[str, Any]
    params: dict[str, Any]


class _Shapes(NamedTuple):
    """The particle catalogue: convex gauges ``g(x) = max(|E x|, max_k n_k.x / d_k)``."""

    centre: np.ndarray  # (n, 3) scan-voxel coordinates (voxel k spans [k, k + 1))
    rot: np.ndarray  # (n, 3, 3) columns: the ellipsoid axes
    axes: np.ndarray  # (n, 3) semi-axes
    normals: np.ndarray  # (n, KMAX, 3) unit normals of the cuts (zero rows: no cut)
    offsets: np.ndarray  # (n, KMAX) distances of the cuts (1 where no cut)
    reach: np.ndarray  # (n,) bounding radius
    radius: np.ndarray  # (n,) equivalent-sphere radius
    cluster: np.ndarray  # (n,) cluster index


# --------------------------------------------------------------------------- geometry


def _gauge(rot: np.ndarray, axes: np.ndarray, normals: np.ndarray, offsets: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The convex gauge of one particle at points relative to its centre (<= 1 inside)."""
    w = np.concatenate([rot / axes, (normals / offsets[:, None]).T], axis=1)
    q = pts @ w
    e = np.sqrt((q[:, :3] ** 2).sum(axis=-1))
    return np.maximum(e, q[:, 3:].max(axis=-1))


def _directions(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors (Fibonacci sphere)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([z, r * np.sin(phi), r * np.cos(phi)], axis=1)


_DIRS = _directions(_NDIR)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class _Body(NamedTuple):
    """One particle's shape relative to its centre, with what the placement tests need."""

    rot: np.ndarray
    axes: np.ndarray
    normals: np.ndarray
    offsets: np.ndarray
    w: np.ndarray  # (3, 3 + KMAX): the gauge as one matrix product (:func:`_gauge_w`)
    surf: np.ndarray  # (NDIR, 3) surface points
    reach: float  # bounding radius
    rin: float  # radius of a ball inside the particle
    radius: float  # equivalent-sphere radius


def _gauge_w(w: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """:func:`_gauge` from ``w``: ellipsoid columns first, then the scaled cut normals."""
    e = pts @ w[:, :3]
    cut = (pts @ w[:, 3:]).max(axis=-1)
    return np.maximum(np.sqrt(np.einsum("...i,...i->...", e, e)), cut)


def _draw_shape(rng: np.random.Generator, radius: float) -> _Body:
    """One convex particle of equivalent-sphere radius ``radius`` (step 1)."""
    rot = _rotation(rng)
    b = rng.uniform(0.6, 1.0)
    c = rng.uniform(0.45, 1.0) * b
    axes = np.array([1.0, b, c])
    axes /= np.cbrt(axes.prod())
    k = int(rng.integers(6, _KMAX + 1))
    normals = np.zeros((_KMAX, 3))
    offsets = np.ones(_KMAX)
    n = rng.normal(size=(k, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    support = np.linalg.norm((n @ rot) * axes, axis=1)  # ellipsoid support in direction n
    normals[:k] = n
    offsets[:k] = rng.uniform(0.70, 0.97, k) * support
    # volume of the unit-scale shape by a seeded Monte-Carlo estimate, then rescale
    amax = axes.max()
    pts = rng.uniform(-amax, amax, (4000, 3))
    inside = _gauge(rot, axes, normals, offsets, pts) <= 1.0
    vol = max(inside.mean(), 1e-3) * (2 * amax) ** 3
    scale = radius / np.cbrt(3.0 * vol / (4.0 * math.pi))
    axes, offsets = axes * scale, offsets * scale
    w = np.concatenate([rot / axes, (normals / offsets[:, None]).T], axis=1)
    surf = _DIRS / _gauge_w(w, _DIRS)[:, None]
    rin = float(np.linalg.norm(surf, axis=1).min())
    return _Body(rot, axes, normals, offsets, w, surf, float(axes.max()), rin, float(radius))


class _Catalogue:
    """Growing arrays of placed particles (step 2)."""

    def __init__(self) -> None:
        self.body: list[_Body] = []
        self.cluster: list[int] = []
        self.centre = np.zeros((0, 3))
        self.reach = np.zeros(0)
        self.rin = np.zeros(0)

    def depth(self, i: int, body: _Body, c: np.ndarray) -> float:
        """``1 - min gauge`` of each particle at the other's surface points: > 0 overlaps."""
        return float(self.depths(i, body, c[None] - self.centre[i])[0])

    def depths(self, i: int, body: _Body, d: np.ndarray) -> np.ndarray:
        """:meth:`depth` for ``body`` at several offsets ``d`` (k, 3) from particle ``i``."""
        other = self.body[i]
        g1 = _gauge_w(other.w, body.surf[None] + d[:, None]).min(axis=1)
        g2 = _gauge_w(body.w, other.surf[None] - d[:, None]).min(axis=1)
        return 1.0 - np.minimum(g1, g2)

    def fits(self, body: _Body, c: np.ndarray, cluster: int, overlap: float, gap: float, skip: int = -1) -> bool:
        """``body`` at ``c`` overlaps no particle of its ``cluster`` (but ``skip``) deeper
        than ``overlap`` and keeps ``gap`` voxels from the particles of other clusters."""
        dist = np.linalg.norm(self.centre - c, axis=1)
        near = dist < self.reach + body.reach + gap
        if skip >= 0:
            near[skip] = False
        if np.any(dist[near] < self.rin[near] + body.rin):
            return False  # the inner balls overlap
        limit = -gap / body.radius  # the gap in gauge units (about)
        for j in np.flatnonzero(near):
            if self.depth(int(j), body, c) > (overlap if self.cluster[j] == cluster else limit):
                return False
        return True

    def add(self, c: np.ndarray, body: _Body, cluster: int) -> None:
        self.body.append(body)
        self.cluster.append(cluster)
        self.centre = np.vstack([self.centre, c[None]])
        self.reach = np.append(self.reach, body.reach)
        self.rin = np.append(self.rin, body.rin)


def _inside_fraction(c: np.ndarray, surf: np.ndarray, box: np.ndarray) -> float:
    pts = np.concatenate([c[None], c + 0.6 * surf, c + surf])
    return float(np.all((pts >= 0) & (pts < box), axis=1).mean())


def _place(rng: np.random.Generator, box: np.ndarray, p: Mapping[str, Any]) -> _Shapes:
    """Clusters of touching particles until the solid fills ``density`` (step 2)."""
    cat = _Catalogue()
    target = p["density"] * float(box.prod())
    filled = 0.0
    lo_ov, hi_ov = p["overlap"]
    failures = 0
    n_cluster = 0
    mu = math.log(p["radius"])

    def draw() -> _Body:
        r = float(np.exp(rng.normal(mu, p["radius_sigma"])))
        return _draw_shape(rng, min(max(r, 0.4 * p["radius"]), 2.5 * p["radius"]))

    def volume(c: np.ndarray, body: _Body) -> float:
        return 4.0 / 3.0 * math.pi * body.radius**3 * _inside_fraction(c, body.surf, box)

    while filled < target and failures < _ATTEMPTS:
        size = min(int(rng.geometric(1.0 / p["cluster_mean"])), _MAX_CLUSTER)
        body = draw()
        for _ in range(_ATTEMPTS):
            c = rng.uniform(0.0, 1.0, 3) * box
            if cat.fits(body, c, n_cluster, 0.0, p["gap"]):
                break
        else:
            failures += 1  # consecutive clusters without room: the volume is full
            continue
        failures = 0
        members = [len(cat.body)]
        cat.add(c, body, n_cluster)
        filled += volume(c, body)
        while len(members) < size and filled < target:
            body = draw()
            c = None
            for _ in range(_ATTEMPTS // _BATCH):
                # _BATCH directions from one random member, pushed in parallel until
                # the overlap depth is at most ov (bisection on the centre distance)
                a = members[int(rng.integers(len(members)))]
                u = rng.normal(size=(_BATCH, 3))
                u /= np.linalg.norm(u, axis=1, keepdims=True)
                ov = rng.uniform(lo_ov, hi_ov, _BATCH)
                lo = np.zeros(_BATCH)
                hi = np.full(_BATCH, float(cat.reach[a] + body.reach))
                for _ in range(12):
                    mid = 0.5 * (lo + hi)
                    deep = cat.depths(a, body, mid[:, None] * u) > ov
                    lo = np.where(deep, mid, lo)
                    hi = np.where(deep, hi, mid)
                for k in range(_BATCH):
                    cand = cat.centre[a] + hi[k] * u[k]
                    if np.all(cand >= 0) and np.all(cand < box) and cat.fits(body, cand, n_cluster, hi_ov, p["gap"], skip=a):
                        c = cand
                        break
                if c is not None:
                    break
            if c is None:
                break
            members.append(len(cat.body))
            cat.add(c, body, n_cluster)
            filled += volume(c, body)
        n_cluster += 1
    if not cat.body:
        raise VolmlaError(f"shape {tuple(int(s) for s in box)} is too small for particles of radius {p['radius']}")
    return _Shapes(
        centre=cat.centre,
        rot=np.asarray([b.rot for b in cat.body]),
        axes=np.asarray([b.axes for b in cat.body]),
        normals=np.asarray([b.normals for b in cat.body]),
        offsets=np.asarray([b.offsets for b in cat.body]),
        reach=cat.reach,
        radius=np.asarray([b.radius for b in cat.body]),
        cluster=np.asarray(cat.cluster, dtype=np.int64),
    )


# --------------------------------------------------------------------------- rendering


def _grains(rng: np.random.Generator, shapes: _Shapes, i: int, p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Grain seeds (relative to the centre) and their phases (1..3) for particle ``i``."""
    weights = np.array(list(MODAL_WEIGHTS.values()))
    weights = weights / weights.sum()
    r = shapes.radius[i]
    if rng.random() < p["free_fraction"]:
        return np.zeros((1, 3)), np.array([1 + rng.choice(3, p=weights)], dtype=np.uint8)
    volume = 4.0 / 3.0 * math.pi * r**3
    n = int(rng.integers(2, max(2, min(6, int(volume / 120.0))) + 1))
    seeds: list[np.ndarray] = []
    gauge = (shapes.rot[i], shapes.axes[i], shapes.normals[i], shapes.offsets[i])
    while len(seeds) < n:
        cand = rng.uniform(-1.0, 1.0, (64, 3)) * shapes.reach[i]
        seeds.extend(cand[_gauge(*gauge, cand) <= 0.85])
    phase = 1 + rng.choice(3, size=n, p=weights)
    if np.all(phase == phase[0]):
        other = [k for k in range(3) if k != phase[0] - 1]
        w = weights[other] / weights[other].sum()
        phase[int(rng.integers(n))] = 1 + other[int(rng.choice(2, p=w))]
    return np.asarray(seeds[:n]), phase.astype(np.uint8)


def _render(
    rng: np.random.Generator, shapes: _Shapes, fine_shape: tuple[int, int, int], os: int, p: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine labels (uint32, placement order + 1) and materials (uint8) (step 3).

    Returns also the per-particle number of Voronoi cells present.
    """
    labels = np.zeros(fine_shape, np.uint32)
    material = np.zeros(fine_shape, np.uint8)
    fine = np.asarray(fine_shape)
    n = len(shapes.centre)
    cells = np.zeros(n, np.int64)
    planes: dict[tuple[int, int], tuple[np.ndarray, float]] = {}

    def gauge(j: int, pts: np.ndarray) -> np.ndarray:
        return _gauge(shapes.rot[j], shapes.axes[j], shapes.normals[j], shapes.offsets[j], pts - shapes.centre[j])

    dist = np.linalg.norm(shapes.centre[:, None] - shapes.centre[None], axis=2)
    touch = dist < shapes.reach[:, None] + shapes.reach[None]
    for i in range(n):
        seeds, phase = _grains(rng, shapes, i, p)
        pore = rng.random() < p["pore_fraction"]
        lo = np.clip(np.floor((shapes.centre[i] - shapes.reach[i]) * os).astype(int), 0, fine)
        hi = np.clip(np.ceil((shapes.centre[i] + shapes.reach[i]) * os).astype(int) + 1, 0, fine)
        if np.any(hi <= lo):
            continue
        axes_pts = [(np.arange(a, b) + 0.5) / os for a, b in zip(lo, hi, strict=True)]
        grid = np.stack(np.meshgrid(*axes_pts, indexing="ij"), axis=-1).reshape(-1, 3)
        # the ellipsoid first (cheap), then the cuts on what is left
        q = (grid - shapes.centre[i]) @ (shapes.rot[i] / shapes.axes[i])
        idx = np.flatnonzero((q**2).sum(axis=1) <= 1.0)
        idx = idx[gauge(i, grid[idx]) <= 1.0]
        pts = grid[idx]
        keep = np.ones(idx.size, bool)
        for j in np.flatnonzero(touch[i]):
            if j == i:
                continue
            in_j = np.zeros(idx.size, bool)
            near = np.flatnonzero(((pts - shapes.centre[j]) ** 2).sum(axis=1) <= shapes.reach[j] ** 2)
            in_j[near] = gauge(int(j), pts[near]) <= 1.0
            if not in_j.any():
                continue
            key = (min(i, int(j)), max(i, int(j)))
            if key not in planes:  # the bisecting plane of the lens, shared by both
                a, b = key
                normal = shapes.centre[b] - shapes.centre[a]
                normal = normal / np.linalg.norm(normal)
                planes[key] = (normal, float(pts[in_j].mean(axis=0) @ normal))
            normal, off = planes[key]
            side = pts[in_j] @ normal - off  # < 0: the lower id's side
            mine = side < 0 if i == key[0] else side >= 0
            keep[np.flatnonzero(in_j)[~mine]] = False
        idx, pts = idx[keep], pts[keep]
        if idx.size == 0:
            continue
        rel = pts - shapes.centre[i]
        d2 = ((rel[:, None, :] - seeds[None]) ** 2).sum(axis=2)
        cell = np.argmin(d2, axis=1)
        cells[i] = np.unique(cell).size
        mat = phase[cell]
        lab = np.full(idx.size, i + 1, np.uint32)
        if pore:
            g = (shapes.rot[i], shapes.axes[i], shapes.normals[i], shapes.offsets[i])
            centre = np.zeros(3)
            for _ in range(20):
                cand = rng.uniform(-1.0, 1.0, 3) * shapes.reach[i]
                if _gauge(*g, cand[None])[0] <= 0.5:
                    centre = cand
                    break
            rp = rng.uniform(0.15, 0.3) * shapes.radius[i]
            hole = ((rel - centre) ** 2).sum(axis=1) <= rp * rp
            mat = np.where(hole, np.uint8(_PORE), mat)
            lab = np.where(hole, np.uint32(0), lab)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        sub = tuple(np.unravel_index(idx, hi - lo))
        labels[box][sub] = lab
        material[box][sub] = mat
    return labels, material, cells


# --------------------------------------------------------------------------- truth


def _blocks(a: np.ndarray, os: int) -> np.ndarray:
    """(nz*os, ny*os, nx*os) -> (nz, ny, nx, os^3): the fine voxels of each scan voxel."""
    nz, ny, nx = (s // os for s in a.shape)
    return a.reshape(nz, os, ny, os, nx, os).transpose(0, 2, 4, 1, 3, 5).reshape(nz, ny, nx, os**3)


def _majority(labels: np.ndarray, material: np.ndarray, os: int) -> tuple[np.ndarray, np.ndarray]:
    """Scan-resolution particles and phases by majority of the fine voxels (step 4)."""
    lab = _blocks(labels, os).astype(np.int64)
    mat = _blocks(material, os)
    counts = (lab[..., :, None] == lab[..., None, :]).sum(axis=-1)
    key = (counts.astype(np.int64) << 32) | (0xFFFFFFFF - lab)  # ties: the lower id
    pick = np.take_along_axis(lab, key.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    own = lab == pick[..., None]
    ph = np.stack([((mat == k) & own).sum(axis=-1) for k in (1, 2, 3)], axis=-1)
    phases = np.where(pick > 0, ph.argmax(axis=-1) + 1, 0).astype(np.uint8)
    return pick.astype(np.uint32), phases


def _slabs(nz: int, plane: int, os: int) -> list[tuple[int, int]]:
    step = max(1, (1 << 22) // max(1, plane * os**3 * os**3))
    return [(z, min(z + step, nz)) for z in range(0, nz, step)]


def _truth_table(
    labels: np.ndarray, material: np.ndarray, os: int, shapes: _Shapes, order: np.ndarray, cells: np.ndarray, voxel_size: tuple[float, float, float]
) -> pd.DataFrame:
    """One row per particle from the fine grid (exact counts; step 4)."""
    n = int(labels.max())
    counts = np.zeros((n + 1) * 5, np.int64)
    sums = np.zeros((3, n + 1))
    step = max(1, (1 << 24) // max(1, labels.shape[1] * labels.shape[2]))
    for z0 in range(0, labels.shape[0], step):
        lab = labels[z0 : z0 + step].astype(np.int64)
        counts += np.bincount((lab * 5 + material[z0 : z0 + step]).ravel(), minlength=(n + 1) * 5)
        flat = lab.ravel()
        for ax in range(3):
            coord = (np.indices(lab.shape[ax : ax + 1])[0] + (z0 if ax == 0 else 0) + 0.5) / os
            shape = [1, 1, 1]
            shape[ax] = -1
            w = np.broadcast_to(coord.reshape(shape), lab.shape).ravel()
            sums[ax] += np.bincount(flat, weights=w, minlength=n + 1)
    per = counts.reshape(n + 1, 5)[1:, 1:4]
    fine_vol = per.sum(axis=1)
    faces = np.concatenate([np.moveaxis(labels, ax, 0)[k].ravel() for ax in range(3) for k in (0, -1)])
    border = np.zeros(n + 1, bool)
    border[np.unique(faces)] = True
    scale = float(os**3)
    vox_um3 = float(np.prod(voxel_size))
    volume = fine_vol / scale
    df = pd.DataFrame(
        {
            "particle_id": np.arange(1, n + 1, dtype=np.uint32),
            "volume_voxels_fine": fine_vol,
            "volume_voxels": volume,
            "volume_um3": volume * vox_um3,
            "esd_um": np.cbrt(6.0 * volume * vox_um3 / math.pi),
            "centroid_z": sums[0, 1:] / np.maximum(fine_vol, 1),
            "centroid_y": sums[1, 1:] / np.maximum(fine_vol, 1),
            "centroid_x": sums[2, 1:] / np.maximum(fine_vol, 1),
            "touches_border": border[1:],
            "cluster_id": shapes.cluster[order],
            "n_cells": cells[order],
        }
    )
    for k, name in PHASES.items():
        df[f"vox_fine_{name}"] = per[:, k - 1]
        df[f"vox_{name}"] = per[:, k - 1] / scale
        df[f"grade_{name}"] = per[:, k - 1] / np.maximum(fine_vol, 1)
    grades = per / np.maximum(fine_vol, 1)[:, None]
    free = grades.max(axis=1) > 0.99
    df["free_phase"] = np.where(free, np.array(list(PHASES.values()))[grades.argmax(axis=1)], "")
    return df


def truth_liberation(table: pd.DataFrame, *, voxel_size: float | Sequence[float] | None = None) -> dict[str, Any]:
    """The true liberation summary of a :func:`crushed_ore` table, from exact fine counts.

    :func:`volmla.liberation.liberation_summary` over the non-border particles, with
    ``vox_<phase>`` and ``volume_voxels`` taken from the integer fine-voxel columns (the
    statistics are ratios, so the fine unit gives the exact truth).

    Parameters
    ----------
    table
        ``CrushedOre.table``.
    voxel_size
        Recorded as ``voxel_size_um``.

    Returns
    -------
    dict
        The summary (``liberation_degree``, ``modal_mineralogy``, ...).

    Examples
    --------
    >>> ore = crushed_ore(shape=32, seed=0, oversample=1)
    >>> sorted(truth_liberation(ore.table)["liberation_degree"])
    ['feldspar', 'pyrite', 'quartz']
    """
    from volmla.liberation import liberation_summary

    names = list(PHASES.values())
    view = table[["particle_id", "volume_um3", "esd_um", "touches_border"]].copy()
    view["volume_voxels"] = table["volume_voxels_fine"].to_numpy(np.int64)
    for name in names:
        view[f"vox_{name}"] = table[f"vox_fine_{name}"].to_numpy(np.int64)
    vs = None if voxel_size is None else list(_voxel_size(voxel_size))
    return dict(liberation_summary(view, phase_names=names, voxel_size=vs))


# --------------------------------------------------------------------------- the scan


def _radial(shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    y = np.arange(shape[1]) + 0.5 - shape[1] / 2.0
    x = np.arange(shape[2]) + 0.5 - shape[2] / 2.0
    r = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    return r, math.hypot(shape[1] / 2.0, shape[2] / 2.0)


def _scan(
    rng: np.random.Generator, material: np.ndarray, os: int, shape: tuple[int, int, int], grey: Mapping[str, float], p: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intensity, noiseless intensity and solid fraction (step 5)."""
    lut = np.array([grey["resin"], grey["quartz"], grey["feldspar"], grey["pyrite"], grey["pore"]], np.float32)
    ideal = np.empty(shape, np.float32)
    solid = np.empty(shape, np.float32)
    for z0, z1 in _slabs(shape[0], shape[1] * shape[2], 1):
        mat = _blocks(material[z0 * os : z1 * os], os)
        ideal[z0:z1] = lut[mat].mean(axis=-1)
        solid[z0:z1] = ((mat >= 1) & (mat <= 3)).mean(axis=-1)
    if p["psf_sigma"] > 0:
        ideal = ndi.gaussian_filter(ideal, p["psf_sigma"], mode="nearest")
    r, rmax = _radial(shape)
    cup = (1.0 - p["cupping"] * (1.0 - (r / rmax) ** 2)).astype(np.float32)
    noiseless = ideal * cup[None]
    if p["rings"]:
        add = np.zeros_like(r)
        for rk, amp in zip(rng.uniform(0.1, 0.9, p["rings"]) * rmax, rng.uniform(0.5, 1.0, p["rings"]) * rng.choice([-1, 1], p["rings"]), strict=True):
            add += amp * p["noise_sigma"] * np.exp(-((r - rk) ** 2) / (2 * _RING_WIDTH**2))
        noiseless = noiseless + add[None].astype(np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(p["noise_sigma"])
    intensity = noiseless + noise
    if p["dtype"] == "uint16":
        intensity = np.clip(np.rint(intensity), 0, 65535).astype(np.uint16)
    return intensity, noiseless.astype(np.float32), solid


# --------------------------------------------------------------------------- public


def _voxel_size(voxel_size: float | Sequence[float]) -> tuple[float, float, float]:
    from volmla.io.volume import normalise_voxel_size

    return normalise_voxel_size(voxel_size)


def _check(
    shape: int | Sequence[int], level: str, oversample: int, overrides: Mapping[str, Any], dtype: str
) -> tuple[tuple[int, int, int], dict[str, Any]]:
    if level not in LEVELS:
        raise VolmlaError(f"level must be one of {tuple(LEVELS)}, got {level!r}")
    raw: list[Any] = [shape] * 3 if isinstance(shape, int | np.integer) else list(shape)
    if len(raw) != 3 or not all(isinstance(s, int | np.integer) and s >= 16 for s in raw):
        raise VolmlaError(f"shape must be an int or three ints >= 16 (z, y, x), got {shape!r}")
    dims = [int(s) for s in raw]
    if not isinstance(oversample, int | np.integer) or not 1 <= oversample <= 4:
        raise VolmlaError(f"oversample must be an integer in 1..4, got {oversample!r}")
    if dtype not in ("uint16", "float32"):
        raise VolmlaError(f"dtype must be one of ('uint16', 'float32'), got {dtype!r}")
    p = dict(LEVELS[level])
    p.update({k: v for k, v in overrides.items() if v is not None})
    if not 0.0 < p["density"] <= 0.6:
        raise VolmlaError(f"density must lie in (0, 0.6], got {p['density']}")
    if not 1.0 <= p["radius"] <= min(dims) / 2:
        raise VolmlaError(f"radius must lie in [1, min(shape) / 2] voxels, got {p['radius']}")
    for key in ("noise_sigma", "psf_sigma", "radius_sigma", "contrast", "gap"):
        if not (math.isfinite(p[key]) and p[key] >= 0):
            raise VolmlaError(f"{key} must be a finite number >= 0, got {p[key]}")
    for key in ("free_fraction", "pore_fraction", "cupping"):
        if not 0.0 <= p[key] <= 1.0:
            raise VolmlaError(f"{key} must lie in [0, 1], got {p[key]}")
    if not (isinstance(p["rings"], int | np.integer) and p["rings"] >= 0):
        raise VolmlaError(f"rings must be an integer >= 0, got {p['rings']!r}")
    ov = tuple(float(v) for v in p["overlap"])
    if len(ov) != 2 or not 0.0 <= ov[0] <= ov[1] < 0.5:
        raise VolmlaError(f"overlap must be (lo, hi) with 0 <= lo <= hi < 0.5, got {p['overlap']!r}")
    if not p["cluster_mean"] >= 1.0:
        raise VolmlaError(f"cluster_mean must be >= 1, got {p['cluster_mean']}")
    p["overlap"] = ov
    p["dtype"] = dtype
    return (dims[0], dims[1], dims[2]), p


def crushed_ore(
    *,
    shape: int | Sequence[int] = (96, 96, 96),
    seed: int = 0,
    level: Level = "easy",
    voxel_size: float | Sequence[float] = 1.0,
    oversample: int = 2,
    density: float | None = None,
    radius: float | None = None,
    radius_sigma: float | None = None,
    noise_sigma: float | None = None,
    contrast: float | None = None,
    psf_sigma: float | None = None,
    cupping: float | None = None,
    rings: int | None = None,
    free_fraction: float | None = None,
    overlap: tuple[float, float] | None = None,
    cluster_mean: float = 3.5,
    gap: float | None = None,
    pore_fraction: float = 0.0,
    dtype: Literal["uint16", "float32"] = "uint16",
    field_of_view: bool = False,
) -> CrushedOre:
    """A simulated CT of crushed ore with its physical truth (in memory).

    Touching irregular convex particles in clusters, grains of quartz, feldspar (within
    ``contrast`` noise sigmas of quartz) and bright pyrite, rendered at ``oversample`` x
    the scan resolution, averaged down, blurred, cupped, optionally ringed, noised; the
    steps are in the module docstring. Everything is held in memory: fine for scans up
    to about 256^3 (the chunked, disk-sized generator is
    :func:`volmla.synthetic.phantom`). Deterministic for a given ``seed`` and options.

    Parameters
    ----------
    shape
        Scan ``(z, y, x)`` voxels (each >= 16), or one number for a cube.
    seed
        Seeds everything (placement, grains, rings, noise).
    level
        ``"easy"`` or ``"hard"``: the defaults of the options below (:data:`LEVELS`).
    voxel_size
        Micrometres, one number or ``(z, y, x)``: recorded and used for ``volume_um3``
        and ``esd_um`` (the geometry is in voxels).
    oversample
        Fine voxels per scan voxel along each axis (1..4), for partial volume and truth.
    density
        Target solid fraction of the volume (the placement may stop short; the achieved
        value is ``params["achieved_density"]``).
    radius, radius_sigma
        Median equivalent-sphere radius (scan voxels) and log-normal sigma of the sizes.
    noise_sigma
        Gaussian noise standard deviation (grey values).
    contrast
        Feldspar minus quartz grey value, in noise sigmas.
    psf_sigma
        Gaussian PSF sigma (scan voxels).
    cupping
        Relative darkening at the centre of the xy plane (beam hardening).
    rings
        Number of ring artefacts about the z axis.
    free_fraction
        Probability that a particle is one grain (free).
    overlap
        ``(lo, hi)``: the overlap depth of touching particles, as a fraction of the size.
    cluster_mean
        Mean particles per cluster (geometric law, at most 10).
    gap
        Least distance (scan voxels, about) between particles of different clusters, so
        clusters touch only within themselves.
    pore_fraction
        Probability that a particle holds one spherical air pore (void, label 0).
    dtype
        ``"uint16"`` (rounded and clipped, like a 16-bit scan) or ``"float32"``.
    field_of_view
        Write the scan as a reconstruction does: 0 outside the circle inscribed in the
        slices (about the slices' centre, radius half the shorter side), in
        ``intensity`` and ``noiseless``. The truth volumes stay whole; a particle with a
        fine voxel outside the circle is cut (``touches_border``), and ``liberation`` is
        over the particles it leaves whole; ``params["field_of_view"]`` records it.

    Returns
    -------
    CrushedOre
        ``intensity, noiseless, particles, phases, solid_fraction, table, liberation,
        params``. ``table`` has one row per particle: ``particle_id``,
        ``volume_voxels_fine`` (fine-voxel count), ``volume_voxels`` (its value in scan
        voxels, fine / oversample^3: the true volume), ``volume_um3``, ``esd_um``,
        ``centroid_z/y/x`` (scan voxels), ``touches_border`` (the particle reaches the
        volume's faces), ``cluster_id``, ``n_cells`` (Voronoi grains),
        ``vox_fine_<phase>`` (int), ``vox_<phase>`` (scan voxels, float),
        ``grade_<phase>`` and ``free_phase`` (the phase of a free particle, grade >
        0.99, else ``""``). Particle ids match the ``particles`` volume; a particle
        whose scan-resolution majority is void somewhere (or everywhere, if tiny) keeps
        its row.

    Examples
    --------
    >>> ore = crushed_ore(shape=32, seed=1, oversample=1)
    >>> ore.intensity.shape, ore.intensity.dtype.name, ore.particles.dtype.name
    ((32, 32, 32), 'uint16', 'uint32')
    >>> bool((ore.table["volume_voxels_fine"] > 0).all())
    True
    """
    dims, p = _check(
        shape,
        level,
        oversample,
        {
            "density": density,
            "radius": radius,
            "radius_sigma": radius_sigma,
            "noise_sigma": noise_sigma,
            "contrast": contrast,
            "psf_sigma": psf_sigma,
            "cupping": cupping,
            "rings": rings,
            "free_fraction": free_fraction,
            "overlap": overlap,
            "cluster_mean": cluster_mean,
            "gap": gap,
            "pore_fraction": pore_fraction,
        },
        dtype,
    )
    os = int(oversample)
    vs = _voxel_size(voxel_size)
    place_rng, grain_rng, scan_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    shapes = _place(place_rng, np.asarray(dims, np.float64), p)
    fine_shape = (dims[0] * os, dims[1] * os, dims[2] * os)
    labels, material, cells = _render(grain_rng, shapes, fine_shape, os, p)
    # particles present in the volume, renumbered 1..n in placement order
    present = np.zeros(len(shapes.centre) + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    order = np.flatnonzero(present[1:])
    lut = np.zeros(len(shapes.centre) + 1, np.uint32)
    lut[order + 1] = np.arange(1, order.size + 1, dtype=np.uint32)
    labels = lut[labels]
    particles = np.empty(dims, np.uint32)
    phases = np.empty(dims, np.uint8)
    for z0, z1 in _slabs(dims[0], dims[1] * dims[2], os):
        particles[z0:z1], phases[z0:z1] = _majority(labels[z0 * os : z1 * os], material[z0 * os : z1 * os], os)
    grey = dict(GREY)
    grey["feldspar"] = GREY["quartz"] + p["contrast"] * p["noise_sigma"]
    intensity, noiseless, solid = _scan(scan_rng, material, os, dims, grey, p)
    table = _truth_table(labels, material, os, shapes, order, cells, vs)
    fov = None
    if field_of_view:
        fov = _cut_by_circle(labels, os, dims, intensity, noiseless, table)
    n_contacts = _contacts(labels)
    params = {
        "shape": list(dims),
        "seed": int(seed),
        "level": level,
        "oversample": os,
        "voxel_size_um": list(vs),
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()},
        "grey": grey,
        "phases": {str(k): v for k, v in PHASES.items()},
        "n_particles": int(order.size),
        "n_clusters": int(np.unique(shapes.cluster[order]).size),
        "n_contacts": int(n_contacts),
        "achieved_density": float(solid.mean()),
        "field_of_view": fov,
    }
    return CrushedOre(
        intensity=intensity,
        noiseless=noiseless,
        particles=particles,
        phases=phases,
        solid_fraction=solid,
        table=table,
        liberation=truth_liberation(table, voxel_size=vs),
        params=params,
    )


def _cut_by_circle(labels: np.ndarray, os: int, dims: tuple[int, int, int], intensity: np.ndarray,
                   noiseless: np.ndarray, table: pd.DataFrame) -> dict[str, Any]:
    """The inscribed circle as a reconstruction's field of view (``field_of_view=True``):
    the scan 0 outside it (in place), the particles with a fine voxel outside it cut."""
    center = ((dims[1] - 1) / 2, (dims[2] - 1) / 2)
    radius = min(dims[1], dims[2]) / 2

    def outside(n_y: int, n_x: int, step: float) -> np.ndarray:  # voxel centres in scan units
        y = (np.arange(n_y) + 0.5) * step - 0.5
        x = (np.arange(n_x) + 0.5) * step - 0.5
        return np.hypot(y[:, None] - center[0], x[None, :] - center[1]) >= radius

    scan_out = outside(dims[1], dims[2], 1.0)
    intensity[:, scan_out] = 0
    noiseless[:, scan_out] = 0
    cut = np.unique(labels[:, outside(labels.shape[1], labels.shape[2], 1.0 / os)])
    table["touches_border"] = table["touches_border"].to_numpy(bool) | np.isin(table["particle_id"], cut[cut > 0])
    return {"center_yx": [float(center[0]), float(center[1])], "radius": float(radius), "fill": 0.0}


def _contacts(labels: np.ndarray) -> int:
    """Number of particle pairs sharing a face on the fine grid."""
    pairs: list[np.ndarray] = []
    for ax in range(3):
        a = np.moveaxis(labels, ax, 0)
        x, y = a[1:].ravel(), a[:-1].ravel()
        t = (x != y) & (x > 0) & (y > 0)
        lo, hi = np.minimum(x[t], y[t]).astype(np.uint64), np.maximum(x[t], y[t]).astype(np.uint64)
        pairs.append((lo << np.uint64(32)) | hi)
    return int(np.unique(np.concatenate(pairs)).size)


def write_crushed_ore(
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    chunks: int = 64,
    **options: Any,
) -> CrushedOre:
    """Write a :func:`crushed_ore` phantom: OME-Zarr volumes and the truth tables.

    ``out_dir`` receives ``intensity.zarr``, ``phases.zarr``, ``particles.zarr``
    (:func:`volmla.io.volume.write_volume`), ``truth.parquet`` (the table) and
    ``truth.json`` (``params`` and ``liberation``).

    Parameters
    ----------
    out_dir
        Output folder (created).
    overwrite
        Replace existing outputs.
    chunks
        Zarr chunk edge.
    **options
        Keywords of :func:`crushed_ore`.

    Returns
    -------
    CrushedOre
        The phantom written.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ore = write_crushed_ore(d, shape=32, oversample=1)
    ...     sorted(p.name for p in Path(d).iterdir())
    ['intensity.zarr', 'particles.zarr', 'phases.zarr', 'truth.json', 'truth.parquet']
    """
    from volmla.io.volume import write_volume

    out = Path(out_dir)
    json_path = out / "truth.json"
    if json_path.exists() and not overwrite:
        raise VolmlaError(f"{json_path} exists: give overwrite=True to replace it")
    ore = crushed_ore(**options)
    out.mkdir(parents=True, exist_ok=True)
    vs = ore.params["voxel_size_um"]
    phases = {int(k): v for k, v in ore.params["phases"].items()}
    write_volume(ore.intensity, out / "intensity.zarr", voxel_size=vs, chunks=chunks, kind="intensity", overwrite=overwrite)
    write_volume(ore.phases, out / "phases.zarr", voxel_size=vs, chunks=chunks, kind="phases", phases=phases, overwrite=overwrite)
    write_volume(ore.particles, out / "particles.zarr", voxel_size=vs, chunks=chunks, kind="labels", overwrite=overwrite)
    ore.table.to_parquet(out / "truth.parquet", index=False)
    payload = {"params": ore.params, "liberation": ore.liberation}
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return ore
