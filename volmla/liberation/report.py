"""Plots (PNG, matplotlib Agg) and the self-contained HTML report of a liberation run.

One module because the plots and the page share one vocabulary: the phase styles (fixed
palette colour, line style, marker), the weighting a heading names, the clipping of
intervals and the titles the page shows above each figure. It reads in that order:

1. :func:`phase_styles`: every plot that shows phases draws each in its colour of
   :func:`volmla.io.palette.hex_colors` (quartz is the same yellow in every plot and in
   the label images); series that are not phases (volume vs mass, 3-D vs 2-D) are told
   apart by hatching and line style, never by a phase colour;
2. :func:`cumulative_liberation` and :func:`cumulative_size` (with :func:`p80`): the
   two cumulative curves, pure functions of the particle table;
3. :func:`plots` draws, from the summary and the tables of
   :func:`volmla.liberation.analyse`: modal mineralogy (bootstrap 95 % intervals), LD per
   size class, the liberation spectrum, the cumulative liberation curves, the cumulative
   size distribution with P80, the grade-recovery curves, the grain-volume vs
   particle-volume map, ESD histograms per dominant phase, 2-D vs 3-D liberation and the
   representativeness check. Lines of different phases are dashed differently and
   points offset sideways, so none hides another; legends move beside the axes when
   there are many phases, so a plot reads with 1 or 10 phases; intervals are clipped
   to the range their quantity can take (fractions and frequencies in [0, 1]);
4. :func:`executive_summary`: the figures a reader needs first (modal, LD with
   intervals, particle counts, P80) and the warnings that qualify them;
5. :func:`write_html` renders ``templates/report.html.j2`` (Jinja2, autoescaped) into
   one self-contained ``report.html``: summary, provenance, QC images
   (:mod:`volmla.liberation.qc`), tables, every PNG embedded as base64.

A plot with nothing to draw (every particle touches the volume border, as in a drill
core or a block cut from a larger body; a single phase; no grains) says so on its
canvas instead of failing, and the report opens with the reason (:func:`empty_note`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from volmla.io.palette import hex_colors
from volmla.liberation.stats import _population, _solid, _volume
from volmla.liberation.summary import SPLIT_SE

logger = logging.getLogger(__name__)

__all__ = [
    "FEW_PARTICLES",
    "PhaseStyle",
    "cumulative_liberation",
    "cumulative_size",
    "empty_note",
    "executive_summary",
    "figure_titles",
    "p80",
    "phase_styles",
    "plots",
    "write_html",
]

FEW_PARTICLES = 100
"""Below this many analysed particles the summary warns that the intervals are wide."""

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
MASS_HATCH = "///"
"""Mass-weighted bars (beside volume-weighted ones) and 2-D bars (beside 3-D ones)."""
LEGEND_BESIDE = 5
"""More legend entries than this go beside the axes instead of over the data."""
LEGEND_POINTS = 20_000
"""Above this many plotted points a legend goes beside the axes instead of searching for a free corner."""
SCATTER_POINTS = 20_000
"""Most points a scatter draws per phase: beyond it a seeded random subset is drawn (the
legend says how many of how many); the binned statistics use every point. Millions of
marks (a fine breakage sweep holds millions of grains) take minutes to draw and show
only ink."""
SMALL_MULTIPLES = 5
"""Line plots of more phases than this get one panel per phase (else the lines tangle)."""

QC_FIGURES = ("qc_slices.png", "qc_closeups.png", "particle_gallery.png")
"""The QC images of :func:`volmla.liberation.qc.qc_figures`, shown first."""


class PhaseStyle(NamedTuple):
    """How one phase is drawn in every plot."""

    color: str
    linestyle: str
    marker: str


def phase_styles(phase_names: Sequence[str]) -> dict[str, PhaseStyle]:
    """The colour (fixed palette), line style and marker of each phase.

    Parameters
    ----------
    phase_names
        Names of phases 1..N in id order.

    Returns
    -------
    dict
        ``{name: PhaseStyle}``: colours from :func:`volmla.io.palette.hex_colors`; line
        styles and markers cycle, so two phases with equal values stay distinguishable.

    Examples
    --------
    >>> phase_styles(["quartz", "x"])["quartz"]
    PhaseStyle(color='#9e9ac8', linestyle='-', marker='o')
    """
    names = list(phase_names)
    colors = hex_colors(names)
    return {p: PhaseStyle(colors[i + 1], LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
            for i, p in enumerate(names)}


def weighting(summary: Mapping[str, Any]) -> str:
    """``"Mass-weighted"`` with densities, else ``"Volume-weighted"``."""
    return "Mass-weighted" if summary.get("densities") else "Volume-weighted"


def figure_titles(summary: Mapping[str, Any]) -> dict[str, str]:
    """The heading of each PNG, saying what is plotted and how it is weighted.

    Parameters
    ----------
    summary
        The summary dict (``densities``, ``size_by``, ``representativeness``).

    Returns
    -------
    dict
        ``{file name: heading}``.

    Examples
    --------
    >>> figure_titles({"densities": None})["esd_histograms.png"]
    'Volume-weighted ESD histograms per dominant phase'
    """
    w = weighting(summary)
    size = "ESD" if summary.get("size_by", "esd") == "esd" else "particle volume"
    pieces = (summary.get("representativeness") or {}).get("pieces")
    mass = bool(summary.get("densities"))
    return {
        "qc_slices.png": "QC: orthogonal CT slices through the volume centre, phases overlaid, particle outlines",
        "qc_closeups.png": "QC: the largest free and the largest locked particle (central plane of the bounding box)",
        "particle_gallery.png": "Particle gallery by liberation class (phase volume, central plane of each "
                                "particle's bounding box)",
        "modal_mineralogy.png": "Modal mineralogy: volume fraction" + (" (solid) and mass fraction (hatched)" if mass
                                                                       else "") + ", bootstrap 95 % intervals",
        "liberation_by_size.png": f"Liberation degree (volume-weighted) per {size} class",
        "liberation_spectrum.png": "Liberation spectrum: volume fraction of each phase per particle-grade class",
        "cumulative_liberation.png": "Cumulative liberation: volume fraction of each phase in particles of at least "
                                     "that grade",
        "cumulative_size.png": f"Cumulative size distribution ({w.lower()}, fraction passing) with P80",
        "grade_recovery.png": f"Theoretical grade-recovery curves ({w.lower()})",
        "grain_vs_particle.png": "Grain volume vs particle volume (binned mean, +-1 standard deviation)",
        "esd_histograms.png": f"{w} ESD histograms per dominant phase",
        "stereology.png": "Liberation degree: 3-D (solid) vs 2-D sections (hatched)",
        "representativeness.png": "Representativeness: number frequency per size class"
                                  + (f" over {pieces} sub-volumes" if pieces else "")
                                  + ", mean and 95 % interval (clipped to [0, 1]) vs the whole volume",
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _positive(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v) & (v > 0)]


def _log(ax: Any, *, x: Any = None, y: Any = None) -> None:
    """Log axes where the values drawn along them are positive (else matplotlib fails
    on a log axis with nothing it can show); linear otherwise."""
    for axis, values in ((ax.xaxis, x), (ax.yaxis, y)):
        v = _positive(values) if values is not None else np.zeros(0)
        if v.size:
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
            _plain_ticks(axis, few=v.max() / v.min() < 30)
            if v.max() <= v.min() * (1 + 1e-9):  # one value (particles all of one size): a range around it,
                # else the log axis has zero width and matplotlib divides by it when drawing
                (ax.set_xlim if axis is ax.xaxis else ax.set_ylim)(v.min() / 1.5, v.max() * 1.5)


def _plain_ticks(axis: Any, *, few: bool) -> None:
    """Tick labels as plain numbers (``20``, not ``2 x 10^1``); over a short range also
    the minor ticks, else a log axis may show no label at all."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain if few else NullFormatter())


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend only when something drawn has a label (else matplotlib warns); beside
    the axes when it has many entries or the axes hold many points (matplotlib's
    ``loc="best"`` search costs seconds over hundreds of thousands of points), so it
    never covers the data."""
    handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    points = sum(len(line.get_xydata()) for line in ax.lines) + sum(
        len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))
    if len(handles) > LEGEND_BESIDE or (points > LEGEND_POINTS and "loc" not in kwargs):
        kwargs = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False, "fontsize": 8, **kwargs}
    ax.legend(**kwargs)


def _nothing(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _subset(index: np.ndarray, most: int | None = None) -> np.ndarray:
    """At most ``most`` (default :data:`SCATTER_POINTS`) of ``index``: a seeded random subset, in order."""
    most = SCATTER_POINTS if most is None else most
    if index.size <= most:
        return index
    return np.sort(np.random.default_rng(0).choice(index, size=most, replace=False))


def _clip01(values: Any) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)


def _width(n: int, *, base: float = 6.0, per: float = 0.5, most: float = 16.0) -> float:
    return float(min(max(base, 3.0 + per * n), most))


def empty_note(summary: Mapping[str, Any]) -> str | None:
    """Why the statistics are empty, or None when there are particles to analyse.

    Parameters
    ----------
    summary
        The summary dict (``n_particles``, ``n_border``, ``include_border``).

    Returns
    -------
    str or None

    Examples
    --------
    >>> empty_note({"n_particles": 0, "n_border": 3, "include_border": False})
    'no particle lies inside the volume: all 3 touch its border and are excluded (include them with include_border=True, e.g. for a drill core or a block)'
    """
    if summary.get("n_particles"):
        return None
    border = int(summary.get("n_border") or 0)
    if border and not summary.get("include_border"):
        return (f"no particle lies inside the volume: all {border} touch its border and are excluded "
                "(include them with include_border=True, e.g. for a drill core or a block)")
    return "no particles were found"


def _bins(values: np.ndarray, n: int = 20) -> np.ndarray:
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0 or v.min() == v.max():
        lo = float(v.min()) if v.size else 1.0
        return np.array([lo * 0.9, lo * 1.1])
    return np.geomspace(v.min(), v.max() * 1.0001, n + 1)


def cumulative_liberation(
    df: pd.DataFrame, *, phase_names: Sequence[str], include_border: bool = False
) -> pd.DataFrame:
    """The cumulative liberation curve of each phase: how much of it lies in rich particles.

    For a grade ``g`` (the phase's volume over the particle's solid volume), the curve
    gives the fraction of the phase's volume held by particles of grade at least ``g``:
    1 at ``g = 0``, the liberated share near ``g = 1``.

    Parameters
    ----------
    df
        The particle table.
    phase_names
        The phases.
    include_border
        Also count particles touching the volume border.

    Returns
    -------
    pandas.DataFrame
        ``phase, grade, fraction``: per phase the step curve's corners by increasing
        grade, ``fraction`` the volume fraction in particles of grade >= ``grade``
        (from ``(0, 1)`` down to the richest particle, then ``(1, 0)`` unless that
        particle is pure). No rows for a phase that is absent.

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5], "vox_b": [0, 5], "volume_voxels": [10, 10],
    ...                    "touches_border": [False, False]})
    >>> cumulative_liberation(df, phase_names=["a"]).fraction.round(3).tolist()
    [1.0, 1.0, 0.667]
    >>> cumulative_liberation(df, phase_names=["a"]).grade.tolist()
    [0.0, 0.5, 1.0]
    """
    pop = _population(df, include_border)
    solid = _solid(pop)
    frames = []
    for p in phase_names:
        vol = _volume(pop, p)
        has = vol > 0
        total = vol[has].sum()
        if not has.any() or total <= 0:
            continue
        grade = np.clip(np.divide(vol[has], solid[has], out=np.zeros(int(has.sum())), where=solid[has] > 0), 0, 1)
        uniq, inverse = np.unique(grade, return_inverse=True)
        per = np.bincount(inverse, weights=vol[has], minlength=uniq.size)
        at_least = np.cumsum(per[::-1])[::-1] / total  # fraction in particles of grade >= uniq[k]
        g = np.concatenate([[0.0], uniq])
        f = np.concatenate([[at_least[0]], at_least])
        if uniq[-1] < 1.0:
            g, f = np.append(g, 1.0), np.append(f, 0.0)
        frames.append(pd.DataFrame({"phase": p, "grade": g, "fraction": np.clip(f, 0.0, 1.0)}))
    if not frames:
        return pd.DataFrame({"phase": pd.Series([], dtype=object), "grade": pd.Series([], dtype=np.float64),
                             "fraction": pd.Series([], dtype=np.float64)})
    return pd.concat(frames, ignore_index=True)


def cumulative_size(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str] = (),
    densities: Mapping[str, float] | None = None,
    include_border: bool = False,
) -> pd.DataFrame:
    """The cumulative size distribution: fraction of the particles' volume (mass) passing each ESD.

    Parameters
    ----------
    df
        The particle table (``esd_um``, ``volume_um3``, and ``vox_<phase>`` /
        ``vfrac_<phase>`` for the mass).
    phase_names
        Phases whose densities weigh the mass.
    densities
        Per-phase densities: adds ``mass`` (each particle's mass from its phase
        volumes).
    include_border
        Also count particles touching the volume border.

    Returns
    -------
    pandas.DataFrame
        ``esd_um, volume`` (and ``mass``): by increasing ESD, the fraction of the total
        in particles of at most that ESD.

    Examples
    --------
    >>> df = pd.DataFrame({"esd_um": [2.0, 4.0], "volume_um3": [1.0, 3.0], "touches_border": [False, False]})
    >>> cumulative_size(df).volume.tolist()
    [0.25, 1.0]
    """
    pop = _population(df, include_border)
    order = np.argsort(pop["esd_um"].to_numpy(np.float64), kind="stable")
    pop = pop.iloc[order]
    out = {"esd_um": pop["esd_um"].to_numpy(np.float64)}
    weights = {"volume": pop["volume_um3"].to_numpy(np.float64)}
    if densities:
        weights["mass"] = np.sum([_volume(pop, p) * float(densities[p]) for p in phase_names], axis=0) \
            if phase_names else np.zeros(len(pop))
    for key, w in weights.items():
        total = w.sum()
        out[key] = np.cumsum(w) / total if total > 0 else np.full(w.size, np.nan)
    return pd.DataFrame(out)


def p80(curve: pd.DataFrame, *, column: str = "volume", q: float = 0.8) -> float:
    """The ESD that ``q`` of the distribution passes, read off :func:`cumulative_size`.

    Linear interpolation between particles, as
    :func:`volmla.breakage.fracture.passing_size` does for volume weights.

    Parameters
    ----------
    curve
        :func:`cumulative_size`.
    column
        ``"volume"`` or ``"mass"``.
    q
        Fraction passing.

    Returns
    -------
    float
        um; NaN without particles.

    Examples
    --------
    >>> p80(pd.DataFrame({"esd_um": [2.0, 4.0], "volume": [0.5, 1.0]}))
    3.2
    """
    if column not in curve or not len(curve) or not np.isfinite(curve[column]).all():
        return float("nan")
    return float(np.interp(q, curve[column].to_numpy(np.float64), curve["esd_um"].to_numpy(np.float64)))


def _phase_axes(plt: Any, n: int) -> tuple[Any, list[Any]]:
    """The axes of a per-phase line plot: one for up to :data:`SMALL_MULTIPLES` phases
    (each phase's curve drawn on it), else one small panel per phase with shared axes."""
    if n <= SMALL_MULTIPLES:
        fig, ax = plt.subplots(figsize=(7, 4))
        return fig, [ax] * n
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(2.5 * cols + 1.0, 2.2 * rows + 0.8), sharex=True, sharey=True,
                             squeeze=False)
    flat = list(grid.ravel())
    for extra in flat[n:]:
        extra.axis("off")
    return fig, flat[:n]


def _label_axes(fig: Any, axes: Sequence[Any], panels: bool, xlabel: str, ylabel: str, names: Sequence[str]) -> None:
    """Axis labels and phase names: a legend on one shared axes, a title per panel."""
    if not panels:
        ax = axes[0] if axes else fig.gca()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        _legend(ax)
        return
    for a, p in zip(axes, names, strict=True):
        a.set_title(p, fontsize=9)
    fig.supxlabel(xlabel, fontsize=10)
    fig.supylabel(ylabel, fontsize=10)


def _dodge(n: int) -> np.ndarray:
    """Sideways offsets (decades, on a log axis) that keep n phases' equal points apart."""
    step = min(0.012, 0.06 / max(n - 1, 1))
    return (np.arange(n) - (n - 1) / 2) * step


def plots(
    out_dir: str | Path,
    *,
    summary: Mapping[str, Any],
    particles: pd.DataFrame,
    grains: pd.DataFrame,
    extras: Mapping[str, Any],
    phase_names: Sequence[str],
    densities: Mapping[str, float] | None = None,
) -> list[Path]:
    """Draw the report's PNGs into ``out_dir``; returns their paths.

    Parameters
    ----------
    out_dir
        The folder the PNGs go into.
    summary
        The summary dict of :func:`volmla.liberation.liberation_summary` (plus the
        extras :func:`volmla.liberation.analyse` adds).
    particles, grains
        The particle and grain tables.
    extras
        ``grade_recovery``, and where computed ``stereology`` and
        ``representativeness`` tables.
    phase_names
        Phases to draw.
    densities
        Per-phase densities (mass weighting), else volume.

    Returns
    -------
    list of pathlib.Path
        The PNGs written.
    """
    plt = _pyplot()
    out = Path(out_dir)
    names = list(phase_names)
    style = phase_styles(names)
    n = len(names)
    include = bool(summary.get("include_border"))
    pop = _population(particles, include)
    border = int(summary.get("n_border") or 0)
    nothing = (f"no particle inside the volume:\nall {border} touch its border" if empty_note(summary) and border
               and not include else "nothing to draw")
    size_label = "ESD (um)" if summary.get("size_by", "esd") == "esd" else "particle volume (um^3)"
    files = []

    # modal mineralogy: phase colours, mass hatched beside volume, bootstrap intervals
    fig, ax = plt.subplots(figsize=(_width(n, per=0.7), 4))
    modal = summary["modal_mineralogy"]
    mass = summary.get("modal_mineralogy_mass")
    ci = (summary.get("uncertainty") or {}).get("modal_mineralogy") or {}
    x = np.arange(n)
    series = [("volume", modal, "")] + ([("mass", mass, MASS_HATCH)] if mass else [])
    bar_w = 0.8 / len(series)
    for k, (label, values, hatch) in enumerate(series):
        h = np.array([values[p] or 0.0 for p in names], dtype=np.float64)
        xs = x + (k - (len(series) - 1) / 2) * bar_w
        ax.bar(xs, h, bar_w, color=[style[p].color for p in names], edgecolor="k", linewidth=0.6, hatch=hatch)
        if ci and label == ("mass" if mass else "volume"):  # the bootstrap resamples this weighting
            lo = _clip01([np.nan if (ci.get(p) or {}).get("lo") is None else ci[p]["lo"] for p in names])
            hi = _clip01([np.nan if (ci.get(p) or {}).get("hi") is None else ci[p]["hi"] for p in names])
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.errorbar(xs[ok], h[ok], yerr=[np.maximum(h[ok] - lo[ok], 0), np.maximum(hi[ok] - h[ok], 0)],
                        fmt="none", ecolor="k", capsize=3, linewidth=1)
    if mass:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor="white", edgecolor="k", label="volume fraction"),
                           Patch(facecolor="white", edgecolor="k", hatch=MASS_HATCH, label="mass fraction")],
                  fontsize=8)
    ax.set_xticks(x, names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylabel("mass or volume fraction" if mass else "volume fraction")
    ax.set_ylim(0, None)
    if not len(pop):
        _nothing(ax, nothing)
    files.append(_save(fig, out / "modal_mineralogy.png"))

    # LD per size class: phase colours, dashes and markers; points offset sideways (one
    # panel per phase when there are many)
    fig, axes = _phase_axes(plt, n)
    panels = len(set(map(id, axes))) > 1
    mids: list[float] = []
    offsets = _dodge(n) if not panels else np.zeros(n)
    for j, p in enumerate(names):
        rows = summary["liberation_by_size"][p]
        mid = np.array([np.sqrt(r["lo"] * r["hi"]) if r["lo"] > 0 else r["hi"] / 2 for r in rows], dtype=np.float64)
        ld = np.array([np.nan if r["ld"] is None else r["ld"] for r in rows], dtype=np.float64)
        mids += [float(m) for m, v in zip(mid, ld, strict=True) if np.isfinite(v)]
        s = style[p]
        axes[j].plot(mid * 10 ** offsets[j], ld, color=s.color, linestyle=s.linestyle, marker=s.marker,
                     markeredgecolor="k", markeredgewidth=0.5, label=p)
    ax = axes[0] if axes else fig.gca()
    _log(ax, x=mids)
    if not mids:
        _nothing(ax, nothing)
    elif n > 1 and not panels:
        ax.text(0.0, 1.01, f"phases offset sideways by up to +-{100 * (10 ** abs(offsets[0]) - 1):.0f} % of the "
                "class centre so that equal values stay visible", transform=ax.transAxes, fontsize=7)
    ax.set_ylim(-0.03, 1.03)
    _label_axes(fig, axes, panels, size_label, "liberation degree", names)
    files.append(_save(fig, out / "liberation_by_size.png"))

    # liberation spectrum: grouped bars in phase colours
    fig, ax = plt.subplots(figsize=(_width(n, base=7.0, per=1.0, most=18.0), 4))
    labels = ["0"] + [f"{10 * k}-{10 * (k + 1)}" for k in range(10)] + ["100"]
    width = 0.8 / max(n, 1)
    for j, p in enumerate(names):
        frac = _clip01([c["fraction"] or 0 for c in summary["liberation_spectrum"][p]])
        ax.bar(np.arange(12) + (j - (n - 1) / 2) * width, frac, width, color=style[p].color, edgecolor="k",
               linewidth=0.4, label=p)
    ax.set_xticks(np.arange(12), labels, rotation=45)
    ax.set_xlabel("particle grade class (% of the particle's solid volume)")
    ax.set_ylabel("volume fraction of the phase")
    ax.set_ylim(0, None)
    _legend(ax)
    if not len(pop):
        _nothing(ax, nothing)
    files.append(_save(fig, out / "liberation_spectrum.png"))

    # cumulative liberation curves (one panel per phase when there are many)
    fig, axes = _phase_axes(plt, n)
    panels = len(set(map(id, axes))) > 1
    curves = cumulative_liberation(particles, phase_names=names, include_border=include)
    thr = summary.get("free_threshold")
    for j, p in enumerate(names):
        c = curves[curves["phase"] == p]
        if len(c):
            s = style[p]
            axes[j].step(100 * c["grade"], c["fraction"], where="pre", color=s.color, linestyle=s.linestyle,
                         linewidth=1.8, label=p)
    for a in dict.fromkeys(axes) or [fig.gca()]:
        if thr is not None:
            a.axvline(100 * float(thr), color="0.4", linestyle=":", linewidth=1,
                      label=f"free threshold ({100 * thr:g} %)" if a is (axes or [a])[0] else None)
    ax = axes[0] if axes else fig.gca()
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.02, 1.02)
    if not len(curves):
        _nothing(ax, nothing)
    _label_axes(fig, axes, panels, "particle grade of the phase (%)",
                "volume fraction of the phase\nin particles of at least that grade", names)
    files.append(_save(fig, out / "cumulative_liberation.png"))

    # cumulative size distribution with P80
    fig, ax = plt.subplots(figsize=(7, 4))
    csd = cumulative_size(particles, phase_names=names, densities=densities, include_border=include)
    lines = [("volume", "-", "volume-weighted")] + ([("mass", "--", "mass-weighted")] if densities else [])
    drawn = False
    for col, ls, label in lines:
        if len(csd) and np.isfinite(csd[col]).all():
            x80 = p80(csd, column=col)
            ax.step(csd["esd_um"], csd[col], where="post", color="k", linestyle=ls, label=f"{label}, P80 = {x80:.3g} um")
            ax.axvline(x80, color="0.35", linestyle=ls, linewidth=0.8)
            ax.plot([x80], [0.8], marker="v", color="k", markersize=6)
            drawn = True
    if drawn:
        ax.axhline(0.8, color="0.6", linestyle=":", linewidth=0.8)
        _log(ax, x=csd["esd_um"])
    else:
        _nothing(ax, nothing)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ESD (um)")
    ax.set_ylabel("fraction passing")
    _legend(ax, loc="lower right")
    files.append(_save(fig, out / "cumulative_size.png"))

    # grade-recovery
    fig, ax = plt.subplots(figsize=(7, 4))
    gr = extras["grade_recovery"]
    for p in names:
        sub = gr[gr["phase"] == p]
        if len(sub):
            s = style[p]
            ax.plot(sub["cum_recovery"], sub["cum_grade"], color=s.color, linestyle=s.linestyle, linewidth=1.8, label=p)
    ax.set_xlabel(f"cumulative recovery ({'mass' if densities else 'volume'})")
    ax.set_ylabel("cumulative grade")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    _legend(ax)
    if not ax.get_legend_handles_labels()[0]:
        _nothing(ax, nothing)
    files.append(_save(fig, out / "grade_recovery.png"))

    # grain volume vs particle volume
    fig, ax = plt.subplots(figsize=(7, 4))
    vol = pop.set_index("particle_id")["volume_um3"]
    g = grains[grains["particle_id"].isin(vol.index)] if len(grains) else grains
    if len(g):
        pv = vol.reindex(g["particle_id"].to_numpy()).to_numpy(np.float64)
        gv = g["volume_um3"].to_numpy(np.float64)
        for p in names:
            sel = np.flatnonzero((g["phase"] == p).to_numpy())
            if sel.size:
                shown = _subset(sel)
                label = p if shown.size == sel.size else f"{p} ({shown.size:,} of {sel.size:,} shown)"
                ax.scatter(pv[shown], gv[shown], s=16, alpha=0.85, color=style[p].color, marker=style[p].marker,
                           edgecolors="k", linewidths=0.3, label=label)
        edges = _bins(pv, 12)
        idx = np.digitize(pv, edges) - 1
        bin_mids, means, stds = [], [], []
        for k in range(edges.size - 1):
            v = gv[idx == k]
            if v.size:
                bin_mids.append(np.sqrt(edges[k] * edges[k + 1]))
                means.append(v.mean())
                stds.append(v.std())
        if bin_mids:
            m, sd = np.array(means), np.array(stds)
            ax.plot(bin_mids, m, "k-", label="binned mean")
            ax.fill_between(bin_mids, np.maximum(m - sd, m * 0.05), m + sd, color="k", alpha=0.15, label="+-1 sd")
        _log(ax, x=pv, y=gv)
        _legend(ax, fontsize=7)
    else:
        _nothing(ax, "no grain volume given" if not len(grains) else nothing)
    ax.set_xlabel("particle volume (um^3)")
    ax.set_ylabel("grain volume (um^3)")
    files.append(_save(fig, out / "grain_vs_particle.png"))

    # ESD histograms per dominant phase
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(pop) and names:
        vox = np.stack([_volume(pop, p) for p in names], axis=1)
        rho = np.array([densities[p] for p in names]) if densities else np.ones(n)
        weight = vox @ rho
        dominant = np.argmax(vox, axis=1)
        esd = pop["esd_um"].to_numpy(np.float64)
        edges = _bins(esd, 15)
        for j, p in enumerate(names):
            sel = dominant == j
            if sel.any() and weight[sel].sum() > 0:
                h, _ = np.histogram(esd[sel], bins=edges, weights=weight[sel])
                if h.sum() > 0:
                    ax.stairs(h / h.sum(), edges, color=style[p].color, linestyle=style[p].linestyle, linewidth=1.8,
                              label=p)
        _log(ax, x=edges)
        _legend(ax)
    else:
        _nothing(ax, nothing)
    ax.set_xlabel("ESD (um)")
    ax.set_ylabel("mass fraction" if densities else "volume fraction")
    files.append(_save(fig, out / "esd_histograms.png"))

    if "stereology" in extras:
        from matplotlib.patches import Patch

        st = extras["stereology"]
        fig, ax = plt.subplots(figsize=(_width(len(st), per=0.7), 4))
        x = np.arange(len(st))
        colors = [style[p].color if p in style else "0.7" for p in st["phase"]]
        ax.bar(x - 0.2, _clip01(st["ld_3d"].fillna(0)), 0.4, color=colors, edgecolor="k", linewidth=0.6)
        ax.bar(x + 0.2, _clip01(st["ld_2d"].fillna(0)), 0.4, color=colors, edgecolor="k", linewidth=0.6,
               hatch=MASS_HATCH)
        ax.set_xticks(x, st["phase"], rotation=45 if len(st) > 4 else 0, ha="right" if len(st) > 4 else "center")
        ax.set_ylabel("liberation degree")
        ax.set_ylim(0, 1.05)
        ax.legend(handles=[Patch(facecolor="white", edgecolor="k", label="3-D"),
                           Patch(facecolor="white", edgecolor="k", hatch=MASS_HATCH, label="2-D sections")],
                  fontsize=8)
        if not len(pop):
            _nothing(ax, nothing)
        files.append(_save(fig, out / "stereology.png"))

    if "representativeness" in extras:
        rep = extras["representativeness"]
        fig, ax = plt.subplots(figsize=(7, 4))
        mid = np.sqrt(rep["lo"].clip(lower=1e-12) * rep["hi"]).to_numpy(np.float64)
        mean = rep["mean"].to_numpy(np.float64)
        shown = np.isfinite(mid) & np.isfinite(mean) & (mid > 0)
        if shown.any():
            lo = _clip01(rep["ci_lo"].to_numpy(np.float64))
            hi = _clip01(rep["ci_hi"].to_numpy(np.float64))
            m = mean[shown]
            err = [np.nan_to_num(np.maximum(m - lo[shown], 0)), np.nan_to_num(np.maximum(hi[shown] - m, 0))]
            # the two series sit 3 % either side of the class centre, so neither hides the other
            ax.errorbar(mid[shown] / 1.03, m, yerr=err, fmt="o", color="k", capsize=3,
                        label="mean of sub-volumes, 95 % interval")
            ax.plot(mid[shown] * 1.03, rep["whole"].to_numpy(np.float64)[shown], linestyle="--", marker="s",
                    color="0.45", markerfacecolor="white", label="whole volume")
            _log(ax, x=mid[shown])
            ax.set_ylim(0, None)
            _legend(ax)
        else:
            _nothing(ax, nothing)
        ax.set_xlabel(size_label)
        ax.set_ylabel("number frequency")
        files.append(_save(fig, out / "representativeness.png"))
    return files


# ----------------------------------------------------------------------------- the page


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "-" if not np.isfinite(v) else f"{float(v):.{digits}g}"
    return str(v)


def _interval(ci: Mapping[str, Any] | None) -> str:
    if not ci or ci.get("lo") is None or ci.get("hi") is None:
        return ""
    lo, hi = np.clip([float(ci["lo"]), float(ci["hi"])], 0.0, 1.0)
    return f"{lo:.3g} - {hi:.3g}"


def executive_summary(summary: Mapping[str, Any], *, particles: pd.DataFrame | None = None) -> dict[str, Any]:
    """The figures a reader needs first, and the warnings that qualify them.

    Parameters
    ----------
    summary
        The summary dict of :func:`volmla.liberation.analyse`.
    particles
        The particle table (for P80); without it P80 is left out.

    Returns
    -------
    dict
        ``n_particles, n_total, n_border, border_included, weighting, p80_um,
        has_mass, rows`` (per phase: ``phase, color, volume, volume_ci, mass, mass_ci, ld,
        ld_ci``, numbers formatted, intervals clipped to [0, 1]), ``warnings`` (what
        qualifies the figures) and ``notes`` (how they were computed; phases told apart only
        over grains, :func:`volmla.liberation.summary.close_phases`), as sentences.

    Examples
    --------
    >>> s = {"n_particles": 12, "n_particles_total": 15, "n_border": 3, "include_border": False,
    ...      "phases": ["quartz"], "modal_mineralogy": {"quartz": 1.0}, "liberation_degree": {"quartz": 0.0},
    ...      "phase_volumes": "voxel counts"}
    >>> executive_summary(s)["warnings"][:2]
    ['few particles (12 analysed): intervals are wide', 'no free particle of quartz: its liberation degree is 0']
    """
    names = list(summary.get("phases") or [])
    style = phase_styles(names)
    unc = summary.get("uncertainty") or {}
    modal_ci = unc.get("modal_mineralogy") or {}
    ld_ci = unc.get("liberation_degree") or {}
    mass = summary.get("modal_mineralogy_mass") or {}
    n = int(summary.get("n_particles") or 0)
    rows = []
    for p in names:
        rows.append({
            "phase": p, "color": style[p].color,
            "volume": _fmt(summary["modal_mineralogy"].get(p)),
            "volume_ci": "" if mass else _interval(modal_ci.get(p)),
            "mass": _fmt(mass.get(p)) if mass else "",
            "mass_ci": _interval(modal_ci.get(p)) if mass else "",
            "ld": _fmt(summary["liberation_degree"].get(p)),
            "ld_ci": _interval(ld_ci.get(p)),
        })
    warnings = [str(w) for w in summary.get("warnings") or []]  # the summary's own (phases not found)
    said = {w.split(":", 1)[0].removeprefix("phase ") for w in warnings if w.startswith("phase ")}
    note = empty_note(summary)
    if note:
        warnings.append(note)
    elif n < FEW_PARTICLES:
        warnings.append(f"few particles ({n} analysed): intervals are wide")
    total = int(summary.get("n_particles_total") or 0)
    border = int(summary.get("n_border") or 0)
    if n and border and not summary.get("include_border") and border > total / 2:
        warnings.append(f"most particles ({border} of {total}) touch the volume border and are excluded: the "
                        "statistics rest on the smaller particles inside it")
    if summary.get("include_border") and border:
        warnings.append(f"{border} particles cut by the volume border are included: their sizes are too small and "
                        "their liberation too high")
    for p in names:
        modal = summary["modal_mineralogy"].get(p)
        ld = summary["liberation_degree"].get(p)
        if p in said:
            continue
        if n and not modal:
            warnings.append(f"{p} is not found in the analysed particles")
        elif n and ld is not None and ld == 0:
            warnings.append(f"no free particle of {p}: its liberation degree is 0")
    notes = [f"liberation degrees are by volume; modal mineralogy by volume{' and by mass' if mass else ''}"]
    small = any(w.startswith("particles are small against the voxel") for w in warnings)
    for pair in summary.get("close_phases") or []:  # phases the noise does not tell apart per voxel
        (a, b), c = pair["phases"], float(pair["contrast_sigma"])
        line = (f"{a} and {b} lie {c:.1f} noise sigmas apart in grey: they are told apart over grains, not voxels, "
                "so small intergrown grains of the two read as their neighbours")
        if small:  # both: the hard phantoms' case (README: where the targets are met)
            warnings.append(f"{line}; in particles this small their liberation degrees may be off by 0.1 or more, "
                            "a bias the intervals (sampling only) do not include")
        else:
            notes.append(line)
        se = pair.get("split_se_sigma")
        if se is not None and float(se) >= SPLIT_SE:
            na, nb = pair["voxels"]
            warnings.append(f"the grey levels of {a} and {b} rest on {na} and {nb} pure labelled voxels: the grey "
                            f"that splits them is known to +/-{float(se):.2f} noise sigma, enough to move their "
                            "volumes by a few percent, which the intervals do not include; label more or larger "
                            "planes")
    psf = summary.get("partial_volume_psf")
    if summary.get("close_phases") and isinstance(psf, Mapping) and psf.get("sigma") is not None:
        how = "estimated from the particles' edges" if psf.get("estimated") else "as given"
        notes.append(f"the phases' partial-volume correction used a PSF sigma of {float(psf['sigma']):.2f} voxels "
                     f"({how}); where phases are told apart over grains its error matters: on the crushed-ore "
                     "phantoms 0.1 voxel of it moved the volume fractions of two phases 1-1.5 noise sigmas apart "
                     "by 0.01-0.1 (give the scan's PSF, when known, as --psf-sigma or segment.psf_sigma)")
    volumes = summary.get("phase_volumes")
    if volumes == "voxel counts":
        warnings.append("phase volumes are voxel counts (no intensity volume given): boundary voxels count whole, "
                        "so thin grains and rims bias grades and liberation")
    elif volumes == "partial-volume":
        notes.append("phase volumes apportion boundary voxels by grey level (partial volume); voxel counts are "
                     "in vox_<phase> beside them")
    if n and not unc:
        warnings.append("no bootstrap intervals were computed (n_boot=0)")
    p80_um = None
    if particles is not None and n:
        curve = cumulative_size(particles, phase_names=names, densities=summary.get("densities"),
                                include_border=bool(summary.get("include_border")))
        value = p80(curve, column="mass" if summary.get("densities") else "volume")
        p80_um = _fmt(value) if np.isfinite(value) else None
    warnings = list(dict.fromkeys(warnings))  # a summary that already carries the report's warnings
    return {
        "n_particles": n, "n_total": total, "n_border": border,
        "border_included": bool(summary.get("include_border")), "weighting": weighting(summary),
        "p80_um": p80_um, "rows": rows, "warnings": warnings, "notes": notes, "has_mass": bool(mass),
    }


def _provenance_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    prov = summary.get("provenance") or {}
    rows = [(f"input: {k}", v) for k, v in (prov.get("inputs") or {}).items() if v]
    rows += [("volmla version", prov.get("volmla_version")), ("model", prov.get("model") or "none recorded"),
             ("date (UTC)", prov.get("date"))]
    vs = prov.get("voxel_size_um", summary.get("voxel_size_um"))
    rows.append(("voxel size (um, z y x)", ", ".join(f"{v:g}" for v in vs) if vs else None))
    return [(k, _fmt(v)) for k, v in rows if v is not None or k.startswith("voxel")]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    return {"header": list(header), "rows": [[_fmt(v, 4) for v in r] for r in rows]}


def _tables(summary: Mapping[str, Any], extras: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = list(summary["phases"])
    out = []
    size = "ESD (um)" if summary.get("size_by", "esd") == "esd" else "volume (um^3)"
    for p in names:
        rows = [[r["lo"], r["hi"], r["ld"], r["n"], r["n_particles"]] for r in summary["liberation_by_size"][p]]
        out.append({"title": f"Liberation degree per size class: {p}",
                    **_table([f"{size} from", "to", "LD", "particles with the phase", "particles"], rows)})
    spec_head = ["phase", "0", *(f"({10 * k},{10 * (k + 1)}]" for k in range(9)), "(90,100)", "100"]
    out.append({"title": "Liberation spectrum: volume fraction of each phase per particle-grade class (%)",
                **_table(spec_head, [[p, *(c["fraction"] for c in summary["liberation_spectrum"][p])] for p in names])})
    lock = summary.get("locking") or {}
    if lock:
        out.append({"title": "Locking: fraction of particles / of phase volume",
                    **_table(["phase", "liberated", "binary", "ternary", "complex"],
                             [[p, *(f"{_fmt(lock[p][c]['number'])} / {_fmt(lock[p][c]['volume'])}"
                                    for c in ("liberated", "binary", "ternary", "complex"))] for p in names])})
    assoc = summary.get("association") or {}
    if assoc:
        others = [*names, "background"]
        out.append({"title": "Phase association: shared boundary area (um^2)",
                    **_table(["phase", *others], [[p, *(assoc[p].get(q) if q != p else None for q in others)]
                                                  for p in names])})
    if "stereology" in extras:
        st = extras["stereology"]
        out.append({"title": f"Stereology: 2-D sections every {summary['stereology']['step']} planes vs 3-D",
                    **_table(list(st.columns), st.to_numpy().tolist())})
    if "representativeness" in extras:
        rep = extras["representativeness"].copy()
        meta = summary["representativeness"]
        for col in ("ci_lo", "ci_hi"):
            rep[col] = rep[col].clip(0.0, 1.0)
        unit = "um" if meta.get("by", "esd") == "esd" else "um^3"
        rep = rep.rename(columns={"lo": f"size from ({unit})", "hi": f"to ({unit})", "whole": "whole volume",
                                  "mean": "mean of sub-volumes", "ci_lo": "95 % lo", "ci_hi": "95 % hi"})
        out.append({"title": f"Representativeness: number frequency per size class over {meta['pieces']} sub-volumes "
                             f"(grid {meta['grid']}); intervals clipped to [0, 1]",
                    **_table(list(rep.columns), rep.to_numpy().tolist())})
    return out


_NOTES = {
    "liberation_by_size.png": "Each phase has its own colour, dash and marker; points are offset sideways a little "
                              "so that equal values (often 0 or 1) stay visible.",
    "cumulative_liberation.png": "Read at a grade: the share of the phase a concentrate of all particles at least "
                                 "that rich would recover. The value near 100 % is the liberated share.",
    "representativeness.png": "Sub-volume means (circles) and the whole volume (squares) are offset sideways so "
                              "neither hides the other.",
}


def _template() -> Any:
    import jinja2

    text = resources.files("volmla.liberation").joinpath("templates", "report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.from_string(text)


def write_html(
    path: str | Path,
    *,
    summary: Mapping[str, Any],
    pngs: Sequence[Path],
    extras: Mapping[str, Any],
    particles: pd.DataFrame | None = None,
) -> Path:
    """Write the self-contained report: summary, provenance, QC, tables, embedded PNGs.

    Parameters
    ----------
    path
        The HTML file.
    summary
        The summary dict.
    pngs
        The plots to embed (the QC images of :mod:`volmla.liberation.qc` are shown first).
    extras
        Tables computed besides the summary (grade-recovery, stereology, ...).
    particles
        The particle table, for the P80 of the executive summary.

    Returns
    -------
    pathlib.Path
    """
    titles = figure_titles(summary)
    figures: list[dict[str, str]] = []
    qc: list[dict[str, str]] = []
    for png in pngs:
        name = Path(png).name
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        fig = {"name": name, "title": titles.get(name, Path(png).stem), "note": _NOTES.get(name, ""),
               "src": f"data:image/png;base64,{data}"}
        (qc if name in QC_FIGURES else figures).append(fig)
    qc.sort(key=lambda f: QC_FIGURES.index(f["name"]))
    run = [
        ("volume shape (z y x)", ", ".join(str(v) for v in summary.get("shape", [])) or "-"),
        ("particles analysed", _fmt(summary["n_particles"])),
        ("particles touching the border", f"{summary['n_border']} "
                                          f"({'included' if summary['include_border'] else 'excluded'})"),
        ("free threshold (grade >)", _fmt(summary["free_threshold"])),
        ("phase volumes", summary.get("phase_volumes", "voxel counts")),
        ("weighting", weighting(summary) + (" (densities " + ", ".join(f"{k} {v:g}" for k, v in
                                                                        summary["densities"].items()) + " g/cm3)"
                                            if summary.get("densities") else " (no densities given)")),
    ]
    page = _template().render(
        title="volmla liberation report",
        note=empty_note(summary),
        summary=executive_summary(summary, particles=particles),
        run=run,
        provenance=_provenance_rows(summary),
        qc=qc,
        qc_without_ct=not any(f["name"] == QC_FIGURES[0] for f in qc),
        tables=_tables(summary, extras),
        figures=figures,
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
