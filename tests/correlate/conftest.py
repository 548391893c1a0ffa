"""Fixtures shared by the correlate tests: a small phantom and one simulated face."""

from __future__ import annotations

import pytest

NAMES = {1: "quartz", 2: "feldspar", 3: "pyrite"}


@pytest.fixture(scope="session")
def ph():
    """A small phantom with grains small enough that every face holds every phase."""
    from volmla.synthetic import phantom

    p = phantom(shape=(48, 64, 64), seed=0, voxel_size=10.0, chunks=32, esd_range=(8, 20), solid_fraction=0.4)
    return p.intensity.persist(), p.phases.persist()


@pytest.fixture(scope="session")
def face_maps(ph):
    """One face (z = 24) of the phantom as simulated element maps."""
    from volmla.synthetic import simulate_element_maps

    _, truth = ph
    face = truth.data[24].compute()
    return simulate_element_maps(face, voxel_size_um=10.0, phase_names=NAMES, plane=24, factor=2, seed=3)
