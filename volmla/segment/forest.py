"""Random-forest phase segmentation on multi-scale filter features (ilastik-like).

1. Features: per voxel the normalised intensity plus, at each sigma (default 0.7, 1,
   1.6, 3.5, 5), gaussian, gradient magnitude, Laplacian of Gaussian, the 3
   structure-tensor and the 3 Hessian eigenvalues (:func:`filter_features`); the context
   they need is :func:`feature_halo` (from the largest sigma).
2. Normalisation: the 1st and 99th intensity percentiles, from the out-of-core
   :func:`volmla.engine.reduce.histogram` and :func:`~volmla.engine.reduce.histogram_percentile`,
   map intensities to about [0, 1] before the features.
3. Training (:func:`train_random_forest`): on the sparse labels (``phase + 1``, 0
   unlabelled) features are computed on regions read around the labelled planes with the
   same halo and boundary mode as inference, so training and prediction see identical
   features; a seeded sample of labelled voxels fits a scikit-learn forest.
4. Storage: the forest is stored as ONNX (skl2onnx, no pickle) with its feature
   configuration in the ONNX ``volmla`` metadata (:func:`save_random_forest`,
   :func:`load_random_forest`).
5. Prediction (:func:`random_forest_segment`): block by block with the feature halo
   through :func:`volmla.engine.overlap.halo_map`, on ONNX Runtime (one cached session
   per process).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.io.sparse import SPARSE_LABEL_OFFSET
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

DEFAULT_SIGMAS: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5, 5.0)
TRUNCATE = 3.5
RF_FORMAT = "volmla-rf"
NORM_PERCENTILES = (1.0, 99.0)
"""Intensity percentiles mapped to 0 and 1 before the features."""

__all__ = [
    "DEFAULT_SIGMAS",
    "NORM_PERCENTILES",
    "RF_FORMAT",
    "RandomForest",
    "feature_halo",
    "filter_features",
    "load_random_forest",
    "n_features",
    "random_forest_segment",
    "read_region",
    "save_random_forest",
    "train_random_forest",
]


# ----------------------------------------------------------------------------- features


def feature_halo(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Context the features need: the structure tensor's inner (sigma/2) and outer gaussians plus a Sobel.

    Parameters
    ----------
    sigmas
        Feature scales (voxels).

    Returns
    -------
    int
        Voxels of context per side.

    Examples
    --------
    >>> feature_halo((1.0,))
    7
    """
    s = max(sigmas)
    radius = lambda sigma: int(TRUNCATE * sigma + 0.5)  # noqa: E731 (scipy's gaussian radius)
    return max(radius(s) + 2, radius(s / 2) + 1 + radius(s))


def n_features(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Features per voxel: the intensity, then 9 per sigma.

    Parameters
    ----------
    sigmas
        Feature scales.

    Returns
    -------
    int

    Examples
    --------
    >>> n_features((1.0, 2.0))
    19
    """
    return 1 + 9 * len(sigmas)


def filter_features(
    block: np.ndarray, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, halo: Sequence[int] = (0, 0, 0)
) -> np.ndarray:
    """Multi-scale filter features of a 3-D block: ``(n_features, z, y, x)`` float32.

    Per sigma: gaussian, gradient magnitude, Laplacian of Gaussian, the 3 structure
    tensor eigenvalues (gradients of the sigma/2-smoothed image, averaged over sigma),
    the 3 Hessian eigenvalues (decreasing; in closed form,
    :func:`volmla.segment._eigen.symmetric_eigenvalues`). Voxels within
    :func:`feature_halo` of the block's faces depend on the boundary mode (reflect);
    inner voxels do not.

    Parameters
    ----------
    block
        A 3-D NumPy block (already normalised).
    sigmas
        Feature scales (voxels).
    halo
        Voxels of context per side (z, y, x) around the voxels wanted: the features are
        computed on the whole block and returned for its interior only (each filter's
        output is cropped as it is made, so memory is ``n_features`` x the interior).

    Returns
    -------
    numpy.ndarray
        ``(n_features(sigmas), z, y, x)`` float32, of the interior.

    Examples
    --------
    >>> filter_features(np.zeros((12, 12, 12), np.float32), sigmas=(1.0,), halo=(4, 4, 4)).shape
    (10, 4, 4, 4)
    """
    from skimage.feature import hessian_matrix, structure_tensor

    from volmla.segment._eigen import symmetric_eigenvalues

    image = np.asarray(block, dtype=np.float32)
    core = tuple(slice(int(h), n - int(h)) for h, n in zip(halo, image.shape, strict=True))
    shape = tuple(c.stop - c.start for c in core)
    if min(shape) <= 0:
        raise VolmlaError(f"halo {tuple(halo)} leaves nothing of a block of shape {image.shape}")
    out = np.empty((n_features(sigmas), *shape), np.float32)
    out[0] = image[core]
    i = 1
    for s in sigmas:
        smooth = ndi.gaussian_filter(image, s, mode="reflect", truncate=TRUNCATE)
        out[i] = smooth[core]
        out[i + 1] = ndi.gaussian_gradient_magnitude(image, s, mode="reflect", truncate=TRUNCATE)[core]
        out[i + 2] = ndi.gaussian_laplace(image, s, mode="reflect", truncate=TRUNCATE)[core]
        inner = ndi.gaussian_filter(image, s / 2, mode="reflect", truncate=TRUNCATE)
        tensor = structure_tensor(inner, sigma=s, mode="reflect")
        symmetric_eigenvalues([t[core] for t in tensor], out=out[i + 3 : i + 6])
        hessian = hessian_matrix(smooth, sigma=0.0001, mode="reflect", use_gaussian_derivatives=False)
        symmetric_eigenvalues([h[core] for h in hessian], out=out[i + 6 : i + 9])
        i += 9
    return out


def read_region(volume: da.Array, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Read ``volume[start : start + shape]``, mirroring (SciPy ``reflect``) beyond the volume's faces.

    Parameters
    ----------
    volume
        A 3-D Dask array.
    start, shape
        The region's origin (may be negative) and shape, (z, y, x).

    Returns
    -------
    numpy.ndarray
        The region, computed synchronously in this process.
    """
    src, pads = [], []
    for s, n, size in zip(start, shape, volume.shape, strict=True):
        lo, hi = min(max(s, 0), size), max(min(s + n, size), 0)
        src.append(slice(lo, max(hi, lo)))
        pads.append((lo - s, s + n - max(hi, lo)))
    block = np.asarray(volume[tuple(src)].compute(scheduler="synchronous"))
    if any(p != (0, 0) for p in pads):
        ok = all(max(p) <= b for p, b in zip(pads, block.shape, strict=True))
        block = np.pad(block, pads, mode="symmetric" if ok else "edge")
    return block


# ----------------------------------------------------------------------------- random forest


class RandomForest(NamedTuple):
    """A trained random forest as ONNX bytes plus what inference needs."""

    onnx: bytes
    classes: tuple[str, ...]
    sigmas: tuple[float, ...]
    norm: tuple[float, float]
    halo: int
    train_accuracy: float


def _labelled_planes(labels: da.Array) -> tuple[np.ndarray, int]:
    from volmla.engine.cluster import compute

    per_plane, top = compute([(labels > 0).sum(axis=(1, 2)), labels.max()], desc="scanning labels")
    return np.flatnonzero(np.asarray(per_plane) > 0), int(top)


def _normalise(block: np.ndarray, norm: tuple[float, float]) -> np.ndarray:
    lo, hi = norm
    return ((np.asarray(block, np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(np.float32)


def train_random_forest(
    intensity: VolumeLike,
    labels: VolumeLike,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    n_estimators: int = 64,
    max_depth: int | None = 16,
    max_samples: int = 60_000,
    max_planes: int = 32,
    tile: int = 256,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    n_jobs: int | None = None,
) -> RandomForest:
    """Train a random forest on sparse labels (``phase + 1``, 0 unlabelled).

    Parameters
    ----------
    intensity, labels
        Volumes of the same shape (xarray, Dask or NumPy).
    sigmas
        Feature scales (voxels).
    n_estimators, max_depth
        Forest size (``max_depth`` keeps the ONNX file small).
    max_samples
        Labelled voxels drawn (uniformly, seeded) to fit the forest.
    max_planes
        At most this many labelled planes (evenly spread) are read.
    tile
        (y, x) tile edge used to read regions around labelled planes.
    classes
        Class names (void first); default from the labels' phase names.
    seed, n_jobs
        Forest seed and threads.

    Returns
    -------
    RandomForest

    Examples
    --------
    >>> rf = train_random_forest(vol, labels, n_estimators=32)  # doctest: +SKIP
    >>> save_random_forest(rf, "rf.onnx")  # doctest: +SKIP
    """
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    from volmla.engine.reduce import histogram, histogram_percentile

    image = as_volume(intensity, name="intensity", finite=True).data
    lab, lab_attrs = as_volume(labels, name="labels")
    if image.shape != lab.shape:
        raise VolmlaError(f"labels shape {lab.shape} differs from the intensity shape {image.shape}")
    sigmas = tuple(float(s) for s in sigmas)
    if not sigmas or min(sigmas) <= 0:
        raise VolmlaError(f"sigmas must be positive, got {sigmas}")
    halo = feature_halo(sigmas)
    planes, top = _labelled_planes(lab)
    n_classes = top - SPARSE_LABEL_OFFSET + 1
    if not len(planes) or n_classes < 2:
        raise VolmlaError(f"labels need labelled voxels of at least two classes (values 1..C, 0 = unlabelled), found maximum {top}")
    if len(planes) > max_planes:
        planes = planes[np.linspace(0, len(planes) - 1, max_planes).round().astype(int)]
    hist = histogram(image)
    lo, hi = (histogram_percentile(hist, q) for q in NORM_PERCENTILES)
    norm = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    rng = np.random.default_rng(seed)
    per_plane = max(1, max_samples // len(planes))
    features, targets = [], []
    _, ny, nx = image.shape
    for z in planes:
        for y0 in range(0, ny, tile):
            for x0 in range(0, nx, tile):
                shape = (1, min(tile, ny - y0), min(tile, nx - x0))
                target = read_region(lab, (int(z), y0, x0), shape)[0]
                where = np.argwhere(target > 0)
                if not len(where):
                    continue
                region = read_region(image, (int(z) - halo, y0 - halo, x0 - halo),
                                     (2 * halo + 1, shape[1] + 2 * halo, shape[2] + 2 * halo))
                feats = filter_features(_normalise(region, norm), sigmas=sigmas, halo=(halo, halo, halo))[:, 0]
                if len(where) > per_plane:
                    where = where[rng.choice(len(where), per_plane, replace=False)]
                features.append(feats[:, where[:, 0], where[:, 1]].T)
                targets.append(target[where[:, 0], where[:, 1]].astype(np.int64) - SPARSE_LABEL_OFFSET)
    x = np.concatenate(features).astype(np.float32)
    y = np.concatenate(targets)
    if len(x) > max_samples:
        keep = rng.choice(len(x), max_samples, replace=False)
        x, y = x[keep], y[keep]
    forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, min_samples_leaf=2,
                                    class_weight="balanced", random_state=seed, n_jobs=n_jobs)
    forest.fit(x, y)
    accuracy = float((forest.predict(x) == y).mean())
    logger.info("random forest: %d samples, %d features, train accuracy %.3f", len(x), x.shape[1], accuracy)
    proto = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    if classes is None:
        phases = {int(k): str(v) for k, v in lab_attrs.get("phases", {}).items()}
        classes = ("void", *(phases.get(k, f"phase{k}") for k in range(1, n_classes)))
    elif len(classes) != n_classes:
        raise VolmlaError(f"classes must name {n_classes} classes (void first), got {len(classes)}")
    meta = {"format": RF_FORMAT, "classes": list(classes), "sigmas": list(sigmas), "norm": list(norm),
            "halo": halo, "truncate": TRUNCATE, "n_features": n_features(sigmas)}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "volmla", json.dumps(meta)
    return RandomForest(proto.SerializeToString(), tuple(classes), sigmas, norm, halo, accuracy)


def save_random_forest(forest: RandomForest, path: str | Path) -> Path:
    """Write the forest's ONNX file (feature configuration in its metadata).

    Parameters
    ----------
    forest
        From :func:`train_random_forest`.
    path
        The ``.onnx`` file to write (its folder is created).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(forest.onnx)
    return path


def load_random_forest(path: str | Path) -> RandomForest:
    """Read a forest written by :func:`save_random_forest` (checks the ``volmla-rf`` metadata).

    Parameters
    ----------
    path
        The forest's ONNX file.

    Returns
    -------
    RandomForest
        Its bytes and feature configuration (``train_accuracy`` is NaN: not stored).
    """
    from volmla.segment.sessions import read_metadata

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != RF_FORMAT:
        raise VolmlaError(f"{path} is not a volmla random forest (metadata format {meta.get('format')!r})")
    return RandomForest(path.read_bytes(), tuple(meta["classes"]), tuple(meta["sigmas"]), tuple(meta["norm"]),
                        int(meta["halo"]), float("nan"))


def _rf_block(block: np.ndarray, *, halo: tuple[int, ...], model: str, sigmas: tuple[float, ...],
              norm: tuple[float, float]) -> np.ndarray:
    """Phases of a block's interior: features of the extended block, the forest on the interior only."""
    from volmla.segment.sessions import get_session

    session = get_session(model, providers=("CPUExecutionProvider",))
    feats = filter_features(_normalise(block, norm), sigmas=sigmas, halo=halo)
    flat = np.ascontiguousarray(feats.reshape(feats.shape[0], -1).T)
    label = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: flat})[0]
    return np.asarray(label, dtype=np.uint8).reshape(feats.shape[1:])


def random_forest_segment(volume: VolumeLike, *, model: str | Path) -> da.Array:
    """Apply a saved random forest block by block (halo from its largest sigma).

    Parameters
    ----------
    volume
        Intensity volume (NumPy, Dask or xarray).
    model
        A forest written by :func:`save_random_forest`.

    Returns
    -------
    dask.array.Array
        Lazy uint8 phase ids; independent of the chunking.

    Examples
    --------
    >>> phases = random_forest_segment(vol, model="rf.onnx")  # doctest: +SKIP
    """
    from volmla.engine.overlap import halo_map

    forest = load_random_forest(model)
    data = as_volume(volume, name="intensity", finite=True).data
    # a volume thinner than the halo is reflected as far as it goes (it is one chunk then)
    depth = tuple(min(forest.halo, max(n - 1, 0)) for n in data.shape)
    return halo_map(data, _rf_block, halo=depth, boundary="reflect", dtype=np.uint8, crops=True,
                    model=str(Path(model).resolve()), sigmas=forest.sigmas, norm=forest.norm)
