"""Parquet tables describe themselves: field units, voxel size, phases, version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import volmla
from volmla import measure
from volmla.io.parquet import column_units, read_table_metadata, write_table


def test_units_of_the_contract_columns() -> None:
    cols = measure.particle_columns(["quartz", "albite"])
    units = {c: u for c, (u, _) in column_units(cols).items()}
    assert set(units) == set(cols)  # every particle column is described
    assert units["centroid_z"] == units["esd_um"] == "um"
    assert units["bbox_x0"] == units["bbox_x1"] == units["volume_voxels"] == units["vox_quartz"] == "voxel"
    assert units["volume_um3"] == "um^3" and units["surface_um2"] == "um^2"
    assert units["grade_albite"] == units["sphericity"] == "1"
    assert "exclusive" in column_units(["bbox_z1"])["bbox_z1"][1]
    assert set(column_units(measure.GRAIN_COLUMNS)) == set(measure.GRAIN_COLUMNS)
    assert column_units(["mystery"]) == {}
    assert column_units(["lo", "x"], units={"lo": "um"}) == {"lo": ("um", "")}


def test_write_table_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"particle_id": np.arange(1, 6, dtype=np.uint64), "esd_um": rng.random(5),
                          "bbox_z0": np.arange(5), "n_grains": pd.array([1, None, 2, 3, 1], dtype="Int64"),
                          "mystery": ["a"] * 5})
    out = write_table(frame, tmp_path / "t.parquet", table="particles", voxel_size_um=(2.0, 1.0, 1.0),
                      phases={2: "albite", 1: "quartz"}, inputs={"phases": "p.zarr"}, units={"mystery": "kg"})
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)  # rows and dtypes unchanged
    meta = read_table_metadata(out)
    assert meta["table"] == "particles" and meta["volmla_version"] == volmla.__version__
    assert meta["voxel_size_um"] == [2.0, 1.0, 1.0] and meta["phases"] == {"1": "quartz", "2": "albite"}
    assert meta["inputs"] == {"phases": "p.zarr"}
    assert meta["units"] == {"particle_id": "", "esd_um": "um", "bbox_z0": "voxel", "n_grains": "1", "mystery": "kg"}
    schema = pq.read_schema(out)
    assert schema.field("esd_um").metadata[b"unit"] == b"um"
    assert schema.field("bbox_z0").metadata[b"unit"] == b"voxel"
    assert b"equivalent sphere" in schema.field("esd_um").metadata[b"description"]
    assert b"pandas" in schema.metadata  # pandas' own metadata kept
    assert read_table_metadata(_plain(tmp_path)) == {}


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from volmla.synthetic import write_phantom

    return write_phantom(tmp_path_factory.mktemp("phantom"), shape=(32, 32, 32), seed=3, chunks=16,
                         esd_range=(8.0, 12.0))


def test_analyse_writes_described_tables(volumes: dict[str, Path], tmp_path: Path) -> None:
    from volmla import liberation as lib
    from volmla.io import open_volume

    ph, lab = open_volume(volumes["phases"]), open_volume(volumes["particles"])
    summary = lib.analyse(ph, lab, out_dir=tmp_path / "a", section_step=None, pieces=4, n_boot=0,
                          derive_grains=False)
    particles = read_table_metadata(tmp_path / "a" / "particles.parquet")
    assert particles["table"] == "particles"
    assert particles["voxel_size_um"] == summary["voxel_size_um"]
    assert list(particles["phases"].values()) == summary["phases"]
    assert particles["units"]["centroid_x"] == "um" and particles["units"]["bbox_y1"] == "voxel"
    grains = read_table_metadata(tmp_path / "a" / "grains.parquet")
    assert grains["table"] == "grains" and grains["units"]["volume_um3"] == "um^3"
    rep = read_table_metadata(tmp_path / "a" / "representativeness.parquet")
    assert rep["units"]["lo"] == "um" and rep["units"]["whole"] == "1"
    contacts = read_table_metadata(tmp_path / "a" / "contacts.parquet")
    assert contacts["units"]["area_um2"] == "um^2"
    # the data contract is unchanged
    assert list(pd.read_parquet(tmp_path / "a" / "particles.parquet").columns) == \
        measure.particle_columns(summary["phases"])
