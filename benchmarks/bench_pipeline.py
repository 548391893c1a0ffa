"""Benchmark: ``volmla run`` end to end on generated scans, per stage, with in-memory peers.

For each ``--sizes`` entry (``256`` for 256^3, ``2048x1024x1024`` for a box) a scan is
written the way a scanner writes it, one uint16 TIFF per z slice, by tiling a 128^3
crushed-ore phantom (:func:`volmla.synthetic.crushed_ore`, ``--level``); sparse labels
(the true phase + 1 on three z planes, 0 elsewhere) are written beside it as OME-Zarr,
block by block (never a whole-volume array in the driver). Then the default workflow
runs through :func:`volmla.pipeline.run` on a ``LocalCluster`` of ``--workers``
one-thread workers: ingest -> particles (auto mask, split) -> phases by region -> contacts ->
grains -> liberation (tables, statistics, report).

Per stage: wall time, Mvoxel/s, seconds per Gvoxel per core, and the peak RSS of every
worker and of the driver during that stage (``VmHWM``, reset between stages). Where the
volume fits comfortably in memory (``--peer-max`` voxels), the obvious in-memory peers
run in the same process on the same data: ``tifffile`` reading the slices (ingest);
Otsu + ``scipy.ndimage`` distance transform + ``skimage`` ``peak_local_max`` +
``watershed`` (particles); ``skimage.measure.label`` of (particle, phase) keys (grains);
``regionprops_table`` with per-phase voxel counts (liberation tables). Phases by region
has no such peer (it is volmla's own method).

JSON goes to ``benchmarks/results/pipeline.json``.

Quick (256^3, about 5-10 minutes on 2 cores):
    python benchmarks/bench_pipeline.py
The issue's set (hours on 2 cores; needs ~10 GB of disk for the 2 Gvoxel scan):
    python benchmarks/bench_pipeline.py --sizes 256 512 1024 2048x1024x1024
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

RESULTS = Path(__file__).parent / "results"
PHASES = ["quartz", "feldspar", "sulphide"]
STAGES = ("ingest", "particles", "segment", "contacts", "grains", "labels for viewers", "liberation")


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"a size is N or ZxYxX with edges >= 16, got {text!r}")
    return parts[0], parts[1], parts[2]


def _tile(level: Literal["easy", "hard"], seed: int) -> tuple[np.ndarray, np.ndarray]:
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=128, seed=seed, level=level)
    return np.asarray(ore.intensity).astype(np.uint16), np.asarray(ore.phases).astype(np.uint8)


def _tiled(tile: np.ndarray, z: slice, y: slice, x: slice) -> np.ndarray:
    """The region ``(z, y, x)`` of ``tile`` repeated over all space (periodic)."""
    idx = [np.arange(s.start, s.stop) % n for s, n in zip((z, y, x), tile.shape, strict=True)]
    return tile[np.ix_(*idx)]


def write_scan(folder: Path, shape: tuple[int, int, int], tile: np.ndarray) -> None:
    """One uint16 TIFF per z slice, as a scanner writes them."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(shape[0] - 1))
    for z in range(shape[0]):
        plane = _tiled(tile, slice(z, z + 1), slice(0, shape[1]), slice(0, shape[2]))[0]
        tifffile.imwrite(folder / f"slice_{z:0{width}d}.tif", plane)


def _label_block(block: np.ndarray, *, tile: np.ndarray, planes: tuple[int, ...],
                 block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None
    (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    out = np.zeros(block.shape, np.uint8)
    for p in planes:
        if z0 <= p < z1:
            out[p - z0] = _tiled(tile, slice(p, p + 1), slice(y0, y1), slice(x0, x1))[0] + 1
    return out


def write_labels(path: Path, shape: tuple[int, int, int], tile: np.ndarray, voxel: float) -> tuple[int, ...]:
    """Sparse labels (phase + 1 on three z planes) written block by block."""
    import dask.array as da

    from volmla.io import write_volume

    planes = (shape[0] // 4, shape[0] // 2, 3 * shape[0] // 4)
    empty = da.zeros(shape, dtype=np.uint8, chunks=128)
    labels = da.map_blocks(_label_block, empty, tile=tile, planes=planes, dtype=np.uint8)
    write_volume(labels, path, voxel_size=voxel, chunks=128, kind="labels",
                 phases={i + 1: n for i, n in enumerate(PHASES)})
    return planes


class _Stages:
    """The run's log lines turned into per-stage wall times and peak RSS."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.rows: list[dict[str, Any]] = []
        self.current: str | None = None
        self.start = 0.0
        self.steps: list[dict[str, Any]] = []  # with ``--trace``: one row per compute call of this stage

    def _rss(self) -> tuple[list[int], int]:
        from volmla.engine.cluster import peak_rss

        workers = sorted(self.client.run(peak_rss, reset=True).values())
        return workers, peak_rss(reset=True)

    def close(self) -> None:
        if self.current is None:
            return
        workers, driver = self._rss()
        worker_mb = [round(w / 1e6, 1) for w in workers]
        for step in self.steps:  # the marks were reset per step: the stage's peak is the largest
            worker_mb = [max(a, b) for a, b in zip(worker_mb, step["peak_rss_worker_mb"], strict=True)]
            driver = max(driver, int(step["peak_rss_driver_mb"] * 1e6))
        row = {"stage": self.current, "seconds": time.perf_counter() - self.start,
               "peak_rss_worker_mb": worker_mb, "peak_rss_driver_mb": round(driver / 1e6, 1)}
        if self.steps:
            row["steps"] = self.steps
        self.rows.append(row)
        self.current, self.steps = None, []

    def trace(self) -> Any:
        """Patch :func:`volmla.engine.cluster.compute` so every call of the run records its
        description, wall time and peak RSS per worker (the marks reset around each call):
        which step of a stage holds the memory. The original is restored on exit."""
        import volmla.engine.cluster as engine

        original = engine.compute

        def traced(tasks: Any, *, desc: str = "computing", optimize: bool = True) -> list[Any]:
            self._rss()
            t = time.perf_counter()
            out = original(tasks, desc=desc, optimize=optimize)
            workers, driver = self._rss()
            self.steps.append({"step": desc, "seconds": round(time.perf_counter() - t, 2),
                               "peak_rss_worker_mb": [round(w / 1e6, 1) for w in workers],
                               "peak_rss_driver_mb": round(driver / 1e6, 1)})
            return out

        @contextlib.contextmanager
        def patched() -> Any:
            engine.compute = traced
            try:
                yield
            finally:
                engine.compute = original

        return patched()

    def __call__(self, line: str) -> None:
        name = line.strip()
        stage = next((s for s in STAGES if name == s or name.startswith(f"{s} (")), None)
        if stage is None:
            return
        self.close()
        self._rss()  # reset the marks: the next reading is this stage's own peak
        self.current, self.start = stage, time.perf_counter()


def run_volmla(work: Path, shape: tuple[int, int, int], *, workers: int, voxel: float,
               trace: bool = False) -> dict[str, Any]:
    from volmla.engine.cluster import cluster
    from volmla.pipeline import run

    config = {"out": str(work / "out"), "input": {"paths": [str(work / "scan")], "voxel_size": voxel, "chunks": 128},
              "segment": {"labels": str(work / "labels.zarr"), "phase_names": PHASES},
              "liberation": {"n_boot": 50}}
    with cluster(workers=workers, dashboard=False) as client:
        stages = _Stages(client)
        t = time.perf_counter()
        with stages.trace() if trace else contextlib.nullcontext():
            result = run(config, log=stages, overwrite=True)
        stages.close()
        total = time.perf_counter() - t
    voxels = math.prod(shape)
    for row in stages.rows:
        row["mvox_per_s"] = round(voxels / row["seconds"] / 1e6, 3)
        row["s_per_gvox_per_core"] = round(row["seconds"] * workers / (voxels / 1e9), 1)
    summary = result["summary"]
    return {"seconds": round(total, 1), "mvox_per_s": round(voxels / total / 1e6, 3),
            "s_per_gvox_per_core": round(total * workers / (voxels / 1e9), 1), "stages": stages.rows,
            "n_particles": summary.get("n_particles_total"), "liberation_degree": summary.get("liberation_degree")}


def run_peers(work: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    """The same stages by the obvious in-memory peers (one process)."""
    import tifffile
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops_table
    from skimage.segmentation import watershed

    from volmla.io import open_volume

    out: dict[str, Any] = {}
    voxels = math.prod(shape)

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t
        out[name] = {"seconds": round(dt, 2), "mvox_per_s": round(voxels / dt / 1e6, 3)}
        return value

    files = sorted((work / "scan").glob("*.tif"))
    ct = timed("ingest (tifffile.imread)", lambda: tifffile.imread(files))

    def particles() -> np.ndarray:
        smooth = ndimage.gaussian_filter(ct.astype(np.float32), 1.0)
        mask = smooth > threshold_otsu(smooth)
        dist = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(dist, min_distance=3, labels=mask, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return watershed(-dist, markers, mask=mask)

    parts = timed("particles (otsu + edt + peak_local_max + watershed)", particles)
    phases = open_volume(work / "out" / "phases.zarr").values
    keys = parts.astype(np.uint64) * 256 + phases
    keys[(parts == 0) | (phases == 0)] = 0
    timed("grains (skimage.measure.label of particle x phase keys)", lambda: label(keys, connectivity=3))

    def table() -> Any:
        return regionprops_table(parts, intensity_image=np.stack([phases == k for k in range(1, 4)], axis=-1),
                                 properties=("label", "area", "bbox", "centroid", "intensity_mean"))

    timed("liberation tables (regionprops_table with phase fractions)", table)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=_shape, nargs="+", default=[(256, 256, 256)],
                    help="N (a cube) or ZxYxX, each a separate run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--level", choices=["easy", "hard"], default="easy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-max", type=float, default=64e6, help="run the in-memory peers up to this many voxels")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    ap.add_argument("--trace", action="store_true",
                    help="also record every compute call's time and peak RSS per worker (the 'steps' of a stage)")
    args = ap.parse_args(argv)

    intensity, phases = _tile(args.level, args.seed)
    voxel = 2.0
    runs = []
    base = args.work or Path(tempfile.mkdtemp(prefix="volmla-bench-pipeline-"))
    try:
        for shape in args.sizes:
            work = base / "x".join(map(str, shape))
            shutil.rmtree(work, ignore_errors=True)
            t = time.perf_counter()
            write_scan(work / "scan", shape, intensity)
            planes = write_labels(work / "labels.zarr", shape, phases, voxel)
            made = time.perf_counter() - t
            print(f"{shape}: scan and labels written in {made:.0f} s; running volmla", flush=True)
            entry: dict[str, Any] = {"shape": list(shape), "voxels": math.prod(shape), "label_planes": list(planes),
                                     "write_inputs_s": round(made, 1),
                                     "volmla": run_volmla(work, shape, workers=args.workers, voxel=voxel,
                                                         trace=args.trace)}
            for row in entry["volmla"]["stages"]:
                print(f"  {row['stage']:20s} {row['seconds']:8.1f} s {row['mvox_per_s']:8.3f} Mvx/s "
                      f"{row['s_per_gvox_per_core']:9.1f} s/Gvx/core  workers {row['peak_rss_worker_mb']} MB "
                      f"driver {row['peak_rss_driver_mb']} MB", flush=True)
                for step in row.get("steps", []):
                    print(f"    {step['step']:30s} {step['seconds']:8.1f} s  workers {step['peak_rss_worker_mb']} MB",
                          flush=True)
            if math.prod(shape) <= args.peer_max:
                entry["peers"] = run_peers(work, shape)
                for name, row in entry["peers"].items():
                    print(f"  peer {name}: {row['seconds']} s ({row['mvox_per_s']} Mvx/s)", flush=True)
            runs.append(entry)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(base, ignore_errors=True)
    result = {"benchmark": "pipeline", "workers": args.workers, "threads_per_worker": 1, "level": args.level,
              "seed": args.seed, "runs": runs,
              "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": _cpus()},
              "targets": {"2 Gvoxel run": "completes, peak RSS per worker < 3 GiB"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    sys.exit(main())
