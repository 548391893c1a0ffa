"""Global reductions of :mod:`volmla.engine.reduce` on inputs at the edge of float64."""

from __future__ import annotations

import numpy as np

from volmla.engine.reduce import histogram, otsu


def test_otsu_of_huge_values_does_not_overflow() -> None:
    """Otsu's squared class means of values near 1e303 overflowed (a RuntimeWarning, an
    error under this suite); the threshold is taken on bin indices, the same bin."""
    rng = np.random.default_rng(0)
    small = np.concatenate([rng.normal(100, 5, 4000), rng.normal(300, 5, 4000)]).reshape(8, 10, 100)
    reference = otsu(histogram(small))
    assert 100 < reference < 300  # in the gap (its first bin: Otsu is flat across an empty gap)
    assert np.isclose(otsu(histogram(small * 1e300)), reference * 1e300, rtol=1e-3)
