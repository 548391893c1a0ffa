"""Uncertainty of the liberation statistics: the particle bootstrap.

:func:`bootstrap` resamples the particles with replacement (seeded, ``B`` resamples,
default 200):

1. the population (border particles left out unless ``include_border``) is reduced to
   a phase-by-particle matrix of voxel counts and of the free test of Eq. 1;
2. each resample is a vector of multiplicities (a ``bincount`` of ``n`` draws), so LD
   and the modal mineralogy (by mass with densities) are two matrix products;
3. the 2.5th and 97.5th percentiles of the finite resampled values give the 95 %
   interval per phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError
from volmla.liberation.stats import (
    _check_threshold,
    _densities,
    _free,
    _phases,
    _population,
    _volume,
)

__all__ = ["MAX_BOOT", "Interval", "Uncertainty", "bootstrap"]

MAX_BOOT = 100_000
"""The most bootstrap resamples taken (each redraws every particle): the 95 % interval's
percentiles are stable long before; a larger count is a typo, and 10^12 asked for 15 TB."""


class Interval(TypedDict):
    """A percentile 95 % interval."""

    lo: float
    hi: float


class Uncertainty(TypedDict):
    """What :func:`bootstrap` returns (``summary["uncertainty"]``)."""

    n_boot: int
    seed: int
    liberation_degree: dict[str, Interval]
    modal_mineralogy: dict[str, Interval]


def bootstrap(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    free_threshold: float = 0.99,
    densities: Sequence[float] | Mapping[str, float] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    include_border: bool = False,
) -> Uncertainty:
    """Percentile 95 % intervals of LD and modal mineralogy by resampling particles.

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vfrac_<phase>`` columns, else ``vox_<phase>``: the
        volumes the point estimates use).
    free_threshold
        A particle is free in a phase whose grade exceeds this (strictly), in ``[0, 1)``.
    densities
        Per-phase densities (g/cm3): the modal mineralogy is then by mass.
    n_boot
        Number of resamples (at least 1).
    seed
        Seed of the random generator.
    include_border
        Also resample particles touching the volume border.

    Returns
    -------
    Uncertainty
        ``{"n_boot", "seed", "liberation_degree": {phase: {"lo", "hi"}},
        "modal_mineralogy": {phase: {"lo", "hi"}}}`` (modal by mass with densities).

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5, 8], "volume_voxels": [10, 10, 8],
    ...                    "touches_border": [False] * 3})
    >>> ci = bootstrap(df, phase_names=["a"], n_boot=50)["liberation_degree"]["a"]
    >>> ci["lo"] <= ci["hi"]
    True
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or not 1 <= n_boot <= MAX_BOOT:
        raise VolmlaError(f"n_boot must be an integer in 1..{MAX_BOOT}, got {n_boot!r}")
    names = _phases(df, phase_names)
    thr = _check_threshold(free_threshold)
    rho = _densities(densities, names)
    pop = _population(df, include_border)
    n = len(pop)
    # the same phase volumes as the figures they bracket (partial-volume when measured so)
    vox = np.stack([_volume(pop, p) for p in names]) if names else np.zeros((0, n))
    free = np.stack([_free(pop, p, thr) for p in names]) if names else np.zeros((0, n), bool)
    weight = np.array([rho[p] for p in names]) if rho is not None else np.ones(len(names))
    rng = np.random.default_rng(seed)
    ld = np.full((n_boot, len(names)), np.nan)
    modal = np.full((n_boot, len(names)), np.nan)
    for b in range(n_boot if n else 0):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        tot = vox @ w
        ld[b] = np.divide((vox * free) @ w, tot, out=np.full(len(names), np.nan), where=tot > 0)
        mass = tot * weight
        modal[b] = mass / mass.sum() if mass.sum() > 0 else np.nan

    def interval(samples: np.ndarray) -> dict[str, Interval]:
        out: dict[str, Interval] = {}
        for j, p in enumerate(names):
            s = samples[:, j][np.isfinite(samples[:, j])]
            lo, hi = (np.percentile(s, [2.5, 97.5]) if s.size else (np.nan, np.nan))
            out[p] = {"lo": float(lo), "hi": float(hi)}
        return out

    return {"n_boot": int(n_boot), "seed": int(seed), "liberation_degree": interval(ld), "modal_mineralogy": interval(modal)}

