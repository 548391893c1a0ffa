"""A whole correlative labelling run on a phantom (``volmla.correlate.run``, via ``volmla.synthetic``)."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.io.sparse import SPARSE_LABEL_OFFSET
from volmla.synthetic import correlative_labels


@pytest.fixture(scope="module")
def workflow(ph):
    ct, truth = ph
    return correlative_labels(ct, truth, planes=[0, 24], seed=0, factor=2, angle_deg=2.0, erode=1)


def test_workflow_recovers_truth(workflow):
    report = workflow.report
    assert len(report["planes"]) == 2
    for rec in report["planes"]:
        # k-means vs the block-majority truth: mixed boundary pixels cost some ARI
        assert rec["ari"] >= 0.85, rec
        assert rec["ari_pure"] >= 0.95, rec
        assert rec["assignment_correct"], rec
        assert abs(rec["found_plane"] - rec["plane"]) <= 1, rec
        assert abs(rec["found_angle_deg"] - rec["true_angle_deg"]) <= 1.0, rec
        shift_err = np.subtract(rec["found_translation_um"], rec["true_translation_um"])
        assert np.all(np.abs(shift_err) <= 10.0), rec  # within one CT voxel
        assert rec["ok"] and rec["converged"] and not rec["warnings"], rec
        assert rec["kept_fraction"] >= 0.3, rec
        assert rec["label_accuracy"] >= 0.95, rec


def test_workflow_labels_volume(workflow, ph):
    ct, truth = ph
    labels = workflow.labels
    assert labels.shape == ct.shape and labels.dtype == np.uint8
    assert labels.attrs["kind"] == "labels" and labels.attrs["voxel_size_um"] == ct.attrs["voxel_size_um"]
    dense = labels.data.compute()
    planes = [rec["found_plane"] for rec in workflow.report["planes"]]
    others = np.setdiff1d(np.arange(ct.shape[0]), planes)
    assert not dense[others].any()
    t = truth.data.compute()
    for z in planes:
        kept = dense[z] > 0
        assert kept.mean() >= 0.3
        assert np.mean(dense[z][kept] == t[z][kept] + SPARSE_LABEL_OFFSET) >= 0.95
