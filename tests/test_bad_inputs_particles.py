"""Inputs of ``volmla particles``, ``grains``, ``contacts`` and ``info`` that were taken as given.

The cases reuse the corpus of :mod:`test_bad_inputs` (its input library, run in this
process, with its checks: one ``volmla: error:`` line naming the problem, every file that
existed before unchanged), with extra inputs written into each case's folder:

1. a ``--threshold`` value at or above every voxel (0 particles, exit 0) or below every
   voxel (one particle filling the volume): refused before the mask is labelled;
2. ``--threshold interior`` on a segmentation's phases (its phase 2 read as boundary);
3. phase volumes of other integer dtypes: int8 was accepted and uint16 refused; both
   are now read as uint8 when their ids lie in 0..255 (as ``liberation`` reads them), and
   ids outside it are refused before the labelling;
4. ``volmla info`` reported a float16 volume as float32 (the dtype it is read as).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import _check, _run, _tree, library  # noqa: F401

SHAPE = (16, 16, 16)


def _write(path: Path, data: np.ndarray, **kw: object) -> None:
    from volmla.io import write_volume

    write_volume(data, path, voxel_size=2.0, chunks=8, **kw)  # type: ignore[arg-type]


def _raw(folder: Path, like: str, name: str, data: np.ndarray) -> None:
    """A copy of ``like`` with its array written anew in any dtype (``write_volume``
    refuses int8 and float16)."""
    import zarr

    target = folder / name
    shutil.copytree(folder / like, target)
    shutil.rmtree(target / "0")
    array = zarr.create_array(store=target / "0", shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype,
                              zarr_format=3, dimension_names=("z", "y", "x"))
    array[...] = data


def _grey() -> np.ndarray:
    """uint8 intensity 10..99 with a bright cube of 200: min 10, max 200."""
    grey = np.random.default_rng(7).integers(10, 100, SHAPE).astype(np.uint8)
    grey[0, 0, 0] = 10
    grey[4:12, 4:12, 4:12] = 200
    return grey


def _phases(folder: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(folder / "phases.zarr" / "0")[...])


def _extras(folder: Path) -> None:
    _write(folder / "bright.zarr", _grey(), kind="intensity")
    phases = _phases(folder)
    _write(folder / "named_map.zarr", phases, kind="phases", phases=["interior", "boundary"])
    _write(folder / "ph16.zarr", phases.astype(np.uint16), kind="phases", phases=["qz", "py"])
    over = phases.astype(np.uint16)
    over[0, 0, 0] = 300
    _write(folder / "ph16_300.zarr", over, kind="phases", phases=["qz", "py"])
    _raw(folder, "phases.zarr", "ph8.zarr", phases.astype(np.int8))
    negative = phases.astype(np.int8)
    negative[0, 0, 0] = -3
    _raw(folder, "phases.zarr", "ph8_neg.zarr", negative)
    _write(folder / "ph_float.zarr", phases.astype(np.float32), kind="phases", phases=["qz", "py"])
    _raw(folder, "bright.zarr", "f16.zarr", _grey().astype(np.float16))


def _refuse(what: str) -> Callable[..., None]:
    def refused(*_: object, **__: object) -> None:
        raise AssertionError(f"{what} ran before the inputs were checked")

    return refused


# argv: split on spaces; paths relative to the case folder (the cwd); what ran too far
CASES: dict[str, tuple[str, str, str]] = {
    # 1. a threshold that cuts nothing: 0 particles (or one filling the volume), exit 0
    "particles-threshold-above-all": ("particles bright.zarr -o o.zarr --threshold 300",
                                      "--threshold 300 is at or above every voxel (max 200): no solid", "labelling"),
    "particles-threshold-at-max": ("particles bright.zarr -o o.zarr --threshold 200",
                                   "--threshold 200 is at or above every voxel (max 200): no solid", "labelling"),
    "particles-threshold-below-all": ("particles bright.zarr -o o.zarr --threshold 5",
                                      "--threshold 5 is below every voxel (min 10): no void", "labelling"),
    "particles-threshold-below-all-fraction": ("particles bright.zarr -o o.zarr --threshold 9.5 --no-split",
                                               "--threshold 9.5 is below every voxel (min 10): no void", "labelling"),
    # 2. a segmentation's phases read as a particle map (phase 2 as boundary)
    "particles-interior-on-mineral-phases": ("particles phases.zarr -o o.zarr --threshold interior",
                                             "--threshold interior reads a particle map (phases background, "
                                             "interior, boundary); phases.zarr's phases are qz, py", "plan"),
    # 3. phase ids a uint8 cannot hold (uint16 phases were refused whatever they held)
    "grains-uint16-above-255": ("grains --particles particles.zarr --phases ph16_300.zarr -o o.zarr",
                                "phases must be uint8 phase ids 0..255, but ph16_300.zarr (uint16) holds 300", "grains"),
    "grains-int8-negative-phase": ("grains --particles particles.zarr --phases ph8_neg.zarr -o o.zarr",
                                   "phases must be uint8 phase ids 0..255, but ph8_neg.zarr (int8) holds -3", "grains"),
    "grains-float-phases": ("grains --particles particles.zarr --phases ph_float.zarr -o o.zarr",
                            "phases must be uint8 phase ids 0..255, but ph_float.zarr is float32", "plan"),
    "contacts-uint16-above-255": ("contacts --particles particles.zarr --phases ph16_300.zarr -o o.zarr",
                                  "phases must be uint8 phase ids 0..255, but ph16_300.zarr (uint16) holds 300",
                                  "contacts"),
}


def _guard(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the work past the check fail loudly: the refusal must come before it."""
    import volmla.particles.api as api
    import volmla.particles.contacts as contacts
    import volmla.particles.files as files
    import volmla.particles.grains as grains

    if stage == "plan":
        monkeypatch.setattr(files, "write_labels", _refuse("the labelling job"))
    elif stage == "labelling":
        for name in ("_fill_holes", "remove_small", "split_touching", "label"):
            monkeypatch.setattr(api, name, _refuse(f"particles' {name}"))
    elif stage == "grains":
        monkeypatch.setattr(grains, "label", _refuse("the grain labelling"))
    elif stage == "contacts":
        monkeypatch.setattr(contacts, "interior_table", _refuse("the contact refinement"))


def _case_folder(library: Path, tmp_path: Path) -> Path:  # noqa: F811
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    _extras(folder)
    return folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_particles_input(name: str, library: Path, tmp_path: Path,  # noqa: F811
                             capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    argv, needle, stage = CASES[name]
    folder = _case_folder(library, tmp_path)
    _guard(stage, monkeypatch)
    before = _tree(folder)
    code, out, err = _run(argv.split(), folder, capfd)
    _check(code, out, err, rc=2, needle=needle, before=before, folder=folder)
    assert not (folder / "o.zarr").exists(), "the output was written"
    assert not list(folder.glob(".o.zarr-*")), "scratch folder left behind"


# ----------------------------------------------------------------------------- accepted neighbours


def _ok(argv: str, folder: Path, capfd: pytest.CaptureFixture[str]) -> str:
    """Run a command that must work; its output (``-q`` puts the label count on stderr)."""
    code, out, err = _run(argv.split(), folder, capfd)
    assert code == 0 and "error" not in err and "Traceback" not in err, err
    return out + err


def test_threshold_inside_the_range_still_works(library: Path, tmp_path: Path,  # noqa: F811
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A value between the volume's min and max labels the bright cube (one particle)."""
    from volmla.io import open_volume

    folder = _case_folder(library, tmp_path)
    assert "o.zarr: 1 labels" in _ok("particles bright.zarr -o o.zarr --threshold 150", folder, capfd)
    labels = open_volume(folder / "o.zarr").values
    assert np.array_equal(labels > 0, _grey() > 150)


def test_interior_reads_maps_named_so_or_unnamed(library: Path, tmp_path: Path,  # noqa: F811
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """A volume named interior, boundary, or one without phase names (a user's own map),
    is still read as a particle map."""
    folder = _case_folder(library, tmp_path)
    named = _ok("particles named_map.zarr -o a.zarr --threshold interior", folder, capfd)
    unnamed = _ok("particles mask.zarr -o b.zarr --threshold interior", folder, capfd)
    assert "a.zarr:" in named and "0 labels" not in named, named
    assert "b.zarr:" in unnamed and "0 labels" not in unnamed, unnamed


def test_grains_read_integer_phases_as_uint8(library: Path, tmp_path: Path,  # noqa: F811
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """uint16 and int8 phases holding ids 0..255 give the grains of the same uint8 phases."""
    from volmla.io import open_volume

    folder = _case_folder(library, tmp_path)
    grains = {}
    for name in ("phases", "ph16", "ph8"):
        _ok(f"grains --particles particles.zarr --phases {name}.zarr -o g_{name}.zarr", folder, capfd)
        grains[name] = open_volume(folder / f"g_{name}.zarr").values
    assert grains["phases"].max() > 0
    assert np.array_equal(grains["ph16"], grains["phases"]) and np.array_equal(grains["ph8"], grains["phases"])


def test_info_reports_float16_as_stored(library: Path, tmp_path: Path,  # noqa: F811
                                        capfd: pytest.CaptureFixture[str]) -> None:
    """float16 is read as float32; ``info`` says so, and reports the dtype (and size) as stored."""
    folder = _case_folder(library, tmp_path)
    out = _ok("info f16.zarr", folder, capfd)
    line = next(row for row in out.splitlines() if row.startswith("dtype"))
    assert line.split(None, 1)[1] == "float16 (read as float32)", line
    code, out, err = _run("info --json f16.zarr".split(), folder, capfd)
    assert (code, err) == (0, ""), err
    record = json.loads(out)
    assert (record["dtype"], record["read_as"]) == ("float16", "float32")
    assert record["size_mb"] == round(16 ** 3 * 2 / 1e6, 3)
    plain = _ok("info bright.zarr", folder, capfd)
    line = next(row for row in plain.splitlines() if row.startswith("dtype"))
    assert line.split(None, 1)[1] == "uint8", line


# ----------------------------------------------------------------------------- the Python API refuses too


def test_library_refuses_the_same_inputs() -> None:
    import dask.array as da
    import xarray as xr

    from volmla.errors import VolmlaError
    from volmla.particles import label_grains, label_particles

    grey = _grey()
    with pytest.raises(VolmlaError, match=r"threshold=300 is at or above every voxel \(max 200\): no solid"):
        label_particles(grey, threshold=300)
    with pytest.raises(VolmlaError, match=r"threshold=5 is below every voxel \(min 10\): no void"):
        label_particles(da.from_array(grey, chunks=8), threshold=5, split=False)
    assert label_particles(grey, threshold=150, split=False).count == 1

    phases = np.zeros(SHAPE, np.uint8)
    phases[2:6, 2:6, 2:6] = 1
    phases[3:5, 3:5, 3:5] = 2
    minerals = xr.DataArray(phases, dims=("z", "y", "x"), attrs={"phases": {1: "quartz", 2: "pyrite"}})
    with pytest.raises(VolmlaError, match="reads a particle map .*'s phases are quartz, pyrite"):
        label_particles(minerals, threshold="interior")
    assert label_particles(phases, threshold="interior").count == 1  # no names: a user's own map

    part = (phases > 0).astype(np.uint32)
    wide = phases.astype(np.uint16)
    assert label_grains(part, wide).count == label_grains(part, phases).count == 2
    wide[0, 0, 0] = 256
    with pytest.raises(VolmlaError, match=r"0\.\.255, but the phase volume \(uint16\) holds 256"):
        label_grains(da.from_array(part, chunks=8), da.from_array(wide, chunks=8))
    with pytest.raises(VolmlaError, match="is float32"):
        label_grains(part, phases.astype(np.float32))
