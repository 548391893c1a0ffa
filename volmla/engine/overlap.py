"""The halo engine: a pure per-block kernel over a chunked volume, exact at chunk borders.

1. The caller states the halo the kernel needs (derived from the kernel's own
   parameters: a gaussian's ``int(truncate * sigma + 0.5)``, a median's ``size // 2``,
   a model's receptive field) and the boundary mode at the volume's faces;
2. chunks thinner than the halo are merged with their neighbours first (Dask rechunks
   them), so no block ever reads a halo from beyond its neighbour;
3. each block is extended by the halo from its neighbours, in one task per block: every
   block lends its six face slabs (``h`` planes thick, one small task each), and the
   block's task cuts the pieces of its up to 26 neighbours out of them (an edge or
   corner piece out of a face slab). At the volume's faces the extension follows the
   boundary mode (``reflect`` = SciPy's reflect, ``nearest``, ``wrap``, ``constant``),
   applied axis by axis exactly as SciPy extends a whole array in memory. Seven tasks
   per block instead of the ~40 of ``dask.array.overlap``: at 512^3 and 256^3 blocks
   the engine then costs no more than the in-memory call apart from the storage;
4. the kernel runs on the extended block, on NumPy or, with ``device="gpu"``, on CuPy
   (moved there and back per block), and the halo is trimmed before anything is
   written. A kernel that can do better than compute the halo and throw it away (a
   separable filter trims each axis as soon as that axis is filtered: at 256^3 blocks
   and a halo of 6 that is 10 % extra work instead of 15 %) says so with
   ``crops=True``: it is handed the extended block and ``halo=(hz, hy, hx)`` and
   returns the block proper.

Because each output voxel sees exactly the same input values as in the in-memory call,
the result is bit-identical to running the kernel on the whole array, whatever the
chunking.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.typing import DaskCollection

from volmla.engine.backend import to_device, to_numpy
from volmla.engine.blocks import owned
from volmla.errors import VolmlaError

Boundary = Literal["reflect", "nearest", "wrap", "constant"]
BOUNDARIES: tuple[str, ...] = ("reflect", "nearest", "wrap", "constant")

__all__ = ["Boundary", "face_slab", "halo_map", "normalise_halo"]


def normalise_halo(halo: int | Sequence[int], shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """A per-axis ``(z, y, x)`` halo, validated (and checked against ``shape`` if given).

    Parameters
    ----------
    halo
        One non-negative integer or three.
    shape
        The volume's shape; a halo reaching across a whole axis is an error.

    Returns
    -------
    tuple of int
        ``(z, y, x)`` halo.

    Examples
    --------
    >>> normalise_halo(2)
    (2, 2, 2)
    """
    values = [halo] * 3 if isinstance(halo, int | np.integer) else list(halo)
    if len(values) != 3 or any(int(h) != h or h < 0 for h in values):
        raise VolmlaError(f"halo must be one non-negative integer or three, got {halo!r}")
    out = tuple(int(h) for h in values)
    if shape is not None:
        for axis, (h, n) in enumerate(zip(out, shape, strict=True)):
            if h >= n and n > 1:
                raise VolmlaError(
                    f"halo {h} along axis {'zyx'[axis]} is larger than the volume ({n} voxels): "
                    "use a smaller filter or a larger volume"
                )
    return out  # type: ignore[return-value]


def _on_device(kernel: Callable[..., Any], device: str) -> Callable[..., Any]:
    if device == "cpu":
        return kernel

    def run(block: np.ndarray, **kwargs: Any) -> np.ndarray:
        return to_numpy(kernel(to_device(block, "gpu"), **kwargs))

    return run


_PAD_MODE = {"reflect": "symmetric", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


def face_slab(block: np.ndarray, axis: int, side: int, h: int) -> np.ndarray:
    """The ``h`` planes of ``block`` on its low (``side=0``) or high (``side=1``) face.

    Parameters
    ----------
    block
        A 3-D NumPy block.
    axis
        The axis (0, 1, 2 = z, y, x) the face is normal to.
    side
        0 for the low face, 1 for the high face.
    h
        How many planes to take.

    Returns
    -------
    numpy.ndarray
        A C-contiguous copy of the slab, ``h`` thick along ``axis``.

    Examples
    --------
    >>> face_slab(np.arange(8).reshape(2, 2, 2), 2, 1, 1).ravel().tolist()
    [1, 3, 5, 7]
    """
    take = [slice(None)] * 3
    take[axis] = slice(0, h) if side == 0 else slice(block.shape[axis] - h, None)
    # always a copy: a view (the low slab along z is contiguous) would keep the whole
    # block alive until the neighbour has run, while the scheduler counts the slab only
    return block[tuple(take)].copy()


def _assemble(
    block: np.ndarray,
    slabs: list[np.ndarray],
    *,
    sources: list[tuple[tuple[int, int, int], int, int]],
    depth: tuple[int, int, int],
    missing: tuple[tuple[bool, bool], ...],
    boundary: str,
    cval: float,
) -> np.ndarray:
    """The block extended by its halo: neighbours' pieces, then the boundary mode where
    the block meets the volume's faces (NumPy's pad applies it axis by axis, which is
    SciPy's extension of the whole array).

    ``sources[i] = (offset, axis, side)``: ``slabs[i]`` is the ``side`` face slab along
    ``axis`` of the neighbour at ``offset``; the part of it that lies in the halo goes
    to the halo region in direction ``offset``.
    """
    have = [(0 if lo else h, 0 if hi else h) for (lo, hi), h in zip(missing, depth, strict=True)]
    shape = tuple(n + a + b for n, (a, b) in zip(block.shape, have, strict=True))
    out = np.empty(shape, block.dtype)
    inner = tuple(slice(a, a + n) for (a, _), n in zip(have, block.shape, strict=True))
    out[inner] = block
    for (offset, _, _), slab in zip(sources, slabs, strict=True):
        dst, src = [], []
        for a, o in enumerate(offset):
            n, (lo, hi) = block.shape[a], have[a]
            if o == 0:  # the neighbour spans the block along this axis
                dst.append(slice(lo, lo + n))
                src.append(slice(None))
            elif o < 0:
                dst.append(slice(0, lo))
                src.append(slice(slab.shape[a] - lo, None))
            else:
                dst.append(slice(lo + n, lo + n + hi))
                src.append(slice(0, hi))
        out[tuple(dst)] = slab[tuple(src)]
    pad = [(h - a, h - b) for (a, b), h in zip(have, depth, strict=True)]
    if any(p != (0, 0) for p in pad):
        extra = {"constant_values": cval} if boundary == "constant" else {}
        out = np.pad(out, pad, mode=_PAD_MODE[boundary], **extra)  # type: ignore[call-overload]
    return out


def _run_extended(block: np.ndarray, slabs: list[np.ndarray], *, run: Callable[..., Any], crops: bool,
                  depth: tuple[int, int, int], **assemble: Any) -> np.ndarray:
    ext = _assemble(block, slabs, depth=depth, **assemble)
    out = run(ext)
    if not crops:
        out = out[tuple(slice(h, out.shape[a] - h) for a, h in enumerate(depth))]
    return owned(out)


def _halo_blocks(array: da.Array, depth: tuple[int, int, int], boundary: str, cval: float,
                 run: Callable[..., Any], crops: bool, out_dtype: np.dtype) -> da.Array:
    """One task per block: assemble the block and its halo, run, trim.

    Chunks thinner than the halo are merged first, so every halo lies in the adjacent
    blocks. Each block lends its neighbours its six face slabs (``h`` planes thick, one
    task each); an edge or corner neighbour cuts its small piece out of a face slab. So
    the graph has seven tasks per block, against some forty for ``dask.array.overlap``
    (a getitem per neighbour piece and nested concatenations), and the scheduler's
    per-task cost stays small next to the kernels.
    """
    array = array.rechunk(tuple(da.overlap.ensure_minimum_chunksize(max(h, 1), c)
                                for h, c in zip(depth, array.chunks, strict=True)))
    grid = array.numblocks
    token = tokenize(array, depth, boundary, cval, run, crops, out_dtype)
    slab_name, out_name = f"halo-slab-{token}", f"halo-{getattr(run, '__name__', 'kernel')}-{token}"
    dsk: dict[Any, Any] = {}
    for idx in np.ndindex(*grid):
        for axis in range(3):
            if depth[axis]:
                for side in (0, 1):
                    dsk[(slab_name, *idx, axis, side)] = (face_slab, (array.name, *idx), axis, side, depth[axis])
    wrap = boundary == "wrap"
    for idx in np.ndindex(*grid):
        missing = tuple((idx[a] == 0 and not wrap, idx[a] == grid[a] - 1 and not wrap) for a in range(3))
        sources, keys = [], []
        for offset in np.ndindex(3, 3, 3):
            o = tuple(int(v) - 1 for v in offset)
            if o == (0, 0, 0) or any(v and not depth[a] for a, v in enumerate(o)):
                continue
            if any((v < 0 and missing[a][0]) or (v > 0 and missing[a][1]) for a, v in enumerate(o)):
                continue  # beyond the volume: the boundary mode fills it
            nb = tuple((i + v) % grid[a] for a, (i, v) in enumerate(zip(idx, o, strict=True)))
            axis = next(a for a, v in enumerate(o) if v)  # the first axis the piece crosses
            side = 1 if o[axis] < 0 else 0  # a neighbour below lends its high face
            sources.append((o, axis, side))
            keys.append((slab_name, *nb, axis, side))
        task = functools.partial(_run_extended, run=run, crops=crops, depth=depth, sources=sources,
                                 missing=missing, boundary=boundary, cval=cval)
        dsk[(out_name, *idx)] = (task, (array.name, *idx), keys)
    graph = HighLevelGraph.from_collections(out_name, dsk, dependencies=[cast(DaskCollection, array)])
    return da.Array(graph, out_name, chunks=array.chunks, dtype=out_dtype, meta=np.empty((0, 0, 0), out_dtype))


def halo_map(
    array: da.Array,
    kernel: Callable[..., Any],
    *,
    halo: int | Sequence[int],
    boundary: Boundary = "reflect",
    cval: float = 0.0,
    dtype: Any = None,
    device: Literal["cpu", "gpu"] = "cpu",
    crops: bool = False,
    **kernel_kwargs: Any,
) -> da.Array:
    """Apply ``kernel`` to every block of ``array`` with a halo, lazily.

    Parameters
    ----------
    array
        3-D Dask array (z, y, x).
    kernel
        Pure function ``kernel(block, **kernel_kwargs) -> block`` of the same shape.
        It may use any boundary mode internally: only voxels at least ``halo`` away from
        the extended block's faces are kept.
    halo
        Voxels of context the kernel needs on each side, per axis or for all.
    boundary
        How the volume is extended at its faces (SciPy's modes ``reflect``,
        ``nearest``, ``wrap``, ``constant``).
    cval
        Fill value for ``boundary="constant"``.
    dtype
        Output dtype (default: the input's).
    device
        ``"gpu"`` runs the kernel on CuPy blocks (moved per block); blocks come back
        as NumPy either way.
    crops
        The kernel trims the halo itself: it is called as
        ``kernel(extended_block, halo=(hz, hy, hx), **kernel_kwargs)`` and returns the
        block without its halo.
    **kernel_kwargs
        Passed to ``kernel``.

    Returns
    -------
    dask.array.Array
        Same shape as ``array``; bit-identical to ``kernel(whole_array)`` with SciPy's
        ``mode=boundary``.

    Examples
    --------
    >>> import dask.array as da, numpy as np, scipy.ndimage as ndi
    >>> x = da.from_array(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), chunks=4)
    >>> y = halo_map(x, ndi.gaussian_filter, halo=4, sigma=1.0)
    >>> bool((y.compute() == ndi.gaussian_filter(x.compute(), 1.0)).all())
    True
    """
    if not isinstance(array, da.Array) or array.ndim != 3:
        raise VolmlaError(f"halo_map needs a 3-D Dask array, got {type(array).__name__}")
    if boundary not in BOUNDARIES:
        raise VolmlaError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    depth = normalise_halo(halo, array.shape)
    out_dtype = np.dtype(dtype) if dtype is not None else array.dtype
    run = _on_device(kernel, device)
    # An axis one voxel long cannot lend Dask a halo: extend it explicitly (the same
    # extension SciPy makes: every mode but "constant" repeats the one plane) and crop it
    # again after the kernel. (``da.pad`` in "symmetric" mode pads at most the axis'
    # length: a 3-voxel halo of a one-plane volume came back as 3 planes, cropped to none.)
    flat = [h if n == 1 and h else 0 for h, n in zip(depth, array.shape, strict=True)]
    if any(flat):
        pad_mode = "constant" if boundary == "constant" else "edge"
        extra = {"constant_values": cval} if boundary == "constant" else {}
        array = da.pad(array, [(h, h) for h in flat], mode=pad_mode, **extra)
        array = array.rechunk({axis: -1 for axis, h in enumerate(flat) if h})
        depth = tuple(0 if f else h for h, f in zip(depth, flat, strict=True))  # type: ignore[assignment]
    if crops:
        kernel_kwargs["halo"] = depth
    if not any(depth):
        out = da.map_blocks(run, array, dtype=out_dtype, meta=np.empty((0, 0, 0), out_dtype), **kernel_kwargs)
    else:
        out = _halo_blocks(array, depth, boundary, cval, functools.partial(run, **kernel_kwargs), crops, out_dtype)
    if any(flat):
        out = out[tuple(slice(h, h + 1) if h else slice(None) for h in flat)]
    return out
