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


def test_denoise_names_absent_from_the_maps_are_refused():
    """A named element the maps lack was skipped silently; the default (Na, Mg) filters
    those the maps hold, so maps without them still work."""
    rng = np.random.default_rng(1)
    noisy = rng.normal(0, 1.0, (2, 24, 24)).astype(np.float32)
    maps = co.ElementMaps(noisy, ("Na", "Si"), 40.0)
    with pytest.raises(VolmlaError, match=r"denoise: Mg, Xx not among the maps' elements \(Na, Si\)"):
        co.denoise_maps(maps, elements=["Na", "Mg", "Xx"])
    default = co.denoise_maps(maps)  # Na only: Mg is absent, and not asked for
    np.testing.assert_array_equal(default.data, co.denoise_maps(maps, elements=["Na"]).data)
    assert not np.array_equal(default.data[0], noisy[0])
    np.testing.assert_array_equal(default.data[1], noisy[1])
    heavy = co.ElementMaps(noisy, ("Fe", "Si"), 40.0)
    np.testing.assert_array_equal(co.denoise_maps(heavy).data, noisy)  # no light element: nothing filtered
    np.testing.assert_array_equal(co.denoise_maps(heavy, elements=[]).data, noisy)


def test_make_mineral_map_refuses_an_absent_denoise_element_before_writing(tmp_path):
    rng = np.random.default_rng(2)
    for element in ("Fe", "Si"):
        tifffile.imwrite(tmp_path / f"{element}.tif", rng.random((16, 16)).astype(np.float32))
    maps = [tmp_path / "Fe.tif", tmp_path / "Si.tif"]
    with pytest.raises(VolmlaError, match=r"denoise: Na not among the maps' elements \(Fe, Si\)"):
        co.make_mineral_map(maps, out_dir=tmp_path / "mm", minerals=["quartz"], pixel_size_um=2.0, denoise=["Na"])
    assert not (tmp_path / "mm").exists()
    made = co.make_mineral_map(maps, out_dir=tmp_path / "mm", minerals=["quartz"], pixel_size_um=2.0)  # default
    assert made.maps.elements == ("Fe", "Si")


def test_run_config_tells_a_given_denoise_from_the_default(tmp_path):
    from volmla.correlate import check_run_config

    tifffile.imwrite(tmp_path / "Fe.tif", np.zeros((8, 8), np.float32))
    (tmp_path / "ct.zarr").mkdir()
    raw = {"ct": "ct.zarr", "minerals": ["quartz"], "planes": [{"maps": ["Fe.tif"], "pixel_size_um": 2}]}
    assert check_run_config(raw, base=tmp_path)["planes"][0]["denoise"] is None  # the default
    given = check_run_config({**raw, "denoise": "Na,Mg"}, base=tmp_path)
    assert given["planes"][0]["denoise"] == ["Na", "Mg"]
    none = check_run_config({**raw, "denoise": None}, base=tmp_path)
    assert none["planes"][0]["denoise"] == []
    plane = {**raw["planes"][0], "denoise": ["Fe"]}
    assert check_run_config({**raw, "planes": [plane]}, base=tmp_path)["planes"][0]["denoise"] == ["Fe"]
