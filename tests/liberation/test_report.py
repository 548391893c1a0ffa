"""End to end: analyse() and ``volmla liberation`` write the data contract and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volmla import liberation as lib
from volmla import measure
from volmla.cli import main
from volmla.errors import VolmlaError

CONTRACT_KEYS = ("voxel_size_um", "n_particles", "modal_mineralogy", "liberation_degree", "liberation_by_size", "liberation_spectrum")
PNGS = ("modal_mineralogy.png", "liberation_by_size.png", "liberation_spectrum.png", "grade_recovery.png",
        "grain_vs_particle.png", "esd_histograms.png", "stereology.png", "representativeness.png",
        "cumulative_liberation.png", "cumulative_size.png", "particle_gallery.png")


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from volmla.synthetic import write_phantom

    return write_phantom(tmp_path_factory.mktemp("phantom"), shape=(40, 40, 40), seed=2, chunks=20, esd_range=(8.0, 14.0))


def _check_outputs(out: Path, names: list[str]) -> dict:
    for name in ("particles.parquet", "grains.parquet", "summary.json", "report.html", *PNGS):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in CONTRACT_KEYS:
        assert key in summary
    assert set(summary["modal_mineralogy"]) == set(names)
    for p in names:
        assert all(set(c) == {"grade_lo", "grade_hi", "fraction"} for c in summary["liberation_spectrum"][p])
        assert all({"lo", "hi", "ld", "n"} <= set(c) for c in summary["liberation_by_size"][p])
    particles = pd.read_parquet(out / "particles.parquet")
    assert list(particles.columns) == measure.particle_columns(names)
    assert summary["n_particles"] == int((~particles.touches_border).sum())
    grains = pd.read_parquet(out / "grains.parquet")
    assert list(grains.columns) == measure.GRAIN_COLUMNS
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PNGS)
    assert not re.search(r"src=['\"](?!data:)", page)  # self-contained
    assert "<table>" in page
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # temp folders gone
    return summary


def test_cli_end_to_end(volumes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lib"
    argv = ["--workers", "1", "--quiet", "liberation", "--phases", str(volumes["phases"]), "--particles",
            str(volumes["particles"]), "--grains", str(volumes["grains"]), "--phase-names", "qz,fsp,py",
            "--densities", "2.65,2.6,5.0", "--sections", "4", "--pieces", "8", "--bootstrap", "30", "--out", str(out)]
    assert main(argv) == 0
    summary = _check_outputs(out, ["qz", "fsp", "py"])
    assert summary["modal_mineralogy_mass"] is not None
    assert set(summary["uncertainty"]["liberation_degree"]) == {"qz", "fsp", "py"}
    capsys.readouterr()
    # an existing output is refused without --overwrite, and kept
    before = sorted(p.name for p in out.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("volmla: error:") and "--overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--phase-names", "a,b,c,d"], "phase names"),
        (["--densities", "2.6,-1,5"], "densities"),
        (["--densities", "2.6,x"], "--densities"),
        (["--free-threshold", "1.5"], "--free-threshold"),
        (["--size-edges", "3,2"], "--size-edges"),
        (["--pieces", "1"], "--pieces"),
    ],
)
def test_cli_bad_input_exit_2(volumes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              extra: list[str], message: str) -> None:
    out = tmp_path / "lib"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["--quiet", "liberation", "--phases", str(volumes["phases"]), "--particles", str(volumes["particles"]),
            "--out", str(out), "--overwrite", "--sections", "0", "--pieces", "0", "--bootstrap", "0", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("volmla: error:") and message in err and err.count("\n") == 1
    assert (out / "keep.txt").read_text() == "x"


def test_cli_shape_mismatch(volumes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from volmla.io import write_volume

    other = write_volume(np.zeros((8, 8, 8), np.uint8), tmp_path / "other.zarr", voxel_size=2.0, kind="phases")
    argv = ["--quiet", "liberation", "--phases", str(other), "--particles", str(volumes["particles"]),
            "--out", str(tmp_path / "lib")]
    assert main(argv) == 2
    assert "same shape" in capsys.readouterr().err
    assert not (tmp_path / "lib").exists()


def test_analyse_python_api_without_grains(volumes: dict[str, Path], tmp_path: Path) -> None:
    from volmla.io import open_volume

    ph, lab = open_volume(volumes["phases"]), open_volume(volumes["particles"])
    summary = lib.analyse(ph, lab, out_dir=tmp_path / "a", section_step=5, pieces=None, n_boot=10, derive_grains=False)
    assert summary["phases"] == ["quartz", "feldspar", "pyrite"]  # from the phases attribute
    assert (tmp_path / "a" / "grains.parquet").is_file()
    assert pd.read_parquet(tmp_path / "a" / "grains.parquet").empty
    assert pd.read_parquet(tmp_path / "a" / "particles.parquet").n_grains.isna().all()
    # derived grains: the phantom's grains are the phase components of its particles
    lib.analyse(ph, lab, out_dir=tmp_path / "b", section_step=None, pieces=None, n_boot=0)
    derived = pd.read_parquet(tmp_path / "b" / "particles.parquet")
    truth = measure.particle_table(lab, ph, grains=open_volume(volumes["grains"]))
    assert (derived.n_grains >= 1).all()
    assert (derived.n_grains.to_numpy() >= truth.n_grains.to_numpy()).all()  # Voronoi grains may split, never merge
    with pytest.raises(VolmlaError, match="not empty"):
        lib.analyse(ph, lab, out_dir=tmp_path / "a")
    again = lib.analyse(ph, lab, out_dir=tmp_path / "a", overwrite=True, section_step=None, pieces=None, n_boot=0)
    assert again["liberation_degree"] == summary["liberation_degree"]
    assert not (tmp_path / "a" / "stereology.png").exists()  # replaced, not merged


# ----------------------------------------------------------------------------- the rebuilt report (issue 19, item 3)

QC_PNGS = ("qc_slices.png", "qc_closeups.png")
MINERALS = ["quartz", "albite", "pyrite", "calcite", "hematite", "chalcopyrite", "biotite", "chlorite", "garnet",
            "ilmenite"]


def _particle_table(names: list[str], *, n: int = 80, seed: int = 0, border: bool = False) -> pd.DataFrame:
    """A particle table with free, binary and ternary particles of the named phases."""
    rng = np.random.default_rng(seed)
    k = len(names)
    vox = np.zeros((n, k), np.int64)
    for i in range(n):
        held = rng.choice(k, size=min(k, 1 + i % 3), replace=False)
        vox[i, held] = rng.integers(20, 400, held.size)
    solid = vox.sum(axis=1)
    esd = np.cbrt(6.0 * solid / np.pi)
    df = pd.DataFrame({"particle_id": np.arange(1, n + 1, dtype=np.uint64), "volume_voxels": solid,
                       "volume_um3": solid.astype(float), "esd_um": esd, "centroid_z": rng.uniform(0, 40, n),
                       "centroid_y": rng.uniform(0, 40, n), "centroid_x": rng.uniform(0, 40, n),
                       "touches_border": np.full(n, border)})
    for j, p in enumerate(names):
        df[f"vox_{p}"] = vox[:, j]
    df["vox_solid"] = solid
    for j, p in enumerate(names):
        df[f"grade_{p}"] = vox[:, j] / solid
    return df


def _inputs(names: list[str], *, densities: bool = True, n: int = 80, border: bool = False
            ) -> tuple[dict, pd.DataFrame, dict, dict | None]:
    df = _particle_table(names, n=n, border=border)
    rho = {p: 2.5 + 0.3 * j for j, p in enumerate(names)} if densities else None
    summary = lib.liberation_summary(df, phase_names=names, densities=rho, voxel_size=(1.0, 1.0, 1.0))
    if len(lib.stats._population(df, False)):
        summary["uncertainty"] = lib.bootstrap(df, phase_names=names, densities=rho, n_boot=20, seed=0)
    rep, meta = lib.representativeness(df, shape=(40, 40, 40), voxel_size=(1.0, 1.0, 1.0), pieces=4)
    summary["representativeness"] = meta
    st = pd.DataFrame({"phase": names, "ld_2d": np.linspace(0.2, 0.9, len(names)),
                       "ld_3d": np.linspace(0.1, 0.8, len(names)), "n_2d": 5, "n_3d": 5, "bias": 0.1})
    summary["stereology"] = {"step": 4}
    extras = {"grade_recovery": lib.grade_recovery(df, phase_names=names, densities=rho), "stereology": st,
              "representativeness": rep}
    return summary, df, extras, rho


def _pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    img = matplotlib.image.imread(path)
    return np.rint(np.asarray(img)[..., :3] * 255).astype(np.int64).reshape(-1, 3)


def _has_color(pixels: np.ndarray, hex_color: str, *, tol: int = 0, least: int = 10) -> bool:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=1) <= tol).sum()) >= least


@pytest.mark.parametrize("n_phases", [1, 10])
def test_every_plot_draws_every_phase_in_its_palette_colour(tmp_path: Path, n_phases: int) -> None:
    from volmla.io.palette import hex_colors
    from volmla.liberation.report import phase_styles, plots

    names = MINERALS[:n_phases]
    summary, df, extras, rho = _inputs(names)
    files = {p.name: p for p in plots(tmp_path, summary=summary, particles=df, grains=pd.DataFrame(
        columns=measure.GRAIN_COLUMNS), extras=extras, phase_names=names, densities=rho)}
    assert {"cumulative_liberation.png", "cumulative_size.png"} <= set(files)
    colors = hex_colors(names)
    assert [s.color for s in phase_styles(names).values()] == list(colors.values())
    assert len(set(colors.values())) == n_phases  # no two phases share a colour
    bars = ("modal_mineralogy.png", "liberation_spectrum.png", "stereology.png")
    lines = ("liberation_by_size.png", "cumulative_liberation.png", "grade_recovery.png", "esd_histograms.png")
    for name in (*bars, *lines):
        pixels = _pixels(files[name])
        for p, c in zip(names, colors.values(), strict=True):
            assert _has_color(pixels, c, tol=0 if name in bars else 6, least=10 if name in bars else 3), (name, p, c)
    # ten phases: the canvas grows (and the legend stands beside the axes) instead of the bars shrinking
    import matplotlib.image

    width = matplotlib.image.imread(files["liberation_spectrum.png"]).shape[1]
    assert width > 1000 if n_phases == 10 else width < 800


def test_series_other_than_phases_never_take_a_phase_colour(tmp_path: Path) -> None:
    from volmla.io.palette import hex_colors
    from volmla.liberation.report import plots

    names = MINERALS[:3]
    summary, df, extras, rho = _inputs(names)
    files = {p.name: p for p in plots(tmp_path, summary=summary, particles=df, grains=pd.DataFrame(
        columns=measure.GRAIN_COLUMNS), extras=extras, phase_names=names, densities=rho)}
    for name in ("cumulative_size.png", "representativeness.png"):  # volume vs mass, pieces vs whole: not phases
        pixels = _pixels(files[name])
        for c in hex_colors(names).values():
            assert not _has_color(pixels, c, tol=6, least=1), (name, c)


def test_cumulative_liberation_hand_computed() -> None:
    from volmla.liberation.report import cumulative_liberation

    df = pd.DataFrame({"vox_a": [10, 6, 2, 0], "vox_b": [0, 4, 8, 5], "volume_voxels": [10, 10, 10, 5],
                       "touches_border": [False, False, False, True]})
    c = cumulative_liberation(df, phase_names=["a", "b"])
    a = c[c.phase == "a"]
    # a: 10 voxels at grade 1, 6 at 0.6, 2 at 0.2 of 18
    assert a.grade.tolist() == [0.0, 0.2, 0.6, 1.0]
    np.testing.assert_allclose(a.fraction, [1.0, 1.0, 16 / 18, 10 / 18])
    b = c[c.phase == "b"]  # the border particle is left out: b is never pure, the curve ends at (1, 0)
    assert b.grade.tolist() == [0.0, 0.4, 0.8, 1.0]
    np.testing.assert_allclose(b.fraction, [1.0, 1.0, 8 / 12, 0.0])
    with_border = cumulative_liberation(df, phase_names=["b"], include_border=True)
    np.testing.assert_allclose(with_border.fraction.iloc[-1], 5 / 17)
    assert cumulative_liberation(df.iloc[:0], phase_names=["a"]).empty


def test_cumulative_size_and_p80_agree_with_the_breakage_passing_size() -> None:
    from volmla.breakage.fracture import passing_size
    from volmla.liberation.report import cumulative_size, p80

    rng = np.random.default_rng(4)
    vol = rng.uniform(10, 5000, 200)
    df = pd.DataFrame({"volume_um3": vol, "esd_um": np.cbrt(6 * vol / np.pi), "vox_a": vol, "vox_b": vol * 0,
                       "touches_border": np.zeros(200, bool)})
    curve = cumulative_size(df, phase_names=["a", "b"], densities={"a": 2.0, "b": 5.0})
    assert (np.diff(curve.esd_um) >= 0).all() and (np.diff(curve.volume) >= 0).all()
    assert curve.volume.iloc[-1] == pytest.approx(1.0)
    assert p80(curve) == pytest.approx(passing_size(vol, 0.8))
    np.testing.assert_allclose(curve.mass, curve.volume)  # one phase holds all the mass
    assert np.isnan(p80(cumulative_size(df.iloc[:0])))


def test_executive_summary_warnings_and_clipped_intervals() -> None:
    from volmla.liberation.report import executive_summary

    names = ["quartz", "pyrite"]
    summary, df, _, _ = _inputs(names, n=30, densities=False)
    summary["phase_volumes"] = "voxel counts"
    summary["uncertainty"]["liberation_degree"]["quartz"] = {"lo": -0.2, "hi": 1.3}
    summary["liberation_degree"]["pyrite"] = 0.0
    ex = executive_summary(summary, particles=df)
    text = " | ".join(ex["warnings"])
    assert "few particles (30 analysed): intervals are wide" in text
    assert "no free particle of pyrite" in text
    assert "voxel counts" in text
    quartz = ex["rows"][0]
    assert quartz["ld_ci"] == "0 - 1" and quartz["color"] == "#9e9ac8"
    assert ex["p80_um"] is not None and ex["weighting"] == "Volume-weighted"
    # many particles, partial volumes: no warning left but that they are small (a few voxels)
    big, dfb, _, _ = _inputs(names, n=150, densities=True)
    big["phase_volumes"] = "partial-volume"
    ex = executive_summary(big, particles=dfb)
    assert [w.split(":")[0] for w in ex["warnings"]] == ["particles are small against the voxel"]
    assert ex["weighting"] == "Mass-weighted"
    assert any("partial volume" in n for n in ex["notes"])
    # every particle on the border
    edge, dfe, _, _ = _inputs(names, n=20, border=True)
    ex = executive_summary(edge, particles=dfe)
    assert ex["warnings"][0].startswith("no particle lies inside the volume: all 20 touch its border")


def test_page_is_autoescaped_self_contained_and_clips_frequencies(tmp_path: Path) -> None:
    from volmla.liberation.report import plots, write_html

    names = ["<script>alert(1)</script>", "b&c"]
    summary, df, extras, rho = _inputs(names, densities=False)
    extras["representativeness"].loc[0, "ci_lo"] = -0.25  # a t-interval below 0 for a frequency
    extras["representativeness"].loc[0, "ci_hi"] = 1.4
    summary["provenance"] = lib.summary.provenance(inputs={"phases": "in/<phases>.zarr"}, voxel_size=(1, 1, 1))
    pngs = plots(tmp_path, summary=summary, particles=df, grains=pd.DataFrame(columns=measure.GRAIN_COLUMNS),
                 extras=extras, phase_names=names)
    page = write_html(tmp_path / "report.html", summary=summary, pngs=pngs, extras=extras, particles=df).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "b&amp;c" in page
    assert "in/&lt;phases&gt;.zarr" in page
    assert page.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r"src=['\"](?!data:)", page)
    assert "-0.25" not in page and ">1.4<" not in page
    assert "Mass-weighted" not in page and "Volume-weighted ESD histograms" in page
    assert page.index("Executive summary") < page.index("Provenance") < page.index("<img")


def test_template_ships_as_package_data() -> None:
    from importlib import resources

    assert resources.files("volmla.liberation").joinpath("templates", "report.html.j2").is_file()


def test_provenance_record() -> None:
    import xarray as xr

    from volmla.liberation.summary import input_path, provenance

    phases = xr.DataArray(np.zeros((2, 2, 2), np.uint8), dims=("z", "y", "x"), attrs={
        "path": "/data/phases.zarr", "provenance": [{"step": "ingest"}, {"step": "segment", "model": "/m/unet.onnx"}]})
    p = provenance(inputs={"phases": phases, "particles": Path("p.zarr"), "grains": None,
                           "intensity": np.zeros(3)}, voxel_size=(0.5, 0.5, 1.0))
    assert p["inputs"] == {"phases": "/data/phases.zarr", "particles": "p.zarr", "grains": None, "intensity": None}
    assert p["model"] == "/m/unet.onnx" and p["voxel_size_um"] == [0.5, 0.5, 1.0]
    assert p["volmla_version"] == __import__("volmla").__version__ and p["date"].endswith("+00:00")
    assert provenance(inputs={"phases": phases}, voxel_size=None, model="other.onnx")["model"] == "other.onnx"
    assert input_path(xr.DataArray(np.zeros(1), attrs={})) is None


def test_analyse_with_intensity_writes_qc_provenance_and_summary_first(volumes: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    from volmla.io import open_volume

    v = {k: open_volume(p) for k, p in volumes.items()}
    out = tmp_path / "lib"
    summary = lib.analyse(v["phases"], v["particles"], grains=v["grains"], intensity=v["intensity"], out_dir=out,
                          section_step=None, pieces=4, n_boot=10)
    for name in (*QC_PNGS, "particle_gallery.png", "cumulative_liberation.png", "cumulative_size.png"):
        assert (out / name).is_file() and name in summary["files"]
    stored = json.loads((out / "summary.json").read_text())
    prov = stored["provenance"]
    assert prov["inputs"] == {k: str(volumes[k]) for k in ("phases", "particles", "grains", "intensity")}
    assert prov["voxel_size_um"] == stored["voxel_size_um"] and prov["volmla_version"]
    page = (out / "report.html").read_text()
    assert str(volumes["intensity"]) in page
    assert page.index("Executive summary") < page.index("orthogonal CT slices") < page.index("Modal mineralogy")
    assert "Mass-weighted" not in page  # no densities given
    assert page.count("data:image/png;base64,") == len([f for f in summary["files"] if f.endswith(".png")])


def test_cli_with_the_ct_apportions_partial_volume_and_shows_it(volumes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "lib"
    argv = ["--quiet", "liberation", "--phases", str(volumes["phases"]), "--particles", str(volumes["particles"]),
            "--intensity", str(volumes["intensity"]), "--sections", "0", "--pieces", "0", "--bootstrap", "0",
            "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase_volumes"] == "partial-volume"
    table = pd.read_parquet(out / "particles.parquet")
    vox = table.filter(like="vox_").drop(columns="vox_solid").to_numpy(float)
    vfrac = table.filter(like="vfrac_").drop(columns="vfrac_solid").to_numpy(float)
    assert not np.allclose(vox, vfrac)  # boundary voxels were apportioned
    assert "qc_slices.png" in summary["files"]
