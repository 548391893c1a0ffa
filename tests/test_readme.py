"""The README's Python example runs as written, on a multi-chunk phase volume (issue 19)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import xarray as xr

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs_on_multi_chunk_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from volmla.io import write_volume
    from volmla.synthetic import phantom

    (example,) = [b for b in _python_blocks() if "label_particles" in b and "analyse" in b]
    ph = phantom(shape=(72, 72, 72), seed=3)
    write_volume(ph.phases, tmp_path / "phases.zarr", voxel_size=2.0, chunks=32, kind="phases",
                 phases=["quartz", "feldspar", "pyrite"])
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(example, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    # the stages composed on the input's grid: DataArrays with its coordinates and chunks
    phases, particles, grains = (namespace[k] for k in ("phases", "particles", "grains"))
    for out in (particles, grains):
        assert isinstance(out, xr.DataArray) and out.chunks == phases.chunks  # type: ignore[attr-defined]
        assert tuple(out.attrs["voxel_size_um"]) == (2.0, 2.0, 2.0)
        assert out.x.values[:3].tolist() == [0.0, 2.0, 4.0]
    assert len(phases.chunks[0]) == 3  # type: ignore[attr-defined]  # multi-chunk input
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary["liberation_degree"]) == {"quartz", "feldspar", "pyrite"}
    assert "quartz" in printed
    assert summary["n_particles_total"] >= 5
    # the particles it found are those of the phantom's truth, near enough
    assert abs(summary["n_particles_total"] - int(ph.particles.max())) <= 0.2 * int(ph.particles.max())
