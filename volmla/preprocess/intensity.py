"""Global intensity normalisation: percentiles from one out-of-core histogram, then a pointwise map.

1. The volume's histogram is computed out of core (:func:`volmla.engine.reduce.histogram`:
   per-block histograms summed; one bin per value for integer data, so its percentiles
   are exact);
2. the ``low`` and ``high`` percentiles are read off it
   (:func:`volmla.engine.reduce.histogram_percentile`);
3. :func:`volmla.preprocess.kernels.normalize_kernel` maps them to 0 and 1 (clipped),
   block by block, lazily.
"""

from __future__ import annotations

import logging

import numpy as np

from volmla.engine.blocks import as_volume
from volmla.engine.reduce import histogram, histogram_percentile
from volmla.preprocess._params import check_params
from volmla.preprocess._wiring import LazyVolume, like, pointwise
from volmla.preprocess.kernels import NormDtype, normalize_kernel
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["normalize"]


def normalize(
    volume: VolumeLike,
    *,
    low: float = 1.0,
    high: float = 99.0,
    dtype: NormDtype = "float32",
    bins: int = 65536,
) -> LazyVolume:
    """Rescale intensities so the global ``low``/``high`` percentiles map to 0 and 1 (clipped).

    The percentiles come from an out-of-core :func:`~volmla.engine.reduce.histogram`
    (this computes the input once or twice): exact for integer data (NumPy's ``linear`` method), good to one bin
    ``(max - min) / bins`` for float data. Pointwise, no halo.

    Parameters
    ----------
    volume
        3-D intensity volume (NumPy, Dask or xarray).
    low, high
        Percentiles (0..100, ``low < high``) mapped to the bottom and top of the range.
    dtype
        ``"float32"`` (0..1), ``"uint8"`` (0..255) or ``"uint16"`` (0..65535).
    bins
        Histogram bins for float input.

    Returns
    -------
    xarray.DataArray or dask.array.Array
        Lazy; an xarray volume stays xarray (the step, with the percentile values, added
        to its provenance).

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.arange(101, dtype=np.uint16).reshape(1, 1, 101))
    >>> float(normalize(x, low=0, high=100)[0, 0, 50].compute())
    0.5
    """
    p = check_params("normalize", dict(low=low, high=high, dtype=dtype, bins=bins))
    hist = histogram(volume, bins=p["bins"])
    lo, hi = histogram_percentile(hist, p["low"]), histogram_percentile(hist, p["high"])
    logger.info("normalize: percentile %g -> %g, percentile %g -> %g", p["low"], lo, p["high"], hi)
    out = pointwise(as_volume(volume, name="intensity", finite=True).data, normalize_kernel, np.dtype(p["dtype"]), low=lo, high=hi, dtype=p["dtype"])
    return like(volume, out, {"step": "normalize", **p, "low_value": lo, "high_value": hi})

