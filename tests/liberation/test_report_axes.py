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



def test_a_scatter_of_millions_draws_a_stated_seeded_subset(monkeypatch, tmp_path) -> None:
    """Millions of grains (a fine breakage sweep) are drawn as a subset the legend names."""
    from volmla.liberation import analyse, report
    from volmla.liberation.report import _subset

    index = np.arange(10, 1010)
    a, b = _subset(index, 100), _subset(index, 100)
    assert a.size == 100 and np.array_equal(a, b) and np.all(np.diff(a) > 0) and np.isin(a, index).all()
    assert _subset(index, 5000) is index

    drawn: list[tuple[int, str]] = []
    scatter = matplotlib.axes.Axes.scatter

    def spy(self, x, y, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append((len(x), str(kwargs.get("label", ""))))
        return scatter(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    monkeypatch.setattr(report, "SCATTER_POINTS", 7)
    phases = np.zeros((4, 32, 32), np.uint8)
    particles = np.zeros_like(phases, np.uint32)
    for k in range(100):  # 100 particles of 2x2 voxels, one grain of "a" and one of "b" each
        y, x = 1 + 3 * (k // 10), 1 + 3 * (k % 10)
        particles[1:3, y : y + 2, x : x + 2] = k + 1
        phases[1:3, y : y + 2, x] = 1
        phases[1:3, y : y + 2, x + 1] = 2
    analyse(phases, particles, out_dir=tmp_path / "lib", section_step=None, pieces=None, n_boot=0, voxel_size=1.0,
            phase_names=["a", "b"])
    assert (7, "a (7 of 100 shown)") in drawn and (7, "b (7 of 100 shown)") in drawn
