"""Preprocessing filters for CT intensity volumes, out of core and exact at chunk borders.

Every step is a small pure kernel on a NumPy (or CuPy) block plus a lazy public function
on a NumPy, Dask or xarray volume:

1. local filters (``gaussian``, ``median``, ``bilateral``, ``nlmeans``, ``unsharp``;
   :mod:`~volmla.preprocess.filters`, kernels in :mod:`~volmla.preprocess.kernels`)
   derive their halo from their own parameters (``*_halo`` functions) and run through
   :func:`volmla.engine.overlap.halo_map`, so the result is bit-identical to the kernel on
   the whole array in memory (SciPy's ``reflect`` boundary), whatever the chunking;
2. global steps first reduce the volume to a small table, the one place this package
   computes (through :func:`volmla.engine.cluster.compute`): ``normalize``
   (:mod:`~volmla.preprocess.intensity`) a histogram (:func:`volmla.engine.reduce.histogram`;
   one bin per value for integer data, so its percentiles are exact),
   ``beam-hardening`` (:mod:`~volmla.preprocess.beam`) and ``rings``
   (:mod:`~volmla.preprocess.ring_artefacts`) per-radius sums and counts. Sums are accumulated as
   integers (values in fixed point with a power-of-two scale fixed by the volume's range
   and size), so the tables, and hence the outputs, do not depend on the chunking either;
3. the table becomes a pointwise correction applied lazily block by block (a block knows
   its position from Dask's ``block_info``);
4. :func:`preprocess` (:mod:`~volmla.preprocess.steps`) chains :class:`Step` specs
   (parsed from ``name:key=value,...`` strings or YAML) lazily, checking every step's
   parameters and halo before anything is computed; :mod:`~volmla.preprocess.files`
   runs it from one OME-Zarr volume to another (the ``volmla preprocess`` command).

Output dtypes: ``median`` keeps the input dtype; the other filters return float32
(float64 input stays float64); ``normalize`` returns float32, uint8 or uint16.

``Histogram``, ``histogram`` and ``histogram_percentile`` are re-exported from
:mod:`volmla.engine.reduce`, where they live.
"""

from __future__ import annotations

from volmla.engine.reduce import Histogram, histogram, histogram_percentile
from volmla.preprocess.beam import RadialProfile, beam_hardening, radial_profile
from volmla.preprocess.files import PreprocessPlan, plan_preprocess, write_preprocessed
from volmla.preprocess.filters import bilateral, gaussian, median, nlmeans, unsharp
from volmla.preprocess.intensity import normalize
from volmla.preprocess.kernels import (
    NormDtype,
    bilateral_halo,
    bilateral_kernel,
    gaussian_halo,
    gaussian_kernel,
    median_halo,
    median_kernel,
    nlmeans_halo,
    nlmeans_kernel,
    normalize_kernel,
    unsharp_halo,
    unsharp_kernel,
)
from volmla.preprocess.ring_artefacts import rings
from volmla.preprocess.steps import (
    STEP_NAMES,
    Step,
    StepLike,
    check_steps,
    load_steps,
    make_step,
    parse_step,
    preprocess,
    step_halo,
)

__all__ = [
    "STEP_NAMES",
    "Histogram",
    "NormDtype",
    "PreprocessPlan",
    "RadialProfile",
    "Step",
    "StepLike",
    "beam_hardening",
    "bilateral",
    "bilateral_halo",
    "bilateral_kernel",
    "check_steps",
    "gaussian",
    "gaussian_halo",
    "gaussian_kernel",
    "histogram",
    "histogram_percentile",
    "load_steps",
    "make_step",
    "median",
    "median_halo",
    "median_kernel",
    "nlmeans",
    "nlmeans_halo",
    "nlmeans_kernel",
    "normalize",
    "normalize_kernel",
    "parse_step",
    "plan_preprocess",
    "preprocess",
    "radial_profile",
    "rings",
    "step_halo",
    "unsharp",
    "unsharp_halo",
    "unsharp_kernel",
    "write_preprocessed",
]
