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
