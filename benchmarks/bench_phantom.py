"""Benchmark the CT phantom generator: chunked generation and writing vs in-memory.

Each case runs in its own subprocess so that its peak RSS is its own:

- ``memory``: the whole volume as one block, computed to NumPy (the in-memory peer);
- ``generate``: chunked, every block computed and dropped (threaded scheduler);
- ``write``: :func:`volmla.synthetic.write_phantom` to OME-Zarr (threaded scheduler).

Throughput is MVx/s over the four volumes of the phantom (voxels of one volume per
second, in millions). Results go to stdout and ``benchmarks/results/phantom.json``.

Usage::

    python benchmarks/bench_phantom.py --quick
    python benchmarks/bench_phantom.py --size 512 --chunks 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(mode: str, size: int, chunks: int, workers: int) -> dict[str, float]:
    import dask
    import numpy as np

    from volmla.engine.cluster import peak_rss
    from volmla.synthetic import phantom, write_phantom

    dask.config.set(scheduler="threads", num_workers=workers)
    shape = (size, size, size)
    start = time.perf_counter()
    if mode == "memory":
        ph = phantom(shape=shape, chunks=size)
        arrays = dask.compute(*(a.data for a in ph))
        assert all(isinstance(a, np.ndarray) for a in arrays)
    elif mode == "generate":
        ph = phantom(shape=shape, chunks=chunks)
        dask.compute(*(a.data.map_blocks(lambda b: np.zeros((1, 1, 1), b.dtype), chunks=(1, 1, 1)) for a in ph))
    elif mode == "write":
        with tempfile.TemporaryDirectory() as tmp:
            write_phantom(Path(tmp) / "ph", shape=shape, chunks=chunks)
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - start
    peak = peak_rss() / 2**20
    return {"seconds": round(seconds, 3), "mvx_per_s": round(size**3 / 1e6 / seconds, 3), "peak_rss_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="cube edge in voxels")
    parser.add_argument("--chunks", type=int, default=64, help="chunk edge in voxels")
    parser.add_argument("--workers", type=int, default=2, help="threads")
    parser.add_argument("--quick", action="store_true", help="a 96^3 run to check the script")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.chunks = 96, 32
    if args.child:
        print(json.dumps(_child(args.child, args.size, args.chunks, args.workers)))
        return

    results: dict[str, object] = {
        "size": args.size,
        "chunks": args.chunks,
        "workers": args.workers,
        "voxels": args.size**3,
    }
    for mode in ("memory", "generate", "write"):
        cmd = [sys.executable, __file__, "--child", mode, "--size", str(args.size), "--chunks", str(args.chunks),
               "--workers", str(args.workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    memory, generate, write = (results[m] for m in ("memory", "generate", "write"))
    results["ratios"] = {
        "generate_vs_memory_speed": round(generate["mvx_per_s"] / memory["mvx_per_s"], 3),  # type: ignore[index]
        "generate_vs_memory_peak_rss": round(generate["peak_rss_mb"] / memory["peak_rss_mb"], 3),  # type: ignore[index]
        "write_vs_generate_speed": round(write["mvx_per_s"] / generate["mvx_per_s"], 3),  # type: ignore[index]
    }
    text = json.dumps(results, indent=2)
    print(text)
    target = Path(__file__).parent / "results" / "phantom.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")


if __name__ == "__main__":
    main()
