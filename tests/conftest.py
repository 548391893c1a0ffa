"""Shared test configuration: seeded RNG, a quiet logger, GPU detection."""

from __future__ import annotations

import numpy as np
import pytest

# conftest files are plugins, not modules with doctests: collecting them for
# --doctest-modules imports each under the one name "conftest" and clashes
collect_ignore_glob = ["conftest.py", "*/conftest.py"]


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator; each test that draws random data takes it."""
    return np.random.default_rng(20261121)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests cleanly where CuPy and a CUDA device are absent."""
    from volmla.engine.backend import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a working CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
