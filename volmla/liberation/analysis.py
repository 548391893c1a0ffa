"""The liberation analysis of a pair of volumes: checks, orchestration, atomic writes.

:func:`analyse` is the one call behind ``volmla liberation`` and the pipeline's last
stage:

1. every option and the volumes' metadata are checked once, before any computation
   (:func:`check_out_dir`, :func:`check_options`, :func:`check_volumes`);
2. without a grain volume the grains are derived (:func:`volmla.particles.label_grains`);
3. one measurement pass (:func:`volmla.measure.measure`) gives the particle, grain and
   phase-contact tables;
4. the statistics follow from the tables: the summary
   (:func:`volmla.liberation.summary.liberation_summary`), association, the
   grade-recovery curves, and where asked the 2-D sections and stereology
   (:mod:`volmla.liberation.sectioning`), the representativeness check
   (:mod:`volmla.liberation.subvolumes`) and the bootstrap intervals
   (:mod:`volmla.liberation.uncertainty`);
5. the data contract (``particles.parquet``, ``grains.parquet``, ``contacts.parquet``,
   ``grade_recovery.parquet``, ``stereology.parquet``, ``representativeness.parquet``,
   ``summary.json`` with its ``provenance``, PNG plots, the QC images of
   :mod:`volmla.liberation.qc` and a self-contained ``report.html``) is written through
   a temporary folder next to the output that is renamed into place at the end, so a
   crash never leaves a complete-looking report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from volmla.engine.blocks import check_same_voxel_size
from volmla.errors import VolmlaError
from volmla.io.atomic import recover, remove, remove_stale, swap_in, tmp_sibling
from volmla.io.lock import output_lock
from volmla.io.parquet import write_table
from volmla.liberation.qc import qc_figures
from volmla.liberation.report import executive_summary, plots, write_html
from volmla.liberation.sectioning import sections, stereology
from volmla.liberation.stats import (
    SizeBy,
    _check_edges,
    _check_threshold,
    _densities,
    association,
    check_densities,
    grade_recovery,
)
from volmla.liberation.subvolumes import check_pieces, representativeness
from volmla.liberation.summary import (
    Summary,
    _nan_to_none,
    close_phases,
    input_path,
    liberation_summary,
    provenance,
    recorded_levels,
    recorded_psf,
)
from volmla.liberation.uncertainty import MAX_BOOT, bootstrap
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["analyse", "check_options", "check_out_dir", "check_replaceable", "check_volumes"]


REPORT_FILES = ("summary.json", "report.html")
"""What every report folder :func:`check_out_dir` guards holds (liberation, breakage, SEM)."""


def check_out_dir(out_dir: str | Path, *, overwrite: bool = False, foreign: bool = True) -> Path:
    """Validate an output folder before any work: refuse a non-empty one without
    ``overwrite``, one that holds no earlier report even with it (someone else's
    folder: replacing it would delete their files), and a parent that does not exist.

    Parameters
    ----------
    out_dir
        The output folder.
    overwrite
        Accept a non-empty folder holding an earlier report (it is replaced at the end).
    foreign
        Refuse a non-empty folder without a report now; False leaves that to a later
        :func:`check_replaceable` (a caller whose cheaper checks come first).

    Returns
    -------
    pathlib.Path
        ``out_dir`` as a path.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VolmlaError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise VolmlaError(f"output folder {out} exists and is not empty: pass overwrite=True to replace it")
        if foreign:
            check_replaceable(out)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise VolmlaError(f"the parent folder of the output, {parent}, does not exist")
    return out


def check_replaceable(out: Path) -> None:
    """Refuse to replace a non-empty folder that holds no earlier report (someone else's).

    Parameters
    ----------
    out
        The output folder.
    """
    if out.is_dir() and any(out.iterdir()) and not any((out / name).is_file() for name in REPORT_FILES):
        raise VolmlaError(f"output folder {out} holds files but no earlier report ({' or '.join(REPORT_FILES)}): "
                          "refusing to replace it")


def _check_out_not_input(out: Path, *volumes: VolumeLike | None) -> None:
    """Refuse an output folder that is, holds or lies inside a stored input volume
    (``overwrite`` would replace the input with the report)."""
    from volmla.io.outputs import check_not_input

    check_not_input(out, [s for s in (input_path(v) for v in volumes if v is not None) if s])


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
    seed: int = 0,
) -> tuple[float, np.ndarray | None]:
    """Validate the options of :func:`analyse` (cheap; before any computation).

    Parameters
    ----------
    free_threshold, size_edges, by, densities, phase_names, section_step, pieces, n_boot, seed
        As in :func:`analyse`.

    Returns
    -------
    (float, numpy.ndarray or None)
        The threshold and the size-class edges as :func:`analyse` uses them.
    """
    thr = _check_threshold(free_threshold)
    edges = _check_edges(size_edges)
    if by not in ("esd", "volume"):
        raise VolmlaError(f"by must be one of ('esd', 'volume'), got by={by!r}")
    if densities is not None:
        if isinstance(densities, str | bytes) or not isinstance(densities, Mapping | Sequence | np.ndarray):
            raise VolmlaError(f"densities must be a list of numbers or {{phase name: number}}, got {densities!r}")
        from volmla.measure import resolve_phase_names

        names = None if phase_names is None else list(resolve_phase_names(phase_names, None).values())
        check_densities(densities, names)
    if pieces is not None and (not isinstance(pieces, int | np.integer) or pieces < 2):
        raise VolmlaError(f"pieces must be an integer of at least 2, got pieces={pieces!r}")
    if section_step is not None and (not isinstance(section_step, int | np.integer) or section_step < 1):
        raise VolmlaError(f"section_step must be a positive integer, got {section_step!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or not 0 <= n_boot <= MAX_BOOT:
        raise VolmlaError(f"n_boot must be an integer in 0..{MAX_BOOT} (0: no intervals), got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise VolmlaError(f"seed must be a non-negative integer, got {seed!r}")
    return thr, edges


def check_volumes(
    phases: VolumeLike,
    particles: VolumeLike,
    *,
    grains: VolumeLike | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    voxel_size: float | Sequence[float] | None = None,
    intensity: VolumeLike | None = None,
) -> None:
    """Validate shapes, voxel sizes and phase names from the volumes' metadata only.

    Parameters
    ----------
    phases, particles, grains, phase_names, voxel_size, intensity
        As in :func:`analyse`.

    Returns
    -------
    None
        Raises :class:`~volmla.errors.VolmlaError` on the first problem.
    """
    from volmla.measure import resolve_phase_names, resolve_voxel_size

    shapes = {"phases": tuple(phases.shape), "particles": tuple(particles.shape)}
    if grains is not None:
        shapes["grains"] = tuple(grains.shape)
    if len(set(shapes.values())) > 1:
        raise VolmlaError(f"phases, particles (and grains) must have the same shape, got {shapes}")
    if intensity is not None and tuple(intensity.shape) != tuple(phases.shape):
        raise VolmlaError(f"intensity must have the shape of the phases {tuple(phases.shape)}, got {tuple(intensity.shape)}")
    check_same_voxel_size({"phases": phases, "particles": particles, "grains": grains, "intensity": intensity})
    attrs = [dict(getattr(v, "attrs", {}) or {}) for v in (phases, particles, grains) if v is not None]
    resolve_voxel_size(voxel_size if voxel_size is not None else 1.0, *attrs)
    attr_phases = attrs[0].get("phases") or None
    if phase_names is not None and attr_phases:
        resolve_phase_names(phase_names, attr_phases)


def _check_fit(phases: VolumeLike, *, densities: Sequence[float] | Mapping[str, float] | None,
               phase_names: Sequence[str] | Mapping[int, str] | None, pieces: int | None) -> None:
    """What the options need of the volumes, from their metadata, before measuring: the
    pieces cut the shape, and the densities give one value per phase where the phases'
    names are known (given, or the phase volume's attribute)."""
    from volmla.measure import resolve_phase_names

    if pieces is not None:
        check_pieces(pieces, tuple(phases.shape))
    attr = dict(getattr(phases, "attrs", {}) or {}).get("phases") or None
    if densities is not None and (phase_names is not None or attr):
        _densities(densities, list(resolve_phase_names(phase_names, attr).values()))


def analyse(
    phases: VolumeLike,
    particles: VolumeLike,
    *,
    grains: VolumeLike | None = None,
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
    cluster: Callable[[], AbstractContextManager[Any]] | None = None,
    intensity: VolumeLike | None = None,
    warn_small: bool = True,
    job: str | None = None,
) -> Summary:
    """Measure the particles and write every liberation output into ``out_dir``.

    Parameters
    ----------
    phases, particles
        Phase and particle volumes (lazy xarray / Dask, same shape and voxel size).
    grains
        Grain volume. Without it the grains are derived (``derive_grains``) as the
        26-connected components of each phase in each particle
        (:func:`volmla.particles.label_grains`, one more pass and a small union-find), or,
        with ``derive_grains=False``, ``grains.parquet`` is written empty and
        ``n_grains`` is missing.
    out_dir
        Output folder (created; must be empty or absent unless ``overwrite``).
    phase_names
        Names of phases 1..N; default the phase volume's attribute, else ``"1", ...``.
    densities
        Per-phase densities (g/cm3, above 0 and at most 30) for mass-based statistics.
    free_threshold, size_edges, by, include_border
        As in :func:`volmla.liberation.summary.liberation_summary`.
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
    cluster
        Called after every check and before any computation: the context to compute in
        (the CLI passes :func:`volmla.cli.app.running`, which starts its Dask cluster);
        default the current Dask scheduler.
    intensity
        The CT volume the phases were segmented from: boundary voxels are then
        apportioned between pure grey levels (``vfrac_<phase>`` in
        ``particles.parquet``, :mod:`volmla.measure.fractions`) and every statistic
        uses those volumes. Without it ``vfrac_<phase>`` equals ``vox_<phase>``.
    warn_small
        As in :func:`volmla.liberation.summary.liberation_summary`.
    job
        The fingerprint of the job that asks for the report, recorded as
        ``provenance["job"]`` (``volmla run`` keeps a report whose job matches).

    Returns
    -------
    Summary
        The ``summary.json`` content (with ``files``: the names written).

    Examples
    --------
    >>> from volmla.synthetic import phantom
    >>> ph = phantom(shape=(48, 48, 48), seed=1, esd_range=(8, 16))  # doctest: +SKIP
    >>> s = analyse(ph.phases, ph.particles, grains=ph.grains, out_dir="lib")  # doctest: +SKIP
    """
    from volmla.measure import SURFACE_CORRECTION, measure

    # the more precise refusals first: an output that is an input, a wrong option or volume
    _check_out_not_input(Path(out_dir), phases, particles, grains, intensity)
    thr, edges = check_options(free_threshold=free_threshold, size_edges=size_edges, by=by, densities=densities,
                               phase_names=phase_names, section_step=section_step, pieces=pieces, n_boot=n_boot,
                               seed=seed)
    check_volumes(phases, particles, grains=grains, phase_names=phase_names, voxel_size=voxel_size,
                  intensity=intensity)
    _check_fit(phases, densities=densities, phase_names=phase_names, pieces=pieces)
    out = check_out_dir(out_dir, overwrite=overwrite)
    inputs = {"phases": phases, "particles": particles, "grains": grains, "intensity": intensity}
    with output_lock(out), cluster() if cluster is not None else contextlib.nullcontext():
        recover(out)
        if grains is None and derive_grains:
            from volmla.particles import label_grains as _grains

            logger.info("no grain volume given: deriving grains (26-connected phase components per particle)")
            grains = _grains(particles, phases, connectivity=26).labels
        tables = measure(particles, phases, grains=grains, voxel_size=voxel_size, phase_names=phase_names,
                         intensity=intensity)
        names = list(tables.phase_names.values())
        rho = _densities(densities, names)
        pdf = tables.particles
        summary = liberation_summary(
            pdf, phase_names=names, free_threshold=thr, size_edges=edges, by=by, densities=rho,
            include_border=include_border, voxel_size=tables.voxel_size_um, warn_small=warn_small,
        )
        summary["close_phases"] = close_phases(recorded_levels(phases, tables.phase_names), tables.phase_names)
        summary["partial_volume_psf"] = recorded_psf(phases)
        if tables.levels is not None:  # what the boundary voxels were apportioned between
            summary["grey_levels"] = {
                "noise_sigma": float(tables.levels.noise_sigma),
                "levels": {("void" if k == 0 else tables.phase_names.get(k, str(k))): float(v)
                           for k, v in sorted(tables.levels.levels.items())}}
        summary["shape"] = list(tables.shape)
        summary["association"] = _nan_to_none(association(tables.contacts, phase_names=names))
        summary["surface_correction"] = SURFACE_CORRECTION
        summary["phase_volumes"] = "partial-volume" if intensity is not None else "voxel counts"
        summary["provenance"] = provenance(inputs=inputs, voxel_size=tables.voxel_size_um)
        if job is not None:
            summary["provenance"]["job"] = str(job)
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
        qc = {"phases": phases, "particles": particles, "intensity": intensity, "phase_names": tables.phase_names}
        return _write(out, overwrite, summary, pdf, grains_df, extras, names, rho, qc)


def _write(
    out: Path, overwrite: bool, summary: Summary, pdf: pd.DataFrame, grains_df: pd.DataFrame,
    extras: dict[str, Any], names: list[str], rho: dict[str, float] | None, qc: dict[str, Any] | None = None,
) -> Summary:
    """Write everything into a temporary sibling folder, then swap it in (under the output's lock)."""
    token = uuid.uuid4().hex[:12]
    tmp = tmp_sibling(out, token)
    remove_stale(out)
    try:
        tmp.mkdir()
        by = summary.get("representativeness", {}).get("by")
        recorded = cast(Mapping[str, Any], dict(summary).get("provenance") or {})
        inputs = {k: str(v) for k, v in (recorded.get("inputs") or {}).items() if v}
        for key, frame in (("particles", pdf), ("grains", grains_df), *((k, extras[k]) for k in (
                "contacts", "grade_recovery", "stereology", "representativeness") if k in extras)):
            write_table(frame, tmp / f"{key}.parquet", table=key, voxel_size_um=summary["voxel_size_um"], phases=names,
                        inputs=inputs or None,
                        units={"lo": "um^3", "hi": "um^3"} if by == "volume" else {"lo": "um", "hi": "um"})
        pngs = plots(tmp, summary=summary, particles=pdf, grains=grains_df, extras=extras, phase_names=names,
                     densities=rho)
        if qc is not None:
            pngs += qc_figures(tmp, particles_df=pdf, free_threshold=summary["free_threshold"],
                               include_border=summary["include_border"], voxel_size=summary["voxel_size_um"], **qc)
        # summary.json carries every warning the report shows (the report's own: few particles, border, ...)
        summary["warnings"] = executive_summary(summary)["warnings"]  # (the particles give only P80)
        files = sorted(p.name for p in tmp.iterdir()) + ["report.html", "summary.json"]
        summary["files"] = sorted(set(files))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
        write_html(tmp / "report.html", summary=summary, pngs=pngs, extras=extras, particles=pdf)
        if out.exists() and not overwrite and any(out.iterdir()):
            raise VolmlaError(f"output folder {out} appeared while computing: pass overwrite=True to replace it")
        swap_in(tmp, out, token)
    except BaseException:
        remove(tmp)
        raise
    logger.info("liberation outputs written to %s", out)
    return summary
