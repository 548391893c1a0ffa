"""Tests for volmla.io (OME-Zarr read/write, pyramids, resume) and ``volmla info``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.io import (
    as_blocks,
    block_grid,
    compressor,
    default_chunks,
    normalise_voxel_size,
    open_volume,
    write_volume,
)

ODD = (97, 131, 203)
DTYPES = ("uint8", "uint16", "int16", "uint32", "float32")


def _volume(rng: np.random.Generator, dtype: str, shape: tuple[int, ...] = ODD) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        out = rng.standard_normal(shape).astype(dtype)
        out.flat[:3] = [np.inf, -0.0, np.finfo(dtype).tiny]  # edge values survive too
        return out
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunks", [64, ODD], ids=["64", "whole"])
def test_round_trip_bit_exact(tmp_path: Path, rng: np.random.Generator, dtype: str, chunks: object) -> None:
    vol = _volume(rng, dtype)
    path = write_volume(vol, tmp_path / "v.zarr", voxel_size=(2.0, 1.5, 1.5), chunks=chunks)
    got = open_volume(path)
    assert got.dims == ("z", "y", "x") and got.dtype == vol.dtype and got.shape == ODD
    np.testing.assert_array_equal(got.values, vol)
    assert got.attrs["voxel_size_um"] == (2.0, 1.5, 1.5)
    assert got.data.chunksize == (tuple(min(64, s) for s in ODD) if chunks == 64 else ODD)
    np.testing.assert_allclose(got["x"].values[:3], [0.0, 1.5, 3.0])


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_round_trip_odd_chunks_from_lazy_input(tmp_path: Path, rng: np.random.Generator, dtype: str) -> None:
    vol = _volume(rng, dtype)
    lazy = da.from_array(vol, chunks=(31, 50, 77))  # storage chunks 17: rechunked on write
    got = open_volume(write_volume(lazy, tmp_path / "v.zarr", voxel_size=1.0, chunks=17))
    assert got.data.chunksize == (17, 17, 17)
    np.testing.assert_array_equal(got.values, vol)


@settings(max_examples=6, deadline=None)
@given(
    chunks=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
    dtype=st.sampled_from(DTYPES),
)
def test_round_trip_any_chunk_shape(tmp_path_factory: pytest.TempPathFactory, chunks: tuple[int, int, int], dtype: str) -> None:
    vol = _volume(np.random.default_rng(5), dtype, (5, 6, 7))
    path = tmp_path_factory.mktemp("hyp") / "v.zarr"
    np.testing.assert_array_equal(open_volume(write_volume(vol, path, voxel_size=1.0, chunks=chunks)).values, vol)


def test_ome_zarr_reader_sees_scale_and_levels(tmp_path: Path, rng: np.random.Generator) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path = write_volume(_volume(rng, "uint16", (20, 13, 9)), tmp_path / "v.zarr", voxel_size=(3.0, 2.0, 1.0), levels=2)
    nodes = list(Reader(parse_url(str(path)))())
    node = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in node.specs)
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in node.metadata["axes"]} == {"micrometer"}
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[3.0, 2.0, 1.0], [6.0, 4.0, 2.0]]
    assert [tuple(d.shape) for d in node.data] == [(20, 13, 9), (10, 7, 5)]


def _mean_pyramid_step(vol: np.ndarray) -> np.ndarray:
    even = np.pad(vol, [(0, s % 2) for s in vol.shape], mode="edge").astype(np.float64)
    z, y, x = (s // 2 for s in even.shape)
    mean = even.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5))
    info = np.iinfo(vol.dtype)
    return np.clip(np.round(mean), info.min, info.max).astype(vol.dtype)


def test_pyramid_levels(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = _volume(rng, "uint16", (21, 30, 17))
    path = write_volume(vol, tmp_path / "i.zarr", voxel_size=1.0, chunks=8, levels=3)
    shapes = [open_volume(path, level=lv).shape for lv in range(3)]
    assert shapes == [(21, 30, 17), (11, 15, 9), (6, 8, 5)]
    level1 = _mean_pyramid_step(vol)
    np.testing.assert_array_equal(open_volume(path, level=1).values, level1)
    np.testing.assert_array_equal(open_volume(path, level=2).values, _mean_pyramid_step(level1))
    assert open_volume(path, level=2).attrs["voxel_size_um"] == (4.0, 4.0, 4.0)
    with pytest.raises(VolmlaError, match="level must lie in 0..2"):
        open_volume(path, level=3)

    phases = rng.integers(0, 4, (21, 30, 17), dtype=np.uint8)
    path = write_volume(phases, tmp_path / "p.zarr", voxel_size=1.0, chunks=8, levels=2, kind="phases")
    np.testing.assert_array_equal(open_volume(path, level=1).values, phases[::2, ::2, ::2])


def test_phases_and_provenance_attrs_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = rng.integers(0, 4, (10, 12, 14), dtype=np.uint8)
    names = {1: "quartz", 2: "feldspar", 3: "pyrite"}
    arr = xr.DataArray(
        da.from_array(vol, chunks=5),
        dims=("z", "y", "x"),
        attrs={"voxel_size_um": (0.064, 0.064, 0.064), "kind": "phases", "phases": names,
               "provenance": [{"step": "segment", "method": "threshold"}]},
    )
    path = write_volume(arr, tmp_path / "p.zarr", provenance=[{"step": "test"}])
    got = open_volume(path)
    assert got.attrs["kind"] == "phases"
    assert got.attrs["phases"] == names
    assert got.attrs["voxel_size_um"] == pytest.approx((0.064,) * 3)
    assert [s["step"] for s in got.attrs["provenance"]] == ["segment", "test"]
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]["volmla"]
    assert attrs["phases"] == {"1": "quartz", "2": "feldspar", "3": "pyrite"} and attrs["complete"] is True
    np.testing.assert_array_equal(got.values, vol)
    with pytest.raises(VolmlaError, match="phase ids must lie in 1..255"):
        write_volume(vol, tmp_path / "bad.zarr", voxel_size=1.0, phases={0: "void"})


def _codec(path: Path, level: str = "0") -> dict:
    meta = json.loads((path / level / "zarr.json").read_text())
    return next(c["configuration"] for c in meta["codecs"] if c["name"] == "blosc")


def test_codec_by_kind(tmp_path: Path, rng: np.random.Generator) -> None:
    # noisy intensities: LZ4 (zstd gains ~1 % there at 2.6x the encode time); piecewise
    # constant phases and labels: zstd, which stores them 2-3x smaller than LZ4
    vol = rng.integers(0, 4, (12, 10, 8), dtype=np.uint8)
    for kind, cname in [("intensity", "lz4"), ("phases", "zstd"), ("labels", "zstd")]:
        path = write_volume(vol, tmp_path / f"{kind}.zarr", voxel_size=1.0, kind=kind, levels=2)
        for level in ("0", "1"):
            assert _codec(path, level)["cname"] == cname
            assert _codec(path, level)["shuffle"] == "bitshuffle"
        assert compressor(kind).cname.value == cname
        np.testing.assert_array_equal(open_volume(path).values, vol)
    with pytest.raises(VolmlaError, match="kind must be one of"):
        compressor("mask")
    from zarr.codecs import BloscCodec

    path = write_volume(vol, tmp_path / "own.zarr", voxel_size=1.0, codec=BloscCodec(cname="zlib", clevel=1))
    assert _codec(path)["cname"] == "zlib"
    np.testing.assert_array_equal(open_volume(path).values, vol)


def test_empty_chunks_are_not_stored_and_full_ones_are(tmp_path: Path) -> None:
    # a chunk whose sampled voxels are non-zero skips Zarr's emptiness pass; the others
    # still get it, so background-only label chunks take no space
    lab = np.zeros((8, 8, 8), np.uint32)
    lab[0, 0, 0] = 5  # chunk (0, 0, 0): first voxel set
    lab[6, 0, 0] = 6  # chunk (1, 0, 0): its middle voxel (flat index 32 of 64) set
    lab[1, 7, 1] = 7  # chunk (0, 1, 0): a voxel no sample sees
    path = write_volume(lab, tmp_path / "l.zarr", voxel_size=1.0, chunks=4, kind="labels")
    stored = {p.relative_to(path / "0" / "c").as_posix() for p in (path / "0" / "c").rglob("*") if p.is_file()}
    assert stored == {"0/0/0", "1/0/0", "0/1/0"}
    np.testing.assert_array_equal(open_volume(path).values, lab)


# ----------------------------------------------------------------------------- resume


class _Counting:
    """A block kernel that counts its calls and can be told to fail.

    ``fail_at`` is a block position, or an int ``n``: the ``n``-th call fails, whatever
    order the scheduler picks, so a run that fails there has written ``n - 1`` blocks.
    """

    def __init__(self, ref: np.ndarray, fail_at: tuple[int, int, int] | int | None) -> None:
        self.ref, self.fail_at, self.calls = ref, fail_at, 0
        self.lock = threading.Lock()

    def __call__(self, block_info: dict | None = None) -> np.ndarray:
        info = block_info[None]
        with self.lock:
            self.calls += 1
            call = self.calls
        if tuple(info["chunk-location"]) == self.fail_at or call == self.fail_at:
            raise RuntimeError("worker lost in the middle of the write")
        region = tuple(slice(a, b) for a, b in info["array-location"])
        return self.ref[region].copy()


def test_interrupted_write_is_refused_then_resumed(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = _volume(rng, "uint16", (30, 20, 25))
    chunks = (8, 8, 8)  # 4 x 3 x 4 = 48 chunks
    job = {"command": "test", "param": 1}
    path = tmp_path / "r.zarr"

    def lazy(kernel: _Counting) -> da.Array:
        return da.map_blocks(kernel, chunks=da.core.normalize_chunks(chunks, ref.shape), dtype=ref.dtype)

    failing = _Counting(ref, fail_at=20)
    # synchronous: no task of the failed run is still writing while the rerun counts
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="worker lost"):
        write_volume(lazy(failing), path, voxel_size=1.0, chunks=chunks, job=job)
    with pytest.raises(VolmlaError, match="incomplete"):
        open_volume(path)
    assert open_volume(path, allow_incomplete=True).shape == ref.shape
    done = len(list((path / ".volmla-done" / "0").iterdir()))
    assert 0 < done < 20  # at most the 19 blocks computed before the failure

    with pytest.raises(VolmlaError, match="exists"):  # another job may not resume it
        write_volume(lazy(_Counting(ref, None)), path, voxel_size=1.0, chunks=chunks, job={"command": "other"})

    resumed = _Counting(ref, fail_at=None)
    write_volume(lazy(resumed), path, voxel_size=1.0, chunks=chunks, job=job)
    assert resumed.calls == 48 - done  # only the missing chunks are recomputed
    got = open_volume(path)
    np.testing.assert_array_equal(got.values, ref)
    assert not (path / ".volmla-done").exists()

    fresh = tmp_path / "fresh.zarr"
    write_volume(ref, fresh, voxel_size=1.0, chunks=chunks, job=job)
    assert {k: v for k, v in _tree(path).items() if k.startswith("0/")} == {
        k: v for k, v in _tree(fresh).items() if k.startswith("0/")
    }  # bit-identical chunk files


def test_existing_output_without_overwrite_is_untouched(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_volume(_volume(rng, "uint8", (5, 6, 7)), tmp_path / "v.zarr", voxel_size=1.0)
    before = _tree(path)
    other = _volume(rng, "uint8", (5, 6, 7))
    with pytest.raises(VolmlaError, match="exists: pass overwrite=True"):
        write_volume(other, path, voxel_size=1.0)
    assert _tree(path) == before
    write_volume(other, path, voxel_size=1.0, overwrite=True)
    np.testing.assert_array_equal(open_volume(path).values, other)


def test_invalid_arguments(tmp_path: Path) -> None:
    vol = np.zeros((3, 4, 5), np.uint8)
    cases = [
        (dict(voxel_size=None), "voxel size is missing"),
        (dict(voxel_size=(1, 2)), "one number or three"),
        (dict(voxel_size=0), "positive"),
        (dict(voxel_size=1, chunks=0), "chunks must be positive"),
        (dict(voxel_size=1, kind="mask"), "kind must be one of"),
        (dict(voxel_size=1, levels=0), "levels must be a positive integer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VolmlaError, match=message):
            write_volume(vol, tmp_path / "x.zarr", **kwargs)
    with pytest.raises(VolmlaError, match="unsupported dtype int8"):
        write_volume(vol.astype(np.int8), tmp_path / "x.zarr", voxel_size=1)
    with pytest.raises(VolmlaError, match="3-D"):
        write_volume(np.zeros((4, 5), np.uint8), tmp_path / "x.zarr", voxel_size=1)
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(VolmlaError, match="does not exist"):
        open_volume(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(VolmlaError, match="not an OME-Zarr volume"):
        open_volume(tmp_path / "plain")


def test_default_chunks_and_voxel_size() -> None:
    edge = default_chunks((2000, 2000, 2000), "uint16")
    assert edge[0] == edge[1] == edge[2] and abs(edge[0] ** 3 * 2 - 64 * 2**20) < 0.02 * 64 * 2**20
    thin = default_chunks((10, 4000, 4000), "uint8")
    assert thin[0] == 10 and thin[1] == thin[2] and abs(10 * thin[1] ** 2 - 64 * 2**20) < 0.02 * 64 * 2**20
    assert default_chunks((5, 6, 7), "float32") == (5, 6, 7)
    assert normalise_voxel_size([1, 2, 3]) == (1.0, 2.0, 3.0)


# ----------------------------------------------------------------------------- info


def test_info_prints_volume_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vol = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6) % 4
    path = write_volume(vol, tmp_path / "p.zarr", voxel_size=(2.0, 1.0, 1.0), kind="phases",
                        phases=["quartz", "pyrite"], provenance=[{"step": "test"}], levels=2)
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[4, 5, 6]" in out and "uint8" in out and "[2.0, 1.0, 1.0]" in out
    assert "1=quartz, 2=pyrite" in out and '"step": "test"' in out

    assert main(["info", "--json", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["shape"] == [4, 5, 6] and record["dtype"] == "uint8" and record["kind"] == "phases"
    assert record["levels"] == 2 and record["phases"] == {"1": "quartz", "2": "pyrite"}
    assert record["voxel_size_um"] == [2.0, 1.0, 1.0] and record["chunks"] == [4, 5, 6]


def test_info_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("volmla: error: ") and "does not exist" in err and err.count("\n") == 1

    kernel = _Counting(np.zeros((8, 8, 8), np.uint8), fail_at=(1, 0, 0))
    lazy = da.map_blocks(kernel, chunks=((4, 4), (8,), (8,)), dtype=np.uint8)
    with pytest.raises(RuntimeError):
        write_volume(lazy, tmp_path / "half.zarr", voxel_size=1.0, chunks=4)
    assert main(["info", str(tmp_path / "half.zarr")]) == 2
    err = capsys.readouterr().err
    assert "incomplete" in err and err.count("\n") == 1


def test_numpy_input_is_cut_into_views_not_copied() -> None:
    lab = np.zeros((40, 30, 20), np.uint32)
    blocks = as_blocks(lab, chunks=(16, 16, 16))
    assert blocks.numblocks == (3, 2, 2)
    first = blocks.dask[(blocks.name, 0, 0, 0)]
    assert np.shares_memory(first, lab) and first.shape == (16, 16, 16)
    np.testing.assert_array_equal(blocks.compute(), lab)


def test_block_grid_origins_and_sizes() -> None:
    grid = block_grid(((3, 2), (4,), (1, 1, 1)))
    assert len(grid) == 6
    assert grid[0] == ((0, 0, 0), (0, 0, 0), (3, 4, 1))
    assert grid[-1] == ((1, 0, 2), (3, 0, 2), (2, 4, 1))


# ----------------------------------------------------------------------------- bad inputs to the API (a sweep)


def test_uint64_of_any_numpy_spelling_is_written(tmp_path: Path) -> None:
    """numpy's ulonglong (what tifffile reads for uint64) equals uint64 but Zarr knew
    only the latter: ``ValueError: No Zarr data type found``."""
    data = np.arange(64, dtype=np.ulonglong).reshape(4, 4, 4)
    write_volume(data, tmp_path / "u.zarr", voxel_size=1.0)
    back = open_volume(tmp_path / "u.zarr")
    assert back.dtype == np.uint64
    np.testing.assert_array_equal(back.values, data)


def test_a_group_cut_short_at_creation_is_not_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while the group is made leaves no half group that a rerun would call an
    existing output (there is nothing in it to resume)."""
    import volmla.io.volume as volume

    def broken(path: Path, spec: object) -> None:
        path.mkdir()
        (path / "zarr.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(volume, "_make_group", broken)
    with pytest.raises(VolmlaError, match="no space left on device"):
        write_volume(np.zeros((4, 4, 4), np.uint8), tmp_path / "o.zarr", voxel_size=1.0)
    assert not (tmp_path / "o.zarr").exists()
    monkeypatch.undo()
    write_volume(np.zeros((4, 4, 4), np.uint8), tmp_path / "o.zarr", voxel_size=1.0)  # no --overwrite needed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"chunks": 2.5}, "chunks must be one integer or three, got 2.5"),
    ({"phases": "abc"}, "phases must be a list of names"),
    ({"phases": {"x": "quartz"}}, "phase ids must be integers in 1..255"),
])
def test_write_volume_bad_keywords_are_one_line(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(VolmlaError, match=message):
        write_volume(np.zeros((4, 4, 4), np.uint8), tmp_path / "o.zarr", voxel_size=1.0, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "o.zarr").exists()


def test_open_volume_level_must_be_an_integer(tmp_path: Path) -> None:
    write_volume(np.zeros((4, 4, 4), np.uint8), tmp_path / "o.zarr", voxel_size=1.0)
    with pytest.raises(VolmlaError, match="level must lie in 0..0, got '0'"):
        open_volume(tmp_path / "o.zarr", level="0")  # type: ignore[arg-type]
