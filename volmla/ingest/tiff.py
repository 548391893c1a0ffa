"""TIFF header scans: a multi-page stack or a folder of slices, validated before any pixel is read.

Every TIFF page header (shape, dtype, byte order, data offsets and byte counts) is read
up front, so different slice shapes, unsupported dtypes, multi-channel images and
truncated files (data beyond the end of the file) are refused before anything is
written. A scan returns the :class:`~volmla.ingest.readers.Plane` of every z plane (for
:class:`~volmla.ingest.readers.TiffStack`), the plane shape, the dtype and the voxel size
the metadata gives (:func:`~volmla.ingest.metadata.tiff_voxel_size`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from volmla.errors import VolmlaError
from volmla.ingest.metadata import FoundVoxelSize, tiff_voxel_size
from volmla.ingest.readers import Plane, check_dtype

__all__ = ["quiet_tifffile", "scan_tiff_file", "scan_tiff_folder"]


def _page_end(page: Any) -> int:
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) == 0:
        return 0
    return max(int(o) + int(c) for o, c in zip(offsets, counts, strict=True))


def _plane_of(page: Any, path: str, index: int, byteorder: str) -> Plane:
    size = os.path.getsize(path)
    end = _page_end(page)
    if end > size or len(page.dataoffsets) == 0:
        raise VolmlaError(f"{path} is truncated: page {index} data ends at byte {end}, the file has {size}")
    dtype = np.dtype(page.dtype).newbyteorder(byteorder).str
    offset = int(page.dataoffsets[0]) if page.is_memmappable else -1
    return Plane(path, offset, index, dtype)


def _squeezed(series: Any, path: str) -> tuple[tuple[int, ...], str]:
    shape, axes = tuple(series.shape), str(series.axes)
    if "S" in axes and shape[axes.index("S")] > 1:
        raise VolmlaError(f"{path} holds {shape[axes.index('S')]} samples per pixel (axes {axes}): ingest takes grey-scale stacks only")
    keep = [(n, a) for n, a in zip(shape, axes, strict=True) if n > 1 or a in "YX"]
    shape = tuple(n for n, _ in keep)
    axes = "".join(a for _, a in keep)
    if len(shape) > 3:
        raise VolmlaError(f"{path} holds a {len(shape)}-D stack of shape {shape} (axes {axes}): ingest takes one (z, y, x) volume")
    return shape, axes


class _Collect(logging.Handler):
    def __init__(self, found: list[str]) -> None:
        super().__init__(level=logging.ERROR)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("<") and "> " in message:  # "<tifffile.TiffPages @8> invalid page offset"
            message = message.split("> ", 1)[1]
        self.found.append(" ".join(message.split()))


@contextlib.contextmanager
def tifffile_damage() -> Iterator[list[str]]:
    """Collect the damage tifffile reports while reading headers, instead of printing it.

    tifffile does not raise on a damaged file: it logs an error (a page offset beyond
    the end of a truncated file, ImageJ or OME metadata it cannot match with the pages)
    and carries on with what it could read, so a cut stack of 32 slices reads as 1.
    The scans refuse a file for which anything was collected.

    Yields
    ------
    list of str
        tifffile's error messages, filled while the block runs (warnings are dropped).
    """
    log = logging.getLogger("tifffile")
    found: list[str] = []
    handler = _Collect(found)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.WARNING)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield found
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Keep tifffile's own log lines about damaged files off the terminal: the scans
    (:func:`scan_tiff_file`, :func:`scan_tiff_folder`) collect them and refuse the file.

    Yields
    ------
    None
    """
    with tifffile_damage():
        yield


def _refuse_damage(path: str, damage: list[str]) -> None:
    if damage:
        raise VolmlaError(f"{path} is truncated or damaged (tifffile: {damage[0]})")


def scan_tiff_file(path: str) -> tuple[list[Plane], tuple[int, int], np.dtype, FoundVoxelSize]:
    """Planes of a multi-page / ImageJ / OME / BigTIFF stack, validated from headers.

    Parameters
    ----------
    path
        The TIFF file.

    Returns
    -------
    tuple
        The planes in z order, the plane shape ``(y, x)``, the native dtype, and the
        voxel size with its source (:func:`~volmla.ingest.metadata.tiff_voxel_size`).
    """
    with tifffile_damage() as damage:
        found = _scan_file(path)
        _refuse_damage(path, damage)
    return found


def _scan_file(path: str) -> tuple[list[Plane], tuple[int, int], np.dtype, FoundVoxelSize]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise VolmlaError(f"{path} is not a readable TIFF: {exc}") from None
    with tif:
        series = tif.series
        if not series:
            raise VolmlaError(f"{path} holds no image")
        if len(series) > 1:
            shapes = sorted({tuple(s.shape) for s in series})
            raise VolmlaError(f"{path} holds {len(series)} image series (shapes {shapes}): pages must share one shape")
        first = series[0]
        shape, _ = _squeezed(first, path)
        if len(shape) < 2:
            raise VolmlaError(f"{path} holds a {len(shape)}-D image, expected 2-D pages")
        dtype = check_dtype(first.dtype, path)
        nz = int(np.prod(shape[:-2])) if len(shape) == 3 else 1
        yx = (int(shape[-2]), int(shape[-1]))
        size = os.path.getsize(path)
        n_pages = len(tif.pages)  # reads the whole IFD chain: a chain cut short is reported as damage
        if not tif.is_imagej and n_pages < nz:
            # the IFD chain broke off (ImageJ stacks over 4 GB legitimately have one page)
            raise VolmlaError(f"{path} is truncated or damaged: {n_pages} readable pages, its metadata describes {nz}")
        images = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
        if isinstance(images, int) and images > nz:
            raise VolmlaError(f"{path} is truncated or damaged: its ImageJ metadata describes {images} images, {nz} can be read")
        file_dtype = np.dtype(first.dtype).newbyteorder(tif.byteorder).str
        offset = first.dataoffset
        if offset is not None and first.keyframe.is_memmappable:
            end = int(offset) + int(first.nbytes)
            if end > size:
                raise VolmlaError(f"{path} is truncated: image data ends at byte {end}, the file has {size}")
            plane_bytes = yx[0] * yx[1] * dtype.itemsize
            planes = [Plane(path, int(offset) + z * plane_bytes, z, file_dtype) for z in range(nz)]
        else:
            pages = list(first.pages)
            if len(pages) != nz:
                raise VolmlaError(f"{path}: {len(pages)} pages for a stack of {nz} planes; cannot read it plane by plane")
            planes = []
            for page in pages:
                if page is None:
                    raise VolmlaError(f"{path} has a missing page")
                if tuple(page.shape[-2:]) != yx:
                    raise VolmlaError(f"{path} page {page.index} has shape {page.shape}, the first has {yx}: pages must share one shape")
                index = page.index if isinstance(page.index, int) else page.index[0]
                planes.append(_plane_of(page, path, index, tif.byteorder))
        voxel, source = tiff_voxel_size(tif)
    return planes, yx, dtype, (voxel, source)


def scan_tiff_folder(folder: Path, glob: str) -> tuple[list[Plane], tuple[int, int], np.dtype, FoundVoxelSize]:
    """Planes of a folder of 2-D slices, in natural order, validated from headers.

    Parameters
    ----------
    folder
        The folder.
    glob
        Pattern selecting the slices (sorted in natural order by name).

    Returns
    -------
    tuple
        The planes in z order, the slice shape ``(y, x)``, the native dtype, and the
        voxel size with its source, from the first slice.
    """
    import natsort
    import tifffile

    if not isinstance(glob, str) or not glob or Path(glob).is_absolute() or ".." in Path(glob).parts:
        raise VolmlaError(f"glob must be a file-name pattern inside the folder, such as '*.tif', got {glob!r}")
    try:
        files = [p for p in folder.glob(glob) if p.is_file()]
    except (ValueError, NotImplementedError) as exc:  # pathlib's own refusals ("'**' can only be ...")
        raise VolmlaError(f"glob {glob!r} is not a usable pattern: {exc}") from None
    if not files:
        raise VolmlaError(f"input folder {folder} has no files matching glob={glob!r}")
    files = natsort.natsorted(files, key=lambda p: p.name)
    planes: list[Plane] = []
    yx: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    voxel: FoundVoxelSize = (None, "none")
    with tifffile_damage() as damage:
        for path in files:
            name = str(path)
            found = _scan_slice(name, tifffile, first=yx is None)
            _refuse_damage(name, damage)
            this, shape, plane, slice_voxel = found
            if yx is None:
                yx, dtype, voxel = (int(shape[0]), int(shape[1])), this, slice_voxel
            elif tuple(shape) != yx:
                raise VolmlaError(f"slice {name} has shape {tuple(shape)}, slice {files[0]} has {yx}: all slices must share one shape")
            elif this != dtype:
                raise VolmlaError(f"slice {name} has dtype {this}, slice {files[0]} has {dtype}: all slices must share one dtype")
            planes.append(plane)
    assert yx is not None and dtype is not None
    return planes, yx, dtype, voxel


def _scan_slice(name: str, tifffile: Any, *, first: bool) -> tuple[np.dtype, tuple[int, ...], Plane, FoundVoxelSize]:
    """One slice of a folder: its dtype, shape, plane and (for the first) voxel size."""
    try:
        tif = tifffile.TiffFile(name)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise VolmlaError(f"slice {name} is not a readable TIFF: {exc}") from None
    with tif:
        if not tif.series:
            raise VolmlaError(f"slice {name} holds no image")
        shape, _ = _squeezed(tif.series[0], name)
        if len(shape) != 2 or len(tif.series) > 1:
            raise VolmlaError(f"slice {name} holds an image of shape {shape}: folder slices must be single 2-D images")
        this = check_dtype(tif.series[0].dtype, name)
        voxel: FoundVoxelSize = tiff_voxel_size(tif) if first else (None, "none")
        return this, tuple(shape), _plane_of(tif.series[0].keyframe, name, 0, tif.byteorder), voxel
