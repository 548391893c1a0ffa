"""Reading stored volumes lazily, with every chunk that fails to decode named in one line.

1. :class:`ChunkReader` is what a volume's Dask array reads through: one level's Zarr
   array, read a region at a time; a region that fails (a crc32c mismatch, a Blosc
   error, a truncated file) is read again chunk by chunk to find the culprit, and the
   failure becomes one :class:`~volmla.errors.VolmlaError` naming the volume, the chunk
   and its file. It pickles as its store path, so worker processes open the array
   themselves.
2. :func:`lazy_level` wraps it in a Dask array with the storage chunks.
3. :func:`read_sources` finds the stored volumes a lazy array reads (the readers in its
   graph), so a writer can refuse to write over one of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from volmla.errors import VolmlaError

__all__ = ["ChunkReader", "lazy_level", "read_sources"]


class ChunkReader:
    """One level of a stored volume as Dask reads it: a region at a time, every failure named.

    A region that fails to read (a chunk whose checksum does not match, a Blosc error, a
    truncated file) is read again chunk by chunk to find the culprit, and the failure
    becomes one line: ``volume V: chunk (i, j, k) of level L (file F) cannot be read
    (checksum mismatch): the file is corrupt; ...``. Reads that succeed cost one ``try``.
    Pickles as its store path (workers open the array themselves).

    Parameters
    ----------
    store
        The Zarr array (a level folder).
    volume
        The volume the user named, for messages.
    level
        Its level.
    """

    def __init__(self, store: str, volume: str, level: int) -> None:
        self.store, self.volume, self.level = store, volume, level
        self._array: Any = None
        arr = self.array
        self.shape: tuple[int, ...] = tuple(arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)
        self.chunks: tuple[int, ...] = tuple(arr.chunks)

    @property
    def array(self) -> Any:
        """The Zarr array, opened on first use in each process."""
        if self._array is None:
            self._array = zarr.open_array(store=self.store, mode="r")
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except (VolmlaError, MemoryError):
            raise
        except Exception as exc:
            raise self._failure(key, exc) from exc

    def _failure(self, key: Any, exc: Exception) -> Exception:
        """The one-line error for the first chunk of ``key`` that fails alone, else ``exc``."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != self.ndim or not all(isinstance(k, slice | int | np.integer) for k in key):
            return exc
        spans = []
        for k, n, c in zip(key, self.shape, self.chunks, strict=True):
            start, stop = (int(k), int(k) + 1) if not isinstance(k, slice) else k.indices(n)[:2]
            spans.append(range(start // c, max(start, stop - 1) // c + 1))
        for idx in np.ndindex(*(len(r) for r in spans)):
            chunk = tuple(r[i] for r, i in zip(spans, idx, strict=True))
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(chunk, self.chunks, self.shape,
                                                                                  strict=True))
            try:
                self.array[region]
            except Exception as err:  # the chunk that fails on its own
                return self._chunk_error(chunk, err)
        return exc

    def _chunk_error(self, chunk: tuple[int, ...], exc: Exception) -> VolmlaError:
        text = str(exc).splitlines()[0] if str(exc) else ""
        reason = "checksum mismatch" if "checksum" in text.lower() else f"{type(exc).__name__}: {text}"[:120]
        try:
            where = f" (file {os.path.join(self.store, self.array.metadata.encode_chunk_key(chunk))})"
        except Exception:  # an older metadata without the chunk key encoder
            where = ""
        return VolmlaError(
            f"volume {self.volume}: chunk {chunk} of level {self.level}{where} cannot be read ({reason}): "
            "the file is corrupt; restore the volume or rerun the command that made it with overwrite=True"
        )


def lazy_level(store: str | Path, volume: str | Path, level: int) -> da.Array:
    """A level of a stored volume as a lazy Dask array over a :class:`ChunkReader`.

    Parameters
    ----------
    store
        The level's Zarr array (a folder, or an fsspec URL).
    volume
        The volume, as the user named it (for messages).
    level
        The level.

    Returns
    -------
    dask.array.Array
        Chunked as stored.
    """
    reader = ChunkReader(str(store), str(volume), level)
    try:  # the name changes when the array is rewritten, so two writes never share keys
        stamp = os.stat(Path(store) / "zarr.json").st_mtime_ns
    except OSError:
        stamp = 0
    name = f"volume-{tokenize(os.path.abspath(store), reader.shape, reader.chunks, str(reader.dtype), stamp)}"
    return da.from_array(reader, chunks=reader.chunks, name=name, asarray=False,
                         meta=np.empty((0,) * reader.ndim, reader.dtype))


def read_sources(array: da.Array) -> set[str]:
    """The stored volumes a lazy array reads (those opened through :func:`lazy_level`).

    Parameters
    ----------
    array
        A lazy array.

    Returns
    -------
    set of str
        The volumes, as they were named when opened.
    """
    graph = array.__dask_graph__()
    layers = getattr(graph, "layers", {"": graph})
    found = set()
    for layer in layers.values():
        if hasattr(layer, "is_materialized") and not layer.is_materialized():
            continue  # a blockwise layer holds tasks, never the arrays it reads
        for value in layer.values():
            if isinstance(value, ChunkReader):
                found.add(value.volume)
    return found
