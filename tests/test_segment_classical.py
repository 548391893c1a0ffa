"""Classical baselines: histogram, multi-Otsu, k-means, random forest on filter features."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from skimage.filters import threshold_multiotsu

from volmla.errors import VolmlaError
from volmla.segment.classical import (
    feature_halo,
    filter_features,
    histogram,
    kmeans_segment,
    load_random_forest,
    percentiles,
    random_forest_segment,
    save_random_forest,
    threshold_segment,
    train_random_forest,
)


def toy(shape=(20, 32, 32), seed=0, noise=20.0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, noise, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


@pytest.mark.parametrize("chunks", [(1, 32, 32), (7, 9, 11), -1])
def test_histogram_matches_numpy(chunks, rng: np.random.Generator) -> None:
    image = rng.integers(0, 1000, (10, 12, 14)).astype(np.uint16)
    counts, edges = histogram(da.from_array(image, chunks=chunks))
    ref = np.bincount(image.ravel())
    assert (counts == ref[image.min():]).all() and edges[0] == image.min() - 0.5
    flt = image.astype(np.float32)
    c2, e2 = histogram(da.from_array(flt, chunks=chunks), bins=64)
    r2, re2 = np.histogram(flt, bins=64, range=(flt.min(), flt.max()))
    assert (c2 == r2).all() and np.allclose(e2, re2)
    lo, hi = percentiles(counts, edges, (1, 99))
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


def test_random_forest_beats_chance_and_is_chunking_independent(tmp_path) -> None:
    sigmas = (0.7, 1.6)
    image, truth = toy(noise=60.0)  # intensity alone is ambiguous: context helps
    labels = np.zeros_like(truth)
    for z in (3, 10):
        labels[z] = truth[z] + 1
    forest = train_random_forest(da.from_array(image, chunks=16), da.from_array(labels, chunks=16),
                                 sigmas=sigmas, n_estimators=16, seed=0, n_jobs=1)
    path = save_random_forest(forest, tmp_path / "rf.onnx")
    assert load_random_forest(path).halo == feature_halo(sigmas)
    ref = random_forest_segment(da.from_array(image, chunks=-1), model=path).compute()
    held_out = np.ones(truth.shape[0], bool)
    held_out[[3, 10]] = False
    accuracy = (ref[held_out] == truth[held_out]).mean()
    majority = np.bincount(truth.ravel()).max() / truth.size
    assert accuracy > majority + 0.2
    for chunks in ((8, 8, 8), (7, 11, 32)):
        got = random_forest_segment(da.from_array(image, chunks=chunks), model=path).compute()
        assert (got == ref).all()


def test_features_inner_voxels_do_not_depend_on_the_crop(rng: np.random.Generator) -> None:
    image = rng.normal(size=(24, 24, 24)).astype(np.float32)
    sigmas = (1.0,)
    h = feature_halo(sigmas)
    whole = filter_features(image, sigmas=sigmas)
    crop = filter_features(image[2 : 2 + 2 * h + 3, 1 : 1 + 2 * h + 2, :], sigmas=sigmas)
    assert np.allclose(crop[:, h : h + 3, h : h + 2, h:-h], whole[:, 2 + h : 5 + h, 1 + h : 3 + h, h:-h], atol=1e-5)


def test_loading_a_unet_as_forest_is_refused(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, ir_version=9), str(tmp_path / "x.onnx"))
    with pytest.raises(VolmlaError, match="not a volmla random forest"):
        load_random_forest(tmp_path / "x.onnx")
