"""The compiled regional-maximum candidates against the two maximum filters they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from volmla.particles._maxima import maxima_candidates
from volmla.particles.split import regional_maxima


def _filters(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cand = values == ndi.maximum_filter(values, size=3, mode="nearest")
    others = np.where(cand, np.float32(-np.inf), values)
    return cand, cand & (ndi.maximum_filter(others, size=3, mode="constant", cval=-np.inf) == values)


def _relief(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "levels":  # wide plateaus, many touching higher ground
        return rng.integers(0, 3, shape).astype(np.float32)
    if kind == "noise":
        return rng.normal(size=shape).astype(np.float32)
    if kind == "distance":
        return ndi.distance_transform_edt(rng.random(shape) > 0.3).astype(np.float32)
    return np.round(ndi.gaussian_filter(rng.normal(size=shape), 2) * 4).astype(np.float32)  # smooth, rounded


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 8), (1, 7, 1), (3, 4, 5), (17, 9, 23), (40, 41, 42)])
@pytest.mark.parametrize("kind", ["levels", "noise", "distance", "smooth"])
def test_candidates_and_bad_equal_the_maximum_filters(shape: tuple[int, ...], kind: str) -> None:
    values = _relief(kind, shape, np.random.default_rng(len(kind) * 100 + sum(shape)))
    cand, bad = maxima_candidates(values)
    want_cand, want_bad = _filters(values)
    np.testing.assert_array_equal(cand, want_cand)
    np.testing.assert_array_equal(np.zeros_like(cand) if bad is None else bad, want_bad)


def test_regional_maxima_are_whole_plateaus_with_no_higher_neighbour() -> None:
    v = np.zeros((1, 5, 9), np.float32)
    v[0, 1:4, 1:4] = 2  # a plateau: a maximum
    v[0, 1:4, 5:8] = 2
    v[0, 2, 7] = 3  # a plateau reaching a higher voxel: only that voxel
    got = regional_maxima(v)
    assert got[0, 1:4, 1:4].all() and got.sum() == 10


def test_candidates_refuse_a_volume_that_is_not_3d() -> None:
    with pytest.raises(ValueError, match="3-D"):
        maxima_candidates(np.zeros((4, 4), np.float32))
