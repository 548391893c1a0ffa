"""Outputs and resume: what writing to a path would do, decided once for every stage.

A volmla output records, in its ``volmla`` attribute block, whether its write finished
(``complete``) and which job made it (``job``: the whole write with shape, dtype and
chunks; ``request``: the caller's job alone, known before anything is computed). From
these :func:`output_state` tells each caller (a command, ``volmla run``, the phantom
writer) the same answer: write it new, resume an interrupted write of the same job,
replace it (``overwrite``), or keep it (complete, same job).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from volmla.errors import VolmlaError

ATTR = "volmla"
DONE_DIR = ".volmla-done"

OutputState = Literal["new", "resume", "replace", "done"]

__all__ = ["ATTR", "DONE_DIR", "OutputState", "check_output", "is_volume", "job_fingerprint",
           "output_state", "read_attrs", "volmla_block"]


def job_fingerprint(job: Mapping[str, Any] | None) -> str:
    """A stable hash of a job description, used to decide whether a write may resume.

    Parameters
    ----------
    job
        A JSON-able description of the computation.

    Returns
    -------
    str
        16 hex digits.

    Examples
    --------
    >>> job_fingerprint({"a": 1, "b": [2]}) == job_fingerprint({"b": [2], "a": 1})
    True
    """
    text = json.dumps(job or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of the Zarr v3 group at ``path``, read through zarr-python.

    Raises :class:`~volmla.errors.VolmlaError` when ``path`` is not a readable group.

    Parameters
    ----------
    path
        The group.

    Returns
    -------
    dict
    """
    import zarr

    try:
        group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for a missing or bad group
        raise VolmlaError(f"{path} is not a readable Zarr v3 group: {exc}") from None
    return dict(group.attrs.asdict())


def _attrs_or_empty(path: Path) -> dict[str, Any]:
    if not (path / "zarr.json").is_file():
        return {}
    try:
        return read_attrs(path)
    except VolmlaError:
        return {}


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr v3 group with NGFF multiscales metadata.

    Parameters
    ----------
    path
        Any path.

    Returns
    -------
    bool
    """
    attrs = _attrs_or_empty(Path(path))
    return "multiscales" in attrs.get("ome", attrs)


def volmla_block(path: str | Path) -> dict[str, Any]:
    """The ``volmla`` attribute block of the group at ``path`` (``{}`` when there is none).

    Parameters
    ----------
    path
        Any path.

    Returns
    -------
    dict
    """
    return dict(_attrs_or_empty(Path(path)).get(ATTR, {}))


def output_state(
    path: str | Path, *, job: Mapping[str, Any] | None = None, overwrite: bool = False
) -> OutputState:
    """What writing ``job``'s output to ``path`` would do, without touching anything.

    Parameters
    ----------
    path
        The output (a volume group, usually).
    job
        A description of the computation; its fingerprint is compared with the one the
        output recorded.
    overwrite
        Whether an existing output may be replaced.

    Returns
    -------
    str
        ``"new"`` (nothing there), ``"replace"`` (something there and ``overwrite``),
        ``"resume"`` (an interrupted write of the same job) or ``"done"`` (a complete
        output of the same job). Raises :class:`~volmla.errors.VolmlaError` when an
        output of another job is there and may not be replaced.

    Examples
    --------
    >>> output_state("/nonexistent/out.zarr", job={"command": "label"})
    'new'
    """
    path = Path(path)
    if not path.exists():
        return "new"
    if overwrite:
        return "replace"
    if is_volume(path):
        block = volmla_block(path)
        # "job" fingerprints the full write (with shape, dtype, chunks); "request" only the
        # caller's job, so a command can check for a resumable output before computing.
        if job_fingerprint(job) in (block.get("job"), block.get("request")):
            return "done" if block.get("complete", False) else "resume"
    raise VolmlaError(f"output {path} exists: pass overwrite=True to replace it")


def check_output(
    path: str | Path, *, overwrite: bool = False, job: Mapping[str, Any] | None = None
) -> Literal["new", "resume", "replace"]:
    """Decide what writing to ``path`` would do; a complete output is never rewritten silently.

    As :func:`output_state`, but a complete output of the same job is an error too
    (writing it again needs ``overwrite``).

    Parameters
    ----------
    path
        The output.
    overwrite
        Whether an existing output may be replaced.
    job
        A description of the computation.

    Returns
    -------
    str
        ``"new"``, ``"resume"`` or ``"replace"``.

    Examples
    --------
    >>> check_output("/nonexistent/out.zarr")
    'new'
    """
    state = output_state(path, job=job, overwrite=overwrite)
    if state == "done":
        raise VolmlaError(f"output {path} exists: pass overwrite=True to replace it")
    return state
