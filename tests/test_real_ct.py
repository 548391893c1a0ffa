"""A real micro-CT volume end to end: air voids in cement paste (qim3d example data).

The volume (uint8, 128^3) has no voxel size in its metadata, so ingest must ask for one;
the pores (dark) are found by an out-of-core Otsu threshold and labelled by the
distributed labeller, which must partition them exactly as SciPy does in memory,
whatever the chunking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile

from volmla.cli import main
from volmla.io import open_volume
from volmla.particles import otsu_threshold
from volmla.particles.label import label

CEMENT = Path(__file__).parent / "data" / "cement_128x128x128.tif"


@pytest.fixture(scope="module")
def cement(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cement") / "cement.zarr"
    assert main(["-q", "ingest", str(CEMENT), "-o", str(out), "--voxel-size", "1.0", "--chunks", "48"]) == 0
    return out


def test_ingest_needs_a_voxel_size_and_keeps_the_bytes(
    cement: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-q", "ingest", str(CEMENT), "-o", str(tmp_path / "x.zarr")]) == 2
    assert "voxel size" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
    vol = open_volume(cement)
    assert vol.dtype == np.uint8 and vol.attrs["voxel_size_um"] == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.values, tifffile.imread(CEMENT))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings describe the same components (bijection between nonzero ids)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("chunks", [(128, 128, 128), (48, 48, 48), (7, 128, 33)])
def test_pores_label_like_scipy(cement: Path, chunks: tuple[int, int, int]) -> None:
    vol = open_volume(cement)
    data = tifffile.imread(CEMENT)
    threshold = otsu_threshold(vol)
    # the out-of-core Otsu on the histogram agrees with scikit-image in memory
    from skimage.filters import threshold_otsu

    assert abs(threshold - threshold_otsu(data)) <= 1.0
    pores = vol.data.rechunk(chunks) <= threshold
    result = label(pores, connectivity=26)
    expected, n = ndi.label(data <= threshold, structure=np.ones((3, 3, 3)))
    got = np.asarray(result.labels)
    assert result.count == n > 10
    assert _same_partition(got, expected)
