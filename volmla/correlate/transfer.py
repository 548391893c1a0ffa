"""Label transfer: a registered mineral map becomes sparse training labels in the CT grid.

1. **Map to plane** (:func:`map_to_plane`): the phase map is resampled into the CT
   plane's voxel grid (nearest neighbour, inverse transform): ``phase +
   SPARSE_LABEL_OFFSET`` where the map covers the plane, 0 (unlabelled) elsewhere.
2. **Erode** (:func:`erode_labels`): labels within ``margin`` voxels of a label change
   are dropped, so misregistration at grain boundaries does not teach wrong labels.
3. **Volume** (:func:`plane_labels_volume`, :func:`labels_volume`): the planes
   (:class:`LabelPlane`) are written into a lazy, mostly-zero uint8 volume: ``0`` =
   unlabelled, ``phase + 1`` otherwise (void, phase 0, is stored as 1); a tilted plane's
   label at (row, col) goes to the nearest voxel on the tilted plane. Only chunks that a
   plane crosses compute anything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr

from volmla.correlate.fit2d import _sitk_image
from volmla.correlate.minerals import UNLABELLED
from volmla.correlate.planes import _plane_axes, plane_heights
from volmla.errors import VolmlaError
from volmla.io.sparse import SPARSE_LABEL_OFFSET

if TYPE_CHECKING:
    from volmla.correlate.register import Registration

logger = logging.getLogger(__name__)

__all__ = ["LabelPlane", "erode_labels", "labels_volume", "map_to_plane", "plane_labels_volume"]


def map_to_plane(phases: np.ndarray, reg: Registration) -> np.ndarray:
    """Resample a phase map into its CT plane's voxel grid (nearest neighbour).

    Returns uint8 ``phase + SPARSE_LABEL_OFFSET`` where the map covers the plane, 0
    elsewhere and where the map is :data:`UNLABELLED`, with the plane's shape (the two
    axes other than ``reg.axis``). For a tilted registration the plane grid is the
    projection of the tilted plane (see :class:`LabelPlane`).

    Parameters
    ----------
    phases
        Phase ids on the map grid (the registered map's shape).
    reg
        The map's registration.

    Returns
    -------
    numpy.ndarray
        uint8 labels on the CT plane's (row, col) grid.

    Examples
    --------
    >>> plane = map_to_plane(phases, reg)  # doctest: +SKIP
    """
    import SimpleITK as sitk

    phases = np.asarray(phases)
    if phases.shape != tuple(reg.map_shape):
        raise VolmlaError(f"phase map shape {phases.shape} differs from the registered map {tuple(reg.map_shape)}")
    a, r, c = _plane_axes(reg.axis)
    spacing_rc = (reg.voxel_size_um[r], reg.voxel_size_um[c])
    values = np.where(phases == UNLABELLED, 0, phases.astype(np.float32) + SPARSE_LABEL_OFFSET)
    moving = _sitk_image(values, (reg.pixel_size_um,) * 2, reg.origin_um)
    ref = _sitk_image(np.zeros((reg.ct_shape[r], reg.ct_shape[c]), np.float32), spacing_rc, (0.0, 0.0))
    out = sitk.Resample(moving, ref, reg.transform.GetInverse(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def erode_labels(labels: np.ndarray, margin: int) -> np.ndarray:
    """Unlabel every pixel within ``margin`` pixels (chessboard) of a label change.

    Unlabelled pixels (0) count as a label here, so the map's outer edge is eroded too.

    Parameters
    ----------
    labels
        2-D labels (0 = unlabelled).
    margin
        Pixels to unlabel on each side of a label change (0: a copy).

    Returns
    -------
    numpy.ndarray
        The labels, 0 near label changes, same dtype.

    Examples
    --------
    >>> erode_labels(np.array([[1, 1, 1, 2, 2, 2]]), 1).tolist()
    [[1, 1, 0, 0, 2, 2]]
    """
    from scipy import ndimage

    if not isinstance(margin, int | np.integer) or margin < 0:
        raise VolmlaError(f"erode margin must be a non-negative integer, got {margin!r}")
    labels = np.asarray(labels)
    if margin == 0:
        return labels.copy()
    size = 2 * int(margin) + 1
    same = ndimage.maximum_filter(labels, size=size, mode="nearest") == ndimage.minimum_filter(
        labels, size=size, mode="nearest")
    return np.where(same, labels, 0).astype(labels.dtype)


class LabelPlane(NamedTuple):
    """One labelled plane: ``axis`` name, ``index`` along it (at the plane's centre),
    ``labels`` 2-D uint8, optional ``tilt_deg`` (see :func:`plane_heights`) and the
    volume's ``voxel_size_um`` (z, y, x; needed for a tilt on anisotropic voxels). A
    tilted plane's label at (row, col) goes to the nearest voxel on the tilted plane."""

    axis: str
    index: int  # type: ignore[assignment]
    labels: np.ndarray
    tilt_deg: tuple[float, float] = (0.0, 0.0)
    voxel_size_um: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def voxel_planes(self, n: int) -> list[tuple[int, np.ndarray]]:
        """(index, labels) pieces on untilted planes: one for an untilted plane, one per
        voxel plane a tilted plane crosses (labels outside the volume are dropped)."""
        lab = np.asarray(self.labels)
        if not any(self.tilt_deg):
            return [(int(self.index), lab)]
        a, r, c = _plane_axes(self.axis)
        vs = self.voxel_size_um
        h = np.rint(plane_heights(lab.shape, index=self.index, tilt_deg=self.tilt_deg,
                                  voxel_size_um=(vs[a], vs[r], vs[c]))).astype(np.int64)
        return [(int(v), np.where(h == v, lab, 0).astype(lab.dtype)) for v in np.unique(h) if 0 <= v < n]


def _fill_block(block: np.ndarray, entries: Mapping[tuple[int, ...], list[Any]],
                block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Per-block kernel: zeros, plus the parts of the planes that cross this block."""
    if block_info is None:  # dask's meta probe
        return block
    idx = tuple(block_info[None]["chunk-location"])
    todo = entries.get(idx)
    if not todo:
        return block
    out = np.zeros(block.shape, np.uint8)
    for axis, offset, piece in todo:
        sl: list[Any] = [slice(None)] * 3
        sl[axis] = offset
        region = out[tuple(sl)]
        np.copyto(region, piece, where=piece > 0)
    return out


def plane_labels_volume(
    shape: Sequence[int],
    planes: Sequence[LabelPlane],
    *,
    chunks: Any = None,
    erode: int = 0,
) -> da.Array:
    """A lazy, mostly-zero uint8 label volume holding the given planes.

    Parameters
    ----------
    shape
        Volume shape (z, y, x), the CT's.
    planes
        Labelled planes (0 = unlabelled, ``phase + 1`` labelled). Later planes win where
        two planes cross.
    chunks
        Dask chunks (the CT's ``.data.chunks`` keeps blocks aligned).
    erode
        Margin (pixels) around label changes that is unlabelled.

    Returns
    -------
    dask.array.Array
        Only blocks crossed by a plane compute anything; the others are zeros.

    Examples
    --------
    >>> vol = plane_labels_volume((64, 64, 64), [LabelPlane("z", 0, plane)], chunks=32)  # doctest: +SKIP
    """
    shape = tuple(int(s) for s in shape)
    zeros = da.zeros(shape, dtype=np.uint8, chunks=chunks if chunks is not None else "auto")
    bounds = [np.cumsum((0, *c)) for c in zeros.chunks]
    entries: dict[tuple[int, ...], list[Any]] = {}
    labelled = False
    for plane in planes:
        a, r, c = _plane_axes(plane.axis)
        lab = np.asarray(plane.labels)
        want = (shape[r], shape[c])
        if lab.shape != want:
            raise VolmlaError(f"label plane {plane.axis}={plane.index} has shape {lab.shape}, the volume needs {want}")
        if not 0 <= plane.index < shape[a]:
            raise VolmlaError(f"plane {plane.axis}={plane.index} lies outside the volume (0..{shape[a] - 1})")
        lab = erode_labels(lab.astype(np.uint8), erode)
        labelled = labelled or bool(lab.any())
        for index, sub in plane._replace(labels=lab).voxel_planes(shape[a]):
            ia = int(np.searchsorted(bounds[a], index, side="right") - 1)
            for ir in range(len(zeros.chunks[r])):
                for ic in range(len(zeros.chunks[c])):
                    piece = sub[bounds[r][ir]:bounds[r][ir + 1], bounds[c][ic]:bounds[c][ic + 1]]
                    if not piece.any():
                        continue
                    idx = [0, 0, 0]
                    idx[a], idx[r], idx[c] = ia, ir, ic
                    entries.setdefault(tuple(idx), []).append((a, index - int(bounds[a][ia]), piece))
    if planes and not labelled:  # training labels with no labelled voxel: nothing to train on
        raise VolmlaError(f"the {len(planes)} label plane(s) hold no labelled pixel"
                          + (f" after erode {erode}: give a smaller erode" if erode else ""))
    logger.info("sparse labels: %d planes touch %d of %d blocks", len(planes), len(entries), zeros.npartitions)
    return zeros.map_blocks(_fill_block, dask.delayed(entries, pure=True), dtype=np.uint8,
                            meta=np.empty((0, 0, 0), np.uint8))


def labels_volume(
    ct: xr.DataArray, planes: Sequence[LabelPlane], *, erode: int = 0,
    phases: Mapping[int, str] | None = None,
) -> xr.DataArray:
    """:func:`plane_labels_volume` with the CT's shape, chunks and coordinates, as an
    ``xr.DataArray`` of kind ``labels`` ready for :func:`volmla.io.write_volume`.

    Parameters
    ----------
    ct
        The CT volume whose grid the labels take.
    planes
        Labelled planes (see :func:`plane_labels_volume`).
    erode
        Margin (pixels) around label changes that is unlabelled.
    phases
        {phase id: mineral} recorded in the attributes.

    Returns
    -------
    xarray.DataArray
        Lazy uint8 sparse labels (0 = unlabelled, ``phase + 1`` labelled).

    Examples
    --------
    >>> lv = labels_volume(ct, [LabelPlane("z", 5, plane)], erode=2)  # doctest: +SKIP
    """
    data = plane_labels_volume(ct.shape, planes, chunks=ct.data.chunks, erode=erode)
    attrs = {
        "voxel_size_um": tuple(ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0))),
        "unit": "micrometer", "kind": "labels",
        "phases": dict(phases or {}),
        "provenance": [{"step": "correlate.labels",
                        "planes": [[p.axis, int(p.index), *[float(t) for t in p.tilt_deg]] for p in planes],
                        "erode": int(erode), "label_offset": SPARSE_LABEL_OFFSET}],
    }
    return xr.DataArray(data, dims=ct.dims, coords=ct.coords, attrs=attrs, name="labels")
