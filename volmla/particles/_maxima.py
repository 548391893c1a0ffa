"""Regional-maximum candidates of a 3-D block in one compiled pass (the split's marker step).

A voxel is a *candidate* when none of its in-block 26 neighbours is higher; a candidate
is *bad* when one of its neighbours has the same value but is no candidate (its plateau
then reaches a higher voxel). These are the two masks :func:`volmla.particles.split.regional_maxima`
used to build from two 3x3x3 maximum filters (scipy, ``mode="nearest"`` and a
``-inf`` fill): the same sets, in one pass over the block and a second over its
candidates, with no float temporaries.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["maxima_candidates"]


@numba.njit(nogil=True, cache=True)
def _candidates(values: np.ndarray, cand: np.ndarray) -> None:  # pragma: no cover - compiled
    nz, ny, nx = values.shape
    for z in range(nz):
        z0, z1 = max(z - 1, 0), min(z + 2, nz)
        for y in range(ny):
            y0, y1 = max(y - 1, 0), min(y + 2, ny)
            for x in range(nx):
                x0, x1 = max(x - 1, 0), min(x + 2, nx)
                v = values[z, y, x]
                ok = True
                for a in range(z0, z1):
                    for b in range(y0, y1):
                        for c in range(x0, x1):
                            if values[a, b, c] > v:
                                ok = False
                                break
                        if not ok:
                            break
                    if not ok:
                        break
                cand[z, y, x] = ok


@numba.njit(nogil=True, cache=True)
def _bad(values: np.ndarray, cand: np.ndarray, bad: np.ndarray) -> bool:  # pragma: no cover - compiled
    nz, ny, nx = values.shape
    found = False
    for z in range(nz):
        z0, z1 = max(z - 1, 0), min(z + 2, nz)
        for y in range(ny):
            y0, y1 = max(y - 1, 0), min(y + 2, ny)
            for x in range(nx):
                if not cand[z, y, x]:
                    continue
                x0, x1 = max(x - 1, 0), min(x + 2, nx)
                v = values[z, y, x]
                hit = False
                for a in range(z0, z1):
                    for b in range(y0, y1):
                        for c in range(x0, x1):
                            if not cand[a, b, c] and values[a, b, c] == v:
                                hit = True
                                break
                        if hit:
                            break
                    if hit:
                        break
                if hit:
                    bad[z, y, x] = True
                    found = True
    return found


def maxima_candidates(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Candidates (no higher in-block 26-neighbour) and the bad ones among them.

    Parameters
    ----------
    values
        float32 block (z, y, x), no NaN.

    Returns
    -------
    cand : numpy.ndarray
        Boolean, True where no neighbour is higher.
    bad : numpy.ndarray or None
        Boolean, True on candidates with an equal neighbour that is no candidate; None
        when there is none.

    Examples
    --------
    >>> cand, bad = maxima_candidates(np.array([[[0, 1, 3, 1, 0, 2, 2, 0]]], np.float32))
    >>> cand.astype(int).tolist(), bad
    ([[[0, 0, 1, 0, 0, 1, 1, 0]]], None)
    """
    values = np.ascontiguousarray(values, np.float32)
    if values.ndim != 3:
        raise ValueError(f"values must be 3-D, got {values.ndim}-D")
    cand = np.empty(values.shape, bool)
    _candidates(values, cand)
    bad = np.zeros(values.shape, bool)
    return cand, (bad if _bad(values, cand, bad) else None)
