"""The halo engine: bit-identical to the in-memory SciPy call for any chunking and boundary."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from volmla.engine.overlap import BOUNDARIES, halo_map, normalise_halo
from volmla.errors import VolmlaError

FILTERS = {
    # name: (scipy filter, kwargs, halo)
    "gaussian": (ndi.gaussian_filter, {"sigma": 0.8, "truncate": 3.0}, 2),
    "median": (ndi.median_filter, {"size": 3}, 1),
    # uniform_filter keeps a running sum along each line, so general float data round
    # differently depending on where a block starts: it is exact on multiples of 27
    # (every 1-D pass of size 3 then sums and divides integers exactly).
    "uniform": (ndi.uniform_filter, {"size": 3}, 1),
}


@st.composite
def volume_and_chunks(draw: st.DrawFn, min_edge: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A shape (single-voxel axes included) and a chunking from 1-voxel-thin chunks to whole axes."""
    shape = tuple(draw(st.one_of(st.just(1), st.integers(min_edge, 11))) for _ in range(3))
    chunks = tuple(draw(st.sampled_from(sorted({1, max(1, n // 2), n - 1 or 1, n}))) for n in shape)
    assume(np.prod([-(-n // c) for n, c in zip(shape, chunks, strict=True)]) <= 100)  # keep it quick
    return shape, chunks


@pytest.mark.parametrize("name", sorted(FILTERS))
@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=volume_and_chunks(min_edge=3), boundary=st.sampled_from(BOUNDARIES), seed=st.integers(0, 2**16))
def test_halo_map_bit_identical_to_scipy(name, case, boundary, seed):
    shape, chunks = case
    filt, kwargs, halo = FILTERS[name]
    rng = np.random.default_rng(seed)
    if name == "uniform":
        x = 27.0 * rng.integers(0, 1000, shape)
    else:
        x = rng.normal(100.0, 20.0, shape).astype(np.float32)
    cval = 81.0  # a multiple of 27 (see uniform above)
    out = halo_map(da.from_array(x, chunks=chunks), filt, halo=halo, boundary=boundary, cval=cval, **kwargs)
    ref = filt(x, mode=boundary, cval=cval, **kwargs)
    np.testing.assert_array_equal(out.compute(), ref)


def _cropping_gaussian(block: np.ndarray, *, halo: tuple[int, int, int], sigma: float, mode: str, fill: float) -> np.ndarray:
    """A separable gaussian (radius 2) that crops each axis's halo once that axis is filtered."""
    for axis, h in enumerate(halo):
        block = ndi.gaussian_filter1d(block, sigma, axis=axis, mode=mode, cval=fill, truncate=3.0, output=np.float32)
        block = block[(slice(None),) * axis + (slice(h, block.shape[axis] - h),)]
    return block


@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=volume_and_chunks(min_edge=3), boundary=st.sampled_from(BOUNDARIES), seed=st.integers(0, 2**16))
def test_cropping_kernel_bit_identical_to_scipy(case, boundary, seed):
    shape, chunks = case
    x = np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)
    out = halo_map(da.from_array(x, chunks=chunks), _cropping_gaussian, halo=2, boundary=boundary, cval=7.0,
                   dtype=np.float32, crops=True, sigma=0.8, mode=boundary, fill=7.0)
    ref = ndi.gaussian_filter(x, 0.8, mode=boundary, cval=7.0, truncate=3.0, output=np.float32)
    np.testing.assert_array_equal(out.compute(), ref)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_thin_and_whole_chunks_with_anisotropic_halo(boundary, rng):
    x = rng.normal(0, 1, (9, 10, 11)).astype(np.float32)
    sigma = (0.4, 1.0, 1.6)
    halo = tuple(int(4.0 * s + 0.5) for s in sigma)
    ref = ndi.gaussian_filter(x, sigma, mode=boundary)
    for chunks in [(1, 10, 11), (9, 1, 11), (9, 10, 1), (2, 3, 5), x.shape]:
        out = halo_map(da.from_array(x, chunks=chunks), ndi.gaussian_filter, halo=halo, boundary=boundary, sigma=sigma)
        np.testing.assert_array_equal(out.compute(), ref)
    # a single-slice volume: its halo along z comes from the boundary mode alone
    plane = x[:1]
    out = halo_map(da.from_array(plane, chunks=(1, 3, 4)), ndi.gaussian_filter, halo=halo, boundary=boundary,
                   cval=2.0, sigma=sigma)
    np.testing.assert_array_equal(out.compute(), ndi.gaussian_filter(plane, sigma, mode=boundary, cval=2.0))
    # and a halo of several voxels along its one plane (Dask pads a "symmetric" axis by at
    # most its length: a one-plane scan came out with no plane)
    wide = (1.2, 1.0, 1.6)
    out = halo_map(da.from_array(plane, chunks=(1, 3, 4)), ndi.gaussian_filter, halo=(5, 4, 6), boundary=boundary,
                   cval=2.0, sigma=wide)
    np.testing.assert_array_equal(out.compute(), ndi.gaussian_filter(plane, wide, mode=boundary, cval=2.0))


def test_output_dtype_and_zero_halo(rng):
    x = rng.integers(0, 100, (6, 6, 6)).astype(np.uint16)
    out = halo_map(da.from_array(x, chunks=4), np.sqrt, halo=0, dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.compute(), np.sqrt(x).astype(np.float32))


def test_halo_larger_than_volume_is_an_error():
    x = da.zeros((5, 20, 20), chunks=5)
    with pytest.raises(VolmlaError, match="halo 5 along axis z is larger than the volume"):
        halo_map(x, ndi.gaussian_filter, halo=5, sigma=1.0)
    with pytest.raises(VolmlaError, match="halo must be one non-negative integer or three"):
        normalise_halo(-1)
    with pytest.raises(VolmlaError, match="boundary must be one of"):
        halo_map(x, ndi.gaussian_filter, halo=1, boundary="mirror", sigma=0.2)
    with pytest.raises(VolmlaError, match="3-D Dask array"):
        halo_map(np.zeros((3, 3, 3)), ndi.gaussian_filter, halo=1, sigma=0.2)


def test_one_task_per_block_plus_face_slabs():
    # 4 x 4 x 4 blocks: per block one halo task and at most six face-slab tasks, next to
    # the reads (dask.array.overlap needs some forty tasks per block)
    x = da.zeros((32, 32, 32), chunks=8, dtype=np.float32)
    out = halo_map(x, ndi.gaussian_filter, halo=2, sigma=0.5)
    layers = out.__dask_graph__().layers
    own = {name: len(layer) for name, layer in layers.items() if name.startswith("halo-")}
    assert sum(own.values()) == 7 * 64
    np.testing.assert_array_equal(out.compute(), 0.0)


def _nbytes_held(x: np.ndarray) -> int:
    while isinstance(x.base, np.ndarray):
        x = x.base
    return x.nbytes


def test_task_results_hold_no_more_than_their_bytes():
    # a view as a task's result keeps its whole base alive while Dask counts only the
    # view: the face slabs and the cropped results must be compact copies
    from volmla.engine.overlap import face_slab

    block = np.arange(6 * 5 * 4, dtype=np.float64).reshape(6, 5, 4)
    for axis in range(3):
        for side in (0, 1):
            slab = face_slab(block, axis, side, 2)
            assert _nbytes_held(slab) == slab.nbytes
    x = da.from_array(np.ones((16, 16, 16), np.float32), chunks=8)
    for crops in (False, True):
        def kernel(ext: np.ndarray, crops: bool = crops, **kw: object) -> np.ndarray:
            return ext[2:-2, 2:-2, 2:-2] if crops else ext
        out = halo_map(x, kernel, halo=2, crops=crops)
        blocks = dask.compute(*out.to_delayed().ravel(), scheduler="sync", optimize_graph=False)
        assert all(_nbytes_held(b) == b.nbytes == 8**3 * 4 for b in blocks)
