"""Files of the correlate steps: mineral maps, phase maps, registrations, label planes, truth.

- a mineral map (:func:`save_mineral_map`): ``mineral_map.npz`` (phases, clusters,
  channels, pixel size, origin, names), ``mineral_map.tif``, ``centroids.csv`` and
  ``report.json``;
- a phase map to register (:func:`read_phase_map`, :func:`read_registration_map`): that
  NPZ or a 2-D TIFF of phase ids;
- a registration (:func:`save_registration`, :func:`load_registration`): ``NAME.json``,
  the SimpleITK transform ``NAME.tfm`` and the label plane ``NAME.labels.tif``; several
  of them become label planes for one volume (:func:`read_label_planes`);
- a ground-truth phase map on the map grid (:func:`_read_truth`), for scoring.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from volmla.correlate.maps import ElementMaps, _check_pixel_size, _scalar, read_npz, read_tiff
from volmla.correlate.minerals import Assignment, MineralMap
from volmla.correlate.register import Registration
from volmla.correlate.transfer import LabelPlane
from volmla.errors import VolmlaError
from volmla.io.atomic import replaced_file
from volmla.io.lock import output_lock
from volmla.io.sparse import SPARSE_LABEL_OFFSET

__all__ = [
    "LabelPlanes",
    "RegistrationMap",
    "load_registration",
    "read_label_planes",
    "read_phase_map",
    "read_registration_map",
    "save_mineral_map",
    "save_registration",
]


def save_mineral_map(
    out_dir: str | Path,
    maps: ElementMaps,
    mineral_map: MineralMap,
    assignment: Assignment,
    *,
    report: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``mineral_map.npz`` (phases, clusters, channels, pixel size, names),
    ``mineral_map.tif`` (phase ids), ``centroids.csv`` and ``report.json``.

    Parameters
    ----------
    out_dir
        Output folder (made if missing).
    maps
        The element maps (their channels go into the NPZ).
    mineral_map
        The k-means result.
    assignment
        Cluster -> mineral.
    report
        Extra entries for ``report.json`` (e.g. ``reference_abundances``).

    Returns
    -------
    dict
        ``{"npz", "tif", "centroids", "report"}`` -> path written.

    Examples
    --------
    >>> paths = save_mineral_map("mm", maps, mm, a)  # doctest: +SKIP
    """
    import tifffile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phases = assignment.phase_map(mineral_map.clusters)
    paths = {"npz": out / "mineral_map.npz", "tif": out / "mineral_map.tif",
             "centroids": out / "centroids.csv", "report": out / "report.json"}
    arrays = {e: maps.data[i] for i, e in enumerate(maps.elements)}
    record = {
        "pixel_size_um": maps.pixel_size_um,
        "shape": list(mineral_map.clusters.shape),
        "elements": list(maps.elements),
        "k": len(mineral_map.abundances),
        "inertia": mineral_map.inertia,
        "assignment_method": assignment.method,
        "clusters": {
            str(c): {"mineral": assignment.mineral[c], "phase": assignment.phase[c],
                     "confidence": round(assignment.confidence[c], 4),
                     "abundance": round(mineral_map.abundances[c], 6),
                     "centroid": {k: float(v) for k, v in mineral_map.centroids.loc[c].items()}}
            for c in mineral_map.centroids.index
        },
        "phases": {str(k): v for k, v in assignment.phase_names.items()},
        "minerals_not_found": list(assignment.not_found),
        "unlabelled_clusters": list(assignment.unlabelled),
        "warnings": list(assignment.warnings),
        **dict(report or {}),
    }
    # report.json marks the map complete: written last, each file swapped in whole
    with output_lock(paths["report"]):
        with replaced_file(paths["npz"]) as tmp:
            np.savez_compressed(
                tmp, phases=phases, clusters=mineral_map.clusters,
                pixel_size_um=np.float64(maps.pixel_size_um), origin_um=np.asarray(maps.origin_um, np.float64),
                phase_names=np.asarray(json.dumps({str(k): v for k, v in assignment.phase_names.items()})),
                **arrays,
            )
        with replaced_file(paths["tif"]) as tmp:
            tifffile.imwrite(tmp, phases)
        with replaced_file(paths["centroids"]) as tmp:
            mineral_map.centroids.assign(
                mineral=[assignment.mineral[c] for c in mineral_map.centroids.index]).to_csv(tmp)
        with replaced_file(paths["report"]) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return paths


def read_phase_map(path: str | Path, *, pixel_size_um: float | None = None) -> tuple[np.ndarray, float, dict[int, str]]:
    """Read a phase map: ``mineral_map.npz`` (from :func:`save_mineral_map`) or a 2-D TIFF
    of phase ids (then ``pixel_size_um`` is required).

    Parameters
    ----------
    path
        The NPZ or TIFF.
    pixel_size_um
        Map pixel edge in micrometres (overrides the NPZ's; required for a TIFF).

    Returns
    -------
    (numpy.ndarray, float, dict)
        The phases (uint8), the pixel size and the phase names ({id: name}, empty for a TIFF).

    Examples
    --------
    >>> phases, size, names = read_phase_map("mm/mineral_map.npz")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"map {path} does not exist")
    names: dict[int, str] = {}
    stored = None
    if path.suffix.lower() == ".npz":
        npz = read_npz(path)
        if "phases" not in npz:
            raise VolmlaError(f"{path} holds no 'phases' array: make it with `volmla correlate maps`")
        phases = npz["phases"]
        stored = _scalar(npz["pixel_size_um"], f"pixel_size_um in {path.name}") if "pixel_size_um" in npz else None
        if "phase_names" in npz:
            try:
                names = {int(k): str(v) for k, v in json.loads(str(npz["phase_names"])).items()}
            except (ValueError, AttributeError):
                raise VolmlaError(f"phase_names in {path} must be a JSON object of phase id: name") from None
    elif path.suffix.lower() in (".tif", ".tiff"):
        phases = read_tiff(path)
    else:
        raise VolmlaError(f"map must be .npz or .tif, got {path.name}")
    if phases.ndim != 2 or not np.issubdtype(phases.dtype, np.integer):
        raise VolmlaError(f"phase map {path} must be a 2-D integer image, got {phases.ndim}-D {phases.dtype}")
    size = _check_pixel_size(pixel_size_um if pixel_size_um is not None else stored)
    return phases.astype(np.uint8), size, names


class RegistrationMap(NamedTuple):
    """A map to register: ``phases`` (uint8 phase ids), ``image`` (what is registered:
    the phases or one element channel), ``pixel_size_um``, ``origin_um`` (row, col) and
    ``phase_names`` ({id: name}, empty for a TIFF)."""

    phases: np.ndarray
    image: np.ndarray
    pixel_size_um: float
    origin_um: tuple[float, float]
    phase_names: dict[int, str]


def read_registration_map(
    path: str | Path, *, channel: str = "phases", pixel_size_um: float | None = None,
) -> RegistrationMap:
    """Read a phase map and the image to register it by.

    Parameters
    ----------
    path
        ``mineral_map.npz`` (from :func:`save_mineral_map`; it carries the pixel size,
        origin and phase names) or a 2-D TIFF of phase ids.
    channel
        ``"phases"``, or an element channel of the NPZ to register by instead.
    pixel_size_um
        Map pixel edge in micrometres (required for a TIFF).

    Returns
    -------
    RegistrationMap

    Examples
    --------
    >>> m = read_registration_map("mm/mineral_map.npz", channel="Fe")  # doctest: +SKIP
    """
    path = Path(path)
    phases, size, names = read_phase_map(path, pixel_size_um=pixel_size_um)
    image = phases
    origin: tuple[float, ...] = (0.0, 0.0)
    if path.suffix.lower() == ".npz":
        npz = read_npz(path)
        if "origin_um" in npz:
            stored_origin = np.ravel(npz["origin_um"])
            if stored_origin.shape != (2,) or not np.issubdtype(stored_origin.dtype, np.number):
                raise VolmlaError(f"origin_um in {path.name} must be two numbers (row, col), got {npz['origin_um']!r}")
            origin = tuple(float(v) for v in stored_origin)
        if channel != "phases":
            if channel not in npz or npz[channel].shape != phases.shape:
                raise VolmlaError(f"channel must be 'phases' or a map channel of {path.name}, got {channel!r}")
            image = npz[channel]
    elif channel != "phases":
        raise VolmlaError(f"channel {channel!r} needs an NPZ map; a TIFF map is registered as phases")
    return RegistrationMap(phases, image, size, (origin[0], origin[1]), names)


def save_registration(reg: Registration, path: str | Path, *, labels_plane: np.ndarray | None = None,
                      phase_names: Mapping[int, str] | None = None) -> dict[str, Path]:
    """Write ``NAME.json`` (the record), ``NAME.tfm`` (the SimpleITK transform) and, when
    given, ``NAME.labels.tif`` (the label plane on CT voxels, 0 = unlabelled).

    Parameters
    ----------
    reg
        The registration.
    path
        ``NAME.json``.
    labels_plane
        The label plane (from :func:`volmla.correlate.map_to_plane`), if any.
    phase_names
        {phase id: mineral} to record.

    Returns
    -------
    dict
        ``{"json", "tfm"}`` (and ``"labels"``) -> path written.

    Examples
    --------
    >>> save_registration(reg, "r24.json", labels_plane=plane)  # doctest: +SKIP
    """
    import SimpleITK as sitk
    import tifffile

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise VolmlaError(f"registration output must end in .json, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tfm = path.with_suffix(".tfm")
    record = reg.to_dict()
    record["transform_file"] = tfm.name
    out = {"json": path, "tfm": tfm}
    # the .json marks the registration complete: written last, each file swapped in whole
    with output_lock(path):
        with replaced_file(tfm) as tmp:
            sitk.WriteTransform(reg.transform, str(tmp))
        if labels_plane is not None:
            tif = path.with_suffix(".labels.tif")
            with replaced_file(tif) as tmp:
                tifffile.imwrite(tmp, np.asarray(labels_plane, np.uint8))
            record["labels_plane"] = tif.name
            record["label_offset"] = SPARSE_LABEL_OFFSET
            out["labels"] = tif
        if phase_names is not None:
            record["phases"] = {str(k): v for k, v in phase_names.items()}
        with replaced_file(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return out


def load_registration(path: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    """Read a registration JSON and its label plane.

    Parameters
    ----------
    path
        ``NAME.json`` written by :func:`save_registration` with a label plane.

    Returns
    -------
    (dict, numpy.ndarray)
        The record and the label plane.

    Examples
    --------
    >>> record, plane = load_registration("r24.json")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"registration {path} does not exist")
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise VolmlaError(f"registration {path} is not JSON: {exc}") from None
    if "labels_plane" not in record or "axis" not in record or "index" not in record:
        raise VolmlaError(f"registration {path} has no label plane: make it with `volmla correlate register`")
    tif = path.parent / record["labels_plane"]
    if not tif.is_file():
        raise VolmlaError(f"label plane {tif} named by {path.name} does not exist")
    return record, read_tiff(tif, what="label plane")


class LabelPlanes(NamedTuple):
    """Label planes read from registrations: the ``planes``, the ``phase_names`` they
    carry ({id: name}) and ``warnings`` (one per poor registration)."""

    planes: list[LabelPlane]
    phase_names: dict[int, str]
    warnings: list[str]


def read_label_planes(
    paths: Sequence[str | Path], *, ct_shape: Sequence[int], voxel_size_um: Sequence[float] = (1.0, 1.0, 1.0),
) -> LabelPlanes:
    """The label planes of registrations made against one CT volume.

    Parameters
    ----------
    paths
        Registration JSONs (from :func:`save_registration` with a label plane).
    ct_shape
        Shape (z, y, x) of the CT volume the labels are for; each registration must have
        been made against a volume of this shape.
    voxel_size_um
        The volume's voxel size (z, y, x), for tilted planes.

    Returns
    -------
    LabelPlanes

    Examples
    --------
    >>> lp = read_label_planes(["r24.json"], ct_shape=(48, 64, 64))  # doctest: +SKIP
    """
    planes, names, warnings = [], {}, []
    voxel = cast(tuple[float, float, float], tuple(float(v) for v in voxel_size_um))
    for raw in paths:
        path = Path(raw)
        record, plane = load_registration(path)
        if tuple(record.get("ct_shape", ())) != tuple(ct_shape):
            raise VolmlaError(f"{path.name} was registered to a volume of shape {record.get('ct_shape')}, "
                              f"ct has shape {tuple(ct_shape)}")
        if not record.get("ok", False):
            warnings.append(f"{path.name} is a poor registration: {'; '.join(record.get('warnings', []))}")
        tilt = cast(tuple[float, float], tuple(float(t) for t in record.get("tilt_deg", (0.0, 0.0))))
        planes.append(LabelPlane(record["axis"], int(record["index"]), plane, tilt, voxel))
        names.update({int(k): v for k, v in record.get("phases", {}).items()})
    return LabelPlanes(planes, names, warnings)


def _read_truth(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Ground-truth phase ids on the map grid: an NPZ (``truth`` or ``phases``) or a TIFF."""
    if path.suffix.lower() == ".npz":
        npz = read_npz(path, what="truth")
        key = "truth" if "truth" in npz else "phases" if "phases" in npz else None
        if key is None:
            raise VolmlaError(f"truth {path.name} must hold a 'truth' or 'phases' array")
        truth = npz[key]
    else:
        truth = read_tiff(path, what="truth")
    if truth.shape != shape:
        raise VolmlaError(f"truth {path.name} has shape {truth.shape}, the maps have {shape}")
    return np.asarray(truth)
