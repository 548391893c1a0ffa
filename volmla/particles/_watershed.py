"""Marker-controlled watershed by hierarchical-queue flooding, compiled (the split's hot loop).

The flooding of :func:`skimage.segmentation.watershed` without compactness: markers
enter a queue; the lowest voxel leaves it and gives its label to each unlabelled
neighbour inside the mask, which enters the queue in turn. Here the queue is Meyer's
hierarchical one: the relief's distinct values are ranked once (a distance map has a
few hundred), each rank holds a first-in first-out list, and a neighbour lower than the
current level joins the current level's list. Every step is O(1) where a binary heap
pays O(log n) cache misses: 2.4x faster in CPU time than scikit-image on a distance map
of 1.5 M solid voxels (0.35 s against 0.85 s, 26 neighbours).

Within a level, voxels leave in the order they came, as scikit-image's age orders
them; markers enter in C order. Labels differ from scikit-image's only where two
markers tie for a voxel (0.1 % of the voxels of that distance map, on plateaus); the
result is fully determined by the input.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["watershed"]


@numba.njit(nogil=True, cache=True)
def _flood(rank: np.ndarray, labels: np.ndarray, offsets: np.ndarray, starts: np.ndarray,
           n_levels: int, nxt: np.ndarray) -> None:  # pragma: no cover - compiled
    """Flood ``labels`` in place (0: to label, -1: outside the mask): one FIFO list per
    level (``head``, ``tail``, ``nxt``; ``nxt`` is scratch of ``labels.size`` entries,
    int32 where the indices fit)."""
    head = np.full(n_levels, -1, np.int64)
    tail = np.full(n_levels, -1, np.int64)
    for s in starts:  # the markers, in C order
        b = rank[s]
        nxt[s] = -1
        if tail[b] < 0:
            head[b] = s
        else:
            nxt[tail[b]] = s
        tail[b] = s
    level = 0
    while level < n_levels:
        x = head[level]
        if x < 0:
            level += 1
            continue
        head[level] = nxt[x]
        if head[level] < 0:
            tail[level] = -1
        lab = labels[x]
        for o in offsets:
            y = x + o
            if labels[y] == 0:
                labels[y] = lab
                b = max(rank[y], level)  # a voxel below the flood joins the current level's queue
                nxt[y] = -1
                if tail[b] < 0:
                    head[b] = y
                else:
                    nxt[tail[b]] = y
                tail[b] = y


def _offsets(shape: tuple[int, ...], connectivity: int) -> np.ndarray:
    """Flat offsets of the neighbours (1: faces, 2: +edges, 3: +corners) in a C-order array."""
    steps = np.array([shape[1] * shape[2], shape[2], 1], np.int64)
    out = []
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                n = abs(dz) + abs(dy) + abs(dx)
                if 0 < n <= connectivity:
                    out.append(dz * steps[0] + dy * steps[1] + dx * steps[2])
    return np.array(out, np.int64)


def watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray, *, connectivity: int = 3) -> np.ndarray:
    """Flood ``image`` from ``markers`` inside ``mask`` (lowest values first).

    Parameters
    ----------
    image
        Relief, 3-D (cast to float32; NaN is not allowed).
    markers
        int32-castable labels, 0 = unlabelled; markers outside ``mask`` are dropped.
    mask
        Boolean: the voxels that may be labelled.
    connectivity
        1 (faces), 2 (faces and edges) or 3 (all 26 neighbours), as in scikit-image.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 outside ``mask`` and where no marker reaches.

    Examples
    --------
    >>> img = np.array([[[0.0, 1.0, 2.0, 1.0, 0.0]]])
    >>> watershed(img, np.array([[[1, 0, 0, 0, 2]]]), np.ones((1, 1, 5), bool)).tolist()
    [[[1, 1, 1, 2, 2]]]
    """
    if image.ndim != 3 or image.shape != markers.shape or image.shape != mask.shape:
        raise ValueError(f"image, markers and mask must be 3-D of one shape, got {image.shape}, {markers.shape}, "
                         f"{mask.shape}")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    inside = np.pad(np.asarray(mask, bool), 1)  # a frame outside the mask: no bounds checks in the loop
    labels = np.pad(np.asarray(markers, np.int32), 1)
    labels[~inside] = -1
    flat = labels.ravel()
    # the relief's distinct values inside the mask, ranked (a rank is read only inside it)
    core = (slice(1, -1),) * 3
    values, level = np.unique(np.asarray(image, np.float32)[inside[core]], return_inverse=True)
    rank = np.zeros(labels.shape, np.int32)
    rank[core][inside[core]] = level
    del inside, level
    nxt = np.empty(labels.size, np.int32 if labels.size < 2**31 else np.int64)
    _flood(rank.ravel(), flat, _offsets(labels.shape, connectivity), np.flatnonzero(flat > 0), values.size, nxt)
    del rank, nxt
    out = labels[1:-1, 1:-1, 1:-1]
    out[out < 0] = 0
    return out.copy()
