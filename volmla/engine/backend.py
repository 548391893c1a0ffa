"""Array backends: NumPy/SciPy on the CPU, CuPy/cupyx on a CUDA GPU.

The backend is chosen in one place, from the array itself (``get_array_module``) or from
the caller's ``device="auto"|"cpu"|"gpu"`` (``resolve_device``). CuPy is imported lazily and
only used after a real allocation on the device has succeeded, so a machine with CuPy
installed but no working CUDA (``CUDARuntimeError`` on ``cupy.zeros``) falls back to the
CPU instead of crashing.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any, Literal

import numpy as np

from volmla.errors import VolmlaError
from volmla.types import Device

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")

__all__ = [
    "Device",
    "get_array_module",
    "gpu_available",
    "gpu_count",
    "ndimage_module",
    "resolve_device",
    "to_device",
    "to_numpy",
]


@functools.cache
def _cupy() -> ModuleType | None:
    """CuPy if it imports and can allocate on a device, else None (never raises)."""
    try:
        import cupy
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    try:
        cupy.zeros(1, dtype=cupy.float32).sum().item()
    except Exception as exc:  # cupy.cuda.runtime.CUDARuntimeError and friends
        logger.info("CuPy is installed but CUDA does not work here: %s", exc)
        return None
    return cupy


def gpu_available() -> bool:
    """Whether CuPy works on a CUDA device here.

    Returns
    -------
    bool
        True when CuPy imports and can allocate on a CUDA device.
    """
    return _cupy() is not None


def gpu_count() -> int:
    """Number of CUDA devices CuPy can use (0 without a working CuPy).

    Returns
    -------
    int
        Visible CUDA devices.
    """
    cupy = _cupy()
    if cupy is None:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def resolve_device(device: str) -> Literal["cpu", "gpu"]:
    """Turn ``auto|cpu|gpu`` into ``cpu`` or ``gpu``.

    ``auto`` picks the GPU when CuPy and CUDA work; ``gpu`` without them is an error.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    str
        ``"cpu"`` or ``"gpu"``.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device not in DEVICES:
        raise VolmlaError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu":
        raise VolmlaError("device gpu asked for, but CuPy with a working CUDA device is not available")
    return "cpu"


def get_array_module(x: Any) -> ModuleType:
    """``numpy`` or ``cupy``, from the array's type (or a Dask array's ``_meta``).

    Parameters
    ----------
    x
        A NumPy, CuPy or Dask array.

    Returns
    -------
    module
        The array module its blocks belong to.
    """
    x = getattr(x, "_meta", x)
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def ndimage_module(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy.

    Parameters
    ----------
    xp
        ``numpy`` or ``cupy``.

    Returns
    -------
    module
        The matching ``ndimage`` module.
    """
    if xp is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


def to_device(x: Any, device: Literal["cpu", "gpu"]) -> Any:
    """Move an array to the device (``gpu`` -> CuPy) or host (``cpu`` -> NumPy).

    Parameters
    ----------
    x
        An array.
    device
        ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    numpy.ndarray or cupy.ndarray
    """
    if device == "gpu":
        cupy = _cupy()
        if cupy is None:
            raise VolmlaError("device gpu asked for, but CuPy with a working CUDA device is not available")
        return cupy.asarray(x)
    return to_numpy(x)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from NumPy or CuPy input.

    Parameters
    ----------
    x
        A NumPy or CuPy array.

    Returns
    -------
    numpy.ndarray
    """
    if hasattr(x, "get") and get_array_module(x) is not np:
        return x.get()
    return np.asarray(x)
