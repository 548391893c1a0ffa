"""Bad input to ``volmla segment`` and the run config's segment section: one line, exit 2, nothing lost.

The cases reuse the corpus of :mod:`test_bad_inputs` (its input library, run in this
process, with its checks: one ``volmla: error:`` line naming the problem, every file that
existed before unchanged). Each case folder also holds sparse labels (``sparse.zarr``) and
run configs whose forest (``save_model``) lands on or inside a volume.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import _check, _run, _tree, library  # noqa: F401

RF = "segment scan.zarr -o o.zarr --method rf --labels sparse.zarr"
RUN_RF = "out: r\ninput: scan.zarr\nsegment: {{method: rf, labels: sparse.zarr, save_model: {}}}\n"

CONFIGS = {
    "rf_into_phases": RUN_RF.format("r/phases.zarr"),
    "rf_inside_phases": RUN_RF.format("r/phases.zarr/m.onnx"),
    "rf_is_out": RUN_RF.format("r"),
    "rf_inside_scan": RUN_RF.format("scan.zarr/m.onnx"),
    "rf_inside_labels": RUN_RF.format("sparse.zarr/m.onnx"),
    "rf_under_a_file": RUN_RF.format("notes.txt/m.onnx"),
    "threshold_halo": "out: r\ninput: scan.zarr\nsegment: {method: threshold, classes: 2, halo: 4}\n",
    "kmeans_labels": "out: r\ninput: scan.zarr\nsegment: {method: kmeans, classes: 2, labels: sparse.zarr}\n",
}

# argv: split on spaces; paths relative to the case folder (the cwd)
CASES: dict[str, tuple[str, str]] = {
    # thousands of ONNX Runtime threads hung the command (1000 took 16 s to start)
    "threads-above-bound": ("segment scan.zarr -o o.zarr --model builtin:particles --threads 1025",
                            "threads must be from 1 to 1024"),
    # the forest was written first: inside the output it blocked that output and every rerun
    "save-model-inside-output": (f"{RF} --save-model o.zarr/m.onnx", "lies inside --output o.zarr"),
    "save-model-inside-uncertainty": ("segment scan.zarr -o o.zarr --labels sparse.zarr --save-model u.zarr/m.onnx "
                                      "--uncertainty u.zarr", "lies inside --uncertainty u.zarr"),
    # ... and inside an input it wrote into what the job reads
    "save-model-inside-input": (f"{RF} --save-model scan.zarr/m.onnx", "lies inside the input scan.zarr"),
    "save-model-inside-labels": (f"{RF} --save-model sparse.zarr/m.onnx", "lies inside --labels sparse.zarr"),
    "save-model-inside-particles": ("segment scan.zarr -o o.zarr --labels sparse.zarr --particles particles.zarr "
                                    "--save-model particles.zarr/m.onnx", "lies inside --particles particles.zarr"),
    "save-model-under-a-file": (f"{RF} --save-model notes.txt/m.onnx", "save-model folder notes.txt is a file"),
    "sigmas-tiny": (f"{RF} --sigmas 1e-300", "sigmas must be positive finite numbers of at least 0.3 voxels"),
    "sigmas-below-bound": (f"{RF} --sigmas 1,0.2", "at least 0.3 voxels"),
    # options a method does not use were silently ignored
    "threshold-labels": ("segment scan.zarr -o o.zarr --method threshold --classes 2 --labels sparse.zarr",
                         "method threshold segments by intensity alone: it takes no --labels"),
    "kmeans-model": ("segment scan.zarr -o o.zarr --method kmeans --classes 2 --model builtin:particles",
                     "it takes no --model"),
    "threshold-halo": ("segment scan.zarr -o o.zarr --method threshold --classes 2 --halo 3",
                       "--halo is the context of a U-Net"),
    "kmeans-sigmas": ("segment scan.zarr -o o.zarr --method kmeans --classes 2 --sigmas 1,2",
                      "--sigmas is for --method rf"),
    "run-save-model-is-phases": ("run rf_into_phases.yaml", "phases.zarr is the run's output"),
    "run-save-model-inside-phases": ("run rf_inside_phases.yaml", "lies inside the run's output"),
    "run-save-model-is-out": ("run rf_is_out.yaml", "is config out"),
    "run-save-model-inside-input": ("run rf_inside_scan.yaml", "lies inside the input"),
    "run-save-model-inside-labels": ("run rf_inside_labels.yaml", "lies inside segment.labels"),
    "run-save-model-under-a-file": ("run rf_under_a_file.yaml", "segment.save_model folder"),
    "run-threshold-halo": ("run threshold_halo.yaml", "config segment.halo is the context of a U-Net"),
    "run-kmeans-labels": ("run kmeans_labels.yaml", "config segment.labels is not for method kmeans"),
}


def _case_folder(library: Path, tmp_path: Path) -> Path:  # noqa: F811
    """The corpus library plus sparse labels (phase + 1 on one plane) and the run configs."""
    from volmla.io import write_volume

    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    sparse = np.zeros((16, 16, 16), np.uint8)
    sparse[8, 0:3] = 1  # void
    sparse[8, 6:10, 6:10] = 2  # phase 1, inside the scan's bright cube
    write_volume(sparse, folder / "sparse.zarr", voxel_size=2.0, chunks=8, kind="labels")
    for name, text in CONFIGS.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_segment_input(name: str, library: Path, tmp_path: Path,  # noqa: F811
                           capfd: pytest.CaptureFixture[str]) -> None:
    argv, needle = CASES[name]
    folder = _case_folder(library, tmp_path)
    before = _tree(folder)
    code, out, err = _run(argv.split(), folder, capfd)
    _check(code, out, err, rc=2, needle=needle, before=before, folder=folder)
    # refused before any work: no forest, no output, no run folder
    assert not list(folder.rglob("m.onnx")), "the forest was written"
    assert not (folder / "o.zarr").exists() and not (folder / "r").exists()


def test_save_model_refused_inside_output_leaves_reruns_free(library: Path, tmp_path: Path,  # noqa: F811
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """A refused --save-model inside the output leaves nothing behind: the rerun with a
    forest of its own runs."""
    folder = _case_folder(library, tmp_path)
    code, _, err = _run(f"{RF} --save-model o.zarr/m.onnx".split(), folder, capfd)
    assert code == 2 and "lies inside --output" in err, err
    code, _, err = _run(f"{RF} --save-model m.onnx".split(), folder, capfd)
    assert code == 0 and "error" not in err, err
    assert (folder / "m.onnx").is_file() and (folder / "o.zarr").is_dir()


def test_tile_larger_than_the_volume_is_clipped(library: Path, tmp_path: Path,  # noqa: F811
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A tile beyond the volume asked for petabytes (MemoryError); it is clipped to the
    largest halo-extended block, with the labels of a tile of that size."""
    from volmla.io import open_volume

    folder = _case_folder(library, tmp_path)
    base = "segment scan.zarr --model builtin:particles --tile"
    code, _, err = _run(f"{base} 100000 100000 100000 -o big.zarr".split(), folder, capfd)
    assert code == 0 and "error" not in err, err
    code, _, err = _run(f"{base} 48 48 48 -o fit.zarr".split(), folder, capfd)  # 16 + 2 x halo 15, on the grid
    assert code == 0 and "error" not in err, err
    big, fit = (open_volume(folder / n).values for n in ("big.zarr", "fit.zarr"))
    assert big.shape == (16, 16, 16) and np.array_equal(big, fit)


def test_config_save_model_beside_the_stages_is_accepted(tmp_path: Path) -> None:
    """A forest in the run's folder, beside the stages' volumes, is where it belongs."""
    from volmla.pipeline.config import validate_config

    cfg = validate_config({"out": "r", "input": "scan.zarr",
                           "segment": {"method": "rf", "labels": "sparse.zarr", "save_model": "r/models/rf.onnx"}},
                          base=tmp_path)
    assert cfg.segment is not None and cfg.segment.save_model == tmp_path / "r" / "models" / "rf.onnx"
