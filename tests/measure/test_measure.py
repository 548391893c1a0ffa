"""Per-particle / per-grain reduction against brute-force per-label references."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volmla import measure
from volmla.errors import VolmlaError
from volmla.measure import merge, partials


@pytest.fixture(scope="module")
def small_phantom() -> dict[str, np.ndarray]:
    from volmla.synthetic import phantom

    ph = phantom(shape=(24, 28, 30), seed=3, esd_range=(6.0, 12.0), chunks=16)
    return {
        "particles": ph.particles.data.compute(),
        "phases": ph.phases.data.compute(),
        "grains": ph.grains.data.compute(),
    }


def _faces_of(mask: np.ndarray) -> tuple[int, int, int]:
    """Faces between the mask and anything else, per axis (outside = not the mask)."""
    padded = np.pad(mask, 1)
    return tuple(int(np.count_nonzero(np.diff(padded, axis=a))) for a in range(3))  # type: ignore[return-value]


def reference_particles(lab: np.ndarray, ph: np.ndarray, gr: np.ndarray, vs: tuple[float, float, float], names: dict[int, str]) -> pd.DataFrame:
    rows = []
    for pid in np.unique(lab[lab > 0]):
        mask = lab == pid
        idx = np.nonzero(mask)
        n = int(mask.sum())
        fz, fy, fx = _faces_of(mask)
        area = 2.0 / 3.0 * (fz * vs[1] * vs[2] + fy * vs[0] * vs[2] + fx * vs[0] * vs[1])
        volume = n * vs[0] * vs[1] * vs[2]
        row = {
            "particle_id": int(pid),
            "volume_voxels": n,
            "volume_um3": volume,
            "esd_um": (6 * volume / np.pi) ** (1 / 3),
            "surface_um2": area,
            "sphericity": np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area,
            "centroid_z": idx[0].mean() * vs[0],
            "centroid_y": idx[1].mean() * vs[1],
            "centroid_x": idx[2].mean() * vs[2],
        }
        for a, ax in enumerate("zyx"):
            row[f"bbox_{ax}0"] = int(idx[a].min())
        for a, ax in enumerate("zyx"):
            row[f"bbox_{ax}1"] = int(idx[a].max()) + 1
        row["touches_border"] = any(
            row[f"bbox_{ax}0"] == 0 or row[f"bbox_{ax}1"] == lab.shape[a] for a, ax in enumerate("zyx")
        )
        row["n_grains"] = len(np.unique(gr[mask & (gr > 0)]))
        for p, name in names.items():
            row[f"vox_{name}"] = int((mask & (ph == p)).sum())
        solid = int((mask & (ph > 0)).sum())  # grades over the solid phases: void inside is not a phase
        row["vox_solid"] = solid
        for name in names.values():
            row[f"vfrac_{name}"] = float(row[f"vox_{name}"])
        row["vfrac_solid"] = float(solid)
        for name in names.values():
            row[f"grade_{name}"] = row[f"vox_{name}"] / solid if solid else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def reference_grains(lab: np.ndarray, ph: np.ndarray, gr: np.ndarray, vs: tuple[float, float, float], names: dict[int, str]) -> pd.DataFrame:
    rows = []
    for gid in np.unique(gr[gr > 0]):
        mask = gr == gid
        (pid,) = np.unique(lab[mask])
        (phase,) = np.unique(ph[mask])
        rows.append({"grain_id": int(gid), "particle_id": int(pid), "phase": names[int(phase)],
                     "volume_voxels": int(mask.sum()), "volume_um3": float(mask.sum()) * np.prod(vs)})
    return pd.DataFrame(rows)


def _compare(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(got.columns) == list(ref.columns)
    assert len(got) == len(ref)
    for col in ref.columns:
        g, r = got[col].to_numpy(), ref[col].to_numpy()
        if ref[col].dtype.kind == "f":
            np.testing.assert_allclose(g.astype(float), r, rtol=1e-9, atol=1e-9, err_msg=col)
        else:
            assert (g.astype(r.dtype) == r).all(), col


@pytest.mark.parametrize("chunks", [(24, 28, 30), (1, 28, 30), (24, 1, 30), (7, 9, 11), (24, 28, 1)])
def test_tables_match_brute_force_any_chunking(small_phantom: dict[str, np.ndarray], chunks: tuple[int, int, int]) -> None:
    vs = (1.5, 2.0, 2.5)  # anisotropic
    names = {1: "quartz", 2: "feldspar", 3: "pyrite"}
    lab, ph, gr = small_phantom["particles"], small_phantom["phases"], small_phantom["grains"]
    tables = measure.measure(
        da.from_array(lab, chunks=chunks), da.from_array(ph, chunks=chunks), grains=da.from_array(gr, chunks=chunks),
        voxel_size=vs, phase_names=["quartz", "feldspar", "pyrite"],
    )
    assert list(tables.particles.columns) == measure.particle_columns(list(names.values()))
    _compare(tables.particles, reference_particles(lab, ph, gr, vs, names))
    _compare(tables.grains, reference_grains(lab, ph, gr, vs, names))
    assert list(tables.grains.columns) == measure.GRAIN_COLUMNS


def test_contacts_match_brute_force(small_phantom: dict[str, np.ndarray]) -> None:
    lab, ph = small_phantom["particles"], small_phantom["phases"]
    whole = measure.measure(lab, ph, voxel_size=1.0).contacts
    thin = measure.measure(da.from_array(lab, chunks=(5, 28, 1)), da.from_array(ph, chunks=(5, 28, 1)), voxel_size=1.0).contacts
    pd.testing.assert_frame_equal(whole, thin)
    # brute force: faces between phases p < q inside one particle, and phase p against the outside
    lp, pp = np.pad(lab, 1), np.pad(ph, 1)
    expected: dict[tuple[str, str], int] = {}
    names = {0: "background", 1: "1", 2: "2", 3: "3"}
    for a in range(3):
        n = lp.shape[a]
        la, lb = np.take(lp, range(n - 1), axis=a), np.take(lp, range(1, n), axis=a)
        pa, pb = np.take(pp, range(n - 1), axis=a), np.take(pp, range(1, n), axis=a)
        for p in range(1, 4):
            out = int(((la != lb) & (la != 0) & (pa == p)).sum() + ((la != lb) & (lb != 0) & (pb == p)).sum())
            expected[(names[p], "background")] = expected.get((names[p], "background"), 0) + out
            for q in range(p + 1, 4):
                inner = (la == lb) & (la != 0) & (((pa == p) & (pb == q)) | ((pa == q) & (pb == p)))
                expected[(names[p], names[q])] = expected.get((names[p], names[q]), 0) + int(inner.sum())
    got = {(a, b): int(fz + fy + fx) for a, b, fz, fy, fx in whole[["phase_a", "phase_b", "faces_z", "faces_y", "faces_x"]].itertuples(index=False)}
    for key, value in expected.items():
        assert got.get(key, 0) == value, key


def test_lazy_xarray_input_and_attrs(small_phantom: dict[str, np.ndarray]) -> None:
    from volmla.synthetic import phantom

    ph = phantom(shape=(24, 28, 30), seed=3, esd_range=(6.0, 12.0), chunks=(8, 14, 15))
    table = measure.particle_table(ph.particles, ph.phases, grains=ph.grains)  # voxel size and names from attrs
    ref = measure.particle_table(small_phantom["particles"], small_phantom["phases"], grains=small_phantom["grains"],
                            voxel_size=2.0, phase_names=["quartz", "feldspar", "pyrite"])
    pd.testing.assert_frame_equal(table, ref)
    assert table["touches_border"].any() and not table["touches_border"].all()


@settings(max_examples=6, deadline=None)
@given(
    cz=st.integers(1, 9), cy=st.integers(3, 9), cx=st.integers(3, 9), seed=st.integers(0, 2**16),
)
def test_random_labels_chunk_invariant(cz: int, cy: int, cx: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 6, size=(9, 8, 7)).astype(np.uint32) * 1000
    ph = rng.integers(0, 4, size=lab.shape).astype(np.uint8) * (lab > 0)
    whole = measure.measure(lab, ph, voxel_size=(1.0, 0.5, 2.0))
    ref = reference_particles(lab, ph, np.zeros_like(lab), (1.0, 0.5, 2.0), {1: "1", 2: "2", 3: "3"}).drop(columns="n_grains")
    _compare(whole.particles.drop(columns="n_grains"), ref)
    chunked = measure.measure(da.from_array(lab, chunks=(cz, cy, cx)), da.from_array(ph, chunks=(cz, cy, cx)), voxel_size=(1.0, 0.5, 2.0))
    pd.testing.assert_frame_equal(whole.particles, chunked.particles)
    pd.testing.assert_frame_equal(whole.contacts, chunked.contacts)


@pytest.mark.parametrize("radius", [10.0, 14.0, 20.0])
@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5)])
def test_sphere_surface_and_sphericity(radius: float, vs: tuple[float, float, float]) -> None:
    """Digital spheres of radius >= 10 voxels (coarsest axis): area within 5 %, sphericity within 5 % of 1."""
    n = [int(2 * radius / v) + 6 for v in vs]
    grids = np.ogrid[: n[0], : n[1], : n[2]]
    r2 = sum(((g + 0.5) * v - n_ * v / 2) ** 2 for g, v, n_ in zip(grids, vs, n, strict=True))
    lab = (r2 <= radius**2).astype(np.uint32)
    t = measure.particle_table(da.from_array(lab, chunks=16), da.from_array(lab.astype(np.uint8), chunks=16), voxel_size=vs)
    area = 4 * np.pi * radius**2
    assert abs(t.surface_um2[0] / area - 1) < 0.05
    assert abs(t.sphericity[0] - 1) < 0.05
    assert not t.touches_border[0]


def test_small_particle_bias_documented() -> None:
    lab = np.zeros((5, 5, 5), np.uint32)
    lab[2, 2, 2] = 1
    t = measure.particle_table(lab, lab.astype(np.uint8), voxel_size=1.0)
    assert t.surface_um2[0] == pytest.approx(4.0)  # 6 faces x 2/3
    assert t.sphericity[0] > 1.2  # small particles are biased high


def test_border_flag_and_bbox() -> None:
    lab = np.zeros((6, 7, 8), np.uint32)
    lab[0:2, 2:4, 3:5] = 4  # touches z = 0
    lab[2:4, 2:4, 3:5] = 9  # interior
    lab[3:5, 5:7, 6:8] = 12  # touches y and x high faces
    t = measure.particle_table(lab, (lab > 0).astype(np.uint8), voxel_size=1.0).set_index("particle_id")
    assert t.touches_border.to_dict() == {4: True, 9: False, 12: True}
    assert t.loc[12, ["bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1"]].tolist() == [3, 5, 6, 5, 7, 8]
    assert t.n_grains.isna().all()


def test_errors_are_one_line() -> None:
    lab = np.zeros((4, 4, 4), np.uint32)
    lab[1:3, 1:3, 1:3] = 1
    ph = lab.astype(np.uint8)
    with pytest.raises(VolmlaError, match="same shape"):
        measure.particle_table(lab, ph[:3], voxel_size=1.0)
    with pytest.raises(VolmlaError, match="phase names"):
        measure.particle_table(lab, ph, voxel_size=1.0, phase_names=["a", "b"])
    with pytest.raises(VolmlaError, match="name every phase"):
        measure.particle_table(lab, ph * 2, voxel_size=1.0, phase_names=["a"])
    import xarray as xr

    a = xr.DataArray(lab, dims=("z", "y", "x"), attrs={"voxel_size_um": (1.0, 1.0, 1.0)})
    b = xr.DataArray(ph, dims=("z", "y", "x"), attrs={"voxel_size_um": (2.0, 2.0, 2.0), "phases": {1: "q"}})
    with pytest.raises(VolmlaError, match="voxel size") as err:
        measure.particle_table(a, b)
    assert "\n" not in str(err.value)
    b.attrs["voxel_size_um"] = (1.0, 1.0, 1.0)
    with pytest.raises(VolmlaError, match="phases attribute allows 1"):
        measure.particle_table(a, b, phase_names=["q", "f"])
    assert measure.particle_table(a, b).columns[-1] == "grade_q"


def test_grain_spanning_two_particles_is_an_error() -> None:
    lab = np.zeros((4, 4, 4), np.uint32)
    lab[0:2] = 1
    lab[2:4] = 2
    with pytest.raises(VolmlaError, match="spans several"):
        measure.grain_table(np.ones_like(lab), lab, np.ones_like(lab, dtype=np.uint8), voxel_size=1.0)
    with pytest.raises(VolmlaError, match="spans several"):  # across chunks: caught in the merge
        measure.grain_table(da.from_array(np.ones_like(lab), chunks=2), da.from_array(lab, chunks=2),
                       da.from_array(np.ones_like(lab, dtype=np.uint8), chunks=2), voxel_size=1.0)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.uint64])
def test_grain_over_background_or_two_phases_is_an_error(dtype) -> None:
    """The checks compare particle ids and phases in the inputs' own dtypes."""
    lab = np.zeros((4, 4, 4), dtype)
    lab[1:3, 1:3, 1:3] = 2**31 + 5 if np.dtype(dtype).itemsize == 8 else 5
    ph = (lab > 0).astype(np.uint8)
    grain = (lab > 0).astype(np.uint32)
    grain[0, 0, 0] = 2  # a grain on a background voxel only
    with pytest.raises(VolmlaError, match="covers background"):
        measure.grain_table(grain, lab, ph, voxel_size=1.0)
    ph[1, 1, 1] = 2  # a second phase under the same grain
    with pytest.raises(VolmlaError, match="spans several"):
        measure.grain_table((lab > 0).astype(np.uint32), lab, ph, voxel_size=1.0)
    ph[1, 1, 1] = 1
    table = measure.grain_table((lab > 0).astype(np.uint32), lab, ph, voxel_size=1.0)
    assert table.particle_id.dtype == np.uint64
    assert table.particle_id.tolist() == [int(lab.max())] and table.volume_voxels.tolist() == [8]


def test_single_voxel_chunks_many_labels(rng: np.random.Generator) -> None:
    """Blocks of one voxel whose halo holds more labels than the block has voxels."""
    lab = rng.integers(0, 40, size=(4, 5, 3)).astype(np.uint32)
    ph = rng.integers(1, 3, size=lab.shape).astype(np.uint8) * (lab > 0)
    ref = reference_particles(lab, ph, np.zeros_like(lab), (1.0, 1.0, 1.0), {1: "1", 2: "2"}).drop(columns="n_grains")
    got = measure.particle_table(da.from_array(lab, chunks=1), da.from_array(ph, chunks=1), voxel_size=1.0)
    _compare(got.drop(columns="n_grains"), ref)


@pytest.mark.parametrize("offset", [0, 2**40])
def test_offset_and_renumbered_ids_agree(small_phantom: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch,
                                         offset: int) -> None:
    """Blocks index their ids by an offset when the ids span a narrow range and are
    renumbered otherwise: both give the brute-force tables, for small and huge ids."""
    lab = small_phantom["particles"].astype(np.uint64)
    lab[lab > 0] += offset
    ph, gr = small_phantom["phases"], small_phantom["grains"]
    names = {1: "1", 2: "2", 3: "3"}
    ref = reference_particles(lab, ph, gr, (1.0, 1.0, 1.0), names).drop(columns="n_grains")
    for span in (partials._DENSE_SPAN, 0):  # 0: every block renumbered
        monkeypatch.setattr(partials, "_DENSE_SPAN", span)
        got = measure.particle_table(da.from_array(lab, chunks=(7, 9, 11)), da.from_array(ph, chunks=(7, 9, 11)),
                                voxel_size=1.0, phase_names=names)
        _compare(got.drop(columns="n_grains"), ref)


@pytest.mark.parametrize("dense", [True, False])
def test_merge_dense_and_sorted_agree(small_phantom: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch,
                                      dense: bool) -> None:
    """Partial rows are merged by ``id - min`` (narrow id spans) or by the rank among the
    sorted unique ids (wide)."""
    lab, ph, gr = small_phantom["particles"], small_phantom["phases"], small_phantom["grains"]
    names = {1: "1", 2: "2", 3: "3"}
    monkeypatch.setattr(merge, "_DENSE_MERGE", 10**9 if dense else 0)
    got = measure.measure(da.from_array(lab, chunks=(7, 9, 11)), da.from_array(ph, chunks=(7, 9, 11)),
                          voxel_size=1.0, phase_names=names)
    _compare(got.particles.drop(columns="n_grains"),
             reference_particles(lab, ph, gr, (1.0, 1.0, 1.0), names).drop(columns="n_grains"))
    pd.testing.assert_frame_equal(got.contacts, measure.measure(lab, ph, voxel_size=1.0, phase_names=names).contacts)


@pytest.mark.parametrize("chunks", [(9, 8, 7), (2, 3, 4), (1, 8, 1), (4, 1, 7)])
def test_contacts_with_phase_0_inside_particles(chunks: tuple[int, int, int]) -> None:
    """Touching particles, and phase-0 voxels inside particles, which count as background
    for their neighbours: the contact matrix and the face counts by brute force."""
    rng = np.random.default_rng(7)
    lab = rng.integers(0, 4, size=(9, 8, 7)).astype(np.uint32)
    ph = rng.integers(0, 3, size=lab.shape).astype(np.uint8) * (lab > 0)
    got = measure.measure(da.from_array(lab, chunks=chunks), da.from_array(ph, chunks=chunks), voxel_size=1.0)
    lp, pp = np.pad(lab, 1), np.pad(ph, 1)
    expected: dict[tuple[str, str], list[int]] = {}
    faces = {i: [0, 0, 0] for i in range(1, 4)}
    for a in range(3):
        n = lp.shape[a]
        la, lb = np.take(lp, range(n - 1), axis=a), np.take(lp, range(1, n), axis=a)
        pa, pb = np.take(pp, range(n - 1), axis=a), np.take(pp, range(1, n), axis=a)
        for i in range(1, 4):
            faces[i][a] = int(((la == i) & (lb != i)).sum() + ((lb == i) & (la != i)).sum())
        # p against the outside of its particle: another id, or phase 0 of the same particle
        for p in (1, 2):
            own = ((la != 0) & (pa == p) & ((la != lb) | (pb == 0))).sum() + ((lb != 0) & (pb == p) & ((la != lb) | (pa == 0))).sum()
            expected.setdefault((str(p), "background"), [0, 0, 0])[a] = int(own)
        inner = (la == lb) & (la != 0) & (((pa == 1) & (pb == 2)) | ((pa == 2) & (pb == 1)))
        expected.setdefault(("1", "2"), [0, 0, 0])[a] = int(inner.sum())
    rows = {(r.phase_a, r.phase_b): [r.faces_z, r.faces_y, r.faces_x] for r in got.contacts.itertuples()}
    assert rows == {k: v for k, v in expected.items() if any(v)}
    table = got.particles.set_index("particle_id")
    for i in range(1, 4):
        area = measure.SURFACE_CORRECTION * sum(faces[i])
        assert table.loc[i, "surface_um2"] == pytest.approx(area, rel=1e-12)


def test_numpy_input_is_measured_in_place_and_left_unchanged(small_phantom: dict[str, np.ndarray]) -> None:
    lab, ph = small_phantom["particles"], small_phantom["phases"]
    before = lab.copy(), ph.copy()
    dask_input = measure.particle_table(da.from_array(lab, chunks=(7, 9, 11)), da.from_array(ph, chunks=(7, 9, 11)),
                                   voxel_size=1.0)
    pd.testing.assert_frame_equal(measure.particle_table(lab, ph, voxel_size=1.0), dask_input)
    np.testing.assert_array_equal(lab, before[0])
    np.testing.assert_array_equal(ph, before[1])


def test_bad_ids_are_one_line_errors() -> None:
    lab = np.zeros((4, 4, 4), np.int32)
    lab[1:3, 1:3, 1:3] = 1
    with pytest.raises(VolmlaError, match="phase ids must lie in 0..255"):
        measure.particle_table(lab, lab.astype(np.uint16) * 300, voxel_size=1.0)
    lab[0, 0, 0] = -2
    with pytest.raises(VolmlaError, match="must not be negative"):
        measure.particle_table(lab, (lab > 0).astype(np.uint8), voxel_size=1.0)


def test_an_intensity_volume_as_particles_is_refused() -> None:
    """An intensity volume given as particles was measured as one particle per grey value."""
    rng = np.random.default_rng(5)
    phases = np.zeros((16, 16, 16), np.uint8)
    phases[3:9, 3:9, 3:9] = 1
    scan = rng.integers(100, 1000, phases.shape).astype(np.uint16)  # no 0 anywhere
    for lab in (scan, da.from_array(scan, chunks=(5, 8, 7))):
        with pytest.raises(VolmlaError, match=r"particles volume has no background \(0\) voxel: is it an intensity"):
            measure.particle_table(lab, phases, voxel_size=1.0)
    # an 8-bit scan holds 0s, but each grey value is scattered over the whole volume
    scan8 = rng.integers(0, 256, (32, 32, 32)).astype(np.uint8)
    phases8 = (scan8 > 100).astype(np.uint8)
    for call in (measure.measure, measure.particle_table):
        with pytest.raises(VolmlaError, match="particles volume looks like grey values, not labels: 255 of its 255"):
            call(da.from_array(scan8, chunks=16), phases8, voxel_size=1.0)


def test_labels_like_grey_values_in_one_respect_are_measured() -> None:
    # one particle filling the volume, a pore (phase 0) inside it: a crop inside a particle
    lab = np.ones((8, 8, 8), np.uint32)
    ph = np.ones(lab.shape, np.uint8)
    ph[3:5, 3:5, 3:5] = 0
    assert measure.particle_table(lab, ph, voxel_size=1.0).volume_voxels.tolist() == [512]
    # fragments tiling a block without void (as breakage makes them): no background, no void
    tiles = (np.indices((8, 8, 8)) // 4)
    frag = (tiles[0] * 4 + tiles[1] * 2 + tiles[2] + 1).astype(np.uint32)
    assert len(measure.particle_table(frag, np.ones(frag.shape, np.uint8), voxel_size=1.0)) == 8
    # up to 10 ids may each span the whole volume (a few large particles in a small one); 11 may not
    spread = np.random.default_rng(7).integers(0, 11, (20, 20, 20)).astype(np.uint32)
    assert len(measure.particle_table(spread, (spread > 0).astype(np.uint8), voxel_size=1.0)) == 10
    spread[0, 0, 0] = 11
    with pytest.raises(VolmlaError, match="looks like grey values"):
        measure.particle_table(spread, (spread > 0).astype(np.uint8), voxel_size=1.0)


def test_an_intensity_volume_as_grains_is_refused() -> None:
    """A grey value occurs in several particles and outside them: the grain check refuses it."""
    rng = np.random.default_rng(6)
    lab = np.zeros((12, 12, 12), np.uint32)
    lab[2:6, 2:6, 2:6] = 1
    lab[7:11, 7:11, 7:11] = 2
    scan = rng.integers(100, 1000, lab.shape).astype(np.uint16)
    with pytest.raises(VolmlaError, match="grains must"):
        measure.measure(lab, (lab > 0).astype(np.uint8), grains=scan, voxel_size=1.0)
