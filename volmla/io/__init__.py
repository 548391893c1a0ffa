"""Storage: OME-Zarr volumes (the data contract), output state and resume, the YAML reader."""

from __future__ import annotations

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
