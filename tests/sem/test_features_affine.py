"""Affine-normalised shape, border-aware outline and facet-shading descriptors of crystals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import polygon

from volmla.sem import DESCRIPTORS, crystal_table
from volmla.sem.features import AFFINE_DESCRIPTORS, min_parallelogram_area

SHAPE = (400, 400)
CENTRE = np.array([200.0, 200.0])
# a shear and an unequal scaling with a rotation: what a tilted stage (locally) does, exaggerated
WARP = np.array([[1.25, 0.45], [-0.2, 0.8]])


def _hexagon() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 7)[:-1] + 0.2
    return np.stack([60 * np.sin(t), 60 * np.cos(t)], axis=1)


def _rhombus() -> np.ndarray:
    return np.array([[0.0, 80.0], [45.0, 0.0], [0.0, -80.0], [-45.0, 0.0]])


def _ellipse() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    return np.stack([40 * np.sin(t), 75 * np.cos(t)], axis=1) @ np.array([[0.8, 0.6], [-0.6, 0.8]])


def _row(vertices: np.ndarray, warp: np.ndarray | None = None, offset: np.ndarray = CENTRE) -> pd.Series:
    """Descriptors of the crystal rasterised from polygon ``vertices`` (row, col), optionally warped."""
    v = vertices @ warp.T if warp is not None else vertices
    labels = np.zeros(SHAPE, np.int32)
    rr, cc = polygon(v[:, 0] + offset[0], v[:, 1] + offset[1], SHAPE)
    labels[rr, cc] = 1
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    image = np.where(labels > 0, 0.5 + 0.001 * yy, 0.1).astype(np.float32)
    return crystal_table(labels, image, pixel_size=1.0).iloc[0]


def test_descriptors_are_listed_once_and_computed() -> None:
    assert len(set(DESCRIPTORS)) == len(DESCRIPTORS) and set(AFFINE_DESCRIPTORS) <= set(DESCRIPTORS)
    row = _row(_hexagon())
    assert np.isfinite(row[list(DESCRIPTORS)].to_numpy(np.float64)).all()


def test_min_parallelogram_area() -> None:
    square = np.array([[0, 0], [0, 3], [3, 3], [3, 0]], float)
    assert min_parallelogram_area(square) == pytest.approx(9.0)
    hexagon = np.stack([np.sin(np.arange(6) * np.pi / 3), np.cos(np.arange(6) * np.pi / 3)], axis=1)
    hexagon_area = 1.5 * np.sqrt(3)
    assert hexagon_area / min_parallelogram_area(hexagon) == pytest.approx(0.75, abs=1e-6)
    # an affine map scales the area by its determinant, so the filled fraction stays
    warped = hexagon @ WARP.T
    assert min_parallelogram_area(warped) == pytest.approx(abs(np.linalg.det(WARP)) * min_parallelogram_area(hexagon))
    assert min_parallelogram_area(square[:2]) == 0.0


@pytest.mark.parametrize("shape", [_hexagon, _rhombus, _ellipse])
def test_affine_descriptors_are_invariant_to_a_known_affine_map(shape: object) -> None:
    vertices = shape()  # type: ignore[operator]
    plain, warped = _row(vertices), _row(vertices, WARP)
    for name in ("affine_ellipse_iou", "parallelogram_fill", "hull_parallelogram_fill"):
        assert warped[name] == pytest.approx(plain[name], abs=0.03), name
    assert warped["affine_turn_top4"] == pytest.approx(plain["affine_turn_top4"], abs=0.06)  # corners pixelate
    assert warped["affine_radial_cv"] == pytest.approx(plain["affine_radial_cv"], abs=0.015)
    assert warped["affine_corners"] == plain["affine_corners"]
    # the plain descriptors do change under the map (what the affine ones are for)
    assert abs(warped["aspect_ratio"] / plain["aspect_ratio"] - 1) > 0.1


def test_affine_descriptors_tell_the_forms_apart() -> None:
    rhombus, hexagon, ellipse = _row(_rhombus(), WARP), _row(_hexagon(), WARP), _row(_ellipse(), WARP)
    assert rhombus["parallelogram_fill"] > 0.97  # a parallelogram fills its own
    assert hexagon["parallelogram_fill"] == pytest.approx(0.75, abs=0.03)
    assert ellipse["parallelogram_fill"] == pytest.approx(np.pi / 4, abs=0.03)
    assert ellipse["affine_ellipse_iou"] > 0.98 and ellipse["affine_radial_cv"] < 0.01
    assert hexagon["affine_ellipse_iou"] < 0.95 and rhombus["affine_ellipse_iou"] < 0.9
    assert rhombus["affine_corners"] == 4 and hexagon["affine_corners"] == 6 and ellipse["affine_corners"] == 0


def test_border_cut_outline_leaves_out_the_border() -> None:
    inside, cut = _row(_ellipse()), _row(_ellipse(), offset=np.array([30.0, 200.0]))  # cut by row 0
    assert inside["border_fraction"] == 0 and 0.2 < cut["border_fraction"] < 0.5
    assert inside["free_corners"] == 0 and inside["free_max_turn"] == pytest.approx(inside["affine_max_turn"])
    assert cut["corners"] >= 2  # where the outline meets the border
    assert cut["free_corners"] == 0 and cut["free_max_turn"] < 0.3


def test_facets_shade_flat_and_domes_smoothly() -> None:
    yy, xx = np.mgrid[-60:61, -60:61].astype(np.float64)
    r = np.hypot(yy, xx)
    inside = r < 55
    labels = np.zeros((121, 242), np.int32)
    labels[:, :121][inside], labels[:, 121:][inside] = 1, 2
    theta = np.arctan2(yy, xx)
    facets = 0.4 + 0.1 * np.floor((theta + np.pi) / (np.pi / 3))  # six flat facets
    dome = 0.4 + 0.5 * (r / 55) ** 2  # brightening smoothly towards the rim
    image = np.full(labels.shape, 0.1)
    image[:, :121][inside], image[:, 121:][inside] = facets[inside], dome[inside]
    table = crystal_table(labels, image, pixel_size=1.0).set_index("crystal_id")
    # facets: the gradient lives on the ridges only; a dome's everywhere
    assert table.loc[1, "shading_gradient_p50"] < 0.05 and table.loc[2, "shading_gradient_p50"] > 0.5
    assert table.loc[1, "shading_gradient_p10"] < 0.01 < 0.2 < table.loc[2, "shading_gradient_p10"]
    assert table.loc[1, "shading_flat_fraction"] > 0.8 and table.loc[1, "grey_iqr"] > 0.2
