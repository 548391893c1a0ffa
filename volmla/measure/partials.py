"""Per-block partial tables: one compiled pass per block, one small task per block face.

Steps 1-3 of :func:`volmla.measure.measure`:

1. the particle volume is cut into its Dask blocks; phases (and grains) are rechunked
   to the same blocks. Each block task reads its own block only (no halo);
2. a compiled kernel (:func:`block_partial`, Numba, :mod:`volmla.measure._scan`) reduces one
   block in a single pass to small partial tables keyed by the global label: voxel
   count per (particle, phase), exact integer coordinate sums, bounding boxes, and the
   faces described in 3. Particle ids index dense per-block tables: offset by the
   block's smallest id when the ids of a block span a narrow range (as after
   :func:`volmla.particles.label.label`), renumbered with ``fastremap`` otherwise. Grain ids
   give ``(grain, particle, phase, count)`` rows;
3. surface area is a voxel-face count (option (b) of the design): every face between a
   particle voxel and a voxel of another id (another particle, or the void, or the
   outside of the volume) counts for the particle. The kernel never visits the
   outside: it counts, per particle and axis, the voxels ``n`` and the pairs ``s`` of
   next neighbours inside the particle, and the particle has ``2 n - 2 s`` faces
   across that axis. A block is so measured as if it were alone; the pairs across the
   face between two blocks are counted by a small task (:func:`face_partial`) on the
   last plane of the one and the first plane of the other, which the block task hands
   on (:func:`volmla.engine.overlap.face_slab`), and subtracted. The same pairs, per
   ordered pair of phases, give the phase-contact matrix: faces between two phases
   inside one particle, and faces between a particle's phase and anything outside the
   particle (the void or another particle); phase-0 voxels inside a particle count as
   background for their neighbours.

:func:`partial_tasks` wires one block task per block and one face task per pair of
adjacent blocks into one hand-built graph.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.typing import DaskCollection

from volmla.engine.blocks import DIMS as _AXES
from volmla.engine.blocks import block_grid, unsigned_ids
from volmla.engine.overlap import face_slab
from volmla.errors import VolmlaError

PARTIAL_COLUMNS = ("n", "sz", "sy", "sx", "z0", "y0", "x0", "z1", "y1", "x1", "faces_z", "faces_y", "faces_x")
"""The columns of :class:`Rows` before the voxel counts per phase ``ph0, ph1, ...``:
voxels, coordinate sums, half-open global box and faces per axis."""

_FACES = PARTIAL_COLUMNS.index("faces_z")


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

__all__ = ["PARTIAL_COLUMNS", "Partial", "Rows", "block_partial", "face_partial", "partial_tasks"]

_DENSE_SPAN = 1 << 18
"""Largest label span of a block indexed by ``label - min`` (above it, or above an
eighth of the block's voxels, the block's labels are renumbered)."""


def _indexing(labels: np.ndarray, phases: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """``(block, base, ids, n_phases)`` such that ``block - base`` indexes ``ids``
    (original ids), and the number of phase ids (largest + 1).

    Labels whose span in the block is small (as after :func:`volmla.particles.label.label`, which
    numbers components block by block) are offset by the smallest, found in one
    vectorised pass; sparse spans are renumbered with ``fastremap`` (a hash table).
    """
    from volmla.measure._scan import block_ranges

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
    labels = unsigned_ids(labels, what="particle")
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
    from volmla.measure._scan import pack_rows, scan

    labels, phases = _check_block(labels, phases)
    block, base, ids, n_phases = _indexing(labels, phases)
    counts, sums, low, high, same, pairs = scan(block, phases, base, ids.size, n_phases)
    # measured alone, the block's particles have 2 n - 2 s faces across each axis
    present, values = pack_rows(counts, sums, low, high, same, np.asarray(origin, np.int64))
    out = {"particles": Rows(ids[present], values), "contacts": _contacts(counts.sum(axis=0), pairs)}
    if grains is not None:  # (grain, particle, phase, count) rows
        # a negative grain id would wrap to a huge one: refused, as a negative particle id is
        out["grains"] = _grain_partial(unsigned_ids(np.asarray(grains), what="grain"), labels, phases)
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
    from volmla.measure._scan import scan_faces

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


def _block_task(labels: np.ndarray, phases: np.ndarray, grains: np.ndarray | None, *, origin: Sequence[int],
                sides: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """:func:`block_partial`, and the block's first (``side`` 0) or last (1) plane along
    an axis for each ``(axis, side)`` a neighbour needs (``planes[(axis, side)] =
    (labels, phases)``)."""
    planes = {(a, side): (face_slab(labels, a, side, 1), face_slab(phases, a, side, 1)) for a, side in sides}
    return {"partial": block_partial(labels, phases, grains, origin=origin), "planes": planes}


def _face_task(low: dict[str, Any], high: dict[str, Any], *, axis: int) -> Partial:
    """:func:`face_partial` between the last plane of ``low`` and the first of ``high``."""
    (lab_lo, ph_lo), (lab_hi, ph_hi) = low["planes"][(axis, 1)], high["planes"][(axis, 0)]
    return face_partial(np.stack([lab_lo.squeeze(axis), lab_hi.squeeze(axis)]),
                        np.stack([ph_lo.squeeze(axis), ph_hi.squeeze(axis)]), axis=axis)


def partial_tasks(lab: da.Array, ph: da.Array, gr: da.Array | None) -> list[Any]:
    """One :func:`block_partial` per block (no halo: each task reads its own block
    only), and one :func:`face_partial` per pair of adjacent blocks, on the two planes
    that meet there; as delayed objects over one hand-built graph (a few tasks per
    block, no per-call tokenising).

    Parameters
    ----------
    lab, ph, gr
        Particle ids, phase ids and grain ids (or None), Dask arrays of the same chunks.

    Returns
    -------
    list of dask.delayed.Delayed
        The partial tables (:data:`Partial`), block tasks and face tasks, to be computed
        together and merged (:func:`volmla.measure.merge.merge_partials`).
    """
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
