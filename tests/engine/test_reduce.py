"""Global reductions of :mod:`volmla.engine.reduce` on inputs at the edge of float64."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.engine.reduce import histogram, histogram_modes, otsu


def test_otsu_of_huge_values_does_not_overflow() -> None:
    """Otsu's squared class means of values near 1e303 overflowed (a RuntimeWarning, an
    error under this suite); the threshold is taken on bin indices, the same bin."""
    rng = np.random.default_rng(0)
    small = np.concatenate([rng.normal(100, 5, 4000), rng.normal(300, 5, 4000)]).reshape(8, 10, 100)
    reference = otsu(histogram(small))
    assert 100 < reference < 300  # in the gap (its first bin: Otsu is flat across an empty gap)
    assert np.isclose(otsu(histogram(small * 1e300)), reference * 1e300, rtol=1e-3)


def test_histogram_modes_take_the_darkest_solid_mode() -> None:
    """A bright phase abundant enough that Otsu's threshold sets it apart: the solid mode
    is the darker solid's peak, not the highest bin above the threshold."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(10000, 800, 60000), rng.normal(21000, 900, 15000),
                        rng.normal(42000, 900, 9000), rng.uniform(10000, 42000, 4000)])  # + mixtures
    hist = histogram(x.clip(0, 65535).astype(np.uint16).reshape(8, 11, 1000))
    assert otsu(hist) > 26000
    void, solid = histogram_modes(hist)
    assert abs(void - 10000) < 400 and abs(solid - 21000) < 400


@pytest.mark.parametrize("dark", [0, 10])
def test_histogram_modes_ignore_bumps_that_are_not_modes(dark: int) -> None:
    """A broad solid in exact integer bins, with a faint darker phase (``dark`` voxels per
    mille of the solid's, its peak 6 % of the solid mode's): the highest bin above Otsu's
    threshold stays the solid mode."""
    rng = np.random.default_rng(2)
    solid = rng.normal(30000, 3000, 20000)
    bump = rng.normal(20000, 500, dark * 20)
    x = np.concatenate([rng.normal(10000, 800, 60000), solid, bump])
    _, found = histogram_modes(histogram(x.clip(0, 65535).astype(np.uint16).reshape(1, 1, -1)))
    assert abs(found - 30000) < 1500
