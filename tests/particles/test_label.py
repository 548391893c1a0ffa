"""Distributed connected components against scipy.ndimage.label / cc3d, any chunking."""

from __future__ import annotations

import cc3d
import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume
from volmla.particles.label import block_pairs, first_voxel_keys, label, local_labels

RANK = {6: 1, 18: 2, 26: 3}


def scipy_label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    return ndi.label(mask, ndi.generate_binary_structure(3, RANK[connectivity]))


def check_equal(mask: np.ndarray, connectivity: int, chunks) -> np.ndarray:
    """Labels must equal SciPy's exactly: same partition and same numbering."""
    ref, n = scipy_label(mask, connectivity)
    out = label(da.from_array(mask, chunks=chunks), connectivity=connectivity)
    got = out.labels.values
    assert out.count == n
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, ref)
    return got


# --------------------------------------------------------------------------- kernels


def test_local_labels_numbered_in_c_order():
    rng = np.random.default_rng(0)
    block = (rng.random((6, 7, 8)) < 0.4).astype(np.uint8)
    labels, n = local_labels(block, connectivity=6)
    keys = first_voxel_keys(labels, n, (0, 0, 0), block.shape)
    assert np.all(np.diff(keys.astype(np.int64)) > 0)
    assert np.array_equal(labels.ravel()[keys.astype(np.int64)], np.arange(1, n + 1))


def test_block_pairs_diagonals():
    low = np.array([[5, 0], [0, 0]], np.uint64)
    high = np.zeros((4, 4), np.uint64)
    high[2, 2] = 9  # diagonal in-plane neighbour of low[0, 0]: a corner step
    assert block_pairs(low, high, connectivity=26).tolist() == [[5, 9]]
    assert block_pairs(low, high, connectivity=18).tolist() == []
    high[1, 2] = 8  # edge step
    assert block_pairs(low, high, connectivity=18).tolist() == [[5, 8]]
    values = np.ones((2, 2), np.uint8)
    hv = np.full((4, 4), 2, np.uint8)
    assert block_pairs(low, high, low_values=values, high_values=hv).tolist() == []


# --------------------------------------------------------------------------- random fields


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("density", [0.15, 0.45, 0.8])
def test_random_fields_equal_scipy(connectivity, density):
    rng = np.random.default_rng(int(density * 100) + connectivity)
    mask = rng.random((11, 13, 12)) < density
    for chunks in [(11, 13, 12), (1, 13, 12), (11, 1, 3), (4, 5, 6), (3, 13, 1)]:
        check_equal(mask, connectivity, chunks)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(1, 10)] * 3),
    chunk=st.tuples(*[st.integers(1, 6)] * 3),
    density=st.floats(0.05, 0.95),
    connectivity=st.sampled_from([6, 18, 26]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_chunks(shape, chunk, density, connectivity, seed):
    mask = np.random.default_rng(seed).random(shape) < density
    check_equal(mask, connectivity, tuple(min(c, s) for c, s in zip(chunk, shape, strict=True)))


# --------------------------------------------------------------------------- adversarial shapes


def spiral(n: int = 16) -> np.ndarray:
    """A 6-connected square spiral in every other plane, the planes joined at alternating ends."""
    out = np.zeros((n, n, n), bool)
    for z in range(0, n, 2):
        lo, hi = 0, n - 1
        while lo <= hi:
            out[z, lo, lo : hi + 1] = True
            out[z, lo : hi + 1, hi] = True
            if lo + 2 <= hi:
                out[z, hi, lo + 2 : hi + 1] = True
                out[z, lo + 2 : hi + 1, lo + 2] = True
            lo, hi = lo + 2, hi - 2
        if z + 1 < n:
            out[z + 1, 0, 0 if (z // 2) % 2 == 0 else n - 1] = True
    return out


def snake(n: int = 15) -> np.ndarray:
    out = np.zeros((n, n, n), bool)
    for y in range(0, n, 2):
        out[n // 2, y, :] = True
        out[n // 2, y + 1 if y + 1 < n else y, (n - 1) if (y // 2) % 2 == 0 else 0] = True
    return out


def diagonal(n: int = 12, kind: int = 26) -> np.ndarray:
    """A chain of single voxels touching only at corners (26) or edges (18)."""
    out = np.zeros((n, n, n), bool)
    for i in range(n):
        if kind == 26:
            out[i, i, i] = True
        else:
            out[i, i, n // 2] = True
    return out


SHAPES = {
    "spiral": spiral(),
    "snake": snake(),
    "corner-chain": diagonal(kind=26),
    "edge-chain": diagonal(kind=18),
    "full": np.ones((7, 8, 9), bool),
    "empty": np.zeros((7, 8, 9), bool),
    "single": np.pad(np.ones((1, 1, 1), bool), ((3, 2), (0, 4), (5, 0))),
}


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_adversarial_shapes(name, connectivity):
    mask = SHAPES[name]
    for chunks in [mask.shape, (1, 3, 2), (2, 2, 2), (5, 1, 4), (3, 4, 5)]:
        check_equal(mask, connectivity, tuple(min(c, s) for c, s in zip(chunks, mask.shape, strict=True)))


def test_chain_counts_depend_on_connectivity():
    chain = diagonal(kind=26)
    assert label(da.from_array(chain, chunks=3), connectivity=26).count == 1
    assert label(da.from_array(chain, chunks=3), connectivity=18).count == chain.sum()
    edge = diagonal(kind=18)
    assert label(da.from_array(edge, chunks=(2, 3, 5)), connectivity=18).count == 1
    assert label(da.from_array(edge, chunks=(2, 3, 5)), connectivity=6).count == edge.sum()


def test_one_voxel_chunks():
    mask = np.random.default_rng(3).random((5, 6, 4)) < 0.5
    for connectivity in (6, 26):
        check_equal(mask, connectivity, 1)


# --------------------------------------------------------------------------- determinism


def test_identical_across_chunkings_workers_and_schedulers():
    mask = np.random.default_rng(5).random((24, 20, 22)) < 0.35
    outputs = []
    for chunks, workers in [((24, 20, 22), 1), ((7, 5, 9), 1), ((7, 5, 9), 2), ((3, 20, 4), 2)]:
        with dask.config.set(scheduler="threads", num_workers=workers):
            outputs.append(label(da.from_array(mask, chunks=chunks)).labels.values)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster):
            outputs.append(label(da.from_array(mask, chunks=(5, 6, 7))).labels.values)
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_multilabel_equals_cc3d(connectivity):
    rng = np.random.default_rng(connectivity)
    values = ((rng.random((12, 11, 10)) < 0.75) * rng.integers(1, 4, (12, 11, 10))).astype(np.uint8)
    ref, n = cc3d.connected_components(values, connectivity=connectivity, return_N=True)
    for chunks in [(12, 11, 10), (1, 4, 3), (5, 5, 5)]:
        out = label(da.from_array(values, chunks=chunks), connectivity=connectivity, multilabel=True)
        assert out.count == n
        np.testing.assert_array_equal(out.labels.values, ref)


def test_multilabel_keeps_touching_values_apart():
    values = np.zeros((1, 1, 6), np.uint64)
    values[0, 0, :3] = 2**40
    values[0, 0, 3:] = 7
    out = label(da.from_array(values, chunks=(1, 1, 2)), multilabel=True)
    assert out.count == 2
    assert out.labels.values.ravel().tolist() == [1, 1, 1, 2, 2, 2]


# --------------------------------------------------------------------------- validation


def test_bad_connectivity_message():
    with pytest.raises(VolmlaError, match=r"^connectivity must be one of \(6, 18, 26\), got 8$"):
        label(np.zeros((2, 2, 2), bool), connectivity=8)  # type: ignore[arg-type]


def test_non_binary_mask_refused():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1, 1, 1] = 3
    with pytest.raises(VolmlaError, match="binary"):
        label(da.from_array(mask, chunks=2))
    assert label(da.from_array(mask, chunks=2), multilabel=True).count == 1


def test_not_3d_refused():
    with pytest.raises(VolmlaError, match="3-D"):
        label(np.zeros((4, 4), bool))


# --------------------------------------------------------------------------- CLI


def test_cli_label(tmp_path, capsys):
    mask = np.random.default_rng(9).random((12, 10, 14)) < 0.3
    src = write_volume(mask.astype(np.uint8), tmp_path / "mask.zarr", voxel_size=2.5, chunks=5)
    out = tmp_path / "labels.zarr"
    assert main(["--quiet", "--workers", "1", "label", str(src), "-o", str(out), "--connectivity", "6"]) == 0
    vol = open_volume(out)
    ref, n = scipy_label(mask, 6)
    np.testing.assert_array_equal(vol.data.compute(), ref)
    assert vol.dtype == np.uint32
    assert vol.attrs["kind"] == "labels"
    assert vol.attrs["voxel_size_um"] == (2.5, 2.5, 2.5)
    assert vol.attrs["provenance"][-1]["count"] == n
    before = (out / "zarr.json").read_text()
    capsys.readouterr()
    assert main(["--quiet", "--workers", "1", "label", str(src), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["--quiet", "--workers", "1", "label", str(src), "-o", str(out), "--connectivity", "8"]) == 2
    err = capsys.readouterr().err
    assert "connectivity must be one of (6, 18, 26), got 8" in err and len(err.strip().splitlines()) == 1
    assert (out / "zarr.json").read_text() == before
    assert main(["--quiet", "--workers", "1", "label", str(src), "-o", str(out), "--overwrite", "--multilabel"]) == 0


def test_cli_label_non_binary(tmp_path, capsys):
    values = np.zeros((6, 6, 6), np.uint8)
    values[2:4, 2:4, 2:4] = 5
    src = write_volume(values, tmp_path / "v.zarr", voxel_size=1.0, chunks=3)
    assert main(["--quiet", "--workers", "1", "label", str(src), "-o", str(tmp_path / "l.zarr")]) == 2
    assert "binary" in capsys.readouterr().err
    assert main(["--quiet", "--workers", "1", "label", str(src), "-o", str(tmp_path / "l.zarr"), "--multilabel"]) == 0


def test_block_scan_results_are_planes_not_whole_blocks():
    # the first plane along z is contiguous: a view of it would pin the whole block's
    # labels (and, multilabel, its values) while the scheduler counts one plane
    from volmla.particles.label import _scan_block

    block = np.ones((8, 6, 5), np.uint64)
    for multilabel in (False, True):
        mask = block if multilabel else block.astype(np.uint8)
        out = _scan_block(mask, origin=(0, 0, 0), shape=mask.shape, connectivity=26, multilabel=multilabel)
        planes = [a for face in out[1:] if isinstance(face, tuple) for a in face if isinstance(a, np.ndarray)]
        assert planes and all(p.base is None for p in planes)
