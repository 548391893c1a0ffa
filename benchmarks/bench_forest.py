"""Random-forest segmentation throughput, Zarr -> Zarr, against the in-memory peer.

One crushed-ore phantom (:func:`volmla.synthetic.crushed_ore`, ``level="easy"``) with
sparse truth labels on three z-planes; a forest trained by
:func:`volmla.segment.forest.train_random_forest` (default options, saved as ONNX) then
segments the whole scan:

- **volmla**: :func:`volmla.segment.forest.random_forest_segment` from an OME-Zarr input
  to an OME-Zarr output on an embedded cluster of ``--workers`` single-threaded workers
  (start-up not counted): features per block with the halo its largest sigma needs,
  closed-form eigenvalues, the forest evaluated on each block's interior only;
- **peer**: the obvious in-memory path: the same features from scikit-image (its
  eigenvalue routines) over the whole array, scikit-learn's ``predict`` of the same
  forest with ``n_jobs=--workers``.

Reports voxels per second of each, their ratio, held-out accuracy against the truth
(solid voxels off the labelled planes) and the voxel agreement of the two. Run
``python benchmarks/bench_forest.py`` (128^3, a few minutes on two cores) or ``--size
192``; writes ``benchmarks/results/forest.json``.
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
    """The forest's features as scikit-image computes them (the in-memory peer)."""
    import scipy.ndimage as ndi
    from skimage.feature import (
        hessian_matrix,
        hessian_matrix_eigvals,
        structure_tensor,
        structure_tensor_eigenvalues,
    )

    from volmla.segment.forest import TRUNCATE, n_features

    out = np.empty((n_features(sigmas), *image.shape), np.float32)
    out[0] = image
    i = 1
    for s in sigmas:
        smooth = ndi.gaussian_filter(image, s, mode="reflect", truncate=TRUNCATE)
        out[i] = smooth
        out[i + 1] = ndi.gaussian_gradient_magnitude(image, s, mode="reflect", truncate=TRUNCATE)
        out[i + 2] = ndi.gaussian_laplace(image, s, mode="reflect", truncate=TRUNCATE)
        inner = ndi.gaussian_filter(image, s / 2, mode="reflect", truncate=TRUNCATE)
        out[i + 3 : i + 6] = structure_tensor_eigenvalues(structure_tensor(inner, sigma=s, mode="reflect"))
        out[i + 6 : i + 9] = hessian_matrix_eigvals(
            hessian_matrix(smooth, sigma=0.0001, mode="reflect", use_gaussian_derivatives=False))
        i += 9
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
        phases = random_forest_segment(open_volume(scan), model=model)
        out = workdir / "phases.zarr"
        t0 = time.perf_counter()
        write_volume(phases, out, voxel_size=1.0, chunks=chunk, kind="phases")
        ours_s = time.perf_counter() - t0
    ours = np.asarray(open_volume(out).values)
    peer, peer_s = _peer(image, model, workers)

    held_out = truth > 0
    for z in (size // 4, size // 2, 3 * size // 4):
        held_out[z] = False
    voxels = image.size
    return {
        "size": size, "seed": seed, "workers": workers, "chunk": chunk, "train_s": round(train_s, 2),
        "volmla": {"seconds": round(ours_s, 2), "mvox_per_s": round(voxels / ours_s / 1e6, 4),
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
