"""The ranges of every preprocessing parameter, checked in one place.

Each public step and :func:`volmla.preprocess.make_step` pass their parameters through
:func:`check_params`, which returns them normalised (numbers as float, counts as int,
``center`` as a tuple) or raises a one-line :class:`~volmla.errors.VolmlaError` naming the
keyword, what is allowed and what was given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from volmla._validate import check_integer as _integer
from volmla._validate import check_number as _number
from volmla.errors import VolmlaError

__all__ = ["check_center", "check_params"]


def check_center(value: Any) -> tuple[float, float] | None:
    """``center`` as ``(y, x)`` floats (``None`` stays ``None``).

    Parameters
    ----------
    value
        Two numbers, the rotation axis's ``(y, x)`` in voxels, or ``None``.

    Returns
    -------
    tuple of float or None

    Examples
    --------
    >>> check_center([3, 4])
    (3.0, 4.0)
    """
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise VolmlaError(f"center must be two numbers (y, x) in voxels, got {value!r}")
    return (_number("center", value[0]), _number("center", value[1]))


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise VolmlaError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return str(value)


def check_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a step's parameters (one place for every range), returning them normalised.

    Parameters
    ----------
    name
        The step (from :data:`volmla.preprocess.STEP_NAMES`); ``size`` of ``rings`` must
        be at least 3, elsewhere at least 1.
    params
        Keyword -> value; only the keywords present are checked.

    Returns
    -------
    dict
        The same keywords, values normalised.

    Examples
    --------
    >>> check_params("gaussian", {"sigma": 2})
    {'sigma': 2.0}
    >>> check_params("median", {"size": 4})
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: size must be odd, got 4
    """
    p = dict(params)
    for key in ("sigma", "truncate", "sigma_spatial", "sigma_range", "h"):
        if key in p:
            p[key] = _number(key, p[key], minimum=0.0)
    if "amount" in p:
        p["amount"] = _number("amount", p["amount"], minimum=0.0, strict=False)
    if "size" in p:
        p["size"] = _integer("size", p["size"], minimum=3 if name == "rings" else 1, odd=True)
    if "width" in p:
        p["width"] = _integer("width", p["width"], minimum=3, odd=True)
    if "radius" in p:
        p["radius"] = _integer("radius", p["radius"], minimum=1)
    if "patch_radius" in p:
        p["patch_radius"] = _integer("patch_radius", p["patch_radius"], minimum=0)
    if "search_radius" in p:
        p["search_radius"] = _integer("search_radius", p["search_radius"], minimum=1)
    if "order" in p:
        p["order"] = _integer("order", p["order"], minimum=1)
        if p["order"] > 4:
            raise VolmlaError(f"order must lie in 1..4, got {p['order']}")
    if "min_count" in p:
        p["min_count"] = _integer("min_count", p["min_count"], minimum=1)
    if "bins" in p:
        p["bins"] = _integer("bins", p["bins"], minimum=2)
    if "center" in p:
        p["center"] = check_center(p["center"])
    if p.get("threshold") is not None:
        p["threshold"] = _number("threshold", p["threshold"])
    if p.get("upper") is not None:
        p["upper"] = _number("upper", p["upper"])
        if p.get("threshold") is not None and p["upper"] <= p["threshold"]:
            raise VolmlaError(f"upper must be above threshold ({p['threshold']:g}), got {p['upper']:g}")
    if "dtype" in p:
        p["dtype"] = _choice("dtype", p["dtype"], ("float32", "uint8", "uint16"))
    if "low" in p or "high" in p:
        for key in ("low", "high"):
            p[key] = _number(key, p[key], minimum=0.0, strict=False)
            if p[key] > 100:
                raise VolmlaError(f"{key} must be a percentile in 0..100, got {p[key]:g}")
        if p["low"] >= p["high"]:
            raise VolmlaError(f"low must be below high, got low={p['low']:g} high={p['high']:g}")
    return p

