"""Lazy readers: array-like objects over input files, and the Dask array around them.

Each input becomes a small array-like object (:class:`TiffStack`, :class:`RawStack`,
:class:`ItkStack`) that knows where every plane lives; :func:`lazy_array` calls
``da.from_array`` on that *reader object* (never on pixels), so the task for block
``(z, y, x)`` reads only the rows of its own planes, and workers read the files
themselves:

- uncompressed TIFF planes are read with one ``seek``/``read`` of the rows needed;
  compressed or tiled planes are decoded a page at a time by tifffile;
- raw binary files are memory-mapped and the region copied out;
- SimpleITK streams the region (``SetExtractIndex``/``SetExtractSize``) where its
  ImageIO supports it, and decompresses the whole file in each task where it does not
  (``.nii.gz``, compressed MHA: convert those first for big data).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

from volmla.errors import VolmlaError
from volmla.io import SUPPORTED_DTYPES, default_chunks

__all__ = ["ItkStack", "LazyStack", "Plane", "RawStack", "TiffStack", "check_dtype", "lazy_array"]


def _slices(key: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, n in zip(key, shape, strict=True):
        if not isinstance(k, slice):
            raise TypeError(f"lazy stacks take slices only, got {k!r}")
        start, stop, step = k.indices(n)
        if step != 1:
            raise TypeError(f"lazy stacks take contiguous slices only, got {k!r}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


class Plane(NamedTuple):
    """Where one TIFF plane lives."""

    path: str
    offset: int  # byte offset of the uncompressed plane, or -1: decode page with tifffile
    page: int
    dtype: str  # file dtype with its byte order, e.g. "<u2"


class TiffStack:
    """A lazy ``(z, y, x)`` array over TIFF planes (pages of one or many files).

    Indexing reads only the planes and rows asked for: uncompressed planes with one
    ``read`` of the rows, compressed ones page by page through tifffile.
    """

    def __init__(self, planes: Sequence[Plane], shape_yx: tuple[int, int], dtype: Any) -> None:
        self.planes = tuple(planes)
        self.shape = (len(self.planes), int(shape_yx[0]), int(shape_yx[1]))
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        zs, ys, xs = _slices(key, self.shape)
        out = np.empty((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), self.dtype)
        handles: dict[str, Any] = {}
        try:
            for i, z in enumerate(range(zs.start, zs.stop)):
                out[i] = _read_plane(self.planes[z], ys, xs, self.shape[2], handles)
        finally:
            for tif in handles.values():
                tif.close()
        return out


def _read_plane(plane: Plane, ys: slice, xs: slice, width: int, handles: dict[str, Any]) -> np.ndarray:
    """Rows ``ys``, columns ``xs`` of one TIFF plane."""
    dtype = np.dtype(plane.dtype)
    if plane.offset >= 0:
        row = width * dtype.itemsize
        want = (ys.stop - ys.start) * row
        with open(plane.path, "rb") as fh:
            fh.seek(plane.offset + ys.start * row)
            buf = fh.read(want)
        if len(buf) != want:
            raise OSError(f"{plane.path} is truncated: plane {plane.page} ends beyond the end of the file")
        return np.frombuffer(buf, dtype).reshape(ys.stop - ys.start, width)[:, xs]
    import tifffile

    tif = handles.get(plane.path)
    if tif is None:
        tif = handles[plane.path] = tifffile.TiffFile(plane.path)
    return tif.pages[plane.page].asarray()[ys, xs]


class RawStack:
    """A lazy ``(z, y, x)`` array over a raw binary file (C order, no header)."""

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype: Any, *, offset: int = 0) -> None:
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.file_dtype = np.dtype(dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.offset = int(offset)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        region = _slices(key, self.shape)
        mm = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset, shape=self.shape)
        try:
            return np.array(mm[region], dtype=self.dtype)
        finally:
            del mm


class ItkStack:
    """A lazy ``(z, y, x)`` array over an image SimpleITK reads (MHA, NRRD, NIfTI).

    Each read asks SimpleITK for the region only; ImageIOs that cannot stream
    (compressed files) decompress the whole file to extract it.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype: Any) -> None:
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        import SimpleITK as sitk

        zs, ys, xs = _slices(key, self.shape)
        reader = sitk.ImageFileReader()
        reader.SetFileName(self.path)
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        index = [xs.start, ys.start, zs.start][:dim]
        size = [xs.stop - xs.start, ys.stop - ys.start, zs.stop - zs.start][:dim]
        reader.SetExtractIndex(index)
        reader.SetExtractSize(size)
        block = sitk.GetArrayFromImage(reader.Execute())
        return np.asarray(block, dtype=self.dtype).reshape(
            zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start
        )


LazyStack = TiffStack | RawStack | ItkStack
"""Any lazy reader of this module."""


def lazy_array(stack: LazyStack, chunks: tuple[int, int, int] | None) -> da.Array:
    """A Dask array over a lazy reader: each task of block ``chunks`` reads its own region.

    Parameters
    ----------
    stack
        A reader of this module (``shape``, ``dtype`` and slicing by contiguous slices).
    chunks
        Block shape, clipped to the stack; default about 64 MiB, isotropic.

    Returns
    -------
    dask.array.Array
        The lazy ``(z, y, x)`` array; its graph holds the reader, not pixels.
    """
    block: tuple[int, ...] = chunks or default_chunks(stack.shape, stack.dtype)
    block = tuple(max(1, min(c, s)) for c, s in zip(block, stack.shape, strict=True))
    meta = np.empty((0, 0, 0), dtype=stack.dtype)
    return da.from_array(stack, chunks=block, lock=False, asarray=False, fancy=False, meta=meta)


def check_dtype(dtype: Any, path: str) -> np.dtype:
    """The native-byte-order ``dtype`` of input ``path``, refused unless volumes may hold it.

    Parameters
    ----------
    dtype
        The file's dtype (any byte order).
    path
        The input, named in the error.

    Returns
    -------
    numpy.dtype
        ``dtype`` in native byte order.
    """
    native = np.dtype(dtype).newbyteorder("=")
    if native not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(t) for t in SUPPORTED_DTYPES)
        raise VolmlaError(f"{path} holds unsupported dtype {native}: inputs must be one of {allowed}")
    return native
