"""The fracture kernel: exact power-diagram labels, chunk independence, size laws and seeds."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from volmla.breakage.fracture import (
    Seeds,
    calibrate,
    cells_p80,
    draw_seeds,
    fit_size_law,
    fragment_block,
    law_quantiles,
    passing_size,
    size_law,
)
from volmla.errors import VolmlaError


def _brute(ph: np.ndarray, s: Seeds, spacing: tuple[float, float, float]) -> np.ndarray:
    grid = np.indices(ph.shape).reshape(3, -1).T * np.asarray(spacing)
    pf = ph.ravel()
    best = np.full(pf.size, np.inf)
    arg = np.full(pf.size, -1)
    for i in range(s.r2.size):
        v = ((grid - s.centres[i]) ** 2).sum(1) - s.r2[i]
        v = v + np.where((s.phase[i] != 0) & (s.phase[i] != pf), s.penalty[i], 0.0)
        better = v < best
        best[better], arg[better] = v[better], i
    key = (arg + 1).astype(np.uint64) * np.uint64(256) + np.where(s.detach[arg], pf, 0).astype(np.uint64)
    key[pf == 0] = 0
    return key.reshape(ph.shape)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.5)])
def test_kernel_is_the_exact_power_diagram_for_any_block_cut(rng, spacing) -> None:
    shape = (20, 23, 18)
    ph = rng.integers(0, 4, shape).astype(np.uint8)
    law = size_law("rosin-rammler", 6.0, 1.2)
    extent = tuple(n * v for n, v in zip(shape, spacing, strict=True))
    s = draw_seeds(extent, law, seed=4, boundary_weight=0.6, detachment=0.3)
    s = s._replace(phase=rng.integers(0, 4, s.r2.size).astype(np.uint8))
    whole = fragment_block(ph, (0, 0, 0), s, spacing=spacing)
    np.testing.assert_array_equal(whole, _brute(ph, s, spacing))
    pieces = np.zeros_like(whole)
    for z in range(0, shape[0], 7):
        for y in range(0, shape[1], 1 if z == 7 else 9):  # 1-voxel-thick blocks too
            for x in range(0, shape[2], 5):
                cut = np.s_[z:z + 7, y:y + (1 if z == 7 else 9), x:x + 5]
                pieces[cut] = fragment_block(ph[cut], (z, y, x), s, spacing=spacing)
    np.testing.assert_array_equal(pieces, whole)
    assert (whole[ph == 0] == 0).all() and (whole[ph > 0] > 0).all()


def test_ties_go_to_the_lower_seed() -> None:
    s = Seeds(np.array([[0.0, 0, 0], [0, 0, 2]]), np.zeros(2), np.zeros(2), np.zeros(2, bool), np.zeros(2, np.uint8))
    assert fragment_block(np.ones((1, 1, 3), np.uint8), (0, 0, 0), s).ravel().tolist() == [256, 256, 512]


def test_size_laws_pass_80_percent_at_p80() -> None:
    for law in ("rosin-rammler", "gates-gaudin-schuhmann"):
        s = size_law(law, 20.0, 0.9)
        assert float(s.passing(np.array(20.0))) == pytest.approx(0.8)
        assert s.d_lo == 3.0 and s.d_hi > 20.0
    with pytest.raises(VolmlaError, match="law must be one of"):
        size_law("kick", 10.0, 1.0)
    with pytest.raises(VolmlaError, match="uniformity"):
        size_law("rosin-rammler", 10.0, 0.0)


def test_seeds_are_a_function_of_the_seed() -> None:
    law = size_law("gates-gaudin-schuhmann", 8.0, 1.0)
    a = draw_seeds((30.0, 30.0, 30.0), law, seed=9, detachment=0.5)
    b = draw_seeds((30.0, 30.0, 30.0), law, seed=9, detachment=0.5)
    c = draw_seeds((30.0, 30.0, 30.0), law, seed=10, detachment=0.5)
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_array_equal(a.detach, b.detach)
    assert a.centres.shape != c.centres.shape or not np.array_equal(a.centres, c.centres)
    assert 0.3 < a.detach.mean() < 0.7
    margin = 0.5 * law.d_hi
    assert a.centres.min() >= -margin - 3.0 and a.centres.max() <= 30.0 + margin + 3.0


@pytest.mark.parametrize("law", ["rosin-rammler", "gates-gaudin-schuhmann"])
def test_calibrated_fragments_reach_the_target_p80(law) -> None:
    """The realised P80 of a fresh seed set (not the calibration's) lies within 15 % of the target."""
    target = 10.0
    slaw = size_law(law, target, 1.2)
    cal = calibrate(slaw, seed=1)
    solid = np.ones((96, 96, 96), np.uint8)
    got = [cells_p80(fragment_block(solid, (0, 0, 0), draw_seeds((96.0,) * 3, slaw, seed=s, scale=cal.scale)))
           for s in (21, 22)]
    assert abs(np.mean(got) / target - 1) < 0.15, got


def test_passing_size_weights_by_volume_and_corrects_for_the_window() -> None:
    vols = np.array([1000.0, 8.0, 8.0, 8.0])
    small, big = np.cbrt(48 / np.pi), np.cbrt(6000 / np.pi)
    cum = (3 * 8 + 1000) / 1024  # the cumulative passing curve is interpolated between particle sizes
    expected = small + (0.8 - 24 / 1024) / (cum - 24 / 1024) * (big - small)
    assert passing_size(vols, 0.8) == pytest.approx(expected)
    plain = passing_size(np.array([1000.0, 100.0]), 0.5)
    corrected = passing_size(np.array([1000.0, 100.0]), 0.5, extents=np.array([[10.0] * 3, [5.0] * 3]), shape=(20, 20, 20))
    assert corrected > plain  # the big particle is more often cut, so it counts more
    assert np.isnan(passing_size(np.array([]), 0.8))


@functools.lru_cache(maxsize=8)
def _cells(law: str, m: float) -> tuple[np.ndarray, np.ndarray]:
    """Volumes and extents of the interior cells of two calibrated seed sets (P80 12 voxels, 96^3)."""
    from volmla.breakage.fracture import interior_cells

    slaw = size_law(law, 12.0, m)
    cal = calibrate(slaw, seed=1)
    vols, exts = [], []
    for s in (31, 32):
        seeds = draw_seeds((96.0,) * 3, slaw, seed=s, scale=cal.scale)
        v, e = interior_cells(fragment_block(np.ones((96,) * 3, np.uint8), (0, 0, 0), seeds))
        vols.append(v)
        exts.append(e)
    return np.concatenate(vols), np.concatenate(exts)


def _spread(law: str, m: float) -> tuple[float, float]:
    """P20 / P80 of the cells of two calibrated seed sets, and of the (truncated) law."""
    slaw = size_law(law, 12.0, m)
    v, e = _cells(law, m)
    got = passing_size(v, 0.2, extents=e, shape=(96,) * 3) / passing_size(v, 0.8, extents=e, shape=(96,) * 3)
    d = np.geomspace(slaw.d_lo, slaw.d_hi, 4000)
    f = slaw.passing(d)
    f = (f - f[0]) / (f[-1] - f[0])  # the law truncated as the seeds draw it
    return got, float(np.interp(0.2, f, d) / np.interp(0.8, f, d))


def test_fragment_spread_follows_the_uniformity() -> None:
    """Only P80 is calibrated: the cells are narrower than the law (documented), but within
    35 % of its P20 / P80, and a more uniform law gives more uniform fragments."""
    spreads = [_spread("rosin-rammler", m) for m in (0.8, 1.5, 3.0)]
    got = [g for g, _ in spreads]
    assert got[0] < got[1] < got[2], spreads
    for g, want in spreads:
        assert want <= g * 1.05 and g / want - 1 < 0.35, spreads


@pytest.mark.parametrize(("law", "m"), [("rosin-rammler", 1.2), ("rosin-rammler", 3.0), ("gates-gaudin-schuhmann", 0.8)])
def test_the_law_fit_recovers_the_uniformity_of_a_law_sample(law, m) -> None:
    """Particles whose volume-weighted sizes follow the truncated law: the fit finds its P80 and m."""
    s = size_law(law, 10.0, m, d_lo=3.0)
    d = law_quantiles(s, (np.arange(200) + 0.5) / 200)  # equal volume in each size
    vols = np.repeat(np.pi / 6 * d**3, np.round(10 * (d.max() / d) ** 3).astype(int))
    fit = fit_size_law(vols, law, d_lo=3.0)
    assert fit.m == pytest.approx(m, rel=0.03) and fit.rms < 0.01
    assert fit.p80 == pytest.approx(passing_size(vols, 0.8))
    wider = fit_size_law(np.repeat(np.pi / 6 * d**3, np.round(10 * (d.max() / d) ** 3.5).astype(int)), law, d_lo=3.0)
    assert wider.m < fit.m  # more small particles: a wider law
    with pytest.raises(VolmlaError, match="law must be one of"):
        fit_size_law(vols, "bond")


def _fit(law: str, m: float):
    v, e = _cells(law, m)
    return fit_size_law(v, law, d_lo=3.0, extents=e, shape=(96, 96, 96))


def test_fragment_sizes_follow_the_law_spread() -> None:
    """The law fitted to the cells (P80 12 voxels, 96^3): its uniformity grows with the requested one
    and lies within 40 % of it where the window resolves the law (m >= 1.5; measured: 1.96 for 1.5,
    3.37 for 3, Gates-Gaudin-Schuhmann 1.78 for 1.5: the cells are narrower, only P80 is calibrated)."""
    fits = {m: _fit("rosin-rammler", m) for m in (0.8, 1.5, 3.0)}
    assert fits[0.8].m < fits[1.5].m < fits[3.0].m, fits
    for m in (1.5, 3.0):
        assert 1.0 <= fits[m].m / m < 1.4 and fits[m].rms < 0.1, fits
        assert fits[m].p80 == pytest.approx(12.0, rel=0.15), fits
    ggs = _fit("gates-gaudin-schuhmann", 1.5)
    assert 1.0 <= ggs.m / 1.5 < 1.4, ggs
