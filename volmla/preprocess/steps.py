"""The step language and the lazy chain of steps, :func:`preprocess`.

1. A step is a name from :data:`STEP_NAMES` and its keyword parameters
   (:class:`Step`); it is written ``name:key=value,...`` (:func:`parse_step`, values
   read as YAML scalars or lists) or as a YAML list of ``{name: ..., params: {...}}``
   (:func:`load_steps`); :func:`make_step` checks the name and every parameter against
   the step's public function (its keyword-only arguments) and their ranges;
2. :func:`step_halo` derives the halo a step needs from its parameters, and
   :func:`check_steps` checks every step's halo against the volume's shape, computing
   nothing;
3. :func:`preprocess` applies the steps in order, lazily: local filters stay lazy;
   ``normalize``, ``beam-hardening`` and ``rings`` compute their global tables when
   called.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias, cast

import xarray as xr

from volmla.engine.backend import resolve_device
from volmla.engine.blocks import as_dataarray, as_volume
from volmla.engine.overlap import normalise_halo
from volmla.errors import VolmlaError
from volmla.preprocess._params import check_params
from volmla.preprocess._wiring import LazyVolume
from volmla.preprocess.beam import beam_hardening
from volmla.preprocess.filters import bilateral, gaussian, median, nlmeans, unsharp
from volmla.preprocess.intensity import normalize
from volmla.preprocess.kernels import (
    bilateral_halo,
    gaussian_halo,
    median_halo,
    nlmeans_halo,
    unsharp_halo,
)
from volmla.preprocess.ring_artefacts import rings
from volmla.types import Device, VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["STEP_NAMES", "Step", "StepLike", "check_steps", "load_steps", "make_step", "parse_step", "preprocess",
           "step_halo"]

_FUNCTIONS: dict[str, Callable[..., LazyVolume]] = {
    "normalize": normalize,
    "gaussian": gaussian,
    "median": median,
    "bilateral": bilateral,
    "nlmeans": nlmeans,
    "unsharp": unsharp,
    "beam-hardening": beam_hardening,
    "rings": rings,
}
STEP_NAMES: tuple[str, ...] = tuple(_FUNCTIONS)
"""The step names, in the order the documentation lists them."""

_HALOS: dict[str, Callable[..., Any]] = {
    "gaussian": gaussian_halo,
    "median": median_halo,
    "bilateral": bilateral_halo,
    "nlmeans": nlmeans_halo,
    "unsharp": unsharp_halo,
    "rings": lambda *, size=5, **_: (0, size // 2, size // 2),
}
"""The halo function of each local step (the others need none)."""


def _signature(name: str) -> dict[str, inspect.Parameter]:
    """A step's parameters: the keyword-only arguments of its function, less ``device``."""
    params = inspect.signature(_FUNCTIONS[name]).parameters
    return {k: v for k, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and k != "device"}


class Step(NamedTuple):
    """One preprocessing step: a name from :data:`STEP_NAMES` and its parameters."""

    name: str
    params: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}`` (JSON/YAML friendly)."""
        return {"name": self.name, "params": dict(self.params)}


#: What the step functions accept as a step: a :class:`Step`, a ``"name:key=value,..."``
#: string or a ``{"name": ..., "params": {...}}`` mapping.
StepLike: TypeAlias = Step | str | Mapping[str, Any]


def make_step(name: str, params: Mapping[str, Any] | None = None) -> Step:
    """A validated :class:`Step` (unknown names, unknown/missing parameters, bad values raise).

    Parameters
    ----------
    name
        A name from :data:`STEP_NAMES`.
    params
        The step's keyword parameters (those of its function; defaults are not filled in).

    Returns
    -------
    Step
        The step with its parameters normalised.

    Examples
    --------
    >>> make_step("median", {"size": 3})
    Step(name='median', params={'size': 3})
    """
    if not isinstance(name, str):
        raise VolmlaError(f"step name must be a string (one of {', '.join(STEP_NAMES)}), got {name!r}")
    if name not in _FUNCTIONS:
        raise VolmlaError(f"unknown step {name!r}: choose from {', '.join(STEP_NAMES)}")
    params = dict(params or {})
    signature = _signature(name)
    unknown = sorted(set(params) - set(signature))
    if unknown:
        allowed = ", ".join(signature) or "none"
        raise VolmlaError(f"step {name}: unknown parameter {unknown[0]!r}: choose from {allowed}")
    missing = [k for k, v in signature.items() if v.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise VolmlaError(f"step {name}: missing parameter {missing[0]!r} (e.g. {name}:{missing[0]}=VALUE)")
    full = {k: params.get(k, v.default) for k, v in signature.items()}
    try:
        checked = check_params(name, full)
    except VolmlaError as exc:
        raise VolmlaError(f"step {name}: {exc}") from None
    return Step(name, {k: checked[k] for k in params})


def _split_params(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[("
        depth -= char in "])"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in (s.strip() for s in parts) if p]


def parse_step(text: str) -> Step:
    """Parse ``NAME[:key=value,key=value]`` (values read as YAML scalars or lists; ``1e2``
    and ``1.5e0`` are numbers, as in a YAML config).

    Parameters
    ----------
    text
        The step; ``-`` in keys reads as ``_``.

    Returns
    -------
    Step
        Validated by :func:`make_step`.

    Examples
    --------
    >>> parse_step("gaussian:sigma=1.5")
    Step(name='gaussian', params={'sigma': 1.5})
    >>> parse_step("beam-hardening:center=[64,60],order=2").params["center"]
    (64.0, 60.0)
    >>> parse_step("unsharp:amount=1e2").params["amount"]
    100.0
    """
    import yaml

    from volmla.io.yamlfile import _unique_key_loader

    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if name not in _FUNCTIONS:
        raise VolmlaError(f"unknown step {name!r}: choose from {', '.join(STEP_NAMES)}")
    params: dict[str, Any] = {}
    for item in _split_params(rest):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise VolmlaError(f"step {name}: parameters must be key=value, got {item!r} in {text!r}")
        field = key.strip().replace("-", "_")
        if field in params:
            raise VolmlaError(f"step {name}: parameter {key.strip()!r} given twice in {text!r}")
        try:
            params[field] = yaml.load(value.strip(), Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
        except yaml.YAMLError:
            raise VolmlaError(f"step {name}: cannot read value {value!r} of {key.strip()}") from None
    return make_step(name, params)


def load_steps(path: str | Path) -> list[Step]:
    """Read steps from YAML: a list of ``{name: ..., params: {...}}`` (optionally under ``steps:``).

    Items may also be ``"name:key=value,..."`` strings.

    Parameters
    ----------
    path
        The YAML file (read by :func:`volmla.io.yamlfile.read_yaml`).

    Returns
    -------
    list of Step
        Validated, in the file's order.

    Examples
    --------
    >>> load_steps("steps.yaml")  # doctest: +SKIP
    [Step(name='gaussian', params={'sigma': 1.0})]
    """
    from volmla.io.yamlfile import read_yaml

    path = Path(path)
    doc = read_yaml(path, what="step config")
    if isinstance(doc, Mapping) and "steps" in doc:
        doc = doc["steps"]
    if not isinstance(doc, list) or not doc:
        raise VolmlaError(f"step config {path} must hold a non-empty list of steps, got {type(doc).__name__}")
    steps = []
    for item in doc:
        if isinstance(item, str):
            steps.append(parse_step(item))
            continue
        if not isinstance(item, Mapping) or "name" not in item:
            raise VolmlaError(f"each step in {path} must be a mapping with a name, got {item!r}")
        steps.append(_mapping_step(item, where=f" in {path}"))
    return steps


def _mapping_step(item: Mapping[str, Any], *, where: str = "") -> Step:
    """A ``{name: ..., params: {...}}`` step: no other key, ``params`` a mapping (``-`` in keys reads as ``_``)."""
    name = item.get("name")
    extra = sorted(str(k) for k in set(item) - {"name", "params"})
    if extra:
        raise VolmlaError(f"step {name}{where}: unknown key {extra[0]!r}: use name and params")
    params = item.get("params") or {}
    if not isinstance(params, Mapping):
        raise VolmlaError(f"step {name}{where}: params must be a mapping, got {params!r}")
    # a missing or non-string name is refused by make_step, naming what was given
    return make_step(cast(str, name), {str(k).replace("-", "_"): v for k, v in params.items()})


def _as_step(step: StepLike) -> Step:
    """Any accepted form of a step as a validated :class:`Step`."""
    if isinstance(step, Step):
        return make_step(step.name, step.params)
    if isinstance(step, str):
        return parse_step(step)
    if isinstance(step, Mapping):
        return _mapping_step(step)
    raise VolmlaError(f"a step must be a Step, a 'name:key=value' string or a mapping, got {step!r}")


def step_halo(step: StepLike) -> tuple[int, int, int]:
    """The ``(z, y, x)`` halo a step needs (0 for pointwise and global steps).

    Parameters
    ----------
    step
        A :class:`Step`, a ``"name:key=value,..."`` string or a mapping.

    Returns
    -------
    tuple of int
        Voxels of context on each side of z, y and x.

    Examples
    --------
    >>> step_halo("gaussian:sigma=2")
    (8, 8, 8)
    """
    step = _as_step(step)
    if step.name not in _HALOS:
        return (0, 0, 0)
    signature = _signature(step.name)
    full = {k: step.params.get(k, v.default) for k, v in signature.items()}
    return normalise_halo(_HALOS[step.name](**full))


def check_steps(steps: Sequence[StepLike], shape: Sequence[int]) -> list[Step]:
    """Validate steps and their halos against a volume shape, computing nothing.

    Parameters
    ----------
    steps
        :class:`Step` objects, ``"name:key=value,..."`` strings or
        ``{"name": ..., "params": {...}}`` mappings (at least one).
    shape
        The volume's shape (z, y, x): no halo may be larger than it.

    Returns
    -------
    list of Step
        The steps, validated.

    Examples
    --------
    >>> check_steps(["median:size=3"], (8, 8, 8))
    [Step(name='median', params={'size': 3})]
    """
    out = [_as_step(s) for s in steps]
    if not out:
        raise VolmlaError("no preprocessing steps given: pass steps=NAME[:key=value,...]")
    for step in out:
        try:
            normalise_halo(step_halo(step), shape)
        except VolmlaError as exc:
            raise VolmlaError(f"step {step.name}: {exc}") from None
    return out


def preprocess(
    volume: VolumeLike,
    steps: Sequence[StepLike],
    *,
    device: Device = "cpu",
) -> xr.DataArray:
    """Chain preprocessing steps lazily.

    Every step and its halo is checked against the volume first. Local filters stay
    lazy; ``normalize``, ``beam-hardening`` and ``rings`` compute their global tables
    (histogram / radial profiles) when called, which computes the steps before them.

    Parameters
    ----------
    volume
        3-D intensity volume (xarray from :func:`volmla.io.open_volume`, NumPy or Dask).
    steps
        :class:`Step` objects, ``"name:key=value,..."`` strings or
        ``{"name": ..., "params": {...}}`` mappings, applied in order.
    device
        Where the local filters run (``auto``, ``cpu`` or ``gpu``).

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(z, y, x)``, each step recorded in ``attrs["provenance"]``.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.zeros((8, 8, 8), chunks=4, dtype=np.uint16)
    >>> preprocess(x, ["median:size=3", "gaussian:sigma=1"]).dtype
    dtype('float32')
    """
    if not isinstance(volume, xr.DataArray):  # voxel-index coordinates, as every stage gives them
        volume = as_dataarray(as_volume(volume).data, like=volume, name="volume", kind="intensity")
    checked = check_steps(steps, volume.shape)
    dev = resolve_device(device)
    out: LazyVolume = volume
    for step in checked:
        fn = _FUNCTIONS[step.name]
        kwargs = dict(step.params)
        if "device" in inspect.signature(fn).parameters:
            kwargs["device"] = dev
        logger.info("preprocess: %s %s", step.name, step.params)
        out = fn(out, **kwargs)
    assert isinstance(out, xr.DataArray)
    return out
