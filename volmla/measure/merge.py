"""Merging the partial tables of all blocks by label (step 4 of :func:`volmla.measure.measure`).

The partial tables of all blocks (a block's rows are one integer array,
:class:`~volmla.measure.partials.Rows`) are computed with
:func:`volmla.engine.cluster.compute` (the merge is an inherently global reduction) and:

1. the particle rows are merged by label by one compiled scatter per block (sums,
   minima and maxima, :data:`_OPS`), into columns indexed by ``id - min`` when the ids
   span a narrow range (below :data:`_DENSE_MERGE` times the rows), else by the rank of
   the id among the sorted unique ids;
2. the phase-contact rows are summed per phase pair, and pairs whose corrections cancel
   them are dropped;
3. the grain rows are grouped by grain id, each checked to lie in one particle and one
   phase.

Every merged quantity is an integer, so the tables are exactly the same for any
chunking.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from volmla.engine.blocks import DIMS as _AXES
from volmla.errors import VolmlaError
from volmla.measure.partials import _FACES, PARTIAL_COLUMNS, Partial, Rows

__all__ = ["merge_partials"]

_OPS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0], np.int8)
"""How each column of :data:`PARTIAL_COLUMNS` merges: 0 sum, 1 minimum, 2 maximum
(the phase counts after them: sums)."""


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
    :func:`volmla.particles.label.label`) index the merged columns by ``id - min``; others by
    their rank among the sorted unique ids. One compiled scatter per table then sums,
    or takes the minimum or maximum.
    """
    from volmla.measure._scan import scatter_rows

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


def merge_partials(partials: list[Partial]) -> dict[str, Any]:
    """The partial tables merged: ``particles`` (a column dict), ``contacts`` (a column
    dict) and ``grains`` (a DataFrame).

    Parameters
    ----------
    partials
        The computed block and face partials (:func:`volmla.measure.partials.partial_tasks`).

    Returns
    -------
    dict
        ``"particles"``: ``particle_id`` and the merged :data:`PARTIAL_COLUMNS`, then
        ``ph0, ph1, ...``; ``"contacts"``: ``a, b, faces_z, faces_y, faces_x``;
        ``"grains"`` (with grain partials): a DataFrame indexed by ``grain_id``.
    """
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
