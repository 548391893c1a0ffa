"""Phases by region in a scan with a cylindrical field of view: the levels and the PSF come from its inside."""

from __future__ import annotations

import numpy as np
import pytest

from volmla.particles import label_particles
from volmla.preprocess.fov import FieldOfView, find_field_of_view, void_outside
from volmla.segment.pooled import label_levels, region_phases
from volmla.synthetic import crushed_ore


def test_the_outside_is_no_void_to_the_levels() -> None:
    """Void outside particles enters the cupping fit; a fill outside the circle is none."""
    rng = np.random.default_rng(0)
    n = 64
    y, x = np.mgrid[:n, :n]
    r = np.broadcast_to(np.hypot(y - (n - 1) / 2, x - (n - 1) / 2), (8, n, n))
    particles = np.zeros((8, n, n), np.uint32)
    particles[:, 20:44, 20:44] = 1
    img = np.where(particles > 0, 2000.0, 1000.0) + rng.normal(0, 20, particles.shape)
    img[r >= 30] = 400.0  # a constant the reconstruction wrote outside its circle
    labels = np.zeros(particles.shape, np.uint8)
    labels[:, 25:39, 25:39] = 2  # the particle's inside labelled; the void away from it enters unlabelled
    fov = FieldOfView(((n - 1) / 2, (n - 1) / 2), 30.0, 400.0)
    inside = label_levels(img.astype(np.float32), labels, particles=particles, field_of_view=fov)
    blind = label_levels(img.astype(np.float32), labels, particles=particles)
    assert abs(inside.levels[1] - 2000.0) < 10 and abs(inside.gain) < 0.02
    assert abs(blind.gain) > 0.5  # the fill, read as void at the outer radii, bent the cupping's parabola


@pytest.mark.parametrize("level", ["hard"])
def test_phases_inside_the_circle_as_without_it(level: str) -> None:
    n = 96
    ore = crushed_ore(shape=n, seed=0, level=level)
    y, x = np.mgrid[:n, :n]
    outside = np.broadcast_to(np.hypot(y - (n - 1) / 2, x - (n - 1) / 2) >= n / 2, ore.intensity.shape)
    sparse = np.zeros(ore.phases.shape, np.uint8)
    for z in (n // 4, n // 2, 3 * n // 4):
        sparse[z] = ore.phases[z] + 1
    ref_particles = np.asarray(label_particles(ore.intensity).labels)
    ref = np.asarray(region_phases(ore.intensity, ref_particles, np.where(outside, 0, sparse).astype(np.uint8)))
    scan = np.where(outside, 0, ore.intensity).astype(np.uint16)
    fov = find_field_of_view(scan)
    assert fov is not None
    image = np.asarray(void_outside(scan, fov))
    own = np.asarray(label_particles(image, field_of_view=fov).labels)
    labels = np.where(outside, 0, sparse).astype(np.uint8)
    got = np.asarray(region_phases(image, own, labels, field_of_view=fov))
    blind = np.asarray(region_phases(image, own, labels))

    def accuracy(phases: np.ndarray, particles: np.ndarray) -> float:
        keep = ~outside & (ore.phases > 0) & (particles > 0)
        return float((phases[keep] == ore.phases[keep]).mean())

    want = accuracy(ref, ref_particles)
    assert accuracy(got, own) >= want - 0.01, (accuracy(got, own), want)
    assert accuracy(blind, own) < accuracy(got, own) - 0.01
