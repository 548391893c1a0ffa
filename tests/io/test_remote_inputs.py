"""Volumes on a web server or an object store as command-line inputs (issue 19: the client
needs no shared file system to read them), fingerprinted so a replaced remote input is
another job."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from volmla.cli import main
from volmla.io import open_volume, write_volume
from volmla.io.outputs import input_fingerprint, job_identity, source_id
from volmla.particles import label_particles
from volmla.synthetic import phantom

pytest.importorskip("aiohttp")  # fsspec's HTTP file system


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on a free loopback port: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _phases(where: Path, seed: int) -> np.ndarray:
    ph = phantom(shape=(40, 40, 40), seed=seed, esd_range=(6.0, 12.0))
    write_volume(ph.phases, where, voxel_size=2.5, chunks=16, kind="phases", phases=["quartz", "feldspar", "pyrite"],
                 overwrite=True)
    return np.asarray(ph.phases)


def test_source_id_keeps_urls_and_resolves_paths(tmp_path: Path) -> None:
    assert source_id("s3://bucket/a.zarr") == "s3://bucket/a.zarr"
    assert source_id(f"file://{tmp_path}/x/../a.zarr") == str(tmp_path / "a.zarr")


def test_remote_fingerprint_follows_the_content(served: tuple[Path, str]) -> None:
    root, base = served
    _phases(root / "p.zarr", seed=1)
    url = f"{base}/p.zarr"
    first = input_fingerprint(url)
    assert first == input_fingerprint(url)
    assert job_identity({"command": "x", "input": url})["input_fingerprints"] == {"input": first}
    _phases(root / "p.zarr", seed=2)  # replaced on the server
    assert input_fingerprint(url) != first


def test_cli_reads_remote_volumes_and_a_replaced_input_is_another_job(
        served: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, base = served
    phases = _phases(root / "phases.zarr", seed=4)
    url = f"{base}/phases.zarr"
    out = tmp_path / "particles.zarr"

    assert main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [40, 40, 40] and info["voxel_size_um"] == [2.5, 2.5, 2.5]

    assert main(["particles", url, "-o", str(out)]) == 0
    particles = open_volume(out)
    assert particles.attrs["voxel_size_um"] == (2.5, 2.5, 2.5)
    local = label_particles(open_volume(root / "phases.zarr"), threshold=None)
    np.testing.assert_array_equal(np.asarray(particles), local.labels.values)  # as if read locally
    assert local.count >= 1 and ((np.asarray(particles) > 0) == (phases > 0)).all()
    written = (out / "zarr.json").read_bytes()

    lib = tmp_path / "lib"
    assert main(["liberation", "--phases", url, "--particles", str(out), "--out", str(lib), "--bootstrap", "0",
                 "--pieces", "0", "--sections", "0"]) == 0
    summary = json.loads((lib / "summary.json").read_text())
    assert set(summary["liberation_degree"]) == {"quartz", "feldspar", "pyrite"}
    assert url in json.dumps(summary["provenance"])

    assert summary["n_particles"] >= 3
    # a rerun (here on a replaced remote volume) is refused without --overwrite, output untouched
    _phases(root / "phases.zarr", seed=5)
    capsys.readouterr()
    assert main(["particles", url, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite" in err
    assert (out / "zarr.json").read_bytes() == written



def test_run_config_takes_a_url_input(served: tuple[Path, str], tmp_path: Path) -> None:
    from volmla.pipeline import validate_config

    _, base = served
    cfg = validate_config({"out": str(tmp_path / "o"), "input": f"{base}/scan.zarr",
                           "segment": {"labels": f"{base}/labels.zarr"}}, base=tmp_path)
    assert cfg.input.zarr == f"{base}/scan.zarr"
    assert cfg.segment is not None and cfg.segment.labels == f"{base}/labels.zarr"
