"""The reconstruction's field of view: found from the fill outside it, kept out of histograms, its edge listed."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.engine.reduce import histogram
from volmla.preprocess.fov import (
    FieldOfView,
    edge_ids,
    fill_outside,
    find_field_of_view,
    from_provenance,
    inside_histogram,
)


def _disc(shape: tuple[int, int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    y, x = np.mgrid[: shape[1], : shape[2]]
    return np.broadcast_to(np.hypot(y - center[0], x - center[1]) < radius, shape)


def _scan(shape=(12, 64, 64), center=(31.5, 31.5), radius=30.0, fill=0, seed=0) -> np.ndarray:
    """Noisy resin with a few bright blobs, the outside of a circle set to ``fill``."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(10000, 800, shape)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(6):
        c = rng.uniform((0, 10, 10), (shape[0], shape[1] - 10, shape[2] - 10))
        vol[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 36] = 22000
    vol = vol.clip(1, 65535).astype(np.uint16)
    vol[~_disc(shape, center, radius)] = fill
    return vol


@pytest.mark.parametrize(("center", "radius"), [((31.5, 31.5), 30.0), ((31.5, 31.5), 24.3), ((28.0, 36.0), 26.0),
                                                ((31.5, 31.5), 36.0)])
def test_finds_the_circle(center: tuple[float, float], radius: float) -> None:
    fov = find_field_of_view(_scan(center=center, radius=radius))
    assert fov is not None
    assert fov.fill == 0.0
    assert abs(fov.center[0] - center[0]) < 0.3 and abs(fov.center[1] - center[1]) < 0.3
    assert abs(fov.radius - radius) < 0.5


def test_the_fill_may_be_any_constant() -> None:
    fov = find_field_of_view(_scan(fill=65535).astype(np.float32))
    assert fov is not None and fov.fill == 65535.0


@pytest.mark.parametrize("case", ["no fill", "square hole", "fill inside too", "tiny slices"])
def test_none_when_the_scan_shows_no_circle(case: str) -> None:
    vol = _scan()
    if case == "no fill":
        vol = _scan(radius=99.0)
    elif case == "square hole":  # a constant frame that is not a circle (a padded crop)
        vol = _scan(radius=99.0)
        vol[:, :6] = vol[:, -6:] = vol[:, :, :6] = vol[:, :, -6:] = 0
    elif case == "fill inside too":  # air clipped to the fill value, reaching the edge
        vol[:, 20:44, :] = 0
    else:
        vol = vol[:, :12, :12]
    assert find_field_of_view(vol) is None


def test_a_slice_without_the_circle_means_none() -> None:
    vol = _scan()
    vol[-1] = _scan(radius=99.0)[-1]  # the last slice holds data in its corners
    assert find_field_of_view(vol) is None


@pytest.mark.parametrize("chunks", [(12, 64, 64), (5, 17, 23), (1, 64, 7)])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_inside_histogram_counts_the_inside_only(chunks: tuple[int, int, int], dtype: type) -> None:
    vol = _scan(radius=27.0).astype(dtype)
    fov = FieldOfView((31.5, 31.5), 27.0, 0.0)
    got = inside_histogram(da.from_array(vol, chunks=chunks), fov, bins=512)
    inside = vol[_disc(vol.shape, fov.center, fov.radius)]
    if got.exact:
        want = np.bincount(inside.astype(np.int64) - int(got.first), minlength=len(got.counts))
        assert histogram(vol).counts[0] > 0 and got.counts[0] == 0  # the fill no longer counts
    else:
        want = np.histogram(inside, bins=len(got.counts), range=(got.first, got.first + got.width * len(got.counts)))[0]
        assert got.first == float(inside.min())  # the outside's fill is not the histogram's range
    np.testing.assert_array_equal(got.counts, want)
    assert int(got.counts.sum()) == inside.size


@pytest.mark.parametrize("chunks", [(12, 64, 64), (5, 17, 23)])
def test_fill_outside_matches_numpy(chunks: tuple[int, int, int]) -> None:
    vol = _scan()
    fov = FieldOfView((30.0, 33.0), 20.5, 0.0)
    got = fill_outside(da.from_array(vol, chunks=chunks), fov, 7).compute()
    np.testing.assert_array_equal(got, np.where(_disc(vol.shape, fov.center, fov.radius), vol, 7))


@pytest.mark.parametrize("chunks", [(12, 64, 64), (5, 17, 23), (3, 8, 64)])
def test_edge_ids_match_numpy(chunks: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 300, (12, 64, 64)).astype(np.uint32)
    fov = FieldOfView((31.5, 31.5), 25.0, 0.0)
    y, x = np.mgrid[:64, :64]
    edge = np.hypot(y - 31.5, x - 31.5) >= 24.0
    want = np.unique(lab[:, edge])
    import dask

    parts = dask.compute(*edge_ids(da.from_array(lab, chunks=chunks), fov))
    got = np.unique(np.concatenate(parts))
    np.testing.assert_array_equal(got, want[want > 0])


def test_record_round_trip() -> None:
    fov = FieldOfView((31.5, 30.25), 29.5, 0.0)
    attrs = {"provenance": [{"step": "ingest"}, {"step": "particles", "field_of_view": fov.as_record()},
                            {"step": "contacts"}]}
    assert from_provenance(attrs) == fov
    assert from_provenance({"provenance": [{"step": "particles", "field_of_view": None}]}) is None
    assert from_provenance({}) is None


def test_phase_levels_do_not_count_the_outside_as_void() -> None:
    from volmla.measure.fractions import phase_levels

    n = 48
    ph = np.zeros((6, n, n), np.uint8)
    ph[:, 16:32, 16:32] = 1
    rng = np.random.default_rng(2)
    img = np.where(ph == 1, 2000.0, 1000.0) + rng.normal(0, 10, ph.shape)
    fov = FieldOfView(((n - 1) / 2, (n - 1) / 2), 22.0, 0.0)
    img[~_disc(ph.shape, fov.center, fov.radius)] = 0
    img = img.astype(np.float32)
    assert abs(phase_levels(img, ph, field_of_view=fov).levels[0] - 1000.0) < 5
    assert phase_levels(img, ph).levels[0] < 995.0  # the fill counted as void: the median pulled (991 here)


def test_a_real_scan_cropped_inside_its_field_of_view_has_none_and_gets_one_when_cut() -> None:
    """The real micro-CT crop (air voids in cement paste, tests/data): no circle of one value;
    the same scan with the outside of its inscribed circle set to 0 (as a reconstruction
    writes it): found, to within a voxel."""
    from pathlib import Path

    import tifffile

    cement = tifffile.imread(Path(__file__).parents[1] / "data" / "cement_128x128x128.tif")
    assert find_field_of_view(cement) is None
    cut = cement.copy()
    cut[~_disc(cut.shape, (63.5, 63.5), 60.0)] = 0
    fov = find_field_of_view(cut)
    assert fov is not None and fov.fill == 0
    assert abs(fov.radius - 60.0) < 1.0 and max(abs(c - 63.5) for c in fov.center) < 0.5
