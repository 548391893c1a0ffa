"""Stereology: virtual 2-D sections of the 3-D volumes, analysed as a 2-D MLA would.

1. :func:`sections` reads every ``k``-th plane along each axis on its own (a lazy slice
   of the Dask arrays from :func:`volmla.engine.blocks.as_volume`), a few planes per
   task;
2. :func:`section_table` finds the 2-D particles of one plane: the 8-connected pieces
   of each particle's section (``cc3d``), their parent particle, area and pixels per
   phase (the 2-D grades), and whether they touch the section's edge;
3. :func:`stereology` computes the 2-D LD with Eq. 1 on areas, leaving out the 2-D
   particles touching the section's edge (and the sections of border particles unless
   ``include_border``), beside the 3-D LD of the same phase. 2-D liberation
   overestimates 3-D liberation for intergrown particles (the stereological bias).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.liberation.stats import _check_threshold, _ld, _phases, _population
from volmla.types import VolumeLike

__all__ = ["section_table", "sections", "stereology"]


def section_table(labels: np.ndarray, phases: np.ndarray) -> dict[str, np.ndarray]:
    """2-D particles of one section: their parent particle, area, per-phase pixels.

    The 2-D particles are the 8-connected pieces of each particle id in the plane
    (``cc3d`` multilabel); ``edge`` flags those touching the section's edge.

    Parameters
    ----------
    labels
        Particle ids of one plane (2-D).
    phases
        Phase ids of the same plane.

    Returns
    -------
    dict
        Per 2-D particle: ``particle_id``, ``area`` (pixels), ``edge`` and ``ph<id>``
        (pixels of each phase id up to the largest in the plane).

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [1, 0, 0, 0]], np.uint32)
    >>> t = section_table(lab, (lab > 0).astype(np.uint8))
    >>> t["particle_id"].tolist(), t["area"].tolist()
    ([1, 2, 1], [2, 2, 1])
    """
    import cc3d

    lab = np.ascontiguousarray(labels)
    ph = np.asarray(phases).astype(np.int64)
    comp = cc3d.connected_components(lab, connectivity=8)
    n = int(comp.max())
    if n == 0:
        return {"particle_id": np.zeros(0, np.uint64), "area": np.zeros(0, np.int64), "edge": np.zeros(0, bool)}
    flat = comp.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)[1:]
    parent = np.zeros(n + 1, np.uint64)
    parent[flat] = lab.ravel()
    n_ph = int(ph.max()) + 1
    per = np.bincount(flat * n_ph + ph.ravel(), minlength=(n + 1) * n_ph).reshape(n + 1, n_ph)[1:]
    edge_ids = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    edge = np.isin(np.arange(1, n + 1), edge_ids)
    out = {"particle_id": parent[1:], "area": area.astype(np.int64), "edge": edge}
    for p in range(n_ph):
        out[f"ph{p}"] = per[:, p].astype(np.int64)
    return out


def _section_task(planes: list[tuple[int, int, Any, Any]]) -> list[dict[str, Any]]:
    out = []
    for axis, index, lab, ph in planes:
        t = section_table(np.asarray(lab), np.asarray(ph))
        t["axis"] = np.full(t["area"].size, axis, np.int64)
        t["plane"] = np.full(t["area"].size, index, np.int64)
        out.append(t)
    return out


def sections(
    phases: VolumeLike,
    particles: VolumeLike,
    *,
    step: int = 10,
    phase_names: Mapping[int, str],
    planes_per_task: int = 8,
) -> pd.DataFrame:
    """Virtual 2-D sections: every ``step``-th plane along z, y and x, analysed in 2-D.

    Only those planes are read (lazy slices of the Dask arrays), a few planes per task.
    Planes sit at ``step // 2, step // 2 + step, ...`` along each axis.

    Parameters
    ----------
    phases, particles
        Phase and particle volumes, same shape.
    step
        Every ``step``-th plane per axis.
    phase_names
        Phase id -> name (:attr:`volmla.measure.Tables.phase_names`): the
        ``vox_<phase>`` columns.
    planes_per_task
        Planes read and analysed by one task.

    Returns
    -------
    pandas.DataFrame
        One row per 2-D particle: ``axis`` (0, 1, 2 = z, y, x), ``plane``,
        ``particle_id`` (the 3-D parent), ``area`` (pixels), ``edge``, ``vox_<phase>``
        (pixels of each named phase).
    """
    import dask

    from volmla.engine.cluster import compute

    if not isinstance(step, int | np.integer) or step < 1:
        raise VolmlaError(f"step must be a positive integer, got {step!r}")
    lab = as_volume(particles, name="particles", integer=True).data
    ph = as_volume(phases, name="phases", integer=True).data
    planes = []
    for axis in range(3):
        for index in range(step // 2, lab.shape[axis], step):
            sel = tuple(index if a == axis else slice(None) for a in range(3))
            planes.append((axis, index, lab[sel], ph[sel]))
    tasks = [
        dask.delayed(_section_task, pure=True)(planes[i : i + planes_per_task])
        for i in range(0, len(planes), planes_per_task)
    ]
    results = [t for batch in compute(tasks, desc="2-D sections") for t in batch]
    columns = ["axis", "plane", "particle_id", "area", "edge", *(f"vox_{n}" for n in phase_names.values())]
    if not results:
        return pd.DataFrame(columns=columns)
    frames = []
    for t in results:
        rows = t["area"].size
        frame = {"axis": t["axis"], "plane": t["plane"], "particle_id": t["particle_id"], "area": t["area"], "edge": t["edge"]}
        for pid, name in phase_names.items():
            frame[f"vox_{name}"] = t.get(f"ph{pid}", np.zeros(rows, np.int64))
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)[columns]


def stereology(
    section_df: pd.DataFrame,
    particles_df: pd.DataFrame,
    *,
    phase_names: Sequence[str],
    free_threshold: float = 0.99,
    include_border: bool = False,
) -> pd.DataFrame:
    """2-D against 3-D liberation degree per phase.

    2-D particles touching the section edge are left out, and sections of 3-D border
    particles unless ``include_border``.

    Parameters
    ----------
    section_df
        The 2-D particles of :func:`sections`.
    particles_df
        The 3-D particle table (:func:`volmla.measure.particle_table`).
    phase_names
        Phases to report.
    free_threshold
        A particle is free in a phase whose grade exceeds this (strictly), in ``[0, 1)``.
    include_border
        Also count (the sections of) particles touching the volume border.

    Returns
    -------
    pandas.DataFrame
        ``phase, ld_2d, ld_3d, n_2d, n_3d, bias`` (``bias = ld_2d - ld_3d``).
    """
    names = _phases(particles_df, phase_names)
    thr = _check_threshold(free_threshold)
    pop3 = _population(particles_df, include_border)
    sec = section_df[~section_df["edge"].astype(bool)]
    if not include_border:
        sec = sec[sec["particle_id"].isin(pop3["particle_id"])]
    sec2 = sec.rename(columns={"area": "volume_voxels"})
    rows = []
    for p in names:
        ld2, ld3 = _ld(sec2, p, thr), _ld(pop3, p, thr)
        rows.append(
            {
                "phase": p,
                "ld_2d": ld2,
                "ld_3d": ld3,
                "n_2d": int((sec2[f"vox_{p}"] > 0).sum()),
                "n_3d": int((pop3[f"vox_{p}"] > 0).sum()),
                "bias": ld2 - ld3,
            }
        )
    return pd.DataFrame(rows, columns=["phase", "ld_2d", "ld_3d", "n_2d", "n_3d", "bias"])

