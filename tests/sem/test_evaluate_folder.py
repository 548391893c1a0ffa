"""Scoring a user's folder of labelled micrographs (issue 21: "and on any real SEM image a
user provides with labels"): the same figures as scoring the images one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from volmla.errors import VolmlaError
from volmla.sem import evaluate_folder, match_instances, read_sem, segment_crystals
from volmla.synthetic.sem import write_sem_images

OPTIONS = {"shape": (200, 260), "n_crystals": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_sem_images(root, n=2, seed=3, **OPTIONS)
    return root


def test_folder_scores_equal_the_per_image_scores(folder: Path) -> None:
    out = evaluate_folder(folder)
    n_true = matched = 0
    for image in sorted(folder.glob("sem_*[0-9].tif")):
        sem = read_sem(image)
        truth = tifffile.imread(str(image.with_suffix(".labels.tif")))[: sem.image.shape[0]]  # info bar cut
        ti, _, _ = match_instances(truth, segment_crystals(sem.image), iou=0.7)
        n_true += len(np.unique(truth[truth > 0]))
        matched += len(ti)
    assert out["images"] == 2 and out["true_crystals"] == n_true
    assert out["matched_iou07"] == pytest.approx(matched / n_true)
    assert 0.0 < out["ap50"] <= 1.0 and out["segmenter"] == "classical"
    assert "classification" not in out


def test_labels_of_the_cropped_image_are_accepted_and_a_wrong_shape_refused(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for labels in copy.glob("*.labels.tif"):  # labels of the image without its info bar
        image = read_sem(labels.with_name(labels.name.replace(".labels.tif", ".tif")))
        tifffile.imwrite(labels, tifffile.imread(str(labels))[: image.image.shape[0]])
    assert evaluate_folder(copy)["matched_iou07"] == evaluate_folder(folder)["matched_iou07"]
    first = sorted(copy.glob("*.labels.tif"))[0]
    tifffile.imwrite(first, np.zeros((10, 10), np.uint16))
    with pytest.raises(VolmlaError, match="has shape"):
        evaluate_folder(copy)
    with pytest.raises(VolmlaError, match="no NAME.labels.tif"):
        evaluate_folder(tmp_path)


def test_classification_is_scored_with_a_model(folder: Path, tmp_path: Path) -> None:
    from volmla.sem import save_classifier, synthetic_training_table, train_classifier

    table = synthetic_training_table(n_images=3, seed=50, **OPTIONS)
    model = save_classifier(train_classifier(table, n_estimators=40, seed=0), tmp_path / "forms.onnx")
    out = evaluate_folder(folder, model=model)["classification"]
    confusion = np.array(out["confusion_rows_true"])
    assert out["crystals"] == confusion.sum() > 0
    assert out["top1"] == pytest.approx(np.trace(confusion) / confusion.sum())
