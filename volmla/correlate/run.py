"""One correlative labelling run: every mapped face of a configuration, one label volume.

:func:`run_correlation` takes a CT volume and a checked configuration
(:func:`volmla.correlate.check_run_config`) and, for every plane, runs the steps in
order: read the element maps (:mod:`~volmla.correlate.maps`), denoise, k-means and
cluster -> mineral assignment (:mod:`~volmla.correlate.minerals`), registration
(:mod:`~volmla.correlate.register`) and label transfer
(:mod:`~volmla.correlate.transfer`); it returns one lazy sparse label volume and a report.
:func:`run_from_config` is the whole ``volmla correlate run``: config file in,
``labels.zarr``, ``report.json``, ``report.md`` and ``planes/NAME/`` out, all or nothing:
they are written into a temporary sibling of the output folder and moved in only when
every plane succeeded (the whole folder renamed when it is new; each output swapped in,
:func:`volmla.io.atomic.swap_in`, when it exists, other files in it left alone), so a
plane that fails leaves no output folder, or an existing one as it was.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from volmla.correlate.config import load_run_config
from volmla.correlate.mapfiles import _read_truth, save_mineral_map, save_registration
from volmla.correlate.maps import denoise_maps, read_maps
from volmla.correlate.minerals import (
    UNLABELLED,
    assign_minerals,
    compare_abundances,
    kmeans_minerals,
)
from volmla.correlate.register import register_map, registration_image
from volmla.correlate.report import write_report
from volmla.correlate.steps import ComputeContext
from volmla.correlate.transfer import LabelPlane, erode_labels, labels_volume, map_to_plane
from volmla.errors import VolmlaError
from volmla.io.atomic import recover, remove, remove_stale, swap_in, tmp_sibling
from volmla.io.lock import busy_error, output_lock, write_error
from volmla.io.sparse import SPARSE_LABEL_OFFSET

__all__ = ["CorrelationRun", "run_correlation", "run_from_config"]


def run_correlation(ct: xr.DataArray, cfg: Mapping[str, Any], *, out_dir: str | Path | None = None
                    ) -> tuple[xr.DataArray, dict[str, Any]]:
    """Maps -> denoise -> k-means -> assignment -> registration -> labels, for every plane
    of a checked config (:func:`volmla.correlate.check_run_config`).

    Parameters
    ----------
    ct
        The CT intensity volume (lazy).
    cfg
        Checked configuration.
    out_dir
        Where each plane's mineral map and registration go (``planes/<name>/``); none
        written when None.

    Returns
    -------
    (xr.DataArray, dict)
        The lazy sparse label volume and the report (per plane: assignment, confidence,
        minerals not found, ARI against a given truth, registration metric, quality,
        convergence, plane, tilt, rotation, shift, warnings).

    Examples
    --------
    >>> labels, report = run_correlation(ct, load_run_config("correlate.yaml"))  # doctest: +SKIP
    """
    from sklearn.metrics import adjusted_rand_score

    minerals = list(cfg["minerals"])
    label_planes: list[LabelPlane] = []
    records = []
    phase_names = {i + 1: m for i, m in enumerate(minerals)}
    vs = tuple(float(v) for v in ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0)))
    for plane in cfg["planes"]:
        name = plane["name"]
        try:
            maps = read_maps(plane["maps"], pixel_size_um=plane["pixel_size_um"], resample=plane["resample"])
            if plane["origin_um"] is not None:
                maps = maps._replace(origin_um=(float(plane["origin_um"][0]), float(plane["origin_um"][1])))
            maps = denoise_maps(maps, elements=plane["denoise"])  # None: the light elements the maps hold
            k = plane["k"] if plane["k"] is not None else len(minerals) + 1
            mm = kmeans_minerals(maps, k=k, seed=plane["seed"])
            assignment = assign_minerals(mm, minerals=minerals, table=plane["cluster_table"])
            phases = assignment.phase_map(mm.clusters)
            rec: dict[str, Any] = {
                "name": name, "maps": [str(m) for m in plane["maps"]], "elements": list(maps.elements),
                "k": k, "assignment_method": assignment.method,
                "assignment": {str(c): m for c, m in assignment.mineral.items()},
                "confidence": {str(c): round(v, 4) for c, v in assignment.confidence.items()},
                "abundance": {str(c): round(v, 6) for c, v in mm.abundances.items()},
                "minerals_not_found": list(assignment.not_found),
                "unlabelled_clusters": list(assignment.unlabelled),
            }
            if plane["truth"] is not None:
                truth = _read_truth(plane["truth"], mm.clusters.shape)
                rec["ari"] = round(float(adjusted_rand_score(truth.ravel(), mm.clusters.ravel())), 4)
                kept = phases != UNLABELLED
                rec["map_accuracy"] = round(float(np.mean(phases[kept] == truth[kept])), 4) if kept.any() else 0.0
            if plane["xrd"] is not None:
                rec["xrd"] = compare_abundances(mm, assignment, plane["xrd"])
            search = tuple(plane["search"]) if plane["search"] is not None else None
            reg = register_map(ct, registration_image(phases), pixel_size_um=maps.pixel_size_um,
                               origin_um=maps.origin_um, axis=plane["axis"], search=search,
                               step=plane["step"], transform=plane["transform"], min_quality=plane["min_quality"],
                               accept_poor=plane["accept_poor"], seed=plane["seed"],
                               max_tilt_deg=float(plane["max_tilt_deg"]), tilt_step_deg=float(plane["tilt_step_deg"]))
        except VolmlaError as exc:
            raise VolmlaError(f"plane {name!r}: {exc}") from None
        labels = map_to_plane(phases, reg)
        label_planes.append(LabelPlane(reg.axis, reg.index, labels, reg.tilt_deg, vs))  # type: ignore[arg-type]
        rec.update({
            "axis": reg.axis, "plane": reg.index, "tilt_deg": list(reg.tilt_deg),
            "angle_deg": round(reg.params["angle_deg"], 4),
            "translation_um": [round(v, 3) for v in reg.params["translation_um"]],
            "scale": reg.params["scale"], "metric": reg.metric, "quality": reg.quality,
            "converged": reg.converged, "stop_condition": reg.stop_condition, "ok": reg.ok,
            "labelled_fraction": round(float(np.mean(erode_labels(labels, int(cfg["erode"])) > 0)), 4),
            "warnings": [*assignment.warnings, *reg.warnings],
        })
        if out_dir is not None:
            folder = Path(out_dir) / "planes" / name
            save_mineral_map(folder, maps, mm, assignment)
            save_registration(reg, folder / "registration.json", labels_plane=labels, phase_names=phase_names)
        records.append(rec)
    volume = labels_volume(ct, label_planes, erode=int(cfg["erode"]), phases=phase_names)
    report = {"ct": str(cfg["ct"]), "minerals": minerals, "erode": int(cfg["erode"]),
              "label_offset": SPARSE_LABEL_OFFSET, "phases": {str(k): v for k, v in phase_names.items()},
              "planes": records, "ok": all(r["ok"] for r in records)}
    return volume, report


class CorrelationRun(NamedTuple):
    """What :func:`run_from_config` wrote: the ``labels`` volume path, the ``report`` and
    the ``report_paths`` (``{"json", "markdown"}``)."""

    labels: Path
    report: dict[str, Any]
    report_paths: dict[str, Path]


def run_from_config(
    config: str | Path,
    *,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    compute_in: ComputeContext = contextlib.nullcontext,
) -> CorrelationRun:
    """Maps -> k-means -> assignment -> registration -> one sparse label volume, with a report.

    Writes ``OUT/labels.zarr``, ``OUT/report.json``, ``OUT/report.md`` and
    ``OUT/planes/NAME/`` (mineral map, centroids, registration), through a temporary
    sibling of ``OUT`` moved in at the end: a run that fails writes nothing, and leaves an
    existing output as it was.

    Parameters
    ----------
    config
        The YAML file (schema in :func:`volmla.correlate.load_run_config`).
    out_dir
        Output folder (default the config's ``out``).
    overwrite
        Replace an existing output.
    compute_in
        Context entered around the run, after the config and the outputs are checked.

    Returns
    -------
    CorrelationRun

    Examples
    --------
    >>> run = run_from_config("correlate.yaml", out_dir="corr")  # doctest: +SKIP
    >>> run.report["ok"]  # doctest: +SKIP
    """
    from volmla.io import check_output, open_volume, write_volume
    from volmla.io.outputs import check_not_in_input

    cfg = load_run_config(config)
    out = out_dir if out_dir is not None else cfg["out"]
    if out is None:
        raise VolmlaError("correlate run: give out_dir or an 'out' key in the config")
    out = Path(out)
    check_not_in_input(out, [cfg["ct"], *(m for plane in cfg["planes"] for m in plane["maps"])], what="output folder")
    if os.path.lexists(out) and not out.is_dir():
        raise VolmlaError(f"output folder {out} exists and is not a folder: name a folder for the run's outputs")
    labels_path = out / "labels.zarr"
    job = {"command": "correlate run", "config": str(Path(config).resolve())}
    check_output(out / "report.json", overwrite=overwrite)
    check_output(labels_path, overwrite=overwrite, job=job)
    volume = open_volume(cfg["ct"])
    # everything is written into a temporary sibling of the folder and moved in at the end:
    # a plane that fails leaves neither the earlier planes' files nor a half-replaced output
    target = Path(os.path.abspath(out))  # "." has a name here, so a sibling
    token = uuid.uuid4().hex[:12]
    tmp = tmp_sibling(target, token)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    with output_lock(target):
        for name in OUTPUTS:
            recover(target / name)
        remove_stale(target)  # unfinished runs' folders (a run holds the lock throughout)
        try:
            tmp.mkdir()
            with compute_in():
                labels, report = run_correlation(volume, cfg, out_dir=tmp)
                write_volume(labels, tmp / "labels.zarr", kind="labels", chunks=[c[0] for c in volume.data.chunks],
                             job=job)
            written = write_report(report, tmp)
            _move_in(tmp, target, token, overwrite=overwrite)
        except BaseException:
            remove(tmp)
            raise
    return CorrelationRun(labels_path, report, {key: out / path.name for key, path in written.items()})


OUTPUTS = ("labels.zarr", "planes", "report.md", "report.json")
"""What a run writes into its folder; ``report.json``, which marks it complete, moved in last."""


def _move_in(tmp: Path, out: Path, token: str, *, overwrite: bool) -> None:
    """Put the complete outputs in ``tmp`` in place: the whole folder when ``out`` is new
    (one rename), else each output in turn (:func:`volmla.io.atomic.swap_in`, under the
    output's lock), leaving anything else in ``out`` as it is."""
    from volmla.io.lock import lock_holder

    if not os.path.lexists(out):
        try:
            os.rename(tmp, out)
        except OSError as exc:
            raise write_error(out, exc) from None
        return
    names = [name for name in OUTPUTS if os.path.lexists(tmp / name)]
    for name in names:
        target = out / name
        if os.path.lexists(target) and not overwrite:
            raise VolmlaError(f"output {target} appeared while computing: pass overwrite=True to replace it")
        who = lock_holder(target)
        if who is not None:
            raise busy_error(target, who)
    for name in names:
        with output_lock(out / name):
            swap_in(tmp / name, out / name, token)
    remove(tmp)
