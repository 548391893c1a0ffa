"""Stages hand back xarray DataArrays on their input's grid (issue 19: a Python API that composes)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from volmla.engine.blocks import DIMS, as_dataarray
from volmla.io import open_volume, write_volume
from volmla.particles import label, label_grains, label_particles
from volmla.segment import segment_phases
from volmla.synthetic import phantom


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.DataArray, xr.DataArray]:
    """A phantom written with an anisotropic voxel size and read back: (phases, intensity)."""
    root = tmp_path_factory.mktemp("scan")
    ph = phantom(shape=(40, 48, 48), seed=2)
    write_volume(ph.phases, root / "phases.zarr", voxel_size=(2.0, 1.0, 1.0), chunks=(16, 24, 24), kind="phases",
                 phases=["quartz", "feldspar", "pyrite"])
    write_volume(ph.intensity, root / "ct.zarr", voxel_size=(2.0, 1.0, 1.0), chunks=(16, 24, 24))
    return open_volume(root / "phases.zarr"), open_volume(root / "ct.zarr")


def _same_grid(out: xr.DataArray, like: xr.DataArray) -> None:
    assert isinstance(out, xr.DataArray) and isinstance(out.data, da.Array)
    assert out.dims == DIMS and out.shape == like.shape
    assert out.chunks == like.chunks
    for d in DIMS:
        np.testing.assert_array_equal(out[d].values, like[d].values)
    assert tuple(out.attrs["voxel_size_um"]) == tuple(like.attrs["voxel_size_um"])
    assert out.attrs["unit"] == "micrometer"


def test_numpy_input_gets_voxel_index_coordinates_and_no_invented_voxel_size() -> None:
    out = as_dataarray(da.zeros((2, 3, 4), chunks=2), like=np.zeros((2, 3, 4)), name="x", kind="labels")
    assert out.attrs["unit"] == "voxel" and "voxel_size_um" not in out.attrs
    assert out.x.values.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_cropped_volume_keeps_its_own_coordinates() -> None:
    src = xr.DataArray(np.zeros((6, 6, 6)), dims=DIMS, coords={d: np.arange(6) * 0.5 for d in DIMS},
                       attrs={"voxel_size_um": (0.5, 0.5, 0.5), "provenance": [{"step": "ingest"}]})
    crop = src[2:5, 1:, :3]
    out = as_dataarray(da.ones(crop.shape, chunks=2), like=crop, name="p", kind="labels", record={"step": "p"})
    assert out.z.values.tolist() == [1.0, 1.5, 2.0]
    assert out.attrs["provenance"] == [{"step": "ingest"}, {"step": "p"}]
    assert src.attrs["provenance"] == [{"step": "ingest"}]  # the input's list is not mutated


def test_particles_and_grains_come_back_on_the_input_grid(scan: tuple[xr.DataArray, xr.DataArray]) -> None:
    phases, _ = scan
    found = label_particles(phases, threshold=None)
    _same_grid(found.labels, phases)
    assert found.labels.name == "particles" and found.labels.attrs["kind"] == "labels"
    assert found.labels.attrs["provenance"][-1]["step"] == "particles"
    assert int(found.labels.max()) == found.count
    grains = label_grains(found.labels, phases)
    _same_grid(grains.labels, phases)
    assert grains.labels.name == "grains" and int(grains.labels.max()) == grains.count
    # labels align with the volume they came from, so xarray arithmetic composes
    inside = int((phases.where(found.labels > 0, 0) > 0).sum())
    assert inside == int((np.asarray(phases) > 0).sum())


def test_labelling_a_mask_keeps_its_grid(scan: tuple[xr.DataArray, xr.DataArray]) -> None:
    phases, _ = scan
    out = label(phases > 0, connectivity=6)
    _same_grid(out.labels, phases)


def test_segmentation_returns_named_phases_on_the_input_grid(scan: tuple[xr.DataArray, xr.DataArray]) -> None:
    _, ct = scan
    seg = segment_phases(ct, method="threshold", classes=3)
    _same_grid(seg.phases, ct)
    assert seg.phases.attrs["kind"] == "phases"
    assert seg.phases.attrs["phases"] == {1: "class1", 2: "class2"}
    assert seg.phases.attrs["provenance"][-1] == {"step": "segment", "method": "threshold", "model": None}


def test_a_written_stage_result_keeps_voxel_size_and_lineage(tmp_path, scan) -> None:
    phases, _ = scan
    found = label_particles(phases, threshold=None)
    write_volume(found.labels, tmp_path / "particles.zarr", kind="labels")
    back = open_volume(tmp_path / "particles.zarr")
    assert tuple(back.attrs["voxel_size_um"]) == (2.0, 1.0, 1.0)
    assert [s.get("step") for s in back.attrs["provenance"]][-1] == "particles"
    np.testing.assert_array_equal(back.values, found.labels.values)


def test_preprocess_returns_a_dataarray_for_any_input(scan: tuple[xr.DataArray, xr.DataArray]) -> None:
    from volmla.preprocess import preprocess

    _, ct = scan
    out = preprocess(ct, ["gaussian:sigma=1"])
    _same_grid(out, ct)
    plain = preprocess(np.zeros((6, 6, 6), np.uint16), ["gaussian:sigma=1"])
    assert isinstance(plain, xr.DataArray) and plain.attrs["unit"] == "voxel"
    assert plain.z.values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
