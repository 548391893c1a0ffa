"""Dask clusters on batch schedulers (Slurm, PBS) through dask-jobqueue, shaped as volmla wants.

:func:`jobqueue_cluster` submits worker jobs the way volmla's embedded cluster runs on
one machine: per job, one single-threaded worker process per core (volmla's block kernels
are tuned for it), the job's memory shared among them, spilling to node-local scratch;
with ``gpus=1`` each job asks the batch system for one GPU and runs one worker that owns
it, with the resource ``GPU=1`` that volmla's GPU tasks ask for. The scheduler runs in
the calling process; its dashboard binds the node's loopback unless told otherwise.

dask-jobqueue is an optional dependency: ``pip install "volmla[hpc]"``.
"""

from __future__ import annotations

from typing import Any, Literal

from volmla.errors import VolmlaError

__all__ = ["SYSTEMS", "jobqueue_cluster"]

SYSTEMS = ("slurm", "pbs")


def jobqueue_cluster(
    system: Literal["slurm", "pbs"],
    *,
    cores: int,
    memory: str,
    walltime: str = "01:00:00",
    jobs: int = 1,
    gpus: int = 0,
    queue: str | None = None,
    account: str | None = None,
    local_directory: str = "$TMPDIR",
    dashboard: str = "127.0.0.1:8787",
    extra_directives: list[str] | None = None,
) -> Any:
    """A dask-jobqueue cluster of ``jobs`` batch jobs, each ``cores`` single-threaded workers.

    Parameters
    ----------
    system
        ``"slurm"`` or ``"pbs"``.
    cores
        Cores per job: one worker process per core (CPU jobs).
    memory
        Memory per job (``"64GB"``), shared equally among its workers.
    walltime
        Wall time per job (``HH:MM:SS``).
    jobs
        Jobs submitted at once (``cluster.scale(jobs=...)`` changes it later).
    gpus
        0, or 1: the job asks for one GPU (Slurm ``--gres=gpu:1``, PBS ``ngpus=1``) and
        runs one worker that owns it, with the resource ``GPU=1`` (scale GPUs with
        ``jobs``).
    queue, account
        The batch queue (partition) and account to charge, if the site needs them.
    local_directory
        Node-local scratch for spilled data (expanded on the node: ``$TMPDIR``).
    dashboard
        Where the scheduler's dashboard binds (this node's loopback by default).
    extra_directives
        More batch directives, verbatim (``["--constraint=skylake"]``).

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Connect a ``distributed.Client`` to it, then run volmla's functions (they
        compute on the current client).

    Examples
    --------
    >>> from distributed import Client
    >>> with jobqueue_cluster("slurm", cores=16, memory="64GB", jobs=4) as cl, Client(cl):  # doctest: +SKIP
    ...     volmla.pipeline.run_pipeline("run.yaml")
    """
    if system not in SYSTEMS:
        raise VolmlaError(f"system must be one of {SYSTEMS}, got {system!r}")
    for name, value, low in (("cores", cores, 1), ("jobs", jobs, 0), ("gpus", gpus, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise VolmlaError(f"{name} must be an integer >= {low}, got {value!r}")
    try:
        import dask_jobqueue
    except ImportError:
        raise VolmlaError('jobqueue_cluster needs dask-jobqueue: pip install "volmla[hpc]"') from None
    if gpus > 1:
        raise VolmlaError(f"gpus={gpus} per job: submit one job per GPU (gpus=1, jobs=N) so each worker owns one")
    directives = list(extra_directives or [])
    if gpus:
        directives.append("--gres=gpu:1")
        # one worker process that owns the job's GPU (GPU tasks ask for the resource GPU=1)
        worker = {"processes": 1, "worker_extra_args": ["--resources", "GPU=1"]}
    else:
        worker = {"processes": cores}  # cores / processes = one thread per worker
    cls = dask_jobqueue.SLURMCluster if system == "slurm" else dask_jobqueue.PBSCluster
    options: dict[str, Any] = {
        "cores": cores, "memory": memory, "walltime": walltime, "queue": queue, "account": account,
        "local_directory": local_directory, "job_extra_directives": directives,
        "job_script_prologue": ["export GLIBC_TUNABLES=glibc.malloc.hugetlb=1"],
        "scheduler_options": {"dashboard_address": dashboard}, **worker,
    }
    if system == "pbs":
        options["resource_spec"] = f"select=1:ncpus={cores}:mem={memory}" + (":ngpus=1" if gpus else "")
        options["job_extra_directives"] = list(extra_directives or [])
    cluster = cls(**options)
    if jobs:
        cluster.scale(jobs=jobs)
    return cluster
