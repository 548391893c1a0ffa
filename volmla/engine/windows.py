"""Block kernels that read their own halo from stored arrays: memory bounded by the blocks in flight.

:func:`volmla.engine.overlap.halo_map` extends each block with slabs cut from its
neighbours' blocks, so a block's data stay in memory until every neighbour has run.
Over a volume of many blocks the scheduler then holds a wavefront of them, about two
planes of blocks (measured: half the blocks of a 512^3 volume in 128^3 chunks, 1.1 GB
per worker for a complex128 input), which grows with the volume's cross-section.

When the inputs are stored Zarr arrays (results of :func:`volmla.engine.scratch.store`,
or a stage's output), nothing needs sharing: :func:`window_map` gives every block one
task with no dependencies, which opens the arrays and reads its block plus halo itself
(``cval`` beyond the volume's faces). The halo is read more than once (a few percent of
the reads for 128^3 blocks and halos of ~10), and a worker holds only the windows of the
tasks it runs; the tasks are the graph's roots, so Dask's queueing releases them as
workers free up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from volmla.engine.blocks import owned
from volmla.errors import VolmlaError

__all__ = ["read_window", "window_map"]


def read_window(path: str | Path, start: Sequence[int], stop: Sequence[int], *, cval: float = 0.0) -> np.ndarray:
    """``array[start:stop]`` of a stored Zarr array, ``cval`` where the window leaves it.

    Parameters
    ----------
    path
        The Zarr array.
    start, stop
        The window per axis (may reach beyond ``0`` and the shape).
    cval
        Value outside the array.

    Returns
    -------
    numpy.ndarray
        The window, in the array's dtype.

    Examples
    --------
    >>> import tempfile, zarr
    >>> where = tempfile.mkdtemp() + "/a.zarr"
    >>> zarr.create_array(where, data=np.arange(4).reshape(1, 1, 4))[...].tolist()
    [[[0, 1, 2, 3]]]
    >>> read_window(where, (0, 0, -1), (1, 1, 3), cval=9).tolist()
    [[[9, 0, 1, 2]]]
    """
    import zarr

    array = zarr.open_array(str(path), mode="r")
    shape = array.shape
    inner = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, shape, strict=True))
    data = np.asarray(array[inner])
    pad = [(s.start - a, b - s.stop) for s, a, b in zip(inner, start, stop, strict=True)]
    if not any(lo or hi for lo, hi in pad):
        return data
    return np.pad(data, pad, mode="constant", constant_values=np.asarray(cval).astype(data.dtype))


def _window_task(*, kernel: Callable[..., Any], sources: tuple[str, ...], start: tuple[int, ...],
                 stop: tuple[int, ...], halo: tuple[int, ...], cvals: tuple[float, ...], origin: tuple[int, ...],
                 with_origin: bool) -> Any:
    windows = [read_window(p, start, stop, cval=c) for p, c in zip(sources, cvals, strict=True)]
    extra = {"origin": origin} if with_origin else {}
    return owned(kernel(*windows, halo=halo, **extra))


def window_map(
    kernel: Callable[..., Any],
    sources: Sequence[str | Path],
    *,
    chunks: tuple[tuple[int, ...], ...],
    halo: Sequence[int],
    dtype: Any,
    cval: float | Sequence[float] = 0.0,
    with_origin: bool = False,
    name: str | None = None,
) -> da.Array:
    """Apply ``kernel`` to every block of stored arrays extended by ``halo``, one task each.

    Parameters
    ----------
    kernel
        ``kernel(*windows, halo=(hz, hy, hx)[, origin=(z, y, x)]) -> block``: the
        windows are the block plus ``halo`` on each side (``cval`` beyond the volume);
        it returns the block proper (of the block's shape). ``origin`` (with
        ``with_origin``) is the block's first voxel in the volume.
    sources
        Paths of Zarr arrays of one shape.
    chunks
        The output's blocks (Dask chunks), covering that shape.
    halo
        Voxels per side and axis.
    dtype
        The output's dtype.
    cval
        Value beyond the volume, one for all sources or one per source.
    with_origin
        Pass ``origin=`` to the kernel.
    name
        Prefix of the task names (default: the kernel's name).

    Returns
    -------
    dask.array.Array
        Lazy; a task per block with no dependencies.

    Examples
    --------
    >>> import tempfile, zarr, scipy.ndimage as ndi
    >>> x = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    >>> where = tempfile.mkdtemp() + "/x.zarr"
    >>> _ = zarr.create_array(where, data=x, chunks=(8, 8, 8))
    >>> def smooth(w, *, halo):
    ...     out = ndi.uniform_filter(w, 3, mode="constant")
    ...     return out[tuple(slice(h, n - h) for h, n in zip(halo, out.shape))]
    >>> y = window_map(smooth, [where], chunks=((8, 8, 4),) * 3, halo=(1, 1, 1), dtype=np.float32)
    >>> bool(np.allclose(y.compute(), ndi.uniform_filter(x, 3, mode="constant")))
    True
    """
    paths = tuple(str(p) for p in sources)
    if not paths:
        raise VolmlaError("window_map needs at least one stored array")
    depth = tuple(int(h) for h in halo)
    if len(depth) != len(chunks) or any(h < 0 for h in depth):
        raise VolmlaError(f"halo must be one non-negative integer per axis, got {tuple(halo)!r}")
    cvals = tuple(float(c) for c in (cval if isinstance(cval, Sequence) else [cval] * len(paths)))
    if len(cvals) != len(paths):
        raise VolmlaError(f"cval needs one value per source ({len(paths)}), got {len(cvals)}")
    offsets = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    label = name or getattr(kernel, "__name__", None) or getattr(getattr(kernel, "func", None), "__name__", "window")
    out = f"{label}-window-{tokenize(kernel, paths, chunks, depth, cvals, with_origin)}"
    dsk: dict[Any, Any] = {}
    for idx in np.ndindex(*(len(c) for c in chunks)):
        origin = tuple(int(offsets[a][i]) for a, i in enumerate(idx))
        size = tuple(int(chunks[a][i]) for a, i in enumerate(idx))
        task = functools.partial(_window_task, kernel=kernel, sources=paths, halo=depth, cvals=cvals,
                                 origin=origin, with_origin=with_origin,
                                 start=tuple(o - h for o, h in zip(origin, depth, strict=True)),
                                 stop=tuple(o + n + h for o, n, h in zip(origin, size, depth, strict=True)))
        dsk[(out, *idx)] = (task,)
    dt = np.dtype(dtype)
    return da.Array(dsk, out, chunks=chunks, dtype=dt, meta=np.empty((0,) * len(chunks), dt))
