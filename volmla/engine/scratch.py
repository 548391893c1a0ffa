"""Scratch storage for intermediates that several passes read: computed once, read back lazily.

A lazy Dask chain that later passes consume several times (labelling scans its input,
then relabels it; grain cleaning labels, counts and rewrites) is recomputed by every
pass, and Dask keeps the shared intermediate blocks of a wide graph in memory until all
of their consumers have run. Writing such an intermediate to a scratch Zarr array on this
machine once bounds both: each later pass reads chunks back from disk.

- :func:`session_scratch`: a temporary folder removed when Python exits, or None when the
  workers run on other machines (they could not read it; the chain is then recomputed);
- :func:`store`: one compute that writes an array there (Blosc + crc32c, like every chunk
  volmla writes) and the lazy array that reads it back.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dask.array as da

logger = logging.getLogger(__name__)

__all__ = ["session_scratch", "store", "store_together", "workers_here"]


def workers_here(client: Any) -> bool:
    """Whether every worker of ``client`` runs on this machine.

    Parameters
    ----------
    client
        A ``distributed.Client``.

    Returns
    -------
    bool
    """
    from distributed import LocalCluster

    if isinstance(getattr(client, "cluster", None), LocalCluster):
        return True
    here = {"127.0.0.1", "localhost", socket.gethostname()}
    with contextlib.suppress(OSError):
        here.add(socket.gethostbyname(socket.gethostname()))
    hosts = {urlparse(addr).hostname for addr in client.scheduler_info().get("workers", {})}
    return bool(hosts) and hosts <= here


def session_scratch(prefix: str, *, what: str) -> Path | None:
    """A scratch folder on this machine, removed when Python exits.

    Parameters
    ----------
    prefix
        Prefix of the folder's name.
    what
        What would be recomputed without it (for the warning when there is none).

    Returns
    -------
    pathlib.Path or None
        None (with a warning) when the current client's workers run on other machines.

    Examples
    --------
    >>> session_scratch("volmla-doc-", what="nothing").is_dir()
    True
    """
    from volmla.engine.cluster import current_client

    client = current_client()
    if client is not None and not workers_here(client):
        logger.warning("%s is recomputed at each use: give scratch= a folder every worker reaches to store it once",
                       what)
        return None
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def store(data: da.Array, path: Path, *, desc: str, kind: str = "labels") -> da.Array:
    """Write ``data`` to a scratch Zarr array once and read it back lazily.

    Parameters
    ----------
    data
        The lazy array (regular chunks are made from its largest chunk shape).
    path
        The Zarr array to write (replaced if present).
    desc
        Progress bar label.
    kind
        The :func:`volmla.io.compressor` kind: ``"labels"`` (zstd, for piecewise-constant
        data) or ``"intensity"`` (LZ4, for noisy grey values, where zstd gains little).

    Returns
    -------
    dask.array.Array
        The stored array, chunked as written.

    Examples
    --------
    >>> import numpy as np
    >>> out = store(da.arange(10, chunks=4), session_scratch("volmla-doc-", what="nothing") / "a.zarr", desc="doc")
    >>> out.compute().tolist() == list(range(10))
    True
    """
    (out,) = store_together([(data, path, kind)], desc=desc)
    return out


def store_together(items: Sequence[tuple[da.Array, Path, str]], *, desc: str) -> list[da.Array]:
    """:func:`store` several arrays in one pass, so the work they share is done once.

    Parameters
    ----------
    items
        ``(data, path, kind)`` per array, as :func:`store` takes them.
    desc
        Progress bar label.

    Returns
    -------
    list of dask.array.Array
        The stored arrays, in order.

    Examples
    --------
    >>> where = session_scratch("volmla-doc-", what="nothing")
    >>> x = da.arange(10, chunks=4)
    >>> a, b = store_together([(x, where / "a.zarr", "labels"), (x * 2, where / "b.zarr", "labels")], desc="doc")
    >>> b.compute().tolist()[-1]
    18
    """
    from zarr.codecs import Crc32cCodec

    from volmla.engine.cluster import compute
    from volmla.io import compressor

    writes = []
    for data, path, kind in items:
        data = data.rechunk(data.chunksize)
        # checksummed like every chunk volmla writes: a scratch chunk damaged on disk fails
        # to decode instead of becoming wrong values
        codecs = (compressor(kind), Crc32cCodec())
        writes.append(data.to_zarr(str(path), overwrite=True, compute=False, compressors=codecs))
    compute(writes, desc=desc)
    return [da.from_zarr(str(path)) for _, path, _ in items]
