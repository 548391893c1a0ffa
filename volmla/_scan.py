"""Compiled single-pass block scan behind :func:`volmla.measure.block_partial`.

One loop over the block's voxels accumulates everything the particle table needs:
voxel count per (particle, phase), integer coordinate sums, bounding boxes, and, for
every face the block owns, the per-particle face counts and the phase-contact counts.
A NumPy formulation (``cc3d.statistics``, ``np.bincount``, boolean masks per axis)
makes about twenty passes over the block and its temporaries and was 4x slower; this
makes one, and releases the GIL, so that blocks run on several threads at once.

Conventions (those of :func:`volmla.measure.block_partial`):

- a particle voxel's index is ``lab - base`` (labels renumbered or offset by the
  caller into ``1..m-1``); 0 is outside particles;
- the owned phase of a voxel is its phase inside a particle and 0 outside;
- :func:`scan` counts the faces between two voxels of the block, and those on the
  volume's faces (``low_edge``, ``high_edge``: beyond them is the outside, label 0 and
  phase 0); :func:`scan_faces` counts the faces between two adjacent blocks, from the
  last plane of one and the first plane of the next.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def nonzero_range(lab: np.ndarray) -> tuple[Any, Any]:
    """``(min, max)`` of the non-zero values of an unsigned ``lab``; ``(0, -1)`` when
    all are zero."""
    one = np.uint64(1)
    lo = np.uint64(0) - one
    hi = np.uint64(0)
    for v in lab.ravel():
        w = np.uint64(v)
        lo = min(lo, w - one)  # 0 wraps to the largest value: branch-free, vectorised
        hi = max(hi, w)
    if hi == 0:
        return 0, -1
    return np.int64(lo + one), np.int64(hi)


@numba.njit(nogil=True, cache=True)
def _pair(faces: np.ndarray, contacts: np.ndarray, axis: int, base: Any, v: Any, p: Any, v2: Any, p2: Any) -> None:
    """The face between a voxel (label ``v``, owned phase ``p``) and its next neighbour."""
    if v != v2:
        if v != 0:
            faces[axis, np.int64(v) - base] += 1
            contacts[axis, 0, p] += 1
        if v2 != 0:
            faces[axis, np.int64(v2) - base] += 1
            contacts[axis, 0, p2] += 1
    elif v != 0 and p != p2:
        if p < p2:
            contacts[axis, p, p2] += 1
        else:
            contacts[axis, p2, p] += 1


@numba.njit(nogil=True, cache=True)
def _count(counts: np.ndarray, sums: np.ndarray, low: np.ndarray, high: np.ndarray, r: Any, p: Any,
           z: int, y: int, x: int) -> None:
    counts[r, p] += 1
    sums[r, 0] += z
    sums[r, 1] += y
    sums[r, 2] += x
    low[r, 0] = min(low[r, 0], z)
    low[r, 1] = min(low[r, 1], y)
    low[r, 2] = min(low[r, 2], x)
    high[r, 0] = max(high[r, 0], z)
    high[r, 1] = max(high[r, 1], y)
    high[r, 2] = max(high[r, 2], x)


@numba.njit(nogil=True, cache=True)
def scan(
    lab: np.ndarray,
    ph: np.ndarray,
    base: int,
    m: int,
    n_phases: int,
    low_edge: np.ndarray,
    high_edge: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scan one block (C-contiguous ``lab`` and ``ph``) once.

    Returns ``(counts[m, n_phases], sums[m, 3], low[m, 3], high[m, 3], faces[3, m],
    contacts[3, n_phases, n_phases])``: voxel counts per phase, coordinate sums, the
    inclusive box (local indices; ``low`` starts at a large value, ``high`` at -1),
    faces per particle index and per axis, and faces per phase pair (``[axis, 0, p]``:
    phase ``p`` against the outside of its particle; ``[axis, a, b]`` with
    ``0 < a < b``: two phases inside one particle). Entries of index 0 count nothing
    meaningful; the caller drops them. Faces towards a neighbouring block are left to
    :func:`scan_faces`.
    """
    counts = np.zeros((m, n_phases), np.int64)
    sums = np.zeros((m, 3), np.int64)
    low = np.full((m, 3), np.iinfo(np.int64).max, np.int64)
    high = np.full((m, 3), -1, np.int64)
    faces = np.zeros((3, m), np.int64)
    contacts = np.zeros((3, n_phases, n_phases), np.int64)
    cz, cy, cx = lab.shape
    zero_l = np.zeros(cx, lab.dtype)
    zero_p = np.zeros(cx, ph.dtype)
    need = np.zeros((cx // 8 + 1) * 8, np.uint8)  # whole words, the tail stays 0
    words = need.view(np.uint64)
    for z in range(cz):
        # the face towards the next plane: inside the block, or towards the outside at
        # the volume's high face; towards the next block it is scan_faces' job
        do_z = z + 1 < cz or high_edge[0]
        for y in range(cy):
            do_y = y + 1 < cy or high_edge[1]
            row = lab[z, y]
            prow = ph[z, y]
            row_z, prow_z = (lab[z + 1, y], ph[z + 1, y]) if z + 1 < cz else (zero_l, zero_p)
            row_y, prow_y = (lab[z, y + 1], ph[z, y + 1]) if y + 1 < cy else (zero_l, zero_p)
            # voxels with a particle voxel among themselves and their next neighbours,
            # found by a vectorised pass; runs of eight without are skipped at once
            for x in range(cx - 1):
                need[x] = (row[x] | row_z[x] | row_y[x] | row[x + 1]) != 0
            need[cx - 1] = (row[cx - 1] | row_z[cx - 1] | row_y[cx - 1]) != 0
            x = 0
            while x < cx:
                if x & 7 == 0 and words[x >> 3] == 0:
                    x += 8
                    continue
                if need[x] == 0:
                    x += 1
                    continue
                v = row[x]
                v_z = row_z[x]
                v_y = row_y[x]
                v_x = row[x + 1] if x + 1 < cx else 0
                p = np.int64(0)
                if v != 0:
                    p = np.int64(prow[x])
                    _count(counts, sums, low, high, np.int64(v) - base, p, z, y, x)
                    # the volume's low faces: the outside against this voxel
                    if z == 0 and low_edge[0]:
                        _pair(faces, contacts, 0, base, 0, 0, v, p)
                    if y == 0 and low_edge[1]:
                        _pair(faces, contacts, 1, base, 0, 0, v, p)
                    if x == 0 and low_edge[2]:
                        _pair(faces, contacts, 2, base, 0, 0, v, p)
                if do_z:
                    _pair(faces, contacts, 0, base, v, p, v_z, np.int64(prow_z[x]) if v_z != 0 else 0)
                if do_y:
                    _pair(faces, contacts, 1, base, v, p, v_y, np.int64(prow_y[x]) if v_y != 0 else 0)
                if x + 1 < cx or high_edge[2]:
                    _pair(faces, contacts, 2, base, v, p, v_x, np.int64(prow[x + 1]) if v_x != 0 else 0)
                x += 1
    return counts, sums, low, high, faces, contacts


@numba.njit(nogil=True, cache=True)
def scan_faces(lab: np.ndarray, ph: np.ndarray, base: int, m: int, n_phases: int) -> tuple[np.ndarray, np.ndarray]:
    """The faces between two adjacent planes ``lab[0]`` (low side) and ``lab[1]``.

    Returns ``(faces[1, m], contacts[1, n_phases, n_phases])`` as in :func:`scan`.
    """
    faces = np.zeros((1, m), np.int64)
    contacts = np.zeros((1, n_phases, n_phases), np.int64)
    n0, n1 = lab.shape[1], lab.shape[2]
    for i in range(n0):
        for j in range(n1):
            v = lab[0, i, j]
            v2 = lab[1, i, j]
            if v == 0 and v2 == 0:
                continue
            p = np.int64(ph[0, i, j]) if v != 0 else 0
            p2 = np.int64(ph[1, i, j]) if v2 != 0 else 0
            _pair(faces, contacts, 0, base, v, p, v2, p2)
    return faces, contacts
