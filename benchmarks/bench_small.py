"""Benchmark: how long small commands take end to end (issue 20: small jobs start fast).

Each command runs as its own process (``python -m volmla.cli ...``), timed by wall clock
from start to exit, so the figures hold Python's start, the imports, the scheduler's
start (or its absence) and the computation:

- ``version`` and ``help``: ``volmla --version`` / ``--help`` (imports only);
- ``info``: ``volmla info`` on the phantom's intensity;
- ``label``: ``volmla label`` on an N^3 uint8 mask, random 30 % solid (the issue's case);
- ``preprocess``: ``volmla preprocess --step gaussian:sigma=1`` on the phantom's
  intensity (float32);
- ``particles``: ``volmla particles`` (defaults) on the phantom's intensity, and
  ``particles_mask`` on the random mask;
- ``label_cluster`` and ``particles_cluster``: ``label`` and ``particles`` with
  ``--workers 2``, on the embedded cluster (what the threaded path saves).

The phantom is written with ``volmla phantom``'s defaults (64-voxel chunks), the mask as
one chunk. Each command runs ``--repeat`` times (output removed in between, not timed);
the JSON holds every wall time, the median, the target (1.5 s for label and preprocess),
the CPU seconds of each run (user + system, workers included) and the machine's load
average, since a busy machine stretches every wall time. ``--tree PATH``
also times a second source tree of volmla (e.g. an export of the last commit,
``git archive HEAD | tar -x -C /tmp/before``) in the same run, alternating with this one.

Default (quick, well under a minute on an idle machine):  python benchmarks/bench_small.py
Before/after:  python benchmarks/bench_small.py --tree /tmp/before
Results: stdout and ``benchmarks/results/small.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_S = {"label": 1.5, "preprocess": 1.5}


def make_inputs(root: Path, size: int) -> dict[str, Path]:
    """The phantom's intensity and a random 30 % mask, both N^3."""
    from volmla.io import write_volume
    from volmla.synthetic.phantom import write_phantom

    paths = write_phantom(root / "phantom", shape=(size,) * 3, seed=0)
    mask = (np.random.default_rng(0).random((size,) * 3) > 0.7).astype(np.uint8)
    return {"intensity": Path(paths["intensity"]),
            "mask": write_volume(mask, root / "mask.zarr", voxel_size=1.0, chunks=size)}


def commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    intensity, mask = str(inputs["intensity"]), str(inputs["mask"])
    return {
        "version": ["--version"],
        "help": ["--help"],
        "info": ["info", intensity],
        "label": ["-q", "label", mask, "-o", str(out)],
        "preprocess": ["-q", "preprocess", intensity, "-o", str(out), "--step", "gaussian:sigma=1"],
        "particles": ["-q", "particles", intensity, "-o", str(out)],
        "particles_mask": ["-q", "particles", mask, "-o", str(out)],
        # the same two on the embedded cluster a user can still ask for: what threads save
        "label_cluster": ["-q", "--workers", "2", "label", mask, "-o", str(out)],
        "particles_cluster": ["-q", "--workers", "2", "particles", intensity, "-o", str(out)],
    }


def timed(args: list[str], out: Path, tree: Path | None) -> tuple[float, float]:
    """Wall and CPU (user + system, the command and every process it waited for) seconds
    of one ``python -m volmla.cli ARGS`` (``tree`` first on the path)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "volmla.cli", *args], env=env, cwd=out.parent,  # not a checkout
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"volmla {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="Volume edge N (N^3 voxels).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each command.")
    parser.add_argument("--only", nargs="*", help="Run only these commands (names as in the JSON).")
    parser.add_argument("--tree", type=Path, help="Also time this volmla source tree (the folder holding volmla/).")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "small.json")
    args = parser.parse_args()

    trees: dict[str, Path | None] = {"this": None}
    if args.tree is not None:
        if not (args.tree / "volmla" / "__init__.py").is_file():
            raise SystemExit(f"--tree {args.tree} holds no volmla/ package")
        trees["tree"] = args.tree.resolve()
    root = Path(tempfile.mkdtemp(prefix="bench-small-"))
    try:
        inputs = make_inputs(root, args.size)
        cmds = commands(inputs, root / "out.zarr")
        names = [n for n in cmds if not args.only or n in args.only]
        times: dict[str, dict[str, list[tuple[float, float]]]] = {t: {n: [] for n in names} for t in trees}
        load_before = os.getloadavg()
        for name in names:
            for _ in range(args.repeat):
                for tree_name, tree in trees.items():  # alternate, so both see the same load
                    times[tree_name][name].append(timed(cmds[name], root / "out.zarr", tree))
            line = ", ".join(f"{t} {statistics.median(w for w, _ in times[t][name]):.2f} s wall "
                             f"{statistics.median(c for _, c in times[t][name]):.2f} s cpu" for t in trees)
            print(f"{name:15s} {line}", flush=True)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def summary(per: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, object]]:
        return {n: {"wall_s": [round(w, 3) for w, _ in ts], "median_s": round(statistics.median(w for w, _ in ts), 3),
                    "min_s": round(min(w for w, _ in ts), 3), "cpu_s": [round(c, 3) for _, c in ts],
                    "target_s": TARGET_S.get(n)} for n, ts in per.items()}

    result = {
        "benchmark": "small commands end to end (subprocess wall time)",
        "size": args.size,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "python": sys.version.split()[0],
        "commands": {n: " ".join(["volmla", *cmds[n]]).replace(f"{root}/", "") for n in names},
        "this": summary(times["this"]),
    }
    if "tree" in trees:
        result["tree"] = {"path": str(trees["tree"]), **summary(times["tree"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
