"""Instance segmentation, features and scoring on synthetic SEM images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.sem import (
    crystal_table,
    match_instances,
    score_instances,
    segment_crystals,
    segment_with_model,
)
from volmla.sem.features import feret_min
from volmla.synthetic.sem import SEM_CLASSES, sem_image


def _field(seed: int, **kw: object) -> tuple[np.ndarray, np.ndarray, float]:
    s = sem_image(shape=(384, 512), n_crystals=16, median_diameter=4.0, seed=seed, **kw)  # type: ignore[arg-type]
    rows = s.image.shape[0] - s.bar_rows
    return s.image[:rows], s.labels[:rows], s.pixel_size


def test_generator_truth_is_consistent() -> None:
    s = sem_image(shape=(256, 320), n_crystals=12, median_diameter=4.0, seed=5)
    again = sem_image(shape=(256, 320), n_crystals=12, median_diameter=4.0, seed=5)
    assert np.array_equal(s.image, again.image) and np.array_equal(s.labels, again.labels)  # seeded
    n = len(s.classes)
    assert n > 5 and int(s.labels.max()) == n
    assert set(np.unique(s.classes)) <= set(range(len(SEM_CLASSES)))
    assert len(s.diameter_um) == len(s.aspect) == len(s.orientation) == n
    assert s.bar_rows > 0 and not s.labels[-s.bar_rows:].any()
    assert (s.image[-s.bar_rows:] == 0).mean() > 0.5  # a dark info bar
    # visible part never larger than the whole crystal
    visible = 2 * np.sqrt(np.bincount(s.labels.ravel())[1:] / np.pi) * s.pixel_size
    assert np.all(visible <= s.diameter_um + 1e-9)
    assert s.aspect.min() >= 1.0
    u16 = sem_image(shape=(64, 64), n_crystals=2, median_diameter=1.0, dtype="uint16", seed=1)
    assert u16.image.dtype == np.uint16
    with pytest.raises(VolmlaError, match="classes"):
        sem_image(classes=[7])


def test_classical_segmentation_matches_truth() -> None:
    image, truth, _ = _field(11)
    pred = segment_crystals(image)
    scores = score_instances(truth, pred, iou=0.7)
    assert scores.matched >= 0.85 and scores.mean_iou >= 0.9 and scores.ap50 >= 0.85
    assert np.array_equal(np.unique(pred), np.arange(int(pred.max()) + 1))  # consecutive labels
    # a mutation: without marker splitting touching crystals merge and the score drops
    merged = segment_crystals(image, h=1e6)
    assert score_instances(truth, merged).matched < scores.matched


def test_occluded_neighbours_are_separate() -> None:
    image, truth, _ = _field(12, overlap=0.7)
    touching = [k for k in range(1, int(truth.max()) + 1)
                if np.any(np.isin(truth[np.roll(truth == k, 1, axis=1) | np.roll(truth == k, 1, axis=0)], [0, k],
                                  invert=True))]
    assert touching  # the field does hold occlusions
    ti, _, _ = match_instances(truth, segment_crystals(image), iou=0.7)
    assert np.isin(touching, ti).mean() >= 0.7


def test_blank_image_is_refused() -> None:
    with pytest.raises(VolmlaError, match="single grey value"):
        segment_crystals(np.full((64, 64), 7, np.uint8))
    assert segment_crystals(np.random.default_rng(0).normal(100, 1, (64, 64))).max() < 30  # noise: few specks


def test_features_in_micrometres() -> None:
    lab = np.zeros((40, 50), np.int32)
    lab[5:15, 10:30] = 1  # 10 x 20 pixels
    lab[30:40, 0:4] = 2  # on the border
    t = crystal_table(lab, lab.astype(np.float32), pixel_size=0.5)
    first = t.iloc[0]
    assert first.area_um2 == pytest.approx(200 * 0.25)
    assert first.feret_min_um == pytest.approx(5.0)
    assert first.feret_max_um == pytest.approx(np.hypot(9, 19) * 0.5, rel=0.1)
    assert first.aspect_ratio == pytest.approx(2.0, rel=0.05)
    assert first.orientation_deg == pytest.approx(90.0, abs=1) or first.orientation_deg == pytest.approx(0.0, abs=1)
    assert not first.touches_border and bool(t.iloc[1].touches_border)
    assert first.solidity == pytest.approx(1.0) and first.convexity_defects == 0
    assert feret_min(np.array([[0, 0], [1, 1], [2, 2]], float)) == 0.0


def test_measured_size_and_aspect_close_to_truth() -> None:
    image, truth, px = _field(13)
    pred = segment_crystals(image)
    ti, pi, _ = match_instances(truth, pred, iou=0.7)
    measured = crystal_table(pred, image, pixel_size=px).set_index("crystal_id")
    true_t = crystal_table(truth, image, pixel_size=px).set_index("crystal_id")
    err = np.abs(measured.loc[pi, "equivalent_diameter_um"].to_numpy() / true_t.loc[ti, "equivalent_diameter_um"].to_numpy() - 1)
    assert np.median(err) < 0.05


def _border_core_model(path: Path) -> Path:
    """A 1x1 convolution: background below 0.5, interior above, never boundary."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([-10.0, 10.0, 0.0], np.float32).reshape(3, 1, 1, 1), "w")
    bias = numpy_helper.from_array(np.array([5.0, -5.0, -20.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])], "bc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "h", "w"])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_segmenter_model_path(tmp_path: Path) -> None:
    image, truth, _ = _field(14, overlap=1.3)  # no contacts: interiors alone separate them
    labels = segment_with_model(image, model=_border_core_model(tmp_path / "seg.onnx"))
    assert score_instances(truth, labels, iou=0.5).matched >= 0.8
