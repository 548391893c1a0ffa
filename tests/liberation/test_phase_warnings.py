"""A phase absent from the scan is a warning in summary.json and the report, never a silent zero (issue 17);
so are particles too small against the voxel for the figures to be sure."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from volmla.liberation import analyse, liberation_summary
from volmla.liberation.report import executive_summary
from volmla.liberation.summary import phase_warnings, size_warnings


def _table() -> pd.DataFrame:
    return pd.DataFrame({"particle_id": [1, 2, 3], "vox_qz": [10, 5, 8], "vox_fsp": [0, 5, 0], "vox_py": [0, 0, 0],
                         "vox_mag": [0, 0, 4], "volume_voxels": [10, 10, 12], "esd_um": [2.0, 3.0, 2.5],
                         "volume_um3": [10.0, 10.0, 12.0], "touches_border": [False, False, True]})


def test_phase_warnings_name_the_absent_and_the_border_only_phases(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="volmla.liberation.summary"):
        out = phase_warnings(_table(), phase_names=["qz", "fsp", "py", "mag"])
    assert out == ["phase py: no voxels found",
                   "phase mag: found only in particles cut by the volume border (excluded)"]
    assert [r.getMessage() for r in caplog.records] == out
    # with the border particles analysed, mag is found
    assert phase_warnings(_table(), phase_names=["qz", "fsp", "py", "mag"], include_border=True) == [
        "phase py: no voxels found"]
    assert phase_warnings(_table(), phase_names=["qz", "fsp"]) == []


def test_summary_carries_them_and_the_report_lists_each_once() -> None:
    summary = liberation_summary(_table(), phase_names=["qz", "fsp", "py", "mag"])
    assert summary["warnings"][:2] == ["phase py: no voxels found",
                                       "phase mag: found only in particles cut by the volume border (excluded)"]
    assert summary["warnings"][2].startswith("particles are small against the voxel")  # 10-voxel particles
    assert summary["modal_mineralogy"]["py"] == 0.0  # the zero the warning qualifies
    warnings = executive_summary(summary)["warnings"]
    assert warnings[:3] == summary["warnings"]
    assert not any(w.startswith(("py ", "mag ")) for w in warnings)  # not said twice in other words
    assert "no free particle of fsp: its liberation degree is 0" in warnings  # the others still there


def test_analyse_writes_the_warning_into_summary_json_and_the_report(tmp_path: Path) -> None:
    phases = np.zeros((12, 12, 12), np.uint8)
    phases[2:6, 2:6, 2:6] = 1
    phases[6:11, 6:11, 6:11] = 2  # phase 3 (py) named, never found
    particles = np.zeros_like(phases, np.uint32)
    particles[2:6, 2:6, 2:6], particles[6:11, 6:11, 6:11] = 1, 2
    named = xr.DataArray(phases, dims=("z", "y", "x"), attrs={"phases": {1: "qz", 2: "fsp", 3: "py"}})
    summary = analyse(named, particles, out_dir=tmp_path / "lib", section_step=None, pieces=None, n_boot=0,
                      voxel_size=1.0)
    assert summary["warnings"][0] == "phase py: no voxels found"
    written = json.loads((tmp_path / "lib" / "summary.json").read_text())
    assert written["warnings"] == summary["warnings"]
    assert "few particles (2 analysed): intervals are wide" in written["warnings"]  # the report's own, too
    html = (tmp_path / "lib" / "report.html").read_text()
    assert "phase py: no voxels found" in html and html.count("few particles (2 analysed)") == 1


def test_tables_name_the_volumes_they_were_measured_from(tmp_path: Path) -> None:
    from volmla.io import open_volume, write_volume
    from volmla.io.parquet import read_table_metadata

    phases = np.zeros((12, 12, 12), np.uint8)
    phases[2:6, 2:6, 2:6] = 1
    ph = write_volume(phases, tmp_path / "ph.zarr", voxel_size=1.0, kind="phases", phases=["qz"])
    pa = write_volume(phases.astype(np.uint32), tmp_path / "pa.zarr", voxel_size=1.0, kind="labels")
    analyse(open_volume(ph), open_volume(pa), out_dir=tmp_path / "lib", section_step=None, pieces=None, n_boot=0)
    meta = read_table_metadata(tmp_path / "lib" / "particles.parquet")
    assert meta["inputs"] == {"phases": str(ph), "particles": str(pa)}


def test_small_particles_are_named_by_the_volume_weighted_median_radius(caplog: pytest.LogCaptureFixture) -> None:
    """LD is volume-weighted: many small particles beside a few large ones that hold most
    of the solid draw no warning; particles of the hard phantoms' size do."""
    small = 4.0 / 3.0 * np.pi * 5.0**3  # equivalent radius 5 voxels
    large = 4.0 / 3.0 * np.pi * 9.0**3
    with caplog.at_level(logging.WARNING, logger="volmla.liberation.summary"):
        out = size_warnings(pd.DataFrame({"volume_voxels": [small] * 20 + [large] * 10}))
    assert out == [] and not caplog.records  # 10 x 3,054 voxels outweigh 20 x 524
    out = size_warnings(pd.DataFrame({"volume_voxels": [small] * 20 + [large] * 2}))
    assert len(out) == 1 and "equivalent radius below 5.0 voxels" in out[0]
    assert caplog.records and caplog.records[-1].getMessage() == out[0]
    assert size_warnings(pd.DataFrame({"volume_voxels": [7.0**3 * 4.19] * 3})) == []  # at the bar: none
    assert size_warnings(pd.DataFrame({"volume_voxels": pd.Series([], dtype=float)})) == []
