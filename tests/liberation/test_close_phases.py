"""Phases closer in grey than the noise resolves per voxel are named by the report (issue 17):
a note, and a warning where the particles are small as well (their liberation degrees then
carry a bias the intervals do not include)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from volmla.liberation import analyse
from volmla.liberation.report import executive_summary
from volmla.liberation.summary import (
    CLOSE_CONTRAST,
    SPLIT_SE,
    close_phases,
    recorded_levels,
    recorded_psf,
)
from volmla.measure.fractions import PhaseLevels

NAMES = {1: "quartz", 2: "feldspar", 3: "pyrite"}


def test_close_pairs_closest_first_and_never_the_void() -> None:
    sigma = 1000.0
    lv = PhaseLevels({0: 22000.0, 1: 22000.0, 2: 22500.0, 3: 23100.0, 4: 46000.0}, sigma, {})
    pairs = close_phases(lv, {**NAMES, 4: "gold"})
    # quartz-feldspar 0.5, feldspar-pyrite 0.6, quartz-pyrite 1.1 (< 1.2); gold far away; the void is no phase
    assert pairs == [{"phases": ["quartz", "feldspar"], "contrast_sigma": 0.5},
                     {"phases": ["feldspar", "pyrite"], "contrast_sigma": 0.6},
                     {"phases": ["quartz", "pyrite"], "contrast_sigma": 1.1}]
    # at the bar: none; phases not reported: none; no noise or no levels: none
    assert close_phases(PhaseLevels({1: 0.0, 2: CLOSE_CONTRAST * sigma}, sigma, {}), NAMES) == []
    assert close_phases(lv, {1: "quartz", 4: "gold"}) == []
    assert close_phases(PhaseLevels({1: 0.0, 2: 0.0}, 0.0, {}), NAMES) == []
    assert close_phases(None, NAMES) == []


def test_a_close_pair_carries_the_standard_error_of_the_grey_that_splits_it() -> None:
    lv = PhaseLevels({1: 22000.0, 2: 23000.0, 3: 46000.0}, 1000.0, {1: 100, 2: 400, 3: 5})
    (pair,) = close_phases(lv, NAMES)
    assert pair["voxels"] == [100, 400]
    assert pair["split_se_sigma"] == pytest.approx(0.5 * np.sqrt(1 / 100 + 1 / 400), abs=1e-3)
    # a level without its count (a record from before counts were kept): no error claimed
    assert "split_se_sigma" not in close_phases(lv._replace(voxels={1: 100}), NAMES)[0]


def _recorded(*records: dict) -> xr.DataArray:
    return xr.DataArray(np.zeros((2, 2, 2), np.uint8), dims=("z", "y", "x"), attrs={"provenance": list(records)})


def test_the_levels_come_from_the_latest_segment_record() -> None:
    grey = {"noise_sigma": 1200.0, "levels": {"void": 9000.0, "quartz": 19000.0, "feldspar": 20000.0}}
    fitted = {"step": "segment", "method": "regions", "grey_levels": grey}
    lv = recorded_levels(_recorded({"step": "ingest"}, fitted), NAMES)
    assert lv is not None and lv.levels == {0: 9000.0, 1: 19000.0, 2: 20000.0} and lv.noise_sigma == 1200.0
    assert lv.voxels == {}
    counted = {**fitted, "grey_levels": {**grey, "voxels": {"void": 900, "quartz": 80, "feldspar": 150}}}
    assert recorded_levels(_recorded(counted), NAMES).voxels == {0: 900, 1: 80, 2: 150}
    # a later segmentation that fitted none (a forest over the same scan): its phases are not these levels
    assert recorded_levels(_recorded(fitted, {"step": "segment", "method": "rf"}), NAMES) is None
    # names the report does not use are left out; a malformed record gives no levels, not an error
    assert recorded_levels(_recorded(fitted), {1: "quartz"}).levels == {0: 9000.0, 1: 19000.0}
    bad = {"step": "segment", "grey_levels": {"levels": {"quartz": "x"}, "noise_sigma": 1.0}}
    assert recorded_levels(_recorded(bad), NAMES) is None
    assert recorded_levels(np.zeros(3), NAMES) is None


def test_the_psf_comes_from_the_latest_segment_record() -> None:
    fitted = {"step": "segment", "method": "regions",
              "grey_levels": {"noise_sigma": 1.0, "levels": {"void": 0.0}, "psf_sigma": 0.7, "psf_estimated": True}}
    assert recorded_psf(_recorded({"step": "ingest"}, fitted)) == {"sigma": 0.7, "estimated": True}
    given = {**fitted, "grey_levels": {**fitted["grey_levels"], "psf_sigma": 0.6, "psf_estimated": False}}
    assert recorded_psf(_recorded(fitted, given)) == {"sigma": 0.6, "estimated": False}
    # none recorded (a record from before the PSF was kept, a forest after it, no provenance, a bad value)
    assert recorded_psf(_recorded({"step": "segment", "grey_levels": {"noise_sigma": 1.0}})) is None
    assert recorded_psf(_recorded(fitted, {"step": "segment", "method": "rf"})) is None
    assert recorded_psf(np.zeros(3)) is None
    assert recorded_psf(_recorded({"step": "segment", "grey_levels": {"psf_sigma": "wide"}})) is None


def _summary(warnings: list[str]) -> dict:
    return {"n_particles": 100, "n_particles_total": 120, "n_border": 20, "include_border": False,
            "phase_names": ["quartz", "feldspar"], "modal_mineralogy": {"quartz": 0.6, "feldspar": 0.4},
            "liberation_degree": {"quartz": 0.5, "feldspar": 0.4}, "warnings": warnings,
            "close_phases": [{"phases": ["quartz", "feldspar"], "contrast_sigma": 0.53}]}


def test_a_close_pair_is_a_note_and_with_small_particles_a_warning() -> None:
    plain = executive_summary(_summary([]))
    said = "quartz and feldspar lie 0.5 noise sigmas apart in grey: they are told apart over grains, not voxels"
    assert any(n.startswith(said) for n in plain["notes"]) and not any(said in w for w in plain["warnings"])
    small = executive_summary(_summary(["particles are small against the voxel: half the solid lies in ..."]))
    line = [w for w in small["warnings"] if w.startswith(said)]
    assert len(line) == 1 and "may be off by 0.1 or more, a bias the intervals (sampling only) do not include" in line[0]
    assert not any(n.startswith(said) for n in small["notes"])


def test_the_report_names_the_psf_where_phases_are_told_apart_over_grains() -> None:
    summary = {**_summary([]), "partial_volume_psf": {"sigma": 0.7, "estimated": True}}
    lines = [n for n in executive_summary(summary)["notes"] if "PSF sigma of 0.70 voxels" in n]
    assert len(lines) == 1 and "estimated from the particles' edges" in lines[0] and "--psf-sigma" in lines[0]
    given = {**summary, "partial_volume_psf": {"sigma": 0.6, "estimated": False}}
    assert any("0.60 voxels (as given)" in n for n in executive_summary(given)["notes"])
    # no close pair, or no PSF recorded: nothing to say
    assert not any("PSF" in n for n in executive_summary({**summary, "close_phases": []})["notes"])
    assert not any("PSF" in n for n in executive_summary({**summary, "partial_volume_psf": None})["notes"])


@pytest.mark.parametrize(("se", "warned"), [(SPLIT_SE, True), (SPLIT_SE - 0.001, False), (None, False)])
def test_levels_on_few_labelled_voxels_are_a_warning(se: float | None, warned: bool) -> None:
    summary = _summary([])
    if se is not None:
        summary["close_phases"][0].update({"voxels": [73, 163], "split_se_sigma": se})
    lines = [w for w in executive_summary(summary)["warnings"] if w.startswith("the grey levels of quartz and")]
    assert len(lines) == int(warned)
    if warned:
        assert "rest on 73 and 163 pure labelled voxels" in lines[0] and "label more or larger planes" in lines[0]


@pytest.mark.parametrize(("level", "close"), [("hard", True), ("easy", False)])
def test_phases_by_region_record_their_levels_and_the_report_names_the_pair(tmp_path: Path, level: str,
                                                                          close: bool) -> None:
    """Phases by region record the levels they fit on the sparse labels (cupping taken out):
    the hard phantom's quartz and feldspar (1 noise sigma set, small particles) draw the
    warning, the easy one's (1.5) nothing."""
    from volmla.segment import segment_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=48, seed=0, level=level)
    labels = np.zeros(ore.phases.shape, np.uint8)
    for z in (12, 24, 36):
        labels[z] = ore.phases[z] + 1
    seg = segment_phases(ore.intensity, method="regions", labels=labels, particles=ore.particles,
                         phase_names=list(NAMES.values()))
    record = seg.phases.attrs["provenance"][-1]["grey_levels"]
    assert record["levels"].keys() == record["voxels"].keys() == {"void", *NAMES.values()}
    if close:  # the PSF estimated once, before the region pass, gives the phases region_phases gives alone
        from volmla.segment.pooled import region_phases

        np.testing.assert_array_equal(seg.phases.values, region_phases(ore.intensity, ore.particles, labels).compute())
    summary = analyse(seg.phases, ore.particles, out_dir=tmp_path / "lib", intensity=ore.intensity,
                      section_step=None, pieces=None, n_boot=0, voxel_size=1.0)
    written = json.loads((tmp_path / "lib" / "summary.json").read_text())
    assert [p["phases"] for p in written["close_phases"]] == ([["quartz", "feldspar"]] if close else [])
    assert set(written["grey_levels"]["levels"]) == {"void", *NAMES.values()}
    assert written["partial_volume_psf"] == {"sigma": record["psf_sigma"], "estimated": True}
    flagged = [w for w in written["warnings"] if w.startswith("quartz and feldspar lie")]
    assert len(flagged) == int(close) and written["warnings"] == summary["warnings"]
    few = [w for w in written["warnings"] if w.startswith("the grey levels of quartz and feldspar rest on")]
    # three planes of a 48^3 phantom: a few dozen pure voxels per phase, far too few
    assert len(few) == int(close) and (not close or written["close_phases"][0]["split_se_sigma"] >= SPLIT_SE)
    if close:
        assert flagged[0] in (tmp_path / "lib" / "report.html").read_text()
