"""Tests for volmla.ingest: readers, voxel sizes, validation, laziness, memory, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile

import volmla.ingest as ingest_mod
import volmla.ingest.readers as readers_mod
from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.ingest import ingest, load, open_input
from volmla.io import open_volume

SHAPE = (11, 23, 19)
DTYPES = ("uint8", "uint16", "int16", "uint32", "float32")


def _volume(rng: np.random.Generator, dtype: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype) * 1e3
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _slices(folder: Path, vol: np.ndarray, *, name: str = "slice_{}.tif", **kwargs: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, plane in enumerate(vol):
        tifffile.imwrite(folder / name.format(i), plane, **kwargs)
    return folder


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
def test_folder_round_trip_bit_exact(tmp_path: Path, rng: np.random.Generator, dtype: str) -> None:
    vol = _volume(rng, dtype)
    folder = _slices(tmp_path / "slices", vol)
    out = ingest(folder, tmp_path / "out.zarr", voxel_size=2.5, chunks=7)
    got = open_volume(out)
    assert got.dtype == vol.dtype
    np.testing.assert_array_equal(got.values, vol)
    assert got.attrs["voxel_size_um"] == (2.5, 2.5, 2.5)
    assert got.data.chunksize == (7, 7, 7)


def test_natural_sort_and_glob(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = _volume(rng, "uint16", (12, 8, 9))
    folder = _slices(tmp_path / "s", vol, name="img_{}.tiff")  # img_2 < img_10 naturally
    tifffile.imwrite(folder / "preview.png.tif", np.zeros((3, 3), np.uint16))  # excluded by glob
    (folder / "notes.txt").write_text("not a slice")
    src = open_input(folder, glob="img_*.tiff")
    assert [Path(p).name for p in src.paths][:3] == ["img_0.tiff", "img_1.tiff", "img_2.tiff"]
    np.testing.assert_array_equal(src.data.compute(), vol)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "zlib"},
        {"bigtiff": True, "byteorder": ">"},
        {"tile": (16, 16), "compression": "zlib"},
        {},
    ],
    ids=["zlib", "bigtiff-big-endian", "tiled", "plain"],
)
def test_multipage_tiff(tmp_path: Path, rng: np.random.Generator, kwargs: dict) -> None:
    vol = _volume(rng, "uint16", (9, 32, 48))
    tifffile.imwrite(tmp_path / "stack.tif", vol, **kwargs)
    src = open_input(tmp_path / "stack.tif", chunks=(4, 10, 20))
    assert src.reader == "tiff"
    np.testing.assert_array_equal(src.data.compute(), vol)


def test_voxel_size_from_imagej_ome_and_resolution_tags(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = _volume(rng, "uint16", (5, 10, 12))
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 0.75, "unit": "um"})
    tifffile.imwrite(tmp_path / "ij_mm.tif", vol, imagej=True, resolution=(1 / 0.002, 1 / 0.002),
                     metadata={"spacing": 0.003, "unit": "mm"})
    tifffile.imwrite(tmp_path / "x.ome.tif", vol, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.3,
                               "PhysicalSizeZ": 500.0, "PhysicalSizeZUnit": "nm"})
    tifffile.imwrite(tmp_path / "res.tif", vol, resolution=(1e4 / 2.5, 1e4 / 2.5), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "dpi.tif", vol, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "none.tif", vol)
    cases = {
        "ij.tif": ((0.75, 0.5, 0.5), "imagej"),
        "ij_mm.tif": ((3.0, 2.0, 2.0), "imagej"),
        "x.ome.tif": ((0.5, 0.3, 0.25), "ome"),
        "res.tif": ((2.5, 2.5, 2.5), "resolution"),
        "dpi.tif": (None, "none"),
        "none.tif": (None, "none"),
    }
    for name, (expected, source) in cases.items():
        src = open_input(tmp_path / name)
        if expected is None:
            assert src.voxel_size is None, name
        else:
            np.testing.assert_allclose(src.voxel_size, expected, rtol=1e-9, err_msg=name)
        assert source in src.voxel_size_source, name
    got = load(tmp_path / "ij.tif")
    assert got.attrs["voxel_size_um"] == pytest.approx((0.75, 0.5, 0.5))
    assert got.attrs["provenance"][0]["voxel_size_source"].startswith("imagej")
    assert load(tmp_path / "ij.tif", voxel_size=[3, 2, 1]).attrs["voxel_size_um"] == (3.0, 2.0, 1.0)
    with pytest.raises(VolmlaError, match="no voxel size"):
        load(tmp_path / "dpi.tif")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz"])
def test_itk_formats(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    import SimpleITK as sitk

    vol = _volume(rng, "int16", (7, 13, 10))
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.002, 0.002, 0.004))  # x, y, z in millimetres
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    src = open_input(tmp_path / f"v{suffix}", chunks=(3, 5, 4))
    assert src.reader == "itk" and src.data.dtype == np.int16
    np.testing.assert_array_equal(src.data.compute(), vol)
    assert src.voxel_size == pytest.approx((4.0, 2.0, 2.0))

    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "unset.mha"))  # spacing 1 = unset
    with pytest.raises(VolmlaError, match="no voxel size"):
        load(tmp_path / "unset.mha")


def test_raw_big_endian(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = _volume(rng, "float32", (6, 9, 5))
    vol.astype(">f4").tofile(tmp_path / "v.raw")
    out = ingest(tmp_path / "v.raw", tmp_path / "v.zarr", shape=vol.shape, dtype="float32",
                 byteorder="big", voxel_size=1.5, chunks=4)
    got = open_volume(out)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.values, vol)
    step = got.attrs["provenance"][0]
    assert step["reader"] == "raw" and step["byteorder"] == "big" and step["shape"] == list(vol.shape)


# ----------------------------------------------------------------------------- laziness


def test_each_task_reads_only_its_own_block(tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = _volume(rng, "uint16", (20, 16, 16))
    folder = _slices(tmp_path / "s", vol)
    calls: list[tuple[str, slice, slice]] = []
    original = readers_mod._read_plane

    def counting(plane, ys, xs, width, handles):  # type: ignore[no-untyped-def]
        calls.append((Path(plane.path).name, ys, xs))
        return original(plane, ys, xs, width, handles)

    monkeypatch.setattr(readers_mod, "_read_plane", counting)
    vol_lazy = load(folder, voxel_size=1.0, chunks=8)
    assert calls == []  # header scan only
    block = vol_lazy.data.blocks[1, 1, 0].compute()
    np.testing.assert_array_equal(block, vol[8:16, 8:16, 0:8])
    assert sorted(c[0] for c in calls) == sorted(f"slice_{z}.tif" for z in range(8, 16))
    assert all(c[1] == slice(8, 16) and c[2] == slice(0, 8) for c in calls)
    # the graph holds the reader object, not pixels
    graph_bytes = sum(v.nbytes for v in dict(vol_lazy.data.dask).values() if isinstance(v, np.ndarray))
    assert graph_bytes < vol.nbytes / 10


# ----------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path, rng: np.random.Generator) -> dict[str, tuple[list[str], str]]:
    vol = _volume(rng, "uint16", (5, 12, 10))
    (tmp_path / "empty").mkdir()
    _slices(tmp_path / "pngs", vol, name="s{}.tif")
    ragged = _slices(tmp_path / "ragged", vol)
    tifffile.imwrite(ragged / "slice_3.tif", np.zeros((12, 11), np.uint16))
    tifffile.imwrite(tmp_path / "int8.tif", vol.astype(np.int8))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((12, 10, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros((3, 2, 12, 10), np.uint16), imagej=True,
                     metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "cut.tif", vol)
    data = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 300])  # the last IFD is lost
    (tmp_path / "half.tif").write_bytes(data[: len(data) // 2])  # pixel data is lost
    cut_folder = _slices(tmp_path / "cutfolder", vol)
    raw = (cut_folder / "slice_2.tif").read_bytes()
    (cut_folder / "slice_2.tif").write_bytes(raw[:-50])
    (tmp_path / "x.dat").write_bytes(b"\0" * 64)
    ok = str(tmp_path / "pngs")
    return {
        "missing": ([str(tmp_path / "nope"), "--voxel-size", "1"], "does not exist"),
        "empty folder": ([str(tmp_path / "empty"), "--voxel-size", "1"], "no files matching"),
        "glob matches nothing": ([ok, "--glob", "*.png", "--voxel-size", "1"], "no files matching"),
        "different shapes": ([str(ragged), "--voxel-size", "1"], "all slices must share one shape"),
        "truncated stack": ([str(tmp_path / "cut.tif"), "--voxel-size", "1"], "truncated"),
        "half a stack": ([str(tmp_path / "half.tif"), "--voxel-size", "1"], "truncated"),
        "truncated slice": ([str(cut_folder), "--voxel-size", "1"], "truncated"),
        "unsupported dtype": ([str(tmp_path / "int8.tif"), "--voxel-size", "1"], "unsupported dtype int8"),
        "rgb": ([str(tmp_path / "rgb.tif"), "--voxel-size", "1"], "grey-scale"),
        "multi-channel hyperstack": ([str(tmp_path / "hyper.tif"), "--voxel-size", "1"], "4-D stack"),
        "no voxel size": ([ok], "no voxel size"),
        "negative voxel size": ([ok, "--voxel-size", "-2"], "positive"),
        "bad voxel size": ([ok, "--voxel-size", "1,2"], "one number or three"),
        "unknown format": ([str(tmp_path / "x.dat"), "--voxel-size", "1"], "unknown format"),
        "raw without dtype": ([str(tmp_path / "x.dat"), "--shape", "1", "4", "8", "--voxel-size", "1"], "--dtype"),
        "raw size": ([str(tmp_path / "x.dat"), "--shape", "1", "4", "4", "--dtype", "uint16", "--voxel-size", "1"], "needs 32"),
        "several without stitch": ([ok, ok, "--voxel-size", "1"], "--stitch"),
        "stitch without overlap": ([ok, ok, "--stitch", "--voxel-size", "1"], "--overlap"),
        "overlap without stitch": ([ok, "--overlap", "5", "--voxel-size", "1"],
                                   "--overlap 5 is for stitching several stacks: pass --stitch, or leave --overlap out"),
        "bad chunks": ([ok, "--chunks", "0", "--voxel-size", "1"], "--chunks"),
    }



@pytest.mark.parametrize("option", ["overlap", "search"])
def test_stitching_options_without_stitch_are_refused(tmp_path: Path, rng: np.random.Generator, option: str) -> None:
    """overlap= and search= were ignored without stitch=True: the volume was one stack as given."""
    folder = _slices(tmp_path / "slices", _volume(rng, "uint8", (3, 4, 5)))
    with pytest.raises(VolmlaError, match=f"{option}=5 is for stitching several stacks: pass stitch=True"):
        load(folder, voxel_size=1.0, **{option: 5})

def test_bad_input_is_one_line_exit_2_and_keeps_outputs(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "out.zarr"
    ingest(_slices(tmp_path / "good", _volume(rng, "uint8", (3, 4, 5))), existing, voxel_size=1.0)
    before = _tree(existing)
    capsys.readouterr()
    for case, (args, message) in _bad_inputs(tmp_path, rng).items():
        code = main(["ingest", *args, "-o", str(existing), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2, case
        assert err.startswith("volmla: error: ") and err.count("\n") == 1, (case, err)
        assert message in err, (case, err)
        assert _tree(existing) == before, case  # nothing existing deleted

    code = main(["ingest", str(tmp_path / "good"), "--voxel-size", "1", "-o", str(existing)])
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert _tree(existing) == before


def test_failure_mid_write_leaves_incomplete_output_that_resumes(tmp_path: Path, rng: np.random.Generator) -> None:
    vol = _volume(rng, "uint16", (24, 10, 12))
    folder = _slices(tmp_path / "s", vol)
    out = tmp_path / "out.zarr"
    lazy = load(folder, voxel_size=2.0, chunks=6)
    victim = folder / "slice_20.tif"
    kept = victim.read_bytes()
    victim.unlink()  # vanishes after the header scan, before the write
    # synchronous: no task of the failed run is still writing when the rerun starts
    with dask.config.set(scheduler="synchronous"), pytest.raises(VolmlaError, match="incomplete"):
        ingest_mod.save(lazy, out)
    with pytest.raises(VolmlaError, match="incomplete"):
        open_volume(out)
    victim.write_bytes(kept)
    ingest(folder, out, voxel_size=2.0, chunks=6)  # same job: resumes
    np.testing.assert_array_equal(open_volume(out).values, vol)


def test_replaced_folder_is_not_resumed_into_the_old_output(tmp_path: Path, rng: np.random.Generator) -> None:
    """A folder of slices replaced between an interrupted write and the rerun: refused, never mixed."""
    vol = _volume(rng, "uint16", (24, 10, 12))
    folder = _slices(tmp_path / "s", vol)
    out = tmp_path / "out.zarr"
    lazy = load(folder, voxel_size=2.0, chunks=6)
    (folder / "slice_20.tif").unlink()
    with dask.config.set(scheduler="synchronous"), pytest.raises(VolmlaError, match="incomplete"):
        ingest_mod.save(lazy, out)
    other = _volume(rng, "uint16", (24, 10, 12))
    _slices(folder, other)  # another scan of the same size under the same names
    before = _tree(out)
    with pytest.raises(VolmlaError, match=r"overwrite=True.*it was started from other input content than .*s holds now"):
        ingest(folder, out, voxel_size=2.0, chunks=6)
    assert _tree(out) == before
    ingest(folder, out, voxel_size=2.0, chunks=6, overwrite=True)
    np.testing.assert_array_equal(open_volume(out).values, other)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def scheduler() -> object:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_cli_ingest_with_levels(tmp_path: Path, rng: np.random.Generator, scheduler: str, capsys: pytest.CaptureFixture[str]) -> None:
    vol = _volume(rng, "uint16", (10, 14, 12))
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 1.0, "unit": "micron"})
    out = tmp_path / "o.zarr"
    code = main(["-q", "--scheduler", scheduler, "ingest", str(tmp_path / "ij.tif"), "-o", str(out),
                 "--chunks", "5", "--levels", "2"])
    assert code == 0, capsys.readouterr().err
    got = open_volume(out)
    np.testing.assert_array_equal(got.values, vol)
    assert got.attrs["voxel_size_um"] == pytest.approx((1.0, 0.5, 0.5))
    assert open_volume(out, level=1).shape == (5, 7, 6)
    capsys.readouterr()
    assert main(["info", "--json", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["levels"] == 2 and record["provenance"][0]["reader"] == "tiff"


# ----------------------------------------------------------------------------- memory


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, tifffile
    from volmla.engine.cluster import peak_rss  # the process's own mark, not its parent's
    from volmla.ingest import ingest
    # warm up: import everything a write needs, so the baseline holds the libraries
    warm = Path(sys.argv[2]).parent / "warm"
    warm.mkdir()
    for z in range(2):
        tifffile.imwrite(warm / f"{z}.tif", np.zeros((3, 4), np.uint16))
    ingest(warm, warm.with_suffix(".zarr"), voxel_size=1.0)
    base = peak_rss()
    ingest(sys.argv[1], sys.argv[2], voxel_size=1.0, chunks=int(sys.argv[3]))
    peak = peak_rss()
    print(json.dumps({"base": base, "peak": peak}))
    """
)


def test_out_of_core_peak_memory(tmp_path: Path) -> None:
    """A 400 MiB volume ingests with a peak RSS growth far below its size.

    8 MiB chunks, Dask's threaded scheduler. Python-level live memory stays at a few
    chunks per thread (the reader's block plus zarr's encode buffers, about 3.5 chunks);
    the allocator roughly doubles that in RSS, still well under half the volume.
    """
    nz, ny, nx = 400, 512, 1024  # 400 MiB of uint16
    folder = tmp_path / "big"
    folder.mkdir()
    ramp = np.arange(ny * nx, dtype=np.uint16).reshape(ny, nx)
    for z in range(nz):
        tifffile.imwrite(folder / f"s{z:04d}.tif", ramp + np.uint16(z))
    size = nz * ny * nx * 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_NUM_WORKERS": "2"}  # as on a 2-core box
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(folder), str(tmp_path / "big.zarr"), "160"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = rss["peak"] - rss["base"]
    assert grown < size / 2, f"peak RSS grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB volume"
    got = open_volume(tmp_path / "big.zarr")
    np.testing.assert_array_equal(got[[0, 399], :3, -3:].values, np.stack([ramp, ramp + np.uint16(399)])[:, :3, -3:])
