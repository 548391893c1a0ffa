"""A synthetic CT phantom of multi-phase particles with exact ground truth.

The phantom is generated chunk by chunk, so it can be as large as the disk allows, and
it is bit-identical for a given seed whatever the chunking:

1. the options are validated into a JSON-able parameter record (:func:`_params`);
2. a small global catalogue is drawn from the seed
   (:mod:`volmla.synthetic.catalogue`): particle centres, sizes, shapes and grain
   seeds, pores and rings;
3. the four volumes are wired lazily (:mod:`volmla.synthetic.render`): the grain ids
   block by block, the phases and particle ids through lookup tables, and the
   intensity (attenuation, partial-volume blur, cupping, rings and counter-based noise,
   :mod:`volmla.synthetic.noise`);
4. :func:`write_phantom` plans all four outputs first
   (:func:`volmla.io.outputs.output_state`: new, resume, replace or done), writes the
   grain ids, and derives the other volumes from the stored grains, so the geometry is
   evaluated once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr

from volmla.errors import VolmlaError
from volmla.io.outputs import OutputState, output_state
from volmla.synthetic.catalogue import PHASES, Catalogue, draw_catalogue
from volmla.synthetic.render import ATTENUATION, TRUNCATE, derive_volumes, grain_array

logger = logging.getLogger(__name__)

__all__ = ["NAMES", "Phantom", "check_phantom_output", "phantom", "write_phantom"]

NAMES = ("intensity", "phases", "particles", "grains")
DEFAULTS: dict[str, Any] = {
    "shape": (128, 128, 128),
    "seed": 0,
    "voxel_size": 2.0,
    "chunks": 64,
    "rings": False,
    "n_particles": None,
    "solid_fraction": 0.3,
    "esd_range": (16.0, 48.0),
    "liberated_fraction": 0.4,
    "touching_fraction": 0.15,
    "roughness": 0.08,
    "n_pores": None,
    "noise_sigma": 1500.0,
    "blur_sigma": 0.8,
    "cupping": 0.08,
    "ring_strength": 0.8,
}


class Phantom(NamedTuple):
    """The four volumes of a phantom, lazy ``xarray.DataArray`` s with volmla attrs."""

    intensity: xr.DataArray
    phases: xr.DataArray
    particles: xr.DataArray
    grains: xr.DataArray


def _check_params(
    *,
    shape: Sequence[int],
    seed: int,
    chunks: int | Sequence[int],
    n_particles: int | None,
    solid_fraction: float,
    esd_range: Sequence[float],
    liberated_fraction: float,
    touching_fraction: float,
    roughness: float,
    n_pores: int | None,
    noise_sigma: float,
    blur_sigma: float,
    cupping: float,
    rings: bool,
    ring_strength: float,
) -> dict[str, Any]:
    def integers(name: str, value: Any, lo: int) -> tuple[int, int, int]:
        values = [value] * 3 if isinstance(value, int | np.integer) else list(value)
        if len(values) != 3 or not all(isinstance(v, int | np.integer) and v >= lo for v in values):
            raise VolmlaError(f"{name} must be one integer >= {lo} or three (z, y, x), got {value!r}")
        return tuple(int(v) for v in values)  # type: ignore[return-value]

    shape_t = integers("shape", shape, 8)
    chunks_t = tuple(min(c, s) for c, s in zip(integers("chunks", chunks, 1), shape_t, strict=True))
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise VolmlaError(f"seed must be a non-negative integer, got {seed!r}")
    if n_particles is not None and (not isinstance(n_particles, int | np.integer) or n_particles < 1):
        raise VolmlaError(f"n_particles must be a positive integer or None, got {n_particles!r}")
    if n_pores is not None and (not isinstance(n_pores, int | np.integer) or n_pores < 0):
        raise VolmlaError(f"n_pores must be a non-negative integer or None, got {n_pores!r}")
    esd = tuple(float(v) for v in esd_range)
    if len(esd) != 2 or not 1.0 <= esd[0] <= esd[1]:
        raise VolmlaError(f"esd_range must be (lo, hi) voxels with 1 <= lo <= hi, got {tuple(esd_range)}")
    for name, value, lo, hi in (
        ("solid_fraction", solid_fraction, 0.0, 0.6),
        ("liberated_fraction", liberated_fraction, 0.0, 1.0),
        ("touching_fraction", touching_fraction, 0.0, 1.0),
        ("roughness", roughness, 0.0, 0.3),
        ("cupping", cupping, 0.0, 0.9),
    ):
        if not lo <= float(value) <= hi:
            raise VolmlaError(f"{name} must lie in [{lo}, {hi}], got {value}")
    for name, value in (("noise_sigma", noise_sigma), ("blur_sigma", blur_sigma), ("ring_strength", ring_strength)):
        if not (np.isfinite(value) and float(value) >= 0):
            raise VolmlaError(f"{name} must be a non-negative number, got {value}")
    if int(TRUNCATE * blur_sigma + 0.5) >= min(shape_t):
        raise VolmlaError(f"blur_sigma {blur_sigma} is too large for shape {list(shape_t)}")
    return {
        "shape": list(shape_t),
        "seed": int(seed),
        "chunks": list(chunks_t),
        "n_particles": None if n_particles is None else int(n_particles),
        "solid_fraction": float(solid_fraction),
        "esd_range_vox": list(esd),
        "liberated_fraction": float(liberated_fraction),
        "touching_fraction": float(touching_fraction),
        "roughness": float(roughness),
        "n_pores": None if n_pores is None else int(n_pores),
        "noise_sigma": float(noise_sigma),
        "blur_sigma": float(blur_sigma),
        "cupping": float(cupping),
        "rings": bool(rings),
        "ring_strength": float(ring_strength),
    }


def _build(params: Mapping[str, Any]) -> tuple[Catalogue, dict[str, Any]]:
    return draw_catalogue(
        tuple(params["shape"]),
        params["seed"],
        n_particles=params["n_particles"],
        solid_fraction=params["solid_fraction"],
        esd_range=tuple(params["esd_range_vox"]),
        liberated_fraction=params["liberated_fraction"],
        touching_fraction=params["touching_fraction"],
        roughness=params["roughness"],
        n_pores=params["n_pores"],
    )


def _provenance(params: Mapping[str, Any], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    from volmla import __version__

    record = {
        "step": "phantom",
        "volmla": __version__,
        "params": {k: v for k, v in params.items() if k != "chunks"},
        "attenuation": dict(ATTENUATION),
        "noise": "splitmix64(seed, voxel index) -> Box-Muller",
        "catalogue": dict(summary),
    }
    return [json.loads(json.dumps(record))]


def _wrap(arrays: Mapping[str, da.Array], voxel_size: tuple[float, float, float], provenance: list[dict[str, Any]]) -> Phantom:
    from volmla.io import DIMS

    out = {}
    for name in NAMES:
        data = arrays[name]
        coords = {d: np.arange(n, dtype=np.float64) * s for d, n, s in zip(DIMS, data.shape, voxel_size, strict=True)}
        attrs = {
            "voxel_size_um": voxel_size,
            "unit": "micrometer",
            "kind": {"intensity": "intensity", "phases": "phases"}.get(name, "labels"),
            "phases": dict(PHASES) if name == "phases" else {},
            "provenance": [dict(p) for p in provenance],
        }
        out[name] = xr.DataArray(data, dims=DIMS, coords=coords, attrs=attrs, name=name)
    return Phantom(**out)


def phantom(
    *,
    shape: int | Sequence[int] = (128, 128, 128),
    seed: int = 0,
    voxel_size: float | Sequence[float] = 2.0,
    chunks: int | Sequence[int] = 64,
    rings: bool = False,
    n_particles: int | None = None,
    solid_fraction: float = 0.3,
    esd_range: Sequence[float] = (16.0, 48.0),
    liberated_fraction: float = 0.4,
    touching_fraction: float = 0.15,
    roughness: float = 0.08,
    n_pores: int | None = None,
    noise_sigma: float = 1500.0,
    blur_sigma: float = 0.8,
    cupping: float = 0.08,
    ring_strength: float = 0.8,
) -> Phantom:
    """A lazy synthetic CT volume of multi-phase particles with its ground truth.

    Parameters
    ----------
    shape
        ``(z, y, x)`` voxels (each at least 8), or one number for a cube.
    seed
        Everything (catalogue and noise) is a deterministic function of the seed; the
        result does not depend on ``chunks``.
    voxel_size
        Micrometres, one number or ``(z, y, x)``; only recorded (geometry is in voxels).
    chunks
        Dask chunk edge(s).
    rings
        Add ring artefacts about the z axis through the xy centre.
    n_particles
        Particles to place; ``None`` derives it from ``solid_fraction``, so the count
        scales with the volume (a few tens at 128^3 with the default sizes). Placement
        may drop a few that find no room.
    solid_fraction
        Target fraction of the volume in particles when ``n_particles`` is None.
    esd_range
        ``(lo, hi)`` equivalent sphere diameters in voxels, drawn log-uniformly.
    liberated_fraction
        Probability that a particle is one grain of one phase; the others have two or
        three grains of distinct phases.
    touching_fraction
        Probability that a particle is placed against an earlier one (they touch or
        overlap slightly; the ground truth splits them).
    roughness
        Standard deviation of the angular shape-noise coefficients (0 = ellipsoids).
    n_pores
        Small pores (darker than the matrix) to scatter; ``None``: one per 50^3 voxels.
    noise_sigma
        Standard deviation of the additive gaussian noise, in grey values.
    blur_sigma
        Partial-volume gaussian blur, in voxels (0 = none).
    cupping
        Beam-hardening strength: the centre of the xy plane is ``1 - cupping`` as
        bright as the corners, parabolic in radius.
    ring_strength
        Ring amplitude in units of ``noise_sigma`` (used with ``rings``).

    Returns
    -------
    Phantom
        ``intensity`` (uint16), ``phases`` (uint8, 0 matrix/pores, 1 quartz, 2 feldspar,
        3 pyrite), ``particles`` and ``grains`` (uint32, 0 background, ids unique over
        the volume), lazy DataArrays with ``voxel_size_um``, ``unit``, ``kind``,
        ``phases`` and ``provenance`` attrs. Grey values follow the module's
        attenuation table (also in the provenance record).

    Examples
    --------
    >>> ph = phantom(shape=(32, 32, 32), seed=1, esd_range=(6, 12))
    >>> ph.phases.dtype, ph.particles.dtype, ph.intensity.dtype
    (dtype('uint8'), dtype('uint32'), dtype('uint16'))
    """
    return _make(
        shape=shape,
        seed=seed,
        voxel_size=voxel_size,
        chunks=chunks,
        rings=rings,
        n_particles=n_particles,
        solid_fraction=solid_fraction,
        esd_range=esd_range,
        liberated_fraction=liberated_fraction,
        touching_fraction=touching_fraction,
        roughness=roughness,
        n_pores=n_pores,
        noise_sigma=noise_sigma,
        blur_sigma=blur_sigma,
        cupping=cupping,
        ring_strength=ring_strength,
    )[0]


def _params(**options: Any) -> dict[str, Any]:
    """Validate the phantom options (defaults filled in) into a JSON-able dict."""
    from volmla.io import normalise_voxel_size

    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise VolmlaError(f"unknown phantom option(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    options = {**DEFAULTS, **options}
    shape = options.pop("shape")
    vs = normalise_voxel_size(options.pop("voxel_size"))
    try:
        shape = [int(shape)] * 3 if isinstance(shape, int | np.integer) else list(shape)
    except TypeError:
        raise VolmlaError(f"shape must be one integer or three (z, y, x), got {shape!r}") from None
    params = _check_params(shape=shape, **options)
    params["voxel_size_um"] = list(vs)
    return params


def _make(**options: Any) -> tuple[Phantom, Catalogue, dict[str, Any]]:
    """Validate the options, draw the catalogue and wire the lazy volumes."""
    params = _params(**options)
    vs = tuple(params["voxel_size_um"])
    cat, summary = _build(params)
    logger.info("phantom %s seed %d: %s", params["shape"], params["seed"], summary)
    grains = grain_array(cat, tuple(params["shape"]), tuple(params["chunks"]))
    arrays = {"grains": grains, **derive_volumes(grains, cat, params)}
    return _wrap(arrays, vs, _provenance(params, summary)), cat, params


def _outputs(out_dir: Path) -> dict[str, Path]:
    return {name: out_dir / f"{name}.zarr" for name in NAMES}


def _job(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What an output is a result of: the parameters but the chunking (which changes nothing)."""
    kept = {k: v for k, v in params.items() if k != "chunks"}
    return {"command": "phantom", "volume": name, "params": json.loads(json.dumps(kept))}


def _plan(out_dir: Path, *, overwrite: bool, params: Mapping[str, Any]) -> dict[str, OutputState]:
    """What writing each output would do: new, resume, replace or done (same job, complete)."""
    from volmla.io.outputs import check_not_volume

    if out_dir.exists() and not out_dir.is_dir():
        raise VolmlaError(f"output {out_dir} exists and is not a folder")
    check_not_volume(out_dir, what="output", advice="name a folder of its own for the phantom's volumes")
    plan = {name: output_state(path, job=_job(params, name), overwrite=overwrite)
            for name, path in _outputs(out_dir).items()}
    if all(state == "done" for state in plan.values()):
        raise VolmlaError(f"output {out_dir} exists: pass overwrite=True to replace it")
    return plan


def check_phantom_output(out_dir: str | Path, *, overwrite: bool = False, **options: Any) -> dict[str, OutputState]:
    """Check, without writing, that :func:`write_phantom` may write into ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder.
    overwrite
        Whether existing outputs may be replaced.
    **options
        The :func:`phantom` keywords that :func:`write_phantom` will get.

    Returns
    -------
    dict
        Per volume name: ``"new"``, ``"resume"`` (an interrupted write of the same job),
        ``"replace"`` or ``"done"`` (complete, same job: an interrupted run skips it).
        Raises :class:`~volmla.errors.VolmlaError` when an output exists and may not be
        replaced.
    """
    return _plan(Path(out_dir), overwrite=overwrite, params=_params(**options))


def write_phantom(
    out_dir: str | Path,
    *,
    shape: int | Sequence[int] = (128, 128, 128),
    seed: int = 0,
    chunks: int | Sequence[int] = 64,
    overwrite: bool = False,
    voxel_size: float | Sequence[float] = 2.0,
    rings: bool = False,
    levels: int = 1,
    **options: Any,
) -> dict[str, Path]:
    """Write a phantom's four volumes as OME-Zarr into ``out_dir``.

    All four outputs are checked before anything is written. The grain ids are written
    first and the other volumes derived from the stored grains, so the geometry is
    evaluated once. A run interrupted part-way resumes: complete volumes of the same
    job are kept, an interrupted one resumes chunk by chunk.

    Parameters
    ----------
    out_dir
        Output folder; gets ``intensity.zarr``, ``phases.zarr``, ``particles.zarr``,
        ``grains.zarr``.
    shape, seed, chunks, voxel_size, rings
        As for :func:`phantom`; ``chunks`` are also the storage chunks.
    overwrite
        Replace existing outputs.
    levels
        Multiscale levels to write.
    **options
        Other :func:`phantom` keywords (``n_particles``, ``esd_range``, ...).

    Returns
    -------
    dict
        Volume name -> written path.

    Examples
    --------
    >>> paths = write_phantom("/tmp/ph", shape=(32, 32, 32), overwrite=True)  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['grains', 'intensity', 'particles', 'phases']
    """
    from volmla.io import open_volume, write_volume
    from volmla.io.lock import write_error

    out_dir = Path(out_dir)
    options = {"shape": shape, "seed": seed, "chunks": chunks, "voxel_size": voxel_size, "rings": rings, **options}
    plan = _plan(out_dir, overwrite=overwrite, params=_params(**options))
    ph, cat, params = _make(**options)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out_dir, exc) from exc
    paths = _outputs(out_dir)
    storage = tuple(c[0] for c in ph.grains.data.chunks)

    def write(name: str, data: xr.DataArray) -> None:
        if plan[name] == "done":
            logger.info("%s is complete, kept", paths[name])
            return
        write_volume(
            data,
            paths[name],
            chunks=storage,
            levels=levels,
            overwrite=plan[name] == "replace",
            job=_job(params, name),
        )

    write("grains", ph.grains)
    stored = open_volume(paths["grains"]).data
    derived = derive_volumes(stored, cat, params)
    for name in ("phases", "particles", "intensity"):
        like = getattr(ph, name)
        write(name, like.copy(data=derived[name]))
    return paths
