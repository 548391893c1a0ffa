"""napari (headless, no Qt) opens a scan written by volmla with its segmentation: the image
and the ``labels/`` groups as Labels layers with the phase names, the fixed mineral
palette and the voxel size (issue 19). Optional: needs napari and napari-ome-zarr, which
volmla does not depend on; skipped without them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from volmla.io import write_volume
from volmla.io.labels import write_labels
from volmla.io.palette import phase_colors

pytestmark = [pytest.mark.optional,
              # napari-ome-zarr's colour dict has no default entry; napari says so
              pytest.mark.filterwarnings("ignore:color_dict did not provide a default color:UserWarning")]

with warnings.catch_warnings():  # napari's own import-time deprecation warnings (pydantic, ...)
    warnings.simplefilter("ignore")
    reader_module = pytest.importorskip("napari_ome_zarr")
    layers_module = pytest.importorskip("napari.layers")


def test_napari_opens_the_scan_with_its_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scan = write_volume(rng.integers(0, 4000, (12, 10, 9), dtype=np.uint16), tmp_path / "scan.zarr",
                        voxel_size=(2.0, 1.0, 1.0), levels=3, chunks=5)
    phases = rng.integers(0, 3, (12, 10, 9), dtype=np.uint8)
    names = {1: "quartz", 2: "albite"}
    write_labels(scan, "phases", phases, phases=names)
    write_labels(scan, "particles", rng.integers(0, 500, (12, 10, 9), dtype=np.uint32), chunks=4)

    read = reader_module.napari_get_reader(str(scan))
    assert read is not None
    found = read(str(scan))
    kinds = [kind for _, _, kind in found]
    assert kinds.count("image") == 1 and kinds.count("labels") == 2

    by_name = {kw["name"].rsplit("/", 1)[-1]: (data, kw) for data, kw, kind in found if kind == "labels"}
    data, kw = by_name["phases"]
    assert len(data) >= 2  # a pyramid, level 0 first
    np.testing.assert_array_equal(np.asarray(data[0]), phases)
    assert list(kw["scale"]) == [2.0, 1.0, 1.0]
    assert kw["properties"]["name"][1:] == ["quartz", "albite"]
    for pid, rgb in phase_colors(names).items():
        assert np.allclose(kw["colormap"][pid][:3], np.array(rgb) / 255.0)
    layer = layers_module.Labels(data, **kw)
    assert layer.data[0].shape == phases.shape and list(layer.scale) == [2.0, 1.0, 1.0]
    assert layer.multiscale
