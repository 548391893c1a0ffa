"""Out-of-core confusion matrix against sklearn.metrics."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, jaccard_score

from volmla.errors import VolmlaError
from volmla.segment.evaluate import evaluate, write_report


@pytest.mark.parametrize("chunks", [(1, 11, 13), (3, 5, 7), (9, 1, 13), -1])
def test_confusion_matches_sklearn(rng: np.random.Generator, chunks: object) -> None:
    truth = rng.integers(0, 4, (9, 11, 13)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, truth.shape)).astype(np.uint8)
    ev = evaluate(da.from_array(pred, chunks=chunks), da.from_array(truth, chunks=chunks))
    ref = confusion_matrix(truth.ravel(), pred.ravel(), labels=range(4))
    assert (ev.confusion == ref).all()
    assert ev.accuracy == pytest.approx((truth == pred).mean())
    solid = truth > 0
    assert ev.accuracy_excluding_void == pytest.approx((truth[solid] == pred[solid]).mean())
    iou = jaccard_score(truth.ravel(), pred.ravel(), labels=range(4), average=None)
    assert np.allclose(ev.iou, iou)
    assert ev.abundance_truth[1:].sum() == pytest.approx(1.0)


def test_labelled_mask_counts_only_labelled(rng: np.random.Generator) -> None:
    truth = rng.integers(0, 3, (6, 8, 8)).astype(np.uint8)
    pred = rng.integers(0, 3, truth.shape).astype(np.uint8)
    labels = truth + 1
    labels[rng.random(truth.shape) < 0.6] = 0
    ev = evaluate(da.from_array(pred, chunks=4), da.from_array(labels, chunks=(2, 3, 8)), mask="labelled", n_classes=3)
    keep = labels > 0
    ref = confusion_matrix(truth[keep], pred[keep], labels=range(3))
    assert (ev.confusion == ref).all()


def test_report_files(tmp_path, rng: np.random.Generator) -> None:
    truth = rng.integers(0, 3, (4, 5, 6)).astype(np.uint8)
    ev = evaluate(truth, truth)
    paths = write_report(ev, tmp_path / "ev")
    assert all(p.exists() for p in paths.values())
    assert ev.accuracy == 1.0


def test_shape_mismatch_is_a_user_error() -> None:
    with pytest.raises(VolmlaError, match="shape"):
        evaluate(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8))
