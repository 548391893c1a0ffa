"""Replacing an output without ever losing it: a temporary sibling, swapped in on success.

An ``overwrite`` never deletes the old output before the new one is complete:

1. the new output is written into a sibling ``<output>.volmla-tmp-<token>`` (the token
   is the job's fingerprint, so a rerun of the same job finds and resumes it, and a
   sibling of another job is stale);
2. on success :func:`swap_in` renames the old output aside (``<output>.volmla-old-
   <token>``), renames the new one in and only then deletes the old one; each rename is
   atomic, so the path holds the old output or the new one;
3. :func:`recover`, run under the output's lock before each write, puts an old output
   back whose process died between the two renames, and deletes old outputs left by a
   process that died after them; :func:`remove_stale` deletes temporary siblings of
   other jobs.

Every step runs under the output's lock (:mod:`volmla.io.lock`). Single files (a
report, a registration) are replaced the same way, one rename each:
:func:`replaced_file`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from volmla.io.lock import write_error

logger = logging.getLogger(__name__)

TMP = ".volmla-tmp-"
OLD = ".volmla-old-"

__all__ = ["OLD", "TMP", "recover", "remove", "remove_stale", "replaced_file", "siblings", "swap_in", "tmp_sibling"]


def tmp_sibling(output: Path, token: str) -> Path:
    """Where a replacement of ``output`` by the job ``token`` is written.

    Parameters
    ----------
    output
        The output.
    token
        The job's fingerprint.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> tmp_sibling(Path("/data/out.zarr"), "ab12").name
    'out.zarr.volmla-tmp-ab12'
    """
    return output.with_name(f"{output.name}{TMP}{token}")


def siblings(output: Path, kind: str) -> list[Path]:
    """The temporary (``TMP``) or old (``OLD``) siblings of ``output`` there are.

    Parameters
    ----------
    output
        The output.
    kind
        :data:`TMP` or :data:`OLD`.

    Returns
    -------
    list of pathlib.Path
    """
    pattern = os.path.join(glob.escape(str(output.parent)), glob.escape(output.name + kind) + "*")
    return sorted(Path(p) for p in glob.glob(pattern))


def remove(path: Path) -> None:
    """Delete a file, link or folder tree; nothing when it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(output: Path) -> None:
    """Finish what a process that died while swapping left (see the module docstring, point 3).

    Parameters
    ----------
    output
        The output, whose lock the caller holds.
    """
    old = siblings(output, OLD)
    if old and not os.path.lexists(output):
        logger.warning("restoring %s from %s (a replacement was interrupted while swapping)", output, old[-1])
        os.rename(old.pop(), output)
    for path in old:
        remove(path)


def remove_stale(output: Path, keep: Path | None = None) -> None:
    """Delete the temporary siblings of ``output`` but ``keep``.

    Parameters
    ----------
    output
        The output, whose lock the caller holds.
    keep
        The sibling the current job writes into.
    """
    for path in siblings(output, TMP):
        if path != keep:
            logger.info("removing %s (an unfinished replacement by another job)", path)
            remove(path)


def swap_in(new: Path, output: Path, token: str) -> None:
    """Put the complete ``new`` in place of ``output``, deleting the old one last.

    Parameters
    ----------
    new
        The complete replacement (a sibling of ``output``).
    output
        The output.
    token
        The job's fingerprint (names the old output while it is set aside).
    """
    old = output.with_name(f"{output.name}{OLD}{token}")
    try:
        if os.path.lexists(output):
            os.rename(output, old)
        try:
            os.rename(new, output)
        except OSError:
            if os.path.lexists(old) and not os.path.lexists(output):
                os.rename(old, output)
            raise
    except OSError as exc:
        raise write_error(output, exc) from exc
    remove(old)


@contextlib.contextmanager
def replaced_file(path: str | Path) -> Iterator[Path]:
    """Write a file through a temporary sibling that replaces ``path`` only on success.

    The temporary keeps the suffix (writers that choose a format by it, such as
    SimpleITK or NumPy's ``savez``, write the right one) and starts with a dot; it is
    removed if the block fails, so ``path`` holds the old file or the new one, never a
    half-written one.

    Parameters
    ----------
    path
        The file to (re)place.

    Yields
    ------
    pathlib.Path
        Where to write.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "report.json"
    >>> with replaced_file(target) as tmp:
    ...     _ = tmp.write_text("{}")
    >>> target.read_text()
    '{}'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}{TMP}{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
