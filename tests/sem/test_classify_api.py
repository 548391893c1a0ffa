"""Form classifier (ONNX), the crystals batch API and the ``volmla sem`` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.sem import (
    COLUMNS,
    classify_table,
    crystals,
    folder_training_table,
    load_classifier,
    save_classifier,
    synthetic_training_table,
    train_classifier,
)
from volmla.synthetic.sem import SEM_CLASSES, write_sem_images

SMALL = {"shape": (320, 400), "n_crystals": 14, "median_diameter": 4.0}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = synthetic_training_table(n_images=4, seed=100, **SMALL)  # type: ignore[arg-type]
    clf = train_classifier(table, n_estimators=60, seed=0)
    return save_classifier(clf, tmp_path_factory.mktemp("m") / "forms.onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "syn"
    write_sem_images(out, n=2, seed=300, **SMALL)  # type: ignore[arg-type]
    return out


def test_classifier_onnx_metadata_and_accuracy(model: Path) -> None:
    meta = load_classifier(model)
    assert meta["classes"] == list(SEM_CLASSES)
    held_out = synthetic_training_table(n_images=2, seed=900, **SMALL)  # type: ignore[arg-type]
    names, prob = classify_table(held_out, model=model)
    accuracy = float(np.mean(np.array(names) == held_out.true_class.to_numpy()))
    assert accuracy > 0.6  # chance is 0.25; the benchmark measures the full-size model
    assert np.all((prob > 0) & (prob <= 1))


def test_wrong_models_are_refused(tmp_path: Path, model: Path) -> None:
    bogus = tmp_path / "x.onnx"
    bogus.write_text("nope")
    with pytest.raises(VolmlaError, match="not an ONNX model"):
        load_classifier(bogus)
    with pytest.raises(VolmlaError, match="at least 2 classes"):
        train_classifier(pd.DataFrame({"true_class": ["a"], **{d: [0.0] for d in load_classifier(model)["features"]}}))


def test_labelled_folder_training(folder: Path) -> None:
    table = folder_training_table(folder)
    assert set(table.true_class) <= set(SEM_CLASSES) and len(table) > 10


def test_crystals_end_to_end(folder: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = crystals([folder], out_dir=out, model=model, n_boot=20)
    table = pd.read_parquet(out / "crystals.parquet")
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert result.n_images == 2 and len(table) == result.n_crystals > 10
    assert set(table["class"]) <= set(SEM_CLASSES) and table.probability.between(0, 1).all()
    assert table.pixel_size_um.eq(0.1).all()  # from the FEI tag
    page = (out / "report.html").read_text()
    assert "Size distributions per class" in page and "Example crops per class" in page and "fraction_lo" in page
    # no classifier: class empty; an existing output is kept without overwrite
    with pytest.raises(VolmlaError, match="overwrite=True"):
        crystals([folder], out_dir=out)
    assert pd.read_parquet(out / "crystals.parquet")["class"].ne("").all()
    crystals([folder], out_dir=out, overwrite=True, n_boot=0)
    assert pd.read_parquet(out / "crystals.parquet")["class"].eq("").all()


def test_cli(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skimage.io import imsave

    png = tmp_path / "grey.png"
    imsave(png, np.full((64, 64), 90, np.uint8), check_contrast=False)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "k.txt").write_text("x")
    for argv, message in (
        (["sem", "crystals", str(png), "-o", str(tmp_path / "o1")], "--pixel-size"),
        (["sem", "crystals", str(png), "-o", str(tmp_path / "o1"), "--pixel-size", "0.1"], "no crystals"),
        (["sem", "crystals", str(tmp_path / "k.txt"), "-o", str(tmp_path / "o1")], "does not exist"),
        (["sem", "crystals", str(folder), "-o", str(keep)], "--overwrite"),
    ):
        assert main(["-q", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("volmla: error:") and message in err and err.count("\n") == 1, err
    assert (keep / "k.txt").read_text() == "x" and not (tmp_path / "o1").exists()
    assert main(["-q", "sem", "synth", "-o", str(tmp_path / "s"), "--n", "1"]) == 0
    assert (tmp_path / "s" / "sem_000.classes.csv").is_file()
