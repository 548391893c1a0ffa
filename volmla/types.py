"""Type aliases shared by the public API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias, Union

if TYPE_CHECKING:
    import dask.array as da
    import numpy as np
    import xarray as xr

#: Anything a stage accepts as a volume: a NumPy array, a Dask array, or an
#: :class:`xarray.DataArray` with dims ``(z, y, x)`` (as :func:`volmla.open_volume` returns).
VolumeLike: TypeAlias = Union["np.ndarray", "da.Array", "xr.DataArray"]

#: Where array kernels and models run.
Device: TypeAlias = Literal["auto", "cpu", "gpu"]

#: Voxel connectivity of labelling: faces, faces + edges, faces + edges + corners.
Connectivity: TypeAlias = Literal[6, 18, 26]

__all__ = ["Connectivity", "Device", "VolumeLike"]
