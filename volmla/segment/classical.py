"""Classical phase segmentation: multi-Otsu thresholds, k-means, and a random forest.

1. Histogram: one out-of-core pass (per-block ``bincount`` for 8/16-bit volumes, else
   ``np.histogram`` over the global range), summed over blocks; it gives the
   normalisation percentiles and the multi-Otsu thresholds. These global reductions are
   the only computes in this module besides model fitting.
2. ``threshold``: multi-Otsu on that histogram (rebinned to 256 bins) cuts K classes,
   numbered 0..K-1 by increasing intensity (0 = void).
3. ``kmeans``: K-means (best of 10 initialisations) fitted on a random sample of voxels
   drawn from every block (seeded per block), centres sorted by intensity, then every
   block is assigned to the nearest centre.
4. ``rf``: a random forest on multi-scale filter features like ilastik's (gaussian,
   gradient magnitude, Laplacian of Gaussian, structure-tensor and Hessian eigenvalues at
   sigmas 0.7, 1, 1.6, 3.5, 5, plus the normalised intensity), trained on the sparse
   labels (``phase + 1``, 0 unlabelled): features are computed on regions read around the
   labelled planes with the same halo and boundary mode as inference, so training and
   prediction see identical features. The forest is stored as ONNX (skl2onnx, no
   pickle) with its feature configuration in the ONNX metadata and is applied block by
   block with a halo derived from the largest sigma (:func:`feature_halo`) through
   :func:`volmla.overlap.halo_map`, on ONNX Runtime (one cached session per process).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from volmla.errors import VolmlaError
from volmla.segment import SPARSE_LABEL_OFFSET

logger = logging.getLogger(__name__)

DEFAULT_SIGMAS: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5, 5.0)
TRUNCATE = 3.5
RF_FORMAT = "volmla-rf"

__all__ = [
    "DEFAULT_SIGMAS",
    "RandomForest",
    "feature_halo",
    "filter_features",
    "histogram",
    "kmeans_centres",
    "kmeans_segment",
    "load_random_forest",
    "multiotsu_thresholds",
    "percentiles",
    "random_forest_segment",
    "read_region",
    "save_random_forest",
    "threshold_segment",
    "train_random_forest",
]


def _data(volume: Any) -> da.Array:
    data = volume.data if hasattr(volume, "dims") else volume
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=64)
    if data.ndim != 3:
        raise VolmlaError(f"volume must be 3-D (z, y, x), got shape {data.shape}")
    return data


# ----------------------------------------------------------------------------- histogram


def histogram(volume: Any, *, bins: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-core intensity histogram as ``(counts, edges)``.

    A view of :func:`volmla.preprocess.histogram` (one bin per grey value for integer
    data, trimmed to the values present; ``bins`` bins over the global range otherwise).

    Examples
    --------
    >>> counts, edges = histogram(np.array([[[0, 1, 1, 3]]], np.uint8))
    >>> counts.tolist(), float(edges[0])
    ([1, 2, 0, 1], -0.5)
    """
    from volmla.preprocess import histogram as global_histogram

    hist = global_histogram(_data(volume), bins=bins)
    edges = hist.first + np.arange(len(hist.counts) + 1, dtype=np.float64) * hist.width
    if not hist.exact:
        return hist.counts, edges
    edges -= 0.5
    nz = np.flatnonzero(hist.counts)
    first, last = (int(nz[0]), int(nz[-1])) if len(nz) else (0, 0)
    return hist.counts[first : last + 1], edges[first : last + 2]


def percentiles(counts: np.ndarray, edges: np.ndarray, q: Sequence[float]) -> tuple[float, ...]:
    """Percentiles ``q`` (0-100) of a histogram, at bin centres.

    Examples
    --------
    >>> percentiles(np.array([1, 1, 1, 1]), np.arange(5) - 0.5, (0, 100))
    (0.0, 3.0)
    """
    centres = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(counts) / max(int(np.sum(counts)), 1)
    return tuple(float(centres[min(int(np.searchsorted(cdf, p / 100 - 1e-12)), len(centres) - 1)]) for p in q)


# ----------------------------------------------------------------------------- threshold


def _check_classes(classes: int) -> int:
    if not isinstance(classes, int | np.integer) or not 2 <= classes <= 255:
        raise VolmlaError(f"classes must be an integer in 2..255, got {classes!r}")
    return int(classes)


def multiotsu_thresholds(volume: Any, *, classes: int = 3) -> np.ndarray:
    """Multi-Otsu thresholds (``classes - 1`` values) from the out-of-core histogram."""
    from skimage.filters import threshold_multiotsu

    classes = _check_classes(classes)
    counts, edges = histogram(volume)
    if len(counts) > 256:  # rebin: multi-Otsu's lookup table grows with bins squared
        new_edges = np.linspace(edges[0], edges[-1], 257)
        centres = (edges[:-1] + edges[1:]) / 2
        counts = np.histogram(centres, bins=new_edges, weights=counts)[0]
        edges = new_edges
    if np.count_nonzero(counts) < classes:
        raise VolmlaError(f"the volume has fewer than {classes} distinct intensities: cannot cut {classes} classes")
    centres = (edges[:-1] + edges[1:]) / 2
    return np.asarray(threshold_multiotsu(classes=classes, hist=(counts, centres)), dtype=np.float64)


def _digitize(block: np.ndarray, *, cuts: np.ndarray) -> np.ndarray:
    return np.digitize(block, cuts).astype(np.uint8)


def threshold_segment(volume: Any, *, classes: int = 3) -> da.Array:
    """K intensity classes (0..K-1 by increasing intensity) cut at multi-Otsu thresholds.

    Examples
    --------
    >>> phases = threshold_segment(vol, classes=4)  # doctest: +SKIP
    """
    data = _data(volume)
    cuts = multiotsu_thresholds(data, classes=classes)
    logger.info("multi-Otsu thresholds %s", cuts.tolist())
    return da.map_blocks(_digitize, data, cuts=cuts, dtype=np.uint8)


# ----------------------------------------------------------------------------- k-means


def _sample_block(block: np.ndarray, *, n: int, seed: int, index: int) -> np.ndarray:
    flat = block.ravel()
    rng = np.random.default_rng([seed, index])
    return flat[rng.integers(0, flat.size, size=min(n, flat.size))].astype(np.float64)


def kmeans_centres(volume: Any, *, classes: int = 3, sample: int = 200_000, seed: int = 0) -> np.ndarray:
    """K-means centres (sorted) of a random voxel sample drawn from every block."""
    from sklearn.cluster import KMeans

    from volmla.cluster import compute

    classes = _check_classes(classes)
    data = _data(volume)
    blocks = data.to_delayed().ravel()
    per_block = max(1, int(np.ceil(sample / len(blocks))))
    parts = [dask.delayed(_sample_block)(b, n=per_block, seed=seed, index=i) for i, b in enumerate(blocks)]
    values = np.concatenate(compute(parts, desc="sampling voxels"))
    if len(np.unique(values)) < classes:
        raise VolmlaError(f"the volume has fewer than {classes} distinct intensities: cannot form {classes} clusters")
    fit = KMeans(n_clusters=classes, n_init=10, random_state=seed).fit(values[:, None])
    return np.sort(fit.cluster_centers_.ravel())


def kmeans_segment(volume: Any, *, classes: int = 3, sample: int = 200_000, seed: int = 0) -> da.Array:
    """K intensity classes by k-means, numbered 0..K-1 by increasing mean intensity.

    Examples
    --------
    >>> phases = kmeans_segment(vol, classes=4, seed=0)  # doctest: +SKIP
    """
    data = _data(volume)
    centres = kmeans_centres(data, classes=classes, sample=sample, seed=seed)
    logger.info("k-means centres %s", centres.tolist())
    return da.map_blocks(_digitize, data, cuts=(centres[1:] + centres[:-1]) / 2, dtype=np.uint8)


# ----------------------------------------------------------------------------- features


def feature_halo(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Context the features need: the structure tensor's inner (sigma/2) and outer gaussians plus a Sobel.

    Examples
    --------
    >>> feature_halo((1.0,))
    7
    """
    s = max(sigmas)
    radius = lambda sigma: int(TRUNCATE * sigma + 0.5)  # noqa: E731 (scipy's gaussian radius)
    return max(radius(s) + 2, radius(s / 2) + 1 + radius(s))


def n_features(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Features per voxel: the intensity, then 9 per sigma."""
    return 1 + 9 * len(sigmas)


def filter_features(block: np.ndarray, *, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> np.ndarray:
    """Multi-scale filter features of a 3-D block: ``(n_features, z, y, x)`` float32.

    Per sigma: gaussian, gradient magnitude, Laplacian of Gaussian, the 3 structure
    tensor eigenvalues (gradients of the sigma/2-smoothed image, averaged over sigma),
    the 3 Hessian eigenvalues. Voxels within :func:`feature_halo` of the block's faces
    depend on the boundary mode (reflect); inner voxels do not.
    """
    from skimage.feature import (
        hessian_matrix,
        hessian_matrix_eigvals,
        structure_tensor,
        structure_tensor_eigenvalues,
    )

    image = np.asarray(block, dtype=np.float32)
    out = np.empty((n_features(sigmas), *image.shape), np.float32)
    out[0] = image
    i = 1
    for s in sigmas:
        smooth = ndi.gaussian_filter(image, s, mode="reflect", truncate=TRUNCATE)
        out[i] = smooth
        out[i + 1] = ndi.gaussian_gradient_magnitude(image, s, mode="reflect", truncate=TRUNCATE)
        out[i + 2] = ndi.gaussian_laplace(image, s, mode="reflect", truncate=TRUNCATE)
        inner = ndi.gaussian_filter(image, s / 2, mode="reflect", truncate=TRUNCATE)
        tensor = structure_tensor(inner, sigma=s, mode="reflect")
        out[i + 3 : i + 6] = structure_tensor_eigenvalues(tensor)
        hessian = hessian_matrix(smooth, sigma=0.0001, mode="reflect", use_gaussian_derivatives=False)
        out[i + 6 : i + 9] = hessian_matrix_eigvals(hessian)
        i += 9
    return out


def read_region(volume: da.Array, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Read ``volume[start : start + shape]``, mirroring (SciPy ``reflect``) beyond the volume's faces."""
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
    from volmla.cluster import compute

    per_plane, top = compute([(labels > 0).sum(axis=(1, 2)), labels.max()], desc="scanning labels")
    return np.flatnonzero(np.asarray(per_plane) > 0), int(top)


def _normalise(block: np.ndarray, norm: tuple[float, float]) -> np.ndarray:
    lo, hi = norm
    return ((np.asarray(block, np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(np.float32)


def train_random_forest(
    intensity: Any,
    labels: Any,
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

    image = _data(intensity)
    lab = _data(labels)
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
    counts, edges = histogram(image)
    lo, hi = percentiles(counts, edges, (1.0, 99.0))
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
                feats = filter_features(_normalise(region, norm), sigmas=sigmas)[:, halo, halo:-halo, halo:-halo]
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
        phases = {int(k): str(v) for k, v in (getattr(labels, "attrs", {}) or {}).get("phases", {}).items()}
        classes = ("void", *(phases.get(k, f"phase{k}") for k in range(1, n_classes)))
    elif len(classes) != n_classes:
        raise VolmlaError(f"classes must name {n_classes} classes (void first), got {len(classes)}")
    meta = {"format": RF_FORMAT, "classes": list(classes), "sigmas": list(sigmas), "norm": list(norm),
            "halo": halo, "truncate": TRUNCATE, "n_features": n_features(sigmas)}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "volmla", json.dumps(meta)
    return RandomForest(proto.SerializeToString(), tuple(classes), sigmas, norm, halo, accuracy)


def save_random_forest(forest: RandomForest, path: str | Path) -> Path:
    """Write the forest's ONNX file (feature configuration in its metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(forest.onnx)
    return path


def load_random_forest(path: str | Path) -> RandomForest:
    """Read a forest written by :func:`save_random_forest` (checks the ``volmla-rf`` metadata)."""
    from volmla.segment.infer import read_metadata

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != RF_FORMAT:
        raise VolmlaError(f"{path} is not a volmla random forest (metadata format {meta.get('format')!r})")
    return RandomForest(path.read_bytes(), tuple(meta["classes"]), tuple(meta["sigmas"]), tuple(meta["norm"]),
                        int(meta["halo"]), float("nan"))


def _rf_block(block: np.ndarray, *, model: str, sigmas: tuple[float, ...], norm: tuple[float, float]) -> np.ndarray:
    from volmla.segment.infer import get_session

    session = get_session(model, providers=("CPUExecutionProvider",))
    feats = filter_features(_normalise(block, norm), sigmas=sigmas)
    flat = feats.reshape(feats.shape[0], -1).T
    label = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: np.ascontiguousarray(flat)})[0]
    return np.asarray(label, dtype=np.uint8).reshape(block.shape)


def random_forest_segment(volume: Any, *, model: str | Path) -> da.Array:
    """Apply a saved random forest block by block (halo from its largest sigma).

    Examples
    --------
    >>> phases = random_forest_segment(vol, model="rf.onnx")  # doctest: +SKIP
    """
    from volmla.overlap import halo_map

    forest = load_random_forest(model)
    data = _data(volume)
    # a volume thinner than the halo is reflected as far as it goes (it is one chunk then)
    depth = tuple(min(forest.halo, max(n - 1, 0)) for n in data.shape)
    return halo_map(data, _rf_block, halo=depth, boundary="reflect", dtype=np.uint8,
                    model=str(Path(model).resolve()), sigmas=forest.sigmas, norm=forest.norm)
