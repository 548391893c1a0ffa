"""Scoring a 2-D instance segmentation against its truth: matches, IoU, AP50.

1. The overlap table of the two label images (one ``np.unique`` over a combined key)
   gives every (true, predicted) pair's intersection; with the areas, their IoU.
2. Matching is one-to-one by decreasing IoU (greedy; above 0.5 a match is unique anyway).
3. Scores: the fraction of true instances matched at ``iou`` (0.7 by default), the mean
   IoU of those matches, and AP50: the precision of the predictions at IoU 0.5 integrated
   over recall (COCO-style, one class, predictions ranked by a given score, by area
   when none is given).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["InstanceScores", "match_instances", "score_instances"]


class InstanceScores(NamedTuple):
    """Segmentation scores of one or more images."""

    n_true: int
    n_pred: int
    matched: float
    """Fraction of true instances matched at the IoU threshold."""
    mean_iou: float
    """Mean IoU of those matches."""
    ap50: float


def match_instances(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches of true and predicted labels with IoU >= ``iou``.

    Parameters
    ----------
    truth, pred
        Label images of one shape (0 = background).
    iou
        Smallest IoU of a match.

    Returns
    -------
    tuple of numpy.ndarray
        ``(true_ids, pred_ids, ious)``, one entry per match.

    Examples
    --------
    >>> t = np.array([[1, 1, 0, 2, 2]]); p = np.array([[3, 3, 0, 0, 4]])
    >>> match_instances(t, p)
    (array([1, 2]), array([3, 4]), array([1. , 0.5]))
    """
    t, p = np.asarray(truth).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    t_area = np.bincount(t)
    p_area = np.bincount(p)
    both = (t > 0) & (p > 0)
    key = t[both] * (int(p.max()) + 1) + p[both]
    pairs, inter = np.unique(key, return_counts=True)
    ti, pi = pairs // (int(p.max()) + 1), pairs % (int(p.max()) + 1)
    ious = inter / (t_area[ti] + p_area[pi] - inter)
    order = np.argsort(-ious, kind="stable")
    used_t: set[int] = set()
    used_p: set[int] = set()
    out: list[tuple[int, int, float]] = []
    for k in order:
        if ious[k] < iou:
            break
        a, b = int(ti[k]), int(pi[k])
        if a in used_t or b in used_p:
            continue
        used_t.add(a)
        used_p.add(b)
        out.append((a, b, float(ious[k])))
    out.sort()
    return (np.array([o[0] for o in out], np.int64), np.array([o[1] for o in out], np.int64),
            np.array([o[2] for o in out], np.float64))


def score_instances(truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.7) -> InstanceScores:
    """Fraction of true instances matched at ``iou``, their mean IoU, and AP50.

    Parameters
    ----------
    truth, pred
        Label images of one shape.
    iou
        IoU threshold of the matched fraction.

    Returns
    -------
    InstanceScores

    Examples
    --------
    >>> t = np.array([[1, 1, 0, 2, 2]]); p = np.array([[3, 3, 0, 0, 4]])
    >>> score_instances(t, p).matched
    0.5
    """
    true_ids = np.unique(truth[truth > 0])
    pred_ids = np.unique(pred[pred > 0])
    ti, _, ious = match_instances(truth, pred, iou=iou)
    _, pi50, _ = match_instances(truth, pred, iou=0.5)
    matched = len(ti) / len(true_ids) if len(true_ids) else 1.0
    mean_iou = float(ious.mean()) if len(ious) else 0.0
    # AP50: rank predictions by area (larger first), precision over recall
    area = np.bincount(np.asarray(pred).ravel().astype(np.int64))
    ranked = pred_ids[np.argsort(-area[pred_ids], kind="stable")]
    hit = np.isin(ranked, pi50).astype(np.float64)
    if not len(true_ids):
        ap = 1.0 if not len(ranked) else 0.0
    else:
        tp = np.cumsum(hit)
        precision = tp / np.arange(1, len(ranked) + 1)
        recall = tp / len(true_ids)
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        steps = np.diff(np.concatenate([[0.0], recall]))
        ap = float(np.sum(steps * envelope))
    return InstanceScores(len(true_ids), len(pred_ids), float(matched), mean_iou, ap)
