"""Whole runs: ``volmla run CONFIG.yaml``.

A run is a chain of stages, each reading the OME-Zarr volumes the previous ones wrote
(workers read them from disk themselves) and writing its own:

1. ``input``: ingest scanner output to ``intensity.zarr`` (or start from an OME-Zarr);
2. ``preprocess``: the configured filter steps -> ``preprocessed.zarr``;
3. ``segment``: phases by region (the default with sparse labels), U-Net (ONNX), random
   forest, k-means or threshold, through :func:`volmla.segment.segment_phases` ->
   ``phases.zarr``;
4. ``particles``: solid mask, distributed labelling, watershed split -> ``particles.zarr``;
   from the phases (solid = phase > 0), or, for ``regions``, which classifies inside
   particles, from the intensity first (``threshold: auto`` unless the config says); with
   ``particles.model`` (a particle U-Net) from its background / interior / boundary map
   of the scan (``particle_map.zarr``, :mod:`volmla.particles.learned`), before the phases;
   the particles' contacts are then refined with the phases (a voxel of a mineral its
   particle lacks goes to the touching particle that has it,
   :func:`volmla.particles.refine_contacts`): the split is ``particles_split.zarr``,
   the refined particles ``particles.zarr`` (``particles.contacts: false``: the split
   is ``particles.zarr``);
5. ``grains``: components of (particle, phase) -> ``grains.zarr``;
6. ``liberation``: tables, statistics, plots and the report -> ``report/``, with the
   segmented intensity, so phase volumes are partial-volume apportioned and the report
   shows CT slices; ``summary.json`` records the job's fingerprint
   (``provenance["job"]``: the liberation options and the content of the volumes read),
   and a rerun keeps a report of the same job.

When the run ingested its input (``intensity.zarr`` is its own), phases, particles and
grains are also written under ``intensity.zarr/labels/`` as NGFF ``image-label`` (names,
the fixed mineral palette), so a viewer (napari with napari-ome-zarr) opens the scan with
its segmentation; an OME-Zarr input given as ``input:`` is never written into.

The whole config is checked (:func:`volmla.pipeline.config.validate_config`), and the
input, the model and the training labels it names are opened, before the output folder
is made or any stage runs. Every stored stage uses the input's storage chunks
(``input.chunks``, else the input volume's), so a rerun resumes chunk by chunk. Each
stage records a job description in its output; a rerun keeps
stages whose output is complete for the same job and resumes an interrupted one chunk
by chunk (:func:`volmla.io.outputs.output_state` decides), so an interrupted run picks
up where it stopped.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from volmla.errors import VolmlaError
from volmla.io import open_volume, output_state, write_volume
from volmla.pipeline.config import PipelineConfig, SegmentConfig, load_config, validate_config
from volmla.types import Device

logger = logging.getLogger(__name__)

Log = Callable[[str], None]

__all__ = ["Log", "run"]


def _quiet(_: str) -> None:
    return None


def _done(path: Path, job: Mapping[str, Any], overwrite: bool) -> bool:
    return output_state(path, job=job, overwrite=overwrite) == "done"


def _stage(
    path: Path, job: Mapping[str, Any], make: Callable[[], Any], *, log: Log, overwrite: bool, **write: Any
) -> xr.DataArray:
    """Write ``make()`` to ``path`` unless it is already complete for ``job``; open it."""
    if _done(path, job, overwrite):
        log(f"  {path.name}: complete, kept")
        return open_volume(path)
    start = time.perf_counter()
    write_volume(make(), path, job=job, overwrite=overwrite, **write)
    log(f"  {path.name}: written in {time.perf_counter() - start:.1f} s")
    return open_volume(path)


def run(config: PipelineConfig | Mapping[str, Any] | str | Path, *, overwrite: bool = False,
        device: Device = "auto", log: Log = _quiet) -> dict[str, Any]:
    """Run the stages a config describes (see :mod:`volmla.pipeline.config`).

    Parameters
    ----------
    config
        A YAML path, a parsed mapping (validated here) or a :class:`PipelineConfig`.
    overwrite
        Recompute every stage, replacing existing outputs.
    device
        ``auto``, ``cpu`` or ``gpu`` for filters and models.
    log
        Called with one line per stage.

    Returns
    -------
    dict
        The paths written and the liberation summary (if that stage ran).

    Examples
    --------
    >>> run("run.yaml")  # doctest: +SKIP
    """
    if isinstance(config, PipelineConfig):
        cfg = config
    elif isinstance(config, str | Path):
        cfg = load_config(config)
    else:
        cfg = validate_config(config)
    source = cfg.input
    loaded = _open_input(cfg)  # a missing or unreadable input fails before anything is made
    chunks = source.chunks or tuple(int(c[0]) for c in loaded.data.chunks)
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise VolmlaError(f"config out {out} exists and is not a folder: name a folder for the run's outputs")
    _check_out(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, a read-only place
        raise VolmlaError(f"config out {out}: cannot make the folder ({exc.strerror})") from None
    result: dict[str, Any] = {"out": str(out)}

    # 1. input
    if source.zarr is not None:
        volume = loaded
        log(f"input: {source.zarr}")
    else:
        # the files' content as listed now (a folder of slices is no Zarr group that the job
        # fingerprints itself): changed slices are another job, never a stale volume kept
        from volmla.io.outputs import INPUTS_KEY

        job = {"stage": "ingest", "paths": [str(p) for p in source.paths], **source.options(),
               INPUTS_KEY: loaded.attrs["provenance"][-1][INPUTS_KEY]}
        log("ingest")
        volume = _stage(out / "intensity.zarr", job, lambda: loaded, log=log, overwrite=overwrite, chunks=chunks)
    result["intensity"] = volume.attrs["path"]
    # the scan's field of view, found on the scan as reconstructed; the outside then reads as
    # void to every stage (its fill, often 0, would move the levels and the apportioning)
    fov = _field_of_view(volume, cfg, log=log)
    if fov.get("field_of_view") is not None:
        from volmla.preprocess.fov import void_outside

        volume = volume.copy(data=void_outside(volume.data, fov["field_of_view"]))

    # 2. preprocess
    if cfg.preprocess:
        from volmla.preprocess import preprocess

        job = {"stage": "preprocess", "input": volume.attrs["path"], "steps": cfg.preprocess}
        log("preprocess")
        source_volume = volume
        volume = _stage(out / "preprocessed.zarr", job,
                        lambda: preprocess(source_volume, cfg.preprocess, device=device),
                        log=log, overwrite=overwrite, chunks=chunks)
        result["preprocessed"] = volume.attrs["path"]

    if cfg.segment is None:
        return result

    # 3-5. segment, particles, grains (regions classify inside particles: particles first)
    seg = cfg.segment
    split = out / ("particles_split.zarr" if cfg.particles.refines_contacts else "particles.zarr")
    particles: xr.DataArray | None = None
    if cfg.particles.model is not None:
        particles = _particles(_particle_map(volume, cfg.particles.model, device=device, out=out, log=log,
                                             overwrite=overwrite, chunks=chunks),
                               {"threshold": "interior", **cfg.particles.options(), **fov}, path=split, log=log,
                               overwrite=overwrite, chunks=chunks)
    elif seg.method == "regions":
        particles = _particles(volume, {"threshold": "auto", **cfg.particles.options(), **fov}, path=split, log=log,
                               overwrite=overwrite, chunks=chunks)
    log(f"segment ({seg.spelled})")
    job = {"stage": "segment", "input": volume.attrs["path"], **seg.job()}
    if particles is not None:
        job["particles"] = particles.attrs["path"]
    phases = _stage(out / "phases.zarr", job,
                    lambda: _segment(volume, seg, device=device, out=out, particles=particles), log=log,
                    overwrite=overwrite, chunks=chunks, kind="phases", phases=_phase_names(seg),
                    voxel_size=volume.attrs["voxel_size_um"])
    result["phases"] = phases.attrs["path"]
    if particles is None:
        particles = _particles(phases, {"threshold": None, **cfg.particles.options(), **fov}, path=split, log=log,
                               overwrite=overwrite, chunks=chunks)
    if cfg.particles.refines_contacts:
        result["particles_split"] = particles.attrs["path"]
        particles = _contacts(particles, phases, out=out, log=log, overwrite=overwrite, chunks=chunks)
    result["particles"] = particles.attrs["path"]
    grains = _grains(particles, phases, out=out, log=log, overwrite=overwrite, chunks=chunks) if cfg.grains else None
    if grains is not None:
        result["grains"] = grains.attrs["path"]

    # the segmentation beside the scan it came from, for viewers (NGFF image-label)
    if source.zarr is None:
        _viewer_labels(Path(result["intensity"]), {"phases": phases, "particles": particles, "grains": grains},
                       log=log)

    # 6. liberation
    result["summary"] = _liberation(phases, particles, grains, volume, cfg.liberation.options(), out=out, log=log,
                                    overwrite=overwrite)
    result["report"] = str(out / "report" / "report.html")
    return result


def _liberation(phases: xr.DataArray, particles: xr.DataArray, grains: xr.DataArray | None,
                intensity: xr.DataArray, options: Mapping[str, Any], *, out: Path, log: Log,
                overwrite: bool) -> Mapping[str, Any]:
    """The report (``report/``), kept when it was written for the same job.

    The job is the options passed to :func:`volmla.liberation.analyse` and the volumes it
    reads; its fingerprint (:func:`volmla.io.outputs.job_fingerprint`, which folds in each
    volume's content fingerprint: metadata with its recorded job, chunk listing, sampled
    bytes) is recorded as ``provenance["job"]`` in ``summary.json``. A report without it
    (an older version's), of another job, missing a file it lists or being written by
    another process is recomputed (replaced whole, through a temporary sibling)."""
    from volmla.io.outputs import job_fingerprint
    from volmla.liberation import analyse

    log("liberation")
    report = out / "report"
    job = {"stage": "liberation", "phases": phases.attrs["path"], "particles": particles.attrs["path"],
           "grains": grains.attrs["path"] if grains is not None else None, "intensity": intensity.attrs["path"],
           "options": dict(options)}
    fingerprint = job_fingerprint(job)
    kept = None if overwrite else _kept_report(report, fingerprint)
    if kept is not None:
        log(f"  {report.name}: complete, kept")
        return kept
    start = time.perf_counter()
    summary = analyse(phases, particles, grains=grains, out_dir=report, intensity=intensity, overwrite=True,
                      job=fingerprint, **options)
    log(f"  {report.name}: written in {time.perf_counter() - start:.1f} s")
    return summary


def _kept_report(report: Path, fingerprint: str) -> dict[str, Any] | None:
    """The ``summary.json`` of a complete report written for the job ``fingerprint``, else None."""
    import json

    from volmla.io.lock import lock_holder

    if lock_holder(report) is not None:  # being written: analyse refuses it with one line
        return None
    try:
        summary = json.loads((report / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    prov = summary.get("provenance") if isinstance(summary, dict) else None
    if not isinstance(prov, dict) or prov.get("job") != fingerprint:
        return None
    files = summary.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and (report / f).is_file() for f in files):
        return None
    return summary


def _phase_names(seg: SegmentConfig) -> dict[int, str] | None:
    names = seg.phase_names
    return {i + 1: str(n) for i, n in enumerate(names)} if names else None


def _segment(volume: xr.DataArray, seg: SegmentConfig, *, device: Device, out: Path,
             particles: xr.DataArray | None = None) -> xr.DataArray:
    """The config's segmentation: a saved forest is used as is; else one is trained on the
    labels; ``regions`` fits its levels on the labels and classifies inside ``particles``."""
    from volmla.segment import segment_phases

    trains = seg.method == "rf" and seg.model is None and seg.labels
    labels = open_volume(seg.labels) if (trains or seg.method == "regions") and seg.labels else None
    save_model = seg.save_model or out / "random_forest.onnx"
    return segment_phases(volume, method=seg.method, model=seg.model, labels=labels,
                          save_model=save_model if trains else None, classes=seg.classes,
                          particles=particles, halo=seg.halo, tile=seg.tile, device=device,
                          phase_names=seg.phase_names if seg.method == "regions" else None,
                          region_options=None if seg.psf_sigma is None else {"psf_sigma": seg.psf_sigma}).phases


def _particle_map(volume: xr.DataArray, model: Path, *, device: Device, out: Path, log: Log, overwrite: bool,
                  chunks: tuple[int, ...] | int) -> xr.DataArray:
    """The scan segmented by a particle U-Net: background / interior / boundary (``particle_map.zarr``)."""
    from volmla.particles.learned import MAP_PHASES
    from volmla.segment.infer import segment

    log("particle map (U-Net)")
    job = {"stage": "particle map", "input": volume.attrs["path"], "model": str(Path(model).resolve())}
    return _stage(out / "particle_map.zarr", job, lambda: segment(volume, model=model, device=device).phases,
                  log=log, overwrite=overwrite, chunks=chunks, kind="phases",
                  phases=MAP_PHASES,
                  voxel_size=volume.attrs["voxel_size_um"])


def _field_of_view(volume: xr.DataArray, cfg: PipelineConfig, *, log: Log) -> dict[str, Any]:
    """``{"field_of_view": FieldOfView or None}`` for every particles stage: found on the
    scan unless ``particles.field_of_view`` is false or a circle (:mod:`volmla.preprocess.fov`)."""
    from volmla.preprocess.fov import find_field_of_view, parse_field_of_view

    if cfg.segment is None:
        return {}
    fov = parse_field_of_view(cfg.particles.field_of_view if "field_of_view" in cfg.particles.given else "auto")
    if isinstance(fov, str):  # "auto"
        fov = find_field_of_view(volume)
    if fov is not None:
        log(f"field of view: a circle of radius {fov.radius:.1f} voxels about (y {fov.center[0]:.1f}, "
            f"x {fov.center[1]:.1f}), {fov.fill:g} outside, read as void")
    return {"field_of_view": fov}


def _particles(volume: xr.DataArray, opts: Mapping[str, Any], *, path: Path, log: Log, overwrite: bool,
               chunks: tuple[int, ...] | int) -> xr.DataArray:
    """Particles of a phase volume (``threshold: None``) or of the intensity (``auto``), at ``path``."""
    from volmla.particles import label_particles
    from volmla.particles.api import MinSizeError

    log("particles")
    out = path.parent
    job = {"stage": "particles", "input": volume.attrs["path"], **opts}
    if opts.get("field_of_view") is not None:
        job["field_of_view"] = opts["field_of_view"].as_record()
    if _done(path, job, overwrite):
        log(f"  {path.name}: complete, kept")
        return open_volume(path)
    # the split keys are stored once in a scratch folder; compute() waits for every task
    # it started to stop before an error or Ctrl-C reaches here, so removing the folder
    # on the way out races no worker
    def make(scratch: str) -> xr.DataArray:
        try:
            return label_particles(volume, scratch=scratch, **opts).labels
        except MinSizeError as exc:  # name the config's key, not the Python keyword
            raise VolmlaError("config " + exc.message("particles.min_size ")) from None

    with tempfile.TemporaryDirectory(prefix=".particles-", dir=out) as scratch:
        return _stage(path, job, lambda: make(scratch), log=log,
                      overwrite=overwrite, chunks=chunks, kind="labels", voxel_size=volume.attrs["voxel_size_um"])


def _contacts(particles: xr.DataArray, phases: xr.DataArray, *, out: Path, log: Log, overwrite: bool,
              chunks: tuple[int, ...] | int) -> xr.DataArray:
    """The split particles with their contacts refined by the phases (``particles.zarr``)."""
    from volmla.particles import refine_contacts
    from volmla.particles.contacts import contact_rule

    log("contacts")
    path = out / "particles.zarr"
    # the rule's parameters are part of the job: a version with other defaults recomputes
    job = {"stage": "contacts", "particles": particles.attrs["path"], "phases": phases.attrs["path"],
           **contact_rule()}
    if _done(path, job, overwrite):
        log(f"  {path.name}: complete, kept")
        return open_volume(path)
    with tempfile.TemporaryDirectory(prefix=".contacts-", dir=out) as scratch:
        return _stage(path, job, lambda: refine_contacts(particles, phases, scratch=scratch).labels, log=log,
                      overwrite=overwrite, chunks=chunks, kind="labels", voxel_size=particles.attrs["voxel_size_um"])


def _viewer_labels(scan: Path, volumes: Mapping[str, xr.DataArray | None], *, log: Log) -> None:
    """Copy the label volumes under ``scan/labels/`` as NGFF ``image-label`` (a rerun of the
    same job keeps them), so a viewer opens the scan with its segmentation."""
    from volmla.io.labels import write_labels

    log("labels for viewers")
    for name, volume in volumes.items():
        if volume is not None:
            write_labels(scan, name, volume, phases=volume.attrs.get("phases") or None,
                         kind="phases" if name == "phases" else "labels",
                         job={"stage": f"labels-{name}", "source": volume.attrs["path"]})


def _grains(particles: xr.DataArray, phases: xr.DataArray, *, out: Path, log: Log, overwrite: bool,
            chunks: tuple[int, ...] | int) -> xr.DataArray:
    from volmla.particles import label_grains

    log("grains")
    return _stage(out / "grains.zarr", {"stage": "grains", "particles": particles.attrs["path"],
                                        "phases": phases.attrs["path"]},
                  lambda: label_grains(particles, phases).labels, log=log, overwrite=overwrite, chunks=chunks,
                  kind="labels", voxel_size=phases.attrs["voxel_size_um"])


def _check_particle_model(model: Path) -> None:
    """A particle U-Net's ONNX file: it predicts background, interior and boundary."""
    from volmla.segment import PARTICLE_CLASSES
    from volmla.segment.infer import inspect_model

    classes = inspect_model(model).classes
    if classes is None or tuple(classes) != PARTICLE_CLASSES:
        raise VolmlaError(f"config particles.model {model} predicts {', '.join(classes or ('unnamed classes',))}, "
                          f"not {', '.join(PARTICLE_CLASSES)} (a U-Net trained with --target particles)")


def _check_out(cfg: PipelineConfig) -> None:
    """The output folder is none of the files the run reads, and lies inside none of them
    (checked before the folder is made, so nothing is left in an input)."""
    from volmla.io.outputs import check_not_in_input, check_not_volume

    reads: list[Path | str] = [cfg.input.zarr] if cfg.input.zarr is not None else list(cfg.input.paths)
    seg = cfg.segment
    if seg is not None:
        reads += [p for p in (seg.labels, seg.model) if p is not None]
    if cfg.particles.model is not None:
        reads.append(cfg.particles.model)
    advice = "name a folder of its own for the run's outputs"
    check_not_in_input(cfg.out, reads, what="config out", advice=advice)
    check_not_volume(cfg.out, what="config out", advice=advice)


def _open_input(cfg: PipelineConfig) -> xr.DataArray:
    """The input volume (lazy: an OME-Zarr opened, or scanner files scanned), and every
    other file the config names checked, before any output is made."""
    source = cfg.input
    if source.zarr is not None:
        volume = open_volume(source.zarr)
    else:
        from volmla.ingest import load

        volume = load(source.paths, **source.options())
    if cfg.particles.model is not None:
        _check_particle_model(cfg.particles.model)
    seg = cfg.segment
    if seg is not None:
        if seg.model is not None and not seg.model.is_file():
            raise VolmlaError(f"config segment.model {seg.model} does not exist")
        if seg.labels is not None and seg.method in ("rf", "regions") and seg.model is None:
            labels = open_volume(seg.labels)
            if tuple(labels.shape) != tuple(volume.shape):
                raise VolmlaError(f"config segment.labels {seg.labels} has shape {tuple(labels.shape)}, "
                                  f"the input {tuple(volume.shape)}: they must match")
            if seg.method == "regions":  # a named phase without labels: refused before any stage runs
                from volmla.segment.dispatch import check_labels

                try:
                    check_labels(labels, shape=volume.shape, phase_names=seg.phase_names)
                except VolmlaError as exc:  # name the config's keys, not the Python keywords
                    raise VolmlaError(f"config segment.labels {seg.labels}: "
                                      + str(exc).replace("phase_names", "segment.phase_names")) from None
    if seg is not None and cfg.liberation.pieces is not None:  # the report's sub-volumes cut the input's shape
        from volmla.liberation import check_pieces

        try:
            check_pieces(cfg.liberation.pieces, tuple(volume.shape))
        except VolmlaError as exc:
            raise VolmlaError(f"config liberation.pieces: {exc}") from None
    return volume
