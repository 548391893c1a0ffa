"""Synthetic correlative data: element maps of a phantom's faces, with a known transform.

1. **Face**: one plane of a phase volume (e.g. the top, the bottom and an interior z
   plane of a phantom) is read (only that plane), or, for a known tilt, the nearest
   voxels on a tilted plane (:func:`oblique_face`, only the slab it crosses is read).
2. **Misplacement**: the map's frame is rotated by a small known angle about the face's
   centre and shifted by a few map pixels (``x_ct = R (x_map - c) + c + t``); the face is
   sampled on the map's fine grid under that transform (nearest neighbour; outside the
   volume is void).
3. **Element maps**: every phase has an element signature (counts per element,
   :data:`PHASE_SIGNATURES`: quartz Si; feldspar Na/K/Al/Si; pyrite Fe/S; void/epoxy low
   everything); the fine signature images are block-averaged by ``factor`` (coarser
   pixels that mix phases at grain boundaries), then Poisson counting noise and optional
   Gaussian read noise are drawn. The ground-truth phase of each map pixel is the
   majority phase of its block.
4. :func:`correlative_labels` runs the whole Deep-XFCT chain on those maps
   (bilateral filter -> k-means -> automatic assignment -> registration -> label transfer)
   and returns the lazy sparse label volume with a report that scores every step
   against the truth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from volmla.correlate import (
    UNLABELLED,
    Axis,
    ElementMaps,
    LabelPlane,
    assign_minerals,
    denoise_maps,
    erode_labels,
    kmeans_minerals,
    labels_volume,
    map_to_plane,
    plane_heights,
    register_map,
    registration_image,
)
from volmla.correlate.planes import _oblique, _plane_axes, _slab, _slab_range
from volmla.errors import VolmlaError
from volmla.io.sparse import SPARSE_LABEL_OFFSET

logger = logging.getLogger(__name__)

__all__ = ["PHASE_SIGNATURES", "CorrelativeLabels", "SyntheticMaps", "correlative_labels", "oblique_face",
           "simulate_element_maps"]

#: Mean counts per map pixel of each element, per phase (before noise).
PHASE_SIGNATURES: dict[str, dict[str, float]] = {
    "void": {"Al": 2.0, "Fe": 1.0, "K": 1.0, "Mg": 1.0, "Na": 1.0, "S": 1.0, "Si": 3.0},
    "quartz": {"Al": 3.0, "Fe": 1.0, "K": 1.0, "Mg": 1.0, "Na": 1.0, "S": 1.0, "Si": 60.0},
    "feldspar": {"Al": 25.0, "Fe": 1.0, "K": 20.0, "Mg": 1.0, "Na": 12.0, "S": 1.0, "Si": 40.0},
    "pyrite": {"Al": 2.0, "Fe": 45.0, "K": 1.0, "Mg": 1.0, "Na": 1.0, "S": 50.0, "Si": 3.0},
}


class SyntheticMaps(NamedTuple):
    """Simulated element maps of one face: ``maps``, the majority ``truth`` phase per map
    pixel (``pure`` marks pixels whose block holds one phase only), the true ``transform`` (``angle_deg``, ``translation_um`` (x, y),
    ``center_um`` (x, y); map -> CT plane) and the ``plane`` index."""

    maps: ElementMaps
    truth: np.ndarray
    transform: dict[str, Any]
    plane: int
    pure: np.ndarray


class CorrelativeLabels(NamedTuple):
    """``labels``: lazy uint8 sparse label volume (0 unlabelled, phase + 1); ``report``:
    per-plane scores against the truth."""

    labels: xr.DataArray
    report: dict[str, Any]


def oblique_face(
    phases: Any, *, index: int, tilt_deg: Sequence[float] = (0.0, 0.0), axis: Axis = "z",
    voxel_size_um: Sequence[float] | None = None,
) -> np.ndarray:
    """Phase ids on a tilted plane (nearest voxel; see :func:`volmla.correlate.plane_heights`).

    Parameters
    ----------
    phases
        3-D phase volume (xr.DataArray, dask or NumPy); only the crossed slab is read.
    index
        Plane position at the centre of the plane grid.
    tilt_deg
        Slopes along the plane's rows and columns, in degrees.
    axis
        Plane normal.
    voxel_size_um
        (z, y, x); default the DataArray's attrs or isotropic.

    Returns
    -------
    numpy.ndarray
        (row, col) phase ids; points outside the volume take the nearest face.

    Examples
    --------
    >>> face = oblique_face(ph.phases, index=24, tilt_deg=(2.0, -1.0))  # doctest: +SKIP
    """
    import dask.array as da

    a, r, c = _plane_axes(axis)
    if voxel_size_um is None:
        voxel_size_um = getattr(phases, "attrs", {}).get("voxel_size_um", (1.0, 1.0, 1.0))
    vs = tuple(float(v) for v in voxel_size_um)
    data = phases.data if isinstance(phases, xr.DataArray) else phases
    data = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    if data.ndim != 3:
        raise VolmlaError(f"phases must be a 3-D volume, got {data.ndim}-D")
    if not 0 <= int(index) < data.shape[a]:
        raise VolmlaError(f"index must lie in 0..{data.shape[a] - 1} along {axis}, got {index}")
    h = plane_heights((data.shape[r], data.shape[c]), index=index, tilt_deg=tilt_deg,
                      voxel_size_um=(vs[a], vs[r], vs[c]))
    lo, hi = _slab_range(data.shape[a], h)
    return _oblique(_slab(data, a, lo, hi), lo, np.clip(h, 0, data.shape[a] - 1), order=0).astype(np.uint8)


def simulate_element_maps(
    face: np.ndarray,
    *,
    voxel_size_um: float,
    phase_names: Mapping[int, str],
    plane: int = 0,
    factor: int = 4,
    angle_deg: float = 2.0,
    shift_px: Sequence[float] = (1.5, -1.0),
    counts_scale: float = 1.0,
    read_noise: float = 0.5,
    signatures: Mapping[str, Mapping[str, float]] | None = None,
    seed: int = 0,
    tilt_deg: Sequence[float] = (0.0, 0.0),
    axis: Axis = "z",
) -> SyntheticMaps:
    """Element maps of one phase plane, coarser, noisy and slightly misplaced.

    Parameters
    ----------
    face
        2-D phase ids (row, col) of the plane, 0 = void; or the 3-D phase volume, whose
        plane ``plane`` along ``axis``, tilted by ``tilt_deg``, is taken as the face
        (:func:`oblique_face`).
    voxel_size_um
        The CT's in-plane voxel edge.
    phase_names
        ``{phase id: mineral name}``; every name needs a signature.
    plane
        The plane's index (recorded in the result).
    factor
        Map pixel = ``factor`` CT voxels.
    angle_deg, shift_px
        The true rotation (degrees) and shift (map pixels, (x, y)) of the map frame.
    counts_scale
        Multiplies the signature counts (higher = less Poisson noise).
    read_noise
        Gaussian noise sigma in counts.
    signatures
        Phase name -> {element: counts}; default :data:`PHASE_SIGNATURES`.
    seed
        Noise seed.
    tilt_deg
        Known tilt of the face (slopes along rows and columns, degrees); needs a 3-D
        ``face``. Recorded in ``transform["tilt_deg"]``.
    axis
        Plane normal when ``face`` is 3-D.

    Returns
    -------
    SyntheticMaps

    Examples
    --------
    >>> sm = simulate_element_maps(face, voxel_size_um=10.0, phase_names={1: "quartz"})  # doctest: +SKIP
    """
    import SimpleITK as sitk

    tilt = (float(tilt_deg[0]), float(tilt_deg[1]))
    if getattr(face, "ndim", None) == 3:
        face = oblique_face(face, index=plane, tilt_deg=tilt, axis=axis)
    elif any(tilt):
        raise VolmlaError("tilt_deg needs the 3-D phase volume as face (the tilted plane is sampled from it)")
    face = np.asarray(face)
    if face.ndim != 2:
        raise VolmlaError(f"face must be 2-D, got shape {face.shape}")
    if not isinstance(factor, int) or factor < 1:
        raise VolmlaError(f"factor must be a positive integer, got {factor!r}")
    if face.shape[0] < 8 * factor or face.shape[1] < 8 * factor:
        raise VolmlaError(f"face {face.shape} too small for factor {factor}: need >= {8 * factor} pixels per side")
    sigs = dict(PHASE_SIGNATURES if signatures is None else signatures)
    names = {0: "void", **{int(k): str(v) for k, v in phase_names.items()}}
    unknown = [n for n in names.values() if n not in sigs]
    if unknown:
        raise VolmlaError(f"no element signature for phases {unknown}: known {sorted(sigs)}")
    elements = tuple(sorted({e for n in names.values() for e in sigs[n]}))
    v = float(voxel_size_um)
    rows, cols = (face.shape[0] // factor) * factor, (face.shape[1] // factor) * factor
    center = ((cols - 1) * v / 2, (rows - 1) * v / 2)
    tx = sitk.Euler2DTransform()
    tx.SetCenter(center)
    tx.SetAngle(math.radians(angle_deg))
    shift = (float(shift_px[0]) * factor * v, float(shift_px[1]) * factor * v)
    tx.SetTranslation(shift)
    src = sitk.GetImageFromArray(face.astype(np.uint8))
    src.SetSpacing((v, v))
    ref = sitk.Image(cols, rows, sitk.sitkUInt8)
    ref.SetSpacing((v, v))
    fine = sitk.GetArrayFromImage(sitk.Resample(src, ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    lut = np.array([[sigs[names.get(p, "void")].get(e, 0.0) for e in elements]
                    for p in range(int(max(names)) + 1)], np.float64) * counts_scale
    blocks = (rows // factor, factor, cols // factor, factor)
    mean = lut[fine].reshape(*blocks, len(elements)).mean(axis=(1, 3))
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(mean).astype(np.float64) + rng.normal(0.0, read_noise, mean.shape)
    onehot = np.eye(int(max(names)) + 1)[fine].reshape(*blocks, -1).sum(axis=(1, 3))
    truth = np.argmax(onehot, axis=-1).astype(np.uint8)
    pure = onehot.max(axis=-1) == factor * factor
    origin = ((factor - 1) * v / 2, (factor - 1) * v / 2)
    maps = ElementMaps(np.moveaxis(noisy, -1, 0).astype(np.float32), elements, factor * v, origin)
    true_tx = {"angle_deg": float(angle_deg), "translation_um": list(shift), "center_um": list(center),
               "tilt_deg": list(tilt)}
    return SyntheticMaps(maps, truth, true_tx, int(plane), pure)


def correlative_labels(
    ct: xr.DataArray,
    phases_truth: xr.DataArray,
    *,
    planes: Sequence[int] | None = None,
    axis: Axis = "z",
    seed: int = 0,
    factor: int = 2,
    angle_deg: float = 2.0,
    shift_px: float = 1.5,
    erode: int = 1,
    counts_scale: float = 1.0,
    minerals: Sequence[str] | None = None,
    min_quality: float = 0.05,
    tilt_deg: Sequence[float] = (0.0, 0.0),
    max_tilt_deg: float = 0.0,
) -> CorrelativeLabels:
    """Simulated Deep-XFCT labelling of a phantom: maps -> k-means -> registration -> labels.

    Parameters
    ----------
    ct
        CT intensity volume (lazy).
    phases_truth
        The phantom's phase volume (lazy; only the chosen planes are read), attrs
        ``phases`` naming the minerals.
    planes
        Plane indices along ``axis`` to map (default: first, middle, last).
    axis
        Plane normal.
    seed
        Seed of the noise and k-means; plane ``i`` uses ``seed + i``.
    factor
        Map pixel in CT voxels.
    angle_deg, shift_px
        Size of the true misplacement; the sign alternates between planes.
    erode
        Label margin (CT voxels) dropped around label changes.
    counts_scale
        Signal level of the simulated maps.
    minerals
        Mineral names in phase order (default the phase names of ``phases_truth``).
    min_quality
        Registration quality threshold (see :func:`volmla.correlate.register_map`).
    tilt_deg
        True tilt of the mapped faces (degrees along rows, cols; the sign alternates
        between planes); the faces are then sampled from the tilted planes.
    max_tilt_deg
        Tilt search range of the registration (0: no tilt search).

    Returns
    -------
    CorrelativeLabels
        Lazy sparse labels on the CT grid, and a report with per-plane adjusted Rand
        index of the clusters against the majority truth (``ari``; ``ari_pure`` over
        map pixels whose block holds one phase), assignment, plane / angle / shift errors, quality and label accuracy.

    Examples
    --------
    >>> from volmla.synthetic import phantom  # doctest: +SKIP
    >>> ph = phantom(shape=(64, 64, 64), seed=0)  # doctest: +SKIP
    >>> out = correlative_labels(ph.intensity, ph.phases, planes=[0, 32, 63])  # doctest: +SKIP
    """
    from sklearn.metrics import adjusted_rand_score

    if ct.shape != phases_truth.shape:
        raise VolmlaError(f"ct shape {ct.shape} differs from phases_truth shape {phases_truth.shape}")
    a, r, c = _plane_axes(axis)
    n = ct.shape[a]
    planes = [0, n // 2, n - 1] if planes is None else [int(p) for p in planes]
    bad = [p for p in planes if not 0 <= p < n]
    if bad:
        raise VolmlaError(f"planes must lie in 0..{n - 1} along {axis}, got {bad}")
    vs = tuple(float(x) for x in ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0)))
    if not math.isclose(vs[r], vs[c], rel_tol=1e-6):
        raise VolmlaError(f"in-plane voxel size must be isotropic for synthetic maps, got {vs[r]} x {vs[c]}")
    names = {int(k): str(v) for k, v in (phases_truth.attrs.get("phases") or {}).items()}
    minerals = list(minerals) if minerals is not None else [names[k] for k in sorted(names)]
    if not minerals:
        raise VolmlaError("phases_truth names no phases (attrs['phases']); give minerals=[...]")
    phase_names = {i + 1: m for i, m in enumerate(minerals)}

    label_planes, per_plane = [], []
    for i, p in enumerate(planes):
        sign = 1.0 if i % 2 == 0 else -1.0
        tilt = (sign * float(tilt_deg[0]), sign * float(tilt_deg[1]))
        face = oblique_face(phases_truth, index=p, tilt_deg=tilt, axis=axis, voxel_size_um=vs)
        sim = simulate_element_maps(
            face, voxel_size_um=vs[c], phase_names=phase_names, plane=p, factor=factor,
            angle_deg=sign * angle_deg, shift_px=(sign * shift_px, -0.5 * shift_px),
            counts_scale=counts_scale, seed=seed + i)
        sim.transform["tilt_deg"] = list(tilt)
        maps = denoise_maps(sim.maps)
        mm = kmeans_minerals(maps, k=len(minerals) + 1, seed=seed + i)
        assignment = assign_minerals(mm, minerals=minerals)
        phase_map = assignment.phase_map(mm.clusters)
        reg = register_map(ct, registration_image(phase_map), pixel_size_um=sim.maps.pixel_size_um,
                           origin_um=sim.maps.origin_um, axis=axis, seed=seed + i, min_quality=min_quality,
                           accept_poor=True, max_tilt_deg=max_tilt_deg)
        plane_labels = map_to_plane(phase_map, reg)
        label_planes.append(LabelPlane(axis, reg.index, plane_labels, reg.tilt_deg, vs))  # type: ignore[arg-type]
        true_phase_of_cluster = {
            cl: int(np.bincount(sim.truth[mm.clusters == cl], minlength=len(minerals) + 1).argmax())
            for cl in mm.abundances if np.any(mm.clusters == cl) and assignment.phase[cl] != UNLABELLED
        }
        per_plane.append({
            "plane": p, "found_plane": reg.index,
            "ari": round(float(adjusted_rand_score(sim.truth.ravel(), mm.clusters.ravel())), 4),
            "ari_pure": round(float(adjusted_rand_score(sim.truth[sim.pure], mm.clusters[sim.pure])), 4),
            "pure_fraction": round(float(sim.pure.mean()), 4),
            "assignment": {str(k): v for k, v in assignment.mineral.items()},
            "assignment_correct": all(assignment.phase[cl] == t for cl, t in true_phase_of_cluster.items()),
            "assignment_confidence": {str(k): round(v, 4) for k, v in assignment.confidence.items()},
            "minerals_not_found": list(assignment.not_found),
            "minerals_absent": [m for j, m in phase_names.items() if not np.any(sim.truth == j)],
            "unlabelled_clusters": list(assignment.unlabelled),
            "true_tilt_deg": list(tilt), "found_tilt_deg": list(reg.tilt_deg),
            "true_angle_deg": sim.transform["angle_deg"], "found_angle_deg": reg.params["angle_deg"],
            "true_translation_um": sim.transform["translation_um"],
            "found_translation_um": reg.params["translation_um"],
            "quality": reg.quality, "metric": reg.metric, "converged": reg.converged, "ok": reg.ok,
            "warnings": [*assignment.warnings, *reg.warnings],
        })
    labels = labels_volume(ct, label_planes, erode=erode, phases=phase_names)
    # score the transferred (eroded) labels on the voxels they land on against the truth
    for rec, lp in zip(per_plane, label_planes, strict=True):
        kept = erode_labels(lp.labels, erode)
        hits = total = 0
        for index, sub in lp._replace(labels=kept).voxel_planes(n):
            mask = sub > 0
            if mask.any():
                truth_at = np.asarray(phases_truth.isel({axis: index}).data.compute())
                hits += int(np.sum(sub[mask] == truth_at[mask] + SPARSE_LABEL_OFFSET))
                total += int(mask.sum())
        rec["kept_fraction"] = round(total / kept.size, 4)
        rec["label_accuracy"] = round(hits / total, 4) if total else 0.0
    report = {"axis": axis, "factor": factor, "erode": erode, "phases": {str(k): v for k, v in phase_names.items()},
              "planes": per_plane}
    return CorrelativeLabels(labels, report)
