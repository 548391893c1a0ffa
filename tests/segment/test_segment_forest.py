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


def test_gradient_and_hessian_features_match_numpy_differences(rng: np.random.Generator) -> None:
    from skimage.feature import hessian_matrix_eigvals

    from volmla.segment._eigen import gradient_hessian_features

    g = rng.standard_normal((9, 10, 11)).astype(np.float32)
    got = gradient_hessian_features(g, out=np.empty((3, 7, 8, 9), np.float32))
    f = g.astype(np.float64)
    core = (slice(1, -1),) * 3
    grad = np.gradient(f)
    second = [np.diff(f, 2, axis=a)[tuple(slice(None) if b == a else slice(1, -1) for b in range(3))] for a in range(3)]
    mixed = {(a, b): np.gradient(grad[a], axis=b)[core] for a in range(3) for b in range(a + 1, 3)}
    eig = hessian_matrix_eigvals([second[0], mixed[0, 1], mixed[0, 2], second[1], mixed[1, 2], second[2]])
    np.testing.assert_allclose(got[0], np.sqrt(sum(d[core] ** 2 for d in grad)), atol=1e-5)
    np.testing.assert_allclose(got[1], eig[0], atol=1e-4)
    np.testing.assert_allclose(got[2], eig[2], atol=1e-4)


@pytest.fixture(scope="module")
def toy_forest(tmp_path_factory):
    image, truth = toy(noise=60.0)
    labels = np.zeros_like(truth)
    for z in (3, 10):
        labels[z] = truth[z] + 1
    forest = train_random_forest(image, labels, sigmas=(0.7, 1.6), n_estimators=24, seed=0, n_jobs=1)
    return image, save_random_forest(forest, tmp_path_factory.mktemp("rf") / "rf.onnx")


def test_compiled_trees_give_onnx_runtime_labels(toy_forest, rng: np.random.Generator) -> None:
    import onnxruntime as ort

    from volmla.segment.forest import _normalise, _predict, _trees_from_onnx

    image, path = toy_forest
    forest = load_random_forest(path)
    feats = filter_features(_normalise(image, forest.norm), sigmas=forest.sigmas)
    x = feats.reshape(feats.shape[0], -1)
    # plus perturbed voxels, so many land near a decision between two classes
    x = np.concatenate([x, x[:, rng.permutation(x.shape[1])] + rng.normal(0, 0.05, x.shape).astype(np.float32)], 1)
    trees = _trees_from_onnx(forest.onnx)
    assert trees is not None
    session = ort.InferenceSession(forest.onnx, providers=["CPUExecutionProvider"])
    want, proba = session.run(["label", "probabilities"], {session.get_inputs()[0].name: np.ascontiguousarray(x.T)})
    got = _predict(trees, x, threads=1)
    differ = got != want
    assert differ.mean() < 1e-3
    # only exact ties of the two leading classes (summed in another order) may go either way
    top = np.sort(proba[differ], axis=1)
    assert np.allclose(top[:, -1], top[:, -2], atol=1e-6)
    assert (_predict(trees, x, threads=3) == got).all()


def test_labels_do_not_depend_on_threads(toy_forest) -> None:
    image, path = toy_forest
    one = random_forest_segment(da.from_array(image, chunks=(10, 16, 32)), model=path, threads=1).compute()
    two = random_forest_segment(da.from_array(image, chunks=-1), model=path, threads=2).compute()
    assert (one == two).all()
    with pytest.raises(VolmlaError, match="threads must be a positive integer"):
        random_forest_segment(image, model=path, threads=0)


def test_two_class_forest_runs_on_onnx_runtime(tmp_path) -> None:
    image, truth = toy(noise=20.0)
    labels = np.zeros_like(truth)
    labels[5] = (truth[5] > 0) + 1
    path = save_random_forest(train_random_forest(image, labels, sigmas=(1.0,), n_estimators=4, seed=0, n_jobs=1),
                              tmp_path / "rf.onnx")
    got = random_forest_segment(image, model=path).compute()
    assert set(np.unique(got)) <= {0, 1} and (got == (truth > 0)).mean() > 0.9


def test_a_forest_on_the_old_features_asks_to_retrain(toy_forest, tmp_path) -> None:
    import json

    import onnx

    _, path = toy_forest
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == "volmla")
    meta = json.loads(entry.value)
    del meta["features"]  # as written before the feature set had a version
    entry.value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with pytest.raises(VolmlaError, match=r"older feature set \(version 1, now 2\): retrain it") as err:
        load_random_forest(tmp_path / "old.onnx")
    assert "\n" not in str(err.value)
