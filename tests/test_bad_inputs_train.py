"""Bad input that was taken as given: ``segment --save-model`` with a method that trains
no forest (ignored), and ``train --threads`` (unbounded).

Both are now one line, exit 2, before any work, with nothing written; the cases run the
real command line in this process on the corpus of :mod:`test_bad_inputs` (16^3
volumes), with the sparse labels and layout of :mod:`test_bad_inputs_segment`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import _check, _run, _tree, library  # noqa: F401
from test_bad_inputs_segment import _case_folder

NONE = "--save-model writes the random forest trained on --labels"
CONFIG_NONE = "config segment.save_model is where method rf writes the forest"
TRAIN = "train --image scan.zarr --labels sparse.zarr -o m.pt"

CONFIGS = {
    "save_kmeans": "out: r\ninput: scan.zarr\nsegment: {method: kmeans, classes: 2, save_model: m.onnx}\n",
    "save_regions": "out: r\ninput: scan.zarr\nsegment: {method: regions, labels: sparse.zarr, save_model: m.onnx}\n",
    "save_rf_model": "out: r\ninput: scan.zarr\nsegment: {method: rf, model: rf.onnx, save_model: m.onnx}\n",
}

# argv: split on spaces; paths relative to the case folder (the cwd)
CASES: dict[str, tuple[str, str]] = {
    # --save-model was silently ignored by every method but rf trained on --labels
    "save-model-threshold": ("segment scan.zarr -o o.zarr --method threshold --classes 2 --save-model m.onnx",
                             f"{NONE} SPARSE_LABELS (method rf); method threshold trains none"),
    "save-model-kmeans": ("segment scan.zarr -o o.zarr --method kmeans --classes 2 --save-model m.onnx",
                          "method kmeans trains none"),
    "save-model-unet": ("segment scan.zarr -o o.zarr --model builtin:particles --save-model m.onnx",
                        "method unet trains none"),
    "save-model-regions": ("segment scan.zarr -o o.zarr --labels sparse.zarr --save-model m.onnx",
                           "method regions trains none"),
    "save-model-rf-given-model": ("segment scan.zarr -o o.zarr --method rf --model builtin:particles "
                                  "--save-model m.onnx", "method rf given --model M.onnx trains none"),
    "run-save-model-kmeans": ("run save_kmeans.yaml", "method kmeans trains none"),
    "run-save-model-regions": ("run save_regions.yaml", "method regions trains none"),
    "run-save-model-rf-given-model": ("run save_rf_model.yaml", "method rf with a model trains none"),
    # thousands of torch threads hang the machine; 0 or fewer was passed to torch as is
    "train-threads-zero": (f"{TRAIN} --threads 0", "threads must be from 1 to 1024 (torch CPU threads), got --threads 0"),
    "train-threads-negative": (f"{TRAIN} --threads -3", "got --threads -3"),
    "train-threads-above-bound": (f"{TRAIN} --threads 1025", "from 1 to 1024"),
    "train-threads-huge": (f"{TRAIN} --threads 1000000000", "got --threads 1000000000"),
}


def _folder(library: Path, tmp_path: Path) -> Path:  # noqa: F811
    folder = _case_folder(library, tmp_path)
    for name, text in CONFIGS.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_train_input(name: str, library: Path, tmp_path: Path,  # noqa: F811
                         capfd: pytest.CaptureFixture[str]) -> None:
    argv, needle = CASES[name]
    folder = _folder(library, tmp_path)
    before = _tree(folder)
    code, out, err = _run(argv.split(), folder, capfd)
    _check(code, out, err, rc=2, needle=needle, before=before, folder=folder)
    if "--save-model" in needle or "save_model" in needle:
        assert "save-model" in err or "save_model" in err, err
    # refused before any work: no forest, no model, no output, no run folder: nothing new at all
    assert sorted(set(_tree(folder)) - set(before)) == []
    assert not (folder / "o.zarr").exists() and not (folder / "r").exists()


def test_forest_paths_still_work(library: Path, tmp_path: Path,  # noqa: F811
                                 capfd: pytest.CaptureFixture[str]) -> None:
    """rf on --labels writes its forest (given or beside the output); a saved forest is
    used without --save-model; regions and kmeans write none and need no --save-model."""
    from volmla.io import write_volume

    folder = _folder(library, tmp_path)
    rf = "segment scan.zarr --method rf --labels sparse.zarr"
    code, _, err = _run(f"{rf} -o a.zarr --save-model m.onnx".split(), folder, capfd)
    assert code == 0 and "error" not in err, err
    assert (folder / "m.onnx").is_file() and (folder / "a.zarr").is_dir()
    code, _, err = _run(f"{rf} -o b.zarr".split(), folder, capfd)  # the default path, beside the output
    assert code == 0 and "error" not in err, err
    assert (folder / "b.rf.onnx").is_file()
    code, _, err = _run("segment scan.zarr -o c.zarr --model m.onnx".split(), folder, capfd)
    assert code == 0 and "error" not in err, err
    before = _tree(folder)
    code, out, err = _run("segment scan.zarr -o d.zarr --model m.onnx --save-model m2.onnx".split(), folder, capfd)
    _check(code, out, err, rc=2, needle="method rf given --model M.onnx trains none", before=before, folder=folder)
    assert not (folder / "m2.onnx").exists() and not (folder / "d.zarr").exists()
    dense = np.zeros((16, 16, 16), np.uint8)  # regions fits its levels on pure voxels: label whole areas
    dense[1:15:2] = 1
    dense[1:15:2, 4:12, 4:12] = 0
    dense[5:11, 5:11, 5:11] = 2  # inside the scan's bright cube
    write_volume(dense, folder / "dense.zarr", voxel_size=2.0, chunks=8, kind="labels")
    for argv in ("segment scan.zarr -o e.zarr --labels dense.zarr",
                 "segment scan.zarr -o f.zarr --method kmeans --classes 2"):
        code, _, err = _run(argv.split(), folder, capfd)
        assert code == 0 and "error" not in err, err
    assert not (folder / "e.rf.onnx").exists() and not (folder / "f.rf.onnx").exists()


def test_check_options_refuses_save_model_without_training() -> None:
    """The library refuses too, naming its keyword; rf on labels takes it."""
    from volmla.errors import VolmlaError
    from volmla.segment.dispatch import check_options

    for method, extra in (("threshold", {"classes": 2}), ("kmeans", {"classes": 2}),
                          ("rf", {"model": "rf.onnx"}), ("regions", {"labels": "l.zarr"})):
        with pytest.raises(VolmlaError, match=rf"^save_model writes .* method {method}.* trains none$"):
            check_options(method, save_model="m.onnx", **extra)  # type: ignore[arg-type]
    assert check_options("rf", labels="l.zarr", save_model="m.onnx") == "rf"
    assert check_options("regions", labels="l.zarr") == "regions"


@pytest.mark.parametrize("threads", [0, -1, 1025, 10**9, 2.0, True])
def test_train_config_refuses_threads(threads: object) -> None:
    """TrainConfig refuses threads outside 1..MAX_THREADS when made (so train() does)."""
    from volmla.errors import VolmlaError
    from volmla.segment.infer import MAX_THREADS
    from volmla.segment.train import TrainConfig

    message = rf"^threads must be from 1 to {MAX_THREADS} \(torch CPU threads\), got threads="
    with pytest.raises(VolmlaError, match=message):
        TrainConfig(threads=threads)  # type: ignore[arg-type]
    with pytest.raises(VolmlaError, match=message):
        dataclasses.replace(TrainConfig(), threads=threads)


@pytest.mark.parametrize("threads", [None, 1, 2, 1024])
def test_train_config_takes_threads_in_bounds(threads: int | None) -> None:
    from volmla.segment.train import TrainConfig, _validate

    assert _validate(TrainConfig(threads=threads)).threads == threads


def test_train_threads_one_runs(library: Path, tmp_path: Path,  # noqa: F811
                                capfd: pytest.CaptureFixture[str]) -> None:
    """``train --threads 1`` passes the check and trains (a tiny U-Net, one step)."""
    folder = _folder(library, tmp_path)
    argv = f"{TRAIN} --threads 1 --iterations 1 --depth 2 --base 2 --patch 8 --batch 1 --val-fraction 0"
    code, _, err = _run(argv.split(), folder, capfd)
    assert code == 0 and "error" not in err, err
    assert (folder / "m.pt").is_file()
