"""The solid mask from a CT: denoised, cut half-way between the void and solid modes."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu

from volmla.engine.reduce import histogram
from volmla.errors import VolmlaError
from volmla.particles import label_particles, solid_mask
from volmla.particles.mask import auto_threshold, mode_midpoint


def scan(seed: int, shape=(48, 48, 48), noise=900.0) -> tuple[np.ndarray, np.ndarray]:
    """A few balls (two solid phases, one bright and rare) rendered at 2x and averaged down, noised."""
    rng = np.random.default_rng(seed)
    fine = np.array(shape) * 2
    zz, yy, xx = np.ogrid[: fine[0], : fine[1], : fine[2]]
    grey = np.full(fine, 10000.0, np.float32)
    for _ in range(8):
        c = rng.uniform(16, fine - 16)
        r = rng.uniform(8, 16)
        ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        grey[ball] = rng.choice([22000.0, 23000.0, 46000.0], p=[0.5, 0.4, 0.1])
    coarse = grey.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    solid_fraction = (grey > 15000).reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    ct = ndi.gaussian_filter(coarse, 0.6) + rng.normal(0, noise, shape)
    return ct.clip(0, 65535).astype(np.uint16), solid_fraction > 0.5


def test_mode_midpoint_is_half_way_between_the_modes():
    rng = np.random.default_rng(0)
    # a rare solid with a wide spread of phases: Otsu's threshold moves, the modes do not
    void = rng.normal(10000, 600, 80000)
    solid = np.concatenate([rng.normal(22000, 600, 12000), rng.normal(30000, 4000, 8000)])
    vol = np.concatenate([void, solid]).clip(0, 65535).astype(np.uint16).reshape(20, 50, 100)
    t = mode_midpoint(histogram(da.from_array(vol, chunks=(7, 50, 33))))
    assert abs(t - 16000) < 250
    assert abs(threshold_otsu(vol) - 16000) > 1000
    as_float = da.from_array(vol.astype(np.float32), chunks=10)
    assert abs(auto_threshold(as_float) - 16000) < 250
    with pytest.raises(VolmlaError, match="constant"):
        auto_threshold(np.full((4, 4, 4), 7, np.uint16))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_mask_agrees_with_the_truth_solid(seed):
    ct, truth = scan(seed)
    auto = solid_mask(da.from_array(ct, chunks=16), threshold="auto").compute()
    otsu = solid_mask(da.from_array(ct, chunks=16), threshold="otsu").compute()
    wrong_auto = np.count_nonzero(auto != truth) / truth.sum()
    wrong_otsu = np.count_nonzero(otsu != truth) / truth.sum()
    assert wrong_auto < 0.09  # partial-volume rims of the bright phase are the rest
    assert wrong_auto < wrong_otsu + 0.005
    # the same for every chunking (the gaussian is exact at chunk borders)
    np.testing.assert_array_equal(solid_mask(da.from_array(ct, chunks=(48, 5, 13)), threshold="auto").compute(), auto)


def test_auto_defaults_fill_pores_and_drop_speckle():
    ct, truth = scan(2)
    ct = ct.copy()
    ct[truth & (np.random.default_rng(1).random(ct.shape) < 0.002)] = 10000  # dark specks inside the solid
    speck = np.zeros(ct.shape, bool)
    speck[2:5, 2:5, 2:4] = True  # an 18-voxel speck in the void
    ct[speck] = 30000
    out = label_particles(da.from_array(ct, chunks=24), threshold="auto")
    labels = out.labels.compute()
    assert not labels[speck].any()
    n_true = ndi.label(truth, np.ones((3, 3, 3)))[1]
    assert out.count >= n_true - 1  # touching balls are not merged
    assert np.count_nonzero((labels > 0) != truth) / truth.sum() < 0.09
    kept = label_particles(da.from_array(ct, chunks=24), threshold="auto", min_size=0, split=False)
    assert kept.labels.compute()[speck].all()


def test_threshold_options():
    ct, _ = scan(3)
    assert (solid_mask(ct, threshold=16000.0).compute() == (ct > 16000)).all()
    with pytest.raises(VolmlaError, match="'auto', 'otsu'"):
        solid_mask(ct, threshold="mean")  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="finite"):
        solid_mask(ct, threshold=float("inf"))
    with pytest.raises(VolmlaError, match="min_size"):
        label_particles(ct, min_size=-1)
