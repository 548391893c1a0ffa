"""The opt-in steps of phases by region (``per_particle``, ``refine``): chunk invariant and doing what they say."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.segment.pooled import _particle_volumes, _small_particles, label_levels, region_phases


def _planes(phases: np.ndarray) -> np.ndarray:
    n = phases.shape[0]
    labels = np.zeros(phases.shape, np.uint8)
    for z in (n // 4, n // 2, 3 * n // 4):
        labels[z] = phases[z] + 1
    return labels


@pytest.mark.parametrize("chunks", [(1, 32, 32), (5, 7, 11)])
def test_opt_in_steps_are_chunk_invariant(chunks: tuple[int, int, int]) -> None:
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=32, seed=2, oversample=1, level="hard")
    labels = _planes(ore.phases)
    opts = {"per_particle": True, "refine": True, "radius": 3}
    whole = region_phases(ore.intensity, ore.particles, labels, **opts).compute()
    chunked = region_phases(*(da.from_array(a, chunks=chunks) for a in (ore.intensity, ore.particles, labels)),
                            **opts)
    assert (whole == chunked.compute()).all()
    inside = ore.particles > 0
    assert (whole[inside] == ore.phases[inside]).mean() > 0.85
    # the steps change something on this phantom (small particles, two close phases)
    assert (whole != region_phases(ore.intensity, ore.particles, labels, radius=3).compute()).any()


def test_small_particles_are_those_whose_size_asks_for_a_smaller_region() -> None:
    volumes = np.array([0, 10, 904, 906, 5000])  # r_eq = 6 at ~905 voxels: half of it is 3
    assert _small_particles(volumes, 3).tolist() == [1, 2]
    assert _small_particles(volumes, 4).tolist() == [1, 2, 3]
    part = np.zeros((4, 4, 4), np.uint32)
    part[0, :2] = 2
    assert _particle_volumes(part).tolist() == [56, 0, 8]


def test_refine_remeasures_a_level_the_labels_got_wrong() -> None:
    """Labels whose phase-2 level is off by 0.6 noise sigma (a few biased voxels): the
    refined levels come from the grains themselves, and the phases follow."""
    rng = np.random.default_rng(7)
    ph = np.zeros((28, 28, 28), np.uint8)
    ph[3:-3, 3:-3, 3:14] = 1
    ph[3:-3, 3:-3, 14:-3] = 2
    img = (np.array([1000.0, 2000.0, 2020.0])[ph] + rng.normal(0, 10, ph.shape)).astype(np.float32)
    part = (ph > 0).astype(np.uint32)
    lv = label_levels(img, _planes(ph), particles=part)
    wrong = lv._replace(levels={**lv.levels, 2: lv.levels[2] + 6.0})
    inside = part > 0
    plain = region_phases(img, part, levels=wrong, radius=3).compute()
    refined = region_phases(img, part, levels=wrong, radius=3, refine=True).compute()
    assert ((refined != ph) & inside).sum() < ((plain != ph) & inside).sum()


def test_flags_are_checked() -> None:
    img = np.zeros((8, 8, 8), np.float32)
    part = np.ones((8, 8, 8), np.uint32)
    with pytest.raises(VolmlaError, match="per_particle must be True or False"):
        region_phases(img, part, np.ones((8, 8, 8), np.uint8), per_particle="yes")  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="refine must be True or False"):
        region_phases(img, part, np.ones((8, 8, 8), np.uint8), refine=1)  # type: ignore[arg-type]
