"""From OME-Zarr volumes to a label volume: the file-level jobs behind ``volmla label``,
``volmla particles``, ``volmla contacts`` and ``volmla grains``.

1. :func:`plan_label`, :func:`plan_particles`, :func:`plan_contacts` and :func:`plan_grains` validate the
   options, open the inputs, check them against each other and check the output (an
   existing one is refused without ``overwrite=True``; an unfinished one of the same job
   resumes), all before anything is computed, so a mistake costs no cluster start;
2. :func:`write_labels` labels lazily (:func:`volmla.particles.label.label`,
   :func:`~volmla.particles.label_particles`, :func:`~volmla.particles.refine_contacts` or
   :func:`~volmla.particles.label_grains`)
   and writes the labels with the input's voxel size and chunks, the job's fingerprint
   and a provenance record holding the label count.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import xarray as xr

from volmla.errors import VolmlaError
from volmla.particles.api import label_particles
from volmla.particles.contacts import REACH, ROUNDS, check_rounds, contact_rule, refine_contacts
from volmla.particles.grains import check_phase_dtype, label_grains
from volmla.particles.label import Labels, check_connectivity, label
from volmla.particles.learned import MAP_PHASES, check_particle_map
from volmla.particles.split import H_MIN, NECK, split_halo
from volmla.preprocess.fov import RECORD_KEY as FOV_RECORD
from volmla.preprocess.fov import from_provenance, parse_field_of_view
from volmla.types import Connectivity

__all__ = ["LabelsPlan", "plan_contacts", "plan_grains", "plan_label", "plan_particles", "write_labels"]


class LabelsPlan(NamedTuple):
    """A checked labelling job, ready to run (see :func:`write_labels`)."""

    step: Literal["label", "particles", "grains", "contacts"]
    """Which labelling: components, particles, grains or particles with refined contacts."""
    inputs: tuple[xr.DataArray, ...]
    """The opened inputs: ``(mask,)``, ``(volume,)`` or ``(particles, phases)``; the first
    gives the output its voxel size and chunks."""
    output: Path
    options: dict[str, Any]
    """The keywords of the labelling function (also recorded in the provenance)."""
    overwrite: bool
    job: dict[str, Any]
    """What the output's fingerprint is taken from: command, inputs, options."""


def plan_label(
    mask: str | Path,
    output: str | Path,
    *,
    connectivity: Connectivity = 26,
    multilabel: bool = False,
    overwrite: bool = False,
) -> LabelsPlan:
    """Check a connected-component labelling job on files, computing nothing.

    Parameters
    ----------
    mask
        Binary mask (or, with ``multilabel``, an integer volume), OME-Zarr.
    output
        Output label volume (OME-Zarr).
    connectivity
        6, 18 or 26.
    multilabel
        Label the components of each nonzero value separately.
    overwrite
        Replace an existing output.

    Returns
    -------
    LabelsPlan
    """
    from volmla.io import check_output, open_volume
    from volmla.io.outputs import source_id

    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    vol = open_volume(mask)
    options = {"connectivity": connectivity, "multilabel": bool(multilabel)}
    job = {"command": "label", "input": source_id(mask), **options}
    check_output(output, overwrite=overwrite, job=job)
    return LabelsPlan("label", (vol,), Path(output), options, overwrite, job)


def _is_class_map(phases: Any) -> bool:
    """Whether a phase volume's names are a particle U-Net's: 1 interior, 2 boundary."""
    try:
        names = {int(k): str(v) for k, v in dict(phases or {}).items()}
    except (TypeError, ValueError):
        return False
    return names == MAP_PHASES


def _threshold(value: Any, path: str | Path, kind: str,
               phases: Any = None) -> Literal["auto", "otsu", "interior"] | float | None:
    """The threshold :func:`~volmla.particles.label_particles` gets for a volume of ``kind``.

    A phase volume whose names are a particle U-Net's classes (1 interior, 2 boundary:
    ``volmla segment`` with a model trained with ``--target particles``) is read as a
    border/interior map; ``interior`` asks for that reading of a phase volume without
    phase names (one named otherwise is refused).
    """
    if isinstance(value, str) and value == "interior":
        if kind != "phases":
            raise VolmlaError(f"threshold interior reads a U-Net's background/interior/boundary map (a phases "
                              f"volume), but {path} is of kind {kind}")
        check_particle_map(phases, path)
        return "interior"
    if kind != "intensity":
        if not (isinstance(value, str) and value == "auto"):
            raise VolmlaError(f"threshold applies to intensity volumes, but {path} is a {kind} volume (nonzero = solid)")
        return "interior" if kind == "phases" and _is_class_map(phases) else None
    if isinstance(value, str):
        if value in ("auto", "otsu"):
            return value  # type: ignore[return-value]
        try:
            return float(value)
        except ValueError:
            raise VolmlaError(f"threshold must be auto, otsu, interior or a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value):
        raise VolmlaError(f"threshold must be auto, otsu, interior or a number, got {value!r}")
    return float(value)


def plan_particles(
    volume: str | Path,
    output: str | Path,
    *,
    threshold: Literal["auto", "otsu"] | float | str = "auto",
    min_size: int | None = None,
    fill_holes: bool | None = None,
    split: bool = True,
    neck: float = NECK,
    h: float = H_MIN,
    max_radius: float | None = None,
    connectivity: Connectivity = 26,
    overwrite: bool = False,
    field_of_view: str | bool = "auto",
) -> LabelsPlan:
    """Check a particle labelling job on files, computing nothing.

    Parameters
    ----------
    volume
        Intensity volume, or a phase (or label) volume whose nonzero voxels are solid,
        OME-Zarr. Its voxel size is used for the distance map.
    output
        Output particle labels (OME-Zarr).
    threshold
        For intensity volumes: ``"auto"`` (denoised, half-way between the void and
        solid modes), ``"otsu"`` or a value (solid is above it, a number or its text).
        Other volumes take ``"auto"`` (nonzero is solid; a phase volume named as a
        particle U-Net's classes, 1 interior and 2 boundary, is read as that map), and
        phase volumes also ``"interior"`` (read as a background / interior / boundary
        map, :mod:`volmla.particles.learned`: a volume with those phase names or none;
        one whose names are minerals is refused). A value at or above every voxel (no
        solid) or below every voxel (no void) is refused when the labelling starts
        (one pass: :func:`volmla.particles.mask.solid_mask`).
    min_size, fill_holes, split, neck, h, max_radius, connectivity
        As for :func:`~volmla.particles.label_particles`.
    overwrite
        Replace an existing output.
    field_of_view
        ``"auto"``: find the scan's cylindrical field of view in an intensity volume;
        ``"none"`` (or False): every voxel is data; ``"Y,X,R"``: that circle (voxels), e.g.
        a container wall's inner one (:func:`volmla.preprocess.fov.parse_field_of_view`).

    Returns
    -------
    LabelsPlan
    """
    from volmla.io import check_output, open_volume
    from volmla.io.outputs import source_id

    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    if max_radius is not None:
        split_halo(max_radius)
    if min_size is not None and (isinstance(min_size, bool) or not isinstance(min_size, int | np.integer)
                                 or min_size < 0):
        raise VolmlaError(f"min_size must be 0 or more voxels, got {min_size}")
    for name, number, upper in (("neck", neck, 1.0), ("h", h, math.inf)):
        if isinstance(number, bool) or not isinstance(number, int | float | np.number) or not 0 <= number <= upper:
            raise VolmlaError(f"{name} must be {'between 0 and 1' if name == 'neck' else 'a number >= 0'}, got {number}")
    vol = open_volume(volume)
    value = _threshold(threshold, volume, vol.attrs.get("kind", "intensity"), vol.attrs.get("phases"))
    options: dict[str, Any] = {"threshold": value, "min_size": None if min_size is None else int(min_size),
               "fill_holes": None if fill_holes is None else bool(fill_holes), "split": bool(split),
               "neck": float(neck), "h": float(h), "max_radius": max_radius, "connectivity": connectivity}
    fov = parse_field_of_view(field_of_view, name="--fov")
    if fov != "auto":  # named only when not the default, so the jobs of earlier versions stay the same jobs
        options["field_of_view"] = fov
    job = {"command": "particles", "input": source_id(volume), **options}
    check_output(output, overwrite=overwrite, job=job)
    return LabelsPlan("particles", (vol,), Path(output), options, overwrite, job)


def plan_grains(
    particles: str | Path,
    phases: str | Path,
    output: str | Path,
    *,
    connectivity: Connectivity = 26,
    overwrite: bool = False,
) -> LabelsPlan:
    """Check a grain labelling job on files, computing nothing.

    Parameters
    ----------
    particles
        Particle labels (OME-Zarr).
    phases
        Phase volume (OME-Zarr, uint8) of the same shape and voxel size.
    output
        Output grain labels (OME-Zarr).
    connectivity
        6, 18 or 26.
    overwrite
        Replace an existing output.

    Returns
    -------
    LabelsPlan
    """
    connectivity = check_connectivity(connectivity)  # type: ignore[assignment]
    return _plan_pair("grains", particles, phases, output, {"connectivity": connectivity}, overwrite=overwrite)


def plan_contacts(
    particles: str | Path,
    phases: str | Path,
    output: str | Path,
    *,
    reach: int = REACH,
    rounds: int = ROUNDS,
    overwrite: bool = False,
) -> LabelsPlan:
    """Check a contact refinement job on files (:func:`volmla.particles.refine_contacts`),
    computing nothing.

    Parameters
    ----------
    particles
        Particle labels (OME-Zarr), e.g. from ``volmla particles``.
    phases
        Phase volume (OME-Zarr, uint8) of the same shape and voxel size.
    output
        Output particle labels (OME-Zarr).
    reach, rounds
        As in :func:`volmla.particles.refine_contacts`.
    overwrite
        Replace an existing output.

    Returns
    -------
    LabelsPlan
    """
    # the whole rule names the job: an interrupted write resumes only under the same rule
    rule = contact_rule(reach=reach, rounds=rounds)
    plan = _plan_pair("contacts", particles, phases, output, {"reach": reach, "rounds": rounds},
                      overwrite=overwrite, described=rule)
    check_rounds(rounds, tuple(plan.inputs[0].shape), reach)
    return plan


def _plan_pair(step: Literal["grains", "contacts"], particles: str | Path, phases: str | Path, output: str | Path,
               options: dict[str, Any], *, overwrite: bool, described: dict[str, Any] | None = None) -> LabelsPlan:
    """A job on particles and phases: same shape and voxel size, the output checked
    (its job named by ``described``, else by the options)."""
    from volmla.io import check_output, open_volume
    from volmla.io.outputs import source_id

    part, ph = open_volume(particles), open_volume(phases)
    if part.shape != ph.shape:
        raise VolmlaError(f"particles and phases must have the same shape, got {list(part.shape)} and {list(ph.shape)}")
    if not np.allclose(part.attrs["voxel_size_um"], ph.attrs["voxel_size_um"], rtol=1e-6):
        raise VolmlaError(
            f"particles and phases must have the same voxel size, got {list(part.attrs['voxel_size_um'])} "
            f"and {list(ph.attrs['voxel_size_um'])} um"
        )
    check_phase_dtype(ph.dtype, phases)  # values outside 0..255 are refused by the job's first pass
    job = {"command": step, "particles": source_id(particles), "phases": source_id(phases), **(described or options)}
    check_output(output, overwrite=overwrite, job=job)
    return LabelsPlan(step, (part, ph), Path(output), options, overwrite, job)


def write_labels(plan: LabelsPlan) -> Labels:
    """Run a checked labelling job and write its labels (computes).

    The output gets the first input's voxel size and chunks, ``kind="labels"`` and a
    provenance record of the step, its options and the label count. Particle labelling
    stores the watershed keys once in a scratch folder beside the output, removed
    afterwards.

    Parameters
    ----------
    plan
        From :func:`plan_label`, :func:`plan_particles` or :func:`plan_grains`.

    Returns
    -------
    Labels
        The labels as written (lazy) and their count.
    """
    like = plan.inputs[0]
    if plan.step == "label":
        result = label(like, **plan.options)
    elif plan.step == "grains":
        result = label_grains(like, plan.inputs[1], **plan.options)
    else:
        folder = plan.output.resolve().parent
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{plan.output.name}-", dir=folder) as scratch:
            if plan.step == "contacts":
                result = refine_contacts(like, plan.inputs[1], scratch=scratch, **plan.options)
            else:
                result = label_particles(like, scratch=scratch, **plan.options)
            _write(plan, result)  # the labels read the scratch keys: written before it goes
        return result
    _write(plan, result)
    return result


def _write(plan: LabelsPlan, result: Labels) -> None:
    """Write a Labels result with the input's voxel size, chunks and provenance."""
    from volmla.io import write_volume

    like = plan.inputs[0]
    record = {"step": plan.step, **plan.options, "count": int(result.count)}
    if plan.step == "particles":  # the field of view found or given, for the particle table's border
        fov = from_provenance(result.labels.attrs)
        record[FOV_RECORD] = None if fov is None else fov.as_record()
    write_volume(
        like.copy(data=result.labels.data),
        plan.output,
        chunks=tuple(int(c[0]) for c in like.data.chunks),
        kind="labels",
        phases={},
        provenance=[record],
        overwrite=plan.overwrite,
        job=plan.job,
    )
