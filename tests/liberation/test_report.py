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
        "grain_vs_particle.png", "esd_histograms.png", "stereology.png", "representativeness.png")


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
