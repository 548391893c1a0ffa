"""Attaching to a running scheduler, from Python and from the command line."""

from __future__ import annotations

import os
import socket
import time

import dask
import dask.array as da
import numpy as np
import pytest

from volmla.cli import main
from volmla.engine import cluster as vc
from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume


@pytest.fixture(scope="module")
def scheduler():
    """A scheduler with one in-process worker on loopback, shared by this module."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as local:
        yield local.scheduler_address


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_address() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def test_attach_to_scheduler_and_compute(scheduler):
    x = da.arange(1000, chunks=100)
    with vc.cluster(scheduler=scheduler) as client:
        assert client.scheduler.address == scheduler
        assert vc.current_client() is client
        (total,) = vc.compute([x.sum()])
        assert total == 499500
        assert len(client.scheduler_info()["workers"]) == 1
        # the work ran on the attached cluster's worker
        (where,) = vc.compute([dask.delayed(_worker_address)()])
        assert where == next(iter(client.scheduler_info()["workers"]))
    assert vc.current_client() is None


def test_cli_preprocess_on_attached_scheduler(scheduler, tmp_path, capsys, rng):
    x = rng.integers(0, 4000, (12, 14, 13)).astype(np.uint16)
    scan = write_volume(x, tmp_path / "scan.zarr", voxel_size=1.0, chunks=7)
    out = tmp_path / "med.zarr"
    code = main(["--scheduler", scheduler, "preprocess", str(scan), "-o", str(out), "--step", "median:size=3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "dask dashboard" in captured.err
    import scipy.ndimage as ndi

    np.testing.assert_array_equal(open_volume(out).values, ndi.median_filter(x, size=3))


def test_scheduler_that_does_not_answer_fails_fast(tmp_path, capsys, rng):
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(VolmlaError, match=f"scheduler {address} does not answer"):
        with vc.cluster(scheduler=address, timeout=1.0):
            pass
    scan = write_volume(rng.integers(0, 9, (6, 6, 6)).astype(np.uint8), tmp_path / "s.zarr", voxel_size=1.0)
    start = time.monotonic()
    code = main(["--scheduler", address, "preprocess", str(scan), "-o", str(tmp_path / "o.zarr"), "--step", "median"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"volmla: error: scheduler {address} does not answer") and err.count("\n") == 1
    assert elapsed < 15  # a correctness bound ("does not hang"), not a benchmark
    assert not (tmp_path / "o.zarr").exists()


def test_bad_cluster_arguments():
    with pytest.raises(VolmlaError, match="workers must be at least 1, got 0"):
        with vc.cluster(workers=0):
            pass
    with pytest.raises(VolmlaError, match="gpus must be 0 or more, got -1"):
        with vc.cluster(gpus=-1):
            pass


def test_a_failed_embedded_start_is_tried_again_then_named_in_one_line(monkeypatch, tmp_path, capsys, rng):
    calls = []

    def flaky() -> tuple[str, str]:
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError  # what distributed raises when a worker misses its start-up handshake
        return "client", "cluster"

    assert vc._start_embedded(flaky) == ("client", "cluster") and len(calls) == 2

    import distributed

    def broken(*args, **kwargs):
        raise AssertionError

    monkeypatch.setattr(distributed, "LocalCluster", broken)
    with pytest.raises(VolmlaError, match=r"embedded Dask cluster did not start \(2 tries; last: AssertionError\)"):
        with vc.cluster(workers=1, dashboard=False):
            pass
    scan = write_volume(rng.integers(0, 9, (6, 6, 6)).astype(np.uint8), tmp_path / "s.zarr", voxel_size=1.0)
    code = main(["--workers", "1", "preprocess", str(scan), "-o", str(tmp_path / "o.zarr"), "--step", "median"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("volmla: error: the embedded Dask cluster did not start"), err
    assert not (tmp_path / "o.zarr").exists()


def test_embedded_workers_keep_glibcs_dynamic_mmap_threshold_and_use_huge_pages():
    # MALLOC_TRIM_THRESHOLD_ would make every large block allocation fault its pages again
    with vc.cluster(workers=1, dashboard=False) as client:
        seen = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        threads = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
        tunables = client.run(lambda: os.environ.get("GLIBC_TUNABLES"))
    assert list(seen.values()) == [None]
    assert "glibc.malloc.hugetlb=1" in next(iter(tunables.values()))  # huge pages for Blosc/Zarr buffers
    assert list(threads.values()) == ["1"]  # the rest of Dask's worker environment stays


def test_peak_rss_is_the_workers_own_and_resets():
    # getrusage would report the driver's peak in a freshly spawned worker (Linux keeps
    # the high-water mark across fork + exec); VmHWM is the worker's own
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc")
    ballast = np.ones(2**27, np.uint8)  # 128 MiB in the driver, every page touched
    before = vc.peak_rss()
    assert before >= ballast.nbytes
    with vc.cluster(workers=1, dashboard=False) as client:
        worker = next(iter(client.run(vc.peak_rss).values()))
        assert 0 < worker < before

        def grow_then_reset() -> tuple[int, int]:
            block = np.ones(2**28, np.uint8)  # 256 MiB touched
            del block
            peak = vc.peak_rss(reset=True)  # the mark, then reset to the current RSS
            return peak, vc.peak_rss()

        peak, after = next(iter(client.run(grow_then_reset).values()))
    assert peak >= 2**28 and after < peak - 2**27


def test_compute_hands_a_steps_freed_heap_back_to_the_system():
    # without MALLOC_TRIM_THRESHOLD_ glibc keeps freed small blocks; compute() trims after each call
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux")

    def churn() -> int:
        import psutil

        pieces = [bytearray(100_000) for _ in range(4000)]  # 400 MB in heap-sized pieces (below mmap's threshold)
        churn.kept = pieces[1::2]  # type: ignore[attr-defined]  # every other one stays: the heap cannot shrink
        del pieces
        return int(psutil.Process().memory_info().rss)

    def rss() -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    with vc.cluster(workers=1, dashboard=False) as client:
        (held,) = client.run(churn).values()
        vc.compute([dask.delayed(int)(1)], desc="trim")
        (after,) = client.run(rss).values()
    assert after < held - 150_000_000  # the freed half went back


@pytest.mark.parametrize("dashboard", [False, True])
def test_embedded_cluster_listens_on_this_machine_only(dashboard: bool) -> None:
    """Scheduler, its HTTP server (which starts even without a dashboard) and workers bind
    127.0.0.1: nothing of an embedded cluster is reachable from the network (issue 18)."""
    import psutil

    def listening() -> set[tuple[str, int]]:
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        found = set()
        for proc in procs:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        return found

    before = listening()
    with vc.cluster(workers=1, dashboard=dashboard) as client:
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        opened = listening() - before
    assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}


def test_two_clusters_without_dashboard_do_not_compete_for_a_port() -> None:
    """Without a dashboard the scheduler's HTTP server still starts: on a free port, not on
    8787, so concurrent volmla commands do not warn "Port 8787 is already in use"."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with vc.cluster(workers=1, dashboard=False) as one, vc.cluster(workers=1, dashboard=False) as two:
            ports = {one.scheduler_info()["services"]["dashboard"], two.scheduler_info()["services"]["dashboard"]}
    assert len(ports) == 2 and 8787 not in ports


def test_on_demand_runs_small_graphs_in_process_and_starts_the_cluster_for_large_ones() -> None:
    import functools

    import dask.array as da

    small = da.ones((40, 40, 40), chunks=20).sum()  # 8 blocks: a few tasks
    large = da.ones((40, 40, 40), chunks=5).sum()  # 512 blocks
    started: list[object] = []
    with vc.on_demand(functools.partial(vc.cluster, workers=1, dashboard=False), on_start=started.append) as deferred:
        assert vc.compute([small]) == [64000.0]
        assert deferred.client is None and not started and vc.current_client() is None
        assert vc.compute([large]) == [64000.0]
        assert deferred.client is not None and started == [deferred.client]
        assert vc.compute([small]) == [64000.0]  # once started, everything runs there
        assert vc.current_client() is deferred.client
    assert vc.current_client() is None


def test_interrupted_threaded_compute_leaves_no_task_running() -> None:
    """Ctrl-C on the threaded path: compute returns only after the running tasks finished,
    so a caller's cleanup never races a task that still writes."""
    import threading
    import time

    import dask

    finished: list[int] = []
    gate = threading.Event()

    def slow(i: int) -> int:
        gate.set()
        time.sleep(0.5)
        finished.append(i)
        return i

    def interrupt() -> int:
        assert gate.wait(10)
        raise KeyboardInterrupt

    tasks = [dask.delayed(slow)(i) for i in range(2)] + [dask.delayed(interrupt)()]
    with dask.config.set(scheduler="threads", num_workers=3), pytest.raises(KeyboardInterrupt):
        vc.compute(tasks)
    assert sorted(finished) == [0, 1]  # both were running: they finished before compute returned


def test_repeated_computes_of_shared_layers_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Two computes sharing lazy layers (fused differently by Dask) log no run_spec warning."""
    import dask.array as da

    x = da.random.default_rng(0).random((64, 64, 64), chunks=16)
    y = (x > 0.5).map_blocks(lambda b: b.astype(np.uint8), dtype=np.uint8)
    with vc.cluster(workers=1, dashboard=False) as client:
        assert vc.current_client() is client
        total = int(vc.compute([y.sum()])[0])
        assert int(vc.compute([(y * 2).sum()])[0]) == 2 * total
        assert vc.compute([y.max()])[0] == 1
    assert not [r for r in caplog.records if "run_spec" in r.getMessage()]


def test_interrupted_sync_cancel_report_is_dropped_and_other_loop_errors_kept() -> None:
    """A Ctrl-C before distributed's sync() made its future logs a NameError traceback from
    the loop thread on top of volmla's one-line message (seen once in CI); only that goes."""
    import logging

    from volmla.engine.cluster import _DropInterruptedSyncCancel, _quiet_known_noise

    _quiet_known_noise()
    _quiet_known_noise()
    log = logging.getLogger("tornado.application")
    assert sum(isinstance(f, _DropInterruptedSyncCancel) for f in log.filters) == 1

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("tornado.application", logging.ERROR, __file__, 1, msg, (), None)

    cancel = "Exception in callback functools.partial(<function sync.<locals>.cancel at 0x7f>)"
    assert not log.filter(record(cancel))
    assert log.filter(record("Exception in callback <function other at 0x7f>"))


def test_a_closing_peer_is_dropped_from_the_worker_log_and_other_errors_kept() -> None:
    """After Ctrl-C the workers retire together; one still gathering from another logged
    "Worker stream died during communication" with a traceback (seen once in CI)."""
    import logging

    from volmla.engine.cluster import _DropClosingPeer

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, ("tcp://127.0.0.1:1",), None)

    drop = _DropClosingPeer()
    assert not drop.filter(record("Worker stream died during communication: %s"))
    assert not drop.filter(record("Failed to communicate with scheduler during heartbeat."))
    assert drop.filter(record("Compute Failed"))


def test_compute_returns_results_in_order_with_repeated_and_failing_tasks(scheduler):
    x = da.arange(1000, chunks=100)
    with vc.cluster(scheduler=scheduler) as client:
        one, total, again, five = vc.compute([dask.delayed(int)(1), x.sum(), x.sum(), dask.delayed(int)(5)])
        assert (one, total, again, five) == (1, 499500, 499500, 5)
        # none kept: the futures are dropped when compute returns; the scheduler hears of it
        # a moment later (a loaded machine takes longer), so wait for it, within a bound
        deadline = time.monotonic() + 30
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
        with pytest.raises(ZeroDivisionError):
            vc.compute([x.sum(), dask.delayed(lambda: 1 // 0)()])


def test_compute_runs_the_blocks_of_a_volume_in_raster_order(scheduler):
    # one worker with one thread at a time runs ready tasks by priority: the blocks come
    # in z, y, x order (Dask's own order grows a ball through the grid: a deep volume's
    # halo pass then holds blocks in proportion to its depth)
    seen: list[tuple[int, ...]] = []

    def note(block, block_info=None):
        seen.append(tuple(block_info[0]["chunk-location"]))
        return block

    x = da.zeros((8, 4, 4), np.uint8, chunks=2).map_blocks(note, dtype=np.uint8)
    from distributed import Client

    with Client(scheduler) as client:
        futures = client.compute([x.sum()], **vc._plane_order(client))
        client.gather(futures)
    assert seen == sorted(seen)  # noqa: S101


def test_raster_priority_holds_one_plane_of_a_halo_pass_whatever_the_depth():
    # replay a halo graph in the order the scheduler follows (annotated priority, then
    # Dask's order) on one thread and count the input blocks held at once
    from dask.core import get_dependencies
    from dask.order import order

    from volmla.engine.overlap import halo_map

    def held_blocks(depth: int, *, raster: bool) -> int:
        x = da.zeros((depth, 64, 64), np.uint32, chunks=16)
        out = halo_map(x.astype(np.uint64), lambda b: b.astype(np.uint8), halo=1, dtype=np.uint8).sum()
        dsk = dict(dask.optimize(out)[0].__dask_graph__())
        deps = {k: get_dependencies(dsk, k) for k in dsk}
        users: dict = {k: set() for k in dsk}
        for k, ds in deps.items():
            for d in ds:
                users[d].add(k)
        rank = order(dsk)
        done: set = set()
        waiting: set = set()
        ready = {k for k in dsk if not deps[k]}
        peak = 0
        while ready:
            k = min(ready, key=lambda k: ((vc.plane_priority(k) * -1) if raster else 0, rank[k]))
            ready.remove(k)
            done.add(k)
            waiting.add(k)
            waiting -= {d for d in deps[k] if users[d] <= done}
            ready |= {u for u in users[k] if deps[u] <= done}
            peak = max(peak, sum(1 for w in waiting if isinstance(w, tuple) and w[0].startswith("astype")))
        return peak

    plane = 4 * 4
    assert held_blocks(128, raster=True) <= 2 * plane
    assert held_blocks(128, raster=True) == held_blocks(64, raster=True)
    assert held_blocks(128, raster=False) > 2 * plane  # what the priority is for
