"""The ``volmla`` application: global options, the cluster a command runs on, the entry point.

Every command takes ``--help``, refuses to replace an existing output unless
``--overwrite`` is given, and on any error prints one line to stderr and exits 2 (130
after Ctrl-C); :func:`main` is the one place that happens. Global options (before the
command): ``--scheduler ADDRESS``, ``--workers N``, ``--gpus N``, ``--device
auto|cpu|gpu``, ``--dashboard ADDRESS``, ``-q``, ``-v`` (volmla's own debug log; also
prints an error's traceback), ``-vv`` (Dask's log too), ``--version``; shell completion
through ``--install-completion`` / ``--show-completion``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
import typer.main

from volmla.errors import VolmlaError

if TYPE_CHECKING:
    from volmla.engine.backend import Device

app = typer.Typer(
    name="volmla",
    help="Out-of-core 3D mineral liberation analysis of X-ray CT volumes.",
    add_completion=True,
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
    verbose: int = 0
    dashboard: str | None = None


STATE = _Globals()

DASK_LOGGERS = ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                "distributed.worker", "distributed.http.proxy", "dask")
"""Loggers ``-vv`` turns on (distributed installs its own INFO handlers at import)."""


def _print_version(value: bool) -> None:
    if value:
        from volmla import __version__

        typer.echo(f"volmla {__version__}")
        raise typer.Exit()


def configure_logging(verbose: int) -> None:
    """Log levels for ``-v`` counts: 0 warnings only, 1 volmla's debug log, 2 Dask's info log too.

    Parameters
    ----------
    verbose
        How many ``-v`` were given.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("volmla").setLevel(logging.DEBUG if verbose >= 1 else logging.WARNING)
    if "distributed" not in sys.modules:
        # distributed sets its logger's level from Dask's config when first imported,
        # after this: without this its other loggers (a stale scratch folder purged at
        # start) would print INFO lines
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "info" if verbose >= 2 else "warning"
    for name in DASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose >= 2 else logging.WARNING)


@app.callback()
def _global_options(
    scheduler: Annotated[str | None, typer.Option(help="Attach to a running Dask scheduler, e.g. tcp://host:8786.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes of the embedded cluster (default: one per core).")] = None,
    gpus: Annotated[int, typer.Option(help="Start one worker per GPU (GPU=1 resource each).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | gpu: where array kernels and models run.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or dashboard address.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: volmla's debug log and an error's traceback; -vv: Dask's log too.")] = 0,
    dashboard: Annotated[str | None, typer.Option(help="Dashboard address of the embedded cluster (default 127.0.0.1:0: this machine only, a free port; e.g. 0.0.0.0:8787 to serve the network).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print volmla's version and exit.")] = False,
) -> None:
    from volmla.engine.backend import DEVICES

    if device not in DEVICES:
        raise VolmlaError(f"--device must be one of {DEVICES}, got {device!r}")
    STATE.scheduler, STATE.workers, STATE.gpus, STATE.quiet = scheduler, workers, gpus, quiet
    STATE.verbose, STATE.dashboard = verbose, dashboard
    STATE.device = cast("Device", device)  # checked against DEVICES above
    if device == "gpu":  # asked for explicitly: refused at once, not left to whichever stage resolves it
        from volmla.engine.backend import resolve_device

        try:
            resolve_device("gpu")
        except VolmlaError as exc:
            raise VolmlaError(f"--{exc}") from None
    configure_logging(verbose)


@contextlib.contextmanager
def running(*, eager: bool = False, inputs: Iterable[Any] = ()) -> Iterator[Any]:
    """The cluster a command computes on, with the dashboard address and progress bars.

    A cluster the user asked for (``--scheduler``, ``--workers``, ``--gpus``,
    ``--dashboard``) or an ``eager`` one starts at once. Otherwise, when the command's
    ``inputs`` fit in this process (:func:`~volmla.engine.cluster.fits_in_process`), it
    runs on Dask's threaded scheduler without starting a cluster; else the embedded
    cluster starts at the first computation of more than
    :data:`~volmla.engine.cluster.SMALL_GRAPH` tasks.

    Parameters
    ----------
    eager
        Start the cluster at once.
    inputs
        The volumes the command reads (anything with ``nbytes``: DataArrays, arrays).
    """
    from volmla.engine.cluster import cluster, on_demand, progress_enabled

    start = functools.partial(cluster, scheduler=STATE.scheduler, workers=STATE.workers, gpus=STATE.gpus,
                              dashboard=STATE.dashboard or True, task_errors=STATE.verbose >= 1)

    def announce(client: Any) -> None:
        if not STATE.quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)

    asked = STATE.scheduler is not None or STATE.workers is not None or STATE.gpus or STATE.dashboard is not None
    if eager or asked:
        with start() as client:
            announce(client)
            with progress_enabled(not STATE.quiet):
                yield client
        return
    sizes = [int(v.nbytes) for v in inputs]
    nbytes = sum(sizes) if sizes else None
    with on_demand(start, on_start=announce, nbytes=nbytes) as deferred, progress_enabled(not STATE.quiet):
        yield deferred


def device() -> Literal["cpu", "gpu"]:
    """The resolved ``--device`` (``cpu`` or ``gpu``)."""
    from volmla.engine.backend import resolve_device

    return resolve_device(STATE.device)


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


class _LibraryDefault:
    """An option default that lives in the library, read only when a command runs or its
    help is shown (click calls a callable default; the help shows its ``str``)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __str__(self) -> str:
        return str(self())

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


def library_default(module: str, name: str) -> Any:
    """The default ``module.name`` for an option, without importing ``module`` now.

    So that registering the commands (``volmla --help``, ``--version``) imports no stage
    package, and with it neither Dask nor xarray.

    Parameters
    ----------
    module, name
        Where the library keeps the default, e.g. ``"volmla.particles.split", "NECK"``.

    Returns
    -------
    object
        A callable default, for the option's ``=``; its ``str`` is the value (the help).

    Examples
    --------
    >>> default = library_default("math", "tau")
    >>> default(), str(default)
    (6.283185307179586, '6.283185307179586')
    """
    return _LibraryDefault(module, name)


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
    as "threshold" stay words), and none right after ``:`` or ``,`` (a preprocessing
    step's parameters, ``nlmeans:h=VALUE``, keep their names).
    """
    flags = _flags()

    def swap(match: re.Match[str]) -> str:
        name, suffix = match.group(1), match.group(2) or ""
        flag = flags.get(name)
        if flag is None or (not suffix and "_" not in name):
            return match.group(0)
        return flag if suffix == "=True" else flag + (" " if suffix == "=" else "")

    # not after ':' or ',': a step's own parameters (``nlmeans:h=VALUE``) are no flags
    return re.sub(r"(?<![\w.:,-])([a-z][a-z0-9_]*)(=True\b|=)?", swap, message)


INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

BROKEN_PIPE = 141
"""Exit status when stdout's reader has gone (128 + SIGPIPE), as shells report it for other tools."""


def _usage_line(exc: typer.TyperException) -> str:
    """A click usage error as one line, naming the command and where its help is."""
    ctx = getattr(exc, "ctx", None)
    message = " ".join(exc.format_message().split())
    if ctx is None:
        return message
    return f"{message} (see '{ctx.command_path} --help')"


def _no_args_help(exc: typer.TyperException) -> bool:
    """Whether ``exc`` is click's "no arguments: show the help" signal (not an error)."""
    ctx = getattr(exc, "ctx", None)
    return ctx is not None and exc.format_message() == ctx.get_help()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: the one place every failure becomes one line on stderr.

    1. a user error (:class:`~volmla.errors.VolmlaError`, a usage error such as a missing
       argument, an unknown option or command, ``--min-size abc``) prints
       ``volmla: error: ...`` and exits 2;
    2. Ctrl-C (``KeyboardInterrupt``, click's ``Abort``) prints one line and exits 130;
    3. any other exception (a decode error from a damaged file, a worker error) prints
       ``volmla: error: <type>: <message> (run with -v for the traceback)`` and exits 2;
       with ``-v`` the traceback comes first.

    Parameters
    ----------
    argv
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, 2 (an error), 130 (interrupted) or 141 (stdout closed by its reader).
    """
    for key, value in vars(_Globals()).items():  # in-process callers (tests) run main many times
        setattr(STATE, key, value)
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("_VOLMLA_COMPLETE"):  # a shell asking for completions: click answers it
        try:
            typer.main.get_command(app).main(args, prog_name="volmla")
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0
    try:
        command = typer.main.get_command(app)
        with command.make_context("volmla", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as exc:  # --help, or a command that asked for a status
        return int(exc.exit_code)
    except SystemExit as exc:  # --show-completion / --install-completion end with sys.exit
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        raise
    except (KeyboardInterrupt, typer.Abort):
        _error_line("interrupted (rerun the same command to resume)", prefix="volmla: ")
        return INTERRUPTED
    except VolmlaError as exc:  # a config file's errors name its keys, the others the flags
        message = str(exc)
        _error_line(message if message.startswith(("config ", "config:")) else flag_names(message))
        return 2
    except typer.TyperException as exc:  # click's usage errors, as typer bundles click
        if _no_args_help(exc):
            typer.echo(exc.format_message(), err=True)
        else:
            _error_line(_usage_line(exc))
        return 2
    except BrokenPipeError:  # stdout's reader went away (`volmla info X | head -1`): stop quietly, as Unix tools do
        with contextlib.suppress(OSError):  # nothing more reaches the pipe, not even the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as exc:  # not volmla's own: one line, the traceback only with -v
        if STATE.verbose:
            traceback.print_exc()
        hint = "" if STATE.verbose else " (run with -v for the traceback)"
        _error_line(f"{type(exc).__name__}: {exc}{hint}")
        return 2
    return 0


def _error_line(message: str, *, prefix: str = "volmla: error: ") -> None:
    """``message`` on stderr as exactly one line."""
    text = " ".join(str(message).split()) or "(no message)"
    typer.echo(prefix + text, err=True)


if __name__ == "__main__":
    sys.exit(main())
