"""The sweep: curve table, intervals, grind size at a target LD, outputs on disk, the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from volmla.breakage import break_volume, breakage, curve_intervals, grind_sizes, measured_p80

CURVE_COLUMNS = ["p80_um", "realisation", "phase", "liberation_degree", "modal_fraction", "n_particles"]


def test_intervals_cover_the_realisations_mean() -> None:
    c = pd.DataFrame({"p80_um": [10.0] * 4 + [20.0] * 4, "realisation": [0, 1, 2, 3] * 2, "phase": ["a"] * 8,
                      "liberation_degree": [0.8, 0.82, 0.78, 0.8, 0.5, 0.55, 0.45, 0.5]})
    iv = curve_intervals(c).set_index("p80_um")
    assert iv.loc[10.0, "ld_mean"] == pytest.approx(0.8) and iv.loc[20.0, "ld_mean"] == pytest.approx(0.5)
    assert iv.loc[10.0, "ld_lo"] < 0.8 < iv.loc[10.0, "ld_hi"]
    assert iv.loc[20.0, "ld_hi"] - iv.loc[20.0, "ld_lo"] > iv.loc[10.0, "ld_hi"] - iv.loc[10.0, "ld_lo"]
    one = curve_intervals(c[c["realisation"] == 0])
    assert one["ld_lo"].isna().all() and (one["n"] == 1).all()


def test_grind_size_at_the_target_ld() -> None:
    iv = pd.DataFrame({"p80_um": [10.0, 20.0, 40.0] * 3, "phase": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                       "ld_mean": [0.95, 0.85, 0.6, 0.7, 0.5, 0.3, 0.99, 0.95, 0.9]})
    g = grind_sizes(iv, target=0.8)
    # a: crosses between 20 (0.85) and 40 (0.6): one fifth of the way in log P80
    assert g["p80_um"]["a"] == pytest.approx(20.0 * 2 ** 0.2)
    assert g["how"] == {"a": "interpolated", "b": "not reached", "c": "coarsest"}
    assert g["p80_um"]["b"] is None and g["p80_um"]["c"] == 40.0


def test_measured_p80_of_equal_cubes_is_their_size() -> None:
    df = pd.DataFrame({"volume_voxels": [125] * 5, "touches_border": [False] * 4 + [True],
                       **{f"bbox_{a}0": [0] * 5 for a in "zyx"}, **{f"bbox_{a}1": [5] * 5 for a in "zyx"}})
    assert measured_p80(df, shape=(50, 50, 50), voxel_size=(2.0, 2.0, 2.0)) == pytest.approx(2 * np.cbrt(6 * 125 / np.pi))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    rng = np.random.default_rng(7)
    from scipy.spatial import cKDTree

    shape = (32, 32, 32)
    centres = rng.random((150, 3)) * 32
    _, idx = cKDTree(centres).query(np.indices(shape).reshape(3, -1).T)
    ph = rng.choice(np.array([1, 2, 3], np.uint8), 150, p=[0.6, 0.3, 0.1])[idx].reshape(shape)
    out = tmp_path_factory.mktemp("brk") / "out"
    result = breakage(ph, out_dir=out, p80=[12.0, 6.0], realisations=2, voxel_size=2.0 / 2,
                      phase_names=["quartz", "feldspar", "pyrite"], seed=4,
                      analysis={"n_boot": 0, "section_step": None, "pieces": None})
    return ph, out, result


def test_breakage_writes_the_contract(swept) -> None:
    ph, out, result = swept
    names = {p.name for p in out.iterdir()}
    assert {"liberation_curve.parquet", "summary.json", "liberation_curve.png", "p80_6", "p80_12"} <= names
    assert {"particles.parquet", "grains.parquet", "summary.json", "report.html"} <= {p.name for p in (out / "p80_6").iterdir()}
    curve = pd.read_parquet(out / "liberation_curve.parquet")
    assert list(curve.columns[:6]) == CURVE_COLUMNS
    assert len(curve) == 2 * 2 * 3
    assert sorted(curve["p80_um"].unique()) == [6.0, 12.0] and sorted(curve["realisation"].unique()) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["liberation_degree"]) == {"6", "12"}
    assert set(summary["liberation_degree"]["6"]) == {"quartz", "feldspar", "pyrite"}
    for p80, per_phase in summary["liberation_degree"].items():
        for phase, ld in per_phase.items():
            rows = curve[(curve["p80_um"] == float(p80)) & (curve["phase"] == phase)]
            assert ld == pytest.approx(rows["liberation_degree"].mean())
    first = json.loads((out / "p80_6" / "summary.json").read_text())
    row = curve[(curve["p80_um"] == 6.0) & (curve["realisation"] == 0) & (curve["phase"] == "pyrite")].iloc[0]
    assert first["liberation_degree"]["pyrite"] == pytest.approx(row["liberation_degree"])
    assert row["n_particles"] == first["n_particles"]
    assert "particles are small against the voxel" not in " ".join(first["warnings"])  # a caveat of grey, not breakage


def test_breakage_tables_describe_themselves(swept) -> None:
    from volmla.io.parquet import read_table_metadata

    _, out, _ = swept
    for name in ("liberation_curve", "liberation_by_size"):
        meta = read_table_metadata(out / f"{name}.parquet")
        assert meta["table"] == name and meta["phases"] == {"1": "quartz", "2": "feldspar", "3": "pyrite"}
        assert meta["voxel_size_um"] == [1.0, 1.0, 1.0]
        assert meta["units"]["p80_um"] == "um" and meta["units"]["liberation_degree" if name == "liberation_curve"
                                                                   else "ld"] == "1"


def test_modal_mineralogy_is_preserved_exactly(swept) -> None:
    ph, out, result = swept
    solid = int((ph > 0).sum())
    want = {n: int((ph == k).sum()) / solid for k, n in enumerate(["quartz", "feldspar", "pyrite"], start=1)}
    assert result.summary["modal_mineralogy"] == want
    for row in result.curve.itertuples():
        assert row.modal_fraction == want[row.phase]
    particles = pd.read_parquet(out / "p80_12" / "particles.parquet")
    assert int(particles["vox_pyrite"].sum()) == int((ph == 3).sum())


def test_finer_grind_liberates_more(swept) -> None:
    _, _, result = swept
    ld = result.summary["liberation_degree"]
    assert all(ld["6"][n] > ld["12"][n] for n in ld["6"])
    assert result.summary["grind_size_um"]["target_ld"] == 0.8


def test_command_line(tmp_path, capsys) -> None:
    from distributed import LocalCluster

    from volmla.cli import main
    from volmla.io import write_volume

    ph = np.ones((24, 24, 24), np.uint8)
    ph[:, :, 12:] = 2
    src = write_volume(ph, tmp_path / "core.zarr", voxel_size=5.0, kind="phases", phases=["calcite", "galena"])
    out = tmp_path / "brk"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        args = ["-q", "--scheduler", cluster.scheduler_address, "breakage", str(src), "-o", str(out)]
        assert main([*args, "--p80", "20,40", "--realisations", "2", "--boundary-weight", "0.3",
                     "--phase-names", "calcite,galena", "--seed", "1"]) == 0
        curve = pd.read_parquet(out / "liberation_curve.parquet")
        assert set(curve["phase"]) == {"calcite", "galena"} and set(curve["p80_um"]) == {20.0, 40.0}
        capsys.readouterr()
        assert main([*args, "--p80", "20"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("volmla: error:") and "--overwrite" in err and len(err.strip().splitlines()) == 1
        assert main([*args, "--p80", "10", "--overwrite"]) == 2  # 2 voxels
        err = capsys.readouterr().err
        assert "--p80" in err and "3 voxels" in err and len(err.strip().splitlines()) == 1
        assert main([*args, "--p80", "abc", "--overwrite"]) == 2
        assert "--p80" in capsys.readouterr().err
    assert set(pd.read_parquet(out / "liberation_curve.parquet")["p80_um"]) == {20.0, 40.0}  # kept


def test_sweep_realisations_are_break_volumes_fragments(swept) -> None:
    """The sweep (keys computed once into scratch, then labelled and measured) gives the very fragments
    and liberation of break_volume with the same realisation seed and calibration."""
    from volmla.breakage.api import CALIBRATION, realisation_seed
    from volmla.breakage.fracture import calibrate, size_law
    from volmla.liberation.summary import liberation_summary
    from volmla.measure import measure

    ph, _, result = swept
    names = ["quartz", "feldspar", "pyrite"]
    run = next(r for r in result.summary["realisations"] if r["p80_um"] == 6.0 and r["realisation"] == 1)
    cal = calibrate(size_law("rosin-rammler", 6.0, 1.2, d_lo=3.0), seed=realisation_seed(4, CALIBRATION, 6.0))
    f = break_volume(ph, p80=6.0, voxel_size=1.0, seed=realisation_seed(4, 1, 6.0), calibration=cal)
    assert run["seed"] == realisation_seed(4, 1, 6.0) and run["n_fragments"] == f.count
    t = measure(f.labels.compute(), ph, voxel_size=1.0, phase_names=names)
    ld = liberation_summary(t.particles, phase_names=names)["liberation_degree"]
    rows = result.curve[(result.curve["p80_um"] == 6.0) & (result.curve["realisation"] == 1)].set_index("phase")
    for n in names:
        assert rows.loc[n, "liberation_degree"] == pytest.approx(ld[n], nan_ok=True)


def test_runs_record_the_fitted_size_law(swept) -> None:
    _, _, result = swept
    for run in result.summary["realisations"]:
        assert run["uniformity"] == 1.2
        assert 0.3 < run["uniformity_measured"] < 6.0 and 0.0 <= run["law_fit_rms"] < 0.5
        assert run["p80_measured_um"] == pytest.approx(run["p80_um"], rel=0.35)
