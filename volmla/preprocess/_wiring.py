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

from volmla.engine.blocks import map_blocks_at as pointwise_at
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
