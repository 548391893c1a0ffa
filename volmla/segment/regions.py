"""Grain-coherent cleaning of a phase volume: grains too small to be resolved go to
their surroundings, unless their grey level says they are real inclusions.

Per-voxel classifiers leave speckle (single voxels and small clusters of the wrong
phase where two phases are close in grey) and, on a particle's surface, a rim of the
phase whose grey lies between the void's and the particle's (partial volume of a bright
sulphide against resin passes through quartz's grey). A particle's liberation depends on
a handful of such voxels (at the 0.99 free rule, 1 % of ~1,400 voxels), so the phases
are cleaned per grain, out of core and the same for any chunking:

1. **levels** (:func:`volmla.measure.fractions.phase_levels`): the pure grey level of the
   void and of each phase, and the noise sigma;
2. **shell** (``shell=True``): a voxel on a particle's outer shell (it has a void
   neighbour) whose interior neighbours, the voxels of its particle opposite its void
   neighbours, are of another phase ``B`` (:func:`volmla.measure._neighbours.shell_candidates`,
   a one-voxel halo) takes phase ``B`` when its grey is a possible mixture of ``B`` and
   the void (between the two levels, give or take ``contrast`` noise sigmas) and its own
   phase is either the 'between' phase (its level lies between the void's and ``B``'s)
   or not resolved from ``B`` (levels within ``contrast`` noise sigmas: the surface
   voxel's grey, half void, cannot tell the two apart, so it follows the voxel behind
   it). A voxel brighter than any ``B``-void mixture keeps its phase;
3. **grains**: the 26-connected components of each phase in each particle
   (:func:`volmla.particles.label_grains`, distributed), and per grain, in one
   task per block, its voxels, its grey sum (exact integers) and its faces shared with
   each other phase of its particle (:func:`volmla.measure._neighbours.phase_faces`);
4. **decision**: a grain of fewer than ``min_grain`` voxels goes to the phase it shares
   most faces with inside its particle, unless its mean grey lies more than
   ``contrast`` noise sigmas from that phase's level (a bright sulphide in quartz is
   kept however small: it is found, not cleaned away); a grain with no other phase
   around it (a whole small particle) is kept;
5. the phase volume is rewritten lazily, block by block, from the decision table.

The threshold. :data:`MIN_GRAIN` = 40 voxels (a sphere of radius ~2.1 voxels), where the
forest's components stop being mostly wrong. Measured on
:func:`volmla.synthetic.crushed_ore` at 80^3 (``benchmarks/bench_truth.py``, 3 seeds per
level, random-forest phases on true particles; ``grain_purity`` in
``benchmarks/results/truth.json``): components below 40 voxels are 58-77 % wrong on the
hard level (their majority true phase differs) and 82-100 % on the easy one, those of
40-60 voxels 42 % (hard), those above 260 voxels 10-13 %; true grains below 40 voxels
hold 0.7 % of the solid volume (hard) and none (easy), those of 40-60 voxels 1.2 %. A
grain of a few tens of voxels cannot be resolved at these blurs (PSF sigma 0.6-0.8
voxels) and noise: its volume is mostly partial volume (the CT measurement literature
puts volume errors above 10 % below ~260 voxels, but grains of 60-260 voxels hold a fifth
of the volume here and are three quarters right). The threshold is a property of the
scan's blur and noise, not of a seed; pass a larger one for blurrier scans. Phases whose
grey differs by more than ``contrast`` noise sigmas from their surroundings are exempt,
so trace bright phases keep their small grains.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume, shared
from volmla.errors import VolmlaError
from volmla.measure.fractions import PhaseLevels, neighbour_map, packed_labels, phase_levels
from volmla.types import VolumeLike

MIN_GRAIN = 40
"""Default least grain size, in voxels, kept without an intensity contrast (see the
module docstring for why)."""
DEFAULT_CONTRAST = 3.0
"""Noise sigmas between a grain's mean grey and its surroundings' level that make it a
real inclusion."""
MAX_PHASES = 21
"""Phase ids the face counts hold (3 bits per phase in 64 bits)."""

__all__ = ["DEFAULT_CONTRAST", "MAX_PHASES", "MIN_GRAIN", "clean_phases", "grain_decisions", "merge_grain_rows"]


def _lut(levels: PhaseLevels) -> np.ndarray:
    lut = np.full(256, np.nan)
    for k, v in levels.levels.items():
        lut[int(k)] = float(v)
    return lut


def _shell_block(ph: np.ndarray, cand: np.ndarray, image: np.ndarray, *, lut: np.ndarray, tol: float) -> np.ndarray:
    """Step 2 on one block: shell voxels of a 'between' phase take their interior
    neighbours' phase where their grey is a mixture of that phase and the void."""
    lb = lut[cand.astype(np.intp)]
    la = lut[np.asarray(ph).astype(np.intp)]
    l0 = lut[0]
    grey = np.asarray(image, np.float64)
    with np.errstate(invalid="ignore"):
        mixture = (grey >= np.minimum(lb, l0) - tol) & (grey <= np.maximum(lb, l0) + tol)
        between = (la > np.minimum(lb, l0)) & (la < np.maximum(lb, l0))
        unresolved = np.abs(lb - la) <= tol
    return np.where((cand > 0) & mixture & (between | unresolved), cand, ph).astype(np.uint8)


def _grain_rows(grains: np.ndarray, ph: np.ndarray, faces: np.ndarray, image: np.ndarray, *,
                scale: float) -> dict[str, np.ndarray]:
    """Step 3 on one block: ``grain, phase, n, grey sum (fixed point), faces[21]``."""
    g = np.asarray(grains).ravel()
    sel = g != 0
    if not sel.any():
        return {"grain": np.zeros(0, np.uint64), "phase": np.zeros(0, np.int64), "n": np.zeros(0, np.int64),
                "grey": np.zeros(0, np.int64), "faces": np.zeros((0, MAX_PHASES), np.int64)}
    gs = g[sel].astype(np.uint64)
    order = np.argsort(gs, kind="stable")
    gs = gs[order]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    img = np.asarray(image).ravel()[sel][order]
    if np.issubdtype(img.dtype, np.integer):
        grey = img.astype(np.int64)
    else:
        grey = np.rint(img.astype(np.float64) * scale).astype(np.int64)
    code = np.asarray(faces, np.uint64).ravel()[sel][order]
    per = np.stack([((code >> np.uint64(3 * k)) & np.uint64(7)).astype(np.int64) for k in range(MAX_PHASES)], axis=1)
    phase = np.asarray(ph).ravel()[sel][order].astype(np.int64)
    return {"grain": gs[starts], "phase": phase[starts], "n": np.diff(np.r_[starts, gs.size]).astype(np.int64),
            "grey": np.add.reduceat(grey, starts), "faces": np.add.reduceat(per, starts, axis=0)}


def merge_grain_rows(rows: list[dict[str, np.ndarray]], *,
                     summed: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Merge per-block grain rows by grain id: the ``summed`` fields added up (a grain
    crossing blocks has a row in each), ``phase`` taken as it is (one per grain).

    Parameters
    ----------
    rows
        Per-block dicts of equal-length arrays: ``grain`` (ids), ``phase`` and the
        ``summed`` fields (1-D, or 2-D with one row per grain).
    summed
        The fields to add up.

    Returns
    -------
    (numpy.ndarray, dict)
        The sorted grain ids and, for each summed field and ``phase``, one int64 entry
        per id.

    Examples
    --------
    >>> rows = [{"grain": np.array([5, 2]), "n": np.array([1, 2]), "phase": np.array([1, 2])},
    ...         {"grain": np.array([5]), "n": np.array([3]), "phase": np.array([1])}]
    >>> ids, merged = merge_grain_rows(rows, summed=("n",))
    >>> ids.tolist(), merged["n"].tolist(), merged["phase"].tolist()
    ([2, 5], [2, 4], [2, 1])
    """
    rows = [r for r in rows if r["grain"].size]
    if not rows:
        return np.zeros(0, np.uint64), {}
    uk, inv = np.unique(np.concatenate([r["grain"] for r in rows]), return_inverse=True)
    merged: dict[str, np.ndarray] = {}
    for field in summed:
        values = np.concatenate([r[field] for r in rows])
        merged[field] = np.zeros((uk.size, *values.shape[1:]), np.int64)
        np.add.at(merged[field], inv, values)
    merged["phase"] = np.zeros(uk.size, np.int64)
    merged["phase"][inv] = np.concatenate([r["phase"] for r in rows])
    return uk, merged


def grain_decisions(rows: list[dict[str, np.ndarray]], *, levels: PhaseLevels, scale: float, min_grain: int,
                    contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps 3-4 after the blocks: merge the grain rows and decide.

    Parameters
    ----------
    rows
        The per-block grain rows.
    levels
        Pure grey levels and the noise sigma.
    scale
        The fixed-point scale of the grey sums (1 for integer intensities).
    min_grain, contrast
        As in :func:`clean_phases`.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The sorted ids of the grains that change phase, and their new phases (uint8).
    """
    uk, merged = merge_grain_rows(rows, summed=("n", "grey", "faces"))
    if not uk.size:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint8)
    n, grey, faces = merged["n"], merged["grey"], merged["faces"]
    lut = _lut(levels)
    best = faces.argmax(axis=1)  # ties: the lowest phase id
    has = faces[np.arange(uk.size), best] > 0
    target = best + 1
    mean = grey / np.maximum(n, 1) / scale
    with np.errstate(invalid="ignore"):
        near = np.abs(mean - lut[target]) <= contrast * levels.noise_sigma
    change = (n < min_grain) & has & near & np.isfinite(lut[target])
    return uk[change], target[change].astype(np.uint8)


def _relabel_block(ph: np.ndarray, grains: np.ndarray, *, ids: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Step 5 on one block: the new phase of every voxel of a changed grain."""
    if not ids.size:
        return np.asarray(ph, np.uint8)
    g = np.asarray(grains, np.uint64)
    at = np.minimum(np.searchsorted(ids, g), ids.size - 1)
    hit = (ids[at] == g) & (g != 0)
    return np.where(hit, new[at], ph).astype(np.uint8)


def clean_phases(
    phases: VolumeLike,
    particles: VolumeLike,
    intensity: VolumeLike,
    *,
    min_grain: int = MIN_GRAIN,
    contrast: float = DEFAULT_CONTRAST,
    shell: bool = True,
    levels: PhaseLevels | None = None,
    connectivity: Literal[6, 18, 26] = 26,
) -> da.Array:
    """Grain-coherent phases: small grains go to their surroundings, shell rims to the
    particle's interior phase, real (high-contrast) inclusions stay.

    The levels and the grain table are global reductions (computed here); the cleaned
    phase volume is returned lazily, in the particles' chunks, and is the same for any
    chunking.

    Parameters
    ----------
    phases
        Phase ids (uint8, 0 = void; phases 1..21).
    particles
        Particle ids (below ``2**48``), same shape.
    intensity
        The CT volume the phases were segmented from.
    min_grain
        Grains of fewer voxels are reassigned unless their grey contrasts
        (default :data:`MIN_GRAIN`; 0 or 1 turns the grain rule off).
    contrast
        Noise sigmas between a small grain's mean grey and the level of the phase
        around it above which the grain is a real inclusion and kept; also the
        tolerance of the shell rule.
    shell
        Apply the shell rule (step 2 of the module docstring) first.
    levels
        Pure grey levels and noise sigma; default
        :func:`volmla.measure.fractions.phase_levels` of these volumes.
    connectivity
        Of the grains (6, 18 or 26).

    Returns
    -------
    dask.array.Array
        uint8 phase ids.

    Examples
    --------
    A feldspar speckle in quartz is removed; a bright pyrite voxel is kept.

    >>> rng = np.random.default_rng(0)
    >>> ph = np.zeros((12, 12, 12), np.uint8); ph[2:10, 2:10, 2:10] = 1
    >>> grey = np.array([100.0, 1000.0, 1030.0, 3000.0])
    >>> ph[4, 4, 4], ph[7, 7, 7] = 2, 3
    >>> img = grey[ph] + rng.normal(0, 10, ph.shape)
    >>> img[4, 4, 4] = 1010.0
    >>> out = clean_phases(ph, (ph > 0).astype(np.uint32), img).compute()
    >>> int(out[4, 4, 4]), int(out[7, 7, 7])
    (1, 3)
    """
    import dask

    from volmla.engine.cluster import compute
    from volmla.particles import label_grains

    if not isinstance(min_grain, int | np.integer) or min_grain < 0:
        raise VolmlaError(f"min_grain must be a non-negative integer (voxels), got {min_grain!r}")
    if not (isinstance(contrast, int | float) and math.isfinite(contrast) and contrast >= 0):
        raise VolmlaError(f"contrast must be a non-negative number of noise sigmas, got {contrast!r}")
    shapes = [tuple(getattr(v, "shape", np.shape(v))) for v in (phases, particles, intensity)]
    if len(set(shapes)) > 1:
        raise VolmlaError(f"phases, particles and intensity must have the same shape, got {shapes[0]}, {shapes[1]} "
                          f"and {shapes[2]}")
    lab = as_volume(particles, name="particles", integer=True).data
    ph = as_volume(phases, name="phases", integer=True, chunks=lab.chunks).data
    image = as_volume(intensity, name="intensity", chunks=lab.chunks).data
    ph = (ph if ph.chunks == lab.chunks else ph.rechunk(lab.chunks)).astype(np.uint8)
    image = image if image.chunks == lab.chunks else image.rechunk(lab.chunks)
    if levels is None:
        levels = phase_levels(image, ph, lab)
    if max(levels.levels, default=0) > MAX_PHASES:
        raise VolmlaError(f"clean_phases handles phases 1..{MAX_PHASES}, got phase {max(levels.levels)}")
    sigma = float(levels.noise_sigma)
    tol = contrast * sigma
    if shell:
        cand = neighbour_map(packed_labels(lab, ph), "shell_candidates", np.uint8)
        ph = da.map_blocks(functools.partial(_shell_block, lut=_lut(levels), tol=tol), ph, cand, image,
                           dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    if min_grain <= 1:
        return ph
    if shell:  # the grain passes below read it four times: stored once, read back as plain blocks
        from volmla.engine.scratch import session_scratch, store

        scratch = session_scratch("volmla-clean-", what="the shell-corrected phases")
        if scratch is not None:
            ph = store(ph, scratch / "shell.zarr", desc="storing the shell-corrected phases")
            ph = ph if ph.chunks == lab.chunks else ph.rechunk(lab.chunks)
    grains = label_grains(lab, ph, connectivity=connectivity).labels.data
    grains = grains if grains.chunks == lab.chunks else grains.rechunk(lab.chunks)
    faces = neighbour_map(packed_labels(lab, ph), "phase_faces", np.uint64)
    scale = 1.0 if np.issubdtype(image.dtype, np.integer) else 2.0**16 / max(sigma, 1e-300)
    kernel = functools.partial(_grain_rows, scale=scale)
    tasks = [dask.delayed(kernel, pure=True)(*blocks) for blocks in zip(
        *(a.to_delayed().ravel() for a in (grains, ph, faces, image)), strict=True)]
    rows: list[Any] = compute(tasks, desc="grain table")
    ids, new = grain_decisions(rows, levels=levels, scale=scale, min_grain=int(min_grain), contrast=float(contrast))
    # one grain per row: tables of millions of grains, held once per worker (engine.blocks.shared)
    return da.map_blocks(_relabel_block, ph, grains, ids=shared(ids), new=shared(new), dtype=np.uint8,
                         meta=np.empty((0, 0, 0), np.uint8))
