"""Compiled 6-neighbour kernels on packed labels, behind :mod:`volmla.measure.fractions`
and :mod:`volmla.segment.regions`.

Every kernel reads an *extended* block (one voxel of halo on each side, corners
included, as
:func:`volmla.engine.overlap.halo_map` hands it) of packed labels
``(particle << 8) | phase`` (uint64; particle ids below ``2**48``) and writes one value
per voxel of the block proper, so the result is exact whatever the chunking. A
neighbour is *void* when it lies outside every particle or is of phase 0.

- :func:`context`: per voxel, the (particle, phase) its volume goes to and the partner
  its intensity is apportioned against (:mod:`volmla.measure.fractions` step 1; the
  void voxels around a particle by their 26 neighbours);
- :func:`shell_candidates`: per voxel on a particle's outer shell, the phase of the
  voxels opposite its void neighbours (:mod:`volmla.segment.regions` step 1);
- :func:`phase_faces`: per voxel, its faces shared with each other phase of its
  particle, 3 bits per phase (:mod:`volmla.segment.regions` step 2).

Ties between equally frequent candidates go to the smallest value, so every kernel is a
pure function of the voxel's neighbourhood.
"""

from __future__ import annotations

import numba
import numpy as np

_OFFSETS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.int64)
_OFFSETS26 = np.array([[dz, dy, dx] for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                       if (dz, dy, dx) != (0, 0, 0)], np.int64)


@numba.njit(nogil=True, cache=True, inline="always")
def _most_frequent(values: np.ndarray, n: int) -> np.uint64:
    """The most frequent of ``values[:n]`` (ties: the smallest); 0 when ``n == 0``."""
    best = np.uint64(0)
    best_count = 0
    for i in range(n):
        c = 0
        for j in range(n):
            if values[j] == values[i]:
                c += 1
        if c > best_count or (c == best_count and values[i] < best):
            best, best_count = values[i], c
    return best


@numba.njit(nogil=True, cache=True)
def context(ext: np.ndarray, out: np.ndarray) -> None:
    """Where each voxel's volume goes: ``out = (target << 8) | partner`` (0: nowhere).

    - a voxel of particle ``P`` and phase ``A > 0``: target ``(P, A)``; partner 0 when
      it has a void neighbour, else the most frequent other phase among its neighbours
      in ``P``, else ``A`` itself (a pure voxel);
    - any other voxel (void, or outside particles): target the most frequent
      (particle, phase > 0) among its 26 neighbours (within its own particle when it
      lies in one), partner 0 (void); nowhere when there is none. All 26: a voxel
      that touches a convex particle by an edge or a corner holds some of its volume.
    """
    nz, ny, nx = out.shape
    votes = np.zeros(26, np.uint64)
    mask = np.uint64(255)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                lab = ext[z + 1, y + 1, x + 1]
                p = lab >> np.uint64(8)
                a = lab & mask
                n = 0
                if p != 0 and a != 0:
                    void = False
                    for k in range(6):
                        nb = ext[z + 1 + _OFFSETS[k, 0], y + 1 + _OFFSETS[k, 1], x + 1 + _OFFSETS[k, 2]]
                        pn = nb >> np.uint64(8)
                        an = nb & mask
                        if pn == 0 or an == 0:
                            void = True
                        elif pn == p and an != a:
                            votes[n] = an
                            n += 1
                    if void:
                        partner = np.uint64(0)
                    elif n:
                        partner = _most_frequent(votes, n)
                    else:
                        partner = a
                    out[z, y, x] = (lab << np.uint64(8)) | partner
                else:
                    for k in range(26):
                        nb = ext[z + 1 + _OFFSETS26[k, 0], y + 1 + _OFFSETS26[k, 1], x + 1 + _OFFSETS26[k, 2]]
                        pn = nb >> np.uint64(8)
                        if pn != 0 and (nb & mask) != 0 and (p == 0 or pn == p):
                            votes[n] = nb
                            n += 1
                    out[z, y, x] = (_most_frequent(votes, n) << np.uint64(8)) if n else np.uint64(0)


@numba.njit(nogil=True, cache=True)
def shell_candidates(ext: np.ndarray, out: np.ndarray) -> None:
    """For a voxel of particle ``P``, phase ``A > 0``, with void neighbours: the most
    frequent phase ``B`` (``B > 0``, ``B != A``) of the voxels of ``P`` opposite those
    void neighbours (its interior neighbours); 0 elsewhere."""
    nz, ny, nx = out.shape
    votes = np.zeros(6, np.uint64)
    mask = np.uint64(255)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                lab = ext[z + 1, y + 1, x + 1]
                p = lab >> np.uint64(8)
                a = lab & mask
                out[z, y, x] = 0
                if p == 0 or a == 0:
                    continue
                n = 0
                for k in range(6):
                    nb = ext[z + 1 + _OFFSETS[k, 0], y + 1 + _OFFSETS[k, 1], x + 1 + _OFFSETS[k, 2]]
                    if (nb >> np.uint64(8)) != 0 and (nb & mask) != 0:
                        continue
                    o = k ^ 1  # the opposite direction
                    op = ext[z + 1 + _OFFSETS[o, 0], y + 1 + _OFFSETS[o, 1], x + 1 + _OFFSETS[o, 2]]
                    ao = op & mask
                    if (op >> np.uint64(8)) == p and ao != 0 and ao != a:
                        votes[n] = ao
                        n += 1
                if n:
                    out[z, y, x] = np.uint8(_most_frequent(votes, n))


@numba.njit(nogil=True, cache=True)
def phase_faces(ext: np.ndarray, out: np.ndarray) -> None:
    """For a voxel of particle ``P``, phase ``A > 0``: its faces shared with voxels of
    ``P`` of each other phase ``B > 0``, as 3-bit counts at bit ``3 (B - 1)`` (phases
    1..21); 0 elsewhere."""
    nz, ny, nx = out.shape
    mask = np.uint64(255)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                lab = ext[z + 1, y + 1, x + 1]
                p = lab >> np.uint64(8)
                a = lab & mask
                code = np.uint64(0)
                if p != 0 and a != 0:
                    for k in range(6):
                        nb = ext[z + 1 + _OFFSETS[k, 0], y + 1 + _OFFSETS[k, 1], x + 1 + _OFFSETS[k, 2]]
                        an = nb & mask
                        if (nb >> np.uint64(8)) == p and an != 0 and an != a:
                            code += np.uint64(1) << (np.uint64(3) * (an - np.uint64(1)))
                out[z, y, x] = code
