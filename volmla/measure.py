"""Per-particle and per-grain measurements in one pass over the chunks.

The tables are reductions, never one mask or one task per label (the
``labeled_comprehension`` anti-pattern):

1. the particle volume is cut into its Dask blocks; phases (and grains) are rechunked
   to the same blocks. Each block task reads its own block only (no halo); in-memory
   NumPy inputs are cut into slabs of whole planes (or rows), which are contiguous
   views: never copied or hashed;
2. a compiled kernel (:func:`block_partial`, Numba, :mod:`volmla._scan`) reduces one
   block in a single pass to small partial tables keyed by the global label: voxel
   count per (particle, phase), exact integer coordinate sums, bounding boxes, and the
   faces described in 3. Particle ids index dense per-block tables: offset by the
   block's smallest id when the ids of a block span a narrow range (as after
   :func:`volmla.label.label`), renumbered with ``fastremap`` otherwise. Grain ids
   give ``(grain, particle, phase, count)`` rows;
3. surface area is a voxel-face count (option (b) of the design): every face between a
   particle voxel and a voxel of another id (another particle, or the void, or the
   outside of the volume) counts for the particle. The kernel never visits the
   outside: it counts, per particle and axis, the voxels ``n`` and the pairs ``s`` of
   next neighbours inside the particle, and the particle has ``2 n - 2 s`` faces
   across that axis. A block is so measured as if it were alone; the pairs across the
   face between two blocks are counted by a small task (:func:`face_partial`) on the
   last plane of the one and the first plane of the other, which the block task hands
   on, and subtracted. The same pairs, per ordered pair of phases, give the
   phase-contact matrix: faces between two phases inside one particle, and faces
   between a particle's phase and anything outside the particle (``background``: the
   void or another particle); phase-0 voxels inside a particle count as background for
   their neighbours. Face counts are kept per axis as integers and turned into areas
   with the per-axis face areas (anisotropic voxels) times the stereological
   correction ``2/3`` (:data:`SURFACE_CORRECTION`): a voxelised surface of isotropic
   orientation has on average 1.5 times its true area, since
   ``E[|n_z| + |n_y| + |n_x|] = 3/2`` for a uniformly distributed unit normal;
4. the partial tables of all blocks (a block's rows are one integer array,
   :class:`Rows`) are computed with :func:`volmla.cluster.compute` (the merge is an
   inherently global reduction) and merged by label by one compiled scatter per
   block (sums, minima and maxima), into columns indexed by ``id - min`` when the ids
   span a narrow range, else by the rank of the id among the sorted unique ids.
   Every merged quantity is an integer, so the tables are exactly the same for any
   chunking;
5. the derived columns follow: volume, equivalent sphere diameter, surface area,
   sphericity ``pi^(1/3) (6 V)^(2/3) / A``, centroid (micrometres, voxel centres at
   ``index * voxel_size`` like :func:`volmla.io.open_volume`'s coordinates), half-open
   bounding box (voxels), ``touches_border`` (bounding box reaches a volume face),
   ``n_grains`` and per phase ``vox_<phase>`` and ``grade_<phase>``.

Accuracy of the surface: for digital spheres the corrected face count is within about
5 % of ``4 pi r^2`` for ``r >= 10`` voxels (tested for several radii); small particles
are biased high (a single voxel has area 4 voxel faces against 4.84 for the sphere of
equal volume, so its sphericity is 1.21), and flat, axis-aligned surfaces are biased
low by the factor 2/3. Sphericity is not clipped to 1.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import dask.array as da
import numpy as np
import pandas as pd
from dask.base import tokenize
from dask.typing import DaskCollection

from volmla.errors import VolmlaError
from volmla.io import as_blocks, block_grid
from volmla.overlap import _face_slab

logger = logging.getLogger(__name__)

SURFACE_CORRECTION = 2.0 / 3.0
"""Stereological factor turning a voxel-face area into a surface-area estimate."""

BACKGROUND = "background"

_AXES = ("z", "y", "x")
PARTIAL_COLUMNS = ("n", "sz", "sy", "sx", "z0", "y0", "x0", "z1", "y1", "x1", "faces_z", "faces_y", "faces_x")
"""The columns of :class:`Rows` before the voxel counts per phase ``ph0, ph1, ...``:
voxels, coordinate sums, half-open global box and faces per axis."""
_FACES = PARTIAL_COLUMNS.index("faces_z")
_OPS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0], np.int8)
"""How each column of :data:`PARTIAL_COLUMNS` merges: 0 sum, 1 minimum, 2 maximum
(the phase counts after them: sums)."""


class Rows(NamedTuple):
    """Partial per-particle rows of one block: ``values[i, j]`` is column ``first + j``
    (:data:`PARTIAL_COLUMNS`, then ``ph0, ph1, ...``) of particle ``ids[i]``."""

    ids: np.ndarray
    """Particle ids (uint64), unique."""
    values: np.ndarray
    """int64, shape ``(len(ids), width)``."""
    first: int = 0
    """The column of ``values[:, 0]``."""


Partial = dict[str, Any]
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
    "GRAIN_COLUMNS",
    "PARTIAL_COLUMNS",
    "SURFACE_CORRECTION",
    "Rows",
    "Tables",
    "block_partial",
    "face_partial",
    "grains",
    "measure",
    "particle_columns",
    "particles",
    "resolve_phase_names",
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


def particle_columns(phase_names: Sequence[str]) -> list[str]:
    """The column names of the particle table for these phase names, in order."""
    return [*_BASE_COLUMNS, *(f"vox_{p}" for p in phase_names), *(f"grade_{p}" for p in phase_names)]


# --------------------------------------------------------------------------- kernel

_BLOCK_BYTES = 16 * 2**20
"""Largest block, in bytes of particle ids, that in-memory arrays are cut into."""

_DENSE_SPAN = 1 << 18
"""Largest label span of a block indexed by ``label - min`` (above it, or above an
eighth of the block's voxels, the block's labels are renumbered)."""


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


def _indexing(labels: np.ndarray, phases: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """``(block, base, ids, n_phases)`` such that ``block - base`` indexes ``ids``
    (original ids), and the number of phase ids (largest + 1).

    Labels whose span in the block is small (as after :func:`volmla.label.label`, which
    numbers components block by block) are offset by the smallest, found in one
    vectorised pass; sparse spans are renumbered with ``fastremap`` (a hash table).
    """
    from volmla._scan import block_ranges

    lo, hi, top = block_ranges(labels, phases)
    if hi < lo:
        return labels, 0, np.zeros(1, np.uint64), top + 1
    if hi - lo < min(_DENSE_SPAN, labels.size // 8):
        ids = np.arange(lo - 1, hi + 1, dtype=np.uint64)
        ids[0] = 0
        return labels, lo - 1, ids, top + 1
    ids, renum = _renumber(labels)
    return renum.astype(np.uint32, copy=False), 0, ids, top + 1


def _check_block(labels: np.ndarray, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C-contiguous unsigned labels and uint8 phases (the inputs themselves when they
    are such already)."""
    labels = np.ascontiguousarray(labels)
    phases = np.ascontiguousarray(phases)
    if labels.shape != phases.shape:
        raise ValueError(f"labels {labels.shape} and phases {phases.shape} differ")
    if labels.dtype.kind != "u":
        if labels.dtype.kind != "i":
            raise VolmlaError(f"particle ids must be integers, got dtype {labels.dtype}")
        if labels.size and int(labels.min()) < 0:
            raise VolmlaError(f"particle ids must not be negative, got {int(labels.min())}")
        labels = labels.view(labels.dtype.str.replace("i", "u"))
    if phases.dtype != np.uint8:
        if phases.dtype.kind not in "iub":
            raise VolmlaError(f"phases must hold integer ids, got dtype {phases.dtype}")
        if phases.size and (int(phases.min()) < 0 or int(phases.max()) > 255):
            raise VolmlaError(f"phase ids must lie in 0..255, got {int(phases.min())}..{int(phases.max())}")
        phases = phases.astype(np.uint8)
    return labels, phases


def _contacts(phase_voxels: np.ndarray, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """The ``contacts`` column dict from the voxels per phase and the pairs of a scan.

    ``phase_voxels[p]`` is the voxel count of phase ``p`` in particles (zeros in a face
    task, which only corrects), ``pairs[axis, p * P + q]`` the pairs of next
    neighbours inside one particle by the phases of the lower and the upper voxel.
    """
    n_phases = phase_voxels.size
    ordered = pairs.reshape(3, n_phases, n_phases)
    both = ordered + ordered.transpose(0, 2, 1)  # unordered pairs (twice on the diagonal)
    # (a, b), 0 < a < b: two phases inside one particle; (0, p): phase p against the outside
    # of its particle: each face of its voxels not shared with the particle, and the faces
    # against phase-0 voxels of the particle
    contact_counts = np.triu(both, 1)
    contact_counts[:, 0, :] = 2 * phase_voxels[None, :] - both.sum(axis=2) + both[:, 0, :]
    contact_counts[:, 0, 0] = 0  # phase-0 voxels on a particle's surface, and the outside
    a, b = np.nonzero(contact_counts.any(axis=0))
    return {"a": a.astype(np.int64), "b": b.astype(np.int64),
            **{f"faces_{ax}": contact_counts[i, a, b] for i, ax in enumerate(_AXES)}}


def block_partial(
    labels: np.ndarray,
    phases: np.ndarray,
    grains: np.ndarray | None = None,
    *,
    origin: Sequence[int] = (0, 0, 0),
) -> Partial:
    """Reduce one block to partial tables keyed by global label.

    The block is measured as if it were alone: the faces of its voxels towards the
    outside of the block count as faces. Where a neighbouring block continues a
    particle, :func:`face_partial` takes those faces off again.

    Parameters
    ----------
    labels, phases
        The block's particle ids and phase ids (0..255).
    grains
        The block's grain ids, or None.
    origin
        Global index of the block's first voxel.

    Returns
    -------
    dict
        ``"particles"``: :class:`Rows` (integer sums, a half-open global box and the
        faces of every particle with voxels in the block, and its voxels per phase);
        ``"contacts"``: a column dict (``a, b, faces_z, faces_y, faces_x`` over phase
        ids, ``a <= b``, ``a = 0`` meaning outside the particle); ``"grains"``: a
        column dict (``grain_id, particle_id, phase, n``) when grains are given.

    Examples
    --------
    Two voxels of particle 7 along x, in a block whose first voxel is (10, 20, 30):

    >>> lab = np.zeros((3, 3, 4), np.uint32); lab[1, 1, 1:3] = 7
    >>> rows = block_partial(lab, (lab > 0).astype(np.uint8), origin=(10, 20, 30))["particles"]
    >>> int(rows.ids[0]), dict(zip(PARTIAL_COLUMNS, rows.values[0].tolist()))
    (7, {'n': 2, 'sz': 22, 'sy': 42, 'sx': 63, 'z0': 11, 'y0': 21, 'x0': 31, 'z1': 12, 'y1': 22, \
'x1': 33, 'faces_z': 4, 'faces_y': 4, 'faces_x': 2})
    >>> rows.values[0, len(PARTIAL_COLUMNS):].tolist()  # voxels of phases 0 and 1
    [0, 2]
    """
    from volmla._scan import pack_rows, scan

    labels, phases = _check_block(labels, phases)
    block, base, ids, n_phases = _indexing(labels, phases)
    counts, sums, low, high, same, pairs = scan(block, phases, base, ids.size, n_phases)
    # measured alone, the block's particles have 2 n - 2 s faces across each axis
    present, values = pack_rows(counts, sums, low, high, same, np.asarray(origin, np.int64))
    out = {"particles": Rows(ids[present], values), "contacts": _contacts(counts.sum(axis=0), pairs)}
    if grains is not None:  # (grain, particle, phase, count) rows
        out["grains"] = _grain_partial(np.asarray(grains), labels, phases)
    return out


def face_partial(labels: np.ndarray, phases: np.ndarray, *, axis: int) -> Partial:
    """The correction for the face between two adjacent blocks along ``axis``.

    :func:`block_partial` counts every face on a block's boundary; where the voxels on
    both sides of a face belong to one particle, this takes the face off again (twice:
    once per side) and moves the phase contact from the outside of the particle to
    the pair of phases.

    Parameters
    ----------
    labels, phases
        Shape ``(2, n, m)``: the last plane of the low block and the first plane of
        the high block (particle ids and phase ids).
    axis
        The axis (0, 1, 2 = z, y, x) the two planes are stacked along.

    Returns
    -------
    dict
        ``"faces"``: :class:`Rows` of the face columns (negative counts, along
        ``axis`` only) of the particles that continue across the face;
        ``"contacts"`` as in :func:`block_partial`, as corrections.

    Examples
    --------
    One particle continues across the face; another ends there.

    >>> lab = np.array([[[1, 3]], [[1, 0]]], np.uint32)
    >>> face_partial(lab, (lab > 0).astype(np.uint8), axis=0)["faces"].values.tolist()
    [[-2, 0, 0]]
    """
    from volmla._scan import scan_faces

    labels, phases = _check_block(labels, phases)
    block, base, ids, n_phases = _indexing(labels, phases)
    one_same, one_pairs = scan_faces(block, phases, base, ids.size, n_phases)
    hit = np.flatnonzero(one_same[0])
    values = np.zeros((hit.size, 3), np.int64)
    values[:, axis] = -2 * one_same[0, hit]
    pairs = np.zeros((3, n_phases * n_phases), np.int64)
    pairs[axis] = one_pairs[0]
    return {"faces": Rows(ids[hit], values, _FACES), "contacts": _contacts(np.zeros(n_phases, np.int64), pairs)}


def _renumber(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, renumbered)``: ``ids[k]`` is the original id of the block's label ``k``
    (``ids[0] = 0``), ``renumbered`` the block with labels ``0..n``."""
    import fastremap

    renum, mapping = fastremap.renumber(block, in_place=False, preserve_zero=True)
    mapping.setdefault(0, 0)
    ids = np.zeros(len(mapping), dtype=np.uint64)
    ids[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(mapping.keys(), np.uint64, len(mapping))
    return ids, renum


def _grain_partial(grains: np.ndarray, labels: np.ndarray, phases: np.ndarray) -> dict[str, np.ndarray]:
    """``(grain_id, particle_id, phase, n)`` rows of one block: the particle and phase
    of every grain, checked to be one each, and its voxels. ``labels`` and ``phases``
    are compared in their own dtypes (no block-sized copies); the rows are widened."""
    gids, renum = _renumber(np.ascontiguousarray(grains))
    n = gids.size - 1
    flat = renum.ravel()
    lab_flat = labels.ravel()
    ph_flat = phases.ravel()
    counts = np.bincount(flat, minlength=n + 1).astype(np.int64)
    owner = np.zeros(n + 1, lab_flat.dtype)
    phase = np.zeros(n + 1, ph_flat.dtype)
    owner[flat] = lab_flat
    phase[flat] = ph_flat
    bad = (flat != 0) & ((owner[flat] != lab_flat) | (phase[flat] != ph_flat))
    if bad.any():
        g = int(gids[flat[np.argmax(bad)]])
        raise VolmlaError(f"grains must each lie in one particle and one phase, but grain {g} spans several")
    if (owner[1:] == 0).any():
        g = int(gids[1:][owner[1:] == 0][0])
        raise VolmlaError(f"grains must lie inside particles, but grain {g} covers background")
    return {"grain_id": gids[1:], "particle_id": owner[1:].astype(np.uint64), "phase": phase[1:].astype(np.int64),
            "n": counts[1:]}


# --------------------------------------------------------------------------- wiring


def _as_dask(x: Any, name: str, like: da.Array | None = None) -> tuple[da.Array, dict[str, Any]]:
    """A Dask array and the attributes of ``x``; in-memory data is cut into views, in
    the blocks of ``like`` when the shapes agree (no rechunk then)."""
    attrs = dict(getattr(x, "attrs", {}) or {})
    data = getattr(x, "data", x) if hasattr(x, "dims") else x
    if not isinstance(data, da.Array):
        data = np.asarray(data)
        if data.ndim != 3:
            raise VolmlaError(f"{name} must be a 3-D (z, y, x) volume, got shape {data.shape}")
        if like is not None and like.shape == data.shape:
            chunks: Any = like.chunks
        else:
            chunks = _slab_chunks(data.shape, data.itemsize, threads=os.cpu_count() or 1)
        data = as_blocks(data, chunks=chunks)
    if data.ndim != 3:
        raise VolmlaError(f"{name} must be a 3-D (z, y, x) volume, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        raise VolmlaError(f"{name} must hold integer ids, got dtype {data.dtype}")
    return data, attrs


def _voxel_size(voxel_size: Any, *attrs: Mapping[str, Any]) -> tuple[float, float, float]:
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
    return names


def _block_task(labels: np.ndarray, phases: np.ndarray, grains: np.ndarray | None, *, origin: Sequence[int],
                sides: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """:func:`block_partial`, and the block's first (``side`` 0) or last (1) plane along
    an axis for each ``(axis, side)`` a neighbour needs (``planes[(axis, side)] =
    (labels, phases)``)."""
    planes = {(a, side): (_face_slab(labels, a, side, 1), _face_slab(phases, a, side, 1)) for a, side in sides}
    return {"partial": block_partial(labels, phases, grains, origin=origin), "planes": planes}


def _face_task(low: dict[str, Any], high: dict[str, Any], *, axis: int) -> Partial:
    """:func:`face_partial` between the last plane of ``low`` and the first of ``high``."""
    (lab_lo, ph_lo), (lab_hi, ph_hi) = low["planes"][(axis, 1)], high["planes"][(axis, 0)]
    return face_partial(np.stack([lab_lo.squeeze(axis), lab_hi.squeeze(axis)]),
                        np.stack([ph_lo.squeeze(axis), ph_hi.squeeze(axis)]), axis=axis)


def _partial_tasks(lab: da.Array, ph: da.Array, gr: da.Array | None) -> list[Any]:
    """One :func:`block_partial` per block (no halo: each task reads its own block
    only), and one :func:`face_partial` per pair of adjacent blocks, on the two planes
    that meet there; as delayed objects over one hand-built graph (a few tasks per
    block, no per-call tokenising)."""
    import operator

    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    token = tokenize(lab, ph, gr)
    block_name, part_name, face_name = (f"measure-{k}-{token}" for k in ("block", "partial", "faces"))
    dsk: dict[Any, Any] = {}
    keys = []
    grid = {idx: (origin, size) for idx, origin, size in block_grid(lab.chunks)}
    for idx, (origin, size) in grid.items():
        sides = [(a, side) for a in range(3) for side, inner in ((0, origin[a] > 0), (1, origin[a] + size[a] < lab.shape[a]))
                 if inner]
        kernel = functools.partial(_block_task, origin=origin, sides=sides)
        dsk[(block_name, *idx)] = (kernel, (lab.name, *idx), (ph.name, *idx), None if gr is None else (gr.name, *idx))
        dsk[(part_name, *idx)] = (operator.getitem, (block_name, *idx), "partial")
        keys.append((part_name, *idx))
        for axis in range(3):
            nxt = tuple(i + (a == axis) for a, i in enumerate(idx))
            if nxt in grid:
                dsk[(face_name, *idx, axis)] = (functools.partial(_face_task, axis=axis), (block_name, *idx),
                                                 (block_name, *nxt))
                keys.append((face_name, *idx, axis))
    deps = [cast(DaskCollection, x) for x in (lab, ph, gr) if x is not None]
    graph = HighLevelGraph.from_collections(block_name, dsk, dependencies=deps)
    return [Delayed(key, graph, layer=block_name) for key in keys]


def _concat(partials: list[Partial], key: str) -> pd.DataFrame:
    """The ``key`` tables of all blocks that have one, stacked (they share their columns)."""
    tables = [p[key] for p in partials if key in p]
    return pd.DataFrame({col: np.concatenate([t[col] for t in tables]) for col in tables[0]})


_DENSE_MERGE = 4
"""Ids are merged in dense arrays when their span is below this many times the rows."""


def _merge_rows(tables: list[Rows]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of all blocks reduced per particle id: the sorted ids, and the merged
    columns (:data:`PARTIAL_COLUMNS`, then the voxels per phase) as the rows of an
    int64 array ``(columns, ids)``.

    Ids that span a range not much wider than the rows (as after
    :func:`volmla.label.label`) index the merged columns by ``id - min``; others by
    their rank among the sorted unique ids. One compiled scatter per table then sums,
    or takes the minimum or maximum.
    """
    from volmla._scan import scatter_rows

    tables = [t for t in tables if t.ids.size]
    width = max([t.first + t.values.shape[1] for t in tables], default=_FACES + 3)
    ops = np.zeros(width, np.int8)
    ops[:_OPS.size] = _OPS
    if not tables:
        return np.zeros(0, np.uint64), np.zeros((width, 0), np.int64)
    lo = min(int(t.ids.min()) for t in tables)
    hi = max(int(t.ids.max()) for t in tables)
    dense = hi - lo < _DENSE_MERGE * sum(t.ids.size for t in tables)
    ids = np.arange(lo, hi + 1, dtype=np.uint64) if dense else np.unique(np.concatenate([t.ids for t in tables]))
    acc = np.zeros((width, ids.size), np.int64)
    acc[ops == 1] = np.iinfo(np.int64).max
    acc[ops == 2] = np.iinfo(np.int64).min
    for t in tables:
        at = (t.ids - np.uint64(lo)).astype(np.intp) if dense else np.searchsorted(ids, t.ids)
        scatter_rows(acc, at, np.ascontiguousarray(t.values, np.int64), t.first, ops)
    if dense:  # a particle with faces has voxels in some block: the ids with voxels
        keep = np.flatnonzero(acc[0])
        if keep.size < ids.size:
            ids, acc = ids[keep], acc[:, keep]
    return ids, acc


def _merge_contacts(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The contact rows of all blocks summed per phase pair ``(a, b)``, sorted, without
    the pairs whose counts cancel to zero."""
    tables = [t for t in tables if t["a"].size]
    n_phases = max([int(t["b"].max()) + 1 for t in tables], default=1)  # a <= b
    faces = np.zeros((3, n_phases, n_phases), np.int64)
    for t in tables:
        for i, ax in enumerate(_AXES):
            np.add.at(faces[i], (t["a"], t["b"]), t[f"faces_{ax}"])
    a, b = np.nonzero(faces.any(axis=0))
    return {"a": a, "b": b, **{f"faces_{ax}": faces[i, a, b] for i, ax in enumerate(_AXES)}}


def _merge(partials: list[Partial]) -> dict[str, Any]:
    """The partial tables merged: ``particles`` (a column dict), ``contacts`` (a column
    dict) and ``grains`` (a DataFrame)."""
    ids, acc = _merge_rows([p[part] for p in partials for part in ("particles", "faces") if part in p])
    columns = [*PARTIAL_COLUMNS, *(f"ph{k}" for k in range(acc.shape[0] - len(PARTIAL_COLUMNS)))]
    merged = {"particle_id": ids, **dict(zip(columns, acc, strict=True))}
    out = {"particles": merged, "contacts": _merge_contacts([p["contacts"] for p in partials if "contacts" in p])}
    if any("grains" in p for p in partials):
        keyed = _concat(partials, "grains").groupby("grain_id", sort=True).agg(
            particle_id=("particle_id", "first"),
            phase=("phase", "first"),
            n=("n", "sum"),
            n_owner=("particle_id", "nunique"),
            n_phase=("phase", "nunique"),
        )
        bad = keyed[(keyed.n_owner > 1) | (keyed.n_phase > 1)]
        if len(bad):
            raise VolmlaError(f"grains must each lie in one particle and one phase, but grain {bad.index[0]} spans several")
        out["grains"] = keyed.drop(columns=["n_owner", "n_phase"])
    return out


def measure(
    particles: Any,
    phases: Any,
    *,
    grains: Any = None,
    voxel_size: float | Sequence[float] | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
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
    merged, names, vs, shape = _measured(particles, phases, grains, voxel_size, phase_names)
    return Tables(
        particles=_particle_frame(merged["particles"], names, vs, shape, merged.get("grains")),
        grains=None if grains is None else _grain_frame(merged["grains"], names, vs),
        contacts=_contact_frame(merged["contacts"], names, vs),
        phase_names=names,
        voxel_size_um=vs,
        shape=shape,
    )


def _measured(particles: Any, phases: Any, grains: Any, voxel_size: float | Sequence[float] | None,
              phase_names: Sequence[str] | Mapping[int, str] | None
              ) -> tuple[dict[str, Any], dict[int, str], tuple[float, float, float], tuple[int, int, int]]:
    """:func:`measure` up to the merged integer tables: ``(merged, phase names, voxel
    size, shape)``, for the callers to build the frames they need."""
    from volmla.cluster import compute

    lab, lab_attrs = _as_dask(particles, "particles")
    ph, ph_attrs = _as_dask(phases, "phases", like=lab)
    if lab.shape != ph.shape:
        raise VolmlaError(f"phases and particles must have the same shape, got {ph.shape} and {lab.shape}")
    vs = _voxel_size(voxel_size, ph_attrs, lab_attrs)
    gr = None
    if grains is not None:
        gr, gr_attrs = _as_dask(grains, "grains", like=lab)
        if gr.shape != lab.shape:
            raise VolmlaError(f"grains and particles must have the same shape, got {gr.shape} and {lab.shape}")
        _voxel_size(vs, ph_attrs, lab_attrs, gr_attrs)  # grains must share the voxel size too
        gr = gr if gr.chunks == lab.chunks else gr.rechunk(lab.chunks)
    ph = ph if ph.chunks == lab.chunks else ph.rechunk(lab.chunks)
    attr_phases = ph_attrs.get("phases") or None
    if phase_names is not None:  # validate early against the attribute, when there is one
        if attr_phases:
            resolve_phase_names(phase_names, attr_phases)
        else:
            resolve_phase_names(phase_names, None, None)
    tasks = _partial_tasks(lab, ph, gr)
    logger.info("measuring %d blocks of %s", math.prod(lab.numblocks), lab.shape)
    partials = compute(tasks, desc="measuring particles", optimize=False)  # the graph is built by hand
    merged = _merge(partials)
    table = merged["particles"]
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
    return merged, names, vs, cast(tuple[int, int, int], tuple(int(s) for s in lab.shape))


def _face_area(faces_z: Any, faces_y: Any, faces_x: Any, vs: tuple[float, float, float]) -> Any:
    vz, vy, vx = vs
    return SURFACE_CORRECTION * (faces_z * (vy * vx) + faces_y * (vz * vx) + faces_x * (vz * vy))


def _particle_frame(
    t: Mapping[str, np.ndarray], names: dict[int, str], vs: tuple[float, float, float], shape: tuple[int, ...],
    grains: pd.DataFrame | None,
) -> pd.DataFrame:
    """The particle table (:func:`particle_columns`) from the merged integer columns."""
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
    out["touches_border"] = border
    if grains is None:
        out["n_grains"] = pd.arrays.IntegerArray(np.zeros(n.size, np.int64), np.ones(n.size, bool))
    else:
        per = grains.groupby("particle_id").size()
        out["n_grains"] = pd.array(per.reindex(out["particle_id"], fill_value=0).to_numpy(np.int64), dtype="Int64")
    for pid, name in names.items():
        out[f"vox_{name}"] = t.get(f"ph{pid}", np.zeros(n.size, np.int64))
    for name in names.values():
        out[f"grade_{name}"] = out[f"vox_{name}"] / n
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


# --------------------------------------------------------------------------- public


def particles(
    particles: Any,
    phases: Any,
    *,
    voxel_size: float | Sequence[float] | None = None,
    grains: Any = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
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

    Returns
    -------
    pandas.DataFrame
        Columns :func:`particle_columns`, sorted by ``particle_id``.

    Examples
    --------
    >>> lab = np.zeros((6, 6, 6), np.uint32); lab[1:3, 1:3, 1:3] = 1
    >>> particles(lab, (lab > 0).astype(np.uint8), voxel_size=1.0).grade_1.tolist()
    [1.0]
    """
    merged, names, vs, shape = _measured(particles, phases, grains, voxel_size, phase_names)
    return _particle_frame(merged["particles"], names, vs, shape, merged.get("grains"))


def grains(
    grains: Any,
    particles: Any,
    phases: Any,
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
        As in :func:`particles`.

    Returns
    -------
    pandas.DataFrame
        One row per grain, sorted by ``grain_id``; ``phase`` holds the phase name.

    Examples
    --------
    >>> lab = np.zeros((6, 6, 6), np.uint32); lab[1:3, 1:3, 1:3] = 1
    >>> grains(lab * 5, lab, lab.astype(np.uint8), voxel_size=1.0).volume_voxels.tolist()
    [8]
    """
    out = measure(particles, phases, grains=grains, voxel_size=voxel_size, phase_names=phase_names).grains
    assert out is not None
    return out
