"""The liberation summary: the ``summary.json`` data contract and the dict that holds it.

:class:`Summary` types the keys; :func:`liberation_summary` fills those computed from the
particle table alone (the statistics of :mod:`volmla.liberation.stats`), and
:func:`volmla.liberation.analysis.analyse` adds the others (``shape``, ``association``,
``surface_correction``, ``stereology``, ``representativeness``, ``uncertainty``,
``provenance`` (:func:`provenance`) and ``files``). NaN is written as ``None`` (JSON ``null``) by :func:`_nan_to_none`, so the
summary dumps with ``allow_nan=False``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import numpy as np
import pandas as pd

from volmla.liberation.stats import (
    SizeBy,
    _check_edges,
    _check_threshold,
    _densities,
    _phases,
    _population,
    liberation_by_size,
    liberation_degree,
    liberation_spectrum,
    locking,
    modal_mineralogy,
)
from volmla.liberation.uncertainty import Uncertainty

if TYPE_CHECKING:
    from volmla.measure.fractions import PhaseLevels

logger = logging.getLogger(__name__)

__all__ = [
    "CLOSE_CONTRAST",
    "SPLIT_SE",
    "SMALL_PARTICLE_RADIUS",
    "SPECTRUM_ENCODING",
    "Provenance",
    "Summary",
    "close_phases",
    "input_path",
    "liberation_summary",
    "phase_warnings",
    "provenance",
    "recorded_levels",
    "recorded_psf",
    "size_warnings",
]

SPECTRUM_ENCODING = (
    "grade_lo/grade_hi in percent: (0, 0) exactly 0 %, (100, 100) exactly 100 %, "
    "(a, b) the interval (a, b], except (90, 100) which is open at both ends"
)
"""The ``spectrum_classes`` entry of the summary: how spectrum classes are encoded."""


class Provenance(TypedDict):
    """Where a liberation result comes from (``summary["provenance"]``)."""

    inputs: dict[str, str | None]
    """``phases``, ``particles``, ``grains``, ``intensity``: the path each was read
    from, ``None`` for an in-memory volume or one not given."""
    volmla_version: str
    model: str | None
    """The segmentation model recorded in the phase volume's provenance, if any."""
    date: str
    """When the analysis ran (ISO 8601, UTC)."""
    voxel_size_um: list[float] | None
    job: NotRequired[str]
    """The fingerprint of the ``volmla run`` job that wrote the report (its options and
    its input volumes' content): a rerun whose job matches keeps the report."""


class Summary(TypedDict):
    """The ``summary.json`` content (NaN as ``None``).

    The keys up to ``locking`` come from :func:`liberation_summary`; the others are
    added by :func:`volmla.liberation.analysis.analyse`.
    """

    voxel_size_um: list[float] | None
    n_particles: int
    n_particles_total: int
    n_border: int
    free_threshold: float
    include_border: bool
    size_by: SizeBy
    phases: list[str]
    densities: dict[str, float] | None
    modal_mineralogy: dict[str, float | None]
    modal_mineralogy_mass: dict[str, float | None] | None
    liberation_degree: dict[str, float | None]
    liberation_by_size: dict[str, list[dict[str, Any]]]
    liberation_spectrum: dict[str, list[dict[str, float | None]]]
    liberation_spectrum_by_number: dict[str, list[dict[str, float | None]]]
    spectrum_classes: str
    locking: dict[str, dict[str, dict[str, float | None]]]
    warnings: list[str]
    """What qualifies the figures, as sentences (:func:`phase_warnings`, :func:`size_warnings`):
    a phase with no voxels at all, or none in the analysed particles; particles small
    against the voxel. The report lists them first."""
    shape: NotRequired[list[int]]
    association: NotRequired[dict[str, dict[str, float | None]]]
    surface_correction: NotRequired[float]
    phase_volumes: NotRequired[str]
    """``"partial-volume"`` (boundary voxels apportioned by intensity) or ``"voxel counts"``."""
    grey_levels: NotRequired[dict[str, Any]]
    """With an intensity: ``{"noise_sigma": s, "levels": {"void"|phase: grey}}``, the pure
    levels the boundary voxels were apportioned between."""
    partial_volume_psf: NotRequired[dict[str, Any] | None]
    """The PSF sigma (voxels) the phases' partial-volume correction used and whether it was
    estimated (:func:`recorded_psf`; None: not recorded)."""
    close_phases: NotRequired[list[dict[str, Any]]]
    """Pairs of phases closer in grey than the noise resolves per voxel (:func:`close_phases`,
    from the levels the segmentation fitted); the report names them."""
    stereology: NotRequired[dict[str, Any]]
    representativeness: NotRequired[dict[str, Any]]
    uncertainty: NotRequired[Uncertainty]
    provenance: NotRequired[Provenance]
    files: NotRequired[list[str]]


def _nan_to_none(value: Any) -> Any:
    """A JSON-ready copy: non-finite floats as ``None``, NumPy scalars as Python ones."""
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
    warn_small: bool = True,
) -> Summary:
    """The ``summary.json`` content computed from the particle table.

    Parameters
    ----------
    particles_df
        The particle table (:func:`volmla.measure.particle_table`).
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
    warn_small
        Warn when the particles are small against the voxel (:func:`size_warnings`): a
        caveat of phases classified from grey; off where the phases are given (breakage).

    Returns
    -------
    Summary
        Keys ``voxel_size_um, n_particles, n_particles_total, n_border,
        free_threshold, include_border, size_by, modal_mineralogy,
        modal_mineralogy_mass, liberation_degree, liberation_by_size,
        liberation_spectrum, liberation_spectrum_by_number, spectrum_classes, locking,
        warnings`` (NaN as ``None``).

    Examples
    --------
    >>> df = pd.DataFrame({"particle_id": [1, 2], "vox_a": [10, 5], "volume_voxels": [10, 10],
    ...     "esd_um": [2.0, 3.0], "volume_um3": [10.0, 10.0], "touches_border": [False, False]})
    >>> liberation_summary(df, phase_names=["a"])["liberation_degree"]
    {'a': 0.6666666666666666}
    """
    names = _phases(particles_df, phase_names)
    thr = _check_threshold(free_threshold)
    rho = _densities(densities, names)
    # the population is selected once (a row selection of every column costs ~1 s per
    # million particles); the statistics then take it whole
    pop = _population(particles_df, include_border)
    modal = modal_mineralogy(pop, phase_names=names, densities=densities, include_border=True)
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
        "densities": rho,
        "modal_mineralogy": modal["volume"],
        "modal_mineralogy_mass": modal["mass"],
        "liberation_degree": liberation_degree(pop, phase_names=names, free_threshold=thr, include_border=True),
        "liberation_by_size": liberation_by_size(
            pop, phase_names=names, free_threshold=thr, size_edges=edges, by=by, include_border=True
        ),
        "liberation_spectrum": liberation_spectrum(pop, phase_names=names, include_border=True),
        "liberation_spectrum_by_number": liberation_spectrum(pop, phase_names=names, weight="number", include_border=True),
        "spectrum_classes": SPECTRUM_ENCODING,
        "locking": locking(pop, phase_names=names, free_threshold=thr, include_border=True),
        "warnings": phase_warnings(particles_df, phase_names=names, include_border=include_border)
        + (size_warnings(pop) if warn_small else []),
    }
    return cast(Summary, _nan_to_none(summary))


def phase_warnings(particles_df: pd.DataFrame, *, phase_names: Sequence[str], include_border: bool = False) -> list[str]:
    """Warnings for phases the figures are silent about: a named phase with no voxel in
    any particle (``"phase X: no voxels found"``: absent from the scan, or lost by the
    segmentation), or one found only in the particles left out (cut by the border).

    Each is also logged. A zero modal fraction and liberation degree of such a phase are
    not measurements of it.

    Parameters
    ----------
    particles_df
        The particle table (``vox_<phase>`` columns).
    phase_names
        The phases reported.
    include_border
        Whether particles touching the volume border are analysed.

    Returns
    -------
    list of str

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5], "vox_b": [0, 0], "vox_c": [0, 3], "touches_border": [False, True]})
    >>> phase_warnings(df, phase_names=["a", "b", "c"])
    ['phase b: no voxels found', 'phase c: found only in particles cut by the volume border (excluded)']
    """
    out = []
    kept = np.ones(len(particles_df), bool) if include_border else ~particles_df["touches_border"].to_numpy(bool)
    for p in phase_names:
        vox = particles_df[f"vox_{p}"].to_numpy(np.float64)
        total = float(np.nansum(vox))
        if total <= 0:
            out.append(f"phase {p}: no voxels found")
        elif kept.any() and float(np.nansum(vox[kept])) <= 0:
            out.append(f"phase {p}: found only in particles cut by the volume border (excluded)")
    for line in out:
        logger.warning(line)
    return out


SMALL_PARTICLE_RADIUS = 7.0
"""Equivalent radius (voxels) below which the particle holding the median solid voxel
draws a warning. Measured on crushed-ore phantoms (``benchmarks/results/truth_e2e_sweep.json``,
README "Where the targets are met"): where that radius was 6.3 voxels, the phases by region
on the TRUE particles put the liberation degree of the two phases close in grey 0.03-0.08
too high whatever their contrast (1-3 noise sigma); at 8.6 voxels within 0.02 from 1.5
sigma on."""


def size_warnings(population: pd.DataFrame) -> list[str]:
    """A warning when the particles are small against the voxel: half the solid lies in
    particles of equivalent radius below :data:`SMALL_PARTICLE_RADIUS` voxels.

    The radius is the volume-weighted median (the particle holding the median solid voxel),
    since the liberation degree is a volume-weighted figure. Logged as well.

    Parameters
    ----------
    population
        The analysed particles (``volume_voxels``).

    Returns
    -------
    list of str
        Empty, or one sentence.

    Examples
    --------
    >>> size_warnings(pd.DataFrame({"volume_voxels": [300, 500, 900]}))  # doctest: +ELLIPSIS
    ['particles are small against the voxel: half the solid lies in particles of equivalent radius below 6.0 voxels...']
    >>> size_warnings(pd.DataFrame({"volume_voxels": [5000, 9000]}))
    []
    """
    if "volume_voxels" not in population or not len(population):
        return []
    volume = np.sort(population["volume_voxels"].to_numpy(np.float64))
    volume = volume[volume > 0]
    if not volume.size:
        return []
    median = volume[np.searchsorted(np.cumsum(volume) / volume.sum(), 0.5)]
    radius = float(np.cbrt(3.0 * median / (4.0 * np.pi)))
    if radius >= SMALL_PARTICLE_RADIUS:
        return []
    line = (f"particles are small against the voxel: half the solid lies in particles of equivalent radius below "
            f"{radius:.1f} voxels; on phantoms of this size the liberation degree of phases close in grey came out "
            f"0.03-0.08 high (README: where the targets are met)")
    logger.warning(line)
    return [line]


SPLIT_SE = 0.05
"""Standard error (noise sigmas) of the grey that splits a close pair of phases
(:func:`close_phases`' ``split_se_sigma``) from which the report warns that the levels
rest on too few labelled voxels. On the hard phantoms (80^3, 1 sigma apart, three
labelled planes, 60-500 pure voxels per phase) a shift of that grey by 0.15 sigma moved
the modal fractions of the pair by up to 0.08 (README: "Mixtures with a bright phase"):
at 0.05 sigma the pair's modal figures are uncertain by about 0.02-0.03, beyond the 0.02
the liberation targets allow."""

CLOSE_CONTRAST = 1.2
"""Grey contrast (noise sigmas between two phases' pure levels) below which the report
names the pair (:func:`close_phases`): a note, and a warning where the particles are small
against the voxel as well (:func:`size_warnings`). Measured on crushed-ore phantoms
(``benchmarks/bench_truth.py``, levels fitted on the sparse labels by
:func:`volmla.segment.pooled.label_levels`, cupping taken out): the easy level (1.5 sigma
set, read as 1.35-1.40 at 80^3, particles of volume-weighted median radius 8.5-9.8 voxels)
meets the liberation targets, the hard one (1.0 set, read as 0.82-0.91, radius 6.2) misses
them by 0.1-0.2; on the true particles at radius 8 contrast 1 gave LD errors up to 0.23
where 1.5 gave 0.03 (``benchmarks/results/truth_e2e_sweep.json``); the demo's phantom
(0.53 sigma, radius 13, larger grains) stays within 0.03. Contrast alone does not decide:
what pools over a grain does, so the pair alone is a note."""


def recorded_levels(volume: Any, phase_names: Mapping[int, str]) -> PhaseLevels | None:
    """The grey levels a phase volume's segmentation fitted, from its provenance.

    ``method="regions"`` (:func:`volmla.segment.segment_phases`) records the levels it
    fitted on the sparse labels, with the cupping taken out, and the pure labelled voxels
    each rests on, as ``grey_levels`` in its ``segment`` record; other methods record none.

    Parameters
    ----------
    volume
        The phase volume (its ``attrs["provenance"]``), or anything without attributes.
    phase_names
        Phase id -> name of the phases reported (the record names its phases).

    Returns
    -------
    PhaseLevels or None
        The last segment record's levels under these ids (void as 0), or None.

    Examples
    --------
    >>> import xarray as xr
    >>> rec = {"step": "segment", "grey_levels": {"noise_sigma": 2.0, "levels": {"void": 0.0, "a": 10.0}}}
    >>> recorded_levels(xr.DataArray(np.zeros(1), attrs={"provenance": [rec]}), {1: "a"}).levels
    {0: 0.0, 1: 10.0}
    """
    from volmla.measure.fractions import PhaseLevels

    grey = _segment_grey(volume)
    ids = {"void": 0, **{str(n): int(k) for k, n in phase_names.items()}}
    if grey is None or not isinstance(grey.get("levels"), Mapping):
        return None
    try:
        levels = {ids[str(n)]: float(v) for n, v in grey["levels"].items() if str(n) in ids}
        counts = grey.get("voxels")
        voxels = {ids[str(n)]: int(v) for n, v in counts.items() if str(n) in ids} if isinstance(counts, Mapping) else {}
        return PhaseLevels(levels, float(grey["noise_sigma"]), voxels)
    except (KeyError, TypeError, ValueError):
        return None  # a record written otherwise: no warning rather than a wrong one


def recorded_psf(volume: Any) -> dict[str, Any] | None:
    """The PSF sigma a phase volume's partial-volume correction used, from its provenance.

    Parameters
    ----------
    volume
        The phase volume (its ``attrs["provenance"]``), or anything without attributes.

    Returns
    -------
    dict or None
        ``{"sigma": voxels, "estimated": bool}`` from the last segment record
        (``method="regions"`` records it beside its levels), or None.

    Examples
    --------
    >>> import xarray as xr
    >>> rec = {"step": "segment", "grey_levels": {"psf_sigma": 0.7, "psf_estimated": True}}
    >>> recorded_psf(xr.DataArray(np.zeros(1), attrs={"provenance": [rec]}))
    {'sigma': 0.7, 'estimated': True}
    """
    grey = _segment_grey(volume)
    try:
        if grey is None or grey.get("psf_sigma") is None:
            return None
        return {"sigma": float(grey["psf_sigma"]), "estimated": grey.get("psf_estimated") is not False}
    except (TypeError, ValueError):
        return None


def _segment_grey(volume: Any) -> Mapping[str, Any] | None:
    """The ``grey_levels`` of the latest segment record (None: none, or that segmentation fitted none)."""
    attrs = getattr(volume, "attrs", None)
    steps = attrs.get("provenance") if isinstance(attrs, Mapping) else None
    for step in reversed(list(steps or [])):
        if isinstance(step, Mapping) and step.get("step") == "segment":
            grey = step.get("grey_levels")
            return grey if isinstance(grey, Mapping) else None
    return None


def close_phases(levels: PhaseLevels | None, phase_names: Mapping[int, str]) -> list[dict[str, Any]]:
    """Pairs of solid phases closer in grey than :data:`CLOSE_CONTRAST` noise sigmas.

    Such phases are told apart over many voxels (a grain), not per voxel: small
    intergrown grains of the two read as their neighbours, and the liberation degrees of
    the two carry a bias the bootstrap intervals do not include.

    Parameters
    ----------
    levels
        :class:`volmla.measure.fractions.PhaseLevels` (``levels``: phase id -> grey,
        ``noise_sigma``): best the levels a segmentation fitted with the cupping taken
        out (:func:`recorded_levels`); None: no pair.
    phase_names
        Phase id -> name of the phases reported.

    Returns
    -------
    list of dict
        ``{"phases": [a, b], "contrast_sigma": c}``, the closest pair first; where the
        levels' voxel counts are known, also ``"voxels": [na, nb]`` and
        ``"split_se_sigma"``: the standard error of the grey half-way between the two
        levels, in noise sigmas, ``0.5 sqrt(1/na + 1/nb)`` (the grey that splits them is
        known no better than that).

    Examples
    --------
    >>> from volmla.measure.fractions import PhaseLevels
    >>> lv = PhaseLevels({0: 10000.0, 1: 22000.0, 2: 23100.0, 3: 46000.0}, 1300.0, {})
    >>> close_phases(lv, {1: "quartz", 2: "feldspar", 3: "pyrite"})
    [{'phases': ['quartz', 'feldspar'], 'contrast_sigma': 0.846}]
    >>> close_phases(lv._replace(voxels={1: 73, 2: 163}), {1: "quartz", 2: "feldspar"})[0]["split_se_sigma"]
    0.07
    >>> close_phases(None, {1: "quartz"})
    []
    """
    if levels is None or not float(levels.noise_sigma) > 0:
        return []
    known = sorted((int(k), float(v)) for k, v in levels.levels.items() if int(k) in phase_names and int(k) > 0)
    counts = {int(k): int(v) for k, v in (levels.voxels or {}).items()}
    pairs = []
    for i, (a, la) in enumerate(known):
        for b, lb in known[i + 1:]:
            contrast = abs(la - lb) / float(levels.noise_sigma)
            if contrast < CLOSE_CONTRAST:
                pair: dict[str, Any] = {"phases": [str(phase_names[a]), str(phase_names[b])],
                                        "contrast_sigma": round(contrast, 3)}
                na, nb = counts.get(a, 0), counts.get(b, 0)
                if na > 0 and nb > 0:
                    pair["voxels"] = [na, nb]
                    pair["split_se_sigma"] = round(0.5 * math.sqrt(1.0 / na + 1.0 / nb), 3)
                pairs.append(pair)
    return sorted(pairs, key=lambda q: (q["contrast_sigma"], q["phases"]))


def input_path(volume: Any) -> str | None:
    """The path a volume was read from: a path given as such, or an xarray ``path`` attribute.

    Parameters
    ----------
    volume
        A path, an :class:`xarray.DataArray` opened by :func:`volmla.open_volume`, or any
        other array (no path) or None.

    Returns
    -------
    str or None

    Examples
    --------
    >>> input_path("scan.zarr"), input_path(np.zeros(3))
    ('scan.zarr', None)
    """
    if isinstance(volume, str | os.PathLike):
        return os.fspath(volume)
    attrs = getattr(volume, "attrs", None)
    path = attrs.get("path") if isinstance(attrs, Mapping) else None
    return str(path) if path else None


def _model(volume: Any) -> str | None:
    """The last model named in a volume's provenance steps (``volmla segment --model``)."""
    attrs = getattr(volume, "attrs", None)
    steps = attrs.get("provenance") if isinstance(attrs, Mapping) else None
    for step in reversed(list(steps or [])):
        if isinstance(step, Mapping) and step.get("model"):
            return str(step["model"])
    return None


def provenance(
    *,
    inputs: Mapping[str, Any],
    voxel_size: Sequence[float] | None,
    model: str | os.PathLike[str] | None = None,
) -> Provenance:
    """The provenance record of a liberation result: inputs, volmla version, model, date, voxel size.

    Parameters
    ----------
    inputs
        ``{name: volume or path or None}`` (``phases``, ``particles``, ``grains``,
        ``intensity``); each is recorded as :func:`input_path` gives it.
    voxel_size
        ``(z, y, x)`` um used.
    model
        The segmentation model; default the last one recorded in the provenance steps of
        the ``phases`` volume (as ``volmla segment`` writes them).

    Returns
    -------
    Provenance

    Examples
    --------
    >>> p = provenance(inputs={"phases": "phases.zarr", "grains": None}, voxel_size=(2.0, 2.0, 2.0))
    >>> p["inputs"], p["model"], p["voxel_size_um"]
    ({'phases': 'phases.zarr', 'grains': None}, None, [2.0, 2.0, 2.0])
    """
    from volmla import __version__

    found = model if model is not None else _model(inputs.get("phases"))
    return {
        "inputs": {str(k): input_path(v) for k, v in inputs.items()},
        "volmla_version": __version__,
        "model": os.fspath(found) if found is not None else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "voxel_size_um": [float(v) for v in voxel_size] if voxel_size is not None else None,
    }
