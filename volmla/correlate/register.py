"""Registration: find a 2-D map's plane in the CT volume and fit the map onto it.

:func:`register_map` runs these named steps:

1. **Check** (:func:`_check_problem`): the map, transform, search range, step, bins and
   tilt range, once; every step after shares the checked :class:`_Problem`.
2. **Coarse plane search** (:func:`_coarse_search`): the map's plane is searched along
   one axis of the CT volume. Candidate CT planes are read lazily (only those planes),
   smoothed to the map's resolution and resampled onto the map grid; the plane that
   maximises the mutual information with the map wins (coarse step, then every plane
   around the best).
3. **Fine fit** (:func:`_fit_plane`): a 2-D rigid (or similarity) registration with
   SimpleITK (Mattes mutual information, linear interpolation, multi-resolution; see
   :mod:`volmla.correlate.fit2d`) aligns the map with that plane, the neighbouring
   planes are re-scored under the fitted transform and the fit is repeated if another
   plane wins.
4. **Tilt** (:func:`_fit_tilt`, only with ``max_tilt_deg``): small tilts of the plane
   about its two in-plane axes are searched on a grid, each tilted plane sampled by
   linear interpolation from the slab of planes it crosses (one lazy read), then refined
   on a finer grid after refitting the 2-D transform on the tilted plane.
5. **Assess** (:func:`_assess`): the quality score is the mutual information above
   chance (a shuffled map) divided by the map's entropy. A fit that did not converge or
   whose quality is below ``min_quality`` raises :class:`~volmla.errors.VolmlaError`
   unless ``accept_poor`` is set, in which case it is kept with an explicit warning.

The result (:class:`Registration`) carries the plane position, tilt, the Mattes metric,
the optimizer's stop condition and the quality.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr

from volmla.correlate.fit2d import (
    _fine_register,
    _Fit,
    _resample_to_map,
    _transform_from_text,
    _transform_params,
    _transform_to_text,
)
from volmla.correlate.maps import _check_pixel_size
from volmla.correlate.minerals import UNLABELLED
from volmla.correlate.planes import (
    AXES,
    Axis,
    _ct_plane,
    _oblique,
    _plane_axes,
    _plane_image,
    _read,
    _slab,
    plane_heights,
)
from volmla.correlate.similarity import _quality
from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

__all__ = ["Registration", "register_map", "registration_image"]


class Registration(NamedTuple):
    """Where a 2-D map lies in the CT volume.

    ``transform`` maps map physical points (col, row in um, SimpleITK order) to CT plane
    physical points; ``params`` describes it (``angle_deg``, ``translation_um`` (x, y),
    ``center_um``, ``scale``). ``index`` is the plane position at the CT plane's centre
    and ``tilt_deg`` its slopes along the plane's rows and columns (see
    :func:`plane_heights`). ``metric`` is SimpleITK's final Mattes value (negative
    mutual information), ``quality`` the shuffled-corrected normalised mutual
    information in [0, 1], ``ok`` whether it converged with quality >= the threshold.
    """

    axis: str
    index: int  # type: ignore[assignment]
    transform: Any
    params: dict[str, Any]
    metric: float
    quality: float
    converged: bool
    stop_condition: str
    iterations: int
    ok: bool
    warnings: list[str]
    plane_scores: dict[int, float]
    map_shape: tuple[int, int]
    pixel_size_um: float
    origin_um: tuple[float, float]
    ct_shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    tilt_deg: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (the transform itself goes to a .tfm file)."""
        return {
            "axis": self.axis, "index": self.index,
            "plane_um": self.index * self.voxel_size_um[AXES.index(self.axis)],
            "transform": self.params, "metric": self.metric, "quality": self.quality,
            "converged": self.converged, "stop_condition": self.stop_condition,
            "iterations": self.iterations, "ok": self.ok, "warnings": list(self.warnings),
            "plane_scores": {str(k): v for k, v in self.plane_scores.items()},
            "map_shape": list(self.map_shape), "pixel_size_um": self.pixel_size_um,
            "origin_um": list(self.origin_um), "ct_shape": list(self.ct_shape),
            "voxel_size_um": list(self.voxel_size_um),
            "tilt_deg": [float(t) for t in self.tilt_deg],
            "tilt_frame": "plane position along axis at (row, col) = index + tan(tilt[0]) (row - r0) "
                          "+ tan(tilt[1]) (col - c0) in physical units, (r0, c0) the CT plane centre",
        }


def _plane_task(plane: np.ndarray, spacing_rc: tuple[float, float], map_shape: tuple[int, int],
                pixel_size_um: float, origin_um: tuple[float, float], transform_text: str) -> np.ndarray:
    """Dask task: one CT plane -> map grid (NaN outside). The transform travels as text."""
    tx = _transform_from_text(transform_text)
    out, valid = _resample_to_map(plane, spacing_rc, map_shape, pixel_size_um, origin_um, tx)
    return np.where(valid, out, np.nan)


def _score_planes(
    ct: da.Array, axis: int, indices: Sequence[int], spacing_rc: tuple[float, float], map_image: np.ndarray,
    pixel_size_um: float, origin_um: tuple[float, float], transform: Any, seed: int,
) -> dict[int, float]:
    """Quality of each candidate plane; only those planes are read (one Dask compute)."""
    from volmla.engine.cluster import compute

    text = _transform_to_text(transform)
    tasks = [dask.delayed(_plane_task, pure=True)(_ct_plane(ct, axis, i), spacing_rc, map_image.shape,
                                                   pixel_size_um, origin_um, text) for i in indices]
    planes = compute(tasks, desc="reading candidate planes")
    scores = {}
    for i, p in zip(indices, planes, strict=True):
        valid = np.isfinite(p)
        scores[int(i)] = round(_quality(map_image, np.where(valid, p, 0.0), valid, seed), 6)
    return scores


def _tilt_search(
    ct: da.Array, axis: int, index: int, bounds: tuple[int, int], vs: tuple[float, float, float],
    map_image: np.ndarray, pixel_size_um: float, origin_um: tuple[float, float], transform: Any, seed: int,
    max_tilt: float, step: float, center: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, tuple[float, float]]:
    """Best (plane index, tilt) by quality: a tilt grid at planes index-1..index+1, then a
    half-step grid around the winner. One slab read covers every candidate."""
    _, r, c = _plane_axes(AXES[axis])
    shape = (ct.shape[r], ct.shape[c])
    n = ct.shape[axis]
    far = max(abs(center[0]), abs(center[1])) + max_tilt + step
    flat = plane_heights(shape, index=0, tilt_deg=(far, far), voxel_size_um=vs)
    reach = int(math.ceil(float(np.abs(flat).max()))) + 2
    lo, hi = max(bounds[0], index - reach), min(bounds[1], index + reach + 1)
    lo, hi = max(0, min(lo, index - 1)), min(n, max(hi, index + 2))
    slab = _slab(ct, axis, lo, hi)
    scores: dict[tuple[int, float, float], float] = {}

    def score(i: int, tr: float, tc: float) -> None:
        key = (i, round(tr, 4), round(tc, 4))
        if key in scores or not bounds[0] <= i < bounds[1]:
            return
        plane = _oblique(slab, lo, plane_heights(shape, index=i, tilt_deg=(tr, tc), voxel_size_um=vs))
        ct_on_map, valid = _resample_to_map(plane, (vs[1], vs[2]), map_image.shape, pixel_size_um, origin_um,
                                            transform)
        scores[key] = _quality(map_image, ct_on_map, valid, seed)

    grid = np.arange(-max_tilt, max_tilt + 1e-9, step)
    for i in (index - 1, index, index + 1):
        for tr in grid:
            for tc in grid:
                score(i, center[0] + float(tr), center[1] + float(tc))
    i0, tr0, tc0 = max(scores, key=scores.get)  # type: ignore[arg-type]
    half = step / 2
    for i in (i0 - 1, i0, i0 + 1):
        for dr in (-half, 0.0, half):
            for dc in (-half, 0.0, half):
                score(i, tr0 + dr, tc0 + dc)
    best = max(scores, key=scores.get)  # type: ignore[arg-type]
    logger.info("tilt search: %d candidates, best plane %d tilt (%.2f, %.2f) deg (quality %.3f, untilted %.3f)",
                len(scores), best[0], best[1], best[2], scores[best], scores.get((index, 0.0, 0.0), float("nan")))
    return best[0], (best[1], best[2])


def registration_image(phases: np.ndarray) -> np.ndarray:
    """A phase map ready for :func:`register_map`: :data:`UNLABELLED` pixels become one
    more class (the next free id), so the value range stays compact for Mattes MI.

    Parameters
    ----------
    phases
        Phase ids (:data:`~volmla.correlate.UNLABELLED` where no mineral was assigned).

    Returns
    -------
    numpy.ndarray
        The phases, same dtype, with unlabelled pixels as the next free id.

    Examples
    --------
    >>> registration_image(np.array([0, 2, 255], np.uint8)).tolist()
    [0, 2, 3]
    """
    phases = np.asarray(phases)
    un = phases == UNLABELLED
    if not un.any():
        return phases
    rest = phases[~un]
    return np.where(un, (int(rest.max()) + 1) if rest.size else 0, phases).astype(phases.dtype)


class _Problem(NamedTuple):
    """What every registration step shares, checked once by :func:`_check_problem`."""

    data: da.Array  # the CT intensities
    axis: str
    a: int  # plane normal
    r: int  # plane rows
    c: int  # plane columns
    bounds: tuple[int, int]  # candidate planes [lo, hi)
    vs: tuple[float, float, float]  # CT voxel size (z, y, x)
    map_image: np.ndarray
    map_f: np.ndarray  # the map as float32, for SimpleITK
    pixel_size_um: float
    origin: tuple[float, float]
    similarity: bool
    iterations: int
    bins: int
    seed: int

    @property
    def spacing_rc(self) -> tuple[float, float]:
        return (self.vs[self.r], self.vs[self.c])

    @property
    def normal_vs(self) -> tuple[float, float, float]:
        """Voxel size (normal, row, col)."""
        return (self.vs[self.a], self.vs[self.r], self.vs[self.c])

    def score(self, indices: Sequence[int], tx: Any) -> dict[int, float]:
        """Quality of untilted candidate planes under ``tx``."""
        return _score_planes(self.data, self.a, indices, self.spacing_rc, self.map_image, self.pixel_size_um,
                             self.origin, tx, self.seed)

    def fit(self, plane: np.ndarray, tx: Any) -> _Fit:
        """The fine 2-D registration of the map onto ``plane``, starting from ``tx``."""
        return _fine_register(self.map_f, self.pixel_size_um, self.origin, plane, self.spacing_rc, tx,
                              similarity=self.similarity, iterations=self.iterations, bins=self.bins)

    def read_plane(self, index: int) -> np.ndarray:
        """One untilted CT plane (read now)."""
        return _read(_ct_plane(self.data, self.a, index))


def _check_problem(
    ct: xr.DataArray, map_image: np.ndarray, *, pixel_size_um: float, origin_um: Sequence[float], axis: str,
    search: tuple[int, int] | None, step: int | None, transform: str, iterations: int, bins: int | None,
    seed: int, max_tilt_deg: float, tilt_step_deg: float,
) -> tuple[_Problem, int]:
    """Step 1: check every argument of :func:`register_map`; returns the problem and the coarse step."""
    if not isinstance(ct, xr.DataArray) or ct.ndim != 3:
        raise VolmlaError("ct must be a 3-D volume opened with volmla.io.open_volume")
    map_image = np.asarray(map_image)
    if map_image.ndim != 2 or min(map_image.shape) < 8:
        raise VolmlaError(f"map must be a 2-D image of at least 8x8 pixels, got shape {map_image.shape}")
    if transform not in ("rigid", "similarity"):
        raise VolmlaError(f"transform must be 'rigid' or 'similarity', got {transform!r}")
    pixel_size_um = _check_pixel_size(pixel_size_um)
    a, r, c = _plane_axes(axis)
    vs = tuple(float(v) for v in ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0)))
    n = ct.shape[a]
    lo, hi = (0, n) if search is None else (int(search[0]), int(search[1]))
    if not (0 <= lo < hi <= n):
        raise VolmlaError(f"search range along {axis} must lie within [0, {n}), got [{lo}, {hi})")
    if step is None:
        step = 1 if hi - lo <= 128 else int(math.ceil((hi - lo) / 64))
    if step < 1:
        raise VolmlaError(f"step must be >= 1, got {step}")
    if bins is None:
        bins = 16 if map_image.size < 10_000 else 32
    if not (math.isfinite(max_tilt_deg) and 0 <= max_tilt_deg <= 15):
        raise VolmlaError(f"max_tilt_deg must lie in [0, 15] degrees, got {max_tilt_deg}")
    if not (math.isfinite(tilt_step_deg) and tilt_step_deg > 0):
        raise VolmlaError(f"tilt_step_deg must be positive, got {tilt_step_deg}")
    origin = (float(origin_um[0]), float(origin_um[1]))
    problem = _Problem(
        data=ct.data, axis=axis, a=a, r=r, c=c, bounds=(lo, hi), vs=(vs[0], vs[1], vs[2]), map_image=map_image,
        map_f=map_image.astype(np.float32), pixel_size_um=pixel_size_um, origin=origin,
        similarity=transform == "similarity", iterations=iterations, bins=bins, seed=seed)
    return problem, step


def _coarse_search(p: _Problem, step: int, tx: Any) -> tuple[dict[int, float], int]:
    """Step 2: score every ``step``-th candidate plane under ``tx``, then every plane
    around the best; returns (scores, best plane)."""
    lo, hi = p.bounds
    scores = p.score(list(range(lo, hi, step)), tx)
    best = max(scores, key=scores.get)  # type: ignore[arg-type]
    if step > 1:
        near = [i for i in range(max(lo, best - step + 1), min(hi, best + step)) if i not in scores]
        scores.update(p.score(near, tx))
        best = max(scores, key=scores.get)  # type: ignore[arg-type]
    logger.info("coarse plane search along %s: best %d (quality %.3f)", p.axis, best, scores[best])
    return scores, best


def _fit_plane(p: _Problem, best: int, tx: Any, scores: dict[int, float]) -> tuple[int, np.ndarray, _Fit]:
    """Step 3: fit on plane ``best``, re-score its neighbours under the fit (into
    ``scores``) and move to a better one (at most three rounds), refitting if it moved
    last; returns (plane index, plane image, fit)."""
    lo, hi = p.bounds
    fitted_on = -1
    for _ in range(3):
        plane = p.read_plane(best)
        fit = p.fit(plane, tx)
        tx = fit.transform
        fitted_on = best
        near = list(range(max(lo, best - 2), min(hi, best + 3)))
        local = p.score(near, tx)
        scores.update(local)
        new = max(local, key=local.get)  # type: ignore[arg-type]
        if new == best:
            break
        logger.info("plane %d scores better than %d under the fitted transform", new, best)
        best = new
    if fitted_on != best:
        plane = p.read_plane(best)
        fit = p.fit(plane, tx)
    return best, plane, fit


def _fit_tilt(
    p: _Problem, best: int, fit: _Fit, *, max_tilt_deg: float, tilt_step_deg: float,
) -> tuple[int, tuple[float, float], np.ndarray, _Fit]:
    """Step 4: tilt search on the slab the tilted planes cross, then refit in-plane on the
    tilted plane and refine the tilt under that fit (at most three rounds); returns
    (plane index, tilt, plane image, fit)."""
    best, tilt = _tilt_search(p.data, p.a, best, p.bounds, p.normal_vs, p.map_image, p.pixel_size_um,
                              p.origin, fit.transform, p.seed, max_tilt_deg, tilt_step_deg)
    for attempt in range(3):  # refit in-plane on the tilted plane, then refine the tilt under that fit
        plane = _plane_image(p.data, p.a, best, tilt, p.vs)
        fit = p.fit(plane, fit.transform)
        if attempt == 2:
            break
        found = _tilt_search(p.data, p.a, best, p.bounds, p.normal_vs, p.map_image, p.pixel_size_um,
                             p.origin, fit.transform, p.seed, tilt_step_deg / 2, tilt_step_deg / 4, center=tilt)
        if found == (best, tilt):
            break
        best, tilt = found
    return best, tilt, plane, fit


def _assess(
    p: _Problem, best: int, plane: np.ndarray, fit: _Fit, *, min_quality: float, accept_poor: bool,
) -> tuple[float, list[str]]:
    """Step 5: the quality of the final fit and its warnings; a poor fit raises unless
    ``accept_poor``. Returns (quality, warnings)."""
    ct_on_map, valid = _resample_to_map(plane, p.spacing_rc, p.map_image.shape, p.pixel_size_um, p.origin,
                                        fit.transform)
    quality = _quality(p.map_image, ct_on_map, valid, p.seed)
    warnings = []
    if not fit.converged:
        warnings.append(f"registration did not converge ({fit.stop_condition})")
    if quality < min_quality:
        warnings.append(f"registration quality {quality:.3f} is below min_quality {min_quality} "
                        f"(Mattes metric {fit.metric:.4f}): the map may not match this volume")
    if valid.mean() < 0.5:
        warnings.append(f"only {valid.mean():.0%} of the map falls inside the CT plane")
    if warnings and not accept_poor:
        raise VolmlaError(f"registration of the map into {p.axis}={best} is poor: {'; '.join(warnings)}; "
                          "pass accept_poor=True to keep it")
    for w in warnings:
        logger.warning("%s", w)
    return quality, warnings


def register_map(
    ct: xr.DataArray,
    map_image: np.ndarray,
    *,
    pixel_size_um: float,
    origin_um: Sequence[float] = (0.0, 0.0),
    axis: Axis = "z",
    search: tuple[int, int] | None = None,
    step: int | None = None,
    transform: Literal["rigid", "similarity"] = "rigid",
    min_quality: float = 0.05,
    accept_poor: bool = False,
    iterations: int = 300,
    bins: int | None = None,
    seed: int = 0,
    max_tilt_deg: float = 0.0,
    tilt_step_deg: float = 1.0,
) -> Registration:
    """Find a 2-D map's plane in a CT volume and register the map onto it.

    Parameters
    ----------
    ct
        The CT intensity volume (lazy; only candidate planes are read).
    map_image
        The map to register: a phase map (integers) or one contrast channel.
    pixel_size_um
        Map pixel edge in micrometres.
    origin_um
        Physical (row, col) of map pixel (0, 0)'s centre before registration.
    axis
        The axis the map's plane is normal to.
    search
        Candidate plane indices ``[lo, hi)`` (default the whole axis).
    step
        Coarse search step in planes (default 1 for <= 128 candidates, else ~64 steps);
        every plane around the coarse best is then scored.
    transform
        ``"rigid"`` (rotation + shift) or ``"similarity"`` (plus isotropic scale).
    min_quality
        Least acceptable quality (shuffle-corrected normalised mutual information).
    accept_poor
        Keep a non-converged or poor fit (with a warning) instead of raising.
    iterations
        Optimizer iterations per resolution level.
    bins
        Mattes histogram bins (default 16 for maps under 10^4 pixels, else 32).
    seed
        Seed of the shuffles that estimate chance mutual information.
    max_tilt_deg
        Also search tilts of the plane about its two in-plane axes within
        +/- this many degrees (0: the plane is normal to ``axis``). Each candidate plane is
        sampled obliquely (linear interpolation) from the slab of planes it crosses, read
        once; the best tilt is refined on a half-step grid and the fine registration is
        redone on the tilted plane.
    tilt_step_deg
        Step of the tilt grid.

    Returns
    -------
    Registration

    Examples
    --------
    >>> reg = register_map(ct, phases_map, pixel_size_um=40.0, axis="z")  # doctest: +SKIP
    >>> reg.index, reg.params["angle_deg"], reg.quality  # doctest: +SKIP
    """
    import SimpleITK as sitk

    if isinstance(min_quality, bool) or not isinstance(min_quality, int | float) or not 0 <= min_quality <= 1:
        raise VolmlaError(f"min_quality must lie in [0, 1], got {min_quality!r}")
    p, step = _check_problem(ct, map_image, pixel_size_um=pixel_size_um, origin_um=origin_um, axis=axis,
                             search=search, step=step, transform=transform, iterations=iterations, bins=bins,
                             seed=seed, max_tilt_deg=max_tilt_deg, tilt_step_deg=tilt_step_deg)
    shape = p.map_image.shape
    tx = sitk.Euler2DTransform()
    tx.SetCenter((p.origin[1] + (shape[1] - 1) * p.pixel_size_um / 2,
                  p.origin[0] + (shape[0] - 1) * p.pixel_size_um / 2))
    scores, best = _coarse_search(p, step, tx)  # identity in-plane transform
    best, plane, fit = _fit_plane(p, best, tx, scores)
    tilt: tuple[float, float] = (0.0, 0.0)
    if max_tilt_deg > 0:
        best, tilt, plane, fit = _fit_tilt(p, best, fit, max_tilt_deg=max_tilt_deg, tilt_step_deg=tilt_step_deg)
    quality, warnings = _assess(p, best, plane, fit, min_quality=min_quality, accept_poor=accept_poor)
    return Registration(
        axis=axis, index=int(best), transform=fit.transform, params=_transform_params(fit.transform),
        metric=fit.metric, quality=round(quality, 6), converged=fit.converged, stop_condition=fit.stop_condition,
        iterations=fit.iterations, ok=not warnings, warnings=warnings, plane_scores=dict(sorted(scores.items())),
        map_shape=(int(shape[0]), int(shape[1])), pixel_size_um=p.pixel_size_um, origin_um=p.origin,
        ct_shape=(int(ct.shape[0]), int(ct.shape[1]), int(ct.shape[2])), voxel_size_um=p.vs,
        tilt_deg=(round(tilt[0], 4), round(tilt[1], 4)))
