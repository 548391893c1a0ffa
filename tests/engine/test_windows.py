"""Kernels that read their own windows from stored arrays, against the in-memory call."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from volmla.engine.windows import read_window, window_map
from volmla.errors import VolmlaError


def _stored(tmp_path, name: str, data: np.ndarray, chunks=(7, 9, 11)) -> str:
    path = str(tmp_path / f"{name}.zarr")
    zarr.create_array(path, data=data, chunks=chunks)
    return path


def _sum_of_two(a: np.ndarray, b: np.ndarray, *, halo: tuple[int, int, int]) -> np.ndarray:
    out = ndi.uniform_filter(a.astype(np.float64) + b, size=2 * halo[0] + 1, mode="constant")
    return out[tuple(slice(h, n - h) for h, n in zip(halo, out.shape, strict=True))]


@pytest.mark.parametrize("chunks", [((30,), (26,), (22,)), ((10, 10, 10), (13, 13), (5, 17)), ((4,) * 7 + (2,), (26,), (11, 11))])
def test_equals_the_whole_volume_call_for_any_chunking(tmp_path, chunks) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 9, (30, 26, 22)).astype(np.uint16)
    b = rng.random((30, 26, 22)).astype(np.float32)
    paths = [_stored(tmp_path, "a", a), _stored(tmp_path, "b", b)]
    halo = (3, 3, 3)
    with dask.config.set(scheduler="threads"):
        got = window_map(_sum_of_two, paths, chunks=chunks, halo=halo, dtype=np.float64).compute()
    expected = ndi.uniform_filter(a.astype(np.float64) + b, size=7, mode="constant")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_tasks_have_no_dependencies_and_the_kernel_sees_its_origin(tmp_path) -> None:
    path = _stored(tmp_path, "z", np.zeros((8, 8, 8), np.uint8))

    def where(w: np.ndarray, *, halo, origin) -> np.ndarray:
        assert w.shape == (6, 6, 6) and halo == (1, 1, 1)
        return np.full((4, 4, 4), origin[0] * 100 + origin[1] * 10 + origin[2], np.int64)

    out = window_map(where, [path], chunks=((4, 4),) * 3, halo=(1, 1, 1), dtype=np.int64, with_origin=True)
    assert all(not deps for deps in out.dask.dependencies.values())
    assert out.compute()[4, 0, 4] == 404


def test_read_window_fills_beyond_the_array(tmp_path) -> None:
    path = _stored(tmp_path, "r", np.arange(27, dtype=np.int32).reshape(3, 3, 3), chunks=(2, 2, 2))
    w = read_window(path, (-1, 0, 2), (1, 3, 5), cval=-5)
    assert w.shape == (2, 3, 3)
    assert (w[0] == -5).all() and (w[1, :, 1:] == -5).all()
    assert w[1, :, 0].tolist() == [2, 5, 8]


def test_bad_arguments(tmp_path) -> None:
    path = _stored(tmp_path, "x", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(VolmlaError, match="at least one"):
        window_map(_sum_of_two, [], chunks=((4,),) * 3, halo=(1, 1, 1), dtype=np.float64)
    with pytest.raises(VolmlaError, match="halo"):
        window_map(_sum_of_two, [path], chunks=((4,),) * 3, halo=(1, 1), dtype=np.float64)
    with pytest.raises(VolmlaError, match="cval"):
        window_map(_sum_of_two, [path], chunks=((4,),) * 3, halo=(1, 1, 1), dtype=np.float64, cval=[0, 1])
