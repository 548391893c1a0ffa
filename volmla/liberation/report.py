"""Plots (PNG, matplotlib Agg) and the self-contained HTML report of a liberation run.

1. :func:`plots` draws, from the summary and the tables of
   :func:`volmla.liberation.analyse`: modal mineralogy, LD per size class, the
   liberation spectrum, the theoretical grade-recovery curves, the grain-volume vs
   particle-volume map (binned mean and +-1 standard deviation band, log bins),
   mass-weighted ESD histograms per dominant phase, 2-D vs 3-D liberation and the
   representativeness check (mean and 95 % CI per size class);
2. :func:`write_html` writes ``report.html``: the key numbers as HTML tables and every
   PNG embedded as base64, so the file stands alone.

A plot with nothing to draw (every particle touches the volume border, as in a drill
core or a block cut from a larger body; a single phase; no grains) says so on its
canvas instead of failing, and the report opens with the reason (:func:`empty_note`).
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["empty_note", "plots", "write_html"]

_TITLES = {
    "modal_mineralogy.png": "Modal mineralogy",
    "liberation_by_size.png": "Liberation degree per size class",
    "liberation_spectrum.png": "Liberation spectrum (by phase volume)",
    "grade_recovery.png": "Theoretical grade-recovery curves",
    "grain_vs_particle.png": "Grain volume vs particle volume",
    "esd_histograms.png": "Mass-weighted ESD histograms per dominant phase",
    "stereology.png": "2-D vs 3-D liberation degree",
    "representativeness.png": "Representativeness: size frequencies over sub-volumes",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _positive(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v) & (v > 0)]


def _log(ax: Any, *, x: Any = None, y: Any = None) -> None:
    """Log axes where the values drawn along them are positive (else matplotlib fails
    on a log axis with nothing it can show); linear otherwise."""
    if x is not None and _positive(x).size:
        ax.set_xscale("log")
    if y is not None and _positive(y).size:
        ax.set_yscale("log")


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend only when something drawn has a label (else matplotlib warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _nothing(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


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
    pop = particles if summary.get("include_border") else particles[~particles["touches_border"].astype(bool)]
    border = int(summary.get("n_border") or 0)
    nothing = (f"no particle inside the volume:\nall {border} touch its border" if empty_note(summary) and border
               and not summary.get("include_border") else "nothing to draw")
    files = []

    fig, ax = plt.subplots(figsize=(6, 4))
    modal = summary["modal_mineralogy"]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [modal[p] or 0 for p in names], 0.4, label="volume")
    if summary.get("modal_mineralogy_mass"):
        ax.bar(x + 0.2, [summary["modal_mineralogy_mass"][p] or 0 for p in names], 0.4, label="mass")
    ax.set_xticks(x, names)
    ax.set_ylabel("fraction")
    _legend(ax)
    if not len(pop):
        _nothing(ax, nothing)
    files.append(_save(fig, out / "modal_mineralogy.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    mids: list[float] = []
    for p in names:
        rows = summary["liberation_by_size"][p]
        mid = [np.sqrt(r["lo"] * r["hi"]) if r["lo"] > 0 else r["hi"] / 2 for r in rows]
        ld = [np.nan if r["ld"] is None else r["ld"] for r in rows]
        mids += [m for m, v in zip(mid, ld, strict=True) if np.isfinite(v)]
        ax.plot(mid, ld, "o-", label=p)
    _log(ax, x=mids)
    if not mids:
        _nothing(ax, nothing)
    ax.set_xlabel("ESD (um)" if summary.get("size_by", "esd") == "esd" else "volume (um^3)")
    ax.set_ylabel("liberation degree")
    ax.set_ylim(-0.02, 1.02)
    _legend(ax)
    files.append(_save(fig, out / "liberation_by_size.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = ["0"] + [f"{10 * k}-{10 * (k + 1)}" for k in range(10)] + ["100"]
    width = 0.8 / max(len(names), 1)
    for j, p in enumerate(names):
        frac = [c["fraction"] or 0 for c in summary["liberation_spectrum"][p]]
        ax.bar(np.arange(12) + (j - (len(names) - 1) / 2) * width, frac, width, label=p)
    ax.set_xticks(np.arange(12), labels, rotation=45)
    ax.set_xlabel("grade class (%)")
    ax.set_ylabel("fraction of phase volume")
    _legend(ax)
    if not len(pop):
        _nothing(ax, nothing)
    files.append(_save(fig, out / "liberation_spectrum.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    gr = extras["grade_recovery"]
    for p in names:
        sub = gr[gr["phase"] == p]
        if len(sub):
            ax.plot(sub["cum_recovery"], sub["cum_grade"], label=p)
    ax.set_xlabel("cumulative recovery")
    ax.set_ylabel("cumulative grade")
    _legend(ax)
    if not ax.get_legend_handles_labels()[0]:
        _nothing(ax, nothing)
    files.append(_save(fig, out / "grade_recovery.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    vol = pop.set_index("particle_id")["volume_um3"]
    g = grains[grains["particle_id"].isin(vol.index)] if len(grains) else grains
    if len(g):
        pv = vol.reindex(g["particle_id"].to_numpy()).to_numpy(np.float64)
        gv = g["volume_um3"].to_numpy(np.float64)
        for p in names:
            sel = (g["phase"] == p).to_numpy()
            if sel.any():
                ax.scatter(pv[sel], gv[sel], s=6, alpha=0.5, label=p)
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

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(pop) and names:
        vox = np.stack([pop[f"vox_{p}"].to_numpy(np.float64) for p in names], axis=1)
        rho = np.array([densities[p] for p in names]) if densities else np.ones(len(names))
        mass = vox @ rho
        dominant = np.argmax(vox, axis=1)
        esd = pop["esd_um"].to_numpy(np.float64)
        edges = _bins(esd, 15)
        for j, p in enumerate(names):
            sel = dominant == j
            if sel.any() and mass[sel].sum() > 0:
                h, _ = np.histogram(esd[sel], bins=edges, weights=mass[sel])
                if h.sum() > 0:
                    ax.stairs(h / h.sum(), edges, label=p)
        _log(ax, x=edges)
        _legend(ax)
    else:
        _nothing(ax, nothing)
    ax.set_xlabel("ESD (um)")
    ax.set_ylabel("mass fraction" if densities else "volume fraction")
    files.append(_save(fig, out / "esd_histograms.png"))

    if "stereology" in extras:
        st = extras["stereology"]
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(st))
        ax.bar(x - 0.2, st["ld_3d"].fillna(0), 0.4, label="3-D")
        ax.bar(x + 0.2, st["ld_2d"].fillna(0), 0.4, label="2-D sections")
        ax.set_xticks(x, st["phase"])
        ax.set_ylabel("liberation degree")
        _legend(ax)
        if not len(pop):
            _nothing(ax, nothing)
        files.append(_save(fig, out / "stereology.png"))

    if "representativeness" in extras:
        rep = extras["representativeness"]
        fig, ax = plt.subplots(figsize=(6, 4))
        mid = np.sqrt(rep["lo"].clip(lower=1e-12) * rep["hi"]).to_numpy(np.float64)
        mean = rep["mean"].to_numpy(np.float64)
        shown = np.isfinite(mid) & np.isfinite(mean) & (mid > 0)
        if shown.any():
            ax.errorbar(mid[shown], mean[shown], yerr=[(rep["mean"] - rep["ci_lo"]).to_numpy(np.float64)[shown],
                                                       (rep["ci_hi"] - rep["mean"]).to_numpy(np.float64)[shown]],
                        fmt="o", capsize=3, label="mean of pieces, 95 % CI")
            ax.plot(mid[shown], rep["whole"].to_numpy(np.float64)[shown], "k.--", label="whole volume")
            _log(ax, x=mid[shown])
            _legend(ax)
        else:
            _nothing(ax, nothing)
        ax.set_xlabel("ESD (um)" if summary.get("size_by", "esd") == "esd" else "volume (um^3)")
        ax.set_ylabel("relative frequency")
        files.append(_save(fig, out / "representativeness.png"))
    return files


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "-" if not np.isfinite(v) else f"{v:.4g}"
        return html.escape("-" if v is None else str(v))

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(path: str | Path, *, summary: Mapping[str, Any], pngs: Sequence[Path], extras: Mapping[str, Any]) -> Path:
    """Write the self-contained report (tables + base64-embedded PNGs).

    Parameters
    ----------
    path
        The HTML file.
    summary
        The summary dict.
    pngs
        The plots to embed.
    extras
        Tables computed besides the summary (grade-recovery, stereology, ...).

    Returns
    -------
    pathlib.Path
    """
    names = list(summary["phases"])
    ci = (summary.get("uncertainty") or {}).get("liberation_degree", {})
    ci_modal = (summary.get("uncertainty") or {}).get("modal_mineralogy", {})
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>volmla liberation report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}</style>",
        "</head><body><h1>volmla liberation report</h1>",
        *([f"<p><strong>{html.escape(note)}</strong></p>"] if (note := empty_note(summary)) else []),
        _table(
            [
                ["voxel size (um)", ", ".join(f"{v:g}" for v in summary["voxel_size_um"] or [])],
                ["volume shape", ", ".join(str(v) for v in summary.get("shape", []))],
                ["particles analysed", summary["n_particles"]],
                ["particles touching the border", f"{summary['n_border']} ({'included' if summary['include_border'] else 'excluded'})"],
                ["free threshold (grade >)", summary["free_threshold"]],
            ],
            ["quantity", "value"],
        ),
        "<h2>Modal mineralogy and liberation degree</h2>",
        _table(
            [
                [
                    p,
                    summary["modal_mineralogy"][p],
                    (ci_modal.get(p) or {}).get("lo"),
                    (ci_modal.get(p) or {}).get("hi"),
                    (summary.get("modal_mineralogy_mass") or {}).get(p),
                    summary["liberation_degree"][p],
                    (ci.get(p) or {}).get("lo"),
                    (ci.get(p) or {}).get("hi"),
                ]
                for p in names
            ],
            ["phase", "volume fraction", "95% lo", "95% hi", "mass fraction", "LD", "LD 95% lo", "LD 95% hi"],
        ),
        "<h2>Liberation per size class</h2>",
    ]
    for p in names:
        rows = [[r["lo"], r["hi"], r["ld"], r["n"], r["n_particles"]] for r in summary["liberation_by_size"][p]]
        parts += [f"<h3>{html.escape(p)}</h3>", _table(rows, ["lo", "hi", "LD", "n with phase", "n particles"])]
    parts.append("<h2>Liberation spectrum (fraction of phase volume)</h2>")
    spec_head = ["phase"] + ["0"] + [f"({10 * k},{10 * (k + 1)}]" for k in range(9)] + ["(90,100)", "100"]
    parts.append(_table([[p] + [c["fraction"] for c in summary["liberation_spectrum"][p]] for p in names], spec_head))
    parts.append("<h2>Locking (fraction of particles / of phase volume)</h2>")
    lock_rows = [
        [p] + [f"{_fmt(summary['locking'][p][c]['number'])} / {_fmt(summary['locking'][p][c]['volume'])}" for c in
               ("liberated", "binary", "ternary", "complex")]
        for p in names
    ]
    parts.append(_table(lock_rows, ["phase", "liberated", "binary", "ternary", "complex"]))
    assoc = summary.get("association") or {}
    if assoc:
        others = [*names, "background"]
        parts.append("<h2>Phase association: shared boundary area (um^2)</h2>")
        parts.append(_table([[p] + [assoc[p].get(q) if q != p else None for q in others] for p in names], ["phase", *others]))
    if "stereology" in extras:
        st = extras["stereology"]
        parts.append(f"<h2>Stereology: 2-D sections every {summary['stereology']['step']} planes vs 3-D</h2>")
        parts.append(_table(st.to_numpy().tolist(), list(st.columns)))
    if "representativeness" in extras:
        rep = extras["representativeness"]
        meta = summary["representativeness"]
        parts.append(f"<h2>Representativeness: {meta['pieces']} sub-volumes (grid {meta['grid']})</h2>")
        parts.append(_table(rep.to_numpy().tolist(), list(rep.columns)))
    for png in pngs:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        title = _TITLES.get(Path(png).name, Path(png).stem)
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"
