"""The thin Dask wiring the preprocessing steps share.

A step coerces its input with :func:`volmla.engine.blocks.as_volume`, maps a kernel from
:mod:`volmla.preprocess.kernels` over the blocks (with a halo through
:func:`volmla.engine.overlap.halo_map`, or pointwise here), and hands the lazy result
back as the same kind of object it was given (:func:`like`): an xarray volume keeps its
coordinates and attributes and gains a provenance record; anything else comes back as a
Dask array.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeAlias

import dask.array as da
import numpy as np
import xarray as xr

from volmla.types import VolumeLike

#: What a step returns: xarray for xarray input, else a Dask array; always lazy.
LazyVolume: TypeAlias = xr.DataArray | da.Array

__all__ = ["LazyVolume", "like", "pointwise", "pointwise_at"]


def like(volume: VolumeLike, result: da.Array, record: dict[str, Any]) -> LazyVolume:
    """``result`` as the same kind of object as ``volume``, with ``record`` in its provenance."""
    if not isinstance(volume, xr.DataArray):
        return result
    attrs = dict(volume.attrs)
    attrs["provenance"] = [*attrs.get("provenance", []), record]
    attrs["kind"] = "intensity"
    return xr.DataArray(result, dims=volume.dims, coords=volume.coords, attrs=attrs, name=volume.name)


def pointwise(data: da.Array, kernel: Callable[..., Any], result_dtype: Any, **kwargs: Any) -> da.Array:
    """``kernel(block, **kwargs)`` on every block, lazily (no halo)."""
    run = functools.partial(kernel, **kwargs)
    return da.map_blocks(run, data, dtype=result_dtype, meta=np.empty((0, 0, 0), result_dtype))


def _with_origin(kernel: Callable[..., Any]) -> Callable[..., Any]:
    def run(block: np.ndarray, block_info: dict[Any, Any] | None = None, **kwargs: Any) -> Any:
        origin = [lo for lo, _ in block_info[0]["array-location"]] if block_info else [0, 0, 0]
        return kernel(block, origin=origin, **kwargs)

    return run


def pointwise_at(data: da.Array, kernel: Callable[..., Any], result_dtype: Any, **kwargs: Any) -> da.Array:
    """``kernel(block, origin=(z0, y0, x0), **kwargs)`` on every block, lazily (no halo).

    The origin (the block's first voxel, from Dask's ``block_info``) lets a kernel place
    its voxels, e.g. their distance from the rotation axis.
    """
    meta = np.empty((0, 0, 0), result_dtype)
    return da.map_blocks(_with_origin(kernel), data, dtype=result_dtype, meta=meta, **kwargs)
