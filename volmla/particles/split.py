"""Splitting touching particles: a distance-transform watershed per block with a halo.

Step 4 of :func:`volmla.particles.label_particles`. :func:`split_touching` runs
:func:`split_block` on every block extended by a halo of :func:`split_halo` =
``2 * ceil(max_radius) + 2`` voxels (outside the volume counts as background):

1. **distance map** (:func:`distance_map`): the exact Euclidean distance transform of
   the solid (SimpleITK's Maurer transform);
2. **markers** (:func:`h_maxima_caps`): the regional maxima of the h-maxima transform
   of the distance (maxima of dynamic at least ``h`` voxels, each a flat cap,
   26-connected);
3. **watershed**: a marker-based watershed (scikit-image) of the negated distance
   inside the solid;
4. **global keys**: each basin is keyed by its marker's *global* position (C-order
   linear index of the marker's highest voxel, plus one), so the same particle gets
   the same key in every block whose halo sees it; solid without any marker
   (particles thinner than ``h``) gets one shared key, :data:`UNMARKED`, and stays
   whole. :func:`volmla.particles.label.label` in multilabel mode then stitches the
   pieces of a basin across blocks (step 5 of :func:`~volmla.particles.label_particles`).

Chunk independence: the distance map is exact for every voxel within ``halo`` of the
nearest background; markers and basins are exact for particles whose radius is at most
``max_radius`` and whose basin fits in the halo. Larger or very elongated particles may
differ along block borders. Tested: identical particle counts and at least 99.5 % of
solid voxels in the same particle (up to renumbering) across chunkings, on
touching-sphere fields and the phantom.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.particles.label import check_connectivity
from volmla.types import VolumeLike

UNMARKED = np.uint64(2**63)
"""Watershed key of solid voxels that no marker reaches (particles thinner than ``h``)."""

__all__ = ["UNMARKED", "distance_map", "h_maxima_caps", "split_block", "split_halo", "split_touching"]


def split_halo(max_radius: float) -> int:
    """Halo of the watershed split: ``2 * ceil(max_radius) + 2`` voxels.

    A core voxel's particle has its marker within ``max_radius`` of it, and that
    marker's distance value needs another ``max_radius`` of context; two more voxels
    cover the marker plateau and the watershed neighbourhood.

    Parameters
    ----------
    max_radius
        Largest particle radius (voxels) the split is exact for.

    Returns
    -------
    int
        The halo in voxels.

    Examples
    --------
    >>> split_halo(10)
    22
    """
    if not isinstance(max_radius, int | float | np.number) or not math.isfinite(max_radius) or max_radius <= 0:
        raise VolmlaError(f"max_radius must be a positive number of voxels, got {max_radius!r}")
    return 2 * math.ceil(max_radius) + 2


def _sitk_run(filt: Any, image: Any) -> Any:
    filt.SetNumberOfThreads(1)  # Dask provides the parallelism
    return filt.Execute(image)


def distance_map(solid: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels, float32) of each solid voxel to the nearest background.

    SimpleITK's exact Maurer transform (as :func:`scipy.ndimage.distance_transform_edt`,
    several times faster). A block without background gets a constant large value.

    Parameters
    ----------
    solid
        Boolean block (z, y, x).

    Returns
    -------
    numpy.ndarray
        float32 distances, 0 on the background.

    Examples
    --------
    >>> distance_map(np.array([[[0, 1, 1, 1, 0]]], bool)).tolist()
    [[[0.0, 1.0, 2.0, 1.0, 0.0]]]
    """
    import SimpleITK as sitk

    solid = np.asarray(solid, bool)
    if solid.all():
        return np.full(solid.shape, np.float32(np.sum(solid.shape)), np.float32)
    filt = sitk.SignedMaurerDistanceMapImageFilter()
    filt.SetInsideIsPositive(False)
    filt.SetSquaredDistance(True)
    filt.SetUseImageSpacing(False)
    squared = sitk.GetArrayFromImage(_sitk_run(filt, sitk.GetImageFromArray((~solid).view(np.uint8))))
    return np.sqrt(np.maximum(squared, 0)).astype(np.float32) * solid


def h_maxima_caps(dist: np.ndarray, h: float) -> np.ndarray:
    """Markers: regional maxima (26-connected) of the h-maxima transform of ``dist``.

    The h-maxima transform (reconstruction by dilation of ``dist - h`` under ``dist``)
    removes maxima of dynamic below ``h``; each remaining maximum becomes a flat cap,
    so two equal peaks of one particle joined above ``max - h`` give one marker.

    Parameters
    ----------
    dist
        Distance map of one block (:func:`distance_map`).
    h
        Minimal dynamic of a maximum to become a marker (voxels).

    Returns
    -------
    numpy.ndarray
        Boolean marker caps.

    Examples
    --------
    >>> d = np.array([[[0, 1, 3, 1, 0, 2.5, 0]]], np.float32)
    >>> h_maxima_caps(d, 2.0).astype(int).tolist()
    [[[0, 1, 1, 1, 0, 1, 0]]]
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(dist, np.float32))
    hmax = sitk.HMaximaImageFilter()
    hmax.SetHeight(float(h))
    regional = sitk.RegionalMaximaImageFilter()
    regional.SetFullyConnected(True)
    regional.SetBackgroundValue(0)
    regional.SetForegroundValue(1)
    caps = _sitk_run(regional, _sitk_run(hmax, image))
    return sitk.GetArrayFromImage(caps).astype(bool)


def _peak_keys(
    markers: np.ndarray, n: int, dist: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...]
) -> np.ndarray:
    """Key of each marker: 1 + global C-order index of its highest voxel (ties: first).

    The peak lies near the particle's centre, so blocks that see only part of a large
    cap still agree on it.
    """
    flat = markers.ravel()
    where = np.flatnonzero(flat)
    ids = flat[where]
    order = np.lexsort((where, -dist.ravel()[where], ids))  # by marker, highest first, then C order
    first = np.ones(len(order), bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    pos = where[order][first]
    local = np.unravel_index(pos, markers.shape)
    coords = tuple(np.asarray(c, np.int64) + o for c, o in zip(local, origin, strict=True))
    return np.ravel_multi_index(coords, shape).astype(np.uint64) + np.uint64(1)


def split_block(
    solid: np.ndarray,
    *,
    h: float = 2.0,
    connectivity: int = 26,
    origin: tuple[int, ...] = (0, 0, 0),
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Marker-based watershed of the distance transform on one (extended) block.

    Parameters
    ----------
    solid
        Boolean block (z, y, x).
    h
        Minimal dynamic of a distance maximum to become a marker (voxels).
    connectivity
        Watershed neighbourhood: 6, 18 or 26.
    origin, shape
        The block's first voxel in the volume (may be negative in a halo) and the
        volume's shape; marker keys are global C-order indices.

    Returns
    -------
    numpy.ndarray
        uint64 basin keys: 0 background, ``1 + global index`` of the basin's marker,
        :data:`UNMARKED` for solid without a marker.

    Examples
    --------
    >>> ball = np.zeros((9, 9, 9), bool); ball[2:7, 2:7, 2:7] = True
    >>> len(np.unique(split_block(ball))) - 1
    1
    """
    import cc3d
    from skimage.segmentation import watershed

    solid = np.asarray(solid, bool)
    out = np.zeros(solid.shape, np.uint64)
    if not solid.any():
        return out
    shape = tuple(solid.shape) if shape is None else tuple(shape)
    dist = distance_map(solid)
    peaks = h_maxima_caps(dist, h) & solid
    markers, n = cc3d.connected_components(peaks.view(np.uint8), connectivity=26, return_N=True)
    if n == 0:
        out[solid] = UNMARKED
        return out
    keys = _peak_keys(markers, n, dist, origin, shape)
    basins = watershed(
        -dist, markers=markers.astype(np.int32), mask=solid, connectivity={6: 1, 18: 2, 26: 3}[connectivity]
    )
    lut = np.concatenate([[np.uint64(0)], keys]).astype(np.uint64)
    out = lut.take(basins)
    out[solid & (basins == 0)] = UNMARKED
    return out


def _split_extended(
    block: np.ndarray,
    *,
    block_id: tuple[int, ...] | None = None,
    starts: list[np.ndarray],
    halo: tuple[int, ...],
    shape: tuple[int, ...],
    h: float,
    connectivity: int,
) -> np.ndarray:
    assert block_id is not None
    origin = tuple(int(starts[a][block_id[a]]) - halo[a] for a in range(3))
    return split_block(block, h=h, connectivity=connectivity, origin=origin, shape=shape)


def split_touching(
    solid: VolumeLike, *, h: float = 2.0, max_radius: float = 24.0, connectivity: Literal[6, 18, 26] = 26
) -> da.Array:
    """Lazy watershed basin keys (uint64) of a solid mask, per block with a halo.

    See the module docstring for what is exact and what is not. Chunks thinner than
    the halo are merged first.

    Parameters
    ----------
    solid
        3-D boolean (or 0/1) mask.
    h
        Minimal dynamic (voxels) of a distance maximum to seed its own particle.
    max_radius
        Largest particle radius (voxels) the split is exact for; sets the halo
        (:func:`split_halo`).
    connectivity
        Watershed neighbourhood: 6, 18 or 26.

    Returns
    -------
    dask.array.Array
        Lazy uint64 basin keys (as :func:`split_block`), with the mask's chunks (or the
        merged ones).

    Examples
    --------
    >>> two = np.zeros((12, 12, 22), bool)
    >>> zz, yy, xx = np.ogrid[:12, :12, :22]
    >>> two |= (zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 6) ** 2 <= 25
    >>> two |= (zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 15) ** 2 <= 25
    >>> len(np.unique(split_touching(two, h=1.0, max_radius=5).compute())) - 1
    2
    """
    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    if not isinstance(h, int | float | np.number) or not math.isfinite(h) or h <= 0:
        raise VolmlaError(f"h must be a positive number of voxels, got {h!r}")
    mask = as_volume(solid, name="solid").data.astype(bool)
    halo_edge = split_halo(max_radius)
    halo = tuple(min(halo_edge, max(n - 1, 0)) for n in mask.shape)
    # Every chunk at least as thick as the halo, so a block reads only its neighbours.
    chunks = tuple(
        max(min(halo[a], mask.shape[a]), max(mask.chunks[a])) for a in range(3)
    )
    if any(min(mask.chunks[a][:-1] or (chunks[a],)) < halo[a] for a in range(3)):
        mask = mask.rechunk(chunks)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in mask.chunks]
    kernel = functools.partial(
        _split_extended, starts=starts, halo=halo, shape=tuple(mask.shape), h=float(h), connectivity=connectivity
    )
    return da.map_overlap(
        kernel,
        mask,
        depth=dict(enumerate(halo)),
        boundary=0,
        trim=True,
        dtype=np.uint64,
        meta=np.empty((0, 0, 0), np.uint64),
    )
