"""``volmla preprocess``: filters with halos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volmla.cli.app import STATE, OverwriteOpt, app, device, running


@app.command("preprocess")
def preprocess_command(
    input_path: Annotated[str, typer.Argument(metavar="IN", help="Intensity volume (OME-Zarr; a path or an fsspec URL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output volume (OME-Zarr).")],
    steps: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            help="NAME[:key=value,...], repeatable, applied in order. Names: normalize, gaussian, median, "
            "bilateral, nlmeans, unsharp, beam-hardening, rings; e.g. --step gaussian:sigma=1.5",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML list of steps ({name: ..., params: {...}}), run before --step.")
    ] = None,
    chunks: Annotated[int | None, typer.Option("--chunks", help="Output chunk edge in voxels (default: the input's).")] = None,
    fov: Annotated[str, typer.Option("--fov", help="The scan's cylindrical field of view: auto (found: a constant fill outside a circle, as reconstructions write it), none, or Y,X,R in voxels. Its outside is set to the void level before the steps.")] = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Filter an intensity volume chunk by chunk (halos exact at chunk borders); resumable."""
    from volmla.preprocess import plan_preprocess, write_preprocessed

    plan = plan_preprocess(input_path, output, steps=steps or [], config=config, chunks=chunks, device=device(),
                           overwrite=overwrite, field_of_view=fov)
    with running(inputs=[plan.volume]):
        path = write_preprocessed(plan)
    if not STATE.quiet:
        typer.echo(f"wrote {path}")
