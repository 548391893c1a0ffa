"""Liberation statistics from the particle table, and the analysis that writes them.

All statistics are computed from the per-particle table of :mod:`volmla.measure`
(columns ``vox_<phase>``, ``grade_<phase>``, ``volume_um3``, ``esd_um``, ...) over the
particles that do not touch the volume border (``include_border=False``, the default):

1. **modal mineralogy**: each phase's share of the named-phase volume, and of the mass
   when densities are given;
2. **liberation degree** (Eq. 1): ``LD_i = V_i,free / (V_i,free + V_i,intergrown)``, a
   particle being free in phase ``i`` when ``grade_i > free_threshold`` (strictly;
   default 0.99); per size class (Eq. 2) the same over the particles whose ESD (or
   volume) lies in the class. Classes are half-open ``[lo, hi)``: a value on an edge
   goes to the class *above* it, except the last edge, which closes the last class;
   values outside the edges are left out. Default edges: 8 log-spaced classes from the
   smallest to the largest particle;
3. **liberation spectrum**: the distribution of each phase over 12 grade classes, by
   phase volume and by particle number. The classes are *exactly 0 %*, ``(0, 10]``,
   ``(10, 20]``, ..., ``(80, 90]``, ``(90, 100)`` and *exactly 100 %*; in
   ``summary.json`` they are encoded as ``{"grade_lo": 0, "grade_hi": 0}`` for exactly
   0 %, ``{"grade_lo": 100, "grade_hi": 100}`` for exactly 100 % and ``{"grade_lo": a,
   "grade_hi": b}`` for the open-below interval ``(a, b]`` (``(90, 100)`` for the last
   interval, open at both ends). Grades are in percent. Classes are assigned with integer
   arithmetic on voxel counts, so a grade of exactly 10 % is in ``(0, 10]``. By volume,
   the 0 % class is always 0 (kept for a fixed layout); by number, fractions are over
   all particles, including those without the phase (0 % class);
4. **locking and association**: the particles holding phase ``i`` are *liberated*
   (free in ``i``), else *binary*, *ternary* or *complex* by the number of phases
   present (2, 3, 4 or more), by number and by the volume of ``i``; and the boundary
   area each phase shares with each other phase and with the outside of its particle
   (the phase-contact matrix of :func:`volmla.measure.measure`, chunk-exact face
   counts with the 2/3 stereological correction);
5. **theoretical grade-recovery curve** per phase: particles sorted by grade
   (descending), cumulative recovery against cumulative grade (by mass with densities);
6. **stereology** (:func:`sections`): every ``k``-th plane along each axis is read on
   its own (a lazy slice of the Dask arrays) and analysed as a 2-D MLA would: the
   2-D connected pieces of each particle's section (8-connected, ``cc3d``) are the 2-D
   particles, their area fractions the 2-D grades and the 2-D LD follows Eq. 1 with
   areas. 2-D particles touching the section's edge (and sections of border particles
   unless ``include_border``) are left out. 2-D liberation overestimates 3-D
   liberation for intergrown particles (the stereological bias);
7. **representativeness** (:func:`representativeness`): the volume is cut into ``N``
   equal sub-volumes (the most cubic grid with ``N`` pieces), particles are assigned to
   pieces by centroid and the particle-size frequencies per piece give a mean and a
   t-based 95 % confidence interval per size class;
8. **uncertainty** (:func:`bootstrap`): resampling particles with replacement (seeded,
   ``B`` resamples, default 200) gives percentile 95 % intervals for LD and modal
   mineralogy.

:func:`analyse` runs the measurement pass and all of the above and writes the data
contract (``particles.parquet``, ``grains.parquet``, ``summary.json``, PNG plots and a
self-contained ``report.html``) through a temporary folder next to the output that is
renamed into place at the end, so a crash never leaves a complete-looking report.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

SizeBy = Literal["esd", "volume"]
LOCKING_CLASSES = ("liberated", "binary", "ternary", "complex")
SPECTRUM_CLASSES: tuple[tuple[int, int], ...] = ((0, 0), *((10 * k, 10 * (k + 1)) for k in range(10)), (100, 100))
"""``(grade_lo, grade_hi)`` in percent of the 12 spectrum classes (see module docstring)."""
DEFAULT_SIZE_CLASSES = 8

__all__ = [
    "LOCKING_CLASSES",
    "SPECTRUM_CLASSES",
    "analyse",
    "bootstrap",
    "check_options",
    "check_out_dir",
    "check_volumes",
    "default_size_edges",
    "grade_class",
    "grade_recovery",
    "liberation_by_size",
    "liberation_degree",
    "liberation_spectrum",
    "liberation_summary",
    "locking",
    "modal_mineralogy",
    "representativeness",
    "section_table",
    "sections",
    "size_class",
    "stereology",
]


# --------------------------------------------------------------------------- helpers


def _phases(df: pd.DataFrame, phase_names: Sequence[str] | Mapping[int, str]) -> list[str]:
    names = list(phase_names.values()) if isinstance(phase_names, Mapping) else list(phase_names)
    missing = [p for p in names if f"vox_{p}" not in df.columns]
    if missing:
        raise VolmlaError(f"phase_names {missing} have no vox_<phase> column in the particle table")
    return names


def _population(df: pd.DataFrame, include_border: bool) -> pd.DataFrame:
    return df if include_border else df[~df["touches_border"].astype(bool)]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def _densities(densities: Sequence[float] | Mapping[str, float] | None, names: list[str]) -> dict[str, float] | None:
    if densities is None:
        return None
    if isinstance(densities, Mapping):
        unknown = sorted(set(densities) - set(names))
        if unknown or len(densities) != len(names):
            raise VolmlaError(f"densities must give one value per phase {names}, got {dict(densities)}")
        values = {p: float(densities[p]) for p in names}
    else:
        seq = list(densities)
        if len(seq) != len(names):
            raise VolmlaError(f"densities must give one value per phase ({len(names)}: {','.join(names)}), got {len(seq)}: {seq}")
        values = {p: float(v) for p, v in zip(names, seq, strict=True)}
    bad = {p: v for p, v in values.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise VolmlaError(f"densities must be positive (g/cm3), got {bad}")
    return values


def _check_threshold(free_threshold: float) -> float:
    if not (0.0 <= float(free_threshold) < 1.0):
        raise VolmlaError(f"free_threshold must lie in [0, 1), got {free_threshold}")
    return float(free_threshold)


# --------------------------------------------------------------------------- statistics


def modal_mineralogy(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    densities: Sequence[float] | Mapping[str, float] | None = None,
    include_border: bool = False,
) -> dict[str, dict[str, float] | None]:
    """Each phase's fraction of the named-phase volume (and mass, with ``densities``).

    Returns
    -------
    dict
        ``{"volume": {phase: fraction}, "mass": {phase: fraction} or None}``.

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [3, 0], "vox_b": [1, 4], "touches_border": [False, False]})
    >>> modal_mineralogy(df, phase_names=["a", "b"])["volume"]
    {'a': 0.375, 'b': 0.625}
    """
    names = _phases(df, phase_names)
    rho = _densities(densities, names)
    pop = _population(df, include_border)
    vol = {p: float(pop[f"vox_{p}"].sum()) for p in names}
    total = sum(vol.values())
    out: dict[str, dict[str, float] | None] = {"volume": {p: _ratio(v, total) for p, v in vol.items()}, "mass": None}
    if rho is not None:
        mass = {p: vol[p] * rho[p] for p in names}
        total_mass = sum(mass.values())
        out["mass"] = {p: _ratio(m, total_mass) for p, m in mass.items()}
    return out


def liberation_degree(
    df: pd.DataFrame, *, phase_names: Sequence[str], free_threshold: float = 0.99, include_border: bool = False
) -> dict[str, float]:
    """Eq. 1: ``LD_i = V_i,free / V_i`` with free = ``grade_i > free_threshold``.

    NaN for a phase absent from the population.

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5], "vox_b": [0, 5], "volume_voxels": [10, 10],
    ...                    "touches_border": [False, False]})
    >>> liberation_degree(df, phase_names=["a", "b"])
    {'a': 0.6666666666666666, 'b': 0.0}
    """
    names = _phases(df, phase_names)
    thr = _check_threshold(free_threshold)
    pop = _population(df, include_border)
    return {p: _ld(pop, p, thr) for p in names}


def _free(pop: pd.DataFrame, phase: str, thr: float) -> np.ndarray:
    # grade > thr, decided on the integer counts: vox > thr * volume
    return pop[f"vox_{phase}"].to_numpy(np.float64) > thr * pop["volume_voxels"].to_numpy(np.float64)


def _ld(pop: pd.DataFrame, phase: str, thr: float) -> float:
    vox = pop[f"vox_{phase}"].to_numpy(np.float64)
    return _ratio(vox[_free(pop, phase, thr)].sum(), vox.sum())


def default_size_edges(values: Sequence[float] | np.ndarray, *, n: int = DEFAULT_SIZE_CLASSES) -> np.ndarray:
    """``n`` log-spaced classes from the smallest to the largest positive value.

    Examples
    --------
    >>> default_size_edges([1.0, 100.0], n=2).tolist()
    [1.0, 10.0, 100.0]
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return np.array([1.0, 2.0])
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.array([lo, lo * 1.0001 + 1e-12])
    return np.geomspace(lo, hi, n + 1)


def size_class(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Class index of each value for ``edges``: ``[lo, hi)`` classes, the last one closed;
    -1 outside.

    Examples
    --------
    >>> size_class(np.array([0.5, 1.0, 2.0, 3.0, 4.0]), [1.0, 2.0, 3.0]).tolist()
    [-1, 0, 1, 1, -1]
    """
    e = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(e, v, side="right") - 1
    idx[v == e[-1]] = e.size - 2
    idx[(v < e[0]) | (v > e[-1]) | ~np.isfinite(v)] = -1
    return idx


def _check_edges(size_edges: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    if size_edges is None:
        return None
    e = np.asarray(list(size_edges), dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0) or e[0] < 0:
        raise VolmlaError(f"size_edges must be at least two increasing non-negative numbers, got {list(size_edges)}")
    return e


def _size_values(df: pd.DataFrame, by: str) -> np.ndarray:
    if by not in ("esd", "volume"):
        raise VolmlaError(f"by must be one of ('esd', 'volume'), got {by!r}")
    return df["esd_um" if by == "esd" else "volume_um3"].to_numpy(np.float64)


def liberation_by_size(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    free_threshold: float = 0.99,
    size_edges: Sequence[float] | np.ndarray | None = None,
    by: SizeBy = "esd",
    include_border: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Eq. 2: LD of each phase per size class.

    Returns
    -------
    dict
        ``{phase: [{"lo", "hi", "ld", "n", "n_particles"}, ...]}``: class edges (um for
        ESD, um^3 for volume), LD (NaN where the phase is absent), ``n`` the particles
        of the class holding the phase, ``n_particles`` all particles of the class.

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [8, 4], "volume_voxels": [8, 8], "esd_um": [1.0, 3.0],
    ...                    "touches_border": [False, False]})
    >>> [c["ld"] for c in liberation_by_size(df, phase_names=["a"], size_edges=[0, 2, 4])["a"]]
    [1.0, 0.0]
    """
    names = _phases(df, phase_names)
    thr = _check_threshold(free_threshold)
    pop = _population(df, include_border)
    values = _size_values(pop, by)
    edges = _check_edges(size_edges)
    if edges is None:
        edges = default_size_edges(values)
    cls = size_class(values, edges)
    out: dict[str, list[dict[str, Any]]] = {}
    for p in names:
        rows = []
        for k in range(edges.size - 1):
            sub = pop[cls == k]
            rows.append(
                {
                    "lo": float(edges[k]),
                    "hi": float(edges[k + 1]),
                    "ld": _ld(sub, p, thr),
                    "n": int((sub[f"vox_{p}"] > 0).sum()),
                    "n_particles": len(sub),
                }
            )
        out[p] = rows
    return out


def grade_class(vox: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Spectrum class 0..11 of each particle (see :data:`SPECTRUM_CLASSES`), exactly.

    Examples
    --------
    >>> grade_class(np.array([0, 1, 10, 11, 99, 100]), np.full(6, 100)).tolist()
    [0, 1, 1, 2, 10, 11]
    """
    vox = np.asarray(vox, dtype=np.int64)
    volume = np.asarray(volume, dtype=np.int64)
    k = -((-10 * vox) // np.maximum(volume, 1))  # ceil(10 vox / volume)
    k = np.clip(k, 1, 10)
    k = np.where(vox <= 0, 0, k)
    return np.where(vox >= volume, 11, k)


def liberation_spectrum(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    weight: Literal["volume", "number"] = "volume",
    include_border: bool = False,
) -> dict[str, list[dict[str, float]]]:
    """Distribution of each phase over the 12 grade classes (percent edges).

    Parameters
    ----------
    weight
        ``"volume"``: fraction of the phase's volume in particles of each class;
        ``"number"``: fraction of all particles in each class.

    Returns
    -------
    dict
        ``{phase: [{"grade_lo", "grade_hi", "fraction"}, ...]}`` (12 entries, encoding in
        the module docstring).

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5], "volume_voxels": [10, 10], "touches_border": [False, False]})
    >>> [c["fraction"] for c in liberation_spectrum(df, phase_names=["a"])["a"]][5:]
    [0.3333333333333333, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6666666666666666]
    """
    if weight not in ("volume", "number"):
        raise VolmlaError(f"weight must be one of ('volume', 'number'), got {weight!r}")
    names = _phases(df, phase_names)
    pop = _population(df, include_border)
    volume = pop["volume_voxels"].to_numpy(np.int64)
    out = {}
    for p in names:
        vox = pop[f"vox_{p}"].to_numpy(np.int64)
        cls = grade_class(vox, volume)
        w = vox.astype(np.float64) if weight == "volume" else np.ones(vox.size)
        per = np.bincount(cls, weights=w, minlength=12)
        total = w.sum()
        out[p] = [
            {"grade_lo": float(lo), "grade_hi": float(hi), "fraction": _ratio(per[k], total)}
            for k, (lo, hi) in enumerate(SPECTRUM_CLASSES)
        ]
    return out


def locking(
    df: pd.DataFrame, *, phase_names: Sequence[str], free_threshold: float = 0.99, include_border: bool = False
) -> dict[str, dict[str, dict[str, float]]]:
    """Liberated / binary / ternary / complex particles of each phase.

    A particle holding phase ``i`` is *liberated* when free in ``i``, else *binary*,
    *ternary* or *complex* when 2, 3 or more named phases are present in it (a
    non-free particle with only ``i`` among the named phases, e.g. with unnamed void,
    counts as binary).

    Returns
    -------
    dict
        ``{phase: {class: {"number": fraction of particles holding i,
        "volume": fraction of i's volume}}}``.

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5], "vox_b": [0, 5], "volume_voxels": [10, 10],
    ...                    "touches_border": [False, False]})
    >>> locking(df, phase_names=["a", "b"])["a"]["binary"]
    {'number': 0.5, 'volume': 0.3333333333333333}
    """
    names = _phases(df, phase_names)
    thr = _check_threshold(free_threshold)
    pop = _population(df, include_border)
    present = np.stack([pop[f"vox_{p}"].to_numpy() > 0 for p in names], axis=1) if names else np.zeros((len(pop), 0), bool)
    n_present = present.sum(axis=1)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in names:
        vox = pop[f"vox_{p}"].to_numpy(np.float64)
        has = vox > 0
        free = _free(pop, p, thr)
        cls = np.where(free, 0, np.clip(n_present - 1, 1, 3))
        out[p] = {}
        for k, name in enumerate(LOCKING_CLASSES):
            sel = has & (cls == k)
            out[p][name] = {"number": _ratio(sel.sum(), has.sum()), "volume": _ratio(vox[sel].sum(), vox.sum())}
    return out


def association(contacts: pd.DataFrame, *, phase_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Boundary area (um^2) each phase shares with each other phase and with the outside.

    ``contacts`` is :attr:`volmla.measure.Tables.contacts`. Returns ``{phase: {other or
    "background": area_um2}}``, symmetric between phases.
    """
    from volmla.measure import BACKGROUND

    names = list(phase_names)
    out = {p: {q: 0.0 for q in [*names, BACKGROUND] if q != p} for p in names}
    for a, b, area in contacts[["phase_a", "phase_b", "area_um2"]].itertuples(index=False):
        if a in out and b in out[a]:
            out[a][b] += float(area)
        if b in out and a in out[b] and a != BACKGROUND:
            out[b][a] += float(area)
    return out


def grade_recovery(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    densities: Sequence[float] | Mapping[str, float] | None = None,
    include_border: bool = False,
) -> pd.DataFrame:
    """Theoretical grade-recovery curve per phase (best possible separation).

    Particles are sorted by grade of the phase, descending (ties by ``particle_id``);
    the curve's points are the cumulative recovery (share of the phase collected) and
    the cumulative grade (share of the phase in what is collected), by mass with
    densities, else by volume.

    Returns
    -------
    pandas.DataFrame
        Columns ``phase, rank, cum_yield, cum_grade, cum_recovery``.
    """
    names = _phases(df, phase_names)
    rho = _densities(densities, names)
    pop = _population(df, include_border)
    if rho is None:
        mass = pop["volume_voxels"].to_numpy(np.float64)
        phase_mass = {p: pop[f"vox_{p}"].to_numpy(np.float64) for p in names}
    else:
        phase_mass = {p: pop[f"vox_{p}"].to_numpy(np.float64) * rho[p] for p in names}
        mass = np.sum(list(phase_mass.values()), axis=0) if names else np.zeros(len(pop))
    frames = []
    for p in names:
        grade = np.divide(phase_mass[p], mass, out=np.zeros_like(mass), where=mass > 0)
        order = np.lexsort((pop["particle_id"].to_numpy(), -grade))
        m, pm = mass[order], phase_mass[p][order]
        cm, cpm = np.cumsum(m), np.cumsum(pm)
        total_m, total_pm = m.sum(), pm.sum()
        frames.append(
            pd.DataFrame(
                {
                    "phase": p,
                    "rank": np.arange(1, m.size + 1),
                    "cum_yield": cm / total_m if total_m > 0 else np.nan,
                    "cum_grade": np.divide(cpm, cm, out=np.zeros_like(cpm), where=cm > 0),
                    "cum_recovery": cpm / total_pm if total_pm > 0 else np.nan,
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["phase", "rank", "cum_yield", "cum_grade", "cum_recovery"])
    return pd.concat(frames, ignore_index=True)


def bootstrap(
    df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    free_threshold: float = 0.99,
    densities: Sequence[float] | Mapping[str, float] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    include_border: bool = False,
) -> dict[str, Any]:
    """Percentile 95 % intervals of LD and modal mineralogy by resampling particles.

    Returns
    -------
    dict
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
    if not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise VolmlaError(f"bootstrap resamples must be a positive integer, got {n_boot!r}")
    names = _phases(df, phase_names)
    thr = _check_threshold(free_threshold)
    rho = _densities(densities, names)
    pop = _population(df, include_border)
    n = len(pop)
    vox = np.stack([pop[f"vox_{p}"].to_numpy(np.float64) for p in names]) if names else np.zeros((0, n))
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

    def interval(samples: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        for j, p in enumerate(names):
            s = samples[:, j][np.isfinite(samples[:, j])]
            lo, hi = (np.percentile(s, [2.5, 97.5]) if s.size else (np.nan, np.nan))
            out[p] = {"lo": float(lo), "hi": float(hi)}
        return out

    return {"n_boot": int(n_boot), "seed": int(seed), "liberation_degree": interval(ld), "modal_mineralogy": interval(modal)}


def _grid(pieces: int, shape: Sequence[int]) -> tuple[int, int, int]:
    """The (gz, gy, gx) with product ``pieces`` whose pieces are the most cubic."""
    best: tuple[float, tuple[int, int, int]] | None = None
    for gz in range(1, pieces + 1):
        if pieces % gz:
            continue
        for gy in range(1, pieces // gz + 1):
            if (pieces // gz) % gy:
                continue
            g = (gz, gy, pieces // gz // gy)
            if any(gi > s for gi, s in zip(g, shape, strict=True)):
                continue
            sizes = [s / gi for s, gi in zip(shape, g, strict=True)]
            score = max(sizes) / min(sizes)
            if best is None or score < best[0]:
                best = (score, g)
    if best is None:
        raise VolmlaError(f"pieces must split the volume {list(shape)} into equal sub-volumes, got {pieces}")
    return best[1]


def representativeness(
    df: pd.DataFrame,
    *,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    pieces: int = 8,
    size_edges: Sequence[float] | np.ndarray | None = None,
    by: SizeBy = "esd",
    include_border: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Particle-size frequencies per sub-volume: mean and t-based 95 % CI per class.

    The volume is cut into ``pieces`` equal sub-volumes (grid from :func:`_grid`),
    particles go to the piece holding their centroid, and in each piece the relative
    frequency of each size class is computed (pieces without particles are skipped).

    Returns
    -------
    (pandas.DataFrame, dict)
        Table ``lo, hi, whole, mean, std, ci_lo, ci_hi, n_pieces`` (``whole`` the
        frequency over the whole volume) and ``{"pieces", "grid", "n_pieces_used"}``.
    """
    from scipy import stats

    if not isinstance(pieces, int | np.integer) or pieces < 2:
        raise VolmlaError(f"pieces must be an integer of at least 2, got {pieces!r}")
    grid = _grid(int(pieces), shape)
    pop = _population(df, include_border)
    values = _size_values(pop, by)
    edges = _check_edges(size_edges)
    if edges is None:
        edges = default_size_edges(values)
    cls = size_class(values, edges)
    piece = np.zeros(len(pop), np.int64)
    for a, ax in enumerate("zyx"):
        idx = np.floor(pop[f"centroid_{ax}"].to_numpy(np.float64) / voxel_size[a] * grid[a] / shape[a]).astype(np.int64)
        piece = piece * grid[a] + np.clip(idx, 0, grid[a] - 1)
    k = edges.size - 1
    keep = cls >= 0
    counts = np.zeros((int(pieces), k))
    np.add.at(counts, (piece[keep], cls[keep]), 1.0)
    totals = counts.sum(axis=1)
    used = totals > 0
    freq = counts[used] / totals[used, None]
    m = int(used.sum())
    mean = freq.mean(axis=0) if m else np.full(k, np.nan)
    std = freq.std(axis=0, ddof=1) if m > 1 else np.full(k, np.nan)
    half = stats.t.ppf(0.975, m - 1) * std / np.sqrt(m) if m > 1 else np.full(k, np.nan)
    whole = np.bincount(cls[keep], minlength=k) / max(int(keep.sum()), 1)
    table = pd.DataFrame(
        {
            "lo": edges[:-1],
            "hi": edges[1:],
            "whole": whole,
            "mean": mean,
            "std": std,
            "ci_lo": mean - half,
            "ci_hi": mean + half,
            "n_pieces": m,
        }
    )
    return table, {"pieces": int(pieces), "grid": list(grid), "n_pieces_used": m, "by": by}


# --------------------------------------------------------------------------- stereology


def section_table(labels: np.ndarray, phases: np.ndarray) -> dict[str, np.ndarray]:
    """2-D particles of one section: their parent particle, area, per-phase pixels.

    The 2-D particles are the 8-connected pieces of each particle id in the plane
    (``cc3d`` multilabel); ``edge`` flags those touching the section's edge.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [1, 0, 0, 0]], np.uint32)
    >>> t = section_table(lab, (lab > 0).astype(np.uint8))
    >>> t["particle_id"].tolist(), t["area"].tolist()
    ([1, 2, 1], [2, 2, 1])
    """
    import cc3d

    lab = np.ascontiguousarray(labels)
    ph = np.asarray(phases).astype(np.int64)
    comp = cc3d.connected_components(lab, connectivity=8)
    n = int(comp.max())
    if n == 0:
        return {"particle_id": np.zeros(0, np.uint64), "area": np.zeros(0, np.int64), "edge": np.zeros(0, bool)}
    flat = comp.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)[1:]
    parent = np.zeros(n + 1, np.uint64)
    parent[flat] = lab.ravel()
    n_ph = int(ph.max()) + 1
    per = np.bincount(flat * n_ph + ph.ravel(), minlength=(n + 1) * n_ph).reshape(n + 1, n_ph)[1:]
    edge_ids = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    edge = np.isin(np.arange(1, n + 1), edge_ids)
    out = {"particle_id": parent[1:], "area": area.astype(np.int64), "edge": edge}
    for p in range(n_ph):
        out[f"ph{p}"] = per[:, p].astype(np.int64)
    return out


def _section_task(planes: list[tuple[int, int, Any, Any]]) -> list[dict[str, Any]]:
    out = []
    for axis, index, lab, ph in planes:
        t = section_table(np.asarray(lab), np.asarray(ph))
        t["axis"] = np.full(t["area"].size, axis, np.int64)
        t["plane"] = np.full(t["area"].size, index, np.int64)
        out.append(t)
    return out


def sections(
    phases: Any,
    particles: Any,
    *,
    step: int = 10,
    phase_names: Mapping[int, str],
    planes_per_task: int = 8,
) -> pd.DataFrame:
    """Virtual 2-D sections: every ``step``-th plane along z, y and x, analysed in 2-D.

    Only those planes are read (lazy slices of the Dask arrays), a few planes per task.
    Planes sit at ``step // 2, step // 2 + step, ...`` along each axis.

    Returns
    -------
    pandas.DataFrame
        One row per 2-D particle: ``axis`` (0, 1, 2 = z, y, x), ``plane``,
        ``particle_id`` (the 3-D parent), ``area`` (pixels), ``edge``, ``vox_<phase>``
        (pixels of each named phase).
    """
    import dask

    from volmla.cluster import compute
    from volmla.measure import _as_dask

    if not isinstance(step, int | np.integer) or step < 1:
        raise VolmlaError(f"sections step must be a positive integer, got {step!r}")
    lab, _ = _as_dask(particles, "particles")
    ph, _ = _as_dask(phases, "phases")
    planes = []
    for axis in range(3):
        for index in range(step // 2, lab.shape[axis], step):
            sel = tuple(index if a == axis else slice(None) for a in range(3))
            planes.append((axis, index, lab[sel], ph[sel]))
    tasks = [
        dask.delayed(_section_task, pure=True)(planes[i : i + planes_per_task])
        for i in range(0, len(planes), planes_per_task)
    ]
    results = [t for batch in compute(tasks, desc="2-D sections") for t in batch]
    columns = ["axis", "plane", "particle_id", "area", "edge", *(f"vox_{n}" for n in phase_names.values())]
    if not results:
        return pd.DataFrame(columns=columns)
    frames = []
    for t in results:
        rows = t["area"].size
        frame = {"axis": t["axis"], "plane": t["plane"], "particle_id": t["particle_id"], "area": t["area"], "edge": t["edge"]}
        for pid, name in phase_names.items():
            frame[f"vox_{name}"] = t.get(f"ph{pid}", np.zeros(rows, np.int64))
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)[columns]


def stereology(
    section_df: pd.DataFrame,
    particles_df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    free_threshold: float = 0.99,
    include_border: bool = False,
) -> pd.DataFrame:
    """2-D against 3-D liberation degree per phase.

    2-D particles touching the section edge are left out, and sections of 3-D border
    particles unless ``include_border``.

    Returns
    -------
    pandas.DataFrame
        ``phase, ld_2d, ld_3d, n_2d, n_3d, bias`` (``bias = ld_2d - ld_3d``).
    """
    names = _phases(particles_df, phase_names)
    thr = _check_threshold(free_threshold)
    pop3 = _population(particles_df, include_border)
    sec = section_df[~section_df["edge"].astype(bool)]
    if not include_border:
        sec = sec[sec["particle_id"].isin(pop3["particle_id"])]
    sec2 = sec.rename(columns={"area": "volume_voxels"})
    rows = []
    for p in names:
        ld2, ld3 = _ld(sec2, p, thr), _ld(pop3, p, thr)
        rows.append(
            {
                "phase": p,
                "ld_2d": ld2,
                "ld_3d": ld3,
                "n_2d": int((sec2[f"vox_{p}"] > 0).sum()),
                "n_3d": int((pop3[f"vox_{p}"] > 0).sum()),
                "bias": ld2 - ld3,
            }
        )
    return pd.DataFrame(rows, columns=["phase", "ld_2d", "ld_3d", "n_2d", "n_3d", "bias"])


# --------------------------------------------------------------------------- summary and analysis


def liberation_summary(
    particles_df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    free_threshold: float = 0.99,
    size_edges: Sequence[float] | np.ndarray | None = None,
    by: SizeBy = "esd",
    densities: Sequence[float] | Mapping[str, float] | None = None,
    include_border: bool = False,
    voxel_size: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` content computed from the particle table.

    Parameters
    ----------
    particles_df
        The particle table (:func:`volmla.measure.particles`).
    phase_names
        Phases to report (``vox_<phase>`` columns).
    free_threshold
        A particle is free in a phase whose grade exceeds this (strictly).
    size_edges
        Size-class edges for Eq. 2 (um for ESD, um^3 for volume); default 8
        log-spaced classes.
    by
        ``"esd"`` or ``"volume"``.
    densities
        Per-phase densities (g/cm3) for mass-based modal mineralogy.
    include_border
        Also count particles touching the volume border.
    voxel_size
        ``(z, y, x)`` um, recorded as ``voxel_size_um``.

    Returns
    -------
    dict
        Keys ``voxel_size_um, n_particles, n_particles_total, n_border,
        free_threshold, include_border, size_by, modal_mineralogy,
        modal_mineralogy_mass, liberation_degree, liberation_by_size,
        liberation_spectrum, liberation_spectrum_by_number, spectrum_classes, locking``
        (NaN as ``None``).

    Examples
    --------
    >>> df = pd.DataFrame({"particle_id": [1, 2], "vox_a": [10, 5], "volume_voxels": [10, 10],
    ...     "esd_um": [2.0, 3.0], "volume_um3": [10.0, 10.0], "touches_border": [False, False]})
    >>> liberation_summary(df, phase_names=["a"])["liberation_degree"]
    {'a': 0.6666666666666666}
    """
    names = _phases(particles_df, phase_names)
    thr = _check_threshold(free_threshold)
    _densities(densities, names)
    pop = _population(particles_df, include_border)
    modal = modal_mineralogy(particles_df, phase_names=names, densities=densities, include_border=include_border)
    edges = _check_edges(size_edges)
    summary = {
        "voxel_size_um": list(voxel_size) if voxel_size is not None else None,
        "n_particles": len(pop),
        "n_particles_total": len(particles_df),
        "n_border": int(particles_df["touches_border"].astype(bool).sum()),
        "free_threshold": thr,
        "include_border": bool(include_border),
        "size_by": by,
        "phases": names,
        "densities": _densities(densities, names),
        "modal_mineralogy": modal["volume"],
        "modal_mineralogy_mass": modal["mass"],
        "liberation_degree": liberation_degree(particles_df, phase_names=names, free_threshold=thr, include_border=include_border),
        "liberation_by_size": liberation_by_size(
            particles_df, phase_names=names, free_threshold=thr, size_edges=edges, by=by, include_border=include_border
        ),
        "liberation_spectrum": liberation_spectrum(particles_df, phase_names=names, include_border=include_border),
        "liberation_spectrum_by_number": liberation_spectrum(
            particles_df, phase_names=names, weight="number", include_border=include_border
        ),
        "spectrum_classes": (
            "grade_lo/grade_hi in percent: (0, 0) exactly 0 %, (100, 100) exactly 100 %, "
            "(a, b) the interval (a, b], except (90, 100) which is open at both ends"
        ),
        "locking": locking(particles_df, phase_names=names, free_threshold=thr, include_border=include_border),
    }
    return _nan_to_none(summary)


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Validate an output folder before any work: refuse a non-empty one without
    ``overwrite``, and a parent that does not exist."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VolmlaError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VolmlaError(f"output folder {out} exists and is not empty: pass --overwrite to replace it")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise VolmlaError(f"the parent folder of the output, {parent}, does not exist")
    return out


def check_options(
    *,
    free_threshold: float = 0.99,
    size_edges: Sequence[float] | np.ndarray | None = None,
    by: str = "esd",
    densities: Sequence[float] | Mapping[str, float] | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    section_step: int | None = None,
    pieces: int | None = None,
    n_boot: int = 0,
) -> None:
    """Validate the options of :func:`analyse` (cheap; before any computation)."""
    _check_threshold(free_threshold)
    _check_edges(size_edges)
    if by not in ("esd", "volume"):
        raise VolmlaError(f"by must be one of ('esd', 'volume'), got {by!r}")
    if densities is not None:
        seq = list(densities.values()) if isinstance(densities, Mapping) else list(densities)
        bad = [d for d in seq if not (math.isfinite(float(d)) and float(d) > 0)]
        if bad:
            raise VolmlaError(f"densities must be positive (g/cm3), got {seq}")
        if phase_names is not None and not isinstance(densities, Mapping) and len(seq) != len(phase_names):
            raise VolmlaError(f"densities must give one value per phase name ({len(phase_names)}), got {len(seq)}")
    if pieces is not None and (not isinstance(pieces, int | np.integer) or pieces < 2):
        raise VolmlaError(f"pieces must be an integer of at least 2, got {pieces!r}")
    if section_step is not None and (not isinstance(section_step, int | np.integer) or section_step < 1):
        raise VolmlaError(f"sections step must be a positive integer, got {section_step!r}")
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise VolmlaError(f"bootstrap resamples must be a non-negative integer, got {n_boot!r}")


def check_volumes(
    phases: Any,
    particles: Any,
    *,
    grains: Any = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    voxel_size: float | Sequence[float] | None = None,
) -> None:
    """Validate shapes, voxel sizes and phase names from the volumes' metadata only."""
    from volmla.measure import _voxel_size, resolve_phase_names

    shapes = {"phases": tuple(phases.shape), "particles": tuple(particles.shape)}
    if grains is not None:
        shapes["grains"] = tuple(grains.shape)
    if len(set(shapes.values())) > 1:
        raise VolmlaError(f"phases, particles (and grains) must have the same shape, got {shapes}")
    attrs = [dict(getattr(v, "attrs", {}) or {}) for v in (phases, particles, grains) if v is not None]
    _voxel_size(voxel_size if voxel_size is not None else 1.0, *attrs)
    attr_phases = attrs[0].get("phases") or None
    if phase_names is not None and attr_phases:
        resolve_phase_names(phase_names, attr_phases)


def analyse(
    phases: Any,
    particles: Any,
    *,
    grains: Any = None,
    out_dir: str | Path,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    densities: Sequence[float] | Mapping[str, float] | None = None,
    free_threshold: float = 0.99,
    size_edges: Sequence[float] | np.ndarray | None = None,
    by: SizeBy = "esd",
    include_border: bool = False,
    section_step: int | None = 10,
    pieces: int | None = 8,
    n_boot: int = 200,
    seed: int = 0,
    voxel_size: float | Sequence[float] | None = None,
    derive_grains: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure the particles and write every liberation output into ``out_dir``.

    Parameters
    ----------
    phases, particles
        Phase and particle volumes (lazy xarray / Dask, same shape and voxel size).
    grains
        Grain volume. Without it the grains are derived (``derive_grains``) as the
        26-connected components of each phase in each particle
        (:func:`volmla.particles.grains`, one more pass and a small union-find), or,
        with ``derive_grains=False``, ``grains.parquet`` is written empty and
        ``n_grains`` is missing.
    out_dir
        Output folder (created; must be empty or absent unless ``overwrite``).
    phase_names
        Names of phases 1..N; default the phase volume's attribute, else ``"1", ...``.
    densities
        Per-phase densities for mass-based statistics (positive).
    free_threshold, size_edges, by, include_border
        As in :func:`liberation_summary`.
    section_step
        Stereology: every ``section_step``-th plane per axis (None: skipped).
    pieces
        Representativeness: number of equal sub-volumes (None: skipped).
    n_boot, seed
        Bootstrap resamples and seed (``n_boot=0``: skipped).
    voxel_size
        Override of the volumes' voxel size (um).
    derive_grains
        Derive the grains when no grain volume is given.
    overwrite
        Replace an existing output folder.

    Returns
    -------
    dict
        The ``summary.json`` content (with ``files``: the names written).

    Examples
    --------
    >>> from volmla.synthetic import phantom
    >>> ph = phantom(shape=(48, 48, 48), seed=1, esd_range=(8, 16))  # doctest: +SKIP
    >>> s = analyse(ph.phases, ph.particles, grains=ph.grains, out_dir="lib")  # doctest: +SKIP
    """
    from volmla import measure as _measure
    from volmla import report

    out = check_out_dir(out_dir, overwrite=overwrite)
    check_options(free_threshold=free_threshold, size_edges=size_edges, by=by, densities=densities,
                  phase_names=phase_names, section_step=section_step, pieces=pieces, n_boot=n_boot)
    check_volumes(phases, particles, grains=grains, phase_names=phase_names, voxel_size=voxel_size)
    thr = _check_threshold(free_threshold)
    edges = _check_edges(size_edges)

    if grains is None and derive_grains:
        from volmla.particles import grains as _grains

        logger.info("no grain volume given: deriving grains (26-connected phase components per particle)")
        grains = _grains(particles, phases, connectivity=26).labels
    tables = _measure.measure(particles, phases, grains=grains, voxel_size=voxel_size, phase_names=phase_names)
    names = list(tables.phase_names.values())
    rho = _densities(densities, names)
    pdf = tables.particles
    summary = liberation_summary(
        pdf, phase_names=names, free_threshold=thr, size_edges=edges, by=by, densities=rho,
        include_border=include_border, voxel_size=tables.voxel_size_um,
    )
    summary["shape"] = list(tables.shape)
    summary["association"] = _nan_to_none(association(tables.contacts, phase_names=names))
    summary["surface_correction"] = _measure.SURFACE_CORRECTION
    extras: dict[str, Any] = {"contacts": tables.contacts}
    extras["grade_recovery"] = grade_recovery(pdf, phase_names=names, densities=rho, include_border=include_border)
    if section_step is not None:
        sec = sections(phases, particles, step=int(section_step), phase_names=tables.phase_names)
        stereo = stereology(sec, pdf, phase_names=names, free_threshold=thr, include_border=include_border)
        extras["stereology"] = stereo
        summary["stereology"] = _nan_to_none(
            {"step": int(section_step), "n_sections_2d_particles": len(sec), "table": stereo.to_dict(orient="records")}
        )
    if pieces is not None:
        rep, meta = representativeness(
            pdf, shape=tables.shape, voxel_size=tables.voxel_size_um, pieces=int(pieces), size_edges=edges, by=by,
            include_border=include_border,
        )
        extras["representativeness"] = rep
        summary["representativeness"] = _nan_to_none({**meta, "table": rep.to_dict(orient="records")})
    if n_boot:
        summary["uncertainty"] = _nan_to_none(
            bootstrap(pdf, phase_names=names, free_threshold=thr, densities=rho, n_boot=int(n_boot), seed=seed,
                      include_border=include_border)
        )

    grains_df = tables.grains if tables.grains is not None else pd.DataFrame(
        {"grain_id": pd.Series([], dtype=np.uint64), "particle_id": pd.Series([], dtype=np.uint64),
         "phase": pd.Series([], dtype=str), "volume_voxels": pd.Series([], dtype=np.int64),
         "volume_um3": pd.Series([], dtype=np.float64)}
    )
    return _write(out, overwrite, summary, pdf, grains_df, extras, names, rho, report)


def _write(
    out: Path, overwrite: bool, summary: dict[str, Any], pdf: pd.DataFrame, grains_df: pd.DataFrame,
    extras: dict[str, Any], names: list[str], rho: dict[str, float] | None, report: Any,
) -> dict[str, Any]:
    """Write everything into a temporary sibling folder, then rename it into place."""
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        pdf.to_parquet(tmp / "particles.parquet", index=False)
        grains_df.to_parquet(tmp / "grains.parquet", index=False)
        extras["contacts"].to_parquet(tmp / "contacts.parquet", index=False)
        extras["grade_recovery"].to_parquet(tmp / "grade_recovery.parquet", index=False)
        for key in ("stereology", "representativeness"):
            if key in extras:
                extras[key].to_parquet(tmp / f"{key}.parquet", index=False)
        pngs = report.plots(tmp, summary=summary, particles=pdf, grains=grains_df, extras=extras, phase_names=names,
                            densities=rho)
        files = sorted(p.name for p in tmp.iterdir()) + ["report.html", "summary.json"]
        summary["files"] = sorted(set(files))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        report.write_html(tmp / "report.html", summary=summary, pngs=pngs, extras=extras)
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise VolmlaError(f"output folder {out} appeared while computing: pass --overwrite to replace it")
            old = parent / f".{out.name}.old-{tmp.name[-8:]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("liberation outputs written to %s", out)
    return summary
