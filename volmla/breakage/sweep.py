"""The grind-size sweep's statistics: intervals across realisations, the grind size at a target LD, the plot.

Pure functions of tables (no volumes):

1. :func:`measured_p80`: the realised P80 of one realisation from its particle table
   (volume-weighted 80 % passing ESD of the particles that miss the border, each weighted
   by the Miles-Lantuejoul factor so large fragments, more often cut, are not
   under-counted); :func:`measured_law`: the size law fitted to the same particles (its
   uniformity, i.e. the spread, at that P80);
2. :func:`curve_intervals`: per grind size and phase the mean liberation degree over the
   realisations, their range, and the 95 % t-interval of the mean;
3. :func:`grind_sizes`: per phase the coarsest grind size at which the mean liberation
   degree still reaches a target, interpolated linearly in log P80 between the grind
   sizes that bracket the first crossing (finest to coarsest);
4. :func:`plot_curve`: the liberation curve (LD against P80, log axis) with the interval
   band and each realisation's points.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from volmla.breakage.fracture import LawFit, fit_size_law, passing_size

__all__ = ["curve_intervals", "grind_sizes", "measured_law", "measured_p80", "p80_label", "plot_curve"]


def p80_label(p80_um: float) -> str:
    """The folder name of a grind size's liberation outputs.

    Examples
    --------
    >>> p80_label(50.0), p80_label(12.5)
    ('p80_50', 'p80_12.5')
    """
    return f"p80_{p80_um:g}"


def measured_p80(particles: pd.DataFrame, *, shape: tuple[int, ...], voxel_size: tuple[float, float, float]) -> float:
    """Realised P80 (um) of a realisation: its interior particles, Miles-Lantuejoul weighted.

    Parameters
    ----------
    particles
        The particle table (``volume_voxels``, ``bbox_*``, ``touches_border``).
    shape
        The volume's shape (voxels).
    voxel_size
        (z, y, x) um.

    Returns
    -------
    float
        80 % passing equivalent-sphere diameter (um); NaN without interior particles.

    Examples
    --------
    >>> df = pd.DataFrame({"volume_voxels": [1000, 8], "touches_border": [False, False],
    ...     "bbox_z0": [0, 0], "bbox_y0": [0, 0], "bbox_x0": [0, 0], "bbox_z1": [10, 2], "bbox_y1": [10, 2], "bbox_x1": [10, 2]})
    >>> round(measured_p80(df, shape=(100, 100, 100), voxel_size=(1.0, 1.0, 1.0)), 2)
    10.41
    """
    vol, ext = _interior(particles, voxel_size)
    return passing_size(vol, 0.8, extents=ext, shape=shape) if vol.size else float("nan")


def _interior(particles: pd.DataFrame, voxel_size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Volumes (um^3) and bounding-box extents (voxels) of the particles that miss the border."""
    inner = particles[~particles["touches_border"].astype(bool)]
    ext = np.stack([inner[f"bbox_{a}1"].to_numpy() - inner[f"bbox_{a}0"].to_numpy() for a in "zyx"], axis=1)
    vox = inner["volume_voxels"].to_numpy().astype(float)
    return vox * float(np.prod(voxel_size)), ext.astype(float).reshape(-1, 3)


def measured_law(particles: pd.DataFrame, *, law: str, d_lo: float, shape: tuple[int, ...],
                 voxel_size: tuple[float, float, float]) -> LawFit:
    """The size law fitted to a realisation's interior particles: P80 (um), uniformity, misfit.

    Parameters
    ----------
    particles
        The particle table (``volume_voxels``, ``bbox_*``, ``touches_border``).
    law
        The law's family (``"rosin-rammler"`` or ``"gates-gaudin-schuhmann"``).
    d_lo
        The law's truncation (um): the smallest fragment size.
    shape
        The volume's shape (voxels).
    voxel_size
        (z, y, x) um.

    Returns
    -------
    LawFit
        :func:`volmla.breakage.fracture.fit_size_law` of the particles off the border,
        Miles-Lantuejoul weighted.

    Examples
    --------
    >>> df = pd.DataFrame({"volume_voxels": [1000, 8, 30], "touches_border": [False] * 3,
    ...     **{f"bbox_{a}0": [0] * 3 for a in "zyx"}, **{f"bbox_{a}1": [10, 2, 3] for a in "zyx"}})
    >>> f = measured_law(df, law="rosin-rammler", d_lo=1.0, shape=(100, 100, 100), voxel_size=(1.0, 1.0, 1.0))
    >>> round(f.p80, 2), f.m > 0
    (10.65, True)
    """
    vol, ext = _interior(particles, voxel_size)
    return fit_size_law(vol, law, d_lo=d_lo, extents=ext, shape=shape)


def curve_intervals(curve: pd.DataFrame) -> pd.DataFrame:
    """Per grind size and phase: mean LD over the realisations, range, 95 % t-interval of the mean.

    Parameters
    ----------
    curve
        The liberation curve table (``p80_um``, ``realisation``, ``phase``,
        ``liberation_degree``; optional ``p80_measured_um``).

    Returns
    -------
    pandas.DataFrame
        ``p80_um, phase, n, ld_mean, ld_sd, ld_lo, ld_hi, ld_min, ld_max`` (and
        ``p80_measured_um``, the mean): ``ld_lo/ld_hi`` the 95 % interval of the mean
        (NaN with one realisation).

    Examples
    --------
    >>> c = pd.DataFrame({"p80_um": [10.0] * 3, "realisation": [0, 1, 2], "phase": ["a"] * 3,
    ...     "liberation_degree": [0.5, 0.6, 0.7]})
    >>> r = curve_intervals(c).iloc[0]
    >>> round(float(r.ld_mean), 3), round(float(r.ld_lo), 3), round(float(r.ld_hi), 3)
    (0.6, 0.352, 0.848)
    """
    from scipy import stats

    rows: list[dict[str, Any]] = []
    order = {name: k for k, name in enumerate(pd.unique(curve["phase"]))}  # phases in the curve's order
    groups = sorted(curve.groupby(["p80_um", "phase"], sort=False), key=lambda item: (item[0][0], order[item[0][1]]))
    for (p80, phase), g in groups:
        ld = g["liberation_degree"].to_numpy(float)
        ld = ld[np.isfinite(ld)]
        n = int(ld.size)
        mean = float(ld.mean()) if n else float("nan")
        sd = float(ld.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
        row = {"p80_um": float(p80), "phase": str(phase), "n": n, "ld_mean": mean, "ld_sd": sd,
               "ld_lo": max(0.0, mean - half) if n > 1 else float("nan"),
               "ld_hi": min(1.0, mean + half) if n > 1 else float("nan"),
               "ld_min": float(ld.min()) if n else float("nan"), "ld_max": float(ld.max()) if n else float("nan")}
        if "p80_measured_um" in g:
            row["p80_measured_um"] = float(g["p80_measured_um"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def grind_sizes(intervals: pd.DataFrame, *, target: float) -> dict[str, Any]:
    """Per phase, the grind size (um) at which the mean liberation degree falls to ``target``.

    Parameters
    ----------
    intervals
        :func:`curve_intervals` output.
    target
        Liberation degree, 0..1.

    Returns
    -------
    dict
        ``{"p80_um": {phase: value or None}, "how": {phase: reason}}``: ``"interpolated"``
        (between the two grind sizes of the first crossing, log-linear), ``"coarsest"``
        (every grind size reaches the target: the coarsest given, a lower bound),
        ``"not reached"`` (not even the finest does; None).

    Examples
    --------
    >>> iv = pd.DataFrame({"p80_um": [10.0, 100.0], "phase": ["a", "a"], "ld_mean": [0.9, 0.5]})
    >>> g = grind_sizes(iv, target=0.8)
    >>> round(g["p80_um"]["a"], 2), g["how"]["a"]
    (17.78, 'interpolated')
    """
    values: dict[str, float | None] = {}
    how: dict[str, str] = {}
    for phase, g in intervals.groupby("phase", sort=True):
        g = g.sort_values("p80_um")
        p = g["p80_um"].to_numpy(float)
        ld = g["ld_mean"].to_numpy(float)
        ok = np.isfinite(ld)
        p, ld = p[ok], ld[ok]
        name = str(phase)
        if ld.size == 0 or ld[0] < target:
            values[name], how[name] = None, "not reached"
            continue
        below = np.flatnonzero(ld < target)
        if below.size == 0:
            values[name], how[name] = float(p[-1]), "coarsest"
            continue
        i = int(below[0])
        a, b = ld[i - 1], ld[i]
        t = (a - target) / (a - b) if a != b else 0.0
        values[name] = float(math.exp(math.log(p[i - 1]) + t * (math.log(p[i]) - math.log(p[i - 1]))))
        how[name] = "interpolated"
    return {"p80_um": values, "how": how}


def plot_curve(curve: pd.DataFrame, intervals: pd.DataFrame, path: str | Path, *, target_ld: float | None = None) -> Path:
    """The liberation curve: LD of each phase against P80 (log), 95 % band, realisations as points.

    Parameters
    ----------
    curve
        The liberation curve table.
    intervals
        :func:`curve_intervals` of it.
    path
        PNG to write.
    target_ld
        Draw this liberation degree as a horizontal line.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    try:
        for k, (phase, g) in enumerate(intervals.groupby("phase", sort=False)):
            g = g.sort_values("p80_um")
            colour = f"C{k % 10}"
            ax.plot(g["p80_um"], g["ld_mean"], "-o", color=colour, label=str(phase))
            if g["ld_lo"].notna().any():
                ax.fill_between(g["p80_um"], g["ld_lo"], g["ld_hi"], color=colour, alpha=0.2, linewidth=0)
            pts = curve[curve["phase"] == phase]
            ax.plot(pts["p80_um"], pts["liberation_degree"], ".", color=colour, alpha=0.5)
        if target_ld is not None:
            ax.axhline(target_ld, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        sizes = sorted(intervals["p80_um"].unique())
        ax.set_xticks(sizes, [f"{v:g}" for v in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("grind size P80 (um)")
        ax.set_ylabel("liberation degree")
        ax.set_title("Liberation curve (mean, 95 % interval of the mean, realisations)")
        ax.legend(title="phase", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
