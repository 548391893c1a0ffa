"""The one exception type that means "the user asked for something wrong"."""

from __future__ import annotations


class VolmlaError(ValueError):
    """A user error.

    The command line prints its message as one line on stderr and exits with code 2;
    the Python API lets it propagate. Messages name the argument, what is allowed and
    what was given, e.g. ``connectivity must be one of (6, 18, 26), got 8``.
    """
