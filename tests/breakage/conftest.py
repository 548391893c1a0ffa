"""Textures of unbroken material with known liberation, shared by the breakage tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest


def voronoi_grains(shape: Sequence[int], spacing: float, seed: int) -> np.ndarray:
    """Grain ids 0..n-1 of a Poisson-Voronoi texture with this mean grain spacing (voxels)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    n = max(2, int(round(np.prod(shape) / spacing**3)))
    centres = rng.random((n, 3)) * np.asarray(shape)
    grid = np.indices(tuple(shape)).reshape(3, -1).T
    _, idx = cKDTree(centres).query(grid)
    return idx.reshape(tuple(shape))


@pytest.fixture
def grain_texture() -> Callable[..., np.ndarray]:
    """``grain_texture(shape, spacing, fractions, seed)``: Voronoi grains, phases 1..N i.i.d. per grain."""

    def make(shape: Sequence[int], spacing: float, fractions: Sequence[float], seed: int) -> np.ndarray:
        grains = voronoi_grains(shape, spacing, seed)
        rng = np.random.default_rng(seed + 1)
        phase = rng.choice(np.arange(1, len(fractions) + 1), int(grains.max()) + 1, p=np.asarray(fractions))
        return phase[grains].astype(np.uint8)

    return make


@pytest.fixture
def grain_ids() -> Callable[..., np.ndarray]:
    """``grain_ids(shape, spacing, seed)``: the grain ids of a Poisson-Voronoi texture."""
    return voronoi_grains
