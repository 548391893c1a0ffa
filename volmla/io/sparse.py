"""Sparse label volumes: the training-label convention of the data contract.

A *sparse label* volume stores ``phase + SPARSE_LABEL_OFFSET`` where a voxel is labelled
and 0 where it is not: 0 means "unlabelled", 1 void, 2 phase 1, and so on. Correlative
labelling writes them; training, the random forest and ``evaluate`` read them.
"""

from __future__ import annotations

import numpy as np

SPARSE_LABEL_OFFSET = 1
"""Sparse label volumes store ``phase + 1``; 0 is unlabelled."""

__all__ = ["SPARSE_LABEL_OFFSET", "encode_sparse_labels"]


def encode_sparse_labels(phases: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Sparse label block (``phase + 1`` where ``mask``, else 0) from a phase block.

    Parameters
    ----------
    phases
        Phase ids (0 = void).
    mask
        Which voxels are labelled (default all).

    Returns
    -------
    numpy.ndarray
        uint8 (uint16 when a phase id reaches 255).

    Examples
    --------
    >>> encode_sparse_labels(np.array([0, 1, 2]), np.array([True, False, True])).tolist()
    [1, 0, 3]
    """
    out = phases.astype(np.uint16) + SPARSE_LABEL_OFFSET
    if mask is not None:
        out[~np.asarray(mask, bool)] = 0
    return out.astype(np.uint8) if out.max(initial=0) < 256 else out
