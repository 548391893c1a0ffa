"""Global options of the command line: --version, -v / -vv log levels, shell completion, bokeh."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator

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
