"""Liberation statistics of a particle table: pure functions on pandas DataFrames.

Every statistic reads the per-particle table of :mod:`volmla.measure` (columns
``vox_<phase>``, ``vfrac_<phase>``, ``vfrac_solid``, ``volume_um3``, ``esd_um``,
``touches_border``, ...) over the particles that do not touch the volume border
(``include_border=False``, the default). Nothing here reads a volume or computes with
Dask.

Phase volumes and grades are over the solid phases only: void (phase 0) voxels inside a
particle are not a phase, so a particle of quartz with a few void-classified voxels is
still 100 % quartz. A phase's volume is its ``vfrac_<phase>`` column (partial-volume
aware, :mod:`volmla.measure.fractions`) and a particle's solid volume ``vfrac_solid``
when the table has them; else ``vox_<phase>`` over ``vox_solid``; a table with neither
(written before these columns existed, or built by hand) falls back to ``vox_<phase>``
over ``volume_voxels`` (:func:`_basis`). The statistics:

1. **modal mineralogy** (:func:`modal_mineralogy`): each phase's share of the
   named-phase volume, and of the mass when densities are given;
2. **liberation degree** (:func:`liberation_degree`, Eq. 1):
   ``LD_i = V_i,free / (V_i,free + V_i,intergrown)``, a particle being free in phase
   ``i`` when ``grade_i > free_threshold`` (strictly; default 0.99); per size class
   (:func:`liberation_by_size`, Eq. 2) the same over the particles whose ESD (or volume)
   lies in the class. Classes are half-open ``[lo, hi)``: a value on an edge goes to
   the class *above* it, except the last edge, which closes the last class; values
   outside the edges are left out (:func:`size_class`). Default edges: 8 log-spaced
   classes from the smallest to the largest particle (:func:`default_size_edges`);
3. **liberation spectrum** (:func:`liberation_spectrum`): the distribution of each
   phase over 12 grade classes, by phase volume and by particle number. The classes are
   *exactly 0 %*, ``(0, 10]``, ``(10, 20]``, ..., ``(80, 90]``, ``(90, 100)`` and
   *exactly 100 %*; in ``summary.json`` they are encoded as ``{"grade_lo": 0,
   "grade_hi": 0}`` for exactly 0 %, ``{"grade_lo": 100, "grade_hi": 100}`` for exactly
   100 % and ``{"grade_lo": a, "grade_hi": b}`` for the open-below interval ``(a, b]``
   (``(90, 100)`` for the last interval, open at both ends). Grades are in percent.
   Classes are assigned exactly (:func:`grade_class`: a correctly rounded division
   of two integer-valued counts lands on the class edge), so a grade of exactly 10 % is
   in ``(0, 10]``. By volume, the 0 % class is always 0
   (kept for a fixed layout); by number, fractions are over all particles, including
   those without the phase (0 % class);
4. **locking and association** (:func:`locking`, :func:`association`): the particles
   holding phase ``i`` are *liberated* (free in ``i``), else *binary*, *ternary* or
   *complex* by the number of phases present (2, 3, 4 or more), by number and by the
   volume of ``i``; and the boundary area each phase shares with each other phase and
   with the outside of its particle (the phase-contact matrix of
   :func:`volmla.measure.measure`, chunk-exact face counts with the 2/3 stereological
   correction);
5. **theoretical grade-recovery curve** per phase (:func:`grade_recovery`): particles
   sorted by grade (descending), cumulative recovery against cumulative grade (by mass
   with densities).

The private helpers at the top (population, phase columns, option checks, the free
test and the LD ratio) are shared by the other modules of :mod:`volmla.liberation`.
The module is one piece past 500 lines on purpose: these are the table statistics of
one data contract, all built on the same population, free test and checks, and about
half of it is their docstrings and examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError

SizeBy = Literal["esd", "volume"]
LOCKING_CLASSES = ("liberated", "binary", "ternary", "complex")
SPECTRUM_CLASSES: tuple[tuple[int, int], ...] = ((0, 0), *((10 * k, 10 * (k + 1)) for k in range(10)), (100, 100))
"""``(grade_lo, grade_hi)`` in percent of the 12 spectrum classes (see module docstring)."""
DEFAULT_SIZE_CLASSES = 8
MAX_DENSITY = 30.0
"""Largest density accepted (g/cm3): the densest element, osmium, is 22.6; a larger value
is a slip or another unit (kg/m3), and would overflow the mass-weighted statistics."""

__all__ = [
    "DEFAULT_SIZE_CLASSES",
    "LOCKING_CLASSES",
    "MAX_DENSITY",
    "SPECTRUM_CLASSES",
    "SizeBy",
    "association",
    "check_densities",
    "default_size_edges",
    "grade_class",
    "grade_recovery",
    "liberation_by_size",
    "liberation_degree",
    "liberation_spectrum",
    "locking",
    "modal_mineralogy",
    "size_class",
]


# --------------------------------------------------------------------------- helpers


def _phases(df: pd.DataFrame, phase_names: Sequence[str] | Mapping[int, str]) -> list[str]:
    names = list(phase_names.values()) if isinstance(phase_names, Mapping) else list(phase_names)
    missing = [p for p in names if f"vox_{p}" not in df.columns]
    if missing:
        raise VolmlaError(f"phase_names {missing} have no vox_<phase> column in the particle table")
    return names


def _basis(df: pd.DataFrame) -> tuple[str, str]:
    """``(prefix, solid column)`` of the phase volumes: ``("vfrac_", "vfrac_solid")``,
    else ``("vox_", "vox_solid")``, else ``("vox_", "volume_voxels")``."""
    if "vfrac_solid" in df.columns:
        return "vfrac_", "vfrac_solid"
    if "vox_solid" in df.columns:
        return "vox_", "vox_solid"
    return "vox_", "volume_voxels"


def _volume(pop: pd.DataFrame, phase: str) -> np.ndarray:
    """The volume of ``phase`` in each particle (voxels, float)."""
    prefix, _ = _basis(pop)
    col = f"{prefix}{phase}" if f"{prefix}{phase}" in pop.columns else f"vox_{phase}"
    return pop[col].to_numpy(np.float64)


def _solid(pop: pd.DataFrame) -> np.ndarray:
    """The solid volume of each particle: the sum over its phases (voxels, float)."""
    return pop[_basis(pop)[1]].to_numpy(np.float64)


def _population(df: pd.DataFrame, include_border: bool) -> pd.DataFrame:
    return df if include_border else df[~df["touches_border"].astype(bool)]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def check_densities(densities: Sequence[float] | Mapping[str, float], names: Sequence[str] | None = None, *,
                    complete: bool = True) -> None:
    """Refuse densities that are no physical density, or that name no phase.

    Parameters
    ----------
    densities
        Per-phase densities (g/cm3): a list (phases 1..N) or ``{phase name: density}``.
    names
        The phase names, when known: a mapping must name only these (and, when
        ``complete``, every one of them).
    complete
        Whether a mapping must give every phase in ``names`` (False: ``names`` are the
        phases there may be, not those there will be).

    Returns
    -------
    None
        Raises :class:`~volmla.errors.VolmlaError` on the first problem.

    Examples
    --------
    >>> check_densities([2.65, 5.0])
    >>> check_densities([2.65, 1e308])
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: densities must be at most 30 g/cm3 (osmium, the densest element, is 22.6), got [2.65, 1e+308]
    """
    shown: Any = dict(densities) if isinstance(densities, Mapping) else list(densities)
    try:
        values = [float(v) for v in (densities.values() if isinstance(densities, Mapping) else densities)]
    except (TypeError, ValueError):
        raise VolmlaError(f"densities must be numbers (g/cm3), got {shown}") from None
    if any(math.isnan(v) or v <= 0 for v in values):
        raise VolmlaError(f"densities must be positive (g/cm3), got {shown}")
    if any(v > MAX_DENSITY for v in values):
        raise VolmlaError(f"densities must be at most {MAX_DENSITY:g} g/cm3 (osmium, the densest element, is 22.6), "
                          f"got {shown}")
    if names is None:
        return
    if isinstance(densities, Mapping):
        unknown = sorted(str(k) for k in set(densities) - set(names))
        if unknown or (complete and len(densities) != len(names)):
            raise VolmlaError(f"densities must give one value per phase {list(names)}, got {shown}"
                              + (f" ({', '.join(unknown)}: no such phase)" if unknown else ""))
    elif len(values) != len(names):
        raise VolmlaError(f"densities must give one value per phase name ({len(names)}), got {len(values)}: "
                          f"{shown} for {','.join(names)}")


def _densities(densities: Sequence[float] | Mapping[str, float] | None, names: list[str]) -> dict[str, float] | None:
    if densities is None:
        return None
    check_densities(densities, names)
    if isinstance(densities, Mapping):
        return {p: float(densities[p]) for p in names}
    return {p: float(v) for p, v in zip(names, densities, strict=True)}


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

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vox_<phase>`` columns).
    densities
        Per-phase densities (g/cm3), in ``phase_names`` order or ``{phase: density}``.
    include_border
        Also count particles touching the volume border.

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
    vol = {p: float(_volume(pop, p).sum()) for p in names}
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

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vox_<phase>`` columns).
    free_threshold
        A particle is free in a phase whose grade exceeds this (strictly), in ``[0, 1)``.
    include_border
        Also count particles touching the volume border.

    Returns
    -------
    dict
        ``{phase: LD}``, NaN for a phase absent from the population.

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
    # grade > thr over the solid phases, without a division: volume > thr * solid
    return _volume(pop, phase) > thr * _solid(pop)


def _ld(pop: pd.DataFrame, phase: str, thr: float) -> float:
    vox = _volume(pop, phase)
    return _ratio(vox[_free(pop, phase, thr)].sum(), vox.sum())


def default_size_edges(values: Sequence[float] | np.ndarray, *, n: int = DEFAULT_SIZE_CLASSES) -> np.ndarray:
    """``n`` log-spaced classes from the smallest to the largest positive value.

    Parameters
    ----------
    values
        Particle sizes (ESD in um or volume in um^3); non-positive and non-finite
        values are ignored.
    n
        Number of classes.

    Returns
    -------
    numpy.ndarray
        ``n + 1`` increasing edges (``[1, 2]`` without a positive value, one narrow
        class when all values are equal).

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

    Parameters
    ----------
    values
        Particle sizes.
    edges
        Increasing class edges.

    Returns
    -------
    numpy.ndarray
        Class index ``0 .. len(edges) - 2`` per value, -1 outside the edges or not finite.

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

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vox_<phase>`` columns).
    free_threshold
        A particle is free in a phase whose grade exceeds this (strictly), in ``[0, 1)``.
    size_edges
        Class edges (um for ESD, um^3 for volume); default :func:`default_size_edges`.
    by
        ``"esd"`` or ``"volume"``: what the classes are made of.
    include_border
        Also count particles touching the volume border.

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
    # per-class sums over columns, not per-class row selections of the table (those cost
    # seconds per million particles, times phases x classes)
    solid = _solid(pop)
    in_class = [cls == k for k in range(edges.size - 1)]
    out: dict[str, list[dict[str, Any]]] = {}
    for p in names:
        vox = _volume(pop, p)
        free = vox > thr * solid
        out[p] = [
            {
                "lo": float(edges[k]),
                "hi": float(edges[k + 1]),
                "ld": _ratio(vox[sel & free].sum(), vox[sel].sum()),
                "n": int((vox[sel] > 0).sum()),
                "n_particles": int(sel.sum()),
            }
            for k, sel in enumerate(in_class)
        ]
    return out


def grade_class(vox: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Spectrum class 0..11 of each particle (see :data:`SPECTRUM_CLASSES`), exactly.

    Parameters
    ----------
    vox
        Volume of the phase in each particle (voxels; fractional volumes accepted).
    volume
        Solid volume of each particle (voxels).

    Returns
    -------
    numpy.ndarray
        The class index per particle (no rounding at the edges: a correctly rounded
        division of integers that is a whole number is exact).

    Examples
    --------
    >>> grade_class(np.array([0, 1, 10, 11, 99, 100]), np.full(6, 100)).tolist()
    [0, 1, 1, 2, 10, 11]
    """
    vox = np.asarray(vox, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.float64)
    k = np.ceil(10.0 * vox / np.maximum(volume, np.finfo(np.float64).tiny)).astype(np.int64)
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
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vox_<phase>`` columns).
    weight
        ``"volume"``: fraction of the phase's volume in particles of each class;
        ``"number"``: fraction of all particles in each class.
    include_border
        Also count particles touching the volume border.

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
    volume = _solid(pop)
    out = {}
    for p in names:
        vox = _volume(pop, p)
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

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vox_<phase>`` columns).
    free_threshold
        A particle is free in a phase whose grade exceeds this (strictly), in ``[0, 1)``.
    include_border
        Also count particles touching the volume border.

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
    present = np.stack([_volume(pop, p) > 0 for p in names], axis=1) if names else np.zeros((len(pop), 0), bool)
    n_present = present.sum(axis=1)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in names:
        vox = _volume(pop, p)
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

    Parameters
    ----------
    contacts
        The phase-contact matrix, :attr:`volmla.measure.Tables.contacts`.
    phase_names
        Phases to report (their ``vox_<phase>`` columns).

    Returns
    -------
    dict
        ``{phase: {other or "background": area_um2}}``, symmetric between phases.
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

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report (their ``vox_<phase>`` columns).
    densities
        Per-phase densities (g/cm3), in ``phase_names`` order or ``{phase: density}``.
    include_border
        Also count particles touching the volume border.

    Returns
    -------
    pandas.DataFrame
        Columns ``phase, rank, cum_yield, cum_grade, cum_recovery``.
    """
    names = _phases(df, phase_names)
    rho = _densities(densities, names)
    pop = _population(df, include_border)
    if rho is None:
        mass = _solid(pop)
        phase_mass = {p: _volume(pop, p) for p in names}
    else:
        phase_mass = {p: _volume(pop, p) * rho[p] for p in names}
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
