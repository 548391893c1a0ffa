"""Random-forest segmentation throughput, Zarr -> Zarr, against the in-memory peer.

One crushed-ore phantom (:func:`volmla.synthetic.crushed_ore`, ``level="easy"``) with
sparse truth labels on three z-planes; a forest trained by
:func:`volmla.segment.forest.train_random_forest` (default options, saved as ONNX) then
segments the whole scan:

- **volmla**: :func:`volmla.segment.forest.random_forest_segment` from an OME-Zarr input
  to an OME-Zarr output on an embedded cluster of ``--workers`` single-threaded workers
  (start-up not counted): features per block with the halo its largest sigma needs
  (separable gaussians cropped axis by axis, gradient and Hessian eigenvalues in one
  compiled pass), the forest evaluated on each block's interior only by the compiled
  tree walker (early exit once a voxel's label is decided);
- **peer**: the obvious in-memory path: the same features over the whole array from
  SciPy, NumPy differences and scikit-image's eigenvalue routine, and the same ONNX
  forest in ONNX Runtime with ``--workers`` threads.

The volume is segmented twice on the same cluster: the first run also pays each
worker's one-off imports and compiled-kernel loading (reported as ``first_run_*``), the
second is the throughput a long scan sees (``seconds``, ``mvox_per_s``).
Reports voxels per second of each, their ratio, held-out accuracy against the truth
(solid voxels off the labelled planes) and the voxel agreement of the two. Run
``python benchmarks/bench_forest.py`` (128^3, about a minute on two cores) or ``--size
192``; writes ``benchmarks/results/forest.json`` (the second seed: ``--seed 1 --output
benchmarks/results/forest_seed1.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _sparse_labels(phases: np.ndarray) -> np.ndarray:
    n = phases.shape[0]
    labels = np.zeros(phases.shape, np.uint8)
    for z in (n // 4, n // 2, 3 * n // 4):
        labels[z] = phases[z] + 1
    return labels


def _skimage_features(image: np.ndarray, sigmas: tuple[float, ...]) -> np.ndarray:
    """The forest's features computed the obvious way over the whole array (the in-memory peer).

    SciPy's gaussian, NumPy's central differences for the gradient and the Hessian, and
    scikit-image's eigenvalue routine (:func:`skimage.feature.hessian_matrix_eigvals`).
    """
    import scipy.ndimage as ndi
    from skimage.feature import hessian_matrix_eigvals

    from volmla.segment.forest import PER_SIGMA, TRUNCATE, n_features

    out = np.empty((n_features(sigmas), *image.shape), np.float32)
    out[0] = image
    core = (slice(1, -1),) * 3
    for j, s in enumerate(sigmas):
        i = 1 + len(PER_SIGMA) * j
        smooth = ndi.gaussian_filter(image, s, mode="reflect", truncate=TRUNCATE)
        out[i] = smooth
        padded = np.pad(smooth, 1, mode="symmetric").astype(np.float64)
        grad = np.gradient(padded)
        out[i + 1] = np.sqrt(sum(g[core] ** 2 for g in grad))
        second = [np.diff(padded, 2, axis=a)[tuple(slice(None) if b == a else slice(1, -1) for b in range(3))]
                  for a in range(3)]
        mixed = {(a, b): np.gradient(grad[a], axis=b)[core] for a in range(3) for b in range(a + 1, 3)}
        hessian = [second[0], mixed[0, 1], mixed[0, 2], second[1], mixed[1, 2], second[2]]
        eig = hessian_matrix_eigvals(hessian)
        out[i + 2], out[i + 3] = eig[0], eig[2]
    return out


def _peer(image: np.ndarray, model: Path, workers: int) -> tuple[np.ndarray, float]:
    """scikit-image features + the forest in ONNX Runtime with ``workers`` threads, in memory."""
    import onnxruntime as ort

    from volmla.segment.forest import _normalise, load_random_forest

    forest = load_random_forest(model)
    t0 = time.perf_counter()
    feats = _skimage_features(_normalise(image, forest.norm), forest.sigmas)
    options = ort.SessionOptions()
    options.intra_op_num_threads = workers
    session = ort.InferenceSession(forest.onnx, options, providers=["CPUExecutionProvider"])
    flat = np.ascontiguousarray(feats.reshape(feats.shape[0], -1).T)
    del feats
    pred = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: flat})[0]
    return np.asarray(pred, np.uint8).reshape(image.shape), time.perf_counter() - t0


def run(size: int, seed: int, workers: int, chunk: int, workdir: Path) -> dict[str, Any]:
    from volmla.engine.cluster import cluster
    from volmla.io import open_volume, write_volume
    from volmla.segment.forest import random_forest_segment, save_random_forest, train_random_forest
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=(size, size, size), seed=seed, level="easy")
    image, truth = np.asarray(ore.intensity), np.asarray(ore.phases)
    labels = _sparse_labels(truth)
    t0 = time.perf_counter()
    forest = train_random_forest(image, labels, seed=seed)
    train_s = time.perf_counter() - t0
    model = save_random_forest(forest, workdir / "rf.onnx")
    scan = write_volume(image, workdir / "scan.zarr", voxel_size=1.0, chunks=chunk)

    with cluster(workers=workers, dashboard=False):
        seconds = []
        for name in ("cold.zarr", "phases.zarr"):  # the first pays the workers' imports and kernel loading
            phases = random_forest_segment(open_volume(scan), model=model)
            t0 = time.perf_counter()
            write_volume(phases, workdir / name, voxel_size=1.0, chunks=chunk, kind="phases")
            seconds.append(time.perf_counter() - t0)
        cold_s, ours_s = seconds
    ours = np.asarray(open_volume(workdir / "phases.zarr").values)
    if not (ours == np.asarray(open_volume(workdir / "cold.zarr").values)).all():
        raise AssertionError("two runs of the same forest differ")
    peer, peer_s = _peer(image, model, workers)

    held_out = truth > 0
    for z in (size // 4, size // 2, 3 * size // 4):
        held_out[z] = False
    voxels = image.size
    return {
        "size": size, "seed": seed, "workers": workers, "chunk": chunk, "train_s": round(train_s, 2),
        "volmla": {"seconds": round(ours_s, 2), "mvox_per_s": round(voxels / ours_s / 1e6, 4),
                   "first_run_seconds": round(cold_s, 2), "first_run_mvox_per_s": round(voxels / cold_s / 1e6, 4),
                   "held_out_accuracy": round(float((ours[held_out] == truth[held_out]).mean()), 4)},
        "peer_skimage_in_memory": {"seconds": round(peer_s, 2), "mvox_per_s": round(voxels / peer_s / 1e6, 4),
                                   "held_out_accuracy": round(float((peer[held_out] == truth[held_out]).mean()), 4)},
        "speedup_vs_peer": round(peer_s / ours_s, 2),
        "agreement_with_peer": round(float((ours == peer).mean()), 5),
        "target_mvox_per_s": 0.5,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "forest.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.size, args.seed, args.workers, args.chunk, Path(tmp))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
