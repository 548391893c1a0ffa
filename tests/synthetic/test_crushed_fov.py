"""``crushed_ore(field_of_view=True)``: the scan written as a reconstruction does, the truth of the whole particles."""

from __future__ import annotations

import numpy as np

from volmla.preprocess.fov import find_field_of_view
from volmla.synthetic import crushed_ore


def test_the_scan_is_zero_outside_the_circle_and_cut_particles_are_border() -> None:
    plain = crushed_ore(shape=48, seed=2)
    ore = crushed_ore(shape=48, seed=2, field_of_view=True)
    y, x = np.mgrid[:48, :48]
    outside = np.hypot(y - 23.5, x - 23.5) >= 24
    assert (ore.intensity[:, outside] == 0).all() and (ore.noiseless[:, outside] == 0).all()
    np.testing.assert_array_equal(ore.intensity[:, ~outside], plain.intensity[:, ~outside])
    np.testing.assert_array_equal(ore.particles, plain.particles)  # the sample is whole; only the scan is cut
    cut = np.unique(ore.particles[:, outside])
    flagged = set(ore.table.particle_id[ore.table.touches_border].tolist())
    assert set(cut[cut > 0].tolist()) <= flagged
    assert flagged >= set(plain.table.particle_id[plain.table.touches_border].tolist())
    assert ore.params["field_of_view"] == {"center_yx": [23.5, 23.5], "radius": 24.0, "fill": 0.0}
    assert plain.params["field_of_view"] is None
    fov = find_field_of_view(ore.intensity)
    assert fov is not None and abs(fov.radius - 24.0) < 0.6
