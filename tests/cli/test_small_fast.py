"""Small jobs start fast: no heavy import for ``--version``/``--help``, and a small volume's
command computes on threads in this process instead of starting a cluster (issue 20)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import volmla.engine.cluster as vc
from volmla.cli import main
from volmla.io import open_volume, write_volume

HEAVY = ("dask.array", "xarray", "pandas", "zarr", "distributed")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["label", "--help"]])
def test_version_and_help_import_no_array_library(args: list[str]) -> None:
    code = ("import sys; from volmla.cli import main; code = main(sys.argv[1:]); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_particles_help_shows_the_library_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from volmla.particles.split import H_MIN, NECK

    assert main(["particles", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"splits more). [default: {NECK}]" in text
    assert f"above the saddle. [default: {H_MIN}]" in text


@pytest.fixture
def blocks_seen(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The on_demand handles the commands open (their ``in_process`` and ``client``)."""
    seen: list[Any] = []
    real = vc.on_demand

    @contextlib.contextmanager
    def spy(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as deferred:
            seen.append(deferred)
            yield deferred

    monkeypatch.setattr(vc, "on_demand", spy)
    return seen


@pytest.fixture
def mask_100(tmp_path: Path) -> Path:
    mask = np.random.default_rng(0).random((100, 100, 100)) > 0.7
    return write_volume(mask.astype(np.uint8), tmp_path / "mask.zarr", voxel_size=1.0, chunks=25)


def test_small_label_runs_on_threads_and_matches_the_cluster(mask_100: Path, tmp_path: Path,
                                                            blocks_seen: list[Any]) -> None:
    """64 chunks: graphs of more tasks than SMALL_GRAPH, so only the volume's size keeps the
    cluster off."""
    threads, procs = tmp_path / "threads.zarr", tmp_path / "cluster.zarr"
    assert main(["-q", "label", str(mask_100), "-o", str(threads)]) == 0
    assert len(blocks_seen) == 1 and blocks_seen[0].in_process and blocks_seen[0].client is None
    assert main(["-q", "--workers", "1", "label", str(mask_100), "-o", str(procs)]) == 0
    assert len(blocks_seen) == 1  # the user asked for a cluster: started at once, no deferral
    a, b = open_volume(threads), open_volume(procs)
    np.testing.assert_array_equal(a.data.compute(), b.data.compute())
    assert a.attrs["provenance"] == b.attrs["provenance"] and a.data.chunksize == b.data.chunksize == (25,) * 3


def test_small_label_does_not_import_distributed(mask_100: Path, tmp_path: Path) -> None:
    """No client can exist before distributed is imported: the threaded path never imports it."""
    code = ("import sys; from volmla.cli import main; code = main(sys.argv[1:]); "
            "print('distributed' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "-q", "label", str(mask_100), "-o", str(tmp_path / "l.zarr")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_large_input_keeps_the_cluster_rule(mask_100: Path, tmp_path: Path, blocks_seen: list[Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SMALL_BYTES the first graph of more than SMALL_GRAPH tasks starts the cluster."""
    monkeypatch.setattr(vc, "SMALL_BYTES", 100**3 - 1)
    started: list[int] = []

    @contextlib.contextmanager
    def fake_cluster(**_: Any) -> Iterator[None]:
        started.append(1)
        yield None  # no client: the computation falls back to threads

    monkeypatch.setattr(vc, "cluster", fake_cluster)
    assert main(["-q", "label", str(mask_100), "-o", str(tmp_path / "l.zarr")]) == 0
    assert not blocks_seen[0].in_process and started  # (no client: each large graph asks again)


def test_run_on_threads_honours_input_chunks(tmp_path: Path, blocks_seen: list[Any]) -> None:
    rng = np.random.default_rng(1)
    scan = write_volume((rng.random((40, 40, 40)) * 100).astype(np.uint8), tmp_path / "scan.zarr",
                        voxel_size=1.0, chunks=40)
    config = tmp_path / "run.yaml"
    config.write_text(f"out: results\ninput: {{zarr: {scan}, chunks: 20}}\npreprocess: [gaussian:sigma=1]\n"
                      "segment: {method: threshold, classes: 2}\nparticles: {min_size: 5, split: false}\n"
                      "liberation: {n_boot: 0, pieces: 0, section_step: 0}\n")
    assert main(["-q", "run", str(config)]) == 0
    assert len(blocks_seen) == 1 and blocks_seen[0].in_process and blocks_seen[0].client is None
    for name in ("preprocessed", "phases", "particles", "grains"):
        assert open_volume(tmp_path / "results" / f"{name}.zarr").data.chunksize == (20, 20, 20), name


@pytest.fixture
def phases_24(tmp_path: Path) -> Path:
    phases = np.zeros((24, 24, 24), np.uint8)
    phases[2:10, 2:10, 2:10] = 1
    phases[12:22, 3:20, 4:12] = 2
    phases[12:22, 3:20, 12:20] = 1
    return write_volume(phases, tmp_path / "phases.zarr", voxel_size=1.0, chunks=8, kind="phases")


def test_small_liberation_and_breakage_compute_on_threads(phases_24: Path, tmp_path: Path,
                                                         blocks_seen: list[Any]) -> None:
    particles = tmp_path / "particles.zarr"
    assert main(["-q", "particles", str(phases_24), "-o", str(particles)]) == 0
    assert main(["-q", "liberation", "--phases", str(phases_24), "--particles", str(particles),
                 "--out", str(tmp_path / "report"), "--bootstrap", "0", "--pieces", "0", "--sections", "0"]) == 0
    assert main(["-q", "breakage", str(phases_24), "-o", str(tmp_path / "grind"), "--p80", "10",
                 "--realisations", "1"]) == 0
    assert len(blocks_seen) == 3 and all(d.in_process and d.client is None for d in blocks_seen)


def test_small_run_from_tiff_slices_computes_on_threads(tmp_path: Path, blocks_seen: list[Any]) -> None:
    import tifffile

    folder = tmp_path / "slices"
    folder.mkdir()
    scan = (np.random.default_rng(2).random((20, 24, 24)) * 200).astype(np.uint8)
    for z, plane in enumerate(scan):
        tifffile.imwrite(folder / f"s{z:03d}.tif", plane)
    config = tmp_path / "run.yaml"
    config.write_text(f"out: results\ninput: {{paths: [{folder}], voxel_size: 1.0}}\n"
                      "segment: {method: threshold, classes: 2}\nparticles: {min_size: 5, split: false}\n"
                      "liberation: {n_boot: 0, pieces: 0, section_step: 0}\n")
    assert main(["-q", "run", str(config)]) == 0
    assert len(blocks_seen) == 1 and blocks_seen[0].in_process and blocks_seen[0].client is None
