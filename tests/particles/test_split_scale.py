"""The split at scale: its fast kernels equal the references, halo-sized blocks keep it chunk-independent."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from volmla.particles import label_particles
from volmla.particles import mask as mask_module
from volmla.particles import split as split_module
from volmla.particles.split import _grown, _sitk_distance, distance_map, regional_maxima
from volmla.synthetic import crushed_ore


def _sitk_regional_maxima(values: np.ndarray) -> np.ndarray:
    import SimpleITK as sitk

    filt = sitk.RegionalMaximaImageFilter()
    filt.SetFullyConnected(True)
    filt.SetBackgroundValue(0)
    filt.SetForegroundValue(1)
    return sitk.GetArrayFromImage(filt.Execute(sitk.GetImageFromArray(values))).astype(bool)


@pytest.fixture(scope="module")
def hard_solid() -> np.ndarray:
    return crushed_ore(shape=64, seed=1, level="hard").particles > 0


def test_regional_maxima_are_simpleitks(hard_solid):
    rng = np.random.default_rng(0)
    for _ in range(60):  # plateaus everywhere: few integer levels in small blocks
        shape = tuple(int(n) for n in rng.integers(1, 8, 3))
        values = rng.integers(0, 4, shape).astype(np.float32)
        np.testing.assert_array_equal(regional_maxima(values), _sitk_regional_maxima(values))
    dist = _sitk_distance(hard_solid, (1.0, 1.0, 1.0))
    for relief in (dist, dist * np.float32(0.7), np.round(dist)):
        found = regional_maxima(relief)
        assert found.any()
        np.testing.assert_array_equal(found, _sitk_regional_maxima(relief))


def test_distance_map_is_the_maurer_transform(hard_solid):
    pytest.importorskip("edt")
    np.testing.assert_array_equal(distance_map(hard_solid), _sitk_distance(hard_solid, (1.0, 1.0, 1.0)))
    sampling = (1.5, 1.0, 1.25)
    np.testing.assert_allclose(distance_map(hard_solid, sampling), _sitk_distance(hard_solid, sampling), rtol=1e-6)
    assert np.isinf(distance_map(np.ones((3, 4, 5), bool))).all()


def test_small_chunks_are_grouped_into_halo_sized_blocks(monkeypatch):
    mask = da.zeros((300, 40, 130), bool, chunks=(20, 10, 130))
    assert _grown(mask, (10, 10, 10), min_blocks=1).chunks == ((150, 150), (40,), (130,))  # at most 256 - 2 * 10
    assert _grown(mask, (10, 10, 10), min_blocks=4).chunks == ((75,) * 4, (40,), (130,))  # work for 2 workers
    assert _grown(mask.rechunk((250, 10, 130)), (10, 10, 10), min_blocks=1).chunks[0] == (250, 50)  # never smaller
    monkeypatch.setattr(split_module, "SPLIT_BLOCK", 0)
    assert _grown(mask, (10, 10, 10), min_blocks=1) is mask


def _balls(seed: int, shape=(64, 64, 64), n=70) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    out = np.zeros(shape, bool)
    for (cz, cy, cx), r in zip(rng.uniform(0, shape[0], (n, 3)), rng.uniform(3.5, 8, n), strict=True):
        out |= (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


@pytest.mark.parametrize(("block", "first"), [(0, 2.0), (48, 3.0), (256, 3.0)])
def test_identical_for_every_chunking_and_split_block(monkeypatch, block, first):
    """Whatever blocks the split works on (0: the input's chunks, as before they were
    grouped, with a smaller first halo and a second split where a particle reaches its
    face; 48: grouped, several per axis; 256: the default, one block here), the halo and
    its crop at the volume's faces give the same labels."""
    solid = _balls(1)
    monkeypatch.setattr(split_module, "SPLIT_BLOCK", block)
    monkeypatch.setattr(split_module, "FIRST_FACTOR", first)
    ref = label_particles(solid, threshold=None)
    assert ref.count > 50
    for chunks in [(32, 32, 32), (20, 64, 13), (64, 9, 30)]:
        out = label_particles(da.from_array(solid, chunks=chunks), threshold=None)
        assert out.count == ref.count
        np.testing.assert_array_equal(out.labels.values, ref.labels.values)


def test_auto_mask_is_computed_once(monkeypatch):
    """Pore filling and dust removal read the stored ``"auto"`` mask instead of redoing the
    cut, and the mask and the split's fill weight share one sharpening per block."""
    calls = []
    real = mask_module._sharp_level

    def counted(block, **kw):
        calls.append(block.shape)
        return real(block, **kw)

    monkeypatch.setattr(mask_module, "_sharp_level", counted)
    ct = crushed_ore(shape=48, seed=0, level="easy").intensity
    with dask.config.set(scheduler="synchronous"):
        found = label_particles(da.from_array(ct, chunks=24))
    assert found.count > 0
    assert len(calls) == 8  # once per block
