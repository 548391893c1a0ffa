"""Ring-artefact suppression: rings are constant along z and the angle, so a radial mean finds them.

1. the residual ``I - median_xy(I)`` (in-plane median, halo in y and x only) keeps thin
   features such as rings;
2. its mean per integer radius (:func:`volmla.preprocess.beam.radial_profile`) keeps the
   rings and averages noise and particles away;
3. a median along the radius separates the rings from slow trends;
4. the ring profile is subtracted from every voxel at its radius, pointwise.
"""

from __future__ import annotations

import numpy as np

from volmla.engine.blocks import as_volume
from volmla.engine.overlap import halo_map
from volmla.engine.reduce import min_max
from volmla.preprocess._params import check_params
from volmla.preprocess._wiring import LazyVolume, like, pointwise_at
from volmla.preprocess.beam import radial_profile
from volmla.preprocess.kernels import _float_dtype, _residual_kernel, _ring_kernel
from volmla.types import VolumeLike

__all__ = ["rings"]


def rings(
    volume: VolumeLike,
    *,
    size: int = 5,
    width: int = 9,
    center: tuple[float, float] | None = None,
) -> LazyVolume:
    """Ring-artefact suppression (CPU).

    1. the residual ``I - median_xy(I)`` (in-plane median of ``size``, halo ``size // 2``
       in y and x) keeps thin features such as rings;
    2. its mean per integer radius from the rotation axis through ``center``, over all
       z and angles, is measured out of core (:func:`radial_profile`): rings are constant
       along z and angle and survive, noise and particles average away;
    3. the profile minus its median over ``width`` radii (a high-pass along r) is the
       ring profile;
    4. it is subtracted from every voxel at its integer radius (pointwise, no halo);
       float32 output.

    The reduction computes the input once (plus a min/max pass).

    Parameters
    ----------
    volume
        3-D intensity volume (NumPy, Dask or xarray).
    size
        Odd in-plane median window (>= 3) that removes the rings from the residual's
        reference.
    width
        Odd median length along the radius (>= 3) separating rings from slow trends.
    center
        ``(y, x)`` of the rotation axis in voxels (default the xy centre).

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step, with the largest ring removed,
        added to its provenance).

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.zeros((4, 16, 16), chunks=8, dtype=np.uint16)
    >>> rings(x).dtype
    dtype('float32')
    """
    import scipy.ndimage as ndi

    p = check_params("rings", dict(size=size, width=width, center=center))
    data = as_volume(volume, name="intensity", finite=True).data
    wide = np.int64 if np.issubdtype(data.dtype, np.integer) else np.float64
    halo = (0, p["size"] // 2, p["size"] // 2)
    residual = halo_map(data, _residual_kernel, halo=halo, boundary="reflect", dtype=wide, size=p["size"])
    lo, hi = min_max(data)
    prof = radial_profile(residual, center=p["center"], maxabs=max(hi - lo, 1.0))
    mean = np.nan_to_num(prof.mean)
    ring_profile = mean - ndi.median_filter(mean, size=p["width"], mode="nearest")
    ring_profile[prof.counts == 0] = 0.0
    out = pointwise_at(data, _ring_kernel, _float_dtype(data.dtype), center=prof.center, rings=ring_profile)
    record = {"step": "rings", **p, "center": list(prof.center),
              "max_ring": float(np.abs(ring_profile).max(initial=0.0))}
    return like(volume, out, record)

