"""Tiny U-Nets trained once per session on a toy volume (2-D and 3-D), shared by the
inference tests."""

from __future__ import annotations

import numpy as np
import pytest


def _toy_unet(tmp_path_factory: pytest.TempPathFactory, dim: int) -> str:
    pytest.importorskip("torch")
    import dask.array as da

    from volmla.segment.export import export
    from volmla.segment.train import TrainConfig, save_model, train

    shape = (24, 32, 32)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices(shape)
    truth = ((np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0).astype(np.uint8) + (np.sin(zz / 3.0 + xx / 5.0) > 0.6)).astype(np.uint8)
    image = (1000.0 + 100.0 * truth + rng.normal(0, 20, shape)).astype(np.uint16)
    labels = np.zeros_like(truth)
    for z in (4, 12, 20):
        labels[z] = truth[z] + 1
    config = TrainConfig(dim=dim, depth=2, base=4, patch=16, batch=2, iterations=40, lr=1e-2, augment=False,
                         val_every=10, threads=1, tile=16)
    result = train(da.from_array(image, chunks=16), da.from_array(labels, chunks=16), config=config)
    folder = tmp_path_factory.mktemp(f"model{dim}d")
    save_model(result, folder / "m.pt")
    return str(export(folder / "m.pt", folder / "m.onnx").path)


@pytest.fixture(scope="session")
def model3d(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-D toy U-Net (ONNX path): depth 2, base 4, trained 40 iterations."""
    return _toy_unet(tmp_path_factory, 3)


@pytest.fixture(scope="session")
def model2d(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The 2-D counterpart of :func:`model3d`."""
    return _toy_unet(tmp_path_factory, 2)
