"""Classical baselines: histogram, multi-Otsu, k-means."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from skimage.filters import threshold_multiotsu

from volmla.engine.reduce import histogram, histogram_percentile
from volmla.errors import VolmlaError
from volmla.segment.classical import kmeans_segment, threshold_segment


def toy(shape=(20, 32, 32), seed=0, noise=20.0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, noise, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


@pytest.mark.parametrize("chunks", [(1, 32, 32), (7, 9, 11), -1])
def test_histogram_matches_numpy(chunks, rng: np.random.Generator) -> None:
    image = rng.integers(0, 1000, (10, 12, 14)).astype(np.uint16)
    hist = histogram(da.from_array(image, chunks=chunks))
    ref = np.bincount(image.ravel())
    assert (hist.counts[: len(ref)] == ref).all() and hist.exact and hist.first == 0
    flt = image.astype(np.float32)
    h2 = histogram(da.from_array(flt, chunks=chunks), bins=64)
    r2, re2 = np.histogram(flt, bins=64, range=(flt.min(), flt.max()))
    e2 = h2.first + np.arange(65) * h2.width
    assert (h2.counts == r2).all() and np.allclose(e2, re2)
    lo, hi = histogram_percentile(hist, 1), histogram_percentile(hist, 99)
    assert abs(lo - np.percentile(image, 1)) <= 2 and abs(hi - np.percentile(image, 99)) <= 2


def test_threshold_matches_skimage_multiotsu(rng: np.random.Generator) -> None:
    image = np.concatenate([rng.normal(m, 8, 4000) for m in (40, 120, 200)]).clip(0, 255).astype(np.uint8).reshape(12, 20, 50)
    got = threshold_segment(da.from_array(image, chunks=(5, 7, 50)), classes=3).compute()
    ref = np.digitize(image, threshold_multiotsu(image, classes=3))
    assert (got == ref).all()


def test_kmeans_classes_ordered_by_intensity() -> None:
    image, truth = toy(noise=10.0)
    got = kmeans_segment(da.from_array(image, chunks=(7, 16, 16)), classes=3, seed=0).compute()
    assert (got == truth).mean() > 0.98
    means = [image[got == k].mean() for k in range(3)]
    assert means == sorted(means)


def test_too_many_classes_is_a_user_error() -> None:
    with pytest.raises(VolmlaError, match="classes"):
        threshold_segment(np.zeros((4, 4, 4), np.uint8), classes=3)
    with pytest.raises(VolmlaError, match="classes"):
        kmeans_segment(np.zeros((4, 4, 4), np.uint8), classes=1)
