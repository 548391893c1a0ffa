"""Pipeline configuration: one YAML file that describes a whole run, checked once.

``volmla run CONFIG.yaml`` reads a file like::

    out: results/                 # every output goes in this folder
    input:                        # scanner output to ingest ...
      paths: [scan/]              #   TIFF folder(s) / stacks / MHA / raw
      voxel_size: 2.3             #   micrometres (else from the files' metadata)
      chunks: 128
    # input: scan.zarr            # ... or an OME-Zarr volume already ingested (or s3://...)
    preprocess:                   # steps, in order (see ``volmla preprocess --help``)
      - median:size=3
      - gaussian:sigma=1
    segment:                      # no method: the most accurate path for the labels (regions)
      labels: sparse_labels.zarr  # sparse labels (phase + 1, 0 unlabelled)
      phase_names: [quartz, feldspar, pyrite]
      # method: regions | rf | unet (ONNX; also spelled model) | threshold | kmeans
    particles: {min_size: 50, split: true, neck: 0.85}
    # particles: {model: particles.onnx}   # from a particle U-Net's interior/boundary map
    # particles: {model: "builtin:particles"}   # ... the one volmla ships
    # particles: {contacts: false}   # keep the split's contacts (default: refined by the phases)
    grains: true
    liberation: {densities: [2.65, 2.6, 5.0], free_threshold: 0.99}

:func:`load_config` reads the file (through :func:`volmla.io.yamlfile.read_yaml`) and
:func:`validate_config` turns the parsed mapping into a :class:`PipelineConfig`: typed,
frozen dataclasses, one per section. Every section, key and value is checked there,
before any stage runs, and an unknown key or a wrong value is a one-line error naming
it. Relative paths are taken relative to the config file. The stage options a user left
out stay out (``options()`` returns only those given), so each stage uses its library
defaults and records the same job as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from volmla.errors import VolmlaError
from volmla.segment.dispatch import SegmentMethod

SECTIONS = ("out", "input", "preprocess", "segment", "particles", "grains", "liberation")
_SEGMENT_METHODS = ("unet", "model", "rf", "regions", "threshold", "kmeans")
"""Accepted spellings: ``model`` is the older name of ``unet``. Without a method, a
``model`` means ``unet`` and sparse ``labels`` alone the most accurate path, ``regions``."""

__all__ = [
    "SECTIONS",
    "InputConfig",
    "LiberationConfig",
    "ParticlesConfig",
    "PipelineConfig",
    "SegmentConfig",
    "load_config",
    "validate_config",
]


# ----------------------------------------------------------------------------- value checks

Check = Callable[[str, Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise VolmlaError(f"config {where} must be true or false, got {value!r}")
    return value


def _int(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise VolmlaError(f"config {where} must be an integer, got {value!r}")
    return value


def _number(where: str, value: Any) -> float:
    if not _is_number(value):
        raise VolmlaError(f"config {where} must be a number, got {value!r}")
    return cast(float, value)


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise VolmlaError(f"config {where} must be a string, got {value!r}")
    return value


def _numbers(where: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise VolmlaError(f"config {where} must be a list of numbers, got {value!r}")
    return value


def _ints(where: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise VolmlaError(f"config {where} must be a list of integers, got {value!r}")
    return value


def _number_or_numbers(where: str, value: Any) -> float | list[float]:
    return _number(where, value) if not isinstance(value, list) else _numbers(where, value)


def _int_or_ints(where: str, value: Any) -> int | list[int]:
    return _int(where, value) if not isinstance(value, list) else _ints(where, value)


def _names(where: str, value: Any) -> list[str] | dict[Any, str]:
    """Phase names: strings, none empty, no two alike, none reserved (as the measurement reads them)."""
    from volmla.measure import resolve_phase_names

    items = value.values() if isinstance(value, Mapping) else value
    if not isinstance(value, list | Mapping) or not all(isinstance(v, str) for v in items):
        raise VolmlaError(f"config {where} must be a list of names, got {value!r}")
    try:
        resolve_phase_names(value, None)
    except VolmlaError as exc:
        raise VolmlaError(f"config {where}: {exc}") from None
    except ValueError:  # a mapping key that is no phase id
        raise VolmlaError(f"config {where} must be a list of names or map phase ids (1, 2, ...) to names, "
                          f"got {value!r}") from None
    return cast("list[str] | dict[Any, str]", value)


def _densities(where: str, value: Any) -> list[float] | dict[str, float]:
    if isinstance(value, Mapping):
        if not all(_is_number(v) for v in value.values()):
            raise VolmlaError(f"config {where} must map phase names to numbers, got {value!r}")
        return dict(value)
    return _numbers(where, value)


def _at_least(check: Check, low: float) -> Check:
    def checked(where: str, value: Any) -> Any:
        value = check(where, value)
        if value < low:
            raise VolmlaError(f"config {where} must be at least {low}, got {value!r}")
        return value

    return checked


def _positive(where: str, value: Any) -> float:
    number = _number(where, value)
    if not (math.isfinite(number) and number > 0):
        raise VolmlaError(f"config {where} must be a positive number, got {value!r}")
    return number


def _voxel_size(where: str, value: Any) -> float | list[float]:
    from volmla.io.volume import normalise_voxel_size

    checked = _number_or_numbers(where, value)
    try:
        normalise_voxel_size(checked)
    except VolmlaError as exc:
        raise VolmlaError(f"config {where}: {exc}") from None
    return checked


def _skip_if_zero(where: str, value: Any) -> int | None:
    """``0`` means "skip", as on the command line (``--pieces 0``, ``--sections 0``)."""
    number = _int(where, value)
    return None if number == 0 else number


def _psf_sigma(where: str, value: Any) -> float:
    from volmla.segment.pooled import check_psf

    number = _number(where, value)
    try:
        check_psf(number)
    except VolmlaError as exc:  # the library's range, under the config's key
        raise VolmlaError(f"config {where} {str(exc).removeprefix('psf_sigma ')}") from None
    return float(number)


def _optional(check: Check) -> Check:
    return lambda where, value: None if value is None else check(where, value)


def _choice(*allowed: Any) -> Check:
    def check(where: str, value: Any) -> Any:
        if value not in allowed:
            raise VolmlaError(f"config {where} must be one of {allowed}, got {value!r}")
        return value

    return check


def _fraction(where: str, value: Any) -> float:
    value = _number(where, value)
    if not 0 < value <= 1:
        raise VolmlaError(f"config {where} must lie in (0, 1], got {value!r}")
    return value


def _threshold(where: str, value: Any) -> Any:
    if value is None or value in ("auto", "otsu"):
        return value
    return _number(where, value)


def _tile(where: str, value: Any) -> Any:
    if value is None or value == "block":
        return value
    return _int_or_ints(where, value)


def _section(section: str, value: Any, checks: Mapping[str, Check]) -> dict[str, Any]:
    """A mapping section with only known keys, each value checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise VolmlaError(f"config section '{section}' must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(checks))
    if unknown:
        raise VolmlaError(f"config section '{section}' has an unknown key '{unknown[0]}': choose from "
                          f"{', '.join(sorted(checks))}")
    return {key: checks[key](f"{section}.{key}", v) for key, v in value.items()}


def _path(base: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise VolmlaError(f"{what} must be a path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _model(base: Path, value: Any, what: str) -> Path:
    """A model file: a path (relative to the config) or ``builtin:NAME``, a model volmla ships."""
    from volmla.segment.sessions import BUILTIN_PREFIX, resolve_model

    return resolve_model(value) if isinstance(value, str) and value.startswith(BUILTIN_PREFIX) else _path(base, value, what)


def _volume(base: Path, value: Any, what: str) -> Path | str:
    """A volume the run reads: a path (relative to the config) or an fsspec URL, kept as text."""
    from volmla.io.ngff import is_url

    return value if isinstance(value, str) and is_url(value) else _path(base, value, what)


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class InputConfig:
    """Where the volume comes from: an OME-Zarr (``zarr``) or scanner files to ingest (``paths``)."""

    zarr: Path | str | None = None
    """An OME-Zarr volume: a path, or an fsspec URL (``s3://bucket/scan.zarr``)."""
    paths: list[Path] = field(default_factory=list)
    voxel_size: float | list[float] | None = None
    chunks: int | None = None
    glob: str | None = None
    stitch: bool | None = None
    overlap: int | None = None
    shape: list[int] | None = None
    dtype: str | None = None
    byteorder: Literal["little", "big"] | None = None
    given: tuple[str, ...] = ()
    """The ingest options the config names (the others keep :func:`volmla.ingest.load`'s defaults)."""

    def options(self) -> dict[str, Any]:
        """The ingest keyword arguments given (``paths`` aside).

        Returns
        -------
        dict
        """
        return {k: getattr(self, k) for k in self.given}


_INPUT_CHECKS: dict[str, Check] = {
    "zarr": lambda where, value: value,  # an OME-Zarr volume instead of paths: made a path below
    "paths": lambda where, value: value,  # made a list of paths below
    "voxel_size": _optional(_voxel_size),
    "chunks": _optional(_at_least(_int, 1)),
    "glob": _str,
    "stitch": _bool,
    "overlap": _optional(_at_least(_int, 0)),
    "shape": _optional(_ints),
    "dtype": _optional(_str),
    "byteorder": _choice("little", "big"),
}


@dataclass(frozen=True)
class SegmentConfig:
    """The ``segment`` section: a method of :func:`volmla.segment.segment_phases` and its options."""

    method: SegmentMethod
    model: Path | None = None
    labels: Path | str | None = None
    """Sparse labels: a path, or an fsspec URL."""
    classes: int | None = None
    phase_names: list[str] | None = None
    halo: int | None = None
    tile: int | list[int] | Literal["block"] | None = None
    save_model: Path | None = None
    psf_sigma: float | None = None
    """Method ``regions``: the scan's PSF sigma (voxels) for the partial-volume correction;
    None: estimated from the particles' edges."""
    spelled: str = ""
    """The method as the config spelled it (``model`` or ``unet`` for the U-Net)."""
    given: tuple[str, ...] = ()
    """The keys the config names."""

    def job(self) -> dict[str, str]:
        """The section as recorded in the ``phases`` job (values as strings, as always).

        The method keeps the config's spelling, so outputs written before ``unet`` was
        a name still count as the same job.

        Returns
        -------
        dict
        """
        values = {k: getattr(self, k) for k in self.given}
        return {**{k: str(v) for k, v in values.items()}, "method": self.spelled}


_SEGMENT_CHECKS: dict[str, Check] = {
    "method": lambda where, value: value,  # checked below, with a message naming the methods
    "model": lambda where, value: value,
    "labels": lambda where, value: value,
    "save_model": lambda where, value: value,
    "classes": _optional(_int),
    "phase_names": _optional(_names),
    "halo": _optional(_at_least(_int, 0)),
    "tile": _tile,
    "psf_sigma": _optional(_psf_sigma),
}


@dataclass(frozen=True)
class ParticlesConfig:
    """Options of :func:`volmla.particles.label_particles` (``threshold`` defaults to None: phases > 0).

    ``model``: a particle U-Net (ONNX, trained with ``target="particles"``, or
    ``builtin:particles``, the one volmla ships); the scan (as
    the segmentation gets it: preprocessed when the config has steps) is segmented by it
    into a background / interior / boundary map and the particles are labelled from that
    (``threshold="interior"``) instead of from the phases or the grey.

    ``contacts`` (default true): once the phases are known, contact voxels of a mineral a
    particle lacks go to the touching particle that has it
    (:func:`volmla.particles.refine_contacts`); the split is kept as
    ``particles_split.zarr`` and ``particles.zarr`` holds the refined particles.

    ``field_of_view`` (default ``auto``): the scan's cylindrical field of view is found on
    the scan as ingested (:func:`volmla.preprocess.fov.find_field_of_view`), its outside
    set to the void level before any other stage, and it is given to every particles
    stage (particles that reach its edge are flagged as touching the border); ``false``
    or ``none``: every voxel is data; ``[y, x, r]``: that circle (voxels; e.g. a container
    wall's inner circle).
    """

    model: Path | None = None
    threshold: Literal["auto", "otsu"] | float | None = None
    min_size: int | None = None
    fill_holes: bool | None = None
    split: bool | None = None
    h: float | None = None
    neck: float | None = None
    max_radius: float | None = None
    connectivity: Literal[6, 18, 26] | None = None
    contacts: bool | None = None
    field_of_view: Any = None
    given: tuple[str, ...] = ()

    def options(self) -> dict[str, Any]:
        """The options of :func:`volmla.particles.label_particles` the config names.

        Returns
        -------
        dict
        """
        return {k: getattr(self, k) for k in self.given if k not in ("model", "contacts", "field_of_view")}

    @property
    def refines_contacts(self) -> bool:
        """Whether the run hands contact voxels to the particle whose mineral they are
        (:func:`volmla.particles.refine_contacts`; ``contacts: false`` turns it off)."""
        return self.contacts is not False


def _field_of_view(where: str, value: Any) -> Any:
    from volmla.preprocess.fov import parse_field_of_view

    return parse_field_of_view(value, name=f"config {where}")


_PARTICLE_CHECKS: dict[str, Check] = {
    "model": lambda where, value: value,
    "threshold": _threshold,
    "min_size": _at_least(_int, 0),
    "fill_holes": _bool,
    "split": _bool,
    "h": _at_least(_number, 0),
    "neck": _fraction,
    "max_radius": _positive,
    "connectivity": _choice(6, 18, 26),
    "contacts": _bool,
    "field_of_view": _field_of_view,
}


@dataclass(frozen=True)
class LiberationConfig:
    """Options of :func:`volmla.liberation.analyse`."""

    phase_names: list[str] | dict[Any, str] | None = None
    densities: list[float] | dict[str, float] | None = None
    free_threshold: float | None = None
    size_edges: list[float] | None = None
    by: str | None = None
    include_border: bool | None = None
    section_step: int | None = None
    pieces: int | None = None
    n_boot: int | None = None
    seed: int | None = None
    given: tuple[str, ...] = ()

    def options(self) -> dict[str, Any]:
        """The options the config names.

        Returns
        -------
        dict
        """
        return {k: getattr(self, k) for k in self.given}


_LIBERATION_CHECKS: dict[str, Check] = {
    "phase_names": _optional(_names),
    "densities": _optional(_densities),
    "free_threshold": _number,
    "size_edges": _optional(_numbers),
    "by": _str,
    "include_border": _bool,
    "section_step": _optional(_skip_if_zero),  # 0 skips, as --sections 0 does
    "pieces": _optional(_skip_if_zero),  # 0 skips, as --pieces 0 does
    "n_boot": _at_least(_int, 0),
    "seed": _at_least(_int, 0),
}


@dataclass(frozen=True)
class PipelineConfig:
    """A whole run, validated: what :func:`volmla.pipeline.run` executes."""

    out: Path
    input: InputConfig
    preprocess: list[Any] = field(default_factory=list)
    """Steps as written (``"name:key=value"`` strings or mappings), each already checked."""
    segment: SegmentConfig | None = None
    particles: ParticlesConfig = field(default_factory=ParticlesConfig)
    grains: bool = True
    liberation: LiberationConfig = field(default_factory=LiberationConfig)


# ----------------------------------------------------------------------------- load and validate


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file; paths become absolute.

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    PipelineConfig

    Examples
    --------
    >>> cfg = load_config("run.yaml")  # doctest: +SKIP
    """
    from volmla.io.yamlfile import read_yaml

    path = Path(path)
    raw = read_yaml(path, what="config")
    return validate_config(raw, base=path.parent)


def _input(raw: Any, base: Path) -> InputConfig:
    if isinstance(raw, str | Path):
        return InputConfig(zarr=_volume(base, raw, "input"))
    section = _section("input", raw, _INPUT_CHECKS)
    zarr = section.pop("zarr", None)
    paths = section.pop("paths", None)
    if zarr is not None:  # the mapping form of ``input: scan.zarr`` (with storage chunks)
        other = sorted(set(section) - {"chunks"})
        if paths is not None or other:
            raise VolmlaError(f"config input.zarr (an OME-Zarr volume) takes only input.chunks, got input.{(other or ['paths'])[0]}")
        return InputConfig(zarr=_volume(base, zarr, "input.zarr"), chunks=section.get("chunks"))
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise VolmlaError("config input.paths must list at least one file or folder (or give input: VOLUME.zarr)")
    if not isinstance(paths, list):
        raise VolmlaError(f"config input.paths must be a path or a list of paths, got {paths!r}")
    if section.get("overlap") is not None and not section.get("stitch"):  # ingest would ignore it
        raise VolmlaError(f"config input.overlap {section['overlap']} is for stitching several stacks: "
                          "set input.stitch: true, or leave input.overlap out")
    return InputConfig(paths=[_path(base, p, "input.paths") for p in paths], given=tuple(section), **section)


def _preprocess(raw: Any) -> list[Any]:
    from volmla.preprocess.steps import _as_step

    steps = [] if raw is None else raw  # ``preprocess: 0`` or ``{}`` is no list of steps
    if not isinstance(steps, list):
        raise VolmlaError("config section 'preprocess' must be a list of steps")
    for step in steps:  # checked now (as the run will read them); the run passes them on as written
        if isinstance(step, str | Mapping):
            _as_step(step)
        else:
            raise VolmlaError(f"config preprocess steps must be 'name:key=value' strings or mappings, got {step!r}")
    return steps


def _segment(raw: Any, base: Path) -> SegmentConfig | None:
    if raw is None:
        return None
    seg = _section("segment", raw, _SEGMENT_CHECKS)
    default = "model" if "model" in seg else "regions" if "labels" in seg else None
    spelled = seg.get("method", default)
    if spelled not in _SEGMENT_METHODS:
        raise VolmlaError(f"config segment.method must be one of {_SEGMENT_METHODS}, got {spelled!r}")
    method = "unet" if spelled == "model" else spelled
    if method == "unet" and "model" not in seg:
        raise VolmlaError(f"config segment.method {spelled} needs segment.model (an ONNX file)")
    if method == "rf" and "labels" not in seg and "model" not in seg:
        raise VolmlaError("config segment.method rf needs segment.labels (sparse labels) or segment.model")
    if method == "regions" and ("labels" not in seg or "model" in seg):
        raise VolmlaError("config segment.method regions needs segment.labels (sparse labels) and no segment.model")
    if method in ("threshold", "kmeans") and not isinstance(seg.get("classes"), int):
        raise VolmlaError(f"config segment.method {method} needs segment.classes (an integer)")
    if seg.get("classes") is not None and not 2 <= seg["classes"] <= 255:
        raise VolmlaError(f"config segment.classes must be an integer in 2..255, got {seg['classes']!r}")
    if method in ("threshold", "kmeans") and ("model" in seg or "labels" in seg):
        raise VolmlaError(f"config segment.{'model' if 'model' in seg else 'labels'} is not for method {method}: "
                          "it segments by intensity alone")
    if seg.get("halo") is not None and method != "unet":
        raise VolmlaError(f"config segment.halo is the context of a U-Net (method unet), got method {spelled}")
    if seg.get("psf_sigma") is not None and method != "regions":
        raise VolmlaError(f"config segment.psf_sigma is for method regions (its partial-volume correction), "
                          f"got method {spelled}")
    if "save_model" in seg and not (method == "rf" and "model" not in seg):
        raise VolmlaError("config segment.save_model is where method rf writes the forest it trains on "
                          f"segment.labels; method {spelled}{' with a model' if 'model' in seg else ''} trains none")
    names = seg.get("phase_names")
    if method in ("threshold", "kmeans") and isinstance(names, list) and names and len(names) != seg["classes"] - 1:
        raise VolmlaError(f"config segment.phase_names names {len(names)} phases, but method {method} with "
                          f"classes {seg['classes']} makes {seg['classes'] - 1} (class 0 is the void): name each")
    for key in ("model", "labels", "save_model"):
        if key in seg:
            seg[key] = {"labels": _volume, "model": _model}.get(key, _path)(base, seg[key], f"segment.{key}")
    given = tuple(k for k in seg if k != "method")
    options = {k: v for k, v in seg.items() if k != "method"}
    return SegmentConfig(method=cast(SegmentMethod, method), spelled=spelled, given=(*given, "method"), **options)


def _check_save_model(out: Path, source: InputConfig, segment: SegmentConfig | None,
                      particle_model: Path | None) -> None:
    """The forest a run trains lands on or inside none of the volumes it reads or writes (the
    run's stage volumes and report in ``out``), nor under a plain file: refused before any
    stage runs (written there, it blocked the stage's output, or wrote into an input)."""
    from volmla.segment.dispatch import check_save_model

    if segment is None or segment.save_model is None:
        return
    path, folder = segment.save_model.resolve(), out.resolve()
    if path == folder:
        raise VolmlaError(f"config segment.save_model {segment.save_model} is config out (the run's folder): "
                          "give the forest a file of its own")
    outputs: list[tuple[str, str | Path | None]] = []
    if folder in path.parents:  # a file beside the stages' outputs is fine; one in them is not
        first = folder / path.relative_to(folder).parts[0]
        if first.suffix == ".zarr" or first.name == "report":
            outputs.append(("the run's output", first))
    inputs: list[tuple[str, str | Path | None]] = [("the input", source.zarr), ("segment.labels", segment.labels),
                                                   ("particles.model", particle_model)]
    inputs += [("the input", p) for p in source.paths]
    check_save_model(segment.save_model, outputs=outputs, inputs=inputs, name="config segment.save_model")


def _check_liberation(options: Mapping[str, Any], segment: SegmentConfig | None) -> None:
    """The liberation options as :func:`volmla.liberation.analyse` will check them, with the
    segment section's phase names where the liberation section names none (densities
    counted against them before any stage runs, not after the segmentation)."""
    from volmla.liberation import check_densities, check_options

    known = ("free_threshold", "size_edges", "by", "densities", "phase_names", "section_step", "pieces", "n_boot")
    given = {k: v for k, v in options.items() if k in known}
    if "phase_names" not in given and segment is not None and segment.phase_names:
        given["phase_names"] = list(segment.phase_names)
    try:
        check_options(**given)
        if "phase_names" not in given and segment is not None and segment.method in ("threshold", "kmeans") \
                and segment.classes and isinstance(given.get("densities"), Mapping):  # unnamed: "1", "2", ...
            check_densities(given["densities"], [str(i) for i in range(1, segment.classes)], complete=False)
    except VolmlaError as exc:
        raise VolmlaError(f"config section 'liberation': {exc}") from None


def validate_config(raw: Any, *, base: Path = Path(".")) -> PipelineConfig:
    """Check a parsed config mapping, every section at once, and return it typed.

    Parameters
    ----------
    raw
        The parsed YAML document.
    base
        Folder that relative paths are taken from (the config file's).

    Returns
    -------
    PipelineConfig
        Absolute paths, defaults filled in.

    Examples
    --------
    >>> cfg = validate_config({"out": "/tmp/o", "input": "/tmp/scan.zarr"})
    >>> cfg.input.zarr, cfg.segment, cfg.grains
    (PosixPath('/tmp/scan.zarr'), None, True)
    """
    if not isinstance(raw, Mapping):
        raise VolmlaError("config must be a YAML mapping with sections " + ", ".join(SECTIONS))
    # absolute, so that every stage's job names its inputs as paths (a bare ``slices`` or
    # ``model.onnx`` was not recognised as one: its content went unchecked on a rerun)
    base = Path(base).absolute()
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise VolmlaError(f"config has an unknown section '{unknown[0]}': choose from {', '.join(SECTIONS)}")
    if "out" not in raw or "input" not in raw:
        raise VolmlaError("config needs at least 'out' (output folder) and 'input'")
    out = _path(base, raw["out"], "out")
    source = _input(raw["input"], base)
    steps = _preprocess(raw.get("preprocess"))
    segment = _segment(raw.get("segment"), base)
    particles = _section("particles", raw.get("particles"), _PARTICLE_CHECKS)
    if "model" in particles:
        if "threshold" in particles:
            raise VolmlaError("config particles.model takes the solid from the network's map: leave out "
                              "particles.threshold")
        particles["model"] = _model(base, particles["model"], "particles.model")
        if not particles["model"].is_file():
            raise VolmlaError(f"config particles.model {particles['model']} is not a file (an ONNX particle U-Net)")
    _check_save_model(out, source, segment, particles.get("model"))
    grains = raw.get("grains", True)
    if not isinstance(grains, bool):
        raise VolmlaError(f"config 'grains' must be true or false, got {grains!r}")
    liberation = _section("liberation", raw.get("liberation"), _LIBERATION_CHECKS)
    if liberation and segment is None:
        raise VolmlaError("config 'liberation' needs a 'segment' section (phases to measure)")
    _check_liberation(liberation, segment)
    names = liberation.get("phase_names")
    if segment is not None and segment.method in ("threshold", "kmeans") and isinstance(names, list) and names \
            and segment.classes is not None and len(names) != segment.classes - 1:
        raise VolmlaError(f"config liberation.phase_names names {len(names)} phases, but method {segment.method} "
                          f"with classes {segment.classes} makes {segment.classes - 1} (class 0 is the void): "
                          "name each")
    return PipelineConfig(
        out=out,
        input=source,
        preprocess=steps,
        segment=segment,
        particles=ParticlesConfig(given=tuple(particles), **particles),
        grains=grains,
        liberation=LiberationConfig(given=tuple(liberation), **liberation),
    )

