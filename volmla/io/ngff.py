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
3. return the first multiscale as a :class:`Multiscales`: axis names, types and units,
   the level arrays' paths, each level's scale and translation (a multiscale-wide
   transformation folded in: it applies after each level's own) and the name.

A volume may be a local folder or any fsspec URL (``s3://``, ``gs://``, ``https://``,
``memory://``, ...): zarr-python opens those through fsspec, and a protocol whose
package is missing (``s3fs``, ``gcsfs``, ``aiohttp``) is one line naming it.
:func:`unit_to_um` converts an NGFF space unit to micrometres (``nanometer`` -> 1e-3).

Invalid metadata is a one-line :class:`~volmla.errors.VolmlaError` naming the first
invalid field. :func:`volume_info` is what ``volmla info`` prints: the volume as
:func:`volmla.io.open_volume` opens it, with its number of levels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict

from volmla.errors import VolmlaError

__all__ = [
    "UM_PER_UNIT",
    "Multiscales",
    "NgffImage",
    "VolumeInfo",
    "is_url",
    "read_image",
    "read_multiscales",
    "unit_to_um",
    "volume_info",
]

UM_PER_UNIT: dict[str, float] = {
    # the space units NGFF 0.4/0.5 allow (UDUNITS-2 names), in micrometres
    "yoctometer": 1e-18, "zeptometer": 1e-15, "attometer": 1e-12, "femtometer": 1e-9,
    "picometer": 1e-6, "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0,
    "millimeter": 1e3, "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6, "hectometer": 1e8,
    "kilometer": 1e9, "megameter": 1e12, "gigameter": 1e15, "terameter": 1e18,
    "petameter": 1e21, "exameter": 1e24, "zettameter": 1e27, "yottameter": 1e30,
    "inch": 25_400.0, "foot": 304_800.0, "yard": 914_400.0, "mile": 1_609_344_000.0,
    "parsec": 3.085_677_581_491_367e22,
    # common spellings other tools write
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
    "m": 1e6, "å": 1e-4,
}
"""Micrometres per unit, for every NGFF space unit and a few common abbreviations."""

_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                      "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``) rather than a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def unit_to_um(unit: str | None, *, axis: str = "", where: str | Path = "") -> float | None:
    """Micrometres per ``unit`` of a space axis; None when the metadata gives no unit.

    Parameters
    ----------
    unit
        An NGFF space unit (``"nanometer"``) or a common abbreviation (``"nm"``).
    axis, where
        The axis and the volume, for the message of an unknown unit.

    Returns
    -------
    float or None
        The factor; an unknown unit is a one-line :class:`~volmla.errors.VolmlaError`.

    Examples
    --------
    >>> unit_to_um("nanometer"), unit_to_um("millimeter"), unit_to_um(None)
    (0.001, 1000.0, None)
    """
    if unit is None or str(unit).strip() == "":
        return None
    factor = UM_PER_UNIT.get(str(unit).strip().lower()) or UM_PER_UNIT.get(str(unit).strip())
    if factor is None:
        known = ", ".join(k for k in UM_PER_UNIT if len(k) > 2)
        raise VolmlaError(f"{where}: unit {unit!r} of axis {axis!r} is not a length volmla knows "
                          f"(one of {known})")
    return factor


def _open_group(path: str | Path) -> Any:
    """The group at a local path or an fsspec URL, read-only; errors are one line."""
    import zarr

    try:
        return zarr.open_group(store=str(path), mode="r")
    except ImportError as exc:  # fsspec, or the package of the URL's protocol, is missing
        protocol = str(path).split("://", 1)[0].lower()
        package = _PROTOCOL_PACKAGES.get(protocol, "fsspec")
        raise VolmlaError(f"reading {path} needs the optional dependency {package} "
                          f"(pip install {package}, or volmla[remote]): {' '.join(str(exc).split())}") from None
    except Exception as exc:  # zarr raises several types for a missing or bad group
        raise VolmlaError(f"{path} is not a readable Zarr group: {_first_error(exc)}") from None


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
    translations: tuple[tuple[float, ...], ...] = ()
    """Translation (physical position of the first voxel's centre) of each level, in the
    axes' units; zeros where the metadata gives none."""
    types: tuple[str | None, ...] = ()
    """Type of each axis (``"space"``, ``"time"``, ``"channel"``), None where not given."""


class NgffImage(NamedTuple):
    """An OME-Zarr image as :func:`read_image` finds it."""

    multiscales: Multiscales
    """Its first multiscale."""
    attrs: dict[str, Any]
    """The group's attributes (the ``volmla`` block among them, for volmla's volumes)."""
    store: str
    """Where its level arrays lie: ``store + "/" + path`` (a local path or a URL)."""


def _first_error(exc: Exception) -> str:
    """One line naming the first problem of a validation error."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))
    return " ".join(str(exc).split())


def _transforms(transforms: Any, where: str) -> tuple[list[float] | None, list[float] | None]:
    """The scale and translation vectors of a list of NGFF transformations."""
    scale = translation = None
    for transform in transforms or ():
        if transform.type not in ("scale", "translation"):
            continue
        value = getattr(transform, transform.type, None)
        if not isinstance(value, list | tuple):
            raise VolmlaError(f"{where} keeps its {transform.type} in a file "
                              f"({getattr(transform, 'path', value)}): only {transform.type} vectors are supported")
        if transform.type == "scale":
            scale = [float(v) for v in value]
        else:
            translation = [float(v) for v in value]
    return scale, translation


def _level_transform(dataset: Any, overall: Any, path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translation of one level, the multiscale-wide transformation applied after."""
    scale, translation = _transforms(dataset.coordinateTransformations, f"{path} level {dataset.path}")
    if scale is None:
        raise VolmlaError(f"{path} level {dataset.path} has no scale transformation")
    translation = translation or [0.0] * len(scale)
    outer_scale, outer_translation = _transforms(overall, f"{path} multiscales")
    if outer_scale is not None:
        scale = [s * o for s, o in zip(scale, outer_scale, strict=True)]
        translation = [t * o for t, o in zip(translation, outer_scale, strict=True)]
    if outer_translation is not None:
        translation = [t + o for t, o in zip(translation, outer_translation, strict=True)]
    return tuple(scale), tuple(translation)


def read_multiscales(path: str | Path) -> Multiscales:
    """The multiscales metadata of an OME-Zarr image group, validated by ome-zarr-models.

    Parameters
    ----------
    path
        The OME-Zarr group (NGFF 0.5 on Zarr v3, or 0.4): a local path or an fsspec URL.

    Returns
    -------
    Multiscales
        Axes, units, level paths, level scales and translations, and name of the first
        multiscale. Raises :class:`~volmla.errors.VolmlaError` (one line) when ``path``
        is not a readable group, has no multiscales metadata, or has invalid metadata.

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
    return read_image(path).multiscales


def read_image(path: str | Path) -> NgffImage:
    """An OME-Zarr image group: its first multiscale (validated), attributes and store.

    Parameters
    ----------
    path
        The group: a local path or an fsspec URL (``s3://bucket/scan.zarr``).

    Returns
    -------
    NgffImage
        The multiscale, the group attributes and the location of its level arrays.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from volmla.io import write_volume
    >>> out = write_volume(np.zeros((4, 6, 6), np.uint8), tempfile.mkdtemp() + "/v.zarr",
    ...                    voxel_size=2.0)
    >>> image = read_image(out)
    >>> image.multiscales.translations, image.attrs["volmla"]["kind"]
    (((0.0, 0.0, 0.0),), 'intensity')
    """
    from ome_zarr_models.v04.image import Image as ImageV04
    from ome_zarr_models.v04.image import ImageAttrs as ImageAttrsV04
    from ome_zarr_models.v05.image import Image as ImageV05

    where = path if is_url(path) else Path(path)
    group = _open_group(where)
    attrs = group.attrs.asdict()
    zarr_format = group.metadata.zarr_format
    ome = attrs.get("ome", attrs)
    if not isinstance(ome, Mapping) or "multiscales" not in ome:
        raise VolmlaError(f"{where} is not an OME-Zarr volume (no multiscales metadata)")
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
        raise VolmlaError(f"{where} has invalid OME-Zarr metadata: {_first_error(exc)}") from None
    name = multiscale.name
    transforms = [_level_transform(d, multiscale.coordinateTransformations, where) for d in multiscale.datasets]
    ms = Multiscales(
        axes=tuple(str(axis.name) for axis in multiscale.axes),
        units=tuple(None if axis.unit is None else str(axis.unit) for axis in multiscale.axes),
        paths=tuple(str(d.path) for d in multiscale.datasets),
        scales=tuple(scale for scale, _ in transforms),
        name=None if name is None else str(name),
        version=version,
        translations=tuple(translation for _, translation in transforms),
        types=tuple(None if axis.type is None else str(axis.type) for axis in multiscale.axes),
    )
    return NgffImage(ms, dict(attrs), str(where).rstrip("/"))


class VolumeInfo(TypedDict):
    """What ``volmla info`` prints about a volume (JSON-ready)."""

    path: str
    shape: list[int]
    dtype: str
    """As stored."""
    read_as: str
    """The dtype volmla reads it as (:func:`~volmla.io.open_volume`: float16 as float32, others as stored)."""
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
        A JSON-ready dict; ``dtype`` is the dtype as stored, ``read_as`` the one it is
        read as (float16 as float32), ``chunks`` the level-0 chunk shape, ``size_mb`` the
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
    from volmla.io.reader import ChunkReader
    from volmla.io.volume import open_volume  # volume.py reads its metadata through this module

    vol = open_volume(path)
    image = read_image(vol.attrs["path"])
    # as stored: open_volume reads float16 as float32
    stored = ChunkReader(f"{image.store}/{image.multiscales.paths[0]}", str(path), 0).dtype
    return {
        "path": str(path),
        "shape": list(vol.shape),
        "dtype": str(stored),
        "read_as": str(vol.dtype),
        "chunks": [c[0] for c in vol.data.chunks],
        "voxel_size_um": list(vol.attrs["voxel_size_um"]),
        "kind": vol.attrs["kind"],
        "levels": len(image.multiscales.paths),
        "size_mb": round(vol.data.size * stored.itemsize / 1e6, 3),
        "phases": {str(k): v for k, v in vol.attrs["phases"].items()},
        "provenance": vol.attrs["provenance"],
    }
