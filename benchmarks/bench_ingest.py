"""Benchmark: a folder of TIFF slices -> OME-Zarr (volmla ingest) next to a plain tifffile read.

Both peers run in fresh subprocesses on the same files in the same run:

- ``volmla.ingest``: lazy slab reads -> Blosc-LZ4 OME-Zarr, out of core (Dask threads);
- ``tifffile.imread(files)``: the usual way, the whole stack read into one NumPy array.

Reported per peer: wall time, throughput (MB/s of uncompressed volume) and peak RSS over
the process's baseline after imports (``VmHWM``, the process's own high-water mark: unlike
``getrusage`` it does not inherit the parent's), plus the ratios.

Run ``python benchmarks/bench_ingest.py --quick`` to check it works (128^3);
the full run is ``python benchmarks/bench_ingest.py --size 512`` (512^3 uint16, 256 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"

_INGEST = textwrap.dedent(
    """
    import json, sys, time
    def hwm():
        return 1024 * next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    from pathlib import Path
    import numpy as np, tifffile
    from volmla.ingest import ingest
    warm = Path(sys.argv[2]).parent / "warm"  # a tiny ingest first: imports outside the timing
    warm.mkdir(exist_ok=True)
    tifffile.imwrite(warm / "0.tif", np.zeros((4, 4), np.uint16))
    ingest(warm, warm.with_suffix(".zarr"), voxel_size=1.0, overwrite=True)
    base = hwm()
    t = time.perf_counter()
    ingest(sys.argv[1], sys.argv[2], voxel_size=1.0, chunks=int(sys.argv[3]) or None, overwrite=True)
    seconds = time.perf_counter() - t
    peak = hwm()
    print(json.dumps({"seconds": seconds, "rss_base": base, "rss_peak": peak}))
    """
)

_TIFFFILE = textwrap.dedent(
    """
    import json, sys, time
    def hwm():
        return 1024 * next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    from pathlib import Path
    import natsort, tifffile
    files = natsort.natsorted(str(p) for p in Path(sys.argv[1]).glob("*.tif"))
    base = hwm()
    t = time.perf_counter()
    vol = tifffile.imread(files)
    seconds = time.perf_counter() - t
    peak = hwm()
    assert vol.shape[0] == len(files)
    print(json.dumps({"seconds": seconds, "rss_base": base, "rss_peak": peak}))
    """
)


def make_slices(folder: Path, size: int, seed: int = 0) -> int:
    """Write ``size`` uint16 slices of ``size x size`` (12-bit noise on a gradient)."""
    import tifffile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    base = (yy + xx).astype(np.float64) / (2 * size) * 30000
    for z in range(size):
        plane = base + rng.normal(0, 800, (size, size)) + 5000 * np.sin(z / 17)
        tifffile.imwrite(folder / f"slice_{z:05d}.tif", np.clip(plane, 0, 65535).astype(np.uint16))
    return size**3 * 2


def run_peer(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"peer failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="edge of the cubic uint16 volume (default 512)")
    parser.add_argument("--quick", action="store_true", help="a 128^3 run to check the benchmark works")
    parser.add_argument("--chunks", type=int, default=0, help="ingest chunk edge (default: volmla's ~64 MiB)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per peer; the fastest is reported")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the slices (default: a temp dir)")
    args = parser.parse_args(argv)
    size = 128 if args.quick else args.size

    work = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=args.workdir))
    try:
        nbytes = make_slices(work / "slices", size)
        peers = {}
        for name, script, extra in (
            ("volmla_ingest", _INGEST, [str(work / "out.zarr"), str(args.chunks)]),
            ("tifffile_imread", _TIFFFILE, []),
        ):
            runs = [run_peer(script, str(work / "slices"), *extra) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            peers[name] = {
                "seconds": round(best["seconds"], 3),
                "mb_per_s": round(nbytes / 1e6 / best["seconds"], 1),
                "peak_rss_mb": round((max(r["rss_peak"] for r in runs) - best["rss_base"]) / 1e6, 1),
            }
        zarr_bytes = sum(p.stat().st_size for p in (work / "out.zarr").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ingest_, plain = peers["volmla_ingest"], peers["tifffile_imread"]
    result = {
        "benchmark": "ingest",
        "volume": {"shape": [size] * 3, "dtype": "uint16", "mb": round(nbytes / 1e6, 1), "slices": size},
        "chunks": args.chunks or "default (~64 MiB)",
        "peers": peers,
        "ratios": {
            "throughput_ingest_over_tifffile": round(ingest_["mb_per_s"] / plain["mb_per_s"], 3),
            # None when the plain read stayed under the import high-water mark (tiny volumes)
            "peak_rss_ingest_over_tifffile": (
                round(ingest_["peak_rss_mb"] / plain["peak_rss_mb"], 3) if plain["peak_rss_mb"] >= 1 else None
            ),
        },
        "compression_ratio": round(nbytes / max(zarr_bytes, 1), 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "quick": bool(args.quick),
    }
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
