"""The CT phantom: determinism, chunk independence, ground-truth content, CLI."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from volmla.errors import VolmlaError
from volmla.synthetic import ATTENUATION, PHASES, phantom, write_phantom
from volmla.synthetic.noise import normal_noise
from volmla.synthetic.phantom import _make
from volmla.synthetic.render import _pore_block, grain_block

SMALL = {"shape": (64, 64, 64), "seed": 1, "esd_range": (8.0, 24.0)}
NAMES = ("intensity", "phases", "particles", "grains")


def _values(ph) -> dict[str, np.ndarray]:
    return {name: getattr(ph, name).values for name in NAMES}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    """The small phantom computed in one chunk."""
    return _values(phantom(chunks=64, **SMALL))


def _face_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)[1:].ravel()
        b = np.moveaxis(labels, axis, 0)[:-1].ravel()
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[touch], b[touch], strict=True)}
    return pairs


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("chunks", [17, 32, (64, 3, 64), (5, 64, 13)])
def test_chunking_is_bit_identical(ref, chunks) -> None:
    out = _values(phantom(chunks=chunks, **SMALL))
    for name in NAMES:
        assert out[name].dtype == ref[name].dtype
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)


TINY = {"shape": (20, 24, 28), "seed": 7, "esd_range": (6.0, 12.0), "rings": True}


@cache
def _tiny_whole() -> tuple[np.ndarray, ...]:
    return tuple(_values(phantom(chunks=28, **TINY)).values())


@settings(max_examples=4, deadline=None)
@given(chunks=st.tuples(st.integers(4, 20), st.integers(5, 24), st.integers(6, 28)))
def test_any_chunking_is_bit_identical(chunks) -> None:
    out = _values(phantom(chunks=chunks, **TINY))
    for name, whole in zip(NAMES, _tiny_whole(), strict=True):
        np.testing.assert_array_equal(out[name], whole, err_msg=name)


def test_different_seed_differs(ref) -> None:
    other = phantom(chunks=64, **{**SMALL, "seed": 2})
    assert not np.array_equal(other.particles.values, ref["particles"])
    assert not np.array_equal(other.intensity.values, ref["intensity"])


def test_kernel_is_a_pure_function_of_its_region(ref) -> None:
    _, cat, _ = _make(**SMALL)
    region = ((10, 30), (5, 41), (33, 64))
    block = grain_block(cat, region)
    np.testing.assert_array_equal(block, ref["grains"][10:30, 5:41, 33:64])


def test_normal_noise_is_counter_based_and_standard() -> None:
    index = np.arange(200_000)
    z = normal_noise(5, index)
    np.testing.assert_array_equal(normal_noise(5, index[1234:1300]), z[1234:1300])
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01
    assert abs(np.mean(z**4) - 3.0) < 0.1  # gaussian kurtosis
    assert np.corrcoef(z[:-1], z[1:])[0, 1] < 0.01
    assert not np.array_equal(normal_noise(6, index[:100]), z[:100])


# --------------------------------------------------------------------------- content


def test_attrs_and_dtypes() -> None:
    ph = phantom(chunks=32, voxel_size=(1.0, 2.0, 2.0), **SMALL)
    assert [getattr(ph, n).dtype for n in NAMES] == [np.uint16, np.uint8, np.uint32, np.uint32]
    assert [getattr(ph, n).attrs["kind"] for n in NAMES] == ["intensity", "phases", "labels", "labels"]
    assert ph.phases.attrs["phases"] == PHASES == {1: "quartz", 2: "feldspar", 3: "pyrite"}
    assert ph.intensity.attrs["voxel_size_um"] == (1.0, 2.0, 2.0)
    assert float(ph.intensity.x[1]) == 2.0
    record = ph.grains.attrs["provenance"][0]
    assert record["step"] == "phantom"
    assert record["params"]["seed"] == 1 and record["params"]["shape"] == [64, 64, 64]
    assert record["attenuation"] == ATTENUATION
    assert record["catalogue"]["n_particles"] > 10


def test_phases_particles_grains_are_consistent(ref) -> None:
    phases, particles, grains = ref["phases"], ref["particles"], ref["grains"]
    assert set(np.unique(phases)) == {0, 1, 2, 3}
    solid = phases > 0
    assert np.array_equal(solid, particles > 0)
    assert np.array_equal(solid, grains > 0)
    # every grain has one phase and lies in one particle
    g = grains[solid].astype(np.int64)
    for other in (phases[solid], particles[solid]):
        pairs = np.unique(np.stack([g, other.astype(np.int64)]), axis=1)
        assert pairs.shape[1] == len(np.unique(g))
    # grain ids are unique over the volume: one id is never split between particles
    assert len(np.unique(g)) > len(np.unique(particles[solid]))


def test_solid_fraction_liberation_border_and_touching(ref) -> None:
    phases, particles = ref["phases"], ref["particles"]
    assert 0.2 < (phases > 0).mean() < 0.4
    ids = particles[particles > 0].astype(np.int64)
    keys = np.unique(ids * 4 + phases[particles > 0])
    n_phases = np.bincount(keys // 4)[np.unique(ids)]
    assert (n_phases == 1).sum() >= 3  # liberated particles
    assert (n_phases >= 2).sum() >= 3  # intergrown particles
    faces = np.concatenate([particles[[0, -1]].ravel(), particles[:, [0, -1]].ravel(), particles[..., [0, -1]].ravel()])
    border = set(np.unique(faces)) - {0}
    assert 3 <= len(border) < len(np.unique(ids))
    assert len(_face_pairs(particles)) >= 3  # touching particles with distinct ids


def test_particle_count_scales_with_volume() -> None:
    counts = [_make(shape=s, seed=0)[0].grains.attrs["provenance"][0]["catalogue"]["n_particles"] for s in (128, 256)]
    assert 15 <= counts[0] <= 80  # a few tens at 128^3
    assert 6 <= counts[1] / counts[0] <= 10


def test_pores_are_darker_than_matrix() -> None:
    ph, cat, params = _make(chunks=64, cupping=0.0, blur_sigma=0.0, n_pores=12, **SMALL)
    intensity, phases = ph.intensity.values, ph.phases.values
    pores = _pore_block(cat, [(0, 64)] * 3) & (phases == 0)
    matrix = (phases == 0) & ~pores
    assert pores.sum() > 50
    assert intensity[pores].mean() < intensity[matrix].mean() - 3 * params["noise_sigma"]


def test_intensity_table_order_and_noise() -> None:
    ph = phantom(chunks=64, cupping=0.0, **SMALL)
    intensity, phases = ph.intensity.values.astype(np.float64), ph.phases.values
    sigma = ph.intensity.attrs["provenance"][0]["params"]["noise_sigma"]
    means, stds = [], []
    for k in range(4):
        core = ndi.binary_erosion(phases == k, iterations=3)  # away from partial-volume edges
        assert core.sum() > 200
        means.append(intensity[core].mean())
        stds.append(intensity[core].std())
    # matrix < quartz < feldspar << pyrite, and quartz/feldspar closer than the noise
    assert means[0] < means[1] < means[2] < means[3]
    assert means[2] - means[1] < sigma
    assert means[3] - means[2] > 5 * sigma
    assert abs(means[1] - ATTENUATION["quartz"]) < 0.2 * sigma
    assert abs(stds[1] - sigma) < 0.15 * sigma


def test_beam_hardening_darkens_the_centre(ref) -> None:
    intensity, phases = ref["intensity"].astype(np.float64), ref["phases"]
    core = ndi.binary_erosion(phases == 0, iterations=2)
    y, x = np.mgrid[0:64, 0:64] - 31.5
    r = np.broadcast_to(np.hypot(y, x) / math.hypot(31.5, 31.5), phases.shape)
    centre = intensity[core & (r < 0.35)].mean()
    rim = intensity[core & (r > 0.7)].mean()
    assert centre < rim - 0.03 * ATTENUATION["matrix"]


def test_rings_are_concentric_about_z() -> None:
    options = {"shape": (8, 48, 48), "seed": 4, "esd_range": (6.0, 12.0), "chunks": 16}
    plain = phantom(**options).intensity.values.astype(np.int64)
    ringed = phantom(rings=True, **options).intensity.values.astype(np.int64)
    diff = ringed - plain
    assert np.abs(diff).max() > 300
    assert np.abs(diff - diff[0]).max() <= 1  # the same in every plane (up to rounding)
    y, x = np.mgrid[0:48, 0:48] - 23.5
    r = np.hypot(y, x)
    np.testing.assert_allclose(diff[0][np.isclose(r, r.T)], diff[0].T[np.isclose(r, r.T)], atol=1)


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"shape": (4, 64, 64)}, "shape"),
        ({"seed": -1}, "seed"),
        ({"esd_range": (20.0, 10.0)}, "esd_range"),
        ({"solid_fraction": 0.9}, "solid_fraction"),
        ({"chunks": 0}, "chunks"),
        ({"voxel_size": -1.0}, "voxel size"),
        ({"colour": "red"}, "unknown"),
    ],
)
def test_bad_options_are_user_errors(options, word) -> None:
    with pytest.raises(VolmlaError, match=word):
        _make(**options)


# --------------------------------------------------------------------------- writing and CLI


@pytest.fixture(scope="module")
def scheduler():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False):
            yield cluster.scheduler_address


def test_write_phantom_matches_lazy_and_resumes(tmp_path) -> None:
    from volmla.io import open_volume

    options = {"shape": (24, 40, 32), "seed": 3, "esd_range": (6.0, 14.0), "chunks": 16}
    paths = write_phantom(tmp_path / "ph", **options)
    lazy = phantom(**options)
    for name in NAMES:
        vol = open_volume(paths[name])
        np.testing.assert_array_equal(vol.values, getattr(lazy, name).values, err_msg=name)
        assert vol.attrs["kind"] == getattr(lazy, name).attrs["kind"]
    assert open_volume(paths["phases"]).attrs["phases"] == PHASES
    # an interrupted run (one volume missing) resumes and keeps the complete ones
    import shutil

    shutil.rmtree(paths["intensity"])
    kept = (paths["grains"] / "zarr.json").stat().st_mtime_ns
    write_phantom(tmp_path / "ph", **options)
    assert (paths["grains"] / "zarr.json").stat().st_mtime_ns == kept
    np.testing.assert_array_equal(open_volume(paths["intensity"]).values, lazy.intensity.values)
    with pytest.raises(VolmlaError, match="overwrite"):
        write_phantom(tmp_path / "ph", **options)


def test_cli_writes_refuses_and_info(tmp_path, scheduler, capsys) -> None:
    from volmla.cli import main
    from volmla.io import open_volume

    out = tmp_path / "ph"
    args = ["-q", "--scheduler", scheduler, "phantom", "-o", str(out), "--shape", "16", "32", "24", "--chunks", "16"]
    assert main([*args, "--seed", "5", "--rings"]) == 0
    written = {p.name for p in out.iterdir()}
    assert written == {f"{n}.zarr" for n in NAMES}
    before = open_volume(out / "intensity.zarr").values
    capsys.readouterr()

    assert main([*args, "--seed", "6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("volmla: error:") and "--overwrite" in err and len(err.strip().splitlines()) == 1
    np.testing.assert_array_equal(open_volume(out / "intensity.zarr").values, before)

    assert main([*args, "--shape", "2", "2", "2"]) == 2  # a bad shape never touches the outputs
    np.testing.assert_array_equal(open_volume(out / "intensity.zarr").values, before)

    for name in NAMES:
        assert main(["info", str(out / f"{name}.zarr")]) == 0
    assert "phantom" in capsys.readouterr().out

    assert main([*args, "--seed", "6", "--overwrite"]) == 0
    after = open_volume(out / "intensity.zarr")
    assert after.attrs["provenance"][0]["params"]["seed"] == 6
    assert not np.array_equal(after.values, before)


def test_write_phantom_refuses_another_volumes_folder(tmp_path) -> None:
    """The library refuses what the command refuses: an OME-Zarr volume as the folder for
    the phantom's four volumes, with overwrite too, and leaves it untouched."""
    from volmla.errors import VolmlaError
    from volmla.io import write_volume

    vol = tmp_path / "scan.zarr"
    write_volume(np.zeros((8, 8, 8), np.uint16), vol, voxel_size=1.0, chunks=8, kind="intensity")
    before = sorted(p.relative_to(vol) for p in vol.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(VolmlaError, match="is an OME-Zarr volume"):
            write_phantom(vol, shape=(16, 16, 16), chunks=8, overwrite=overwrite)
    assert sorted(p.relative_to(vol) for p in vol.rglob("*")) == before
