"""Crystallometry of one labelled SEM image: one row per crystal (pure NumPy/scikit-image).

1. **Sizes** (``skimage.measure.regionprops``): area, equivalent diameter, major and
   minor axis of the moment ellipse, and the Feret diameters over the convex hull of the
   crystal's pixels taken as unit squares: the maximum (the hull's diameter) and the
   minimum (the narrowest caliper width over the hull's edge directions), all in
   micrometres;
   aspect ratio = major / minor axis; orientation of the major axis in degrees from the
   image rows' direction (counter-clockwise, in [0, 180)); touches-border flag.
2. **Shape descriptors** (dimensionless, for the form classifier :data:`DESCRIPTORS`):
   solidity, extent, circularity ``4 pi A / P^2``, the outline resampled to 128 points
   by arc length: its turning angle per point gives the corner count (peaks above 0.3
   rad), the straight fraction (points turning under 0.06 rad) and the largest turn;
   the radial profile from the centroid gives its coefficient of variation; convexity
   defects are the hull-minus-crystal pieces deeper than 4 % of the equivalent diameter;
   inside the crystal, the grey-value spread (facet shading) and the mean gradient.
3. **Affine-normalised shape** (:data:`AFFINE_DESCRIPTORS`, unchanged by any affine map
   of the image, so by stage tilt, perspective at crystal scale and shear): the outline is
   mapped by the inverse square root of the crystal's pixel covariance (its second
   moments become a circle; a rhombus becomes a square, an ellipse a circle), resampled
   to 128 points; on it the radial profile's coefficient of variation and harmonics 3-8,
   the IoU with the circle of the moment ellipse (radius 2: 1 for an ellipse), the
   turning-angle corners, straight fraction, largest turn and share of the four and six
   largest turns; and the filled fraction of the smallest enclosing parallelogram
   (:func:`min_parallelogram_area`; 1 for a rhombus, about 0.75-0.85 for polygons of 6-9
   sides, pi/4 for an ellipse), of the crystal and of its convex hull.
4. **Outline off the image border**: the fraction of the outline on the image's edge,
   and the turning-angle corners, shares, straight fraction, largest turn and the
   turns' coefficient of variation over the rest (a crystal cut by the border gains a
   straight edge and two corners that are not its own).
5. **Facet shading** (planar facets shade flat, rounded and lumpy crystals smoothly):
   inside the crystal (eroded 3 pixels) the gradient magnitude of the grey image smoothed
   at 1.5 pixels: its 90th percentile, the 10th and 50th percentiles over it, the
   fraction of nearly flat pixels; and the grey inter-quartile range.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["AFFINE_DESCRIPTORS", "DESCRIPTORS", "crystal_table", "feret_min", "min_parallelogram_area"]

AFFINE_DESCRIPTORS: tuple[str, ...] = (
    "affine_radial_cv", "affine_ellipse_iou", "parallelogram_fill", "hull_parallelogram_fill", "affine_corners",
    "affine_turn_top4", "affine_turn_top6", "affine_straight_fraction", "affine_max_turn",
    *(f"affine_h{k}" for k in range(3, 9)),
)
"""The affine-invariant shape descriptors (step 3)."""

BORDER_DESCRIPTORS: tuple[str, ...] = (
    "border_fraction", "free_corners", "free_turn_top4", "free_straight_fraction", "free_max_turn", "free_turn_cv",
)
SHADING_DESCRIPTORS: tuple[str, ...] = (
    "shading_gradient_p90", "shading_gradient_p50", "shading_gradient_p10", "shading_flat_fraction", "grey_iqr",
)

DESCRIPTORS: tuple[str, ...] = (
    "solidity", "extent", "circularity", "aspect_ratio", "corners", "straight_fraction", "max_turn",
    "radial_cv", "convexity_defects", "defect_depth", "intensity_std", "gradient_mean", "turn_top4", "turn_top8",
    "polygon_vertices", *(f"radial_h{k}" for k in range(2, 9)),
    *AFFINE_DESCRIPTORS, *BORDER_DESCRIPTORS, *SHADING_DESCRIPTORS,
)
"""Columns the form classifier reads, in order."""

_N = 128


def _hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of a point set (the points themselves when degenerate)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.asarray(points, np.float64)
    if len(pts) < 3:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # collinear points
        return pts


def feret_min(points: np.ndarray) -> float:
    """The minimum caliper width of a point set (over its convex hull's edge directions).

    Parameters
    ----------
    points
        ``(n, 2)`` coordinates.

    Returns
    -------
    float

    Examples
    --------
    >>> round(feret_min(np.array([[0, 0], [0, 4], [2, 4], [2, 0]], float)), 6)
    2.0
    """
    hull = _hull(points)
    if len(hull) < 3:
        return 0.0
    _, width = _edge_widths(hull)
    return float(width.min()) if width.size else 0.0


def _edge_widths(hull: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals of a convex hull's (non-degenerate) edges and the hull's width across each."""
    edges = np.roll(hull, -1, axis=0) - hull
    length = np.linalg.norm(edges, axis=1)
    edges = edges[length > 1e-9] / length[length > 1e-9, None]
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    proj = hull @ normals.T
    return normals, proj.max(axis=0) - proj.min(axis=0)


def min_parallelogram_area(points: np.ndarray) -> float:
    """The area of the smallest parallelogram enclosing a point set.

    Each pair of the smallest enclosing parallelogram's sides is flush with an edge of
    the convex hull, so the search runs over pairs of hull edge directions: the area of
    the parallelogram of widths ``w_i``, ``w_j`` across unit normals ``n_i``, ``n_j`` is
    ``w_i w_j / |n_i x n_j|``. Affine maps scale it with the area, so the filled fraction
    is affine-invariant.

    Parameters
    ----------
    points
        ``(n, 2)`` coordinates.

    Returns
    -------
    float
        0 for fewer than three points in general position.

    Examples
    --------
    >>> round(min_parallelogram_area(np.array([[0, 0], [2, 1], [3, 3], [1, 2], [1.5, 1.5]])), 6)
    3.0
    """
    hull = _hull(points)
    if len(hull) < 3:
        return 0.0
    normals, width = _edge_widths(hull)
    sine = np.abs(normals[:, None, 0] * normals[None, :, 1] - normals[:, None, 1] * normals[None, :, 0])
    area = np.where(sine > 1e-3, width[:, None] * width[None, :] / np.maximum(sine, 1e-12), np.inf)
    best = float(area.min()) if area.size else math.inf
    return best if math.isfinite(best) else 0.0


def _feret(coords: np.ndarray) -> tuple[float, float]:
    """Maximum and minimum Feret diameters of a pixel set (each pixel a unit square)."""
    hull = _hull(coords)
    corners = (hull[:, None, :] + np.array([[0, 0], [0, 1], [1, 0], [1, 1]])[None]).reshape(-1, 2)
    outline = _hull(corners)
    diff = outline[:, None, :] - outline[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=-1).max())), feret_min(outline)


def _contour(mask: np.ndarray) -> np.ndarray:
    """The longest outline of a mask, ``(n, 2)`` in the mask's pixel coordinates (empty: none)."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    return max(contours, key=len) - 1.0 if contours else np.zeros((0, 2))


def _resample(c: np.ndarray, flags: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A closed outline resampled to :data:`_N` points by arc length, smoothed; and its flags there."""
    closed = np.vstack([c, c[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    t = np.linspace(0, s[-1], _N, endpoint=False)
    pts = np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)
    on = (np.zeros(_N, bool) if flags is None
          else np.interp(t, s, np.concatenate([flags, flags[:1]]).astype(np.float64)) > 0.5)
    return ndi.gaussian_filter1d(pts, 0.8, axis=0, mode="wrap"), on


def _turns(pts: np.ndarray, step: int = 3) -> np.ndarray:
    """Absolute turning angle at each point of a resampled closed outline (over ``step`` points)."""
    ahead, back = np.roll(pts, -step, axis=0) - pts, pts - np.roll(pts, step, axis=0)
    return np.abs(np.arctan2(back[:, 0] * ahead[:, 1] - back[:, 1] * ahead[:, 0], (back * ahead).sum(axis=1)))


def _turn_stats(mag: np.ndarray, keep: np.ndarray, prefix: str, step: int = 3) -> dict[str, float]:
    """Corners (peaks above 0.3 rad), shares of the largest turns, straight fraction, largest turn over ``keep``."""
    if not keep.any():
        return {}
    peaks = (mag >= np.roll(mag, 1)) & (mag > np.roll(mag, -1)) & keep
    top = np.sort(np.where(peaks, mag, 0.0))[::-1]
    total = max(float(mag[keep].sum()) / step, 1e-9)  # a closed outline turns 2 pi in all
    return {f"{prefix}_corners": float((peaks & (mag > 0.3)).sum()), f"{prefix}_turn_top4": float(top[:4].sum()) / total,
            f"{prefix}_straight_fraction": float((mag[keep] < 0.06).mean()), f"{prefix}_max_turn": float(mag[keep].max())}


def _outline_stats(c: np.ndarray, diameter: float) -> dict[str, float]:
    """Turning-angle, radial and polygon descriptors and the perimeter of one crystal's outline."""
    from skimage.measure import approximate_polygon

    out = dict.fromkeys(("corners", "straight_fraction", "max_turn", "radial_cv", "perimeter", "turn_top4",
                         "turn_top8", "polygon_vertices", *(f"radial_h{k}" for k in range(2, 9))), 0.0)
    if not len(c):
        return out
    seg = np.hypot(*np.diff(c, axis=0).T)
    perimeter = float(seg.sum())
    out["perimeter"] = perimeter
    if perimeter <= 0 or len(c) < 8:
        return out
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0, s[-1], _N, endpoint=False)
    pts = np.stack([np.interp(t, s, c[:, 0]), np.interp(t, s, c[:, 1])], axis=1)
    pts = ndi.gaussian_filter1d(pts, 0.8, axis=0, mode="wrap")
    step = 3
    mag = _turns(pts, step)
    peaks = (mag > 0.3) & (mag >= np.roll(mag, 1)) & (mag > np.roll(mag, -1))
    peak_turns = np.sort(np.where(peaks | (mag >= np.roll(mag, 1)) & (mag > np.roll(mag, -1)), mag, 0.0))[::-1]
    total = max(float(mag.sum()) / step, 1e-9)  # a closed outline turns 2 pi in all
    radial = np.hypot(*(pts - pts.mean(axis=0)).T)
    spectrum = np.abs(np.fft.rfft(radial)) / max(float(np.abs(radial.sum())), 1e-9)
    out.update({
        "corners": float(peaks.sum()), "straight_fraction": float((mag < 0.06).mean()), "max_turn": float(mag.max()),
        "radial_cv": float(radial.std() / max(radial.mean(), 1e-9)),
        "turn_top4": float(peak_turns[:4].sum()) / total, "turn_top8": float(peak_turns[:8].sum()) / total,
        "polygon_vertices": float(len(approximate_polygon(np.vstack([pts, pts[:1]]),
                                                          tolerance=max(0.03 * diameter, 0.75))) - 1),
        **{f"radial_h{k}": float(spectrum[k]) for k in range(2, 9)},
    })
    return out


def _affine_stats(coords: np.ndarray, c: np.ndarray, on_border: np.ndarray) -> dict[str, float]:
    """Affine-normalised shape descriptors (step 3) and the outline off the image border (step 4)."""
    out = dict.fromkeys((*AFFINE_DESCRIPTORS, *BORDER_DESCRIPTORS), 0.0)
    if len(c) < 8 or len(coords) < 3:
        return out
    seg = np.hypot(*np.diff(np.vstack([c, c[:1]]), axis=0).T)
    out["border_fraction"] = float(seg[on_border].sum() / max(float(seg.sum()), 1e-9))
    # whiten: the pixel covariance (each pixel a unit square) becomes the identity
    cov = np.cov(coords.T.astype(np.float64)) + np.eye(2) / 12
    values, vectors = np.linalg.eigh(cov)
    whiten = vectors @ np.diag(1 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
    pts, flags = _resample((c - coords.mean(axis=0)) @ whiten.T, on_border)
    angle, radius = np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])
    order = np.argsort(angle)
    r = np.interp(np.linspace(-math.pi, math.pi, 2 * _N, endpoint=False), angle[order], radius[order],
                  period=2 * math.pi)
    spectrum = np.abs(np.fft.rfft(r)) / max(float(r.sum()), 1e-9)
    out["affine_radial_cv"] = float(r.std() / max(float(r.mean()), 1e-9))
    out["affine_ellipse_iou"] = float(np.mean(np.minimum(r, 2.0) ** 2) / np.mean(np.maximum(r, 2.0) ** 2))
    out.update({f"affine_h{k}": float(spectrum[k]) for k in range(3, 9)})
    parallelogram = min_parallelogram_area(pts)
    if parallelogram > 0:
        hull = _hull(pts)
        out["parallelogram_fill"] = _polygon_area(pts) / parallelogram
        out["hull_parallelogram_fill"] = _polygon_area(hull) / parallelogram
    step = 3
    mag = _turns(pts, step)
    every = np.ones(_N, bool)
    out.update(_turn_stats(mag, every, "affine", step))
    peaks = (mag >= np.roll(mag, 1)) & (mag > np.roll(mag, -1))
    top = np.sort(np.where(peaks, mag, 0.0))[::-1]
    out["affine_turn_top6"] = float(top[:6].sum()) / max(float(mag.sum()) / step, 1e-9)
    # off the border: leave out the border's points and the corners where the outline meets it
    near = np.zeros(_N, bool)
    for k in range(-step - 1, step + 2):  # dilate along the closed outline
        near |= np.roll(flags, k)
    free = ~near
    out.update(_turn_stats(mag, free, "free", step))
    if free.any():
        out["free_turn_cv"] = float(mag[free].std() / max(float(mag[free].mean()), 1e-9))
    return out


def _polygon_area(p: np.ndarray) -> float:
    """Shoelace area of a closed polygon's vertices."""
    return 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))))


def _shading_stats(grad: np.ndarray, grey: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Facet-shading descriptors (step 5) over the crystal eroded by 3 pixels (the mask when that empties it)."""
    inner = ndi.binary_erosion(mask, iterations=3)
    if inner.sum() < 10:
        inner = mask
    g, v = grad[inner], grey[inner]
    if not len(g):
        return dict.fromkeys(SHADING_DESCRIPTORS, 0.0)
    p10, p50, p90 = np.percentile(g, (10, 50, 90))
    q25, q75 = np.percentile(v, (25, 75))
    scale = max(float(p90), 1e-6)
    return {"shading_gradient_p90": float(p90), "shading_gradient_p50": float(p50) / scale,
            "shading_gradient_p10": float(p10) / scale, "shading_flat_fraction": float((g < 0.02).mean()),
            "grey_iqr": float(q75 - q25)}


def crystal_table(labels: np.ndarray, image: np.ndarray, *, pixel_size: float) -> pd.DataFrame:
    """One row per labelled crystal: sizes in micrometres and the shape descriptors.

    Parameters
    ----------
    labels
        ``(rows, cols)`` crystal labels (0 = background).
    image
        The grey image they were segmented from (for the interior descriptors).
    pixel_size
        Micrometres per pixel.

    Returns
    -------
    pandas.DataFrame
        Columns ``crystal_id``, ``area_um2``, ``equivalent_diameter_um``,
        ``major_axis_um``, ``minor_axis_um``, ``feret_max_um``, ``feret_min_um``,
        ``aspect_ratio``, ``orientation_deg``, ``touches_border``, ``centroid_row``,
        ``centroid_col``, ``bbox`` (row0, col0, row1, col1) and :data:`DESCRIPTORS`.

    Examples
    --------
    >>> lab = np.zeros((20, 20), np.int32); lab[5:15, 4:10] = 1
    >>> t = crystal_table(lab, lab.astype(float), pixel_size=0.5)
    >>> round(float(t.feret_min_um[0]), 6), float(t.area_um2[0])
    (3.0, 15.0)
    """
    from skimage.measure import regionprops

    grey = np.asarray(image, np.float32)
    lo, hi = np.percentile(grey[::2, ::2], (0.5, 99.8)) if grey.size else (0.0, 1.0)
    grey = ((grey - lo) / max(float(hi - lo), 1e-9)).astype(np.float32)
    grad = np.hypot(ndi.sobel(grey, 0), ndi.sobel(grey, 1))
    smooth = ndi.gaussian_filter(grey, 1.5)
    shading = np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1)) / 8  # grey change per pixel
    rows, cols = labels.shape
    records = []
    for region in regionprops(np.asarray(labels, np.int32)):
        r0, c0, r1, c1 = region.bbox
        mask = region.image
        area = float(region.area)
        diameter = float(region.equivalent_diameter_area)
        major, minor = float(region.axis_major_length), float(region.axis_minor_length)
        fmax, fmin = _feret(region.coords.astype(np.float64))
        contour = _contour(mask)
        outline = _outline_stats(contour, diameter)
        perimeter = outline.pop("perimeter")
        on_border = ((contour[:, 0] + r0 <= -0.25) | (contour[:, 0] + r0 >= rows - 0.75)
                     | (contour[:, 1] + c0 <= -0.25) | (contour[:, 1] + c0 >= cols - 0.75))
        outline.update(_affine_stats(np.argwhere(mask), contour, on_border))
        outline.update(_shading_stats(shading[r0:r1, c0:c1], grey[r0:r1, c0:c1], mask))
        hull_gap = region.image_convex & ~mask
        depth = ndi.distance_transform_edt(np.pad(hull_gap, 1))[1:-1, 1:-1] if hull_gap.any() else np.zeros(1)
        gap_lab, n_gap = ndi.label(hull_gap)
        deep = (np.asarray(ndi.maximum(depth, gap_lab, index=np.arange(1, n_gap + 1))) > 0.04 * diameter
                if n_gap else np.zeros(0, bool))
        inner = ndi.binary_erosion(mask, iterations=2)
        vals = grey[r0:r1, c0:c1][inner] if inner.any() else grey[r0:r1, c0:c1][mask]
        gvals = grad[r0:r1, c0:c1][inner] if inner.any() else grad[r0:r1, c0:c1][mask]
        orientation = (math.degrees(region.orientation) + 90.0) % 180.0
        records.append({
            "crystal_id": int(region.label),
            "area_um2": area * pixel_size**2,
            "equivalent_diameter_um": diameter * pixel_size,
            "major_axis_um": major * pixel_size,
            "minor_axis_um": minor * pixel_size,
            "feret_max_um": fmax * pixel_size,
            "feret_min_um": fmin * pixel_size,
            "aspect_ratio": major / max(minor, 1e-9),
            "orientation_deg": orientation,
            "touches_border": bool(r0 == 0 or c0 == 0 or r1 == rows or c1 == cols),
            "centroid_row": float(region.centroid[0]),
            "centroid_col": float(region.centroid[1]),
            "bbox": [int(r0), int(c0), int(r1), int(c1)],
            "solidity": float(region.solidity),
            "extent": float(region.extent),
            "circularity": 4 * math.pi * area / max(perimeter, 1e-9) ** 2,
            **outline,
            "convexity_defects": float(deep.sum()),
            "defect_depth": float(depth.max()) / max(diameter, 1e-9),
            "intensity_std": float(vals.std()) if len(vals) else 0.0,
            "gradient_mean": float(gvals.mean()) if len(gvals) else 0.0,
        })
    columns = ["crystal_id", "area_um2", "equivalent_diameter_um", "major_axis_um", "minor_axis_um", "feret_max_um",
               "feret_min_um", "aspect_ratio", "orientation_deg", "touches_border", "centroid_row", "centroid_col",
               "bbox"]
    columns += [d for d in DESCRIPTORS if d not in columns]
    return pd.DataFrame.from_records(records, columns=columns)
