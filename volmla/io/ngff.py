"""NGFF (OME-Zarr) metadata of a volume, read through ome-zarr-models, and its summary.

volmla writes the multiscales metadata through ome-zarr-py (:mod:`volmla.io.volume`)
and reads it here through the maintained models of the specification
(``ome-zarr-models``), never by hand:

1. open the group read-only with zarr-python;
2. validate it: NGFF 0.5 (Zarr v3, metadata under ``ome``) with
   ``ome_zarr_models.v05.image.Image`` and NGFF 0.4 (Zarr v2) with
   ``ome_zarr_models.v04.image.Image``, which also check that every level's array
   exists with one dimension per axis; 0.4 metadata at the top of a Zarr v3 group (an
   early layout) is validated with the 0.4 attribute model alone;
3. return the first multiscale as a :class:`Multiscales`: axis names and units, the
   level arrays' paths, each level's scale and the name.

Invalid metadata is a one-line :class:`~volmla.errors.VolmlaError` naming the first
invalid field. :func:`volume_info` is what ``volmla info`` prints: the volume as
:func:`volmla.io.open_volume` opens it, with its number of levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict

from volmla.errors import VolmlaError

__all__ = ["Multiscales", "VolumeInfo", "read_multiscales", "volume_info"]


class Multiscales(NamedTuple):
    """The first multiscale of an OME-Zarr image group."""

    axes: tuple[str, ...]
    """Axis names, e.g. ``("z", "y", "x")``."""
    units: tuple[str | None, ...]
    """Unit of each axis (``"micrometer"``), None where the metadata gives none."""
    paths: tuple[str, ...]
    """Path of each level's array in the group, full resolution first."""
    scales: tuple[tuple[float, ...], ...]
    """Scale (physical size of a voxel along each axis) of each level."""
    name: str | None
    """The multiscale's name, if any."""
    version: Literal["0.4", "0.5"]
    """The NGFF version the metadata validated against."""


def _first_error(exc: Exception) -> str:
    """One line naming the first problem of a validation error."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))
    return " ".join(str(exc).split())


def _scale(dataset: Any, path: Path) -> tuple[float, ...]:
    for transform in dataset.coordinateTransformations:
        if transform.type == "scale":
            scale = getattr(transform, "scale", None)
            if scale is None:
                raise VolmlaError(
                    f"{path} level {dataset.path} keeps its scale in a file "
                    f"({transform.path}): only scale vectors are supported"
                )
            return tuple(float(s) for s in scale)
    raise VolmlaError(f"{path} level {dataset.path} has no scale transformation")


def read_multiscales(path: str | Path) -> Multiscales:
    """The multiscales metadata of an OME-Zarr image group, validated by ome-zarr-models.

    Parameters
    ----------
    path
        The OME-Zarr group (NGFF 0.5 on Zarr v3, or 0.4).

    Returns
    -------
    Multiscales
        Axes, units, level paths, level scales and name of the first multiscale.
        Raises :class:`~volmla.errors.VolmlaError` (one line) when ``path`` is not a
        readable group, has no multiscales metadata, or has invalid metadata.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from volmla.io import write_volume
    >>> out = write_volume(np.zeros((4, 6, 6), np.uint8), tempfile.mkdtemp() + "/v.zarr",
    ...                    voxel_size=(2.0, 1.0, 1.0), levels=2)
    >>> ms = read_multiscales(out)
    >>> ms.axes, ms.units[0], ms.paths, ms.scales[1]
    (('z', 'y', 'x'), 'micrometer', ('0', '1'), (4.0, 2.0, 2.0))
    """
    import zarr
    from ome_zarr_models.v04.image import Image as ImageV04
    from ome_zarr_models.v04.image import ImageAttrs as ImageAttrsV04
    from ome_zarr_models.v05.image import Image as ImageV05

    path = Path(path)
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a missing or bad group
        raise VolmlaError(f"{path} is not a readable Zarr group: {_first_error(exc)}") from None
    attrs = group.attrs.asdict()
    zarr_format = group.metadata.zarr_format
    ome = attrs.get("ome", attrs)
    if not isinstance(ome, dict) or "multiscales" not in ome:
        raise VolmlaError(f"{path} is not an OME-Zarr volume (no multiscales metadata)")
    version: Literal["0.4", "0.5"] = "0.5" if zarr_format == 3 and "ome" in attrs else "0.4"
    try:
        multiscale: Any
        if version == "0.5":
            multiscale = ImageV05.from_zarr(group).ome_attributes.multiscales[0]
        elif zarr_format == 2:
            multiscale = ImageV04.from_zarr(group).attributes.multiscales[0]
        else:  # 0.4 metadata at the top of a Zarr v3 group
            multiscale = ImageAttrsV04.model_validate(attrs).multiscales[0]
    except (ValueError, FileNotFoundError, KeyError, TypeError) as exc:
        # pydantic's ValidationError is a ValueError; a missing level array is one too
        raise VolmlaError(f"{path} has invalid OME-Zarr metadata: {_first_error(exc)}") from None
    name = multiscale.name
    return Multiscales(
        axes=tuple(str(axis.name) for axis in multiscale.axes),
        units=tuple(None if axis.unit is None else str(axis.unit) for axis in multiscale.axes),
        paths=tuple(str(d.path) for d in multiscale.datasets),
        scales=tuple(_scale(d, path) for d in multiscale.datasets),
        name=None if name is None else str(name),
        version=version,
    )


class VolumeInfo(TypedDict):
    """What ``volmla info`` prints about a volume (JSON-ready)."""

    path: str
    shape: list[int]
    dtype: str
    chunks: list[int]
    voxel_size_um: list[float]
    kind: str
    levels: int
    size_mb: float
    phases: dict[str, str]
    provenance: list[Any]


def volume_info(path: str | Path) -> VolumeInfo:
    """Shape, dtype, chunks, voxel size, kind, levels, size, phases and provenance of a volume.

    Parameters
    ----------
    path
        A complete OME-Zarr volume.

    Returns
    -------
    VolumeInfo
        A JSON-ready dict; ``chunks`` is the level-0 chunk shape, ``size_mb`` the
        uncompressed size of level 0 in megabytes (10^6 bytes), ``levels`` the number
        of multiscale levels.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from volmla.io import write_volume
    >>> out = write_volume(np.zeros((4, 6, 6), np.uint8), tempfile.mkdtemp() + "/v.zarr",
    ...                    voxel_size=2.0)
    >>> info = volume_info(out)
    >>> info["shape"], info["levels"], info["size_mb"]
    ([4, 6, 6], 1, 0.0)
    """
    from volmla.io.volume import open_volume  # volume.py reads its metadata through this module

    vol = open_volume(path)
    return {
        "path": str(path),
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "chunks": [c[0] for c in vol.data.chunks],
        "voxel_size_um": list(vol.attrs["voxel_size_um"]),
        "kind": vol.attrs["kind"],
        "levels": len(read_multiscales(path).paths),
        "size_mb": round(vol.data.nbytes / 1e6, 3),
        "phases": {str(k): v for k, v in vol.attrs["phases"].items()},
        "provenance": vol.attrs["provenance"],
    }
