"""Outputs and resume: what writing to a path would do, decided once for every stage.

A volmla output records, in its ``volmla`` attribute block, whether its write finished
(``complete``) and which job made it (``job``: the whole write with shape, dtype and
chunks; ``request``: the caller's job alone, known before anything is computed). From
these :func:`output_state` tells each caller (a command, ``volmla run``, the phantom
writer) the same answer: write it new, resume an interrupted write of the same job,
replace it (``overwrite``), or keep it (complete, same job).

A job's identity is more than its description:

1. every existing path the job names (``"input": path``, lists of paths) is one of its
   inputs, and :func:`job_fingerprint` folds in each input's content fingerprint
   (:func:`input_fingerprint`: metadata, the chunk listing with sizes and a sampled
   hash), so an input replaced between an interrupted write and its rerun never lets the
   rerun resume (it would mix chunks of two inputs);
2. an output that is one of its inputs, lies inside one or holds one is refused before
   anything is touched (:func:`check_not_input`): a lazy read of the input would read
   what the write is replacing;
3. an output another volmla process is writing is refused at once (the advisory lock of
   :mod:`volmla.io.lock`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from volmla.errors import VolmlaError
from volmla.io.lock import busy_error, lock_holder
from volmla.io.ngff import is_url

ATTR = "volmla"
DONE_DIR = ".volmla-done"
INPUTS_KEY = "input_fingerprints"

OutputState = Literal["new", "resume", "replace", "done"]

__all__ = ["ATTR", "DONE_DIR", "INPUTS_KEY", "OutputState", "check_not_file", "check_not_input", "check_not_volume", "check_parent_not_file", "check_output", "decide_output",
           "files_fingerprint", "input_fingerprint", "is_volume", "job_fingerprint", "job_identity", "job_inputs", "output_state",
           "read_attrs", "source_id", "volmla_block"]

logger = logging.getLogger(__name__)

# keys of a job that name what it is or what it writes, never an input
_NOT_PATHS = frozenset({"command", "stage", "output", "out", "out_dir", "save_model", "scratch", INPUTS_KEY})
_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_SAMPLES = 8  # chunk files whose bytes are hashed
_SAMPLE_BYTES = 1 << 16  # from the head and the tail of each (a crc32c chunk ends in its checksum)


def _looks_like_path(value: str) -> bool:
    return 0 < len(value) < 4096 and "\n" not in value and ("/" in value or os.sep in value or value.endswith(".zarr"))


def job_inputs(job: Mapping[str, Any] | None) -> dict[str, str]:
    """The existing paths a job names: its inputs, by key (``"input"``, ``"registration[1]"``).

    Top-level string values, and strings in top-level lists, that look like paths (hold a
    ``/`` or end in ``.zarr``) and exist; ``command`` and ``stage`` are names, and
    ``output``, ``out``, ``out_dir``, ``save_model`` and ``scratch`` are what the job
    writes.

    Parameters
    ----------
    job
        A job description.

    Returns
    -------
    dict
        ``{key: path}``.

    Examples
    --------
    >>> job_inputs({"command": "label", "input": "/", "connectivity": 26})
    {'input': '/'}
    """
    found: dict[str, str] = {}
    for key, value in (job or {}).items():
        if key in _NOT_PATHS:
            continue
        items = [(key, value)] if isinstance(value, str) else (
            [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list | tuple) else [])
        for name, item in items:
            if isinstance(item, str) and (is_url(item) or _looks_like_path(item) and os.path.exists(item)):
                found[name] = item
    return found


def source_id(path: str | Path) -> str:
    """How a job names an input: an fsspec URL as it is, a local path made absolute.

    Parameters
    ----------
    path
        A local path (``file://`` accepted) or a URL (``s3://bucket/scan.zarr``).

    Returns
    -------
    str

    Examples
    --------
    >>> source_id("s3://bucket/scan.zarr")
    's3://bucket/scan.zarr'
    >>> source_id("/data/../data/scan.zarr")
    '/data/scan.zarr'
    """
    text = str(path)
    if is_url(text):
        return text
    return str(Path(text.removeprefix("file://")).resolve())


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _sample(files: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    if len(files) <= _SAMPLES:
        return files
    picks = sorted({round(i * (len(files) - 1) / (_SAMPLES - 1)) for i in range(_SAMPLES)})
    return [files[i] for i in picks]


def _hash_ends(digest: Any, path: str, size: int) -> None:
    with open(path, "rb") as f:
        if size <= 2 * _SAMPLE_BYTES:
            digest.update(f.read())
            return
        digest.update(f.read(_SAMPLE_BYTES))
        f.seek(size - _SAMPLE_BYTES)
        digest.update(f.read(_SAMPLE_BYTES))


def input_fingerprint(path: str | Path) -> str:
    """A cheap fingerprint of an input's content, for a job's identity.

    A Zarr volume: every metadata document (array shape, dtype, chunks, codecs and the
    group's attributes), the listing of its stored chunk files (names and sizes) and the
    bytes of up to 8 chunk files sampled across the listing (64 KiB from each end; a
    chunk written with crc32c ends in its checksum). Markers of an unfinished write
    (dot folders) and the NGFF ``labels/`` written into a scan afterwards are left out. Another file or folder: the names, sizes and
    modification times of the file (or of the folder's files, not recursing, lock files
    left out) and the sampled bytes.

    Parameters
    ----------
    path
        An existing input.

    Returns
    -------
    str
        16 hex digits; equal for an unchanged input, different (all but surely) for a
        replaced one.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from volmla.io import write_volume
    >>> out = write_volume(np.ones((4, 4, 4), np.uint8), tempfile.mkdtemp() + "/v.zarr", voxel_size=1.0)
    >>> input_fingerprint(out) == input_fingerprint(out)
    True
    """
    if is_url(path):
        return _url_fingerprint(str(path))
    root = Path(path)
    if not root.exists():
        raise VolmlaError(f"input {path} does not exist")
    digest = hashlib.sha256()
    files: list[tuple[str, int, str]] = []  # (name, size, full path)
    if _is_zarr(root):
        digest.update(b"zarr")
        for folder, dirs, names in os.walk(root):
            rel = os.path.relpath(folder, root)
            # label images written into the scan later (labels/) are not its content
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rel == "." and d == "labels"))
            for name in sorted(names):
                full = os.path.join(folder, name)
                key = name if rel == "." else f"{rel}/{name}"
                if name in _METADATA:
                    with open(full, "rb") as f:
                        digest.update(f"{key}\0".encode() + f.read() + b"\0")
                elif not name.startswith("."):
                    files.append((key, os.path.getsize(full), full))
        for key, size, _ in files:
            digest.update(f"{key}:{size}\n".encode())
    else:
        entries = [root] if not root.is_dir() else sorted(
            p for p in root.iterdir() if p.is_file() and not p.name.endswith(".lock"))
        for entry in entries:
            st = entry.stat()
            files.append((entry.name, st.st_size, str(entry)))
            digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for key, size, full in _sample(files):
        digest.update(key.encode())
        _hash_ends(digest, full, size)
    return digest.hexdigest()[:16]


def _url_fingerprint(url: str) -> str:
    """:func:`input_fingerprint` of a remote Zarr group through fsspec: its metadata
    documents, the listing (names and sizes) where the store can list, and the bytes of up
    to 8 sampled chunk objects. A store that cannot list (plain HTTP without an index
    page) is fingerprinted by its metadata documents alone."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    digest = hashlib.sha256(b"zarr-url")
    try:
        listing = fs.find(root, detail=True, withdirs=False)
    except (OSError, ValueError, NotImplementedError) as exc:
        logger.debug("cannot list %s (%s): fingerprinting its metadata only", url, exc)
        listing = {}
    files: list[tuple[str, int, str]] = []
    meta: list[str] = []
    for full in sorted(listing):
        key = full[len(root):].lstrip("/")
        parts = key.split("/")
        if any(part.startswith(".") and part not in _METADATA for part in parts) or parts[0] == "labels":
            continue
        if parts[-1] in _METADATA:
            meta.append(full)
        else:
            files.append((key, int(listing[full].get("size") or 0), full))
    if not meta:  # nothing listed: the group's own documents
        meta = [f"{root}/{name}" for name in ("zarr.json", ".zgroup", ".zattrs") if fs.exists(f"{root}/{name}")]
    if not meta:
        raise VolmlaError(f"input {url} does not exist (no zarr.json)")
    for full in meta:
        digest.update(full[len(root):].encode() + b"\0" + fs.cat_file(full) + b"\0")
    for key, size, _ in files:
        digest.update(f"{key}:{size}\n".encode())
    for key, size, full in _sample(files):
        digest.update(key.encode())
        if size <= 2 * _SAMPLE_BYTES:
            digest.update(fs.cat_file(full))
        else:
            digest.update(fs.cat_file(full, start=0, end=_SAMPLE_BYTES))
            digest.update(fs.cat_file(full, start=size - _SAMPLE_BYTES, end=size))
    return digest.hexdigest()[:16]


def files_fingerprint(paths: Sequence[str | Path]) -> str:
    """A content fingerprint of a list of files (a folder of slices as a reader matched it).

    The names (relative to their folder), sizes and the bytes of up to 8 files sampled
    across the list (64 KiB from each end); modification times are left out, so a file
    put back unchanged keeps the fingerprint while a replaced scan does not.

    Parameters
    ----------
    paths
        Existing files, in reading order.

    Returns
    -------
    str
        16 hex digits.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.tif"
    >>> _ = f.write_bytes(b"slice")
    >>> files_fingerprint([f]) == files_fingerprint([str(f)])
    True
    """
    digest = hashlib.sha256(b"files")
    files: list[tuple[str, int, str]] = []
    for p in paths:
        try:
            size = os.path.getsize(p)
        except OSError as exc:
            raise VolmlaError(f"input file {p} cannot be read ({exc.strerror or exc})") from exc
        files.append((Path(p).name, size, str(p)))
        digest.update(f"{Path(p).name}:{size}\n".encode())
    for key, size, full in _sample(files):
        digest.update(key.encode())
        _hash_ends(digest, full, size)
    return digest.hexdigest()[:16]


def job_identity(job: Mapping[str, Any] | None) -> dict[str, Any]:
    """``job`` with the content fingerprint of each input folded in (``input_fingerprints``).

    The inputs fingerprinted are the Zarr groups and the files among
    :func:`job_inputs`. Other folders are not: a job that reads one (an ingest of a
    folder of slices) brings its own fingerprints, taken when its files were listed
    (:func:`files_fingerprint`). A job that names no such input is returned as it is;
    one that already carries the fingerprints is not fingerprinted again.

    Parameters
    ----------
    job
        A job description.

    Returns
    -------
    dict

    Examples
    --------
    >>> job_identity({"command": "phantom", "seed": 1})
    {'command': 'phantom', 'seed': 1}
    """
    desc = dict(job or {})
    if INPUTS_KEY in desc:
        return desc
    inputs = {key: p for key, p in job_inputs(desc).items() if is_url(p) or os.path.isfile(p) or _is_zarr(Path(p))}
    if inputs:
        desc[INPUTS_KEY] = {key: input_fingerprint(p) for key, p in inputs.items()}
    return desc


def job_fingerprint(job: Mapping[str, Any] | None) -> str:
    """A stable hash of a job's identity, used to decide whether a write may resume.

    The identity is :func:`job_identity`: the description with the content fingerprint
    of every input it names, so the same command on a replaced input is another job.

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
    text = json.dumps(job_identity(job), sort_keys=True, default=str)
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


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def check_not_input(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is one of the inputs, lies inside one, or holds one.

    Writing there would replace (or, with ``overwrite``, delete) what the lazy read of
    the input still has to read. Paths are compared resolved (links followed).

    Parameters
    ----------
    output
        The output path.
    inputs
        The paths the job reads.

    Examples
    --------
    >>> check_not_input("/data/out.zarr", ["/data/scan.zarr"])
    >>> check_not_input("/data/scan.zarr", ["/data/scan.zarr"])
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: output /data/scan.zarr is also the input: write the result to another path
    """
    out = _resolved(output)
    for item in inputs:
        inp = _resolved(item)
        if inp == out:
            raise VolmlaError(f"output {output} is also the input: write the result to another path")
        if inp in out.parents:
            raise VolmlaError(f"output {output} lies inside the input {item}: write the result to another path")
        if out in inp.parents:
            raise VolmlaError(f"input {item} lies inside the output {output}: write the result to another path")


def check_not_in_input(output: str | Path, inputs: Iterable[str | Path], *, what: str = "output",
                       advice: str = "write to another folder") -> None:
    """Refuse an output (a folder of outputs) that is one of the inputs or lies inside one.

    Unlike :func:`check_not_input`, an input inside the output is allowed: a run's folder
    may hold what it reads, and the jobs that write there replace only their own entries.
    URLs are skipped (nothing is written into them). Paths are compared resolved.

    Parameters
    ----------
    output
        The output path.
    inputs
        The paths the job reads.
    what, advice
        How the message names the output, and what it advises.

    Examples
    --------
    >>> check_not_in_input("/data/run", ["/data/scan.zarr"])
    >>> check_not_in_input("/data/scan.zarr/run", ["/data/scan.zarr"], what="config out")
    Traceback (most recent call last):
    ...
    volmla.errors.VolmlaError: config out /data/scan.zarr/run is the input /data/scan.zarr or lies inside it: write to another folder
    """
    from volmla.io.ngff import is_url

    out = _resolved(output)
    for item in inputs:
        if isinstance(item, str) and is_url(item):
            continue
        inp = _resolved(item)
        if inp == out or inp in out.parents:
            raise VolmlaError(f"{what} {output} is the input {item} or lies inside it: {advice}")


def check_not_file(path: str | Path) -> None:
    """Refuse a volume output where a plain file lies (a volume is a folder: the file is
    someone else's, and ``overwrite`` never deletes it).

    Examples
    --------
    >>> check_not_file("/nonexistent/out.zarr")
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise VolmlaError(f"output {path} is a file, not a volume: refusing to replace it")


def check_parent_not_file(path: str | Path, *, what: str) -> None:
    """Refuse an output path whose nearest existing ancestor is a plain file (no folder
    can be made there: the write would fail only after the work).

    Parameters
    ----------
    path
        The output (a file or a folder to be made).
    what
        How the message names it (``"output"``, ``"--save-model"``).

    Examples
    --------
    >>> check_parent_not_file("/nonexistent/out.zarr", what="output")
    """
    for parent in Path(path).parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise VolmlaError(f"{what} folder {parent} is a file, not a folder")
            return


def check_not_volume(folder: str | Path, *, what: str, advice: str) -> None:
    """Refuse a folder for a command's outputs that is a Zarr volume: they would be written
    inside another volume's folder (``overwrite`` too).

    Parameters
    ----------
    folder
        The output folder.
    what, advice
        How the message names the folder (``"output"``, ``"config out"``) and what it asks.

    Examples
    --------
    >>> check_not_volume("/nonexistent/out", what="output", advice="name a folder of its own")
    """
    if _is_zarr(Path(folder)):
        raise VolmlaError(f"{what} {folder} is an OME-Zarr volume, not a folder for outputs: {advice}")


def _changed_inputs(block: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """The inputs (by path) whose fingerprint differs from the one the output recorded."""
    recorded, now = block.get("inputs") or {}, identity.get(INPUTS_KEY) or {}
    paths = job_inputs(identity)
    return [paths.get(k, k) for k in sorted(now) if k in recorded and recorded[k] != now[k]]


def decide_output(
    path: Path, fingerprint: str, *, overwrite: bool, identity: Mapping[str, Any] | None = None
) -> OutputState:
    """:func:`output_state` for a job already fingerprinted, without the input and lock checks.

    For :func:`~volmla.io.write_volume`, which has checked both and holds the lock.

    Parameters
    ----------
    path
        The output.
    fingerprint
        The job's :func:`job_fingerprint`.
    overwrite
        Whether an existing output may be replaced.
    identity
        The job's :func:`job_identity`, to say which input changed.

    Returns
    -------
    str
        As :func:`output_state`.
    """
    if not os.path.lexists(path):
        return "new"
    if overwrite:
        return "replace"
    why = ""
    if is_volume(path):
        block = volmla_block(path)
        # "job" fingerprints the full write (with shape, dtype, chunks); "request" only the
        # caller's job, so a command can check for a resumable output before computing.
        if fingerprint in (block.get("job"), block.get("request")):
            return "done" if block.get("complete", False) else "resume"
        changed = _changed_inputs(block, identity or {})
        if changed:
            state = "written" if block.get("complete", False) else "started"
            why = f" (it was {state} from other input content than {changed[0]} holds now)"
    raise VolmlaError(f"output {path} exists: pass overwrite=True to replace it{why}")


def output_state(
    path: str | Path, *, job: Mapping[str, Any] | None = None, overwrite: bool = False
) -> OutputState:
    """What writing ``job``'s output to ``path`` would do, without touching anything.

    Refuses, each with one line: an output that is one of the job's inputs (or lies
    inside one, or holds one), an output another volmla process is writing, and an
    existing output of another job (another input content included) without
    ``overwrite``.

    Parameters
    ----------
    path
        The output (a volume group, usually).
    job
        A description of the computation; its fingerprint (with its inputs' content) is
        compared with the one the output recorded.
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
    identity = job_identity(job)
    check_not_input(path, job_inputs(identity).values())
    who = lock_holder(path)
    if who is not None:
        raise busy_error(path, who)
    return decide_output(path, job_fingerprint(identity), overwrite=overwrite, identity=identity)


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
