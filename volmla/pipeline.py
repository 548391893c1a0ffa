"""Whole runs: ``volmla run CONFIG.yaml`` and ``volmla demo``.

A run is a chain of stages, each reading the OME-Zarr volumes the previous ones wrote
(workers read them from disk themselves) and writing its own:

1. ``input``: ingest scanner output to ``intensity.zarr`` (or start from an OME-Zarr);
2. ``preprocess``: the configured filter steps -> ``preprocessed.zarr``;
3. ``segment``: ONNX model, random forest, k-means or threshold -> ``phases.zarr``;
4. ``particles``: solid mask, distributed labelling, watershed split -> ``particles.zarr``;
5. ``grains``: components of (particle, phase) -> ``grains.zarr``;
6. ``liberation``: tables, statistics, plots and the report -> ``report/``.

Each stage records a job description in its output. A rerun skips stages whose output
is complete for the same job, and resumes an interrupted one chunk by chunk, so an
interrupted run picks up where it stopped. The demo runs the same stages on a generated
phantom, with sparse labels made the correlative way (simulated element maps, k-means,
registration) and both a random forest and a small 3D U-Net trained on three planes,
and checks every result against the phantom's ground truth.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from volmla.backend import Device
from volmla.errors import VolmlaError
from volmla.io import job_fingerprint, open_volume, write_volume

logger = logging.getLogger(__name__)

Log = Callable[[str], None]

__all__ = ["demo", "run"]

DEMO_RF: dict[str, Any] = {"n_estimators": 32, "max_samples": 30_000, "sigmas": (1.0, 2.0, 4.0)}
"""The demo's random forest: three feature scales instead of five (the filter features take
most of its time), half the default trees and samples."""
DEMO_UNET_PATCH = (16, 64, 64)
"""The demo U-Net's patches: flat ones put more labelled voxels (one plane) in every step."""


def _quiet(_: str) -> None:
    return None


def _done(path: Path, job: Mapping[str, Any]) -> bool:
    """Whether ``path`` is a complete volume written for this same job."""
    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]["volmla"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(attrs.get("complete")) and attrs.get("request") == job_fingerprint(job)


def _stage(
    path: Path, job: Mapping[str, Any], make: Callable[[], Any], *, log: Log, overwrite: bool, **write: Any
) -> xr.DataArray:
    """Write ``make()`` to ``path`` unless it is already complete for ``job``; open it."""
    if _done(path, job) and not overwrite:
        log(f"  {path.name}: complete, kept")
        return open_volume(path)
    start = time.perf_counter()
    write_volume(make(), path, job=job, overwrite=overwrite, **write)
    log(f"  {path.name}: written in {time.perf_counter() - start:.1f} s")
    return open_volume(path)


# ----------------------------------------------------------------------------- run


def run(config: Mapping[str, Any] | str | Path, *, overwrite: bool = False, device: Device = "auto",
        log: Log = _quiet) -> dict[str, Any]:
    """Run the stages a config describes (see :mod:`volmla.config`).

    Parameters
    ----------
    config
        A YAML path or an already validated mapping.
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
    from volmla.config import load_config, validate_config

    cfg = load_config(config) if isinstance(config, str | Path) else validate_config(config)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"out": str(out)}

    # 1. input
    source = cfg["input"]
    if "zarr" in source:
        volume = open_volume(source["zarr"])
        log(f"input: {source['zarr']}")
    else:
        from volmla.ingest import load

        options = {k: v for k, v in source.items() if k != "paths"}
        job = {"stage": "ingest", "paths": [str(p) for p in source["paths"]], **options}
        log("ingest")
        volume = _stage(out / "intensity.zarr", job, lambda: load(source["paths"], **options),
                        log=log, overwrite=overwrite)
    result["intensity"] = volume.attrs["path"]

    # 2. preprocess
    if cfg["preprocess"]:
        from volmla.preprocess import preprocess

        job = {"stage": "preprocess", "input": volume.attrs["path"], "steps": cfg["preprocess"]}
        log("preprocess")
        source_volume = volume
        volume = _stage(out / "preprocessed.zarr", job,
                        lambda: preprocess(source_volume, cfg["preprocess"], device=device),
                        log=log, overwrite=overwrite)
        result["preprocessed"] = volume.attrs["path"]

    if cfg["segment"] is None:
        return result

    # 3. segment
    seg = cfg["segment"]
    log(f"segment ({seg['method']})")
    phases = _stage(out / "phases.zarr", {"stage": "segment", "input": volume.attrs["path"],
                                          **{k: str(v) for k, v in seg.items()}},
                    lambda: _segment(volume, seg, device=device, out=out), log=log, overwrite=overwrite,
                    kind="phases", phases=_phase_names(seg), voxel_size=volume.attrs["voxel_size_um"])
    result["phases"] = phases.attrs["path"]

    # 4-5. particles and grains
    particles, grains = _particles_and_grains(phases, cfg["particles"], cfg["grains"], out=out, log=log,
                                              overwrite=overwrite)
    result["particles"] = particles.attrs["path"]
    if grains is not None:
        result["grains"] = grains.attrs["path"]

    # 6. liberation
    from volmla.liberation import analyse

    log("liberation")
    lib = dict(cfg["liberation"])
    result["summary"] = analyse(phases, particles, grains=grains, out_dir=out / "report",
                                overwrite=True, **lib)
    result["report"] = str(out / "report" / "report.html")
    return result


def _phase_names(seg: Mapping[str, Any]) -> dict[int, str] | None:
    names = seg.get("phase_names")
    return {i + 1: str(n) for i, n in enumerate(names)} if names else None


def _segment(volume: xr.DataArray, seg: Mapping[str, Any], *, device: Device, out: Path) -> Any:
    from volmla.segment import classical, infer

    method = seg["method"]
    if method == "threshold":
        return classical.threshold_segment(volume, classes=int(seg["classes"]))
    if method == "kmeans":
        return classical.kmeans_segment(volume, classes=int(seg["classes"]))
    if method == "rf":
        model = seg.get("model")
        if model is None:
            forest = classical.train_random_forest(volume, open_volume(seg["labels"]))
            model = classical.save_random_forest(forest, seg.get("save_model", out / "random_forest.onnx"))
        return classical.random_forest_segment(volume, model=model)
    return infer.segment(volume, model=seg["model"], halo=seg.get("halo"), tile=seg.get("tile"),
                         device=device).phases


def _particles_and_grains(
    phases: xr.DataArray, options: Mapping[str, Any], with_grains: bool, *, out: Path, log: Log, overwrite: bool
) -> tuple[xr.DataArray, xr.DataArray | None]:
    from volmla.particles import grains as grain_labels
    from volmla.particles import particles as particle_labels

    opts = {"threshold": None, **options}
    log("particles")
    with tempfile.TemporaryDirectory(prefix=".particles-", dir=out) as scratch:
        particles = _stage(out / "particles.zarr", {"stage": "particles", "input": phases.attrs["path"], **opts},
                           lambda: particle_labels(phases, scratch=scratch, **opts).labels, log=log,
                           overwrite=overwrite, kind="labels", voxel_size=phases.attrs["voxel_size_um"])
    if not with_grains:
        return particles, None
    log("grains")
    grains = _stage(out / "grains.zarr", {"stage": "grains", "particles": particles.attrs["path"],
                                          "phases": phases.attrs["path"]},
                    lambda: grain_labels(particles, phases).labels, log=log, overwrite=overwrite,
                    kind="labels", voxel_size=phases.attrs["voxel_size_um"])
    return particles, grains


# ----------------------------------------------------------------------------- demo


def demo(
    out_dir: str | Path = "volmla-demo",
    *,
    shape: Sequence[int] = (128, 128, 128),
    seed: int = 0,
    unet: bool = True,
    iterations: int = 300,
    overwrite: bool = False,
    device: Device = "auto",
    log: Log = _quiet,
) -> dict[str, Any]:
    """The whole pipeline on a generated phantom, checked against its ground truth.

    1. a phantom of crushed three-phase ore (quartz and feldspar closer in attenuation
       than the noise) and its ground truth;
    2. the phantom's CT written as a folder of TIFF slices (with ImageJ voxel-size
       metadata), as a scanner would, and ingested to OME-Zarr;
    3. preprocessing: beam-hardening (cupping) correction, median, a light gaussian;
    4. sparse labels on three planes made the correlative way: element maps simulated on
       each plane, k-means mineral map, registration into the CT, eroded label transfer;
    5. a random forest and (with torch) a small 3D U-Net trained on those labels, the
       U-Net exported to ONNX and run through ONNX Runtime, both scored on held-out planes;
    6. particles (distributed labelling, watershed split) and grains from the better one;
    7. the liberation report, and the same statistics from the ground truth beside it.

    Parameters
    ----------
    out_dir
        Output folder (refused if it exists, unless ``overwrite``).
    shape
        Phantom shape (z, y, x).
    seed
        Phantom and training seed.
    unet
        Train the 3D U-Net (needs torch; without it only the random forest runs).
    iterations
        U-Net training iterations.
    overwrite
        Replace an existing ``out_dir``.
    device
        ``auto``, ``cpu`` or ``gpu``.
    log
        Called with progress lines.

    Returns
    -------
    dict
        The demo summary (also written to ``out_dir/demo.json``).
    """
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise VolmlaError(f"output {out} exists: pass --overwrite to replace it")
        if not (out / "demo.json").exists() and not (out / "truth").exists() and any(out.iterdir()):
            raise VolmlaError(f"{out} is not a volmla demo folder: refusing to replace it")
        shutil.rmtree(out)
    if unet:
        try:
            import torch  # noqa: F401
        except ImportError:
            log("torch is not installed: the U-Net step is skipped (pip install 'volmla[train]')")
            unet = False
    out.mkdir(parents=True)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"shape": list(shape), "seed": seed}

    def timed(name: str) -> Any:
        class _T:
            def __enter__(self) -> None:
                log(name)
                self.t = time.perf_counter()

            def __exit__(self, *exc: Any) -> None:
                timings[name] = round(time.perf_counter() - self.t, 2)
                log(f"  {timings[name]:.1f} s")

        return _T()

    # 1. phantom
    from volmla.synthetic import write_phantom

    with timed("phantom"):
        truth_paths = write_phantom(out / "truth", shape=tuple(shape), seed=seed, chunks=64,
                                    esd_range=(10.0, 32.0))
    truth = {name: open_volume(p) for name, p in truth_paths.items()}
    names = {int(k): v for k, v in truth["phases"].attrs["phases"].items()}
    voxel = truth["intensity"].attrs["voxel_size_um"]

    # 2. TIFF slices, ingest
    from volmla.ingest import ingest

    with timed("ingest"):
        scan = _write_tiff_slices(truth["intensity"], out / "scan")
        ingest(scan, out / "intensity.zarr", chunks=64)
    intensity = open_volume(out / "intensity.zarr")
    summary["ingest"] = {"slices": len(list(scan.glob("*.tif"))), "voxel_size_um": list(intensity.attrs["voxel_size_um"]),
                         "bit_exact": bool(_equal(intensity, truth["intensity"]))}

    # 3. preprocess
    from volmla.preprocess import preprocess

    # cupping shifts quartz across the radius by more than the quartz/feldspar contrast:
    # flatten it first (fitted on the dominant solid phase), then denoise lightly
    steps = ["beam-hardening", "median:size=3", "gaussian:sigma=0.8"]
    with timed("preprocess"):
        write_volume(preprocess(intensity, steps, device=device), out / "preprocessed.zarr")
    pre = open_volume(out / "preprocessed.zarr")

    # 4. correlative sparse labels
    from volmla.synthetic import correlative_labels

    with timed("correlate"):
        corr = correlative_labels(intensity, truth["phases"], seed=seed, planes=_label_planes(shape[0]))
        write_volume(corr.labels, out / "labels.zarr")
    labels = open_volume(out / "labels.zarr")
    summary["correlate"] = corr.report

    # 5. segmentation: random forest, U-Net; scored on held-out planes
    from volmla.segment import classical, infer
    from volmla.segment.evaluate import evaluate, write_report

    held = _held_out_planes(shape[0], _label_planes(shape[0]))
    truth_held = truth["phases"].isel(z=held)
    scores: dict[str, Any] = {}
    with timed("random forest"):
        forest = classical.train_random_forest(pre, labels, seed=seed, classes=["void", *names.values()],
                                               **DEMO_RF)
        rf_model = classical.save_random_forest(forest, out / "models" / "random_forest.onnx")
        write_volume(classical.random_forest_segment(pre, model=rf_model), out / "phases_rf.zarr",
                     kind="phases", phases=names, voxel_size=voxel)
    candidates = {"random_forest": open_volume(out / "phases_rf.zarr")}
    if unet:
        from volmla.segment.export import export
        from volmla.segment.train import quick_train_3d, save_model

        with timed("unet training"):
            trained = quick_train_3d(pre, labels, iterations=iterations, seed=seed, patch=DEMO_UNET_PATCH)
            checkpoint = save_model(trained, out / "models" / "unet3d.pt")
            exported = export(checkpoint, out / "models" / "unet3d.onnx")
        summary["unet_export"] = {"max_abs_logit_diff": exported.max_abs_diff,
                                  "argmax_agreement": exported.argmax_agreement}
        with timed("unet inference"):
            seg = infer.segment(pre, model=exported.path, device=device)
            write_volume(seg.phases, out / "phases_unet.zarr", kind="phases", phases=names, voxel_size=voxel)
        candidates["unet3d"] = open_volume(out / "phases_unet.zarr")
    for name, pred in candidates.items():
        ev = evaluate(pred.isel(z=held), truth_held, n_classes=len(names) + 1,
                      classes=["void", *names.values()])
        write_report(ev, out / "evaluation" / name)
        scores[name] = {"accuracy_excluding_void": round(ev.accuracy_excluding_void, 4),
                        "accuracy": round(ev.accuracy, 4),
                        "iou": {c: round(float(v), 4) for c, v in zip(ev.classes, ev.iou, strict=True)}}
    best = max(scores, key=lambda k: scores[k]["accuracy_excluding_void"])
    summary["segmentation"] = {"held_out_planes": held, "scores": scores, "used": best}
    phases = candidates[best]

    # 6. particles and grains
    from volmla.particles import grains as grain_labels
    from volmla.particles import particles as particle_labels

    with timed("particles"), tempfile.TemporaryDirectory(prefix=".particles-", dir=out) as scratch:
        found = particle_labels(phases, threshold=None, min_size=20, split=True, h=2.0, max_radius=16,
                                scratch=scratch)
        write_volume(found.labels, out / "particles.zarr", kind="labels", voxel_size=voxel)
    with timed("grains"):
        write_volume(grain_labels(open_volume(out / "particles.zarr"), phases).labels, out / "grains.zarr",
                     kind="labels", voxel_size=voxel)

    # 7. liberation: measured, and from the ground truth
    from volmla.liberation import analyse

    with timed("liberation"):
        measured = analyse(phases, open_volume(out / "particles.zarr"), grains=open_volume(out / "grains.zarr"),
                           out_dir=out / "report", phase_names=names)
        reference = analyse(truth["phases"], truth["particles"], grains=truth["grains"],
                            out_dir=out / "report_truth", phase_names=names)
    summary["liberation"] = {
        phase: {"ld_measured": _r(measured["liberation_degree"].get(phase)),
                "ld_truth": _r(reference["liberation_degree"].get(phase)),
                "modal_measured": _r(measured["modal_mineralogy"].get(phase)),
                "modal_truth": _r(reference["modal_mineralogy"].get(phase))}
        for phase in names.values()
    }
    summary["particles"] = {"measured": measured["n_particles"], "truth": reference["n_particles"]}
    summary["timings_s"] = timings
    summary["report"] = str(out / "report" / "report.html")
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _r(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _label_planes(depth: int) -> list[int]:
    """Three labelled planes: near the top and bottom faces and in the middle."""
    return sorted({min(depth - 1, 2), depth // 2, max(0, depth - 3)})


def _held_out_planes(depth: int, labelled: Sequence[int], *, n: int = 4, margin: int = 8) -> list[int]:
    """``n`` planes at least ``margin`` away from every labelled plane."""
    candidates = [z for z in range(depth) if all(abs(z - p) >= margin for p in labelled)]
    if not candidates:
        raise VolmlaError(f"a depth of {depth} planes leaves no held-out plane for evaluation")
    picks = np.linspace(0, len(candidates) - 1, min(n, len(candidates))).round().astype(int)
    return [candidates[i] for i in sorted(set(picks.tolist()))]


def _write_tiff_slices(volume: xr.DataArray, folder: Path) -> Path:
    """A folder of 2D TIFF slices with ImageJ voxel size, the way scanners export."""
    import tifffile

    folder.mkdir(parents=True)
    vz, vy, vx = volume.attrs["voxel_size_um"]
    slab = volume.data.chunks[0][0]
    for z0 in range(0, volume.shape[0], slab):
        block = np.asarray(volume.data[z0:z0 + slab])
        for i, plane in enumerate(block):
            tifffile.imwrite(folder / f"slice_{z0 + i}.tif", plane, imagej=True,
                             resolution=(1 / vx, 1 / vy), metadata={"spacing": vz, "unit": "um"})
    return folder


def _equal(a: xr.DataArray, b: xr.DataArray) -> bool:
    from volmla.cluster import compute

    return a.shape == b.shape and bool(compute([(a.data == b.data).all()])[0])
