"""Closed-form eigenvalues of symmetric 3 x 3 fields against LAPACK (numpy.linalg.eigvalsh)."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.segment._eigen import symmetric_eigenvalues


def _reference(elements: list[np.ndarray]) -> np.ndarray:
    a, b, c, d, e, f = (np.asarray(x, np.float64) for x in elements)
    m = np.stack([np.stack([a, b, c], -1), np.stack([b, d, e], -1), np.stack([c, e, f], -1)], -2)
    return np.moveaxis(np.linalg.eigvalsh(m)[..., ::-1], -1, 0)


def test_random_fields_match_lapack(rng: np.random.Generator) -> None:
    elements = [rng.standard_normal((7, 8, 9)).astype(np.float32) * 10 for _ in range(6)]
    got = symmetric_eigenvalues(elements)
    assert got.shape == (3, 7, 8, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(elements), atol=1e-4 * 30)
    assert (np.diff(got, axis=0) <= 0).all()  # decreasing


@pytest.mark.parametrize("case", ["diagonal", "scalar", "two equal", "zero", "rank one"])
def test_degenerate_matrices(case: str) -> None:
    v = np.array([1.0, -2.0, 0.5])
    matrix = {
        "diagonal": np.diag([1.0, 3.0, 2.0]),
        "scalar": np.eye(3) * 4.0,
        "two equal": np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]),
        "zero": np.zeros((3, 3)),
        "rank one": np.outer(v, v),
    }[case]
    elements = [np.full((1, 1, 1), matrix[i, j], np.float32) for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))]
    got = symmetric_eigenvalues(elements).ravel()
    np.testing.assert_allclose(got, np.linalg.eigvalsh(matrix)[::-1], atol=1e-5)


def test_matches_scikit_image_on_a_hessian(rng: np.random.Generator) -> None:
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    image = rng.standard_normal((20, 21, 22)).astype(np.float32)
    hessian = hessian_matrix(image, sigma=1.5, use_gaussian_derivatives=False)
    np.testing.assert_allclose(symmetric_eigenvalues(hessian), hessian_matrix_eigvals(hessian), atol=1e-5)
