"""``--set KEY=VALUE`` for the phantom benchmarks: crushed-ore parameters replacing a level's.

``bench_truth.py --end-to-end-only`` and ``bench_particles.py`` take the same option, so a
sweep over, say, the particle radius or the contrast reads the same in both.
"""

from __future__ import annotations

import argparse

HELP = ("a phantom parameter replacing the level's (crushed_ore's keywords: contrast, radius, noise_sigma, "
        "psf_sigma, density, ...); repeatable")


def add_set_option(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """Add ``--set KEY=VALUE`` (repeatable) to ``parser``; ``prefix`` starts its help."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=prefix + HELP)


def parse_set(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    """The ``--set`` items as keywords for :func:`volmla.synthetic.crushed_ore` (a usage error otherwise)."""
    overrides: dict[str, float] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            parser.error(f"--set needs KEY=NUMBER, got {item!r}")
        try:
            overrides[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            parser.error(f"--set needs KEY=NUMBER, got {item!r}")
    return overrides
