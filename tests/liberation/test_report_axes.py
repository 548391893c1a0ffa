"""Axes of the report's plots: legends never over the data and no slow ``loc="best"`` search
over hundreds of thousands of points (a 512^3 breakage run spent 22 s there); a log axis
over a single value still has a width."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from volmla.liberation.report import LEGEND_POINTS, _legend


def _loc(n_points: int, **kwargs: object) -> tuple[object, bool]:
    fig, ax = plt.subplots()
    try:
        ax.scatter(np.arange(n_points), np.arange(n_points), s=1, label="particles")
        _legend(ax, **kwargs)
        legend = ax.get_legend()
        return legend._loc, legend.get_bbox_to_anchor().bounds[0] > ax.bbox.bounds[0] + ax.bbox.bounds[2] - 1
    finally:
        plt.close(fig)


def test_a_crowded_plot_gets_its_legend_beside_the_axes() -> None:
    _, beside = _loc(LEGEND_POINTS + 1)
    assert beside
    assert not _loc(100)[1]  # a sparse plot keeps matplotlib's placement inside the axes
    assert not _loc(LEGEND_POINTS + 1, loc="lower right")[1]  # a placement asked for is kept


def test_particles_all_of_one_size_draw_their_size_curve(tmp_path) -> None:
    """A log axis over one value had zero width: matplotlib divided by it (an error here)."""
    from volmla.liberation import analyse

    phases = np.zeros((12, 12, 12), np.uint8)
    phases[2:6, 2:6, 2:6] = 1
    phases[7:11, 7:11, 7:11] = 2
    particles = np.zeros_like(phases, np.uint32)
    particles[2:6, 2:6, 2:6], particles[7:11, 7:11, 7:11] = 1, 2  # two particles, one ESD
    analyse(phases, particles, out_dir=tmp_path / "lib", section_step=None, pieces=None, n_boot=0, voxel_size=1.0,
            phase_names=["a", "b"])
    assert (tmp_path / "lib" / "cumulative_size.png").stat().st_size > 1000
