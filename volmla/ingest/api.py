"""Opening inputs and writing them: the ingest API (open_input, load, save, ingest).

1. **Resolve inputs** (:func:`open_input`). A folder is a stack of 2-D TIFF slices
   (files matching ``glob`` in natural order); a ``.tif``/``.tiff``/``.btf`` file is a
   multi-page, BigTIFF, ImageJ hyperstack or OME-TIFF stack; ``.mha``/``.mhd``/
   ``.nrrd``/``.nhdr``/``.nii``/``.nii.gz`` go through SimpleITK; anything else is raw
   binary read with the ``shape``/``dtype``/``byteorder`` given.
2. **Scan headers, not pixels** (:mod:`volmla.ingest.tiff`,
   :func:`volmla.ingest.metadata.itk_header`), then wrap each input in its lazy reader
   (:mod:`volmla.ingest.readers`).
3. **Voxel size and provenance** (:func:`load`). ``voxel_size`` (micrometres) wins;
   otherwise it comes from the metadata (:mod:`volmla.ingest.metadata`), and every
   input must agree. Without either, ingest stops with a one-line error. Several
   inputs are stitched along z (``stitch=True``, :mod:`volmla.ingest.stitch`).
4. **Write** (:func:`save`) through :func:`volmla.io.write_volume` (chunk by chunk,
   resumable), with a provenance step naming inputs, reader, voxel size source and
   stitching offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from volmla.engine.blocks import normalise_chunks
from volmla.errors import VolmlaError
from volmla.ingest.metadata import itk_header
from volmla.ingest.readers import ItkStack, LazyStack, RawStack, TiffStack, check_dtype, lazy_array
from volmla.ingest.stitch import stitch_stacks
from volmla.ingest.tiff import quiet_tifffile, scan_tiff_file, scan_tiff_folder
from volmla.io import (
    DIMS,
    check_output,
    is_volume,
    normalise_voxel_size,
    open_volume,
    write_volume,
)
from volmla.io.outputs import INPUTS_KEY, check_not_file, files_fingerprint

__all__ = [
    "ITK_SUFFIXES",
    "TIFF_SUFFIXES",
    "Reader",
    "Source",
    "ingest",
    "load",
    "open_input",
    "precheck_output",
    "save",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz", ".hdr")
Reader = Literal["tiff-folder", "tiff", "itk", "raw"]


class Source(NamedTuple):
    """One input, opened lazily."""

    data: da.Array
    """(z, y, x) Dask array; each task reads its own block from the file(s)."""
    voxel_size: tuple[float, float, float] | None
    """Micrometres from the metadata, or None when the file has none."""
    voxel_size_source: str
    """Where ``voxel_size`` came from (e.g. ``"imagej metadata"``), or ``"none"``."""
    reader: Reader
    """``"tiff-folder"``, ``"tiff"``, ``"itk"`` or ``"raw"``."""
    paths: tuple[str, ...]
    """The file(s) read, in z order."""
    stack: LazyStack
    """The array-like reader behind ``data`` (re-wrap it for other block shapes)."""



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
    if path.is_dir() and any((path / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray")):
        raise VolmlaError(f"input {path} is a Zarr store, not scanner files: an OME-Zarr volume is read by "
                          "every command as it is (volmla info to check it)")
    if path.is_dir():
        with quiet_tifffile():
            planes, yx, dt, (voxel, source) = scan_tiff_folder(path, glob)
        stack: LazyStack = TiffStack(planes, yx, dt)
        paths = tuple(p.path for p in planes)
        reader: Reader = "tiff-folder"
    elif name.lower().endswith(TIFF_SUFFIXES):
        with quiet_tifffile():
            planes, yx, dt, (voxel, source) = scan_tiff_file(name)
        stack = TiffStack(planes, yx, dt)
        paths, reader = (name,), "tiff"
    elif name.lower().endswith(ITK_SUFFIXES):
        itk_shape, dt, voxel, source = itk_header(name)
        stack, paths, reader = ItkStack(name, itk_shape, dt), (name,), "itk"
    else:
        raise VolmlaError(
            f"input {path}: unknown format; give a folder of TIFF slices, a TIFF stack "
            f"({', '.join(TIFF_SUFFIXES)}), an ITK image ({', '.join(ITK_SUFFIXES)}), "
            "or a raw binary file with shape=(z, y, x) and dtype=NAME"
        )
    return Source(lazy_array(stack, chunks), voxel, source, reader, paths, stack)


def _open_raw(
    path: Path, *, shape: Sequence[int], dtype: str | None, byteorder: str, chunks: tuple[int, int, int] | None
) -> Source:
    if path.is_dir():
        raise VolmlaError(f"raw input {path} is a folder: shape=(z, y, x) reads one raw binary file")
    if len(shape) != 3 or not all(int(s) > 0 for s in shape):
        raise VolmlaError(f"shape must be three positive integers (z, y, x), got {list(shape)}")
    if dtype is None:
        raise VolmlaError("raw input needs dtype=NAME (e.g. uint16) with its shape")
    if byteorder not in ("little", "big"):
        raise VolmlaError(f"byteorder must be one of ('little', 'big'), got {byteorder!r}")
    try:
        file_dtype = np.dtype(dtype)
    except TypeError:
        raise VolmlaError(f"dtype must be a NumPy dtype name such as uint16, got {dtype!r}") from None
    check_dtype(file_dtype, str(path))
    file_dtype = file_dtype.newbyteorder("<" if byteorder == "little" else ">")
    need = int(np.prod([int(s) for s in shape])) * file_dtype.itemsize
    have = path.stat().st_size
    if have != need:
        raise VolmlaError(f"raw input {path} has {have} bytes; shape={tuple(int(s) for s in shape)} with dtype={dtype} needs {need}")
    stack = RawStack(path, tuple(int(s) for s in shape), file_dtype)  # type: ignore[arg-type]
    return Source(lazy_array(stack, chunks), None, "none", "raw", (str(path),), stack)


# ------------------------------------------------------------------------- ingest


def precheck_output(path: str | Path, *, overwrite: bool = False) -> None:
    """Refuse an existing output before any work, unless it may be resumed or replaced.

    Parameters
    ----------
    path
        The output volume :func:`save` will write.
    overwrite
        Whether an existing output may be replaced.

    Returns
    -------
    None
        Raises :class:`~volmla.errors.VolmlaError` when ``path`` is a file (with or
        without ``overwrite``: a volume is a folder), or holds a complete volume or
        something else and ``overwrite`` is not set; an incomplete volume passes
        (:func:`save` resumes it if it is the same job).

    Examples
    --------
    >>> precheck_output("/nonexistent/out.zarr")
    """
    path = Path(path)
    check_not_file(path)
    if not path.exists() or overwrite:
        return
    if is_volume(path):
        try:
            open_volume(path)
        except VolmlaError:
            return  # incomplete: write_volume resumes it if it is the same job
    check_output(path, overwrite=False)


def _chunk_shape(chunks: int | None, shape: Sequence[int], dtype: Any) -> tuple[int, int, int]:
    """One block edge (ingest takes one) checked here, clipped by the shared helper."""
    if chunks is not None and (not isinstance(chunks, int | np.integer) or chunks < 1):
        raise VolmlaError(f"chunks={chunks!r} is not a positive integer (the block edge in voxels)")
    return normalise_chunks(chunks, shape, dtype)


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
        Stitch several stacks along z; nominal overlap in slices and the search
        range (both only with ``stitch=True``).
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
        raise VolmlaError(f"{len(paths)} inputs given: pass stitch=True to stitch them along z, or give one input")
    if stitch and overlap is None:
        raise VolmlaError("stitch=True needs overlap=N (the nominal overlap in slices)")
    for name, value in (("overlap", overlap), ("search", search)):
        if value is not None and not stitch:  # it would be ignored
            raise VolmlaError(f"{name}={value} is for stitching several stacks: pass stitch=True, or leave {name}= out")
    if stitch and len(paths) < 2:
        raise VolmlaError(f"stitch=True needs at least two inputs, got {len(paths)}")
    override = normalise_voxel_size(voxel_size) if voxel_size is not None else None

    # Header scans first (cheap), with provisional read chunks.
    sources = [open_input(p, glob=glob, shape=shape, dtype=dtype, byteorder=byteorder) for p in paths]
    first = sources[0].data
    block = _chunk_shape(chunks, first.shape, first.dtype)
    sources = [s._replace(data=lazy_array(s.stack, block)) for s in sources]

    if override is not None:
        vs, vs_source = override, "--voxel-size"
    else:
        for p, s in zip(paths, sources, strict=True):
            if s.voxel_size is None:
                raise VolmlaError(f"input {p} has no voxel size in its metadata: give voxel_size (micrometres)")
        found = [s.voxel_size for s in sources if s.voxel_size is not None]
        for p, v in zip(paths[1:], found[1:], strict=True):
            if not np.allclose(v, found[0], rtol=1e-6):
                raise VolmlaError(f"input {p} has voxel size {list(v)} um, {paths[0]} has {list(found[0])}: give voxel_size to override")
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
    # The files as listed now, content only: a rerun resumes an interrupted write only if
    # they are the same files (a replaced folder of slices is a different job).
    step[INPUTS_KEY] = {f"inputs[{i}]": files_fingerprint(s.paths) for i, s in enumerate(sources)}
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
    if np.issubdtype(data.dtype, np.floating):
        data = da.map_blocks(_finite_block, data, str(paths[0]), dtype=data.dtype,
                             meta=np.empty((0, 0, 0), data.dtype))
    coords = {d: np.arange(n, dtype=np.float64) * s for d, n, s in zip(DIMS, data.shape, vs, strict=True)}
    attrs = {"voxel_size_um": vs, "unit": "micrometer", "kind": "intensity", "phases": {}, "provenance": [step]}
    name = Path(paths[0]).stem
    return xr.DataArray(data, dims=DIMS, coords=coords, attrs=attrs, name=name)


def _finite_block(block: np.ndarray, source: str, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """A block of a floating-point input, refused if it holds NaN or an infinity.

    Every later stage takes an intensity volume to hold numbers (histograms, Otsu,
    filters); ingest is where one that does not is refused, as its blocks are read.
    """
    if not np.isfinite(block).all():
        where = ""
        if block_info and 0 in block_info:
            z0, z1 = block_info[0]["array-location"][0]
            bad = int(np.argmax(~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)))
            where = f" (plane {z0 + bad} of planes {z0}..{z1 - 1})"
        raise VolmlaError(f"input {source} holds NaN or infinite values{where}: replace them with numbers before ingest")
    return block


def save(vol: xr.DataArray, out: str | Path, *, levels: int = 1, overwrite: bool = False) -> Path:
    """Write a volume made by :func:`load` to OME-Zarr (resumable, chunk by chunk).

    Read errors while writing (a slice deleted or cut short meanwhile) become a
    :class:`~volmla.errors.VolmlaError`; the output stays marked incomplete, and
    rerunning the same job resumes it.

    Parameters
    ----------
    vol
        The lazy volume :func:`load` returns (its last provenance step is the job).
    out
        The output OME-Zarr group.
    levels
        Number of multiscale levels (1 = full resolution only).
    overwrite
        Replace an existing output; without it an interrupted write of the same job
        resumes and anything else is refused.

    Returns
    -------
    pathlib.Path
        The written OME-Zarr group.

    Examples
    --------
    >>> save(load("slices/", voxel_size=2.3), "scan.zarr")  # doctest: +SKIP
    PosixPath('scan.zarr')
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
