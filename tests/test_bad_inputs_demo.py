"""The bad-input corpus for ``volmla demo``, ``volmla phantom`` and ``volmla run``'s ``out``.

Each case runs the real command line in this process on a copy of the corpus's input
library (:mod:`test_bad_inputs`) and asserts one ``volmla: error:`` line, exit 2 and every
pre-existing file unchanged. The demo's refusals are also checked to come before its
cluster starts and before any of its output exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_bad_inputs import Case, _check, _run, _tree, library  # noqa: F401

SHAPE_NEEDLE = "shape must be 3 sizes (z y x) of at least 36 64 64 voxels"

CASES: dict[str, Case] = {
    # 32 planes left no held-out plane (after 9 s of work and a partial folder)
    "demo-shape-32-cube": Case("demo -o d --shape 32 32 32 --no-unet", SHAPE_NEEDLE),
    "demo-shape-32-deep": Case("demo -o d --shape 32 64 64 --no-unet", SHAPE_NEEDLE),
    "demo-shape-35-deep": Case("demo -o d --shape 35 64 64 --no-unet", SHAPE_NEEDLE),
    # planes of 32 voxels made the 2-D registration diverge (a raw SimpleITK error)
    "demo-shape-40-32-32": Case("demo -o d --shape 40 32 32 --no-unet", SHAPE_NEEDLE),
    "demo-shape-64-32-32": Case("demo -o d --shape 64 32 32 --no-unet", SHAPE_NEEDLE),
    "demo-shape-rows-63": Case("demo -o d --shape 36 63 64 --no-unet", SHAPE_NEEDLE),
    "demo-shape-cols-63": Case("demo -o d --shape 36 64 63 --no-unet", SHAPE_NEEDLE),
    # a MemoryError once the phantom started
    "demo-shape-huge": Case("demo -o d --shape 100000 100000 100000", "the demo takes at most 134,217,728 (512^3)"),
    "demo-shape-over-cap": Case("demo -o d --shape 513 512 512", "the demo takes at most 134,217,728"),
    # NotADirectoryError
    "demo-overwrite-a-file": Case("demo -o notes.txt --overwrite",
                                  "output notes.txt is a file, not a folder: refusing to replace it"),
    "demo-a-file": Case("demo -o notes.txt", "output notes.txt is a file, not a folder"),
    "demo-inside-a-file": Case("demo -o notes.txt/d", "notes.txt is a file, not a folder"),
    # the phantom's four volumes were written inside another volume's folder
    "phantom-into-a-volume": Case("phantom -o existing.zarr --shape 16 16 16 --chunks 8",
                                  "output existing.zarr is an OME-Zarr volume"),
    "phantom-overwrite-a-volume": Case("phantom -o existing.zarr --shape 16 16 16 --chunks 8 --overwrite",
                                       "output existing.zarr is an OME-Zarr volume"),
    # so were the run's
    "run-out-a-volume": Case("run run_out_volume.yaml", "existing.zarr is an OME-Zarr volume"),
    "run-out-a-volume-overwrite": Case("run run_out_volume.yaml --overwrite", "existing.zarr is an OME-Zarr volume"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, library: Path, tmp_path: Path,  # noqa: F811
                   capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import volmla.cli.pipeline as cli_pipeline

    def no_cluster(**_: object) -> None:
        raise AssertionError("the demo's cluster started before its arguments were checked")

    if name.startswith("demo-"):
        monkeypatch.setattr(cli_pipeline, "running", no_cluster)
    case = CASES[name]
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    (folder / "run_out_volume.yaml").write_text("out: existing.zarr\ninput: scan.zarr\n"
                                                "segment: {method: threshold, classes: 3}\n")
    before = _tree(folder)
    code, out, err = _run(case.argv.split(), folder, capfd)
    _check(code, out, err, rc=case.rc, needle=case.needle, before=before, folder=folder)
    assert not (folder / "d").exists()
    assert sorted(p.name for p in (folder / "existing.zarr").iterdir()) == \
        sorted(p.name for p in (library / "existing.zarr").iterdir())
