"""Storage: OME-Zarr volumes (the data contract), output state and resume, the YAML reader.

The names below are imported on first use (PEP 562), so importing one light module of
this package (:mod:`volmla.io.yamlfile`, :mod:`volmla.io.ngff`) does not import Dask,
xarray and Zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from volmla.engine.blocks import DIMS, as_blocks, block_grid, default_chunks
    from volmla.io.ngff import Multiscales, VolumeInfo, read_multiscales, volume_info
    from volmla.io.outputs import (
        check_output,
        input_fingerprint,
        is_volume,
        job_fingerprint,
        output_state,
        read_attrs,
    )
    from volmla.io.volume import (
        KINDS,
        SUPPORTED_DTYPES,
        Kind,
        compressor,
        normalise_voxel_size,
        open_volume,
        write_volume,
    )
    from volmla.io.yamlfile import read_mapping, read_yaml

_HOMES = {
    "volmla.engine.blocks": ("DIMS", "as_blocks", "block_grid", "default_chunks"),
    "volmla.io.ngff": ("Multiscales", "VolumeInfo", "read_multiscales", "volume_info"),
    "volmla.io.outputs": ("check_output", "input_fingerprint", "is_volume", "job_fingerprint", "output_state",
                          "read_attrs"),
    "volmla.io.volume": ("KINDS", "SUPPORTED_DTYPES", "Kind", "compressor", "normalise_voxel_size", "open_volume",
                         "write_volume"),
    "volmla.io.yamlfile": ("read_mapping", "read_yaml"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DIMS",
    "KINDS",
    "SUPPORTED_DTYPES",
    "Kind",
    "Multiscales",
    "VolumeInfo",
    "as_blocks",
    "block_grid",
    "check_output",
    "compressor",
    "default_chunks",
    "input_fingerprint",
    "is_volume",
    "job_fingerprint",
    "normalise_voxel_size",
    "open_volume",
    "output_state",
    "read_attrs",
    "read_mapping",
    "read_multiscales",
    "read_yaml",
    "volume_info",
    "write_volume",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'volmla.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
