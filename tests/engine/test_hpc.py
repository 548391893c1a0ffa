"""Batch-scheduler clusters (dask-jobqueue) shaped as volmla wants: job scripts, not submissions."""

from __future__ import annotations

import sys

import pytest

from volmla.engine.hpc import jobqueue_cluster
from volmla.errors import VolmlaError


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_cpu_jobs_run_one_single_threaded_worker_per_core(system: str) -> None:
    pytest.importorskip("dask_jobqueue")
    with jobqueue_cluster(system, cores=8, memory="32GB", jobs=0, queue="short", account="geomet") as cluster:
        script = cluster.job_script()
    assert "--nworkers 8" in script and "--nthreads 1" in script
    assert "--local-directory $TMPDIR" in script and "GLIBC_TUNABLES" in script
    assert "GPU" not in script and "gpu" not in script
    assert ("#SBATCH -p short" in script) if system == "slurm" else ("#PBS -q short" in script)


@pytest.mark.parametrize(("system", "directive"), [("slurm", "#SBATCH --gres=gpu:1"), ("pbs", "ngpus=1")])
def test_gpu_jobs_ask_for_a_gpu_and_carry_the_resource(system: str, directive: str) -> None:
    pytest.importorskip("dask_jobqueue")
    with jobqueue_cluster(system, cores=4, memory="16GB", jobs=0, gpus=1) as cluster:
        script = cluster.job_script()
    assert directive in script and "--resources GPU=1" in script and "--nworkers" not in script


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"system": "sge"}, "system must be one of"),
    ({"cores": 0}, "cores must be an integer >= 1"),
    ({"gpus": 2}, "one job per GPU"),
    ({"jobs": -1}, "jobs must be an integer >= 0"),
])
def test_bad_arguments_are_one_line(kwargs: dict, message: str) -> None:
    options = {"system": "slurm", "cores": 4, "memory": "8GB", **kwargs}
    with pytest.raises(VolmlaError, match=message):
        jobqueue_cluster(**options)


def test_missing_dask_jobqueue_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(VolmlaError, match=r'volmla\[hpc\]'):
        jobqueue_cluster("slurm", cores=4, memory="8GB")
