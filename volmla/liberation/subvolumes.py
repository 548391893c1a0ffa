"""Representativeness of the scanned volume: size frequencies over equal sub-volumes.

:func:`representativeness` checks whether the particle-size distribution is the same
everywhere in the volume:

1. the volume is cut into ``N`` equal sub-volumes, on the most cubic grid with ``N``
   pieces that fits the shape (:func:`_grid`);
2. particles go to the piece holding their centroid, and are put in size classes
   (:func:`volmla.liberation.stats.size_class`, default edges
   :func:`volmla.liberation.stats.default_size_edges`);
3. the relative frequency of each size class in each piece (pieces without particles
   skipped) gives a mean, a standard deviation and a t-based 95 % confidence interval
   per class, beside the frequency over the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError
from volmla.liberation.stats import (
    SizeBy,
    _check_edges,
    _population,
    _size_values,
    default_size_edges,
    size_class,
)

__all__ = ["PieceGrid", "check_pieces", "representativeness"]


class PieceGrid(TypedDict):
    """How :func:`representativeness` cut the volume (``summary["representativeness"]``)."""

    pieces: int
    grid: list[int]
    n_pieces_used: int
    by: SizeBy


def _grid(pieces: int, shape: Sequence[int]) -> tuple[int, int, int]:
    """The (gz, gy, gx) with product ``pieces`` whose pieces are the most cubic."""
    best: tuple[float, tuple[int, int, int]] | None = None
    for gz in range(1, min(pieces, shape[0]) + 1):  # (a grid wider than the volume never fits)
        if pieces % gz:
            continue
        for gy in range(1, min(pieces // gz, shape[1]) + 1):
            if (pieces // gz) % gy:
                continue
            g = (gz, gy, pieces // gz // gy)
            if any(gi > s for gi, s in zip(g, shape, strict=True)):
                continue
            sizes = [s / gi for s, gi in zip(shape, g, strict=True)]
            score = max(sizes) / min(sizes)
            if best is None or score < best[0]:
                best = (score, g)
    if best is None:
        raise VolmlaError(f"pieces must split the volume {list(shape)} into equal sub-volumes, got {pieces}")
    return best[1]


def check_pieces(pieces: int, shape: Sequence[int]) -> tuple[int, int, int]:
    """Refuse a number of pieces that does not cut a volume of ``shape`` into equal
    sub-volumes (cheap: before the measurement, from the shape alone).

    Parameters
    ----------
    pieces
        Number of equal sub-volumes (at least 2).
    shape
        Shape of the volume (voxels, z, y, x).

    Returns
    -------
    tuple of int
        The ``(gz, gy, gx)`` grid :func:`representativeness` will use.

    Examples
    --------
    >>> check_pieces(8, (16, 16, 16))
    (2, 2, 2)
    >>> check_pieces(2, (1, 1, 1))
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: pieces must split the volume [1, 1, 1] into equal sub-volumes, got 2
    """
    if isinstance(pieces, bool) or not isinstance(pieces, int | np.integer) or pieces < 2:
        raise VolmlaError(f"pieces must be an integer of at least 2, got pieces={pieces!r}")
    return _grid(int(pieces), shape)


def representativeness(
    df: pd.DataFrame,
    *,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    pieces: int = 8,
    size_edges: Sequence[float] | np.ndarray | None = None,
    by: SizeBy = "esd",
    include_border: bool = False,
) -> tuple[pd.DataFrame, PieceGrid]:
    """Particle-size frequencies per sub-volume: mean and t-based 95 % CI per class.

    The volume is cut into ``pieces`` equal sub-volumes (grid from :func:`_grid`),
    particles go to the piece holding their centroid, and in each piece the relative
    frequency of each size class is computed (pieces without particles are skipped).

    Parameters
    ----------
    df
        The particle table (:func:`volmla.measure.particle_table`), with centroids.
    shape
        Shape of the volume (voxels, z, y, x).
    voxel_size
        ``(z, y, x)`` um, to turn centroids into voxel positions.
    pieces
        Number of equal sub-volumes (at least 2).
    size_edges
        Size-class edges (um for ESD, um^3 for volume); default 8 log-spaced classes.
    by
        ``"esd"`` or ``"volume"``.
    include_border
        Also count particles touching the volume border.

    Returns
    -------
    (pandas.DataFrame, PieceGrid)
        Table ``lo, hi, whole, mean, std, ci_lo, ci_hi, n_pieces`` (``whole`` the
        frequency over the whole volume; the 95 % t-interval ``ci_lo, ci_hi`` of the
        pieces' mean clipped to [0, 1]) and ``{"pieces", "grid", "n_pieces_used"}``.
    """
    from scipy import stats

    grid = check_pieces(pieces, shape)
    pop = _population(df, include_border)
    values = _size_values(pop, by)
    edges = _check_edges(size_edges)
    if edges is None:
        edges = default_size_edges(values)
    cls = size_class(values, edges)
    piece = np.zeros(len(pop), np.int64)
    for a, ax in enumerate("zyx"):
        idx = np.floor(pop[f"centroid_{ax}"].to_numpy(np.float64) / voxel_size[a] * grid[a] / shape[a]).astype(np.int64)
        piece = piece * grid[a] + np.clip(idx, 0, grid[a] - 1)
    k = edges.size - 1
    keep = cls >= 0
    counts = np.zeros((int(pieces), k))
    np.add.at(counts, (piece[keep], cls[keep]), 1.0)
    totals = counts.sum(axis=1)
    used = totals > 0
    freq = counts[used] / totals[used, None]
    m = int(used.sum())
    mean = freq.mean(axis=0) if m else np.full(k, np.nan)
    std = freq.std(axis=0, ddof=1) if m > 1 else np.full(k, np.nan)
    half = stats.t.ppf(0.975, m - 1) * std / np.sqrt(m) if m > 1 else np.full(k, np.nan)
    whole = np.bincount(cls[keep], minlength=k) / max(int(keep.sum()), 1)
    table = pd.DataFrame(
        {
            "lo": edges[:-1],
            "hi": edges[1:],
            "whole": whole,
            "mean": mean,
            "std": std,
            # a frequency lies in [0, 1]: the t-interval is clipped to it
            "ci_lo": np.clip(mean - half, 0.0, 1.0),
            "ci_hi": np.clip(mean + half, 0.0, 1.0),
            "n_pieces": m,
        }
    )
    return table, {"pieces": int(pieces), "grid": list(grid), "n_pieces_used": m, "by": by}

