"""Pipeline configuration: one YAML file that describes a whole run.

``volmla run CONFIG.yaml`` reads a file like::

    out: results/                 # every output goes in this folder
    input:                        # scanner output to ingest ...
      paths: [scan/]              #   TIFF folder(s) / stacks / MHA / raw
      voxel_size: 2.3             #   micrometres (else from the files' metadata)
      chunks: 128
    # input: scan.zarr            # ... or an OME-Zarr volume already ingested
    preprocess:                   # steps, in order (see ``volmla preprocess --help``)
      - median:size=3
      - gaussian:sigma=1
    segment:                      # one of: model (ONNX), rf, threshold, kmeans
      method: rf
      labels: sparse_labels.zarr  # sparse labels (phase + 1, 0 unlabelled) for rf
      phase_names: [quartz, feldspar, pyrite]
    particles: {min_size: 50, split: true, h: 2.0, max_radius: 16}
    grains: true
    liberation: {densities: [2.65, 2.6, 5.0], free_threshold: 0.99}

Relative paths are taken relative to the config file. Every key is checked once, here,
and an unknown key or a wrong value is a one-line error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from volmla.errors import VolmlaError

SECTIONS = ("out", "input", "preprocess", "segment", "particles", "grains", "liberation")
_INPUT_KEYS = {"paths", "voxel_size", "chunks", "glob", "stitch", "overlap", "shape", "dtype", "byteorder"}
_SEGMENT_KEYS = {"method", "model", "labels", "classes", "phase_names", "halo", "tile", "save_model"}
_SEGMENT_METHODS = ("model", "rf", "threshold", "kmeans")
_PARTICLE_KEYS = {"threshold", "min_size", "fill_holes", "split", "h", "max_radius", "connectivity"}
_LIBERATION_KEYS = {
    "phase_names", "densities", "free_threshold", "size_edges", "by", "include_border",
    "section_step", "pieces", "n_boot", "seed",
}

__all__ = ["load_config", "validate_config"]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a pipeline YAML file; paths become absolute.

    Examples
    --------
    >>> cfg = load_config("run.yaml")  # doctest: +SKIP
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise VolmlaError(f"config {path} is not valid YAML: {first}") from None
    return validate_config(raw, base=path.parent)


def _keys(section: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise VolmlaError(f"config section '{section}' must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise VolmlaError(f"unknown key '{unknown[0]}' in config section '{section}': choose from {', '.join(sorted(allowed))}")
    return dict(value)


def _path(base: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise VolmlaError(f"{what} must be a path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def validate_config(raw: Any, *, base: Path = Path(".")) -> dict[str, Any]:
    """Check a parsed config mapping and return it normalised (absolute paths, defaults)."""
    if not isinstance(raw, Mapping):
        raise VolmlaError("config must be a YAML mapping with sections " + ", ".join(SECTIONS))
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise VolmlaError(f"unknown config section '{unknown[0]}': choose from {', '.join(SECTIONS)}")
    if "out" not in raw or "input" not in raw:
        raise VolmlaError("config needs at least 'out' (output folder) and 'input'")
    cfg: dict[str, Any] = {"out": _path(base, raw["out"], "out")}

    source = raw["input"]
    if isinstance(source, str | Path):
        cfg["input"] = {"zarr": _path(base, source, "input")}
    else:
        section = _keys("input", source, _INPUT_KEYS)
        paths = section.get("paths")
        if isinstance(paths, str | Path):
            paths = [paths]
        if not paths:
            raise VolmlaError("config input.paths must list at least one file or folder")
        section["paths"] = [_path(base, p, "input.paths") for p in paths]
        cfg["input"] = section

    steps = raw.get("preprocess") or []
    if not isinstance(steps, list):
        raise VolmlaError("config section 'preprocess' must be a list of steps")
    cfg["preprocess"] = steps

    if raw.get("segment") is not None:
        seg = _keys("segment", raw["segment"], _SEGMENT_KEYS)
        method = seg.get("method", "model" if "model" in seg else None)
        if method not in _SEGMENT_METHODS:
            raise VolmlaError(f"segment.method must be one of {_SEGMENT_METHODS}, got {method!r}")
        seg["method"] = method
        if method == "model" and "model" not in seg:
            raise VolmlaError("segment.method model needs segment.model (an ONNX file)")
        if method == "rf" and "labels" not in seg and "model" not in seg:
            raise VolmlaError("segment.method rf needs segment.labels (sparse labels) or segment.model")
        if method in ("threshold", "kmeans") and not isinstance(seg.get("classes"), int):
            raise VolmlaError(f"segment.method {method} needs segment.classes (an integer)")
        for key in ("model", "labels", "save_model"):
            if key in seg:
                seg[key] = _path(base, seg[key], f"segment.{key}")
        cfg["segment"] = seg
    else:
        cfg["segment"] = None

    cfg["particles"] = _keys("particles", raw.get("particles"), _PARTICLE_KEYS)
    grains = raw.get("grains", True)
    if not isinstance(grains, bool):
        raise VolmlaError(f"config 'grains' must be true or false, got {grains!r}")
    cfg["grains"] = grains
    cfg["liberation"] = _keys("liberation", raw.get("liberation"), _LIBERATION_KEYS)
    if cfg["liberation"] and cfg["segment"] is None:
        raise VolmlaError("config 'liberation' needs a 'segment' section (phases to measure)")
    return cfg
