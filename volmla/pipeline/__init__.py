"""Whole runs: ``volmla run CONFIG.yaml`` and ``volmla demo``.

- :mod:`volmla.pipeline.config`: the YAML config as typed dataclasses, checked once
  (:func:`load_config`, :func:`validate_config`) before any stage runs;
- :mod:`volmla.pipeline.run`: :func:`run`, the chain of stages a config describes
  (ingest, preprocess, segment, particles, grains, liberation), resumable;
- :mod:`volmla.pipeline.demo`: :func:`demo`, the same stages on a generated phantom,
  checked against its ground truth.
"""

from __future__ import annotations

from volmla.pipeline.config import (
    InputConfig,
    LiberationConfig,
    ParticlesConfig,
    PipelineConfig,
    SegmentConfig,
    load_config,
    validate_config,
)
from volmla.pipeline.demo import demo
from volmla.pipeline.run import run

__all__ = [
    "InputConfig",
    "LiberationConfig",
    "ParticlesConfig",
    "PipelineConfig",
    "SegmentConfig",
    "demo",
    "load_config",
    "run",
    "validate_config",
]
