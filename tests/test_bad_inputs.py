"""The bad-input corpus: every user error is one line on stderr and exit 2, nothing is lost.

Each case runs the real command line in this process (:func:`volmla.cli.main`) on tiny
volumes (16^3, 8^3 chunks, one worker) in a fresh copy of the input library, and asserts:

1. the exit code (2 for an error, 0 where a hard input must still work, 130 on Ctrl-C);
2. stderr, at the file-descriptor level (worker processes included), is exactly one
   line naming the problem, and holds no traceback;
3. every file that existed before is byte-identical afterwards (the inputs, and an
   earlier output a failing ``--overwrite`` run was to replace), and no scratch folder
   is left behind.

The cases cover issue 18 (output == input, Ctrl-C, truncated TIFF stacks, corrupt
chunks, errors that are not volmla's own, usage errors, config checks, NaN/inf, an
all-border liberation) and the failures that already had one line (mixed slices,
RGB/4-D images, bad voxel sizes and chunks, unknown steps, mismatched shapes, wrong
dtypes, garbage and wrong-shaped ONNX models, bad YAML, a closed scheduler port).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from volmla.cli import main

SHAPE = (16, 16, 16)


# ----------------------------------------------------------------------------- the input library


def _write(path: Path, data: np.ndarray, **kw: object) -> None:
    from volmla.io import write_volume

    write_volume(data, path, voxel_size=2.0, chunks=8, **kw)  # type: ignore[arg-type]


def _particles_of(phases: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, _ = ndimage.label(phases > 0, structure=np.ones((3, 3, 3)))
    return labels.astype(np.uint32)


def _onnx_files(root: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    (root / "garbage.onnx").write_bytes(np.random.default_rng(1).bytes(256))
    # a valid model for 2-D images (N, C, H, W): the wrong shape for a volume
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "flat", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(root / "flat2d.onnx"))


def _tiffs(root: Path, rng: np.random.Generator) -> None:
    import tifffile

    stack = rng.integers(0, 1000, (32, 16, 16)).astype(np.uint16)
    tifffile.imwrite(root / "ok.tif", stack, imagej=True, resolution=(1.0, 1.0))
    for name, kw in (("ij", {"imagej": True}), ("ome", {"ome": True}), ("plain", {})):
        tifffile.imwrite(root / f"{name}_full.tif", stack, **kw)  # type: ignore[arg-type]
        data = (root / f"{name}_full.tif").read_bytes()
        (root / f"{name}_cut.tif").write_bytes(data[: len(data) // 2])
        (root / f"{name}_full.tif").unlink()
    data = (root / "ok.tif").read_bytes()
    (root / "ij_cut90.tif").write_bytes(data[: int(len(data) * 0.9)])
    tifffile.imwrite(root / "rgb.tif", rng.integers(0, 255, (16, 16, 3)).astype(np.uint8), photometric="rgb")
    tifffile.imwrite(root / "4d.tif", rng.integers(0, 255, (3, 4, 16, 16)).astype(np.uint8), imagej=True)
    nan = rng.random((16, 16, 16)).astype(np.float32)
    nan[9, 3, 3] = np.nan
    tifffile.imwrite(root / "nan.tif", nan, imagej=True)
    inf = rng.random((16, 16, 16)).astype(np.float32)
    inf[2, 5, 5] = -np.inf
    tifffile.imwrite(root / "inf.tif", inf, imagej=True)
    (root / "notatiff.tif").write_bytes(b"this is not a TIFF file at all" * 4)
    (root / "scan.xyz").write_bytes(b"?" * 64)
    (root / "raw.bin").write_bytes(b"\0" * 1000)
    mixed = root / "mixed_shapes"
    mixed.mkdir()
    for i in range(3):
        tifffile.imwrite(mixed / f"s{i:02d}.tif", np.zeros((16, 16 if i != 2 else 15), np.uint16))
    mixed_dt = root / "mixed_dtypes"
    mixed_dt.mkdir()
    for i in range(3):
        tifffile.imwrite(mixed_dt / f"s{i:02d}.tif", np.zeros((16, 16), np.uint16 if i != 1 else np.float32))
    (root / "empty_folder").mkdir()
    tifffile.imwrite(root / "complex.tif", np.zeros((4, 8, 8), np.complex64), photometric="minisblack")
    tifffile.imwrite(root / "u64.tif", stack.astype(np.uint64))  # read as numpy's ulonglong, not uint64
    maps = root / "maps"  # element maps named by element (correlate)
    maps.mkdir()
    for element in ("Fe", "Si"):
        tifffile.imwrite(maps / f"{element}.tif", rng.random((16, 16)).astype(np.float32))
    (root / "garbage.npz").write_bytes(b"not an npz" * 8)
    sem_nan = rng.random((32, 32)).astype(np.float32)
    sem_nan[4, 4] = np.nan
    tifffile.imwrite(root / "sem_nan.tif", sem_nan)
    theirs = root / "their_folder"  # someone else's folder: never a report's to replace
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not volmla's\n")


def _yaml(root: Path) -> None:
    (root / "bad.yaml").write_text("out: o\ninput: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "steps_bad.yaml").write_text("- {name: sharpen, params: {}}\n")
    (root / "steps_nan.yaml").write_text("- {name: median, params: {size: .nan}}\n")
    (root / "notes.txt").write_text("not a folder\n")
    base = "out: {out}\ninput: scan.zarr\nsegment: {{method: threshold, classes: 3}}\n"
    configs = {
        "run_unknown_section": base.format(out="r1") + "extras: {a: 1}\n",
        "run_min_size": base.format(out="r2") + "particles: {min_size: abc}\n",
        "run_step": base.format(out="r3") + "preprocess: [sharpen:amount=2]\n",
        "run_missing_input": "out: r4\ninput: missing.zarr\n",
        "run_missing_paths": "out: r5\ninput: {paths: [no_such_folder/]}\n",
        "run_threshold": base.format(out="r6") + "liberation: {free_threshold: 1.5}\n",
        "run_pieces1": base.format(out="r7") + "liberation: {pieces: 1}\n",
        "run_method": "out: r8\ninput: scan.zarr\nsegment: {method: svm}\n",
        "run_classes": "out: r9\ninput: scan.zarr\nsegment: {method: kmeans, classes: 1}\n",
        "run_voxel": "out: r10\ninput: {paths: [ok.tif], voxel_size: -2}\n",
        "run_chunks": "out: r11\ninput: {paths: [ok.tif], chunks: 0}\n",
        "run_contacts": base.format(out="r40") + "particles: {contacts: maybe}\n",
        "run_model": "out: r12\ninput: scan.zarr\nsegment: {method: unet, model: missing.onnx}\n",
        "run_h": base.format(out="r13") + "particles: {h: -1}\n",
        "run_ok_zarr_form": "out: r14\ninput: scan.zarr\n",
        "run_pieces0": base.format(out="r15")
        + "particles: {min_size: 2, max_radius: 4}\ngrains: false\nliberation: {pieces: 0, n_boot: 0, section_step: 0}\n",
        "run_nan": "out: r16\ninput: nan.zarr\nsegment: {method: threshold, classes: 2}\n",
        "run_step_params": base.format(out="r17") + "preprocess: [{name: median, params: 3}]\n",
        "run_step_key": base.format(out="r18") + "preprocess: [{name: median, size: 5}]\n",
        "run_seed": base.format(out="r19") + "liberation: {seed: -1}\n",
        "run_names_empty": "out: r20\ninput: scan.zarr\nsegment: {method: threshold, classes: 3, phase_names: ['', b]}\n",
        "run_names_twice": "out: r21\ninput: scan.zarr\nsegment: {method: threshold, classes: 3, phase_names: [a, a]}\n",
        "run_lib_names_twice": base.format(out="r22") + "liberation: {phase_names: [a, a]}\n",
        "run_out_file": "out: notes.txt\ninput: scan.zarr\nsegment: {method: threshold, classes: 3}\n",
        "run_key_twice": base.format(out="r23") + "out: r24\n",
        "run_particle_model_flat": base.format(out="r25") + "particles: {model: flat2d.onnx}\n",
        "run_particle_model_garbage": base.format(out="r26") + "particles: {model: garbage.onnx}\n",
        "run_particle_model_builtin_unknown": base.format(out="r27") + "particles: {model: 'builtin:grains'}\n",
        "correlate_keys": "out: c1\nct: scan.zarr\naccept-poor: true\n",
        # a second sweep of the configs
        "run_names_vs_classes": base.format(out="r28") + "liberation: {phase_names: [a, b, c]}\n",
        "run_save_model_threshold": base.format(out="r29").replace("classes: 3", "classes: 3, save_model: f.onnx"),
        "run_preprocess_zero": base.format(out="r30") + "preprocess: 0\n",
        "run_n_boot_huge": base.format(out="r31") + "liberation: {n_boot: 1000000000000}\n",
        "run_glob_empty": "out: r32\ninput: {paths: [mixed_shapes], glob: '', voxel_size: 1}\n",
        "run_out_inside_input": base.format(out="scan.zarr/run"),
        "run_out_inside_a_file": base.format(out="notes.txt/run"),
        "run_max_radius_1e3": base.format(out="r33") + "particles: {max_radius: 1e3, min_size: 1e300}\n",
        "run_psf_method": base.format(out="r41").replace("classes: 3", "classes: 3, psf_sigma: 0.7"),
        "run_psf_huge": "out: r42\ninput: scan.zarr\nsegment: {labels: particles.zarr, psf_sigma: 1e3}\n",
        "correlate_plane_name": "ct: scan.zarr\nout: c2\nminerals: [quartz]\nplanes:\n"
                                "  - {maps: [maps/Fe.tif], pixel_size_um: 2, name: ../../elsewhere}\n",
        "correlate_min_quality_nan": "ct: scan.zarr\nout: c3\nminerals: [quartz]\nmin_quality: .nan\nplanes:\n"
                                     "  - {maps: [maps/Fe.tif], pixel_size_um: 2}\n",
        "correlate_accept_poor_text": "ct: scan.zarr\nout: c4\nminerals: [quartz]\naccept_poor: maybe\nplanes:\n"
                                      "  - {maps: [maps/Fe.tif], pixel_size_um: 2}\n",
        "correlate_out_is_ct": "ct: scan.zarr\nout: scan.zarr\nminerals: [quartz]\nplanes:\n"
                               "  - {maps: [maps/Fe.tif], pixel_size_um: 2}\n",
        # a fourth sweep: inputs that were taken as given
        "run_overlap_no_stitch": "out: r34\ninput: {paths: [ok.tif], voxel_size: 1, overlap: 5}\n",
        "run_min_size_all": base.format(out="r35") + "particles: {min_size: 100000}\ngrains: false\n",
        "correlate_denoise_absent": "ct: scan.zarr\nout: c5\nminerals: [quartz]\ndenoise: [Na]\nplanes:\n"
                                    "  - {maps: [maps/Fe.tif, maps/Si.tif], pixel_size_um: 2}\n",
    }
    for name, text in configs.items():
        (root / f"{name}.yaml").write_text(text)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every input the cases use, written once (copied into each case's folder)."""
    root = tmp_path_factory.mktemp("library")
    rng = np.random.default_rng(18)
    scan = rng.integers(100, 1000, SHAPE).astype(np.uint16)
    scan[4:12, 4:12, 4:12] += 2000
    _write(root / "scan.zarr", scan, kind="intensity")
    f32 = rng.random(SHAPE).astype(np.float32)
    nan = f32.copy()
    nan[3, 3, 3] = np.nan
    _write(root / "nan.zarr", nan, kind="intensity")
    inf = f32.copy()
    inf[8, 8, 8] = np.inf
    _write(root / "inf.zarr", inf, kind="intensity")
    _write(root / "zeros.zarr", np.zeros(SHAPE, np.uint16), kind="intensity")
    _write(root / "one.zarr", np.ones((1, 1, 1), np.uint16), kind="intensity")
    _write(root / "slab.zarr", rng.integers(0, 1000, (1, 16, 16)).astype(np.uint16), kind="intensity")
    phases = np.zeros(SHAPE, np.uint8)
    phases[3:8, 3:8, 3:8] = 1
    phases[5:7, 5:7, 5:7] = 2
    phases[9:14, 9:14, 2:7] = 2
    _write(root / "phases.zarr", phases, kind="phases", phases=["qz", "py"])
    _write(root / "particles.zarr", _particles_of(phases), kind="labels")
    _write(root / "small_labels.zarr", np.zeros((8, 8, 8), np.uint32), kind="labels")
    border = np.zeros(SHAPE, np.uint8)  # a drill core: every particle is cut by the border
    border[0:8, 0:16, 0:6] = 1
    border[8:16, 4:12, 10:16] = 2
    _write(root / "border_phases.zarr", border, kind="phases", phases=["qz", "py"])
    _write(root / "border_particles.zarr", _particles_of(border), kind="labels")
    single = (phases > 0).astype(np.uint8)
    _write(root / "single_phases.zarr", single, kind="phases", phases=["qz"])
    _write(root / "existing.zarr", scan, kind="intensity")  # an earlier output a failing rerun must keep
    _write(root / "mask.zarr", (phases > 0).astype(np.uint8), kind="phases")
    from volmla.io import write_volume

    write_volume(scan, root / "aniso_scan.zarr", voxel_size=(1.0, 2.0, 3.0), chunks=8, kind="intensity")
    big = scan.astype(np.float64) * 1e300  # finite, but beyond float32 and Otsu's squared means
    _write(root / "huge.zarr", big, kind="intensity")
    _write(root / "float_labels.zarr", phases.astype(np.float32), kind="intensity")
    grey = np.random.default_rng(19).integers(0, 16, SHAPE).astype(np.uint8)  # 16 levels (rng's draws unchanged)
    _write(root / "grey.zarr", grey, kind="intensity")
    signed = _particles_of(phases).astype(np.int32)
    signed[signed == 2] = -2
    _write(root / "signed_particles.zarr", signed, kind="labels")
    # a copy of scan.zarr with one chunk overwritten with garbage (bit rot, a bad copy)
    shutil.copytree(root / "scan.zarr", root / "corrupt.zarr")
    chunk = sorted(p for p in (root / "corrupt.zarr" / "0" / "c").rglob("*") if p.is_file())[3]
    chunk.write_bytes(rng.bytes(chunk.stat().st_size))
    _tiffs(root, rng)
    _onnx_files(root)
    _yaml(root)
    return root


# ----------------------------------------------------------------------------- the checks


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(argv: list[str], folder: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capfd.readouterr()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(["-q", "--workers", "1", *argv])
    finally:
        os.chdir(cwd)
    time.sleep(0.05)  # let worker processes flush what they print
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def _check(code: int, out: str, err: str, *, rc: int, needle: str, before: dict[str, str], folder: Path) -> None:
    assert "Traceback" not in err, err
    if rc == 0:  # a hard input that must still work: its line on stdout, nothing on stderr
        assert (code, err) == (0, ""), err
        assert needle.lower() in out.lower(), out
    else:
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert code == rc, err
        assert lines[0].startswith("volmla: error: "), err
        assert needle.lower() in lines[0].lower(), (needle, err)
    after = _tree(folder)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"pre-existing files changed or removed: {changed[:5]}"
    assert not list(folder.rglob(".particles-*")), "scratch folder left behind"


class Case(NamedTuple):
    argv: str
    needle: str
    rc: int = 2


# argv: split on spaces after formatting; paths are relative to the case folder (the cwd)
CASES: dict[str, Case] = {
    # --- usage errors (issue item 9)
    "usage-missing-argument": Case("preprocess", "missing argument 'IN'"),
    "usage-missing-option": Case("preprocess scan.zarr", "missing option '--output'"),
    "usage-unknown-option": Case("preprocess scan.zarr -o o.zarr --bogus", "no such option: --bogus"),
    "usage-not-an-integer": Case("particles phases.zarr -o o.zarr --min-size abc", "--min-size"),
    "usage-not-a-number": Case("particles scan.zarr -o o.zarr --h x", "--h"),
    "usage-unknown-command": Case("sharpen scan.zarr", "no such command 'sharpen'"),
    "usage-unknown-subcommand": Case("correlate align", "no such command 'align'"),
    "usage-extra-argument": Case("info scan.zarr phases.zarr", "unexpected extra argument"),
    "usage-shape-count": Case("phantom -o ph --shape 8 8", "--shape"),
    "usage-device": Case("--device tpu info scan.zarr", "--device must be one of"),
    # --- global options and the cluster
    "workers-zero": Case("--workers 0 label mask.zarr -o l.zarr", "workers must be at least 1"),
    "gpus-negative": Case("--gpus -1 label mask.zarr -o l.zarr", "gpus must be 0 or more"),
    "scheduler-garbage": Case("--scheduler garbage label mask.zarr -o l.zarr", "scheduler must be an address"),
    # --- volumes that are not there or not volumes
    "info-missing": Case("info nothing.zarr", "does not exist"),
    "info-not-a-volume": Case("info ok.tif", "ok.tif"),
    "info-one-slice": Case("info slab.zarr", "[1, 16, 16]", rc=0),
    "preprocess-missing-input": Case("preprocess nothing.zarr -o o.zarr --step median:size=3", "does not exist"),
    # --- ingest (items 3 and 13 and the ones that passed)
    "ingest-missing": Case("ingest nothing.tif -o o.zarr --voxel-size 1", "does not exist"),
    "ingest-unknown-format": Case("ingest scan.xyz -o o.zarr --voxel-size 1", "unknown format"),
    "ingest-not-a-tiff": Case("ingest notatiff.tif -o o.zarr --voxel-size 1", "not a readable tiff"),
    "ingest-imagej-truncated": Case("ingest ij_cut.tif -o o.zarr --voxel-size 1", "truncated"),
    "ingest-imagej-truncated-90": Case("ingest ij_cut90.tif -o o.zarr --voxel-size 1", "truncated"),
    "ingest-ome-truncated": Case("ingest ome_cut.tif -o o.zarr --voxel-size 1", "truncated"),
    "ingest-plain-truncated": Case("ingest plain_cut.tif -o o.zarr --voxel-size 1", "truncated"),
    "ingest-rgb": Case("ingest rgb.tif -o o.zarr --voxel-size 1", "samples per pixel"),
    "ingest-4d": Case("ingest 4d.tif -o o.zarr --voxel-size 1", "4-d"),
    "ingest-complex-dtype": Case("ingest complex.tif -o o.zarr --voxel-size 1", "complex"),
    "ingest-mixed-shapes": Case("ingest mixed_shapes -o o.zarr --voxel-size 1", "must share one shape"),
    "ingest-mixed-dtypes": Case("ingest mixed_dtypes -o o.zarr --voxel-size 1", "must share one dtype"),
    "ingest-empty-folder": Case("ingest empty_folder -o o.zarr --voxel-size 1", "no files matching"),
    "ingest-nan": Case("ingest nan.tif -o o.zarr --voxel-size 1", "nan or infinite"),
    "ingest-inf": Case("ingest inf.tif -o o.zarr --voxel-size 1 --chunks 4", "nan or infinite"),
    "ingest-voxel-zero": Case("ingest ok.tif -o o.zarr --voxel-size 0", "voxel size must be positive"),
    "ingest-a-zarr-volume": Case("ingest scan.zarr -o o.zarr --voxel-size 1", "is a Zarr store, not scanner files"),
    "ingest-voxel-unit-mistake": Case("ingest ok.tif -o o.zarr --voxel-size 1e-300", "voxel size must lie in"),
    "ingest-voxel-text": Case("ingest ok.tif -o o.zarr --voxel-size a,b,c", "--voxel-size"),
    "ingest-voxel-two": Case("ingest ok.tif -o o.zarr --voxel-size 1,2", "--voxel-size"),
    "ingest-chunks-zero": Case("ingest ok.tif -o o.zarr --voxel-size 1 --chunks 0", "chunks"),
    "ingest-levels-zero": Case("ingest ok.tif -o o.zarr --voxel-size 1 --levels 0", "--levels"),
    "ingest-raw-size": Case("ingest raw.bin -o o.zarr --voxel-size 1 --shape 4 4 4 --dtype uint16", "bytes"),
    "ingest-raw-dtype": Case("ingest raw.bin -o o.zarr --voxel-size 1 --shape 10 10 10", "dtype"),
    "ingest-over-existing": Case("ingest ok.tif -o existing.zarr --voxel-size 1", "--overwrite"),
    # --- preprocess
    "preprocess-unknown-step": Case("preprocess scan.zarr -o o.zarr --step sharpen", "unknown step"),
    "preprocess-bad-param": Case("preprocess scan.zarr -o o.zarr --step gaussian:sigma=-1", "sigma"),
    "preprocess-unknown-param": Case("preprocess scan.zarr -o o.zarr --step gaussian:bogus=1", "bogus"),
    "preprocess-malformed-step": Case("preprocess scan.zarr -o o.zarr --step gaussian:sigma", "gaussian"),
    "preprocess-bad-yaml": Case("preprocess scan.zarr -o o.zarr --config bad.yaml", "bad.yaml"),
    "preprocess-yaml-not-steps": Case("preprocess scan.zarr -o o.zarr --config steps_bad.yaml", "sharpen"),
    "preprocess-chunks-zero": Case("preprocess scan.zarr -o o.zarr --step median:size=3 --chunks 0", "chunks"),
    "ingest-raw-zero-shape": Case("ingest raw.bin -o o.zarr --voxel-size 1 --shape 0 4 4 --dtype uint8",
                                  "shape must be three positive integers"),
    "particles-all-zero": Case("particles zeros.zarr -o o.zarr", "volmla: error:"),
    "preprocess-nan": Case("preprocess nan.zarr -o o.zarr --step normalize", "nan or infinite"),
    "preprocess-corrupt-chunk": Case("preprocess corrupt.zarr -o o.zarr --step median:size=3", "chunk"),
    "preprocess-output-is-input": Case("preprocess scan.zarr -o scan.zarr --overwrite --step median:size=3",
                                       "also the input"),
    "preprocess-output-inside-input": Case("preprocess scan.zarr -o scan.zarr/x.zarr --step median:size=3",
                                           "inside the input"),
    "preprocess-over-existing": Case("preprocess scan.zarr -o existing.zarr --step median:size=3", "--overwrite"),
    # --- segment (ONNX models, methods)
    "segment-method": Case("segment scan.zarr -o o.zarr --method svm", "--method must be one of"),
    "segment-no-classes": Case("segment scan.zarr -o o.zarr --method threshold", "--classes"),
    "segment-one-class": Case("segment scan.zarr -o o.zarr --method kmeans --classes 1", "classes"),
    "segment-garbage-onnx": Case("segment scan.zarr -o o.zarr --model garbage.onnx", "garbage.onnx"),
    "segment-2d-onnx": Case("segment scan.zarr -o o.zarr --model flat2d.onnx --halo 2", "flat2d.onnx"),
    "segment-missing-onnx": Case("segment scan.zarr -o o.zarr --model missing.onnx", "missing.onnx"),
    "segment-labels-shape": Case("segment scan.zarr -o o.zarr --method rf --labels small_labels.zarr", "shape"),
    "segment-output-is-input": Case("segment scan.zarr -o scan.zarr --overwrite --method threshold --classes 2",
                                    "also the input"),
    "segment-nan": Case("segment nan.zarr -o o.zarr --method threshold --classes 2", "nan or infinite"),
    "segment-psf-negative": Case("segment scan.zarr -o o.zarr --labels particles.zarr --psf-sigma -0.5",
                                 "--psf-sigma must be"),
    "segment-psf-inf": Case("segment scan.zarr -o o.zarr --labels particles.zarr --psf-sigma inf", "from 0 to 10"),
    "segment-psf-method": Case("segment scan.zarr -o o.zarr --method threshold --classes 2 --psf-sigma 0.7",
                               "--psf-sigma is for --method regions"),
    # no global statistic on these paths: the volume's own reads refuse the NaN
    "preprocess-nan-local-filter": Case("preprocess nan.zarr -o o.zarr --step gaussian:sigma=1", "nan or infinite"),
    "particles-nan-fixed-threshold": Case("particles nan.zarr -o o.zarr --threshold 0.5", "nan or infinite"),
    "segment-nan-kmeans": Case("segment nan.zarr -o o.zarr --method kmeans --classes 2", "nan or infinite"),
    # --- particles, labels, grains
    "label-float-volume": Case("label nan.zarr -o o.zarr", "binary"),
    "label-connectivity": Case("label mask.zarr -o o.zarr --connectivity 8", "connectivity must be one of (6, 18, 26)"),
    "label-output-is-input": Case("label mask.zarr -o mask.zarr --overwrite", "also the input"),
    "label-failing-overwrite-keeps-old": Case("label scan.zarr -o existing.zarr --overwrite", "binary"),
    "particles-threshold-text": Case("particles scan.zarr -o o.zarr --threshold abc", "threshold must be auto, otsu, interior or a number"),
    "particles-max-radius": Case("particles phases.zarr -o o.zarr --max-radius 0", "--max-radius"),
    "particles-h": Case("particles phases.zarr -o o.zarr --h -1", "h must be"),
    "particles-min-size": Case("particles phases.zarr -o o.zarr --min-size -1", "--min-size"),
    "particles-nan-otsu": Case("particles nan.zarr -o o.zarr", "nan or infinite"),
    "particles-inf-otsu": Case("particles inf.zarr -o o.zarr", "nan or infinite"),
    "grains-shape-mismatch": Case("grains --particles small_labels.zarr --phases phases.zarr -o o.zarr", "shape"),
    "contacts-shape-mismatch": Case("contacts --particles small_labels.zarr --phases phases.zarr -o o.zarr", "shape"),
    "contacts-phases-not-uint8": Case("contacts --particles particles.zarr --phases scan.zarr -o o.zarr", "uint8"),
    "contacts-reach": Case("contacts --particles particles.zarr --phases phases.zarr -o o.zarr --reach 0",
                           "reach must be a whole number >= 1"),
    "contacts-output-is-input": Case("contacts --particles particles.zarr --phases phases.zarr -o particles.zarr "
                                     "--overwrite", "also the input"),
    # --- liberation (item 12)
    "liberation-shape-mismatch": Case("liberation --phases phases.zarr --particles small_labels.zarr --out lib",
                                      "same shape"),
    "liberation-phase-names": Case("liberation --phases phases.zarr --particles particles.zarr --out lib "
                                   "--phase-names a,b,c,d", "phase names"),
    "liberation-densities": Case("liberation --phases phases.zarr --particles particles.zarr --out lib "
                                 "--densities 2.6,-1", "densities"),
    "liberation-free-threshold": Case("liberation --phases phases.zarr --particles particles.zarr --out lib "
                                      "--free-threshold 1.5", "--free-threshold"),
    "liberation-size-by": Case("liberation --phases phases.zarr --particles particles.zarr --out lib --size-by mass",
                               "by must be one of"),
    "liberation-labels-as-phases": Case("liberation --phases scan.zarr --particles particles.zarr --out lib",
                                        "volmla: error:"),
    "liberation-all-border": Case("liberation --phases border_phases.zarr --particles border_particles.zarr "
                                  "--out lib --sections 4 --pieces 2 --bootstrap 5", "0 particles analysed", rc=0),
    "liberation-single-phase": Case("liberation --phases single_phases.zarr --particles particles.zarr --out lib "
                                    "--sections 4 --pieces 2 --bootstrap 5 --include-border", "particles analysed",
                                    rc=0),
    "evaluate-shape-mismatch": Case("evaluate --pred phases.zarr --truth small_labels.zarr", "shape"),
    # --- volmla run: the whole config first (items 5 and 10)
    "run-bad-yaml": Case("run bad.yaml", "bad.yaml"),
    "run-not-a-mapping": Case("run list.yaml", "mapping"),
    "run-missing-config": Case("run nothing.yaml", "nothing.yaml"),
    "run-unknown-section": Case("run run_unknown_section.yaml", "config has an unknown section 'extras'"),
    "run-psf-method": Case("run run_psf_method.yaml", "segment.psf_sigma is for method regions"),
    "run-psf-huge": Case("run run_psf_huge.yaml", "segment.psf_sigma must be a number of voxels from 0 to 10"),
    "run-min-size-text": Case("run run_min_size.yaml", "particles.min_size must be an integer"),
    "run-contacts-not-bool": Case("run run_contacts.yaml", "particles.contacts must be true or false"),
    "run-unknown-step": Case("run run_step.yaml", "unknown step 'sharpen'"),
    "run-missing-input": Case("run run_missing_input.yaml", "does not exist"),
    "run-missing-paths": Case("run run_missing_paths.yaml", "does not exist"),
    "run-free-threshold": Case("run run_threshold.yaml", "config section 'liberation': free_threshold"),
    "run-pieces-one": Case("run run_pieces1.yaml", "pieces"),
    "run-method": Case("run run_method.yaml", "segment.method must be one of"),
    "run-classes": Case("run run_classes.yaml", "segment.classes"),
    "run-voxel-size": Case("run run_voxel.yaml", "voxel_size"),
    "run-chunks": Case("run run_chunks.yaml", "input.chunks"),
    "run-missing-model": Case("run run_model.yaml", "missing.onnx"),
    "run-h": Case("run run_h.yaml", "particles.h"),
    "run-nan": Case("run run_nan.yaml", "nan or infinite"),
    # --- found by a bad-input sweep: each was a traceback line, a late error, a silent result or a lost input
    "liberation-output-is-input": Case("liberation --phases phases.zarr --particles particles.zarr "
                                       "--out phases.zarr --overwrite", "also the input"),
    "liberation-output-inside-input": Case("liberation --phases phases.zarr --particles particles.zarr "
                                           "--out particles.zarr/lib", "inside the input"),
    "preprocess-yaml-nan-size": Case("preprocess scan.zarr -o o.zarr --config steps_nan.yaml",
                                     "size must be an integer, got nan"),
    "segment-seed-negative": Case("segment scan.zarr -o o.zarr --method kmeans --classes 2 --seed -1", "--seed"),
    "segment-sigmas-nan": Case("segment scan.zarr -o o.zarr --method rf --labels phases.zarr --sigmas 1,nan",
                               "sigmas must be positive finite numbers"),
    "liberation-seed-negative": Case("liberation --phases phases.zarr --particles particles.zarr --out lib "
                                     "--seed -1", "--seed"),
    "breakage-seed-negative": Case("breakage phases.zarr -o brk --p80 20 --seed -1", "--seed"),
    "evaluate-truth-intensity": Case("evaluate --pred phases.zarr --truth scan.zarr", "phase ids 0..255"),
    "evaluate-pred-float": Case("evaluate --pred nan.zarr --truth phases.zarr", "integer phase ids"),
    "evaluate-out-is-a-file": Case("evaluate --pred phases.zarr --truth phases.zarr --out notes.txt",
                                   "notes.txt exists and is not a folder"),
    "run-step-params-not-mapping": Case("run run_step_params.yaml", "params must be a mapping"),
    "run-step-unknown-key": Case("run run_step_key.yaml", "unknown key 'size'"),
    "run-seed-negative": Case("run run_seed.yaml", "liberation.seed must be at least 0"),
    "run-segment-phase-name-empty": Case("run run_names_empty.yaml",
                                         "segment.phase_names: phase names must not be empty"),
    "run-segment-phase-names-twice": Case("run run_names_twice.yaml",
                                          "segment.phase_names: phase names must be distinct"),
    "run-liberation-phase-names-twice": Case("run run_lib_names_twice.yaml",
                                             "liberation.phase_names: phase names must be distinct"),
    "run-out-is-a-file": Case("run run_out_file.yaml", "notes.txt exists and is not a folder"),
    # a plain file where a volume goes is someone else's: --overwrite never deletes it
    "ingest-overwrite-a-file": Case("ingest ok.tif -o notes.txt --voxel-size 1 --overwrite",
                                    "notes.txt is a file, not a volume"),
    "particles-overwrite-a-file": Case("particles phases.zarr -o notes.txt --overwrite",
                                       "notes.txt is a file, not a volume"),
    # plain YAML and comma lists drop what was given twice or left empty: refused instead
    "run-key-twice": Case("run run_key_twice.yaml", "key 'out' given twice (line 4)"),
    "preprocess-step-key-twice": Case("preprocess scan.zarr -o o.zarr --step median:size=3,size=5",
                                      "parameter 'size' given twice"),
    "ingest-voxel-empty-part": Case("ingest ok.tif -o o.zarr --voxel-size ,,1", "--voxel-size"),
    # tile options are checked whatever the method (they were ignored by threshold, kmeans and rf)
    "segment-overlap-nan": Case("segment scan.zarr -o o.zarr --method threshold --classes 2 --overlap nan",
                                "overlap must lie in [0, 1)"),
    "segment-tile-zero": Case("segment scan.zarr -o o.zarr --method threshold --classes 2 --tile 0 0 0",
                              "tile must be positive sizes"),
    "segment-batch-zero": Case("segment scan.zarr -o o.zarr --method threshold --classes 2 --batch 0", "--batch"),
    # the forest a run trains is one ONNX file: never written over a volume, the output or the input
    "segment-save-model-a-volume": Case("segment scan.zarr -o o.zarr --method rf --labels phases.zarr "
                                        "--save-model phases.zarr --overwrite", "is a folder"),
    "segment-save-model-is-output": Case("segment scan.zarr -o o.zarr --method rf --labels phases.zarr "
                                         "--save-model o.zarr", "--save-model o.zarr is --output"),
    "segment-save-model-is-input": Case("segment scan.zarr -o o.zarr --method rf --labels phases.zarr "
                                        "--save-model scan.zarr --overwrite", "--save-model scan.zarr is the input"),
    # a run's particle U-Net must be one (background, interior, boundary), checked before any stage
    "run-particle-model-not-particles": Case("run run_particle_model_flat.yaml",
                                              "flat2d.onnx must output 2..255 class channels"),
    "run-particle-model-garbage": Case("run run_particle_model_garbage.yaml", "garbage.onnx"),
    # builtin:NAME names a model volmla ships; the built-in particle U-Net rescales by the
    # scan's void and solid modes, which a constant scan does not have
    "run-particle-model-builtin-unknown": Case("run run_particle_model_builtin_unknown.yaml",
                                                "no built-in model 'grains'"),
    "segment-builtin-unknown": Case("segment scan.zarr -o o.zarr --model builtin:grains", "no built-in model 'grains'"),
    "segment-builtin-constant-scan": Case("segment zeros.zarr -o o.zarr --model builtin:particles", "constant volume"),
    # a learned border/interior map is a phases volume
    "particles-interior-on-intensity": Case("particles scan.zarr -o o.zarr --threshold interior",
                                            "scan.zarr is of kind intensity"),
    "particles-interior-on-labels": Case("particles particles.zarr -o o.zarr --threshold interior",
                                         "particles.zarr is of kind labels"),
    "segment-overwrite-a-file": Case("segment scan.zarr -o notes.txt --method threshold --classes 2 --overwrite",
                                     "notes.txt is a file, not a volume"),
    # --- a second sweep: each was a traceback-like line, a hang, a silent result or a lost file
    # a uint64 TIFF (numpy's ulonglong) was "ValueError: No Zarr data type found" and left a
    # half-made group that the rerun called an existing output
    "ingest-uint64-tiff": Case("ingest u64.tif -o o.zarr --voxel-size 1", "uint64", rc=0),
    # --overwrite replaced any non-empty folder with the report, deleting what it held
    "liberation-overwrite-their-folder": Case("liberation --phases phases.zarr --particles particles.zarr "
                                              "--out their_folder --overwrite", "no earlier report"),
    "breakage-overwrite-their-folder": Case("breakage phases.zarr -o their_folder --p80 20 --overwrite",
                                            "no earlier report"),
    # a CT of another grid read as the phases' partial-volume grey
    "liberation-intensity-voxel-size": Case("liberation --phases phases.zarr --particles particles.zarr --out lib "
                                            "--intensity aniso_scan.zarr", "phases and intensity must share one "
                                                                            "voxel size"),
    # the report's files were written into the input volume's folder
    "evaluate-out-is-input": Case("evaluate --pred phases.zarr --truth phases.zarr --out phases.zarr --overwrite",
                                  "also the input"),
    "evaluate-out-inside-input": Case("evaluate --pred phases.zarr --truth particles.zarr --out particles.zarr/ev",
                                      "inside the input"),
    # the uncertainty volume replaced the phases just written
    "segment-uncertainty-is-output": Case("segment scan.zarr -o o.zarr --model builtin:particles "
                                          "--uncertainty o.zarr --overwrite", "give each a volume of its own"),
    # a forest on float labels or with a halo wider than the volume ran for minutes (a hang);
    # on intensities it trained thousands of classes, wrote the model, then failed
    "segment-rf-float-labels": Case("segment scan.zarr -o o.zarr --method rf --labels float_labels.zarr",
                                    "labels must hold integer ids"),
    "segment-rf-sigma-wider-than-volume": Case("segment scan.zarr -o o.zarr --method rf --labels phases.zarr "
                                               "--sigmas 100", "more than the volume's largest extent (16)"),
    "segment-rf-labels-intensity": Case("segment scan.zarr -o o.zarr --method rf --labels scan.zarr",
                                        "phase + 1 below 256"),
    "train-labels-intensity": Case("train --image scan.zarr --labels scan.zarr -o m.pt --iterations 1",
                                   "phase + 1 below 256"),
    # a patch far beyond the memory was killed by the system (exit 137), not refused
    # labels or a truth on another grid were used as if on the scan's
    "segment-labels-other-voxel-size": Case("segment aniso_scan.zarr -o o.zarr --labels phases.zarr",
                                            "the volume and labels must share one voxel size"),
    "evaluate-truth-other-voxel-size": Case("evaluate --pred phases.zarr --truth aniso_scan.zarr",
                                            "pred and truth must share one voxel size"),
    "train-patch-beyond-memory": Case("train --image scan.zarr --labels phases.zarr -o m.pt --iterations 1 "
                                      "--patch 4000", "GB to train, more than the"),
    # a step's own parameter was shown as a flag ("nlmeans:--h VALUE")
    "preprocess-step-missing-h": Case("preprocess scan.zarr -o o.zarr --step nlmeans", "(e.g. nlmeans:h=VALUE)"),
    # so were a correlate config's keys ("allowed ['--accept-poor', ...]")
    "correlate-config-keys": Case("correlate run correlate_keys.yaml", "allowed ['accept_poor'"),
    # values beyond float32: Otsu's squared class means overflowed (a RuntimeWarning on stderr), and the
    # stages' float32 arithmetic made infinities ("holds NaN or infinite values (min inf, max inf)")
    "preprocess-huge-floats": Case("preprocess huge.zarr -o o.zarr --step beam-hardening", "beyond float32's range"),
    "particles-huge-floats": Case("particles huge.zarr -o o.zarr", "beyond float32's range"),
    "evaluate-out-unwritable": Case("evaluate --pred phases.zarr --truth phases.zarr --out /proc/ev",
                                    "cannot write output /proc/ev"),
    "breakage-out-unwritable": Case("breakage phases.zarr -o /proc/brk --p80 20", "cannot write output /proc/brk"),
    # --- a third sweep (run configs, correlate, sem, breakage, global options): each was a
    # library exception's line, an output written into an input, or a silent result
    "run-phase-names-vs-classes": Case("run run_names_vs_classes.yaml", "threshold with classes 3 makes 2"),
    "run-save-model-without-forest": Case("run run_save_model_threshold.yaml", "method threshold trains none"),
    "run-preprocess-not-a-list": Case("run run_preprocess_zero.yaml", "'preprocess' must be a list of steps"),
    "run-n-boot-huge": Case("run run_n_boot_huge.yaml", "n_boot must be an integer in 0..100000"),
    "run-glob-empty": Case("run run_glob_empty.yaml", "glob must be a file-name pattern"),
    "run-out-inside-input": Case("run run_out_inside_input.yaml", "is the input"),
    "run-out-inside-a-file": Case("run run_out_inside_a_file.yaml", "cannot make the folder"),
    # YAML 1.1 read 1e3 as text ("must be a number, got '1e3'"); min_size 1e300 is no integer
    "run-exponent-numbers": Case("run run_max_radius_1e3.yaml", "particles.min_size must be an integer, got 1e+300"),
    "ingest-glob-absolute": Case("ingest mixed_shapes -o o.zarr --voxel-size 1 --glob /x/*.tif",
                                 "glob must be a file-name pattern"),
    "liberation-bootstrap-huge": Case("liberation --phases phases.zarr --particles particles.zarr --out lib "
                                      "--bootstrap 1000000000000", "--bootstrap must be an integer in 0..100000"),
    "correlate-maps-garbage-npz": Case("correlate maps garbage.npz -o mm --minerals quartz --pixel-size 2",
                                       "garbage.npz is not a readable NPZ"),
    "correlate-maps-garbage-tiff": Case("correlate maps notatiff.tif maps/Fe.tif -o mm --minerals quartz "
                                        "--pixel-size 2", "notatiff.tif is not a readable TIFF"),
    "correlate-maps-no-minerals": Case("correlate maps maps/Fe.tif -o mm --minerals , --pixel-size 2",
                                       "minerals must name at least one mineral"),
    "correlate-run-plane-name-escapes": Case("correlate run correlate_plane_name.yaml",
                                             "name must be a plain folder name"),
    "correlate-run-min-quality-nan": Case("correlate run correlate_min_quality_nan.yaml",
                                          "min_quality must be a finite number, got nan"),
    "correlate-run-accept-poor-text": Case("correlate run correlate_accept_poor_text.yaml",
                                           "accept_poor must be true or false"),
    "correlate-run-out-is-ct": Case("correlate run correlate_out_is_ct.yaml", "is the input scan.zarr"),
    "sem-nan-image": Case("sem crystals sem_nan.tif -o sem --pixel-size 0.1", "holds NaN or infinite values"),
    "sem-complex-image": Case("sem crystals complex.tif -o sem --pixel-size 0.1", "must hold real grey values"),
    "sem-pixel-size-huge": Case("sem crystals sem_nan.tif -o sem --pixel-size 1e300", "must lie in 1e-06..1e+07"),
    "sem-crystals-out-inside-input": Case("sem crystals maps -o maps/sem --pixel-size 0.1", "is the input maps"),
    "sem-synth-their-folder": Case("sem synth -o their_folder --n 1 --overwrite", "no synthetic SEM set"),
    "sem-train-no-images": Case("sem train -o f.onnx --n-images 0", "--n-images must be at least 1"),
    "sem-train-out-a-folder": Case("sem train -o maps --overwrite", "is a folder"),
    "breakage-realisations-huge": Case("breakage phases.zarr -o brk --p80 20 --realisations 1000000000",
                                       "realisations must be an integer in 1..1000"),
    "workers-beyond-memory": Case("--workers 100000000 label mask.zarr -o l.zarr", "do not fit this machine's memory"),
    "dashboard-garbage": Case("--dashboard garbage label mask.zarr -o l.zarr", "dashboard must be an address"),
    "dashboard-port-out-of-range": Case("--dashboard 127.0.0.1:99999 label mask.zarr -o l.zarr",
                                        "port 0..65535"),
    # --- a fourth sweep: inputs that were taken as given (a silent or empty result)
    # an intensity volume as particles was measured as one particle per grey value
    "liberation-particles-intensity": Case("liberation --phases phases.zarr --particles scan.zarr --out lib",
                                           "particles volume has no background (0) voxel: is it an intensity "
                                           "volume?"),
    "liberation-particles-grey-levels": Case("liberation --phases phases.zarr --particles grey.zarr --out lib",
                                             "particles volume looks like grey values, not labels: 15 of its 15"),
    # a negative particle id wrapped to a huge grain key
    "grains-negative-particle-ids": Case("grains --particles signed_particles.zarr --phases phases.zarr -o o.zarr",
                                         "particle ids must not be negative, got -2"),
    # an overlap without stitching was ignored
    "ingest-overlap-without-stitch": Case("ingest ok.tif -o o.zarr --voxel-size 1 --overlap 5",
                                          "--overlap 5 is for stitching several stacks: pass --stitch, or leave "
                                          "--overlap out"),
    "run-overlap-without-stitch": Case("run run_overlap_no_stitch.yaml",
                                       "config input.overlap 5 is for stitching several stacks: set input.stitch"),
    # a min_size above every particle gave empty labels and an empty report
    "particles-min-size-above-all": Case("particles phases.zarr -o o.zarr --min-size 100000",
                                         "--min-size 100000 removes every particle: the largest the mask holds has "
                                         "125 voxels; give a --min-size of 125 or less"),
    "run-min-size-above-all": Case("run run_min_size_all.yaml",
                                   "config particles.min_size 100000 removes every particle"),
    # a --denoise element the maps lack was skipped; the default (Na, Mg) still runs on maps without them
    "correlate-maps-denoise-absent": Case("correlate maps maps/Fe.tif maps/Si.tif -o mm --minerals quartz "
                                          "--pixel-size 2 --denoise Na", "denoise: Na not among the maps' elements "
                                                                         "(Fe, Si)"),
    "correlate-maps-denoise-default": Case("correlate maps maps/Fe.tif maps/Si.tif -o mm --minerals quartz "
                                           "--pixel-size 2", "wrote", rc=0),
    "demo-output-exists": Case("demo -o scan.zarr", "exists: pass --overwrite"),
    "demo-overwrite-not-a-demo": Case("demo -o scan.zarr --overwrite", "is not a volmla demo folder"),
    "demo-shape-too-small": Case("demo -o d --shape 4 64 64", "shape must be 3 sizes"),
    "correlate-run-denoise-absent": Case("correlate run correlate_denoise_absent.yaml",
                                         "plane 'plane0': denoise: Na not among the maps' elements (Fe, Si)"),
}


def test_preprocess_of_one_voxel_is_that_voxel(library: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """One voxel is a volume: its halo comes from the boundary mode alone, as in SciPy. It
    used to fail with an xarray error (the halo of a one-voxel axis came back empty)."""
    from volmla.io import open_volume

    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    code, _, err = _run("preprocess one.zarr -o o.zarr --step gaussian:sigma=1".split(), folder, capfd)
    assert (code, err) == (0, "")
    out = open_volume(folder / "o.zarr").data.compute()
    assert out.shape == (1, 1, 1) and float(out.ravel()[0]) == 1.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    before = _tree(folder)
    code, out, err = _run(case.argv.split(), folder, capfd)
    _check(code, out, err, rc=case.rc, needle=case.needle, before=before, folder=folder)


def test_demo_refuses_before_its_cluster_starts(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's arguments are checked before the cluster starts: no dashboard line, no wait."""
    import volmla.cli.pipeline as cli_pipeline

    def no_cluster(**_: object) -> None:
        raise AssertionError("the cluster started before the arguments were checked")

    monkeypatch.setattr(cli_pipeline, "running", no_cluster)
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    code, out, err = _run(["demo", "-o", "scan.zarr"], folder, capfd)
    assert code == 2 and out == "" and "exists: pass --overwrite" in err, (out, err)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


# ----------------------------------------------------------------------------- cases with more to check


def test_closed_scheduler_port(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    before = _tree(folder)
    code, out, err = _run(["--scheduler", f"tcp://127.0.0.1:{port}", "label", "mask.zarr", "-o", "l.zarr"], folder,
                          capfd)
    _check(code, out, err, rc=2, needle="does not answer", before=before, folder=folder)


def test_missing_run_input_makes_no_output_folder(library: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    before = _tree(folder)
    code, out, err = _run(["run", "run_missing_input.yaml"], folder, capfd)
    _check(code, out, err, rc=2, needle="missing.zarr", before=before, folder=folder)
    assert not (folder / "r4").exists()


@pytest.mark.parametrize("config, out", [("run_names_twice.yaml", "r21"), ("run_lib_names_twice.yaml", "r22"),
                                         ("run_seed.yaml", "r19"), ("run_step_key.yaml", "r18")])
def test_run_config_errors_come_before_any_stage(config: str, out: str, library: Path, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """A wrong value anywhere in the config stops the run before it makes its output folder."""
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    code, _, err = _run(["run", config], folder, capfd)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (folder / out).exists()


def test_device_gpu_without_a_gpu_is_refused_at_once(library: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """``--device gpu`` ran a command that never resolves the device on the CPU, silently."""
    from volmla.engine.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU works here")
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    before = _tree(folder)
    code, out, err = _run(["--device", "gpu", "label", "mask.zarr", "-o", "l.zarr"], folder, capfd)
    _check(code, out, err, rc=2, needle="--device gpu asked for", before=before, folder=folder)
    assert not (folder / "l.zarr").exists()


def test_run_rerun_sees_changed_slices(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A run that ingests a folder of slices, named relative to the config (``paths: [slices]``),
    kept its intensity volume when the slices changed: the job named the folder as a bare
    word, not as a path, so neither its content nor an output inside it was checked."""
    import tifffile

    from volmla.io import open_volume

    folder = tmp_path / "case"
    (folder / "slices").mkdir(parents=True)
    for i in range(8):
        tifffile.imwrite(folder / "slices" / f"s{i:02d}.tif", np.full((8, 8), i, np.uint16))
    (folder / "run.yaml").write_text("out: o\ninput: {paths: [slices], voxel_size: 1}\n")
    (folder / "inside.yaml").write_text("out: slices/o\ninput: {paths: [slices], voxel_size: 1}\n")
    code, _, err = _run(["run", "run.yaml"], folder, capfd)
    assert (code, err) == (0, ""), err
    for i in range(8):
        tifffile.imwrite(folder / "slices" / f"s{i:02d}.tif", np.full((8, 8), 100, np.uint16))
    code, _, err = _run(["run", "run.yaml"], folder, capfd)
    assert code == 2 and len(err.splitlines()) == 1 and "other input content" in err, err
    assert int(open_volume(folder / "o" / "intensity.zarr").values.max()) == 7  # the first run's, not replaced
    code, _, err = _run(["run", "inside.yaml"], folder, capfd)
    assert code == 2 and "is the input" in err, err
    assert not (folder / "slices" / "o").exists()


def test_documented_zarr_input_form_runs(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    capfd.readouterr()
    os.chdir(folder)
    try:
        assert main(["-q", "--workers", "1", "run", "run_ok_zarr_form.yaml"]) == 0
    finally:
        os.chdir(tmp_path)
    captured = capfd.readouterr()
    assert captured.err == "" and '"intensity"' in captured.out


def test_pieces_zero_skips_as_on_the_command_line(library: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """``pieces: 0`` in a config skips the check, as ``--pieces 0`` does; every stage is stored
    with the input's chunks (8^3 here), so a rerun resumes chunk by chunk."""
    import json

    from volmla.io import open_volume

    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    capfd.readouterr()
    os.chdir(folder)
    try:
        assert main(["-q", "--workers", "1", "run", "run_pieces0.yaml"]) == 0
    finally:
        os.chdir(tmp_path)
    assert capfd.readouterr().err == ""
    summary = json.loads((folder / "r15" / "report" / "summary.json").read_text())
    assert "representativeness" not in summary and "stereology" not in summary
    for name in ("phases", "particles"):
        assert open_volume(folder / "r15" / f"{name}.zarr").data.chunksize == (8, 8, 8)
    assert not list((folder / "r15").glob(".particles-*"))


def test_all_border_report_says_so(library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "case"
    shutil.copytree(library, folder)
    code, _, err = _run(["liberation", "--phases", "border_phases.zarr", "--particles", "border_particles.zarr",
                      "--out", "lib", "--sections", "4", "--pieces", "2", "--bootstrap", "5"], folder, capfd)
    assert code == 0 and err == ""
    page = (folder / "lib" / "report.html").read_text()
    assert "all 2 touch its border" in page or "touch its border" in page
    assert (folder / "lib" / "grain_vs_particle.png").is_file()


def test_errors_not_volmlas_own_are_one_line_and_v_shows_the_traceback(
    library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import volmla.io.ngff

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(volmla.io.ngff, "volume_info", broken)
    code, _, err = _run(["info", str(library / "scan.zarr")], tmp_path, capfd)
    assert code == 2
    assert err == "volmla: error: ZeroDivisionError: division by zero (run with -v for the traceback)\n"
    code, _, err = _run(["-v", "info", str(library / "scan.zarr")], tmp_path, capfd)
    assert code == 2 and "Traceback" in err
    assert err.splitlines()[-1] == "volmla: error: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("signal_class", ["KeyboardInterrupt", "Abort"])
def test_ctrl_c_inside_a_command_is_one_line_and_130(
    signal_class: str, library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import typer

    import volmla.io.ngff

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt if signal_class == "KeyboardInterrupt" else typer.Abort()

    monkeypatch.setattr(volmla.io.ngff, "volume_info", interrupted)
    code, _, err = _run(["info", str(library / "scan.zarr")], tmp_path, capfd)
    assert code == 130
    assert err == "volmla: interrupted (rerun the same command to resume)\n"


def test_help_is_not_an_error(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Usage: volmla" in capfd.readouterr().out


def test_ctrl_c_in_a_terminal_stops_run_cleanly(tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C in a terminal does) during the
    particle stage of ``volmla run``: exit 130, one line, no scratch folder, and the
    worker processes print nothing."""
    from volmla.synthetic import write_phantom

    paths = write_phantom(tmp_path / "ph", shape=(96, 96, 96), seed=1, chunks=32)
    (tmp_path / "run.yaml").write_text(
        f"out: out\ninput: {paths['intensity']}\nsegment: {{method: threshold, classes: 3}}\n"
        "particles: {min_size: 20}\ngrains: false\nliberation: {pieces: 0, n_boot: 0, section_step: 0}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "volmla.cli", "--workers", "2", "run", "run.yaml"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.strip() == "particles":
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert rest == "volmla: interrupted (rerun the same command to resume)\n", rest
    assert not list((tmp_path / "out").glob(".particles-*"))


def test_dashboard_listens_on_this_machine_only() -> None:
    """The embedded cluster's dashboard (task keys, paths, logs; no authentication) binds
    127.0.0.1 unless an address is asked for."""
    from urllib.parse import urlparse

    import psutil

    from volmla.engine.cluster import cluster

    with cluster(workers=1) as client:
        port = urlparse(client.dashboard_link).port
        listening = {c.laddr.ip for c in psutil.Process().net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}


# ----------------------------------------------------------------------------- sparse labels (issue 17)


@pytest.fixture(scope="module")
def label_library(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The input library plus sparse labels that cannot fit phase levels, and run configs naming them."""
    root = tmp_path_factory.mktemp("label_library")
    shutil.copytree(library, root, dirs_exist_ok=True)
    planes = np.zeros(SHAPE, np.uint8)
    planes[6, 2:14, 2:14] = 1
    planes[6, 4:12, 4:12] = 2  # the scan's bright cube: phase 1 only
    _write(root / "named_labels.zarr", planes, kind="phases", phases=["qz", "fsp", "py"])  # fsp, py never labelled
    gap = planes.copy()
    gap[6, 4:6, 4:6] = 4  # phase 3 labelled, phase 2 not
    _write(root / "gap_labels.zarr", gap, kind="labels")
    _write(root / "void_labels.zarr", (planes > 0).astype(np.uint8), kind="labels")  # only the void
    few = np.zeros(SHAPE, np.uint8)
    few[6, 5:8, 5:8] = 2  # one small patch of one plane: too few voxels to measure the noise
    _write(root / "few_labels.zarr", few, kind="labels")
    _write(root / "long_labels.zarr", np.zeros((17, 16, 16), np.uint8), kind="labels")
    regions = "out: {out}\ninput: scan.zarr\nsegment: {{labels: {labels}{names}}}\n"
    configs = {
        "run_labels_named": regions.format(out="q1", labels="planes.zarr", names=", phase_names: [qz, fsp]"),
        "run_labels_shape": regions.format(out="q2", labels="long_labels.zarr", names=""),
        "run_labels_more": regions.format(out="q3", labels="gap_labels.zarr", names=", phase_names: [qz]"),
    }
    _write(root / "planes.zarr", planes, kind="labels")
    for name, text in configs.items():
        (root / f"{name}.yaml").write_text(text)
    return root


LABEL_CASES: dict[str, Case] = {
    "segment-labels-named-phase-unlabelled": Case("segment scan.zarr -o o.zarr --labels named_labels.zarr",
                                                  "phase 'fsp' (2) has no labelled voxels"),
    "segment-labels-phase-gap": Case("segment scan.zarr -o o.zarr --labels gap_labels.zarr",
                                     "phase 2 has no labelled voxels"),
    "segment-labels-void-only": Case("segment scan.zarr -o o.zarr --labels void_labels.zarr", "solid phase"),
    "segment-labels-too-few": Case("segment scan.zarr -o o.zarr --labels few_labels.zarr",
                                   "too few pure voxels to measure the noise"),
    "segment-regions-labels-shape": Case("segment scan.zarr -o o.zarr --labels long_labels.zarr",
                                         "labels must have the shape of the intensity"),
    "run-labels-named-phase-unlabelled": Case("run run_labels_named.yaml",
                                              "planes.zarr: phase 'fsp' (2) has no labelled voxels"),
    "run-labels-shape": Case("run run_labels_shape.yaml", "has shape (17, 16, 16)"),
    "run-labels-more-than-named": Case("run run_labels_more.yaml", "segment.phase_names names 1 phases"),
}


@pytest.mark.parametrize("name", sorted(LABEL_CASES))
def test_bad_sparse_labels(name: str, label_library: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Labels that cannot fit a phase's level: one line, exit 2, nothing written (no output
    volume, no run folder)."""
    case = LABEL_CASES[name]
    folder = tmp_path / "case"
    shutil.copytree(label_library, folder)
    before = _tree(folder)
    code, out, err = _run(case.argv.split(), folder, capfd)
    _check(code, out, err, rc=case.rc, needle=case.needle, before=before, folder=folder)
    assert not (folder / "o.zarr").exists()
    assert not [p for p in folder.iterdir() if p.name in ("q1", "q2", "q3")]
