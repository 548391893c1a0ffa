"""Bad inputs of preprocessing, breakage, contacts and volume reading (the corpus's helpers).

Each case runs the real command line on the corpus's library (:mod:`test_bad_inputs`):
a refusal is one line on stderr, exit 2, before the work and with every earlier file
kept; an input that was refused or crashed but is valid now works, with a checked result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import _check, _run, _tree, library  # noqa: F401

from volmla.io import open_volume

# ----------------------------------------------------------------------------- helpers


def _case(library: Path, tmp_path: Path) -> Path:  # noqa: F811 - the fixture's value
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    return folder


def _refused(argv: str, needle: str, folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = _tree(folder)
    code, out, err = _run(argv.split(), folder, capfd)
    _check(code, out, err, rc=2, needle=needle, before=before, folder=folder)


def _works(argv: str, folder: Path, capfd: pytest.CaptureFixture[str]) -> str:
    """Run a command that must succeed: exit 0, no traceback, no Python warning; its stderr."""
    code, _, err = _run(argv.split(), folder, capfd)
    assert code == 0, err
    assert "Traceback" not in err and "Warning:" not in err, err
    return err


def _float16(folder: Path, name: str = "f16.zarr") -> np.ndarray:
    """A copy of scan.zarr whose array is float16 (valid OME-Zarr, which write_volume refuses)."""
    import zarr

    data = open_volume(folder / "scan.zarr").values.astype(np.float16)
    shutil.copytree(folder / "scan.zarr", folder / name)
    shutil.rmtree(folder / name / "0")
    array = zarr.create_array(store=folder / name / "0", shape=data.shape, chunks=(8, 8, 8), dtype="float16",
                              zarr_format=3, dimension_names=("z", "y", "x"))
    array[...] = data
    return data


def _write(path: Path, data: np.ndarray, **kw: object) -> None:
    from volmla.io import write_volume

    write_volume(data, path, voxel_size=2.0, chunks=8, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- refusals


def _never(what: str) -> object:
    def fail(*_: object, **__: object) -> None:
        raise AssertionError(f"{what} started before the input was refused")

    return fail


def test_contacts_rounds_are_bounded(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """1000 rounds took 95 s on 16^3; 10^9 hung: more than ceil(16 / reach 2) = 8 find nothing new."""
    import volmla.particles.contacts as contacts

    monkeypatch.setattr(contacts, "interior_table", _never("a round"))  # refused before the first round
    folder = _case(library, tmp_path)
    _refused("contacts --particles particles.zarr --phases phases.zarr -o o.zarr --rounds 1000000000",
             "rounds must be at most 8", folder, capfd)
    assert not (folder / "o.zarr").exists()


def test_breakage_p80_values_with_one_folder(library: Path, tmp_path: Path,  # noqa: F811
                                             capfd: pytest.CaptureFixture[str]) -> None:
    folder = _case(library, tmp_path)
    _refused("breakage phases.zarr -o brk --p80 20.123456789,20.1234567891 --realisations 1",
             "p80 values 20.123456789 and 20.1234567891 give the same output folder p80_20.1235", folder, capfd)
    assert not (folder / "brk").exists() and not list(folder.glob(".brk*"))


def test_breakage_names_fewer_than_the_phases(library: Path, tmp_path: Path,  # noqa: F811
                                              capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """Names that leave a phase present unnamed are still refused, now before the sweep (was after it)."""
    import volmla.breakage.api as api

    monkeypatch.setattr(api, "_sweep", _never("the sweep"))
    folder = _case(library, tmp_path)
    _refused("breakage phases.zarr -o brk --p80 20 --realisations 1 --phase-names qz", "name every phase", folder,
             capfd)
    assert not (folder / "brk").exists() and not list(folder.glob(".brk*"))


def test_beam_hardening_negative_values_no_warnings(library: Path, tmp_path: Path,  # noqa: F811
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """A float volume of negative values: one line, no NumPy RuntimeWarning before it."""
    folder = _case(library, tmp_path)
    negative = -np.random.default_rng(5).random((16, 16, 16)).astype(np.float32) - 1
    _write(folder / "neg.zarr", negative, kind="intensity")
    _refused("preprocess neg.zarr -o o.zarr --step beam-hardening", "positive reference level", folder, capfd)


def test_step_name_not_a_string(library: Path, tmp_path: Path,  # noqa: F811
                                capfd: pytest.CaptureFixture[str]) -> None:
    folder = _case(library, tmp_path)
    (folder / "name_list.yaml").write_text("- {name: [a]}\n")
    _refused("preprocess scan.zarr -o o.zarr --config name_list.yaml", "step name must be a string", folder, capfd)


def test_ingest_levels_past_one_voxel(library: Path, tmp_path: Path,  # noqa: F811
                                      capfd: pytest.CaptureFixture[str]) -> None:
    """16 voxels give 5 levels (16, 8, 4, 2, 1); 50 wrote 45 levels of one voxel."""
    folder = _case(library, tmp_path)
    _refused("ingest ok.tif -o o.zarr --voxel-size 1 --levels 50", "levels must be at most", folder, capfd)
    assert not (folder / "o.zarr").exists()


# ----------------------------------------------------------------------------- inputs that now work


@pytest.mark.parametrize(("step", "key", "value"), [("gaussian:sigma=1.5e0", "sigma", 1.5),
                                                     ("unsharp:amount=1e2", "amount", 100.0)])
def test_step_numbers_with_exponents(step: str, key: str, value: float, library: Path,  # noqa: F811
                                     tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``1.5e0`` and ``1e2`` are numbers in a --step string, as in a YAML config."""
    folder = _case(library, tmp_path)
    _works(f"preprocess scan.zarr -o o.zarr --step {step}", folder, capfd)
    assert open_volume(folder / "o.zarr").attrs["provenance"][-1][key] == value


def test_float16_preprocess(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """float16 reads as float32 (exact): normalize gives what it gives on a float32 copy."""
    folder = _case(library, tmp_path)
    data = _float16(folder)
    _write(folder / "f32.zarr", data.astype(np.float32), kind="intensity")
    _works("preprocess f16.zarr -o o16.zarr --step normalize", folder, capfd)
    _works("preprocess f32.zarr -o o32.zarr --step normalize", folder, capfd)
    got, want = open_volume(folder / "o16.zarr"), open_volume(folder / "o32.zarr")
    assert got.dtype == want.dtype and np.array_equal(got.values, want.values)


def test_float16_particles(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    folder = _case(library, tmp_path)
    data = _float16(folder)
    assert open_volume(folder / "f16.zarr").dtype == np.float32
    _write(folder / "f32.zarr", data.astype(np.float32), kind="intensity")
    _works("particles f16.zarr -o p16.zarr", folder, capfd)
    _works("particles f32.zarr -o p32.zarr", folder, capfd)
    got, want = open_volume(folder / "p16.zarr").values, open_volume(folder / "p32.zarr").values
    assert got.max() > 0 and np.array_equal(got, want)


def test_breakage_names_for_absent_phases(library: Path, tmp_path: Path,  # noqa: F811
                                          capfd: pytest.CaptureFixture[str]) -> None:
    """The volume's own names may cover a phase it does not hold (as ``volmla liberation`` accepts)."""
    folder = _case(library, tmp_path)
    _write(folder / "named.zarr", open_volume(folder / "phases.zarr").values, kind="phases",
           phases=["qz", "py", "au"])
    _works("breakage named.zarr -o brk --p80 20 --realisations 2", folder, capfd)
    summary = json.loads((folder / "brk" / "summary.json").read_text())
    assert summary["phases"] == ["qz", "py", "au"]
    assert summary["modal_mineralogy"]["au"] == 0.0 and summary["modal_mineralogy"]["qz"] > 0
    assert summary["liberation_degree"]["20"]["au"] is None
