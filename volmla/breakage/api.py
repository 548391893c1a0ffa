"""Simulated breakage of a phase volume: checks, fragment labels, the grind-size sweep.

:func:`break_volume` breaks a phase volume once; :func:`breakage` is the one call
behind ``volmla breakage``:

1. every option and the volume are checked once, before any fracture (:func:`check_phases`:
   one out-of-core histogram of the phases, which also gives the modal mineralogy, refuses
   an all-void volume, a float or many-valued (intensity) volume; grind sizes between 3
   voxels and the volume's smallest side);
2. per grind size the seed scale is calibrated (:func:`volmla.breakage.fracture.calibrate`),
   and per realisation the seeds are drawn from their own generator
   (``SeedSequence(seed, spawn_key=(realisation, p80 in nm))``), the phases at the seeds
   gathered where a boundary weight needs them, and the fragment keys computed per block
   (:func:`volmla.breakage.fracture.fragment_block` through ``map_blocks``; exact for any
   chunking) and written once to a scratch OME-Zarr inside the temporary output (uint32
   where every key fits; removed after use): the fracture kernel, the costly step, runs
   once per realisation, and every later pass reads the keys back;
3. the keys are labelled as particles (:func:`volmla.particles.label.label`, multilabel:
   the connected pieces of each key, ids ``1..n`` unique over the volume); its lazy
   relabelling recomputes a block's pieces from the stored keys with cc3d, far cheaper
   than the fracture, so no label volume is written;
4. the first realisation of each grind size goes through the whole liberation analysis
   (:func:`volmla.liberation.analysis.analyse`, into ``p80_<value>/``); the others through
   one measurement pass (:func:`volmla.measure.measure`) and
   :func:`volmla.liberation.summary.liberation_summary` of the few columns the statistics
   read; every realisation's phase voxel counts are compared with the histogram of step 1
   (every solid voxel in exactly one fragment, or an error), and the size law is fitted
   to its fragments (:func:`volmla.breakage.sweep.measured_law`: realised P80 and
   uniformity, in ``summary.json``'s ``realisations``);
5. the table, the intervals across realisations and the grind sizes at the target
   liberation degree (:mod:`volmla.breakage.sweep`), a plot and ``summary.json`` are
   written into a temporary sibling folder renamed into place at the end.

One module (past 500 lines) because the checks, the sweep and the atomic write share
one temporary folder and one set of validated options; the pure parts live in
:mod:`volmla.breakage.fracture` and :mod:`volmla.breakage.sweep`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from volmla.breakage.fracture import (
    KEY_STRIDE,
    LAWS,
    MIN_FRAGMENT,
    Calibration,
    Law,
    SeedIndex,
    Seeds,
    SizeLaw,
    calibrate,
    draw_seeds,
    fragment_block,
    index_seeds,
    size_law,
)
from volmla.breakage.sweep import (
    curve_intervals,
    grind_sizes,
    measured_law,
    measured_p80,
    p80_label,
    plot_curve,
)
from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["MAX_PHASES", "MAX_REALISATIONS", "Breakage", "Fragments", "PhaseCheck", "break_volume", "breakage", "check_phases"]

CALIBRATION = 2**31 - 1
"""The realisation number whose seed stream calibrates the seed scale of a grind size."""

MAX_PHASES = 32
"""Most distinct phase ids a phase volume may hold; more means intensities, not phases."""

MAX_REALISATIONS = 1000
"""Most fracture realisations per grind size: each labels and measures the whole volume
again (5 give the 95 % intervals); 10^9 on a 16^3 volume ran for hours instead of failing."""


class PhaseCheck(NamedTuple):
    """What :func:`check_phases` learnt from one pass over the phase volume."""

    data: da.Array  # the phases as uint8
    counts: np.ndarray  # voxels per phase id 0..max
    voxel_size: tuple[float, float, float]
    names: dict[int, str]


class Fragments(NamedTuple):
    """One fracture realisation: particle ids (lazy Dask, 0 = void, ``1..count``) and its seeds."""

    labels: da.Array
    count: int  # type: ignore[assignment]  # shadows tuple.count; the field name of Labels
    n_seeds: int
    scale: float


_SLIM = ["particle_id", "volume_voxels", "volume_um3", "esd_um", "touches_border",
         "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1"]
"""The particle columns the sweep's statistics read (a slim table: pandas row selections copy every column)."""


class Breakage(NamedTuple):
    """What :func:`breakage` wrote: the curve table and the ``summary.json`` content."""

    curve: pd.DataFrame
    summary: dict[str, Any]


def _check_number(name: str, value: Any, lo: float, hi: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
        allowed = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
        raise VolmlaError(f"{name} must be a number {allowed}, got {name}={value!r}")
    return v


def check_phases(
    phases: VolumeLike,
    *,
    voxel_size: float | Sequence[float] | None = None,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
) -> PhaseCheck:
    """Check that a volume holds phases of unbroken material; its histogram and metadata.

    Parameters
    ----------
    phases
        Phase volume (integer ids, 0 = void; lazy xarray, Dask or NumPy).
    voxel_size
        Override of the volume's voxel size (um).
    phase_names
        Names of phases 1..N (default the volume's attribute, else ``"1", ...``).

    Returns
    -------
    PhaseCheck
        The phases as uint8 Dask array, voxels per phase id, voxel size, phase names.

    Examples
    --------
    >>> c = check_phases(np.ones((4, 4, 4), np.uint8), voxel_size=2.0)
    >>> c.counts.tolist(), c.names
    ([0, 64], {1: '1'})
    """
    from volmla.engine.reduce import histogram
    from volmla.measure import resolve_phase_names, resolve_voxel_size

    vol = as_volume(phases, name="phases")
    data = vol.data
    if not np.issubdtype(data.dtype, np.integer):
        raise VolmlaError(
            f"phases must hold integer phase ids (0 = void, 1..N), got dtype {data.dtype}: "
            "an intensity volume? segment it first (volmla segment)"
        )
    vs = resolve_voxel_size(voxel_size, vol.attrs)
    if data.dtype.itemsize > 2 or data.dtype.kind == "i":
        lo, hi = _min_max(data)
        if lo < 0 or hi > 255:
            raise VolmlaError(f"phases must hold phase ids 0..255, got values from {lo} to {hi}: an intensity volume?")
    hist = histogram(data)
    counts = np.asarray(hist.counts, np.int64)
    first = int(hist.first)
    values = np.flatnonzero(counts) + first
    if values.size and (values.min() < 0 or values.max() > 255):
        raise VolmlaError(f"phases must hold phase ids 0..255, got values up to {int(values.max())}: an intensity volume?")
    if values.size > MAX_PHASES + 1:
        raise VolmlaError(
            f"phases holds {values.size} distinct values (at most {MAX_PHASES} phases and void allowed): "
            "an intensity volume? segment it first (volmla segment)"
        )
    top = int(values.max()) if values.size else 0
    per_phase = np.zeros(top + 1, np.int64)
    for v in values:
        per_phase[int(v)] = counts[int(v) - first]
    if per_phase[1:].sum() == 0:
        raise VolmlaError("phases is all void (no voxel with a phase id above 0): nothing to break")
    names = resolve_phase_names(phase_names, vol.attrs.get("phases") or None, top)
    unnamed = [i for i in range(1, top + 1) if per_phase[i] and i not in names]
    if unnamed:  # names for phases absent from the volume are fine (as in liberation); missing ones are not
        raise VolmlaError(f"phase names cover ids {sorted(names)}, but phases hold phase id(s) {unnamed}: "
                          "name every phase")
    if data.dtype != np.uint8:
        data = data.astype(np.uint8)
    return PhaseCheck(data, per_phase, vs, names)


def _min_max(data: da.Array) -> tuple[int, int]:
    from volmla.engine.reduce import min_max

    lo, hi = min_max(data)
    return int(lo), int(hi)


def _check_options(
    p80: Sequence[float], shape: tuple[int, ...], vs: tuple[float, float, float], *, law: str, uniformity: float,
    boundary_weight: float, detachment: float, realisations: int = 1,
) -> list[float]:
    if law not in LAWS:
        raise VolmlaError(f"law must be one of {LAWS}, got law={law!r}")
    _check_number("uniformity", uniformity, 0.1, 10.0)
    _check_number("boundary_weight", boundary_weight, 0.0, 1.0)
    _check_number("detachment", detachment, 0.0, 1.0)
    if not isinstance(realisations, int | np.integer) or isinstance(realisations, bool) \
            or not 1 <= realisations <= MAX_REALISATIONS:
        raise VolmlaError(f"realisations must be an integer in 1..{MAX_REALISATIONS}, got realisations={realisations!r}")
    sizes = [_check_number("p80", v, 0.0) for v in p80]
    if not sizes:
        raise VolmlaError("p80 must give at least one grind size (um)")
    smallest = MIN_FRAGMENT * max(vs)
    side = min(n * v for n, v in zip(shape, vs, strict=True))
    for v in sizes:
        if v < smallest:
            raise VolmlaError(f"p80 must be at least {MIN_FRAGMENT:g} voxels ({smallest:g} um), got p80={v:g} um")
        if v > side:
            raise VolmlaError(f"p80 must not exceed the volume's smallest side ({side:g} um), got p80={v:g} um")
    if len(set(sizes)) != len(sizes):
        raise VolmlaError(f"p80 must not repeat a grind size, got p80={sizes}")
    _check_folders(sizes)
    return sorted(sizes)


def _check_folders(sizes: list[float]) -> None:
    """Refuse two grind sizes whose output folders (``p80_<value>``, 6 significant digits) coincide."""
    seen: dict[str, float] = {}
    for v in sizes:
        folder = p80_label(v)
        if folder in seen:
            raise VolmlaError(f"p80 values {seen[folder]!r} and {v!r} give the same output folder {folder}: "
                              "give grind sizes that differ in their first 6 significant digits")
        seen[folder] = v


def realisation_seed(seed: int, realisation: int, p80_um: float) -> int:
    """The generator seed of one realisation at one grind size (independent streams).

    Parameters
    ----------
    seed
        The sweep's seed.
    realisation
        Realisation number (:data:`CALIBRATION` for the seed-scale calibration).
    p80_um
        Grind size (um; to the nanometre).

    Returns
    -------
    int
        A 63-bit seed from ``SeedSequence(seed, spawn_key=(realisation, p80 in nm))``.

    Examples
    --------
    >>> realisation_seed(0, 1, 50.0) == realisation_seed(0, 1, 50.0) != realisation_seed(0, 2, 50.0)
    True
    """
    seq = np.random.SeedSequence(int(seed), spawn_key=(int(realisation), round(p80_um * 1000)))
    return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _seed_phases(data: da.Array, seeds: Seeds, vs: tuple[float, float, float]) -> np.ndarray:
    """The phase at each seed (clamped into the volume); seeds outside get the nearest voxel's phase."""
    from volmla.engine.cluster import compute

    idx = [np.clip(np.rint(seeds.centres[:, a] / vs[a]), 0, data.shape[a] - 1).astype(np.int64) for a in range(3)]
    if not idx[0].size:
        return np.zeros(0, np.uint8)
    (values,) = compute([data.vindex[idx[0], idx[1], idx[2]]], desc="phases at the fracture seeds")
    return np.asarray(values, np.uint8)


class _Spec(NamedTuple):
    """What a realisation's seeds are a function of (small: it travels in the task graph)."""

    extent: tuple[float, float, float]
    law: SizeLaw
    seed: int
    boundary_weight: float
    detachment: float
    calibration: Calibration


@functools.lru_cache(maxsize=2)
def _seeds(spec: _Spec) -> Seeds:
    """The seeds, drawn once per process (millions of seeds are not shipped per task)."""
    return draw_seeds(spec.extent, spec.law, seed=spec.seed, boundary_weight=spec.boundary_weight,
                      detachment=spec.detachment, scale=spec.calibration.scale)


@functools.lru_cache(maxsize=2)
def _realisation(spec: _Spec) -> tuple[Seeds, SeedIndex]:
    """The seeds and their index, built once per worker process (the client needs the seeds only)."""
    seeds = _seeds(spec)
    return seeds, index_seeds(seeds)


def _keys_task(block: np.ndarray, spec: _Spec, seed_phases: np.ndarray | None, spacing: tuple[float, float, float],
               tile: int, dtype: np.dtype[Any], block_info: dict[Any, Any] | None = None) -> np.ndarray:
    origin = tuple(lo for lo, _ in block_info[0]["array-location"]) if block_info else (0, 0, 0)
    seeds, index = _realisation(spec)
    if seed_phases is not None:
        seeds = seeds._replace(phase=seed_phases)
    return fragment_block(block, origin, seeds, spacing=spacing, index=index, tile=tile).astype(dtype, copy=False)


class _Keys(NamedTuple):
    """One realisation's fragment keys (lazy) and what made them."""

    keys: da.Array
    n_seeds: int
    scale: float


def _fragment_keys(data: da.Array, vs: tuple[float, float, float], *, p80: float, law: str, uniformity: float,
                   boundary_weight: float, detachment: float, seed: int, calibration: Calibration | None) -> _Keys:
    """The lazy key volume of one realisation: uint32 when every key fits (fewer than 2**24 seeds), else uint64."""
    shape = tuple(int(n) for n in data.shape)
    slaw = size_law(law, p80, uniformity, d_lo=MIN_FRAGMENT * max(vs))
    if calibration is None:
        calibration = calibrate(slaw, seed=seed)
    extent = (shape[0] * vs[0], shape[1] * vs[1], shape[2] * vs[2])
    spec = _Spec(extent, slaw, int(seed), float(boundary_weight), float(detachment), calibration)
    seeds = _seeds(spec)
    # the phase at each seed (one byte a seed) is the only seed data the tasks receive
    phases = dask.delayed(_seed_phases(data, seeds, vs), pure=True) if boundary_weight > 0 else None
    tile = int(np.clip(round(p80 / max(vs) / 2), 8, 16))  # speed only: any tile gives the same fragments
    top = (seeds.r2.size + 1) * KEY_STRIDE
    dtype = np.dtype(np.uint32) if top < 2**32 else np.dtype(np.uint64)
    packed = dask.delayed(spec, pure=True, traverse=False)
    keys = da.map_blocks(_keys_task, data, packed, phases, vs, tile, dtype, dtype=dtype,
                         meta=np.empty((0, 0, 0), dtype))
    return _Keys(keys, int(seeds.r2.size), calibration.scale)


def _fragments(data: da.Array, vs: tuple[float, float, float], *, p80: float, law: str, uniformity: float,
               boundary_weight: float, detachment: float, seed: int, calibration: Calibration | None,
               connectivity: int) -> Fragments:
    from volmla.particles.label import label

    made = _fragment_keys(data, vs, p80=p80, law=law, uniformity=uniformity, boundary_weight=boundary_weight,
                          detachment=detachment, seed=seed, calibration=calibration)
    lab = label(made.keys, connectivity=connectivity, multilabel=True)  # type: ignore[arg-type]  # checked by label
    return Fragments(lab.labels.data, int(lab.count), made.n_seeds, made.scale)


def break_volume(
    phases: VolumeLike,
    *,
    p80: float,
    law: Law = "rosin-rammler",
    uniformity: float = 1.2,
    boundary_weight: float = 0.0,
    detachment: float = 0.0,
    seed: int = 0,
    voxel_size: float | Sequence[float] | None = None,
    connectivity: Literal[6, 18, 26] = 26,
    calibration: Calibration | None = None,
) -> Fragments:
    """Break a phase volume of unbroken material once: fragments labelled as particles.

    Parameters
    ----------
    phases
        Phase volume (uint8 ids, 0 = void; lazy xarray, Dask or NumPy), e.g. a segmented
        CT of a drill core.
    p80
        Grind size: 80 % passing equivalent-sphere diameter of the fragments, um (at
        least 3 voxels, at most the volume's smallest side).
    law
        Fragment size law: ``"rosin-rammler"`` or ``"gates-gaudin-schuhmann"``.
    uniformity
        The law's uniformity (RR) or modulus (GGS).
    boundary_weight
        0 = random fracture .. 1 = fractures follow phase boundaries.
    detachment
        Fraction of fragments that break along every phase boundary in them, releasing
        their grains whole.
    seed
        Seed of the realisation: the fragments are a function of it (and the options).
    voxel_size
        Override of the volume's voxel size (um).
    connectivity
        Connectivity of a fragment's pieces (a fragment that falls apart is several particles).
    calibration
        Seed scale (default: :func:`volmla.breakage.fracture.calibrate` of the law, so
        the fragments' P80 is the law's).

    Returns
    -------
    Fragments
        ``labels`` (lazy; ids ``1..count`` unique over the volume, the same for any
        chunking), ``count``, ``n_seeds`` and the seed ``scale`` used.

    Examples
    --------
    >>> ph = np.ones((24, 24, 24), np.uint8); ph[12:] = 2
    >>> f = break_volume(ph, p80=8.0, voxel_size=1.0, seed=3)
    >>> f.count > 10, int((f.labels.compute() > 0).sum())
    (True, 13824)
    """
    check = check_phases(phases, voxel_size=voxel_size)
    p80_um = _check_options([p80], tuple(check.data.shape), check.voxel_size, law=law, uniformity=uniformity,
                            boundary_weight=boundary_weight, detachment=detachment)[0]
    if connectivity not in (6, 18, 26):
        raise VolmlaError(f"connectivity must be one of (6, 18, 26), got {connectivity!r}")
    return _fragments(check.data, check.voxel_size, p80=p80_um, law=law, uniformity=float(uniformity),
                      boundary_weight=float(boundary_weight), detachment=float(detachment), seed=int(seed),
                      calibration=calibration, connectivity=int(connectivity))


def breakage(
    phases: VolumeLike,
    *,
    out_dir: str | Path,
    p80: Sequence[float],
    realisations: int = 5,
    law: Law = "rosin-rammler",
    uniformity: float = 1.2,
    boundary_weight: float = 0.0,
    detachment: float = 0.0,
    phase_names: Sequence[str] | Mapping[int, str] | None = None,
    seed: int = 0,
    target_ld: float = 0.8,
    free_threshold: float = 0.99,
    voxel_size: float | Sequence[float] | None = None,
    analysis: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    cluster: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Breakage:
    """Break a phase volume at several grind sizes, several times each, and write its liberation curve.

    Parameters
    ----------
    phases
        Phase volume of unbroken material (uint8 ids, 0 = void).
    out_dir
        Output folder (must be empty or absent unless ``overwrite``): ``liberation_curve.parquet``
        (one row per grind size, realisation and phase), ``liberation_by_size.parquet``,
        ``summary.json``, ``liberation_curve.png`` and ``p80_<value>/`` with the full
        liberation outputs of the first realisation.
    p80
        Grind sizes (um): the fragments' 80 % passing size.
    realisations
        Independent fracture realisations per grind size.
    law, uniformity, boundary_weight, detachment
        As in :func:`break_volume`.
    phase_names
        Names of phases 1..N.
    seed
        Seed of the whole sweep (each realisation gets its own stream from it).
    target_ld
        The liberation degree whose grind size is reported per phase.
    free_threshold
        A particle is free in a phase whose grade exceeds this.
    voxel_size
        Override of the volume's voxel size (um).
    analysis
        Extra keywords for :func:`volmla.liberation.analysis.analyse` of the first
        realisations (e.g. ``{"section_step": None}``). Its per-particle bootstrap is
        off by default (``n_boot=0``): the realisations' spread is the sweep's interval;
        pass ``{"n_boot": 200}`` to have it too.
    overwrite
        Replace an existing output folder.
    cluster
        Context to compute in (entered after every check), as in ``analyse``.

    Returns
    -------
    Breakage
        The curve table and the summary written.

    Examples
    --------
    >>> ph = np.ones((32, 32, 32), np.uint8); ph[:, :, 16:] = 2
    >>> r = breakage(ph, out_dir="brk", p80=[6.0, 12.0], realisations=2, voxel_size=1.0)  # doctest: +SKIP
    >>> r.summary["liberation_degree"]["6"]  # doctest: +SKIP
    """
    from volmla.io.lock import write_error
    from volmla.io.outputs import check_not_input
    from volmla.liberation.analysis import analyse, check_out_dir, check_replaceable
    from volmla.liberation.stats import _check_threshold

    source = (getattr(phases, "attrs", None) or {}).get("path")
    if source:  # first: the more precise refusal
        check_not_input(Path(out_dir), [source])
    out = check_out_dir(out_dir, overwrite=overwrite, foreign=False)  # check_replaceable after the options
    target = _check_number("target_ld", target_ld, 0.0, 1.0)
    thr = _check_threshold(free_threshold)
    options = dict(analysis or {})
    clash = {"phases", "particles", "out_dir", "phase_names", "voxel_size", "overwrite", "cluster", "free_threshold"} & set(options)
    if clash:
        raise VolmlaError(f"analysis must not set {sorted(clash)}: they are breakage's own keywords")
    from volmla.measure import resolve_voxel_size

    meta = as_volume(phases, name="phases")  # metadata only: every option is checked before any pass
    sizes = _check_options(p80, tuple(meta.data.shape), resolve_voxel_size(voxel_size, meta.attrs), law=law,
                           uniformity=uniformity, boundary_weight=boundary_weight, detachment=detachment,
                           realisations=realisations)
    with cluster() if cluster is not None else contextlib.nullcontext():
        check = check_phases(phases, voxel_size=voxel_size, phase_names=phase_names)
        phase_ids = sorted(check.names)
        solid = int(check.counts[1:].sum())
        modal = {check.names[i]: float(check.counts[i] / solid) if i < check.counts.size else 0.0 for i in phase_ids}
        check_replaceable(out)
        parent = out.resolve().parent
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        except OSError as exc:
            raise write_error(out, exc) from exc
        try:
            with _once("volmla.liberation.summary"):  # a phase's warning once, not per realisation
                rows, by_size, runs = _sweep(check, sizes, tmp, realisations=int(realisations), law=law,
                                             uniformity=float(uniformity), boundary_weight=float(boundary_weight),
                                             detachment=float(detachment), seed=int(seed), thr=thr,
                                             options=options, analyse=analyse)
            result = _write(tmp, out, overwrite, rows, by_size, runs, check, modal, target=target, source=source, options={
                "law": law, "uniformity": float(uniformity), "boundary_weight": float(boundary_weight),
                "detachment": float(detachment), "realisations": int(realisations), "seed": int(seed),
                "free_threshold": thr, "target_ld": target})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result


class _Repeats(logging.Filter):
    """Drops a log line already passed once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        new = line not in self.seen
        self.seen.add(line)
        return new


@contextlib.contextmanager
def _once(name: str) -> Iterator[None]:
    """Within the block, each line of the logger ``name`` is logged once."""
    repeats = _Repeats()
    log = logging.getLogger(name)
    log.addFilter(repeats)
    try:
        yield
    finally:
        log.removeFilter(repeats)


def _sweep(check: PhaseCheck, sizes: list[float], tmp: Path, *, realisations: int, law: str, uniformity: float,
           boundary_weight: float, detachment: float, seed: int, thr: float, options: dict[str, Any],
           analyse: Callable[..., Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    from volmla.io.volume import open_volume, write_volume
    from volmla.liberation.summary import liberation_summary
    from volmla.measure import measure
    from volmla.particles.label import label

    names = [check.names[i] for i in sorted(check.names)]
    vox = [f"vox_{n}" for n in names]
    phases = _named(check)
    rows: list[dict[str, Any]] = []
    by_size: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    vs = check.voxel_size
    for p80_um in sizes:
        slaw = size_law(law, p80_um, uniformity, d_lo=MIN_FRAGMENT * max(vs))
        cal = calibrate(slaw, seed=realisation_seed(seed, CALIBRATION, p80_um))
        for r in range(realisations):
            rseed = realisation_seed(seed, r, p80_um)
            made = _fragment_keys(check.data, vs, p80=p80_um, law=law, uniformity=uniformity,
                                  boundary_weight=boundary_weight, detachment=detachment, seed=rseed, calibration=cal)
            # the keys are computed once, into scratch: labelling and the measurement passes read them back
            # (a block's pieces are recomputed from its keys by cc3d, far cheaper than the fracture)
            scratch = tmp / f".keys-{p80_label(p80_um)}-{r}.zarr"
            write_volume(made.keys, scratch, voxel_size=vs, kind="labels",
                         chunks=tuple(int(c[0]) for c in made.keys.chunks))
            keys = open_volume(scratch)
            try:
                lab = label(keys, connectivity=26, multilabel=True)
                logger.info("p80 %g um, realisation %d: %d fragments from %d seeds", p80_um, r, lab.count, made.n_seeds)
                if r == 0:
                    summary = analyse(phases, lab.labels, out_dir=tmp / p80_label(p80_um), phase_names=check.names,
                                      voxel_size=vs, free_threshold=thr, warn_small=False,
                                      **{"seed": seed, "n_boot": 0, **options})
                    pdf = pd.read_parquet(tmp / p80_label(p80_um) / "particles.parquet", columns=_SLIM + vox)
                else:
                    tables = measure(lab.labels, phases, voxel_size=vs, phase_names=check.names)
                    pdf = tables.particles[_SLIM + vox]
                    summary = liberation_summary(pdf, phase_names=names, free_threshold=thr, voxel_size=vs,
                                                 warn_small=False)  # the phases are given, not from grey
            finally:
                del keys
                shutil.rmtree(scratch, ignore_errors=True)
            _check_modal(pdf, check, p80_um, r)
            p80_meas = measured_p80(pdf, shape=tuple(check.data.shape), voxel_size=vs)
            fit = measured_law(pdf, law=law, d_lo=slaw.d_lo, shape=tuple(check.data.shape), voxel_size=vs)
            runs.append({"p80_um": p80_um, "realisation": r, "seed": rseed, "scale": made.scale,
                         "n_seeds": made.n_seeds, "n_fragments": int(lab.count), "p80_measured_um": p80_meas,
                         "uniformity": uniformity, "uniformity_measured": fit.m, "law_fit_rms": fit.rms})
            total = {n: float(pdf[f"vox_{n}"].sum()) for n in names}
            solid = sum(total.values())
            for n in names:
                ld = summary["liberation_degree"].get(n)
                rows.append({"p80_um": p80_um, "realisation": r, "phase": n,
                             "liberation_degree": float("nan") if ld is None else float(ld),
                             "modal_fraction": total[n] / solid, "n_particles": int(summary["n_particles"]),
                             "p80_measured_um": p80_meas})
                for cls in summary["liberation_by_size"].get(n, []):
                    by_size.append({"p80_um": p80_um, "realisation": r, "phase": n, **cls})
    return rows, by_size, runs


def _named(check: PhaseCheck) -> xr.DataArray:
    """The phases with their names as metadata: names for phases absent from the volume
    (from its own ``phases`` attribute) are then accepted, as ``volmla liberation`` does."""
    from volmla.engine.blocks import DIMS

    return xr.DataArray(check.data, dims=DIMS, attrs={"phases": dict(check.names), "voxel_size_um": check.voxel_size})


def _check_modal(pdf: pd.DataFrame, check: PhaseCheck, p80_um: float, r: int) -> None:
    """Every solid voxel in exactly one fragment: the fragments' phase voxels equal the histogram."""
    for i, n in check.names.items():
        want = int(check.counts[i]) if i < check.counts.size else 0
        got = int(pdf[f"vox_{n}"].sum()) if f"vox_{n}" in pdf else 0
        if got != want:
            raise RuntimeError(f"breakage lost voxels of phase {n} at p80={p80_um:g} um, realisation {r}: "
                               f"{got} in fragments, {want} in the volume")


_CURVE_UNITS = {"realisation": "", "liberation_degree": "1", "modal_fraction": "1", "n_particles": "1"}
"""Units of the breakage tables' columns that :mod:`volmla.io.parquet` does not know by name."""


def _write(tmp: Path, out: Path, overwrite: bool, rows: list[dict[str, Any]], by_size: list[dict[str, Any]],
           runs: list[dict[str, Any]], check: PhaseCheck, modal: dict[str, float], *, target: float,
           source: str | None, options: dict[str, Any]) -> Breakage:
    from volmla.io.parquet import write_table
    from volmla.liberation.summary import _nan_to_none

    curve = pd.DataFrame(rows, columns=["p80_um", "realisation", "phase", "liberation_degree", "modal_fraction",
                                        "n_particles", "p80_measured_um"])
    curve = curve.astype({"p80_um": float, "realisation": np.int64, "phase": str, "liberation_degree": float,
                          "modal_fraction": float, "n_particles": np.int64, "p80_measured_um": float})
    names = [check.names[i] for i in sorted(check.names)]
    described = functools.partial(write_table, voxel_size_um=list(check.voxel_size), phases=names,
                                  inputs={"phases": source} if source else None)
    described(curve, tmp / "liberation_curve.parquet", table="liberation_curve", units=_CURVE_UNITS)
    described(pd.DataFrame(by_size), tmp / "liberation_by_size.parquet", table="liberation_by_size",
              units={**_CURVE_UNITS, "lo": "um", "hi": "um", "ld": "1", "n": "1"})
    intervals = curve_intervals(curve)
    plot_curve(curve, intervals, tmp / "liberation_curve.png", target_ld=target)
    summary: dict[str, Any] = {
        "liberation_degree": {f"{p:g}": d for p, d in _means(intervals).items()},
        "modal_mineralogy": modal,
        "liberation_interval": intervals.to_dict(orient="records"),
        "grind_size_um": {"target_ld": target, **grind_sizes(intervals, target=target)},
        "phases": names,
        "voxel_size_um": list(check.voxel_size),
        "shape": [int(n) for n in check.data.shape],
        "modal_exact": True,
        "realisations": runs,
        "options": options,
    }
    summary = _nan_to_none(summary)
    summary["files"] = sorted([p.name for p in tmp.iterdir()] + ["summary.json"])
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise VolmlaError(f"output folder {out} appeared while computing: pass overwrite=True to replace it")
        old = out.resolve().parent / f".{out.name}.old-{tmp.name[-8:]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    logger.info("breakage outputs written to %s", out)
    return Breakage(curve, summary)


def _means(intervals: pd.DataFrame) -> dict[float, dict[str, float]]:
    out: dict[float, dict[str, float]] = {}
    for row in intervals.itertuples(index=False):
        out.setdefault(float(row.p80_um), {})[str(row.phase)] = float(row.ld_mean)
    return out
