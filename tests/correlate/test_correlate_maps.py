"""Element maps: reading TIFF/NPZ stacks and denoising (``volmla.correlate.maps``)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from volmla import correlate as co
from volmla.errors import VolmlaError


def test_read_maps_tiff_npz_and_shapes(tmp_path):
    a = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    tifffile.imwrite(tmp_path / "Fe.tif", a)
    tifffile.imwrite(tmp_path / "Si.tif", a * 2)
    maps = co.read_maps([tmp_path / "Fe.tif", tmp_path / "Si.tif"], pixel_size_um=40)
    assert maps.elements == ("Fe", "Si") and maps.pixel_size_um == 40.0
    np.testing.assert_array_equal(maps.channel("Si"), a * 2)
    np.savez(tmp_path / "stack.npz", Al=a, K=a + 1, pixel_size_um=np.float64(20.0))
    maps = co.read_maps([tmp_path / "stack.npz"])
    assert maps.elements == ("Al", "K") and maps.pixel_size_um == 20.0
    tifffile.imwrite(tmp_path / "Mg.tif", a[:10, :15])
    with pytest.raises(VolmlaError, match="different shapes"):
        co.read_maps([tmp_path / "Fe.tif", tmp_path / "Mg.tif"], pixel_size_um=40)
    maps = co.read_maps([tmp_path / "Fe.tif", tmp_path / "Mg.tif"], pixel_size_um=40, resample=True)
    assert maps.data.shape == (2, 20, 30)
    with pytest.raises(VolmlaError, match="pixel size"):
        co.read_maps([tmp_path / "Fe.tif"])


def test_denoise_reduces_noise():
    rng = np.random.default_rng(0)
    clean = np.zeros((40, 40), np.float32)
    clean[:, 20:] = 10.0
    noisy = clean + rng.normal(0, 1.0, clean.shape).astype(np.float32)
    maps = co.ElementMaps(np.stack([noisy, noisy]), ("Na", "Si"), 40.0)
    out = co.denoise_maps(maps, elements=("Na",))
    assert np.abs(out.data[0] - clean).mean() < 0.7 * np.abs(noisy - clean).mean()
    np.testing.assert_array_equal(out.data[1], noisy)  # Si untouched
