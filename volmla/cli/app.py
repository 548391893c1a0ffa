"""The ``volmla`` application: global options, the cluster a command runs on, the entry point.

Every command takes ``--help``, refuses to replace an existing output unless
``--overwrite`` is given, and on a user error prints one line to stderr and exits 2.
Global options (before the command): ``--scheduler ADDRESS``, ``--workers N``,
``--gpus N``, ``--device auto|cpu|gpu``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import click
import typer

from volmla.errors import VolmlaError

if TYPE_CHECKING:
    from volmla.engine.backend import Device

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
    device: Device = "auto"
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
    from volmla.engine.backend import DEVICES

    if device not in DEVICES:
        raise VolmlaError(f"--device must be one of {DEVICES}, got {device!r}")
    STATE.scheduler, STATE.workers, STATE.gpus, STATE.quiet = scheduler, workers, gpus, quiet
    STATE.device = cast("Device", device)  # checked against DEVICES above
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed installs its own INFO handlers at import; keep the scheduler quiet too.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                 "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def running() -> Iterator[Any]:
    """The cluster a command computes on, with the dashboard address and progress bars."""
    from volmla.engine.cluster import cluster, progress_enabled

    with cluster(scheduler=STATE.scheduler, workers=STATE.workers, gpus=STATE.gpus) as client:
        if not STATE.quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with progress_enabled(not STATE.quiet):
            yield client


def device() -> Literal["cpu", "gpu"]:
    """The resolved ``--device`` (``cpu`` or ``gpu``)."""
    from volmla.engine.backend import resolve_device

    return resolve_device(STATE.device)


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


# ----------------------------------------------------------------------------- entry point


@functools.cache
def _flags() -> dict[str, str]:
    """Python keyword -> command-line flag, for every option of every command."""
    flags: dict[str, str] = {}

    def walk(command: Any) -> None:
        for param in getattr(command, "params", []):
            longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if param.name and longs and getattr(param, "param_type_name", "") == "option":
                flags.setdefault(param.name, longs[0])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return flags


def flag_names(message: str) -> str:
    """A library message with Python keywords (``voxel_size``, ``overwrite=True``) as flags.

    The library names its keywords; a command-line user should read the flag that sets
    each one. ``name=True`` becomes the flag itself, ``name=`` the flag with a space, and
    a bare keyword is replaced only when it holds an underscore (so ordinary words such
    as "threshold" stay words).
    """
    flags = _flags()

    def swap(match: re.Match[str]) -> str:
        name, suffix = match.group(1), match.group(2) or ""
        flag = flags.get(name)
        if flag is None or (not suffix and "_" not in name):
            return match.group(0)
        return flag if suffix == "=True" else flag + (" " if suffix == "=" else "")

    return re.sub(r"(?<![\w.-])([a-z][a-z0-9_]*)(=True\b|=)?", swap, message)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False, prog_name="volmla")
    except VolmlaError as exc:
        typer.echo(f"volmla: error: {flag_names(str(exc))}", err=True)
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
