"""``volmla preprocess`` on a scan with a cylindrical field of view: the outside read as void before the steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from volmla.cli import main
from volmla.io import open_volume, write_volume
from volmla.preprocess.fov import from_provenance
from volmla.synthetic import crushed_ore

N = 64


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fov-scans")
    out = {}
    for name, fov in (("plain", False), ("cut", True)):
        ore = crushed_ore(shape=N, seed=4, level="hard", field_of_view=fov)
        write_volume(ore.intensity, folder / f"{name}.zarr", voxel_size=1.0, chunks=32)
        out[name] = folder / f"{name}.zarr"
    return out


def _run(scans: dict[str, Path], tmp_path: Path, name: str, step: str, *extra: str):  # type: ignore[no-untyped-def]
    target = tmp_path / f"{name}-{step.split(':')[0]}-{len(extra)}.zarr"
    assert main(["preprocess", str(scans[name]), "-o", str(target), "--step", step, *extra]) == 0
    return open_volume(target)


def _radius() -> np.ndarray:
    y, x = np.mgrid[:N, :N]
    return np.broadcast_to(np.hypot(y - (N - 1) / 2, x - (N - 1) / 2), (N, N, N))


def test_a_filter_does_not_carry_the_fill_into_the_circle(scans: dict[str, Path], tmp_path: Path) -> None:
    """Blurred, the rim inside the circle reads as the scan there, not darkened by the fill."""
    step = "gaussian:sigma=1.5"
    reference = _run(scans, tmp_path, "plain", step).values
    found = _run(scans, tmp_path, "cut", step)
    blind = _run(scans, tmp_path, "cut", step, "--fov", "none").values
    fov = from_provenance(found.attrs)
    assert fov is not None and abs(fov.radius - N / 2) < 0.6
    r = _radius()
    values = found.values
    assert np.ptp(values[r >= fov.radius + 7]) < 1e-3 * float(np.median(reference))  # one void level outside
    rim = (r > fov.radius - 3) & (r < fov.radius - 0.5)
    scale = float(np.median(reference[rim]))
    err_found = float(np.median(np.abs(values[rim] - reference[rim]))) / scale
    err_blind = float(np.median(np.abs(blind[rim] - reference[rim]))) / scale
    assert err_found < 0.05, err_found
    assert err_blind > 3 * err_found, (err_blind, err_found)


def test_beam_hardening_inside_the_circle_as_without_it(scans: dict[str, Path], tmp_path: Path) -> None:
    reference = _run(scans, tmp_path, "plain", "beam-hardening").values
    found = _run(scans, tmp_path, "cut", "beam-hardening").values
    inside = _radius() < N / 2 - 4
    scale = float(np.median(reference[inside]))
    assert float(np.median(np.abs(found[inside] - reference[inside]))) / scale < 0.01
