"""Whole runs: ``volmla run CONFIG.yaml`` resumes and skips finished stages; demo guards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volmla.cli import main
from volmla.io import open_volume
from volmla.pipeline import run
from volmla.pipeline.demo import _held_out_planes, _label_planes
from volmla.synthetic import write_phantom


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("phantom")
    return write_phantom(out, shape=(48, 64, 64), seed=3, chunks=24, esd_range=(10.0, 24.0))


def _config(tmp_path: Path, scan: dict[str, Path]) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: results\ninput: {scan['intensity']}\n"
        "preprocess: [median:size=3]\n"
        "segment: {method: threshold, classes: 4, phase_names: [quartz, feldspar, pyrite]}\n"
        "particles: {min_size: 10, split: true, max_radius: 12}\n"
        "liberation: {n_boot: 20, pieces: 4}\n"
    )
    return config


def test_run_writes_every_stage_and_a_report(tmp_path: Path, scan: dict[str, Path]) -> None:
    result = run(_config(tmp_path, scan))
    out = tmp_path / "results"
    for name in ("preprocessed", "phases", "particles", "grains"):
        assert open_volume(out / f"{name}.zarr").shape == (48, 64, 64)
    phases = open_volume(out / "phases.zarr")
    assert phases.attrs["phases"] == {1: "quartz", 2: "feldspar", 3: "pyrite"}
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["n_particles"] == result["summary"]["n_particles"] > 0
    assert set(summary["modal_mineralogy"]) == {"quartz", "feldspar", "pyrite"}
    table = pd.read_parquet(out / "report" / "particles.parquet")
    # the particles table agrees with the stored particle volume
    ids = np.unique(open_volume(out / "particles.zarr").values)
    assert set(table["particle_id"]) == set(ids[ids > 0].tolist())


def test_rerun_keeps_finished_stages(tmp_path: Path, scan: dict[str, Path]) -> None:
    config = _config(tmp_path, scan)
    run(config)
    phases = tmp_path / "results" / "phases.zarr" / "zarr.json"
    stamp = phases.stat().st_mtime_ns
    lines: list[str] = []
    run(config, log=lines.append)
    assert phases.stat().st_mtime_ns == stamp
    assert any("phases.zarr: complete, kept" in line for line in lines)


def test_a_run_refines_contacts_after_the_phases_and_can_leave_them(tmp_path: Path, scan: dict[str, Path]) -> None:
    """By default the split is ``particles_split.zarr`` and ``particles.zarr`` the particles
    refined with the phases (what grains and the report read); a rerun keeps both;
    ``contacts: false`` writes the split as ``particles.zarr``."""
    from volmla.particles import refine_contacts

    config = _config(tmp_path, scan)
    lines: list[str] = []
    result = run(config, log=lines.append)
    out = tmp_path / "results"
    split, particles = open_volume(out / "particles_split.zarr"), open_volume(out / "particles.zarr")
    expected = refine_contacts(split, open_volume(out / "phases.zarr")).labels.values
    np.testing.assert_array_equal(particles.values, expected)
    assert result["particles"] == str(out / "particles.zarr")
    assert lines.index("contacts") < lines.index("grains")
    assert open_volume(out / "grains.zarr").attrs["provenance"]  # grains of the refined particles
    lines.clear()
    run(config, log=lines.append)
    assert any("particles.zarr: complete, kept" in line for line in lines)
    assert any("particles_split.zarr: complete, kept" in line for line in lines)

    off = tmp_path / "off"
    off.mkdir()
    text = config.read_text().replace("max_radius: 12}", "max_radius: 12, contacts: false}")
    (off / "run.yaml").write_text(text)
    lines.clear()
    run(off / "run.yaml", log=lines.append)
    assert "contacts" not in lines and not (off / "results" / "particles_split.zarr").exists()
    np.testing.assert_array_equal(open_volume(off / "results" / "particles.zarr").values, split.values)


def test_rerun_keeps_the_report_of_the_same_job_and_redoes_a_changed_one(tmp_path: Path,
                                                                         scan: dict[str, Path]) -> None:
    """The liberation stage is kept like the Zarr stages when nothing it reads changed, and
    recomputed when its options, an input volume's content or ``overwrite`` say so."""
    from volmla.io import write_volume

    def config(threshold: float) -> Path:
        path = tmp_path / "run.yaml"
        path.write_text(
            f"out: results\ninput: {scan['intensity']}\n"
            "segment: {method: threshold, classes: 4, phase_names: [quartz, feldspar, pyrite]}\n"
            "particles: {min_size: 10}\n"
            f"liberation: {{n_boot: 0, pieces: 0, section_step: 0, free_threshold: {threshold}}}\n")
        return path

    def rerun(threshold: float, **kwargs: bool) -> tuple[list[str], dict[str, object]]:
        lines: list[str] = []
        result = run(config(threshold), log=lines.append, **kwargs)
        return lines, result

    report = tmp_path / "results" / "report"
    first = run(config(0.99))
    stored = json.loads((report / "summary.json").read_text())
    assert stored["provenance"]["job"] and stored["free_threshold"] == 0.99
    sentinel = report / "sentinel.txt"  # gone only when the folder is replaced
    sentinel.write_text("kept")
    stamp = (report / "summary.json").stat().st_mtime_ns

    lines, result = rerun(0.99)  # nothing changed: kept, and the summary is the stored one
    assert "  report: complete, kept" in lines, lines
    assert sentinel.is_file() and (report / "summary.json").stat().st_mtime_ns == stamp
    assert result["summary"] == json.loads(json.dumps(first["summary"]))

    lines, result = rerun(0.9)  # another option: recomputed
    assert any(line.startswith("  report: written") for line in lines), lines
    assert not sentinel.exists()
    assert json.loads((report / "summary.json").read_text())["free_threshold"] == 0.9
    job = json.loads((report / "summary.json").read_text())["provenance"]["job"]
    assert job != stored["provenance"]["job"]

    # an input volume of other content (here grains rewritten under their own job, which the
    # grains stage therefore keeps): the report is recomputed
    sentinel.write_text("kept")
    grains_path = tmp_path / "results" / "grains.zarr"
    grains = open_volume(grains_path)
    changed = (grains.values + (grains.values > 0) * 1000).astype(grains.dtype)
    write_volume(changed, grains_path.with_name("grains-new.zarr"), voxel_size=grains.attrs["voxel_size_um"],
                 kind="labels", chunks=24)
    grains_job = {"stage": "grains", "particles": str(tmp_path / "results" / "particles.zarr"),
                  "phases": str(tmp_path / "results" / "phases.zarr")}
    write_volume(open_volume(grains_path.with_name("grains-new.zarr")), grains_path, job=grains_job, kind="labels",
                 voxel_size=grains.attrs["voxel_size_um"], chunks=24, overwrite=True)
    lines, _ = rerun(0.9)
    assert "  grains.zarr: complete, kept" in lines, lines
    assert any(line.startswith("  report: written") for line in lines), lines
    assert not sentinel.exists()
    assert json.loads((report / "summary.json").read_text())["provenance"]["job"] != job

    # a report without a recorded job (an older version's) is recomputed, and so is any with overwrite
    sentinel.write_text("kept")
    lines, _ = rerun(0.9)
    assert "  report: complete, kept" in lines and sentinel.is_file()
    lines, _ = rerun(0.9, overwrite=True)
    assert any(line.startswith("  report: written") for line in lines) and not sentinel.exists()
    summary = json.loads((report / "summary.json").read_text())
    del summary["provenance"]["job"]
    (report / "summary.json").write_text(json.dumps(summary))
    sentinel.write_text("kept")
    lines, _ = rerun(0.9)
    assert any(line.startswith("  report: written") for line in lines) and not sentinel.exists()


def test_run_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("out: o\ninput: x.zarr\nsegment: {method: svm}\n")
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("volmla: error: config segment.method must be one of") and "\n" not in err


def test_demo_refuses_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--overwrite"]) == 2
    assert "not a volmla demo folder" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert main(["demo", "--out", str(tmp_path / "new"), "--shape", "8", "8", "8"]) == 2
    assert not (tmp_path / "new").exists()


def test_label_and_held_out_planes_are_disjoint() -> None:
    labelled = _label_planes(128)
    assert labelled == [2, 64, 125]
    held = _held_out_planes(128, labelled)
    assert len(held) == 4 and all(abs(h - p) >= 8 for h in held for p in labelled)


def test_a_config_naming_only_input_labels_and_phases_runs_the_best_path(tmp_path: Path) -> None:
    """No method: particles from the CT first, phases by region fitted on the sparse labels,
    partial-volume phase volumes; close to the truth on an easy crushed-ore phantom (issue 17)."""
    from volmla.io import write_volume
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=(64, 64, 64), seed=1, level="easy")
    truth = np.asarray(ore.phases)
    labels = np.zeros_like(truth)
    for z in (16, 32, 48):
        labels[z] = truth[z] + 1
    write_volume(np.asarray(ore.intensity), tmp_path / "scan.zarr", voxel_size=1.0, chunks=32)
    write_volume(labels, tmp_path / "labels.zarr", voxel_size=1.0, chunks=32)
    (tmp_path / "run.yaml").write_text(
        "out: out\ninput: scan.zarr\n"
        "segment: {labels: labels.zarr, phase_names: [quartz, feldspar, pyrite]}\n"
        "liberation: {n_boot: 0, pieces: 0, section_step: 0}\n")
    lines: list[str] = []
    result = run(tmp_path / "run.yaml", log=lines.append)
    assert lines.index("particles") < lines.index("segment (regions)")  # particles from the CT first
    assert result["summary"]["phase_volumes"] == "partial-volume"
    phases = open_volume(tmp_path / "out" / "phases.zarr").values
    solid = truth > 0
    assert (phases[solid] == truth[solid]).mean() > 0.9
    for phase in ("quartz", "feldspar"):
        assert abs(result["summary"]["modal_mineralogy"][phase] - ore.liberation["modal_mineralogy"][phase]) < 0.05


def test_an_ingesting_run_puts_its_segmentation_under_the_scan_labels(tmp_path: Path, scan: dict[str, Path]) -> None:
    """A viewer opens the run's scan with phases, particles and grains as NGFF labels
    (ome-zarr-py's Reader finds them); a rerun keeps every stage (the labels/ group is not
    part of the scan's fingerprint) (issue 19)."""
    import warnings

    import tifffile

    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(open_volume(scan["intensity"]).values):
        tifffile.imwrite(folder / f"s_{i:03d}.tif", plane)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: results\ninput: {{paths: [{folder}], voxel_size: 2.0, chunks: 24}}\n"
        "segment: {method: threshold, classes: 4, phase_names: [quartz, feldspar, pyrite]}\n"
        "particles: {min_size: 10}\nliberation: {n_boot: 0, pieces: 0, section_step: 0}\n")
    run(config)
    image = tmp_path / "results" / "intensity.zarr"
    pytest.importorskip("ome_zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Label, Reader
    nodes = list(Reader(parse_url(str(image)))())
    found = {Path(str(n.zarr.path)).name for n in nodes if any(isinstance(s, Label) for s in n.specs)}
    assert found == {"phases", "particles", "grains"}
    lines: list[str] = []
    run(config, log=lines.append)
    kept = [line for line in lines if "complete, kept" in line]
    assert len(kept) >= 4, lines  # intensity, phases, particles, grains


def test_a_run_takes_its_particles_from_a_particle_unet(tmp_path: Path, scan: dict[str, Path]) -> None:
    """``particles: {model: ...}``: the scan segmented into background / interior / boundary first."""
    pytest.importorskip("torch")
    from volmla.segment.export import export
    from volmla.segment.train import TrainConfig, save_model, train

    config = TrainConfig(target="particles", depth=2, base=4, patch=16, batch=2, iterations=40, lr=1e-2,
                         val_every=10, threads=1)
    result = train(open_volume(scan["intensity"]), open_volume(scan["particles"]), config=config)
    save_model(result, tmp_path / "p.pt")
    model = export(tmp_path / "p.pt", tmp_path / "p.onnx").path
    text = _config(tmp_path, scan).read_text().replace(
        "particles: {min_size: 10, split: true, max_radius: 12}", f"particles: {{model: {model}, min_size: 10}}")
    (tmp_path / "run.yaml").write_text(text)
    lines: list[str] = []
    run(tmp_path / "run.yaml", log=lines.append)
    out = tmp_path / "results"
    classes = open_volume(out / "particle_map.zarr")
    assert classes.attrs["phases"] == {1: "interior", 2: "boundary"}
    assert int(classes.data.max().compute()) <= 2
    split = open_volume(out / "particles_split.zarr")
    assert split.attrs["provenance"][-1]["threshold"] == "interior"
    assert open_volume(out / "particles.zarr").attrs["provenance"][-1]["step"] == "contacts"
    assert (out / "report" / "summary.json").is_file()
    assert any("particle map" in line for line in lines)
    # a rerun keeps the map
    stamp = (out / "particle_map.zarr" / "zarr.json").stat().st_mtime_ns
    run(tmp_path / "run.yaml", log=lines.append)
    assert (out / "particle_map.zarr" / "zarr.json").stat().st_mtime_ns == stamp


def test_run_cli_config_errors_name_yaml_keys_not_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("out: o\ninput: x.zarr\nsegment: {bogus: 1}\n")
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'bogus'" in err and "phase_names, psf_sigma, save_model" in err and "--" not in err


@pytest.mark.parametrize("fov", [True, False])
def test_a_scan_with_a_field_of_view_runs_as_one_without(tmp_path: Path, fov: bool) -> None:
    """The scan as a reconstruction writes it (0 outside the inscribed circle): the run finds
    the circle, reads the outside as void, flags the particles it cuts; the modal mineralogy
    stays close to the truth of the particles inside. With ``field_of_view: false`` the fill
    reads as a material and the same figures are far off."""
    import pandas as pd

    from volmla.io import write_volume
    from volmla.synthetic import crushed_ore
    from volmla.synthetic.crushed import truth_liberation

    n = 80
    ore = crushed_ore(shape=(n, n, n), seed=1, level="easy")
    y, x = np.mgrid[:n, :n]
    r = np.broadcast_to(np.hypot(y - (n - 1) / 2, x - (n - 1) / 2), (n, n, n))
    scan = np.where(r >= n / 2, 0, ore.intensity).astype(np.uint16)
    labels = np.zeros((n, n, n), np.uint8)
    for z in (20, 40, 60):
        labels[z] = ore.phases[z] + 1
    labels[r >= n / 2] = 0
    write_volume(scan, tmp_path / "scan.zarr", voxel_size=1.0, chunks=40)
    write_volume(labels, tmp_path / "labels.zarr", voxel_size=1.0, chunks=40)
    (tmp_path / "run.yaml").write_text(
        "out: out\ninput: scan.zarr\n"
        "segment: {labels: labels.zarr, phase_names: [quartz, feldspar, pyrite]}\n"
        + ("" if fov else "particles: {field_of_view: false}\n")
        + "liberation: {n_boot: 0, pieces: 0, section_step: 0}\n")
    lines: list[str] = []
    result = run(tmp_path / "run.yaml", log=lines.append)
    assert any(line.startswith("field of view: a circle of radius 40.0") for line in lines) == fov
    table = pd.read_parquet(tmp_path / "out" / "report" / "particles.parquet")
    particles = open_volume(tmp_path / "out" / "particles.zarr").values
    at_edge = np.unique(particles[r >= n / 2 - 1])
    flagged = set(table.particle_id[table.touches_border].tolist())
    assert set(at_edge[at_edge > 0].tolist()) <= flagged or not fov
    cut = np.unique(ore.particles[r >= n / 2])
    inside = ore.table.copy()
    inside["touches_border"] = inside["touches_border"].to_numpy(bool) | np.isin(inside["particle_id"], cut[cut > 0])
    truth = truth_liberation(inside)["modal_mineralogy"]
    worst = max(abs(result["summary"]["modal_mineralogy"][p] - truth[p]) for p in ("quartz", "feldspar", "pyrite"))
    if fov:
        assert not particles[r >= n / 2].any()
        assert worst < 0.04, worst
    else:
        assert worst > 0.06, worst
