"""The GPU suite (``benchmarks/gpu_suite.py``): its CPU-fallback plumbing here, the real run on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
SECTIONS = ("environment", "filters", "onnx_providers", "unet_zarr", "labels", "gpus")


def _run(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SUITE), "--out", str(out), "--tmp", str(tmp_path / "scratch"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _errors(node: Any, path: str = "") -> list[str]:
    """Every ``error`` entry anywhere in the results, with where it sits."""
    if isinstance(node, dict):
        found = [f"{path}: {node['error']}"] if "error" in node else []
        return found + [e for k, v in node.items() for e in _errors(v, f"{path}/{k}")]
    return []


def _figures_or_skip(results: dict[str, Any]) -> None:
    for name in SECTIONS:
        section = results[name]
        assert isinstance(section, dict), name
        figures = set(section) - {"section_s"}
        assert "skipped" in section or figures, f"{name} has neither figures nor a skip reason"
        if "skipped" in section:
            assert isinstance(section["skipped"], str) and section["skipped"], name
    assert _errors(results) == []


def _skips(results: dict[str, Any]) -> list[str]:
    out = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "skipped" in node:
                out.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")

    walk(results, "")
    return out


def test_cpu_check_runs_every_section(tmp_path: Path) -> None:
    results = _run(tmp_path, "--cpu-check", timeout=240)
    _figures_or_skip(results)
    assert results["suite"]["cpu_check"] is True and results["suite"]["device"] == "cpu"
    # on the CPU fallbacks every section runs: the only skips are the GPU providers themselves
    assert [s for s in _skips(results) if not s.startswith("/onnx_providers/providers/")] == []
    assert set(results["onnx_providers"]["providers"]) >= {"CUDA_fp32", "CUDA_fp16", "Tensorrt_fp32", "Tensorrt_fp16"}
    env = results["environment"]
    assert {"numpy", "onnxruntime", "torch", "cupy"} <= set(env["versions"]) and "ort_providers" in env

    filters = results["filters"]["cases"]
    assert set(filters) == {"gaussian", "median", "unsharp", "bilateral", "nlmeans", "normalize"}
    for case in filters.values():  # NumPy against NumPy: the same kernel, the same bits
        assert case["max_abs_diff"] == 0.0 and case["device_s"] > 0 and case["numpy_s"] > 0

    cpu_ep = results["onnx_providers"]["providers"]["CPU_fp32_1thread"]
    assert cpu_ep["argmax_agreement"] == 1.0 and cpu_ep["max_abs_logit_diff"] < 1e-4 and cpu_ep["tiles_per_s"] > 0
    shares = results["onnx_providers"]["cpu"]["argmax_class_shares"]
    assert max(shares) < 0.9  # the untrained model's argmax varies, so agreement is a real check

    unet = results["unet_zarr"]
    for name, run in unet["runs"].items():
        assert run["gvoxel_per_s"] > 0 and run["seconds"] > 0, name
    stages = unet["breakdown"]["seconds_per_block"]
    assert set(stages) == {"read", "host_to_device", "inference", "device_to_host", "write"}
    assert abs(sum(unet["breakdown"]["share"].values()) - 1) < 1e-6

    labels = results["labels"]
    assert labels["identical"] is True and labels["whole"]["count_volmla"] == labels["whole"]["count_device"] > 1
    assert labels["blocks"]["n_blocks"] == 8

    gpus = results["gpus"]
    assert gpus["identical_to_single_process"] is True and gpus["workers"] == 1

    targets = results["targets"]
    assert targets["labels_identical_to_cpu"]["pass"] is True
    assert targets["fp16_argmax_agreement"]["pass"] is None  # fp16 is never measured on the CPU
    assert targets["unet_end_to_end_gvoxel_per_s"]["value"] == max(r["gvoxel_per_s"] for r in unet["runs"].values())


def test_a_failing_section_is_recorded_and_the_suite_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(SUITE.parent))
    try:
        import gpu_suite
        from _gpu_parts import Ctx
    finally:
        sys.path.remove(str(SUITE.parent))

    def broken(ctx: Any) -> dict[str, Any]:
        raise RuntimeError("no device\nhere")

    monkeypatch.setattr(gpu_suite, "section_filters", broken)
    ctx = Ctx(cpu_check=True, tmp=tmp_path, filter_size=8, volume_size=8, chunk=8, label_size=8, label_chunk=4,
              tile_batch=1, gpus=1, budget_s=60.0, depth=2, base=2)
    out = tmp_path / "gpu.json"
    results = gpu_suite.run_suite(ctx, out, ("environment", "filters", "labels"), {})
    assert results["filters"]["error"] == "RuntimeError: no device here"
    assert results["labels"]["identical"] is True  # the sections after it still ran
    assert results["unet_zarr"] == {"skipped": "not selected (--sections)"}
    assert json.loads(out.read_text())["filters"]["error"].startswith("RuntimeError")


def test_canonical_renumbering() -> None:
    sys.path.insert(0, str(SUITE.parent))
    try:
        from _gpu_parts import canonical
    finally:
        sys.path.remove(str(SUITE.parent))
    a = np.array([[[0, 7, 7, 3], [5, 0, 3, 3]]])
    b = np.array([[[0, 1, 1, 2], [3, 0, 2, 2]]])
    assert canonical(a).tolist() == b.tolist()
    assert not np.array_equal(canonical(a), canonical(np.array([[[0, 1, 1, 2], [2, 0, 2, 2]]])))


@pytest.mark.gpu
def test_real_suite_small(tmp_path: Path) -> None:
    from volmla.engine.backend import gpu_available

    if not gpu_available():
        pytest.skip("needs CuPy and a working CUDA device")
    results = _run(tmp_path, "--filter-size", "64", "--volume-size", "128", "--chunk", "64", "--label-size", "64",
                   "--budget", "75", timeout=140)
    _figures_or_skip(results)
    assert results["suite"]["device"] == "gpu" and results["environment"]["gpu_available"] is True
    assert results["filters"]["device_backend"] == "cupy"
    for name, case in results["filters"]["cases"].items():
        if "skipped" in case:
            continue
        assert case["max_rel_diff"] < 1e-3, (name, case)
        if name == "median":
            assert case["max_abs_diff"] == 0.0
    labels = results["labels"]
    if "skipped" not in labels:
        assert labels["identical"] is True


def test_targets_count_only_real_fp16() -> None:
    sys.path.insert(0, str(SUITE.parent))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(SUITE.parent))
    results = {
        "unet_zarr": {"runs": {"a": {"gvoxel_per_s": 0.4}, "b": {"gvoxel_per_s": 1.3}, "c": {"skipped": "x"}}},
        "labels": {"identical": False},
        "onnx_providers": {"providers": {
            "CUDA_fp16": {"argmax_agreement": 1.0, "fp16_effective": False},  # ran float32: not evidence
            "Tensorrt_fp16": {"argmax_agreement": 0.998, "fp16_effective": True},
            "CUDA_fp32": {"argmax_agreement": 0.5},
        }},
    }
    t = gpu_suite.targets(results, cpu_check=False)
    assert t["unet_end_to_end_gvoxel_per_s"] == {"target": ">= 1.0", "value": 1.3, "pass": True}
    assert t["labels_identical_to_cpu"]["pass"] is False
    assert t["fp16_argmax_agreement"]["value"] == 0.998 and t["fp16_argmax_agreement"]["pass"] is False
    empty = gpu_suite.targets({}, cpu_check=True)
    assert all(empty[k]["pass"] is None for k in ("unet_end_to_end_gvoxel_per_s", "labels_identical_to_cpu",
                                                  "fp16_argmax_agreement"))
