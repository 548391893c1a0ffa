"""Blocks of a chunked volume: the chunk policy, input coercion and per-block scans.

Every stage takes NumPy, Dask or xarray input. :func:`as_volume` is the one place that
turns any of these into a 3-D Dask array (plus the xarray attributes, when there are
some) and states the chunk policy for in-memory input: NumPy arrays are cut into views
(no copy, no hash) of :func:`default_chunks` (about 64 MiB, isotropic) unless the caller
names its chunks. Dask and xarray input keep their chunks. :func:`as_dataarray` is the
way back: a stage's lazy result as an :class:`xarray.DataArray` on its input's grid
(coordinates in micrometres, voxel size, translation, provenance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.typing import DaskCollection

from volmla.errors import VolmlaError
from volmla.types import VolumeLike

DIMS: tuple[str, str, str] = ("z", "y", "x")
DEFAULT_CHUNK_BYTES = 64 * 2**20

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DIMS",
    "Volume",
    "as_blocks",
    "as_dataarray",
    "as_volume",
    "block_grid",
    "check_same_voxel_size",
    "default_chunks",
    "map_blocks_at",
    "map_reduce",
    "normalise_chunks",
    "owned",
    "shared",
    "unsigned_ids",
]


class Volume(NamedTuple):
    """A volume as the engine sees it: a 3-D Dask array and the attributes it came with."""

    data: da.Array
    attrs: dict[str, Any]


def as_volume(
    volume: VolumeLike,
    *,
    name: str = "volume",
    chunks: Any = None,
    integer: bool = False,
    allow_empty: bool = False,
    finite: bool = False,
) -> Volume:
    """Any 3-D (z, y, x) volume as a Dask array plus its attributes.

    Parameters
    ----------
    volume
        A NumPy array, a Dask array or an :class:`xarray.DataArray` (dims ``z, y, x``).
    name
        What the caller calls it, for error messages (``"phases"``, ``"mask"``, ...).
    chunks
        Chunks for in-memory input (anything ``dask.array`` accepts, e.g. another array's
        ``.chunks``); default :func:`default_chunks`. Dask input keeps its own chunks.
    integer
        Require an integer (or boolean) dtype, as label and phase volumes have.
    allow_empty
        Accept a shape with a zero-length axis.
    finite
        For float data: every block is checked as it is computed, and one holding NaN or
        an infinity raises a one-line error (stages that take intensities ask for this;
        storage does not, so such a volume can still be written and read back).

    Returns
    -------
    Volume
        ``(data, attrs)``: the Dask array and a copy of the xarray attributes (``{}``
        for NumPy and Dask input).

    Examples
    --------
    >>> vol = as_volume(np.zeros((4, 5, 6), np.uint8))
    >>> vol.data.shape, vol.data.numblocks, vol.attrs
    ((4, 5, 6), (1, 1, 1), {})
    >>> as_volume(np.zeros((4, 5)))
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: volume must be 3-D (z, y, x), got 2-D shape (4, 5)
    """
    attrs: dict[str, Any] = {}
    data: Any = volume
    if hasattr(volume, "dims") and hasattr(volume, "attrs"):  # xarray.DataArray
        dims = tuple(volume.dims)
        if dims != DIMS and len(dims) == 3:
            raise VolmlaError(f"{name} dims must be {DIMS}, got {dims}")
        attrs = dict(volume.attrs or {})
        data = getattr(volume, "data", volume)
    if not isinstance(data, da.Array):
        data = np.asarray(data)
        if data.ndim == 3:
            grid = chunks if chunks is not None else default_chunks(data.shape, data.dtype)
            data = as_blocks(data, chunks=grid)
    if data.ndim != 3:
        raise VolmlaError(f"{name} must be 3-D (z, y, x), got {data.ndim}-D shape {data.shape}")
    if 0 in data.shape and not allow_empty:
        raise VolmlaError(f"{name} is empty: shape {data.shape}")
    if integer and not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise VolmlaError(f"{name} must hold integer ids, got dtype {data.dtype}")
    if finite and data.dtype.kind == "f":
        what = f"{name} {attrs['path']}" if attrs.get("path") else name
        data = data.map_blocks(_finite_block, what=what, dtype=data.dtype, meta=data._meta)
    return Volume(data, attrs)


def as_dataarray(
    data: da.Array,
    *,
    like: VolumeLike,
    name: str,
    kind: str,
    phases: dict[int, str] | None = None,
    record: dict[str, Any] | None = None,
) -> xr.DataArray:
    """A stage's lazy result as a DataArray on the grid of the volume it came from.

    Parameters
    ----------
    data
        The result (3-D Dask array, the shape of ``like``).
    like
        The stage's input. An xarray input lends its coordinates, ``voxel_size_um``,
        ``translation_um``, ``unit`` and provenance; NumPy or Dask input gets voxel-index
        coordinates (``unit: "voxel"``, no ``voxel_size_um``: none is invented).
    name
        The DataArray's name (``"particles"``, ``"phases"``, ...).
    kind
        ``attrs["kind"]``: ``"intensity"``, ``"phases"`` or ``"labels"``, as
        :func:`volmla.io.write_volume` stores it.
    phases
        Phase names by id (phase volumes), stored as ``attrs["phases"]``.
    record
        A provenance record appended to the input's.

    Returns
    -------
    xarray.DataArray
        Dims ``(z, y, x)``, still lazy (the Dask graph of ``data``).

    Examples
    --------
    >>> src = xr.DataArray(np.zeros((2, 3, 4)), dims=DIMS, coords={"x": np.arange(4) * 0.5},
    ...                    attrs={"voxel_size_um": (1.0, 1.0, 0.5)})
    >>> out = as_dataarray(da.ones((2, 3, 4), chunks=2), like=src, name="mask", kind="labels")
    >>> out.attrs["voxel_size_um"], out.x.values.tolist(), out.attrs["kind"]
    ((1.0, 1.0, 0.5), [0.0, 0.5, 1.0, 1.5], 'labels')
    """
    src_attrs: dict[str, Any] = dict(like.attrs or {}) if isinstance(like, xr.DataArray) else {}
    attrs: dict[str, Any] = {k: src_attrs[k] for k in ("voxel_size_um", "translation_um", "unit")
                             if k in src_attrs}
    coords: dict[str, Any] = {}
    if isinstance(like, xr.DataArray) and tuple(like.shape) == tuple(data.shape):
        coords = {d: like.coords[d].values for d in DIMS if d in like.coords}
    for axis, d in enumerate(DIMS):
        if d in coords:
            continue
        index = np.arange(int(data.shape[axis]), dtype=np.float64)
        if attrs.get("voxel_size_um") is not None:
            index = index * float(attrs["voxel_size_um"][axis])
            index = index + float(attrs.get("translation_um", (0.0, 0.0, 0.0))[axis])
        coords[d] = index
    if attrs.get("voxel_size_um") is None:
        attrs["unit"] = "voxel"
    attrs["kind"] = kind
    attrs["phases"] = dict(phases or {})
    provenance = list(src_attrs.get("provenance", []))
    attrs["provenance"] = [*provenance, record] if record is not None else provenance
    return xr.DataArray(data, dims=DIMS, coords=coords, attrs=attrs, name=name)


FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest intensity the stages compute with: they work in float32."""


def check_same_voxel_size(volumes: Mapping[str, Any]) -> None:
    """Refuse volumes of one computation whose recorded voxel sizes differ.

    Only volumes that carry a ``voxel_size_um`` attribute (OME-Zarr volumes, DataArrays
    of volmla's) are compared; NumPy and Dask arrays, and None, are skipped.

    Parameters
    ----------
    volumes
        ``{name: volume}``, in the order the message names them.

    Raises
    ------
    VolmlaError
        Naming the first two that differ.

    Examples
    --------
    >>> a = xr.DataArray(np.zeros((2, 2, 2)), dims=DIMS, attrs={"voxel_size_um": (1.0, 1.0, 1.0)})
    >>> check_same_voxel_size({"phases": a, "labels": np.zeros((2, 2, 2)), "grains": None})
    """
    sizes = {name: tuple(float(s) for s in np.broadcast_to(np.asarray(vs, float), 3))
             for name, v in volumes.items()
             if v is not None and (vs := (getattr(v, "attrs", None) or {}).get("voxel_size_um")) is not None}
    if not sizes:
        return
    first, first_size = next(iter(sizes.items()))
    for name, size in sizes.items():
        if not np.allclose(size, first_size, rtol=1e-9, atol=0):
            raise VolmlaError(f"{first} and {name} must share one voxel size, got {list(first_size)} and "
                              f"{list(size)} um")


def _finite_block(block: Any, *, what: str, block_info: dict[Any, Any] | None = None) -> Any:
    """``block`` itself, or a one-line error when it holds NaN or an infinity, or values
    beyond float32 (which the stages' float32 arithmetic would turn into infinities)."""
    xp = block.__array_namespace__() if hasattr(block, "__array_namespace__") else np
    where = ""
    if block_info and 0 in block_info:
        where = " (block at voxel " + ", ".join(str(lo) for lo, _ in block_info[0]["array-location"]) + ")"
    if not bool(xp.isfinite(block).all()):
        raise VolmlaError(f"{what} holds NaN or infinite values{where}: replace them with numbers first")
    if block.dtype.itemsize > 4 and block.dtype.kind == "f" and block.size:
        largest = float(xp.abs(block).max())
        if largest > FLOAT32_MAX:
            raise VolmlaError(f"{what} holds values beyond float32's range (up to {largest:.3g}){where}: volmla "
                              "computes in float32; rescale the volume first")
    return block


def unsigned_ids(block: np.ndarray, *, what: str = "particle") -> np.ndarray:
    """A block of integer ids as unsigned integers of the same width (a view, no copy).

    The one check of label blocks a kernel reads as unsigned ids: a signed block is
    refused when it holds a negative id (it would wrap to a huge one), a float or
    boolean block always.

    Parameters
    ----------
    block
        One block of ids.
    what
        What the ids label, for the message (``"particle ids must not be negative"``).

    Returns
    -------
    numpy.ndarray
        ``block`` itself when unsigned, else a view of it as unsigned.

    Examples
    --------
    >>> unsigned_ids(np.array([0, 3], np.int32)).dtype
    dtype('uint32')
    >>> unsigned_ids(np.array([0, -3], np.int32))
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: particle ids must not be negative, got -3
    """
    if block.dtype.kind == "u":
        return block
    if block.dtype.kind != "i":
        raise VolmlaError(f"{what} ids must be integers, got dtype {block.dtype}")
    if block.size and int(block.min()) < 0:
        raise VolmlaError(f"{what} ids must not be negative, got {int(block.min())}")
    return block.view(block.dtype.str.replace("i", "u"))


def default_chunks(
    shape: Sequence[int], dtype: Any, *, target_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[int, int, int]:
    """Isotropic chunk edge so that one chunk holds about ``target_bytes``.

    Axes shorter than the edge get one chunk spanning them, and the freed budget is
    spent along the other axes.

    Parameters
    ----------
    shape
        Volume shape (z, y, x).
    dtype
        Its dtype.
    target_bytes
        Bytes one chunk should hold.

    Returns
    -------
    tuple of int
        The chunk shape (z, y, x).

    Examples
    --------
    >>> default_chunks((1000, 1000, 1000), "uint16")
    (323, 323, 323)
    """
    itemsize = np.dtype(dtype).itemsize
    budget = max(1, target_bytes // itemsize)
    shape = [int(s) for s in shape]
    chunks = [0, 0, 0]
    free = list(range(3))
    # Fix short axes first, then share the remaining budget equally.
    while free:
        edge = int(round((budget / np.prod([chunks[i] for i in range(3) if i not in free] or [1]))
                         ** (1 / len(free))))
        short = [i for i in free if shape[i] <= edge]
        if not short:
            for i in free:
                chunks[i] = max(1, min(edge, shape[i]))
            break
        for i in short:
            chunks[i] = max(1, shape[i])
            free.remove(i)
    return tuple(chunks)  # type: ignore[return-value]


def normalise_chunks(
    chunks: int | Sequence[int] | None, shape: Sequence[int], dtype: Any
) -> tuple[int, int, int]:
    """Storage chunk shape from one edge or three, clipped to ``shape``; default
    :func:`default_chunks`.

    Parameters
    ----------
    chunks
        One edge, three edges, or None for :func:`default_chunks`.
    shape
        Volume shape (z, y, x).
    dtype
        Its dtype (for the default).

    Returns
    -------
    tuple of int
        The chunk shape (z, y, x), each edge at most the axis length.

    Examples
    --------
    >>> normalise_chunks(64, (10, 100, 100), "uint8")
    (10, 64, 64)
    """
    if chunks is None:
        return default_chunks(shape, dtype)
    if not isinstance(chunks, int | np.integer | Sequence):
        raise VolmlaError(f"chunks must be one integer or three, got {chunks!r}")
    values = [chunks] * 3 if isinstance(chunks, int | np.integer) else list(chunks)
    if len(values) != 3 or not all(isinstance(v, int | np.integer) for v in values):
        raise VolmlaError(f"chunks must be one integer or three, got {chunks!r}")
    if any(v < 1 for v in values):
        raise VolmlaError(f"chunks must be positive, got {list(values)}")
    return tuple(int(min(v, max(s, 1))) for v, s in zip(values, shape, strict=True))  # type: ignore[return-value]



def block_grid(chunks: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``(index, origin, size)`` of every block of a Dask chunk grid, in C order.

    Parameters
    ----------
    chunks
        A Dask ``.chunks`` tuple (block sizes along each axis).

    Returns
    -------
    list of tuple
        ``(index, origin, size)`` per block.

    Examples
    --------
    >>> block_grid(((2, 1), (3,)))
    [((0, 0), (0, 0), (2, 3)), ((1, 0), (2, 0), (1, 3))]
    """
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    out = []
    for idx in np.ndindex(*(len(c) for c in chunks)):
        origin = tuple(int(starts[a][i]) for a, i in enumerate(idx))
        size = tuple(int(chunks[a][i]) for a, i in enumerate(idx))
        out.append((tuple(int(i) for i in idx), origin, size))
    return out


def owned(block: Any) -> Any:
    """``block`` when it holds no more memory than its own bytes, else a compact copy.

    A task's result that is a view (a block cut from its extended window, the first
    plane of a block) keeps the whole base array alive as long as the result is held,
    while Dask's ``sizeof`` counts the view's bytes only: workers then hold many times
    what they report. Kernels' results pass through here before a task returns them.

    Parameters
    ----------
    block
        A task's result; anything but a NumPy view passes unchanged.

    Returns
    -------
    Any
        ``block`` or ``block.copy()``.

    Examples
    --------
    >>> big = np.zeros((4, 4, 4))
    >>> owned(big) is big, owned(big[1:3]).base is None
    (True, True)
    """
    if not isinstance(block, np.ndarray) or block.base is None:
        return block
    root: Any = block
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    if isinstance(root, np.ndarray) and root.nbytes <= block.nbytes:
        return block  # a reshape or a re-typed view of a buffer of the same size
    return block.copy()


def shared(value: Any) -> Any:
    """A large constant for block tasks (a lookup table), held once per worker.

    A table bound into the kernel (``functools.partial``, a plain keyword) travels
    inside every task's specification: the scheduler sends each task on its own, and
    a worker holds one copy per task it has been given, 6 GB per worker for a 45 MB
    table over 1024 blocks. Given as ``map_blocks(..., name=shared(table))`` instead,
    it is one key of the graph that each task depends on, sent once to each worker.

    Parameters
    ----------
    value
        The constant (any picklable object).

    Returns
    -------
    dask.delayed.Delayed
        To pass as a keyword of :func:`dask.array.map_blocks` (with ``meta=``, so Dask
        does not call the kernel on the placeholder).

    Examples
    --------
    >>> lut = np.array([0, 5, 7])
    >>> x = da.from_array(np.array([[[0, 1, 2, 1]]]), chunks=2)
    >>> y = da.map_blocks(lambda b, lut: lut[b], x, lut=shared(lut), dtype=lut.dtype, meta=np.empty((0, 0, 0), int))
    >>> y.compute().ravel().tolist()
    [0, 5, 7, 5]
    """
    import dask

    return dask.delayed(value, pure=True, traverse=False)


def as_blocks(array: np.ndarray, *, chunks: Any) -> da.Array:
    """An in-memory array as a Dask array whose blocks are views of it.

    Unlike ``dask.array.from_array``, which copies the whole array and hashes it for a
    name (two passes over its memory: 0.8 s for 265 MB here), this makes neither. The
    blocks share memory with ``array``, so the kernels reading them must not write to
    them (volmla's do not).

    Parameters
    ----------
    array
        The NumPy array.
    chunks
        Anything ``dask.array.core.normalize_chunks`` accepts for its shape.

    Returns
    -------
    dask.array.Array

    Examples
    --------
    >>> x = np.arange(24).reshape(2, 3, 4)
    >>> as_blocks(x, chunks=(1, 3, 2)).numblocks
    (2, 1, 2)
    """
    from uuid import uuid4

    from dask.array.core import normalize_chunks

    grid = normalize_chunks(chunks, array.shape)
    name = f"volmla-views-{uuid4().hex}"
    dsk = {(name, *idx): array[tuple(slice(o, o + n) for o, n in zip(origin, size, strict=True))]
           for idx, origin, size in block_grid(grid)}
    return da.Array(dsk, name, chunks=grid, dtype=array.dtype)


def map_reduce(data: da.Array, block_fn: Callable[[np.ndarray], Any], *, desc: str) -> list[Any]:
    """``block_fn`` on every block of ``data``, the results gathered as one list (one compute).

    Parameters
    ----------
    data
        A Dask array.
    block_fn
        A pure function of one NumPy block; its results are small (tables, counts).
    desc
        What the progress bar says.

    Returns
    -------
    list
        One result per block, in C order of the block grid.

    Examples
    --------
    >>> x = da.from_array(np.arange(8).reshape(2, 2, 2), chunks=1)
    >>> sum(map_reduce(x, np.sum, desc="sum"))
    np.int64(28)
    """
    from volmla.engine.cluster import compute

    token = tokenize(data, block_fn)
    name, collect = f"volmla-map-{token}", f"volmla-collect-{token}"
    dsk: dict[Any, Any] = {}
    keys = []
    for idx in np.ndindex(*data.numblocks):
        dsk[(name, *idx)] = (block_fn, (data.name, *idx))
        keys.append((name, *idx))
    dsk[collect] = (list, keys)
    graph = HighLevelGraph.from_collections(collect, dsk, dependencies=[cast(DaskCollection, data)])
    return cast(list[Any], compute([Delayed(collect, graph)], desc=desc)[0])


def map_blocks_at(data: da.Array, kernel: Callable[..., Any], result_dtype: Any, **kwargs: Any) -> da.Array:
    """``kernel(block, origin=(z0, y0, x0), **kwargs)`` on every block, lazily (no halo).

    The origin (the block's first voxel, from Dask's ``block_info``) lets a kernel place
    its voxels, e.g. their distance from the rotation axis.

    Parameters
    ----------
    data
        A 3-D Dask array.
    kernel
        A pure function of one NumPy block and its ``origin``, returning a block of the
        same shape.
    result_dtype
        The result's dtype.
    **kwargs
        Passed to ``kernel``.

    Returns
    -------
    dask.array.Array

    Examples
    --------
    >>> x = da.zeros((4, 1, 1), dtype=np.uint8, chunks=2)
    >>> map_blocks_at(x, lambda b, origin: b + origin[0], np.uint8).compute().ravel().tolist()
    [0, 0, 2, 2]
    """
    # the kernel and its keywords go through map_blocks, so they are part of the graph's keys
    return da.map_blocks(_at_origin, data, kernel=kernel, dtype=result_dtype, meta=np.empty((0, 0, 0), result_dtype),
                         **kwargs)


def _at_origin(block: np.ndarray, *, kernel: Callable[..., Any], block_info: dict[Any, Any] | None = None,
               **kwargs: Any) -> Any:
    origin = [lo for lo, _ in block_info[0]["array-location"]] if block_info else [0, 0, 0]
    return kernel(block, origin=origin, **kwargs)
