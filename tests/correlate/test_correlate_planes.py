"""Plane geometry: tilted planes (``volmla.correlate.planes``)."""

from __future__ import annotations

import numpy as np

from volmla import correlate as co


def test_plane_heights():
    h = co.plane_heights((5, 7), index=3, tilt_deg=(0.0, 0.0))
    np.testing.assert_array_equal(h, 3.0)
    h = co.plane_heights((5, 7), index=3, tilt_deg=(45.0, 0.0), voxel_size_um=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(h[:, 0], 3.0 + (np.arange(5) - 2) / 2.0)
    assert h[2, 3] == 3.0
