"""Contact refinement: slivers of a neighbour's mineral handed back, the same for any chunking."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.particles.contacts import interior_table, refine_contacts


def _two_blocks(sliver: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two 10-voxel cubes side by side along x: particle 1 all quartz (1), particle 2 half
    pyrite (2) at the contact; the split plane sits ``sliver`` voxels inside particle 2's
    pyrite, so particle 1 ends in a pyrite sliver."""
    part = np.zeros((12, 12, 24), np.uint32)
    phase = np.zeros_like(part, dtype=np.uint8)
    part[1:11, 1:11, 1:11] = 1
    part[1:11, 1:11, 11:21] = 2
    phase[part > 0] = 1
    phase[1:11, 1:11, 11 - sliver:16] = 2  # particle 2's pyrite, reaching into particle 1
    return part, phase


def test_a_sliver_of_the_neighbours_mineral_moves_to_the_neighbour() -> None:
    part, phase = _two_blocks(sliver=2)
    out = refine_contacts(part, phase).labels.values
    assert (out[phase == 2] == 2).all()  # every pyrite voxel is particle 2's now
    assert (out[(phase == 1) & (part == 1)] == 1).all()  # quartz stays
    assert ((out > 0) == (part > 0)).all()  # no voxel gained or lost


def test_a_deeper_sliver_is_taken_layer_by_layer() -> None:
    # particle 1 a 20-voxel cube, all quartz but for a 3x3 patch of pyrite 3 voxels deep at
    # its contact with particle 2 (pyrite-rich): the patch's deepest layer is interior, but
    # 9 voxels of ~5800 is "absent"; once round 1 takes the two contact layers, it is a
    # contact itself and round 2 takes it
    part = np.zeros((22, 22, 34), np.uint32)
    part[1:21, 1:21, 1:21], part[1:21, 1:21, 21:31] = 1, 2
    phase = np.where(part > 0, 1, 0).astype(np.uint8)
    phase[1:21, 1:21, 21:26] = 2
    phase[9:12, 9:12, 18:21] = 2
    one = refine_contacts(part, phase, rounds=1).labels.values
    two = refine_contacts(part, phase, rounds=2).labels.values
    assert (one[9:12, 9:12, 19:21] == 2).all() and (one[9:12, 9:12, 18] == 1).all()
    assert (two[phase == 2] == 2).all()
    assert (two[phase == 1] == part[phase == 1]).all()


def test_a_mineral_the_particle_really_has_stays() -> None:
    part, phase = _two_blocks(sliver=2)
    phase[3:8, 3:8, 2:10] = 2  # particle 1 has pyrite in its interior, reaching the contact
    out = refine_contacts(part, phase).labels.values
    assert (out == part).all()


def test_a_neighbour_without_the_mineral_takes_nothing() -> None:
    part, phase = _two_blocks(sliver=2)
    phase[phase == 2] = 3  # a third phase: particle 2 has it; put it on particle 1 only
    phase[(part == 2) & (phase == 3)] = 1
    out = refine_contacts(part, phase).labels.values
    assert (out == part).all()


def test_a_particle_without_an_interior_neither_gives_nor_takes() -> None:
    part, phase = _two_blocks(sliver=2)
    part[part == 2] = 0
    part[1:11, 1:11, 11:13] = 2  # a 2-voxel plate: all contact, no interior
    phase[part == 0] = 0
    out = refine_contacts(part, phase).labels.values
    assert (out == part).all()


def test_no_contacts_no_change_and_rounds_zero_is_identity() -> None:
    part, phase = _two_blocks(sliver=2)
    part[:, :, 11:] = 0
    assert (refine_contacts(part, phase).labels.values == part).all()
    part, phase = _two_blocks(sliver=2)
    assert (refine_contacts(part, phase, rounds=0).labels.values == part).all()


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Touching random boxes with random phases and slivers: many contacts, three phases."""
    rng = np.random.default_rng(seed)
    part = np.zeros((30, 34, 38), np.uint32)
    phase = np.zeros(part.shape, np.uint8)
    n = 0
    for z in range(0, 30, 10):
        for y in range(0, 34, 11):
            for x in range(0, 38, 9):
                n += 1
                part[z:z + 10, y:y + 11, x:x + 9] = n
                phase[z:z + 10, y:y + 11, x:x + 9] = rng.integers(1, 4)
    grains = rng.random(part.shape) < 0.02
    phase[grains] = rng.integers(1, 4, int(grains.sum()))
    return part, phase


@pytest.mark.parametrize("chunks", [(30, 34, 38), (7, 9, 11), (16, 5, 38), (3, 34, 4)])
def test_any_chunking_gives_the_in_memory_result(chunks: tuple[int, int, int]) -> None:
    part, phase = _scene(0)
    whole = refine_contacts(part, phase).labels.values
    assert (whole != part).any()  # the scene exercises the move
    chunked = refine_contacts(da.from_array(part, chunks=chunks), da.from_array(phase, chunks=chunks)).labels.values
    np.testing.assert_array_equal(chunked, whole)


def test_the_interior_table_matches_a_direct_count() -> None:
    part, phase = _scene(1)
    import scipy.ndimage as ndi

    table = interior_table(da.from_array(part, chunks=8), da.from_array(phase, chunks=8), reach=2, min_interior=1)
    hi = ndi.maximum_filter(part, size=5, mode="nearest")
    lo = ndi.minimum_filter(np.where(part == 0, np.iinfo(part.dtype).max, part), size=5, mode="nearest")
    inside = (part > 0) & (phase > 0) & (hi == part) & (lo == part)
    for i, pid in enumerate(table.ids):
        counts = np.bincount(phase[inside & (part == pid)], minlength=table.fractions.shape[1])
        np.testing.assert_allclose(table.fractions[i], counts / counts.sum())
    assert set(table.ids.tolist()) == set(np.unique(part[inside]).tolist())


def test_scratch_stores_rounds_with_the_same_result(tmp_path) -> None:
    part, phase = _scene(2)
    lazy = refine_contacts(da.from_array(part, chunks=10), da.from_array(phase, chunks=10)).labels.values
    stored = refine_contacts(da.from_array(part, chunks=10), da.from_array(phase, chunks=10),
                             scratch=tmp_path).labels.values
    np.testing.assert_array_equal(stored, lazy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts-0.zarr", "contacts-1.zarr"]


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"reach": 0}, "reach"), ({"rounds": -1}, "rounds"), ({"absent": 0.2, "present": 0.1}, "absent"),
    ({"min_interior": 0}, "min_interior"),
])
def test_bad_options_are_refused_in_one_line(kwargs: dict, says: str) -> None:
    part, phase = _two_blocks()
    with pytest.raises(VolmlaError, match=says):
        refine_contacts(part, phase, **kwargs)


def test_mismatched_or_wrong_typed_volumes_are_refused() -> None:
    part, phase = _two_blocks()
    with pytest.raises(VolmlaError, match="same shape"):
        refine_contacts(part, phase[:-1])
    with pytest.raises(VolmlaError, match="uint8"):
        refine_contacts(part, phase.astype(np.float32))
    with pytest.raises(VolmlaError, match="integer"):
        refine_contacts(part.astype(np.float32), phase)


def test_cli_contacts_writes_the_refined_particles_and_refuses_bad_input(tmp_path, capsys) -> None:
    from volmla.cli import main
    from volmla.io import open_volume, write_volume

    part, phase = _scene(3)
    p = write_volume(part, tmp_path / "particles.zarr", voxel_size=2.0, kind="labels", chunks=12)
    f = write_volume(phase, tmp_path / "phases.zarr", voxel_size=2.0, kind="phases", chunks=12)
    out = tmp_path / "refined.zarr"
    args = ["--quiet", "--workers", "1", "contacts", "--particles", str(p), "--phases", str(f)]
    assert main([*args, "-o", str(out)]) == 0
    np.testing.assert_array_equal(open_volume(out).values, refine_contacts(part, phase).labels.values)
    assert open_volume(out).attrs["provenance"][-1]["step"] == "contacts"
    stamp = (out / "zarr.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, "-o", str(out)]) == 2  # an existing output is kept
    assert "exists" in capsys.readouterr().err and (out / "zarr.json").stat().st_mtime_ns == stamp
    assert main([*args, "-o", str(tmp_path / "x.zarr"), "--rounds", "-1"]) == 2
    err = capsys.readouterr().err
    assert "rounds" in err and len(err.strip().splitlines()) == 1
    other = write_volume(phase, tmp_path / "other.zarr", voxel_size=3.0, kind="phases", chunks=12)
    assert main(["--quiet", "contacts", "--particles", str(p), "--phases", str(other), "-o", str(tmp_path / "y.zarr")]) == 2
    assert "voxel size" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
