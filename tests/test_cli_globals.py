"""Global options of the command line: --version, -v / -vv log levels, shell completion, bokeh."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import volmla
from volmla.cli import main
from volmla.cli.app import DASK_LOGGERS, STATE, configure_logging


@pytest.fixture(autouse=True)
def _restore_log_levels() -> Iterator[None]:
    names = ("volmla", *DASK_LOGGERS)
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"volmla {volmla.__version__}\n"
    assert volmla.__version__ == importlib.metadata.version("volmla")


@pytest.mark.parametrize(("count", "ours", "dask"), [(0, logging.WARNING, logging.WARNING),
                                                    (1, logging.DEBUG, logging.WARNING),
                                                    (2, logging.DEBUG, logging.INFO)])
def test_verbose_counts(count: int, ours: int, dask: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*(["-v"] * count), "info", "--help"]) == 0
    assert STATE.verbose == count
    assert logging.getLogger("volmla").level == ours
    assert logging.getLogger("volmla.io.volume").getEffectiveLevel() == ours
    assert {logging.getLogger(n).level for n in DASK_LOGGERS} == {dask}
    assert "Usage:" in capsys.readouterr().out


def test_vv_as_one_flag_and_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["-vv", "--version"]) == 0  # --version is eager: the log is not configured
    configure_logging(1)
    with caplog.at_level(logging.NOTSET):
        logging.getLogger("volmla.test").debug("ours")
        logging.getLogger("distributed.scheduler").info("theirs")
    assert "ours" in caplog.text and "theirs" not in caplog.text


def test_shell_completion(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # typer detects the shell from the process tree; a CI job or a detached run has none
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: "bash")
    assert main(["--show-completion"]) == 0
    assert "_volmla_completion" in capsys.readouterr().out
    monkeypatch.setenv("_VOLMLA_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "volmla inf")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert main([]) == 0
    assert capsys.readouterr().out.split() == ["info"]
    monkeypatch.setenv("COMP_WORDS", "volmla --ver")
    assert main([]) == 0
    assert "--version" in capsys.readouterr().out.split()


def test_bokeh_serves_the_dashboard() -> None:
    # distributed's dashboard needs bokeh >= 3.1; without it the printed link shows an error page
    version = importlib.metadata.version("bokeh")
    assert tuple(int(p) for p in version.split(".")[:2]) >= (3, 1)
    requires = importlib.metadata.requires("volmla") or []
    assert any(r.replace(" ", "").startswith("bokeh>=3.1") for r in requires)


def test_a_step_parameter_is_not_shown_as_a_flag() -> None:
    """``h`` is also ``volmla particles --h``; inside a step (``nlmeans:h=``) it is the step's own."""
    from volmla.cli.app import flag_names

    assert flag_names("step nlmeans: missing parameter 'h' (e.g. nlmeans:h=VALUE)").endswith("(e.g. nlmeans:h=VALUE)")
    assert flag_names("give h=2 or min_size=3") == "give --h 2 or --min-size 3"


def test_a_stale_dask_scratch_folder_prints_nothing(tmp_path: Path) -> None:
    """A killed run leaves a Dask scratch folder; distributed purges it at the next start
    with an INFO line, which reached stderr (distributed resets its logger's level when
    first imported, after volmla set it)."""
    import os
    import subprocess
    import sys

    import numpy as np

    from volmla.io import write_volume

    write_volume(np.zeros((8, 8, 8), np.uint8), tmp_path / "mask.zarr", voxel_size=1.0, kind="phases")
    scratch = tmp_path / "scratch" / "dask-scratch-space"
    (scratch / "worker-stale").mkdir(parents=True)
    (scratch / "worker-stale.dirlock").touch()
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "scratch")}
    env.pop("DASK_LOGGING__DISTRIBUTED", None)
    done = subprocess.run([sys.executable, "-m", "volmla.cli", "-q", "--workers", "1", "label", "mask.zarr", "-o",
                           "l.zarr"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (scratch / "worker-stale").exists()  # purged: the case happened
    assert "INFO" not in done.stderr, done.stderr


def test_a_closed_stdout_ends_quietly_with_141(tmp_path: Path) -> None:
    """``volmla info X | head -1``: the reader closes the pipe early; no error line, status 141."""
    import subprocess
    import sys

    import numpy as np

    from volmla.io import write_volume

    steps = [{"step": f"step {i}", "detail": "x" * 200} for i in range(2000)]  # far more than a pipe buffer
    vol = write_volume(np.ones((8, 8, 8), np.uint8), tmp_path / "v.zarr", voxel_size=1.0, provenance=steps)
    code = "import sys; from volmla.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "info", str(vol)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
