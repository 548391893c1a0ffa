"""Checks of scalar parameters at the public boundary, with one-line errors naming the keyword."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from volmla.errors import VolmlaError

__all__ = ["check_integer", "check_number"]


def check_number(name: str, value: Any, *, minimum: float | None = None, strict: bool = True) -> float:
    """A finite real number, above ``minimum`` (or at least it when not ``strict``).

    Parameters
    ----------
    name
        The keyword, for the error message.
    value
        What was given.
    minimum
        Lower bound, if any.
    strict
        Whether the bound itself is refused.

    Returns
    -------
    float

    Examples
    --------
    >>> check_number("sigma", 1)
    1.0
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise VolmlaError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise VolmlaError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        word = "greater than" if strict else "at least"
        raise VolmlaError(f"{name} must be {word} {minimum:g}, got {value:g}")
    return value


def check_integer(name: str, value: Any, *, minimum: int, odd: bool = False) -> int:
    """An integer of at least ``minimum`` (odd when ``odd``); an integral float is accepted.

    Parameters
    ----------
    name
        The keyword, for the error message.
    value
        What was given.
    minimum
        Smallest allowed value.
    odd
        Whether the value must be odd.

    Returns
    -------
    int

    Examples
    --------
    >>> check_integer("size", 3.0, minimum=1, odd=True)
    3
    """
    if (isinstance(value, bool) or not isinstance(value, int | np.integer | float)
            or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
        raise VolmlaError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise VolmlaError(f"{name} must be at least {minimum}, got {value}")
    if odd and value % 2 == 0:
        raise VolmlaError(f"{name} must be odd, got {value}")
    return value
