"""Interrupted writes resume where they stopped; a lost worker's chunks are recomputed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from volmla.cli import main
from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume
from volmla.preprocess import preprocess

SHAPE = (48, 32, 32)
CHUNK = 16  # 3 x 2 x 2 = 12 chunks
STEP = "nlmeans:h=120,patch_radius=1,search_radius=4"  # slow enough (per chunk) to interrupt
N_CHUNKS = 3 * 2 * 2


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An input volume and its filtered result from an uninterrupted in-process run."""
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(11)
    x = (rng.normal(1500, 100, SHAPE) + 800 * (rng.random(SHAPE) > 0.7)).astype(np.uint16)
    path = write_volume(x, root / "scan.zarr", voxel_size=1.0, chunks=CHUNK)
    reference = write_volume(preprocess(open_volume(path), [STEP]), root / "reference.zarr", chunks=CHUNK)
    return path, open_volume(reference).values


def _markers(out: Path) -> int:
    done = out / ".volmla-done" / "0"
    return len(list(done.iterdir())) if done.is_dir() else 0


def _command(scan: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "volmla.cli", "--workers", "1", "-q", "-v", "preprocess", str(scan),
            "-o", str(out), "--step", STEP, "--chunks", str(CHUNK)]


def test_killed_run_resumes_only_missing_chunks(scan, tmp_path, capsys):
    path, reference = scan
    out = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(_command(path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while _markers(out) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, mid-write
        proc.wait()
    before = _markers(out)
    assert 4 <= before < N_CHUNKS, f"the run was not interrupted mid-write ({before} markers)"
    with pytest.raises(VolmlaError, match="incomplete"):
        open_volume(out)
    # another job may not take over the interrupted output
    other = main(["-q", "preprocess", str(path), "-o", str(out), "--step", "median", "--chunks", str(CHUNK)])
    assert other == 2 and _markers(out) == before
    assert "exists: pass --overwrite" in capsys.readouterr().err

    rerun = subprocess.run(_command(path, out), capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    counts = re.findall(r"level 0 of \S+: (\d+) of (\d+) chunks to write", rerun.stderr)
    assert counts, rerun.stderr[-2000:]
    to_write, total = map(int, counts[-1])
    assert total == N_CHUNKS
    assert to_write == N_CHUNKS - before
    np.testing.assert_array_equal(open_volume(out).values, reference)
    assert not (out / ".volmla-done").exists()


async def _exit_worker() -> None:
    os._exit(1)  # the worker process dies without a word, as on a lost node


def test_lost_worker_tasks_are_recomputed(scan, tmp_path):
    from distributed import Client, LocalCluster

    path, reference = scan
    out = tmp_path / "out.zarr"
    killed: dict[str, object] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]

        def kill_one_worker_mid_write() -> None:
            deadline = time.monotonic() + 120
            while _markers(out) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            killed["markers"] = _markers(out)
            client.run(_exit_worker, workers=[victim], wait=False)

        killer = threading.Thread(target=kill_one_worker_mid_write, daemon=True)
        killer.start()
        write_volume(preprocess(open_volume(path), [STEP]), out, chunks=CHUNK)
        killer.join(timeout=10)
        workers_after = set(client.scheduler_info()["workers"])
    assert 3 <= int(killed["markers"]) < N_CHUNKS, killed  # the worker died mid-write
    assert victim not in workers_after  # it really went away (the nanny started a new one)
    np.testing.assert_array_equal(open_volume(out).values, reference)
