"""Compare a predicted phase volume with the truth, out of core.

1. Every block contributes ``bincount(truth * C + pred)`` (C classes); the partial
   counts are summed into the C x C confusion matrix (rows truth, columns prediction):
   one small global reduction, the volumes are never held.
2. With ``mask="labelled"`` the truth is a sparse label volume (``phase + 1``, 0 =
   unlabelled) and only labelled voxels count.
3. From the matrix: per-class accuracy (recall), precision, IoU, overall accuracy over
   all voxels and over voxels whose truth is not void (class 0), and the abundance of
   every class in the truth and in the prediction (share of non-void voxels).
4. :func:`write_report` writes ``confusion.csv``, ``confusion.png``, ``metrics.csv``
   and ``metrics.json`` into a folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume, check_same_voxel_size
from volmla.errors import VolmlaError
from volmla.io.sparse import SPARSE_LABEL_OFFSET
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["Evaluation", "confusion_block", "evaluate", "write_report"]


class Evaluation(NamedTuple):
    """Confusion matrix (rows truth, columns prediction) and the scores derived from it."""

    confusion: np.ndarray
    classes: tuple[str, ...]
    per_class_accuracy: np.ndarray
    precision: np.ndarray
    iou: np.ndarray
    accuracy: float
    accuracy_excluding_void: float
    abundance_truth: np.ndarray
    abundance_pred: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        def named(values: np.ndarray) -> dict[str, float | None]:
            return {c: (None if np.isnan(v) else float(v)) for c, v in zip(self.classes, values, strict=True)}

        def score(value: float) -> float | None:  # NaN (nothing to score) is no JSON: null
            return None if np.isnan(value) else float(value)

        return {
            "classes": list(self.classes),
            "confusion": self.confusion.tolist(),
            "accuracy": score(self.accuracy),
            "accuracy_excluding_void": score(self.accuracy_excluding_void),
            "per_class_accuracy": named(self.per_class_accuracy),
            "precision": named(self.precision),
            "iou": named(self.iou),
            "mean_iou": float(np.nanmean(self.iou)) if np.isfinite(self.iou).any() else None,
            "abundance_truth": named(self.abundance_truth),
            "abundance_pred": named(self.abundance_pred),
        }


def confusion_block(truth: np.ndarray, pred: np.ndarray, *, n_classes: int, labelled: bool = False) -> np.ndarray:
    """One block's ``(C, C)`` confusion counts (``labelled``: truth is ``phase + 1``, 0 skipped).

    Parameters
    ----------
    truth, pred
        Blocks of the same shape.
    n_classes
        Number of classes ``C``.
    labelled
        Whether ``truth`` holds sparse labels.

    Returns
    -------
    numpy.ndarray
        int64 ``(C, C)``, rows truth, columns prediction.

    Examples
    --------
    >>> confusion_block(np.array([0, 1, 1]), np.array([0, 1, 0]), n_classes=2).tolist()
    [[1, 0], [1, 1]]
    """
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if labelled:
        keep = t > 0
        t, p = t[keep] - SPARSE_LABEL_OFFSET, p[keep]
    ok = (t < n_classes) & (p < n_classes) & (t >= 0)
    counts = np.bincount(t[ok] * n_classes + p[ok], minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _block_counts(truth: np.ndarray, pred: np.ndarray, *, n_classes: int, labelled: bool) -> np.ndarray:
    return confusion_block(truth, pred, n_classes=n_classes, labelled=labelled)[None, None, None]


MAX_CLASS = 255
"""Largest phase id a phase volume holds (uint8)."""


def _check_phase_ids(what: str, top: int, limit: int) -> None:
    """Refuse a volume whose largest value is no phase id (an intensity volume, particle labels)."""
    if top > limit:
        raise VolmlaError(f"{what} must hold phase ids 0..{limit}, got values up to {top}: an intensity volume?")


def _check_not_negative(what: str, low: int) -> None:
    """Refuse a signed volume holding a negative id (it is no phase id, nor a label)."""
    if low < 0:
        raise VolmlaError(f"{what} phase ids must not be negative, got {low}")


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def evaluate(
    pred: VolumeLike,
    truth: VolumeLike,
    *,
    mask: Literal["all", "labelled"] = "all",
    n_classes: int | None = None,
    classes: Sequence[str] | None = None,
) -> Evaluation:
    """Confusion matrix and scores of a phase prediction against the truth, out of core.

    Parameters
    ----------
    pred
        Predicted phases (uint8 ids).
    truth
        True phases (``mask="all"``) or sparse labels ``phase + 1`` (``mask="labelled"``).
    mask
        ``all`` voxels, or only ``labelled`` ones (truth > 0).
    n_classes
        Number of classes (default: from the phase names of the inputs, else the
        largest id found, one extra reduction).
    classes
        Class names (default: ``void`` and the volumes' phase names).

    Returns
    -------
    Evaluation

    Examples
    --------
    >>> ev = evaluate(np.array([[[0, 1, 2]]]), np.array([[[0, 1, 1]]]))
    >>> ev.confusion.tolist(), round(ev.accuracy_excluding_void, 2)
    ([[1, 0, 0], [0, 1, 1], [0, 0, 0]], 0.5)
    """
    from volmla.engine.cluster import compute

    if mask not in ("all", "labelled"):
        raise VolmlaError(f"mask must be 'all' or 'labelled', got {mask!r}")
    check_same_voxel_size({"pred": pred, "truth": truth})
    p = as_volume(pred, name="pred").data
    t = as_volume(truth, name="truth").data
    if p.shape != t.shape:
        raise VolmlaError(f"prediction shape {p.shape} differs from the truth shape {t.shape}")
    for what, data in (("pred", p), ("truth", t)):
        if not np.issubdtype(data.dtype, np.integer):
            raise VolmlaError(f"{what} must hold integer phase ids, got dtype {data.dtype}: an intensity volume?")
    labelled = mask == "labelled"
    names: dict[int, str] = {}
    for v in (truth, pred):
        names.update({int(k): str(n) for k, n in (getattr(v, "attrs", {}) or {}).get("phases", {}).items()})
    if classes is not None:
        n_classes = n_classes or len(classes)
    signed = {what: data for what, data in (("pred", p), ("truth", t)) if data.dtype.kind == "i"}
    if n_classes is None or signed:  # one pass for the extremes (a negative id would be skipped silently)
        top_p, top_t, *lows = compute([p.max(), t.max(), *(d.min() for d in signed.values())], desc="class count")
        for what, low in zip(signed, lows, strict=True):
            _check_not_negative(what, int(low))
        _check_phase_ids("pred", int(top_p), MAX_CLASS)
        _check_phase_ids("truth", int(top_t), MAX_CLASS + (SPARSE_LABEL_OFFSET if labelled else 0))
        if labelled and int(top_t) == 0:
            raise VolmlaError("truth holds no labelled voxel: with mask 'labelled' it must be sparse labels "
                              "(phase + 1; 0 = unlabelled)")
        if n_classes is None:
            n_classes = int(max(int(top_p), int(top_t) - (SPARSE_LABEL_OFFSET if labelled else 0),
                                max(names, default=0))) + 1
    n_classes = max(int(n_classes), 2)
    if classes is None:
        classes = ("void", *(names.get(k, f"phase{k}") for k in range(1, n_classes)))
    if len(classes) != n_classes:
        raise VolmlaError(f"classes must name {n_classes} classes, got {len(classes)}")
    t = t.rechunk(p.chunks)
    parts = da.map_blocks(
        _block_counts, t, p, n_classes=n_classes, labelled=labelled, dtype=np.int64,
        new_axis=(3, 4), chunks=tuple((1,) * len(c) for c in p.chunks) + ((n_classes,), (n_classes,)),
    )
    (matrix,) = compute([parts.sum(axis=(0, 1, 2))], desc="confusion matrix")
    cm = np.asarray(matrix, dtype=np.int64)
    if not cm.any():  # nothing compared: every score would be NaN
        raise VolmlaError("truth holds no labelled voxel of the classes compared" if labelled
                          else "no voxel of the classes compared: the volumes hold no phase id below n_classes")
    rows, cols, diag = cm.sum(1), cm.sum(0), np.diag(cm)
    solid = cm[1:]
    solid_total = int(solid.sum())
    acc_solid = float(np.trace(cm[1:, 1:]) / solid_total) if solid_total else float("nan")
    total = int(cm.sum())
    return Evaluation(
        confusion=cm,
        classes=tuple(classes),
        per_class_accuracy=_divide(diag, rows),
        precision=_divide(diag, cols),
        iou=_divide(diag, rows + cols - diag),
        accuracy=float(diag.sum() / total) if total else float("nan"),
        accuracy_excluding_void=acc_solid,
        abundance_truth=_divide(rows.astype(np.float64), np.full(n_classes, rows[1:].sum())) * (np.arange(n_classes) > 0),
        abundance_pred=_divide(cols.astype(np.float64), np.full(n_classes, cols[1:].sum())) * (np.arange(n_classes) > 0),
    )


def write_report(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write ``confusion.csv``, ``confusion.png``, ``metrics.csv`` and ``metrics.json`` into ``out_dir``.

    Parameters
    ----------
    ev
        From :func:`evaluate`.
    out_dir
        The folder (made if missing).

    Returns
    -------
    dict
        File kind -> path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from volmla.io.lock import write_error

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from exc
    paths = {name: out / name for name in ("confusion.csv", "confusion.png", "metrics.csv", "metrics.json")}
    pd.DataFrame(ev.confusion, index=[f"true_{c}" for c in ev.classes], columns=[f"pred_{c}" for c in ev.classes]).to_csv(paths["confusion.csv"])
    pd.DataFrame({
        "class": ev.classes, "accuracy": ev.per_class_accuracy, "precision": ev.precision, "iou": ev.iou,
        "abundance_truth": ev.abundance_truth, "abundance_pred": ev.abundance_pred,
    }).to_csv(paths["metrics.csv"], index=False)
    paths["metrics.json"].write_text(json.dumps(ev.as_dict(), indent=2, allow_nan=False))
    rows = ev.confusion.sum(1, keepdims=True)
    share = np.divide(ev.confusion, np.where(rows > 0, rows, 1))
    fig, ax = plt.subplots(figsize=(1.2 * len(ev.classes) + 2, 1.2 * len(ev.classes) + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(ev.classes)):
        for j in range(len(ev.classes)):
            ax.text(j, i, f"{share[i, j]:.2f}\n{ev.confusion[i, j]}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(ev.classes)), ev.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(ev.classes)), ev.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy excl. void {ev.accuracy_excluding_void:.3f}")
    fig.tight_layout()
    fig.savefig(paths["confusion.png"], dpi=100)
    plt.close(fig)
    return paths
