"""Amortised U-Net inference (``tile=None``): large blocks, one tile each, shared context.

The labels are compared with whole-volume inference (one pass, the full receptive-field
halo around every voxel) over several chunkings and block plans.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from volmla.segment import infer
from volmla.segment.infer import default_context, plan_blocks, segment
from volmla.segment.sessions import inspect_model

torch = pytest.importorskip("torch")


def toy(shape=(32, 40, 48), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, 20, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


# model3d and model2d: tests/segment/conftest.py


_REFERENCES: dict[tuple[str, bytes], np.ndarray] = {}


def reference(image: np.ndarray, model: str) -> np.ndarray:
    """Whole-volume inference: one tile, the full halo around every voxel (computed once per volume)."""
    key = (model, image.tobytes())
    if key not in _REFERENCES:
        _REFERENCES[key] = segment(da.from_array(image, chunks=-1), model=model, tile="block", device="cpu").phases.compute()
    return _REFERENCES[key]


def small_tiles(monkeypatch, model: str, edge: int) -> None:
    """Tiles of at most ``edge**3`` voxels, so a small volume is cut into several blocks."""
    base = inspect_model(model).metadata["arch"]["base"]
    monkeypatch.setattr(infer, "TILE_BYTES", edge**3 * infer._BYTES_PER_CHANNEL * base)


@pytest.mark.parametrize("edge", [None, 32, 26])
@pytest.mark.parametrize("chunks", [(8, 8, 8), (7, 11, 13), (32, 1, 48), -1])
def test_amortised_labels_match_whole_volume_inference(monkeypatch, model3d: str, edge, chunks) -> None:
    image, _ = toy()
    exact = reference(image, model3d)
    if edge is not None:
        small_tiles(monkeypatch, model3d, edge)
    seg = segment(da.from_array(image, chunks=chunks), model=model3d, device="cpu")
    got = seg.phases.compute()
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert (got == exact).mean() >= 0.999
    if edge is not None:  # several blocks, each one tile of at most edge^3 voxels
        assert seg.phases.npartitions > 1
        info = inspect_model(model3d)
        for chunks_along in seg.phases.chunks:
            assert all(b % info.multiple == 0 for b in chunks_along[:-1])
        assert np.prod([max(c) + 2 * h for c, h in zip(seg.phases.chunks, seg.halo, strict=True)]) <= edge**3


def test_full_context_is_exactly_whole_volume_inference(monkeypatch, model3d: str) -> None:
    """With context = halo, blocks on the pooling grid reproduce the reference bit for bit."""
    image, _ = toy()
    exact = reference(image, model3d)
    small_tiles(monkeypatch, model3d, 40)
    halo = inspect_model(model3d).halo
    seg = segment(da.from_array(image, chunks=(7, 11, 13)), model=model3d, device="cpu", context=halo)
    assert seg.halo == (halo, halo, halo) and seg.phases.npartitions > 1
    assert (seg.phases.compute() == exact).all()


def test_context_is_what_keeps_the_labels(monkeypatch, model3d: str) -> None:
    """Without context the tile faces show: the 99.9 % agreement needs the default context."""
    image, _ = toy()
    exact = reference(image, model3d)
    small_tiles(monkeypatch, model3d, 20)
    bare = segment(da.from_array(image, chunks=-1), model=model3d, device="cpu", context=0).phases.compute()
    assert (bare == exact).mean() < 0.999


def test_amortised_is_chunking_independent_and_reports_confidence(monkeypatch, model3d: str) -> None:
    image, _ = toy()
    small_tiles(monkeypatch, model3d, 24)
    outs = [segment(da.from_array(image, chunks=c), model=model3d, device="cpu", uncertainty=True) for c in (5, (16, 40, 9))]
    (a, ca), (b, cb) = (da.compute(o.phases, o.confidence) for o in outs)
    assert (a == b).all() and (ca == cb).all()
    assert ca.dtype == np.uint8 and ca.min() >= 255 // 3  # the top class of 3 has probability >= 1/3


def test_2d_model_amortised_matches_whole_slices(monkeypatch, model2d: str) -> None:
    image, _ = toy()
    exact = reference(image, model2d)
    small_tiles(monkeypatch, model2d, 24)
    seg = segment(da.from_array(image, chunks=(5, 16, 16)), model=model2d, device="cpu")
    assert seg.halo[0] == 0
    assert (seg.phases.compute() == exact).mean() >= 0.999


def test_model_with_a_fixed_input_shape_keeps_its_tile(tmp_path) -> None:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1, 1], [1.0, -1.0])
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(tmp_path / "f.onnx"))
    image = np.arange(6 * 10 * 12, dtype=np.float32).reshape(6, 10, 12) - 300
    out = segment(da.from_array(image, chunks=5), model=tmp_path / "f.onnx", halo=0, device="cpu").phases.compute()
    assert (out == (image < 0)).all()  # channel 1 (-x) wins where x < 0


def test_default_context_grows_as_the_root_of_the_halo(model3d: str) -> None:
    from dataclasses import replace

    info = inspect_model(model3d)
    c = default_context(info)
    assert c % info.multiple == 0 and (5 * info.halo) ** 0.5 <= c <= info.halo
    assert default_context(replace(info, halo=28, multiple=4)) == 12
    assert default_context(replace(info, metadata={**info.metadata, "context": 3})) == 3  # the model's own word


@pytest.mark.parametrize("shape", [(128, 128, 128), (192, 200, 64), (30, 700, 5), (1, 90, 90)])
@pytest.mark.parametrize("max_tile", [50_000, 2_000_000])
def test_plan_blocks_tiles_fit_and_sit_on_the_grid(shape, max_tile) -> None:
    context, m = (8, 8, 8), 4
    chunks = plan_blocks(shape, context=context, multiple=m, max_tile=max_tile)
    assert tuple(sum(c) for c in chunks) == shape
    for c, n in zip(chunks, shape, strict=True):
        assert all(b % m == 0 for b in c[:-1]) and all(min(8, n) <= b <= c[0] for b in c)
    tile = np.prod([-(-(c[0] + 2 * h) // m) * m for c, h in zip(chunks, context, strict=True)])
    assert tile <= max_tile
    # no other block size on the grid infers fewer voxels in tiles that fit
    cost = np.prod([len(c) * -(-(c[0] + 2 * h) // m) * m for c, h in zip(chunks, context, strict=True)])
    for trial in [(b,) * 3 for b in range(m, 200, m)]:
        t = np.prod([-(-(min(b, n) + 2 * h) // m) * m for b, n, h in zip(trial, shape, context, strict=True)])
        thin = any(0 < n % min(b, n) < h for b, n, h in zip(trial, shape, context, strict=True))
        if t <= max_tile and not thin:
            assert cost <= np.prod([-(-n // min(b, n)) * (-(-(min(b, n) + 2 * h) // m) * m)
                                    for b, n, h in zip(trial, shape, context, strict=True)])


def test_blending_weights_are_computed_once_per_tile_shape() -> None:
    a = infer._weights((16, 16, 16), (4, 4, 4))
    assert infer._weights([16, 16, 16], [4, 4, 4]) is a
    assert not a.flags.writeable


def test_threads_share_the_cores_among_running_blocks(monkeypatch) -> None:
    import dask

    monkeypatch.setattr(infer.os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    with dask.config.set(num_workers=4):
        assert infer._auto_threads(1) == 8
        assert infer._auto_threads(2) == 4
        assert infer._auto_threads(100) == 2
