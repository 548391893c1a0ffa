"""One segmentation dispatch: a method name and its options -> a lazy phase volume.

The command line (``volmla segment``), whole runs (``volmla run``) and the demo all
segment through :func:`segment_phases`:

1. Method: ``unet`` (an ONNX U-Net, :mod:`volmla.segment.infer`), ``rf`` (a random
   forest on filter features, :mod:`volmla.segment.forest`), ``regions`` (phases by
   region inside particles: cupping- and partial-volume-corrected grey pooled over
   each voxel's region of its particle, levels from the sparse labels,
   :mod:`volmla.segment.pooled`), ``threshold`` (multi-Otsu) or ``kmeans``
   (:mod:`volmla.segment.classical`). Without a method, a ``model`` is looked at: a
   volmla random forest means ``rf``, anything else ``unet``; with no model but sparse
   ``labels``, the most accurate path is taken, ``regions`` (on the crushed-ore
   phantoms of ``benchmarks/bench_truth.py`` it brings the largest liberation error
   with the true particles from 0.65 with the forest to ~0.01 on the easy level and
   below 0.1 on the hard one, in a fraction of the forest's time). The old spelling
   ``model`` for the U-Net method is accepted (:data:`METHOD_ALIASES`).
2. Checks: every option the method needs is there before anything is computed
   (errors name the keyword: ``classes=``, ``model=``, ``labels=``, ``save_model=``);
   sparse labels for ``regions`` are checked by :func:`check_labels` (one pass over
   them) before the particles are labelled: the shape, at least one solid phase, and
   every phase named (``phase_names=``, else the labels' ``phases`` attribute) or lying
   below the highest labelled one has labelled voxels, since its grey level is fitted
   on them (a phase without labels would silently get no voxels).
3. ``rf`` with ``labels`` and no saved forest trains one (a small global pass over the
   labels and regions around the labelled planes) and writes it to ``save_model``, a
   path the caller chooses; the phases are then predicted with that file. ``regions``
   fits its levels on the labels (a global pass) and needs the particles: given as
   ``particles``, or labelled here from the intensity
   (:func:`volmla.particles.label_particles` with its defaults).
4. The phases come back lazy (uint8, 0 = void) with the class names (index = phase id)
   and, for a U-Net with ``uncertainty=True``, the maximum class probability.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import dask.array as da
import numpy as np
import xarray as xr

from volmla.errors import VolmlaError
from volmla.types import Device, VolumeLike

logger = logging.getLogger(__name__)

SegmentMethod = Literal["unet", "rf", "regions", "threshold", "kmeans"]
METHODS: tuple[SegmentMethod, ...] = ("unet", "rf", "regions", "threshold", "kmeans")
METHOD_ALIASES: dict[str, SegmentMethod] = {"model": "unet"}
"""Older spellings of a method (pipeline configs said ``model`` for the U-Net)."""

__all__ = [
    "METHODS",
    "METHOD_ALIASES",
    "PhaseSegmentation",
    "SegmentMethod",
    "check_labels",
    "check_options",
    "check_save_model",
    "resolve_method",
    "segment_phases",
]


class PhaseSegmentation(NamedTuple):
    """What :func:`segment_phases` returns."""

    phases: xr.DataArray
    """Lazy uint8 phase ids (0 = void), a Dask-backed DataArray on the input's grid
    (coordinates, voxel size; ``attrs["phases"]`` the names by id)."""
    classes: tuple[str, ...]
    """Class names; the index is the phase id (``classes[0]`` is void)."""
    confidence: xr.DataArray | None
    """uint8 maximum class probability x 255 (U-Net with ``uncertainty=True``), else None."""
    method: SegmentMethod
    """The method used (resolved from the model when none was given)."""
    model: Path | None
    """The model file used (the forest written to ``save_model`` when one was trained)."""
    train_accuracy: float | None
    """Training accuracy of a forest trained here, else None."""


def resolve_method(method: str | None, *, model: str | Path | None = None,
                   labels: object | None = None) -> SegmentMethod:
    """The segmentation method a name (or, without one, a model file or labels) stands for.

    Parameters
    ----------
    method
        ``unet``, ``rf``, ``regions``, ``threshold``, ``kmeans``, an alias (``model``),
        or None.
    model
        ONNX file: with no ``method``, a volmla random forest means ``rf``, any other
        model ``unet``.
    labels
        Sparse labels (or their path): with no ``method`` and no ``model``, the best
        path for them, ``regions``.

    Returns
    -------
    str
        One of :data:`METHODS`.

    Examples
    --------
    >>> resolve_method("model")
    'unet'
    >>> resolve_method("kmeans")
    'kmeans'
    >>> resolve_method(None, labels="labels.zarr")
    'regions'
    """
    if method is None:
        if model is None and labels is not None:
            return "regions"
        if model is None:
            raise VolmlaError("give model=M.onnx, labels=SPARSE_LABELS or method=threshold|kmeans|rf|regions")
        from volmla.segment.forest import RF_FORMAT
        from volmla.segment.sessions import read_metadata

        return "rf" if read_metadata(model).get("format") == RF_FORMAT else "unet"
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise VolmlaError(f"method must be one of {METHODS}, got {method!r}")
    return cast(SegmentMethod, method)


def check_options(
    method: str | None,
    *,
    model: str | Path | None = None,
    labels: VolumeLike | str | Path | None = None,
    save_model: str | Path | None = None,
    classes: int | None = None,
    uncertainty: bool = False,
    tile: Any = None,
    overlap: float = 0.25,
    batch: int = 4,
    halo: int | None = None,
    threads: int | None = None,
) -> SegmentMethod:
    """Resolve the method and check that it has what it needs, computing nothing.

    :func:`segment_phases` calls this first; a caller that starts a cluster or checks
    outputs may call it earlier, so a user error comes before any work.

    Parameters
    ----------
    method, model, labels, save_model, classes, uncertainty
        As for :func:`segment_phases` (``labels`` may be a path here: only whether
        they are given matters).
    tile, overlap, batch, threads
        U-Net tiling options and ONNX Runtime threads, checked whatever the method
        (:func:`volmla.segment.infer.check_tiling`): a wrong value is an error, not
        silently ignored by a method that does not tile.
    halo
        Context of a foreign U-Net: with ``unet`` the model itself is checked
        (:func:`volmla.segment.sessions.inspect_model`: its input and output shapes, its
        classes), so a model that cannot segment a volume fails before any work. Options
        a method would ignore are refused: ``halo`` with any other method, ``model`` or
        ``labels`` with ``threshold`` and ``kmeans``, ``save_model`` with any method but
        ``rf`` trained on ``labels``.

    Returns
    -------
    str
        The method (one of :data:`METHODS`).

    Examples
    --------
    >>> check_options("threshold")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: method threshold needs classes=K
    >>> check_options("kmeans", classes=2, save_model="rf.onnx")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: save_model writes the random forest trained on labels=SPARSE_LABELS (method rf); method kmeans trains none
    """
    from volmla.segment.infer import check_tiling

    check_tiling(tile=tile, overlap=overlap, batch=batch, threads=threads)
    resolved = resolve_method(method, model=model, labels=labels)
    if resolved == "regions":
        if labels is None:
            raise VolmlaError("method regions needs labels=SPARSE_LABELS (the phase levels are fitted on them)")
        if model is not None:
            raise VolmlaError("method regions takes labels=SPARSE_LABELS, not model=")
    if resolved in ("threshold", "kmeans") and classes is None:
        raise VolmlaError(f"method {resolved} needs classes=K")
    if resolved in ("threshold", "kmeans") and (model is not None or labels is not None):
        raise VolmlaError(f"method {resolved} segments by intensity alone: it takes no "
                          f"{'model=' if model is not None else 'labels='}")
    if halo is not None and resolved != "unet":
        raise VolmlaError(f"halo= is the context of a U-Net (method unet), got method {resolved}")
    if save_model is not None and not (resolved == "rf" and labels is not None):
        given = " given model=M.onnx" if resolved == "rf" else ""
        raise VolmlaError("save_model writes the random forest trained on labels=SPARSE_LABELS (method rf); "
                          f"method {resolved}{given} trains none")
    if resolved == "unet" and model is None:
        raise VolmlaError("method unet needs model=M.onnx")
    if resolved == "unet":
        from volmla.segment.sessions import inspect_model

        inspect_model(model, halo=halo)  # type: ignore[arg-type]
    if resolved == "rf":
        if (model is None) == (labels is None):
            raise VolmlaError("method rf needs either labels=SPARSE_LABELS (to train) or model=rf.onnx")
        if labels is not None and save_model is None:
            raise VolmlaError("training a random forest needs save_model=rf.onnx (where to write it)")
        if labels is not None and Path(save_model).is_dir():  # type: ignore[arg-type]
            raise VolmlaError(f"save_model {save_model} is a folder: the random forest is written as one ONNX file")
        if labels is not None:
            from volmla.io.outputs import check_parent_not_file

            check_parent_not_file(save_model, what="save_model")  # type: ignore[arg-type]
    if uncertainty and resolved != "unet":
        raise VolmlaError("uncertainty=True works with U-Net models only")
    return resolved


def check_save_model(save_model: str | Path, *, outputs: Sequence[tuple[str, str | Path | None]] = (),
                     inputs: Sequence[tuple[str, str | Path | None]] = (), name: str = "save_model") -> None:
    """Refuse a path for a trained forest that would land on or inside a volume, before training.

    The forest is written before the phases: inside an output volume it blocks that
    output (and every rerun), inside an input volume it writes into what the job reads.

    Parameters
    ----------
    save_model
        Where the forest is to be written (one ONNX file).
    outputs, inputs
        The volumes the job writes and reads, as (how a message names it, path) pairs
        (``("--output", "o.zarr")``, ...); None paths and URLs are skipped.
    name
        How a message names the forest's path (``save_model``, ``--save-model``, ...).

    Examples
    --------
    >>> check_save_model("/data/rf.onnx", outputs=[("output", "/data/o.zarr")], inputs=[("the input", "/data/s.zarr")])
    >>> check_save_model("/data/s.zarr/rf.onnx", inputs=[("the input", "/data/s.zarr")])
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: save_model /data/s.zarr/rf.onnx lies inside the input /data/s.zarr: give the forest a file of its own
    """
    from volmla.io.ngff import is_url
    from volmla.io.outputs import check_parent_not_file

    path = Path(save_model).expanduser().resolve()
    for what, other in [*outputs, *inputs]:
        if other is None or (isinstance(other, str) and is_url(other)):
            continue
        volume = Path(other).expanduser().resolve()
        if path == volume:
            folder = " and is a folder" if path.is_dir() else ""
            raise VolmlaError(f"{name} {save_model} is {what}{folder}: give the forest a file of its own")
        if volume in path.parents:
            raise VolmlaError(f"{name} {save_model} lies inside {what} {other}: give the forest a file of its own")
    check_parent_not_file(save_model, what=name)


def check_labels(labels: VolumeLike, *, shape: Sequence[int],
                 phase_names: Sequence[str] | Mapping[int, str] | None = None) -> dict[int, int]:
    """Check sparse labels against the scan and the phase names, computing one pass.

    A phase's grey level (``regions``) is fitted on its labelled voxels, so a phase that
    is named but never labelled, or that lies below the highest labelled phase without
    labels of its own, cannot be found: it would get no voxels, silently. Each of those
    is a one-line error naming the phase.

    Parameters
    ----------
    labels
        Sparse labels (``phase + 1``, 0 unlabelled, 1 void).
    shape
        The scan's shape (z, y, x).
    phase_names
        Names of phases 1..N; default the labels' ``phases`` attribute (id -> name),
        if any.

    Returns
    -------
    dict
        Phase id (0 = void) -> labelled voxels, for the phases labelled.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((2, 4, 4), np.uint8); labels[0, :2] = 1; labels[0, 2:] = 2
    >>> check_labels(labels, shape=(2, 4, 4))
    {0: 8, 1: 8}
    >>> check_labels(labels, shape=(2, 4, 4), phase_names=["quartz", "pyrite"])
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: phase 'pyrite' (2) has no labelled voxels in labels: its grey level cannot be fitted; label some of it or leave it out of phase_names
    """
    from volmla.engine.blocks import as_volume
    from volmla.engine.reduce import histogram

    given = tuple(int(n) for n in getattr(labels, "shape", np.shape(labels)))
    if given != tuple(int(n) for n in shape):
        raise VolmlaError(f"labels must have the shape of the intensity {tuple(shape)}, got {given}")
    lab = as_volume(labels, name="labels", integer=True)
    if phase_names is None:
        named = {int(k): str(v) for k, v in (lab.attrs.get("phases") or {}).items()}
    elif isinstance(phase_names, Mapping):
        named = {int(k): str(v) for k, v in phase_names.items()}
    else:
        named = {i: str(v) for i, v in enumerate(phase_names, start=1)}
    hist = histogram(lab.data)  # exact, one pass for (u)int8/16 labels
    held = np.flatnonzero(hist.counts)
    top = int(hist.first + hist.width * held.max()) if held.size else 0
    if not hist.exact or top > 255 or hist.first + hist.width * held.min() < 0:
        raise VolmlaError(f"labels must hold phase + 1 below 256, got {top}")
    found = {int(hist.first) + int(k) - 1: int(hist.counts[k]) for k in held if hist.first + k > 0}
    if not any(k > 0 for k in found):
        raise VolmlaError("labels must mark at least one solid phase (sparse labels hold phase + 1), got none")
    if phase_names is not None and max(found) > len(named):
        raise VolmlaError(f"labels hold phase {max(found)} (label {max(found) + 1}) but phase_names names "
                          f"{len(named)} phases")
    for k in range(1, max(max(found), max(named, default=0)) + 1):
        if k not in found:
            if k in named:
                source = "phase_names" if phase_names is not None else "the labels' phase names (attribute 'phases')"
                raise VolmlaError(f"phase {named[k]!r} ({k}) has no labelled voxels in labels: its grey level cannot "
                                  f"be fitted; label some of it or leave it out of {source}")
            raise VolmlaError(f"phase {k} has no labelled voxels in labels (label {k + 1}) but phase {max(found)} has: "
                              "its grey level cannot be fitted; label some of it (sparse labels hold phase + 1)")
    return found


def segment_phases(
    volume: VolumeLike,
    *,
    method: SegmentMethod | Literal["model"] | None = None,
    model: str | Path | None = None,
    labels: VolumeLike | None = None,
    save_model: str | Path | None = None,
    classes: int | None = None,
    seed: int = 0,
    sigmas: Sequence[float] | None = None,
    forest_options: Mapping[str, Any] | None = None,
    particles: VolumeLike | None = None,
    region_options: Mapping[str, Any] | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    halo: int | None = None,
    tile: int | Sequence[int] | Literal["block"] | None = None,
    overlap: float = 0.25,
    batch: int = 4,
    device: Device = "auto",
    fp16: bool = False,
    uncertainty: bool = False,
    threads: int | None = None,
) -> PhaseSegmentation:
    """Segment an intensity volume into phases with one of the five methods, lazily.

    Parameters
    ----------
    volume
        Intensity volume (NumPy, Dask or xarray).
    method
        ``unet``, ``rf``, ``regions``, ``threshold`` or ``kmeans`` (``model`` is an
        alias of ``unet``); None: from ``model`` (a volmla forest -> ``rf``, else
        ``unet``), or with only ``labels``, ``regions`` (the most accurate path).
    model
        ONNX file: the U-Net, or a saved random forest.
    labels
        Sparse labels (``phase + 1``, 0 unlabelled) to train a forest (``rf`` without
        ``model``) or to fit the levels of ``regions``.
    save_model
        Where to write a forest trained on ``labels`` (``.onnx``); refused with any other
        method (or ``rf`` given a ``model``), which trains none.
    classes
        K classes for ``threshold`` and ``kmeans`` (0..K-1 by intensity).
    seed
        Seed of ``kmeans`` and of forest training.
    sigmas
        Feature scales of a forest trained here (default
        :data:`volmla.segment.forest.DEFAULT_SIGMAS`).
    forest_options
        Other keywords of :func:`volmla.segment.forest.train_random_forest`
        (``n_estimators``, ``max_samples``, ``classes`` names, ...).
    particles
        Particle ids for ``regions`` (default: labelled here from the intensity). The
        field of view their provenance records (:func:`volmla.preprocess.fov.from_provenance`)
        is the one the levels and the PSF are fitted in, unless ``region_options`` names one.
    region_options
        Other keywords of :func:`volmla.segment.pooled.region_phases` (``radius``,
        ``min_grain``, ``psf_sigma``, ``field_of_view``, ...).
    phase_names
        ``regions``: names of phases 1..N (default the labels' ``phases`` attribute);
        every one must be labelled (:func:`check_labels`).
    halo, tile, overlap, batch, device, fp16, uncertainty, threads
        U-Net inference options (:func:`volmla.segment.infer.segment`); ``device`` is
        ignored by the other methods.

    Returns
    -------
    PhaseSegmentation
        Lazy phases (a DataArray with the input's coordinates and voxel size), class
        names, confidence (or None), the method and model used, and the training
        accuracy of a forest trained here.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.repeat([10, 200], 32).reshape(1, 8, 8).astype(np.uint8)
    >>> out = segment_phases(image, method="kmeans", classes=2)
    >>> out.classes, np.bincount(out.phases.values.ravel()).tolist()
    (('void', 'class1'), [32, 32])
    """
    resolved = check_options(method, model=model, labels=labels, save_model=save_model, classes=classes,
                             uncertainty=uncertainty, tile=tile, overlap=overlap, batch=batch, halo=halo,
                             threads=threads)
    from volmla.engine.blocks import check_same_voxel_size

    check_same_voxel_size({"the volume": volume, "labels": labels, "particles": particles})
    if phase_names is not None and resolved != "regions":
        raise VolmlaError(f"phase_names= is for method regions (the names of the labelled phases), got method {resolved}")
    if resolved in ("threshold", "kmeans"):
        from volmla.segment.classical import kmeans_segment, threshold_segment

        assert classes is not None
        phases = (threshold_segment(volume, classes=classes) if resolved == "threshold"
                  else kmeans_segment(volume, classes=classes, seed=seed))
        names = ("void", *(f"class{i}" for i in range(1, classes)))
        return _result(volume, phases, names, None, resolved, None, None)
    if resolved == "regions":
        from volmla.segment.pooled import label_levels, region_phases

        assert labels is not None
        from volmla.engine.blocks import as_volume

        check_labels(labels, shape=tuple(getattr(volume, "shape", np.shape(volume))), phase_names=phase_names)
        if particles is None:
            from volmla.particles import label_particles

            particles = label_particles(volume).labels
        options = dict(region_options or {})
        if "field_of_view" not in options:  # the one the particles were labelled in, if any
            from volmla.preprocess.fov import from_provenance

            options["field_of_view"] = from_provenance(getattr(particles, "attrs", {}))
        levels = label_levels(volume, labels, particles=particles, field_of_view=options["field_of_view"])
        estimated = options.get("psf_sigma") is None
        if estimated:  # estimated here, once, so that the record can name it (region_phases takes it as given)
            from volmla.segment.pooled import region_psf

            options["psf_sigma"] = region_psf(volume, particles, levels, **options)
        phases = region_phases(volume, particles, levels=levels, **options)
        if phase_names is None:
            named = {int(k): str(v) for k, v in (as_volume(labels, name="labels").attrs.get("phases") or {}).items()}
        elif isinstance(phase_names, Mapping):
            named = {int(k): str(v) for k, v in phase_names.items()}
        else:
            named = {i: str(v) for i, v in enumerate(phase_names, start=1)}
        names = ("void", *(named.get(k, f"phase{k}") for k in range(1, max(levels.levels) + 1)))
        grey = {"noise_sigma": float(levels.noise_sigma),  # the liberation report's contrast warning reads them
                "levels": {names[k]: float(v) for k, v in sorted(levels.levels.items()) if k < len(names)},
                "voxels": {names[k]: int(v) for k, v in sorted(levels.voxels.items()) if k < len(names)},
                "psf_sigma": float(options["psf_sigma"]), "psf_estimated": estimated}
        return _result(volume, phases, names, None, resolved, None, None, grey_levels=grey)
    if resolved == "rf":
        from volmla.segment.forest import (
            DEFAULT_SIGMAS,
            load_random_forest,
            random_forest_segment,
            save_random_forest,
            train_random_forest,
        )

        accuracy = None
        if labels is not None:
            assert save_model is not None
            forest = train_random_forest(volume, labels, sigmas=DEFAULT_SIGMAS if sigmas is None else sigmas,
                                         seed=seed, **dict(forest_options or {}))
            logger.info("random forest: training accuracy %.3f", forest.train_accuracy)
            model, accuracy = save_random_forest(forest, save_model), forest.train_accuracy
        assert model is not None
        path = Path(model)
        phases = random_forest_segment(volume, model=path)
        return _result(volume, phases, load_random_forest(path).classes, None, resolved, path, accuracy)
    from volmla.segment.infer import segment

    assert model is not None
    seg = segment(volume, model=model, halo=halo, tile=tile, overlap=overlap, batch=batch, device=device,
                  fp16=fp16, uncertainty=uncertainty, threads=threads)
    return _result(volume, seg.phases, seg.classes, seg.confidence, resolved, Path(model), None)


def _result(volume: VolumeLike, phases: da.Array | xr.DataArray, classes: Sequence[str],
            confidence: da.Array | xr.DataArray | None,
            method: SegmentMethod, model: Path | None, accuracy: float | None,
            grey_levels: dict[str, Any] | None = None) -> PhaseSegmentation:
    """The lazy results as DataArrays on the input's grid, with the classes and provenance
    (``grey_levels``: the fitted levels of ``regions``, kept in its provenance record)."""
    from volmla.engine.blocks import as_dataarray

    names = tuple(classes)
    record: dict[str, Any] = {"step": "segment", "method": method, "model": None if model is None else str(model)}
    if grey_levels is not None:
        record["grey_levels"] = grey_levels
    out = as_dataarray(_dask(phases), like=volume, name="phases", kind="phases",
                       phases={i: n for i, n in enumerate(names) if i}, record=record)
    conf = None if confidence is None else as_dataarray(_dask(confidence), like=volume,
                                                         name="confidence", kind="intensity", record=record)
    return PhaseSegmentation(out, names, conf, method, model, accuracy)


def _dask(array: da.Array | xr.DataArray) -> da.Array:
    return array.data if isinstance(array, xr.DataArray) else array
