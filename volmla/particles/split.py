"""Splitting touching particles: a distance-map watershed whose markers need no fixed ``h``.

Step 4 of :func:`volmla.particles.label_particles`. :func:`split_touching` runs
:func:`split_block` on every block extended by a halo derived from the data:

1. **largest distance** (:func:`max_distance`, one eager pass): the exact Euclidean
   distance transform of the solid (outside the volume is background) per block with a
   *checked* halo: a block's distances are exact once its largest core distance is at
   most the halo (the nearest background then lies inside the extended block), so the
   pass starts with a halo of 16 voxels and doubles it until every block passes (after
   a first pass that falls short, from a floor read off the mask pooled to few cells,
   :func:`distance_floor`). The result ``D`` is the radius of the largest ball that fits
   in the solid. Blocks, with their halo, are held to :func:`block_budget` voxels (a
   worker thread's memory): particles too wide for it (a drill core) are refused in one
   line naming ``max_radius`` instead of splitting a volume-sized block;
2. **halo** (:func:`split_halo`): each block reads and is split with ``3 * D + 2``
   voxels around it (per axis in physical units for anisotropic voxels): a core voxel's
   particle and its distance peak lie within ``2 * D + 2`` for compact particles up to
   ``D`` thick, the peaks of the particles touching it within the rest. (A smaller first
   halo, :data:`FIRST_FACTOR`, with the full one only where a particle reaches its face,
   paid off on small blocks only: on blocks sized to the halo nearly every block was
   split twice.) Blocks are sized to the halo: where the input's
   chunks are smaller, the split works on blocks of about :data:`SPLIT_BLOCK` voxels,
   halo included (:func:`_grown`), so fewer halos are split; beyond the volume's faces
   an extended block keeps one plane of background, not the halo;
3. per extended block (:func:`split_block`):

   a. **distance map** (:func:`distance_map`): the exact EDT in units of the finest
      voxel edge (``sampling`` = voxel size over its smallest entry); with a ``weight``
      (for a CT: :func:`volmla.particles.mask.local_fill`, how full of solid the scan
      looks around each voxel) the relief is the distance times it, a grey-weighted
      distance whose saddles stay low at contacts that the blur has filled;
   b. **all regional maxima** (26-connected plateaus) seed a watershed (compiled
      hierarchical-queue flooding, :func:`volmla.particles._watershed.watershed`) of the negated
      distance inside the solid: one basin per maximum;
   c. **saddle-depth merging** (:func:`merge_basins`): the basin adjacency graph is
      weighted by its saddles (the highest ``min(d(p), d(q))`` over touching voxel
      pairs of two basins) and processed from the highest saddle down, as the
      component tree of the distance map: where two components meet, the one with the
      lower peak ``p`` ends there with dynamic ``p - s``. It is a particle of its own
      when its neck is narrow, ``s < neck * p``, and its dynamic at least ``h``;
      otherwise its basins join the basin across the saddle. The criterion is
      relative: a shallow saddle between two small particles separates them as a deep
      one between two big ones does, where a fixed ``h`` merges small touching
      particles and splits large irregular ones;
   d. **global keys**: each particle is keyed by its highest voxel (C-order linear
      index in the volume plus one; ties: the first), so every block whose halo sees
      it agrees; :func:`volmla.particles.label.label` in multilabel mode then stitches
      the pieces of a key across blocks (step 5 of
      :func:`~volmla.particles.label_particles`);
   e. **halo check**: a particle that reaches both the block proper and the outer face
      of the extended block (away from the volume's faces) may be cut by it: a block
      first split with a smaller halo (:data:`FIRST_FACTOR`) is split again with the
      full one, and a particle that still reaches its face is listed in the
      ``report`` folder (or, without one, logged as a warning);
4. **windows around the cut particles** (:func:`resplit_cut`, once the keys are
   stored): each listed particle comes with the box of its voxels in its block; boxes
   that overlap or touch are gathered where one window costs less than two, and each
   box is split again from the stored mask (and weight) with the halo around it,
   doubled until no particle given to a listed voxel reaches the window's face (the
   check of 3e). The listed voxels take the window's keys. The windows are split in
   parallel; their size follows the particles, not the solid component they belong
   to, which in a packed bed is the whole volume.

Chunk independence: exact (identical labels for every chunking, tested) for particles
of any length: every particle is keyed by a split whose window it does not leave, in
its block or in a window of step 4, as long as that window has at most
:data:`MAX_WHOLE` voxels (particles that need a larger one keep their block-wise keys
and are reported by a warning; give ``max_radius`` for a larger halo).
:func:`volmla.particles.label_particles` passes the folder whenever it has scratch
space the workers reach; :func:`split_touching` alone, without ``report``, is exact for
particles up to about three times as long as the largest inscribed radius.

The module is one piece (about 1,080 lines): the distance pass, the halo it sets, the
block kernel and the halo check share the halo's geometry and the key format, which
splitting would only spread out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume, owned
from volmla.errors import VolmlaError
from volmla.particles.label import check_connectivity
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

UNMARKED = np.uint64(2**63)
"""Watershed key of solid voxels that no marker reaches."""

NECK = 0.85
"""Default ``neck``: two maxima stay apart when the saddle between them is below this
fraction of the lower peak."""

H_MIN = 0.25
"""Default ``h``: the smallest dynamic (finest voxel edges) of a separate particle. A
quarter voxel: small touching particles (radius ~5 voxels) meet at saddles only a
fraction of a voxel below their peaks (``benchmarks/bench_particles.py``: 0.5 merged
~2 % more of them on hard phantoms, and nothing changed on easy ones)."""

HALO_FACTOR = 3.0
"""The split halo (the most a block reads) in units of the largest distance value."""

FIRST_FACTOR = HALO_FACTOR
"""The halo a block is first split with; the full one only where a particle reaches its face.
The full one from the start: on blocks sized to the halo (:data:`SPLIT_BLOCK`) nearly
every block had a particle reaching the face of a ``2 * D + 2`` halo (8 of 8 on the
tiled 384^3 hard phantom of ``benchmarks/bench_particles.py --speed``), so splitting
first with it and then again cost more than it saved."""

SPLIT_BLOCK = 256
"""Edge (voxels) of the extended blocks the split works on, halo included, where the
input's chunks are smaller (:func:`split_touching`): the fewer blocks, the fewer halos
are split twice. About 0.65 GB of working memory per block at 256^3 (a weighted split)."""

__all__ = [
    "H_MIN",
    "MAX_WHOLE",
    "NECK",
    "SPLIT_BLOCK",
    "SPLIT_BYTES_PER_VOXEL",
    "UNMARKED",
    "block_budget",
    "distance_floor",
    "distance_map",
    "h_maxima_caps",
    "max_distance",
    "merge_basins",
    "normalise_sampling",
    "regional_maxima",
    "resplit_cut",
    "split_block",
    "split_halo",
    "split_touching",
]


# --------------------------------------------------------------------------- validation


def normalise_sampling(voxel_size: float | Sequence[float] | None) -> tuple[float, float, float]:
    """Voxel edges ``(z, y, x)`` over the smallest one (so distances count finest voxels).

    Parameters
    ----------
    voxel_size
        One positive number, three, or None (isotropic).

    Returns
    -------
    tuple of float
        The relative sampling, smallest entry 1.

    Examples
    --------
    >>> normalise_sampling([2.0, 1.0, 1.0])
    (2.0, 1.0, 1.0)
    """
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    values = [voxel_size] * 3 if isinstance(voxel_size, int | float | np.number) else list(voxel_size)
    try:
        edges = [float(v) for v in values]
    except (TypeError, ValueError):
        raise VolmlaError(f"voxel_size must be one positive number or three, got {voxel_size!r}") from None
    if len(edges) != 3 or not all(math.isfinite(v) and v > 0 for v in edges):
        raise VolmlaError(f"voxel_size must be one positive number or three, got {voxel_size!r}")
    low = min(edges)
    return (edges[0] / low, edges[1] / low, edges[2] / low)


def split_halo(
    max_radius: float, sampling: Sequence[float] = (1.0, 1.0, 1.0), *, factor: float = HALO_FACTOR
) -> tuple[int, int, int]:
    """Halo of the watershed split: ``factor * max_radius + 2`` finest voxels, per axis (factor 3).

    A core voxel's particle peak lies within ``max_radius`` of it (for compact
    particles), the peak's distance value needs another ``max_radius`` of context and
    the peaks of the particles touching it one more; two voxels cover plateaus and the
    watershed neighbourhood.

    Parameters
    ----------
    max_radius
        Largest distance value (finest voxel edges), e.g. :func:`max_distance`.
    sampling
        Relative voxel edges (:func:`normalise_sampling`).
    factor
        Halo over ``max_radius``.

    Returns
    -------
    tuple of int
        The halo in voxels along (z, y, x).

    Examples
    --------
    >>> split_halo(10)
    (32, 32, 32)
    >>> split_halo(10, (2.0, 1.0, 1.0))
    (16, 32, 32)
    """
    if (isinstance(max_radius, bool) or not isinstance(max_radius, int | float | np.number)
            or not math.isfinite(max_radius) or max_radius <= 0):
        raise VolmlaError(f"max_radius must be a positive number of voxels, got {max_radius!r}")
    return tuple(math.ceil((factor * max_radius + 2) / s) for s in sampling)  # type: ignore[return-value]


def _check_positive(name: str, value: Any, *, upper: float | None = None) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value)
            or value < 0 or (upper is not None and value > upper)):
        bound = f"between 0 and {upper}" if upper is not None else "a non-negative number"
        raise VolmlaError(f"{name} must be {bound}, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- block kernels


def _sitk_run(filt: Any, image: Any) -> Any:
    filt.SetNumberOfThreads(1)  # Dask provides the parallelism
    return filt.Execute(image)


def distance_map(solid: np.ndarray, sampling: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Euclidean distance (float32) of each solid voxel to the nearest background.

    The exact transform of :func:`scipy.ndimage.distance_transform_edt` with
    ``sampling`` (outside the block is not background): the ``edt`` package's (seung-lab,
    about twice as fast) when it is installed, else SimpleITK's Maurer transform. The two
    give the same float32 values for isotropic voxels and agree to float32 rounding
    otherwise (either way every block of a run uses the same one, so the split stays
    chunk-independent). A block without background gets ``inf``.

    Parameters
    ----------
    solid
        Boolean block (z, y, x).
    sampling
        Voxel edges (z, y, x) in the distance's unit.

    Returns
    -------
    numpy.ndarray
        float32 distances, 0 on the background.

    Examples
    --------
    >>> distance_map(np.array([[[0, 1, 1, 1, 0]]], bool)).tolist()
    [[[0.0, 1.0, 2.0, 1.0, 0.0]]]
    """
    solid = np.asarray(solid, bool)
    if solid.all():
        return np.full(solid.shape, np.inf, np.float32)
    try:
        import edt
    except ImportError:
        return _sitk_distance(solid, sampling)
    anisotropy = tuple(float(s) for s in sampling)
    out = edt.edt(np.ascontiguousarray(solid), anisotropy=anisotropy, black_border=False, parallel=1)
    return np.asarray(out, np.float32)


def _sitk_distance(solid: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """:func:`distance_map` by SimpleITK's exact Maurer transform (without the ``edt`` package)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray((~solid).view(np.uint8))
    isotropic = all(s == 1.0 for s in sampling)
    if not isotropic:
        image.SetSpacing([float(s) for s in reversed(sampling)])  # SimpleITK orders (x, y, z)
    filt = sitk.SignedMaurerDistanceMapImageFilter()
    filt.SetInsideIsPositive(False)
    filt.SetSquaredDistance(True)
    filt.SetUseImageSpacing(not isotropic)
    squared = sitk.GetArrayFromImage(_sitk_run(filt, image))
    return np.sqrt(np.maximum(squared, 0)).astype(np.float32) * solid


def regional_maxima(values: np.ndarray) -> np.ndarray:
    """Regional maxima (26-connected plateaus with no higher neighbour) of a block.

    The same set as SimpleITK's ``RegionalMaximaImageFilter`` (fully connected), about
    three times faster: a voxel is a *candidate* when no neighbour is higher
    (:func:`volmla.particles._maxima.maxima_candidates`, compiled); adjacent candidates
    are equal, so the candidates' 26-connected components lie in plateaus, and a component is a regional maximum unless one of its
    voxels has an equal neighbour that is no candidate (its plateau then reaches a
    higher voxel).

    Parameters
    ----------
    values
        float32 block (z, y, x), e.g. a distance map.

    Returns
    -------
    numpy.ndarray
        Boolean, True on the regional maxima.

    Examples
    --------
    >>> regional_maxima(np.array([[[0, 1, 3, 1, 0, 2, 2, 0]]], np.float32)).astype(int).tolist()
    [[[0, 0, 1, 0, 0, 1, 1, 0]]]
    """
    import cc3d

    from volmla.particles._maxima import maxima_candidates

    cand, bad = maxima_candidates(values)  # one compiled pass (was two 3x3x3 maximum filters)
    if bad is None:
        return cand
    plateaus, n = cc3d.connected_components(cand.view(np.uint8), connectivity=26, return_N=True)
    keep = np.ones(n + 1, bool)
    keep[0] = False
    keep[plateaus[bad]] = False
    return keep.take(plateaus)


def h_maxima_caps(dist: np.ndarray, h: float) -> np.ndarray:
    """Regional maxima (26-connected) of the h-maxima transform of ``dist`` (``h = 0``: of ``dist``).

    Parameters
    ----------
    dist
        Distance map of one block (:func:`distance_map`).
    h
        Minimal dynamic of a maximum (0: every regional maximum).

    Returns
    -------
    numpy.ndarray
        Boolean marker caps.

    Examples
    --------
    >>> d = np.array([[[0, 1, 3, 1, 0, 2.5, 0]]], np.float32)
    >>> h_maxima_caps(d, 2.0).astype(int).tolist()
    [[[0, 1, 1, 1, 0, 1, 0]]]
    >>> h_maxima_caps(d, 0).astype(int).tolist()
    [[[0, 0, 1, 0, 0, 1, 0]]]
    """
    import SimpleITK as sitk

    if h <= 0:
        return regional_maxima(dist)
    image = sitk.GetImageFromArray(np.asarray(dist, np.float32))
    hmax = sitk.HMaximaImageFilter()
    hmax.SetHeight(float(h))
    image = _sitk_run(hmax, image)
    regional = sitk.RegionalMaximaImageFilter()
    regional.SetFullyConnected(True)
    regional.SetBackgroundValue(0)
    regional.SetForegroundValue(1)
    return sitk.GetArrayFromImage(_sitk_run(regional, image)).astype(bool)


def _saddles(basins: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basin pairs touching across a face and their saddle (highest ``min(d(p), d(q))``)."""
    los, his, vals = [], [], []
    for axis in range(3):
        low = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        high = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        a, b = basins[low], basins[high]  # views: neighbours along the axis
        cut = a != b
        cut &= a > 0
        cut &= b > 0
        if not cut.any():
            continue
        va, vb = a[cut], b[cut]
        los.append(np.minimum(va, vb))
        his.append(np.maximum(va, vb))
        vals.append(np.minimum(dist[low][cut], dist[high][cut]))
    if not los:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    lo, hi, val = (np.concatenate(x) for x in (los, his, vals))
    key = lo.astype(np.int64) * (int(basins.max()) + 1) + hi
    order = np.lexsort((val, key))  # by pair, highest saddle last
    key, val = key[order], val[order]
    last = np.ones(len(key), bool)
    last[:-1] = key[1:] != key[:-1]
    top = int(basins.max()) + 1
    return key[last] // top, key[last] % top, val[last]


def merge_basins(
    peaks: np.ndarray, lo: np.ndarray, hi: np.ndarray, saddle: np.ndarray, *, neck: float, h: float
) -> np.ndarray:
    """Merge the watershed basins of insignificant maxima (the component tree, highest saddle first).

    Parameters
    ----------
    peaks
        Peak (highest distance) of each basin ``0..n`` (``peaks[0]`` unused).
    lo, hi, saddle
        Adjacent basin pairs and their saddle values (:func:`_saddles`).
    neck
        A maximum is a particle of its own when the saddle to a higher one is below
        ``neck`` times its peak ...
    h
        ... and its dynamic (peak minus saddle) is at least ``h``.

    Returns
    -------
    numpy.ndarray
        int64 ``0..m`` particle of each basin (``0`` for ``0``), particles numbered
        ``1..m`` in order of their first basin.

    Examples
    --------
    >>> peaks = np.array([0, 5.0, 4.0, 5.0])
    >>> merge_basins(peaks, np.array([1, 2]), np.array([2, 3]), np.array([1.0, 3.9]), neck=0.75, h=0.5).tolist()
    [0, 1, 2, 2]
    """
    n = len(peaks) - 1
    tree = np.arange(n + 1)  # component tree (union-find), root = the component's highest basin
    part = np.arange(n + 1)  # particles (union-find)

    def find(par: np.ndarray, x: int) -> int:
        root = x
        while par[root] != root:
            root = par[root]
        while par[x] != root:
            par[x], x = root, par[x]
        return root

    for i in np.argsort(-saddle, kind="stable"):
        a, b, s = int(lo[i]), int(hi[i]), float(saddle[i])
        ra, rb = find(tree, a), find(tree, b)
        if ra == rb:
            continue
        if (peaks[ra], -ra) < (peaks[rb], -rb):  # ra is the lower peak: it ends here
            ra, rb, a, b = rb, ra, b, a
        low = float(peaks[rb])
        if s >= neck * low or low - s < h:
            pa, pb = find(part, rb), find(part, a)
            if pa != pb:
                part[max(pa, pb)] = min(pa, pb)
        tree[rb] = ra
    roots = np.array([find(part, x) for x in range(n + 1)])
    _, numbered = np.unique(roots, return_inverse=True)
    return numbered.astype(np.int64)


def _peak_keys(
    where: np.ndarray, ids: np.ndarray, values: np.ndarray, block: tuple[int, ...], origin: tuple[int, ...],
    shape: tuple[int, ...],
) -> np.ndarray:
    """Key of each particle ``1..n`` from its marker voxels (flat indices ``where`` in the
    block, particle ``ids``, relief ``values``): 1 + global C-order index of its highest
    voxel (ties: the first)."""
    order = np.lexsort((where, -values, ids))  # by particle, highest first, then C order
    first = np.ones(len(order), bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    pos = where[order][first]
    local = np.unravel_index(pos, block)
    coords = tuple(np.asarray(c, np.int64) + o for c, o in zip(local, origin, strict=True))
    return np.ravel_multi_index(coords, shape).astype(np.uint64) + np.uint64(1)


def split_block(
    solid: np.ndarray,
    *,
    neck: float = NECK,
    h: float = H_MIN,
    sampling: Sequence[float] = (1.0, 1.0, 1.0),
    connectivity: int = 26,
    origin: tuple[int, ...] = (0, 0, 0),
    shape: tuple[int, ...] | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Watershed of the distance map on one (extended) block, insignificant maxima merged.

    Parameters
    ----------
    solid
        Boolean block (z, y, x).
    neck, h
        The merging criterion (:func:`merge_basins`).
    sampling
        Relative voxel edges (:func:`normalise_sampling`).
    connectivity
        Watershed neighbourhood: 6, 18 or 26.
    origin, shape
        The block's first voxel in the volume (may be negative in a halo) and the
        volume's shape; keys are global C-order indices.
    weight
        Optional, same shape, in ``0..1``: the relief is the distance map times it
        (the *grey-weighted distance*; e.g. :func:`volmla.particles.mask.local_fill`,
        how full of solid a scan looks around each voxel), so blurred creases where
        particles touch lower the saddle between them. None: the distance map alone.

    Returns
    -------
    numpy.ndarray
        uint64 keys: 0 background, ``1 + global index`` of the particle's highest
        voxel, :data:`UNMARKED` for solid no marker reaches.

    Examples
    --------
    >>> zz, yy, xx = np.ogrid[:12, :12, :22]
    >>> two = ((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 6) ** 2 <= 25) | ((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 15) ** 2 <= 25)
    >>> len(np.unique(split_block(two))) - 1
    2
    """
    import cc3d

    from volmla.particles._watershed import watershed

    solid = np.asarray(solid, bool)
    if not solid.any():
        return np.zeros(solid.shape, np.uint64)
    shape = tuple(solid.shape) if shape is None else tuple(shape)
    # memory: each step frees what it no longer needs (a window of 2^26 voxels is split whole)
    dist = distance_map(solid, sampling)
    if not np.isfinite(dist).all():
        dist = np.where(np.isfinite(dist), dist, np.float32(np.sum(solid.shape) * max(sampling)))
    if weight is not None:
        dist *= np.clip(np.asarray(weight, np.float32), np.float32(0), np.float32(1))
    caps = h_maxima_caps(dist, 0)
    caps &= solid
    markers, n = cc3d.connected_components(caps.view(np.uint8), connectivity=26, return_N=True)
    del caps
    if n == 0:
        return np.where(solid, UNMARKED, np.uint64(0))
    markers = markers.view(np.int32) if markers.dtype == np.uint32 and n < 2**31 else markers.astype(np.int32)
    cap_at = np.flatnonzero(markers.ravel())
    cap_ids, cap_values = markers.ravel()[cap_at], dist.ravel()[cap_at]
    np.negative(dist, out=dist)  # flooded from the highest distance; negated back (exactly) after
    basins = watershed(dist, markers, solid, connectivity={6: 1, 18: 2, 26: 3}[connectivity])
    np.negative(dist, out=dist)
    del markers
    peaks = np.zeros(n + 1, np.float64)
    peaks[cap_ids] = cap_values
    lo, hi, saddle = _saddles(basins, dist)
    del dist
    particle = merge_basins(peaks, lo, hi, saddle, neck=neck, h=h)
    keys = _peak_keys(cap_at, particle[cap_ids], cap_values, solid.shape, origin, shape)
    lut = np.concatenate([[np.uint64(0)], keys]).astype(np.uint64).take(particle)
    out = lut.take(basins)
    out[solid & (basins == 0)] = UNMARKED
    return out


def _core(halo: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(h, n - h) for h, n in zip(halo, shape, strict=True))


def _edt_extended(block: np.ndarray, *, halo: tuple[int, ...], sampling: tuple[float, ...]) -> np.ndarray:
    """Largest core distance of one extended block, as a (1, 1, 1) block."""
    core = distance_map(block, sampling)[_core(halo, block.shape)]
    return np.full((1, 1, 1), core.max() if core.size else 0, np.float32)


def max_distance(solid: VolumeLike, *, sampling: Sequence[float] = (1.0, 1.0, 1.0), start: float = 16.0) -> float:
    """The largest distance of the solid to the background, exact (eager; outside is background).

    Per block with a halo of ``start`` finest voxels, doubled until every block's
    largest core distance is within its halo (its nearest background then lies in the
    extended block, so the value is exact), or the halo spans the volume.

    Parameters
    ----------
    solid
        3-D boolean (or 0/1) mask.
    sampling
        Relative voxel edges (:func:`normalise_sampling`).
    start
        First halo (finest voxel edges).

    Returns
    -------
    float
        The largest distance (finest voxel edges); 0 for a mask without solid.

    Raises
    ------
    VolmlaError
        Measuring it would take blocks beyond :func:`block_budget` (a particle too wide
        for a worker's memory): one line naming ``max_radius``.

    Examples
    --------
    >>> ball = np.zeros((9, 9, 9), bool); ball[2:7, 2:7, 2:7] = True
    >>> max_distance(ball)
    3.0
    """
    return _max_distance(as_volume(solid, name="solid").data.astype(bool), sampling=tuple(sampling), start=start)


def _max_distance(mask: da.Array, *, sampling: tuple[float, ...], start: float,
                  floor: Callable[[], float] | None = None) -> float:
    """:func:`max_distance`; after a first pass that falls short, the halo doubles from
    at least ``floor()`` (which may also refuse the scan) instead of from ``start``."""
    from volmla.engine.cluster import compute

    reach = float(start)
    while True:
        ext, halo = _overlap(mask, tuple(math.ceil(reach / s) for s in sampling))
        single = [len(c) == 1 for c in ext.chunks]
        if reach > start and (error := _too_large([max(c) for c in ext.chunks],
                                                  reach=f"a particle lies more than {reach / 2:.0f} voxels from the "
                                                        "background")):
            raise error
        kernel = functools.partial(_edt_extended, halo=halo, sampling=sampling)
        per_block = da.map_blocks(kernel, ext, dtype=np.float32, chunks=((1,) * ext.numblocks[0],
                                  (1,) * ext.numblocks[1], (1,) * ext.numblocks[2]))
        (largest,) = compute([per_block.max()], desc="largest particle radius")
        largest = float(largest)
        # exact when the nearest background lies in the extended block: within the halo
        # along axes cut into blocks (an axis in one block sees all of it)
        covered = min((h * s for h, s, one in zip(halo, sampling, single, strict=True) if not one), default=math.inf)
        if largest <= covered:
            return largest
        if floor is not None and reach == start:  # wider particles than the first halo: how much wider
            reach = max(reach, floor() / 2)
        reach *= 2


COARSE_CELLS = 2**24
"""Cells of the min-pooled mask :func:`distance_floor` measures (one EDT of ~64 MB)."""


def distance_floor(solid: VolumeLike, *, sampling: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """A lower bound of :func:`max_distance`, from one read of the mask pooled to few cells.

    The mask is cut into cells of ``f^3`` voxels (the smallest ``f`` that leaves at most
    :data:`COARSE_CELLS` cells); a cell is solid when all its voxels are, and the cells
    beyond the volume (and its trimmed edge) are background. Every voxel of a cell at
    distance ``d`` from the nearest background cell lies at least ``d`` less one cell
    diagonal from every background voxel, so that is a floor of the largest distance
    (finest voxel edges). It lets a scan whose particles are too wide for the split be
    refused after one exact pass with a small halo, not after doubling the halo up to
    them, and resumes the exact pass near its answer. A volume of at most
    :data:`COARSE_CELLS` voxels gives 0 (its exact pass is cheap).

    Parameters
    ----------
    solid
        3-D boolean (or 0/1) mask.
    sampling
        Relative voxel edges (:func:`normalise_sampling`).

    Returns
    -------
    float

    Examples
    --------
    >>> distance_floor(np.ones((8, 8, 8), bool))  # small: no floor needed
    0.0
    """
    from volmla.engine.cluster import compute

    mask = as_volume(solid, name="solid").data.astype(bool)
    f = math.ceil((mask.size / COARSE_CELLS) ** (1 / 3))
    if f <= 1 or min(mask.shape) < f:
        return 0.0
    trimmed = mask[tuple(slice(0, n // f * f) for n in mask.shape)]
    trimmed = trimmed.rechunk(tuple(max(c // f, 1) * f for c in (max(cs) for cs in trimmed.chunks)))
    (cells,) = compute([da.coarsen(np.all, trimmed, {0: f, 1: f, 2: f})], desc="largest particle radius (floor)")
    cell = [f * float(v) for v in sampling]
    reach = float(distance_map(np.pad(np.asarray(cells, bool), 1), cell).max())
    return max(reach - math.sqrt(sum(c * c for c in cell)), 0.0)


def _grown(mask: da.Array, halo: Sequence[int], *, min_blocks: int | None = None) -> da.Array:
    """``mask`` on blocks of about :data:`SPLIT_BLOCK` voxels with their ``halo`` (never smaller ones).

    An axis in chunks smaller than ``SPLIT_BLOCK - 2 * halo`` is cut into the fewest
    equal blocks of at most that size instead: the halo is then read (and split) fewer
    times. Axes already in one chunk or in larger ones stay as they are. At least
    ``min_blocks`` blocks are kept where the input had that many (default: two per
    thread of the cluster or of this machine), so every worker has blocks to split.
    """
    if min_blocks is None:
        min_blocks = 2 * _threads()
    counts, grows = [], []
    for c, h, n in zip(mask.chunks, halo, mask.shape, strict=True):
        grow = len(c) > 1 and SPLIT_BLOCK - 2 * h > max(c)
        counts.append(math.ceil(n / (SPLIT_BLOCK - 2 * h)) if grow else len(c))
        grows.append(grow)
    floor = min(min_blocks, math.prod(len(c) for c in mask.chunks))
    while math.prod(counts) < floor:  # the largest grown blocks are cut again
        axis = max((a for a in range(3) if grows[a] and counts[a] < len(mask.chunks[a])),
                   key=lambda a: mask.shape[a] / counts[a])
        counts[axis] += 1
    chunks = []
    for c, n, k, grow in zip(mask.chunks, mask.shape, counts, grows, strict=True):
        size, extra = divmod(n, k)
        chunks.append(tuple(size + (i < extra) for i in range(k)) if grow else c)
    grown = tuple(chunks)
    return mask if grown == mask.chunks else mask.rechunk(grown)


def _split_geometry(mask: da.Array, max_radius: float,
                    sampling: Sequence[float]) -> tuple[da.Array, tuple[tuple[int, ...], ...], tuple[int, ...], list[int]]:
    """The blocks :func:`split_touching` makes for ``max_radius``: the mask regrouped
    (:func:`_grown`), the blocks and halo (:func:`_halo_geometry`), and the voxels per
    axis of the largest extended block."""
    grown = _grown(mask, split_halo(max_radius, sampling, factor=FIRST_FACTOR))
    chunks, halo = _halo_geometry(mask.shape, grown.chunks, split_halo(max_radius, sampling))
    extent = [min(max(c) + 2 * h, n + 2) for c, h, n in zip(chunks, halo, mask.shape, strict=True)]
    return grown, chunks, halo, extent


def _threads() -> int:
    """Threads that compute: the current cluster's, else this machine's cores."""
    import os

    from volmla.engine.cluster import current_client

    client = current_client()
    if client is not None:
        with contextlib.suppress(Exception):
            return max(1, sum(client.nthreads().values()))
    return os.cpu_count() or 1


SPLIT_BYTES_PER_VOXEL = 40
"""Peak bytes the block split holds per voxel of an extended block (measured: 2.51 GB for
2**26 voxels from a CT, 2.18 GB from a true solid, the process's own ~0.2 GB included),
rounded up: what :func:`block_budget` divides a worker thread's memory by."""


def block_budget() -> int:
    """Most voxels one extended block of the split (or of :func:`max_distance`) may hold.

    The memory of one worker thread (the smallest ``memory_limit / nthreads`` of the
    current cluster's workers; without a cluster, this machine's available memory over
    its cores) over :data:`SPLIT_BYTES_PER_VOXEL`.

    Returns
    -------
    int
    """
    import os

    import psutil

    from volmla.engine.cluster import current_client

    client = current_client()
    per_thread: list[float] = []
    if client is not None:
        with contextlib.suppress(Exception):
            for w in client.scheduler_info(n_workers=-1)["workers"].values():
                if w.get("memory_limit"):
                    per_thread.append(w["memory_limit"] / max(int(w.get("nthreads", 1)), 1))
    if not per_thread:
        per_thread.append(psutil.virtual_memory().available / (os.cpu_count() or 1))
    return max(int(min(per_thread) // SPLIT_BYTES_PER_VOXEL), 1)


def _too_large(extent: Sequence[int], *, reach: str) -> VolmlaError | None:
    """The error for extended blocks of ``extent`` voxels beyond :func:`block_budget`, or None."""
    need, budget = math.prod(extent), block_budget()
    if need <= budget:
        return None
    size = " x ".join(str(int(e)) for e in extent)
    return VolmlaError(
        f"particles too large to split in memory: {reach}, so a split block with its halo would hold "
        f"{size} voxels (~{need * SPLIT_BYTES_PER_VOXEL / 1e9:.1f} GB), more than the "
        f"~{budget * SPLIT_BYTES_PER_VOXEL / 1e9:.1f} GB a worker thread has; give max_radius=R "
        "to split with a halo for particles up to R voxels (larger ones may then be cut at block borders, "
        "named in a warning), or use workers with more memory")


def _overlap(mask: da.Array, halo: Sequence[int]) -> tuple[da.Array, tuple[int, ...]]:
    """The mask's blocks extended by ``halo`` (background outside) and the halo used.

    Chunks thinner than the halo are merged first. An axis left in one chunk needs no
    context from neighbours: it gets a one-voxel rim of background only (the volume's
    border is background either way).
    """
    (ext,), used = _overlap_all([mask], halo)
    return ext, used


def _halo_geometry(shape: Sequence[int], chunks: tuple[tuple[int, ...], ...],
                   halo: Sequence[int]) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """The blocks (chunks thinner than the halo merged) and the halo per axis (one voxel
    of background along an axis in one block) that :func:`_overlap_all` extends by."""
    halo = tuple(min(h, max(n - 1, 0)) for h, n in zip(halo, shape, strict=True))
    merged = tuple(da.overlap.ensure_minimum_chunksize(max(h, 1), c) for h, c in zip(halo, chunks, strict=True))
    return merged, tuple(1 if len(c) == 1 else h for h, c in zip(halo, merged, strict=True))


def _overlap_all(arrays: Sequence[da.Array], halo: Sequence[int]) -> tuple[list[da.Array], tuple[int, ...]]:
    """:func:`_overlap` of arrays of one shape, all on the first one's (merged) chunks; zeros outside."""
    chunks, halo = _halo_geometry(arrays[0].shape, arrays[0].chunks, halo)
    arrays = [a if a.chunks == chunks else a.rechunk(chunks) for a in arrays]
    depth, zeros = dict(enumerate(halo)), {a: 0 for a in range(3)}
    return [da.overlap.overlap(a, depth=depth, boundary=zeros) for a in arrays], halo


def _split_block_id(block: np.ndarray, weight: np.ndarray | None = None, *, block_id: tuple[int, ...] | None = None,
                    starts: list[np.ndarray], **kwargs: Any) -> np.ndarray:
    """:func:`_split_extended` of a block of ``da.overlap``'s extended array (``starts``: the blocks' origins)."""
    assert block_id is not None
    return _split_extended(block, weight, origin=tuple(int(starts[a][block_id[a]]) for a in range(3)), **kwargs)


def _split_window(mask: np.ndarray, weight: np.ndarray | None = None, *, origin: tuple[int, ...],
                  **kwargs: Any) -> np.ndarray:
    """:func:`_split_extended` of windows read from the stored mask (and weight)."""
    return _split_extended(np.asarray(mask, bool), None if weight is None else np.asarray(weight, np.float32),
                           origin=origin, **kwargs)


def _split_extended(
    block: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    origin: tuple[int, ...],
    halo: tuple[int, ...],
    first: tuple[int, ...],
    shape: tuple[int, ...],
    neck: float,
    h: float,
    sampling: tuple[float, ...],
    connectivity: int,
    report: str | None = None,
) -> np.ndarray:
    """Split one block with the ``first`` halo; again with the full ``halo`` if a particle reaches its face.

    Beyond the volume's faces the extended block holds background only: one plane of it
    is kept there (the distances see the face as background all the same), not the halo.
    Particles still cut by the full halo are written to the folder ``report`` (their
    keys and the boxes of their voxels in the block, for :func:`resplit_cut`), or logged
    as a warning without one.
    """
    cut = 0
    low_face = [origin[a] == 0 for a in range(3)]
    high_face = [origin[a] + block.shape[a] - 2 * halo[a] >= shape[a] for a in range(3)]
    for depth in dict.fromkeys((first, halo)):  # the first halo, then (if different) the full one
        lo = [min(d, 1) if face else d for d, face in zip(depth, low_face, strict=True)]
        hi = [min(d, 1) if face else d for d, face in zip(depth, high_face, strict=True)]
        crop = tuple(slice(a - l_, n - (a - h_)) for a, l_, h_, n in zip(halo, lo, hi, block.shape, strict=True))
        at_origin = tuple(origin[a] - lo[a] for a in range(3))
        keys = split_block(block[crop], neck=neck, h=h, sampling=sampling, connectivity=connectivity,
                           origin=at_origin, shape=shape, weight=None if weight is None else weight[crop])
        core = keys[tuple(slice(l_, n - h_) for l_, h_, n in zip(lo, hi, keys.shape, strict=True))]
        cut_keys = _cut_keys(keys, core, at_origin, shape)
        if not cut_keys.size:
            return owned(core)
    if report is not None:  # the same file whatever retry wrote it: idempotent
        box_lo, box_hi = _piece_boxes(core, cut_keys, origin)
        np.savez(Path(report) / ("cut-" + "-".join(map(str, origin)) + ".npz"), keys=cut_keys, lo=box_lo, hi=box_hi,
                 halo=np.asarray(halo))
        return owned(core)
    cut, at = len(cut_keys), tuple(int(c) for c in np.unravel_index(int(cut_keys[0]) - 1, shape))
    logger.warning(
        "%d particle(s) (one peaks at z, y, x = %s) reach beyond the split halo: their labels may depend on "
        "the chunking; give a larger max_radius", cut, at,
    )
    return owned(core)


def _cut_keys(keys: np.ndarray, core: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Keys of the particles of the block proper that reach the extended block's outer
    face (inside the volume), ascending."""
    faces = []
    for axis in range(3):
        if origin[axis] > 0:
            faces.append(keys.take(0, axis).ravel())
        if origin[axis] + keys.shape[axis] < shape[axis]:
            faces.append(keys.take(keys.shape[axis] - 1, axis).ravel())
    if not faces:
        return np.zeros(0, np.uint64)
    edge = np.unique(np.concatenate(faces))
    edge = edge[(edge > 0) & (edge != UNMARKED)]
    return np.intersect1d(edge, np.unique(core), assume_unique=True) if len(edge) else edge


def split_touching(
    solid: VolumeLike,
    *,
    neck: float = NECK,
    h: float = H_MIN,
    max_radius: float | None = None,
    voxel_size: float | Sequence[float] | None = None,
    connectivity: Literal[6, 18, 26] = 26,
    weight: VolumeLike | None = None,
    stored: Sequence[str | Path] | None = None,
    report: str | Path | None = None,
) -> da.Array:
    """Lazy watershed keys (uint64) of a solid mask, per block with a halo from the data.

    See the module docstring for the steps and what is exact. Chunks thinner than the
    halo are merged first, and chunks smaller than :data:`SPLIT_BLOCK` less the halo
    are regrouped into blocks of about that size (fewer halos to split).

    Parameters
    ----------
    solid
        3-D boolean (or 0/1) mask; an xarray volume gives its ``voxel_size_um``.
    neck
        Two distance maxima stay separate particles when the saddle between them is
        below ``neck`` times the lower peak (0 < neck <= 1; larger splits more).
    h
        ... and the lower peak's dynamic is at least ``h`` finest voxel edges.
    max_radius
        Largest distance value the halo is made for (finest voxel edges); None
        (default) measures it exactly (:func:`max_distance`, one eager pass).
    voxel_size
        Voxel edges (z, y, x) for the distance map; None: the volume's
        ``voxel_size_um`` if it has one, else isotropic.
    connectivity
        Watershed neighbourhood: 6, 18 or 26.
    weight
        Optional volume of the mask's shape in ``0..1`` that multiplies the distance map
        (:func:`split_block`'s ``weight``; :func:`volmla.particles.label_particles` gives
        :func:`volmla.particles.mask.local_fill`'s for an ``"auto"`` mask). None: the
        distance map alone.
    stored
        The Zarr arrays ``solid`` (and ``weight``) were read from, in that order: each
        block then reads its own extended window from them
        (:func:`volmla.engine.windows.window_map`) instead of borrowing its halo from
        its neighbours' blocks, so the workers hold no wavefront of blocks (the labels
        are the same).
    report
        An existing folder the workers reach: blocks where a particle reaches beyond
        the halo list it there, for :func:`resplit_cut` to split it again in a window
        that holds it once the keys are stored. None: such particles are logged as
        a warning (their labels may depend on the chunking).

    Returns
    -------
    dask.array.Array
        Lazy uint64 keys (as :func:`split_block`), with the mask's chunks (or the
        merged or regrouped ones).

    Raises
    ------
    VolmlaError
        The halo for ``max_radius`` (measured or given) makes blocks beyond
        :func:`block_budget`: particles too wide for a worker's memory, refused in one
        line before any block is split.

    Examples
    --------
    >>> zz, yy, xx = np.ogrid[:12, :12, :22]
    >>> two = ((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 6) ** 2 <= 25) | ((zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 15) ** 2 <= 25)
    >>> len(np.unique(split_touching(two).compute())) - 1
    2
    """
    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    neck = _check_positive("neck", neck, upper=1.0)
    h = _check_positive("h", h)
    vol = as_volume(solid, name="solid")
    mask = vol.data.astype(bool)
    sampling = normalise_sampling(voxel_size if voxel_size is not None else vol.attrs.get("voxel_size_um"))
    if max_radius is None:
        def floor() -> float:  # after a first pass that fell short: refuse before wider ones if need be
            value = distance_floor(mask, sampling=sampling)
            if value > 0 and (error := _too_large(_split_geometry(mask, value, sampling)[3],
                                                  reach=f"one lies at least {value:.0f} voxels from the background")):
                raise error  # a scan of one wide particle (a core) would otherwise double the halo up to it
            return value

        start = 16.0
        reach = tuple(math.ceil(start / s) for s in sampling)
        max_radius = max(_max_distance(_grown(mask, reach), sampling=sampling, start=start, floor=floor), 1.0)
        logger.info("largest distance in the solid: %.3g voxels", max_radius)
    arrays = [mask]
    if weight is not None:
        fill = as_volume(weight, name="weight").data
        if fill.shape != mask.shape:
            raise VolmlaError(f"weight must have the mask's shape {mask.shape}, got {fill.shape}")
        arrays.append(fill.astype(np.float32))
    grown, chunks, halo, extent = _split_geometry(mask, max_radius, sampling)
    if error := _too_large(extent, reach=f"the largest lies {max_radius:.0f} voxels from the background"):
        raise error
    first = tuple(min(h_, f) for h_, f in zip(halo, split_halo(max_radius, sampling, factor=FIRST_FACTOR), strict=True))
    params: dict[str, Any] = {"halo": halo, "first": first, "shape": tuple(mask.shape), "neck": neck, "h": h,
                              "sampling": sampling, "connectivity": connectivity,
                              "report": None if report is None else str(report)}
    if stored is not None:
        if len(stored) != len(arrays):
            what = "the solid and the weight" if weight is not None else "the solid"
            raise VolmlaError(f"stored must name {len(arrays)} array(s) ({what}), got {len(stored)}")
        from volmla.engine.windows import window_map

        # window_map hands the kernel ``halo=``: the split's own halo goes in as ``params``
        def kernel(*windows: np.ndarray, halo: tuple[int, ...], origin: tuple[int, ...]) -> np.ndarray:
            return _split_window(*windows, origin=origin, **params)

        return window_map(kernel, stored, chunks=chunks, halo=halo, dtype=np.uint64, with_origin=True,
                          name="split")
    arrays = [a if a.chunks == grown.chunks else a.rechunk(grown.chunks) for a in arrays]
    exts, _ = _overlap_all(arrays, split_halo(max_radius, sampling))
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    return da.map_blocks(functools.partial(_split_block_id, starts=starts, **params), *exts, dtype=np.uint64,
                         chunks=chunks, meta=np.empty((0, 0, 0), np.uint64))


MAX_WHOLE = 2**26
"""Most voxels of a window :func:`resplit_cut` splits in one piece (at 2**26 the split
peaks at 2.5 GB from a CT, 2.2 GB from a true solid, measured with the process's own);
particles that need a larger one keep their block-wise keys, with a warning."""


def _piece_boxes(core: np.ndarray, cut_keys: np.ndarray, origin: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per key of ``cut_keys`` (ascending, all present in ``core``): the box of its voxels
    in the block proper, as first and one-past-last voxels in the volume (n x 3 each)."""
    where = np.nonzero(np.isin(core, cut_keys))
    which = np.searchsorted(cut_keys, core[where])
    lo = np.full((len(cut_keys), 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((len(cut_keys), 3), -1, np.int64)
    for axis in range(3):
        np.minimum.at(lo[:, axis], which, where[axis])
        np.maximum.at(hi[:, axis], which, where[axis])
    return lo + np.asarray(origin), hi + 1 + np.asarray(origin)


def _merged_boxes(lo: np.ndarray, hi: np.ndarray, margin: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Boxes (first, one-past-last voxels) gathered where that saves work, greedily: a
    box takes in each box that overlaps or touches it when the window of the two
    together (the box and ``margin`` on each side) has no more voxels than their two
    windows, until no box takes in another. Per group: its box and the indices of the
    boxes it holds."""
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    members = [[i] for i in range(len(lo))]
    alive = np.ones(len(lo), bool)

    def window(first: np.ndarray, last: np.ndarray) -> np.ndarray:
        return np.prod(last - first + 2 * margin, axis=-1)

    changed = True
    while changed:
        changed = False
        for i in np.flatnonzero(alive):
            if not alive[i]:
                continue
            near = np.flatnonzero(alive & np.all(lo <= hi[i], axis=1) & np.all(hi >= lo[i], axis=1))
            near = near[near != i]
            if not near.size:
                continue
            first, last = np.minimum(lo[i], lo[near]), np.maximum(hi[i], hi[near])
            cheaper = near[window(first, last) <= window(lo[i], hi[i]) + window(lo[near], hi[near])]
            for j in cheaper:
                lo[i], hi[i] = np.minimum(lo[i], lo[j]), np.maximum(hi[i], hi[j])
                members[i] += members[j]
                alive[j] = False
                changed = True
    return [(lo[i], hi[i], np.asarray(members[i])) for i in np.flatnonzero(alive)]


def _resplit_window(
    keys: str,
    stored: Sequence[str],
    lo: np.ndarray,
    hi: np.ndarray,
    pieces: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    halo: np.ndarray,
    shape: tuple[int, ...],
    max_voxels: int,
    **split: Any,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """New keys of the voxels of the box ``lo:hi`` that belong to the listed ``pieces``
    (their keys, first and one-past-last voxels: a piece is the voxels of its key in its box).

    The box is split with a margin of ``halo`` voxels around it, doubled until no
    particle given to those voxels reaches the window's outer face inside the volume
    (the halo check of the blocks). Beyond the volume's faces the window keeps one plane
    of background. Returns the voxels (flat indices in the box), their keys and the
    window's voxels, or None when the window would exceed ``max_voxels``.
    """
    from volmla.engine.windows import read_window

    stored_keys = read_window(keys, tuple(int(a) for a in lo), tuple(int(b) for b in hi))
    todo = np.zeros(stored_keys.shape, bool)
    for key, first, last in zip(pieces[0], pieces[1] - lo, pieces[2] - lo, strict=True):
        box = tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))
        todo[box] |= stored_keys[box] == key
    del stored_keys
    margin = np.maximum(np.asarray(halo, np.int64), 1)
    bound = np.asarray(shape, np.int64)
    while True:
        start = np.maximum(lo - margin, -1)
        stop = np.minimum(hi + margin, bound + 1)
        if int(np.prod(stop - start)) > max_voxels:
            return None
        origin, end = tuple(int(a) for a in start), tuple(int(b) for b in stop)
        mask = read_window(stored[0], origin, end, cval=0).astype(bool)
        weight = read_window(stored[1], origin, end, cval=0).astype(np.float32) if len(stored) > 1 else None
        found = split_block(mask, origin=origin, shape=shape, weight=weight, **split)
        del mask, weight
        inner = found[tuple(slice(a, b) for a, b in zip(lo - start, hi - start, strict=True))][todo]
        # the window's faces at or beyond the volume's are background: _cut_keys skips them
        if not _cut_keys(found, np.unique(inner), origin, shape).size:
            return np.flatnonzero(todo), inner, int(np.prod(stop - start))
        if np.all(start <= 0) and np.all(stop >= bound):
            return np.flatnonzero(todo), inner, int(np.prod(stop - start))  # the whole volume: no face left
        margin = margin * 2


def _write_chunk(keys: str, box: tuple[slice, ...], at: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` at the voxels ``at`` (n x 3, relative to ``box``) of one chunk of a Zarr array."""
    import zarr

    out = zarr.open_array(keys, mode="r+")
    region = np.asarray(out[box])
    region[tuple(at.T)] = values
    out[box] = region


def _write_voxels(keys: str, at: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` at the voxels ``at`` (n x 3) of a Zarr array: each chunk (or shard)
    they fall in read and written once, in parallel (on the current Dask client, if any)."""
    import dask
    import zarr

    from volmla.engine.cluster import compute

    array = zarr.open_array(keys, mode="r")
    # a shard is the unit written whole: two tasks must never write parts of one
    edge = np.asarray(getattr(array, "shards", None) or array.chunks, np.int64)
    which, first = np.unique(at // edge, axis=0, return_inverse=True)
    first = first.ravel()
    order = np.argsort(first, kind="stable")
    bounds = np.searchsorted(first[order], np.arange(len(which) + 1))
    task = dask.delayed(_write_chunk, pure=True)
    tasks = []
    for i, chunk in enumerate(which):
        sel = order[bounds[i]:bounds[i + 1]]
        box = tuple(slice(int(c * e), int((c + 1) * e)) for c, e in zip(chunk, edge, strict=True))
        tasks.append(task(keys, box, at[sel] - chunk * edge, values[sel]))
    compute(tasks, desc="writing the new keys")


def resplit_cut(
    keys: str | Path,
    stored: Sequence[str | Path],
    report: str | Path,
    *,
    neck: float = NECK,
    h: float = H_MIN,
    voxel_size: float | Sequence[float] | None = None,
    connectivity: Literal[6, 18, 26] = 26,
    max_voxels: int | None = None,
) -> int:
    """Split again, in place, the particles that reached beyond the split halo, in windows that hold them.

    :func:`split_touching` is exact block by block for particles within its halo. A
    block where one reaches further lists it in ``report`` with the box of its voxels
    there (a piece). Boxes that overlap or touch are gathered where one window costs
    fewer voxels than two (:func:`_merged_boxes`); each box is split from the stored
    mask (and weight) with a margin of the halo, doubled until no particle given to a
    listed voxel reaches the window's face (the check the blocks make), and the listed
    voxels get the window's keys. Every other voxel's particle passed that check in its
    block already, so the keys of every particle are then the same whatever the
    chunking, as for particles within the halo. A window that would exceed
    ``max_voxels`` leaves its particles' block-wise keys, with a warning. The windows
    are split in parallel and the new keys written chunk by chunk in parallel (on the
    current Dask client, if any).

    Parameters
    ----------
    keys
        The stored keys of :func:`split_touching` (a Zarr array, rewritten in place).
    stored
        The Zarr solid mask (and weight) the keys were split from.
    report
        The folder given to :func:`split_touching` as ``report``.
    neck, h, voxel_size, connectivity
        As given to :func:`split_touching`.
    max_voxels
        Largest window (voxels) split in one piece; None: :data:`MAX_WHOLE`, or fewer
        where a worker thread's memory holds fewer (:func:`block_budget`).

    Returns
    -------
    int
        Windows split and written.

    Examples
    --------
    >>> import tempfile, zarr
    >>> from pathlib import Path
    >>> where = Path(tempfile.mkdtemp())
    >>> zz, yy, xx = np.ogrid[:12, :12, :40]
    >>> rod = (yy - 6) ** 2 + (zz - 6) ** 2 <= 9  # 40 voxels long, radius 3: beyond a halo of 11
    >>> _ = zarr.create_array(where / "solid.zarr", data=np.broadcast_to(rod, (12, 12, 40)).astype(np.uint8))
    >>> (where / "cut").mkdir()
    >>> keys = split_touching(da.from_zarr(where / "solid.zarr").rechunk((12, 12, 10)), max_radius=3,
    ...                       stored=[where / "solid.zarr"], report=where / "cut")
    >>> _ = keys.to_zarr(str(where / "keys.zarr"))
    >>> resplit_cut(where / "keys.zarr", [where / "solid.zarr"], where / "cut")
    1
    >>> len(np.unique(zarr.open_array(where / "keys.zarr")[...])) - 1
    1
    """
    import dask
    import zarr

    from volmla.engine.cluster import compute

    files = sorted(Path(report).glob("cut-*.npz"))
    if not files:
        return 0
    if max_voxels is None:
        max_voxels = min(MAX_WHOLE, block_budget())
    pieces = [dict(np.load(f)) for f in files]
    halo = np.max([p["halo"] for p in pieces], axis=0)
    halo = np.where(halo <= 1, halo.max(), halo)  # an axis in one block had one plane of background, not the halo
    shape = tuple(int(n) for n in zarr.open_array(str(keys), mode="r").shape)
    split = {"neck": neck, "h": h, "sampling": normalise_sampling(voxel_size), "connectivity": connectivity}
    piece_keys = np.concatenate([p["keys"] for p in pieces])
    piece_lo = np.concatenate([p["lo"] for p in pieces])
    piece_hi = np.concatenate([p["hi"] for p in pieces])
    listed = np.unique(piece_keys)
    groups = _merged_boxes(piece_lo, piece_hi, halo)
    task = dask.delayed(_resplit_window, pure=True)
    tasks = [task(str(keys), [str(s) for s in stored], lo, hi, (piece_keys[m], piece_lo[m], piece_hi[m]),
                  halo=halo, shape=shape, max_voxels=max_voxels, **split) for lo, hi, m in groups]
    done, read, too_large = 0, 0, set()
    at, values = [], []
    for (lo, hi, members), new in zip(groups, compute(tasks, desc="splitting particles past the halo"),
                                      strict=True):
        if new is None:
            too_large.update(piece_keys[members].tolist())
            continue
        at.append(np.stack(np.unravel_index(new[0], tuple(int(n) for n in hi - lo)), axis=1) + lo)
        values.append(new[1])
        done, read = done + 1, read + new[2]
    if at:
        _write_voxels(str(keys), np.concatenate(at), np.concatenate(values))
    if too_large:
        logger.warning("%d of %d particle(s) beyond the split halo need a window larger than %d voxels: "
                       "their labels may depend on the chunking; give a larger max_radius", len(too_large),
                       len(listed), max_voxels)
    logger.info("%d particle(s) crossing the split halo: %d window(s) of %d voxels in all split again", len(listed),
                done, read)
    return done
