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
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["DESCRIPTORS", "crystal_table", "feret_min"]

DESCRIPTORS: tuple[str, ...] = (
    "solidity", "extent", "circularity", "aspect_ratio", "corners", "straight_fraction", "max_turn",
    "radial_cv", "convexity_defects", "defect_depth", "intensity_std", "gradient_mean", "turn_top4", "turn_top8",
    "polygon_vertices", *(f"radial_h{k}" for k in range(2, 9)),
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
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    proj = hull @ normals.T
    return float((proj.max(axis=0) - proj.min(axis=0)).min())


def _feret(coords: np.ndarray) -> tuple[float, float]:
    """Maximum and minimum Feret diameters of a pixel set (each pixel a unit square)."""
    hull = _hull(coords)
    corners = (hull[:, None, :] + np.array([[0, 0], [0, 1], [1, 0], [1, 1]])[None]).reshape(-1, 2)
    outline = _hull(corners)
    diff = outline[:, None, :] - outline[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=-1).max())), feret_min(outline)


def _outline_stats(mask: np.ndarray, diameter: float) -> dict[str, float]:
    """Turning-angle, radial and polygon descriptors and the perimeter of one crystal's outline."""
    from skimage.measure import approximate_polygon, find_contours

    out = dict.fromkeys(("corners", "straight_fraction", "max_turn", "radial_cv", "perimeter", "turn_top4",
                         "turn_top8", "polygon_vertices", *(f"radial_h{k}" for k in range(2, 9))), 0.0)
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if not contours:
        return out
    c = max(contours, key=len)
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
    ahead, back = np.roll(pts, -step, axis=0) - pts, pts - np.roll(pts, step, axis=0)
    turn = np.arctan2(back[:, 0] * ahead[:, 1] - back[:, 1] * ahead[:, 0], (back * ahead).sum(axis=1))
    mag = np.abs(turn)
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
    rows, cols = labels.shape
    records = []
    for region in regionprops(np.asarray(labels, np.int32)):
        r0, c0, r1, c1 = region.bbox
        mask = region.image
        area = float(region.area)
        diameter = float(region.equivalent_diameter_area)
        major, minor = float(region.axis_major_length), float(region.axis_minor_length)
        fmax, fmin = _feret(region.coords.astype(np.float64))
        outline = _outline_stats(mask, diameter)
        perimeter = outline.pop("perimeter")
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
