"""The optional crop CNN: crops, training, ONNX export and inference (skipped without torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volmla.errors import VolmlaError
from volmla.sem import check_model, classify_crystals
from volmla.sem.cnn import CNN_FORMAT, crystal_crops


def test_crops_hold_the_crystal_and_its_scale() -> None:
    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 5:35] = 3
    table = pd.DataFrame({"crystal_id": [3], "bbox": [[10, 5, 20, 35]]})
    crops, scale = crystal_crops(lab, lab.astype(np.float32), table, pixel_size=0.2, size=24)
    assert crops.shape == (1, 2, 24, 24)
    mask = crops[0, 1] > 0.5
    assert mask[12, 3:21].all()  # the long axis spans the crop
    assert mask[:, 12].sum() < 12  # the short axis does not
    assert scale[0, 0] == pytest.approx(np.log10(0.2 * 2 * 18 / 24))


@pytest.mark.slow  # torch import and training: about 10-25 s
def test_cnn_trains_exports_and_classifies(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from volmla.sem.classify import _synthetic_matches
    from volmla.sem.cnn import train_cnn
    from volmla.synthetic.sem import SEM_CLASSES

    image, pred, table, px = next(_synthetic_matches(1, 7, 0.8, shape=(256, 320), n_crystals=12,
                                                     median_diameter=4.0))
    crops, scale = crystal_crops(pred, image, table, pixel_size=px)
    y = np.array([SEM_CLASSES.index(c) for c in table.true_class])
    model = tmp_path / "cnn.onnx"
    accuracy = train_cnn(crops, scale, y, classes=list(SEM_CLASSES), out=model, epochs=2, seed=0, threads=1)
    assert 0.0 <= accuracy <= 1.0
    assert check_model(model) == CNN_FORMAT
    names, prob = classify_crystals(pred, image, table, pixel_size=px, model=model)
    assert len(names) == len(table) and set(names) <= set(SEM_CLASSES)
    assert np.all((prob >= 0.25 - 1e-6) & (prob <= 1 + 1e-6))  # the top of 4 softmax outputs


def test_cnn_kind_refuses_a_labelled_folder(tmp_path: Path) -> None:
    from volmla.sem import train_forms

    with pytest.raises(VolmlaError, match="synthetic images only"):
        train_forms(tmp_path / "m.onnx", kind="cnn", labelled=tmp_path)
    with pytest.raises(VolmlaError, match="kind must be"):
        train_forms(tmp_path / "m.onnx", kind="svm")  # type: ignore[arg-type]
