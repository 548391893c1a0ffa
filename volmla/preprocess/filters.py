"""The local filters: one kernel each, mapped over the blocks with the halo it needs.

Every filter is the same four steps, done once by :func:`_halo_filter`:

1. its parameters are checked (:func:`volmla.preprocess._params.check_params`);
2. its halo is derived from them by the kernel's ``*_halo`` function;
3. the kernel runs on every block extended by that halo
   (:func:`volmla.engine.overlap.halo_map`, SciPy's ``reflect`` boundary, on the CPU or
   on CuPy), so the result is bit-identical to the kernel on the whole array in memory,
   whatever the chunking;
4. the lazy result comes back as the same kind of object as the input, the step
   recorded in its provenance.

The public functions below are thin typed front ends that document each filter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from volmla.engine.backend import resolve_device
from volmla.engine.blocks import as_volume
from volmla.engine.overlap import halo_map
from volmla.preprocess._params import check_params
from volmla.preprocess._wiring import LazyVolume, like
from volmla.preprocess.kernels import (
    _float_dtype,
    bilateral_halo,
    bilateral_kernel,
    gaussian_halo,
    gaussian_kernel,
    median_halo,
    median_kernel,
    nlmeans_halo,
    nlmeans_kernel,
    unsharp_halo,
    unsharp_kernel,
)
from volmla.types import Device, VolumeLike

__all__ = ["bilateral", "gaussian", "median", "nlmeans", "unsharp"]


def _halo_filter(
    name: str,
    volume: VolumeLike,
    params: dict[str, Any],
    *,
    kernel: Callable[..., Any],
    halo: Callable[..., int],
    device: Device,
    crops: bool = False,
    keeps_dtype: bool = False,
) -> LazyVolume:
    """Check ``params``, derive the halo, map ``kernel`` with it and record the step.

    ``crops``: the kernel trims the halo itself (see :func:`volmla.engine.overlap.halo_map`);
    ``keeps_dtype``: the output keeps the input dtype, else float32 (float64 stays float64).
    """
    from volmla.engine.cluster import gpu_annotation

    p = check_params(name, params)
    data = as_volume(volume, name="intensity", finite=True).data
    dtype = data.dtype if keeps_dtype else _float_dtype(data.dtype)
    dev = resolve_device(device)
    with gpu_annotation(dev):
        out = halo_map(data, kernel, halo=halo(**p), boundary="reflect", dtype=dtype, device=dev, crops=crops, **p)
    return like(volume, out, {"step": name, **p})


def gaussian(volume: VolumeLike, *, sigma: float = 1.0, truncate: float = 4.0, device: Device = "cpu") -> LazyVolume:
    """Gaussian smoothing (SciPy ``gaussian_filter``, reflect), float32 output.

    Halo: ``int(truncate * sigma + 0.5)`` voxels. Runs on CuPy with ``device="gpu"``.

    Parameters
    ----------
    volume
        3-D volume (NumPy, Dask or xarray).
    sigma
        Standard deviation in voxels (> 0).
    truncate
        Kernel radius in standard deviations (> 0).
    device
        ``"cpu"``, ``"gpu"`` or ``"auto"``.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step added to its provenance).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.zeros((8, 8, 8), chunks=4, dtype=np.uint16)
    >>> gaussian(x, sigma=1.0).dtype
    dtype('float32')
    """
    return _halo_filter("gaussian", volume, dict(sigma=sigma, truncate=truncate),
                        kernel=gaussian_kernel, halo=gaussian_halo, device=device, crops=True)


def median(volume: VolumeLike, *, size: int = 3, device: Device = "cpu") -> LazyVolume:
    """Median over a ``size``-cube (SciPy ``median_filter``, reflect); keeps the dtype.

    Halo: ``size // 2`` voxels. Runs on CuPy with ``device="gpu"``.

    Parameters
    ----------
    volume
        3-D volume (NumPy, Dask or xarray).
    size
        Odd window edge (>= 1).
    device
        ``"cpu"``, ``"gpu"`` or ``"auto"``.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step added to its provenance).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.zeros((8, 8, 8), chunks=4, dtype=np.uint16)
    >>> median(x, size=3).dtype
    dtype('uint16')
    """
    return _halo_filter("median", volume, dict(size=size),
                        kernel=median_kernel, halo=median_halo, device=device, keeps_dtype=True)


def unsharp(volume: VolumeLike, *, sigma: float = 1.0, amount: float = 1.0, truncate: float = 4.0,
            device: Device = "cpu") -> LazyVolume:
    """Unsharp masking ``x + amount * (x - gaussian(x, sigma))``, float32 output.

    Halo: the gaussian's, ``int(truncate * sigma + 0.5)`` voxels.

    Parameters
    ----------
    volume
        3-D volume (NumPy, Dask or xarray).
    sigma
        Blur standard deviation in voxels (> 0).
    amount
        Strength (>= 0).
    truncate
        Kernel radius in standard deviations.
    device
        ``"cpu"``, ``"gpu"`` or ``"auto"``.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step added to its provenance).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.ones((8, 8, 8), chunks=4, dtype=np.float32)
    >>> float(unsharp(x, sigma=1.0, amount=2.0)[4, 4, 4].compute())
    1.0
    """
    return _halo_filter("unsharp", volume, dict(sigma=sigma, amount=amount, truncate=truncate),
                        kernel=unsharp_kernel, halo=unsharp_halo, device=device, crops=True)


def bilateral(volume: VolumeLike, *, sigma_spatial: float = 1.0, sigma_range: float, radius: int = 2,
              device: Device = "cpu") -> LazyVolume:
    """3-D edge-preserving bilateral filter (:func:`bilateral_kernel`), float32 output.

    Halo: ``radius`` voxels. Runs on CuPy with ``device="gpu"``.

    Parameters
    ----------
    volume
        3-D volume (NumPy, Dask or xarray).
    sigma_spatial
        Spatial standard deviation in voxels (> 0).
    sigma_range
        Intensity standard deviation in intensity units (> 0): differences much larger
        than this (edges) are not smoothed across.
    radius
        Window radius in voxels (>= 1); the window is a ``(2 radius + 1)`` cube.
    device
        ``"cpu"``, ``"gpu"`` or ``"auto"``.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step added to its provenance).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.ones((8, 8, 8), chunks=4, dtype=np.uint16)
    >>> float(bilateral(x, sigma_range=10.0)[4, 4, 4].compute())
    1.0
    """
    return _halo_filter("bilateral", volume, dict(sigma_spatial=sigma_spatial, sigma_range=sigma_range, radius=radius),
                        kernel=bilateral_kernel, halo=bilateral_halo, device=device)


def nlmeans(volume: VolumeLike, *, patch_radius: int = 1, search_radius: int = 2, h: float,
            device: Device = "cpu") -> LazyVolume:
    """3-D non-local means denoising (:func:`nlmeans_kernel`), float32 output.

    Halo: ``search_radius + patch_radius`` voxels. The cost grows with
    ``(2 search_radius + 1)^3 * 3 (2 patch_radius + 1)`` operations per voxel.

    Parameters
    ----------
    volume
        3-D volume (NumPy, Dask or xarray).
    patch_radius
        Patch half-size in voxels (>= 0).
    search_radius
        Search-window half-size in voxels (>= 1).
    h
        Filtering strength in intensity units (> 0), about the noise standard deviation.
    device
        ``"cpu"``, ``"gpu"`` or ``"auto"``.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step added to its provenance).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.ones((8, 8, 8), chunks=4, dtype=np.float32)
    >>> float(nlmeans(x, h=1.0)[4, 4, 4].compute())
    1.0
    """
    return _halo_filter("nlmeans", volume, dict(patch_radius=patch_radius, search_radius=search_radius, h=h),
                        kernel=nlmeans_kernel, halo=nlmeans_halo, device=device)

