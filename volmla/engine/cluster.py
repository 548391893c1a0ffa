"""Where the Dask graphs run: an embedded LocalCluster, a remote scheduler, or GPU workers.

1. :func:`cluster` is a context manager that yields a :class:`distributed.Client`:
   an embedded ``LocalCluster`` sized to the machine by default (one single-threaded
   worker process per core, the memory shared among them), or a client attached to an
   existing scheduler (``scheduler="tcp://HOST:8786"``), failing within a few seconds if
   the address does not answer;
2. with ``gpus=N`` it starts one worker per GPU (dask-cuda's ``LocalCUDACluster`` when it
   is installed), each with the worker resource ``GPU=1``; :func:`gpu_annotation` puts
   that resource on GPU tasks so they land on GPU workers;
3. :func:`compute` is the one place library writers hand tasks to: on the current
   client if there is one (else Dask's threaded scheduler), with a progress bar only
   when the command line has switched progress on (:func:`progress_enabled`);
4. :func:`on_demand` defers starting a cluster until a computation is worth it: a
   block whose data fit in this process (:func:`fits_in_process`: under
   :data:`SMALL_BYTES` and an eighth of the memory available) runs wholly on Dask's
   threaded scheduler, as do graphs of at most :data:`SMALL_GRAPH` tasks (a volume of a
   few chunks), so a small command does not pay the ~3 s a cluster takes to start; for
   larger data the first larger graph starts the cluster, and every later computation of
   the block uses it. On the threaded path too, no task outlives an interrupted
   :func:`compute` (it waits for the running ones before the error propagates).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

_PROGRESS = {"on": False}

__all__ = ["SMALL_BYTES", "SMALL_GRAPH", "cluster", "compute", "current_client", "fits_in_process", "gpu_annotation",
           "on_demand", "peak_rss", "progress_enabled", "release_freed_memory", "worker_environ"]

SMALL_GRAPH = 64
"""Graphs of at most this many tasks run in-process under :func:`on_demand` (a volume of
a few chunks: starting a cluster would cost more than it saves)."""

SMALL_BYTES = 64 * 2**20
"""Input data of at most this many bytes (and an eighth of the available memory) run
in-process under :func:`on_demand`, however many tasks their graphs hold: a 400^3 uint8
volume, or 256^3 float32. Past it, worker processes win: the cluster's start-up (~3 s)
is small beside the computation, the Python parts of the kernels (union-find, merges,
task glue) run one at a time on threads (the GIL), and workers bound their memory."""


def fits_in_process(nbytes: int) -> bool:
    """Whether a computation over ``nbytes`` of input runs on threads in this process.

    True when ``nbytes`` is at most :data:`SMALL_BYTES` and at most an eighth of the
    memory available now (the stages' intermediates, distance maps and 64-bit labels,
    are several times their input).

    Parameters
    ----------
    nbytes
        Bytes of the input volumes (uncompressed).

    Returns
    -------
    bool

    Examples
    --------
    >>> fits_in_process(100**3), fits_in_process(2**40)
    (True, False)
    """
    if nbytes > SMALL_BYTES:
        return False
    import psutil

    return nbytes <= psutil.virtual_memory().available // 8


@contextlib.contextmanager
def progress_enabled(on: bool = True) -> Iterator[None]:
    """Show progress bars for :func:`compute` calls inside this block (CLI only).

    Parameters
    ----------
    on
        Whether bars are shown.

    Yields
    ------
    None
    """
    previous = _PROGRESS["on"]
    _PROGRESS["on"] = on
    try:
        yield
    finally:
        _PROGRESS["on"] = previous


def current_client() -> Any | None:
    """The active distributed Client, or None.

    Returns
    -------
    distributed.Client or None
    """
    if "distributed" not in sys.modules:  # no client can exist; importing it costs ~0.4 s
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


MIN_WORKER_BYTES = 256 << 20
"""The least memory an embedded worker process is given (Python, NumPy and Dask take
~150 MB before any block): ``--workers 1000000`` made a cluster that never started."""


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


@contextlib.contextmanager
def cluster(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = None,
    gpus: int = 0,
    timeout: float = 5.0,
    dashboard: bool | str = True,
    task_errors: bool = False,
) -> Iterator[Any]:
    """Yield a Dask client: embedded, attached to ``scheduler``, or one worker per GPU.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``); ``None`` starts an
        embedded ``LocalCluster``.
    workers
        Worker processes for the embedded cluster (default: one per core).
    threads_per_worker
        Threads in each worker.
    memory_limit
        Per-worker memory limit (default: the machine's memory shared equally).
    gpus
        Start one worker per GPU instead, each with the resource ``GPU=1``.
    timeout
        Seconds to wait for ``scheduler`` before failing.
    dashboard
        Serve the embedded cluster's dashboard: ``True`` on this machine only
        (``127.0.0.1``, a free port), an address such as ``"0.0.0.0:8787"`` to serve the
        network (the page shows task keys, paths and logs, without authentication), or
        ``False`` for none.
    task_errors
        Let embedded workers log each failed task ("Compute Failed" and its traceback);
        by default the error reaches the caller once, as an exception.

    Yields
    ------
    distributed.Client
        Closed (and the embedded cluster shut down) when the block ends.

    Examples
    --------
    >>> with cluster(workers=2) as client:  # doctest: +SKIP
    ...     print(client.dashboard_link)
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if workers is not None or gpus:
            logger.info("workers and gpus are ignored when attaching to %s", scheduler)
        _quiet_known_noise()
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=True)
        except (OSError, TimeoutError) as exc:
            raise VolmlaError(f"scheduler {scheduler} does not answer: {' '.join(str(exc).split())}") from None
        except ValueError as exc:  # an address distributed cannot parse
            raise VolmlaError(f"scheduler must be an address such as tcp://host:8786, got {scheduler!r} ({exc})") from None
        try:
            yield client
        finally:
            _close(client, None)
        return

    if workers is not None and workers < 1:
        raise VolmlaError(f"workers must be at least 1, got {workers}")
    if workers is not None and memory_limit is None and workers * MIN_WORKER_BYTES > _total_memory():
        most = max(1, _total_memory() // MIN_WORKER_BYTES)
        raise VolmlaError(f"workers {workers} do not fit this machine's memory: at most {most} worker processes "
                          f"of {MIN_WORKER_BYTES >> 20} MiB each")
    if gpus < 0:
        raise VolmlaError(f"gpus must be 0 or more, got {gpus}")
    dash = _dashboard_address(dashboard)

    def start() -> tuple[Any, Any]:
        if gpus:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
                local: Any = _gpu_cluster(gpus, memory_limit, dash)
        else:
            n = workers or os.cpu_count() or 1
            limit = memory_limit if memory_limit is not None else int(_total_memory() * 0.9 / n)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
                local = LocalCluster(
                    n_workers=n,
                    threads_per_worker=threads_per_worker,
                    processes=True,
                    memory_limit=limit,
                    dashboard_address=dash or _HTTP_ONLY,
                    scheduler_kwargs={"dashboard": dash is not None},
                )
        _quiet_known_noise()
        try:
            client = Client(local, set_as_default=True)
            client.register_plugin(_embedded_worker_setup(task_errors=task_errors), name="volmla-worker-setup")
        except BaseException:
            _close(None, local)
            raise
        return client, local

    client, local = _start_embedded(start)
    try:
        yield client
    finally:
        _close(client, local)


START_TRIES = 2
"""Times the embedded cluster is started before its failure is the user's error: on a
loaded machine a worker process can miss its start-up handshake, and distributed then
fails with a bare ``AssertionError`` or a timeout that a second start does not meet."""


def _start_embedded(start: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``start()`` (a client and its embedded cluster), tried :data:`START_TRIES` times.

    Raises
    ------
    VolmlaError
        Every try failed: one line naming the last failure.
    """
    for attempt in range(1, START_TRIES + 1):
        try:
            return start()
        except VolmlaError:
            raise
        except Exception as exc:  # distributed's own start-up failures: asserts, timeouts, OSError
            failure = f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")
            logger.info("the embedded Dask cluster did not start (try %d of %d): %s", attempt, START_TRIES, failure)
    raise VolmlaError(f"the embedded Dask cluster did not start ({START_TRIES} tries; last: {failure}); "
                      "is the machine short of memory or processes?")


_HTTP_ONLY = "127.0.0.1:0"
"""Where the scheduler's HTTP server (health, metrics, info pages) binds when there is no
dashboard: it starts anyway, and without an address it would take ``:8787`` on every
interface."""


def _dashboard_address(dashboard: bool | str) -> str | None:
    """The dashboard's bind address: this machine only unless an address is given."""
    if dashboard is True:
        return "127.0.0.1:0"  # ":0" would bind every interface
    if dashboard is False or dashboard is None:
        return None
    if not isinstance(dashboard, str) or not dashboard.strip():
        raise VolmlaError(f"dashboard must be an address such as 127.0.0.1:8787, got {dashboard!r}")
    address = dashboard.strip()
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise VolmlaError(f"dashboard must be an address HOST:PORT (port 0..65535) such as 127.0.0.1:8787, "
                          f"got {dashboard!r}")
    if host:
        import socket

        try:
            socket.getaddrinfo(host.strip("[]"), None)
        except (OSError, UnicodeError):
            raise VolmlaError(f"dashboard host {host!r} is no address of this machine's network") from None
    return address


class _DropCancelledGather(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a gather that was
    cancelled (distributed's ``AllExit``): the caller stopped waiting on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "AllExit"


class _DropTaskErrors(logging.Filter):
    """Drops a worker's "Compute Failed" record: the caller gets the error itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


class _DropRunSpecNotice(logging.Filter):
    """Drops the scheduler's "Detected different `run_spec` for key" warning.

    volmla computes several graphs that share lazy layers (a mask's histogram, then the
    mask); Dask fuses them differently per call, so a released key comes back as a fused
    alias of the same pure, deterministic task. The warning guards against keys reused
    for *different* computations, which volmla's tokenized keys never are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected different `run_spec`" not in str(record.msg)


class _DropInterruptedSyncCancel(logging.Filter):
    """Drops tornado's report of distributed's ``sync`` cancel callback failing on Ctrl-C.

    When the interrupt lands before ``distributed.utils.sync`` has created its future,
    the cancel callback it schedules raises ``NameError`` (``future`` unbound) on the
    event loop's thread, and tornado logs that traceback on top of volmla's one-line
    "interrupted" message. The computation is cancelled either way; only the report goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "sync.<locals>.cancel" not in record.getMessage()


def _quiet_known_noise() -> None:
    """Install the log filters above once per process (each is idempotent)."""
    for name, kind in (("distributed.scheduler", _DropRunSpecNotice), ("tornado.application", _DropInterruptedSyncCancel)):
        log = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in log.filters):
            log.addFilter(kind())


class _DropClosingPeer(logging.Filter):
    """Drops an embedded worker's tracebacks of a peer that closed under it: "Failed to
    communicate with scheduler during heartbeat" (the scheduler closes a retiring
    worker's connections while its last heartbeat is in flight) and "Worker stream died
    during communication" (after Ctrl-C the workers retire together, one while another
    still gathers a result from it). A scheduler or worker lost mid-run fails the
    command's own computation, which reports it once."""

    _PREFIXES = ("Failed to communicate with scheduler during heartbeat", "Worker stream died during communication")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._PREFIXES)


def _embedded_worker_setup(*, task_errors: bool) -> Any:
    """A worker plugin for the embedded cluster's workers, restarted ones included.

    1. Ctrl-C in a terminal reaches every process of the group; the workers ignore it
       (the command closes them in order), instead of each printing the traceback of
       its interrupted event loop; the heartbeat or the gather a closing peer cuts
       short is not logged (:class:`_DropClosingPeer`);
    2. unless ``task_errors``, a failed task is not logged by the worker
       (:class:`_DropTaskErrors`): the error reaches the caller, which reports it once.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        idempotent = True

        def __init__(self, task_errors: bool) -> None:
            self.task_errors = task_errors

        def setup(self, worker: Any) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            log = logging.getLogger("distributed.worker")
            if not any(isinstance(f, _DropClosingPeer) for f in log.filters):
                log.addFilter(_DropClosingPeer())
            if not self.task_errors and not any(isinstance(f, _DropTaskErrors) for f in log.filters):
                log.addFilter(_DropTaskErrors())
                # Tasks cancelled after another task's error (compute() cancels the rest)
                # log "ended with CancelledError" warnings: noise beside the one error line.
                logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)

    return WorkerSetup(task_errors)


def _close(client: Any | None, local: Any | None) -> None:
    """Close the embedded cluster in order: its workers, the client, then the scheduler.

    Closing the scheduler first leaves each worker a heartbeat in flight to a closed
    connection, and the worker process prints a ``CommClosedError`` traceback (in about
    one run in five). So the workers are closed first (``scale(0)`` waits for their
    nannies to stop them) while the scheduler still answers; the messages of the
    connections closing after that are silenced for the close.
    """
    noisy = ("distributed.core", "distributed.comm", "distributed.batched", "distributed.nanny",
             "distributed.worker", "distributed.scheduler", "distributed.client", "tornado.application",
             "asyncio")
    levels = {name: logging.getLogger(name).level for name in noisy}
    quiet = not logger.isEnabledFor(logging.INFO)
    try:
        if quiet:
            for name in noisy:
                logging.getLogger(name).setLevel(logging.CRITICAL)
        if local is not None:
            with contextlib.suppress(Exception):
                local.scale(0)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if local is not None:
            with contextlib.suppress(Exception):
                local.close()
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def worker_environ() -> dict[str, Any]:
    """The environment embedded workers start with: Dask's, tuned for large blocks.

    1. without ``MALLOC_TRIM_THRESHOLD_``: Dask sets it so that workers hand freed memory
       back to the system, but setting it also switches off glibc's dynamic mmap
       threshold, so every buffer above 128 KiB is mapped afresh and page-faulted;
    2. with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35; ignored by older
       ones): buffers that malloc maps (Blosc's, Zarr's) get transparent huge pages, as
       NumPy already asks for its own arrays, so a 64 MB chunk costs 32 page faults
       instead of 16,384.

    Measured on a 256^3 float32 chunk: Blosc decode 75 -> 28 ms, encode 114 -> 75 ms,
    Zarr read 105 -> 51 ms; the first change alone took a 512^3 gaussian on one worker
    from 10.6 s to 8.1 s. The blocks are freed when a task ends, so memory stays bounded
    by the blocks in flight; what glibc keeps of them is handed back after every
    :func:`compute` (:func:`release_freed_memory`).

    Returns
    -------
    dict
        Environment variables for the embedded workers.

    Examples
    --------
    >>> env = worker_environ()
    >>> "MALLOC_TRIM_THRESHOLD_" in env, "glibc.malloc.hugetlb=1" in env["GLIBC_TUNABLES"]
    (False, True)
    """
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    tunables = [t for t in str(env.get("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES", ""))).split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        tunables.append("glibc.malloc.hugetlb=1")
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def peak_rss(*, reset: bool = False) -> int:
    """Peak resident memory of the calling process in bytes (Linux), e.g. of every worker
    through ``client.run(peak_rss)``.

    Read from ``VmHWM`` in ``/proc/self/status``, the high-water mark of this process's
    own address space. ``getrusage``'s ``ru_maxrss`` is not used: across ``fork`` +
    ``exec`` Linux carries over the parent's high-water mark, so a worker spawned by a
    driver holding 1 GB reports 1 GB before doing anything.

    Parameters
    ----------
    reset
        Reset the mark to the current RSS afterwards (``/proc/self/clear_refs``), so the
        next call reports the peak since this one.

    Returns
    -------
    int
        Bytes; 0 where ``/proc`` is not available.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            kib = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0
    if reset:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")  # where it is not allowed the mark simply keeps running
    return kib * 1024


def _gpu_cluster(gpus: int, memory_limit: str | int | None, dash: str | None) -> Any:
    from volmla.engine.backend import gpu_count

    found = gpu_count()
    if found < gpus:
        raise VolmlaError(f"gpus={gpus} asked for, but {found} CUDA device(s) work here")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        LocalCUDACluster = None
    if LocalCUDACluster is not None:
        return LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=list(range(gpus)),
            resources={"GPU": 1},
            dashboard_address=dash or _HTTP_ONLY,
            scheduler_kwargs={"dashboard": dash is not None},
            memory_limit=memory_limit or "auto",
        )
    from distributed import Nanny, Scheduler, SpecCluster

    limit = memory_limit if memory_limit is not None else int(_total_memory() * 0.9 / gpus)
    workers = {
        f"gpu-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "memory_limit": limit,
                "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(i)},
            },
        }
        for i in range(gpus)
    }
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {
        "dashboard_address": dash or _HTTP_ONLY, "dashboard": dash is not None}})


def gpu_annotation(device: str) -> contextlib.AbstractContextManager[Any]:
    """``dask.annotate(resources={"GPU": 1})`` for GPU work on a GPU cluster, else a no-op.

    Parameters
    ----------
    device
        The resolved device, ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    contextlib.AbstractContextManager
    """
    client = current_client()
    if device != "gpu" or client is None:
        return contextlib.nullcontext()
    info = client.scheduler_info()
    if not any("GPU" in w.get("resources", {}) for w in info.get("workers", {}).values()):
        return contextlib.nullcontext()
    return dask.annotate(resources={"GPU": 1})


def compute(tasks: Sequence[Any], *, desc: str = "computing", optimize: bool = True) -> list[Any]:
    """Compute Dask collections or delayed objects; the one place writers call compute.

    Runs on the current distributed client if any (else the threaded scheduler) and
    shows a progress bar when :func:`progress_enabled` is on. ``optimize=False`` skips
    Dask's graph optimisation (for graphs built by hand, which it cannot improve).

    Parameters
    ----------
    tasks
        Dask collections or delayed objects.
    desc
        What the progress bar says.
    optimize
        Whether Dask optimises the graph first.

    Returns
    -------
    list
        One result per task, in order.
    """
    tasks = list(tasks)
    client = current_client()
    if client is None and _DEFERRED:
        client = _DEFERRED[-1].client_for(tasks)
    if client is None:
        if _show_progress():
            return _threaded_with_progress(tasks, desc, optimize)
        return _local_compute(tasks, optimize)
    import warnings

    with warnings.catch_warnings():
        # a lookup table given once as a graph key (engine.blocks.shared) is what the
        # warning recommends; its size is not a problem
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        futures = _submit(client, tasks, optimize)
    try:
        results = _gather_as_completed(futures, desc)
    except BaseException:  # an error or Ctrl-C: no task of this call may outlive it
        from distributed import Future

        _cancel(client, [f for f in futures if isinstance(f, Future)])
        raise
    del futures
    _trim_workers(client)
    return results


def _submit(client: Any, tasks: list[Any], optimize: bool) -> list[Any]:
    """``client.compute(tasks)``, one future (or plain value) per task, in order.

    Distributed (2026.8) pairs the futures of a list that mixes collection types (Dask
    arrays and Delayed objects) in the order it optimises them, not the list's:
    collections of each type go in their own call (both submitted before any wait).
    """
    kinds: dict[type, list[int]] = {}
    for i, t in enumerate(tasks):
        if dask.is_dask_collection(t):
            kinds.setdefault(type(t), []).append(i)
    futures: list[Any] = list(tasks)
    for where in kinds.values():
        for i, f in zip(where, client.compute([tasks[i] for i in where], optimize_graph=optimize,
                                              **_plane_order(client)), strict=True):
            futures[i] = f
    return futures


def _gather_as_completed(futures: list[Any], desc: str) -> list[Any]:
    """Each result as soon as its task ends, so workers do not hold the finished ones
    (per-block tables of a whole volume) until the last is done."""
    from distributed import Future, as_completed

    slots: dict[Any, list[int]] = {}
    results: list[Any] = list(futures)
    for i, f in enumerate(futures):
        if isinstance(f, Future):
            slots.setdefault(f.key, []).append(i)
    futures = [f for f in futures if isinstance(f, Future)]
    with contextlib.ExitStack() as stack:
        advance: Callable[[], None] = lambda: None  # noqa: E731
        if _show_progress():
            from rich.progress import Progress

            bar = stack.enter_context(Progress(console=_stderr_console(), transient=True))
            job = bar.add_task(desc, total=len(futures))
            advance = functools.partial(bar.advance, job)
        for future, result in as_completed(list({f.key: f for f in futures}.values()), with_results=True):
            for i in slots[future.key]:
                results[i] = result
            future.release()
            for _ in slots[future.key]:
                advance()
    return results


def plane_priority(key: Any) -> int:
    """Scheduler priority of a task key: blocks in raster order (z, then y, then x).

    Block tasks are keyed ``(name, z, y, x, ...)``. Dask's static order grows a ball
    through a halo graph's block grid, so the blocks held (read, waiting for the last
    neighbour that needs their faces) grow with the volume's depth: 320 of 1024 blocks
    of a 2048 x 1024 x 1024 volume in 128^3 chunks, 2 GB per worker for a uint64 halo
    pass, against 1 GB in raster order, which holds about one plane of blocks
    whatever the depth. Keys without a block index (reductions' last steps, collected
    results) come first: they free memory.

    Parameters
    ----------
    key
        A Dask key.

    Returns
    -------
    int
        The annotation Distributed runs higher first: minus the block index packed
        20 bits per axis.

    Examples
    --------
    >>> [plane_priority(k) for k in [("b", 0, 0, 1), ("b", 0, 1, 0), ("b", 1, 0, 0), "collect"]]
    [-1, -1048576, -1099511627776, 0]
    """
    if not isinstance(key, tuple) or len(key) < 2:
        return 0
    rank = 0
    for i in key[1:4]:
        if not isinstance(i, int):
            break
        rank = (rank << 20) + min(i, (1 << 20) - 1)
    return -rank


def _plane_order(client: Any) -> dict[str, Any]:
    """``priority=`` for ``client.compute`` when the scheduler can import volmla.

    The scheduler calls the annotation on each key, so it must unpickle
    :func:`plane_priority`; a remote scheduler without volmla gets Dask's own order.
    """
    known = _PLANE_ORDER.get(id(client))
    if known is None:
        try:
            known = bool(client.run_on_scheduler(_imports_volmla))
        except Exception:  # an old or restricted scheduler: keep Dask's order
            known = False
        _PLANE_ORDER[id(client)] = known
    return {"priority": plane_priority} if known else {}


def _imports_volmla() -> bool:
    import importlib.util

    return importlib.util.find_spec("volmla") is not None


_PLANE_ORDER: dict[int, bool] = {}


def release_freed_memory() -> int:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim(0)``).

    Embedded workers run without ``MALLOC_TRIM_THRESHOLD_`` (:func:`worker_environ`), so
    glibc keeps what a step freed for the next allocation: fast, but the resident size
    after a step of large blocks stays at that step's peak (0.9 GB against 0.5 GB live
    per worker after a 256^3 run). :func:`compute` calls this on every worker after
    each call, between steps, where it costs milliseconds.

    Returns
    -------
    int
        1 if memory was released, 0 if not (or not glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return 0
    try:
        return int(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return 0


def _trim_workers(client: Any) -> None:
    with contextlib.suppress(Exception):  # a closing or remote cluster: nothing to trim
        client.run(release_freed_memory)


def _cancelled_running(dask_worker: Any) -> int:
    """Tasks a worker is still executing though nobody wants them (cancelled)."""
    return sum(1 for ts in list(dask_worker.state.executing) if ts.state == "cancelled")


def _cancel(client: Any, futures: Sequence[Any], *, timeout: float = 60.0) -> None:
    """Cancel ``futures`` and wait until no worker still executes one of their tasks.

    A worker cannot stop a running task; it finishes it and drops the result. A caller
    that cleans up after an error or Ctrl-C (a scratch folder, a temporary output) must
    not race those tasks, which would write into what it has just removed. A second
    Ctrl-C stops the wait.
    """
    import time

    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropCancelledGather) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropCancelledGather())
    try:
        client.cancel(list(futures))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(client.run(_cancelled_running).values()):
                return
            time.sleep(0.05)
        logger.warning("tasks still running %.0f s after they were cancelled", timeout)
    except Exception as exc:  # the cluster itself is failing: nothing left to wait for
        logger.info("could not wait for cancelled tasks: %s", exc)


def _local_compute(tasks: list[Any], optimize: bool) -> list[Any]:
    """``dask.compute`` on the local scheduler; delayed objects over hand-built graphs
    (``optimize=False``) go to the scheduler directly, without Dask's expression layer
    (~2 ms a call, which shows on small in-memory volumes). On the threaded scheduler an
    error or Ctrl-C waits for the tasks already running, so none outlives the call."""
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    scheduler = _local_scheduler(tasks)
    with _own_pool(scheduler) as extra:
        if optimize or not tasks or not all(isinstance(t, Delayed) for t in tasks):
            return list(dask.compute(*tasks, optimize_graph=optimize, scheduler=scheduler, **extra))
        graph = HighLevelGraph.merge(*(t.__dask_graph__() for t in tasks))
        return list(scheduler(dict(graph), [t.key for t in tasks], **extra))


def _local_scheduler(tasks: list[Any]) -> Any:
    """The scheduler ``dask.compute`` would choose for ``tasks``, without importing
    distributed to look for a client when it is not loaded (none can exist then; the
    import costs ~0.4 s, a third of a small command)."""
    from dask.base import get_scheduler

    if "distributed" in sys.modules or dask.config.get("scheduler", None) is not None \
            or dask.config.get("get", None) is not None:
        return get_scheduler(collections=tasks)
    chosen = {t.__dask_scheduler__ for t in tasks if t is not None and hasattr(t, "__dask_scheduler__")}
    return chosen.pop() if len(chosen) == 1 else get_scheduler(collections=tasks)


@contextlib.contextmanager
def _own_pool(scheduler: Any) -> Iterator[dict[str, Any]]:
    """For Dask's threaded scheduler: a pool of this call's own, drained on the way out."""
    import dask.threaded

    if scheduler is not dask.threaded.get:
        yield {}
        return
    from concurrent.futures import ThreadPoolExecutor

    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="volmla-compute")
    try:
        yield {"pool": pool}
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # running tasks finish; queued ones never start
        raise
    pool.shutdown(wait=False)


class _Deferred:
    """A cluster started by the first computation worth it (see :func:`on_demand`)."""

    def __init__(self, start: Callable[[], contextlib.AbstractContextManager[Any]],
                 on_start: Callable[[Any], None] | None, small: int, in_process: bool) -> None:
        self.start, self.on_start, self.small = start, on_start, small
        self.in_process = in_process  # the block's data fit in this process: no cluster
        self.stack = contextlib.ExitStack()
        self.client: Any | None = None

    def client_for(self, tasks: list[Any]) -> Any | None:
        if self.client is None and not self.in_process and _n_tasks(tasks) > self.small:
            logger.info("starting the cluster for a graph of more than %d tasks", self.small)
            self.client = self.stack.enter_context(self.start())
            if self.on_start is not None:
                self.on_start(self.client)
        return self.client


def _n_tasks(tasks: list[Any]) -> int:
    from dask.base import collections_to_expr

    return len(collections_to_expr(tasks, optimize_graph=False).__dask_graph__())


_DEFERRED: list[_Deferred] = []


@contextlib.contextmanager
def on_demand(
    start: Callable[[], contextlib.AbstractContextManager[Any]],
    *,
    on_start: Callable[[Any], None] | None = None,
    small: int = SMALL_GRAPH,
    nbytes: int | None = None,
) -> Iterator[Any]:
    """Start a cluster only when a computation of this block is larger than ``small`` tasks
    and its data do not fit in this process.

    Parameters
    ----------
    start
        Makes the cluster's context (e.g. ``functools.partial(cluster, workers=2)``),
        entered at the first :func:`compute` of more than ``small`` tasks and left when
        the block ends.
    on_start
        Called with the client once the cluster has started (to print its dashboard).
    small
        Graphs of at most this many tasks run on a threaded scheduler in this process.
    nbytes
        Bytes of the data the block computes on (its input volumes), if known: when
        they fit (:func:`fits_in_process`), every computation of the block runs on the
        threaded scheduler and the cluster never starts.

    Yields
    ------
    object
        A handle whose ``client`` is the started cluster's client, or None while none was
        needed, and whose ``in_process`` says whether the data fit in this process.

    Examples
    --------
    >>> import functools
    >>> with on_demand(functools.partial(cluster, workers=2)) as deferred:  # doctest: +SKIP
    ...     compute([small_array.sum()])  # threads, no cluster
    >>> deferred.client is None  # doctest: +SKIP
    True
    """
    in_process = nbytes is not None and fits_in_process(nbytes)
    if in_process:
        logger.info("%.1f MB of data: computing on threads in this process, no cluster", (nbytes or 0) / 1e6)
    deferred = _Deferred(start, on_start, small, in_process)
    _DEFERRED.append(deferred)
    try:
        yield deferred
    finally:
        _DEFERRED.remove(deferred)
        deferred.stack.close()


def _show_progress() -> bool:
    import sys

    return _PROGRESS["on"] and sys.stderr.isatty()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _threaded_with_progress(tasks: list[Any], desc: str, optimize: bool) -> list[Any]:
    from dask.callbacks import Callback
    from rich.progress import Progress

    with Progress(console=_stderr_console(), transient=True) as bar:
        job = bar.add_task(desc, total=None)

        class _Rich(Callback):
            def _start_state(self, dsk: Any, state: Any) -> None:
                bar.update(job, total=len(state["ready"]) + len(state["waiting"]) + len(state["running"]))

            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                bar.advance(job)

        with _Rich():
            return _local_compute(tasks, optimize)
