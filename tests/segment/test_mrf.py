"""The Potts field over the phases of a contrast group (volmla.segment.mrf)."""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.segment.mrf import auto_beta, potts_phases
from volmla.segment.pooled import LabelLevels, region_phases

LEVELS = LabelLevels({0: 0.0, 1: 100.0, 2: 110.0, 3: 300.0}, 10.0, 0.0, {0: 999, 1: 999, 2: 999, 3: 999})
GREY = np.array([0.0, 100.0, 110.0, 300.0])


def _voxelwise(c: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The per-voxel maximum-likelihood phase (the nearest level) inside particles."""
    best = np.argmin(np.abs(c[..., None] - GREY[None, None, None, 1:]), axis=-1) + 1
    return np.where(part > 0, best, 0).astype(np.uint8)


def _two_grains(seed: int, shape: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One particle of two grains 1 noise sigma apart (a wavy boundary), a small bright
    inclusion, and a second particle of the other phase touching the first."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((shape,) * 3, np.uint8)
    part = np.zeros((shape,) * 3, np.uint32)
    part[2:-2, 2:-2, 2:-6] = 1
    part[2:-2, 2:-2, -6:-2] = 2
    z, y, _ = np.indices(truth.shape)
    x = np.arange(shape)[None, None, :]
    edge = shape // 2 - 3 + np.rint(2 * np.sin(z / 3.0) * np.cos(y / 4.0)).astype(int)
    truth[part == 1] = np.where(x < edge, 1, 2)[part == 1]
    truth[part == 2] = 1
    truth[8:10, 8:10, 5:7] = 3
    c = GREY[truth] + rng.normal(0, 10, truth.shape)
    return c, part, truth


@pytest.mark.parametrize("init", ["phases", "voxel"])
@pytest.mark.parametrize("chunks", [(5, 7, 6), (24, 1, 24), (11, 24, 9)])
def test_same_for_every_chunking(chunks: tuple[int, int, int], init: Literal["phases", "voxel"]) -> None:
    c, part, truth = _two_grains(0)
    # grey half-way between the two levels: every voxel is undecided and the field
    # carries the most information across chunk borders (a halo one short shows)
    rng = np.random.default_rng(9)
    c = np.where(truth == 3, c, 105.0 + rng.normal(0, 2.0, c.shape))
    start = _voxelwise(c, part)
    whole = potts_phases(c, part, start, levels=LEVELS, iterations=4, init=init).compute()
    out = potts_phases(da.from_array(c, chunks=chunks), da.from_array(part, chunks=chunks),
                       da.from_array(start, chunks=chunks), levels=LEVELS, iterations=4,
                       init=init)
    assert out.chunks == da.from_array(part, chunks=chunks).chunks
    np.testing.assert_array_equal(out.compute(), whole)
    assert (whole != start).sum() > 500  # the field did change something


def test_field_beats_the_voxels_at_one_sigma() -> None:
    c, part, truth = _two_grains(1)
    start = _voxelwise(c, part)
    inside = part > 0
    per_voxel = (start != truth)[inside].mean()
    assert per_voxel > 0.25  # 1 sigma of contrast: ~31 % wrong voxel by voxel
    for init in ("phases", "voxel"):
        out = potts_phases(c, part, start, levels=LEVELS, init=init).compute()
        assert (out != truth)[inside].mean() < 0.5 * per_voxel
        assert (out == 3).sum() == 8  # the bright inclusion is another group: kept
        assert (out[~inside] == 0).all()


def test_flat_single_phase_block_stays_single_phase() -> None:
    rng = np.random.default_rng(2)
    part = np.zeros((20, 20, 20), np.uint32)
    part[2:-2, 2:-2, 2:-2] = 7
    truth = np.where(part > 0, 1, 0).astype(np.uint8)
    c = GREY[truth] + rng.normal(0, 10, truth.shape)
    out = potts_phases(c, part, truth, levels=LEVELS).compute()
    flipped = out != truth
    assert flipped.mean() < 0.002  # a voxel 3 sigmas off may go: the price of 6 pairs is ~2.5 sigma^2
    assert not (flipped[1:] & flipped[:-1]).any() and not (flipped[:, 1:] & flipped[:, :-1]).any()
    assert not (flipped[:, :, 1:] & flipped[:, :, :-1]).any()  # never a grain of two


def test_flat_particles_stay_free_after_cleaning() -> None:
    rng = np.random.default_rng(5)
    ph = np.zeros((24, 24, 40), np.uint8)
    ph[2:22, 2:22, 2:19] = 1
    ph[2:22, 2:22, 21:38] = 2  # two particles 2 voxels apart, one phase each
    part = np.where(ph == 1, 1, np.where(ph == 2, 2, 0)).astype(np.uint32)
    img = np.array([100.0, 1000.0, 1010.0])[ph] + rng.normal(0, 10, ph.shape)
    labels = np.zeros_like(ph)
    labels[12] = ph[12] + 1
    out = region_phases(img.astype(np.float32), part, labels, mrf=True).compute()
    for k in (1, 2):
        # free by far (the rule is 0.99): at most a lone voxel > 3 sigma off, which the
        # cleaning keeps as a possible inclusion
        assert (out[part == k] == k).mean() > 0.999
    assert (out[part == 0] == 0).all()


def test_no_price_across_particles() -> None:
    rng = np.random.default_rng(3)
    part = np.zeros((16, 16, 16), np.uint32)
    part[2:-2, 2:-2, 2:10] = 1
    part[2:-2, 2:-2, 10] = 2  # a one-voxel sheet touching particle 1: all its voxels are shell
    truth = np.where(part == 1, 2, np.where(part == 2, 1, 0)).astype(np.uint8)
    c = GREY[truth] + rng.normal(0, 1, truth.shape)
    # with 26 neighbours a sheet voxel has 8 in its particle and 9 across the contact:
    # counted across particles, the price would pull the sheet over to phase 2
    out = potts_phases(c, part, truth, levels=LEVELS, beta=3.0, connectivity=26).compute()
    np.testing.assert_array_equal(out, truth)


def test_auto_beta_scales_with_the_contrast_squared() -> None:
    b1 = auto_beta(LEVELS)
    b3 = auto_beta(LEVELS._replace(levels={0: 0.0, 1: 100.0, 2: 130.0}))
    assert b3 == pytest.approx(9 * b1)
    assert auto_beta(LEVELS, connectivity=26) < b1
    assert auto_beta(LEVELS._replace(levels={0: 0.0, 1: 100.0, 3: 300.0})) == 0.0


def test_region_phases_with_the_field() -> None:
    rng = np.random.default_rng(4)
    ph = np.zeros((24, 24, 24), np.uint8)
    ph[2:22, 2:22, 2:12] = 1
    ph[2:22, 2:22, 12:22] = 2
    img = np.array([100.0, 1000.0, 1010.0])[ph] + rng.normal(0, 10, ph.shape)
    labels = np.zeros_like(ph)
    labels[12] = ph[12] + 1
    part = (ph > 0).astype(np.uint32)
    out = region_phases(img.astype(np.float32), part, labels, mrf=True).compute()
    assert (out != ph).mean() < 0.02
    with pytest.raises(VolmlaError, match="mrf must be True or False"):
        region_phases(img.astype(np.float32), part, labels, mrf=1)  # type: ignore[arg-type]


def test_refuses_bad_options() -> None:
    c, part, truth = _two_grains(0)
    with pytest.raises(VolmlaError, match="iterations must be"):
        potts_phases(c, part, truth, levels=LEVELS, iterations=-1)
    with pytest.raises(VolmlaError, match=r"connectivity must be one of \(6, 26\), got 18"):
        potts_phases(c, part, truth, levels=LEVELS, connectivity=18)  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="beta must be"):
        potts_phases(c, part, truth, levels=LEVELS, beta=-1.0)
    with pytest.raises(VolmlaError, match=r"cold must be a number in \(0, 1\], got 0"):
        potts_phases(c, part, truth, levels=LEVELS, cold=0)
    with pytest.raises(VolmlaError, match="init must be"):
        potts_phases(c, part, truth, levels=LEVELS, init="pooled")  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match="same shape"):
        potts_phases(c[1:], part, truth, levels=LEVELS)


def test_the_shell_grey_does_not_count() -> None:
    rng = np.random.default_rng(6)
    part = np.zeros((16, 16, 16), np.uint32)
    part[2:-2, 2:-2, 2:-2] = 1
    truth = np.where(part > 0, 1, 0).astype(np.uint8)
    c = GREY[truth] + rng.normal(0, 1, truth.shape)
    shell = (part > 0) & ~np.pad(np.ones((10, 10, 10), bool), 3)
    c[shell] += 20.0  # a surface mixture reading brighter than phase 2: no evidence for it
    out = potts_phases(c, part, truth, levels=LEVELS).compute()
    np.testing.assert_array_equal(out, truth)
