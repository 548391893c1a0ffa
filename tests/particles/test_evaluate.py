"""match_particles: hand-made cases (perfect, merge, split, renumbered, shifted, border)."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.particles.evaluate import ParticleMatch, match_particles


def _cubes(shape=(12, 30, 30), size=8, gap=0) -> np.ndarray:
    """Three cubes of ``size`` in a row along x, ``gap`` voxels apart, away from the faces."""
    out = np.zeros(shape, np.uint32)
    x = 2
    for k in (1, 2, 3):
        out[2 : 2 + size, 2 : 2 + size, x : x + size] = k
        x += size + gap
    return out


def test_perfect():
    truth = _cubes(gap=1)
    m = match_particles(truth, truth)
    assert isinstance(m, ParticleMatch)
    assert (m.n_true, m.n_pred, m.matched, m.merges, m.splits) == (3, 3, 3, 0, 0)
    assert m.matched_fraction == 1.0 and m.count_error == 0.0 and m.mean_iou == 1.0


def test_renumbered_labels_match():
    truth = _cubes(gap=1)
    pred = np.where(truth > 0, 1000 + 7 * truth.astype(np.int64), 0)
    m = match_particles(pred, truth)
    assert m.matched == 3 and m.merges == 0 and m.splits == 0


def test_one_merge():
    truth = _cubes(gap=0)
    pred = truth.copy()
    pred[pred == 2] = 1  # 1 and 2 merged
    m = match_particles(pred, truth)
    assert (m.n_true, m.n_pred, m.matched, m.merges, m.splits) == (3, 2, 1, 1, 0)
    assert m.count_error == pytest.approx(-1 / 3)


def test_three_merged_count_two():
    truth = _cubes(gap=0)
    m = match_particles((truth > 0).astype(np.uint8), truth)
    assert (m.matched, m.merges, m.n_pred) == (0, 2, 1)


def test_slight_overlap_is_no_merge():
    truth = _cubes(gap=0)
    pred = truth.copy()
    pred[2:10, 2:10, 10] = 1  # particle 1 takes one layer of particle 2
    m = match_particles(pred, truth)
    assert (m.matched, m.merges, m.splits) == (3, 0, 0)


def test_one_split():
    truth = _cubes(gap=1)
    pred = truth.copy()
    half = pred[:, :, :6] == 1
    pred[:, :, :6][half] = 9  # particle 1 cut in two pieces
    m = match_particles(pred, truth)
    assert (m.n_true, m.n_pred, m.matched, m.merges, m.splits) == (3, 4, 2, 0, 1)
    assert m.count_error == pytest.approx(1 / 3)


def test_shifted_labels():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    one = np.roll(truth, 1, axis=2)  # IoU 9 / 11 = 0.818
    two = np.roll(truth, 2, axis=2)  # IoU 8 / 12 = 0.667
    assert match_particles(one, truth).matched == 1
    assert match_particles(one, truth).mean_iou == pytest.approx(9 / 11)
    assert match_particles(two, truth).matched == 0
    assert match_particles(two, truth, iou=0.6).matched == 1


def test_border_particles_excluded():
    truth = _cubes(gap=1)
    truth[0, 0, 0] = 5  # a particle on the border
    pred = truth.copy()
    m = match_particles(pred, truth)
    assert (m.n_true, m.n_pred) == (3, 3)
    m = match_particles(pred, truth, exclude_border=False)
    assert (m.n_true, m.n_pred, m.matched) == (4, 4, 4)


def test_merge_with_border_particle_counts_inner_one():
    truth = np.zeros((10, 10, 20), np.uint8)
    truth[2:8, 2:8, 0:8] = 1  # touches the x = 0 face
    truth[2:8, 2:8, 8:16] = 2
    pred = (truth > 0).astype(np.uint8)
    m = match_particles(pred, truth)
    assert (m.n_true, m.n_pred, m.matched, m.merges) == (1, 0, 0, 1)


def test_empty():
    z = np.zeros((4, 4, 4), np.uint8)
    m = match_particles(z, z)
    assert m.n_true == 0 and m.n_pred == 0 and np.isnan(m.matched_fraction)


def test_bad_input():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(VolmlaError, match="same shape"):
        match_particles(a, np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(VolmlaError, match="iou must lie"):
        match_particles(a, a, iou=0.0)
    with pytest.raises(VolmlaError, match="integer labels"):
        match_particles(a.astype(np.float32), a)
