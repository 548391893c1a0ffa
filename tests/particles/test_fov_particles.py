"""Particles from a scan with a cylindrical field of view: the outside is not void, the edge cuts particles."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.measure import particle_table
from volmla.particles import label_particles
from volmla.particles.evaluate import match_particles
from volmla.preprocess.fov import FieldOfView, from_provenance
from volmla.synthetic.crushed import crushed_ore

N = 96


@pytest.fixture(scope="module")
def ore():  # type: ignore[no-untyped-def]
    return crushed_ore(shape=N, seed=0, level="easy")


def _radius() -> np.ndarray:
    y, x = np.mgrid[:N, :N]
    return np.broadcast_to(np.hypot(y - (N - 1) / 2, x - (N - 1) / 2), (N, N, N))


def _with_fov(ct: np.ndarray, *, wall: bool) -> np.ndarray:
    """The scan as a reconstruction writes it: 0 outside the inscribed circle, optionally a
    container wall (3 voxels, between the resin's and quartz's grey) inside it."""
    r = _radius()
    out = ct.copy()
    if wall:
        ring = (r > N / 2 - 3.5) & (r < N / 2)
        out[ring] = np.random.default_rng(1).normal(14000, 800, int(ring.sum())).clip(0, 65535).astype(np.uint16)
    out[r >= N / 2] = 0
    return out


def _matched(labels: np.ndarray, truth: np.ndarray, edge_radius: float) -> float:
    """Matched fraction (IoU >= 0.8) over the particles that stay clear of the cylinder's edge."""
    edge = _radius() >= edge_radius
    keep = [lab.copy() for lab in (labels, truth)]
    for lab in keep:
        cut = np.unique(lab[edge])
        lab[np.isin(lab, cut[cut > 0])] = 0
    return match_particles(keep[0], keep[1]).matched_fraction


def test_the_outside_does_not_move_the_levels(ore) -> None:  # type: ignore[no-untyped-def]
    plain = np.asarray(label_particles(ore.intensity).labels)
    scan = _with_fov(ore.intensity, wall=False)
    found = label_particles(scan)
    labels = np.asarray(found.labels)
    fov = from_provenance(found.labels.attrs)
    assert fov is not None and abs(fov.radius - N / 2) < 0.6 and fov.fill == 0
    assert not labels[_radius() >= fov.radius].any()  # nothing outside the field of view
    want = _matched(plain, ore.particles, N / 2 - 0.5)
    got = _matched(labels, ore.particles, N / 2 - 0.5)
    assert want >= 0.9
    assert got >= want - 0.05, (got, want)
    # read as void, the fill outside moves the levels: particles lost
    blind = np.asarray(label_particles(scan, field_of_view=None).labels)
    assert _matched(blind, ore.particles, N / 2 - 0.5) < got - 0.1


def test_a_container_wall_inside_the_field_of_view(ore) -> None:  # type: ignore[no-untyped-def]
    """A wall between the resin's and quartz's grey is a third level: found alone, the field of
    view still helps; given as the wall's inner circle, the particles are found as without it."""
    plain = np.asarray(label_particles(ore.intensity).labels)
    scan = _with_fov(ore.intensity, wall=True)
    inner = N / 2 - 3.5
    want = _matched(plain, ore.particles, inner)
    blind = _matched(np.asarray(label_particles(scan, field_of_view=None).labels), ore.particles, inner)
    found = _matched(np.asarray(label_particles(scan).labels), ore.particles, inner)
    given = FieldOfView(((N - 1) / 2, (N - 1) / 2), inner, 0.0)
    inside = _matched(np.asarray(label_particles(scan, field_of_view=given).labels), ore.particles, inner)
    assert blind < 0.2 < found
    assert inside >= want - 0.05, (inside, want)


def test_the_same_particles_for_every_chunking(ore) -> None:  # type: ignore[no-untyped-def]
    scan = _with_fov(ore.intensity, wall=True)
    ref = np.asarray(label_particles(scan).labels)
    for chunks in [(N, 40, 40), (25, 72, 31)]:
        got = np.asarray(label_particles(da.from_array(scan, chunks=chunks)).labels)
        np.testing.assert_array_equal(got, ref)


def test_a_given_field_of_view_is_used_and_recorded(ore) -> None:  # type: ignore[no-untyped-def]
    fov = FieldOfView(((N - 1) / 2, (N - 1) / 2), 30.0, 0.0)
    found = label_particles(ore.intensity, field_of_view=fov)
    labels = np.asarray(found.labels)
    assert from_provenance(found.labels.attrs) == fov
    assert not labels[_radius() >= 30.0].any()
    none = label_particles(ore.intensity)  # a scan with no fill outside: nothing found, nothing recorded
    assert from_provenance(none.labels.attrs) is None


def test_particles_at_the_edge_touch_the_border(ore) -> None:  # type: ignore[no-untyped-def]
    found = label_particles(_with_fov(ore.intensity, wall=False))
    labels = found.labels
    fov = from_provenance(labels.attrs)
    assert fov is not None
    table = particle_table(labels, (labels > 0).astype(np.uint8), voxel_size=1.0)
    lab = np.asarray(labels)
    at_edge = np.unique(lab[_radius() >= fov.radius - 1])
    at_edge = set(at_edge[at_edge > 0].tolist())
    faces = set(table.particle_id[(table.bbox_z0 == 0) | (table.bbox_z1 == N) | (table.bbox_y0 == 0)
                                  | (table.bbox_y1 == N) | (table.bbox_x0 == 0) | (table.bbox_x1 == N)].tolist())
    assert at_edge - faces  # some particles reach the edge and no face
    assert set(table.particle_id[table.touches_border].tolist()) == at_edge | faces
    # the same labels without their record: only the faces count
    bare = particle_table(np.asarray(labels), (lab > 0).astype(np.uint8), voxel_size=1.0)
    assert set(bare.particle_id[bare.touches_border].tolist()) == faces


def test_the_command_finds_takes_or_leaves_the_field_of_view(ore, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from volmla.cli import main
    from volmla.io import open_volume, write_volume

    write_volume(_with_fov(ore.intensity, wall=True), tmp_path / "scan.zarr", voxel_size=1.0, chunks=48)
    inner = N / 2 - 3.5
    runs = {"auto": [], "given": ["--fov", f"{(N - 1) / 2},{(N - 1) / 2},{inner}"], "none": ["--fov", "none"]}
    found = {}
    for name, extra in runs.items():
        assert main(["particles", str(tmp_path / "scan.zarr"), "-o", str(tmp_path / f"{name}.zarr"), *extra]) == 0
        labels = open_volume(tmp_path / f"{name}.zarr")
        found[name] = from_provenance(labels.attrs)
        if name != "none":
            assert not labels.values[_radius() >= found[name].radius].any()
    assert found["auto"] is not None and abs(found["auto"].radius - N / 2) < 0.6
    assert found["given"] == FieldOfView(((N - 1) / 2, (N - 1) / 2), inner, 0.0)
    assert found["none"] is None
    capsys.readouterr()
    for bad in ("1,2", "a,b,c", "10,10,0.5", "nan,1,20"):
        assert main(["particles", str(tmp_path / "scan.zarr"), "-o", str(tmp_path / "bad.zarr"), "--fov", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("volmla: error: --fov") and "\n" not in err, err
        assert not (tmp_path / "bad.zarr").exists()


def test_a_run_config_names_the_field_of_view(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from volmla.errors import VolmlaError
    from volmla.pipeline.config import validate_config

    base = {"out": str(tmp_path / "o"), "input": str(tmp_path / "scan.zarr"), "segment": {"method": "threshold", "classes": 3}}
    for value, want in ((False, None), (True, "auto"), ("auto", "auto"), ([31.5, 30, 28], FieldOfView((31.5, 30.0), 28.0, 0.0))):
        cfg = validate_config({**base, "particles": {"field_of_view": value}})
        assert cfg.particles.field_of_view == want
        assert "field_of_view" not in cfg.particles.options()
    with pytest.raises(VolmlaError, match=r"^config particles.field_of_view must be auto, none or Y,X,R"):
        validate_config({**base, "particles": {"field_of_view": [1, 2]}})
