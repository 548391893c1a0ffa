"""The ``volmla`` command line: a thin layer over the Python API.

Every command takes ``--help``, refuses to replace an existing output unless
``--overwrite`` is given, and on a user error prints one line to stderr and exits 2.
Global options (before the command): ``--scheduler ADDRESS``, ``--workers N``,
``--gpus N``, ``--device auto|cpu|gpu``. One module per stage registers its commands on
:data:`volmla.cli.app.app`; each command parses, makes one library call and prints.
"""

from __future__ import annotations

import importlib

from volmla.cli.app import STATE, app, main

#: Command modules in the order ``volmla --help`` lists their commands.
COMMAND_MODULES = ("info", "ingest", "preprocess", "particles", "segment", "liberation", "breakage", "correlate", "sem", "pipeline")
for _name in COMMAND_MODULES:
    importlib.import_module(f"volmla.cli.{_name}")

__all__ = ["COMMAND_MODULES", "STATE", "app", "main"]
