"""Bad sparse labels for phases by region (issue 17): a one-line error, never a silent zero."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr

from volmla.errors import VolmlaError
from volmla.segment.dispatch import check_labels, segment_phases
from volmla.segment.pooled import MIN_NOISE_VOXELS, label_levels, region_phases


def _scan(seed: int = 0, shape: int = 28) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One particle of two grains 1 noise sigma apart and a bright inclusion (as in test_pooled)."""
    rng = np.random.default_rng(seed)
    ph = np.zeros((shape,) * 3, np.uint8)
    ph[3:-3, 3:-3, 3: shape // 2] = 1
    ph[3:-3, 3:-3, shape // 2 : -3] = 2
    ph[13:15, 8:10, 6:8] = 3
    img = np.array([1000.0, 2000.0, 2010.0, 4000.0])[ph] + rng.normal(0, 10, ph.shape)
    return img.astype(np.float32), ph, (ph > 0).astype(np.uint32)


def _labels(ph: np.ndarray, planes: tuple[int, ...] = (7, 14, 21)) -> np.ndarray:
    labels = np.zeros(ph.shape, np.uint8)
    for z in planes:
        labels[z] = ph[z] + 1
    return labels


def _named(labels: np.ndarray, names: dict[int, str]) -> xr.DataArray:
    return xr.DataArray(labels, dims=("z", "y", "x"), attrs={"phases": names})


def test_check_labels_counts_the_labelled_phases() -> None:
    img, ph, part = _scan()
    counts = check_labels(_labels(ph), shape=img.shape)
    assert sorted(counts) == [0, 1, 2, 3]
    assert counts[3] == 4  # the inclusion's voxels on plane 14
    assert counts == check_labels(_labels(ph), shape=img.shape, phase_names=["qz", "fsp", "py"])


def test_a_named_phase_without_labels_is_one_line() -> None:
    img, ph, part = _scan(1)
    labels = _labels(ph)
    labels[labels == 4] = 0  # the pyrite named but never labelled
    with pytest.raises(VolmlaError, match=r"phase 'py' \(3\) has no labelled voxels") as err:
        segment_phases(img, labels=labels, particles=part, phase_names=["qz", "fsp", "py"])
    assert "\n" not in str(err.value)
    # named by the labels' own attribute: the same
    with pytest.raises(VolmlaError, match=r"phase 'py' \(3\)"):
        segment_phases(img, labels=_named(labels, {1: "qz", 2: "fsp", 3: "py"}), particles=part)
    # more labelled phases than names
    with pytest.raises(VolmlaError, match="phase_names names 1 phases"):
        segment_phases(img, labels=labels, particles=part, phase_names=["qz"])
    # without names the labels say which phases there are: two, and both are found
    seg = segment_phases(img, labels=labels, particles=part)
    assert seg.classes == ("void", "phase1", "phase2")


def test_a_phase_missing_below_a_labelled_one_is_one_line() -> None:
    img, ph, part = _scan(2)
    labels = _labels(ph)
    labels[labels == 3] = 0  # phase 2 (label 3) never labelled, phase 3 is
    with pytest.raises(VolmlaError, match="phase 2 has no labelled voxels in labels"):
        segment_phases(img, labels=labels, particles=part)


def test_labels_of_the_wrong_shape_are_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import volmla.particles

    img, ph, part = _scan(3)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("particles labelled before the labels were checked")

    monkeypatch.setattr(volmla.particles, "label_particles", never)
    with pytest.raises(VolmlaError, match=r"labels must have the shape of the intensity \(28, 28, 28\), got \(27"):
        segment_phases(img, labels=_labels(ph)[1:])
    with pytest.raises(VolmlaError, match="at least one solid phase"):
        segment_phases(img, labels=(_labels(ph) > 0).astype(np.uint8))  # only the void labelled
    with pytest.raises(VolmlaError, match="phase_names= is for method regions"):
        segment_phases(img, method="kmeans", classes=3, phase_names=["a", "b"])


def test_one_labelled_plane_works() -> None:
    """The cupping and the levels are fitted against the radius within a plane: one
    plane holding enough pure voxels gives the same phases as three."""
    img, ph, part = _scan(4)
    inside = part > 0
    three = region_phases(img, part, _labels(ph)).compute()
    one = region_phases(img, part, _labels(ph, planes=(14,))).compute()
    assert ((three != ph) & inside).sum() / inside.sum() < 0.02
    assert ((one != ph) & inside).sum() / inside.sum() < 0.03  # levels from a third of the voxels
    assert ((one != three) & inside).sum() / inside.sum() < 0.02


def test_too_few_pure_voxels_to_measure_the_noise_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    img, ph, part = _scan(5)
    labels = np.zeros(ph.shape, np.uint8)
    labels[14, 10:14, 5:9] = 2  # 16 voxels of phase 1, 16 of phase 2
    labels[14, 10:14, 16:20] = 3
    with pytest.raises(VolmlaError, match=f"too few pure voxels to measure the noise: no solid phase has "
                                          f"{MIN_NOISE_VOXELS}") as err:
        label_levels(img, labels, particles=part)
    assert "\n" not in str(err.value)
    # enough of one phase measures the noise; the other's level is used with a warning
    labels[14, 12:24, 4:12] = 2  # clear of the inclusion
    with caplog.at_level(logging.WARNING, logger="volmla.segment.pooled"):
        lv = label_levels(img, labels, particles=part)
    assert lv.levels[1] == pytest.approx(2000.0, abs=3.0) and lv.noise_sigma == pytest.approx(10.0, rel=0.2)
    assert any("phase 2: its grey level rests on" in r.getMessage() for r in caplog.records)
