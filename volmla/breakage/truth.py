"""Analytic liberation of random textures broken independently of them: the validation truth.

When fracture does not look at the texture (``boundary_weight=0``, no detachment, no
void inside the solid), the fragments are fixed by the seeds alone and the phases inside
them are drawn by the texture. For two textures the expected liberation degree given the
fragments is exact:

1. :func:`bernoulli_ld`: every voxel is phase ``i`` independently with probability ``p``
   (the Boolean texture at voxel scale). A fragment of ``n`` voxels holds ``k ~
   Binomial(n, 1 - p)`` foreign voxels and is free when ``(n - k) / n`` exceeds the free
   threshold;
2. :func:`grain_ld`: grains (any partition, e.g. Voronoi cells) take phase ``i``
   independently with probability ``p``; a fragment cut from grains of ``n_1, n_2, ...``
   voxels holds a foreign volume whose law follows by convolution over its grains (a
   grain spanning several fragments couples them, so the spread is by simulation of the
   grain phases, not a formula).

Both give the ratio of expectations ``E[V_free] / E[V_i]``, which the measured LD of one
texture approaches as fragments become many, and a standard deviation for it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["bernoulli_ld", "grain_ld"]


def _check_p(p: float) -> float:
    if not (0.0 < float(p) <= 1.0):
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    return float(p)


def bernoulli_ld(volumes: np.ndarray, p: float, *, free_threshold: float = 0.99) -> tuple[float, float]:
    """Expected LD of a phase of voxel probability ``p`` over fragments of these sizes, and its sd.

    Parameters
    ----------
    volumes
        Voxel counts of the fragments (those the statistic counts, e.g. off the border).
    p
        Probability that a voxel is the phase.
    free_threshold
        A fragment is free when its grade exceeds this.

    Returns
    -------
    (float, float)
        The ratio of expectations and the standard deviation of the measured LD (delta
        method; fragments are independent).

    Examples
    --------
    >>> ld, sd = bernoulli_ld(np.array([1, 1, 1]), 0.5)
    >>> round(ld, 6), round(sd, 6)
    (1.0, 0.0)
    >>> round(bernoulli_ld(np.array([2]), 0.5)[0], 3)
    0.5
    """
    from scipy import stats

    p = _check_p(p)
    n = np.asarray(volumes, np.int64)
    n = n[n > 0]
    if n.size == 0:
        return float("nan"), float("nan")
    kmax = int(math.ceil(n.max() * (1.0 - free_threshold))) + 1
    k = np.arange(kmax)[None, :]
    nn = n[:, None]
    free = (nn - k) > free_threshold * nn
    pmf = stats.binom.pmf(k, nn, 1.0 - p) * free
    ea = ((nn - k) * pmf).sum(axis=1)
    ea2 = ((nn - k) ** 2 * pmf).sum(axis=1)
    eb = n * p
    var_b = n * p * (1 - p)
    cov_ab = ea2 - ea * eb  # a = b on free fragments, 0 elsewhere: E[ab] = E[a^2]
    ratio = float(ea.sum() / eb.sum())
    var = (ea2 - ea**2) + ratio**2 * var_b - 2 * ratio * cov_ab
    return ratio, float(math.sqrt(max(var.sum(), 0.0)) / eb.sum())


def grain_ld(pieces: pd.DataFrame, p: float, *, free_threshold: float = 0.99) -> float:
    """Expected LD of a phase that each grain takes independently with probability ``p``.

    Parameters
    ----------
    pieces
        One row per (fragment, grain) overlap: ``fragment``, ``grain``, ``voxels``
        (over the fragments the statistic counts).
    p
        Probability that a grain is the phase.
    free_threshold
        A fragment is free when its grade exceeds this.

    Returns
    -------
    float
        ``E[V_free] / E[V_i]``, exact by convolution over each fragment's grains.

    Examples
    --------
    >>> t = pd.DataFrame({"fragment": [1, 1, 2], "grain": [1, 2, 2], "voxels": [3, 1, 4]})
    >>> grain_ld(t, 0.5)  # E[free]: 4 vox w.p. 1/4 + 4 vox w.p. 1/2 = 3; E[V] = 8 * 1/2 = 4
    0.75
    """
    p = _check_p(p)
    free_volume = 0.0
    total = 0.0
    for _, g in pieces.groupby("fragment", sort=False):
        sizes = g["voxels"].to_numpy(np.int64)
        n = int(sizes.sum())
        # dist[v]: probability that the fragment's foreign volume is v voxels
        dist = np.zeros(n + 1)
        dist[0] = 1.0
        for s in sizes:
            shifted = np.zeros_like(dist)
            shifted[s:] = dist[: n + 1 - s]
            dist = p * dist + (1 - p) * shifted
        v = np.arange(n + 1)
        free = (n - v) > free_threshold * n
        free_volume += float(((n - v) * dist * free).sum())
        total += n * p
    return free_volume / total if total else float("nan")
