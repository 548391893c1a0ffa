"""Bad inputs of ``volmla liberation``, ``grains``, ``evaluate`` and the run's liberation section.

The cases of :mod:`test_bad_inputs` (one line on stderr, exit 2, nothing lost) for the
inputs a fuzz of these commands found taken as given or failing late: negative ids in
signed label volumes of any width (particles, grains, a prediction or truth), NaN in the
intensity, densities beyond any mineral's, a truth without a labelled voxel, and
``pieces`` or density names that fail only after the measurement (or after the run's
segmentation). Extra inputs are written into each case's copy of the library.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from test_bad_inputs import _check, _run, _tree, library  # noqa: F401

SHAPE = (16, 16, 16)


def _raw(folder: Path, name: str, data: np.ndarray) -> None:
    """A labels volume of any dtype (``write_volume`` refuses int64 and int8): a copy of
    ``particles.zarr`` with its array written anew."""
    import zarr

    target = folder / name
    shutil.copytree(folder / "particles.zarr", target)
    shutil.rmtree(target / "0")
    array = zarr.create_array(store=target / "0", shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype,
                              zarr_format=3, dimension_names=("z", "y", "x"))
    array[...] = data


def _write(path: Path, data: np.ndarray, **kw: object) -> None:
    from volmla.io import write_volume

    write_volume(data, path, voxel_size=2.0, chunks=8, **kw)  # type: ignore[arg-type]


def _negative(folder: Path, dtype: type[np.signedinteger]) -> np.ndarray:
    import zarr

    labels = np.asarray(zarr.open_array(folder / "particles.zarr" / "0")[...]).astype(dtype)
    labels[labels == 2] = -5
    return labels


def _negative_grains(folder: Path, dtype: type[np.signedinteger]) -> np.ndarray:
    """Valid grains (one per phase of each particle) but for the last one, numbered -5."""
    import zarr

    particles = np.asarray(zarr.open_array(folder / "particles.zarr" / "0")[...]).astype(np.int64)
    phases = np.asarray(zarr.open_array(folder / "phases.zarr" / "0")[...]).astype(np.int64)
    grains = np.where(particles > 0, particles * 10 + phases, 0)
    grains[grains == grains.max()] = -5
    return grains.astype(dtype)


def _extras(folder: Path) -> None:
    _raw(folder, "grains_i64neg.zarr", _negative_grains(folder, np.int64))
    _write(folder / "grains_i32neg.zarr", _negative_grains(folder, np.int32), kind="labels")
    _raw(folder, "i64neg.zarr", _negative(folder, np.int64))
    _raw(folder, "i8neg.zarr", _negative(folder, np.int8))
    _write(folder / "i32neg.zarr", _negative(folder, np.int32), kind="labels")
    _write(folder / "zerolab.zarr", np.zeros(SHAPE, np.uint32), kind="labels")
    _write(folder / "one_phases.zarr", np.ones((1, 1, 1), np.uint8), kind="phases", phases=["qz"])
    _write(folder / "one_particles.zarr", np.ones((1, 1, 1), np.uint32), kind="labels")
    base = "out: r\ninput: scan.zarr\nsegment: {method: threshold, classes: 3}\n"
    configs = {
        "run_densities_huge": base + "liberation: {densities: [1e308, 1e308]}\n",
        "run_densities_name": base + "liberation: {densities: {foo: 2.0}}\n",
        "run_densities_named": base.replace("classes: 3", "classes: 3, phase_names: [a, b]")
        + "liberation: {densities: {a: 2.6, foo: 2.0}}\n",
        "run_pieces_huge": base + "liberation: {pieces: 100000}\n",
    }
    for name, text in configs.items():
        (folder / f"{name}.yaml").write_text(text)


class Case(NamedTuple):
    argv: str
    needle: str
    absent: str = ""
    """An output that must not have been made."""


LIB = "liberation --phases phases.zarr --particles particles.zarr --out lib --include-border"
CASES: dict[str, Case] = {
    # 1. negative ids in signed label volumes of every width
    "grains-int64-negative": Case("grains --particles i64neg.zarr --phases phases.zarr -o o.zarr",
                                  "particle ids must not be negative, got -5", "o.zarr"),
    "grains-int8-negative": Case("grains --particles i8neg.zarr --phases phases.zarr -o o.zarr",
                                 "particle ids must not be negative, got -5", "o.zarr"),
    "liberation-int64-negative": Case("liberation --phases phases.zarr --particles i64neg.zarr --out lib "
                                      "--include-border", "particle ids must not be negative, got -5", "lib"),
    # 2. negative grain ids (were an OverflowError)
    "liberation-grains-negative": Case(f"{LIB} --grains grains_i32neg.zarr", "grain ids must not be negative, got -5", "lib"),
    "liberation-grains-int64-negative": Case(f"{LIB} --grains grains_i64neg.zarr", "grain ids must not be negative", "lib"),
    # 3. NaN or an infinity in the intensity (was a RuntimeWarning and numpy's ValueError)
    "liberation-intensity-nan": Case(f"{LIB} --intensity nan.zarr", "nan or infinite", "lib"),
    "liberation-intensity-inf": Case(f"{LIB} --intensity inf.zarr", "nan or infinite", "lib"),
    # 4. densities beyond any mineral's (were overflow warnings and inf in the report)
    "liberation-densities-huge": Case(f"{LIB} --densities 1e308,1e308", "densities must be at most 30 g/cm3", "lib"),
    "liberation-densities-inf": Case(f"{LIB} --densities 2.6,inf", "densities must be at most 30 g/cm3", "lib"),
    "run-densities-huge": Case("run run_densities_huge.yaml",
                               "config section 'liberation': densities must be at most 30 g/cm3", "r"),
    # 5. a truth without a labelled voxel (was NaN scores and invalid JSON)
    "evaluate-truth-unlabelled": Case("evaluate --pred phases.zarr --truth zerolab.zarr --mask labelled --out ev",
                                      "truth holds no labelled voxel", "ev"),
    # 6. negative ids in the prediction or the truth (pred: accepted; truth: shown wrapped)
    "evaluate-truth-negative": Case("evaluate --pred phases.zarr --truth i64neg.zarr --out ev",
                                    "truth phase ids must not be negative, got -5", "ev"),
    "evaluate-pred-negative": Case("evaluate --pred i32neg.zarr --truth phases.zarr --out ev",
                                   "pred phase ids must not be negative, got -5", "ev"),
    # 7. pieces and density names checked before the measurement (and the run's stages)
    "liberation-pieces-huge": Case(f"{LIB} --pieces 100000",
                                   "pieces must split the volume [16, 16, 16] into equal sub-volumes", "lib"),
    "liberation-pieces-one-voxel": Case("liberation --phases one_phases.zarr --particles one_particles.zarr "
                                        "--out lib --include-border --pieces 2",
                                        "pieces must split the volume [1, 1, 1]", "lib"),
    "run-pieces-huge": Case("run run_pieces_huge.yaml", "config liberation.pieces: pieces must split the volume", "r"),
    "run-densities-unknown-phase": Case("run run_densities_name.yaml", "foo: no such phase", "r"),
    "run-densities-unknown-named-phase": Case("run run_densities_named.yaml", "foo: no such phase", "r"),
}


def _refuse(what: str) -> Callable[..., None]:
    def refused(*_: object, **__: object) -> None:
        raise AssertionError(f"{what} ran before the inputs were checked")

    return refused


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, library: Path, tmp_path: Path,  # noqa: F811
                   capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import volmla.measure

    case = CASES[name]
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    _extras(folder)
    if name.startswith(("liberation-pieces", "liberation-densities")):  # refused before measuring
        monkeypatch.setattr(volmla.measure, "measure", _refuse("the measurement"))
    if name.startswith("run-"):  # refused before any stage runs
        monkeypatch.setattr(importlib.import_module("volmla.pipeline.run"), "_segment", _refuse("the segmentation"))
    before = _tree(folder)
    code, out, err = _run(case.argv.split(), folder, capfd)
    _check(code, out, err, rc=2, needle=case.needle, before=before, folder=folder)
    assert not (folder / case.absent).exists(), f"{case.absent} was written"


def test_density_names_are_checked_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A density for a phase the phase volume does not name fails before the measurement."""
    import volmla.measure
    from volmla.errors import VolmlaError
    from volmla.io import open_volume
    from volmla.liberation import analyse

    phases = np.zeros(SHAPE, np.uint8)
    phases[3:8, 3:8, 3:8] = 1
    phases[9:14, 9:14, 2:7] = 2
    _write(tmp_path / "p.zarr", phases, kind="phases", phases=["qz", "py"])
    _write(tmp_path / "l.zarr", (phases > 0).astype(np.uint32), kind="labels")
    monkeypatch.setattr(volmla.measure, "measure", _refuse("the measurement"))
    with pytest.raises(VolmlaError, match="foo: no such phase"):
        analyse(open_volume(tmp_path / "p.zarr"), open_volume(tmp_path / "l.zarr"), out_dir=tmp_path / "lib",
                densities={"qz": 2.65, "foo": 5.0})
    assert not (tmp_path / "lib").exists()


def test_evaluate_scores_nothing_as_null() -> None:
    """A class-free truth (all void) still gives valid JSON: its scores are null, not NaN."""
    import json

    from volmla.segment.evaluate import evaluate

    ev = evaluate(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8))
    assert json.loads(json.dumps(ev.as_dict(), allow_nan=False))["accuracy_excluding_void"] is None
