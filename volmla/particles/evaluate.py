"""Particle labels against the truth: matches at an IoU threshold, merges and splits.

:func:`match_particles` compares two label volumes of the same shape in memory:

1. both are renumbered densely (``np.unique``), so ids may be any integers;
2. the **contingency table** (voxels shared by each predicted and true particle) comes
   from one ``np.unique`` on a combined key of the overlapping voxels, never from a
   loop over labels; with the particle sizes it gives the IoU of every overlapping pair;
3. particles touching the volume faces are left out of the counts (``exclude_border``):
   they are cut, and the data contract excludes them from the statistics too;
4. a true particle is **matched** when some predicted particle reaches ``iou`` with it
   (one to one for ``iou > 0.5``); a predicted particle **merges** the true particles
   that lie mostly (more than half of their voxels) inside it, each beyond the first
   counting once; a true particle is **split** when two or more predicted particles lie
   mostly inside it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from volmla.errors import VolmlaError

__all__ = ["ParticleMatch", "match_particles"]


class ParticleMatch(NamedTuple):
    """How well predicted particles reproduce the true ones.

    Attributes
    ----------
    n_true, n_pred
        Particles counted (not touching the border with ``exclude_border``).
    matched
        True particles with a predicted particle at IoU >= the threshold.
    matched_fraction
        ``matched / n_true`` (NaN without true particles).
    merges
        True particles lost into a predicted particle that holds more than one (the
        first true particle of each merged particle is not counted).
    splits
        True particles of which two or more predicted particles lie mostly inside.
    count_error
        ``(n_pred - n_true) / n_true`` (NaN without true particles).
    mean_iou
        Mean over the true particles of their best IoU.
    """

    n_true: int
    n_pred: int
    matched: int
    matched_fraction: float
    merges: int
    splits: int
    count_error: float
    mean_iou: float


def _border_ids(inverse: np.ndarray, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Boolean per dense id: the particle has a voxel on a face of the volume."""
    dense = inverse.reshape(shape)
    out = np.zeros(n, bool)
    for axis in range(dense.ndim):
        for k in (0, -1):
            out[np.unique(np.take(dense, k, axis=axis))] = True
    return out


def match_particles(pred: Any, truth: Any, *, iou: float = 0.8, exclude_border: bool = True) -> ParticleMatch:
    """Match predicted particle labels to true ones (in memory; 0 is background in both).

    Parameters
    ----------
    pred
        Predicted labels (any integer dtype; NumPy, or anything ``np.asarray`` reads).
    truth
        True labels, the same shape.
    iou
        Intersection over union a true particle needs with a predicted one to count as
        matched, in (0, 1]; above 0.5 a match is one to one.
    exclude_border
        Leave particles touching the volume faces out of ``n_true`` / ``n_pred`` and of
        the matches, merges and splits counted (a predicted particle touching the border
        may still match or merge a true one that does not).

    Returns
    -------
    ParticleMatch
        ``n_true, n_pred, matched, matched_fraction, merges, splits, count_error,
        mean_iou``.

    Examples
    --------
    >>> truth = np.zeros((1, 4, 9), np.uint8); truth[0, 1:3, 1:4] = 1; truth[0, 1:3, 4:8] = 2
    >>> merged = (truth > 0).astype(np.uint8)
    >>> m = match_particles(merged, truth, exclude_border=False)
    >>> m.matched, m.merges, m.count_error
    (0, 1, -0.5)
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise VolmlaError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
    for name, a in (("pred", pred), ("truth", truth)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise VolmlaError(f"{name} must hold integer labels, got dtype {a.dtype}")
    if not 0.0 < float(iou) <= 1.0:
        raise VolmlaError(f"iou must lie in (0, 1], got {iou}")
    # 1. dense ids (0 stays 0 when present: it sorts first)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    t_ids, t_inv = np.unique(truth.ravel(), return_inverse=True)
    p_inv = p_inv.ravel() + (0 if p_ids[0] == 0 else 1)  # dense id 0 = background
    t_inv = t_inv.ravel() + (0 if t_ids[0] == 0 else 1)
    n_p = int(p_inv.max()) + 1
    n_t = int(t_inv.max()) + 1
    p_size = np.bincount(p_inv, minlength=n_p)
    t_size = np.bincount(t_inv, minlength=n_t)
    # 2. the contingency table of overlapping voxels
    both = (p_inv > 0) & (t_inv > 0)
    keys, inter = np.unique(p_inv[both].astype(np.int64) * n_t + t_inv[both], return_counts=True)
    pi, ti = keys // n_t, keys % n_t
    pair_iou = inter / (p_size[pi] + t_size[ti] - inter)
    # 3. the populations
    t_keep = np.ones(n_t, bool)
    p_keep = np.ones(n_p, bool)
    t_keep[0] = p_keep[0] = False
    if exclude_border:
        t_keep &= ~_border_ids(t_inv, truth.shape, n_t)
        p_keep &= ~_border_ids(p_inv, pred.shape, n_p)
    n_true, n_pred = int(t_keep.sum()), int(p_keep.sum())
    # 4. matches, merges, splits
    best = np.zeros(n_t)
    np.maximum.at(best, ti, pair_iou)
    matched = int((t_keep & (best >= iou)).sum())
    inside_p = inter * 2 > t_size[ti]  # the true particle lies mostly inside p
    members = np.bincount(pi[inside_p], minlength=n_p)
    counted = np.bincount(pi[inside_p & t_keep[ti]], minlength=n_p)
    merges = int(np.where(members >= 2, np.minimum(counted, members - 1), 0).sum())
    inside_t = inter * 2 > p_size[pi]  # the predicted particle lies mostly inside t
    pieces = np.bincount(ti[inside_t], minlength=n_t)
    splits = int((t_keep & (pieces >= 2)).sum())
    nan = float("nan")
    return ParticleMatch(
        n_true=n_true,
        n_pred=n_pred,
        matched=matched,
        matched_fraction=matched / n_true if n_true else nan,
        merges=merges,
        splits=splits,
        count_error=(n_pred - n_true) / n_true if n_true else nan,
        mean_iou=float(best[t_keep].mean()) if n_true else nan,
    )
