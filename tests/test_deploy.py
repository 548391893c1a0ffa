"""Deployment files parse and follow the conventions volmla's cluster is tuned for (issue 19).

Checked as far as this machine allows: YAML parses, shell scripts pass ``bash -n`` (and
shellcheck when installed), ``docker compose config`` when the plugin is there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _yaml(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_compose_workers_are_single_threaded_and_ports_local() -> None:
    services = _yaml("docker-compose.yml")["services"]
    assert services["worker"]["command"][:2] == ["dask", "worker"]
    assert "--nthreads" in services["worker"]["command"]
    assert services["worker"]["command"][services["worker"]["command"].index("--nthreads") + 1] == "1"
    assert services["gpu-worker"]["command"][:3] == ["dask", "cuda", "worker"]
    assert "GPU=1" in services["gpu-worker"]["command"]
    assert all(p.startswith("127.0.0.1:") for p in services["scheduler"]["ports"])
    for name in ("worker", "gpu-worker", "client"):
        assert "../data:/data" in services[name]["volumes"]


@pytest.mark.skipif(subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
                    if shutil.which("docker") else True, reason="no docker compose here")
def test_compose_config_validates() -> None:
    subprocess.run(["docker", "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"], check=True)


@pytest.mark.parametrize("script", sorted(p.name for p in DEPLOY.glob("*.sh")))
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
    checker = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if checker is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run([checker, str(DEPLOY / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_slurm_script_waits_for_the_scheduler_instead_of_sleeping() -> None:
    text = (DEPLOY / "slurm-cluster.sh").read_text()
    assert "wait_for_workers" in text and "-s $sched_file" in text
    assert "sleep 10" not in text and "sleep 20" not in text
    assert "--nthreads 1" in text and "dask cuda worker" in text
    assert "SLURM_GPUS_ON_NODE" in text  # GPU=1 only where the allocation has a GPU


def test_helm_values_and_dask_operator_manifest() -> None:
    values = _yaml("helm-values.yaml")
    assert values["scheduler"]["serviceType"] == "ClusterIP"
    args = values["worker"]["custom_args"]
    assert args[args.index("--nthreads") + 1] == "1"
    manifest = _yaml("k8s-daskcluster.yaml")
    assert manifest["kind"] == "DaskCluster" and manifest["apiVersion"].startswith("kubernetes.dask.org/")
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    assert manifest["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
