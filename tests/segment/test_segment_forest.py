"""Random forest on filter features: features, training, chunking independence, loading."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.segment.forest import (
    feature_halo,
    filter_features,
    load_random_forest,
    random_forest_segment,
    save_random_forest,
    train_random_forest,
)


def toy(shape=(20, 32, 32), seed=0, noise=20.0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, noise, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


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
