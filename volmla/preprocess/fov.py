"""The reconstruction's field of view: the cylinder a CT scan images, and the fill outside it.

A CT reconstruction covers a cylinder about the rotation axis. The square slices it is
written into hold, outside that circle, one constant value (0 in most scanners' uint16
output). Those voxels are not void: read as void they move every level taken from a
histogram (the ``"auto"`` mask's void mode, Otsu, the cupping measured on the void: a
resin-mounted scan's resin then reads as solid), and a particle cut by the circle looks
whole. Measured on an easy crushed-ore phantom at 96^3 with a zero-filled field of view:
matched particles 96 % -> 69 %; with a container wall as well, 0 %.

- :func:`find_field_of_view` finds the circle from a few slices (the fill value from
  the slices' corners, the circle fitted to the edge of the fill region that reaches the
  slice border), or returns None when the scan has no such region;
- :func:`inside_histogram` is the out-of-core histogram of the voxels inside it,
  :func:`fill_outside` replaces the outside by a value (lazily, per block), and
  :func:`void_outside` by the inside's void level, so that every stage reads it as void
  (the levels, the partial-volume apportioning, the filters' reach at the edge);
- :func:`edge_ids` lists the labels that reach the circle's edge: the particle table
  flags them as touching the border, as it does those cut by a face of the volume.

The circle is the same on every slice (a cylinder; the smallest radius the sampled
slices give), and a :class:`FieldOfView` travels with the particles it was used for in
their provenance record (:meth:`FieldOfView.as_record`, :func:`from_provenance`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume, map_blocks_at
from volmla.engine.reduce import Histogram, histogram
from volmla.errors import VolmlaError
from volmla.preprocess.kernels import plane_r2
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["FieldOfView", "edge_ids", "fill_outside", "find_field_of_view", "from_provenance", "inside_histogram",
           "parse_field_of_view", "void_outside"]

CORNER_SHARE = 0.9
"""The fill value must be at least this share of the slices' corner voxels."""

MIN_OUTSIDE = 0.01
"""The fill region reaching a slice's border must cover at least this share of it."""

MIN_EDGE_POINTS = 32
"""Fewest edge voxels a slice's circle is fitted to."""

MAX_RMS = 0.75
"""Largest RMS distance (voxels) of the kept edge voxels from the fitted circle."""

MIN_INLIERS = 0.8
"""Share of the edge voxels within 2 voxels of the circle; fewer: not a circle."""

RECORD_KEY = "field_of_view"
"""The key of a provenance step that records the field of view."""


class FieldOfView(NamedTuple):
    """A cylindrical field of view about the z axis.

    Attributes
    ----------
    center
        ``(y, x)`` of the axis, in voxels (voxel centres at integers).
    radius
        A voxel is inside when the distance of its centre from the axis is below it.
    fill
        The value the reconstruction holds outside.
    """

    center: tuple[float, float]
    radius: float
    fill: float

    def inside(self, shape: Sequence[int], origin: Sequence[int]) -> np.ndarray:
        """``(y, x)`` boolean plane of a block (``shape``, first voxel ``origin``): inside the circle.

        Examples
        --------
        >>> FieldOfView((1.0, 1.0), 1.2, 0.0).inside((1, 3, 3), (0, 0, 0)).astype(int).tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
        """
        return np.asarray(plane_r2(shape, origin, self.center) < self.radius**2)

    def edge(self, shape: Sequence[int], origin: Sequence[int]) -> np.ndarray:
        """``(y, x)`` boolean plane of a block: within one voxel of the circle's edge, or outside.

        Examples
        --------
        >>> FieldOfView((2.0, 2.0), 2.5, 0.0).edge((1, 5, 5), (0, 0, 0))[2].astype(int).tolist()
        [1, 0, 0, 0, 1]
        """
        return np.asarray(plane_r2(shape, origin, self.center) >= max(self.radius - 1.0, 0.0) ** 2)

    def as_record(self) -> dict[str, Any]:
        """The JSON form kept in a provenance step (:func:`from_provenance` reads it back).

        Examples
        --------
        >>> FieldOfView((10.0, 12.5), 9.75, 0.0).as_record()
        {'center_yx': [10.0, 12.5], 'radius': 9.75, 'fill': 0.0}
        """
        return {"center_yx": [float(self.center[0]), float(self.center[1])], "radius": float(self.radius),
                "fill": float(self.fill)}


def parse_field_of_view(value: Any, *, name: str = "field_of_view") -> FieldOfView | str | None:
    """A field of view as a user gives it: ``"auto"`` (or True), ``"none"`` (or False,
    None), a :class:`FieldOfView`, or its circle ``"Y,X,R"`` / ``[y, x, r]`` in voxels (the
    axis and the radius: e.g. a container wall's inner circle, to leave the wall out).

    Parameters
    ----------
    value
        What was given.
    name
        How a message names the option.

    Returns
    -------
    FieldOfView, ``"auto"`` or None

    Examples
    --------
    >>> parse_field_of_view("31.5, 31.5, 28")
    FieldOfView(center=(31.5, 31.5), radius=28.0, fill=0.0)
    >>> parse_field_of_view(False) is None, parse_field_of_view("auto")
    (True, 'auto')
    >>> parse_field_of_view("1,2")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: field_of_view must be auto, none or Y,X,R (the circle's axis and radius in voxels), got '1,2'
    """
    if isinstance(value, FieldOfView):
        return value
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if isinstance(parts, (str, bytes)) or len(parts) != 3 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        cy, cx, radius = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise VolmlaError(f"{name} must be auto, none or Y,X,R (the circle's axis and radius in voxels), "
                          f"got {value!r}") from None
    if not all(math.isfinite(v) for v in (cy, cx, radius)) or radius <= 1:
        raise VolmlaError(f"{name}'s Y,X,R must be finite with a radius above 1 voxel, got {value!r}")
    return FieldOfView((cy, cx), radius, 0.0)


def from_provenance(attrs: Mapping[str, Any]) -> FieldOfView | None:
    """The field of view the latest provenance step of a volume's ``attrs`` records, or None.

    Parameters
    ----------
    attrs
        A volume's attributes (``provenance``: a list of step records).

    Returns
    -------
    FieldOfView or None

    Examples
    --------
    >>> rec = FieldOfView((4.0, 4.0), 3.5, 0.0).as_record()
    >>> from_provenance({"provenance": [{"step": "ingest"}, {"step": "particles", "field_of_view": rec}]}).radius
    3.5
    >>> from_provenance({"provenance": [{"step": "ingest"}]}) is None
    True
    """
    for step in reversed(list(attrs.get("provenance") or [])):
        rec = step.get(RECORD_KEY) if isinstance(step, Mapping) else None
        if isinstance(rec, Mapping):
            cy, cx = (float(v) for v in rec["center_yx"])
            return FieldOfView((cy, cx), float(rec["radius"]), float(rec["fill"]))
    return None


def _fit_circle(yy: np.ndarray, xx: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (algebraic) circle through points: ``(cy, cx, r)``."""
    a = np.column_stack([xx, yy, np.ones_like(xx)])
    d, e, f = np.linalg.lstsq(a, -(xx**2 + yy**2), rcond=None)[0]
    cx, cy = -d / 2, -e / 2
    return float(cy), float(cx), float(math.sqrt(max(cx**2 + cy**2 - f, 0.0)))


def _slice_circle(plane: np.ndarray, fill: float) -> tuple[float, float, float] | None:
    """The circle bounding one slice's fill region that reaches its border, or None.

    The circle is fitted to the voxels inside that touch the region (4-neighbours, the
    slice's own border not counted), refitted on those within 2 voxels of the first fit;
    their centres lie half a voxel inside the edge on average, so the radius is the fit's
    plus 0.5.
    """
    from scipy import ndimage as ndi

    is_fill = plane == plane.dtype.type(fill)
    lab, n = ndi.label(is_fill)
    if n == 0:
        return None
    rim = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    outside = np.isin(lab, np.unique(rim[rim > 0]))
    if outside.sum() < MIN_OUTSIDE * plane.size:
        return None
    inside = ~outside
    edge = inside & ~ndi.binary_erosion(inside, border_value=1)
    yy, xx = (v.astype(np.float64) for v in np.nonzero(edge))
    if yy.size < MIN_EDGE_POINTS:
        return None
    cy, cx, r = _fit_circle(yy, xx)
    near = np.abs(np.hypot(yy - cy, xx - cx) - r) <= 2.0
    if near.mean() < MIN_INLIERS or near.sum() < MIN_EDGE_POINTS:
        return None
    cy, cx, r = _fit_circle(yy[near], xx[near])
    dist = np.hypot(yy[near] - cy, xx[near] - cx) - r
    if float(np.sqrt(np.mean(dist**2))) > MAX_RMS:
        return None
    return cy, cx, r + 0.5


def find_field_of_view(volume: VolumeLike, *, slices: int = 5) -> FieldOfView | None:
    """The cylindrical field of view of a reconstructed CT, or None when it shows none.

    1. the fill value: the value of at least :data:`CORNER_SHARE` of the voxels at the
       four corners of every slice (one small read); none: None;
    2. on ``slices`` evenly spaced slices, the fill region that reaches the slice border
       (at least :data:`MIN_OUTSIDE` of the slice) and a circle fitted to its edge
       (:data:`MIN_EDGE_POINTS`, :data:`MIN_INLIERS`, :data:`MAX_RMS`); any sampled slice
       without one (air clipped to the fill value and reaching the edge, a scan cropped
       inside its field of view): None, and the volume is read as before;
    3. the axis at the median of the slices' centres, the radius the smallest of theirs.

    Parameters
    ----------
    volume
        3-D intensity volume (the scan as reconstructed).
    slices
        How many slices to fit (each is read whole).

    Returns
    -------
    FieldOfView or None

    Examples
    --------
    >>> y, x = np.mgrid[:40, :40] - 19.5
    >>> scan = np.where(np.hypot(y, x) < 18, 100, 0).astype(np.uint16)[None].repeat(4, 0)
    >>> fov = find_field_of_view(scan)
    >>> [round(v, 1) for v in (*fov.center, fov.radius, fov.fill)]
    [19.5, 19.5, 18.1, 0.0]
    >>> find_field_of_view(np.full((4, 40, 40), 100, np.uint16)) is None
    True
    """
    from volmla.engine.cluster import compute

    data = as_volume(volume, name="intensity").data
    nz, ny, nx = (int(n) for n in data.shape)
    if ny < 16 or nx < 16 or data.dtype == np.bool_:
        return None
    (corners,) = compute([data[:, :: ny - 1, :: nx - 1]], desc="field of view")
    values, counts = np.unique(np.asarray(corners), return_counts=True)
    if counts.max() < CORNER_SHARE * corners.size:
        return None
    fill = values[int(np.argmax(counts))]
    if not np.isfinite(fill):
        return None
    zs = np.unique(np.linspace(0, nz - 1, max(1, min(slices, nz))).round().astype(int))
    planes = compute([data[int(z)] for z in zs], desc="field of view")
    fits = [_slice_circle(np.asarray(p), fill) for p in planes]
    if any(f is None for f in fits):
        logger.info("no field of view: %d of %d slices show no circle of fill value %g", sum(f is None for f in fits),
                    len(fits), float(fill))
        return None
    circles = np.array(fits, np.float64)
    fov = FieldOfView((float(np.median(circles[:, 0])), float(np.median(circles[:, 1]))), float(circles[:, 2].min()),
                      float(fill))
    logger.info("field of view: axis (y %.1f, x %.1f), radius %.1f voxels, fill %g outside", *fov.center, fov.radius,
                fov.fill)
    return fov


def _fill_block(block: np.ndarray, *, origin: Sequence[int], center: tuple[float, float], radius: float,
                value: float) -> np.ndarray:
    inside = FieldOfView(center, radius, 0.0).inside(block.shape, origin)
    return np.where(inside[None], block, np.asarray(value, block.dtype))


def fill_outside(volume: VolumeLike, fov: FieldOfView, value: float) -> da.Array:
    """The volume with every voxel outside the field of view set to ``value`` (lazy).

    Parameters
    ----------
    volume
        3-D volume.
    fov
        The field of view.
    value
        The value outside (cast to the volume's dtype).

    Returns
    -------
    dask.array.Array
        Same dtype and chunks.

    Examples
    --------
    >>> fill_outside(np.ones((1, 1, 4), np.uint8), FieldOfView((0.0, 0.0), 2.0, 0.0), 7).compute().tolist()
    [[[1, 1, 7, 7]]]
    """
    data = as_volume(volume).data
    return map_blocks_at(data, _fill_block, data.dtype, center=tuple(fov.center), radius=float(fov.radius),
                         value=value)


def void_outside(volume: VolumeLike, fov: FieldOfView) -> da.Array:
    """The volume with the outside of the field of view set to the void's grey level (lazy).

    The void level is the void mode of the inside's histogram
    (:func:`volmla.engine.reduce.histogram_modes` of :func:`inside_histogram`: one pass).
    Every later stage then reads the outside as void (resin or air) of the scan's own
    grey: the levels, the partial-volume apportioning and the filters' reach at the edge
    are as inside, where the fill (often 0) would read as a darker material. ``volmla
    run`` does this to the scan as ingested, before any other stage.

    Parameters
    ----------
    volume
        3-D intensity volume.
    fov
        Its field of view (:func:`find_field_of_view`).

    Returns
    -------
    dask.array.Array
        Same dtype and chunks.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> vol = np.concatenate([rng.normal(100, 3, 700), rng.normal(200, 3, 300)]).reshape(1, 10, 100).astype(np.uint8)
    >>> vol[0, :, 90:] = 0
    >>> out = void_outside(vol, FieldOfView((4.5, 0.0), 89.5, 0.0)).compute()
    >>> bool(95 <= out[0, 0, 95] <= 105)
    True
    """
    from volmla.engine.reduce import histogram_modes

    data = as_volume(volume, name="intensity", finite=True).data
    void = histogram_modes(inside_histogram(data, fov, bins=4096))[0]
    if np.issubdtype(data.dtype, np.integer):
        void = float(np.clip(round(void), np.iinfo(data.dtype).min, np.iinfo(data.dtype).max))
    logger.info("field of view: the outside set to the void level %g", void)
    return fill_outside(data, fov, void)


def _outside_per_slice(shape: Sequence[int], fov: FieldOfView) -> int:
    return int((~fov.inside((1, shape[1], shape[2]), (0, 0, 0))).sum())


def inside_histogram(volume: VolumeLike, fov: FieldOfView, *, bins: int = 65536) -> Histogram:
    """:func:`volmla.engine.reduce.histogram` of the voxels inside the field of view only.

    The outside is replaced by the inside voxel nearest the axis (one value the inside
    holds, so a float histogram's range is the inside's), and its count taken back out of
    that value's bin.

    Parameters
    ----------
    volume
        3-D intensity volume.
    fov
        The field of view.
    bins
        Number of bins for float data.

    Returns
    -------
    Histogram

    Examples
    --------
    >>> vol = np.array([[[5, 9, 9, 200]]], np.uint8)
    >>> h = inside_histogram(vol, FieldOfView((0.0, 1.0), 1.5, 200.0))
    >>> int(h.counts[5]), int(h.counts[9]), int(h.counts[200])
    (1, 2, 0)
    """
    from volmla.engine.cluster import compute

    data = as_volume(volume).data
    r2 = plane_r2((1, data.shape[1], data.shape[2]), (0, 0, 0), fov.center)
    y, x = np.unravel_index(int(np.argmin(r2)), r2.shape)
    (probe,) = compute([data[data.shape[0] // 2, y, x]], desc="field of view")
    hist = histogram(fill_outside(data, fov, probe.item()), bins=bins)
    n_out = _outside_per_slice(data.shape, fov) * int(data.shape[0])
    if hist.exact:
        index = int(round((float(probe) - hist.first) / hist.width))
    else:
        top = hist.first + hist.width * len(hist.counts)  # the float histogram's own binning, on one value
        index = int(np.argmax(np.histogram([probe], bins=len(hist.counts), range=(hist.first, top))[0]))
    counts = np.asarray(hist.counts, np.int64).copy()
    counts[index] -= n_out
    return hist._replace(counts=counts)


def _edge_block_ids(block: np.ndarray, origin: Sequence[int], center: tuple[float, float], radius: float) -> np.ndarray:
    edge = FieldOfView(center, radius, 0.0).edge(block.shape, origin)
    ids = np.unique(block[:, edge])
    return ids[ids > 0]


def edge_ids(labels: VolumeLike, fov: FieldOfView) -> list[Any]:
    """Delayed tasks, one per block, each the sorted labels (> 0) within one voxel of the edge.

    Computed with the other tasks of a pass (:func:`volmla.measure.tables.measure`
    concatenates them); a label found by any block reaches the edge.

    Parameters
    ----------
    labels
        3-D integer labels.
    fov
        The field of view.

    Returns
    -------
    list
        ``dask.delayed`` objects, one per block.

    Examples
    --------
    >>> lab = np.zeros((1, 5, 5), np.uint32); lab[0, 2, 2] = 1; lab[0, 0, 2] = 2
    >>> import dask
    >>> [t.tolist() for t in dask.compute(*edge_ids(lab, FieldOfView((2.0, 2.0), 2.5, 0.0)))]
    [[2]]
    """
    data = as_volume(labels, integer=True, allow_empty=True).data
    starts = [np.cumsum((0, *c[:-1])) for c in data.chunks]
    tasks = []
    for index, block in zip(np.ndindex(*data.numblocks), data.to_delayed().ravel(), strict=True):
        origin = tuple(int(starts[a][i]) for a, i in enumerate(index))
        tasks.append(dask.delayed(_edge_block_ids, pure=True)(block, origin, tuple(fov.center), float(fov.radius)))
    return tasks
