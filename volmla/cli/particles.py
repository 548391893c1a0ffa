"""``volmla label``, ``volmla particles``, ``volmla contacts``, ``volmla grains``: labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volmla.cli.app import STATE, OverwriteOpt, app, library_default, running

ConnectivityOpt = Annotated[int, typer.Option("--connectivity", help="6 (faces), 18 (+edges) or 26 (+corners).")]


@app.command("label")
def label_command(
    mask: Annotated[str, typer.Argument(metavar="MASK", help="Binary mask (or, with --multilabel, an integer volume): OME-Zarr, a path or an fsspec URL.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output label volume (OME-Zarr).")],
    connectivity: ConnectivityOpt = 26,
    multilabel: Annotated[bool, typer.Option("--multilabel", help="Label the components of each nonzero value separately.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Connected components of a mask, numbered 1..n in C order of their first voxel."""
    from volmla.particles.files import plan_label, write_labels

    plan = plan_label(mask, output, connectivity=connectivity, multilabel=multilabel, overwrite=overwrite)  # type: ignore[arg-type]
    with running(inputs=plan.inputs):
        result = write_labels(plan)
    typer.echo(f"{output}: {result.count} labels", err=STATE.quiet)


@app.command("particles")
def particles_command(
    input_path: Annotated[str, typer.Argument(metavar="IN", help="Intensity volume, or a phase volume whose nonzero voxels are solid (a path or an fsspec URL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output particle labels (OME-Zarr).")],
    threshold: Annotated[str, typer.Option("--threshold", show_default=False, help="auto | otsu | VALUE (intensity input; solid is above it) | interior (a U-Net's background/interior/boundary map, read so by default when its phase names are interior, boundary; a volume whose phases are named otherwise is refused). A VALUE must lie between the volume's min and max. Default: auto (denoised, half-way between the void and solid modes).")] = "auto",
    min_size: Annotated[int | None, typer.Option("--min-size", show_default=False, help="Drop solid components smaller than this (voxels). Default: 27 with --threshold auto or interior, else 0.")] = None,
    no_split: Annotated[bool, typer.Option("--no-split", help="Do not separate touching particles.")] = False,
    fill_holes: Annotated[bool | None, typer.Option("--fill-holes/--no-fill-holes", show_default=False, help="Fill interior pores before labelling. Default: with --threshold auto or interior.")] = None,
    neck: Annotated[float, typer.Option("--neck", help="Two distance maxima stay separate particles when the saddle between them is below this fraction of the lower one (0-1; larger splits more).")] = library_default("volmla.particles.split", "NECK"),
    h: Annotated[float, typer.Option("--h", help="... and the lower one rises at least this many voxels above the saddle.")] = library_default("volmla.particles.split", "H_MIN"),
    max_radius: Annotated[float | None, typer.Option("--max-radius", show_default=False, help="Largest distance value (voxels) the split's halo is made for. Default: measured from the data (one pass).")] = None,
    connectivity: ConnectivityOpt = 26,
    fov: Annotated[str, typer.Option("--fov", help="The scan's cylindrical field of view: auto (found in an intensity volume: a constant fill outside a circle, as reconstructions write it), none, or Y,X,R in voxels (e.g. a container wall's inner circle). The outside is left out of the levels and is void; particles reaching its edge are flagged as touching the border.")] = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Solid mask -> fill pores -> drop dust -> watershed split -> particle labels."""
    from volmla.particles.files import plan_particles, write_labels

    plan = plan_particles(input_path, output, threshold=threshold, min_size=min_size, fill_holes=fill_holes,
                          split=not no_split, neck=neck, h=h, max_radius=max_radius,
                          connectivity=connectivity,  # type: ignore[arg-type]
                          overwrite=overwrite, field_of_view=fov)
    with running(inputs=plan.inputs):
        result = write_labels(plan)
    typer.echo(f"{output}: {result.count} labels", err=STATE.quiet)


ParticlesOpt = Annotated[str, typer.Option("--particles", help="Particle labels (OME-Zarr; a path or an fsspec URL).")]
PhasesOpt = Annotated[str, typer.Option("--phases", help="Phase volume (OME-Zarr, uint8, or another integer dtype holding ids 0..255; a path or an fsspec URL).")]


@app.command("contacts")
def contacts_command(
    particles: ParticlesOpt,
    phases: PhasesOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output particle labels (OME-Zarr).")],
    reach: Annotated[int, typer.Option(help="Voxels from another particle within which a voxel is a contact.")] = library_default("volmla.particles.contacts", "REACH"),
    rounds: Annotated[int, typer.Option(help="Passes (a sliver deeper than --reach is taken layer by layer); at most ceil(longest side / --reach), past which none finds anything new.")] = library_default("volmla.particles.contacts", "ROUNDS"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Particles with their contacts refined by the phases: a contact voxel of a mineral its
    particle lacks goes to the touching particle that has it (run between ``particles`` and
    ``grains``; ``volmla run`` does it by default)."""
    from volmla.particles.files import plan_contacts, write_labels

    plan = plan_contacts(particles, phases, output, reach=reach, rounds=rounds, overwrite=overwrite)
    with running(inputs=plan.inputs):
        result = write_labels(plan)
    typer.echo(f"{output}: {result.count} labels", err=STATE.quiet)


@app.command("grains")
def grains_command(
    particles: ParticlesOpt,
    phases: PhasesOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output grain labels (OME-Zarr).")],
    connectivity: ConnectivityOpt = 26,
    overwrite: OverwriteOpt = False,
) -> None:
    """Grains: connected components of each phase inside each particle."""
    from volmla.particles.files import plan_grains, write_labels

    plan = plan_grains(particles, phases, output, connectivity=connectivity, overwrite=overwrite)  # type: ignore[arg-type]
    with running(inputs=plan.inputs):
        result = write_labels(plan)
    typer.echo(f"{output}: {result.count} labels", err=STATE.quiet)
