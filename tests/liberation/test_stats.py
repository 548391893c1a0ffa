"""Liberation statistics of the particle table: hand-computed tiny cases and the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volmla import liberation as lib
from volmla import measure
from volmla.errors import VolmlaError

NAMES = ["quartz", "feldspar", "pyrite"]


@pytest.fixture(scope="module")
def tiny() -> measure.Tables:
    """A free quartz cube (27 voxels), an intergrown cube (18 quartz over 9 feldspar
    along z) and a pyrite particle on the border."""
    lab = np.zeros((12, 12, 12), np.uint32)
    ph = np.zeros((12, 12, 12), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    ph[2:5, 2:5, 2:5] = 1  # free quartz
    lab[6:9, 6:9, 6:9] = 2
    ph[6:8, 6:9, 6:9] = 1  # 18 quartz
    ph[8:9, 6:9, 6:9] = 2  # 9 feldspar
    lab[0:2, 9:12, 0:2] = 3
    ph[0:2, 9:12, 0:2] = 3  # pyrite, touches the border
    return measure.measure(lab, ph, voxel_size=1.0, phase_names=NAMES)


def test_hand_computed_ld_modal_and_border(tiny: measure.Tables) -> None:
    df = tiny.particles
    assert df.touches_border.tolist() == [False, False, True]
    ld = lib.liberation_degree(df, phase_names=NAMES)
    assert ld["quartz"] == pytest.approx(27 / 45)
    assert ld["feldspar"] == 0.0
    assert np.isnan(ld["pyrite"])  # only on the border: excluded
    ld_all = lib.liberation_degree(df, phase_names=NAMES, include_border=True)
    assert ld_all["pyrite"] == 1.0
    modal = lib.modal_mineralogy(df, phase_names=NAMES, densities=[2.65, 2.6, 5.0])
    assert modal["volume"] == pytest.approx({"quartz": 45 / 54, "feldspar": 9 / 54, "pyrite": 0.0})
    mass = 45 * 2.65 + 9 * 2.6
    assert modal["mass"] == pytest.approx({"quartz": 45 * 2.65 / mass, "feldspar": 9 * 2.6 / mass, "pyrite": 0.0})
    # the threshold is strict and configurable: the intergrown particle is 2/3 quartz
    assert lib.liberation_degree(df, phase_names=NAMES, free_threshold=0.6)["quartz"] == 1.0
    assert lib.liberation_degree(df, phase_names=NAMES, free_threshold=2 / 3)["quartz"] == pytest.approx(27 / 45)


def test_hand_computed_spectrum(tiny: measure.Tables) -> None:
    spec = lib.liberation_spectrum(tiny.particles, phase_names=NAMES)
    q = {(c["grade_lo"], c["grade_hi"]): c["fraction"] for c in spec["quartz"]}
    assert q[(100.0, 100.0)] == pytest.approx(27 / 45)
    assert q[(60.0, 70.0)] == pytest.approx(18 / 45)  # grade 66.7 %
    assert sum(q.values()) == pytest.approx(1.0)
    f = {(c["grade_lo"], c["grade_hi"]): c["fraction"] for c in spec["feldspar"]}
    assert f[(30.0, 40.0)] == 1.0  # grade 33.3 %
    by_number = lib.liberation_spectrum(tiny.particles, phase_names=NAMES, weight="number")
    fn = {(c["grade_lo"], c["grade_hi"]): c["fraction"] for c in by_number["feldspar"]}
    assert fn[(0.0, 0.0)] == 0.5 and fn[(30.0, 40.0)] == 0.5
    assert [(c["grade_lo"], c["grade_hi"]) for c in spec["quartz"]] == [tuple(map(float, c)) for c in lib.SPECTRUM_CLASSES]


def test_grade_class_edges_exact() -> None:
    # exactly 10 % -> (0, 10]; just above -> (10, 20]; 99.x % -> (90, 100); 100 % -> its own class
    assert lib.grade_class(np.array([0, 1, 10, 11, 90, 91, 999, 1000]), np.array([100, 100, 100, 100, 100, 100, 1000, 1000])).tolist() == [
        0, 1, 1, 2, 9, 10, 10, 11
    ]


def test_hand_computed_locking_and_association(tiny: measure.Tables) -> None:
    lock = lib.locking(tiny.particles, phase_names=NAMES)
    assert lock["quartz"]["liberated"] == {"number": 0.5, "volume": pytest.approx(27 / 45)}
    assert lock["quartz"]["binary"] == {"number": 0.5, "volume": pytest.approx(18 / 45)}
    assert lock["feldspar"]["binary"] == {"number": 1.0, "volume": 1.0}
    assert lock["quartz"]["ternary"]["number"] == 0.0
    assoc = lib.association(tiny.contacts, phase_names=NAMES)
    c = 2 / 3  # stereological correction on unit faces
    assert assoc["quartz"]["feldspar"] == pytest.approx(9 * c)  # the 3x3 interface
    assert assoc["feldspar"]["quartz"] == pytest.approx(9 * c)
    assert assoc["feldspar"]["background"] == pytest.approx((9 + 4 * 3) * c)
    assert assoc["quartz"]["background"] == pytest.approx((54 + 9 + 4 * 6) * c)
    assert assoc["pyrite"]["background"] == pytest.approx(2 * (6 + 4 + 6) * c)


def test_size_classes_edges_go_up() -> None:
    edges = [1.0, 2.0, 4.0]
    assert lib.size_class(np.array([0.99, 1.0, 1.5, 2.0, 3.9, 4.0, 4.01]), edges).tolist() == [-1, 0, 0, 1, 1, 1, -1]
    df = pd.DataFrame({"vox_a": [8, 4, 8], "volume_voxels": [8, 8, 8], "esd_um": [1.0, 2.0, 4.0],
                       "volume_um3": [8.0, 8.0, 8.0], "touches_border": [False] * 3})
    rows = lib.liberation_by_size(df, phase_names=["a"], size_edges=edges)["a"]
    assert [(r["lo"], r["hi"], r["n"], r["ld"]) for r in rows] == [(1.0, 2.0, 1, 1.0), (2.0, 4.0, 2, pytest.approx(8 / 12))]
    default = lib.liberation_by_size(df, phase_names=["a"])["a"]
    assert len(default) == lib.DEFAULT_SIZE_CLASSES and sum(r["n_particles"] for r in default) == 3
    with pytest.raises(VolmlaError, match="size_edges"):
        lib.liberation_by_size(df, phase_names=["a"], size_edges=[2.0, 1.0])


def test_summary_contract_keys(tiny: measure.Tables) -> None:
    s = lib.liberation_summary(tiny.particles, phase_names=NAMES, voxel_size=tiny.voxel_size_um)
    for key in ("voxel_size_um", "n_particles", "modal_mineralogy", "liberation_degree", "liberation_by_size", "liberation_spectrum"):
        assert key in s
    assert s["n_particles"] == 2 and s["voxel_size_um"] == [1.0, 1.0, 1.0]
    assert s["liberation_degree"]["pyrite"] is None  # NaN -> null in JSON
    assert set(s["liberation_by_size"]["quartz"][0]) >= {"lo", "hi", "ld", "n"}
    assert set(s["liberation_spectrum"]["quartz"][0]) == {"grade_lo", "grade_hi", "fraction"}
    import json

    json.dumps(s, allow_nan=False)


def test_bad_densities_and_threshold(tiny: measure.Tables) -> None:
    with pytest.raises(VolmlaError, match="densities must be positive"):
        lib.modal_mineralogy(tiny.particles, phase_names=NAMES, densities=[2.65, -1.0, 5.0])
    with pytest.raises(VolmlaError, match="one value per phase"):
        lib.modal_mineralogy(tiny.particles, phase_names=NAMES, densities=[2.65, 2.6])
    with pytest.raises(VolmlaError, match="free_threshold"):
        lib.liberation_degree(tiny.particles, phase_names=NAMES, free_threshold=1.5)


def test_grade_recovery_curve(tiny: measure.Tables) -> None:
    gr = lib.grade_recovery(tiny.particles, phase_names=NAMES)
    q = gr[gr.phase == "quartz"]
    assert q.cum_grade.tolist() == pytest.approx([1.0, 45 / 54])
    assert q.cum_recovery.tolist() == pytest.approx([27 / 45, 1.0])
    assert (np.diff(q.cum_grade) <= 1e-12).all()


# ----------------------------------------------------------------------------- bad options (a sweep)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),  # was numpy's error after every table
    ({"densities": "2.6,5.0"}, "densities must be a list of numbers"),  # was "could not convert string ','"
    ({"densities": [2.6, "x"]}, "densities must be numbers"),
    ({"densities": [2.6, 5.0], "phase_names": "quartz,pyrite"}, None),  # two names, not 13 letters
    ({"densities": [2.6], "phase_names": "quartz,pyrite"}, "one value per phase name \\(2\\), got 1"),
])
def test_check_options_refuses_in_one_line(kwargs: dict[str, object], message: str | None) -> None:
    if message is None:
        lib.check_options(**kwargs)  # type: ignore[arg-type]
        return
    with pytest.raises(VolmlaError, match=message):
        lib.check_options(**kwargs)  # type: ignore[arg-type]


def test_phase_names_that_are_no_list_are_refused() -> None:
    with pytest.raises(VolmlaError, match="phase names must be a list of names"):
        measure.resolve_phase_names(5, None, 2)  # type: ignore[arg-type]


def test_check_volumes_names_the_volume_of_another_voxel_size() -> None:
    import xarray as xr

    def vol(dtype: str, voxel: tuple[float, float, float]) -> xr.DataArray:
        return xr.DataArray(np.zeros((4, 4, 4), dtype), dims=("z", "y", "x"), attrs={"voxel_size_um": voxel})

    phases, particles = vol("uint8", (2.0, 2.0, 2.0)), vol("uint32", (2.0, 2.0, 2.0))
    lib.check_volumes(phases, particles, intensity=vol("float32", (2.0, 2.0, 2.0)))
    with pytest.raises(VolmlaError, match="phases and intensity must share one voxel size"):
        lib.check_volumes(phases, particles, intensity=vol("float32", (1.0, 2.0, 3.0)))
    with pytest.raises(VolmlaError, match="phases and grains must share one voxel size"):
        lib.check_volumes(phases, particles, grains=vol("uint32", (3.0, 3.0, 3.0)))
    with pytest.raises(VolmlaError, match="intensity must have the shape of the phases"):
        lib.check_volumes(phases, particles, intensity=xr.DataArray(np.zeros((2, 4, 4)), dims=("z", "y", "x")))


def test_check_out_dir_never_replaces_a_folder_without_a_report(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep")
    with pytest.raises(VolmlaError, match="no earlier report"):
        lib.check_out_dir(theirs, overwrite=True)
    (theirs / "summary.json").write_text("{}")
    assert lib.check_out_dir(theirs, overwrite=True) == theirs
