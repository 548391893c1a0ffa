"""The models volmla ships (``builtin:NAME``): found, checked, and right on scans they never saw."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.engine.cluster import compute
from volmla.errors import VolmlaError
from volmla.particles import label_particles
from volmla.particles.evaluate import match_particles
from volmla.segment import PARTICLE_CLASSES
from volmla.segment.infer import segment
from volmla.segment.sessions import BUILTIN_MODELS, inspect_model, resolve_model
from volmla.synthetic import crushed_ore


def test_every_builtin_model_ships_and_is_a_volmla_unet() -> None:
    for name in BUILTIN_MODELS:
        path = resolve_model(f"builtin:{name}")
        assert path.is_file() and path.stat().st_size < 1_000_000
        assert not path.with_name(path.name + ".data").exists()  # weights inside the one file
    info = inspect_model("builtin:particles")
    assert info.classes == PARTICLE_CLASSES and info.rescale == "modes" and info.dim == 3


def test_an_unknown_builtin_name_is_refused_in_one_line() -> None:
    with pytest.raises(VolmlaError, match="no built-in model 'grains': volmla ships builtin:particles"):
        resolve_model("builtin:grains")


@pytest.fixture(scope="module")
def ore():
    """A hard crushed-ore scan of a seed the built-in model was not trained on (it saw seed 100)."""
    return crushed_ore(shape=64, seed=4, level="hard")


def _map(volume) -> np.ndarray:
    return np.asarray(compute([segment(volume, model="builtin:particles").phases], desc="segment")[0])


def test_builtin_particles_beat_the_grey_level_default_on_an_unseen_scan(ore) -> None:
    learned = np.asarray(label_particles(_map(ore.intensity), threshold="interior").labels)
    default = np.asarray(label_particles(ore.intensity).labels)
    got = match_particles(learned, ore.particles)
    base = match_particles(default, ore.particles)
    assert got.matched_fraction >= 0.83  # 0.873 here (the default: 0.810); 0.92 over 128^3 scans
    assert got.matched_fraction >= base.matched_fraction
    assert abs(got.count_error) <= 0.1


def test_builtin_particle_map_ignores_the_scans_intensity_scale(ore) -> None:
    a = _map(ore.intensity)
    other = ore.intensity.astype(np.float32) * 0.01 - 40.0  # another instrument's units, negative values
    b = _map(other)
    assert (a == b).mean() > 0.995
    assert set(np.unique(a)) == {0, 1, 2}


def test_a_phase_contact_inside_a_particle_is_not_drawn_as_a_particle_boundary() -> None:
    """A bright sulphide against quartz is a step as large as quartz against void: still one particle.

    Splitting a locked particle at a phase contact makes both minerals look liberated,
    the error that matters most downstream.
    """
    from volmla.segment import particle_targets

    ore = crushed_ore(shape=80, seed=4, level="easy")  # large particles with pyrite grains inside
    classes = _map(ore.intensity)
    ph = ore.phases
    contact = np.zeros(ph.shape, bool)
    for axis in range(3):
        for shift in (1, -1):
            nb = np.roll(ph, shift, axis=axis)
            contact |= (nb != ph) & (nb > 0) & (ph > 0)
    inner = particle_targets(ore.particles) == 1
    for phase in (1, 2, 3):
        at = inner & contact & (ph == phase)
        assert at.sum() > 500
        assert (classes[at] == 2).mean() < 0.1  # 0.034 / 0.017 / 0.037 here (a model of the hard level alone: 0.29 on pyrite)
    got = match_particles(np.asarray(label_particles(classes, threshold="interior").labels), ore.particles)
    assert got.splits == 0 and got.matched_fraction == 1.0


def test_the_command_line_chain_with_the_builtin_model(tmp_path, ore) -> None:
    """``segment --model builtin:particles`` then ``particles MAP``: the map is read as one."""
    from volmla.cli import main
    from volmla.io import open_volume, write_volume

    write_volume(ore.intensity, tmp_path / "scan.zarr", kind="intensity", voxel_size=2.0, chunks=32)
    assert main(["-q", "segment", str(tmp_path / "scan.zarr"), "--model", "builtin:particles",
                 "-o", str(tmp_path / "map.zarr")]) == 0
    assert main(["-q", "particles", str(tmp_path / "map.zarr"), "-o", str(tmp_path / "p.zarr")]) == 0
    particles = open_volume(tmp_path / "p.zarr")
    assert particles.attrs["provenance"][-1]["threshold"] == "interior"
    assert match_particles(np.asarray(particles.data), ore.particles).matched_fraction >= 0.83
