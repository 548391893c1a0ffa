"""Particles (threshold, pores, dust, watershed split) and grains, against in-memory references."""

from __future__ import annotations

import cc3d
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu

from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume
from volmla.particles import (
    fill_holes,
    label_grains,
    label_particles,
    otsu_threshold,
    remove_small,
    split_halo,
)


def balls(shape, centres, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    out = np.zeros(shape, bool)
    for c, r in zip(centres, radii, strict=True):
        r = np.broadcast_to(r, (3,))
        out |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r, strict=True)) <= 1
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of foreground voxels whose label in ``a`` maps to the dominant label in ``b``."""
    fg = (a > 0) | (b > 0)
    pairs, counts = np.unique(np.stack([a[fg], b[fg]]), axis=1, return_counts=True)
    best = {}
    for (x, _), n in zip(pairs.T, counts, strict=True):
        best[x] = max(best.get(x, 0), n)
    return sum(best.values()) / fg.sum()


def test_two_touching_spheres_split_single_not():
    two = balls((24, 24, 40), [(12, 12, 11), (12, 12, 27)], [8, 8])
    one = balls((24, 24, 40), [(12, 12, 20)], [9])
    ellipsoid = balls((24, 24, 48), [(12, 12, 24)], [(7, 7, 20)])
    for chunks in [(24, 24, 48), (8, 9, 10)]:
        assert label_particles(da.from_array(two, chunks=chunks[:2] + (40,)), threshold=None).count == 2
        assert label_particles(da.from_array(one, chunks=chunks[:2] + (40,)), threshold=None).count == 1
        assert label_particles(da.from_array(ellipsoid, chunks=chunks), threshold=None, max_radius=20).count == 1
    split = label_particles(two, threshold=None).labels.values
    # each sphere's centre in its own particle, the halves roughly equal
    assert split[12, 12, 11] != split[12, 12, 27]
    sizes = np.bincount(split.ravel())[1:]
    assert sizes.min() / sizes.max() > 0.9
    assert label_particles(two, threshold=None, split=False).count == 1


def touching_field(seed: int, shape=(48, 48, 48), n=30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return balls(shape, rng.uniform(0, shape[0], (n, 3)), rng.uniform(3.5, 7, n))


def test_split_chunk_independent():
    field = touching_field(1)
    ref = label_particles(da.from_array(field, chunks=48), threshold=None, max_radius=12)
    ref_labels = ref.labels.values
    assert ref.count > cc3d.connected_components(field, connectivity=26, return_N=True)[1]
    for chunks in [(16, 16, 16), (10, 48, 7)]:
        out = label_particles(da.from_array(field, chunks=chunks), threshold=None, max_radius=12)
        assert out.count == ref.count
        got = out.labels.values
        # stated tolerance: >= 99.5 % of solid voxels in the same particle (up to renumbering)
        assert agreement(got, ref_labels) >= 0.995
        assert agreement(ref_labels, got) >= 0.995


def test_phantom_particle_count():
    from volmla.synthetic import phantom

    ph = phantom(shape=(80, 80, 80), seed=1, chunks=40)
    truth = ph.particles.data.compute()
    n_true = len(np.unique(truth)) - 1
    out = label_particles(ph.phases, threshold=None)
    assert abs(out.count - n_true) <= max(1, round(0.1 * n_true))
    assert agreement(truth, out.labels.values) > 0.95


def test_otsu_matches_skimage():
    rng = np.random.default_rng(0)
    vol = np.concatenate([rng.normal(60, 10, 4000), rng.normal(170, 15, 2000)]).clip(0, 255)
    vol = vol.astype(np.uint8).reshape(10, 20, 30)
    counts = np.bincount(vol.ravel(), minlength=256)
    used = np.flatnonzero(counts)
    expected = threshold_otsu(hist=(counts[used[0] : used[-1] + 1], np.arange(used[0], used[-1] + 1)))
    for chunks in [(10, 20, 30), (3, 7, 4)]:
        assert otsu_threshold(da.from_array(vol, chunks=chunks)) == pytest.approx(expected)
    as_float = da.from_array(vol.astype(np.float32), chunks=5)
    assert abs(otsu_threshold(as_float) - threshold_otsu(vol)) < 2.0


def test_fill_holes_matches_scipy():
    mask = np.random.default_rng(2).random((18, 19, 20)) < 0.6
    ref = ndi.binary_fill_holes(mask)
    assert ref.sum() > mask.sum()
    for chunks in [(18, 19, 20), (1, 7, 5), (6, 6, 6)]:
        np.testing.assert_array_equal(fill_holes(da.from_array(mask, chunks=chunks)).compute(), ref)


def test_remove_small_matches_cc3d_dust():
    mask = np.random.default_rng(4).random((16, 17, 18)) < 0.3
    ref = cc3d.dust(mask.astype(np.uint8), threshold=5, connectivity=26) > 0
    for chunks in [(16, 17, 18), (5, 4, 7)]:
        np.testing.assert_array_equal(remove_small(da.from_array(mask, chunks=chunks), min_size=5).compute(), ref)
    with pytest.raises(VolmlaError, match="min_size"):
        remove_small(mask, min_size=-1)


def test_particles_from_intensity():
    solid = balls((20, 20, 20), [(6, 6, 6), (14, 14, 14)], [4, 4])
    rng = np.random.default_rng(0)
    intensity = (solid * 30000 + 10000 + rng.normal(0, 500, solid.shape)).astype(np.uint16)
    out = label_particles(da.from_array(intensity, chunks=10), threshold="otsu", min_size=10, fill_holes=True)
    assert out.count == 2
    assert label_particles(intensity, threshold=25000.0).count == 2
    with pytest.raises(VolmlaError, match="threshold"):
        label_particles(intensity, threshold="median")  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="max_radius"):
        split_halo(0)


def test_grains_equal_cc3d():
    rng = np.random.default_rng(6)
    part = np.repeat(np.arange(1, 5, dtype=np.uint32), 6)[None, None, :].repeat(12, 0).repeat(10, 1)
    part[:, :2] = 0
    phases = rng.integers(0, 4, part.shape).astype(np.uint8)
    key = part.astype(np.uint64) * 256 + phases
    key[(part == 0) | (phases == 0)] = 0
    ref, n = cc3d.connected_components(key, connectivity=26, return_N=True)
    for chunks in [part.shape, (5, 3, 7)]:
        out = label_grains(da.from_array(part, chunks=chunks), da.from_array(phases, chunks=chunks))
        assert out.count == n
        np.testing.assert_array_equal(out.labels.values, ref)
    with pytest.raises(VolmlaError, match="same shape"):
        label_grains(part, phases[:, :, :-1])




@pytest.mark.parametrize("split", [True, False])
def test_min_size_above_every_particle_is_refused(split: bool) -> None:
    """A min_size that drops every particle gave empty labels (and an empty report):
    refused, naming the largest particle's voxels; the largest itself is kept."""
    solid = balls((20, 20, 20), [(6, 6, 6), (14, 14, 14)], [4, 3])
    largest = int(np.bincount(ndi.label(solid)[0].ravel())[1:].max())
    mask = da.from_array(solid.astype(np.uint8), chunks=10)
    with pytest.raises(VolmlaError, match=f"min_size={largest + 1} removes every particle: the largest the mask "
                                          f"holds has {largest} voxels; give a min_size of {largest} or less"):
        label_particles(mask, threshold=None, min_size=largest + 1, split=split)
    assert label_particles(mask, threshold=None, min_size=largest, split=split).count == 1
    # an empty mask stays an empty result: no min_size to blame
    assert label_particles(np.zeros((8, 8, 8), np.uint8), threshold=None, min_size=5, split=split).count == 0


def test_default_min_size_that_removes_every_speck_says_so() -> None:
    specks = np.random.default_rng(0).normal(100, 5, (32, 32, 32)).astype(np.float32)
    specks[4:7, 4:6, 4:6] = specks[15:17, 15:17, 15:17] = 1000  # specks of 12 and 8 voxels, below 27
    with pytest.raises(VolmlaError, match=r"min_size=27 \(the default for threshold='auto'\) removes every "
                                          r"particle: the largest the mask holds has 12 voxels"):
        label_particles(specks)

@pytest.mark.parametrize("chunks", [(6, 6, 6), (2, 3, 4)])
def test_grains_refuse_negative_particle_ids(chunks):
    """A signed particle volume with a negative id: refused as the measurement refuses it
    (it wrapped to a huge key and made grains of no particle)."""
    part = np.zeros((6, 6, 6), np.int32)
    part[1:4, 1:4, 1:4] = 1
    part[4:, 4:, 4:] = -3
    phases = (part != 0).astype(np.uint8)
    with pytest.raises(VolmlaError, match="particle ids must not be negative, got -3"):
        label_grains(da.from_array(part, chunks=chunks), da.from_array(phases, chunks=chunks))
    part[4:, 4:, 4:] = 2  # non-negative signed ids are labels as any
    assert label_grains(part, phases).count == 2

def test_cli_particles_and_grains(tmp_path, capsys):
    two = balls((20, 20, 32), [(10, 10, 9), (10, 10, 22)], [7, 7])
    phases = (two * (1 + (np.arange(32) > 16))).astype(np.uint8)
    ph = write_volume(phases, tmp_path / "phases.zarr", voxel_size=2.0, kind="phases", chunks=10)
    out = tmp_path / "particles.zarr"
    assert main(["--quiet", "--workers", "1", "particles", str(ph), "-o", str(out), "--max-radius", "8"]) == 0
    vol = open_volume(out)
    assert vol.attrs["kind"] == "labels" and vol.dtype == np.uint32
    assert len(np.unique(vol.data.compute())) - 1 == 2
    assert main(["--quiet", "--workers", "1", "particles", str(ph), "-o", str(out)]) == 2
    assert main(["--quiet", "--workers", "1", "particles", str(ph), "-o", str(tmp_path / "x.zarr"), "--threshold", "5"]) == 2
    assert "intensity" in capsys.readouterr().err
    gr = tmp_path / "grains.zarr"
    assert main(["--quiet", "--workers", "1", "grains", "--particles", str(out), "--phases", str(ph), "-o", str(gr)]) == 0
    assert len(np.unique(open_volume(gr).data.compute())) - 1 >= 3
    other = write_volume(phases, tmp_path / "other.zarr", voxel_size=3.0, kind="phases", chunks=10)
    capsys.readouterr()
    assert main(["--quiet", "--workers", "1", "grains", "--particles", str(out), "--phases", str(other), "-o", str(tmp_path / "g2.zarr")]) == 2
    err = capsys.readouterr().err
    assert "voxel size" in err and len(err.strip().splitlines()) == 1
    small = write_volume(phases[:, :, :-2], tmp_path / "small.zarr", voxel_size=2.0, kind="phases", chunks=10)
    assert main(["--quiet", "--workers", "1", "grains", "--particles", str(out), "--phases", str(small), "-o", str(tmp_path / "g3.zarr")]) == 2
    assert "same shape" in capsys.readouterr().err


def test_scratch_store_gives_the_same_particles(tmp_path) -> None:
    """Storing the watershed keys once (two labelling passes read them) changes nothing."""
    import dask.array as da

    from volmla.particles import label_particles

    zz, yy, xx = np.mgrid[:40, :40, :40]
    balls = ((zz - 20) ** 2 + (yy - 14) ** 2 + (xx - 20) ** 2 <= 64) | ((zz - 20) ** 2 + (yy - 27) ** 2 + (xx - 20) ** 2 <= 64)
    vol = da.from_array(balls.astype(np.uint8) * 200, chunks=16)
    plain = label_particles(vol, threshold=100, max_radius=10)
    stored = label_particles(vol, threshold=100, max_radius=10, scratch=tmp_path)
    assert plain.count == stored.count == 2
    np.testing.assert_array_equal(np.asarray(plain.labels), np.asarray(stored.labels))
    assert (tmp_path / "split-keys.zarr").exists()


def test_labels_come_back_on_the_input_grid_and_combine_with_it() -> None:
    """The split works on halo-sized blocks; the labels return on the input's chunks, so
    grains (particles x phases, block by block) work on multi-chunk input (issue 19)."""
    field = touching_field(2)
    phases = da.from_array((field * (1 + (np.indices(field.shape)[0] > 24))).astype(np.uint8), chunks=(20, 24, 17))
    found = label_particles(phases, threshold=None)
    assert found.labels.chunks == phases.chunks
    grains = label_grains(found.labels, phases)
    ref = label_grains(found.labels.values, phases.compute())
    assert grains.count == ref.count
    np.testing.assert_array_equal(grains.labels.values, ref.labels.values)


def test_the_split_runs_once_however_often_the_labels_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a scratch folder the keys are stored once in a session folder, so each use of
    the lazy labels reads them instead of recomputing the watershed."""
    from volmla.particles import split as split_module

    calls = []
    real = split_module._split_extended

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(split_module, "_split_extended", counting)
    vol = da.from_array(touching_field(3).astype(np.uint8), chunks=24)
    found = label_particles(vol, threshold=None)
    made = len(calls)
    assert made > 0, calls
    for _ in range(3):
        found.labels.compute()
    assert len(calls) == made
