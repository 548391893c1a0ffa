"""``volmla liberation``: tables, statistics and the report."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, cast

import typer

from volmla.cli.app import OverwriteOpt, app, running
from volmla.errors import VolmlaError


def _number_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise VolmlaError(f"{option} must be comma-separated numbers, got {text!r}") from None


@app.command("liberation")
def liberation_cmd(
    phases: Annotated[str, typer.Option("--phases", help="Phase volume (OME-Zarr, uint8; a path or an fsspec URL).")],
    particles: Annotated[str, typer.Option("--particles", help="Particle label volume (OME-Zarr; a path or an fsspec URL).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (particles.parquet, grains.parquet, summary.json, PNGs, report.html).")],
    grains: Annotated[str | None, typer.Option("--grains", help="Grain label volume (OME-Zarr; a path or an fsspec URL).")] = None,
    intensity: Annotated[str | None, typer.Option("--intensity", help="The CT the phases came from (OME-Zarr; a path or an fsspec URL): partial-volume phase volumes and CT views in the report.")] = None,
    phase_names: Annotated[str | None, typer.Option("--phase-names", help="Names of phases 1..N, e.g. quartz,feldspar,pyrite.")] = None,
    densities: Annotated[str | None, typer.Option("--densities", help="Densities per phase (g/cm3), e.g. 2.65,2.6,5.0.")] = None,
    free_threshold: Annotated[float, typer.Option("--free-threshold", help="A particle is free in a phase whose grade exceeds this.")] = 0.99,
    size_edges: Annotated[str | None, typer.Option("--size-edges", help="Size-class edges, comma-separated (um ESD, or um^3 with --size-by volume).")] = None,
    by: Annotated[str, typer.Option("--size-by", help="esd | volume: what size classes are made of.")] = "esd",
    include_border: Annotated[bool, typer.Option("--include-border", help="Also count particles touching the volume border.")] = False,
    section_step: Annotated[int, typer.Option("--sections", help="Stereology: every K-th plane per axis (0 = skip).")] = 10,
    pieces: Annotated[int, typer.Option("--pieces", help="Representativeness: equal sub-volumes (0 = skip).")] = 8,
    n_boot: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95 % CIs (0 = skip).")] = 200,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Bootstrap seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Per-particle tables and 3-D liberation statistics, plots and an HTML report."""
    from volmla.io import open_volume
    from volmla.liberation import SizeBy, analyse

    vols = [open_volume(phases), open_volume(particles)]
    optional = {k: open_volume(v) if v is not None else None for k, v in (("grains", grains), ("intensity", intensity))}
    summary = analyse(
        *vols, grains=optional["grains"],
        out_dir=out, phase_names=[p.strip() for p in phase_names.split(",")] if phase_names is not None else None,
        densities=_number_list(densities, "--densities"), free_threshold=free_threshold,
        size_edges=_number_list(size_edges, "--size-edges"), by=cast(SizeBy, by),  # analyse checks it
        include_border=include_border, section_step=section_step or None, pieces=pieces or None, n_boot=n_boot,
        seed=seed, overwrite=overwrite, intensity=optional["intensity"],
        cluster=functools.partial(running, inputs=vols + [v for v in optional.values() if v is not None]),  # small: threads
    )
    typer.echo(
        f"{summary['n_particles']} particles analysed ({summary['n_border']} on the border "
        f"{'included' if include_border else 'excluded'}); report: {out / 'report.html'}"
    )
