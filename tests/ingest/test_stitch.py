"""Tests for stitching vertically stacked sub-volumes (volmla.ingest.stitch_stacks)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

import volmla.ingest as ingest_mod
import volmla.ingest.readers as readers_mod
from volmla.errors import VolmlaError
from volmla.ingest import blend_overlap, estimate_offset, ingest, stitch_stacks
from volmla.io import open_volume

# Three stacks cut from one volume: (z0, z1, y0, x0), each 64 x 64 in y/x.
# Overlaps 21 and 22 slices around a nominal 20; y/x shifts of 1-3 voxels.
SPECS = [(0, 48, 3, 2), (27, 85, 1, 4), (63, 120, 4, 1)]
EDGE = 64
NOMINAL = 20


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """The shared CT phantom (particles, noise), or a structured random field."""
    try:
        from volmla.synthetic import phantom
    except ImportError:  # pragma: no cover - the phantom ships with volmla
        from scipy import ndimage as ndi

        rng = np.random.default_rng(7)
        field = ndi.gaussian_filter(rng.random((120, 72, 72)), 2.0)
        return (field / field.max() * 40000).astype(np.uint16)
    return np.asarray(phantom(shape=(120, 72, 72), seed=3, chunks=72).intensity.values)


def _truth() -> list[tuple[int, int, int]]:
    z0, y0, x0 = SPECS[0][0], SPECS[0][2], SPECS[0][3]
    return [(z - z0, y - y0, x - x0) for z, _, y, x in SPECS]


def _cut(volume: np.ndarray) -> list[np.ndarray]:
    return [volume[z0:z1, y0:y0 + EDGE, x0:x0 + EDGE] for z0, z1, y0, x0 in SPECS]


@pytest.mark.parametrize("shift", [(0, 0, 0), (2, -1, 3), (-3, 2, -2), (1, 3, 0)])
def test_estimate_offset_recovers_shift(volume: np.ndarray, shift: tuple[int, int, int]) -> None:
    dz, dy, dx = shift
    upper = volume[40:60, 10:60, 10:60]
    lower = volume[40 + dz:60 + dz, 10 + dy:60 + dy, 10 + dx:60 + dx]
    assert estimate_offset(upper, lower) == shift


def test_blend_overlap_ramps_and_keeps_equal_data(rng: np.random.Generator) -> None:
    w = (np.arange(1, 5) / 5.0).reshape(4, 1, 1)
    a = rng.integers(0, 60000, (4, 3, 3), dtype=np.uint16)
    np.testing.assert_array_equal(blend_overlap(a, a, w), a)
    lo, hi = np.full((4, 1, 1), 100, np.uint16), np.full((4, 1, 1), 200, np.uint16)
    np.testing.assert_array_equal(blend_overlap(lo, hi, w).ravel(), [120, 140, 160, 180])
    f = blend_overlap(lo.astype(np.float32), hi.astype(np.float32), w)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f.ravel(), [120, 140, 160, 180])


@pytest.mark.parametrize("chunks", [(7, 64, 64), (16, 16, 16), (120, 61, 61)])
def test_three_stacks_recover_offsets_and_volume(volume: np.ndarray, chunks: tuple[int, int, int]) -> None:
    stacks = _cut(volume)
    stacks[1] = stacks[1] + np.uint16(300)  # the middle scan is brighter: seams must blend
    lazy = [da.from_array(s, chunks=chunks) for s in stacks]  # small test arrays
    result = stitch_stacks(lazy, overlap=NOMINAL, chunks=chunks)
    truth = _truth()
    assert result.positions == truth
    assert result.overlaps == [SPECS[0][1] - SPECS[1][0], SPECS[1][1] - SPECS[2][0]]
    assert isinstance(result.data, da.Array)

    y0, y1, x0, x1 = result.crop_yx
    out = result.data.compute()
    assert out.shape == (SPECS[-1][1] - SPECS[0][0], y1 - y0, x1 - x0)
    g = volume[:, SPECS[0][2] + y0:SPECS[0][2] + y1, SPECS[0][3] + x0:SPECS[0][3] + x1].astype(np.int64)
    seams = [range(SPECS[i + 1][0], SPECS[i][1]) for i in range(2)]
    away = [z for z in range(out.shape[0]) if not any(z in s for s in seams)]
    middle = np.array([SPECS[1][1] > z >= SPECS[1][0] for z in away])
    expected = g[away] + np.where(middle, 300, 0)[:, None, None]
    np.testing.assert_array_equal(out[away], expected)
    for seam, into_middle in zip(seams, (True, False), strict=True):
        excess = (out[list(seam)].astype(np.int64) - g[list(seam)]).mean(axis=(1, 2))
        ramp = excess if into_middle else 300 - excess  # weight of the lower stack
        assert np.all(np.diff(ramp) > 0) and 0 < ramp.min() and ramp.max() < 300


def test_stitching_reads_only_the_overlap_slabs(tmp_path: Path, volume: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = []
    for i, stack in enumerate(_cut(volume)):
        paths.append(tmp_path / f"stack{i}.tif")
        tifffile.imwrite(paths[-1], stack, imagej=True, resolution=(1 / 0.064, 1 / 0.064),
                         metadata={"spacing": 0.064, "unit": "um"})
    reads: list[int] = []
    original = readers_mod._read_plane

    def counting(plane, ys, xs, width, handles):  # type: ignore[no-untyped-def]
        reads.append(plane.page)
        return original(plane, ys, xs, width, handles)

    monkeypatch.setattr(readers_mod, "_read_plane", counting)
    vol = ingest_mod.load(paths, stitch=True, overlap=NOMINAL, chunks=32)
    assert len(reads) == 2 * 2 * NOMINAL  # two pairs, two slabs each, nothing else
    assert vol.attrs["voxel_size_um"] == pytest.approx((0.064, 0.064, 0.064))
    step = vol.attrs["provenance"][0]["stitching"]
    assert step["positions_zyx"] == [list(p) for p in _truth()]
    assert step["overlaps"] == [21, 22]

    monkeypatch.setattr(readers_mod, "_read_plane", original)
    out = ingest(paths, tmp_path / "stitched.zarr", stitch=True, overlap=NOMINAL, chunks=32)
    got = open_volume(out)
    y0, y1, x0, x1 = step["crop_yx"]
    g = volume[:, SPECS[0][2] + y0:SPECS[0][2] + y1, SPECS[0][3] + x0:SPECS[0][3] + x1]
    np.testing.assert_array_equal(got.values, g)  # equal data: even the seams are exact
    assert got.attrs["provenance"][0]["stitching"]["positions_zyx"] == step["positions_zyx"]


def test_overlap_outside_search_range_is_refused(volume: np.ndarray) -> None:
    lazy = [da.from_array(s, chunks=32) for s in _cut(volume)]
    with pytest.raises(VolmlaError, match="outside overlap=30"):
        stitch_stacks(lazy, overlap=30, search=3)
    with pytest.raises(VolmlaError, match="at least two"):
        stitch_stacks(lazy[:1], overlap=20)
    with pytest.raises(VolmlaError, match="one dtype"):
        stitch_stacks([lazy[0], lazy[1].astype(np.float32)], overlap=20)


def test_cli_stitch(tmp_path: Path, volume: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    from distributed import LocalCluster

    from volmla.cli import main

    paths = []
    for i, stack in enumerate(_cut(volume)):
        folder = tmp_path / f"stack{i}"
        folder.mkdir()
        for z, plane in enumerate(stack):
            tifffile.imwrite(folder / f"s{z}.tif", plane)
        paths.append(str(folder))
    out = tmp_path / "o.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        code = main(["-q", "--scheduler", cluster.scheduler_address, "ingest", *paths, "--stitch",
                     "--overlap", str(NOMINAL), "--voxel-size", "0.064", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    got = open_volume(out)
    step = got.attrs["provenance"][0]
    assert step["reader"] == "tiff-folder" and step["stitching"]["positions_zyx"] == [list(p) for p in _truth()]
    assert got.shape[0] == SPECS[-1][1]
    assert main(["ingest", *paths, "--stitch", "--overlap", "2", "--voxel-size", "1", "-o", str(tmp_path / "x.zarr")]) == 2
    assert "at least 4 slices" in capsys.readouterr().err
