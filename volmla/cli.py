"""The ``volmla`` command line: a thin layer over the Python API.

Every command takes ``--help``, refuses to replace an existing output unless
``--overwrite`` is given, and on a user error prints one line to stderr and exits 2.
Global options (before the command): ``--scheduler ADDRESS``, ``--workers N``,
``--gpus N``, ``--device auto|cpu|gpu``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from volmla.errors import VolmlaError

app = typer.Typer(
    name="volmla",
    help="Out-of-core 3D mineral liberation analysis of X-ray CT volumes.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@dataclass
class _Globals:
    scheduler: str | None = None
    workers: int | None = None
    gpus: int = 0
    device: str = "auto"
    quiet: bool = False


STATE = _Globals()


@app.callback()
def _global_options(
    scheduler: Annotated[str | None, typer.Option(help="Attach to a running Dask scheduler, e.g. tcp://host:8786.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes of the embedded cluster (default: one per core).")] = None,
    gpus: Annotated[int, typer.Option(help="Start one worker per GPU (GPU=1 resource each).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | gpu: where array kernels and models run.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or dashboard address.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each stage does.")] = False,
) -> None:
    from volmla.backend import DEVICES

    if device not in DEVICES:
        raise VolmlaError(f"--device must be one of {DEVICES}, got {device!r}")
    STATE.scheduler, STATE.workers, STATE.gpus, STATE.device, STATE.quiet = scheduler, workers, gpus, device, quiet
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def running() -> Iterator[Any]:
    """The cluster a command computes on, with the dashboard address and progress bars."""
    from volmla.cluster import cluster, progress_enabled

    with cluster(scheduler=STATE.scheduler, workers=STATE.workers, gpus=STATE.gpus) as client:
        if not STATE.quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with progress_enabled(not STATE.quiet):
            yield client


def device() -> str:
    """The resolved ``--device`` (``cpu`` or ``gpu``)."""
    from volmla.backend import resolve_device

    return resolve_device(STATE.device)


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


# ----------------------------------------------------------------------------- info


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="An OME-Zarr volume.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Shape, dtype, chunks, voxel size, phases and provenance of a volume."""
    from volmla.io import open_volume

    vol = open_volume(path)
    levels = _levels(path)
    record = {
        "path": str(path),
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "chunks": [c[0] for c in vol.data.chunks],
        "voxel_size_um": list(vol.attrs["voxel_size_um"]),
        "kind": vol.attrs["kind"],
        "levels": levels,
        "size_mb": round(vol.data.nbytes / 1e6, 3),
        "phases": {str(k): v for k, v in vol.attrs["phases"].items()},
        "provenance": vol.attrs["provenance"],
    }
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    for key in ("path", "shape", "dtype", "chunks", "voxel_size_um", "kind", "levels", "size_mb"):
        typer.echo(f"{key:14s} {record[key]}")
    if record["phases"]:
        typer.echo(f"{'phases':14s} " + ", ".join(f"{k}={v}" for k, v in record["phases"].items()))
    for i, step in enumerate(record["provenance"]):
        typer.echo(f"{'provenance' if i == 0 else '':14s} {json.dumps(step, default=str)}")


def _levels(path: Path) -> int:
    attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]
    return len(attrs.get("ome", attrs)["multiscales"][0]["datasets"])


# --- ingest commands ---

# --- phantom commands ---

# --- preprocess commands ---

# --- label commands ---

# --- segment commands ---

# --- liberation commands ---

# --- correlate commands ---

# --- pipeline commands ---


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False, prog_name="volmla")
    except VolmlaError as exc:
        typer.echo(f"volmla: error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("volmla: aborted", err=True)
        return 130
    except click.ClickException as exc:
        typer.echo(f"volmla: error: {exc.format_message()}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("volmla: interrupted (rerun the same command to resume)", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
