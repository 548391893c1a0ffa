"""Breakage against known answers: single phase, grain size extremes, monotone curve, analytic truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from volmla.breakage import break_volume
from volmla.breakage.truth import bernoulli_ld, grain_ld
from volmla.liberation.summary import liberation_summary
from volmla.measure import measure


def _liberation(phases: np.ndarray, labels: np.ndarray, names: list[str]) -> tuple[dict, pd.DataFrame]:
    t = measure(labels, phases, voxel_size=1.0, phase_names=names)
    return liberation_summary(t.particles, phase_names=names, voxel_size=(1.0, 1.0, 1.0)), t.particles


def _ld(phases: np.ndarray, p80: float, seed: int, names: list[str], **kw) -> dict:
    lab = break_volume(phases, p80=p80, voxel_size=1.0, seed=seed, **kw).labels.compute()
    return _liberation(phases, lab, names)[0]["liberation_degree"]


@pytest.mark.parametrize("kw", [{}, {"boundary_weight": 1.0, "detachment": 0.5}])
def test_single_phase_is_always_liberated(kw) -> None:
    ph = np.ones((32, 32, 32), np.uint8)
    ph[8:12, 8:20, 8:12] = 0  # pores do not lock anything
    for p80 in (4.0, 10.0):
        assert _ld(ph, p80, 3, ["quartz"], **kw) == {"quartz": 1.0}


def test_grains_much_larger_than_fragments_are_liberated(grain_ids) -> None:
    """Grains ~11x the fragments: only the fragments on grain boundaries are locked."""
    grains = grain_ids((64, 64, 64), 32.0, seed=2)
    ph = (np.arange(int(grains.max()) + 1) % 2 + 1).astype(np.uint8)[grains]
    ld = _ld(ph, 3.0, 1, ["a", "b"])
    assert min(ld.values()) > 0.9, ld


def test_grains_much_smaller_than_fragments_lock_the_minor_phase(grain_texture) -> None:
    ph = grain_texture((48, 48, 48), 2.0, (0.7, 0.2, 0.1), seed=2)
    ld = _ld(ph, 12.0, 1, ["major", "mid", "minor"])
    assert ld["minor"] < 0.02 and ld["mid"] < 0.02, ld


def test_liberation_falls_with_fragment_size(grain_texture) -> None:
    ph = grain_texture((40, 40, 40), 8.0, (0.6, 0.3, 0.1), seed=5)
    names = ["a", "b", "c"]
    means = []
    for p80 in (4.0, 8.0, 16.0):
        runs = [_ld(ph, p80, seed, names) for seed in (1, 2)]
        means.append({n: np.mean([r[n] for r in runs]) for n in names})
    for n in names:
        assert means[0][n] > means[1][n] > means[2][n], (n, means)


def test_voxel_texture_matches_the_analytic_random_breakage_result(rng) -> None:
    """i.i.d. voxels (a Boolean texture at voxel scale): LD per size class within 3.5 sd of the exact value."""
    p = 0.95
    ph = np.where(rng.random((48, 48, 48)) < p, 1, 2).astype(np.uint8)
    zs = []
    for seed in (1, 2):
        lab = break_volume(ph, p80=4.0, voxel_size=1.0, seed=seed).labels.compute()
        summary, pdf = _liberation(ph, lab, ["a", "b"])
        inner = pdf[~pdf["touches_border"]]
        truth, sd = bernoulli_ld(inner["volume_voxels"].to_numpy(), p)
        zs.append((summary["liberation_degree"]["a"] - truth) / sd)
        for cls in summary["liberation_by_size"]["a"]:
            if cls["n"] < 30:
                continue
            sel = inner[(inner["esd_um"] >= cls["lo"]) & (inner["esd_um"] < cls["hi"])]
            t, s = bernoulli_ld(sel["volume_voxels"].to_numpy(), p)
            assert abs(cls["ld"] - t) < 3.5 * s + 1e-9, (cls, t, s)
    assert max(abs(z) for z in zs) < 3.5, zs


def test_grain_texture_matches_its_analytic_truth_within_the_realisations_interval(rng, grain_ids) -> None:
    """Voronoi grains, phase i.i.d. per grain: measured LD against the exact expectation given the fragments."""
    p = 0.7
    grains = grain_ids((40, 40, 40), 5.0, seed=8)
    n_grains = int(grains.max()) + 1
    diffs = []
    for seed in (1, 2, 3):
        phase = np.where(rng.random(n_grains) < p, 1, 2).astype(np.uint8)
        ph = phase[grains]
        lab = break_volume(ph, p80=7.0, voxel_size=1.0, seed=seed).labels.compute()
        summary, pdf = _liberation(ph, lab, ["a", "b"])
        inner = set(pdf.loc[~pdf["touches_border"], "particle_id"].tolist())
        keep = np.isin(lab, list(inner))
        pieces = pd.DataFrame({"fragment": lab[keep], "grain": grains[keep]}).value_counts().rename("voxels").reset_index()
        diffs.append(summary["liberation_degree"]["a"] - grain_ld(pieces, p))
    diffs_a = np.asarray(diffs)
    half = 4.303 * diffs_a.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert abs(diffs_a.mean()) <= max(half, 0.02), diffs
    assert np.abs(diffs_a).max() < 0.08, diffs
