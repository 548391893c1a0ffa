"""The one YAML reader: configs, step lists, cluster tables, abundances."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from volmla.errors import VolmlaError

__all__ = ["read_mapping", "read_yaml"]


def read_yaml(path: str | Path, *, what: str = "config") -> Any:
    """Parse a YAML (or JSON) file safely, with one-line errors.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for error messages (``"config"``, ``"step config"``, ...).

    Returns
    -------
    object
        The parsed document (safe loading: no Python objects are built; a key given
        twice in one mapping is an error).

    Examples
    --------
    >>> read_yaml("/nonexistent.yaml")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: config /nonexistent.yaml does not exist
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"{what} {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VolmlaError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise VolmlaError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None


@functools.cache
def _unique_key_loader() -> type:
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps
    the last silently: a config with two ``out:`` lines would write to the second)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: SafeLoader names it
                    break
                if twice:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    # YAML 1.1 (PyYAML) reads ``1e300`` and ``2e-3`` as text: a number without a dot is a
    # float in YAML 1.2 and JSON, and a config's ``max_radius: 1e3`` was refused as no number
    import re

    UniqueKeyLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return UniqueKeyLoader


def read_mapping(path: str | Path, *, what: str) -> dict[Any, Any]:
    """A YAML/JSON file holding a non-empty mapping (a cluster table, XRD abundances).

    Parameters
    ----------
    path
        The file.
    what
        What it holds, for error messages.

    Returns
    -------
    dict

    Examples
    --------
    >>> read_mapping("/nonexistent.yaml", what="xrd")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: xrd /nonexistent.yaml does not exist
    """
    data = read_yaml(path, what=what)
    if not isinstance(data, dict) or not data:
        raise VolmlaError(f"{what} {path} must be a non-empty mapping, got {type(data).__name__}")
    return data
