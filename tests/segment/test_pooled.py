"""Phases by region (volmla.segment.pooled) and its place in the dispatch."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.segment.dispatch import check_options, resolve_method, segment_phases
from volmla.segment.pooled import (
    MIX_SIGMAS,
    RING_BIN,
    LabelLevels,
    corrected_grey,
    flatten_cupping,
    label_levels,
    region_phases,
)
from volmla.segment.pooled import _groups as _groups


def _planes(phases: np.ndarray) -> np.ndarray:
    n = phases.shape[0]
    labels = np.zeros(phases.shape, np.uint8)
    for z in (n // 4, n // 2, 3 * n // 4):
        labels[z] = phases[z] + 1
    return labels


def _two_grains(seed: int = 0, *, shape: int = 28, cupping: float = 0.0) -> tuple[np.ndarray, ...]:
    """One particle, two grains 1 noise sigma apart, a 2x2x2 bright inclusion, optional
    radial cupping (multiplicative, like beam hardening)."""
    rng = np.random.default_rng(seed)
    ph = np.zeros((shape,) * 3, np.uint8)
    ph[3:-3, 3:-3, 3: shape // 2] = 1
    ph[3:-3, 3:-3, shape // 2 : -3] = 2
    ph[13:15, 8:10, 6:8] = 3  # small bright inclusion in phase 1, on a labelled plane
    grey = np.array([1000.0, 2000.0, 2010.0, 4000.0])
    y = np.arange(shape) + 0.5 - shape / 2
    r2 = (y[:, None] ** 2 + y[None, :] ** 2) / (2 * (shape / 2) ** 2)
    cup = 1.0 - cupping * (1.0 - r2)
    img = grey[ph] * cup[None] + rng.normal(0, 10, ph.shape)
    return img.astype(np.float32), ph, (ph > 0).astype(np.uint32)


def test_levels_and_cupping_from_the_labels() -> None:
    img, ph, part = _two_grains(1, cupping=0.15)
    lv = label_levels(img, _planes(ph), particles=part)
    # g = 1 + a s with s = (r / r_max)^2: the phantom's cup is (1 - c)(1 + c / (1 - c) s)
    assert lv.gain == pytest.approx(0.15 / 0.85, abs=0.02)
    assert lv.levels[1] == pytest.approx(2000.0 * 0.85, abs=5.0)
    assert lv.levels[2] == pytest.approx(2010.0 * 0.85, abs=5.0)
    flat = flatten_cupping(img, lv).compute()
    y = np.arange(ph.shape[1]) + 0.5 - ph.shape[1] / 2
    r = np.broadcast_to(np.hypot(y[:, None], y[None, :])[None], ph.shape)
    inner = np.zeros(ph.shape, bool)
    inner[5:-5, 5:-5, 5:-5] = True
    inner &= ph == 1
    near, far = inner & (r < 7), inner & (r > 11)
    assert abs(flat[near].mean() - flat[far].mean()) < 10.0  # one level across the field
    assert abs(img[near].mean() - img[far].mean()) > 40.0


def test_levels_leave_out_labelled_voxels_next_to_a_mixture() -> None:
    # a bright inclusion just above a labelled plane: the voxel above reads as a third of
    # it, the labelled voxel below carries its blur (+10 noise sigmas, the phase gap): one
    # in five of phase 2's labelled voxels so lifted would put its level 2 sigmas high
    img, ph, part = _two_grains(6)
    labels = _planes(ph)
    rng = np.random.default_rng(7)
    z, y, x = np.nonzero((labels == 3) & (np.roll(ph, -1, axis=0) == 2))
    pick = rng.choice(z.size, size=z.size // 5, replace=False)
    img[z[pick], y[pick], x[pick]] += 100.0
    img[z[pick] + 1, y[pick], x[pick]] = 2800.0
    lv = label_levels(img, labels, particles=part)
    assert lv.levels[2] == pytest.approx(2010.0, abs=4.0)
    assert lv.levels[1] == pytest.approx(2000.0, abs=4.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_rings_do_not_bend_the_gain(seed: int) -> None:
    # narrow additive rings (detector artefacts) 15 noise sigmas high, where the void
    # shows them: the gain is fitted to the means less the rings and the rings stand out
    # of a running median, so gain, rings and levels come out right (fitting the gain
    # first and smoothing the rings away gave a gain 0.005 low, rings a quarter short
    # and levels 14 grey values (1.4 sigma) off)
    shape = 40
    img, ph, part = _two_grains(seed, shape=shape, cupping=0.15)
    y = np.arange(shape) + 0.5 - shape / 2
    r = np.hypot(y[:, None], y[None, :])
    rings = 150.0 * np.exp(-((r - 19.0) ** 2) / (2 * 0.6**2)) - 150.0 * np.exp(-((r - 15.0) ** 2) / (2 * 0.6**2))
    lv = label_levels(img + rings[None].astype(np.float32), _planes(ph), particles=part)
    assert lv.gain == pytest.approx(0.15 / 0.85, abs=0.002)
    assert lv.levels[1] == pytest.approx(2000.0 * 0.85, abs=5.0)
    assert lv.levels[0] == pytest.approx(1000.0 * 0.85, abs=5.0)
    profile = np.asarray(lv.rings)
    centres = (np.arange(profile.size) + 0.5) * RING_BIN
    assert profile[np.abs(centres - 15.0) < 0.3].mean() == pytest.approx(-150.0, abs=10.0)


def test_regions_split_what_voxels_cannot_and_keep_the_inclusion() -> None:
    img, ph, part = _two_grains(2, cupping=0.1)
    labels = _planes(ph)
    # one particle of two half-volume grains: the region is sized for the grains (the
    # particle-derived "auto" radius, 5 here, assumes grains a good part of a particle)
    out = region_phases(img, part, labels, radius=3).compute()
    inside = part > 0
    wrong = (out != ph) & inside
    # voxel by voxel (nearest level of the flattened grey) a third is wrong; by region
    # only some voxels at the grain boundary are
    assert wrong.sum() / inside.sum() < 0.02
    assert (out[13:15, 8:10, 6:8] == 3).all()  # the small bright inclusion is found
    assert (out[~inside] == 0).all()
    # no region pooling (radius 1 takes the voxel's 6 neighbours only) is far worse
    poor = region_phases(img, part, labels, radius=1, min_grain=0, psf_sigma=0).compute()
    assert ((poor != ph) & inside).sum() > 5 * wrong.sum()


def test_bright_rim_of_a_free_particle_is_not_a_darker_phase() -> None:
    """A free bright particle, blurred into the void: its rim voxels have the grey of
    the darker phases but belong to it (no interior of a darker phase around them)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    ph = np.zeros((24, 24, 24), np.uint8)
    ph[4:20, 4:12, 4:20] = 1
    ph[4:20, 14:20, 4:20] = 3  # a free pyrite particle beside a quartz one
    part = np.zeros(ph.shape, np.uint32)
    part[ph == 1], part[ph == 3] = 1, 2
    grey = np.array([1000.0, 2000.0, 2010.0, 4000.0])
    img = ndi.gaussian_filter(grey[ph], 0.8) + rng.normal(0, 10, ph.shape)
    labels = _planes(ph)
    labels[12, 2, 2] = 3  # the labels name phase 2 too (a few voxels)
    img[12, 2, 2] = 2010.0
    out = region_phases(img.astype(np.float32), part, labels).compute()
    assert (out[part == 2] == 3).all()
    assert (out[part == 1] == 1).mean() > 0.99


@pytest.mark.parametrize("grain", [1, 2])
def test_mixed_voxels_do_not_pull_the_pools(grain: int) -> None:
    """Voxels of the quartz/feldspar group reading far above both levels (a third of a
    bright inclusion at sub-voxel scale, 60 noise sigmas high, still below the midpoint
    to the inclusion's level) are mixtures: they stay out of the pools, so the grain
    around them keeps its phase, and they take the phase of their grain."""
    img, ph, part = _two_grains(4)
    labels = _planes(ph)
    rng = np.random.default_rng(5)
    sel = np.zeros(ph.shape, bool)
    z, y, x = np.nonzero((ph == grain) & (labels == 0))
    pick = rng.choice(z.size, size=z.size // 40, replace=False)  # one voxel in 40
    sel[z[pick], y[pick], x[pick]] = True
    img = np.where(sel, np.float32(2600.0), img).astype(np.float32)
    out = region_phases(img, part, labels, radius=3).compute()
    # away from the contact of the two grains (where a pool reaches across: 3 % of a
    # grain's voxels are wrong there without any mixture); without the flag 76-85 % of
    # the grain took the other phase
    x = np.arange(ph.shape[2])[None, None, :]
    away = np.abs(x - ph.shape[2] // 2 + 0.5) > 2
    rest = (ph == grain) & ~sel & away
    assert (out[rest] == grain).mean() > 0.99
    assert (out[sel & away] == grain).mean() > 0.97
    # the flag's rule: MIX_SIGMAS noise sigmas above the group's brightest level
    lv = label_levels(img, labels, particles=part)
    groups = _groups(lv, contrast=0.0, pores=False)
    assert groups.ceilings[1] == pytest.approx(max(lv.levels[1], lv.levels[2]) + MIX_SIGMAS * lv.noise_sigma)
    assert np.isinf(groups.ceilings[2])  # the inclusion's group is not pooled: no flag


@pytest.mark.parametrize("chunks", [(1, 32, 32), (5, 7, 11), (16, 16, 16)])
def test_chunk_invariant_on_a_phantom(chunks: tuple[int, int, int]) -> None:
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=32, seed=2, oversample=1, level="hard")
    labels = _planes(ore.phases)
    whole = region_phases(ore.intensity, ore.particles, labels).compute()
    chunked = region_phases(*(da.from_array(a, chunks=chunks) for a in (ore.intensity, ore.particles, labels)))
    assert (whole == chunked.compute()).all()
    inside = ore.particles > 0
    assert (whole[inside] == ore.phases[inside]).mean() > 0.85


def test_solid_fraction_sets_the_level_map_edges() -> None:
    """A binary fraction equal to the particles is the default; a known sub-voxel fraction
    changes the correction, the same for any chunking."""
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=32, seed=2, level="hard")
    labels = _planes(ore.phases)
    default = region_phases(ore.intensity, ore.particles, labels, psf_sigma=0.8).compute()
    binary = region_phases(ore.intensity, ore.particles, labels, psf_sigma=0.8,
                           solid_fraction=(ore.particles > 0).astype(np.float32)).compute()
    assert (default == binary).all()
    unknown = region_phases(ore.intensity, ore.particles, labels, psf_sigma=0.8,
                            solid_fraction=np.full(ore.intensity.shape, np.nan, np.float32)).compute()
    assert (default == unknown).all()  # a non-finite fraction keeps the particles' edge
    whole = region_phases(ore.intensity, ore.particles, labels, psf_sigma=0.8,
                          solid_fraction=ore.solid_fraction).compute()
    assert (whole != default).any()
    chunked = region_phases(*(da.from_array(a, chunks=(5, 7, 11)) for a in (ore.intensity, ore.particles, labels)),
                            psf_sigma=0.8, solid_fraction=da.from_array(ore.solid_fraction, chunks=(16, 16, 16)))
    assert (whole == chunked.compute()).all()
    with pytest.raises(VolmlaError, match="same shape"):
        region_phases(ore.intensity, ore.particles, labels, solid_fraction=ore.solid_fraction[:3])


@pytest.mark.parametrize("chunks", [(1, 40, 40), (7, 9, 11), (40, 40, 40)])
def test_corrected_grey_takes_out_the_blur_of_the_surface(chunks: tuple[int, int, int]) -> None:
    """A one-phase particle blurred by the PSF reads its own level everywhere inside once
    corrected (the blurred surface is taken out), for any chunking; uncorrected, its
    shell reads darker."""
    from scipy import ndimage as ndi

    z, y, x = np.mgrid[:40, :40, :40]
    part = (((z - 20) ** 2 + (y - 19) ** 2 + (x - 21) ** 2) <= 12**2).astype(np.uint32)
    ideal = np.where(part > 0, 1000.0, 100.0)
    img = ndi.gaussian_filter(ideal, 0.8, mode="nearest").astype(np.float32)
    levels = LabelLevels({0: 100.0, 1: 1000.0}, 10.0, 0.0, {0: 1000, 1: 1000})
    grey = corrected_grey(*(da.from_array(a, chunks=chunks) for a in (img, part)), levels, psf_sigma=0.8)
    corrected, flat = grey.corrected.compute(), grey.flat.compute()
    inside = part > 0
    np.testing.assert_allclose(corrected[inside], 1000.0, atol=0.5)
    np.testing.assert_allclose(corrected[~inside], 100.0, atol=0.5)
    assert flat[inside].min() < 700.0  # the shell before the correction
    assert grey.psf_sigma == 0.8
    estimated = corrected_grey(img, part, levels)
    assert abs(estimated.psf_sigma - 0.8) <= 0.1
    with pytest.raises(VolmlaError, match="same shape"):
        corrected_grey(img, part[:3], levels)
    with pytest.raises(VolmlaError, match="psf_sigma"):
        corrected_grey(img, part, levels, psf_sigma=-1.0)


def test_no_void_level_no_correction(caplog: pytest.LogCaptureFixture) -> None:
    """Levels without the void's (a void rim too thin to hold a voxel away from every
    particle): the level map's outside would be a guess (0 grey fitted a PSF of 0.4 voxel
    to this sharp particle and lifted its faces by 4 noise sigmas), so the grey is not
    corrected, with a warning; a PSF asked for explicitly is refused."""
    rng = np.random.default_rng(4)
    ph = np.zeros((24, 24, 24), np.uint8)
    ph[2:22, 2:22, 2:22] = 1
    img = (np.array([100.0, 1000.0])[ph] + rng.normal(0, 10, ph.shape)).astype(np.float32)
    labels = np.zeros_like(ph)
    labels[12] = ph[12] + 1
    part = (ph > 0).astype(np.uint32)
    lv = label_levels(img, labels, particles=part)
    assert 0 not in lv.levels and lv.levels[1] == pytest.approx(1000.0, abs=3.0)
    with caplog.at_level("WARNING", logger="volmla.segment.pooled"):
        grey = corrected_grey(img, part, lv)
    assert grey.psf_sigma == 0.0
    assert "no void level" in caplog.text
    corrected = grey.corrected.compute()
    np.testing.assert_array_equal(corrected, grey.flat.compute())
    assert abs(corrected[2].mean() - corrected[6].mean()) < 3.0  # the face reads as the inside
    with pytest.raises(VolmlaError, match="needs the void's grey level"):
        corrected_grey(img, part, lv, psf_sigma=0.8)
    assert corrected_grey(img, part, lv, psf_sigma=0.0).psf_sigma == 0.0


def test_no_void_level_needed_where_the_particles_fill_the_volume() -> None:
    """A scan inside the sample (a core's interior): no void anywhere, so no void level,
    and the blur of a bright grain into its host is still corrected."""
    from scipy import ndimage as ndi

    ph = np.ones((32, 32, 32), np.uint8)
    ph[10:22, 10:22, 10:22] = 2
    ideal = np.array([0.0, 1000.0, 3000.0])[ph]
    img = ndi.gaussian_filter(ideal, 0.8, mode="nearest").astype(np.float32)
    part = np.ones(ph.shape, np.uint32)
    levels = LabelLevels({1: 1000.0, 2: 3000.0}, 10.0, 0.0, {1: 1000, 2: 1000})
    grey = corrected_grey(img, part, levels)
    assert abs(grey.psf_sigma - 0.8) <= 0.1
    corrected = grey.corrected.compute()
    next_to = ndi.binary_dilation(ph == 2) & (ph == 1)
    assert grey.flat.compute()[next_to].mean() > 1100.0  # the bright grain's blur
    assert abs(corrected[next_to].mean() - 1000.0) < 30.0
    assert corrected_grey(img, part, levels, psf_sigma=0.8).psf_sigma == 0.8


def test_forest_is_never_saved_over_a_folder(tmp_path) -> None:
    (tmp_path / "scan.zarr").mkdir()
    with pytest.raises(VolmlaError, match="is a folder"):
        check_options("rf", labels="l.zarr", save_model=tmp_path / "scan.zarr")
    assert check_options("rf", labels="l.zarr", save_model=tmp_path / "rf.onnx") == "rf"


def test_dispatch_regions_is_the_default_with_labels() -> None:
    assert resolve_method(None, labels="labels.zarr") == "regions"
    assert check_options(None, labels="labels.zarr") == "regions"
    with pytest.raises(VolmlaError, match="labels="):
        check_options("regions")
    with pytest.raises(VolmlaError, match="not model="):
        check_options("regions", labels="l.zarr", model="m.onnx")
    img, ph, part = _two_grains(4)
    seg = segment_phases(img, labels=_planes(ph), particles=part)
    assert seg.method == "regions" and seg.classes == ("void", "phase1", "phase2", "phase3")
    out = seg.phases.compute()
    assert ((out != ph) & (part > 0)).mean() < 0.02
    # without particles they are labelled from the intensity
    seg2 = segment_phases(img, method="regions", labels=_planes(ph), region_options={"min_grain": 0})
    assert seg2.phases.shape == img.shape and seg2.phases.dtype == np.uint8


def test_bad_input() -> None:
    img, ph, part = _two_grains(5)
    labels = _planes(ph)
    with pytest.raises(VolmlaError, match="labels=SPARSE_LABELS or levels="):
        region_phases(img, part)
    with pytest.raises(VolmlaError, match="radius"):
        region_phases(img, part, labels, radius=0)
    with pytest.raises(VolmlaError, match="min_grain"):
        region_phases(img, part, labels, min_grain=-1)
    with pytest.raises(VolmlaError, match="psf_sigma"):
        region_phases(img, part, labels, psf_sigma=-1.0)
    with pytest.raises(VolmlaError, match="depth"):
        region_phases(img, part, labels, depth=0)
    with pytest.raises(VolmlaError, match="same shape"):
        region_phases(img, part[:, :, :3], labels)
    with pytest.raises(VolmlaError, match="solid phase"):
        label_levels(img, (labels > 0).astype(np.uint8))  # only void labelled
    with pytest.raises(VolmlaError, match="shape"):
        label_levels(img, labels[:3])
    with pytest.raises(VolmlaError, match="solid phase"):
        region_phases(img, part, levels=LabelLevels({0: 1.0}, 1.0, 0.0, {0: 1}))


def test_psf_is_estimated_from_the_edges() -> None:
    from scipy import ndimage as ndi

    from volmla.segment.pooled import _groups, _level_map_block, estimate_psf

    img, ph, part = _two_grains(6)
    blurred = ndi.gaussian_filter(np.array([1000.0, 2000.0, 2010.0, 4000.0])[ph], 0.8)
    blurred += np.random.default_rng(6).normal(0, 10, ph.shape)
    lv = label_levels(blurred.astype(np.float32), _planes(ph), particles=part)
    groups = _groups(lv, contrast=3.0, pores=False)
    glev = np.array([lv.levels[0], lv.levels[0]] + [float(np.mean(r[np.isfinite(r)])) for r in groups.levels[1:]])
    lmap = _level_map_block(part, blurred, bounds=groups.bounds, pore=groups.pore, group_levels=glev)
    flat = flatten_cupping(blurred.astype(np.float32), lv)
    assert estimate_psf(flat, da.from_array(lmap), noise_sigma=lv.noise_sigma) == pytest.approx(0.8, abs=0.15)


def test_auto_radius_follows_the_particle_sizes() -> None:
    from volmla.segment.pooled import AUTO_RADIUS_RANGE, DEFAULT_RADIUS, auto_radius

    def balls(r: float, n: int = 4) -> np.ndarray:
        size = int(2 * r + 4)
        zz, yy, xx = np.indices((size, size, size * n))
        out = np.zeros(zz.shape, np.uint32)
        for i in range(n):
            c = (size / 2, size / 2, size * (i + 0.5))
            out[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] = i + 1
        return out

    assert auto_radius(balls(4.5)) == 3  # hard crushed ore: particles of r_eq ~4.5
    assert auto_radius(balls(7.2)) == 3  # easy crushed ore
    assert auto_radius(balls(8.5)) == 4  # the demo's: r_eq ~8.5
    assert auto_radius(balls(30.0, n=2)) == AUTO_RADIUS_RANGE[1]
    assert auto_radius(balls(2.0)) == DEFAULT_RADIUS  # only dust: no size to go by


def test_the_region_kernel_runs_once_per_block(monkeypatch) -> None:
    """Cleaning and grains as regions read the pooled phases in several passes: they read
    them back from scratch, so the region kernel runs once per block, with the same result."""
    from volmla.segment import pooled

    img, ph, part = _two_grains(2)
    args = [da.from_array(a, chunks=14) for a in (img, part, _planes(ph))]
    blocks = 8
    calls: list[int] = []
    kernel = pooled._region_block

    def counted(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        return kernel(*a, **kw)

    monkeypatch.setattr(pooled, "_region_block", counted)
    stored = region_phases(*args).compute()
    assert len(calls) == blocks
    from volmla.engine import scratch

    # no scratch (workers on other machines): recomputed per pass
    monkeypatch.setattr(pooled, "session_scratch", lambda *a, **kw: None)
    monkeypatch.setattr(scratch, "session_scratch", lambda *a, **kw: None)
    calls.clear()
    recomputed = region_phases(*args).compute()
    assert len(calls) > 2 * blocks
    np.testing.assert_array_equal(stored, recomputed)
