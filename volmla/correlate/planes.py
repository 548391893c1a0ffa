"""Plane geometry in the CT volume: axes, tilted planes, and lazy reads of planes and slabs.

A mapped face lies in a plane normal to one axis of the volume (``z``, ``y`` or ``x``),
possibly tilted by a few degrees about its two in-plane axes. Registration reads
candidate planes (:func:`_ct_plane`) or the slab of planes a tilted plane crosses
(:func:`_slab`, :func:`_slab_range`) and samples the tilted plane by interpolation
(:func:`_oblique`, :func:`_plane_image`); label transfer writes a tilted plane's labels
to the voxels nearest to it (:func:`plane_heights`). Only the planes asked for are read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import dask.array as da
import numpy as np

from volmla.errors import VolmlaError

__all__ = ["AXES", "Axis", "plane_heights"]

Axis = Literal["z", "y", "x"]
AXES: tuple[str, ...] = ("z", "y", "x")


def _plane_axes(axis: str) -> tuple[int, int, int]:
    """(normal, row, col) axis numbers of the plane normal to ``axis``; checks ``axis``."""
    if axis not in AXES:
        raise VolmlaError(f"axis must be one of {AXES}, got {axis!r}")
    a = AXES.index(axis)
    rows, cols = (i for i in range(3) if i != a)
    return a, rows, cols


def plane_heights(
    plane_shape: Sequence[int], *, index: float, tilt_deg: Sequence[float] = (0.0, 0.0),
    voxel_size_um: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Position (in voxels along the plane normal) of a tilted plane at every (row, col).

    The plane passes through ``index`` at the centre of the ``plane_shape`` grid and
    rises by ``tan(tilt_deg[0])`` per micrometre along rows and ``tan(tilt_deg[1])`` along
    columns; ``voxel_size_um`` is (normal, row, col). The in-plane scale change of a
    tilt of a few degrees (1 - cos, under 0.2 % at 3 degrees) is neglected: every
    (row, col) of the plane grid holds one point.

    Parameters
    ----------
    plane_shape
        (rows, cols) of the plane grid.
    index
        Plane position (voxels along the normal) at the grid's centre.
    tilt_deg
        Slopes along rows and along columns, in degrees.
    voxel_size_um
        Voxel edges (normal, row, col) in micrometres.

    Returns
    -------
    numpy.ndarray
        float64 ``(rows, cols)``: the plane's position along the normal, in voxels.

    Examples
    --------
    >>> h = plane_heights((64, 64), index=10, tilt_deg=(2.0, 0.0))
    >>> round(float(h[-1, 0] - h[0, 0]), 2)  # 63 voxels * tan(2 deg)
    2.2
    """
    rows, cols = int(plane_shape[0]), int(plane_shape[1])
    va, vr, vc = (float(v) for v in voxel_size_um)
    r = (np.arange(rows, dtype=np.float64) - (rows - 1) / 2)[:, None]
    c = (np.arange(cols, dtype=np.float64) - (cols - 1) / 2)[None, :]
    return float(index) + math.tan(math.radians(tilt_deg[0])) * r * vr / va + \
        math.tan(math.radians(tilt_deg[1])) * c * vc / va


def _ct_plane(ct: da.Array, axis: int, index: int) -> da.Array:
    """Plane ``index`` along ``axis`` (lazy)."""
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = index
    return ct[tuple(sl)]


def _read(part: da.Array) -> np.ndarray:
    """A small lazy region (planes, slabs) read now as float32, through the one compute."""
    from volmla.engine.cluster import compute

    return np.asarray(compute([part], desc="reading planes")[0], np.float32)


def _slab(ct: da.Array, axis: int, lo: int, hi: int) -> np.ndarray:
    """Planes ``lo:hi`` along ``axis`` (only those are read), normal axis first."""
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = slice(lo, hi)
    return np.moveaxis(_read(ct[tuple(sl)]), axis, 0)


def _oblique(slab: np.ndarray, lo: int, heights: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Sample a slab (normal axis first, starting at plane ``lo``) on a tilted plane."""
    from scipy import ndimage

    rows, cols = np.indices(heights.shape, dtype=np.float64)
    return ndimage.map_coordinates(slab, [heights - lo, rows, cols], order=order, mode="nearest")


def _slab_range(n: int, heights: np.ndarray, pad: int = 1) -> tuple[int, int]:
    """Planes ``[lo, hi)`` (within ``0..n``) that a plane of these heights crosses, plus ``pad``."""
    return max(0, int(math.floor(heights.min())) - pad), min(n, int(math.ceil(heights.max())) + pad + 1)


def _plane_image(ct: da.Array, axis: int, index: int, tilt: Sequence[float], vs: Sequence[float]) -> np.ndarray:
    """A CT plane, tilted or not (a tilted one by linear interpolation within its slab)."""
    if not any(tilt):
        return _read(_ct_plane(ct, axis, index))
    _, r, c = _plane_axes(AXES[axis])
    h = plane_heights((ct.shape[r], ct.shape[c]), index=index, tilt_deg=tilt, voxel_size_um=(vs[axis], vs[r], vs[c]))
    lo, hi = _slab_range(ct.shape[axis], h)
    return _oblique(_slab(ct, axis, lo, hi), lo, h)
