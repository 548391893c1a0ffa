"""One correlate step from files to files: what ``volmla correlate maps|register|labels`` do.

Each function checks its inputs and outputs first (an existing output is refused unless
``overwrite=True``), then reads, computes and writes:

1. :func:`make_mineral_map`: element map files -> ``mineral_map.npz/.tif``,
   ``centroids.csv``, ``report.json`` (read, denoise, k-means, assignment, abundances);
2. :func:`make_registration`: a CT volume and a mineral map -> ``NAME.json``,
   ``NAME.tfm``, ``NAME.labels.tif`` (plane search, fit, label plane);
3. :func:`make_label_volume`: a CT volume and registrations -> a sparse label volume
   (OME-Zarr).

The ones that compute on Dask take ``compute_in``: a context entered around the
computing part only, after every check (the command line passes its cluster, so a usage
error never starts one). The whole run of a configuration is
:func:`volmla.correlate.run_from_config`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from volmla.correlate.mapfiles import (
    read_label_planes,
    read_registration_map,
    save_mineral_map,
    save_registration,
)
from volmla.correlate.maps import (
    ElementMaps,
    denoise_maps,
    read_maps,
    read_tiff,
    with_channel,
)
from volmla.correlate.minerals import (
    Assignment,
    MineralMap,
    assign_minerals,
    compare_abundances,
    kmeans_minerals,
)
from volmla.correlate.planes import Axis, _plane_axes
from volmla.correlate.register import Registration, register_map, registration_image
from volmla.correlate.transfer import labels_volume, map_to_plane
from volmla.errors import VolmlaError
from volmla.io.yamlfile import read_mapping

__all__ = ["LabelVolume", "MineralMapResult", "make_label_volume", "make_mineral_map", "make_registration"]

#: A context entered around the part of a step that computes (e.g. a cluster).
ComputeContext = Callable[[], contextlib.AbstractContextManager[Any]]


class MineralMapResult(NamedTuple):
    """What :func:`make_mineral_map` made: the element ``maps`` (denoised, with any extra
    channel), the k-means ``mineral_map``, the ``assignment`` and the ``paths`` written."""

    maps: ElementMaps
    mineral_map: MineralMap
    assignment: Assignment
    paths: dict[str, Path]


def make_mineral_map(
    maps: Sequence[str | Path],
    *,
    out_dir: str | Path,
    minerals: Sequence[str],
    pixel_size_um: float | None = None,
    k: int | None = None,
    table: Mapping[int, str] | str | Path | None = None,
    xrd: Mapping[str, float] | str | Path | None = None,
    denoise: Sequence[str] | None = None,
    ct_slice: str | Path | None = None,
    resample: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> MineralMapResult:
    """k-means mineral map from element map files, with centroids, abundances and assignment.

    Parameters
    ----------
    maps
        Element maps: ``Fe.tif``, ``Si.tif``, ... (stem = element) or an NPZ stack (see
        :func:`volmla.correlate.read_maps`).
    out_dir
        Output folder (``mineral_map.npz``/``.tif``, ``centroids.csv``, ``report.json``).
    minerals
        Mineral names in phase order (void is phase 0).
    pixel_size_um
        Map pixel edge in micrometres (an NPZ may carry it).
    k
        k-means clusters (default minerals + 1).
    table
        Cluster -> mineral table, or a YAML/JSON file of one (default: automatic from
        the element signatures).
    xrd
        Mineral -> abundance (e.g. XRD), or a YAML/JSON file of one, to compare with.
    denoise
        Elements to bilateral-filter, each a channel of the maps (empty: none). None:
        those of the light elements (Na, Mg) the maps hold.
    ct_slice
        A registered CT slice on the map grid (TIFF), clustered as one more channel.
    resample
        Maps of other shapes share the field of view: resample them.
    seed
        k-means seed.
    overwrite
        Replace an existing output.

    Returns
    -------
    MineralMapResult

    Examples
    --------
    >>> r = make_mineral_map(["Fe.tif", "Si.tif"], out_dir="mm", minerals=["quartz", "pyrite"],
    ...                      pixel_size_um=20.0)  # doctest: +SKIP
    >>> r.assignment.mineral  # doctest: +SKIP
    """
    from volmla.io import check_output

    out = Path(out_dir)
    check_output(out / "report.json", overwrite=overwrite)
    written = {(out / name).resolve() for name in ("mineral_map.npz", "mineral_map.tif", "centroids.csv", "report.json")}
    for given in [*maps, *(p for p in (ct_slice, table, xrd) if isinstance(p, str | Path))]:
        if Path(given).resolve() in written:
            raise VolmlaError(f"input {given} is also an output of this command in {out_dir}: write to another folder")
    names = [str(m) for m in minerals]
    if not names:
        raise VolmlaError("minerals must name at least one mineral (void is phase 0), got none")
    k = k if k is not None else len(names) + 1
    cluster_table = read_mapping(table, what="cluster table") if isinstance(table, str | Path) else table
    reference = read_mapping(xrd, what="abundance table") if isinstance(xrd, str | Path) else xrd
    element_maps = read_maps(maps, pixel_size_um=pixel_size_um, resample=resample)
    element_maps = denoise_maps(element_maps, elements=None if denoise is None else list(denoise))
    if ct_slice is not None:
        if not Path(ct_slice).is_file():
            raise VolmlaError(f"ct_slice {ct_slice} does not exist")
        element_maps = with_channel(element_maps, "CT", read_tiff(ct_slice, what="ct_slice"))
    if k < len(names) + 1:
        raise VolmlaError(f"k={k} is fewer than the {len(names) + 1} phases named (void + {', '.join(names)})")
    mineral_map = kmeans_minerals(element_maps, k=k, seed=seed)
    try:
        checked_table = {int(c): str(m) for c, m in cluster_table.items()} if cluster_table else None
    except (TypeError, ValueError):
        raise VolmlaError(f"cluster table {table} must map cluster numbers to mineral names") from None
    assignment = assign_minerals(mineral_map, minerals=names, table=checked_table)
    extra = {}
    if reference is not None:
        extra["reference_abundances"] = compare_abundances(mineral_map, assignment, reference)
    paths = save_mineral_map(out, element_maps, mineral_map, assignment, report=extra)
    return MineralMapResult(element_maps, mineral_map, assignment, paths)


def make_registration(
    ct: str | Path,
    map_path: str | Path,
    *,
    out: str | Path,
    axis: Axis = "z",
    pixel_size_um: float | None = None,
    channel: str = "phases",
    search: tuple[int, int] | None = None,
    step: int | None = None,
    transform: Literal["rigid", "similarity"] = "rigid",
    min_quality: float = 0.05,
    accept_poor: bool = False,
    max_tilt_deg: float = 0.0,
    overwrite: bool = False,
    compute_in: ComputeContext = contextlib.nullcontext,
) -> Registration:
    """Find a mineral map's plane in a CT volume, register the map onto it and write the
    registration with its label plane.

    Parameters
    ----------
    ct
        CT intensity volume (OME-Zarr).
    map_path
        ``mineral_map.npz`` (from :func:`make_mineral_map`) or a phase-id TIFF.
    out
        Registration JSON; ``NAME.tfm`` and ``NAME.labels.tif`` go beside it.
    axis
        Axis normal to the mapped plane.
    pixel_size_um
        Map pixel edge in micrometres (needed for a TIFF).
    channel
        Image to register: ``"phases"`` or an element channel of the NPZ.
    search
        Candidate planes ``[lo, hi)`` (default the whole axis).
    step
        Coarse search step in planes.
    transform
        ``"rigid"`` or ``"similarity"``.
    min_quality
        Least acceptable registration quality (0..1).
    accept_poor
        Keep a poor or non-converged fit (flagged in the JSON) instead of raising.
    max_tilt_deg
        Also search plane tilts within +/- this many degrees (0 = none).
    overwrite
        Replace an existing output.
    compute_in
        Context entered around the registration, after every check.

    Returns
    -------
    Registration
        As :func:`volmla.correlate.register_map`.

    Examples
    --------
    >>> reg = make_registration("ct.zarr", "mm/mineral_map.npz", out="r24.json")  # doctest: +SKIP
    """
    from volmla.io import check_output, open_volume
    from volmla.io.outputs import check_not_in_input

    out = Path(out)
    check_output(out, overwrite=overwrite)
    # the JSON and its .tfm and .labels.tif would go into the input
    check_not_in_input(out, (ct, map_path), advice="write the registration elsewhere")
    m = read_registration_map(map_path, channel=channel, pixel_size_um=pixel_size_um)
    volume = open_volume(ct)
    a, _, _ = _plane_axes(axis)
    n = volume.shape[a]
    if search is not None and not 0 <= search[0] < search[1] <= n:
        raise VolmlaError(f"search range along {axis} must lie within [0, {n}), got [{search[0]}, {search[1]})")
    with compute_in():
        reg = register_map(volume, registration_image(m.image), pixel_size_um=m.pixel_size_um,
                           origin_um=m.origin_um, axis=axis, search=search, step=step, transform=transform,
                           min_quality=min_quality, accept_poor=accept_poor, max_tilt_deg=max_tilt_deg)
    plane = map_to_plane(m.phases, reg)
    save_registration(reg, out, labels_plane=plane, phase_names=m.phase_names)
    return reg


class LabelVolume(NamedTuple):
    """What :func:`make_label_volume` wrote: the volume's ``path``, its ``phase_names``
    and ``warnings`` (one per poor registration among its planes)."""

    path: Path
    phase_names: dict[int, str]
    warnings: list[str]


def make_label_volume(
    ct: str | Path,
    registrations: Sequence[str | Path],
    *,
    out: str | Path,
    erode: int = 2,
    overwrite: bool = False,
    compute_in: ComputeContext = contextlib.nullcontext,
) -> LabelVolume:
    """Write registered mineral-map planes into a sparse training label volume.

    Parameters
    ----------
    ct
        CT volume (OME-Zarr) whose grid the labels take.
    registrations
        Registration JSONs from :func:`make_registration`, made against this volume.
    out
        Sparse label volume (OME-Zarr, uint8, 0 = unlabelled, ``phase + 1`` labelled).
    erode
        Unlabel voxels within this many of a label change.
    overwrite
        Replace an existing output.
    compute_in
        Context entered around the write, after every check.

    Returns
    -------
    LabelVolume

    Examples
    --------
    >>> lv = make_label_volume("ct.zarr", ["r0.json", "r24.json"], out="labels.zarr")  # doctest: +SKIP
    """
    from volmla.io import check_output, open_volume, write_volume

    job = {"command": "correlate labels", "ct": str(ct), "registration": [str(r) for r in registrations],
           "erode": erode}
    check_output(out, overwrite=overwrite, job=job)
    volume = open_volume(ct)
    planes = read_label_planes(registrations, ct_shape=volume.shape,
                               voxel_size_um=volume.attrs.get("voxel_size_um", (1.0, 1.0, 1.0)))
    labels = labels_volume(volume, planes.planes, erode=erode, phases=planes.phase_names or None)
    with compute_in():
        write_volume(labels, out, kind="labels", chunks=[c[0] for c in volume.data.chunks],
                     overwrite=overwrite, job=job)
    return LabelVolume(Path(out), planes.phase_names, planes.warnings)
