"""The ``volmla correlate run`` configuration: its YAML schema, checked once.

:func:`load_run_config` reads the file with :func:`volmla.io.yamlfile.read_yaml` and
:func:`check_run_config` checks every key, fills in the defaults (:data:`RUN_DEFAULTS`),
lets each plane inherit the global values it does not set, reads cluster tables and
abundance tables given as files (:func:`volmla.io.yamlfile.read_mapping`) and resolves
every path against the file's folder, so :func:`volmla.correlate.run_correlation` gets a
configuration it need not check again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from volmla.correlate.planes import AXES
from volmla.errors import VolmlaError
from volmla.io.yamlfile import read_mapping, read_yaml

__all__ = ["RUN_DEFAULTS", "check_run_config", "load_run_config"]

_RUN_KEYS = {"ct", "out", "minerals", "erode", "planes", "cluster_table", "xrd", "seed", "k", "denoise",
             "transform", "min_quality", "accept_poor", "max_tilt_deg", "tilt_step_deg"}
_PLANE_KEYS = {"name", "maps", "pixel_size_um", "axis", "search", "step", "origin_um", "truth", "resample",
               "cluster_table", "xrd", "seed", "k", "denoise", "transform", "min_quality", "accept_poor",
               "max_tilt_deg", "tilt_step_deg"}
_INHERITED = ("cluster_table", "xrd", "seed", "k", "denoise", "transform", "min_quality", "accept_poor",
              "max_tilt_deg", "tilt_step_deg")
RUN_DEFAULTS: dict[str, Any] = {"erode": 2, "seed": 0, "k": None, "denoise": None,
                                "transform": "rigid", "min_quality": 0.05, "accept_poor": False,
                                "max_tilt_deg": 0.0, "tilt_step_deg": 1.0, "cluster_table": None, "xrd": None}


def _check_plane_values(plane: dict[str, Any], where: str) -> None:
    """The types and ranges of a plane's scalar options (inherited ones included)."""
    def number(key: str) -> float:
        value = plane[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise VolmlaError(f"{where}: {key} must be a finite number, got {value!r}")
        return float(value)

    name = plane["name"]
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise VolmlaError(f"{where}: name must be a plain folder name (no '/', not '.' or '..'), got {name!r}")
    for key in ("accept_poor", "resample"):
        if not isinstance(plane[key], bool):
            raise VolmlaError(f"{where}: {key} must be true or false, got {plane[key]!r}")
    if isinstance(plane["seed"], bool) or not isinstance(plane["seed"], int) or plane["seed"] < 0:
        raise VolmlaError(f"{where}: seed must be a non-negative integer, got {plane['seed']!r}")
    if not 0 <= number("min_quality") <= 1:
        raise VolmlaError(f"{where}: min_quality must lie in [0, 1], got {plane['min_quality']!r}")
    number("max_tilt_deg")
    number("tilt_step_deg")
    step = plane["step"]
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise VolmlaError(f"{where}: step must be a positive integer (planes), got {step!r}")
    origin = plane["origin_um"]
    if origin is not None and not (isinstance(origin, list) and len(origin) == 2 and all(
            not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) for v in origin)):
        raise VolmlaError(f"{where}: origin_um must be two numbers [row, col] in micrometres, got {origin!r}")


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read and check a ``volmla correlate run`` YAML file (one-line errors).

    Schema (relative paths are relative to the file)::

        ct: ct.zarr                  # CT intensity volume (OME-Zarr), required
        out: correlate_out/          # output folder (or -o on the command line)
        minerals: [quartz, feldspar, pyrite]   # phase order; void is phase 0
        erode: 2                     # label margin (CT voxels) around label changes
        seed: 0                      # k-means / shuffle seed
        k: null                      # k-means clusters (default minerals + 1)
        denoise: [Na, Mg]            # channels to bilateral-filter, each one of the maps
                                     # ([] = none; default: Na, Mg where the maps hold them)
        transform: rigid             # rigid | similarity
        min_quality: 0.05            # registration quality threshold
        accept_poor: false           # keep poor fits (flagged) instead of failing
        max_tilt_deg: 0              # tilt search range (0 = plane normal to axis)
        tilt_step_deg: 1.0
        cluster_table: {0: void, 1: quartz, ...}   # optional, or a YAML file
        xrd: {quartz: 0.4, feldspar: 0.5, pyrite: 0.1}  # optional, or a YAML file
        planes:                      # one entry per mapped face
          - name: top                # default plane0, plane1, ...
            maps: [Fe.tif, Si.tif]   # TIFFs named by element, or an NPZ stack
            pixel_size_um: 20        # unless the NPZ carries it
            axis: z                  # plane normal
            search: [0, 8]           # candidate planes [lo, hi) (default whole axis)
            step: null               # coarse search step
            origin_um: [0, 0]        # map pixel (0, 0) centre in the CT plane frame
            truth: top_truth.tif     # optional phase ids on the map grid -> ARI
            # any of seed, k, denoise, transform, min_quality, accept_poor,
            # max_tilt_deg, tilt_step_deg, cluster_table, xrd overrides the global value

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    dict
        The checked configuration with defaults filled in and paths resolved.

    Examples
    --------
    >>> cfg = load_run_config("correlate.yaml")  # doctest: +SKIP
    """
    path = Path(path)
    raw = read_yaml(path, what="config")
    return check_run_config(raw, base=path.parent)


def _mapping_or_file(value: Any, base: Path, what: str) -> dict[Any, Any] | None:
    """A mapping given inline, or the non-empty mapping in a YAML file (relative to ``base``)."""
    if value is None:
        return None
    if isinstance(value, str):
        return read_mapping(base / value, what=what)
    if not isinstance(value, dict) or not value:
        raise VolmlaError(f"{what} must be a non-empty mapping (or a YAML file of one), got {value!r}")
    return value


def check_run_config(raw: Any, *, base: Path = Path(".")) -> dict[str, Any]:
    """Check a ``correlate run`` configuration mapping (see :func:`load_run_config`).

    Parameters
    ----------
    raw
        The parsed YAML document.
    base
        Folder that relative paths are relative to.

    Returns
    -------
    dict
        The checked configuration: defaults filled in, each plane with its inherited
        values, paths resolved, tables read; every file it names exists.

    Examples
    --------
    >>> check_run_config({"ct": "ct.zarr"})
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: config: missing required key 'minerals'
    """
    if not isinstance(raw, dict):
        raise VolmlaError(f"config must be a mapping of keys {sorted(_RUN_KEYS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _RUN_KEYS)
    if unknown:
        raise VolmlaError(f"config: unknown key(s) {unknown}; allowed {sorted(_RUN_KEYS)}")
    for key in ("ct", "minerals", "planes"):
        if key not in raw:
            raise VolmlaError(f"config: missing required key {key!r}")
    cfg = {**RUN_DEFAULTS, **raw}
    for key in ("ct", "out"):
        if key in raw and raw[key] is not None and not (isinstance(raw[key], str) and raw[key]):
            raise VolmlaError(f"config: {key} must be a path, got {raw[key]!r}")
    if raw["ct"] is None:
        raise VolmlaError("config: ct must be a path (the CT volume, OME-Zarr), got None")
    cfg["ct"] = base / str(raw["ct"])
    cfg["out"] = base / str(raw["out"]) if raw.get("out") is not None else None
    minerals = raw["minerals"]
    if isinstance(minerals, str):
        minerals = [m.strip() for m in minerals.split(",") if m.strip()]
    if not isinstance(minerals, list) or not minerals or not all(isinstance(m, str) for m in minerals):
        raise VolmlaError(f"config: minerals must be a list of names, got {raw['minerals']!r}")
    cfg["minerals"] = minerals
    if not isinstance(cfg["erode"], int) or isinstance(cfg["erode"], bool) or cfg["erode"] < 0:
        raise VolmlaError(f"config: erode must be a non-negative integer, got {cfg['erode']!r}")
    planes = raw["planes"]
    if not isinstance(planes, list) or not planes:
        raise VolmlaError(f"config: planes must be a non-empty list of maps entries, got {planes!r}")
    checked = []
    for i, entry in enumerate(planes):
        where = f"config: planes[{i}]"
        if not isinstance(entry, dict):
            raise VolmlaError(f"{where} must be a mapping with at least 'maps', got {entry!r}")
        bad = sorted(set(entry) - _PLANE_KEYS)
        if bad:
            raise VolmlaError(f"{where}: unknown key(s) {bad}; allowed {sorted(_PLANE_KEYS)}")
        if "maps" not in entry:
            raise VolmlaError(f"{where}: missing required key 'maps'")
        maps = entry["maps"] if isinstance(entry["maps"], list) else [entry["maps"]]
        if not maps or not all(isinstance(m, str) for m in maps):
            raise VolmlaError(f"{where}: maps must be a file or a list of files, got {entry['maps']!r}")
        plane = {k: entry.get(k, cfg[k]) for k in _INHERITED}
        plane.update(name=str(entry.get("name", f"plane{i}")), maps=[base / m for m in maps],
                     pixel_size_um=entry.get("pixel_size_um"), axis=entry.get("axis", "z"),
                     search=entry.get("search"), step=entry.get("step"),
                     origin_um=entry.get("origin_um"), resample=entry.get("resample", False),
                     truth=base / str(entry["truth"]) if entry.get("truth") is not None else None)
        _check_plane_values(plane, where)
        if plane["axis"] not in AXES:
            raise VolmlaError(f"{where}: axis must be one of {AXES}, got {plane['axis']!r}")
        if plane["search"] is not None and (not isinstance(plane["search"], list) or len(plane["search"]) != 2
                                            or not all(isinstance(v, int) for v in plane["search"])):
            raise VolmlaError(f"{where}: search must be [lo, hi] plane indices, got {plane['search']!r}")
        if plane["transform"] not in ("rigid", "similarity"):
            raise VolmlaError(f"{where}: transform must be 'rigid' or 'similarity', got {plane['transform']!r}")
        if plane["k"] is not None and (not isinstance(plane["k"], int) or plane["k"] < len(minerals) + 1):
            raise VolmlaError(f"{where}: k must be an integer >= {len(minerals) + 1} (minerals + void), "
                              f"got {plane['k']!r}")
        if "denoise" in entry or "denoise" in raw:  # given: each name must be a channel of the maps (null: none)
            denoise = plane["denoise"] or []
            if isinstance(denoise, str):
                denoise = [e.strip() for e in denoise.split(",") if e.strip()]
            if not isinstance(denoise, list) or not all(isinstance(e, str) for e in denoise):
                raise VolmlaError(f"{where}: denoise must be a list of element names, got {plane['denoise']!r}")
            plane["denoise"] = list(denoise)
        else:  # None: the light elements the maps hold (denoise_maps' default)
            plane["denoise"] = None
        table = _mapping_or_file(plane["cluster_table"], base, f"{where}: cluster_table")
        try:
            plane["cluster_table"] = {int(c): str(m) for c, m in table.items()} if table else None
        except (TypeError, ValueError):
            raise VolmlaError(f"{where}: cluster_table must map cluster numbers to mineral names") from None
        xrd = _mapping_or_file(plane["xrd"], base, f"{where}: xrd")
        try:
            plane["xrd"] = {str(m): float(f) for m, f in xrd.items()} if xrd else None
        except (TypeError, ValueError):
            raise VolmlaError(f"{where}: xrd must map mineral names to abundances") from None
        if plane["xrd"] and not all(math.isfinite(f) and f >= 0 for f in plane["xrd"].values()):
            raise VolmlaError(f"{where}: xrd abundances must be non-negative numbers, got {plane['xrd']}")
        for m in [*plane["maps"], *([plane["truth"]] if plane["truth"] else [])]:
            if not m.is_file():
                raise VolmlaError(f"{where}: file {m} does not exist")
        checked.append(plane)
    names = [p["name"] for p in checked]
    if len(set(names)) != len(names):
        raise VolmlaError(f"config: plane names must be distinct, got {names}")
    cfg["planes"] = checked
    if not Path(cfg["ct"]).exists():
        raise VolmlaError(f"config: ct {cfg['ct']} does not exist")
    return cfg


