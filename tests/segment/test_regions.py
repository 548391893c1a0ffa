"""Grain-coherent cleaning (volmla.segment.regions.clean_phases)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.measure.fractions import PhaseLevels
from volmla.segment.regions import clean_phases

GREY = np.array([100.0, 1000.0, 1030.0, 3000.0])  # void, quartz, feldspar (close), pyrite (bright)
LEVELS = PhaseLevels({0: 100.0, 1: 1000.0, 2: 1030.0, 3: 3000.0}, 10.0, {})


def _cube() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ph = np.zeros((14, 14, 14), np.uint8)
    ph[2:12, 2:12, 2:12] = 1
    ph[5, 5, 5] = 2  # a 1-voxel feldspar speckle (grey within noise of quartz)
    ph[8:10, 8:10, 8] = 3  # a 4-voxel pyrite inclusion
    img = GREY[ph] + rng.normal(0, 10, ph.shape)
    img[5, 5, 5] = 1012.0
    return ph, (ph > 0).astype(np.uint32), img.astype(np.float32)


def test_speckle_removed_inclusion_kept() -> None:
    ph, part, img = _cube()
    out = clean_phases(ph, part, img, levels=LEVELS).compute()
    assert out[5, 5, 5] == 1
    assert (out[8:10, 8:10, 8] == 3).all()
    assert (out[ph == 1] == 1).all()
    # without the grain rule the speckle stays
    kept = clean_phases(ph, part, img, levels=LEVELS, min_grain=0).compute()
    assert kept[5, 5, 5] == 2


def test_large_grain_kept_and_small_dark_one_removed() -> None:
    ph, part, img = _cube()
    ph[4:8, 4:8, 6:8] = 2  # 32 voxels, away from the shell: below 40, within noise of quartz -> quartz
    img[ph == 2] = 1025.0  # within 3 noise sigmas (30) of quartz
    out = clean_phases(ph, part, img, levels=LEVELS).compute()
    assert (out[4:8, 4:8, 6:8] == 1).all()
    out = clean_phases(ph, part, img, levels=LEVELS, min_grain=20).compute()  # a resolved grain stays
    assert (out[4:8, 4:8, 6:8] == 2).all()


def test_shell_follows_the_interior_where_grey_cannot_tell() -> None:
    """A surface voxel of quartz in front of feldspar (levels within noise) follows the
    feldspar behind it; a pyrite voxel in front of quartz keeps its phase (brighter than
    any quartz-void mixture)."""
    ph, part, img = _cube()
    ph[3:7, 3:7, 9:11] = 2  # feldspar right behind the x=11 surface
    img[ph == 2] = 1030.0
    ph[8:10, 8:10, 8] = 1
    ph[4:6, 8:10, 2] = 3  # pyrite on the x=2 surface, quartz behind it
    img[4:6, 8:10, 2] = 3000.0
    out = clean_phases(ph, part, img, levels=LEVELS, min_grain=0).compute()
    assert (out[3:7, 3:7, 11] == 2).all()
    assert (out[4:6, 8:10, 2] == 3).all()
    assert (out[ph == 1][:10] == 1).all()


def test_shell_rim_goes_to_the_interior_phase() -> None:
    """A pyrite particle whose surface voxels were classified quartz (their grey is a
    pyrite-void mixture) is pyrite again; a quartz particle keeps its own shell."""
    ph = np.zeros((16, 16, 16), np.uint8)
    ph[3:13, 3:13, 3:13] = 3
    rim = ph > 0
    core = np.zeros_like(rim)
    core[4:12, 4:12, 4:12] = True
    ph[rim & ~core] = 1
    img = np.where(core, 3000.0, np.where(rim, 1000.0, 100.0)).astype(np.float32)
    out = clean_phases(ph, rim.astype(np.uint32), img, levels=LEVELS, min_grain=0).compute()
    # every rim voxel with an interior (pyrite) neighbour opposite the void: the faces
    assert (out[core] == 3).all()
    faces = rim & ~core
    faces[3, 3, :] = faces[3, :, 3] = faces[:, 3, 3] = False  # edges and corners: no single interior voxel
    faces[12, 12, :] = faces[12, :, 12] = faces[:, 12, 12] = faces[3, 12, :] = faces[12, 3, :] = False
    faces[3, :, 12] = faces[12, :, 3] = faces[:, 3, 12] = faces[:, 12, 3] = False
    assert (out[faces] == 3).all()
    # a bright voxel (not a pyrite-void mixture) on the shell is not reassigned
    img2 = img.copy()
    img2[3, 7, 7] = 5000.0
    out2 = clean_phases(ph, rim.astype(np.uint32), img2, levels=LEVELS, min_grain=0).compute()
    assert out2[3, 7, 7] == 1


@pytest.mark.parametrize("chunks", [(32, 32, 32), (1, 32, 32), (5, 7, 11)])
def test_chunk_invariant_on_a_phantom(chunks: tuple[int, int, int]) -> None:
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=32, seed=2, oversample=1, level="hard")
    rng = np.random.default_rng(0)
    ph = ore.phases.copy()
    flip = (rng.random(ph.shape) < 0.08) & (ore.particles > 0)
    ph[flip] = rng.integers(1, 4, int(flip.sum()))
    whole = clean_phases(ph, ore.particles, ore.intensity).compute()
    chunked = clean_phases(*(da.from_array(a, chunks=chunks) for a in (ph, ore.particles, ore.intensity))).compute()
    assert (whole == chunked).all()
    inside = ore.particles > 0
    assert (whole[inside] == ore.phases[inside]).mean() > (ph[inside] == ore.phases[inside]).mean()


def test_bad_options() -> None:
    ph, part, img = _cube()
    with pytest.raises(VolmlaError, match="min_grain"):
        clean_phases(ph, part, img, min_grain=-1)
    with pytest.raises(VolmlaError, match="contrast"):
        clean_phases(ph, part, img, contrast=float("nan"))
    with pytest.raises(VolmlaError, match="same shape"):
        clean_phases(ph, part, img[:, :, :3])


def _task_sizes(array: da.Array) -> list[int]:
    import cloudpickle

    return sorted(len(cloudpickle.dumps(task)) for task in dict(array.__dask_graph__()).values())


def test_grain_decisions_travel_once_not_in_every_block_task() -> None:
    # many small grains, many blocks: the decided grains' table is one key of the graph
    rng = np.random.default_rng(3)
    ph = np.ones((32, 32, 32), np.uint8)
    speck = rng.random(ph.shape) < 0.05
    ph[speck] = 2
    img = GREY[ph] + rng.normal(0, 10, ph.shape)
    img[speck] = 1010.0
    part = np.ones(ph.shape, np.uint32)
    out = clean_phases(da.from_array(ph, chunks=8), da.from_array(part, chunks=8),
                       da.from_array(img.astype(np.float32), chunks=8), levels=LEVELS)
    sizes = _task_sizes(out)
    assert sizes[-2] * 3 < sizes[-1]  # the grain ids: one key; the 64 block tasks stay small
    assert (out.compute()[speck] == 1).mean() > 0.9
