"""Benchmark: the per-particle composition table of volmla.measure against its peers.

Same quantities for every method: voxel count, bounding box, centroid and the voxel
count of every phase per particle, on a synthetic volume of ``--n-particles`` particles
(random boxes, one per 8^3 grid cell; phases constant over 4^3 grains).

- ``volmla``: :func:`volmla.measure.particle_table` (one compiled pass per block, per-block
  partial tables; it also computes surface areas, phase contacts and border flags,
  which the peers do not), called on the in-memory NumPy arrays as a user would, with
  Dask's threaded scheduler (the library picks the blocks);
- ``volmla_cluster``: the same from Zarr on an embedded cluster of 2 worker processes
  (how the CLI runs it), with each worker's peak RSS;
- ``regionprops``: ``skimage.measure.regionprops_table`` with ``intensity_image`` =
  phases and an extra property counting the phases;
- ``dask_image``: ``dask_image.ndmeasure.area`` + ``center_of_mass`` +
  ``labeled_comprehension`` (phase counts) on a subset of ``--dask-image-labels``
  labels, extrapolated linearly to all labels (it costs one pass per label).

Each method runs in its own subprocess so that its peak RSS is its own, after a
warm-up on a tiny volume (imports, Numba's compiled kernels); ``volmla`` and
``regionprops`` are timed ``--repeat`` times and the median is reported. The speed-up
over regionprops is also taken from ``paired``: one more subprocess that alternates the
two calls ``--repeat`` times, so that a shared machine's drift between the separate
subprocesses (regionprops alone varied from 0.61 s to 0.89 s across runs of this script)
hits both alike; the median of the per-pair ratios is reported.

Run ``python benchmarks/bench_measure.py --quick`` to check it works;
full size: ``python benchmarks/bench_measure.py --n-particles 100000``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CELL = 8
GRAIN = 4


def make_volume(n_particles: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (uint32) and phases (uint8): one random box per cell of a cubic grid."""
    rng = np.random.default_rng(seed)
    g = int(np.ceil(n_particles ** (1 / 3)))
    shape = (g * CELL,) * 3
    cell = np.arange(shape[0]) // CELL
    within = np.arange(shape[0]) % CELL
    lo = rng.integers(0, 3, size=(g, g, g, 3))
    hi = lo + rng.integers(2, CELL - 2, size=(g, g, g, 3))
    ids = np.arange(1, g**3 + 1, dtype=np.uint32).reshape(g, g, g)
    ids[ids > n_particles] = 0
    labels = np.zeros(shape, np.uint32)
    for z in range(shape[0]):
        cz, wz = cell[z], within[z]
        inz = (lo[cz, :, :, 0] <= wz) & (wz < hi[cz, :, :, 0])
        cy = cell[:, None]
        cx = cell[None, :]
        iny = (lo[cz][cy, cx, 1] <= within[:, None]) & (within[:, None] < hi[cz][cy, cx, 1])
        inx = (lo[cz][cy, cx, 2] <= within[None, :]) & (within[None, :] < hi[cz][cy, cx, 2])
        labels[z] = np.where(inz[cy, cx] & iny & inx, ids[cz][cy, cx], 0)
    # grains: one random phase per 4^3 cell of the grid, so a particle (2..5 voxels a
    # side) holds one to eight grains: some liberated, most locked, as in crushed ore
    cells = rng.integers(1, 4, size=(shape[0] // GRAIN,) * 3, dtype=np.uint8)
    phases = np.repeat(np.repeat(np.repeat(cells, GRAIN, 0), GRAIN, 1), GRAIN, 2) * (labels > 0)
    return labels, phases.astype(np.uint8)


def run_volmla(labels: np.ndarray, phases: np.ndarray) -> int:
    import dask

    from volmla.measure import particle_table

    with dask.config.set(scheduler="threads"):
        table = particle_table(labels, phases, voxel_size=1.0)
    return len(table)


def run_volmla_cluster(labels: np.ndarray, phases: np.ndarray, chunks: int, repeat: int, workers: int = 2
                       ) -> tuple[int, list[float], list[float], list[float]]:
    """``volmla.measure.particle_table`` as the CLI runs it: Zarr inputs, an embedded cluster of
    worker processes that read the chunks themselves. Returns (rows, seconds of each run,
    worker peak RSS MiB, worker peak RSS MiB after the warm-up)."""
    import tempfile

    from volmla.engine.cluster import cluster, peak_rss
    from volmla.io import open_volume, write_volume
    from volmla.measure import particle_table

    with tempfile.TemporaryDirectory() as tmp:
        tiny_l, tiny_p = make_volume(8, 1)
        paths = {}
        for name, (lab, ph) in {"tiny": (tiny_l, tiny_p), "full": (labels, phases)}.items():
            paths[name] = (write_volume(lab, f"{tmp}/{name}_l.zarr", voxel_size=1.0, chunks=chunks, kind="labels"),
                           write_volume(ph, f"{tmp}/{name}_p.zarr", voxel_size=1.0, chunks=chunks, kind="phases"))
        with cluster(workers=workers, dashboard=False) as client:
            particle_table(open_volume(paths["tiny"][0]), open_volume(paths["tiny"][1]))  # warm-up
            client.run(_warm_worker)  # every worker: imports and Numba's kernels, to read its base RSS
            warm = sorted(v / 2**20 for v in client.run(peak_rss).values())
            runs = []
            for _ in range(repeat):
                start = time.perf_counter()
                table = particle_table(open_volume(paths["full"][0]), open_volume(paths["full"][1]))
                runs.append(time.perf_counter() - start)
            rss = sorted(v / 2**20 for v in client.run(peak_rss).values())
    return len(table), runs, rss, warm


def _warm_worker() -> None:
    from volmla.io import open_volume  # noqa: F401  (what a measuring task imports)
    from volmla.measure import block_partial, face_partial

    lab, ph = make_volume(8, 1)
    block_partial(lab, ph)
    face_partial(lab[:2], ph[:2], axis=0)


def run_regionprops(labels: np.ndarray, phases: np.ndarray) -> int:
    from skimage.measure import regionprops_table

    def phase_counts(mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        return np.bincount(intensity[mask].astype(np.int64), minlength=4)

    table = regionprops_table(
        labels, intensity_image=phases, properties=("label", "area", "bbox", "centroid"), extra_properties=(phase_counts,)
    )
    return len(table["label"])


def run_dask_image(labels: np.ndarray, phases: np.ndarray, chunks: int, subset: int) -> int:
    import dask.array as da
    from dask_image import ndmeasure

    lab = da.from_array(labels, chunks=chunks)
    ph = da.from_array(phases, chunks=chunks)
    index = np.arange(1, subset + 1)
    area = ndmeasure.area(ph, lab, index)
    com = ndmeasure.center_of_mass(lab > 0, lab, index)
    counts = [ndmeasure.labeled_comprehension(ph == p, lab, index, np.sum, np.int64, 0) for p in (1, 2, 3)]
    import dask

    out = dask.compute(area, com, *counts, scheduler="threads")
    return len(out[0])


def child(args: argparse.Namespace) -> None:
    import dask.array as da

    labels, phases = make_volume(args.n_particles, args.seed)
    n = int(labels.max())
    # imports and first-call set-up outside the timed region: a warm-up on a tiny volume
    tiny_l, tiny_p = make_volume(8, args.seed + 1)
    # (volmla_cluster warms up inside, on its own cluster)
    if args.method in ("volmla", "paired"):  # in blocks of 8, so that the kernel between blocks is compiled too
        from volmla.measure import particle_table

        particle_table(da.from_array(tiny_l, chunks=8), da.from_array(tiny_p, chunks=8), voxel_size=1.0)
    if args.method in ("regionprops", "paired"):
        run_regionprops(tiny_l, tiny_p)
    if args.method == "dask_image":
        run_dask_image(tiny_l, tiny_p, 8, 2)
    if args.method == "volmla_cluster":
        done, runs, rss, warm = run_volmla_cluster(labels, phases, args.chunks, args.repeat)
        print(json.dumps({"method": args.method, "seconds": float(np.median(runs)), "runs_s": [round(r, 3) for r in runs],
                          "labels_measured": done, "n_particles": n,
                          "voxels": int(labels.size), "worker_peak_rss_mb": rss,
                          "worker_peak_rss_after_warm_up_mb": warm, "chunk_mb": args.chunks**3 * 5 / 2**20,
                          "note": "Zarr inputs, 2 worker processes (embedded cluster)"}))
        return
    if args.method == "paired":
        pairs = []
        for i in range(args.repeat):
            timed = {}
            for method, run in (("volmla", run_volmla), ("regionprops", run_regionprops))[:: 1 if i % 2 else -1]:
                start = time.perf_counter()
                run(labels, phases)
                timed[method] = time.perf_counter() - start
            pairs.append(timed)
        ratios = [p["regionprops"] / p["volmla"] for p in pairs]
        print(json.dumps({"method": args.method, "volmla_s": [round(p["volmla"], 4) for p in pairs],
                          "regionprops_s": [round(p["regionprops"], 3) for p in pairs],
                          "speedup_per_pair": [round(r, 1) for r in ratios], "speedup_median": float(np.median(ratios)),
                          "note": "volmla and regionprops alternated in one process (order swapped every pair)"}))
        return
    runs = []
    for _ in range(args.repeat if args.method in ("volmla", "regionprops") else 1):
        start = time.perf_counter()
        if args.method == "volmla":
            done = run_volmla(labels, phases)
        elif args.method == "regionprops":
            done = run_regionprops(labels, phases)
        else:
            done = run_dask_image(labels, phases, args.chunks, min(args.dask_image_labels, n))
        runs.append(time.perf_counter() - start)
    seconds = float(np.median(runs))
    from volmla.engine.cluster import peak_rss

    result = {
        "method": args.method,
        "seconds": seconds,
        "runs_s": [round(r, 3) for r in runs],
        "labels_measured": done,
        "n_particles": n,
        "voxels": int(labels.size),
        "peak_rss_mb": peak_rss() / 2**20,
    }
    if args.method == "dask_image":
        result["extrapolated_seconds"] = seconds * n / max(done, 1)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-particles", type=int, default=20000)
    parser.add_argument("--size", type=int, default=None, help="alias: particles = size^3 / 512")
    parser.add_argument("--quick", action="store_true", help="2000 particles, small dask-image subset")
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--dask-image-labels", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of volmla and regionprops (median)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "measure.json")
    parser.add_argument("--method", choices=("volmla", "volmla_cluster", "regionprops", "dask_image", "paired"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        child(args)
        return
    if args.size:
        args.n_particles = max(1, args.size**3 // CELL**3)
    if args.quick:
        args.n_particles, args.dask_image_labels, args.chunks = 2000, 10, 64
    results = {}
    for method in ("volmla", "volmla_cluster", "regionprops", "dask_image", "paired"):
        cmd = [sys.executable, __file__, "--method", method, "--n-particles", str(args.n_particles), "--chunks",
               str(args.chunks), "--dask-image-labels", str(args.dask_image_labels), "--seed", str(args.seed),
               "--repeat", str(args.repeat)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = results["volmla"]["seconds"]
    report = {
        "benchmark": "measure",
        "n_particles": results["volmla"]["n_particles"],
        "voxels": results["volmla"]["voxels"],
        "chunks": args.chunks,
        "cpu_count": os.cpu_count(),
        "results": results,
        "speedup_vs_regionprops": results["regionprops"]["seconds"] / ours,
        "speedup_vs_regionprops_paired_median": results["paired"]["speedup_median"],
        "speedup_vs_regionprops_2_workers_from_zarr": results["regionprops"]["seconds"] / results["volmla_cluster"]["seconds"],
        "speedup_vs_dask_image_extrapolated": results["dask_image"]["extrapolated_seconds"] / ours,
        "note": "dask_image measured on a subset of labels and extrapolated linearly (one pass per label)",
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
