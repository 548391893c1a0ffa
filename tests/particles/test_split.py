"""The watershed split: saddle-depth markers, a halo from the data, chunk invariance, bad input."""

from __future__ import annotations

import importlib
import logging
import re

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from volmla.errors import VolmlaError
from volmla.particles import label_particles
from volmla.particles.split import (
    H_MIN,
    h_maxima_caps,
    max_distance,
    merge_basins,
    normalise_sampling,
    split_block,
    split_halo,
    split_touching,
)

split = importlib.import_module("volmla.particles.split")


def flat_contact_clusters(seed: int, shape=(64, 64, 64), clusters=6, per=(2, 5), radius=(4.5, 10.0),
                          overlap=(0.03, 0.12)) -> np.ndarray:
    """Clusters of touching balls with flat contacts, as truth labels.

    Each cluster grows by placing a ball against a random member, its centre at
    ``(r1 + r2) * (1 - overlap)``; overlapping voxels go to the ball of smaller power
    distance ``|x - c|^2 - r^2``, so contacts are plane cuts (a power diagram) and the
    neck between two balls is a shallow saddle of the distance map.
    """
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    margin = radius[1] + 2
    for _ in range(clusters):
        for _attempt in range(50):
            c0 = rng.uniform(margin, np.array(shape) - margin)
            r0 = rng.uniform(*radius)
            if all(np.linalg.norm(c0 - c) > r0 + r + 2 for c, r in zip(centres, radii, strict=True)):
                break
        else:
            continue
        members = [(c0, r0)]
        for _ in range(rng.integers(per[0], per[1] + 1) - 1):
            for _attempt in range(50):
                cp, rp = members[rng.integers(len(members))]
                r = rng.uniform(*radius)
                v = rng.normal(size=3)
                c = cp + v / np.linalg.norm(v) * (rp + r) * (1 - rng.uniform(*overlap))
                inside = np.all(c > r + 1) and np.all(c < np.array(shape) - r - 1)
                free = all(np.linalg.norm(c - ci) > (r + ri) * (1 - overlap[1]) for ci, ri in members if ci is not cp)
                others = all(np.linalg.norm(c - ci) > r + ri + 2 for ci, ri in zip(centres, radii, strict=True))
                if inside and free and others:
                    members.append((c, r))
                    break
        for c, r in members:
            centres.append(c)
            radii.append(r)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    power = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.uint32)
    for i, (c, r) in enumerate(zip(centres, radii, strict=True), 1):
        p = ((grid - np.asarray(c, np.float32)) ** 2).sum(-1) - r * r
        take = (p <= 0) & (p < power)
        labels[take], power[take] = i, p[take]
    return labels


def matched(pred: np.ndarray, truth: np.ndarray, iou: float = 0.8) -> float:
    """Fraction of true particles with a predicted one at IoU >= ``iou``."""
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    both = (t > 0) & (p > 0)
    pairs, counts = np.unique(t[both] * (p.max() + 1) + p[both], return_counts=True)
    ti, pi = pairs // (p.max() + 1), pairs % (p.max() + 1)
    ts, ps = np.bincount(t), np.bincount(p)
    good = counts / (ts[ti] + ps[pi] - counts) >= iou
    return len(np.unique(ti[good])) / int((ts[1:] > 0).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flat_contacts_split_by_default(seed):
    truth = flat_contact_clusters(seed)
    n_true = len(np.unique(truth)) - 1
    out = label_particles(truth > 0, threshold=None)
    assert abs(out.count - n_true) <= max(1, round(0.05 * n_true))
    assert matched(out.labels.values, truth) >= 0.9
    # the shallow saddles are what a fixed h = 2 misses: it merges some of these pairs
    dist = ndi.distance_transform_edt(truth > 0)
    fixed = ndi.label(h_maxima_caps(dist.astype(np.float32), 2.0), np.ones((3, 3, 3)))[1]
    assert fixed < n_true


def test_identical_for_three_chunkings():
    truth = flat_contact_clusters(3, clusters=8)
    solid = truth > 0
    largest = 2 * max_distance(solid)
    ref = label_particles(da.from_array(solid, chunks=64), threshold=None)
    ref_labels = ref.labels.values
    assert ref.count > ndi.label(solid)[1]
    for chunks in [(32, 32, 32), (8, 64, 12), (10, 9, 7)]:  # the last two thinner than the largest particle
        assert min(chunks) < largest or chunks == (32, 32, 32)
        out = label_particles(da.from_array(solid, chunks=chunks), threshold=None)
        assert out.count == ref.count
        np.testing.assert_array_equal(out.labels.values, ref_labels)


@pytest.mark.parametrize("chunks", [(64, 64, 64), (32, 32, 32), (10, 9, 7)])
def test_windows_read_from_the_stored_mask_give_the_same_keys(tmp_path, chunks):
    """``stored=``: each block reads its own window (no neighbour blocks held); same keys."""
    import zarr

    truth = flat_contact_clusters(5, clusters=8)
    solid = truth > 0
    weight = np.clip(ndi.gaussian_filter(solid.astype(np.float32), 1.0) + 0.3, 0, 1).astype(np.float32)
    zarr.create_array(str(tmp_path / "solid.zarr"), data=solid, chunks=chunks)
    zarr.create_array(str(tmp_path / "fill.zarr"), data=weight, chunks=chunks)
    mask, fill = da.from_array(solid, chunks=chunks), da.from_array(weight, chunks=chunks)
    borrowed = split_touching(mask, weight=fill, max_radius=12.0)
    read = split_touching(mask, weight=fill, max_radius=12.0, stored=[tmp_path / "solid.zarr", tmp_path / "fill.zarr"])
    assert read.chunks == borrowed.chunks
    assert all(not deps for deps in read.dask.dependencies.values())
    np.testing.assert_array_equal(read.compute(), borrowed.compute())
    with pytest.raises(VolmlaError, match="stored must name 2"):
        split_touching(mask, weight=fill, max_radius=12.0, stored=[tmp_path / "solid.zarr"])


def test_max_distance_exact_and_grows_its_halo():
    solid = np.zeros((60, 50, 70), bool)
    zz, yy, xx = np.ogrid[:60, :50, :70]
    solid |= (zz - 30) ** 2 + (yy - 25) ** 2 + (xx - 35) ** 2 <= 22**2  # radius 22 > the first halo (16)
    solid[5:9, 5:9, 5:9] = True
    ref = float(ndi.distance_transform_edt(np.pad(solid, 1)).max())
    for chunks in [(60, 50, 70), (7, 8, 9), (30, 5, 70)]:
        assert max_distance(da.from_array(solid, chunks=chunks)) == pytest.approx(ref, rel=1e-6)
    aniso = ndi.distance_transform_edt(np.pad(solid, 1), sampling=(2.0, 1.0, 1.0)).max()
    assert max_distance(da.from_array(solid, chunks=9), sampling=(2.0, 1.0, 1.0)) == pytest.approx(aniso, rel=1e-6)
    assert max_distance(np.zeros((5, 5, 5), bool)) == 0.0


def test_merge_basins_keeps_narrow_necks_and_merges_wide_ones():
    peaks = np.array([0.0, 6.0, 5.0, 6.0, 1.2])
    # 1-2 meet at 2.0 (neck 0.4 of the lower peak: apart); 2-3 at 4.5 (0.9: one particle);
    # 4 is a noise bump 0.3 above its saddle with 3 (dynamic below h: merged)
    lo, hi, saddle = np.array([1, 2, 3]), np.array([2, 3, 4]), np.array([2.0, 4.5, 0.9])
    assert merge_basins(peaks, lo, hi, saddle, neck=0.75, h=0.5).tolist() == [0, 1, 2, 2, 2]
    assert merge_basins(peaks, lo, hi, saddle, neck=0.95, h=0.1).tolist() == [0, 1, 2, 3, 4]
    assert merge_basins(peaks, lo, hi, saddle, neck=0.3, h=0.1).tolist() == [0, 1, 1, 1, 1]
    assert merge_basins(peaks, lo, hi, saddle, neck=0.75, h=4.5).tolist() == [0, 1, 1, 1, 1]  # 2 joined 3 (peak 6)


def test_empty_mask_and_a_mask_that_is_all_solid():
    empty = da.zeros((20, 20, 20), bool, chunks=8)
    out = label_particles(empty, threshold=None)
    assert out.count == 0 and not out.labels.values.any()
    full = da.ones((24, 20, 22), bool, chunks=8)
    res = label_particles(full, threshold=None)
    assert res.count == 1
    assert (res.labels.values == 1).all()
    np.testing.assert_array_equal(label_particles(np.ones((24, 20, 22), bool), threshold=None).labels.values,
                                  res.labels.values)


def test_particles_much_larger_than_a_chunk():
    zz, yy, xx = np.ogrid[:56, :56, :80]
    solid = ((zz - 28) ** 2 + (yy - 28) ** 2 + (xx - 24) ** 2 <= 20**2) | (
        (zz - 28) ** 2 + (yy - 28) ** 2 + (xx - 60) ** 2 <= 17**2)
    ref = label_particles(solid, threshold=None)
    assert ref.count == 2
    for chunks in [(6, 6, 6), (56, 5, 80)]:
        out = label_particles(da.from_array(solid, chunks=chunks), threshold=None)
        np.testing.assert_array_equal(out.labels.values, ref.labels.values)


def test_anisotropic_voxels_use_physical_distances():
    # two touching balls of radius 8 um scanned at 2 um along z, 1 um in y and x
    zz, yy, xx = np.ogrid[:12, :24, :40]
    zz = zz * 2.0
    a = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 11) ** 2 <= 64
    b = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 26) ** 2 <= 64
    two = a | b
    assert normalise_sampling([2.0, 1.0, 1.0]) == (2.0, 1.0, 1.0)
    assert split_halo(8, (2.0, 1.0, 1.0)) == (13, 26, 26)
    assert label_particles(two, threshold=None, voxel_size=(2.0, 1.0, 1.0)).count == 2
    ref = label_particles(da.from_array(two, chunks=(12, 24, 40)), threshold=None, voxel_size=(2.0, 1.0, 1.0))
    for chunks in [(4, 7, 9), (12, 5, 40)]:
        out = label_particles(da.from_array(two, chunks=chunks), threshold=None, voxel_size=(2.0, 1.0, 1.0))
        np.testing.assert_array_equal(out.labels.values, ref.labels.values)
    # a ball in micrometres is an ellipsoid in voxels: one particle with the voxel size
    one = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 20) ** 2 <= 100
    assert label_particles(one, threshold=None, voxel_size=(2.0, 1.0, 1.0)).count == 1
    # the voxel size comes from an xarray volume's attributes
    import xarray as xr

    vol = xr.DataArray(two, dims=("z", "y", "x"), attrs={"voxel_size_um": [2.0, 1.0, 1.0]})
    assert label_particles(vol, threshold=None).count == 2


def test_split_block_keys_are_global_and_options_checked():
    zz, yy, xx = np.ogrid[:12, :12, :22]
    two = ((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 6) ** 2 <= 25) | ((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 15) ** 2 <= 25)
    keys = split_block(two, origin=(3, 0, 0), shape=(20, 12, 22))
    peaks = np.unique(keys[keys > 0]) - 1
    assert all(np.unravel_index(int(k), (20, 12, 22))[0] == 9 for k in peaks)  # the centres' z, shifted by 3
    for bad in [dict(neck=1.5), dict(neck=-0.1), dict(h=float("nan")), dict(voxel_size=(1.0, 0.0, 1.0)),
                dict(max_radius=0)]:
        with pytest.raises(VolmlaError):
            split_touching(two, **bad)  # type: ignore[arg-type]


def test_a_particle_longer_than_the_halo_is_reported_without_a_report_folder(caplog):
    rod = np.zeros((10, 10, 120), bool)
    rod[3:7, 3:7, 5:115] = True
    with caplog.at_level(logging.WARNING, logger="volmla.particles.split"):
        keys = split_touching(da.from_array(rod, chunks=(10, 10, 20)), max_radius=2).compute()
    assert "beyond the split halo" in caplog.text
    assert len(np.unique(keys)) > 2  # cut into pieces
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="volmla.particles.split"):
        assert label_particles(da.from_array(rod, chunks=(10, 10, 120)), threshold=None).count == 1
    assert "beyond the split halo" not in caplog.text


def test_particles_longer_than_the_halo_are_split_whole_the_same_for_every_chunking(caplog):
    # balls up to radius 10 and two rods across the volume, split with a halo made for
    # radius 3 (14 voxels): many particles reach beyond it; their components are split
    # whole, so every chunking gives the labels of the one-block split
    solid = flat_contact_clusters(7, clusters=6) > 0
    zz, yy, xx = np.ogrid[:64, :64, :64]
    solid |= ((yy - 52) ** 2 + (zz - 10) ** 2 <= 9) & (xx > 3) & (xx < 61)
    solid |= (((xx - 8) ** 2 + (zz - 54) ** 2 <= 6) & (yy > 2) & (yy < 40)) | (
        ((yy - 39) ** 2 + (zz - 54) ** 2 <= 6) & (xx >= 8) & (xx < 50))  # an L-shaped rod
    ref = label_particles(da.from_array(solid, chunks=64), threshold=None, max_radius=3)
    assert ref.count > ndi.label(solid)[1]
    with caplog.at_level(logging.WARNING, logger="volmla.particles.split"):
        for chunks in [(32, 32, 32), (16, 64, 12), (10, 9, 7)]:
            out = label_particles(da.from_array(solid, chunks=chunks), threshold=None, max_radius=3)
            assert out.count == ref.count
            np.testing.assert_array_equal(out.labels.values, ref.labels.values)
    assert "beyond the split halo" not in caplog.text


def test_particles_past_the_halo_in_a_component_too_large_to_split_whole_stay_exact(caplog, monkeypatch):
    # a chain of 36 touching balls across the volume is one solid component (box 360,000
    # voxels); a rod 45 voxels long leaves it, beyond the halo made for radius 3: it is
    # split again in a window around its pieces, far smaller than the component
    import volmla.particles.split as sp

    zz, yy, xx = np.ogrid[:40, :72, :400]
    solid = np.zeros((40, 72, 400), bool)
    for cx in range(8, 400, 11):
        solid |= (zz - 14) ** 2 + (yy - 14) ** 2 + (xx - cx) ** 2 <= 36
    solid |= ((zz - 14) ** 2 + (xx - 96) ** 2 <= 16) & (yy >= 21) & (yy < 66)
    assert ndi.label(solid, np.ones((3, 3, 3)))[1] == 1
    monkeypatch.setattr(sp.resplit_cut, "__kwdefaults__", {**sp.resplit_cut.__kwdefaults__, "max_voxels": 150_000})
    ref = label_particles(da.from_array(solid, chunks=solid.shape), threshold=None, max_radius=3)
    assert ref.count == 37
    with caplog.at_level(logging.INFO, logger="volmla.particles.split"):
        for chunks in [(40, 40, 50), (40, 13, 33)]:
            out = label_particles(da.from_array(solid, chunks=chunks), threshold=None, max_radius=3)
            np.testing.assert_array_equal(out.labels.values, ref.labels.values)
    assert "beyond the split halo" not in caplog.text
    windows = [int(v) for v in re.findall(r"of (\d+) voxels in all split again", caplog.text)]
    assert windows and max(windows) < 360_000


@pytest.mark.parametrize("chunks", [(32, 32, 32), (10, 9, 7)])
def test_weighted_split_resplit_whole_matches_one_block(tmp_path, chunks):
    import zarr

    from volmla.particles.split import resplit_cut

    solid = flat_contact_clusters(11, clusters=8) > 0
    weight = np.clip(ndi.gaussian_filter(solid.astype(np.float32), 1.0) + 0.3, 0, 1).astype(np.float32)
    zarr.create_array(str(tmp_path / "solid.zarr"), data=solid, chunks=chunks)
    zarr.create_array(str(tmp_path / "fill.zarr"), data=weight, chunks=chunks)
    stored = [tmp_path / "solid.zarr", tmp_path / "fill.zarr"]
    (tmp_path / "cut").mkdir()
    mask, fill = da.from_array(solid, chunks=chunks), da.from_array(weight, chunks=chunks)
    keys = split_touching(mask, weight=fill, max_radius=3.0, stored=stored, report=tmp_path / "cut")
    keys.to_zarr(str(tmp_path / "keys.zarr"))
    assert resplit_cut(tmp_path / "keys.zarr", stored, tmp_path / "cut") > 0
    one = split_touching(da.from_array(solid, chunks=64), weight=da.from_array(weight, chunks=64), max_radius=3.0)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "keys.zarr"))[...], one.compute())


def test_particles_needing_windows_too_large_keep_the_warning(caplog, monkeypatch):
    import volmla.particles.split as sp

    rod = np.zeros((10, 10, 120), bool)
    rod[3:7, 3:7, 5:115] = True
    monkeypatch.setattr(sp, "MAX_WHOLE", 1000)
    monkeypatch.setattr(sp.resplit_cut, "__kwdefaults__", {**sp.resplit_cut.__kwdefaults__, "max_voxels": 1000})
    with caplog.at_level(logging.WARNING, logger="volmla.particles.split"):
        label_particles(da.from_array(rod, chunks=(10, 10, 20)), threshold=None, max_radius=2)
    assert "larger than 1000 voxels" in caplog.text
    # every piece of the rod needs a window larger than that: each particle is counted
    # once, however many windows it took
    found = re.search(r"(\d+) of (\d+) particle", caplog.text)
    assert found is not None and found[1] == found[2] and int(found[1]) >= 1


def test_windows_are_capped_by_a_worker_threads_memory(caplog, monkeypatch):
    import volmla.particles.split as sp

    rod = np.zeros((10, 10, 120), bool)
    rod[3:7, 3:7, 5:115] = True
    monkeypatch.setattr(sp, "block_budget", lambda: 7000)  # the blocks fit, not the windows
    with caplog.at_level(logging.WARNING, logger="volmla.particles.split"):
        label_particles(da.from_array(rod, chunks=(10, 10, 20)), threshold=None, max_radius=2)
    assert "larger than 7000 voxels" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="volmla.particles.split"):
        out = label_particles(da.from_array(rod, chunks=(10, 10, 20)), threshold=None, max_radius=2)
    assert "larger than" not in caplog.text and out.count == 1  # with the memory there: split whole


def test_small_touching_particles_stay_apart_by_default():
    # two balls of radius 2.5 voxels pressed half a voxel into each other: their saddle lies
    # only ~0.3 voxel below the peaks, so a default h of half a voxel merged them (#16)
    zz, yy, xx = np.mgrid[:16, :16, :24]
    two = ((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 6.0) ** 2 <= 6.25) | ((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 10.5) ** 2 <= 6.25)
    assert H_MIN <= 0.25
    assert len(np.unique(split_block(two))) - 1 == 2
    assert len(np.unique(split_block(two, h=0.5))) - 1 == 1
    found = label_particles(two.astype(np.uint8), threshold=None)
    assert found.count == 2


@pytest.mark.parametrize("shards", [None, (4, 4, 4)])
def test_new_keys_are_written_chunk_by_chunk_including_partial_edge_chunks(tmp_path, shards):
    import zarr

    from volmla.particles.split import _write_voxels

    where = str(tmp_path / "keys.zarr")
    zarr.create_array(where, shape=(10, 10, 10), chunks=(2, 2, 2) if shards else (4, 4, 4), shards=shards,
                      dtype="u8", fill_value=7)
    at = np.array([[0, 0, 0], [9, 9, 9], [5, 1, 8], [5, 2, 8]])
    _write_voxels(where, at, np.array([1, 2, 3, 4], np.uint64))
    expect = np.full((10, 10, 10), 7, np.uint64)
    expect[tuple(at.T)] = [1, 2, 3, 4]
    np.testing.assert_array_equal(zarr.open_array(where)[...], expect)


def _ball(n: int, radius: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[:n, :n, :n]
    return (zz - n / 2) ** 2 + (yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= radius**2


@pytest.mark.parametrize("voxel_size", [None, (2.0, 1.0, 1.0)])
def test_distance_floor_is_a_floor_close_to_the_largest_distance(monkeypatch, voxel_size) -> None:
    monkeypatch.setattr(split, "COARSE_CELLS", 12**3)  # 72^3 voxels in cells of 6^3
    solid = da.from_array(_ball(72, 30) | _ball(72, 12)[::-1], chunks=24)
    sampling = split.normalise_sampling(voxel_size)
    exact = split.max_distance(solid, sampling=sampling)
    floor = split.distance_floor(solid, sampling=sampling)
    diagonal = float(np.sqrt(sum((6 * s) ** 2 for s in sampling)))
    assert 0 < floor <= exact and exact - floor <= 2 * diagonal
    # a packed bed of small particles gets no floor worth the name
    bed = da.from_array(np.indices((72, 72, 72)).sum(axis=0) % 7 != 0, chunks=24)
    assert split.distance_floor(bed) == 0.0
    assert split.distance_floor(np.ones((8, 8, 8), bool)) == 0.0  # small volumes are measured exactly


def test_particles_too_wide_for_a_worker_are_refused_in_one_line_before_any_split(monkeypatch, tmp_path, capsys):
    from volmla.cli import main
    from volmla.io import write_volume

    monkeypatch.setattr(split, "COARSE_CELLS", 10**3)
    monkeypatch.setattr(split, "block_budget", lambda: 80**3)
    core = da.from_array(_ball(80, 38), chunks=20)  # one wide particle: a drill core's
    calls = []
    monkeypatch.setattr(split, "split_block", lambda *a, **k: calls.append(1))
    with pytest.raises(VolmlaError, match=r"particles too large to split in memory: one lies at least \d+ voxels"):
        label_particles(core, threshold=None)
    assert not calls  # refused from the floor: no exact pass, no block split
    monkeypatch.undo()
    monkeypatch.setattr(split, "COARSE_CELLS", 10**3)
    monkeypatch.setattr(split, "block_budget", lambda: 80**3)
    # with a halo made for small particles it runs, and the wide one is split again in a window: exact
    out = label_particles(core, threshold=None, max_radius=4)
    assert out.count == 1 and (out.labels.values[_ball(80, 38)] == 1).all()
    # the command line: one line naming the flag, no output
    scan = write_volume(_ball(80, 38).astype(np.uint8), tmp_path / "core.zarr", voxel_size=1.0, chunks=20,
                        kind="phases", phases={1: "rock"})
    monkeypatch.setattr(split, "COARSE_CELLS", 10**3)
    monkeypatch.setattr(split, "block_budget", lambda: 40**3)
    code = main(["-q", "particles", str(scan), "-o", str(tmp_path / "p.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--max-radius R" in err, err
    assert not (tmp_path / "p.zarr").exists()
