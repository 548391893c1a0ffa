"""The compiled hierarchical-queue watershed against scikit-image's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed as sk_watershed

from volmla.particles._watershed import watershed


def _relief(seed: int, shape: tuple[int, int, int] = (40, 44, 48)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    relief = ndi.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32)
    mask = ndi.gaussian_filter(rng.normal(size=shape), 4) > -0.02
    minima = (relief == ndi.minimum_filter(relief, size=7)) & mask
    markers = np.zeros(shape, np.int32)
    markers[minima] = np.arange(1, int(minima.sum()) + 1)
    return relief, markers, mask


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scikit_image(seed: int, connectivity: int) -> None:
    relief, markers, mask = _relief(seed)
    ours = watershed(relief, markers, mask, connectivity=connectivity)
    theirs = sk_watershed(relief, markers=markers, mask=mask, connectivity=connectivity)
    assert ours.dtype == np.int32
    assert np.array_equal(ours == 0, theirs == 0)  # the same voxels are reached
    assert (ours == theirs).mean() > 0.995  # only the order of ties may differ


def test_distance_map_plateaus_agree() -> None:
    """A distance map (few distinct values, large plateaus) as the split floods it."""
    zz, yy, xx = np.ogrid[:30, :30, :50]
    solid = ((zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 14) ** 2 <= 144) | ((zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 35) ** 2 <= 121)
    dist = ndi.distance_transform_edt(solid).astype(np.float32)
    peaks = (dist == ndi.maximum_filter(dist, size=3)) & (dist > 5)
    markers = ndi.label(peaks, structure=np.ones((3, 3, 3)))[0].astype(np.int32)
    ours = watershed(-dist, markers, solid)
    theirs = sk_watershed(-dist, markers=markers, mask=solid, connectivity=3)
    assert (ours == theirs).mean() > 0.995
    assert set(np.unique(ours[solid]).tolist()) == set(range(1, int(markers.max()) + 1))


def test_markers_mask_and_unreached() -> None:
    img = np.zeros((3, 4, 9), np.float32)
    mask = np.ones(img.shape, bool)
    mask[:, :, 4] = False  # a wall: the right part has no marker
    markers = np.zeros(img.shape, np.int32)
    markers[1, 1, 1] = 7
    markers[0, 0, 4] = 9  # outside the mask: dropped
    out = watershed(img, markers, mask)
    assert (out[:, :, :4] == 7).all()
    assert (out[:, :, 4:] == 0).all()
    assert markers[0, 0, 4] == 9  # inputs untouched


def test_deterministic_and_translation_invariant() -> None:
    relief, markers, mask = _relief(2)
    a = watershed(relief, markers, mask)
    b = watershed(relief, markers, mask)
    assert np.array_equal(a, b)
    shifted = watershed(np.pad(relief, 3), np.pad(markers, 3), np.pad(mask, 3))
    assert np.array_equal(shifted[3:-3, 3:-3, 3:-3], a)


def test_bad_input() -> None:
    relief, markers, mask = _relief(0, (8, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        watershed(relief, markers[:4], mask)
    with pytest.raises(ValueError, match="connectivity"):
        watershed(relief, markers, mask, connectivity=4)
