"""Array backends: device resolution, CPU fallback, CuPy kernels equal to NumPy ones."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage

from volmla import preprocess as pp
from volmla.engine import backend
from volmla.errors import VolmlaError


def test_resolve_device_cpu_and_invalid():
    assert backend.resolve_device("cpu") == "cpu"
    with pytest.raises(VolmlaError, match=r"device must be one of \('auto', 'cpu', 'gpu'\), got 'tpu'"):
        backend.resolve_device("tpu")


def test_auto_falls_back_to_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    assert backend.resolve_device("auto") == "cpu"
    with pytest.raises(VolmlaError, match="device gpu asked for, but CuPy"):
        backend.resolve_device("gpu")


def test_auto_picks_gpu_when_available(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    assert backend.resolve_device("auto") == "gpu"
    assert backend.resolve_device("cpu") == "cpu"


def test_numpy_backend_helpers():
    x = np.arange(6.0).reshape(1, 2, 3)
    assert backend.get_array_module(x) is np
    assert backend.get_array_module(da.from_array(x)) is np
    assert backend.ndimage_module(np) is scipy.ndimage
    assert isinstance(backend.to_numpy(x), np.ndarray)
    np.testing.assert_array_equal(backend.to_device(x, "cpu"), x)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("kernel", "params", "rtol"),
    [
        (pp.gaussian_kernel, {"sigma": 1.5}, 1e-5),
        (pp.median_kernel, {"size": 3}, 0.0),
        (pp.unsharp_kernel, {"sigma": 1.0, "amount": 0.5}, 1e-4),
        (pp.bilateral_kernel, {"sigma_range": 100.0, "radius": 2}, 1e-5),
        (pp.nlmeans_kernel, {"h": 80.0, "patch_radius": 1, "search_radius": 1}, 1e-5),
    ],
)
def test_cupy_kernels_match_numpy(rng, kernel, params, rtol):
    import cupy

    x = rng.normal(1000, 80, (24, 20, 22)).astype(np.float32)
    cpu = kernel(x, **params)
    gpu = kernel(cupy.asarray(x), **params)
    assert backend.get_array_module(gpu) is cupy
    np.testing.assert_allclose(backend.to_numpy(gpu), cpu, rtol=rtol, atol=rtol * 1000)


@pytest.mark.gpu
def test_gpu_preprocess_matches_cpu(rng):
    x = da.from_array(rng.normal(1000, 80, (24, 20, 22)).astype(np.float32), chunks=(7, 10, 11))
    steps = ["median:size=3", "gaussian:sigma=1.0"]
    cpu = pp.preprocess(x, steps, device="cpu").values
    gpu = pp.preprocess(x, steps, device="gpu").values
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-2)
