"""An advisory lock per output, so two volmla processes never write one output at once.

1. The lock is an exclusive ``fcntl.flock`` on a sibling file ``<output>.lock`` (for
   ``out.zarr``: ``out.zarr.lock``), holding the holder's pid, host and start time. The
   kernel drops the lock when the holder dies, however it dies (``kill -9``, a lost
   node), so a stale lock file never blocks a rerun: the next writer locks it again.
2. :func:`output_lock` takes it without waiting: a second writer fails at once with one
   line naming the holder (``output X is being written by another volmla process (pid
   N)``); threads of one process exclude each other too (each opens its own file
   description). The holder removes the file while still holding the lock, and a taker
   checks that the file it locked is still the one at the path, so a writer that opened
   the old file just before it was removed never believes it holds the new one.
3. :func:`lock_holder` asks, without taking anything, whether someone holds the lock, so
   a command's plan can refuse before it computes.
4. A lock file that cannot be made (a read-only folder) is the user error ``cannot write
   output X: permission denied``.

Where ``fcntl`` is missing (Windows), or a file system refuses ``flock`` (some network
file systems), the lock is a no-op, with a warning in the second case.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from volmla.errors import VolmlaError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["busy_error", "lock_holder", "lock_path", "output_lock", "write_error"]

# outputs this process locked, with the thread that holds each: a probe from inside the
# holder's own write (which opens another file description) is not a conflict
_HELD: dict[str, int] = {}
_HELD_GUARD = threading.Lock()
# a probe (lock_holder) holds a shared lock for microseconds; a taker retries this long
_RETRY_S = 0.2
# flock errors that mean "this file system cannot lock", not "someone holds it"
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def lock_path(output: str | Path) -> Path:
    """The lock file of ``output``: ``<output>.lock`` beside it.

    Parameters
    ----------
    output
        An output path.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> lock_path("/data/out.zarr/").name
    'out.zarr.lock'
    """
    out = Path(os.path.abspath(output))
    return out.with_name(out.name + ".lock")


def write_error(output: str | Path, exc: OSError) -> VolmlaError:
    """The one-line error for an output that cannot be written (``exc`` says why).

    Parameters
    ----------
    output
        The output the user named.
    exc
        The operating system's error.

    Returns
    -------
    VolmlaError
        ``cannot write output X: permission denied`` (or the reason the system gave).

    Examples
    --------
    >>> str(write_error("out.zarr", PermissionError(13, "Permission denied")))
    'cannot write output out.zarr: permission denied'
    """
    reason = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or type(exc).__name__
    return VolmlaError(f"cannot write output {output}: {reason.lower()}")


def _holder_text(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        return "pid unknown"
    return f"pid {text[0]}" if text and text[0].isdigit() else "pid unknown"


def busy_error(output: str | Path, who: str) -> VolmlaError:
    """The one-line error for an output another volmla process (``who``: ``"pid N"``) writes.

    Parameters
    ----------
    output
        The output.
    who
        The holder.

    Returns
    -------
    VolmlaError
    """
    return VolmlaError(f"output {output} is being written by another volmla process ({who}): "
                       "wait for it to finish or stop it")


def lock_holder(output: str | Path) -> str | None:
    """Who holds ``output``'s lock (``"pid N"``), or None when nobody does; takes nothing.

    Parameters
    ----------
    output
        An output path.

    Returns
    -------
    str or None

    Examples
    --------
    >>> lock_holder("/nonexistent/out.zarr") is None
    True
    """
    if fcntl is None:
        return None
    path = lock_path(output)
    with _HELD_GUARD:
        if _HELD.get(str(path)) == threading.get_ident():
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: nobody holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(fd)
        except OSError:
            return None  # a file system that cannot lock (see output_lock)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _take(path: Path, output: str | Path) -> int:
    """Open and lock ``path`` (-1: the file system cannot lock), or raise the one-line busy error."""
    assert fcntl is not None
    deadline = time.monotonic() + _RETRY_S
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise write_error(output, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder_text(fd)
            os.close(fd)
            if time.monotonic() < deadline:  # perhaps only a probe's shared lock
                time.sleep(0.02)
                continue
            raise busy_error(output, who) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                logger.warning("%s: the file system cannot lock files (%s); writing %s unlocked",
                               path, exc.strerror, output)
                with contextlib.suppress(OSError):
                    path.unlink()
                return -1
            raise write_error(output, exc) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as we locked it: lock the new one


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold ``output``'s advisory lock for the block; fail at once when another writer does.

    Parameters
    ----------
    output
        The output about to be written.

    Yields
    ------
    pathlib.Path
        The lock file.

    Examples
    --------
    >>> with output_lock("/tmp/doc-out.zarr"):  # doctest: +SKIP
    ...     pass
    """
    path = lock_path(output)
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(output, exc) from None
    key = str(path)
    with _HELD_GUARD:
        if key in _HELD:  # this process writes it already (another thread, or a nested call)
            raise busy_error(output, f"pid {os.getpid()}")
    fd = _take(path, output)
    if fd < 0:
        yield path
        return
    with _HELD_GUARD:
        _HELD[key] = threading.get_ident()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        yield path
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it (see the module docstring, point 2)
        os.close(fd)
