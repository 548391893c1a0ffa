"""``volmla info``: what a volume holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from volmla.cli.app import app


@app.command()
def info(
    path: Annotated[str, typer.Argument(help="An OME-Zarr volume: a path or an fsspec URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Shape, dtype, chunks, voxel size, phases and provenance of a volume."""
    from volmla.io.ngff import volume_info

    record = volume_info(path)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    for key in ("path", "shape", "dtype", "chunks", "voxel_size_um", "kind", "levels", "size_mb"):
        note = f" (read as {record['read_as']})" if key == "dtype" and record["read_as"] != record["dtype"] else ""
        typer.echo(f"{key:14s} {record[key]}{note}")
    if record["phases"]:
        typer.echo(f"{'phases':14s} " + ", ".join(f"{k}={v}" for k, v in record["phases"].items()))
    for i, step in enumerate(record["provenance"]):
        typer.echo(f"{'provenance' if i == 0 else '':14s} {json.dumps(step, default=str)}")
