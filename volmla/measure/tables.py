"""The measurement tables: particles, grains and phase contacts, with their units.

Step 5 of :func:`measure` (steps 1-3: :mod:`volmla.measure.partials`, step 4:
:mod:`volmla.measure.merge`): the inputs are checked and cut into blocks (in-memory
NumPy inputs into slabs of whole planes, or rows, which are contiguous views: never
copied or hashed), the merged integer tables get their derived columns: volume,
equivalent sphere diameter, surface area, sphericity
``pi^(1/3) (6 V)^(2/3) / A``, centroid (micrometres, voxel centres at
``index * voxel_size`` like :func:`volmla.io.open_volume`'s coordinates), half-open
bounding box (voxels), ``touches_border`` (bounding box reaches a volume face, or the
particle reaches the edge of the scan's field of view that its provenance records:
:mod:`volmla.preprocess.fov`),
``n_grains``, per phase ``vox_<phase>`` (voxels classified as the phase) and their sum
over the named phases ``vox_solid``, the partial-volume-aware ``vfrac_<phase>`` and
``vfrac_solid`` (float voxels, :mod:`volmla.measure.fractions`, when the intensity is
given; equal to the counts otherwise) and ``grade_<phase> = vfrac_<phase> /
vfrac_solid``: a grade is over the particle's solid phases only, since void (phase 0)
voxels inside a particle are not a phase. Face counts are kept
per axis as integers and turned into areas with the per-axis face areas (anisotropic
voxels) times the stereological correction ``2/3`` (:data:`SURFACE_CORRECTION`): a
voxelised surface of isotropic orientation has on average 1.5 times its true area,
since ``E[|n_z| + |n_y| + |n_x|] = 3/2`` for a uniformly distributed unit normal.

Accuracy of the surface: for digital spheres the corrected face count is within about
5 % of ``4 pi r^2`` for ``r >= 10`` voxels (tested for several radii); small particles
are biased high (a single voxel has area 4 voxel faces against 4.84 for the sphere of
equal volume, so its sphericity is 1.21), and flat, axis-aligned surfaces are biased
low by the factor 2/3. Sphericity is not clipped to 1.

The module is one piece (about 600 lines): the inputs' checks (an intensity volume
given as particles among them, :func:`_refuse_grey_values`), the phase names and the
voxel size feed the frames directly, and :func:`measure`, :func:`particle_table` and
:func:`grain_table` are three views of the same merged tables.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import dask.array as da
import numpy as np
import pandas as pd

from volmla.engine.blocks import DIMS as _AXES
from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.measure.fractions import (
    DEFAULT_RESOLVE,
    PhaseLevels,
    check_resolve,
    context_volume,
    fraction_columns,
    fraction_tasks,
    merge_fractions,
    phase_levels,
)
from volmla.measure.merge import merge_partials
from volmla.measure.partials import partial_tasks
from volmla.preprocess.fov import edge_ids, from_provenance
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

SURFACE_CORRECTION = 2.0 / 3.0
"""Stereological factor turning a voxel-face area into a surface-area estimate."""

BACKGROUND = "background"

_BASE_COLUMNS = [
    "particle_id",
    "volume_voxels",
    "volume_um3",
    "esd_um",
    "surface_um2",
    "sphericity",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "bbox_z0",
    "bbox_y0",
    "bbox_x0",
    "bbox_z1",
    "bbox_y1",
    "bbox_x1",
    "touches_border",
    "n_grains",
]
GRAIN_COLUMNS = ["grain_id", "particle_id", "phase", "volume_voxels", "volume_um3"]
CONTACT_COLUMNS = ["phase_a", "phase_b", "faces_z", "faces_y", "faces_x", "area_um2"]

__all__ = [
    "BACKGROUND",
    "CONTACT_COLUMNS",
    "GRAIN_COLUMNS",
    "SOLID",
    "SURFACE_CORRECTION",
    "Tables",
    "grain_table",
    "measure",
    "particle_columns",
    "particle_table",
    "resolve_phase_names",
    "resolve_voxel_size",
]


class Tables(NamedTuple):
    """What one measurement pass returns."""

    particles: pd.DataFrame
    """One row per particle (columns: :func:`particle_columns`)."""
    grains: pd.DataFrame | None
    """One row per grain (:data:`GRAIN_COLUMNS`), or None without a grain volume."""
    contacts: pd.DataFrame
    """Phase-contact matrix in long form (:data:`CONTACT_COLUMNS`), ``phase_b`` may be
    ``"background"``; areas carry the 2/3 correction."""
    phase_names: dict[int, str]
    """Phase id -> name used for the columns."""
    voxel_size_um: tuple[float, float, float]
    shape: tuple[int, int, int]
    levels: PhaseLevels | None = None
    """The pure grey levels and noise sigma the phase volumes were apportioned with
    (:func:`volmla.measure.fractions.phase_levels`), or None without an intensity."""


SOLID = "solid"
"""The suffix of the columns summed over the named phases (``vox_solid``,
``vfrac_solid``): reserved, no phase may be named so."""


def particle_columns(phase_names: Sequence[str]) -> list[str]:
    """The column names of the particle table for these phase names, in order.

    Parameters
    ----------
    phase_names
        The phase names, in phase-id order.

    Returns
    -------
    list of str

    Examples
    --------
    >>> particle_columns(["q"])[-5:]
    ['vox_q', 'vox_solid', 'vfrac_q', 'vfrac_solid', 'grade_q']
    """
    return [*_BASE_COLUMNS, *(f"vox_{p}" for p in phase_names), f"vox_{SOLID}", *(f"vfrac_{p}" for p in phase_names),
            f"vfrac_{SOLID}", *(f"grade_{p}" for p in phase_names)]

_BLOCK_BYTES = 16 * 2**20
"""Largest block, in bytes of particle ids, that in-memory arrays are cut into."""


def _slab_chunks(shape: tuple[int, ...], itemsize: int, *, threads: int = 1) -> tuple[int, int, int]:
    """Blocks that are C-contiguous views of a C-ordered array (whole planes, else
    whole rows of one plane), so that the kernel reads them in place: the measurement
    needs no halo, so the blocks' shape costs nothing else.

    A block holds at most :data:`_BLOCK_BYTES`, and small volumes are cut into one
    block per thread (of 1 MiB at least) of about equal size. More, smaller blocks
    balance the threads better but cost more than they gain: each block adds ~0.5 ms
    of tables and scheduling (10,000 particles in 176^3 voxels: 12 ms in two slabs,
    14 ms in four, on two cores).

    Examples
    --------
    >>> _slab_chunks((376, 376, 376), 4), _slab_chunks((4, 5000, 5000), 4)
    ((29, 376, 376), (1, 838, 5000))
    >>> _slab_chunks((176, 176, 176), 4, threads=2)
    (88, 176, 176)
    """
    nz, ny, nx = shape
    row = max(1, nx * itemsize)
    plane = row * ny
    target = min(_BLOCK_BYTES, max(2**20, plane * nz // threads))
    if plane > target:
        return (1, max(1, min(ny, target // row)), nx)
    slabs = max(1, -(-nz // max(1, target // plane)))  # the fewest slabs of that size ...
    return (max(1, -(-nz // slabs)), ny, nx)  # ... evened out


def _id_volume(x: VolumeLike, name: str, like: da.Array | None = None) -> tuple[da.Array, dict[str, Any]]:
    """A Dask array of integer ids and the attributes of ``x``
    (:func:`volmla.engine.blocks.as_volume`); in-memory data is cut into views, in the
    blocks of ``like`` when the shapes agree (no rechunk then), else into slabs
    (:func:`_slab_chunks`)."""
    data = getattr(x, "data", x) if hasattr(x, "dims") else x
    chunks: Any = None
    if not isinstance(data, da.Array):
        data = np.asarray(data)
        if data.ndim == 3:
            if like is not None and like.shape == data.shape:
                chunks = like.chunks
            else:
                chunks = _slab_chunks(data.shape, data.itemsize, threads=os.cpu_count() or 1)
    volume = as_volume(x if hasattr(x, "dims") else data, name=name, chunks=chunks, integer=True, allow_empty=True)
    if volume.data.dtype == np.bool_:
        raise VolmlaError(f"{name} must hold integer ids, got dtype {volume.data.dtype}")
    return volume.data, volume.attrs


def resolve_voxel_size(
    voxel_size: float | Sequence[float] | None, *attrs: Mapping[str, Any]
) -> tuple[float, float, float]:
    """The voxel size of a measurement: the given one, else the volumes' ``voxel_size_um``.

    Raises :class:`~volmla.errors.VolmlaError` when the volumes' attributes disagree, or
    when no voxel size is given and none is recorded.

    Parameters
    ----------
    voxel_size
        Micrometres ``(z, y, x)`` or one number, or None for the attribute.
    *attrs
        The attributes of the volumes measured together.

    Returns
    -------
    tuple of float
        ``(z, y, x)`` micrometres.

    Examples
    --------
    >>> resolve_voxel_size(None, {"voxel_size_um": [2.0, 2.0, 2.0]}, {})
    (2.0, 2.0, 2.0)
    """
    from volmla.io import normalise_voxel_size

    sizes = [tuple(float(v) for v in a["voxel_size_um"]) for a in attrs if a.get("voxel_size_um") is not None]
    for s in sizes[1:]:
        if not np.allclose(s, sizes[0], rtol=1e-9, atol=0):
            raise VolmlaError(f"phases and particles must share one voxel size, got {list(sizes[0])} and {list(s)} um")
    if voxel_size is None:
        if not sizes:
            raise VolmlaError("voxel_size is missing and the volumes carry no voxel_size_um attribute")
        return normalise_voxel_size(sizes[0])
    return normalise_voxel_size(voxel_size)


def resolve_phase_names(
    phase_names: Sequence[str] | Mapping[int, str] | None,
    attr_phases: Mapping[Any, str] | None,
    max_phase: int | None = None,
) -> dict[int, str]:
    """Phase id -> name: the given names (ids 1..N), else the volume's ``phases``
    attribute, else ``"1", "2", ...`` up to ``max_phase``.

    Raises :class:`~volmla.errors.VolmlaError` when more names are given than phases
    exist (per the attribute, or per ``max_phase`` without one), or names repeat.

    Parameters
    ----------
    phase_names
        Names of phases 1..N (a list, or one comma-separated string) or ``{id: name}``,
        or None.
    attr_phases
        The phase volume's ``phases`` attribute (``{id: name}``), or None.
    max_phase
        The largest phase id present, when known.

    Returns
    -------
    dict
        Phase id -> name.

    Examples
    --------
    >>> resolve_phase_names(["quartz", "pyrite"], None, 2)
    {1: 'quartz', 2: 'pyrite'}
    """
    attr = {int(k): str(v) for k, v in (attr_phases or {}).items()}
    if phase_names is None:
        if attr:
            names = dict(sorted(attr.items()))
        else:
            names = {i: str(i) for i in range(1, (max_phase or 0) + 1)}
    else:
        if isinstance(phase_names, Mapping):
            names = {int(k): str(v) for k, v in phase_names.items()}
        else:
            if isinstance(phase_names, str):
                phase_names = [p for p in phase_names.split(",")]
            if not isinstance(phase_names, Sequence):
                raise VolmlaError(f"phase names must be a list of names, one comma-separated string or "
                                  f"{{id: name}}, got {phase_names!r}")
            names = {i + 1: str(v).strip() for i, v in enumerate(phase_names)}
        if any(not v for v in names.values()):
            raise VolmlaError(f"phase names must not be empty, got {list(names.values())}")
        available = len(attr) if attr else max_phase
        if available is not None and len(names) > available:
            source = "the phase volume's phases attribute" if attr else "the phase volume's largest phase id"
            raise VolmlaError(
                f"phase names: {len(names)} given ({','.join(names.values())}), but {source} allows {available}"
            )
    if len(set(names.values())) != len(names):
        raise VolmlaError(f"phase names must be distinct, got {list(names.values())}")
    if BACKGROUND in names.values():
        raise VolmlaError(f"phase name {BACKGROUND!r} is reserved for the outside of particles")
    if SOLID in names.values():
        raise VolmlaError(f"phase name {SOLID!r} is reserved for the sum over the phases (vox_solid, vfrac_solid)")
    return names


def measure(
    particles: VolumeLike,
    phases: VolumeLike,
    *,
    grains: VolumeLike | None = None,
    voxel_size: float | Sequence[float] | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    intensity: VolumeLike | None = None,
    levels: PhaseLevels | None = None,
    resolve: float = DEFAULT_RESOLVE,
) -> Tables:
    """Particle table, grain table and phase-contact matrix in one pass over the blocks.

    Parameters
    ----------
    particles
        Particle ids (uint32/uint64, 0 = background), lazy ``xarray.DataArray`` or Dask
        array (NumPy accepted for small data).
    phases
        Phase ids (uint8, 0 = void), same shape.
    grains
        Grain ids (each grain inside one particle and one phase), same shape, or None.
    voxel_size
        Micrometres ``(z, y, x)`` or one number; default the volumes' ``voxel_size_um``.
    phase_names
        Names of phases 1..N (list) or ``{id: name}``; default the phase volume's
        ``phases`` attribute, else ``"1", "2", ...``.
    intensity
        The CT volume the phases come from: boundary voxels are then apportioned
        between the pure grey levels (``vfrac_<phase>``, :mod:`volmla.measure.fractions`)
        and the grades use those volumes. Without it ``vfrac_<phase>`` equals
        ``vox_<phase>``.
    levels
        The pure grey levels and noise sigma (:func:`volmla.measure.fractions.phase_levels`);
        default: measured on these volumes (one more pass).
    resolve
        Grey levels closer than this many noise sigmas are not apportioned between.

    Returns
    -------
    Tables
        ``particles``, ``grains`` (None without a grain volume), ``contacts``,
        ``phase_names``, ``voxel_size_um``, ``shape``.

    Examples
    --------
    >>> lab = np.zeros((8, 8, 8), np.uint32); lab[2:5, 2:5, 2:5] = 3
    >>> t = measure(lab, (lab > 0).astype(np.uint8), voxel_size=2.0)
    >>> int(t.particles.volume_voxels[0]), float(t.particles.volume_um3[0])
    (27, 216.0)
    """
    merged, names, vs, shape = _measured(particles, phases, grains, voxel_size, phase_names, intensity, levels, resolve)
    return Tables(
        particles=_particle_frame(merged["particles"], names, vs, shape, merged.get("grains"), merged.get("fractions"),
                           merged.get("fov_edge")),
        grains=None if grains is None else _grain_frame(merged["grains"], names, vs),
        contacts=_contact_frame(merged["contacts"], names, vs),
        phase_names=names,
        voxel_size_um=vs,
        shape=shape,
        levels=merged.get("levels"),
    )


def _measured(particles: VolumeLike, phases: VolumeLike, grains: VolumeLike | None, voxel_size: float | Sequence[float] | None,
              phase_names: Sequence[str] | Mapping[int, str] | None, intensity: VolumeLike | None = None,
              levels: PhaseLevels | None = None, resolve: float = DEFAULT_RESOLVE,
              ) -> tuple[dict[str, Any], dict[int, str], tuple[float, float, float], tuple[int, int, int]]:
    """:func:`measure` up to the merged integer tables: ``(merged, phase names, voxel
    size, shape)``, for the callers to build the frames they need."""
    from volmla.engine.cluster import compute

    lab, lab_attrs = _id_volume(particles, "particles")
    ph, ph_attrs = _id_volume(phases, "phases", like=lab)
    if lab.shape != ph.shape:
        raise VolmlaError(f"phases and particles must have the same shape, got {ph.shape} and {lab.shape}")
    vs = resolve_voxel_size(voxel_size, ph_attrs, lab_attrs)
    gr = None
    if grains is not None:
        gr, gr_attrs = _id_volume(grains, "grains", like=lab)
        if gr.shape != lab.shape:
            raise VolmlaError(f"grains and particles must have the same shape, got {gr.shape} and {lab.shape}")
        resolve_voxel_size(vs, ph_attrs, lab_attrs, gr_attrs)  # grains must share the voxel size too
        gr = gr if gr.chunks == lab.chunks else gr.rechunk(lab.chunks)
    ph = ph if ph.chunks == lab.chunks else ph.rechunk(lab.chunks)
    attr_phases = ph_attrs.get("phases") or None
    if phase_names is not None:  # validate early against the attribute, when there is one
        if attr_phases:
            resolve_phase_names(phase_names, attr_phases)
        else:
            resolve_phase_names(phase_names, None, None)
    tasks = partial_tasks(lab, ph, gr)
    n_partial = len(tasks)
    fov = from_provenance(lab_attrs)  # the scan's field of view the particles were labelled in, if any
    if intensity is not None:
        shape = tuple(getattr(intensity, "shape", np.shape(intensity)))
        if shape != lab.shape:
            raise VolmlaError(f"intensity and particles must have the same shape, got {shape} and {lab.shape}")
        # NaN or an infinity has no grey level: refused as the levels' first pass reads it
        image = as_volume(intensity, name="intensity", chunks=lab.chunks, finite=True).data
        if image.shape != lab.shape:
            raise VolmlaError(f"intensity and particles must have the same shape, got {image.shape} and {lab.shape}")
        check_resolve(resolve)
        image = image if image.chunks == lab.chunks else image.rechunk(lab.chunks)
        ctx = context_volume(lab, ph)
        if levels is None:
            levels = phase_levels(image, ph, lab, context=ctx, field_of_view=fov)
        tasks = [*tasks, *fraction_tasks(lab, ph, image, levels=levels, resolve=resolve, context=ctx)]
    n_measured = len(tasks)
    if fov is not None:  # particles cut by the scan's field of view: flagged as touching the border
        tasks = [*tasks, *edge_ids(lab, fov)]
    logger.info("measuring %d blocks of %s", math.prod(lab.numblocks), lab.shape)
    partials = compute(tasks, desc="measuring particles", optimize=False)  # the graph is built by hand
    merged = merge_partials(partials[:n_partial])
    if intensity is not None:
        merged["fractions"] = merge_fractions(partials[n_partial:n_measured])
        merged["levels"] = levels
    if fov is not None:
        merged["fov_edge"] = np.unique(np.concatenate([np.asarray(p, np.uint64) for p in partials[n_measured:]]))
    table = merged["particles"]
    shape = cast(tuple[int, int, int], tuple(int(s) for s in lab.shape))
    _refuse_grey_values(table, shape)
    ph_cols = [c for c in table if c.startswith("ph")]
    present = [int(c[2:]) for c in ph_cols if table[c].sum() > 0 and int(c[2:]) > 0]
    contact_ids = {*merged["contacts"]["a"].tolist(), *merged["contacts"]["b"].tolist()}
    max_phase = max([*present, *(int(i) for i in contact_ids)], default=0)
    names = resolve_phase_names(phase_names, attr_phases, max_phase)
    unnamed = [p for p in present if p not in names]
    if unnamed:
        raise VolmlaError(
            f"phase names cover ids {sorted(names)}, but particles hold phase id(s) {unnamed}: name every phase"
        )
    return merged, names, vs, shape


_GREY_SPAN = 0.9
"""A particle whose bounding box spans at least this fraction of the volume along every
axis is spread over the whole volume (:func:`_refuse_grey_values`)."""

_GREY_MIN_IDS = 10
"""This many particles or fewer are never read as grey values by their spread."""


def _refuse_grey_values(t: Mapping[str, np.ndarray], shape: tuple[int, int, int]) -> None:
    """Refuse merged particle columns that read as the grey values of an intensity volume.

    An intensity volume passed as particles is measured as one "particle" per grey
    value. Two signs tell it from labels, and neither fires on real particle labels:

    1. **no background, though there is void**: particle labels leave the void outside
       the particles (phase 0: resin, air) as 0, while a grey volume holds a 0 only by
       chance. Refused: two or more ids that cover every voxel, some of them void. Kept:
       one id filling the volume (a crop inside one particle), and ids that tile a
       volume without void (the fragments of a solid block, as
       :func:`volmla.breakage.break_volume` makes them);
    2. **spread everywhere**: each grey value is scattered over the whole volume, so
       its bounding box spans (nearly) all of it along every axis, while a particle is
       compact. With more than :data:`_GREY_MIN_IDS` ids, more than half of them
       spanning :data:`_GREY_SPAN` of every axis is refused (a few large particles may
       span a small volume; most of many cannot).

    The counts and boxes are the merged table's own (no extra pass).
    """
    n = t["n"]
    void = t.get("ph0")  # the voxels of phase 0 inside each particle
    if n.size > 1 and int(n.sum()) == math.prod(shape) and void is not None and int(void.sum()) > 0:
        raise VolmlaError("particles volume has no background (0) voxel: is it an intensity volume? "
                          "particle labels have 0 as background")
    if n.size > _GREY_MIN_IDS:
        spread = np.ones(n.size, bool)
        for a, ax in enumerate(_AXES):
            spread &= (t[f"{ax}1"] - t[f"{ax}0"]) >= _GREY_SPAN * shape[a]
        if 2 * int(spread.sum()) > n.size:
            raise VolmlaError(
                f"particles volume looks like grey values, not labels: {int(spread.sum())} of its {n.size} ids "
                f"are each scattered over at least {_GREY_SPAN:.0%} of the volume along every axis; "
                "is it an intensity volume? give particle labels (0 = background)"
            )


def _face_area(faces_z: Any, faces_y: Any, faces_x: Any, vs: tuple[float, float, float]) -> Any:
    vz, vy, vx = vs
    return SURFACE_CORRECTION * (faces_z * (vy * vx) + faces_y * (vz * vx) + faces_x * (vz * vy))


def _particle_frame(
    t: Mapping[str, np.ndarray], names: dict[int, str], vs: tuple[float, float, float], shape: tuple[int, ...],
    grains: pd.DataFrame | None, fractions: tuple[np.ndarray, np.ndarray] | None = None,
    fov_edge: np.ndarray | None = None,
) -> pd.DataFrame:
    """The particle table (:func:`particle_columns`) from the merged integer columns
    (``fov_edge``: ids that reach the edge of the scan's field of view, also border)."""
    n = t["n"]
    volume = n * (vs[0] * vs[1] * vs[2])
    area = _face_area(t["faces_z"].astype(np.float64), t["faces_y"].astype(np.float64), t["faces_x"].astype(np.float64), vs)
    out: dict[str, Any] = {"particle_id": t["particle_id"].astype(np.uint64, copy=False), "volume_voxels": n,
                           "volume_um3": volume, "esd_um": np.cbrt(6.0 * volume / np.pi), "surface_um2": area}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["sphericity"] = np.where(area > 0, np.pi ** (1 / 3) * (6.0 * volume) ** (2 / 3) / np.where(area > 0, area, 1), np.nan)
    for a, ax in enumerate(_AXES):
        out[f"centroid_{ax}"] = t[f"s{ax}"] / n * vs[a]
    for ax in _AXES:
        out[f"bbox_{ax}0"] = t[f"{ax}0"]
    for ax in _AXES:
        out[f"bbox_{ax}1"] = t[f"{ax}1"]
    border = np.zeros(n.size, bool)
    for a, ax in enumerate(_AXES):
        border |= (t[f"{ax}0"] == 0) | (t[f"{ax}1"] == shape[a])
    if fov_edge is not None:
        border |= np.isin(out["particle_id"], fov_edge)
    out["touches_border"] = border
    if grains is None:
        out["n_grains"] = pd.arrays.IntegerArray(np.zeros(n.size, np.int64), np.ones(n.size, bool))
    else:
        per = grains.groupby("particle_id").size()
        out["n_grains"] = pd.array(per.reindex(out["particle_id"], fill_value=0).to_numpy(np.int64), dtype="Int64")
    for pid, name in names.items():
        out[f"vox_{name}"] = t.get(f"ph{pid}", np.zeros(n.size, np.int64))
    out[f"vox_{SOLID}"] = sum((out[f"vox_{name}"] for name in names.values()), np.zeros(n.size, np.int64))
    if fractions is None:
        frac = {pid: out[f"vox_{name}"].astype(np.float64) for pid, name in names.items()}
    else:
        frac = fraction_columns(*fractions, out["particle_id"], list(names))
    for pid, name in names.items():
        out[f"vfrac_{name}"] = frac[pid]
    solid = sum((frac[pid] for pid in names), np.zeros(n.size, np.float64))
    out[f"vfrac_{SOLID}"] = solid
    with np.errstate(divide="ignore", invalid="ignore"):
        for pid, name in names.items():  # over the solid phases; a particle without any: NaN
            out[f"grade_{name}"] = np.where(solid > 0, frac[pid] / np.where(solid > 0, solid, 1.0), np.nan)
    return pd.DataFrame(out, copy=False)  # new arrays and rows of the merged array: no consolidating copy


def _grain_frame(g: pd.DataFrame, names: dict[int, str], vs: tuple[float, float, float]) -> pd.DataFrame:
    phase_ids = g["phase"].to_numpy(np.int64)
    unknown = sorted(set(phase_ids.tolist()) - set(names))
    label = {**{k: v for k, v in names.items()}, **{u: "void" if u == 0 else str(u) for u in unknown}}
    out = pd.DataFrame(
        {
            "grain_id": g.index.to_numpy().astype(np.uint64),
            "particle_id": g["particle_id"].to_numpy(np.uint64),
            "phase": [label[p] for p in phase_ids],
            "volume_voxels": g["n"].to_numpy(np.int64),
        }
    )
    out["volume_um3"] = out["volume_voxels"].to_numpy(np.float64) * (vs[0] * vs[1] * vs[2])
    return out


def _contact_frame(c: Mapping[str, np.ndarray], names: dict[int, str], vs: tuple[float, float, float]) -> pd.DataFrame:
    def name(p: int) -> str:
        return BACKGROUND if p == 0 else names.get(p, str(p))

    keep = (c["a"] != 0) | (c["b"] != 0)  # phase-0 voxels on a particle's surface: not a phase
    a, b = c["a"][keep], c["b"][keep]
    # a <= b, a = 0 is the outside of the particle: put the phase first
    first, second = np.where(a == 0, b, a), np.where(a == 0, a, b)
    faces = {f"faces_{ax}": c[f"faces_{ax}"][keep].astype(np.int64) for ax in _AXES}
    return pd.DataFrame({
        "phase_a": pd.array([name(int(p)) for p in first], dtype="str"),
        "phase_b": pd.array([name(int(p)) for p in second], dtype="str"),
        **faces,
        "area_um2": _face_area(faces["faces_z"].astype(np.float64), faces["faces_y"].astype(np.float64),
                               faces["faces_x"].astype(np.float64), vs),
    }, columns=CONTACT_COLUMNS)


def particle_table(
    particles: VolumeLike,
    phases: VolumeLike,
    *,
    voxel_size: float | Sequence[float] | None = None,
    grains: VolumeLike | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    intensity: VolumeLike | None = None,
    levels: PhaseLevels | None = None,
    resolve: float = DEFAULT_RESOLVE,
) -> pd.DataFrame:
    """The per-particle table (one pass over the blocks, merged by label).

    Parameters
    ----------
    particles
        Particle ids, lazy (xarray / Dask), 0 = background.
    phases
        Phase ids, same shape.
    voxel_size
        Micrometres; default the volumes' ``voxel_size_um`` attribute.
    grains
        Grain ids, for ``n_grains`` (else ``n_grains`` is missing, ``<NA>``).
    phase_names
        Names of phases 1..N (default: the phase volume's attribute, else ``"1", ...``).
    intensity, levels, resolve
        Partial-volume-aware phase volumes, as in :func:`measure`.

    Returns
    -------
    pandas.DataFrame
        Columns :func:`particle_columns`, sorted by ``particle_id``.

    Examples
    --------
    >>> lab = np.zeros((6, 6, 6), np.uint32); lab[1:3, 1:3, 1:3] = 1
    >>> particle_table(lab, (lab > 0).astype(np.uint8), voxel_size=1.0).grade_1.tolist()
    [1.0]
    """
    merged, names, vs, shape = _measured(particles, phases, grains, voxel_size, phase_names, intensity, levels, resolve)
    return _particle_frame(merged["particles"], names, vs, shape, merged.get("grains"), merged.get("fractions"),
                           merged.get("fov_edge"))


def grain_table(
    grains: VolumeLike,
    particles: VolumeLike,
    phases: VolumeLike,
    *,
    voxel_size: float | Sequence[float] | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """The per-grain table: ``grain_id, particle_id, phase, volume_voxels, volume_um3``.

    Parameters
    ----------
    grains
        Grain ids (a grain is a connected component of one phase in one particle).
    particles, phases
        The particle and phase volumes, same shape.
    voxel_size
        Micrometres; default the volumes' ``voxel_size_um`` attribute.
    phase_names
        As in :func:`particle_table`.

    Returns
    -------
    pandas.DataFrame
        One row per grain, sorted by ``grain_id``; ``phase`` holds the phase name.

    Examples
    --------
    >>> lab = np.zeros((6, 6, 6), np.uint32); lab[1:3, 1:3, 1:3] = 1
    >>> grain_table(lab * 5, lab, lab.astype(np.uint8), voxel_size=1.0).volume_voxels.tolist()
    [8]
    """
    out = measure(particles, phases, grains=grains, voxel_size=voxel_size, phase_names=phase_names).grains
    assert out is not None
    return out
