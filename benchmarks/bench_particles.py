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
Where the matched fraction from the CT is lost (``particles_limits.json``, about four
minutes): the ``"auto"`` mask split perfectly (nearest true particle), the same for the
noise-free scan, and volmla's split with the mask's blur-filled creases between
particles carved away using the truth (:func:`limits_case`):
    python benchmarks/bench_particles.py --limits
Particles from a learned border/interior map (``particles_learned.json``; needs torch):
a depth-3 U-Net trained per level on the phantom of seed 100 (``--iterations``,
default 1500: about eight minutes on 2 cores), then on each test seed the CT segmented
by it and ``label_particles(threshold="interior")``, with the default from the CT alongside:
    python benchmarks/bench_particles.py --learned --levels hard easy --keep-models DIR
The same models on other scans (no training): one level's model on the other's, or on
phantoms changed by ``--set``:
    python benchmarks/bench_particles.py --learned --use-models DIR --model-level hard --levels easy \
        --out benchmarks/results/particles_learned_hard_on_easy.json
One model for both levels, trained on their seed-100 phantoms side by side, each scan
mapped by its own void and solid modes (how volmla's built-in model was made):
    python benchmarks/bench_particles.py --learned --levels hard easy --train-levels hard easy \
        --rescale modes --iterations 3000 --keep-models DIR
The model volmla ships (``builtin:particles``) on every level, no training
(``particles_builtin.json``):
    python benchmarks/bench_particles.py --learned --builtin --levels hard easy
Scans with a zero-filled cylindrical field of view, with and without a container wall
inside it (``particles_fov.json``, :func:`fov`):
    python benchmarks/bench_particles.py --fov --shape 96
Another phantom family (``particles_demo_family.json``, about ten minutes): the demo's
generator (:func:`volmla.synthetic.phantom`: particles in resin with pores, a third of
them of one grain, some with a bright sulphide, sizes drawn log-uniformly), which the
built-in model never saw, at the demo's touching fraction and at a packed one; the
default, the built-in model and connected components from the CT, SNOW on the Otsu mask:
    python benchmarks/bench_particles.py --demo-family --seeds 0 1 2 3 4 5 6 7 8 9 10 11
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _phantom_set import add_set_option, parse_set  # noqa: E402

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


def run_case(shape: int, seed: int, level: str, snow: Callable[[np.ndarray], np.ndarray] | None,
             overrides: dict[str, float] | None = None) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    ore = crushed_ore(shape=shape, seed=seed, level=level, **(overrides or {}))
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


def speed(n: int, *, workers: int, out: Path, builtin: bool = False) -> int:
    """Mvx/s of ``volmla particles`` (plan + write, the CLI's path) at ``n^3`` on ``workers``, with peers.

    The 128^3 hard phantom of seed 0 tiled to ``n^3`` is written to OME-Zarr (chunks 128),
    then labelled file to file by :func:`volmla.particles.files.plan_particles` and
    :func:`~volmla.particles.files.write_labels` on a LocalCluster, from the CT (defaults:
    ``"auto"`` mask, pores, dust, weighted split) and from the true solid (a phases
    volume: nonzero is solid). The peer is scikit-image's in-memory recipe on one thread
    (Otsu, ``binary_fill_holes``, ``remove_small_objects``, EDT, ``peak_local_max``,
    ``watershed``), timed per stage on the same volumes. With ``builtin``, also from the
    CT through the built-in particle U-Net: its map written to OME-Zarr (``segment``, the
    run's ``particle_map.zarr``), then labelled from it, the two timed together.
    """
    import tempfile

    from volmla.engine.cluster import cluster, peak_rss
    from volmla.io import open_volume, write_volume
    from volmla.particles.files import plan_particles, write_labels
    from volmla.particles.learned import MAP_PHASES
    from volmla.segment.infer import segment

    def builtin_map(folder: Path) -> Path:  # the scan's interior/boundary map, stored as a run stores it
        phases = segment(open_volume(folder / "ct.zarr"), model="builtin:particles").phases
        write_volume(phases, folder / "map.zarr", voxel_size=1.0, chunks=128, kind="phases", phases=MAP_PHASES)
        return folder / "map.zarr"

    ct, solid = _tiled(n)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-particles-") as tmp:
        folder = Path(tmp)
        write_volume(ct, folder / "ct.zarr", voxel_size=1.0, chunks=128, kind="intensity")
        write_volume(solid.astype(np.uint8), folder / "solid.zarr", voxel_size=1.0, chunks=128, kind="phases")
        with cluster(workers=workers, dashboard=False) as client:
            sources = [("ct", "ct.zarr"), ("perfect", "solid.zarr")]  # a phases volume: nonzero is solid
            for source, name in sources + ([("ct-builtin", None)] if builtin else []):
                client.run(peak_rss, reset=True)
                t = time.perf_counter()
                path = builtin_map(folder) if name is None else folder / name
                plan = plan_particles(path, folder / f"{source}-particles.zarr")
                found = write_labels(plan)
                dt = time.perf_counter() - t
                rss = max(client.run(peak_rss).values())
                rows.append({"source": source, "method": "volmla", "workers": workers, "seconds": dt,
                             "mvox_per_s": ct.size / dt / 1e6, "n_particles": int(found.count),
                             "peak_worker_rss_gb": rss / 1e9})
                print(f"{source:10s} volmla {n}^3 on {workers} workers: {dt:6.1f} s {ct.size / dt / 1e6:5.2f} Mvx/s "
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


def _nearest_true(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A perfect split of ``mask``: each voxel takes the id of the nearest true particle voxel."""
    from scipy import ndimage as ndi

    idx = ndi.distance_transform_edt(truth == 0, return_distances=False, return_indices=True)
    return np.where(mask, truth[tuple(idx)], 0).astype(np.uint32)


def _split_in_memory(mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """The split of :func:`label_particles` on one in-memory block (no dust removal)."""
    import fastremap

    from volmla.particles.split import split_block

    keys = split_block(mask, weight=fill)
    return fastremap.renumber(np.where(mask, keys, 0).astype(np.uint64), in_place=False)[0].astype(np.uint32)


def limits_case(shape: int, seed: int, level: str, overrides: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Where the matched fraction from the CT is lost: the mask, the noise, or the blur-filled creases.

    From the ``"auto"`` mask (pores filled) and its fill weight, in memory:

    - ``split``: volmla's split of it (as :func:`label_particles`, without dust removal);
    - ``mask_cap``: a perfect split of the same mask (each voxel takes the nearest true
      particle's id): what the mask alone allows;
    - ``noiseless_mask_cap``: the same for the mask of the noise-free scan;
    - ``creases_removed``: volmla's split of the mask without the voxels it adds within
      two voxels of two true particles (blur-filled creases and sub-voxel gaps, found
      with the truth): what the split would reach if those were carved away.
    """
    from scipy import ndimage as ndi

    from volmla.particles.mask import auto_solid

    ore = crushed_ore(shape=shape, seed=seed, level=level, **(overrides or {}))
    truth = ore.particles
    solid = truth > 0
    found = auto_solid(ore.intensity)
    mask = ndi.binary_fill_holes(np.asarray(found.mask.compute()))
    fill = np.asarray(found.fill.compute())
    quiet = ndi.binary_fill_holes(np.asarray(auto_solid(ore.noiseless).mask.compute()))
    ball = np.ones((5, 5, 5), bool)
    big = np.iinfo(np.int64).max
    near_two = ndi.maximum_filter(truth.astype(np.int64), footprint=ball) != ndi.minimum_filter(
        np.where(solid, truth, big).astype(np.int64), footprint=ball)
    creases = mask & ~solid & near_two & (ndi.minimum_filter(np.where(solid, truth, big), footprint=ball) < big)
    variants = {
        "split": _split_in_memory(mask, fill),
        "mask_cap": _nearest_true(mask, truth),
        "noiseless_mask_cap": _nearest_true(quiet, truth),
        "creases_removed": _split_in_memory(mask & ~creases, fill),
    }
    rows = []
    for name, pred in variants.items():
        m = match_particles(pred, truth, iou=0.8)
        rows.append({"level": level, "seed": seed, "variant": name, **m._asdict(), **_mask_agreement(pred, solid),
                     "crease_voxels": float(creases.sum() / max(int(solid.sum()), 1))})
        print(f"{level:4s} seed {seed} {name:19s} matched {m.matched_fraction:6.1%} merges {m.merges:3d} "
              f"splits {m.splits:3d} count {m.count_error:+6.1%}", flush=True)
    return rows


def limits(args: argparse.Namespace) -> int:
    """``--limits``: :func:`limits_case` over the seeds and levels, to ``particles_limits.json``."""
    t0 = time.perf_counter()
    rows = [r for level in args.levels for seed in args.seeds for r in limits_case(args.shape, seed, level, args.set)]
    summary = []
    for level in args.levels:
        for variant in ("split", "mask_cap", "noiseless_mask_cap", "creases_removed"):
            sel = [r for r in rows if (r["level"], r["variant"]) == (level, variant)]
            summary.append({"level": level, "variant": variant, "cases": len(sel),
                            **{k: float(np.mean([r[k] for r in sel])) for k in
                               ("matched_fraction", "count_error", "solid_lost", "solid_added", "crease_voxels")},
                            "merges": int(sum(r["merges"] for r in sel)), "splits": int(sum(r["splits"] for r in sel))})
            s = summary[-1]
            print(f"{level:4s} {variant:19s} matched {s['matched_fraction']:6.1%} merges {s['merges']:4d} "
                  f"splits {s['splits']:4d} solid lost {s['solid_lost']:.1%} added {s['solid_added']:.1%}")
    out = RESULTS / "particles_limits.json" if args.out == RESULTS / "particles.json" else args.out
    payload = {"benchmark": "particles --limits", "shape": [args.shape] * 3, "seeds": args.seeds,
               "levels": args.levels, "overrides": args.set, "iou": 0.8, "exclude_border": True,
               "doc": limits_case.__doc__,
               "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
               "total_seconds": time.perf_counter() - t0, "summary": summary, "cases": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {out} ({payload['total_seconds']:.0f} s)")
    return 0


LEARNED_TRAIN_SEED = 100
"""Seed of the phantom the ``--learned`` U-Net is trained on (never a test seed)."""


def _training_scan(levels: list[str], *, shape: int, overrides: dict[str, float] | None,
                   rescale: str) -> tuple[np.ndarray, np.ndarray]:
    """The seed-:data:`LEARNED_TRAIN_SEED` phantoms of ``levels``: one scan and its particle ids.

    Several levels sit side by side along x (particle ids kept apart), each mapped by its
    own void and solid modes first (``rescale="modes"`` only: the levels' grey scales
    differ), so training planes and validation planes both hold every level.
    """
    from volmla.engine.reduce import histogram, histogram_modes

    ores = [crushed_ore(shape=shape, seed=LEARNED_TRAIN_SEED, level=level, **(overrides or {})) for level in levels]
    if len(ores) == 1:
        return ores[0].intensity, ores[0].particles
    if rescale != "modes":
        raise SystemExit("bench_particles.py: --train-levels with several levels needs --rescale modes")
    scans, ids, offset = [], [], 0
    for ore in ores:
        void, solid = histogram_modes(histogram(ore.intensity))
        scans.append(((ore.intensity - void) / (solid - void)).astype(np.float32))
        ids.append(np.where(ore.particles > 0, ore.particles + offset, 0).astype(np.uint32))
        offset += int(ore.particles.max())
    return np.concatenate(scans, axis=2), np.concatenate(ids, axis=2)


def train_particle_model(levels: list[str], *, shape: int, iterations: int, folder: Path,
                         overrides: dict[str, float] | None = None,
                         rescale: str = "fixed") -> tuple[Path, dict[str, Any]]:
    """A background / interior / boundary U-Net trained on the phantoms of :data:`LEARNED_TRAIN_SEED`.

    The true particle ids of the phantom of each of ``levels`` are the labels
    (``volmla train --target particles``; several levels side by side,
    :func:`_training_scan`); the depth-3, base-8 U-Net of the demo, patches of 40^3, a
    cupping-like gain augmentation, intensities mapped as ``rescale`` says (``"modes"``:
    by each scan's void and solid modes, as volmla's built-in particle model). Returns
    the exported ONNX file (``particles-LEVEL[+LEVEL].onnx``) and the training figures.
    """
    from volmla.segment.export import export
    from volmla.segment.train import TrainConfig, save_model, train

    image, ids = _training_scan(levels, shape=shape, overrides=overrides, rescale=rescale)
    config = TrainConfig(target="particles", iterations=iterations, patch=40, batch=4, val_every=50,
                         patience=max(iterations // 50, 8), gain=0.15, rescale=rescale)
    t = time.perf_counter()
    result = train(image, ids, config=config)
    seconds = time.perf_counter() - t
    name = "+".join(levels)
    save_model(result, folder / f"particles-{name}.pt")
    onnx = folder / f"particles-{name}.onnx"
    export(folder / f"particles-{name}.pt", onnx, overwrite=True)
    last = result.history[-1] if result.history else {}
    return onnx, {"train_seed": LEARNED_TRAIN_SEED, "train_levels": levels, "train_shape": list(image.shape),
                  "iterations": iterations, "rescale": rescale, "best_iteration": result.best_iteration,
                  "train_seconds": seconds, "val_accuracy": last.get("val_accuracy"), "context": result.context}


def _write(out: Path, payload: dict[str, Any], *, t0: float, rows: list[dict[str, Any]],
           summary: list[dict[str, Any]], table: str) -> int:
    """Write a run's JSON: ``payload`` (what was run), the machine, the time since ``t0``, the
    ``summary`` of ``rows``, the rows and the markdown ``table``; 0, the exit status."""
    payload = {**payload, "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
               "total_seconds": time.perf_counter() - t0, "summary": summary, "cases": rows,
               "table_markdown": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {out} ({payload['total_seconds']:.0f} s)")
    return 0


def learned(args: argparse.Namespace) -> int:
    """``--learned``: particles from a U-Net's interior/boundary map against the default from the CT.

    Per level, a model is trained on the phantom of :data:`LEARNED_TRAIN_SEED`
    (:func:`train_particle_model`); on each test seed the CT is segmented by it
    (:func:`volmla.segment.infer.segment`) and the map labelled with
    ``label_particles(threshold="interior")``; the default ``label_particles`` from the CT
    runs alongside. Needs torch (the ``train`` extra). With ``--use-models DIR`` nothing
    is trained: ``DIR/particles-LEVEL.onnx`` is applied, LEVEL being ``--model-level`` if
    given (a model of one level on scans of another, or on phantoms changed by ``--set``);
    with ``--builtin`` the model volmla ships (``builtin:particles``) is applied to every level.
    """
    import tempfile

    from volmla.segment.infer import segment
    from volmla.segment.sessions import resolve_model

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="volmla-bench-learned-") as tmp:
        folder = Path(tmp) if args.keep_models is None else args.keep_models
        folder.mkdir(parents=True, exist_ok=True)
        shared = None
        if args.train_levels:  # one model for every level
            shared = train_particle_model(args.train_levels, shape=args.shape, iterations=args.iterations,
                                          folder=folder, overrides=args.set, rescale=args.rescale)
            print(f"{'+'.join(args.train_levels)}: trained in {shared[1]['train_seconds']:.0f} s "
                  f"(val accuracy {shared[1]['val_accuracy']})", flush=True)
        for level in args.levels:
            if shared is not None:
                onnx, models[level] = shared
            elif args.builtin:
                onnx = resolve_model("builtin:particles")
                models[level] = {"model": "builtin:particles"}
            elif args.use_models is not None:
                onnx = args.use_models / f"particles-{args.model_level or level}.onnx"
                if not onnx.is_file():
                    raise SystemExit(f"bench_particles.py: no model {onnx}")
                models[level] = {"model": str(onnx), "model_level": args.model_level or level}
            else:
                onnx, models[level] = train_particle_model([level], shape=args.shape, iterations=args.iterations,
                                                           folder=folder, overrides=args.set, rescale=args.rescale)
                print(f"{level}: trained in {models[level]['train_seconds']:.0f} s "
                      f"(val accuracy {models[level]['val_accuracy']})", flush=True)
            for seed in args.seeds:
                ore = crushed_ore(shape=args.shape, seed=seed, level=level, **args.set)
                truth = ore.particles
                t = time.perf_counter()
                classes = np.asarray(compute([segment(ore.intensity, model=onnx).phases], desc="segment")[0])
                t_seg = time.perf_counter() - t
                for method, fn in (("volmla-learned", lambda c=classes: _volmla(c, threshold="interior")),
                                   ("volmla", lambda o=ore: _volmla(o.intensity))):
                    t = time.perf_counter()
                    pred = fn()
                    dt = time.perf_counter() - t + (t_seg if method == "volmla-learned" else 0.0)
                    m = match_particles(pred, truth, iou=0.8)
                    rows.append({"level": level, "seed": seed, "shape": [args.shape] * 3, "source": "ct",
                                 "method": method, **m._asdict(), "seconds": dt, "segment_seconds": t_seg,
                                 "mvox_per_s": truth.size / dt / 1e6, **_mask_agreement(pred, truth > 0)})
                    print(f"{level:4s} seed {seed} {method:14s} matched {m.matched_fraction:6.1%} merges "
                          f"{m.merges:3d} splits {m.splits:3d} count {m.count_error:+6.1%} {dt:6.2f} s", flush=True)
    summary = summarise(rows)
    table = _table(summary)
    print(table)
    default = RESULTS / ("particles_builtin.json" if args.builtin else "particles_learned.json")
    out = default if args.out == RESULTS / "particles.json" else args.out
    return _write(out, {"benchmark": "particles --learned", "shape": [args.shape] * 3, "seeds": args.seeds,
                        "levels": args.levels, "overrides": args.set, "iou": 0.8, "exclude_border": True,
                        "doc": learned.__doc__, "models": models}, t0=t0, rows=rows, summary=summary, table=table)


DEMO_TOUCHING = (0.15, 0.6)
"""Touching fractions of ``--demo-family``: the demo's and a packed one."""


def demo_family(args: argparse.Namespace) -> int:
    """``--demo-family``: the methods from the CT on the demo's phantoms (another generator).

    Per seed and touching fraction (:data:`DEMO_TOUCHING`), a 128^3
    :func:`volmla.synthetic.phantom`; from its CT: ``label_particles`` with its defaults,
    the built-in particle U-Net's map (``builtin:particles``, split with
    ``threshold="interior"``), connected components of the ``"auto"`` mask, and SNOW on
    the Otsu mask where PoreSpy is installed.
    """
    from volmla.engine.blocks import as_volume
    from volmla.segment.infer import segment
    from volmla.segment.sessions import resolve_model
    from volmla.synthetic import phantom

    snow, snow_note = (None, "skipped (--no-snow)") if args.no_snow else _snow()
    model = resolve_model("builtin:particles")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for touching in DEMO_TOUCHING:
        level = f"demo-{touching:g}"
        for seed in args.seeds:
            ph = phantom(shape=args.shape, seed=seed, touching_fraction=touching)
            ct = np.asarray(as_volume(ph.intensity).data.compute())
            truth = np.asarray(as_volume(ph.particles).data.compute())
            methods: list[tuple[str, Callable[[], np.ndarray]]] = [
                ("volmla", lambda c=ct: _volmla(c)),
                ("volmla-builtin", lambda c=ct: _volmla(np.asarray(compute([segment(c, model=model).phases],
                                                                         desc="segment")[0]), threshold="interior")),
                ("cc", lambda c=ct: _volmla(c, split=False)),
            ]
            if snow is not None:
                methods.append(("snow", lambda c=ct: snow((c > otsu_threshold(c)).astype(np.uint8))))
            for method, fn in methods:
                t = time.perf_counter()
                pred = fn()
                dt = time.perf_counter() - t
                m = match_particles(pred, truth, iou=0.8)
                rows.append({"level": level, "seed": seed, "shape": [args.shape] * 3, "source": "ct", "method": method,
                             **m._asdict(), "seconds": dt, "mvox_per_s": truth.size / dt / 1e6,
                             **_mask_agreement(pred, truth > 0)})
                print(f"{level} seed {seed:2d} {method:14s} true {m.n_true:4d} pred {m.n_pred:4d} matched "
                      f"{m.matched_fraction:6.1%} merges {m.merges:3d} splits {m.splits:3d} "
                      f"count {m.count_error:+6.1%} {dt:6.2f} s", flush=True)
    summary = summarise(rows)
    table = _table(summary)
    print(table)
    out = RESULTS / "particles_demo_family.json" if args.out == RESULTS / "particles.json" else args.out
    return _write(out, {"benchmark": "particles --demo-family", "shape": [args.shape] * 3, "seeds": args.seeds,
                        "touching_fractions": list(DEMO_TOUCHING), "iou": 0.8, "exclude_border": True,
                        "peer": snow_note, "doc": demo_family.__doc__}, t0=t0, rows=rows, summary=summary, table=table)


WALL_GREY = 14000.0
"""The container wall of ``--fov``: between the resin's (10,000) and quartz's (22,000) grey."""


def _strip(labels: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """The labels less those with a voxel on ``edge`` (cut there, or near enough)."""
    cut = np.unique(labels[edge])
    return np.where(np.isin(labels, cut[cut > 0]), 0, labels)


def fov(args: argparse.Namespace) -> int:
    """``--fov``: particles from scans written as reconstructions are, 0 outside the circle.

    Per level and seed, :func:`volmla.synthetic.crushed_ore` with ``field_of_view=True``
    (the inscribed circle; the same sample as without), and the same scan with a
    container wall inside the circle (3 voxels of :data:`WALL_GREY`, noised as the scan).
    ``label_particles`` on: the scan without a field of view (``plain``), the zero-filled
    scan with its field of view found (``found``, the default) and with it ignored
    (``blind``: the fill read as data), and the walled scan found, ignored, and with the
    wall's inner circle given (``given``). Matched against the true particles, leaving
    out in both those within one voxel of the circle (the wall's inner one for the walled
    scan), as the particle table flags them.
    """
    from volmla.preprocess.fov import FieldOfView
    from volmla.synthetic import crushed_ore

    n = args.shape
    y, x = np.mgrid[:n, :n]
    r = np.broadcast_to(np.hypot(y - (n - 1) / 2, x - (n - 1) / 2), (n, n, n))
    inner = n / 2 - 3.5
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for level in args.levels:
        for seed in args.seeds:
            plain = crushed_ore(shape=n, seed=seed, level=level)
            zero = crushed_ore(shape=n, seed=seed, level=level, field_of_view=True)
            walled = zero.intensity.copy()
            ring = (r > inner) & (r < n / 2)
            noise = float(zero.params["noise_sigma"])
            walled[ring] = np.random.default_rng(seed).normal(WALL_GREY, noise, int(ring.sum())).clip(0, 65535)
            center = ((n - 1) / 2, (n - 1) / 2)
            cases = [("zero", "plain", plain.intensity, "auto", n / 2),
                     ("zero", "found", zero.intensity, "auto", n / 2),
                     ("zero", "blind", zero.intensity, None, n / 2),
                     ("wall", "plain", plain.intensity, "auto", inner),
                     ("wall", "found", walled, "auto", inner),
                     ("wall", "blind", walled, None, inner),
                     ("wall", "given", walled, FieldOfView(center, inner, 0.0), inner)]
            for scan, method, image, given, radius in cases:
                edge = r >= radius - 1  # the particle table's rule: within one voxel of the circle
                t = time.perf_counter()
                pred = _volmla(image, field_of_view=given)
                dt = time.perf_counter() - t
                kept, truth = _strip(pred, edge), _strip(plain.particles, edge)
                m = match_particles(kept, truth, iou=0.8)
                rows.append({"level": f"{level}-{scan}", "seed": seed, "shape": [n] * 3, "source": "ct",
                             "method": method, **m._asdict(), "seconds": dt, "mvox_per_s": pred.size / dt / 1e6,
                             **_mask_agreement(kept, truth > 0)})
                print(f"{level} {scan} seed {seed} {method:6s} true {m.n_true:4d} pred {m.n_pred:4d} matched "
                      f"{m.matched_fraction:6.1%} merges {m.merges:3d} splits {m.splits:3d}", flush=True)
    summary = summarise(rows)
    table = _table(summary)
    print(table)
    out = RESULTS / "particles_fov.json" if args.out == RESULTS / "particles.json" else args.out
    return _write(out, {"benchmark": "particles --fov", "shape": [n] * 3, "seeds": args.seeds, "levels": args.levels,
                        "iou": 0.8, "wall_grey": WALL_GREY, "doc": fov.__doc__}, t0=t0, rows=rows, summary=summary,
                  table=table)


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
    ap.add_argument("--limits", action="store_true",
                    help="where the matched fraction from the CT is lost (particles_limits.json): "
                         "the mask, its noise, the blur-filled creases")
    ap.add_argument("--learned", action="store_true",
                    help="particles from a U-Net's interior/boundary map, trained on a phantom of another seed "
                         "(particles_learned.json; needs torch)")
    ap.add_argument("--iterations", type=int, default=1500, help="training iterations of the --learned U-Net")
    ap.add_argument("--rescale", choices=["fixed", "modes"], default="fixed",
                    help="intensity mapping of the --learned U-Net: the training scan's levels, or each "
                         "scan's void and solid modes (the built-in model's)")
    ap.add_argument("--train-levels", nargs="+", choices=["easy", "hard"], default=None, metavar="LEVEL",
                    help="with --learned: train one model on the phantoms of these levels side by side "
                         "(needs --rescale modes for more than one) and apply it to every level")
    ap.add_argument("--keep-models", type=Path, default=None, metavar="DIR",
                    help="keep the --learned models (particles-LEVEL.onnx) in DIR")
    ap.add_argument("--use-models", type=Path, default=None, metavar="DIR",
                    help="with --learned: apply DIR/particles-LEVEL.onnx instead of training")
    ap.add_argument("--builtin", action="store_true",
                    help="with --learned: apply the model volmla ships (builtin:particles) instead of training; with --speed: also time the CT through it")
    ap.add_argument("--model-level", choices=["easy", "hard"], default=None,
                    help="with --use-models: the level whose model is applied to every level's scans")
    ap.add_argument("--fov", action="store_true",
                    help="scans with a zero-filled cylindrical field of view, with and without a container wall "
                         "(particles_fov.json)")
    ap.add_argument("--demo-family", action="store_true",
                    help="the demo's phantom generator instead of crushed ore (particles_demo_family.json)")
    add_set_option(ap)
    args = ap.parse_args(argv)
    args.set = parse_set(ap, args.set)
    if args.limits:
        return limits(args)
    if args.learned:
        return learned(args)
    if args.demo_family:
        return demo_family(args)
    if args.fov:
        return fov(args)
    if args.speed:
        name = "particles_speed.json" if args.speed == 384 else f"particles_speed_{args.speed}.json"
        if args.builtin:
            name = name.replace("particles_speed", "particles_speed_builtin")
        return speed(args.speed, workers=args.workers, out=RESULTS / name, builtin=args.builtin)
    if args.quick:
        args.shape, args.seeds, args.levels = 64, [0], ["easy"]
        if args.out == RESULTS / "particles.json":
            args.out = RESULTS / "particles_quick.json"
    snow, snow_note = (None, "skipped (--no-snow)") if args.no_snow else _snow()
    t0 = time.perf_counter()
    rows = []
    for level in args.levels:
        for seed in args.seeds:
            rows.extend(run_case(args.shape, seed, level, snow, args.set))
    summary = summarise(rows)
    table = _table(summary)
    print(table)
    return _write(args.out, {"benchmark": "particles", "shape": [args.shape] * 3, "seeds": args.seeds,
                             "levels": args.levels, "overrides": args.set, "iou": 0.8, "exclude_border": True,
                             "peer": snow_note}, t0=t0, rows=rows, summary=summary, table=table)


if __name__ == "__main__":
    raise SystemExit(main())
