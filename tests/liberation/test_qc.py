"""QC images: liberation classes, crops, the overlay, and reading only the planes shown."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from volmla import liberation as lib
from volmla import measure
from volmla.io.palette import phase_colors
from volmla.liberation.qc import (
    CLASSES,
    crop_box,
    liberation_classes,
    overlay,
    pick_particles,
    qc_figures,
)


def _scene(shape: tuple[int, int, int] = (32, 32, 32)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three particles: free quartz, binary quartz/pyrite, ternary; one cut by the border."""
    phases = np.zeros(shape, np.uint8)
    particles = np.zeros(shape, np.uint32)
    phases[4:12, 4:12, 4:12] = 1
    particles[4:12, 4:12, 4:12] = 1
    phases[16:26, 4:14, 16:26] = 1
    phases[16:26, 4:14, 21:26] = 2
    particles[16:26, 4:14, 16:26] = 2
    phases[4:12, 18:28, 4:14] = 1
    phases[4:12, 18:28, 8:11] = 2
    phases[4:12, 18:28, 11:14] = 3
    particles[4:12, 18:28, 4:14] = 3
    phases[0:5, 26:32, 26:32] = 3
    particles[0:5, 26:32, 26:32] = 4
    rng = np.random.default_rng(0)
    intensity = (1000.0 * phases + rng.normal(0, 50, shape)).astype(np.float32)
    return phases, particles, intensity


NAMES = ["quartz", "pyrite", "galena"]


def _table(phases: np.ndarray, particles: np.ndarray) -> pd.DataFrame:
    return measure.particle_table(particles, phases, phase_names=NAMES, voxel_size=1.0)


def test_liberation_classes_match_locking() -> None:
    df = _table(*_scene()[:2])
    cls = liberation_classes(df, phase_names=NAMES)
    assert dict(zip(df.particle_id.tolist(), cls.tolist(), strict=True)) == {1: "free", 2: "binary", 3: "ternary+",
                                                                              4: "free"}
    lock = lib.locking(df, phase_names=NAMES, include_border=True)
    for p in NAMES:
        has = df[f"vox_{p}"].to_numpy() > 0
        free_in_p = has & (df[f"grade_{p}"].to_numpy() > 0.99)
        assert lock[p]["liberated"]["number"] == pytest.approx(free_in_p.sum() / has.sum())
        assert (cls[free_in_p] == "free").all()
    assert liberation_classes(df.iloc[:0], phase_names=NAMES).size == 0


def test_pick_particles_largest_box_first() -> None:
    df = _table(*_scene()[:2])
    cls = liberation_classes(df, phase_names=NAMES)
    picked = pick_particles(df, cls, per_class=1)
    assert set(picked) == set(CLASSES)
    assert picked["free"].particle_id.tolist() == [1]  # 8^3 box beats the 5x6x6 border one
    assert pick_particles(df, cls, per_class=5)["free"].particle_id.tolist() == [1, 4]


def test_crop_box_central_plane_inside_the_volume() -> None:
    row = {"bbox_z0": 0, "bbox_y0": 26, "bbox_x0": 26, "bbox_z1": 5, "bbox_y1": 32, "bbox_x1": 32}
    assert crop_box(row, (32, 32, 32), margin=3) == (2, slice(23, 32), slice(23, 32))
    assert crop_box({**row, "bbox_z1": 1}, (32, 32, 32), margin=0) == (0, slice(26, 32), slice(26, 32))


def test_overlay_colours_alpha_and_outlines() -> None:
    ph = np.zeros((7, 7), np.uint8)
    ph[1:6, 1:6] = 1
    ph[3:6, 3:6] = 2
    lab = (ph > 0).astype(np.uint32)
    colors = phase_colors(["quartz", "pyrite"])
    opaque = overlay(ph, lab, colors=colors)
    assert opaque[0, 0].tolist() == [1.0, 1.0, 1.0]  # void on white
    assert opaque[1, 1].tolist() == [0.0, 0.0, 0.0]  # the particle's outline
    np.testing.assert_allclose(opaque[2, 2], np.array(colors[1]) / 255)
    np.testing.assert_allclose(opaque[4, 4], np.array(colors[2]) / 255)
    ct = np.where(ph > 0, 1.0, 0.0)
    blended = overlay(ph, lab, colors=colors, intensity=ct, limits=(0.0, 1.0), alpha=0.5)
    np.testing.assert_allclose(blended[2, 2], 0.5 + 0.5 * np.array(colors[1]) / 255)
    assert blended[0, 0].tolist() == [0.0, 0.0, 0.0]  # void is the dark CT, no colour on it


def _counting(volume: np.ndarray, chunks: int, seen: set[tuple[int, ...]]) -> da.Array:
    """A Dask volume that records which blocks are computed."""

    def block(x: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and None in block_info:
            seen.add(tuple(block_info[None]["chunk-location"]))
        return x

    return da.from_array(volume, chunks=chunks).map_blocks(block, dtype=volume.dtype)


@pytest.mark.parametrize("with_ct", [True, False])
def test_qc_figures_read_only_the_planes_and_crops_they_show(tmp_path: Path, with_ct: bool) -> None:
    phases, particles, intensity = _scene((64, 64, 64))
    df = _table(phases, particles)
    seen: dict[str, set[tuple[int, ...]]] = {"phases": set(), "particles": set(), "intensity": set()}
    files = qc_figures(tmp_path, phases=_counting(phases, 8, seen["phases"]),
                       particles=_counting(particles, 8, seen["particles"]),
                       intensity=_counting(intensity, 8, seen["intensity"]) if with_ct else None,
                       particles_df=df, phase_names=dict(enumerate(NAMES, start=1)), include_border=True)
    names = [f.name for f in files]
    assert names == (["qc_slices.png", "qc_closeups.png", "particle_gallery.png"] if with_ct else
                     ["particle_gallery.png"])
    assert all(f.is_file() and f.stat().st_size > 1000 for f in files)
    total = 8 ** 3
    for key, blocks in seen.items():
        if key == "intensity" and not with_ct:
            assert not blocks
            continue
        crops = 4 * 9 + (2 * 9 if with_ct else 0)  # gallery and close-ups: one plane, at most 3 x 3 blocks each
        assert 0 < len(blocks) <= (3 * 64 if with_ct else 0) + crops < total, (key, len(blocks))
    if with_ct:
        # the three centre planes (index 32 lies in block 4 of each axis) and the crops, nothing else
        planes = {b for b in seen["intensity"] if 4 in b}
        assert len(planes) >= 3 * 64 - 3 * 8 - 1


def test_gallery_shows_palette_colours_and_copes_with_nothing(tmp_path: Path) -> None:
    import matplotlib.image

    phases, particles, _ = _scene()
    df = _table(phases, particles)
    (path,) = qc_figures(tmp_path, phases=phases, particles=particles, particles_df=df, phase_names=NAMES,
                         include_border=True)
    pixels = np.rint(matplotlib.image.imread(path)[..., :3] * 255).astype(int).reshape(-1, 3)
    for rgb in phase_colors(NAMES).values():
        assert (np.abs(pixels - np.array(rgb)).max(axis=1) == 0).sum() > 20, rgb
    # every particle on the border and excluded: the gallery still draws, saying so
    edge = df.assign(touches_border=True)
    (tmp_path / "e").mkdir()
    (empty,) = qc_figures(tmp_path / "e", phases=phases, particles=particles, particles_df=edge, phase_names=NAMES)
    assert empty.is_file()
    # a single phase
    one = (phases > 0).astype(np.uint8)
    (single,) = qc_figures(tmp_path, phases=one, particles=particles, particles_df=_table_one(one, particles),
                           phase_names=["quartz"])
    assert single.is_file()


def _table_one(phases: np.ndarray, particles: np.ndarray) -> pd.DataFrame:
    return measure.particle_table(particles, phases, phase_names=["quartz"], voxel_size=1.0)
