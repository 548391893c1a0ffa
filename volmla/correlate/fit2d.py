"""2-D image registration with SimpleITK: a map and a CT plane, each on its own grid.

The pieces :mod:`volmla.correlate.register` and :mod:`volmla.correlate.transfer` share:

1. images with physical spacing and origin (:func:`_sitk_image`; SimpleITK orders
   points (x=col, y=row), volmla (row, col));
2. a CT plane blurred to the map's resolution (:func:`_smooth_ct_plane`) and resampled
   onto the map grid under a map -> CT transform (:func:`_resample_to_map`);
3. the transform as text (:func:`_transform_to_text`), so it can travel to Dask tasks,
   and as a JSON-able description (:func:`_transform_params`);
4. the fit itself (:func:`_fine_register`): Mattes mutual information, linear
   interpolation, multi-resolution, rigid or similarity, regular-step gradient descent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class _Fit(NamedTuple):
    """One SimpleITK fit: the transform, the final Mattes value, the optimizer's stop
    condition and iterations, and whether it stopped before its iteration limit."""

    transform: Any
    metric: float
    stop_condition: str
    iterations: int
    converged: bool


def _sitk_image(image: np.ndarray, spacing_rc: Sequence[float], origin_rc: Sequence[float]) -> Any:
    """A float32 SimpleITK image with (row, col) spacing and origin in micrometres."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0])))
    img.SetOrigin((float(origin_rc[1]), float(origin_rc[0])))
    return img


def _smooth_ct_plane(plane: np.ndarray, spacing_rc: Sequence[float], pixel_size_um: float) -> np.ndarray:
    """Blur a CT plane to the map's resolution (Gaussian, sigma ~ half a map pixel)."""
    from scipy import ndimage

    sigma = [max(0.0, 0.5 * pixel_size_um / s) for s in spacing_rc]
    return ndimage.gaussian_filter(np.asarray(plane, np.float32), sigma=sigma, mode="nearest")


def _resample_to_map(
    plane: np.ndarray,
    spacing_rc: Sequence[float],
    map_shape: Sequence[int],
    pixel_size_um: float,
    origin_um: Sequence[float],
    transform: Any,
    smoothed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A CT plane sampled on the map grid under ``transform`` (map -> CT), with the mask
    of map pixels that fall inside the plane."""
    import SimpleITK as sitk

    if not smoothed:
        plane = _smooth_ct_plane(plane, spacing_rc, pixel_size_um)
    moving = _sitk_image(plane, spacing_rc, (0.0, 0.0))
    ref = _sitk_image(np.zeros(map_shape, np.float32), (pixel_size_um, pixel_size_um), origin_um)
    out = sitk.GetArrayFromImage(sitk.Resample(moving, ref, transform, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
    valid = np.isfinite(out)
    return np.where(valid, out, 0.0).astype(np.float32), valid


def _transform_to_text(tx: Any) -> str:
    """A rigid or similarity transform as JSON text (kind, parameters, fixed parameters)."""
    return json.dumps({"params": list(tx.GetParameters()), "fixed": list(tx.GetFixedParameters()),
                       "kind": tx.GetName()})


def _transform_from_text(text: str) -> Any:
    """The transform back from :func:`_transform_to_text`."""
    import SimpleITK as sitk

    d = json.loads(text)
    tx = sitk.Similarity2DTransform() if d["kind"] == "Similarity2DTransform" else sitk.Euler2DTransform()
    tx.SetFixedParameters(d["fixed"])
    tx.SetParameters(d["params"])
    return tx


def _fine_register(
    map_image: np.ndarray, pixel_size_um: float, origin_um: tuple[float, float], plane: np.ndarray,
    spacing_rc: tuple[float, float], initial: Any, *, similarity: bool, iterations: int, bins: int,
) -> _Fit:
    """SimpleITK: Mattes MI, linear interpolation, multi-resolution, rigid/similarity 2-D."""
    import SimpleITK as sitk

    fixed = _sitk_image(map_image, (pixel_size_um, pixel_size_um), origin_um)
    moving = _sitk_image(_smooth_ct_plane(plane, spacing_rc, pixel_size_um), spacing_rc, (0.0, 0.0))
    if similarity and initial.GetName() != "Similarity2DTransform":
        tx = sitk.Similarity2DTransform()
        tx.SetCenter(initial.GetCenter())
        tx.SetAngle(initial.GetAngle())
        tx.SetTranslation(initial.GetTranslation())
    else:
        tx = _transform_from_text(_transform_to_text(initial))
    levels = 1
    while levels < 3 and min(map_image.shape) // 2**levels >= 24:
        levels += 1
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2**i for i in reversed(range(levels))])
    method.SetSmoothingSigmasPerLevel([float(2**i) / 2 if i else 0.0 for i in reversed(range(levels))])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(tx, inPlace=True)
    method.Execute(fixed, moving)
    stop = method.GetOptimizerStopConditionDescription()
    n_iter = int(method.GetOptimizerIteration())
    converged = "Maximum number of iterations" not in stop
    return _Fit(tx, float(method.GetMetricValue()), stop, n_iter, converged)


def _transform_params(tx: Any) -> dict[str, Any]:
    """A JSON-able description of a fitted transform (angle, translation, centre, scale)."""
    angle = float(tx.GetAngle())
    return {
        "kind": "similarity" if tx.GetName() == "Similarity2DTransform" else "rigid",
        "angle_deg": math.degrees(angle),
        "translation_um": [float(v) for v in tx.GetTranslation()],
        "center_um": [float(v) for v in tx.GetCenter()],
        "scale": float(tx.GetScale()) if tx.GetName() == "Similarity2DTransform" else 1.0,
        "frame": "map (x=col, y=row) -> CT plane (x=col, y=row), micrometres",
    }

