"""``volmla breakage``: simulated 3-D breakage of unbroken material and its liberation curve."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, cast

import typer

from volmla.cli.app import STATE, OverwriteOpt, app, running
from volmla.errors import VolmlaError


def _sizes(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise VolmlaError(f"--p80 must be comma-separated grind sizes in um, got {text!r}") from None
    if not values:
        raise VolmlaError(f"--p80 must give at least one grind size in um, got {text!r}")
    return values


@app.command("breakage")
def breakage_command(
    phases: Annotated[Path, typer.Argument(metavar="PHASES", help="Phase volume of unbroken material (OME-Zarr, uint8; 0 = void).")],
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="Output folder (liberation_curve.parquet, summary.json, liberation_curve.png, p80_<value>/).")],
    p80: Annotated[str, typer.Option("--p80", metavar="UM[,UM,...]", help="Grind sizes: the fragments' 80 % passing size (um), comma-separated.")],
    realisations: Annotated[int, typer.Option("--realisations", help="Independent fracture realisations per grind size.")] = 5,
    boundary_weight: Annotated[float, typer.Option("--boundary-weight", help="0 = random fracture .. 1 = fractures follow phase boundaries.")] = 0.0,
    phase_names: Annotated[str | None, typer.Option("--phase-names", help="Names of phases 1..N, e.g. quartz,feldspar,pyrite.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the fracture realisations.")] = 0,
    law: Annotated[str, typer.Option("--law", help="Fragment size law: rosin-rammler | gates-gaudin-schuhmann.")] = "rosin-rammler",
    uniformity: Annotated[float, typer.Option("--uniformity", help="The size law's uniformity (RR) or modulus (GGS).")] = 1.2,
    detachment: Annotated[float, typer.Option("--detachment", help="Fraction of fragments that release their grains whole (0-1).")] = 0.0,
    target_ld: Annotated[float, typer.Option("--target-ld", help="Report the grind size at which each phase reaches this liberation degree.")] = 0.8,
    overwrite: OverwriteOpt = False,
) -> None:
    """Break a phase volume at several grind sizes and write its liberation curve."""
    from volmla.breakage import Law, breakage
    from volmla.io import open_volume

    vol = open_volume(phases)
    result = breakage(
        vol, out_dir=out_dir, p80=_sizes(p80), realisations=realisations, law=cast(Law, law),  # breakage checks it
        uniformity=uniformity, boundary_weight=boundary_weight, detachment=detachment,
        phase_names=[p.strip() for p in phase_names.split(",")] if phase_names is not None else None,
        seed=seed, target_ld=target_ld, overwrite=overwrite,
        cluster=functools.partial(running, inputs=[vol]),  # a small volume runs on threads
    )
    ld = result.summary["liberation_degree"]
    for size, per_phase in ld.items():
        values = ", ".join(f"{name} {v:.3f}" if v is not None else f"{name} -" for name, v in per_phase.items())
        typer.echo(f"P80 {size} um: LD {values}", err=STATE.quiet)
    typer.echo(f"liberation curve: {out_dir / 'liberation_curve.parquet'}", err=STATE.quiet)
