"""Bootstrap intervals of the liberation statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from volmla import liberation as lib


def test_bootstrap_contains_point_estimate() -> None:
    rng = np.random.default_rng(7)
    n = 300
    vol = rng.integers(20, 200, n)
    a = np.where(rng.random(n) < 0.4, vol, (vol * rng.random(n)).astype(int))
    df = pd.DataFrame({"vox_a": a, "vox_b": vol - a, "volume_voxels": vol, "touches_border": np.zeros(n, bool)})
    ld = lib.liberation_degree(df, phase_names=["a", "b"])
    modal = lib.modal_mineralogy(df, phase_names=["a", "b"])["volume"]
    ci = lib.bootstrap(df, phase_names=["a", "b"], n_boot=200, seed=1)
    for p in ("a", "b"):
        assert ci["liberation_degree"][p]["lo"] <= ld[p] <= ci["liberation_degree"][p]["hi"]
        assert ci["modal_mineralogy"][p]["lo"] <= modal[p] <= ci["modal_mineralogy"][p]["hi"]
        assert ci["liberation_degree"][p]["lo"] < ci["liberation_degree"][p]["hi"]
    assert lib.bootstrap(df, phase_names=["a", "b"], n_boot=20, seed=1) == lib.bootstrap(df, phase_names=["a", "b"], n_boot=20, seed=1)


def test_intervals_use_the_partial_volume_phase_volumes_the_figures_use() -> None:
    """With vfrac columns the bootstrap resamples those volumes, so its interval brackets the
    LD computed from them (here the voxel counts would make every particle locked)."""
    import pandas as pd
    import pytest

    from volmla.liberation import liberation_summary
    from volmla.liberation.uncertainty import bootstrap

    n = 40
    df = pd.DataFrame({
        "vox_a": [100] * n, "vox_b": [5] * n,  # counts: a is 95 % of every particle
        "vfrac_a": [104.9] * n, "vfrac_b": [0.1] * n,  # partial volume: a is free (> 0.99)
        "vox_solid": [105] * n, "vfrac_solid": [105.0] * n, "volume_voxels": [105] * n,
        "volume_um3": [105.0] * n, "esd_um": [5.0] * n, "touches_border": [False] * n,
    })
    ld = liberation_summary(df, phase_names=["a", "b"])["liberation_degree"]["a"]
    ci = bootstrap(df, phase_names=["a", "b"], n_boot=50)["liberation_degree"]["a"]
    assert ld == pytest.approx(1.0) and ci["lo"] <= ld <= ci["hi"]
