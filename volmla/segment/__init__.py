"""Phase and particle segmentation: U-Net training/export (torch) and inference (ONNX Runtime).

The package is split so that inference never imports torch:

- :mod:`volmla.segment.model`, :mod:`~volmla.segment.train`, :mod:`~volmla.segment.export`
  need torch (the ``train`` extra);
- :mod:`volmla.segment.infer` (ONNX Runtime, tiled, chunk by chunk),
  :mod:`~volmla.segment.classical` (threshold / k-means / random forest) and
  :mod:`~volmla.segment.evaluate` (confusion matrices) do not.

Label conventions
-----------------
- A *phase* volume is uint8, 0 = void/matrix, 1..N the phases. A model's class index is
  the phase id, so class 0 (void) is a class the model learns.
- A *sparse label* volume (training labels, ``volmla train --labels``) stores
  ``phase + SPARSE_LABEL_OFFSET``: 0 means "unlabelled", 1 means void, 2 phase 1, and so on.
  Only labelled voxels enter the losses, the random forest and ``evaluate --mask labelled``.
- Particle segmentation uses the same machinery with the classes background (0),
  interior (1) and boundary (2), built from a particle id volume by
  :func:`particle_targets`.
"""

from __future__ import annotations

import numpy as np

SPARSE_LABEL_OFFSET = 1
"""Sparse label volumes store ``phase + 1``; 0 is unlabelled."""

PARTICLE_CLASSES = ("background", "interior", "boundary")

__all__ = ["PARTICLE_CLASSES", "SPARSE_LABEL_OFFSET", "particle_targets", "sparse_labels"]


def sparse_labels(phases: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Sparse label block (``phase + 1`` where ``mask``, else 0) from a phase block.

    Examples
    --------
    >>> sparse_labels(np.array([0, 1, 2]), np.array([True, False, True])).tolist()
    [1, 0, 3]
    """
    out = phases.astype(np.uint16) + SPARSE_LABEL_OFFSET
    if mask is not None:
        out[~np.asarray(mask, bool)] = 0
    return out.astype(np.uint8) if out.max(initial=0) < 256 else out


def particle_targets(particles: np.ndarray) -> np.ndarray:
    """Background (0) / interior (1) / boundary (2) classes from a particle id block.

    A particle voxel is *boundary* when one of its 6 face neighbours holds a different
    id (background or another particle), so touching particles are separated by a
    boundary layer; the block's own faces are not boundaries.

    Examples
    --------
    >>> p = np.zeros((1, 1, 5), np.uint32); p[0, 0, 1:4] = 7
    >>> particle_targets(p).tolist()
    [[[0, 2, 1, 2, 0]]]
    """
    p = np.asarray(particles)
    out = (p > 0).astype(np.uint8)
    edge = np.zeros(p.shape, bool)
    for axis in range(p.ndim):
        lo = [slice(None)] * p.ndim
        hi = [slice(None)] * p.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        diff = p[tuple(lo)] != p[tuple(hi)]
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    out[edge & (p > 0)] = 2
    return out
