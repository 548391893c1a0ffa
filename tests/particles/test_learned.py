"""Particles from a learned background / interior / boundary map (volmla.particles.learned)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.particles import label_particles
from volmla.particles.evaluate import match_particles
from volmla.particles.learned import INTERIOR_HALO, interior_fill, learned_solid
from volmla.segment import particle_targets


def touching_boxes() -> tuple[np.ndarray, np.ndarray]:
    """Three particles in one solid block (two flat contacts) and a lone one: ids and their class map.

    The map is what a perfect particle U-Net gives (:func:`volmla.segment.particle_targets`):
    a boundary layer around every particle and between touching ones.
    """
    ids = np.zeros((20, 24, 60), np.uint32)
    ids[3:17, 4:20, 2:16] = 1
    ids[3:17, 4:20, 16:30] = 2  # a flat contact with 1: one solid, no neck at all
    ids[5:15, 6:18, 30:40] = 3  # a smaller one against 2
    ids[4:16, 5:19, 46:58] = 4
    return ids, particle_targets(ids)


def test_interior_fill_is_low_on_the_boundary_layer_between_touching_particles():
    ids, classes = touching_boxes()
    w = interior_fill(classes)
    assert w.dtype == np.float32 and w.min() >= 0 and w.max() <= 1
    z, y = 10, 12
    assert w[z, y, 9] > 0.99 and w[z, y, 22] > 0.99  # inside 1 and 2
    assert w[z, y, 15] < 0.5 and w[z, y, 16] < 0.5  # the two boundary layers between them
    assert (w[classes == 0] < 0.5).all()


def test_a_perfect_map_gives_the_particles_even_without_a_neck():
    ids, classes = touching_boxes()
    found = label_particles(classes, threshold="interior")
    assert found.count == 4
    m = match_particles(np.asarray(found.labels.compute()), ids, exclude_border=False)
    assert m.matched == 4 and m.merges == 0 and m.splits == 0
    # the binary mask alone holds 1 and 2 as one box: the distance map has no saddle there
    assert label_particles((ids > 0).astype(np.uint8), threshold=None).count < 4
    assert found.labels.attrs["provenance"][-1]["relief"] == "distance x interior_fill"


@pytest.mark.parametrize("chunks", [(20, 24, 60), (1, 24, 60), (7, 5, 13), (20, 24, 9)])
def test_same_particles_for_every_chunking(chunks):
    ids, classes = touching_boxes()
    rng = np.random.default_rng(0)
    noisy = classes.copy()
    flip = (rng.random(classes.shape) < 0.03) & (classes > 0)
    noisy[flip] = 3 - noisy[flip]  # interior <-> boundary slips, as a network makes
    whole = np.asarray(label_particles(noisy, threshold="interior").labels.compute())
    chunked = label_particles(da.from_array(noisy, chunks=chunks), threshold="interior")
    np.testing.assert_array_equal(np.asarray(chunked.labels.compute()), whole)
    fill = learned_solid(da.from_array(noisy, chunks=chunks)).fill.compute()
    np.testing.assert_allclose(fill, interior_fill(noisy), atol=1e-6)
    assert INTERIOR_HALO >= 2


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        (np.full((4, 4, 4), 0.5, np.float32), "integer class ids"),
        (np.full((4, 4, 4), 3, np.uint8), "holds 3"),
        (np.full((4, 4, 4), -1, np.int16), "holds -1"),
        (np.full((4, 4, 4), 2, np.uint8), "no interior voxel"),
        (np.zeros((4, 4, 4), np.uint8), "no interior voxel"),
    ],
)
def test_bad_maps_are_refused_in_one_line(volume, message):
    with pytest.raises(VolmlaError, match=message) as err:
        label_particles(volume, threshold="interior")
    assert "\n" not in str(err.value)


def test_the_cli_reads_a_map_named_as_a_particle_unet_writes_it(tmp_path):
    from volmla.cli import main
    from volmla.io import open_volume, write_volume

    ids, classes = touching_boxes()
    write_volume(classes, tmp_path / "classes.zarr", kind="phases", phases={1: "interior", 2: "boundary"}, voxel_size=1.0)
    write_volume(classes, tmp_path / "other.zarr", kind="phases", phases={1: "quartz", 2: "pyrite"}, voxel_size=1.0)
    write_volume(classes.astype(np.float32), tmp_path / "scan.zarr", kind="intensity", voxel_size=1.0)
    assert main(["-q", "particles", str(tmp_path / "classes.zarr"),
                 "-o", str(tmp_path / "p.zarr")]) == 0
    assert int(open_volume(tmp_path / "p.zarr").data.max().compute()) == 4
    # other phase names: nonzero is solid; asked to read the map, a segmentation's named
    # phases are refused (its phase 2 would read as boundary) ...
    assert main(["-q", "particles", str(tmp_path / "other.zarr"),
                 "-o", str(tmp_path / "q.zarr")]) == 0
    assert int(open_volume(tmp_path / "q.zarr").data.max().compute()) < 4
    assert main(["-q", "particles", str(tmp_path / "other.zarr"),
                 "-o", str(tmp_path / "r.zarr"), "--threshold", "interior"]) == 2
    assert not (tmp_path / "r.zarr").exists()
    # ... while a map without phase names (a user's own) is read as one
    write_volume(classes, tmp_path / "unnamed.zarr", kind="phases", voxel_size=1.0)
    assert main(["-q", "particles", str(tmp_path / "unnamed.zarr"),
                 "-o", str(tmp_path / "r.zarr"), "--threshold", "interior"]) == 0
    assert int(open_volume(tmp_path / "r.zarr").data.max().compute()) == 4
    assert main(["particles", str(tmp_path / "scan.zarr"), "-o", str(tmp_path / "s.zarr"),
                 "--threshold", "interior"]) == 2
