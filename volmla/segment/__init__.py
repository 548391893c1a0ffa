"""Phase and particle segmentation: U-Net training/export (torch) and inference (ONNX Runtime).

The package is split so that inference never imports torch:

- :mod:`volmla.segment.dispatch` (:func:`segment_phases`): the one entry point that
  picks a method (``unet``, ``rf``, ``threshold``, ``kmeans``) and returns lazy phases;
- :mod:`volmla.segment.model`, :mod:`~volmla.segment.train`, :mod:`~volmla.segment.export`
  need torch (the ``train`` extra);
- :mod:`volmla.segment.sessions` (ONNX models, providers, the session cache),
  :mod:`~volmla.segment.infer` (tiled U-Net inference, chunk by chunk),
  :mod:`~volmla.segment.classical` (multi-Otsu threshold, k-means),
  :mod:`~volmla.segment.forest` (filter features, random forest) and
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

from volmla.io.sparse import SPARSE_LABEL_OFFSET, encode_sparse_labels
from volmla.segment.dispatch import METHODS, PhaseSegmentation, SegmentMethod, segment_phases

PARTICLE_CLASSES = ("background", "interior", "boundary")

__all__ = [
    "METHODS",
    "PARTICLE_CLASSES",
    "SPARSE_LABEL_OFFSET",
    "PhaseSegmentation",
    "SegmentMethod",
    "encode_sparse_labels",
    "particle_targets",
    "segment_phases",
]


def particle_targets(particles: np.ndarray) -> np.ndarray:
    """Background (0) / interior (1) / boundary (2) classes from a particle id block.

    A particle voxel is *boundary* when one of its 6 face neighbours holds a different
    id (background or another particle), so touching particles are separated by a
    boundary layer; the block's own faces are not boundaries.

    Parameters
    ----------
    particles
        A block of particle ids (0 = background).

    Returns
    -------
    numpy.ndarray
        uint8 classes, same shape.

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
