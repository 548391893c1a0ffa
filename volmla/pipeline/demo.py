"""``volmla demo``: the whole pipeline on a generated phantom, checked against its truth.

The demo runs the stages of :func:`volmla.pipeline.run` on a phantom of crushed
three-phase ore, with sparse labels made the correlative way (simulated element maps,
k-means, registration) and both a random forest and a small 3D U-Net trained on three
planes (each through :func:`volmla.segment.segment_phases`), and checks every result
against the phantom's ground truth; the numbered steps are those of :func:`demo`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from volmla.errors import VolmlaError
from volmla.io import open_volume, write_volume
from volmla.io.atomic import remove, swap_in, tmp_sibling
from volmla.io.outputs import check_parent_not_file
from volmla.pipeline.run import Log, _quiet
from volmla.types import Device

if TYPE_CHECKING:
    from volmla.synthetic.correlative import CorrelativeLabels

__all__ = ["DEMO_RF", "DEMO_UNET_PATCH", "check_demo", "demo"]

DEMO_RF: dict[str, Any] = {"n_estimators": 32, "max_samples": 30_000}
"""The demo's random forest: half the default trees and samples."""
DEMO_RF_SIGMAS = (1.0, 2.0, 4.0)
"""The demo forest's feature scales: three instead of five (the filter features take most of its time)."""
DEMO_UNET_PATCH = (16, 64, 64)
"""The demo U-Net's patches: flat ones put more labelled voxels (one plane) in every step."""
MIN_SHAPE = (36, 64, 64)
"""The smallest phantom (z, y, x) the demo accepts: 36 planes leave held-out planes 8
away from the three labelled ones (:func:`_held_out_planes`), and planes of 64 voxels
give the simulated element maps (32 map pixels) enough to register on; smaller planes
make the 2-D registration diverge on many phantoms."""
MAX_VOXELS = 512**3
"""The largest phantom the demo accepts, in voxels (134 Mvoxel): an embedded demo, not a
benchmark."""


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
    5. particles from the CT (the ``auto`` solid mask, distributed labelling, watershed
       split), then the phases by region inside them, fitted on those labels (the
       default path of ``volmla run``, :func:`volmla.segment.pooled.region_phases`);
       for comparison a random forest and (with torch) a small 3D U-Net trained on the
       same labels, the U-Net exported to ONNX and run through ONNX Runtime; all scored
       on held-out planes;
    6. the particles' contacts refined by the phases (a contact voxel of a mineral its
       particle lacks goes to the touching particle that has it,
       :func:`volmla.particles.refine_contacts`; the split is kept as
       ``particles_split.zarr``); grains of the particles and the region phases; phases, particles and grains
       also under ``intensity.zarr/labels/`` as NGFF ``image-label`` for viewers;
    7. the liberation report (partial-volume phase volumes from the CT), and the same
       statistics from the ground truth beside it.

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
    check_demo(out_dir, shape=shape, iterations=iterations, overwrite=overwrite)
    shape = tuple(int(n) for n in shape)
    out = Path(out_dir)
    if unet:
        try:
            import torch  # noqa: F401
        except ImportError:
            log("torch is not installed: the U-Net step is skipped (pip install 'volmla[train]')")
            unet = False
    if not out.exists():
        out.mkdir(parents=True)
        try:
            return _build(out, out, shape=shape, seed=seed, unet=unet, iterations=iterations, device=device,
                          log=log)
        except BaseException:  # a failed first demo leaves no partial folder
            remove(out)
            raise
    # A replacement is built beside the old demo and swapped in only when complete, so a
    # failed or interrupted rerun never leaves the user without the previous results.
    work = tmp_sibling(out, "demo")
    remove(work)
    work.mkdir(parents=True)
    try:
        summary = _build(work, out, shape=shape, seed=seed, unet=unet, iterations=iterations, device=device,
                         log=log)
    except BaseException:
        remove(work)
        raise
    swap_in(work, out, "demo")
    return summary


def check_demo(out_dir: str | Path, *, shape: Sequence[int], iterations: int, overwrite: bool) -> None:
    """Refuse :func:`demo`'s arguments before anything starts (a cluster, a phantom).

    Parameters
    ----------
    out_dir, shape, iterations, overwrite
        As in :func:`demo`.

    Examples
    --------
    >>> check_demo("/nonexistent/demo", shape=(64, 64, 64), iterations=10, overwrite=False)
    >>> check_demo("/nonexistent/demo", shape=(4, 64, 64), iterations=10, overwrite=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: shape must be 3 sizes (z y x) of at least 36 64 64 voxels ..., got [4, 64, 64]
    """
    _check_shape(shape)
    if iterations < 1:
        raise VolmlaError(f"iterations must be at least 1, got {iterations}")
    out = Path(out_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise VolmlaError(f"output {out} is a file, not a folder: refusing to replace it")
    check_parent_not_file(out, what="output")
    if out.exists():
        if not overwrite:
            raise VolmlaError(f"output {out} exists: pass overwrite=True to replace it")
        if not (out / "demo.json").exists() and not (out / "truth").exists() and any(out.iterdir()):
            raise VolmlaError(f"{out} is not a volmla demo folder: refusing to replace it")


def _check_shape(shape: Sequence[int]) -> None:
    """Refuse a phantom shape the demo cannot evaluate or register (:data:`MIN_SHAPE`),
    or one beyond :data:`MAX_VOXELS`."""
    dims = [int(n) for n in shape]
    if len(dims) != 3 or any(n < least for n, least in zip(dims, MIN_SHAPE, strict=True)):
        least = " ".join(map(str, MIN_SHAPE))
        raise VolmlaError(f"shape must be 3 sizes (z y x) of at least {least} voxels (the depth holds out planes "
                          f"for evaluation, the planes register the element maps), got {dims}")
    voxels = math.prod(dims)
    if voxels > MAX_VOXELS:
        raise VolmlaError(f"shape {dims} is {voxels:,} voxels: the demo takes at most {MAX_VOXELS:,} "
                          "(512^3); run volmla phantom and volmla run for larger volumes")


def _build(out: Path, final: Path, *, shape: Sequence[int], seed: int, unet: bool, iterations: int,
           device: Device, log: Log) -> dict[str, Any]:
    """Every demo step, written under ``out``; ``final`` is where the folder will live."""
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
    with timed("correlate"):
        corr = _correlative(intensity, truth["phases"], seed=seed, planes=_label_planes(shape[0]))
        write_volume(corr.labels, out / "labels.zarr")
    labels = open_volume(out / "labels.zarr")
    summary["correlate"] = corr.report

    # 5. particles from the CT, then phases by region inside them (the default path);
    #    a random forest and a U-Net on the same labels for comparison
    from volmla.particles import label_particles as particle_labels
    from volmla.segment import segment_phases
    from volmla.segment.evaluate import evaluate, write_report

    with timed("particles"), tempfile.TemporaryDirectory(prefix=".particles-", dir=out) as scratch:
        found = particle_labels(intensity, threshold="auto", scratch=scratch)
        write_volume(found.labels, out / "particles_split.zarr", kind="labels", voxel_size=voxel)
    split = open_volume(out / "particles_split.zarr")
    held = _held_out_planes(shape[0], _label_planes(shape[0]))
    truth_held = truth["phases"].isel(z=held)
    scores: dict[str, Any] = {}
    with timed("phases by region"):
        regions = segment_phases(intensity, labels=labels, particles=split)
        write_volume(regions.phases, out / "phases.zarr", kind="phases", phases=names, voxel_size=voxel)
    candidates = {"regions": open_volume(out / "phases.zarr")}
    with timed("random forest"):
        rf = segment_phases(pre, method="rf", labels=labels, save_model=out / "models" / "random_forest.onnx",
                            seed=seed, sigmas=DEMO_RF_SIGMAS,
                            forest_options={**DEMO_RF, "classes": ["void", *names.values()]})
        write_volume(rf.phases, out / "phases_rf.zarr", kind="phases", phases=names, voxel_size=voxel)
    candidates["random_forest"] = open_volume(out / "phases_rf.zarr")
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
            seg = segment_phases(pre, method="unet", model=exported.path, device=device)
            write_volume(seg.phases, out / "phases_unet.zarr", kind="phases", phases=names, voxel_size=voxel)
        candidates["unet3d"] = open_volume(out / "phases_unet.zarr")
    for name, pred in candidates.items():
        ev = evaluate(pred.isel(z=held), truth_held, n_classes=len(names) + 1,
                      classes=["void", *names.values()])
        write_report(ev, out / "evaluation" / name)
        scores[name] = {"accuracy_excluding_void": round(ev.accuracy_excluding_void, 4),
                        "accuracy": round(ev.accuracy, 4),
                        "iou": {c: round(float(v), 4) for c, v in zip(ev.classes, ev.iou, strict=True)}}
    summary["segmentation"] = {"held_out_planes": held, "scores": scores, "used": "regions"}
    phases = candidates["regions"]

    # 6. the particles' contacts refined by the phases, grains
    from volmla.particles import label_grains as grain_labels
    from volmla.particles import refine_contacts

    with timed("contacts"), tempfile.TemporaryDirectory(prefix=".contacts-", dir=out) as scratch:
        refined = refine_contacts(split, phases, scratch=scratch)
        write_volume(refined.labels, out / "particles.zarr", kind="labels", voxel_size=voxel)
    particles = open_volume(out / "particles.zarr")

    with timed("grains"):
        write_volume(grain_labels(particles, phases).labels, out / "grains.zarr", kind="labels", voxel_size=voxel)
    # the segmentation under the scan's labels/ (NGFF image-label): a viewer opens both at once
    from volmla.pipeline.run import _viewer_labels

    _viewer_labels(out / "intensity.zarr", {"phases": phases, "particles": particles,
                                            "grains": open_volume(out / "grains.zarr")}, log=log)

    # 7. liberation: measured, and from the ground truth
    from volmla.liberation import analyse

    with timed("liberation"):
        measured = analyse(phases, particles, grains=open_volume(out / "grains.zarr"), out_dir=out / "report",
                           phase_names=names, intensity=intensity)
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
    summary["report"] = str(final / "report" / "report.html")
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _correlative(intensity: xr.DataArray, phases: xr.DataArray, *, seed: int, planes: list[int]) -> CorrelativeLabels:
    """:func:`volmla.synthetic.correlative_labels`, a diverged 2-D registration (SimpleITK
    raises on the degenerate transform it reaches) named in one line."""
    from volmla.synthetic import correlative_labels

    try:
        return correlative_labels(intensity, phases, seed=seed, planes=planes)
    except RuntimeError as exc:
        if "SimpleITK" not in str(exc):
            raise
        reason = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", " ".join(str(exc).split("ITK ERROR:")[-1].split()))
        raise VolmlaError(f"the correlative registration of the element maps failed on this phantom (seed {seed}, "
                          f"shape {list(phases.shape)}): {reason}; try another seed or a larger shape") from None


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
    from volmla.engine.cluster import compute

    return a.shape == b.shape and bool(compute([(a.data == b.data).all()])[0])
