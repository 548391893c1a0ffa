"""Simulated breakage: speed on a core volume, and agreement with known answers.

Measures, in one run on one machine:

1. **speed**: a drill-core phase volume (a cylinder of rock in a cube, void outside; a
   Laguerre grain texture at a Rosin-Rammler law, phases quartz/feldspar/sulphide
   0.55/0.35/0.10 drawn per grain) is written to OME-Zarr and broken by
   :func:`volmla.breakage.breakage` on an embedded cluster of two worker processes (as
   ``volmla breakage`` runs) at three grind sizes with five realisations each (the
   issue's target: 512^3 in under 10 minutes on this 2-core machine; grains of P80
   ``size / 20`` voxels, grind sizes 8, 16 and 32 voxels); the wall time and the mean
   time of one realisation;
2. **analytic truth, voxel texture**: i.i.d. voxels (a Boolean texture at voxel scale)
   broken at random: LD of each realisation against the exact expectation given its
   fragment sizes (:func:`volmla.breakage.truth.bernoulli_ld`), as z-scores;
3. **analytic truth, grain texture**: a texture made by the same fracture law (Laguerre
   cells at a Rosin-Rammler law, one phase per cell drawn i.i.d.) broken at random: LD
   per realisation against the exact expectation given the fragments and the grains
   (:func:`volmla.breakage.truth.grain_ld`; each realisation draws the grains' phases
   afresh, as the truth averages over them), and whether the 95 % interval of the
   differences over the realisations holds 0;
4. **modal mineralogy** before and after breakage (exact), **chunk invariance** over
   three chunkings (equal labels), and the **realised P80** of each realisation against
   its target;
5. **size distribution**: the law fitted to the fragments (:func:`volmla.breakage.fit_size_law`:
   P80 and uniformity ``m``, the truncation at 3 voxels kept) against the requested law,
   for Rosin-Rammler and Gates-Gaudin-Schuhmann laws of several ``m`` (cells of two
   calibrated seed sets in a cube), and per realisation of the speed run;
6. **crushed-ore phantom**: an unbroken texture (Laguerre grains, phases i.i.d. per grain)
   is broken with law L by an independent implementation (the power diagram as a 4-D
   nearest-neighbour query through scipy's cKDTree, pieces by cc3d on the whole array,
   liberation by size in NumPy) into "truth" particles, several truth draws; volmla breaks
   the same texture with L (:func:`volmla.breakage.break_volume`, measured and summarised
   as the sweep does) in five realisations; per phase and size class the truth mean must
   lie in the realisations' 95 % interval (and the two means agree within sampling error).

``python benchmarks/bench_breakage.py`` runs the quick check (96^3 core, 2 grind sizes
x 2 realisations and small validation cases; about a minute); ``--size 512`` the full
target (3 x 5).
Results go to stdout and ``benchmarks/results/breakage.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "breakage.json"
FRACTIONS = (0.55, 0.35, 0.10)
NAMES = ["quartz", "feldspar", "sulphide"]


def _grain_block(block: np.ndarray, seeds: Any, index: Any, fractions: tuple[float, ...], core: bool,
                 shape: tuple[int, ...], block_info: Any = None) -> np.ndarray:
    """Grain ids -> phases of one block of the texture (and void outside the core cylinder)."""
    from volmla.breakage.fracture import KEY_STRIDE, fragment_block

    origin = [lo for lo, _ in block_info[0]["array-location"]]
    keys = fragment_block(np.ones(block.shape, np.uint8), origin, seeds, index=index)
    grain = (keys // np.uint64(KEY_STRIDE)).astype(np.int64) - 1
    u = ((grain * 2654435761 + 97531) % 1000003) / 1000003.0  # a grain's phase, from its id alone
    cut = np.cumsum(fractions)
    phases = (1 + (u[..., None] >= cut[None, :-1]).sum(-1)).astype(np.uint8)
    if core:
        y = np.arange(origin[1], origin[1] + block.shape[1])[:, None] - (shape[1] - 1) / 2
        x = np.arange(origin[2], origin[2] + block.shape[2])[None, :] - (shape[2] - 1) / 2
        inside = (y**2 + x**2) <= (0.47 * min(shape[1:])) ** 2
        phases *= inside[None].astype(np.uint8)
    return phases


def texture(size: int, grain: float, *, seed: int, chunks: int, core: bool = True) -> tuple[Any, Any]:
    """A lazy phase volume of Laguerre grains (RR law, P80 ``grain`` voxels) and its grain seeds."""
    import dask
    import dask.array as da

    from volmla.breakage.fracture import calibrate, draw_seeds, index_seeds, size_law

    law = size_law("rosin-rammler", grain, 1.5)
    cal = calibrate(law, seed=seed)
    seeds = draw_seeds((float(size),) * 3, law, seed=seed, scale=cal.scale)
    packed = dask.delayed(seeds, pure=True), dask.delayed(index_seeds(seeds), pure=True)
    base = da.zeros((size,) * 3, np.uint8, chunks=chunks)
    ph = da.map_blocks(_grain_block, base, packed[0], packed[1], FRACTIONS, core, (size,) * 3, dtype=np.uint8)
    return ph, seeds


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the cluster's workers once it closed)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def speed(size: int, grind: list[float], realisations: int, tmp: Path) -> dict[str, Any]:
    from volmla.breakage import breakage
    from volmla.engine.cluster import cluster, compute
    from volmla.io import open_volume, write_volume

    chunks = min(size, 128)
    ph, _ = texture(size, max(8.0, size / 20), seed=11, chunks=chunks)
    start = time.perf_counter()
    src = write_volume(ph, tmp / "core.zarr", voxel_size=1.0, chunks=chunks, kind="phases", phases=NAMES)
    t_write = time.perf_counter() - start
    out = tmp / "brk"
    load = os.getloadavg()  # other work on the machine slows the run: recorded beside the time
    cpu0 = _cpu_seconds()
    with cluster(workers=2, dashboard=False):
        start = time.perf_counter()
        result = breakage(open_volume(src), out_dir=out, p80=grind, realisations=realisations, seed=1)
        wall = time.perf_counter() - start
        phases = open_volume(src).data
        (counts,) = compute([(phases[..., None] == np.arange(1, 4, dtype=np.uint8)).sum(axis=(0, 1, 2))])
    cpu = _cpu_seconds() - cpu0  # this process and the cluster's worker processes (reaped at its close)
    curve = result.curve
    modal_exact = all(
        row.modal_fraction == counts[NAMES.index(row.phase)] / counts.sum() for row in curve.itertuples()
    )
    return {
        "shape": [size] * 3, "chunks": chunks, "grind_sizes_voxels": grind, "realisations": realisations,
        "write_texture_s": round(t_write, 2), "breakage_wall_s": round(wall, 2),
        "cpu_s_with_workers": round(cpu, 1),
        "per_realisation_s": round(wall / (len(grind) * realisations), 2),
        "target_s": 600, "modal_exact": bool(modal_exact),
        "liberation_degree": result.summary["liberation_degree"],
        "grind_size_at_ld": result.summary["grind_size_um"],
        "p80_measured": {f"{p:g}": [round(r["p80_measured_um"], 2) for r in result.summary["realisations"]
                                    if r["p80_um"] == p] for p in grind},
        "n_fragments": {f"{p:g}": [r["n_fragments"] for r in result.summary["realisations"] if r["p80_um"] == p]
                        for p in grind},
        "uniformity": 1.2,
        "uniformity_measured": {f"{p:g}": [round(r["uniformity_measured"], 3) for r in result.summary["realisations"]
                                           if r["p80_um"] == p] for p in grind},
        "load_average_1min": {"before": round(load[0], 2), "after": round(os.getloadavg()[0], 2)},
    }


def _broken(ph: np.ndarray, p80: float, seed: int, **kw: Any) -> tuple[np.ndarray, Any]:
    from volmla.breakage import break_volume
    from volmla.liberation.summary import liberation_summary
    from volmla.measure import measure

    lab = break_volume(ph, p80=p80, voxel_size=1.0, seed=seed, **kw).labels.compute()
    names = [str(i) for i in range(1, int(ph.max()) + 1)]
    t = measure(lab, ph, voxel_size=1.0, phase_names=names)
    return lab, (t.particles, liberation_summary(t.particles, phase_names=names))


def voxel_truth(size: int, realisations: int) -> dict[str, Any]:
    from volmla.breakage.truth import bernoulli_ld

    rng = np.random.default_rng(3)
    p = 0.95
    ph = np.where(rng.random((size,) * 3) < p, 1, 2).astype(np.uint8)
    rows = []
    for r in range(realisations):
        _, (pdf, summary) = _broken(ph, 4.0, 100 + r)
        inner = pdf[~pdf["touches_border"]]
        truth, sd = bernoulli_ld(inner["volume_voxels"].to_numpy(), p)
        ld = summary["liberation_degree"]["1"]
        rows.append({"measured": round(ld, 4), "truth": round(truth, 4), "sd": round(sd, 4), "z": round((ld - truth) / sd, 2)})
    return {"p": p, "p80_voxels": 4.0, "shape": [size] * 3, "realisations": rows,
            "max_abs_z": max(abs(r["z"]) for r in rows)}


def grain_truth(size: int, realisations: int) -> dict[str, Any]:
    """Grains made by the fracture law itself, broken at random: LD against its exact expectation."""
    import pandas as pd
    from scipy import stats

    from volmla.breakage.fracture import KEY_STRIDE, calibrate, draw_seeds, fragment_block, size_law
    from volmla.breakage.truth import grain_ld

    law = size_law("rosin-rammler", 8.0, 1.5)
    cal = calibrate(law, seed=5)
    seeds = draw_seeds((float(size),) * 3, law, seed=5, scale=cal.scale)
    grains = (fragment_block(np.ones((size,) * 3, np.uint8), (0, 0, 0), seeds) // np.uint64(KEY_STRIDE)).astype(np.int64)
    rng = np.random.default_rng(8)
    p = 0.6
    out: dict[str, Any] = {"p": p, "grain_p80_voxels": 8.0, "shape": [size] * 3, "by_grind": {}}
    for p80 in (4.0, 8.0, 16.0):
        rows = []
        for r in range(realisations):
            # each realisation: a new draw of the grains' phases (the truth is over those) and a new fracture
            ph = np.where(rng.random(int(grains.max()) + 1) < p, 1, 2).astype(np.uint8)[grains]
            lab, (pdf, summary) = _broken(ph, p80, 200 + r)
            inner = pdf.loc[~pdf["touches_border"], "particle_id"].to_numpy()
            keep = np.isin(lab, inner)
            pieces = pd.DataFrame({"fragment": lab[keep], "grain": grains[keep]}).value_counts().rename("voxels").reset_index()
            truth = grain_ld(pieces, p)
            rows.append({"measured": summary["liberation_degree"]["1"], "truth": truth})
        d = np.array([row["measured"] - row["truth"] for row in rows])
        half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
        out["by_grind"][f"{p80:g}"] = {
            "ld_measured_mean": round(float(np.mean([row["measured"] for row in rows])), 4),
            "ld_truth_mean": round(float(np.mean([row["truth"] for row in rows])), 4),
            "diff_mean": round(float(d.mean()), 4), "diff_ci95_half": round(half, 4),
            "truth_in_interval": bool(abs(d.mean()) <= half) if d.size > 1 else None,
        }
    return out


def chunk_invariance(size: int) -> dict[str, Any]:
    import dask.array as da

    from volmla.breakage import break_volume

    ph, _ = texture(size, 6.0, seed=4, chunks=size)
    arr = ph.compute()
    runs = {}
    for chunks in ((size, size, size), (size // 3, size // 2, size), (1, size, size)):
        f = break_volume(da.from_array(arr, chunks=chunks), p80=7.0, voxel_size=1.0, seed=9, boundary_weight=0.5,
                         detachment=0.2)
        runs[str(chunks)] = f.labels.compute()
    ref = next(iter(runs.values()))
    return {"shape": [size] * 3, "chunkings": list(runs), "equal": all(np.array_equal(v, ref) for v in runs.values())}


def spread(window: int) -> dict[str, Any]:
    """The law fitted to the cells of two calibrated seed sets (P80 12 voxels) in a cube, per requested law."""
    from volmla.breakage.fracture import (
        calibrate,
        draw_seeds,
        fit_size_law,
        fragment_block,
        interior_cells,
        size_law,
    )

    rows = []
    for law, m in (("rosin-rammler", 0.8), ("rosin-rammler", 1.2), ("rosin-rammler", 1.5), ("rosin-rammler", 3.0),
                   ("gates-gaudin-schuhmann", 0.8), ("gates-gaudin-schuhmann", 1.5)):
        slaw = size_law(law, 12.0, m)
        cal = calibrate(slaw, seed=1)
        vols, exts = [], []
        for s in (31, 32):
            seeds = draw_seeds((float(window),) * 3, slaw, seed=s, scale=cal.scale)
            v, e = interior_cells(fragment_block(np.ones((window,) * 3, np.uint8), (0, 0, 0), seeds))
            vols.append(v)
            exts.append(e)
        fit = fit_size_law(np.concatenate(vols), law, d_lo=3.0, extents=np.concatenate(exts), shape=(window,) * 3)
        rows.append({"law": law, "m": m, "p80_voxels": 12.0, "m_measured": round(fit.m, 3),
                     "p80_measured": round(fit.p80, 2), "fit_rms_log_size": round(fit.rms, 3),
                     "n_cells": int(sum(v.size for v in vols))})
    return {"window": [window] * 3, "fits": rows}


def _power_cells(shape: tuple[int, ...], seeds: Any) -> np.ndarray:
    """Seed index of every voxel by power distance, independently of volmla's kernel: a 4-D nearest
    neighbour (|x - c|^2 - r^2 + R = |(x, 0) - (c, sqrt(R - r^2))|^2)."""
    from scipy.spatial import cKDTree

    lift = np.sqrt(float(seeds.r2.max()) - seeds.r2)
    tree = cKDTree(np.column_stack([seeds.centres, lift]))
    grid = np.indices(shape).reshape(3, -1).T.astype(float)
    _, idx = tree.query(np.column_stack([grid, np.zeros(len(grid))]))
    return np.asarray(idx, np.int64).reshape(shape)


def _ld_by_size(particles: np.ndarray, ph: np.ndarray, phases: int, edges: np.ndarray) -> dict[int, np.ndarray]:
    """Per phase and ESD class: LD over the particles off the border (NumPy and SciPy only), and counts."""
    from scipy import ndimage as ndi

    n = int(particles.max())
    counts = np.bincount(particles.ravel() * (phases + 1) + ph.ravel(), minlength=(n + 1) * (phases + 1))
    counts = counts.reshape(n + 1, phases + 1)[1:, 1:].astype(float)
    boxes = ndi.find_objects(particles)
    border = np.array([any(sl.start == 0 or sl.stop == dim for sl, dim in zip(b, ph.shape, strict=True)) for b in boxes])
    vol = counts.sum(axis=1)
    keep = ~border & (vol > 0)
    counts, vol = counts[keep], vol[keep]
    cls = np.searchsorted(edges, np.cbrt(6.0 * vol / np.pi), side="right") - 1
    out: dict[int, np.ndarray] = {}
    for i in range(phases):
        free = counts[:, i] / vol > 0.99
        ld = np.full(len(edges) - 1, np.nan)
        num = np.zeros(len(edges) - 1)
        for c in range(len(edges) - 1):
            sel = cls == c
            total = counts[sel, i].sum()
            num[c] = int(sel.sum())
            if total > 0:
                ld[c] = counts[sel & free, i].sum() / total
        out[i + 1] = np.stack([ld, num])
    return out


def phantom(size: int, p80: float, realisations: int, truth_draws: int) -> dict[str, Any]:
    """The crushed-ore phantom: truth particles from an independent breakage with law L vs volmla's."""
    import cc3d
    from scipy import stats

    from volmla.breakage import break_volume
    from volmla.breakage.fracture import calibrate, draw_seeds, size_law
    from volmla.liberation.summary import liberation_summary
    from volmla.measure import measure

    ph = np.asarray(texture(size, 1.5 * p80, seed=21, chunks=size, core=False)[0].compute())
    law = size_law("rosin-rammler", p80, 1.2)
    cal = calibrate(law, seed=77)
    edges = np.geomspace(3.0, 8.0 * p80, 9)
    names = NAMES
    truth = []
    for k in range(truth_draws):
        seeds = draw_seeds((float(size),) * 3, law, seed=5000 + k, scale=cal.scale)
        cells = _power_cells(ph.shape, seeds) + 1
        pieces = cc3d.connected_components(cells.astype(np.uint32), connectivity=26)
        truth.append(_ld_by_size(np.asarray(pieces, np.int64), ph, 3, edges))
    runs = []
    for r in range(realisations):
        lab = break_volume(ph, p80=p80, voxel_size=1.0, seed=9000 + r, calibration=cal).labels.compute()
        t = measure(lab, ph, voxel_size=1.0, phase_names=names)
        by = liberation_summary(t.particles, phase_names=names, size_edges=edges)["liberation_by_size"]
        runs.append({i + 1: np.array([[c["ld"] if c["ld"] is not None else np.nan for c in by[n]],
                                       [c["n"] for c in by[n]]]) for i, n in enumerate(names)})
    classes = []
    for i, n in enumerate(names, start=1):
        for c in range(len(edges) - 1):
            v = np.array([run[i][0, c] for run in runs], float)
            tr = np.array([d[i][0, c] for d in truth], float)
            n_min = min(min(run[i][1, c] for run in runs), min(d[i][1, c] for d in truth))
            if n_min < 30 or not (np.isfinite(v).all() and np.isfinite(tr).all()):
                continue
            half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
            se = float(np.sqrt(v.var(ddof=1) / v.size + tr.var(ddof=1) / tr.size))
            classes.append({"phase": n, "esd_lo": round(float(edges[c]), 2), "esd_hi": round(float(edges[c + 1]), 2),
                            "n_min": int(n_min), "ld_volmla_mean": round(float(v.mean()), 4),
                            "ld_volmla_ci95": [round(max(0.0, float(v.mean()) - half), 4),
                                               round(min(1.0, float(v.mean()) + half), 4)],
                            "ld_truth_mean": round(float(tr.mean()), 4),
                            "truth_in_interval": bool(abs(tr.mean() - v.mean()) <= half),
                            "z": round(float((v.mean() - tr.mean()) / se), 2) if se > 0 else None})
    return {"shape": [size] * 3, "grain_p80_voxels": 1.5 * p80, "p80_voxels": p80, "law": "rosin-rammler", "m": 1.2,
            "volmla_realisations": realisations, "truth_draws": truth_draws, "classes": classes,
            "n_classes": len(classes), "n_truth_in_interval": sum(c["truth_in_interval"] for c in classes),
            "max_abs_z": max((abs(c["z"]) for c in classes if c["z"] is not None), default=None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96, help="edge of the core volume (96: quick; 512: the target)")
    ap.add_argument("--realisations", type=int, default=None, help="per grind size (default 2 quick, 5 full)")
    ap.add_argument("--skip-validation", action="store_true", help="only the speed run")
    ap.add_argument("--grind", type=str, default=None, help="comma-separated grind sizes (voxels) instead of the mode's")
    ap.add_argument("--output", type=Path, default=RESULTS, help="JSON to write (default benchmarks/results/breakage.json)")
    args = ap.parse_args(argv)
    full = args.size >= 256
    grind = [float(v) for v in args.grind.split(",")] if args.grind else ([8.0, 16.0, 32.0] if full else [6.0, 12.0])
    reps = args.realisations or (5 if full else 2)
    result: dict[str, Any] = {"machine": platform.platform(), "python": sys.version.split()[0],
                              "mode": "full" if full else "quick"}
    with tempfile.TemporaryDirectory(prefix="volmla-bench-breakage-") as tmp:
        result["speed"] = speed(args.size, grind, reps, Path(tmp))
    print(json.dumps(result["speed"], indent=1), flush=True)
    if not args.skip_validation:
        small = 48 if not full else 96
        result["voxel_truth"] = voxel_truth(small, 3)
        result["grain_truth"] = grain_truth(small, 5)
        result["chunk_invariance"] = chunk_invariance(48)
        result["size_distribution"] = spread(160 if full else 96)
        result["phantom"] = phantom(96 if full else 64, 8.0 if full else 6.0, 5, 8 if full else 5)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: v for k, v in result.items() if k != "speed"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
