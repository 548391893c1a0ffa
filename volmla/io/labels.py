"""Label volumes as NGFF ``image-label`` groups under a scan's ``labels/``, for viewers.

:func:`write_labels` puts a phase, particle or grain volume beside the scan it was made
from, so that a viewer (napari with napari-ome-zarr, ome-zarr-py's Reader) opens the scan
with its segmentation in one go:

1. checks the scan (a volmla, NGFF 0.5 volume with axes ``z, y, x``) and the label volume
   (integers, the scan's level-0 shape, the scan's voxel size);
2. writes ``<scan>/labels/<name>`` with :func:`volmla.io.volume.write_volume` (chunked,
   resumable, checksummed, replaced only with ``overwrite``), with as many levels as the
   scan so each label level lies over an image level, downsampled by nearest voxel (a
   pyramid level holds label ids that exist, never a blend of them);
3. adds the ``image-label`` metadata: ``colors`` (:mod:`volmla.io.palette`, background
   transparent), ``properties`` (each phase's name) and ``source`` (the scan);
4. lists ``name`` in ``<scan>/labels``' ``ome.labels`` (the other names kept).

A complete label group of the same job that lacks step 3 or 4 (a write interrupted
between steps) gets them on a rerun without its chunks being written again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import xarray as xr
import zarr

from volmla.engine.blocks import DIMS, as_volume
from volmla.errors import VolmlaError
from volmla.io.lock import output_lock, write_error
from volmla.io.ngff import is_url, read_image, unit_to_um
from volmla.io.outputs import job_fingerprint, job_identity, volmla_block
from volmla.io.palette import BACKGROUND_RGBA, phase_colors
from volmla.io.volume import write_volume

__all__ = ["LABELS_GROUP", "label_metadata", "write_labels"]

LABELS_GROUP = "labels"
"""The sub-group of an image that holds its label images (NGFF)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def label_metadata(phases: Mapping[int, str] | None) -> dict[str, Any]:
    """The NGFF 0.5 ``image-label`` block: colours, properties and source.

    Parameters
    ----------
    phases
        Phase names by id for a phase volume (each gets its palette colour and its name
        as a property); None for particle or grain ids (only the background is described).

    Returns
    -------
    dict
        ``{"version": "0.5", "colors": [...], "properties": [...], "source": {...}}``;
        label 0 is the transparent ``background``.

    Examples
    --------
    >>> meta = label_metadata({1: "quartz"})
    >>> meta["colors"][1], meta["properties"][1]
    ({'label-value': 1, 'rgba': [158, 154, 200, 255]}, {'label-value': 1, 'name': 'quartz'})
    """
    colors: list[dict[str, Any]] = [{"label-value": 0, "rgba": list(BACKGROUND_RGBA)}]
    properties: list[dict[str, Any]] = [{"label-value": 0, "name": "background"}]
    for pid, rgb in phase_colors(phases or {}).items():
        colors.append({"label-value": int(pid), "rgba": [*rgb, 255]})
        properties.append({"label-value": int(pid), "name": str((phases or {})[pid])})
    return {"version": "0.5", "colors": colors, "properties": properties, "source": {"image": "../../"}}


def _scan_geometry(scan: Path) -> tuple[tuple[int, ...], tuple[float, float, float], int]:
    """The scan's level-0 shape, voxel size in micrometres and number of levels."""
    if not scan.exists():
        raise VolmlaError(f"scan_path {scan} does not exist")
    image = read_image(scan)
    ms = image.multiscales
    if ms.version != "0.5" or list(ms.axes) != list(DIMS):
        raise VolmlaError(f"scan_path must be an NGFF 0.5 volume with axes {list(DIMS)} (as volmla writes), "
                          f"got NGFF {ms.version} with axes {list(ms.axes)} in {scan}")
    factors = [unit_to_um(u, axis=a, where=scan) or 1.0 for a, u in zip(ms.axes, ms.units, strict=True)]
    z, y, x = (float(s) * f for s, f in zip(ms.scales[0], factors, strict=True))
    shape = tuple(int(n) for n in zarr.open_array(store=str(scan / ms.paths[0]), mode="r").shape)
    return shape, (z, y, x), len(ms.paths)


def write_labels(
    scan_path: str | Path,
    name: str,
    volume: xr.DataArray | Any,
    *,
    phases: Mapping[int, str] | Sequence[str] | None = None,
    kind: Literal["phases", "labels"] | None = None,
    chunks: int | Sequence[int] | None = None,
    overwrite: bool = False,
    job: Mapping[str, Any] | None = None,
) -> Path:
    """Write a label volume as NGFF ``image-label`` ``<scan_path>/labels/<name>``.

    Parameters
    ----------
    scan_path
        The scan the labels were made from: a volmla volume (NGFF 0.5, axes z, y, x).
    name
        The label image's name (``"phases"``, ``"particles"``, ``"grains"``): letters,
        digits, ``_``, ``.``, ``-``.
    volume
        Integer labels of the scan's level-0 shape: NumPy, Dask or an
        xarray.DataArray (as :func:`volmla.io.open_volume` returns; its ``phases`` and
        ``kind`` attrs are used when the keywords are not given). A lazy volume must not
        read the scan itself (write the labels as a volume of their own first).
    phases
        Phase names, ``{1: "albite", ...}`` or a list for ids 1..N: each phase's
        colour (:func:`volmla.io.palette.phase_colors`) and name go into the metadata.
    kind
        ``"phases"`` (ids are phases, named) or ``"labels"`` (particle or grain ids);
        default ``"phases"`` when phase names are known, else ``"labels"``.
    chunks
        Storage chunk edge(s); default as :func:`~volmla.io.write_volume`.
    overwrite
        Replace an existing label image of that name.
    job
        The computation's description, for resuming an interrupted write.

    Returns
    -------
    pathlib.Path
        The label group, ``<scan_path>/labels/<name>``.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from volmla.io import write_volume
    >>> scan = write_volume(np.zeros((4, 6, 6), np.uint16), tempfile.mkdtemp() + "/scan.zarr",
    ...                     voxel_size=2.0)
    >>> phases = np.zeros((4, 6, 6), np.uint8); phases[1:3, 2:4, 2:4] = 1
    >>> write_labels(scan, "phases", phases, phases=["quartz"]).relative_to(scan).as_posix()
    'labels/phases'
    """
    if is_url(scan_path):
        raise VolmlaError(f"scan_path must be a local volume to write labels into, got {scan_path}")
    scan = Path(scan_path)
    if not isinstance(name, str) or not _NAME.match(name):
        raise VolmlaError(f"name must be letters, digits, '_', '.' or '-', got {name!r}")
    shape, voxel_size, levels = _scan_geometry(scan)
    vol = as_volume(volume, name="volume", integer=True, allow_empty=True)
    if tuple(vol.data.shape) != shape:
        raise VolmlaError(f"volume shape {list(vol.data.shape)} differs from the scan's {list(shape)} ({scan})")
    given = vol.attrs.get("voxel_size_um")
    if given is not None and not np.allclose(np.broadcast_to(np.asarray(given, float), 3), voxel_size, rtol=1e-6):
        raise VolmlaError(f"volume voxel size {list(np.broadcast_to(given, 3))} um differs from the scan's "
                          f"{list(voxel_size)} um ({scan})")
    names = phases if phases is not None else (vol.attrs.get("phases") or None)
    named = ({int(k): str(v) for k, v in names.items()} if isinstance(names, Mapping)
             else {i + 1: str(v) for i, v in enumerate(names)} if names is not None else None)
    if kind is None:
        kind = "phases" if named or vol.attrs.get("kind") == "phases" else "labels"
    if kind not in ("phases", "labels"):
        raise VolmlaError(f"kind must be one of ('phases', 'labels'), got {kind!r}")
    out = scan / LABELS_GROUP / name
    block = volmla_block(out)
    finished = (block.get("complete", False) and not overwrite
                and block.get("request") == job_fingerprint(job_identity(job)))
    if finished and "source" in _ome(out).get("image-label", {}):  # the last step done (a volume alone has none)
        if job is not None:
            return out  # the same job, done: a rerun keeps it
        finished = False  # no job to compare: write_volume refuses an existing output
    if not finished:  # else only the metadata steps of an interrupted write are left
        data = xr.DataArray(vol.data, dims=DIMS, attrs={k: v for k, v in vol.attrs.items() if k != "voxel_size_um"})
        write_volume(data, out, voxel_size=voxel_size, chunks=chunks, kind=kind, phases=named,
                     levels=levels, overwrite=overwrite, job=job,
                     provenance=[{"step": "write_labels", "scan": str(scan), "name": name}])
    try:
        group = zarr.open_group(store=str(out), mode="r+", zarr_format=3)
        group.attrs["ome"] = {**_ome(out), "image-label": label_metadata(named if kind == "phases" else None)}
        with output_lock(scan / LABELS_GROUP):
            labels = zarr.open_group(store=str(scan / LABELS_GROUP), mode="a", zarr_format=3)
            ome: dict[str, Any] = dict(cast(Mapping[str, Any], labels.attrs.get("ome", {})))
            listed = [str(n) for n in ome.get("labels", []) if str(n) != name]
            labels.attrs["ome"] = {**ome, "version": "0.5", "labels": [*listed, name]}
    except OSError as exc:
        raise write_error(out, exc) from exc
    return out


def _ome(group: Path) -> dict[str, Any]:
    """The ``ome`` attributes of a local group (``{}`` when there are none)."""
    try:
        attrs = zarr.open_group(store=str(group), mode="r", zarr_format=3).attrs.asdict()
    except Exception:  # not a group (yet)
        return {}
    return dict(cast(Mapping[str, Any], attrs.get("ome", {})))
