"""The trainable border-core segmenter: training, export, inference with its norm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.synthetic.sem import sem_image

pytest.importorskip("torch")

SMALL = {"shape": (128, 160), "n_crystals": 6, "median_diameter": 3.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from volmla.sem.segmenter import train_segmenter

    out = tmp_path_factory.mktemp("seg") / "seg.onnx"
    return train_segmenter(out, n_images=3, iterations=20, patch=64, batch=2, seed=0, threads=1, **SMALL)


def test_training_writes_a_border_core_model(trained: Any) -> None:
    from volmla.segment.sessions import read_metadata

    meta = read_metadata(trained.path)
    assert meta["classes"] == ["background", "interior", "boundary"]
    assert meta["dim"] == 2 and meta["target"] == "particles"
    lo, hi = meta["norm"]
    assert 0.0 <= lo < hi <= 1.0  # percentiles of the normalised stack
    assert trained.n_images == 3 and trained.shape == (119, 160)  # info bar cropped
    assert 0.0 < trained.val_accuracy <= 1.0


def test_model_is_accepted_by_segment_and_crystals(trained: Any, tmp_path: Path) -> None:
    from volmla.sem import crystals, segment_with_model
    from volmla.synthetic.sem import write_sem_images

    s = sem_image(seed=50, **SMALL)  # type: ignore[arg-type]
    image = s.image[: s.image.shape[0] - s.bar_rows]
    labels = segment_with_model(image, model=trained.path)
    assert labels.shape == image.shape and labels.dtype == np.int32
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))  # consecutive
    write_sem_images(tmp_path / "imgs", n=2, seed=60, **SMALL)  # type: ignore[arg-type]
    result = crystals([tmp_path / "imgs"], out_dir=tmp_path / "out", segmenter=trained.path, n_boot=0)
    assert result.n_images == 2 and (tmp_path / "out" / "crystals.parquet").is_file()


def test_inference_applies_the_model_norm(trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network sees normalise(image) mapped by the model's norm (a mutation ignoring it fails)."""
    import volmla.segment.sessions as sessions
    from volmla.sem import segment
    from volmla.sem.segment import normalise

    seen: list[np.ndarray] = []

    class Session:
        def get_inputs(self) -> list[Any]:
            return [type("I", (), {"name": "x"})()]

        def run(self, _: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            seen.append(feed["x"])
            x = feed["x"]
            return [np.concatenate([1 - x, x, 0 * x], axis=1)]

    monkeypatch.setattr(sessions, "read_metadata", lambda _: {"norm": [0.2, 0.7], "multiple": 4})
    monkeypatch.setattr(sessions, "get_session", lambda _: Session())
    s = sem_image(seed=51, **SMALL)  # type: ignore[arg-type]
    image = s.image[:119]
    segment.segment_with_model(image, model="fake.onnx")
    expected = (normalise(image) - 0.2) / 0.5
    got = seen[0][0, 0]
    assert got.shape == (120, 160)  # padded to the multiple
    np.testing.assert_allclose(got[:119], expected, atol=1e-5)


def test_stack_and_bad_input(tmp_path: Path) -> None:
    from volmla.sem.segmenter import segmenter_stack, train_segmenter

    with pytest.raises(VolmlaError, match="same shape"):
        segmenter_stack([np.zeros((8, 8))], [np.zeros((8, 9))])
    with pytest.raises(VolmlaError, match="no NAME.labels.tif"):
        train_segmenter(tmp_path / "s.onnx", labelled=tmp_path)
    (tmp_path / "s.onnx").write_bytes(b"x")
    with pytest.raises(VolmlaError, match="overwrite=True"):
        train_segmenter(tmp_path / "s.onnx")


def test_labelled_folder_and_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from volmla.cli.app import app
    from volmla.synthetic.sem import write_sem_images

    write_sem_images(tmp_path / "lab", n=2, seed=3, **SMALL)  # type: ignore[arg-type]
    out = tmp_path / "seg.onnx"
    r = CliRunner().invoke(app, ["sem", "train", "--kind", "segmenter", "-o", str(out), "--labelled",
                                 str(tmp_path / "lab"), "--iterations", "5", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "segmenter written" in r.output and out.is_file()


def test_touching_interiors_get_one_marker_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two overlapping discs whose predicted interiors touch: two crystals, not one."""
    import volmla.segment.sessions as sessions
    from volmla.sem import segment

    yy, xx = np.mgrid[0:96, 0:128]
    interior = ((yy - 48) ** 2 + (xx - 42) ** 2 < 24**2) | ((yy - 48) ** 2 + (xx - 84) ** 2 < 24**2)

    class Session:
        def get_inputs(self) -> list[Any]:
            return [type("I", (), {"name": "x"})()]

        def run(self, _: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            scores = np.stack([~interior, interior, np.zeros_like(interior)]).astype(np.float32)
            return [scores[None]]

    monkeypatch.setattr(sessions, "read_metadata", lambda _: {"multiple": 1})
    monkeypatch.setattr(sessions, "get_session", lambda _: Session())
    image = np.random.default_rng(0).normal(100, 10, (96, 128))
    labels = segment.segment_with_model(image, model="fake.onnx")
    assert int(labels.max()) == 2
    assert labels[48, 30] != labels[48, 96] and labels[48, 30] > 0 and labels[48, 96] > 0
