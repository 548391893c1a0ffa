"""``volmla correlate maps|register|labels|run``: element maps to training labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volmla.cli.app import OverwriteOpt, app, running

correlate_app = typer.Typer(
    help="Correlative labelling: element maps -> mineral map -> registration into CT -> sparse labels.",
    no_args_is_help=True,
)
app.add_typer(correlate_app, name="correlate")


def _names(text: str) -> list[str]:
    """A comma-separated list of names ('' = none)."""
    return [n.strip() for n in text.split(",") if n.strip()]


@correlate_app.command("maps")
def correlate_maps(
    maps: Annotated[list[Path], typer.Argument(help="Element maps: Fe.tif Si.tif ... (stem = element) or an NPZ stack.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder (mineral_map.npz/.tif, centroids.csv, report.json).")],
    minerals: Annotated[str, typer.Option(help="Mineral names in phase order, comma separated (void is phase 0).")],
    pixel_size: Annotated[float | None, typer.Option(help="Map pixel size in um (NPZ may carry it).")] = None,
    k: Annotated[int | None, typer.Option(help="k-means clusters (default minerals + 1).")] = None,
    table: Annotated[Path | None, typer.Option(help="YAML cluster -> mineral table (else automatic from signatures).")] = None,
    xrd: Annotated[Path | None, typer.Option(help="YAML mineral -> abundance (e.g. XRD) to compare with.")] = None,
    denoise: Annotated[str | None, typer.Option(help="Elements to bilateral-filter, comma separated, each one of the maps ('' = none; default: Na,Mg where the maps hold them).")] = None,
    ct_slice: Annotated[Path | None, typer.Option(help="Registered CT slice on the map grid (TIFF), an extra channel.")] = None,
    resample: Annotated[bool, typer.Option("--resample", help="Maps of other shapes share the field of view: resample.")] = False,
    seed: Annotated[int, typer.Option(min=0, help="k-means seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """k-means mineral map from element maps, with centroids, abundances and assignment."""
    from volmla.correlate import make_mineral_map

    # the assignment's and the registration's warnings are logged where they arise (one line each)
    result = make_mineral_map(maps, out_dir=out_dir, minerals=_names(minerals), pixel_size_um=pixel_size, k=k,
                              table=table, xrd=xrd, denoise=None if denoise is None else _names(denoise), ct_slice=ct_slice, resample=resample,
                              seed=seed, overwrite=overwrite)
    for c, m in result.assignment.mineral.items():
        typer.echo(f"cluster {c}: {m:12s} confidence {result.assignment.confidence[c]:.2f}  "
                   f"abundance {result.mineral_map.abundances[c]:.3f}")
    typer.echo(f"wrote {result.paths['npz']}")


@correlate_app.command("register")
def correlate_register(
    ct: Annotated[Path, typer.Option(help="CT intensity volume (OME-Zarr).")],
    map_path: Annotated[Path, typer.Option("--map", help="mineral_map.npz (from `correlate maps`) or a phase-id TIFF.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Registration JSON (NAME.tfm and NAME.labels.tif beside it).")],
    axis: Annotated[str, typer.Option(help="Axis normal to the mapped plane: z, y or x.")] = "z",
    pixel_size: Annotated[float | None, typer.Option(help="Map pixel size in um (needed for a TIFF).")] = None,
    channel: Annotated[str, typer.Option(help="Image to register: 'phases' or an element channel of the NPZ.")] = "phases",
    search: Annotated[tuple[int, int] | None, typer.Option(help="Candidate planes LO HI (default the whole axis).")] = None,
    step: Annotated[int | None, typer.Option(help="Coarse search step in planes.")] = None,
    transform: Annotated[str, typer.Option(help="rigid | similarity.")] = "rigid",
    min_quality: Annotated[float, typer.Option(help="Least acceptable registration quality (0..1).")] = 0.05,
    accept_poor: Annotated[bool, typer.Option("--accept-poor", help="Keep a poor/non-converged fit (flagged in the JSON).")] = False,
    max_tilt: Annotated[float, typer.Option(help="Also search plane tilts within +/- this many degrees (0 = none).")] = 0.0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Find the map's plane in the CT volume and register the map onto it."""
    from volmla.correlate import make_registration

    reg = make_registration(ct, map_path, out=out, axis=axis, pixel_size_um=pixel_size,  # type: ignore[arg-type]
                            channel=channel, search=search, step=step, transform=transform,  # type: ignore[arg-type]
                            min_quality=min_quality, accept_poor=accept_poor, max_tilt_deg=max_tilt,
                            overwrite=overwrite, compute_in=running)
    p = reg.params
    typer.echo(f"{axis}={reg.index}  tilt {reg.tilt_deg[0]:.2f},{reg.tilt_deg[1]:.2f} deg  angle {p['angle_deg']:.2f} deg  shift {p['translation_um'][0]:.1f},"
               f"{p['translation_um'][1]:.1f} um  quality {reg.quality:.3f}  metric {reg.metric:.4f}  "
               f"{'converged' if reg.converged else 'NOT converged'}")
    typer.echo(f"wrote {out}")


@correlate_app.command("labels")
def correlate_labels(
    ct: Annotated[Path, typer.Option(help="CT volume whose grid the labels take.")],
    registration: Annotated[list[Path], typer.Option(help="Registration JSON(s) from `correlate register` (repeat).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Sparse label volume (OME-Zarr, uint8, 0 = unlabelled).")],
    erode: Annotated[int, typer.Option(help="Unlabel voxels within N of a label change.")] = 2,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write registered mineral-map planes into a sparse training label volume."""
    from volmla.correlate import make_label_volume

    result = make_label_volume(ct, registration, out=out, erode=erode, overwrite=overwrite, compute_in=running)
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"wrote {result.path}")


@correlate_app.command("run")
def correlate_run(
    config: Annotated[Path, typer.Argument(help="YAML: ct, minerals, planes (maps, pixel size, axis, search, ...).")],
    out_dir: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (default the config's 'out').")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Maps -> k-means -> assignment -> registration -> one sparse label volume, with a report.

    Writes OUT/labels.zarr, OUT/report.json, OUT/report.md and OUT/planes/NAME/ (mineral
    map, centroids, registration). The YAML schema is in ``volmla.correlate.load_run_config``.
    """
    from volmla.correlate import run_from_config

    run = run_from_config(config, out_dir=out_dir, overwrite=overwrite, compute_in=running)
    for r in run.report["planes"]:
        typer.echo(f"{r['name']}: {r['axis']}={r['plane']} tilt {r['tilt_deg'][0]:.2f},{r['tilt_deg'][1]:.2f} "
                   f"angle {r['angle_deg']:.2f} quality {r['quality']:.3f}"
                   + (f" ARI {r['ari']:.3f}" if "ari" in r else "")
                   + (f" not found: {', '.join(r['minerals_not_found'])}" if r["minerals_not_found"] else ""))
    typer.echo(f"wrote {run.labels}")
