"""Label transfer: erosion and lazy label volumes (``volmla.correlate.transfer``)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from volmla import correlate as co
from volmla.errors import VolmlaError


def _erode_reference(lab: np.ndarray, m: int) -> np.ndarray:
    out = lab.copy()
    h, w = lab.shape
    for i in range(h):
        for j in range(w):
            win = lab[max(0, i - m):i + m + 1, max(0, j - m):j + m + 1]
            if (win != lab[i, j]).any():
                out[i, j] = 0
    return out


@pytest.mark.parametrize("margin", [0, 1, 2])
def test_erode_labels_matches_reference(margin):
    lab = np.random.default_rng(margin).integers(1, 4, (6, 7)).repeat(3, 0).repeat(3, 1).astype(np.uint8)
    np.testing.assert_array_equal(co.erode_labels(lab, margin), _erode_reference(lab, margin))


@pytest.mark.parametrize("chunks", [(1, 5, 7), (3, 4, 5), (7, 9, 11), (32, 32, 32)])
def test_plane_labels_volume_any_chunking(chunks):
    shape = (7, 9, 11)
    rng = np.random.default_rng(0)
    pz = rng.integers(0, 4, (9, 11)).astype(np.uint8)
    py = rng.integers(0, 4, (7, 11)).astype(np.uint8)
    planes = [co.LabelPlane("z", 3, pz), co.LabelPlane("y", 8, py)]
    ref = np.zeros(shape, np.uint8)
    ref[3] = np.where(pz > 0, pz, ref[3])
    ref[:, 8] = np.where(py > 0, py, ref[:, 8])
    out = co.plane_labels_volume(shape, planes, chunks=chunks)
    assert out.chunks == da.zeros(shape, chunks=chunks).chunks
    np.testing.assert_array_equal(out.compute(), ref)
    with pytest.raises(VolmlaError, match="outside the volume"):
        co.plane_labels_volume(shape, [co.LabelPlane("z", 7, pz)], chunks=chunks)


@pytest.mark.parametrize("chunks", [(1, 5, 7), (3, 4, 5), (16, 16, 16)])
def test_plane_labels_volume_tilted_plane(chunks):
    shape = (9, 10, 11)
    lab = np.random.default_rng(1).integers(0, 4, shape[1:]).astype(np.uint8)
    plane = co.LabelPlane("z", 4, lab, (8.0, -5.0), (1.0, 1.0, 1.0))
    h = np.rint(co.plane_heights(lab.shape, index=4, tilt_deg=(8.0, -5.0))).astype(int)
    ref = np.zeros(shape, np.uint8)
    rows, cols = np.indices(lab.shape)
    inside = (h >= 0) & (h < shape[0])
    ref[h[inside], rows[inside], cols[inside]] = lab[inside]
    assert len(np.unique(h)) > 1
    np.testing.assert_array_equal(co.plane_labels_volume(shape, [plane], chunks=chunks).compute(), ref)


def test_labels_volume_is_lazy_xarray(ph):
    ct, _ = ph
    plane = np.ones(ct.shape[1:], np.uint8)
    lv = co.labels_volume(ct, [co.LabelPlane("z", 5, plane)], erode=0)
    assert isinstance(lv, xr.DataArray) and isinstance(lv.data, da.Array)
    assert lv.data.chunks == ct.data.chunks
