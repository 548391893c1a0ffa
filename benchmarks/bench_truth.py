"""Liberation against the truth on realistic crushed-ore phantoms, with the TRUE particles.

For each seed and difficulty level of :func:`volmla.synthetic.crushed_ore`:

1. a random forest (:func:`volmla.segment.forest.train_random_forest`, default options)
   is trained on ``ore.intensity`` with sparse truth labels (phase + 1) on the planes
   ``z = n/4, n/2, 3n/4`` and predicts every voxel;
2. the particle table is measured on the TRUE particles (``ore.particles``) with
   (a) the forest's phases as they are (integer counts: today's path), and
   (b) the same phases cleaned per grain (:func:`volmla.segment.regions.clean_phases`)
   and measured with partial-volume apportioning (``intensity=``), (r) the phases
   classified by region (:func:`volmla.segment.pooled.region_phases`, levels from the
   same sparse labels; the default path of ``segment_phases`` with labels) and measured
   with apportioning; (o) the same with the two opt-in steps of
   :func:`~volmla.segment.pooled.region_phases` (``per_particle=True, refine=True``:
   smaller regions in small particles, levels re-measured on the scan), measured beside
   the default; (m) the same with the Potts field (``mrf=True``,
   :func:`volmla.segment.mrf.potts_phases`) between the pooled classes and the cleaning
   (``regions_mrf``); (t) the true phases with apportioning give the floor that the scan
   resolution itself sets;
3. per phase: |LD error| and |modal error| against ``ore.liberation`` (exact, from the
   fine grid), free-particle recall (truly free particles of the phase measured free of
   it) and false-free count (particles measured free of the phase that are not);
4. end to end (``end_to_end``): particles from the CT (:func:`volmla.particles.label_particles`
   defaults), phases by region inside them and the contacts refined by those phases
   (:func:`volmla.particles.refine_contacts`, as ``volmla run`` does), LD and modal mineralogy against the truth
   (no per-particle matching: the particles are volmla's own);
5. the purity of the forest's grains by size (the share of components whose majority
   true phase differs from their phase), the evidence behind the cleaning threshold;
6. runtime on one larger case (``--timing-shape``, default 128^3, hard level, seed 0):
   the forest (train + predict) against the region classification (levels + phases),
   both computed to NumPy in the same run.

Run: ``python benchmarks/bench_truth.py`` (3 seeds x 2 levels at 80^3 and the 128^3
timing, several minutes on two cores: the forest's training and prediction dominate);
``--quick`` for one small case and no timing; ``--regions-only`` measures only the region
paths (``regions_pv``, ``regions_mrf``) and the truth floor on the true particles (no forest,
no end to end, no timing; write it elsewhere with ``--output``); ``--pv-geometry`` asks
whether the partial-volume correction's edges are what fails end to end: the default
region path with its level map's edges from the particles (binary) against the same with
the phantom's true sub-voxel solid fraction (``region_phases(solid_fraction=)``), on the
true particles and on the CT's own (default ``--output``: ``results/truth_pv_geometry.json``).
``--end-to-end-only`` splits the end-to-end error between the particles and the phases
(and records, per phase, the 95 % bootstrap interval of LD that the report would show and
whether it holds the truth; ``ld_ci_coverage_<level>`` in the summary):
the CT's own particles with the region phases (the default path; ``end_to_end_no_contacts``
the same without the contact refinement), with the TRUE phases (the particles' share; the
contacts refined by the true phases), and the true particles with the region phases (the phases'
share), per phase with signed LD errors (default ``--output``: ``results/truth_e2e.json``;
e.g. ``--levels hard --seeds 0 1 2 3 4 5 6 7 8``); ``--depth N`` runs it with the region
pooling's ``depth=N`` (``results/truth_e2e_depth2.json``, ``truth_e2e_depth3.json``);
``--set KEY=VALUE`` (repeatable) replaces a phantom parameter of the level (e.g.
``--set contrast=2 --set radius=8``: where the default path meets its targets);
``--particles-model DIR/particles-LEVEL.onnx`` takes the CT's own particles from a particle
U-Net's interior/boundary map (``bench_particles.py --learned --keep-models DIR``).
``--psf-sweep`` runs the default region path on the true particles with its PSF estimated
and fixed at each of :data:`PSF_SWEEP` (or ``--psfs``), and records per phase how far the
corrected grey of surface voxels lies from the interior's (default ``--output``:
``results/truth_psf.json``): how much of the remaining phase error the PSF estimate
carries; with ``--own`` the same end to end, on the CT's own particles
(``results/truth_psf_own.json``).
``--fov`` runs the path end to end on the scan with a zero-filled cylindrical field of
view (the inscribed circle), the field of view found (the default) and ignored, against
the truth over the particles the circle does not cut, beside the scan without one
(:func:`run_fov_case`; default ``--output``: ``results/truth_fov.json``).
``--evidence`` measures what the grey holds about small intergrown particles: the
chi-square gain of their true grain labelling over one phase, against the null of a
per-particle plane-split test on truly free particles (:func:`run_evidence_case`; default
``--output``: ``results/truth_evidence.json``).
Writes ``benchmarks/results/truth.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _phantom_set import add_set_option, parse_set  # noqa: E402

NAMES = ["quartz", "feldspar", "pyrite"]
KEYS = ("today", "cleaned_pv", "regions_pv", "regions_opt_pv", "regions_mrf", "truth_phases_pv")
REGION_KEYS = ("regions_pv", "regions_mrf", "truth_phases_pv")
SIZE_BINS = [1, 5, 10, 20, 30, 40, 60, 100, 260, 10**12]


def _sparse_labels(phases: np.ndarray) -> np.ndarray:
    n = phases.shape[0]
    labels = np.zeros(phases.shape, np.uint8)
    for z in (n // 4, n // 2, 3 * n // 4):
        labels[z] = phases[z] + 1
    return labels


def _scores(df: pd.DataFrame, truth_table: pd.DataFrame, truth: dict[str, Any]) -> dict[str, Any]:
    from volmla.liberation import liberation_summary

    summary = liberation_summary(df, phase_names=NAMES)
    keep = truth_table.set_index("particle_id")
    inner = keep.index[~keep["touches_border"].to_numpy(bool)]
    d = df.set_index("particle_id").reindex(inner)
    solid = d["vfrac_solid"].to_numpy(np.float64)
    out: dict[str, Any] = {}
    for p in NAMES:
        ld, ld_true = summary["liberation_degree"][p], truth["liberation_degree"][p]
        modal, modal_true = summary["modal_mineralogy"][p], truth["modal_mineralogy"][p]
        free_meas = np.nan_to_num(d[f"vfrac_{p}"].to_numpy(np.float64)) > 0.99 * np.nan_to_num(solid)
        free_true = keep.loc[inner, "free_phase"].to_numpy() == p
        out[p] = {
            "ld": ld, "ld_true": ld_true, "ld_error": None if ld is None else abs(ld - ld_true),
            "modal": modal, "modal_true": modal_true, "modal_error": None if modal is None else abs(modal - modal_true),
            "free_true": int(free_true.sum()),
            "free_recall": float((free_meas & free_true).sum() / free_true.sum()) if free_true.any() else None,
            "false_free": int((free_meas & ~free_true).sum()),
        }
    out["max_ld_error"] = max(out[p]["ld_error"] or 0.0 for p in NAMES)
    out["max_modal_error"] = max(out[p]["modal_error"] or 0.0 for p in NAMES)
    return out


def _purity(particles: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    """Components of the predicted phases per size class: how many are wrong (their
    majority true phase differs), and the true grains' volume share in the class."""
    from volmla.particles import label_grains

    def components(ph: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = np.asarray(label_grains(particles, ph).labels.compute()).ravel()
        _, inv, cnt = np.unique(g, return_inverse=True, return_counts=True)
        return g, inv, cnt

    g, inv, cnt = components(predicted)
    right = np.bincount(inv, weights=(predicted == truth).ravel().astype(np.float64)) / cnt
    if g.min() == 0:  # the background is not a component
        cnt, right = cnt[1:], right[1:]
    sizes = cnt
    tg = np.asarray(label_grains(particles, truth).labels.compute()).ravel()
    tcnt = np.unique(tg[tg > 0], return_counts=True)[1]
    rows = []
    for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:], strict=True):
        s = (sizes >= lo) & (sizes < hi)
        t = (tcnt >= lo) & (tcnt < hi)
        rows.append({"lo": lo, "hi": hi, "components": int(s.sum()), "wrong": int((right[s] < 0.5).sum()),
                     "true_grains": int(t.sum()), "true_volume_share": float(tcnt[t].sum() / max(tcnt.sum(), 1))})
    return rows


def _own_particles(intensity: np.ndarray, model: Path | None = None) -> np.ndarray:
    """The CT's own particles (:func:`volmla.particles.label_particles` defaults), in memory;
    with ``model`` (a particle U-Net's ONNX file) from its interior/boundary map instead."""
    from volmla.particles import label_particles

    if model is None:
        return np.asarray(label_particles(intensity, voxel_size=1.0).labels.compute())
    from volmla.segment.infer import segment

    classes = np.asarray(segment(intensity, model=model).phases.compute())
    return np.asarray(label_particles(classes, threshold="interior", voxel_size=1.0).labels.compute())


def _refined(particles: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """The particles' contacts refined by the phases, as ``volmla run`` does after the phases."""
    from volmla.particles import refine_contacts

    return np.asarray(refine_contacts(particles, phases).labels.compute())


def _overall(df: pd.DataFrame, truth: dict[str, Any]) -> dict[str, Any]:
    """|LD error| and |modal error| per phase of a table on other particles than the truth's
    (end to end: the particles are volmla's own, so no per-particle matching)."""
    from volmla.liberation import liberation_summary
    from volmla.liberation.uncertainty import bootstrap

    summary = liberation_summary(df, phase_names=NAMES)
    ci = bootstrap(df, phase_names=NAMES, n_boot=200, seed=0)["liberation_degree"]
    out: dict[str, Any] = {"n_particles": summary["n_particles"]}
    for p in NAMES:
        ld, modal = summary["liberation_degree"][p], summary["modal_mineralogy"][p]
        lo, hi = ci[p]["lo"], ci[p]["hi"]
        covered = None if ld is None or lo is None or hi is None else bool(lo <= truth["liberation_degree"][p] <= hi)
        out[p] = {"ld": ld, "ld_true": truth["liberation_degree"][p], "ld_ci": [lo, hi], "ld_ci_covers_truth": covered,
                  "ld_error": None if ld is None else abs(ld - truth["liberation_degree"][p]),
                  "ld_signed_error": None if ld is None else ld - truth["liberation_degree"][p],
                  "modal": modal, "modal_true": truth["modal_mineralogy"][p],
                  "modal_error": None if modal is None else abs(modal - truth["modal_mineralogy"][p])}
    out["max_ld_error"] = max(out[p]["ld_error"] or 0.0 for p in NAMES)
    out["max_modal_error"] = max(out[p]["modal_error"] or 0.0 for p in NAMES)
    return out


def run_regions_case(shape: int, seed: int, level: str) -> dict[str, Any]:
    """The region paths only (default and ``mrf=True``) and the truth floor, on the true particles."""
    from volmla.measure import particle_table
    from volmla.segment.pooled import region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=seed, level=level)
    labels = _sparse_labels(ore.phases)
    t0 = time.perf_counter()
    regions = np.asarray(region_phases(ore.intensity, ore.particles, labels).compute())
    t1 = time.perf_counter()
    with_field = np.asarray(region_phases(ore.intensity, ore.particles, labels, mrf=True).compute())
    t2 = time.perf_counter()
    inside = ore.particles > 0
    out: dict[str, Any] = {"shape": shape, "seed": seed, "level": level, "n_particles": int(ore.params["n_particles"]),
                           "voxel_accuracy_in_particles": {
                               k: float((v[inside] == ore.phases[inside]).mean())
                               for k, v in (("regions", regions), ("regions_mrf", with_field))}}
    for key, ph in (("regions_pv", regions), ("regions_mrf", with_field), ("truth_phases_pv", ore.phases)):
        table = particle_table(ore.particles, ph, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
        out[key] = _scores(table, ore.table, ore.liberation)
    out["seconds"] = {"regions": t1 - t0, "regions_mrf": t2 - t1}
    return out


def run_case(shape: int, seed: int, level: str, *, min_grain: int, workdir: Path) -> dict[str, Any]:
    from volmla.measure import particle_table
    from volmla.segment.forest import random_forest_segment, save_random_forest, train_random_forest
    from volmla.segment.pooled import region_phases
    from volmla.segment.regions import clean_phases
    from volmla.synthetic import crushed_ore

    t0 = time.perf_counter()
    ore = crushed_ore(shape=shape, seed=seed, level=level)
    t1 = time.perf_counter()
    forest = train_random_forest(ore.intensity, _sparse_labels(ore.phases), seed=seed)
    model = save_random_forest(forest, workdir / f"rf_{level}_{seed}.onnx")
    predicted = np.asarray(random_forest_segment(ore.intensity, model=model).compute())
    t2 = time.perf_counter()
    today = particle_table(ore.particles, predicted, voxel_size=1.0, phase_names=NAMES)
    cleaned = np.asarray(clean_phases(predicted, ore.particles, ore.intensity, min_grain=min_grain).compute())
    ours = particle_table(ore.particles, cleaned, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
    t3 = time.perf_counter()
    regions = np.asarray(region_phases(ore.intensity, ore.particles, _sparse_labels(ore.phases)).compute())
    by_region = particle_table(ore.particles, regions, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
    t4 = time.perf_counter()
    optional = np.asarray(region_phases(ore.intensity, ore.particles, _sparse_labels(ore.phases), per_particle=True,
                                        refine=True).compute())
    by_region_opt = particle_table(ore.particles, optional, voxel_size=1.0, phase_names=NAMES,
                                   intensity=ore.intensity)
    t4b = time.perf_counter()
    with_field = np.asarray(region_phases(ore.intensity, ore.particles, _sparse_labels(ore.phases), mrf=True).compute())
    by_field = particle_table(ore.particles, with_field, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
    t4c = time.perf_counter()
    # end to end: particles from the CT (label_particles defaults), phases by region in them
    own = _own_particles(ore.intensity)
    own_phases = np.asarray(region_phases(ore.intensity, own, _sparse_labels(ore.phases)).compute())
    end_to_end = particle_table(_refined(own, own_phases), own_phases, voxel_size=1.0, phase_names=NAMES,
                                intensity=ore.intensity)
    t5 = time.perf_counter()
    floor = particle_table(ore.particles, ore.phases, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
    inside = ore.particles > 0
    acc = {k: float((v[inside] == ore.phases[inside]).mean())
           for k, v in (("forest", predicted), ("cleaned", cleaned), ("regions", regions), ("regions_opt", optional),
                        ("regions_mrf", with_field))}
    return {
        "shape": shape, "seed": seed, "level": level, "n_particles": int(ore.params["n_particles"]),
        "voxel_accuracy_in_particles": acc,
        "today": _scores(today, ore.table, ore.liberation),
        "cleaned_pv": _scores(ours, ore.table, ore.liberation),
        "regions_pv": _scores(by_region, ore.table, ore.liberation),
        "regions_opt_pv": _scores(by_region_opt, ore.table, ore.liberation),
        "regions_mrf": _scores(by_field, ore.table, ore.liberation),
        "truth_phases_pv": _scores(floor, ore.table, ore.liberation),
        "end_to_end": _overall(end_to_end, ore.liberation),
        "grain_purity": _purity(ore.particles, predicted, ore.phases),
        "seconds": {"phantom": t1 - t0, "forest": t2 - t1, "clean_and_measure": t3 - t2, "regions_and_measure": t4 - t3,
                    "regions_opt_and_measure": t4b - t4, "regions_mrf_and_measure": t4c - t4b,
                    "end_to_end": t5 - t4c},
    }


def time_case(shape: int, *, workdir: Path) -> dict[str, Any]:
    """Step 5: seconds of the forest (train + predict) and of the region path."""
    from volmla.segment.forest import random_forest_segment, save_random_forest, train_random_forest
    from volmla.segment.pooled import region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=0, level="hard")
    labels = _sparse_labels(ore.phases)
    t0 = time.perf_counter()
    forest = train_random_forest(ore.intensity, labels, seed=0)
    model = save_random_forest(forest, workdir / "rf_timing.onnx")
    predicted = np.asarray(random_forest_segment(ore.intensity, model=model).compute())
    t1 = time.perf_counter()
    regions = np.asarray(region_phases(ore.intensity, ore.particles, labels).compute())
    t2 = time.perf_counter()
    inside = ore.particles > 0
    return {"shape": shape, "level": "hard", "seed": 0, "forest_seconds": t1 - t0, "regions_seconds": t2 - t1,
            "voxel_accuracy_in_particles": {"forest": float((predicted[inside] == ore.phases[inside]).mean()),
                                            "regions": float((regions[inside] == ore.phases[inside]).mean())}}


def _table(cases: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> str:
    lines = ["| level | seed | method | LD err q/f/py | modal err q/f/py | free recall q/f/py | false free q/f/py |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        for key in keys:
            s = c[key]

            def fmt(field: str, spec: str, s: dict[str, Any] = s) -> str:
                return " / ".join("-" if s[p][field] is None else format(s[p][field], spec) for p in NAMES)

            lines.append(f"| {c['level']} | {c['seed']} | {key} | {fmt('ld_error', '.3f')} | {fmt('modal_error', '.4f')} "
                         f"| {fmt('free_recall', '.2f')} | {fmt('false_free', 'd')} |")
    return "\n".join(lines)


DEFAULT_OUTPUT = Path(__file__).parent / "results" / "truth.json"


def _summary(cases: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {key: {"max_ld_error": max(c[key]["max_ld_error"] for c in cases),
                 "mean_max_ld_error": float(np.mean([c[key]["max_ld_error"] for c in cases])),
                 "max_modal_error": max(c[key]["max_modal_error"] for c in cases)} for key in keys}
    for key in keys:  # how often the report's 95 % bootstrap interval of LD holds the truth, per level
        for level in sorted({c["level"] for c in cases}):
            hits = [c[key][p].get("ld_ci_covers_truth") for c in cases if c["level"] == level for p in NAMES]
            hits = [h for h in hits if h is not None]
            if hits:
                out[key][f"ld_ci_coverage_{level}"] = float(np.mean(hits))
    return out


def run_geometry_case(shape: int, seed: int, level: str) -> dict[str, Any]:
    """The default region path with binary and with true sub-voxel edges in its
    partial-volume correction, on the true particles and on the CT's own."""
    from volmla.measure import particle_table
    from volmla.segment.pooled import region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=seed, level=level)
    labels = _sparse_labels(ore.phases)
    own = _own_particles(ore.intensity)
    out: dict[str, Any] = {"shape": shape, "seed": seed, "level": level}
    for name, particles in (("true_particles", ore.particles), ("own_particles", own)):
        for edges, fraction in (("binary", None), ("true_fraction", ore.solid_fraction)):
            ph = np.asarray(region_phases(ore.intensity, particles, labels, solid_fraction=fraction).compute())
            table = particle_table(particles, ph, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
            out[f"{name}_{edges}"] = _overall(table, ore.liberation)
    return out


def run_e2e_case(shape: int, seed: int, level: str, *, depth: int | None = None,
                 overrides: dict[str, float] | None = None, particles_model: Path | None = None) -> dict[str, Any]:
    """End to end, and the same with the true phases or the true particles put back
    (``depth``: the region pooling's, :data:`volmla.segment.pooled.DEFAULT_DEPTH` if None;
    ``overrides``: phantom parameters that replace the level's, e.g. ``{"contrast": 2.0}``)."""
    from volmla.measure import particle_table
    from volmla.segment.pooled import region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=seed, level=level, **(overrides or {}))
    labels = _sparse_labels(ore.phases)
    own = _own_particles(ore.intensity, particles_model)
    kw = {} if depth is None else {"depth": depth}
    own_phases = np.asarray(region_phases(ore.intensity, own, labels, **kw).compute())
    true_particle_phases = np.asarray(region_phases(ore.intensity, ore.particles, labels, **kw).compute())
    own_true = np.where(own > 0, ore.phases, 0).astype(np.uint8)
    out: dict[str, Any] = {"shape": shape, "seed": seed, "level": level, "depth": depth,
                           "overrides": dict(overrides or {}),
                           "particles_model": None if particles_model is None else str(particles_model),
                           "n_particles": {"true": int(len(ore.table)), "own": int(own.max())},
                           # voxels (the phantom's voxel size is 1 um): the particles' size against the voxel
                           "median_equivalent_radius": float(np.median(ore.table["esd_um"].to_numpy(np.float64)) / 2)}
    for key, particles, ph in (("end_to_end", _refined(own, own_phases), own_phases),
                               ("end_to_end_no_contacts", own, own_phases),
                               ("own_particles_true_phases", _refined(own, own_true), own_true),
                               ("true_particles_region_phases", ore.particles, true_particle_phases)):
        table = particle_table(particles, ph, voxel_size=1.0, phase_names=NAMES, intensity=ore.intensity)
        out[key] = _overall(table, ore.liberation)
    return out


FOV_KEYS = ("reference", "fov", "fov_blind")


def run_fov_case(shape: int, seed: int, level: str) -> dict[str, Any]:
    """End to end on the scan as a reconstruction writes it: 0 outside the inscribed circle.

    The phantom is :func:`volmla.synthetic.crushed_ore` with ``field_of_view=True``: its
    truth is over the particles the circle leaves whole (a particle with a fine voxel
    beyond it touches the border); the sparse labels lie inside it (a polished section of
    the sample). Three ways, each end to end (own particles,
    phases by region, contacts refined): ``fov`` as ``volmla run`` does it (the field of
    view found, the outside set to the void level, :func:`volmla.preprocess.fov.void_outside`,
    and the particles told of it), ``fov_blind`` the same with ``field_of_view=None`` (the outside read as data,
    as before), and ``reference`` the scan without a field of view against the usual truth.
    """
    import xarray as xr

    from volmla.measure import particle_table
    from volmla.particles import label_particles
    from volmla.preprocess.fov import find_field_of_view, void_outside
    from volmla.segment.pooled import region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=seed, level=level)
    cut = crushed_ore(shape=shape, seed=seed, level=level, field_of_view=True)  # the same sample, written so
    scan = cut.intensity
    y, x = np.mgrid[:shape, :shape]
    outside = np.broadcast_to(np.hypot(y - (shape - 1) / 2, x - (shape - 1) / 2) >= shape / 2, scan.shape)
    truth_fov = cut.liberation
    labels = np.where(outside, 0, _sparse_labels(ore.phases)).astype(np.uint8)
    table = cut.table
    out: dict[str, Any] = {"shape": shape, "seed": seed, "level": level,
                           "n_particles": {"true": int(len(ore.table)),
                                           "true_inside": int((~table["touches_border"].to_numpy(bool)).sum())}}
    fov = find_field_of_view(scan)
    assert fov is not None
    out["field_of_view"] = fov.as_record()
    for key, image, given, sparse, truth in (("reference", ore.intensity, "auto", _sparse_labels(ore.phases),
                                              ore.liberation),
                                             ("fov", np.asarray(void_outside(scan, fov)), fov, labels, truth_fov),
                                             ("fov_blind", scan, None, labels, truth_fov)):
        found = label_particles(image, voxel_size=1.0, field_of_view=given).labels
        own = np.asarray(found.compute())
        phases = np.asarray(region_phases(image, own, sparse, field_of_view=None if given == "auto" else given).compute())
        refined = xr.DataArray(_refined(own, phases), dims=("z", "y", "x"), attrs=dict(found.attrs))
        result = _overall(particle_table(refined, phases, voxel_size=1.0, phase_names=NAMES, intensity=image), truth)
        result["n_own"] = int(own.max())
        if any(result[p]["ld"] is None or not np.isfinite(result[p]["ld"]) for p in NAMES):
            result["max_ld_error"] = 1.0  # a phase with no LD at all (no particle holds it) is no small error
        out[key] = _finite(result)
    return out


def _finite(value: Any) -> Any:
    """NaN (an undefined figure, e.g. a bootstrap interval over too few particles) as None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _fov(args: argparse.Namespace) -> int:
    cases = []
    for level in args.levels:
        for seed in args.seeds:
            case = run_fov_case(args.shape, seed, level)
            print(f"{level} seed {seed}: max |LD error| " + ", ".join(
                f"{k} {case[k]['max_ld_error']:.3f} (modal {case[k]['max_modal_error']:.3f}, {case[k]['n_own']} "
                "particles)" for k in FOV_KEYS), file=sys.stderr, flush=True)
            cases.append(case)
    out = {"fov": True, "targets": {"max_ld_error": 0.05, "max_modal_error": 0.02},
           "summary": _summary(cases, FOV_KEYS), "cases": cases, "cpus": os.cpu_count()}
    output = args.output if args.output != DEFAULT_OUTPUT else DEFAULT_OUTPUT.with_name("truth_fov.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(json.dumps(out["summary"], indent=2))
    return 0


def _end_to_end_only(args: argparse.Namespace) -> int:
    keys = ("end_to_end", "end_to_end_no_contacts", "own_particles_true_phases", "true_particles_region_phases")
    cases = []
    for level in args.levels:
        for seed in args.seeds:
            model = None if args.particles_model is None else Path(str(args.particles_model).replace("LEVEL", level))
            case = run_e2e_case(args.shape, seed, level, depth=args.depth, overrides=args.set, particles_model=model)
            print(f"{level} seed {seed}: LD error (quartz, feldspar, pyrite) " + "; ".join(
                f"{k} " + " ".join(f"{case[k][p]['ld_signed_error']:+.3f}" for p in NAMES) for k in keys),
                file=sys.stderr, flush=True)
            cases.append(case)
    out = {"end_to_end_only": True, "targets": {"max_ld_error": 0.05, "max_modal_error": 0.02},
           "summary": _summary(cases, keys), "cases": cases, "cpus": os.cpu_count()}
    output = args.output if args.output != DEFAULT_OUTPUT else DEFAULT_OUTPUT.with_name("truth_e2e.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(json.dumps(out["summary"], indent=2))
    return 0


def _pv_geometry(args: argparse.Namespace) -> int:
    cases = []
    keys = [f"{p}_{e}" for p in ("true_particles", "own_particles") for e in ("binary", "true_fraction")]
    for level in args.levels:
        for seed in args.seeds:
            case = run_geometry_case(args.shape, seed, level)
            print(f"{level} seed {seed}: max |LD error| " + ", ".join(
                f"{k} {case[k]['max_ld_error']:.3f} (modal {case[k]['max_modal_error']:.3f})" for k in keys),
                file=sys.stderr, flush=True)
            cases.append(case)
    out = {"pv_geometry": True, "summary": _summary(cases, tuple(keys)), "cases": cases, "cpus": os.cpu_count()}
    output = args.output if args.output != DEFAULT_OUTPUT else DEFAULT_OUTPUT.with_name("truth_pv_geometry.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(json.dumps(out["summary"], indent=2))
    return 0


PSF_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9)
"""The fixed PSF sigmas (voxels) of ``--psf-sweep``, beside the estimated one."""


def run_psf_case(shape: int, seed: int, level: str, *, own: bool = False,
                 sigmas: tuple[float, ...] = PSF_SWEEP) -> dict[str, Any]:
    """The default region path with its PSF estimated and with each of ``sigmas`` fixed,
    on the true particles (``own``: on the CT's own, end to end, contacts refined by the
    phases), and per PSF the corrected grey's surface bias: the mean over a true phase's
    voxels on a particle's surface (within one voxel of the void) less the mean over its
    voxels more than three voxels inside, in noise sigmas (what the partial-volume
    correction leaves)."""
    from scipy import ndimage as ndi

    from volmla.measure import particle_table
    from volmla.segment.pooled import corrected_grey, label_levels, region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=seed, level=level)
    particles = _own_particles(ore.intensity) if own else ore.particles
    levels = label_levels(ore.intensity, _sparse_labels(ore.phases), particles=particles)
    depth = ndi.distance_transform_edt(ore.particles > 0)
    surface, deep = (ore.particles > 0) & (depth <= 1), depth > 3
    out: dict[str, Any] = {"shape": shape, "seed": seed, "level": level, "psf_true": ore.params["psf_sigma"],
                           "particles": "own" if own else "true"}
    for sigma in (None, *sigmas):
        grey = corrected_grey(ore.intensity, particles, levels, psf_sigma=sigma)
        corrected = np.asarray(grey.corrected.compute())
        ph = np.asarray(region_phases(ore.intensity, particles, levels=levels, psf_sigma=grey.psf_sigma).compute())
        table = particle_table(_refined(particles, ph) if own else particles, ph, voxel_size=1.0, phase_names=NAMES,
                               intensity=ore.intensity)
        row = _overall(table, ore.liberation)
        row["psf_sigma"] = grey.psf_sigma
        row["surface_bias_sigmas"] = {
            p: float((corrected[surface & (ore.phases == k)].mean() - corrected[deep & (ore.phases == k)].mean())
                     / levels.noise_sigma) for k, p in enumerate(NAMES, start=1)}
        out["estimated" if sigma is None else f"psf_{sigma}"] = row
    return out


def _psf_sweep(args: argparse.Namespace) -> int:
    sigmas = tuple(args.psfs)
    keys = ("estimated", *(f"psf_{s}" for s in sigmas))
    cases = []
    for level in args.levels:
        for seed in args.seeds:
            case = run_psf_case(args.shape, seed, level, own=args.own, sigmas=sigmas)
            print(f"{level} seed {seed} (true PSF {case['psf_true']}, estimated {case['estimated']['psf_sigma']}): "
                  + "; ".join(f"{k} LD {case[k]['max_ld_error']:.3f} modal {case[k]['max_modal_error']:.3f}"
                              for k in keys), file=sys.stderr, flush=True)
            cases.append(case)
    by_level = {level: {k: {"mean_max_ld_error": float(np.mean([c[k]["max_ld_error"] for c in sel])),
                            "mean_max_modal_error": float(np.mean([c[k]["max_modal_error"] for c in sel])),
                            "cases_ld_within_0.03": sum(c[k]["max_ld_error"] <= 0.03 for c in sel),
                            "cases_modal_within_0.01": sum(c[k]["max_modal_error"] <= 0.01 for c in sel)} for k in keys}
                for level in args.levels if (sel := [c for c in cases if c["level"] == level])}
    out = {"psf_sweep": True, "summary": _summary(cases, keys), "by_level": by_level, "cases": cases,
           "cpus": os.cpu_count()}
    output = args.output if args.output != DEFAULT_OUTPUT else DEFAULT_OUTPUT.with_name(
        "truth_psf_own.json" if args.own else "truth_psf.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(json.dumps(by_level, indent=2))
    return 0


def _directions(n: int = 64) -> np.ndarray:
    """``n`` unit vectors spread over a hemisphere (a Fibonacci lattice): plane normals."""
    i = np.arange(n) + 0.5
    polar, turn = np.arccos(1.0 - i / n), np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(turn), np.sin(polar) * np.cos(turn)], 1)


def _best_plane_split(coords: np.ndarray, cost_a: np.ndarray, cost_b: np.ndarray, *, min_side: int) -> tuple:
    """The plane (normal, offset, side) that splits voxels into two phases at the least
    summed cost (``cost_a`` / ``cost_b`` per voxel), each side at least ``min_side`` voxels."""
    best: tuple = (np.inf, None, None, False)
    total_a, total_b = cost_a.sum(), cost_b.sum()
    k = np.arange(coords.shape[0] + 1)
    ok = (k >= min_side) & (coords.shape[0] - k >= min_side)
    for d in _directions():
        proj = coords @ d
        order = np.argsort(proj, kind="stable")
        ca, cb = (np.concatenate([[0.0], np.cumsum(c[order])]) for c in (cost_a, cost_b))
        for cost, b_below in ((ca + (total_b - cb), False), (cb + (total_a - ca), True)):
            cost = np.where(ok, cost, np.inf)
            j = int(np.argmin(cost))
            if cost[j] < best[0]:
                best = (cost[j], d, proj[order[j - 1]] if j > 0 else -np.inf, b_below)
    return best


def run_evidence_case(shape: int, seed: int, level: str, *, max_voxels: int = 4000) -> dict[str, Any]:
    """How much the grey says about the grains of small particles (true particles).

    For every particle of quartz and feldspar only (no pyrite, off the volume's faces, at
    most ``max_voxels``), in the corrected grey the region path classifies
    (:func:`volmla.segment.pooled.corrected_grey`) and over its interior voxels (the
    shell, mixed with the void, left out): the chi-square gain (sum of squared residuals
    in noise sigmas) of its TRUE two-phase labelling over the better single phase, the
    prediction blurred by the estimated PSF; and the gain of the best plane splitting it
    into the two phases (64 normals x every offset, each side >= 8 interior voxels).
    On truly free particles the best plane's gain is the null a per-particle split test
    must exceed; a truly mixed particle that the default calls free is recoverable by
    such a test only where the gain of its true labelling clears that null.
    """
    from scipy import ndimage as ndi

    from volmla.segment.pooled import corrected_grey, label_levels, region_phases
    from volmla.synthetic import crushed_ore

    ore = crushed_ore(shape=shape, seed=seed, level=level)
    labels = _sparse_labels(ore.phases)
    levels = label_levels(ore.intensity, labels, particles=ore.particles)
    grey = corrected_grey(ore.intensity, ore.particles, levels)
    corrected = np.asarray(grey.corrected.compute(), np.float64)
    measured = np.asarray(region_phases(ore.intensity, ore.particles, levels=levels).compute())
    qa, fe = levels.levels[1], levels.levels[2]
    mid, sigma, psf = (qa + fe) / 2.0, levels.noise_sigma, grey.psf_sigma
    border = set(ore.table.loc[ore.table["touches_border"].astype(bool), "particle_id"].tolist())
    rows = []
    for pid, box in enumerate(ndi.find_objects(ore.particles), start=1):
        if box is None or pid in border:
            continue
        box = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in box)
        mask = ore.particles[box] == pid
        truth, ph, c = ore.phases[box], measured[box], corrected[box]
        if mask.sum() > max_voxels or (truth[mask] > 2).any() or (ph[mask] > 2).any():
            continue
        inner = mask & ndi.binary_erosion(mask)
        if inner.sum() < 16:
            continue

        def chi2(phase: np.ndarray, mask: np.ndarray = mask, inner: np.ndarray = inner, c: np.ndarray = c) -> float:
            dev = np.where(mask, np.where(phase == 1, qa, fe) - mid, 0.0)
            pred = mid + ndi.gaussian_filter(dev, psf, mode="constant") if psf > 0 else mid + dev
            return float((((c - pred)[inner]) ** 2).sum() / sigma**2)

        single = min(chi2(np.ones_like(truth)), chi2(np.full_like(truth, 2)))
        cv = c[inner]
        _, normal, offset, b_below = _best_plane_split(np.argwhere(inner).astype(np.float64), (cv - qa) ** 2,
                                                       (cv - fe) ** 2, min_side=8)
        above = (np.indices(mask.shape).reshape(3, -1).T @ normal).reshape(mask.shape) > offset
        plane = np.where(above, 1 if b_below else 2, 2 if b_below else 1)
        true_q = float((truth[mask] == 1).mean())
        meas_q = float((ph[mask] == 1).mean())
        rows.append({"particle_id": pid, "voxels": int(mask.sum()), "interior": int(inner.sum()),
                     "true_quartz": true_q, "measured_quartz": meas_q,
                     "truly_free": true_q in (0.0, 1.0), "measured_free": meas_q <= 0.01 or meas_q >= 0.99,
                     "gain_true": single - chi2(truth), "gain_plane": single - chi2(plane)})
    df = pd.DataFrame(rows)
    null = df.loc[df.truly_free & df.measured_free, "gain_plane"].to_numpy()
    null95 = float(np.percentile(null, 95)) if null.size else float("nan")
    missed = df[~df.truly_free & df.measured_free]
    return {"shape": shape, "seed": seed, "level": level, "psf_sigma": psf, "gap_sigmas": (fe - qa) / sigma,
            "free_particles": int(null.size), "null_gain_plane_95": null95,
            "null_gain_plane_median": float(np.median(null)) if null.size else None,
            "mixed_called_free": int(len(missed)),
            "mixed_called_free_voxels_median": float(missed.voxels.median()) if len(missed) else None,
            "gain_true_median": float(missed.gain_true.median()) if len(missed) else None,
            "gain_true_above_3_84": int((missed.gain_true > 3.84).sum()),
            "gain_true_above_null95": int((missed.gain_true > null95).sum()),
            "gain_plane_above_null95": int((missed.gain_plane > null95).sum()),
            "particles": rows}


def _evidence(args: argparse.Namespace) -> int:
    cases = []
    for level in args.levels:
        for seed in args.seeds:
            case = run_evidence_case(args.shape, seed, level)
            print(f"{level} seed {seed}: {case['mixed_called_free']} mixed particles called free (median "
                  f"{case['mixed_called_free_voxels_median']} voxels); gain of the true labelling median "
                  f"{case['gain_true_median']}, > 3.84 in {case['gain_true_above_3_84']}, > the null's 95th "
                  f"percentile ({case['null_gain_plane_95']:.1f}, {case['free_particles']} free particles) in "
                  f"{case['gain_true_above_null95']}; best plane above it in {case['gain_plane_above_null95']}",
                  file=sys.stderr, flush=True)
            cases.append(case)
    out = {"evidence": True, "cases": cases, "cpus": os.cpu_count()}
    output = args.output if args.output != DEFAULT_OUTPUT else DEFAULT_OUTPUT.with_name("truth_evidence.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(json.dumps([{k: v for k, v in c.items() if k != "particles"} for c in cases], indent=2))
    return 0


def _regions_only(args: argparse.Namespace) -> int:
    cases = []
    for level in args.levels:
        for seed in args.seeds:
            case = run_regions_case(args.shape, seed, level)
            acc = case["voxel_accuracy_in_particles"]
            print(f"{level} seed {seed}: max |LD error| regions+PV {case['regions_pv']['max_ld_error']:.3f} "
                  f"(modal {case['regions_pv']['max_modal_error']:.4f}, voxels {acc['regions']:.4f}, "
                  f"{case['seconds']['regions']:.1f} s), Potts field {case['regions_mrf']['max_ld_error']:.3f} "
                  f"(modal {case['regions_mrf']['max_modal_error']:.4f}, voxels {acc['regions_mrf']:.4f}, "
                  f"{case['seconds']['regions_mrf']:.1f} s)", file=sys.stderr, flush=True)
            cases.append(case)
    out = {"regions_only": True, "targets": {"max_ld_error": 0.03, "max_modal_error": 0.01},
           "summary": _summary(cases, REGION_KEYS), "cases": cases, "cpus": os.cpu_count()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(_table(cases, REGION_KEYS))
    print(json.dumps(out["summary"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levels", nargs="+", default=["easy", "hard"], choices=["easy", "hard"])
    parser.add_argument("--min-grain", type=int, default=None, help="default: volmla.segment.regions.MIN_GRAIN")
    parser.add_argument("--quick", action="store_true", help="one 48^3 easy case (a smoke run), no timing")
    parser.add_argument("--timing-shape", type=int, default=128, help="edge of the runtime case (0: none)")
    parser.add_argument("--regions-only", action="store_true",
                        help="only regions_pv, regions_mrf and the truth floor on the true particles (no forest, "
                             "no end to end, no timing)")
    parser.add_argument("--pv-geometry", action="store_true",
                        help="only the region path with binary against true sub-voxel edges in its partial-volume "
                             "correction, on the true and the CT's own particles")
    parser.add_argument("--psf-sweep", action="store_true",
                        help="only the region path on the true particles with its PSF estimated and fixed at each "
                             "of PSF_SWEEP, with the corrected grey's surface bias per phase")
    parser.add_argument("--psfs", type=float, nargs="+", default=list(PSF_SWEEP),
                        help="--psf-sweep: the fixed PSF sigmas (voxels; default PSF_SWEEP)")
    parser.add_argument("--own", action="store_true",
                        help="--psf-sweep on the CT's own particles, end to end (contacts refined by the phases; "
                             "default --output results/truth_psf_own.json)")
    parser.add_argument("--end-to-end-only", action="store_true",
                        help="only the end-to-end path, and the same with the true phases or the true particles put "
                             "back (which of the two the error comes from)")
    parser.add_argument("--fov", action="store_true",
                        help="only end to end on the scan with a zero-filled cylindrical field of view, with the "
                             "field of view found, ignored, and the scan without one (results/truth_fov.json)")
    parser.add_argument("--evidence", action="store_true",
                        help="only what the grey says about the grains of small particles: the likelihood gain of "
                             "their true labelling against a plane-split test's null (true particles)")
    parser.add_argument("--depth", type=int, default=None,
                        help="with --end-to-end-only: the region pooling's depth (default: the library's)")
    add_set_option(parser, prefix="with --end-to-end-only: ")
    parser.add_argument("--particles-model", type=Path, default=None, metavar="ONNX",
                        help="with --end-to-end-only: the CT's own particles from this particle U-Net's "
                             "interior/boundary map (LEVEL in the name is replaced by the level), e.g. the "
                             "models of bench_particles.py --learned --keep-models DIR, or builtin:particles")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.depth is not None and not args.end_to_end_only:
        parser.error("--depth applies to --end-to-end-only only")
    if args.particles_model is not None and not args.end_to_end_only:
        parser.error("--particles-model applies to --end-to-end-only only")
    if args.set and not args.end_to_end_only:
        parser.error("--set applies to --end-to-end-only only")
    args.set = parse_set(parser, args.set)
    from volmla.segment.regions import MIN_GRAIN

    if args.quick:
        args.shape, args.seeds, args.levels, args.timing_shape = 48, [0], ["easy"], 0
    min_grain = MIN_GRAIN if args.min_grain is None else args.min_grain
    cases = []
    if args.regions_only:
        return _regions_only(args)
    if args.pv_geometry:
        return _pv_geometry(args)
    if args.evidence:
        return _evidence(args)
    if args.psf_sweep:
        return _psf_sweep(args)
    if args.fov:
        return _fov(args)
    if args.end_to_end_only:
        return _end_to_end_only(args)
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            for seed in args.seeds:
                case = run_case(args.shape, seed, level, min_grain=min_grain, workdir=Path(tmp))
                print(f"{level} seed {seed}: max |LD error| today {case['today']['max_ld_error']:.3f}, "
                      f"cleaned+PV {case['cleaned_pv']['max_ld_error']:.3f}, regions+PV {case['regions_pv']['max_ld_error']:.3f} "
                      f"(opt-in steps {case['regions_opt_pv']['max_ld_error']:.3f}, "
                      f"Potts field {case['regions_mrf']['max_ld_error']:.3f}) "
                      f"(modal {case['regions_pv']['max_modal_error']:.4f}); end to end "
                      f"{case['end_to_end']['max_ld_error']:.3f} (modal {case['end_to_end']['max_modal_error']:.4f})",
                      file=sys.stderr, flush=True)
                cases.append(case)
        timing = time_case(args.timing_shape, workdir=Path(tmp)) if args.timing_shape else None
    summary = _summary(cases, (*KEYS, "end_to_end"))
    out = {"min_grain": min_grain, "targets": {"max_ld_error": 0.03, "max_modal_error": 0.01,
                                               "end_to_end": {"max_ld_error": 0.05, "max_modal_error": 0.02}},
           "summary": summary, "timing": timing, "cases": cases, "cpus": os.cpu_count()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, allow_nan=False, default=float))
    print(_table(cases))
    print(json.dumps(summary, indent=2))
    if timing:
        print(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
