"""ONNX Runtime inference: chunk independence, session cache, model checks, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import dask.array as da
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from volmla.errors import VolmlaError
from volmla.segment import sessions
from volmla.segment.infer import segment
from volmla.segment.sessions import SESSION_STATS, clear_sessions, inspect_model

torch = pytest.importorskip("torch")


def toy(shape=(24, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    truth = (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)
    image = (1000.0 + 100.0 * truth + rng.normal(0, 20, shape)).astype(np.uint16)
    return image, truth.astype(np.uint8)


# model3d and model2d: tests/segment/conftest.py


@pytest.mark.parametrize("chunks", [(8, 8, 8), (5, 7, 9), (24, 1, 32), -1])
def test_block_tiles_are_chunking_independent(model3d: str, chunks) -> None:
    image, _ = toy()
    ref = segment(da.from_array(image, chunks=(12, 16, 16)), model=model3d, tile="block", device="cpu").phases.compute()
    got = segment(da.from_array(image, chunks=chunks), model=model3d, tile="block", device="cpu").phases.compute()
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert (got == ref).all()


@pytest.mark.parametrize("chunks", [(8, 8, 8), (7, 11, 13), -1])
def test_blended_tiles_agree_across_chunkings(model3d: str, chunks) -> None:
    image, _ = toy((32, 48, 48))
    exact = segment(da.from_array(image, chunks=-1), model=model3d, tile="block", device="cpu").phases.compute()
    ref = segment(da.from_array(image, chunks=16), model=model3d, tile=(32, 32, 32), device="cpu").phases.compute()
    got = segment(da.from_array(image, chunks=chunks), model=model3d, tile=(32, 32, 32), device="cpu").phases.compute()
    assert (got == ref).mean() >= 0.999
    assert (got == exact).mean() >= 0.999


def test_one_session_per_process_across_blocks(model3d: str) -> None:
    clear_sessions()
    before = SESSION_STATS["created"]
    image, _ = toy()
    arr = da.from_array(image, chunks=8)
    out = segment(arr, model=model3d, device="cpu", uncertainty=True)
    phases, conf = da.compute(out.phases, out.confidence)
    assert arr.npartitions >= 27
    assert SESSION_STATS["created"] - before == 1
    assert conf.dtype == np.uint8 and conf.max() <= 255 and conf.min() >= 255 // 3  # the top class of 3 has probability >= 1/3
    assert phases.max() < 3


def test_2d_model_runs_slicewise(model2d: str) -> None:
    image, _ = toy()
    info = inspect_model(model2d)
    assert info.dim == 2 and info.n_classes == 3
    a = segment(da.from_array(image, chunks=(5, 16, 16)), model=model2d, tile="block", device="cpu").phases.compute()
    b = segment(da.from_array(image, chunks=-1), model=model2d, tile="block", device="cpu").phases.compute()
    assert (a == b).all()
    tiled = segment(da.from_array(image, chunks=12), model=model2d, device="cpu").phases.compute()
    assert (tiled == b).mean() > 0.99


def _foreign(path, in_channels: int, out_channels: int) -> str:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [out_channels, in_channels, 1, 1, 1], [1.0] * (out_channels * in_channels))
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_channels, "Z", "Y", "X"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, "Z", "Y", "X"])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return str(path)


def test_model_with_two_input_channels_is_refused(tmp_path) -> None:
    model = _foreign(tmp_path / "two.onnx", 2, 3)
    with pytest.raises(VolmlaError, match="expects 2 input channels") as err:
        segment(da.zeros((8, 8, 8), chunks=4), model=model, halo=0, device="cpu")
    assert "\n" not in str(err.value)


def test_class_names_must_match_output_channels(tmp_path, model3d: str) -> None:
    proto = onnx.load(model3d)
    meta = json.loads(proto.metadata_props[0].value)
    meta["classes"] = ["void", "quartz"]
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(VolmlaError, match="outputs 3 channels but its metadata names 2 classes"):
        inspect_model(tmp_path / "bad.onnx")


def test_foreign_model_needs_halo_and_runs_on_raw_intensities(tmp_path) -> None:
    model = _foreign(tmp_path / "one.onnx", 1, 2)
    with pytest.raises(VolmlaError, match="halo="):
        inspect_model(model)
    image = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    out = segment(da.from_array(image, chunks=3), model=model, halo=0, device="cpu").phases.compute()
    assert (out == 0).all()  # two identical channels: argmax picks the first


def test_fp16_on_cpu_is_refused(model3d: str) -> None:
    with pytest.raises(VolmlaError, match="fp16"):
        segment(da.zeros((8, 8, 8), chunks=4), model=model3d, device="cpu", fp16=True)


def test_infer_never_imports_torch(model3d: str) -> None:
    code = (
        "import sys, dask.array as da, numpy as np\n"
        "from volmla.segment import infer, classical, forest, sessions, evaluate\n"
        f"out = infer.segment(da.from_array(np.full((12, 12, 12), 1000, np.uint16), chunks=6), model={model3d!r}, device='cpu')\n"
        "out.phases.compute()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.gpu
def test_gpu_matches_cpu(model3d: str) -> None:
    image, _ = toy()
    cpu = segment(da.from_array(image, chunks=12), model=model3d, device="cpu").phases.compute()
    gpu = segment(da.from_array(image, chunks=12), model=model3d, device="gpu").phases.compute()
    assert (cpu == gpu).mean() > 0.999
    half = segment(da.from_array(image, chunks=12), model=model3d, device="gpu", fp16=True).phases.compute()
    assert (cpu == half).mean() > 0.99


def test_providers_cpu_only_here() -> None:
    assert sessions.select_providers("cpu") == ("CPUExecutionProvider",)
    assert sessions.select_providers("auto")[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize(("tile", "tiles"), [(None, 1), ((8, 8, 8), 27)])
def test_fixed_batch_pads_only_up_to_the_tiles_there_are(model3d: str, tile, tiles: int) -> None:
    """GPU engines get steady batch shapes, but a block of one tile is not padded to 4."""
    from volmla.segment.infer import predict_block

    info = inspect_model(model3d)
    real = sessions.get_session(model3d, providers=("CPUExecutionProvider",))
    seen: list[int] = []

    class Counting:
        def run(self, names, feed):
            seen.append(next(iter(feed.values())).shape[0])
            return real.run(names, feed)

    image, _ = toy((16, 16, 16))
    labels, _ = predict_block(image, session=Counting(), info=info, tile=tile, batch=4, fixed_batch=True)
    assert labels.shape == image.shape
    assert sum(seen) == -(-tiles // min(4, tiles)) * min(4, tiles)
    assert set(seen) == {min(4, tiles)}
