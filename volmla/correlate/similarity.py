"""How well a map matches a CT plane: mutual information and the registration quality.

1. :func:`mutual_information` of two images from their joint histogram (integer images
   with few values are binned by value, intensities between robust percentiles);
2. :func:`_quality`: the mutual information above chance (the mean over three shuffles
   of the map) divided by the map's entropy: ~0 for no relation, at most 1. It ranks
   candidate planes and tilts and scores the final fit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mutual_information"]


def mutual_information(a: np.ndarray, b: np.ndarray, *, bins: int = 32) -> float:
    """Mutual information (nats) of two images from their joint histogram.

    Integer images with at most ``bins`` distinct values are binned by value.

    Parameters
    ----------
    a, b
        Two images of the same size.
    bins
        Histogram bins per image (intensities are binned between their 0.5 and 99.5
        percentiles).

    Returns
    -------
    float
        The mutual information in nats (0 for independent images).

    Examples
    --------
    >>> a = np.arange(4).repeat(25)
    >>> round(mutual_information(a, a), 3)  # log(4)
    1.386
    """
    def codes(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).ravel()
        if np.issubdtype(x.dtype, np.integer):
            vals, inv = np.unique(x, return_inverse=True)
            if vals.size <= bins:
                return inv
        x = x.astype(np.float64)
        lo, hi = np.percentile(x, [0.5, 99.5])
        if hi <= lo:
            return np.zeros(x.size, np.int64)
        return np.clip(((x - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)

    ca, cb = codes(a), codes(b)
    joint = np.bincount(ca * (cb.max() + 1) + cb, minlength=(ca.max() + 1) * (cb.max() + 1)).astype(np.float64)
    joint = joint.reshape(ca.max() + 1, cb.max() + 1) / ca.size
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])))


def _entropy(a: np.ndarray, bins: int = 32) -> float:
    """Entropy (nats) of an image: its mutual information with itself."""
    return mutual_information(a, a, bins=bins)


def _quality(map_image: np.ndarray, ct_on_map: np.ndarray, valid: np.ndarray, seed: int) -> float:
    """MI above a shuffled map's MI, over the map's entropy: ~0 for no relation, <= 1."""
    a, b = map_image[valid], ct_on_map[valid]
    if a.size < 16:
        return 0.0
    h = _entropy(a)
    if h <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    null = float(np.mean([mutual_information(rng.permutation(a), b) for _ in range(3)]))
    return max(0.0, (mutual_information(a, b) - null) / h)
