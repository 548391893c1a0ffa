"""Distributed connected-component labelling of a chunked 3-D mask.

The result is identical to :func:`scipy.ndimage.label` (or ``cc3d`` in multilabel mode)
on the whole array, including the numbering, for any chunking and any number of
workers. The steps:

1. **label each block on its own** with ``cc3d.connected_components`` (binary mode; in
   multilabel mode the components of each distinct nonzero value, which cc3d does
   natively). cc3d numbers a block's components ``1..n`` in the block's C order of their
   first voxel; each piece's first voxel is found in one linear pass
   (``fastremap.unique`` with ``return_index``);
2. **offsets from the block's position**: the provisional id of local label ``l`` in the
   block with flat (C-order) index ``f`` is ``f * V + l`` (uint64), ``V`` the voxels of
   the largest block. It depends on the block's position only, never on a running total,
   so no block waits on another;
3. **boundary faces only**: for every block and every axis with a neighbour on the high
   side, the block's last plane is compared with the neighbour's first plane, widened by
   a one-voxel rim taken from the diagonal neighbours (the rims carry the edge and
   corner relations for 18 and 26 connectivity). Every pair of touching foreground
   voxels in different blocks crosses at least one such plane pair, so these give all
   equivalences ``(provisional id, provisional id)``; in multilabel mode only pairs of
   equal value. One task per block pairs its (up to three) high-side faces from the
   scan results of its neighbours, which hold only their boundary planes and rims, so
   workers ship planes and pairs, never blocks, and the graph has two tasks per block;
4. **one small union-find**, the one eager global step: per-block counts, the pairs and
   each piece's first-voxel key (its global C-order linear index) are computed in one
   pass (:func:`volmla.engine.cluster.compute`); the pair graph (size of the boundary, not of
   the volume) is reduced with ``scipy.sparse.csgraph.connected_components``. Each
   global component takes the smallest key of its pieces and components are numbered
   ``1..n`` by that key: the numbering is the C order of each component's first voxel,
   exactly as SciPy numbers them, and independent of chunking;
5. **relabel every block in parallel** through its own lookup table (the final ids of
   its local labels ``0..n_b``, applied with ``ndarray.take``): no dense table over all
   provisional ids exists, and each task carries only its block's part. The block
   labels of step 1 are *recomputed* here rather than stored: cc3d is deterministic and
   runs at several hundred megavoxels per second, which is cheaper than writing and
   reading back a temporary uint32/uint64 label volume four to eight times the size of
   the mask. Blocks without foreground become zeros without reading the mask;
6. the output is ``uint32`` when ``n < 2**32``, else ``uint64``.

Steps 1-4 run when :func:`label` is called (the component count is part of the result);
step 5 stays lazy. The module is one piece (a little over 500 lines): the block kernels,
the face pairing and the graph that wires them share one record format (a block's scan
summary, boundary planes and rims), which splitting would only spread out.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, NamedTuple, cast

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.typing import DaskCollection

from volmla.engine.blocks import as_dataarray, as_volume, block_grid
from volmla.errors import VolmlaError
from volmla.types import Connectivity, VolumeLike

logger = logging.getLogger(__name__)

CONNECTIVITIES: tuple[int, ...] = (6, 18, 26)

__all__ = [
    "CONNECTIVITIES",
    "Connectivity",
    "Labels",
    "block_pairs",
    "check_connectivity",
    "first_voxel_keys",
    "label",
    "local_labels",
]


class Labels(NamedTuple):
    """Labelled volume: ``labels`` and ``count``.

    ``labels`` is a lazy, Dask-backed :class:`xarray.DataArray` (0 = background, ids
    ``1..count``) on the input's grid: its coordinates and ``voxel_size_um`` when the input
    had them (:func:`volmla.engine.blocks.as_dataarray`); ``labels.data`` is the Dask array.
    """

    labels: xr.DataArray
    count: int  # type: ignore[assignment]  # shadows tuple.count; public field name


# --------------------------------------------------------------------------- validation


def check_connectivity(connectivity: Any) -> int:
    """Validate a 3-D connectivity (6, 18 or 26).

    Parameters
    ----------
    connectivity
        What was given.

    Returns
    -------
    int
        6, 18 or 26.

    Examples
    --------
    >>> check_connectivity(26)
    26
    """
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        raise VolmlaError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity}")
    return int(connectivity)


# --------------------------------------------------------------------------- block kernels


def local_labels(
    block: np.ndarray, *, connectivity: int = 26, multilabel: bool = False, check: bool = False
) -> tuple[np.ndarray, int]:
    """Connected components of one block with cc3d, numbered ``1..n`` in C order.

    Parameters
    ----------
    block
        3-D NumPy block; binary (0/1 or bool) unless ``multilabel``.
    connectivity
        6, 18 or 26.
    multilabel
        Components of each distinct nonzero value.
    check
        Raise :class:`~volmla.errors.VolmlaError` when a binary block holds other values.

    Returns
    -------
    (labels, n)
        Block-local labels (cc3d's smallest safe unsigned dtype) and their number.

    Examples
    --------
    >>> lab, n = local_labels(np.array([[[1, 0, 1]]], np.uint8), connectivity=6)
    >>> lab.tolist(), n
    ([[[1, 0, 2]]], 2)
    """
    import cc3d

    block = np.ascontiguousarray(block)
    if check and not multilabel and block.dtype != np.bool_ and block.size:
        if np.issubdtype(block.dtype, np.integer):
            import fastremap

            # block.size > 0, so minmax returns numbers, never None.
            lo, hi = cast(tuple[float, float], fastremap.minmax(block))
            bad = lo < 0 or hi > 1
        else:
            bad = bool(((block != 0) & (block != 1)).any())
        if bad:
            values = np.unique(block)[:5].tolist()
            raise VolmlaError(
                f"mask must be binary (0/1 or bool) unless multilabel=True, got values such as {values}"
            )
    if block.dtype == np.bool_:
        block = block.view(np.uint8)
    if sum(s > 1 for s in block.shape) <= 1:
        # A line of voxels: every connectivity is 6 here, and cc3d 4.1 mis-sizes its
        # union-find for 26-connected binary lines such as (3, 1, 1) [1, 0, 1].
        connectivity = 6
    labels, n = cc3d.connected_components(
        block, connectivity=cast(Connectivity, connectivity), return_N=True, binary_image=not multilabel
    )
    return labels, int(n)


def first_voxel_keys(
    labels: np.ndarray, n: int, origin: tuple[int, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Global C-order linear index of the first voxel of each local label ``1..n``.

    ``fastremap.unique`` finds each label's first C-order position in one pass. Within a
    block, block C order and global C order agree, so the block's first voxel is the
    piece's smallest global index.

    Parameters
    ----------
    labels
        A block's local labels ``0..n``.
    n
        Number of local labels.
    origin
        The block's first voxel in the volume (z, y, x).
    shape
        The volume's shape.

    Returns
    -------
    numpy.ndarray
        uint64 keys, one per local label.

    Examples
    --------
    >>> first_voxel_keys(np.array([[[0, 1], [2, 1]]]), 2, (0, 0, 0), (1, 2, 2)).tolist()
    [1, 2]
    """
    import fastremap

    if n == 0:
        return np.zeros(0, np.uint64)
    values, index = fastremap.unique(np.ascontiguousarray(labels), return_index=True)
    pos = np.asarray(index)[np.asarray(values) > 0]
    if len(pos) != n:
        raise AssertionError(f"block labels are not 1..{n}: found {len(pos)} distinct nonzero labels")
    local = np.unravel_index(pos, labels.shape)
    coords = tuple(np.asarray(c, np.int64) + o for c, o in zip(local, origin, strict=True))
    return np.ravel_multi_index(coords, shape).astype(np.uint64)


def _scan_block(
    block: np.ndarray,
    *,
    origin: tuple[int, ...],
    shape: tuple[int, ...],
    connectivity: int,
    multilabel: bool,
) -> tuple[Any, ...]:
    """Step 1 for one block: count, first-voxel keys, and the faces its neighbours need.

    Returns ``(summary, hi_0, lo_0, rim_0, hi_1, lo_1, rim_1, hi_2, lo_2, rim_2)`` where
    ``summary = (n, keys)``, ``hi_a``/``lo_a`` are the last/first planes along axis ``a``
    as ``(labels, values)`` (values ``None`` unless multilabel) and ``rim_a`` the four
    border lines of ``lo_a`` (first row, last row, first column, last column).
    """
    labels, n = local_labels(block, connectivity=connectivity, multilabel=multilabel, check=True)
    keys = first_voxel_keys(labels, n, origin, shape)
    values = np.asarray(block) if multilabel else None
    out: list[Any] = [(n, keys)]
    for axis in range(3):
        hi = _plane(labels, values, axis, -1)
        lo = _plane(labels, values, axis, 0)
        rim = None
        if connectivity > 6:
            lab, val = lo
            lines = (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1])
            rim = tuple((lab[k].copy(), None if val is None else val[k].copy()) for k in lines)
        out += [hi, lo, rim]
    return tuple(out)


def _plane(labels: np.ndarray, values: np.ndarray | None, axis: int, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    take: list[slice | int] = [slice(None)] * 3
    take[axis] = index
    # copies, never views: a view of the first plane keeps the whole block alive while
    # the scheduler counts only the plane's bytes
    lab = labels[tuple(take)].copy()
    val = None if values is None else values[tuple(take)].copy()
    return lab, val


def _in_plane_offsets(connectivity: int) -> list[tuple[int, int]]:
    """In-plane shifts of the neighbour across a face: the step across counts as one axis."""
    offsets = [(d1, d2) for d1 in (-1, 0, 1) for d2 in (-1, 0, 1)]
    if connectivity == 6:
        return [(0, 0)]
    if connectivity == 18:
        return [o for o in offsets if abs(o[0]) + abs(o[1]) <= 1]
    return offsets


def block_pairs(
    low: np.ndarray,
    high: np.ndarray,
    *,
    low_values: np.ndarray | None = None,
    high_values: np.ndarray | None = None,
    connectivity: int = 26,
) -> np.ndarray:
    """Equivalence pairs across one face: ``low`` plane against the widened ``high`` plane.

    Parameters
    ----------
    low
        ``(m1, m2)`` provisional ids (uint64, 0 = background) of the last plane before
        the chunk boundary.
    high
        ``(m1 + 2, m2 + 2)`` provisional ids of the first plane after the boundary,
        with a one-voxel rim from the diagonal neighbours (zeros outside the volume).
    low_values, high_values
        Mask values of the same planes; when given only equal values are paired.
    connectivity
        6, 18 or 26.

    Returns
    -------
    numpy.ndarray
        ``(k, 2)`` uint64 unique pairs ``(low id, high id)``.

    Examples
    --------
    >>> low = np.array([[1, 0]], np.uint64)
    >>> high = np.zeros((3, 4), np.uint64); high[1, 2] = 7
    >>> block_pairs(low, high, connectivity=26).tolist()
    [[1, 7]]
    >>> block_pairs(low, high, connectivity=6).tolist()
    []
    """
    m1, m2 = low.shape
    fg = low > 0
    if not fg.any():
        return np.zeros((0, 2), np.uint64)
    # ids -> ranks among the plane's distinct ids, so that a pair is one small integer
    # and duplicates (most pairs: every voxel of a face meets up to 9 neighbours) go
    # in one fast 1-D np.unique
    low_ids, low_rank = np.unique(low, return_inverse=True)
    high_ids, high_rank = np.unique(high, return_inverse=True)
    low_rank = low_rank.reshape(low.shape).astype(np.int64)
    high_rank = high_rank.reshape(high.shape).astype(np.int64)
    found = []
    for d1, d2 in _in_plane_offsets(connectivity):
        window = (slice(1 + d1, 1 + d1 + m1), slice(1 + d2, 1 + d2 + m2))
        hit = fg & (high[window] > 0)
        if low_values is not None and high_values is not None:
            hit &= low_values == high_values[window]
        found.append(low_rank[hit] * high_ids.size + high_rank[window][hit])
    key = np.unique(np.concatenate(found))
    return np.stack([low_ids[key // high_ids.size], high_ids[key % high_ids.size]], axis=1).astype(np.uint64, copy=False)


def _global(lab: np.ndarray, offset: int) -> np.ndarray:
    out = lab.astype(np.uint64)
    out[lab > 0] += np.uint64(offset)
    return out


def _face_pairs(
    hi: tuple[np.ndarray, np.ndarray | None],
    lo: tuple[np.ndarray, np.ndarray | None],
    rim_list: list[Any],
    *,
    offset_low: int,
    offset_high: int,
    rim_slots: list[tuple[tuple[int, int], int]],
    connectivity: int,
) -> np.ndarray:
    """Step 3 for one block and axis: assemble the widened high plane, then pair.

    ``rim_slots`` gives, for each entry of ``rim_list``, the in-plane position of that
    neighbour relative to the block across the face and its id offset.
    """
    low = _global(hi[0], offset_low)
    m1, m2 = lo[0].shape
    high = np.zeros((m1 + 2, m2 + 2), np.uint64)
    high[1:-1, 1:-1] = _global(lo[0], offset_high)
    multilabel = hi[1] is not None
    hv = None
    if multilabel:
        hv = np.zeros((m1 + 2, m2 + 2), lo[1].dtype)  # type: ignore[union-attr]
        hv[1:-1, 1:-1] = lo[1]
    for ((s1, s2), off), rim in zip(rim_slots, rim_list, strict=True):
        row0, row_last, col0, col_last = rim
        if s2 == 0:  # the neighbour beside along the first in-plane axis: one row
            src = row_last if s1 < 0 else row0
            dst: Any = (0 if s1 < 0 else -1, slice(1, -1))
        elif s1 == 0:  # beside along the second in-plane axis: one column
            src = col_last if s2 < 0 else col0
            dst = (slice(1, -1), 0 if s2 < 0 else -1)
        else:  # diagonal: one corner voxel
            line = row_last if s1 < 0 else row0
            pick = slice(-1, None) if s2 < 0 else slice(0, 1)
            src = (line[0][pick], None if line[1] is None else line[1][pick])
            dst = (slice(0, 1) if s1 < 0 else slice(-1, None), 0 if s2 < 0 else -1)
        high[dst] = _global(src[0], off)
        if hv is not None:
            hv[dst] = src[1]
    return block_pairs(low, high, low_values=hi[1], high_values=hv, connectivity=connectivity)


Face = tuple[int, int, list[tuple[tuple[int, int], int, int]], int, int]
"""One high-side face of a block: ``(axis, index of the neighbour across it in the
task's neighbour list, [(in-plane slot, id offset, neighbour index)] of its rims,
offset of the block, offset of the neighbour)``."""


def _slot(items: list[tuple[int, ...]], item: tuple[int, ...]) -> int:
    """Index of ``item`` in ``items``, appended if new."""
    if item not in items:
        items.append(item)
    return items.index(item)


def _block_pairs(own: tuple[Any, ...], neighbours: list[tuple[Any, ...]], *, faces: list[Face],
                 connectivity: int) -> tuple[Any, np.ndarray]:
    """Steps 3-4 input for one block: its summary and the pairs across its high-side faces.

    ``own`` and ``neighbours`` are :func:`_scan_block` results; one task per block keeps
    the graph small (the scheduler's cost per task is the labelling's overhead).
    """
    found = [np.zeros((0, 2), np.uint64)]
    for axis, across, rims, offset_low, offset_high in faces:
        found.append(_face_pairs(
            own[1 + 3 * axis],
            neighbours[across][2 + 3 * axis],
            [neighbours[k][3 + 3 * axis] for _, _, k in rims],
            offset_low=offset_low,
            offset_high=offset_high,
            rim_slots=[(slot, off) for slot, off, _ in rims],
            connectivity=connectivity,
        ))
    return own[0], np.concatenate(found)


def _relabel_block(block: np.ndarray, lut: np.ndarray, connectivity: int, multilabel: bool) -> np.ndarray:
    """Step 5 for one block: recompute the block's labels and map them through its table."""
    labels, _ = local_labels(block, connectivity=connectivity, multilabel=multilabel)
    return lut.take(labels)


# --------------------------------------------------------------------------- union-find


def _number_components(
    counts: np.ndarray, keys: np.ndarray, pairs: np.ndarray, stride: int
) -> tuple[np.ndarray, int]:
    """Step 4: final id of every provisional label (all blocks, in block order)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    base = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(base[-1])
    if total == 0:
        return np.zeros(0, np.uint64), 0
    if len(pairs):
        block = (pairs // np.uint64(stride)).astype(np.int64)
        local = (pairs % np.uint64(stride)).astype(np.int64)
        nodes = base[block] + local - 1
        graph = coo_matrix(
            (np.ones(len(nodes), np.int8), (nodes[:, 0], nodes[:, 1])), shape=(total, total)
        )
        n, comp = connected_components(graph, directed=True, connection="weak")
    else:
        n, comp = total, np.arange(total)
    first = np.full(n, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(first, comp, keys)
    rank = np.empty(n, np.uint64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, n + 1, dtype=np.uint64)
    return rank[comp], int(n)


# --------------------------------------------------------------------------- public


def label(
    mask: VolumeLike,
    *,
    connectivity: Connectivity = 26,
    multilabel: bool = False,
) -> Labels:
    """Connected components of a chunked 3-D mask, numbered like SciPy, for any chunking.

    Parameters
    ----------
    mask
        3-D (z, y, x) Dask array, xarray.DataArray or NumPy array. Binary (0/1 or bool)
        unless ``multilabel``; in multilabel mode an integer volume whose components of
        each distinct nonzero value are labelled separately.
    connectivity
        6 (faces), 18 (faces and edges) or 26 (faces, edges and corners).
    multilabel
        Label the components of each nonzero value (touching regions of different
        values stay apart), as ``cc3d.connected_components`` does.

    Returns
    -------
    Labels
        ``labels``: lazy Dask-backed DataArray with the mask's chunks and coordinates
        (:class:`Labels`), ids ``1..count`` numbered by
        the C order of each component's first voxel (as :func:`scipy.ndimage.label`),
        ``uint32`` (``uint64`` from ``2**32`` components); ``count``: the number of
        components. Computing the count is the one eager step (small data).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> m = da.from_array(np.array([[[1, 0, 1, 1]]], np.uint8), chunks=(1, 1, 2))
    >>> out = label(m, connectivity=6)
    >>> out.count, out.labels.values.tolist()
    (2, [[[1, 0, 2, 2]]])
    """
    from volmla.engine.cluster import compute

    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    data = as_volume(mask, name="mask").data
    if multilabel and not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        raise VolmlaError(f"multilabel labelling needs an integer volume, got dtype {data.dtype}")
    if not multilabel and not (
        np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_
    ):
        raise VolmlaError(f"mask must be a numeric or bool array, got dtype {data.dtype}")

    grid = data.numblocks
    shape = tuple(int(s) for s in data.shape)
    stride = math.prod(max(c) for c in data.chunks)
    origins = {idx: origin for idx, origin, _ in block_grid(data.chunks)}  # in C order
    flat = {idx: f for f, idx in enumerate(origins)}
    order = list(flat)

    # Steps 1-3 as a plain task graph (Delayed objects cost milliseconds each to build).
    token = tokenize(data, connectivity, multilabel)
    scan, pairs_name = f"volmla-label-scan-{token}", f"volmla-label-pairs-{token}"
    dsk: dict[Any, Any] = {}
    for idx, origin in origins.items():
        kernel = functools.partial(
            _scan_block, origin=origin, shape=shape, connectivity=connectivity, multilabel=multilabel
        )
        dsk[(scan, *idx)] = (kernel, (data.name, *idx))
    for idx in order:
        neighbours: list[tuple[int, ...]] = []
        faces: list[Face] = []
        for axis in range(3):
            b = tuple(i + (a == axis) for a, i in enumerate(idx))
            if b[axis] >= grid[axis]:
                continue
            others = [a for a in range(3) if a != axis]
            rims = []
            for s1, s2 in _in_plane_offsets(connectivity):
                nb = list(b)
                nb[others[0]] += s1
                nb[others[1]] += s2
                if (s1, s2) != (0, 0) and all(0 <= nb[a] < grid[a] for a in range(3)):
                    rims.append(((s1, s2), flat[tuple(nb)] * stride, _slot(neighbours, tuple(nb))))
            faces.append((axis, _slot(neighbours, b), rims, flat[idx] * stride, flat[b] * stride))
        pair_kernel = functools.partial(_block_pairs, faces=faces, connectivity=connectivity)
        dsk[(pairs_name, *idx)] = (pair_kernel, (scan, *idx), [(scan, *nb) for nb in neighbours])
    collect = f"volmla-label-collect-{token}"
    dsk[collect] = (list, [(pairs_name, *idx) for idx in order])
    graph = HighLevelGraph.from_collections(collect, dsk, dependencies=[cast(DaskCollection, data)])
    (results,) = compute([Delayed(collect, graph)], desc="labelling: blocks and faces")
    summaries = [r[0] for r in results]
    pair_lists = [r[1] for r in results]
    counts = np.array([s[0] for s in summaries], np.int64)
    keys = np.concatenate([s[1] for s in summaries]) if summaries else np.zeros(0, np.uint64)
    pairs = np.concatenate(pair_lists) if pair_lists else np.zeros((0, 2), np.uint64)
    final, count = _number_components(counts, keys, pairs, stride)
    logger.info(
        "labelled %d blocks: %d pieces, %d boundary pairs, %d components",
        len(order), int(counts.sum()), len(pairs), count,
    )

    out_dtype = np.dtype(np.uint32) if count < 2**32 else np.dtype(np.uint64)
    name = "volmla-label-" + tokenize(data, connectivity, multilabel, final)
    dsk = {}
    base = np.concatenate([[0], np.cumsum(counts)])
    for f, idx in enumerate(order):
        n = int(counts[f])
        block_shape = tuple(int(data.chunks[a][idx[a]]) for a in range(3))
        if n == 0:
            dsk[(name, *idx)] = (np.zeros, block_shape, out_dtype)
            continue
        lut = np.zeros(n + 1, out_dtype)
        lut[1:] = final[base[f] : base[f] + n]
        dsk[(name, *idx)] = (_relabel_block, (data.name, *idx), lut, connectivity, multilabel)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[cast(DaskCollection, data)])
    labels = da.Array(graph, name, chunks=data.chunks, dtype=out_dtype, meta=np.empty((0, 0, 0), out_dtype))
    return Labels(as_dataarray(labels, like=mask, name="labels", kind="labels"), count)
