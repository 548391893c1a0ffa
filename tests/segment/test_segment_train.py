"""U-Net training on sparse labels (torch, CPU) and ONNX export parity."""

from __future__ import annotations

import dask.array as da
import numpy as np
import onnxruntime as ort
import pytest

from volmla.errors import VolmlaError

torch = pytest.importorskip("torch")

from volmla.segment.export import export  # noqa: E402
from volmla.segment.infer import default_context  # noqa: E402
from volmla.segment.sessions import inspect_model, read_metadata  # noqa: E402
from volmla.segment.train import TrainConfig, load_model, masked_loss, save_model, train  # noqa: E402


def toy(shape=(24, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, 20, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


def sparse(truth: np.ndarray, planes=(4, 12, 20)) -> np.ndarray:
    labels = np.zeros_like(truth)
    for z in planes:
        labels[z] = truth[z] + 1
    return labels


FAST = dict(depth=2, base=4, patch=16, batch=2, lr=1e-2, val_every=10, threads=1)


@pytest.fixture(scope="module")
def trained():
    image, truth = toy()
    config = TrainConfig(iterations=40, augment=False, **FAST)
    return train(da.from_array(image, chunks=16), da.from_array(sparse(truth), chunks=16), config=config), truth


def test_loss_decreases_and_beats_chance(trained) -> None:
    result, truth = trained
    assert result.train_planes == (4, 12) and result.val_planes == (20,)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    majority = np.bincount(truth[20].ravel()).max() / truth[20].size
    best = max(h["val_accuracy"] for h in result.history)
    assert best > majority + 0.1
    assert result.classes == ("void", "phase1", "phase2")
    assert result.halo == 10 and result.tile == (64, 64, 64)


def test_context_is_measured_on_the_scan(tmp_path, trained) -> None:
    from volmla.segment.context import CONTEXT_AGREEMENT

    image, truth = toy((40, 44, 44))  # two blocks of 20^3 inside the halo of 10: 16,000 voxels
    result = train(image, sparse(truth, (8, 20, 32)), config=TrainConfig(iterations=20, augment=False, **FAST))
    agreement = result.context_agreement
    bar = CONTEXT_AGREEMENT + 3 / 16_000
    measured = sorted(agreement)[:-1]  # on the grid, up to the first that passes; then the halo
    assert measured == list(range(0, 2 * len(measured), 2)) and agreement[10] == 1.0
    assert result.context in agreement and agreement[result.context] >= bar
    assert all(agreement[c] < bar for c in measured if c < result.context)
    # saved and exported, the context is the ONNX model's own, which amortised inference reads
    save_model(result, tmp_path / "c.pt")
    export(tmp_path / "c.pt", tmp_path / "c.onnx")
    meta = read_metadata(tmp_path / "c.onnx")
    assert meta["context"] == result.context
    assert meta["context_agreement"] == {str(c): a for c, a in agreement.items()}
    assert default_context(inspect_model(tmp_path / "c.onnx")) == result.context
    # a scan too small to show 99.9 % (blocks of 4^3: 192 voxels) keeps the default
    small, _ = trained
    assert small.context is None and small.context_agreement is None


def test_training_is_reproducible() -> None:
    image, truth = toy((16, 24, 24))
    labels = sparse(truth, (3, 12))
    config = TrainConfig(iterations=4, augment=True, **FAST)
    a = train(image, labels, config=config).model.state_dict()
    b = train(image, labels, config=config).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_masked_loss_ignores_unlabelled() -> None:
    logits = torch.randn(1, 3, 4, 4, 4)
    target = torch.full((1, 4, 4, 4), -1)
    target[0, 0] = 1
    changed = logits.clone()
    changed[:, :, 1:] = torch.randn(1, 3, 3, 4, 4)
    assert torch.allclose(masked_loss(logits, target), masked_loss(changed, target))


def test_particle_target_and_2d(tmp_path) -> None:
    particles = np.zeros((8, 32, 32), np.uint32)
    particles[:, 4:14, 4:14] = 1
    particles[:, 14:28, 6:20] = 2
    image = (100.0 + 50.0 * (particles > 0)).astype(np.uint16)
    config = TrainConfig(dim=2, target="particles", iterations=3, patch=16, depth=2, base=4, batch=2, val_every=3, threads=1)
    result = train(image, particles, config=config)
    assert result.classes == ("background", "interior", "boundary")
    save_model(result, tmp_path / "p.pt")
    model, meta = load_model(tmp_path / "p.pt")
    assert meta["arch"]["dim"] == 2 and meta["target"] == "particles"


def test_unlabelled_volume_is_a_user_error() -> None:
    image, truth = toy((8, 16, 16))
    with pytest.raises(VolmlaError, match="labelled"):
        train(image, np.zeros_like(truth), config=TrainConfig(iterations=1, **FAST))


def test_export_parity_and_metadata(tmp_path, trained) -> None:
    result, _ = trained
    save_model(result, tmp_path / "m.pt")
    report = export(tmp_path / "m.pt", tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-4 and report.argmax_agreement == 1.0
    assert not (tmp_path / "m.onnx.data").exists()
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["classes"] == list(result.classes) and meta["halo"] == result.halo and meta["dim"] == 3
    assert meta["norm"] == list(result.norm) and meta["multiple"] == 2
    assert "context" not in meta  # not measured (too small a scan): the default applies
    # dynamic batch and spatial axes: another shape runs and matches torch
    x = np.random.default_rng(1).normal(0.5, 0.3, (3, 1, 6, 10, 4)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = result.model(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-4
    with pytest.raises(VolmlaError, match="exists"):
        export(tmp_path / "m.pt", tmp_path / "m.onnx")


def test_sampler_keeps_the_labelled_plane_in_the_middle_half() -> None:
    from volmla.segment.train import _Sampler

    image, truth = toy((40, 24, 24))
    labels = sparse(truth, (20,))
    allowed = np.zeros(40, bool)
    allowed[20] = True
    rng = np.random.default_rng(0)
    sampler = _Sampler(da.from_array(image, chunks=16), da.from_array(labels, chunks=16), [20], allowed,
                       (16, 8, 8), "phases", 1000, rng)
    for _ in range(20):
        _, target = sampler.sample(rng)
        rows = np.flatnonzero((target >= 0).any(axis=(1, 2)))
        assert len(rows) == 1 and 4 <= rows[0] < 12


def test_gain_is_validated() -> None:
    image, truth = toy((8, 16, 16))
    with pytest.raises(VolmlaError, match="gain"):
        train(image, sparse(truth, (4,)), config=TrainConfig(iterations=1, gain=0.7, **FAST))


def test_quick_train_3d_preset() -> None:
    from volmla.segment.train import quick_train_3d

    image, truth = toy((16, 32, 32))
    result = quick_train_3d(image, sparse(truth, (3, 8, 12)), iterations=3, threads=1, patch=(8, 16, 16), gain=0.05)
    assert result.train_planes == (3, 8) and result.val_planes == (12,)
    assert result.config.depth == 3 and result.config.gain == 0.05 and result.halo == 28
    x = torch.from_numpy((image[None, None, :8, :16, :16].astype(np.float32) - result.norm[0])
                         / (result.norm[1] - result.norm[0]))
    with torch.no_grad():
        assert torch.isfinite(result.model(x)).all()


def test_a_model_rescaled_by_modes_ignores_the_scans_intensity_scale(tmp_path) -> None:
    import json

    import onnx

    from volmla.engine.reduce import histogram, histogram_modes
    from volmla.segment.infer import segment

    image, truth = toy()
    config = TrainConfig(iterations=20, augment=False, rescale="modes", **FAST)
    result = train(image, sparse(truth), config=config)
    assert result.norm == histogram_modes(histogram(image))
    save_model(result, tmp_path / "m.pt")
    export(tmp_path / "m.pt", tmp_path / "m.onnx")
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["rescale"] == "modes" and inspect_model(tmp_path / "m.onnx").rescale == "modes"
    # another instrument's scale and offset: the scan's own modes map it as the training scan was
    other = (image.astype(np.float32) * 2.5 + 7000.0).astype(np.float32)
    a = np.asarray(segment(da.from_array(image, chunks=16), model=tmp_path / "m.onnx").phases)
    b = np.asarray(segment(da.from_array(other, chunks=16), model=tmp_path / "m.onnx").phases)
    assert (a == b).mean() > 0.995 and len(np.unique(a)) > 1  # modes found to 0.3 % of their gap
    # ... where a model with the training scan's fixed levels is lost
    fixed = train(image, sparse(truth), config=TrainConfig(iterations=20, augment=False, **FAST))
    save_model(fixed, tmp_path / "f.pt")
    export(tmp_path / "f.pt", tmp_path / "f.onnx")
    c = np.asarray(segment(da.from_array(other, chunks=16), model=tmp_path / "f.onnx").phases)
    assert (a == c).mean() < 0.8
    # a rescaling this volmla does not know is refused, not guessed
    proto = onnx.load(str(tmp_path / "m.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "volmla":
            prop.value = json.dumps({**json.loads(prop.value), "rescale": "zscore"})
    onnx.save(proto, str(tmp_path / "z.onnx"))
    with pytest.raises(VolmlaError, match="zscore"):
        inspect_model(tmp_path / "z.onnx")
    with pytest.raises(VolmlaError, match="rescale must be one of"):
        train(image, sparse(truth), config=TrainConfig(iterations=1, rescale="zscore", **FAST))  # type: ignore[arg-type]
