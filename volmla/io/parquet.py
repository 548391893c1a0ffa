"""Parquet tables that describe themselves: units per column, voxel size, phases, version.

:func:`write_table` is the one way volmla writes a table (``particles.parquet``,
``grains.parquet`` and the other liberation tables):

1. the frame becomes an Arrow table (pandas' own schema metadata kept, so
   ``pandas.read_parquet`` gives the same frame back; column names unchanged: they are the
   data contract);
2. every column whose unit volmla knows (:func:`column_units`: ``esd_um`` in ``um``,
   ``bbox_*`` in ``voxel``, ``grade_*`` a fraction ``1``, ...) gets field metadata
   ``unit`` and ``description``;
3. the schema gets one ``volmla`` key, a JSON object: ``table``, ``volmla_version``,
   ``voxel_size_um``, ``phases`` and ``inputs`` where given, and ``units``
   (column -> unit, the same as the field metadata);
4. the file is written with pyarrow.

:func:`read_table_metadata` reads the ``volmla`` object (and the field units) back
without reading the rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["COLUMN_UNITS", "column_units", "read_table_metadata", "write_table"]

SCHEMA_KEY = b"volmla"

COLUMN_UNITS: dict[str, tuple[str, str]] = {
    # exact column names: (unit, description); "1" is a dimensionless number, "" none
    "particle_id": ("", "particle id in the particle label volume (0 = background)"),
    "grain_id": ("", "grain id in the grain label volume (0 = background)"),
    "volume_voxels": ("voxel", "volume as a voxel count"),
    "volume_um3": ("um^3", "volume, voxel count times voxel volume"),
    "esd_um": ("um", "equivalent sphere diameter"),
    "surface_um2": ("um^2", "surface area from voxel faces, times the 2/3 stereological correction"),
    "sphericity": ("1", "pi^(1/3) (6 V)^(2/3) / surface"),
    "touches_border": ("bool", "the particle touches the volume border (cut): excluded from statistics by default"),
    "n_grains": ("1", "number of grains (connected (particle, phase) components); null when grains are neither given nor derived"),
    "phase": ("", "phase name"),
    "phase_a": ("", "phase name"),
    "phase_b": ("", "phase name, or background"),
    "area_um2": ("um^2", "contact area, voxel faces times the 2/3 stereological correction"),
    "rank": ("1", "rank of the particle by decreasing grade"),
    "cum_yield": ("1", "cumulative mass (or volume) fraction of the particles"),
    "cum_grade": ("1", "cumulative grade of the phase"),
    "cum_recovery": ("1", "cumulative recovery of the phase"),
    "ld_2d": ("1", "liberation degree from 2-D sections"),
    "ld_3d": ("1", "liberation degree in 3-D"),
    "n_2d": ("1", "number of particle sections"),
    "n_3d": ("1", "number of particles"),
    "bias": ("1", "ld_2d - ld_3d"),
    "axis": ("", "section axis"),
    "plane": ("voxel", "section plane index"),
    "area": ("voxel", "section area as a pixel count"),
    "edge": ("bool", "the section touches the volume border"),
    "whole": ("1", "frequency of particles in the size class over the whole volume"),
    "mean": ("1", "mean frequency of particles in the size class over the pieces"),
    "std": ("1", "standard deviation of that frequency over the pieces"),
    "ci_lo": ("1", "lower end of the 95 % interval of the mean frequency"),
    "ci_hi": ("1", "upper end of the 95 % interval of the mean frequency"),
    "n_pieces": ("1", "number of pieces holding particles"),
}
"""Unit and description of every column volmla writes under a fixed name."""

_PATTERNS: tuple[tuple[str, str, str], ...] = (
    # (regular expression, unit, description with {0} = the first group)
    (r"^centroid_([zyx])$", "um", "centroid along {0}: mean voxel index times voxel size (voxel 0's centre at 0)"),
    (r"^bbox_([zyx])0$", "voxel", "first voxel index along {0} of the bounding box (inclusive)"),
    (r"^bbox_([zyx])1$", "voxel", "end voxel index along {0} of the bounding box (exclusive)"),
    (r"^vox_(.+)$", "voxel", "voxel count of {0}"),
    (r"^vfrac_(.+)$", "voxel", "partial-volume voxel volume of {0} (equals vox_ without an intensity volume)"),
    (r"^grade_(.+)$", "1", "volume fraction of {0} in the particle's solid"),
    (r"^faces_([zyx])$", "1", "number of voxel faces normal to {0}"),
    (r".*_um$", "um", ""),
    (r".*_um2$", "um^2", ""),
    (r".*_um3$", "um^3", ""),
)


def column_units(columns: Sequence[str], *, units: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """The unit and description of each column volmla knows, by name.

    Parameters
    ----------
    columns
        Column names.
    units
        Units that override or add to the known ones (``{"lo": "um"}``), description kept.

    Returns
    -------
    dict
        ``{column: (unit, description)}`` for the known columns (others are left out).

    Examples
    --------
    >>> column_units(["esd_um", "bbox_z0", "grade_quartz", "other"])["bbox_z0"][0]
    'voxel'
    """
    out: dict[str, tuple[str, str]] = {}
    for col in columns:
        if col in COLUMN_UNITS:
            out[col] = COLUMN_UNITS[col]
            continue
        for pattern, unit, text in _PATTERNS:
            match = re.match(pattern, col)
            if match:
                out[col] = (unit, text.format(*match.groups()))
                break
    for col, unit in (units or {}).items():
        if col in columns:
            out[col] = (str(unit), out.get(col, ("", ""))[1])
    return out


def write_table(
    frame: pd.DataFrame,
    path: str | Path,
    *,
    table: str,
    voxel_size_um: Sequence[float] | None = None,
    phases: Sequence[str] | Mapping[int, str] | None = None,
    inputs: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``frame`` as Parquet with its units, voxel size, phases and volmla version.

    Parameters
    ----------
    frame
        The table (its index is not written).
    path
        The Parquet file.
    table
        What the table is (``"particles"``, ``"grains"``, ...).
    voxel_size_um
        ``(z, y, x)`` micrometres of the volumes it was measured on.
    phases
        Phase names, in phase-id order (or ``{id: name}``).
    inputs
        The volumes it was measured from (``{"phases": "phases.zarr", ...}``).
    units
        Units of columns volmla does not know by name, or overrides.
    extra
        More JSON-ready entries for the ``volmla`` schema object.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import pandas as pd, tempfile
    >>> out = write_table(pd.DataFrame({"esd_um": [1.5]}), tempfile.mkdtemp() + "/t.parquet",
    ...                   table="particles", voxel_size_um=(1.0, 1.0, 1.0), phases=["quartz"])
    >>> meta = read_table_metadata(out)
    >>> meta["units"], meta["phases"], meta["voxel_size_um"]
    ({'esd_um': 'um'}, {'1': 'quartz'}, [1.0, 1.0, 1.0])
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from volmla import __version__

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    known = column_units([str(c) for c in arrow.column_names], units=units)
    fields = []
    for field in arrow.schema:
        unit_text = known.get(field.name)
        if unit_text is not None:
            meta = {**(field.metadata or {}), b"unit": unit_text[0].encode(), b"description": unit_text[1].encode()}
            field = field.with_metadata(meta)
        fields.append(field)
    named: dict[str, str] | None = None
    if phases is not None:
        named = ({str(int(k)): str(v) for k, v in phases.items()} if isinstance(phases, Mapping)
                 else {str(i + 1): str(v) for i, v in enumerate(phases)})
    block: dict[str, Any] = {"table": table, "volmla_version": __version__}
    if voxel_size_um is not None:
        block["voxel_size_um"] = [float(v) for v in voxel_size_um]
    if named is not None:
        block["phases"] = named
    if inputs:
        block["inputs"] = {str(k): str(v) for k, v in inputs.items()}
    block["units"] = {col: unit for col, (unit, _) in known.items()}
    block.update(extra or {})
    schema = pa.schema(fields, metadata={**(arrow.schema.metadata or {}), SCHEMA_KEY: json.dumps(block).encode()})
    pq.write_table(arrow.cast(schema), str(path))
    return Path(path)


def read_table_metadata(path: str | Path) -> dict[str, Any]:
    """The ``volmla`` schema object of a Parquet table, without reading its rows.

    Parameters
    ----------
    path
        A Parquet file written by :func:`write_table`.

    Returns
    -------
    dict
        ``table``, ``volmla_version``, ``voxel_size_um``, ``phases``, ``inputs`` (those
        given) and ``units``; ``{}`` for a file volmla did not describe.

    Examples
    --------
    >>> read_table_metadata("particles.parquet")["units"]["centroid_z"]  # doctest: +SKIP
    'um'
    """
    import pyarrow.parquet as pq

    schema = pq.read_schema(str(path))
    raw = (schema.metadata or {}).get(SCHEMA_KEY)
    return dict(json.loads(raw)) if raw else {}
