"""Partial-volume apportioning (volmla.measure.fractions) against exact fractions and an
in-memory reference, over several chunkings."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from volmla import measure
from volmla.errors import VolmlaError
from volmla.measure.fractions import PhaseLevels, context_volume, fractional_volumes, phase_levels

LEVELS = PhaseLevels({0: 0.0, 1: 100.0, 2: 300.0}, 1.0, {})
CHUNKINGS = [(2, 3, 10), (1, 1, 3), (2, 2, 7)]


def _edge_volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along x: void, particle 1 (phase 1 at grey 100, then phase 2 at grey 300), void;
    every plane and row the same."""
    row_p = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 0], np.uint32)
    row_f = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 0], np.uint8)
    # x=1: a quarter of phase 1 outside the particle; x=2: half phase 1 against void;
    # x=4 | x=5: the phase boundary, three quarters each side; x=7: half phase 2 against
    # the void; x=8: a quarter of phase 2 outside
    row_i = np.array([0, 25, 50, 100, 150, 250, 300, 150, 75, 0], np.float32)
    shape = (2, 3, 10)
    return (np.broadcast_to(row_p, shape).copy(), np.broadcast_to(row_f, shape).copy(),
            np.broadcast_to(row_i, shape).copy())


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_step_edges_give_exact_fractions(chunks: tuple[int, int, int]) -> None:
    p, f, img = _edge_volumes()
    got = fractional_volumes(da.from_array(p, chunks=chunks), da.from_array(f, chunks=chunks),
                             da.from_array(img, chunks=chunks), levels=LEVELS)
    rows = 6  # rows x planes
    # phase 1: 0.25 (x=1) + 0.5 (x=2) + 1 (x=3) + 0.75 (x=4) + 0.25 (x=5's share)
    # phase 2: 0.25 (x=4's share) + 0.75 (x=5) + 1 (x=6) + 0.5 (x=7) + 0.25 (x=8)
    assert got == {1: {1: 2.75 * rows, 2: 2.75 * rows}}


def test_unresolved_levels_count_whole_voxels() -> None:
    p, f, img = _edge_volumes()
    close = PhaseLevels({0: 0.0, 1: 100.0, 2: 300.0}, 100.0, {})  # 3 sigma = 300: nothing resolved
    got = fractional_volumes(p, f, img, levels=close)
    assert got == {1: {1: 18.0, 2: 18.0}}  # the integer counts; void-side voxels count nothing
    half = PhaseLevels({0: 0.0, 1: 100.0, 2: 300.0}, 40.0, {})  # 120: void-phase 1 and 1-2 not resolved, void-2 is
    got = fractional_volumes(p, f, img, levels=half)
    # phase 1: x=2 whole (void unresolved), x=3, and 0.75 + 0.25 across the resolved 1-2
    # boundary; phase 2: 0.25 + 0.75 + 1 + 0.5 (x=7 against the void) + 0.25 (x=8)
    assert got == {1: {1: 3.0 * 6, 2: 2.75 * 6}}


def _reference(p: np.ndarray, f: np.ndarray, img: np.ndarray, lv: PhaseLevels, resolve: float = 3.0) -> dict:
    """A loop over voxels with the rules of the module docstring (nearest at the faces)."""
    lut = lv.levels
    gap = resolve * lv.noise_sigma
    out: dict[int, dict[int, float]] = {}

    def add(q: int, b: int, v: float) -> None:
        out.setdefault(q, {})
        out[q][b] = out[q].get(b, 0.0) + v

    def frac(i: float, la: float, lb: float) -> float:
        return float(np.rint(min(max((i - lb) / (la - lb), 0.0), 1.0) * 2**20)) / 2**20

    nz, ny, nx = p.shape
    for z, y, x in np.ndindex(p.shape):
        nbs = []
        around = []
        for dz, dy, dx in np.ndindex(3, 3, 3):
            if (dz, dy, dx) == (1, 1, 1):
                continue
            c = (min(max(z + dz - 1, 0), nz - 1), min(max(y + dy - 1, 0), ny - 1), min(max(x + dx - 1, 0), nx - 1))
            around.append((int(p[c]), int(f[c])))
            if abs(dz - 1) + abs(dy - 1) + abs(dx - 1) == 1:
                nbs.append(around[-1])
        P, A, i = int(p[z, y, x]), int(f[z, y, x]), float(img[z, y, x])
        if P and A:
            if any(q == 0 or b == 0 for q, b in nbs):
                partner = 0
            else:
                others = [b for q, b in nbs if q == P and b != A]
                partner = min(others, key=lambda b: (-others.count(b), b)) if others else A
            if partner == A:
                add(P, A, 1.0)
            elif abs(lut[A] - lut[partner]) > gap:
                fa = frac(i, lut[A], lut[partner])
                add(P, A, fa)
                if partner:
                    add(P, partner, 1.0 - fa)
            else:
                add(P, A, 1.0)
        else:
            cands = [(q, b) for q, b in around if q and b and (P == 0 or q == P)]
            if cands:
                q, b = min(cands, key=lambda c: (-cands.count(c), c))
                if abs(lut[b] - lut[0]) > gap:
                    add(q, b, frac(i, lut[b], lut[0]))
    return {q: {b: v for b, v in d.items() if v} for q, d in out.items() if any(d.values())}


@pytest.fixture(scope="module")
def ore_small() -> dict[str, np.ndarray]:
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=24, seed=3, oversample=1, level="hard")
    rng = np.random.default_rng(0)
    phases = ore.phases.copy()
    flip = (rng.random(phases.shape) < 0.05) & (ore.particles > 0)
    phases[flip] = rng.integers(0, 4, int(flip.sum()))  # speckle, void inside particles too
    return {"particles": ore.particles, "phases": phases, "intensity": ore.intensity}


def test_fractions_match_reference(ore_small: dict[str, np.ndarray]) -> None:
    p, f, img = ore_small["particles"], ore_small["phases"], ore_small["intensity"]
    lv = phase_levels(img, f, p)
    ref = _reference(p, f, img, lv)
    got = fractional_volumes(p, f, img, levels=lv)
    assert got.keys() == ref.keys()
    for q in ref:
        assert got[q].keys() == ref[q].keys()
        for b in ref[q]:
            assert got[q][b] == pytest.approx(ref[q][b], abs=1e-9)


@pytest.mark.parametrize("chunks", [(24, 24, 24), (1, 24, 24), (5, 7, 11), (24, 1, 3)])
def test_chunk_invariance(ore_small: dict[str, np.ndarray], chunks: tuple[int, int, int]) -> None:
    p, f, img = ore_small["particles"], ore_small["phases"], ore_small["intensity"]
    whole_ctx = context_volume(p, f).compute()
    lv = phase_levels(img, f, p)
    whole = measure.particle_table(p, f, voxel_size=1.0, intensity=img, levels=lv, phase_names=["q", "f", "py"])
    dp, df, di = (da.from_array(a, chunks=chunks) for a in (p, f, img))
    assert (context_volume(dp, df).compute() == whole_ctx).all()
    assert phase_levels(di, df, dp) == lv
    chunked = measure.particle_table(dp, df, voxel_size=1.0, intensity=di, phase_names=["q", "f", "py"])
    pd.testing.assert_frame_equal(whole, chunked)


def test_particle_table_columns_and_grades(ore_small: dict[str, np.ndarray]) -> None:
    p, f, img = ore_small["particles"], ore_small["phases"], ore_small["intensity"]
    names = ["q", "f", "py"]
    t = measure.particle_table(p, f, voxel_size=1.0, intensity=img, phase_names=names)
    assert list(t.columns) == measure.particle_columns(names)
    solid = t[[f"vfrac_{n}" for n in names]].sum(axis=1)
    np.testing.assert_allclose(t["vfrac_solid"], solid)
    ok = solid > 0
    for n in names:
        np.testing.assert_allclose(t.loc[ok, f"grade_{n}"], t.loc[ok, f"vfrac_{n}"] / solid[ok])
    assert (t["vox_solid"] == t[[f"vox_{n}" for n in names]].sum(axis=1)).all()
    assert (t["vox_solid"] <= t["volume_voxels"]).all()
    # without the intensity the fractional volumes are the counts
    plain = measure.particle_table(p, f, voxel_size=1.0, phase_names=names)
    for n in names:
        assert (plain[f"vfrac_{n}"] == plain[f"vox_{n}"]).all()


def test_partial_volume_recovers_true_volume() -> None:
    """A blurred bright sphere in resin: the integer count of the majority voxels and the
    apportioned volume against the exact volume (apportioning is closer)."""
    from scipy import ndimage as ndi

    fine = 4
    n = 24
    zz, yy, xx = np.indices((n * fine,) * 3)
    r = 6.3 * fine
    inside = ((zz - n * fine / 2 + 0.3) ** 2 + (yy - n * fine / 2) ** 2 + (xx - n * fine / 2 - 0.7) ** 2) < r**2
    frac = inside.reshape(n, fine, n, fine, n, fine).mean(axis=(1, 3, 5))
    img = ndi.gaussian_filter(100.0 + 900.0 * frac, 0.6).astype(np.float32)
    part = (frac > 0.5).astype(np.uint32)
    exact = frac.sum()
    lv = PhaseLevels({0: 100.0, 1: 1000.0}, 5.0, {})
    got = fractional_volumes(part, part.astype(np.uint8), img, levels=lv)[1][1]
    assert abs(got - exact) < 0.5 * abs(part.sum() - exact) + 1.0
    assert abs(got - exact) / exact < 0.01


def test_bad_inputs() -> None:
    p, f, img = _edge_volumes()
    with pytest.raises(VolmlaError, match="same shape"):
        fractional_volumes(p, f, img[:, :, :5], levels=LEVELS)
    with pytest.raises(VolmlaError, match="resolve"):
        fractional_volumes(p, f, img, levels=LEVELS, resolve=-1.0)
    with pytest.raises(VolmlaError, match="2\\*\\*48"):
        fractional_volumes(p.astype(np.uint64) << np.uint64(50), f, img, levels=LEVELS)
    with pytest.raises(VolmlaError, match="reserved"):
        measure.particle_table(p, f, voxel_size=1.0, phase_names=["solid", "b"])
