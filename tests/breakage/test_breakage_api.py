"""break_volume / breakage: chunk invariance, unique ids, exact modal mineralogy, bad input."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.breakage import break_volume, breakage, check_phases
from volmla.errors import VolmlaError


@pytest.fixture
def rock(grain_texture) -> np.ndarray:
    ph = grain_texture((32, 36, 28), 6.0, (0.6, 0.3, 0.1), seed=11)
    ph[10:14, 10:14, 10:14] = 0  # a pore
    ph[:, :3, :3] = 0  # void outside the core
    return ph


def test_fragments_are_the_same_for_any_chunking(rock) -> None:
    options = {"p80": 7.0, "voxel_size": 1.0, "seed": 5, "boundary_weight": 0.5, "detachment": 0.3}
    runs = [break_volume(da.from_array(rock, chunks=c), **options) for c in ((32, 36, 28), (1, 36, 28), (9, 13, 11))]
    first = runs[0].labels.compute()
    for run in runs[1:]:
        assert run.count == runs[0].count
        np.testing.assert_array_equal(run.labels.compute(), first)


def test_ids_are_unique_connected_and_every_solid_voxel_lands_once(rock) -> None:
    from scipy import ndimage as ndi

    from volmla.measure import measure

    f = break_volume(rock, p80=6.0, voxel_size=2.0 / 2, seed=1, boundary_weight=0.4, detachment=0.5)
    lab = f.labels.compute()
    assert ((lab > 0) == (rock > 0)).all()
    ids = np.unique(lab[lab > 0])
    np.testing.assert_array_equal(ids, np.arange(1, f.count + 1))
    for i in ids[:: max(1, ids.size // 40)]:  # every particle is one 26-connected piece
        assert ndi.label(lab == i, structure=np.ones((3, 3, 3)))[1] == 1
    t = measure(lab, rock, voxel_size=1.0, phase_names=["q", "f", "py"])
    for k, name in enumerate(["q", "f", "py"], start=1):
        assert int(t.particles[f"vox_{name}"].sum()) == int((rock == k).sum())


def test_another_seed_gives_other_fragments(rock) -> None:
    a = break_volume(rock, p80=6.0, voxel_size=1.0, seed=1).labels.compute()
    b = break_volume(rock, p80=6.0, voxel_size=1.0, seed=2).labels.compute()
    assert not np.array_equal(a, b)


def test_boundary_weight_puts_fractures_on_phase_boundaries(grain_texture) -> None:
    """The share of fracture faces that lie on phase boundaries grows with the weight."""
    ph = grain_texture((32, 32, 32), 8.0, (0.5, 0.5), seed=3)

    def on_boundary(w: float) -> float:
        lab = break_volume(ph, p80=8.0, voxel_size=1.0, seed=4, boundary_weight=w).labels.compute()
        cut = both = 0
        for ax in range(3):
            a, b = np.moveaxis(lab, ax, 0), np.moveaxis(ph, ax, 0)
            frac = a[1:] != a[:-1]
            cut += int(frac.sum())
            both += int((frac & (b[1:] != b[:-1])).sum())
        return both / cut

    shares = [on_boundary(w) for w in (0.0, 0.5, 1.0)]
    assert shares[0] < shares[1] < shares[2] and shares[2] > 2 * shares[0], shares


def test_detachment_releases_grains(grain_texture) -> None:
    ph = grain_texture((32, 32, 32), 4.0, (0.5, 0.5), seed=3)
    plain = break_volume(ph, p80=12.0, voxel_size=1.0, seed=4).labels.compute()
    freed = break_volume(ph, p80=12.0, voxel_size=1.0, seed=4, detachment=1.0).labels.compute()
    assert freed.max() > plain.max()
    # with every fragment detaching, no particle holds two phases
    mixed = [np.unique(ph[freed == i]).size for i in range(1, int(freed.max()) + 1, 7)]
    assert max(mixed) == 1


@pytest.mark.parametrize(
    ("volume", "kwargs", "match"),
    [
        (np.zeros((16, 16, 16), np.uint8), {}, "all void"),
        (np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), {}, "integer phase ids"),
        (np.random.default_rng(0).integers(0, 200, (16, 16, 16)).astype(np.uint16), {}, "distinct values"),
        (np.random.default_rng(0).integers(0, 4000, (16, 16, 16)).astype(np.uint16), {}, "0..255"),
        (np.full((16, 16, 16), 300, np.int32), {}, "0..255"),
        (np.ones((16, 16, 16), np.uint8), {"p80": 2.0}, "at least 3 voxels"),
        (np.ones((16, 16, 16), np.uint8), {"p80": 17.0}, "smallest side"),
        (np.ones((16, 16, 16), np.uint8), {"boundary_weight": 1.5}, "boundary_weight"),
        (np.ones((16, 16, 16), np.uint8), {"detachment": -0.1}, "detachment"),
        (np.ones((16, 16, 16), np.uint8), {"law": "bond"}, "law must be one of"),
    ],
)
def test_bad_input_is_one_line(volume, kwargs, match) -> None:
    with pytest.raises(VolmlaError, match=match) as err:
        break_volume(volume, **{"p80": 6.0, "voxel_size": 1.0, **kwargs})
    assert "\n" not in str(err.value)


def test_bad_input_loses_nothing(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ones = np.ones((16, 16, 16), np.uint8)
    with pytest.raises(VolmlaError, match="overwrite=True"):
        breakage(ones, out_dir=out, p80=[6.0], voxel_size=1.0)
    with pytest.raises(VolmlaError, match="all void"):
        breakage(np.zeros_like(ones), out_dir=out, p80=[6.0], voxel_size=1.0, overwrite=True)
    with pytest.raises(VolmlaError, match="repeat"):
        breakage(ones, out_dir=out, p80=[6.0, 6.0], voxel_size=1.0, overwrite=True)
    with pytest.raises(VolmlaError, match="realisations"):
        breakage(ones, out_dir=out, p80=[6.0], voxel_size=1.0, realisations=0, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind


def test_check_phases_reads_metadata_and_counts() -> None:
    ph = np.zeros((8, 8, 8), np.uint16)
    ph[:4] = 1
    ph[4:6] = 3
    c = check_phases(ph, voxel_size=(2.0, 1.0, 1.0), phase_names=["a", "b", "c"])
    assert c.counts.tolist() == [128, 256, 0, 128]
    assert c.voxel_size == (2.0, 1.0, 1.0) and c.names == {1: "a", 2: "b", 3: "c"}
    assert c.data.dtype == np.uint8
    with pytest.raises(VolmlaError, match="voxel_size"):
        check_phases(ph)
