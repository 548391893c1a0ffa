"""crushed_ore: determinism, truth consistency, contacts, partial volume, intensity statistics."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy import ndimage as ndi

from volmla.errors import VolmlaError
from volmla.io.volume import open_volume
from volmla.synthetic import LEVELS, PHASES, CrushedOre, crushed_ore, write_crushed_ore

ARRAYS = ("intensity", "noiseless", "particles", "phases", "solid_fraction")


@cache
def _ore(level: str = "easy", seed: int = 3, **kw) -> CrushedOre:
    return crushed_ore(shape=48, seed=seed, level=level, **kw)


def _contact_faces(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys (lo * 2**32 + hi) and positions of the faces between two particles."""
    keys, pos = [], []
    for ax in range(3):
        a = np.moveaxis(labels, ax, 0)
        x, y = a[1:], a[:-1]
        t = (x != y) & (x > 0) & (y > 0)
        lo, hi = np.minimum(x[t], y[t]).astype(np.uint64), np.maximum(x[t], y[t]).astype(np.uint64)
        keys.append((lo << np.uint64(32)) | hi)
        idx = np.argwhere(t).astype(np.float64)
        idx[:, 0] += 1.0  # the face between planes k and k + 1
        p = np.empty_like(idx)
        p[:, [ax, *(k for k in range(3) if k != ax)]] = idx
        pos.append(p)
    return np.concatenate(keys), np.concatenate(pos)


def test_deterministic():
    a = crushed_ore(shape=32, seed=5, level="hard")
    b = crushed_ore(shape=32, seed=5, level="hard")
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.table.equals(b.table) and a.params == b.params
    c = crushed_ore(shape=32, seed=6, level="hard")
    assert not np.array_equal(a.particles, c.particles)


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_truth_consistent(level):
    ore = _ore(level)
    t = ore.table
    assert ore.particles.dtype == np.uint32 and ore.phases.dtype == np.uint8
    assert ore.solid_fraction.dtype == np.float32 and ore.intensity.dtype == np.uint16
    # phase volumes add up to the particle volume; scan units are fine / oversample^3
    phase_fine = sum(t[f"vox_fine_{p}"] for p in PHASES.values())
    np.testing.assert_array_equal(phase_fine, t["volume_voxels_fine"])
    np.testing.assert_allclose(t["volume_voxels"], t["volume_voxels_fine"] / 8)
    np.testing.assert_allclose(t["volume_voxels"].sum(), ore.solid_fraction.astype(np.float64).sum(), rtol=1e-6)
    # ids of the volume are the table's; void has no phase and solid has one (no pores)
    ids = np.unique(ore.particles)
    assert set(ids[ids > 0]) <= set(t["particle_id"])
    np.testing.assert_array_equal(ore.particles > 0, ore.phases > 0)
    # free particles (one grain) have grade 1 in their phase, and all phases occur
    free = t[t["n_cells"] == 1]
    assert len(free) > 0
    grades = free[[f"grade_{p}" for p in PHASES.values()]].to_numpy()
    np.testing.assert_array_equal(grades.max(axis=1), 1.0)
    assert (free["free_phase"] != "").all()
    assert all(t[f"vox_fine_{p}"].sum() > 0 for p in PHASES.values())
    # border flags: a particle with a voxel on a face touches the border
    faces = np.concatenate([np.moveaxis(ore.particles, ax, 0)[k].ravel() for ax in range(3) for k in (0, -1)])
    flagged = set(t.loc[t["touches_border"], "particle_id"])
    assert set(np.unique(faces[faces > 0])) <= flagged
    ld = ore.liberation["liberation_degree"]
    assert set(ld) == set(PHASES.values())
    assert all(v is None or 0.0 <= v <= 1.0 for v in ld.values())


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_packing_contacts_and_partial_volume(level):
    ore = _ore(level)
    want = LEVELS[level]["density"]
    assert abs(ore.params["achieved_density"] - want) < 0.08
    assert ore.params["n_contacts"] >= 3
    keys, pos = _contact_faces(ore.particles)
    pairs, counts = np.unique(keys, return_counts=True)
    assert pairs.size >= 3
    # contacts are flat: the faces between two particles lie close to a plane
    for key in pairs[counts >= 12]:
        p = pos[keys == key]
        rms = np.linalg.svd(p - p.mean(axis=0), compute_uv=False)[-1] / np.sqrt(len(p))
        assert rms < 0.6
    # partial volume: many voxels are part solid
    partial = (ore.solid_fraction > 0.05) & (ore.solid_fraction < 0.95)
    assert partial.mean() > 0.02
    assert 0.0 <= ore.solid_fraction.min() and ore.solid_fraction.max() <= 1.0


def test_deep_overlaps_are_cut_by_a_plane():
    # with deep overlaps a lens given whole to one particle leaves a curved contact;
    # the bisecting plane leaves flat ones (up to the voxel staircase, ~0.4 rms)
    rms = []
    for seed in (3, 4):
        ore = crushed_ore(shape=48, seed=seed, overlap=(0.2, 0.3))
        keys, pos = _contact_faces(ore.particles)
        pairs, counts = np.unique(keys, return_counts=True)
        for key in pairs[counts >= 12]:
            p = pos[keys == key]
            rms.append(np.linalg.svd(p - p.mean(axis=0), compute_uv=False)[-1] / np.sqrt(len(p)))
    assert len(rms) >= 8
    assert np.mean(np.asarray(rms) < 0.45) >= 0.6


def test_levels_harder():
    easy, hard = LEVELS["easy"], LEVELS["hard"]
    assert hard["radius"] < easy["radius"] and hard["density"] > easy["density"]
    assert hard["noise_sigma"] > easy["noise_sigma"] and hard["contrast"] < easy["contrast"]


def test_oversample_one_is_its_own_truth():
    ore = crushed_ore(shape=32, seed=2, oversample=1)
    assert set(np.unique(ore.solid_fraction)) <= {0.0, 1.0}
    counts = np.bincount(ore.particles.ravel(), minlength=len(ore.table) + 1)[1:]
    np.testing.assert_array_equal(counts, ore.table["volume_voxels_fine"])


@pytest.mark.parametrize(("level", "contrast"), [("easy", 1.5), ("hard", 1.0)])
def test_intensity_statistics(level, contrast):
    ore = _ore(level, seed=1, cupping=0.0, rings=0, dtype="float32")
    sigma = LEVELS[level]["noise_sigma"]
    noise = ore.intensity - ore.noiseless
    assert np.std(noise) == pytest.approx(sigma, rel=0.03)
    assert abs(float(np.mean(noise))) < 0.05 * sigma
    grey = ore.params["grey"]
    assert (grey["feldspar"] - grey["quartz"]) / sigma == pytest.approx(contrast)
    # measured inside pure grains, away from boundaries (PSF and partial volume)
    level_of = {}
    for k, name in PHASES.items():
        core = ndi.binary_erosion(ore.phases == k, iterations=2)
        if core.sum() > 20:
            level_of[name] = float(np.median(ore.noiseless[core]))
    assert level_of["feldspar"] - level_of["quartz"] == pytest.approx(contrast * sigma, rel=0.1)
    if "pyrite" in level_of:
        assert level_of["pyrite"] > level_of["feldspar"] + 10 * sigma
    void = ndi.binary_erosion(ore.particles == 0, iterations=3)
    assert float(np.median(ore.noiseless[void])) == pytest.approx(grey["resin"], rel=0.01)


def test_cupping_and_rings_change_the_scan():
    base = _ore("easy", seed=1, cupping=0.0, rings=0, dtype="float32")
    cupped = _ore("easy", seed=1, cupping=0.2, rings=2, dtype="float32")
    np.testing.assert_array_equal(base.particles, cupped.particles)
    centre = cupped.noiseless[:, 20:28, 20:28].mean() / base.noiseless[:, 20:28, 20:28].mean()
    assert centre < 0.85


def test_pores_are_void_inside_particles():
    ore = crushed_ore(shape=48, seed=2, pore_fraction=1.0, oversample=2)
    phase_fine = sum(ore.table[f"vox_fine_{p}"] for p in PHASES.values())
    np.testing.assert_array_equal(phase_fine, ore.table["volume_voxels_fine"])
    filled = ndi.binary_fill_holes(ore.particles > 0)
    assert (filled & (ore.particles == 0)).sum() > 0  # pores show as holes


def test_write_crushed_ore(tmp_path):
    ore = write_crushed_ore(tmp_path / "ore", shape=32, seed=1)
    vol = open_volume(tmp_path / "ore" / "particles.zarr")
    np.testing.assert_array_equal(vol.values, ore.particles)
    with pytest.raises(VolmlaError, match="overwrite=True"):
        write_crushed_ore(tmp_path / "ore", shape=32, seed=1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"level": "medium"}, "level must be one of"),
        ({"shape": 8}, "shape must be"),
        ({"oversample": 0}, "oversample must be"),
        ({"density": 0.9}, "density must lie"),
        ({"overlap": (0.2, 0.1)}, "overlap must be"),
        ({"dtype": "int8"}, "dtype must be"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(VolmlaError, match=match):
        crushed_ore(**{"shape": 32, **kw})
