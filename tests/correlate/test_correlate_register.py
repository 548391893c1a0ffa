"""Registration of a map into the CT volume, tilt included (``volmla.correlate.register``)."""

from __future__ import annotations

import numpy as np
import pytest

from volmla import correlate as co
from volmla.errors import VolmlaError
from volmla.io.sparse import SPARSE_LABEL_OFFSET
from volmla.synthetic import correlative_labels, phantom, simulate_element_maps

NAMES = {1: "quartz", 2: "feldspar", 3: "pyrite"}


def test_registration_of_noise_is_reported(ph):
    ct, _ = ph
    noise = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)
    with pytest.raises(VolmlaError, match="poor"):
        co.register_map(ct, noise, pixel_size_um=20.0)
    reg = co.register_map(ct, noise, pixel_size_um=20.0, accept_poor=True)
    assert not reg.ok and reg.warnings and reg.quality < 0.05
    record = reg.to_dict()
    assert record["ok"] is False and record["warnings"] and "metric" in record


def test_registration_bad_input(ph):
    ct, _ = ph
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(VolmlaError, match="search range"):
        co.register_map(ct, img, pixel_size_um=20.0, search=(40, 60))
    with pytest.raises(VolmlaError, match="axis"):
        co.register_map(ct, img, pixel_size_um=20.0, axis="w")  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="planes must lie"):
        correlative_labels(*ph, planes=[48])


def test_mutual_information():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (50, 50))
    assert co.mutual_information(a, a) == pytest.approx(np.log(4), rel=0.02)
    assert co.mutual_information(a, rng.integers(0, 4, (50, 50))) < 0.02


@pytest.fixture(scope="module")
def wide():
    """A thin, wide phantom: a tilt of a few degrees moves its faces by a few voxels."""
    p = phantom(shape=(32, 96, 96), seed=1, voxel_size=10.0, chunks=32, esd_range=(8, 20), solid_fraction=0.4)
    return p.intensity.persist(), p.phases.persist()


def test_tilted_face_is_found(wide):
    ct, truth = wide
    out = correlative_labels(ct, truth, planes=[16], seed=0, factor=2, tilt_deg=(2.0, -1.5), max_tilt_deg=3.0,
                             erode=1)
    rec = out.report["planes"][0]
    assert np.all(np.abs(np.subtract(rec["found_tilt_deg"], rec["true_tilt_deg"])) <= 1.0), rec
    assert abs(rec["found_plane"] - 16) <= 1 and rec["assignment_correct"] and rec["ok"], rec
    assert rec["kept_fraction"] >= 0.3 and rec["label_accuracy"] >= 0.95, rec
    # the label volume holds the tilted plane: several z planes, each voxel right
    dense = out.labels.data.compute()
    zs = np.flatnonzero(dense.any(axis=(1, 2)))
    assert len(zs) >= 3
    kept = dense > 0
    assert np.mean(dense[kept] == truth.data.compute()[kept] + SPARSE_LABEL_OFFSET) >= 0.95
    with pytest.raises(VolmlaError, match="3-D phase volume"):
        simulate_element_maps(truth.data[16].compute(), voxel_size_um=10.0, phase_names=NAMES, tilt_deg=(1.0, 0.0))
