"""Ingest: scanner output (TIFF slices and stacks, MHA/NRRD/NIfTI, raw) -> OME-Zarr.

1. **Resolve inputs.** A folder is a stack of 2-D TIFF slices (files matching ``glob``
   in natural order); a ``.tif``/``.tiff``/``.btf`` file is a multi-page, BigTIFF,
   ImageJ hyperstack or OME-TIFF stack; ``.mha``/``.mhd``/``.nrrd``/``.nhdr``/``.nii``/
   ``.nii.gz`` go through SimpleITK; anything else is raw binary read with the
   ``shape``/``dtype``/``byteorder`` given.
2. **Scan headers, not pixels.** Every TIFF page header (shape, dtype, byte order, data
   offsets and byte counts) is read up front, so different slice shapes, unsupported
   dtypes, multi-channel images and truncated files (data beyond the end of the file)
   are refused before anything is written.
3. **Lazy stacks.** Each input becomes a small array-like object (:class:`TiffStack`,
   :class:`RawStack`, :class:`ItkStack`) that knows where every plane lives;
   ``da.from_array`` on that *reader object* (never on pixels) gives a Dask array whose
   task for block ``(z, y, x)`` reads only the rows of its own planes. Uncompressed
   TIFF planes are read with one ``seek``/``read`` of the rows needed; compressed or
   tiled planes are decoded a page at a time by tifffile; SimpleITK streams the region
   (``SetExtractIndex``/``SetExtractSize``) where its ImageIO supports it, and
   decompresses the whole file in each task where it does not (``.nii.gz``,
   compressed MHA: convert those first for big data). Workers read the files
   themselves.
4. **Voxel size.** ``voxel_size`` (micrometres) wins; otherwise it comes from the
   metadata: OME-XML ``PhysicalSize{X,Y,Z}`` with their units; ImageJ ``spacing`` and
   ``unit`` with the X/Y resolution tags; TIFF resolution tags with a real
   ``ResolutionUnit`` (inch or centimetre, z taken equal to x; the writer defaults
   ``NONE`` and 72/96/300 dpi are ignored); ITK spacing, taken as **millimetres**
   (the ITK/NIfTI/DICOM convention), except all-ones spacing which is ITK's "not set".
   Without either, ingest stops with a one-line error.
5. **Stitching** (``stitch=True``, vertically stacked sub-volumes, top first): for each
   neighbouring pair the last ``overlap`` slices of the upper stack and the first
   ``overlap`` of the lower one (a central y/x window) are computed, and
   ``skimage.registration.phase_cross_correlation`` (sub-voxel, then rounded) gives the
   z/y/x shift; the true overlap must lie within ``overlap +- search`` slices. The
   output is cropped in y/x to the region every stack covers; in each overlap the two
   stacks are blended with weights ramping linearly across it. The result is still a
   lazy graph over the input slabs.
6. **Write** through :func:`volmla.io.write_volume` (chunk by chunk, resumable), with a
   provenance step naming inputs, reader, voxel size source and stitching offsets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from volmla.errors import VolmlaError
from volmla.io import (
    DIMS,
    SUPPORTED_DTYPES,
    check_output,
    default_chunks,
    is_volume,
    normalise_voxel_size,
    write_volume,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ItkStack",
    "RawStack",
    "Source",
    "Stitched",
    "TiffStack",
    "blend_overlap",
    "estimate_offset",
    "ingest",
    "load",
    "open_input",
    "precheck_output",
    "save",
    "stitch_stacks",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz", ".hdr")
_UNIT_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "inch": 25400.0, "in": 25400.0,
}  # fmt: skip
_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0, 1200.0)


class Source(NamedTuple):
    """One input, opened lazily."""

    data: da.Array
    """(z, y, x) Dask array; each task reads its own block from the file(s)."""
    voxel_size: tuple[float, float, float] | None
    """Micrometres from the metadata, or None when the file has none."""
    voxel_size_source: str
    """Where ``voxel_size`` came from (e.g. ``"imagej metadata"``), or ``"none"``."""
    reader: str
    """``"tiff-folder"``, ``"tiff"``, ``"itk"`` or ``"raw"``."""
    paths: tuple[str, ...]
    """The file(s) read, in z order."""
    stack: Any
    """The array-like reader behind ``data`` (re-wrap it for other block shapes)."""


class Stitched(NamedTuple):
    """Stacks stitched along z."""

    data: da.Array
    """The lazy stitched (z, y, x) volume."""
    positions: list[tuple[int, int, int]]
    """Position of each stack's first voxel in the uncropped frame of stack 0."""
    overlaps: list[int]
    """Overlap in slices between each neighbouring pair."""
    crop_yx: tuple[int, int, int, int]
    """``(y0, y1, x0, x1)``: the y/x window every stack covers, in stack 0's frame."""


# ------------------------------------------------------------------------- lazy readers


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


class _Plane(NamedTuple):
    path: str
    offset: int  # byte offset of the uncompressed plane, or -1: decode page with tifffile
    page: int
    dtype: str  # file dtype with its byte order, e.g. "<u2"


class TiffStack:
    """A lazy ``(z, y, x)`` array over TIFF planes (pages of one or many files).

    Indexing reads only the planes and rows asked for: uncompressed planes with one
    ``read`` of the rows, compressed ones page by page through tifffile.
    """

    def __init__(self, planes: Sequence[_Plane], shape_yx: tuple[int, int], dtype: Any) -> None:
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


def _read_plane(plane: _Plane, ys: slice, xs: slice, width: int, handles: dict[str, Any]) -> np.ndarray:
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


def _lazy(stack: Any, chunks: tuple[int, int, int] | None) -> da.Array:
    chunks = chunks or default_chunks(stack.shape, stack.dtype)
    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, stack.shape, strict=True))
    meta = np.empty((0, 0, 0), dtype=stack.dtype)
    return da.from_array(stack, chunks=chunks, lock=False, asarray=False, fancy=False, meta=meta)


# ------------------------------------------------------------------------- header scans


def _check_dtype(dtype: Any, path: str) -> np.dtype:
    native = np.dtype(dtype).newbyteorder("=")
    if native not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(t) for t in SUPPORTED_DTYPES)
        raise VolmlaError(f"{path} holds unsupported dtype {native}: inputs must be one of {allowed}")
    return native


def _page_end(page: Any) -> int:
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) == 0:
        return 0
    return max(int(o) + int(c) for o, c in zip(offsets, counts, strict=True))


def _plane_of(page: Any, path: str, index: int, byteorder: str) -> _Plane:
    size = os.path.getsize(path)
    end = _page_end(page)
    if end > size or len(page.dataoffsets) == 0:
        raise VolmlaError(f"{path} is truncated: page {index} data ends at byte {end}, the file has {size}")
    dtype = np.dtype(page.dtype).newbyteorder(byteorder).str
    offset = int(page.dataoffsets[0]) if page.is_memmappable else -1
    return _Plane(path, offset, index, dtype)


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


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's own log lines about damaged files: ingest reports them itself."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _tiff_file(path: str) -> tuple[list[_Plane], tuple[int, int], np.dtype, Any]:
    """Planes of a multi-page / ImageJ / OME / BigTIFF stack, validated from headers."""
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
        dtype = _check_dtype(first.dtype, path)
        nz = int(np.prod(shape[:-2])) if len(shape) == 3 else 1
        yx = (int(shape[-2]), int(shape[-1]))
        size = os.path.getsize(path)
        if not tif.is_imagej and len(tif.pages) < nz:
            # the IFD chain broke off (ImageJ stacks over 4 GB legitimately have one page)
            raise VolmlaError(f"{path} is truncated or damaged: {len(tif.pages)} readable pages, its metadata describes {nz}")
        file_dtype = np.dtype(first.dtype).newbyteorder(tif.byteorder).str
        offset = first.dataoffset
        if offset is not None and first.keyframe.is_memmappable:
            end = int(offset) + int(first.nbytes)
            if end > size:
                raise VolmlaError(f"{path} is truncated: image data ends at byte {end}, the file has {size}")
            plane_bytes = yx[0] * yx[1] * dtype.itemsize
            planes = [_Plane(path, int(offset) + z * plane_bytes, z, file_dtype) for z in range(nz)]
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
        voxel, source = _tiff_voxel_size(tif)
    return planes, yx, dtype, (voxel, source)


def _tiff_folder(folder: Path, glob: str) -> tuple[list[_Plane], tuple[int, int], np.dtype, Any]:
    """Planes of a folder of 2-D slices, in natural order, validated from headers."""
    import natsort
    import tifffile

    files = [p for p in folder.glob(glob) if p.is_file()]
    if not files:
        raise VolmlaError(f"input folder {folder} has no files matching --glob {glob!r}")
    files = natsort.natsorted(files, key=lambda p: p.name)
    planes: list[_Plane] = []
    yx: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    voxel: Any = (None, "none")
    for path in files:
        name = str(path)
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
            this = _check_dtype(tif.series[0].dtype, name)
            if yx is None:
                yx, dtype = (int(shape[0]), int(shape[1])), this
                voxel = _tiff_voxel_size(tif)
            elif tuple(shape) != yx:
                raise VolmlaError(f"slice {name} has shape {tuple(shape)}, slice {files[0]} has {yx}: all slices must share one shape")
            elif this != dtype:
                raise VolmlaError(f"slice {name} has dtype {this}, slice {files[0]} has {dtype}: all slices must share one dtype")
            planes.append(_plane_of(tif.series[0].keyframe, name, 0, tif.byteorder))
    assert yx is not None and dtype is not None
    return planes, yx, dtype, voxel


# ------------------------------------------------------------------------- voxel sizes


def _unit_um(unit: Any) -> float | None:
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("micrometers", "micrometer")
    return _UNIT_UM.get(text)


def _resolution(page: Any) -> tuple[float | None, float | None]:
    """Pixel size along (y, x) in the resolution unit, from the resolution tags."""
    out: list[float | None] = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.valueof(tag)
        if value is None:
            out.append(None)
            continue
        num, den = (value if isinstance(value, tuple) else (value, 1))
        out.append(float(den) / float(num) if num else None)
    return out[0], out[1]


def _tiff_voxel_size(tif: Any) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel size (z, y, x) in micrometres from OME-XML, ImageJ or resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        found = _ome_voxel_size(tif.ome_metadata)
        if found is not None:
            return found, "ome-xml PhysicalSize"
    page = tif.pages.first
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        scale = _unit_um(meta.get("unit"))
        y, x = _resolution(page)
        if scale is not None and x is not None:
            y = y if y is not None else x
            z = float(meta.get("spacing", x))
            return (z * scale, y * scale, x * scale), "imagej metadata (spacing, unit, resolution)"
    unit = page.tags.valueof("ResolutionUnit")
    scale = {2: 25400.0, 3: 1e4}.get(int(unit)) if unit is not None else None
    y, x = _resolution(page)
    if scale is not None and x is not None and y is not None:
        dpi = 1.0 / x * (25400.0 / scale)  # pixels per inch
        if not any(abs(dpi - d) < 1e-6 for d in _DEFAULT_DPI):
            return (x * scale, y * scale, x * scale), "tiff resolution tags (z taken equal to x)"
    return None, "none"


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        scale = _unit_um(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is not None and scale is not None:
            sizes[axis] = float(value) * scale
    if "X" not in sizes:
        return None
    x = sizes["X"]
    return (sizes.get("Z", x), sizes.get("Y", x), x)


def _itk_info(path: str) -> tuple[tuple[int, int, int], np.dtype, tuple[float, float, float] | None, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise VolmlaError(f"{path} cannot be read by SimpleITK: {first}") from None
    if reader.GetNumberOfComponents() != 1:
        raise VolmlaError(f"{path} has {reader.GetNumberOfComponents()} components per voxel: ingest takes grey-scale volumes only")
    dim = reader.GetDimension()
    if dim not in (2, 3):
        raise VolmlaError(f"{path} is {dim}-D: ingest takes 2-D or 3-D images")
    size = [*reader.GetSize(), 1][:3]
    shape = (int(size[2]), int(size[1]), int(size[0]))
    dtype = _check_dtype(sitk.GetArrayFromImage(sitk.Image([1] * dim, reader.GetPixelID())).dtype, path)
    spacing = [*reader.GetSpacing(), reader.GetSpacing()[0]][:3]
    if all(abs(s - 1.0) < 1e-12 for s in spacing):
        return shape, dtype, None, "none (ITK spacing is the default 1)"
    # float32 headers (NIfTI) carry 7 significant digits
    z, y, x = (float(f"{s * 1e3:.7g}") for s in (spacing[2], spacing[1], spacing[0]))
    return shape, dtype, (z, y, x), "itk spacing (millimetres)"


# ------------------------------------------------------------------------- inputs


def open_input(
    path: str | Path,
    *,
    glob: str = "*.tif*",
    chunks: tuple[int, int, int] | None = None,
    shape: Sequence[int] | None = None,
    dtype: str | None = None,
    byteorder: Literal["little", "big"] = "little",
) -> Source:
    """Open one input lazily: a TIFF folder or stack, an ITK image, or a raw file.

    Parameters
    ----------
    path
        A folder of 2-D TIFF slices, a TIFF stack, an MHA/NRRD/NIfTI file, or (with
        ``shape`` and ``dtype``) a raw binary file.
    glob
        Pattern selecting the slices in a folder (natural sort order).
    chunks
        Block shape of the returned Dask array (each block one read task); default
        about 64 MiB, isotropic.
    shape, dtype, byteorder
        Layout of a raw file: ``(z, y, x)``, a NumPy dtype name, ``"little"``/``"big"``.

    Returns
    -------
    Source
        The lazy array, the metadata voxel size and its source, the reader, the files.

    Examples
    --------
    >>> src = open_input("slices/")  # doctest: +SKIP
    >>> src.data.shape, src.voxel_size  # doctest: +SKIP
    ((1024, 2000, 2000), (2.3, 2.3, 2.3))
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise VolmlaError(f"input {path} does not exist")
    if shape is not None:
        return _open_raw(path, shape=shape, dtype=dtype, byteorder=byteorder, chunks=chunks)
    if path.is_dir():
        with _quiet_tifffile():
            planes, yx, dt, (voxel, source) = _tiff_folder(path, glob)
        stack: Any = TiffStack(planes, yx, dt)
        paths = tuple(p.path for p in planes)
        reader = "tiff-folder"
    elif name.lower().endswith(TIFF_SUFFIXES):
        with _quiet_tifffile():
            planes, yx, dt, (voxel, source) = _tiff_file(name)
        stack = TiffStack(planes, yx, dt)
        paths, reader = (name,), "tiff"
    elif name.lower().endswith(ITK_SUFFIXES):
        itk_shape, dt, voxel, source = _itk_info(name)
        stack, paths, reader = ItkStack(name, itk_shape, dt), (name,), "itk"
    else:
        raise VolmlaError(
            f"input {path}: unknown format; give a folder of TIFF slices, a TIFF stack "
            f"({', '.join(TIFF_SUFFIXES)}), an ITK image ({', '.join(ITK_SUFFIXES)}), "
            "or a raw file with --shape Z Y X --dtype D"
        )
    return Source(_lazy(stack, chunks), voxel, source, reader, paths, stack)


def _open_raw(
    path: Path, *, shape: Sequence[int], dtype: str | None, byteorder: str, chunks: tuple[int, int, int] | None
) -> Source:
    if path.is_dir():
        raise VolmlaError(f"raw input {path} is a folder: --shape reads one raw binary file")
    if len(shape) != 3 or not all(int(s) > 0 for s in shape):
        raise VolmlaError(f"--shape must be three positive integers Z Y X, got {list(shape)}")
    if dtype is None:
        raise VolmlaError("raw input needs --dtype (e.g. uint16) with --shape")
    if byteorder not in ("little", "big"):
        raise VolmlaError(f"--byteorder must be one of ('little', 'big'), got {byteorder!r}")
    try:
        file_dtype = np.dtype(dtype)
    except TypeError:
        raise VolmlaError(f"--dtype must be a NumPy dtype name such as uint16, got {dtype!r}") from None
    _check_dtype(file_dtype, str(path))
    file_dtype = file_dtype.newbyteorder("<" if byteorder == "little" else ">")
    need = int(np.prod([int(s) for s in shape])) * file_dtype.itemsize
    have = path.stat().st_size
    if have != need:
        raise VolmlaError(f"raw input {path} has {have} bytes, --shape {' '.join(map(str, shape))} --dtype {dtype} needs {need}")
    stack = RawStack(path, tuple(int(s) for s in shape), file_dtype)  # type: ignore[arg-type]
    return Source(_lazy(stack, chunks), None, "none", "raw", (str(path),), stack)


# ------------------------------------------------------------------------- stitching


def _ncc(a: np.ndarray, b: np.ndarray, shift: Sequence[int]) -> float:
    """Normalised cross-correlation of ``a[p]`` and ``b[p - shift]`` where both exist."""
    sa, sb = [], []
    for n, d in zip(a.shape, shift, strict=True):
        if abs(d) >= n:
            return -1.0
        sa.append(slice(d, n) if d >= 0 else slice(0, n + d))
        sb.append(slice(0, n - d) if d >= 0 else slice(-d, n))
    x = a[tuple(sa)].ravel()
    y = b[tuple(sb)].ravel()
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom > 0 else -1.0


def estimate_offset(
    upper: np.ndarray, lower: np.ndarray, *, upsample: int = 10, max_steps: int = 20
) -> tuple[int, int, int]:
    """Shift (z, y, x) of ``lower`` relative to ``upper``, in whole voxels.

    ``upper`` holds the last slices of the upper stack and ``lower`` as many first
    slices of the lower stack, over the same y/x window. The lower stack's voxel
    ``(k, y, x)`` lies at ``(k + dz, y + dy, x + dx)`` of ``upper``, so the true overlap
    is ``len(upper) - dz`` slices.

    1. ``skimage.registration.phase_cross_correlation`` of the mean-free, Hann-windowed
       slabs (sub-voxel with ``upsample``, then rounded). The plain cross-power
       spectrum (``normalization=None``) is used: whitening it (``"phase"``) amplifies
       noise and missed shifts of smooth or noisy CT slabs in our tests.
    2. A hill climb of the normalised cross-correlation over the 26 integer
       neighbours, on the real (non-periodic) overlap of the slabs, corrects the
       bias that the short z extent of the slabs gives step 1.

    Parameters
    ----------
    upper, lower
        Two equally shaped 3-D blocks.
    upsample
        Sub-voxel upsampling of the correlation peak in step 1.
    max_steps
        Hill-climbing steps in step 2.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> vol = rng.random((30, 40, 40))
    >>> estimate_offset(vol[5:25, 5:35, 5:35], vol[7:27, 6:36, 5:35])
    (2, 1, 0)
    """
    import itertools

    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    if upper.shape != lower.shape or upper.ndim != 3:
        raise VolmlaError(f"overlap slabs must be 3-D of one shape, got {upper.shape} and {lower.shape}")
    ref = upper.astype(np.float32)
    mov = lower.astype(np.float32)
    hann = window("hann", ref.shape).astype(np.float32)
    ref = (ref - ref.mean()) * hann
    mov = (mov - mov.mean()) * hann
    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=upsample, normalization=None)
    a, b = upper.astype(np.float32), lower.astype(np.float32)
    scores: dict[tuple[int, ...], float] = {}

    def score(c: tuple[int, ...]) -> float:
        if c not in scores:
            scores[c] = _ncc(a, b, c)
        return scores[c]

    best = tuple(int(np.round(s)) for s in shift)
    for _ in range(max_steps):
        steps = itertools.product((-1, 0, 1), repeat=3)
        top = max((tuple(v + d for v, d in zip(best, step, strict=True)) for step in steps), key=score)
        if score(top) <= score(best):
            break
        best = top
    return best  # type: ignore[return-value]


def blend_overlap(upper: np.ndarray, lower: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Linear blend ``(1 - w) * upper + w * lower`` of two overlapping blocks.

    ``weights`` broadcasts against the blocks (shape ``(z, 1, 1)``); integer results
    are rounded and clipped to the dtype, so equal inputs give the input back.

    Examples
    --------
    >>> blend_overlap(np.full((2, 1, 1), 10, np.uint16), np.full((2, 1, 1), 20, np.uint16),
    ...               np.array([0.25, 0.75]).reshape(2, 1, 1)).ravel().tolist()
    [12, 18]
    """
    mixed = (1.0 - weights) * upper.astype(np.float64) + weights * lower.astype(np.float64)
    if np.issubdtype(upper.dtype, np.integer):
        info = np.iinfo(upper.dtype)
        mixed = np.clip(np.round(mixed), info.min, info.max)
    return mixed.astype(upper.dtype)


def stitch_stacks(
    stacks: Sequence[Any],
    *,
    overlap: int,
    search: int | None = None,
    window: int = 512,
    chunks: tuple[int, int, int] | None = None,
) -> Stitched:
    """Stitch vertically stacked sub-volumes (top first) into one lazy volume.

    Parameters
    ----------
    stacks
        Lazy (z, y, x) Dask arrays, or the lazy readers of :func:`open_input`
        (``Source.stack``: the overlap slabs are then read exactly, not whole blocks),
        of one dtype, in z order; neighbours overlap in z by about ``overlap`` slices
        and may be shifted by a few voxels in y/x.
    overlap
        Nominal overlap in slices; the slabs compared are this thick.
    search
        The true overlap must lie within ``overlap +- search`` (default
        ``max(2, overlap // 3)``).
    window
        Edge of the central y/x window the shift is estimated on.
    chunks
        Block shape of the result (default: the first stack's).

    Returns
    -------
    Stitched
        The lazy volume, stack positions, overlaps and the common y/x window.

    Examples
    --------
    >>> vol = da.random.default_rng(0).random((60, 32, 32), chunks=16)  # doctest: +SKIP
    >>> stitch_stacks([vol[:35], vol[25:]], overlap=10).overlaps  # doctest: +SKIP
    [10]
    """
    import operator

    import dask

    from volmla.cluster import compute

    readers = list(stacks)
    stacks = [s if isinstance(s, da.Array) else _lazy(s, chunks) for s in readers]
    if len(stacks) < 2:
        raise VolmlaError(f"stitching needs at least two stacks, got {len(stacks)}")
    if not isinstance(overlap, int | np.integer) or overlap < 4:
        raise VolmlaError(f"--overlap must be an integer of at least 4 slices, got {overlap!r}")
    search = max(2, overlap // 3) if search is None else int(search)
    dtypes = {str(s.dtype) for s in stacks}
    if len(dtypes) > 1:
        raise VolmlaError(f"stacks to stitch must share one dtype, got {sorted(dtypes)}")
    for i, s in enumerate(stacks):
        if s.shape[0] < overlap + search:
            raise VolmlaError(f"stack {i} has {s.shape[0]} slices, fewer than --overlap {overlap} + search {search}")

    # 1. slabs of the nominal overlap over a central y/x window, computed together
    def slab(stack: Any, region: tuple[slice, ...]) -> Any:
        if isinstance(stack, da.Array):
            return stack[region]
        return dask.delayed(operator.getitem, pure=True)(stack, region)  # the reader reads it

    slabs = []
    for upper, lower in zip(readers[:-1], readers[1:], strict=True):
        ny, nx = min(upper.shape[1], lower.shape[1]), min(upper.shape[2], lower.shape[2])
        wy, wx = min(ny, window), min(nx, window)
        y0, x0 = (ny - wy) // 2, (nx - wx) // 2
        top = slice(upper.shape[0] - overlap, upper.shape[0])
        slabs += [
            slab(upper, (top, slice(y0, y0 + wy), slice(x0, x0 + wx))),
            slab(lower, (slice(0, overlap), slice(y0, y0 + wy), slice(x0, x0 + wx))),
        ]
    values = compute(slabs, desc="stitching offsets")

    # 2. positions in stack 0's frame
    positions = [(0, 0, 0)]
    overlaps = []
    for i in range(len(stacks) - 1):
        dz, dy, dx = estimate_offset(values[2 * i], values[2 * i + 1])
        ov = overlap - dz
        if abs(dz) > search:
            raise VolmlaError(
                f"stitching stacks {i} and {i + 1}: estimated overlap {ov} slices lies outside "
                f"--overlap {overlap} +- {search}; check the input order and --overlap"
            )
        z, y, x = positions[-1]
        positions.append((z + stacks[i].shape[0] - ov, y + dy, x + dx))
        overlaps.append(ov)
    for i in range(1, len(stacks) - 1):
        if overlaps[i - 1] + overlaps[i] > stacks[i].shape[0]:
            raise VolmlaError(f"stack {i} ({stacks[i].shape[0]} slices) is covered entirely by its neighbours' overlaps {overlaps[i - 1]} and {overlaps[i]}")

    # 3. the y/x window every stack covers
    y0 = max(p[1] for p in positions)
    x0 = max(p[2] for p in positions)
    y1 = min(p[1] + s.shape[1] for p, s in zip(positions, stacks, strict=True))
    x1 = min(p[2] + s.shape[2] for p, s in zip(positions, stacks, strict=True))
    if y1 <= y0 or x1 <= x0:
        raise VolmlaError(f"stacks do not overlap in y/x after shifts {positions}")
    cropped = [s[:, y0 - p[1]:y1 - p[1], x0 - p[2]:x1 - p[2]] for p, s in zip(positions, stacks, strict=True)]

    # 4. pure parts and linearly blended overlaps, concatenated along z
    parts = []
    starts = [p[0] for p in positions]
    ends = [p[0] + s.shape[0] for p, s in zip(positions, stacks, strict=True)]
    for i, s in enumerate(cropped):
        lo = ends[i - 1] - starts[i] if i else 0
        hi = starts[i + 1] - starts[i] if i + 1 < len(cropped) else s.shape[0]
        parts.append(s[lo:hi])
        if i + 1 < len(cropped):
            ov = overlaps[i]
            upper = s[s.shape[0] - ov:]
            lower = cropped[i + 1][:ov].rechunk(upper.chunks)
            weights = (np.arange(1, ov + 1, dtype=np.float64) / (ov + 1)).reshape(ov, 1, 1)
            w = da.from_array(weights, chunks=(upper.chunks[0], 1, 1))
            parts.append(da.map_blocks(blend_overlap, upper, lower, w, dtype=upper.dtype))
    out = da.concatenate(parts, axis=0)
    out = out.rechunk(chunks or stacks[0].chunksize)
    return Stitched(out, positions, overlaps, (y0, y1, x0, x1))


# ------------------------------------------------------------------------- ingest


def precheck_output(path: str | Path, *, overwrite: bool = False) -> None:
    """Refuse an existing output before any work, unless it may be resumed or replaced."""
    path = Path(path)
    if not path.exists() or overwrite:
        return
    if is_volume(path):
        try:
            from volmla.io import open_volume

            open_volume(path)
        except VolmlaError:
            return  # incomplete: write_volume resumes it if it is the same job
    check_output(path, overwrite=False)


def _chunk_shape(chunks: int | None, shape: Sequence[int], dtype: Any) -> tuple[int, int, int]:
    if chunks is None:
        return default_chunks(shape, dtype)
    if not isinstance(chunks, int | np.integer) or chunks < 1:
        raise VolmlaError(f"--chunks must be a positive integer, got {chunks!r}")
    return tuple(int(min(chunks, s)) for s in shape)  # type: ignore[return-value]


def load(
    inputs: str | Path | Sequence[str | Path],
    *,
    voxel_size: float | Sequence[float] | None = None,
    chunks: int | None = None,
    glob: str = "*.tif*",
    stitch: bool = False,
    overlap: int | None = None,
    search: int | None = None,
    shape: Sequence[int] | None = None,
    dtype: str | None = None,
    byteorder: Literal["little", "big"] = "little",
) -> xr.DataArray:
    """Open the input(s) as one lazy volume with voxel size and provenance.

    Parameters
    ----------
    inputs
        One input, or several stacks (top first) with ``stitch=True``.
    voxel_size
        Micrometres (one number or z, y, x); overrides the metadata.
    chunks
        Block edge in voxels (default about 64 MiB, isotropic); each block is one read.
    glob
        Slice pattern for folder inputs.
    stitch, overlap, search
        Stitch several stacks along z; nominal overlap in slices and the search range.
    shape, dtype, byteorder
        Layout of raw binary inputs.

    Returns
    -------
    xarray.DataArray
        Dask-backed ``(z, y, x)`` with attrs ``voxel_size_um``, ``kind`` and
        ``provenance`` (one ``ingest`` step), ready for :func:`save`.

    Examples
    --------
    >>> vol = load("slices/", voxel_size=2.3)  # doctest: +SKIP
    """
    paths = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not paths:
        raise VolmlaError("no input given")
    if len(paths) > 1 and not stitch:
        raise VolmlaError(f"{len(paths)} inputs given: pass --stitch to stitch them along z, or give one input")
    if stitch and overlap is None:
        raise VolmlaError("--stitch needs --overlap N (the nominal overlap in slices)")
    if stitch and len(paths) < 2:
        raise VolmlaError(f"--stitch needs at least two inputs, got {len(paths)}")
    override = normalise_voxel_size(voxel_size) if voxel_size is not None else None

    # Header scans first (cheap), with provisional read chunks.
    sources = [open_input(p, glob=glob, shape=shape, dtype=dtype, byteorder=byteorder) for p in paths]
    first = sources[0].data
    block = _chunk_shape(chunks, first.shape, first.dtype)
    sources = [s._replace(data=_lazy(s.stack, block)) for s in sources]

    if override is not None:
        vs, vs_source = override, "--voxel-size"
    else:
        for p, s in zip(paths, sources, strict=True):
            if s.voxel_size is None:
                raise VolmlaError(f"input {p} has no voxel size in its metadata: give --voxel-size UM (micrometres)")
        found = [s.voxel_size for s in sources if s.voxel_size is not None]
        for p, v in zip(paths[1:], found[1:], strict=True):
            if not np.allclose(v, found[0], rtol=1e-6):
                raise VolmlaError(f"input {p} has voxel size {list(v)} um, {paths[0]} has {list(found[0])}: give --voxel-size to override")
        vs, vs_source = normalise_voxel_size(found[0]), sources[0].voxel_size_source

    from volmla import __version__

    step: dict[str, Any] = {
        "step": "ingest",
        "volmla": __version__,
        "inputs": [str(Path(p).resolve()) for p in paths],
        "reader": sources[0].reader,
        "files": sum(len(s.paths) for s in sources),
        "voxel_size_um": list(vs),
        "voxel_size_source": vs_source,
        "chunks": list(block),
    }
    if sources[0].reader == "tiff-folder":
        step["glob"] = glob
    if shape is not None:
        step.update(shape=[int(s) for s in shape], dtype=dtype, byteorder=byteorder)
    if stitch:
        assert overlap is not None
        result = stitch_stacks([s.stack for s in sources], overlap=overlap, search=search, chunks=block)
        data = result.data
        step["stitching"] = {
            "nominal_overlap": int(overlap),
            "overlaps": [int(o) for o in result.overlaps],
            "positions_zyx": [list(map(int, p)) for p in result.positions],
            "crop_yx": list(map(int, result.crop_yx)),
            "method": "phase cross-correlation, linear blend",
        }
    else:
        data = sources[0].data
    coords = {d: np.arange(n, dtype=np.float64) * s for d, n, s in zip(DIMS, data.shape, vs, strict=True)}
    attrs = {"voxel_size_um": vs, "unit": "micrometer", "kind": "intensity", "phases": {}, "provenance": [step]}
    name = Path(paths[0]).stem
    return xr.DataArray(data, dims=DIMS, coords=coords, attrs=attrs, name=name)


def save(vol: xr.DataArray, out: str | Path, *, levels: int = 1, overwrite: bool = False) -> Path:
    """Write a volume made by :func:`load` to OME-Zarr (resumable, chunk by chunk).

    Read errors while writing (a slice deleted or cut short meanwhile) become a
    :class:`~volmla.errors.VolmlaError`; the output stays marked incomplete, and
    rerunning the same job resumes it.
    """
    import tifffile

    out = Path(out)
    step = dict(vol.attrs["provenance"][-1])
    job = {"command": "ingest", **{k: v for k, v in step.items() if k != "stitching"}}
    try:
        return write_volume(vol, out, chunks=tuple(vol.data.chunksize), levels=levels, overwrite=overwrite, job=job)
    except (OSError, tifffile.TiffFileError) as exc:
        raise VolmlaError(
            f"reading the input failed while writing {out} ({exc}); "
            "the output is marked incomplete: fix the input and rerun the same command to resume"
        ) from exc


def ingest(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    voxel_size: float | Sequence[float] | None = None,
    chunks: int | None = None,
    glob: str = "*.tif*",
    stitch: bool = False,
    overlap: int | None = None,
    search: int | None = None,
    shape: Sequence[int] | None = None,
    dtype: str | None = None,
    byteorder: Literal["little", "big"] = "little",
    levels: int = 1,
    overwrite: bool = False,
) -> Path:
    """Convert scanner output to an OME-Zarr volume, out of core.

    Parameters are those of :func:`load`, plus the output group ``out``, the number of
    pyramid ``levels`` and ``overwrite``. An existing output is refused unless
    ``overwrite`` is set or it is an interrupted write of the same job (resumed).

    Returns
    -------
    pathlib.Path
        The written OME-Zarr group.

    Examples
    --------
    >>> ingest("slices/", "scan.zarr", voxel_size=2.3)  # doctest: +SKIP
    PosixPath('scan.zarr')
    """
    precheck_output(out, overwrite=overwrite)
    vol = load(
        inputs, voxel_size=voxel_size, chunks=chunks, glob=glob, stitch=stitch, overlap=overlap,
        search=search, shape=shape, dtype=dtype, byteorder=byteorder,
    )
    return save(vol, out, levels=levels, overwrite=overwrite)
