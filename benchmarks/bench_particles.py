"""Benchmark: separating touching particles on crushed-ore phantoms, against the peers.

On :func:`volmla.synthetic.crushed_ore` phantoms (``--seeds`` x ``--levels``), from two
sources:

- ``perfect``: the true solid (``particles > 0``), so only the separation is measured;
- ``ct``: the simulated scan, each method with its own mask (volmla's
  ``label_particles`` with its defaults; connected components and PoreSpy on the
  Otsu mask of :func:`volmla.particles.otsu_threshold`),

three methods are run in the same process:

- ``volmla``: :func:`volmla.particles.label_particles` with its defaults (from the CT:
  the ``"auto"`` mask, split on the distance map weighted by the scan's fill,
  :func:`volmla.particles.mask.local_fill`);
- ``cc``: plain connected components (``label_particles(..., split=False)``);
- ``snow``: PoreSpy's SNOW partitioning with its defaults (the peer; skipped with a
  note in the JSON when PoreSpy is not installed: it is no dependency of volmla).

Each result is matched to the true particles by
:func:`volmla.particles.evaluate.match_particles` (IoU >= 0.8, border particles left
out): count of non-border particles, matched fraction, merges, splits, count error,
and time (Mvoxel/s), plus for the CT the solid lost and added against the true solid.
Results go to stdout and to ``benchmarks/results/particles.json``.

The summary also gives, for the CT, the solid mask's voxel agreement with the true solid
(``solid_lost`` and ``solid_added``, fractions of the true solid).

Default (3 seeds x 2 levels at 128^3, about ten minutes on 2 cores):
    python benchmarks/bench_particles.py
Proof it runs (1 seed, easy, 64^3):
    python benchmarks/bench_particles.py --quick
Speed of ``volmla particles`` (plan + write, file to file, the CLI's path) from the CT
(defaults) and from the true solid at N^3 on a LocalCluster of 2 workers, the 128^3 hard
phantom of seed 0 tiled to N^3, with scikit-image's in-memory recipe timed alongside
(``particles_speed.json`` at 384, ``particles_speed_N.json`` otherwise; N defaults to 192):
    python benchmarks/bench_particles.py --speed 384
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from volmla.engine.cluster import compute
from volmla.particles import label_particles, otsu_threshold
from volmla.particles.evaluate import match_particles
from volmla.synthetic import crushed_ore

RESULTS = Path(__file__).parent / "results"


def _snow() -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    try:
        import porespy
    except ImportError:
        return None, "porespy is not installed: the SNOW peer is skipped (pip install porespy)"
    logging.getLogger("porespy").setLevel(logging.ERROR)
    try:
        porespy.settings.tqdm["disable"] = True
    except Exception:  # noqa: BLE001 - older or newer settings layouts
        pass

    def snow(mask: np.ndarray) -> np.ndarray:
        return np.asarray(porespy.filters.snow_partitioning(mask.astype(bool)).regions) * mask

    return snow, f"porespy {porespy.__version__}: filters.snow_partitioning with its defaults"


def _volmla(volume: np.ndarray, **kw: Any) -> np.ndarray:
    return np.asarray(compute([label_particles(volume, **kw).labels], desc="particles")[0])


def _mask_agreement(pred: np.ndarray, truth_solid: np.ndarray) -> dict[str, float]:
    solid = pred > 0
    n = max(int(truth_solid.sum()), 1)
    return {
        "solid_lost": float((truth_solid & ~solid).sum() / n),
        "solid_added": float((solid & ~truth_solid).sum() / n),
    }


def run_case(shape: int, seed: int, level: str, snow: Callable[[np.ndarray], np.ndarray] | None) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    ore = crushed_ore(shape=shape, seed=seed, level=level)
    t_phantom = time.perf_counter() - t0
    truth = ore.particles
    solid = truth > 0
    perfect = solid.astype(np.uint8)
    otsu_mask = (ore.intensity > otsu_threshold(ore.intensity)).astype(np.uint8)
    methods: list[tuple[str, str, Callable[[], np.ndarray]]] = [
        ("perfect", "volmla", lambda: _volmla(perfect, threshold=None)),
        ("perfect", "cc", lambda: _volmla(perfect, threshold=None, split=False)),
        ("ct", "volmla", lambda: _volmla(ore.intensity)),
        ("ct", "cc", lambda: _volmla(ore.intensity, split=False)),
    ]
    if snow is not None:
        methods.insert(2, ("perfect", "snow", lambda: snow(perfect)))
        methods.append(("ct", "snow", lambda: snow(otsu_mask)))
    rows = []
    for source, method, fn in methods:
        t = time.perf_counter()
        pred = fn()
        dt = time.perf_counter() - t
        m = match_particles(pred, truth, iou=0.8)
        row: dict[str, Any] = {
            "level": level,
            "seed": seed,
            "shape": [shape] * 3,
            "source": source,
            "method": method,
            **m._asdict(),
            "seconds": dt,
            "mvox_per_s": truth.size / dt / 1e6,
            "phantom_seconds": t_phantom,
            "n_particles_truth_all": int(len(ore.table)),
            "n_contacts": ore.params["n_contacts"],
            "achieved_density": ore.params["achieved_density"],
        }
        if source == "ct":
            row.update(_mask_agreement(pred, solid))
        rows.append(row)
        print(
            f"{level:4s} seed {seed} {source:7s} {method:6s} true {m.n_true:4d} pred {m.n_pred:4d} "
            f"matched {m.matched_fraction:6.1%} merges {m.merges:3d} splits {m.splits:3d} "
            f"count {m.count_error:+6.1%} {dt:6.2f} s {truth.size / dt / 1e6:5.2f} Mvx/s",
            flush=True,
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["level"], r["source"], r["method"]) for r in rows}, key=lambda k: (k[0], -ord(k[1][0]), k[2]))
    for level, source, method in keys:
        sel = [r for r in rows if (r["level"], r["source"], r["method"]) == (level, source, method)]

        def mean(key: str, sel: list[dict[str, Any]] = sel) -> float:
            vals = [r[key] for r in sel if r[key] is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
            return float(np.mean(vals)) if vals else float("nan")

        out.append(
            {
                "level": level,
                "source": source,
                "method": method,
                "cases": len(sel),
                "n_true": int(sum(r["n_true"] for r in sel)),
                "n_pred": int(sum(r["n_pred"] for r in sel)),
                "matched_fraction": mean("matched_fraction"),
                "matched_min": float(min(r["matched_fraction"] for r in sel)),
                "matched_max": float(max(r["matched_fraction"] for r in sel)),
                "merges": int(sum(r["merges"] for r in sel)),
                "splits": int(sum(r["splits"] for r in sel)),
                "count_error": mean("count_error"),
                "solid_lost": mean("solid_lost") if source == "ct" else float("nan"),
                "solid_added": mean("solid_added") if source == "ct" else float("nan"),
                "mvox_per_s": mean("mvox_per_s"),
            }
        )
    return out


def _table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| level | source | method | true | pred | matched (seeds) | merges | splits | count err | "
        "solid lost / added | Mvx/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        mask = "" if math.isnan(s["solid_lost"]) else f"{s['solid_lost']:.1%} / {s['solid_added']:.1%}"
        lines.append(
            f"| {s['level']} | {s['source']} | {s['method']} | {s['n_true']} | {s['n_pred']} | "
            f"{s['matched_fraction']:.1%} ({s['matched_min']:.1%}-{s['matched_max']:.1%}) | {s['merges']} | "
            f"{s['splits']} | {s['count_error']:+.1%} | {mask} | {s['mvox_per_s']:.2f} |"
        )
    return "\n".join(lines)


def _tiled(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 128^3 hard phantom of seed 0 (CT and true solid) tiled to ``n^3``."""
    ore = crushed_ore(shape=128, seed=0, level="hard")
    reps = [math.ceil(n / s) for s in ore.intensity.shape]
    ct = np.tile(ore.intensity, reps)[:n, :n, :n]
    solid = np.tile(ore.particles > 0, reps)[:n, :n, :n]
    return ct, solid


def _peer(ct: np.ndarray | None, solid: np.ndarray | None) -> tuple[np.ndarray, dict[str, float]]:
    """The scikit-image recipe in memory, one thread: Otsu, pores, dust, EDT, peaks, watershed."""
    import scipy.ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    times: dict[str, float] = {}
    t = time.perf_counter()
    if solid is None:
        assert ct is not None
        solid = ct > threshold_otsu(ct)
        solid = ndi.binary_fill_holes(solid)
        try:
            solid = remove_small_objects(solid, max_size=26)  # scikit-image >= 0.26
        except TypeError:
            solid = remove_small_objects(solid, min_size=27)
        times["mask"] = time.perf_counter() - t
        t = time.perf_counter()
    dist = ndi.distance_transform_edt(solid).astype(np.float32)
    times["distance"] = time.perf_counter() - t
    t = time.perf_counter()
    peaks = peak_local_max(dist, min_distance=3, labels=ndi.label(solid)[0], exclude_border=False)
    markers = np.zeros(dist.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    times["peaks"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = watershed(-dist, markers, mask=solid)
    times["watershed"] = time.perf_counter() - t
    return labels, times


def speed(n: int, *, workers: int, out: Path) -> int:
    """Mvx/s of ``volmla particles`` (plan + write, the CLI's path) at ``n^3`` on ``workers``, with peers.

    The 128^3 hard phantom of seed 0 tiled to ``n^3`` is written to OME-Zarr (chunks 128),
    then labelled file to file by :func:`volmla.particles.files.plan_particles` and
    :func:`~volmla.particles.files.write_labels` on a LocalCluster, from the CT (defaults:
    ``"auto"`` mask, pores, dust, weighted split) and from the true solid (a phases
    volume: nonzero is solid). The peer is scikit-image's in-memory recipe on one thread
    (Otsu, ``binary_fill_holes``, ``remove_small_objects``, EDT, ``peak_local_max``,
    ``watershed``), timed per stage on the same volumes.
    """
    import tempfile

    from volmla.engine.cluster import cluster, peak_rss
    from volmla.io import write_volume
    from volmla.particles.files import plan_particles, write_labels

    ct, solid = _tiled(n)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-particles-") as tmp:
        folder = Path(tmp)
        write_volume(ct, folder / "ct.zarr", voxel_size=1.0, chunks=128, kind="intensity")
        write_volume(solid.astype(np.uint8), folder / "solid.zarr", voxel_size=1.0, chunks=128, kind="phases")
        with cluster(workers=workers, dashboard=False) as client:
            for source, name in [("ct", "ct.zarr"), ("perfect", "solid.zarr")]:  # a phases volume: nonzero is solid
                client.run(peak_rss, reset=True)
                t = time.perf_counter()
                plan = plan_particles(folder / name, folder / f"{source}-particles.zarr")
                found = write_labels(plan)
                dt = time.perf_counter() - t
                rss = max(client.run(peak_rss).values())
                rows.append({"source": source, "method": "volmla", "workers": workers, "seconds": dt,
                             "mvox_per_s": ct.size / dt / 1e6, "n_particles": int(found.count),
                             "peak_worker_rss_gb": rss / 1e9})
                print(f"{source:7s} volmla {n}^3 on {workers} workers: {dt:6.1f} s {ct.size / dt / 1e6:5.2f} Mvx/s "
                      f"{found.count} particles, peak worker RSS {rss / 1e9:.2f} GB", flush=True)
    for source, args in [("ct", (ct, None)), ("perfect", (None, solid))]:
        t = time.perf_counter()
        labels, stages = _peer(*args)
        dt = time.perf_counter() - t
        count = int(labels.max())
        rows.append({"source": source, "method": "skimage", "workers": 1, "seconds": dt,
                     "mvox_per_s": ct.size / dt / 1e6, "n_particles": count, "stage_seconds": stages})
        print(f"{source:7s} skimage {n}^3 in memory, 1 thread: {dt:6.1f} s {ct.size / dt / 1e6:5.2f} Mvx/s "
              f"{count} particles ({', '.join(f'{k} {v:.1f} s' for k, v in stages.items())})", flush=True)
    result = {
        "benchmark": "particles_speed",
        "shape": [n] * 3,
        "chunks": 128,
        "workers": workers,
        "rows": rows,
        "note": "volmla: plan_particles + write_labels (the CLI's path, OME-Zarr to OME-Zarr) on a LocalCluster; "
                "skimage: the in-memory recipe on one thread (no pores/dust for the true solid); "
                "the 128^3 hard phantom of seed 0 tiled",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=128, help="cube edge of the phantoms (scan voxels)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--levels", nargs="+", default=["easy", "hard"], choices=["easy", "hard"])
    ap.add_argument("--quick", action="store_true", help="1 seed, easy, 64^3")
    ap.add_argument("--out", type=Path, default=RESULTS / "particles.json")
    ap.add_argument("--no-snow", action="store_true", help="skip the PoreSpy peer")
    ap.add_argument("--speed", type=int, nargs="?", const=192, metavar="N",
                    help="only time volmla particles (CT and true solid) and the skimage peer at N^3 "
                         "(default 192; the reference size is 384)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the --speed cluster")
    args = ap.parse_args(argv)
    if args.speed:
        name = "particles_speed.json" if args.speed == 384 else f"particles_speed_{args.speed}.json"
        return speed(args.speed, workers=args.workers, out=RESULTS / name)
    if args.quick:
        args.shape, args.seeds, args.levels = 64, [0], ["easy"]
        if args.out == RESULTS / "particles.json":
            args.out = RESULTS / "particles_quick.json"
    snow, snow_note = (None, "skipped (--no-snow)") if args.no_snow else _snow()
    t0 = time.perf_counter()
    rows = []
    for level in args.levels:
        for seed in args.seeds:
            rows.extend(run_case(args.shape, seed, level, snow))
    summary = summarise(rows)
    table = _table(summary)
    print(table)
    payload = {
        "benchmark": "particles",
        "shape": [args.shape] * 3,
        "seeds": args.seeds,
        "levels": args.levels,
        "iou": 0.8,
        "exclude_border": True,
        "peer": snow_note,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "total_seconds": time.perf_counter() - t0,
        "summary": summary,
        "cases": rows,
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {args.out} ({payload['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
