"""Scoring a 2-D instance segmentation against its truth: matches, IoU, AP50.

1. The overlap table of the two label images (one ``np.unique`` over a combined key)
   gives every (true, predicted) pair's intersection; with the areas, their IoU.
2. Matching is one-to-one by decreasing IoU (greedy; above 0.5 a match is unique anyway).
3. Scores: the fraction of true instances matched at ``iou`` (0.7 by default), the mean
   IoU of those matches, and AP50: the precision of the predictions at IoU 0.5 integrated
   over recall (COCO-style, one class, predictions ranked by a given score, by area
   when none is given).
4. :func:`evaluate_folder` scores a folder of a user's own labelled micrographs (real
   ones): segmentation as above, pooled over the images, and, with a classifier and
   ``NAME.classes.csv``, the form classification of the crystals matched at IoU 0.7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from volmla.errors import VolmlaError

__all__ = ["InstanceScores", "average_precision", "evaluate_folder", "match_instances", "score_instances"]


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
    # AP50: predictions ranked by area (larger first), precision over recall
    area = np.bincount(np.asarray(pred).ravel().astype(np.int64))
    hit50 = set(pi50.tolist())
    ap = average_precision([(float(area[k]), int(k) in hit50) for k in pred_ids], len(true_ids))
    return InstanceScores(len(true_ids), len(pred_ids), float(matched), mean_iou, ap)


def average_precision(hits: list[tuple[float, bool]], n_true: int) -> float:
    """Average precision of ranked predictions (COCO-style, one class, no interpolation grid).

    Parameters
    ----------
    hits
        ``(score, matched)`` per prediction, e.g. (area, matched at IoU 0.5), from one
        image or pooled over many.
    n_true
        True instances.

    Returns
    -------
    float
        Precision integrated over recall (its upper envelope); 1 with nothing to find
        and nothing predicted.

    Examples
    --------
    >>> average_precision([(9.0, True), (4.0, False), (1.0, True)], 2)
    0.8333333333333333
    """
    if not n_true:
        return 1.0 if not hits else 0.0
    ranked = sorted(hits, key=lambda h: -h[0])
    hit = np.array([h[1] for h in ranked], np.float64)
    tp = np.cumsum(hit)
    precision = tp / np.arange(1, len(hit) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    return float(np.sum(np.diff(np.concatenate([[0.0], tp / n_true])) * envelope))


def evaluate_folder(folder: str | Path, *, model: str | Path | None = None, segmenter: str | Path | None = None,
                    pixel_size: float | None = None) -> dict[str, Any]:
    """Score crystal segmentation (and form classification) on a folder of labelled micrographs.

    Parameters
    ----------
    folder
        Holds, per image, ``NAME.tif|png|jpg`` and ``NAME.labels.tif`` (instance labels of
        the crystals' visible parts, of the image's full size or of the image without its
        info bar), optionally ``NAME.classes.csv`` (``crystal_id``, ``class``): the layout
        ``volmla sem synth`` writes and :func:`~volmla.sem.folder_training_table` reads.
    model
        A form classifier (:func:`~volmla.sem.save_classifier`); with ``classes.csv``
        files, the crystals matched at IoU 0.7 are classified and scored.
    segmenter
        A border-core segmentation model; default the classical segmentation.
    pixel_size
        Micrometres per pixel for images without pixel-size tags (PNG, JPEG).

    Returns
    -------
    dict
        ``images``, ``true_crystals``, ``predicted``, ``matched_iou07`` (fraction of true
        crystals), ``mean_iou_of_matches``, ``ap50`` (pooled, predictions ranked by area),
        ``per_image`` rows, and with a classifier ``classification``: ``crystals``,
        ``top1``, ``classes`` and ``confusion_rows_true``.

    Examples
    --------
    >>> evaluate_folder("my_labelled_sems/", model="forms.onnx")["matched_iou07"]  # doctest: +SKIP
    """
    import pandas as pd
    import tifffile

    from volmla.sem.classify import classify_table
    from volmla.sem.features import crystal_table
    from volmla.sem.io import IMAGE_SUFFIXES, read_sem
    from volmla.sem.segment import segment_crystals, segment_with_model

    root = Path(folder)
    if not root.is_dir():
        raise VolmlaError(f"labelled folder {root} does not exist")
    label_files = sorted(root.glob("*.labels.tif"))
    if not label_files:
        raise VolmlaError(f"no NAME.labels.tif files in {root}")
    n_true = n_pred = 0
    ious: list[float] = []
    hits: list[tuple[float, bool]] = []
    rows: list[dict[str, Any]] = []
    y_true: list[str] = []
    y_pred: list[str] = []
    for label_file in label_files:
        stem = label_file.name[: -len(".labels.tif")]
        images = [q for q in root.iterdir() if q.stem == stem and q.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise VolmlaError(f"{label_file} needs its image {stem}.tif|png|jpg beside it")
        sem = read_sem(images[0], pixel_size=pixel_size)
        image = sem.image
        truth = tifffile.imread(str(label_file)).astype(np.int64)
        if truth.ndim != 2 or truth.shape[1] != image.shape[1] or truth.shape[0] < image.shape[0]:
            raise VolmlaError(f"{label_file} has shape {truth.shape}, its image {image.shape} (without the info bar)")
        truth = truth[: image.shape[0]]  # labels of the full image: the info bar's rows go
        pred = segment_with_model(image, model=segmenter) if segmenter is not None else segment_crystals(image)
        pred = np.asarray(pred).astype(np.int64)
        true_ids = np.unique(truth[truth > 0])
        pred_ids = np.unique(pred[pred > 0])
        ti, pi, iou = match_instances(truth, pred, iou=0.7)
        _, pi50, _ = match_instances(truth, pred, iou=0.5)
        area = np.bincount(pred.ravel())
        found50 = set(pi50.tolist())
        hits += [(float(area[k]), int(k) in found50) for k in pred_ids]
        n_true, n_pred = n_true + len(true_ids), n_pred + len(pred_ids)
        ious += iou.tolist()
        rows.append({"image": images[0].name, "true_crystals": len(true_ids), "predicted": len(pred_ids),
                     "matched_iou07": len(ti) / len(true_ids) if len(true_ids) else 1.0})
        csv = root / f"{stem}.classes.csv"
        if model is not None and csv.is_file() and len(ti):
            classes = pd.read_csv(csv)
            if not {"crystal_id", "class"} <= set(classes.columns):
                raise VolmlaError(f"{csv} must have the columns crystal_id and class")
            named = dict(zip(classes.crystal_id.astype(int), classes["class"].astype(str), strict=True))
            table = crystal_table(pred, image, pixel_size=sem.pixel_size)
            names, _ = classify_table(table, model=model)
            row_of = {int(c): i for i, c in enumerate(table.crystal_id)}
            for t, q in zip(ti, pi, strict=True):
                if int(t) in named and int(q) in row_of:
                    y_true.append(named[int(t)])
                    y_pred.append(names[row_of[int(q)]])
    out: dict[str, Any] = {"images": len(rows), "true_crystals": n_true, "predicted": n_pred,
                           "matched_iou07": len(ious) / n_true if n_true else 1.0,
                           "mean_iou_of_matches": float(np.mean(ious)) if ious else 0.0,
                           "ap50": average_precision(hits, n_true), "segmenter": "model" if segmenter is not None else "classical",
                           "per_image": rows}
    if model is not None:
        order = sorted(set(y_true) | set(y_pred))
        confusion = np.zeros((len(order), len(order)), np.int64)
        for a, b in zip(y_true, y_pred, strict=True):
            confusion[order.index(a), order.index(b)] += 1
        out["classification"] = {"crystals": len(y_true),
                                 "top1": float(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)]))
                                 if y_true else None,
                                 "classes": order, "confusion_rows_true": confusion.tolist()}
    return out
