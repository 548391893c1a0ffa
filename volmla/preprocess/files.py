"""From one OME-Zarr volume to another: the file-level job behind ``volmla preprocess``.

1. :func:`plan_preprocess` reads the steps (a YAML file's first, then the given ones),
   opens the input, checks every step and its halo against it and checks the output
   (an existing one is refused without ``overwrite=True``; an unfinished one of the same
   job resumes), all before anything is computed, so a mistake costs no cluster start;
2. :func:`write_preprocessed` finds the scan's field of view and reads its outside as
   void (:mod:`volmla.preprocess.fov`; ``field_of_view``), chains the steps lazily
   (:func:`volmla.preprocess.preprocess`) and writes the result chunk by chunk
   (:func:`volmla.io.write_volume`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import xarray as xr

from volmla.engine.backend import resolve_device
from volmla.errors import VolmlaError
from volmla.preprocess.fov import RECORD_KEY, find_field_of_view, parse_field_of_view, void_outside
from volmla.preprocess.steps import Step, StepLike, _as_step, check_steps, load_steps, preprocess
from volmla.types import Device

__all__ = ["PreprocessPlan", "plan_preprocess", "write_preprocessed"]


class PreprocessPlan(NamedTuple):
    """A checked preprocessing job, ready to run (see :func:`plan_preprocess`)."""

    volume: xr.DataArray
    steps: list[Step]
    output: Path
    chunks: int | Sequence[int]
    device: Literal["cpu", "gpu"]
    overwrite: bool
    job: dict[str, Any]
    """What the output's fingerprint is taken from: command, input, steps, device."""
    field_of_view: Any = "auto"
    """``"auto"``, None or a :class:`~volmla.preprocess.fov.FieldOfView` (:func:`plan_preprocess`)."""


def plan_preprocess(
    input_path: str | Path,
    output: str | Path,
    *,
    steps: Sequence[StepLike] = (),
    config: str | Path | None = None,
    chunks: int | Sequence[int] | None = None,
    device: Device = "cpu",
    overwrite: bool = False,
    field_of_view: str | bool = "auto",
) -> PreprocessPlan:
    """Check a preprocessing job on files, computing nothing.

    Parameters
    ----------
    input_path
        Intensity volume (OME-Zarr).
    output
        Output volume (OME-Zarr).
    steps
        :class:`~volmla.preprocess.Step` objects, ``"name:key=value,..."`` strings or
        mappings, applied after those of ``config``.
    config
        YAML list of steps (:func:`~volmla.preprocess.load_steps`), applied first.
    chunks
        Output chunk edge(s) in voxels (default: the input's).
    device
        Where the local filters run (``auto``, ``cpu`` or ``gpu``).
    overwrite
        Replace an existing output.
    field_of_view
        ``"auto"``: find the scan's cylindrical field of view when the job runs
        (:func:`volmla.preprocess.fov.find_field_of_view`) and set its outside to the
        void level before the steps (:func:`~volmla.preprocess.fov.void_outside`), so the
        fill neither bends beam-hardening's and the rings' radial fits nor bleeds into the
        filters' reach at the edge; ``"none"`` (or False): every voxel is data;
        ``"Y,X,R"``: that circle.

    Returns
    -------
    PreprocessPlan
        The opened input, the checked steps and the output settings.

    Examples
    --------
    >>> plan_preprocess("scan.zarr", "out.zarr", steps=["median:size=3"])  # doctest: +SKIP
    """
    from volmla.io import check_output, open_volume
    from volmla.io.outputs import source_id

    given = [*(load_steps(config) if config is not None else []), *(_as_step(s) for s in steps)]
    volume = open_volume(input_path)
    if not given:
        raise VolmlaError("no preprocessing steps given: pass steps=NAME[:key=value,...] or config=PATH")
    checked = check_steps(given, volume.shape)
    dev = resolve_device(device)
    out_chunks = chunks if chunks is not None else tuple(int(c[0]) for c in volume.data.chunks)
    job: dict[str, Any] = {
        "command": "preprocess",
        "input": source_id(input_path),
        "steps": [s.as_dict() for s in checked],
        "device": dev,
    }
    fov = parse_field_of_view(field_of_view, name="--fov")
    if not isinstance(fov, str):  # named only when not "auto", so the jobs of earlier versions stay the same
        job["field_of_view"] = None if fov is None else fov.as_record()
    check_output(output, overwrite=overwrite, job=job)
    return PreprocessPlan(volume, checked, Path(output), out_chunks, dev, overwrite, job, fov)


def write_preprocessed(plan: PreprocessPlan) -> Path:
    """Run a planned preprocessing job and write its output, resumably.

    Parameters
    ----------
    plan
        From :func:`plan_preprocess`.

    Returns
    -------
    pathlib.Path
        The written volume.

    Examples
    --------
    >>> write_preprocessed(plan_preprocess("scan.zarr", "out.zarr", steps=["median"]))  # doctest: +SKIP
    PosixPath('out.zarr')
    """
    from volmla.io import write_volume

    volume = plan.volume
    fov = find_field_of_view(volume) if isinstance(plan.field_of_view, str) else plan.field_of_view
    if fov is not None:
        record = {"step": "field_of_view", RECORD_KEY: fov.as_record(), "outside": "void level"}
        volume = volume.copy(data=void_outside(volume.data, fov))
        volume.attrs["provenance"] = [*volume.attrs.get("provenance", []), record]
    result = preprocess(volume, plan.steps, device=plan.device)
    return write_volume(result, plan.output, chunks=plan.chunks, overwrite=plan.overwrite, job=plan.job)
