"""``volmla ingest`` and ``volmla phantom``: data in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from volmla.cli.app import OverwriteOpt, app, running
from volmla.errors import VolmlaError


def _voxel_size_opt(text: str | None) -> list[float] | None:
    """``--voxel-size``: one number or ``z,y,x`` (micrometres)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if "," in text else text.split()
    if not parts or not all(parts):
        raise VolmlaError(f"--voxel-size must be one number or z,y,x in micrometres, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise VolmlaError(f"--voxel-size must be one number or z,y,x in micrometres, got {text!r}") from None
    if len(values) not in (1, 3):
        raise VolmlaError(f"--voxel-size must be one number or three (z,y,x), got {text!r}")
    return values


@app.command()
def ingest(
    inputs: Annotated[list[Path], typer.Argument(help="A folder of TIFF slices, a TIFF stack, an MHA/NRRD/NIfTI file, or a raw file; several stacks (top first) with --stitch.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output OME-Zarr volume.")],
    voxel_size: Annotated[str | None, typer.Option("--voxel-size", help="Voxel size in micrometres: one number or z,y,x (default: from the metadata).")] = None,
    chunks: Annotated[int | None, typer.Option(help="Chunk edge in voxels (default: about 64 MiB per chunk).")] = None,
    glob: Annotated[str, typer.Option(help="Slice pattern inside an input folder (natural order).")] = "*.tif*",
    stitch: Annotated[bool, typer.Option("--stitch", help="Stitch several stacks along z (phase correlation, linear blend).")] = False,
    overlap: Annotated[int | None, typer.Option(help="Nominal overlap of neighbouring stacks in slices (with --stitch).")] = None,
    shape: Annotated[tuple[int, int, int] | None, typer.Option(help="Raw input: shape Z Y X.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Raw input: dtype, e.g. uint16.")] = None,
    byteorder: Annotated[str, typer.Option(help="Raw input: little | big.")] = "little",
    levels: Annotated[int, typer.Option(help="Multiscale pyramid levels (1 = full resolution only; at most until every axis is one voxel).")] = 1,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert TIFF slices/stacks, MHA/NRRD/NIfTI or raw data to an OME-Zarr volume."""
    from volmla.ingest import load, precheck_output, save

    if levels < 1:
        raise VolmlaError(f"--levels must be at least 1, got {levels}")
    precheck_output(output, overwrite=overwrite)
    vol = load(
        inputs,
        voxel_size=_voxel_size_opt(voxel_size),
        chunks=chunks,
        glob=glob,
        stitch=stitch,
        overlap=overlap,
        shape=shape,
        dtype=dtype,
        byteorder=byteorder,  # type: ignore[arg-type]
    )
    with running(inputs=[vol]):
        path = save(vol, output, levels=levels, overwrite=overwrite)
    typer.echo(f"{path}: {' x '.join(map(str, vol.shape))} {vol.dtype}, voxel {list(vol.attrs['voxel_size_um'])} um")

# --- phantom commands ---


@app.command("phantom")
def phantom_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder for intensity/phases/particles/grains.zarr.")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape Z Y X in voxels.")] = (128, 128, 128),
    seed: Annotated[int, typer.Option(min=0, help="Random seed (the result does not depend on --chunks).")] = 0,
    chunks: Annotated[int, typer.Option(help="Chunk edge in voxels (generation and storage).")] = 64,
    voxel_size: Annotated[float, typer.Option(help="Voxel size in micrometres (recorded).")] = 2.0,
    rings: Annotated[bool, typer.Option("--rings", help="Add ring artefacts about the z axis.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a synthetic CT phantom and its ground truth (phases, particles, grains)."""
    from volmla.synthetic.phantom import check_phantom_output, write_phantom

    options: dict[str, Any] = {"shape": shape, "seed": seed, "chunks": chunks, "voxel_size": voxel_size, "rings": rings}
    check_phantom_output(output, overwrite=overwrite, **options)
    with running():
        paths = write_phantom(output, overwrite=overwrite, **options)
    for name, path in paths.items():
        typer.echo(f"{name:10s} {path}")

