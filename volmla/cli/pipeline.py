"""``volmla run`` and ``volmla demo``: whole runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from volmla.cli.app import STATE, OverwriteOpt, app, running

if TYPE_CHECKING:
    from volmla.pipeline.config import PipelineConfig


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (sections out, input, preprocess, segment, particles, grains, liberation).")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a whole pipeline from a YAML config; a rerun resumes where it stopped."""
    from volmla.pipeline import load_config, run

    cfg = load_config(config)  # every section checked before the cluster starts
    with running(inputs=_run_inputs(cfg)):
        result = run(cfg, overwrite=overwrite, device=STATE.device, log=_log)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("volmla-demo"),
    shape: Annotated[tuple[int, int, int], typer.Option(
        help="Phantom shape Z Y X: at least 36 64 64, at most 512^3 (134 Mvoxel) in all.")] = (128, 128, 128),
    seed: Annotated[int, typer.Option(min=0, help="Phantom and training seed.")] = 0,
    unet: Annotated[bool, typer.Option("--unet/--no-unet", help="Train the 3D U-Net (needs torch).")] = True,
    iterations: Annotated[int, typer.Option(help="U-Net training iterations.")] = 300,
    overwrite: OverwriteOpt = False,
) -> None:
    """The whole pipeline on a generated phantom, on an embedded cluster, ending in a report."""
    from volmla.pipeline import demo
    from volmla.pipeline.demo import check_demo

    check_demo(out, shape=shape, iterations=iterations, overwrite=overwrite)  # before the cluster starts
    with running(eager=True):  # the demo shows the whole engine, its cluster included
        summary = demo(out, shape=shape, seed=seed, unet=unet, iterations=iterations, overwrite=overwrite,
                       device=STATE.device, log=_log)
    _print_demo(summary)


def _run_inputs(cfg: PipelineConfig) -> list[Any]:
    """The run's input volumes, so that their size picks threads or a cluster.

    An OME-Zarr input is opened (metadata only). Scanner files are opened (their headers
    read) only when they hold at most :data:`~volmla.engine.cluster.SMALL_BYTES` on disk,
    so that a large folder of slices is not scanned twice: such a run starts its cluster
    at the first large graph, and every later stage reuses it.
    """
    from volmla.io import open_volume

    if cfg.input.zarr is not None:
        return [open_volume(cfg.input.zarr)]
    from volmla.engine.cluster import SMALL_BYTES
    from volmla.errors import VolmlaError
    from volmla.ingest.api import open_input

    if sum(_bytes_on_disk(Path(p)) for p in cfg.input.paths) > SMALL_BYTES:
        return []
    layout = {k: v for k, v in cfg.input.options().items() if k in ("glob", "shape", "dtype", "byteorder")}
    try:
        return [open_input(p, **layout).data for p in cfg.input.paths]
    except VolmlaError:  # the run itself names the problem, in its own words
        return []


def _bytes_on_disk(path: Path) -> int:
    """Bytes of a file, or of the files directly in a folder (0 where it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return 0


def _log(line: str) -> None:
    if not STATE.quiet:
        typer.echo(line, err=True)


def _print_demo(summary: dict[str, Any]) -> None:
    seg = summary["segmentation"]
    typer.echo("held-out accuracy (excluding void): " + ", ".join(
        f"{k} {v['accuracy_excluding_void']:.3f}" for k, v in seg["scores"].items()) + f"; used {seg['used']}")
    typer.echo(f"particles: {summary['particles']['measured']} measured, {summary['particles']['truth']} in the truth "
               "(not touching the border)")
    typer.echo(f"{'phase':12s} {'LD measured':>12s} {'LD truth':>10s} {'modal meas.':>12s} {'modal truth':>12s}")
    for phase, row in summary["liberation"].items():
        cells = [row["ld_measured"], row["ld_truth"], row["modal_measured"], row["modal_truth"]]
        typer.echo(f"{phase:12s} " + " ".join(f"{'-' if c is None else f'{c:.3f}':>12s}" for c in cells))
    typer.echo(f"report: {summary['report']}")
