"""The ``volmla`` command line: a thin layer over the Python API.

Every command takes ``--help``, refuses to replace an existing output unless
``--overwrite`` is given, and on a user error prints one line to stderr and exits 2.
Global options (before the command): ``--scheduler ADDRESS``, ``--workers N``,
``--gpus N``, ``--device auto|cpu|gpu``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import click
import typer

from volmla.errors import VolmlaError

if TYPE_CHECKING:
    from volmla.backend import Device

app = typer.Typer(
    name="volmla",
    help="Out-of-core 3D mineral liberation analysis of X-ray CT volumes.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@dataclass
class _Globals:
    scheduler: str | None = None
    workers: int | None = None
    gpus: int = 0
    device: Device = "auto"
    quiet: bool = False


STATE = _Globals()


@app.callback()
def _global_options(
    scheduler: Annotated[str | None, typer.Option(help="Attach to a running Dask scheduler, e.g. tcp://host:8786.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes of the embedded cluster (default: one per core).")] = None,
    gpus: Annotated[int, typer.Option(help="Start one worker per GPU (GPU=1 resource each).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | gpu: where array kernels and models run.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or dashboard address.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each stage does.")] = False,
) -> None:
    from volmla.backend import DEVICES

    if device not in DEVICES:
        raise VolmlaError(f"--device must be one of {DEVICES}, got {device!r}")
    STATE.scheduler, STATE.workers, STATE.gpus, STATE.quiet = scheduler, workers, gpus, quiet
    STATE.device = cast("Device", device)  # checked against DEVICES above
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed installs its own INFO handlers at import; keep the scheduler quiet too.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                 "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def running() -> Iterator[Any]:
    """The cluster a command computes on, with the dashboard address and progress bars."""
    from volmla.cluster import cluster, progress_enabled

    with cluster(scheduler=STATE.scheduler, workers=STATE.workers, gpus=STATE.gpus) as client:
        if not STATE.quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with progress_enabled(not STATE.quiet):
            yield client


def device() -> Literal["cpu", "gpu"]:
    """The resolved ``--device`` (``cpu`` or ``gpu``)."""
    from volmla.backend import resolve_device

    return resolve_device(STATE.device)


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


# ----------------------------------------------------------------------------- info


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="An OME-Zarr volume.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Shape, dtype, chunks, voxel size, phases and provenance of a volume."""
    from volmla.io import open_volume

    vol = open_volume(path)
    levels = _levels(path)
    record = {
        "path": str(path),
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "chunks": [c[0] for c in vol.data.chunks],
        "voxel_size_um": list(vol.attrs["voxel_size_um"]),
        "kind": vol.attrs["kind"],
        "levels": levels,
        "size_mb": round(vol.data.nbytes / 1e6, 3),
        "phases": {str(k): v for k, v in vol.attrs["phases"].items()},
        "provenance": vol.attrs["provenance"],
    }
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    for key in ("path", "shape", "dtype", "chunks", "voxel_size_um", "kind", "levels", "size_mb"):
        typer.echo(f"{key:14s} {record[key]}")
    if record["phases"]:
        typer.echo(f"{'phases':14s} " + ", ".join(f"{k}={v}" for k, v in record["phases"].items()))
    for i, step in enumerate(record["provenance"]):
        typer.echo(f"{'provenance' if i == 0 else '':14s} {json.dumps(step, default=str)}")


def _levels(path: Path) -> int:
    attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]
    return len(attrs.get("ome", attrs)["multiscales"][0]["datasets"])


# --- ingest commands ---


def _voxel_size_opt(text: str | None) -> list[float] | None:
    """``--voxel-size``: one number or ``z,y,x`` (micrometres)."""
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise VolmlaError(f"--voxel-size must be one number or z,y,x in micrometres, got {text!r}") from None
    if len(values) not in (1, 3):
        raise VolmlaError(f"--voxel-size must be one number or three (z,y,x), got {text!r}")
    return values


@app.command()
def ingest(
    inputs: Annotated[list[Path], typer.Argument(help="A folder of TIFF slices, a TIFF stack, an MHA/NRRD/NIfTI file, or a raw file; several stacks (top first) with --stitch.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output OME-Zarr volume.")],
    voxel_size: Annotated[str | None, typer.Option("--voxel-size", help="Voxel size in micrometres: one number or z,y,x (default: from the metadata).")] = None,
    chunks: Annotated[int | None, typer.Option(help="Chunk edge in voxels (default: about 64 MiB per chunk).")] = None,
    glob: Annotated[str, typer.Option(help="Slice pattern inside an input folder (natural order).")] = "*.tif*",
    stitch: Annotated[bool, typer.Option("--stitch", help="Stitch several stacks along z (phase correlation, linear blend).")] = False,
    overlap: Annotated[int | None, typer.Option(help="Nominal overlap of neighbouring stacks in slices (with --stitch).")] = None,
    shape: Annotated[tuple[int, int, int] | None, typer.Option(help="Raw input: shape Z Y X.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Raw input: dtype, e.g. uint16.")] = None,
    byteorder: Annotated[str, typer.Option(help="Raw input: little | big.")] = "little",
    levels: Annotated[int, typer.Option(help="Multiscale pyramid levels (1 = full resolution only).")] = 1,
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert TIFF slices/stacks, MHA/NRRD/NIfTI or raw data to an OME-Zarr volume."""
    from volmla.ingest import load, precheck_output, save

    if levels < 1:
        raise VolmlaError(f"--levels must be at least 1, got {levels}")
    precheck_output(output, overwrite=overwrite)
    vol = load(
        inputs,
        voxel_size=_voxel_size_opt(voxel_size),
        chunks=chunks,
        glob=glob,
        stitch=stitch,
        overlap=overlap,
        shape=shape,
        dtype=dtype,
        byteorder=byteorder,  # type: ignore[arg-type]
    )
    with running():
        path = save(vol, output, levels=levels, overwrite=overwrite)
    typer.echo(f"{path}: {' x '.join(map(str, vol.shape))} {vol.dtype}, voxel {list(vol.attrs['voxel_size_um'])} um")

# --- phantom commands ---


@app.command("phantom")
def phantom_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder for intensity/phases/particles/grains.zarr.")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape Z Y X in voxels.")] = (128, 128, 128),
    seed: Annotated[int, typer.Option(help="Random seed (the result does not depend on --chunks).")] = 0,
    chunks: Annotated[int, typer.Option(help="Chunk edge in voxels (generation and storage).")] = 64,
    voxel_size: Annotated[float, typer.Option(help="Voxel size in micrometres (recorded).")] = 2.0,
    rings: Annotated[bool, typer.Option("--rings", help="Add ring artefacts about the z axis.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a synthetic CT phantom and its ground truth (phases, particles, grains)."""
    from volmla.synthetic.phantom import check_phantom_output, write_phantom

    options: dict[str, Any] = {"shape": shape, "seed": seed, "chunks": chunks, "voxel_size": voxel_size, "rings": rings}
    check_phantom_output(output, overwrite=overwrite, **options)
    with running():
        paths = write_phantom(output, overwrite=overwrite, **options)
    for name, path in paths.items():
        typer.echo(f"{name:10s} {path}")

# --- preprocess commands ---


@app.command("preprocess")
def preprocess_command(
    input_path: Annotated[Path, typer.Argument(metavar="IN", help="Intensity volume (OME-Zarr).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output volume (OME-Zarr).")],
    step: Annotated[
        list[str] | None,
        typer.Option(
            "--step",
            help="NAME[:key=value,...], repeatable, applied in order. Names: normalize, gaussian, median, "
            "bilateral, nlmeans, unsharp, beam-hardening, rings; e.g. --step gaussian:sigma=1.5",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML list of steps ({name: ..., params: {...}}), run before --step.")
    ] = None,
    chunks: Annotated[int | None, typer.Option("--chunks", help="Output chunk edge in voxels (default: the input's).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Filter an intensity volume chunk by chunk (halos exact at chunk borders); resumable."""
    from volmla.io import check_output, open_volume, write_volume
    from volmla.preprocess import check_steps, load_steps, parse_step, preprocess

    steps = [*(load_steps(config) if config is not None else []), *(parse_step(s) for s in step or [])]
    vol = open_volume(input_path)
    steps = check_steps(steps, vol.shape)
    dev = device()
    out_chunks = chunks if chunks is not None else tuple(int(c[0]) for c in vol.data.chunks)
    job = {
        "command": "preprocess",
        "input": str(input_path.resolve()),
        "steps": [s.as_dict() for s in steps],
        "device": dev,
    }
    check_output(output, overwrite=overwrite, job=job)
    with running():
        result = preprocess(vol, steps, device=dev)
        write_volume(result, output, chunks=out_chunks, overwrite=overwrite, job=job)
    if not STATE.quiet:
        typer.echo(f"wrote {output}")


# --- label commands ---


ConnectivityOpt = Annotated[int, typer.Option("--connectivity", help="6 (faces), 18 (+edges) or 26 (+corners).")]


def _write_labels(vol: Any, result: Any, output: Path, *, overwrite: bool, job: dict[str, Any], step: dict[str, Any]) -> None:
    """Write a Labels result with the input's voxel size, chunks and provenance."""
    from volmla.io import write_volume

    out = vol.copy(data=result.labels)
    write_volume(
        out,
        output,
        chunks=tuple(int(c[0]) for c in vol.data.chunks),
        kind="labels",
        phases={},
        provenance=[{**step, "count": int(result.count)}],
        overwrite=overwrite,
        job=job,
    )
    typer.echo(f"{output}: {result.count} labels", err=STATE.quiet)


@app.command("label")
def label_command(
    mask: Annotated[Path, typer.Argument(metavar="MASK", help="Binary mask (or, with --multilabel, an integer volume).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output label volume (OME-Zarr).")],
    connectivity: ConnectivityOpt = 26,
    multilabel: Annotated[bool, typer.Option("--multilabel", help="Label the components of each nonzero value separately.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Connected components of a mask, numbered 1..n in C order of their first voxel."""
    from volmla.io import check_output, open_volume
    from volmla.label import check_connectivity, label

    check_connectivity(connectivity)
    vol = open_volume(mask)
    job = {"command": "label", "input": str(mask.resolve()), "connectivity": connectivity, "multilabel": multilabel}
    check_output(output, overwrite=overwrite, job=job)
    with running():
        result = label(vol, connectivity=connectivity, multilabel=multilabel)  # type: ignore[arg-type]
        step = {"step": "label", "connectivity": connectivity, "multilabel": multilabel}
        _write_labels(vol, result, output, overwrite=overwrite, job=job, step=step)


@app.command("particles")
def particles_command(
    input_path: Annotated[Path, typer.Argument(metavar="IN", help="Intensity volume, or a phase volume whose nonzero voxels are solid.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output particle labels (OME-Zarr).")],
    threshold: Annotated[str | None, typer.Option("--threshold", help="otsu | VALUE (intensity input; solid is above it). Default: otsu.")] = None,
    min_size: Annotated[int, typer.Option("--min-size", help="Drop solid components smaller than this (voxels).")] = 0,
    no_split: Annotated[bool, typer.Option("--no-split", help="Do not separate touching particles.")] = False,
    fill_holes: Annotated[bool, typer.Option("--fill-holes", help="Fill interior pores before labelling.")] = False,
    h: Annotated[float, typer.Option("--h", help="Minimal dynamic (voxels) of a distance maximum that seeds a particle.")] = 2.0,
    max_radius: Annotated[float, typer.Option("--max-radius", help="Largest particle radius (voxels) the split is exact for; sets the halo.")] = 24.0,
    connectivity: ConnectivityOpt = 26,
    overwrite: OverwriteOpt = False,
) -> None:
    """Solid mask -> fill pores -> drop dust -> watershed split -> particle labels."""
    from volmla.io import check_output, open_volume
    from volmla.label import check_connectivity
    from volmla.particles import particles, split_halo

    check_connectivity(connectivity)
    split_halo(max_radius)
    if min_size < 0:
        raise VolmlaError(f"--min-size must be 0 or more voxels, got {min_size}")
    if not h > 0:
        raise VolmlaError(f"--h must be a positive number of voxels, got {h}")
    vol = open_volume(input_path)
    kind = vol.attrs.get("kind", "intensity")
    value: str | float | None
    if kind != "intensity":
        if threshold is not None:
            raise VolmlaError(f"--threshold applies to intensity volumes, but {input_path} is a {kind} volume (nonzero = solid)")
        value = None
    elif threshold is None or threshold == "otsu":
        value = "otsu"
    else:
        try:
            value = float(threshold)
        except ValueError:
            raise VolmlaError(f"--threshold must be otsu or a number, got {threshold!r}") from None
    options = {"threshold": value, "min_size": min_size, "fill_holes": fill_holes, "split": not no_split,
               "h": h, "max_radius": max_radius, "connectivity": connectivity}
    job = {"command": "particles", "input": str(input_path.resolve()), **options}
    check_output(output, overwrite=overwrite, job=job)
    import tempfile

    output.resolve().parent.mkdir(parents=True, exist_ok=True)
    with running(), tempfile.TemporaryDirectory(prefix=f".{output.name}-", dir=output.resolve().parent) as scratch:
        result = particles(vol, scratch=scratch, **options)  # type: ignore[arg-type]
        _write_labels(vol, result, output, overwrite=overwrite, job=job, step={"step": "particles", **options})


@app.command("grains")
def grains_command(
    particles_path: Annotated[Path, typer.Option("--particles", help="Particle labels (OME-Zarr).")],
    phases_path: Annotated[Path, typer.Option("--phases", help="Phase volume (OME-Zarr, uint8).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output grain labels (OME-Zarr).")],
    connectivity: ConnectivityOpt = 26,
    overwrite: OverwriteOpt = False,
) -> None:
    """Grains: connected components of each phase inside each particle."""
    import numpy as np

    from volmla.io import check_output, open_volume
    from volmla.label import check_connectivity
    from volmla.particles import grains

    check_connectivity(connectivity)
    part, phases = open_volume(particles_path), open_volume(phases_path)
    if part.shape != phases.shape:
        raise VolmlaError(f"--particles and --phases must have the same shape, got {list(part.shape)} and {list(phases.shape)}")
    if not np.allclose(part.attrs["voxel_size_um"], phases.attrs["voxel_size_um"], rtol=1e-6):
        raise VolmlaError(
            f"--particles and --phases must have the same voxel size, got {list(part.attrs['voxel_size_um'])} "
            f"and {list(phases.attrs['voxel_size_um'])} um"
        )
    job = {"command": "grains", "particles": str(particles_path.resolve()), "phases": str(phases_path.resolve()),
           "connectivity": connectivity}
    check_output(output, overwrite=overwrite, job=job)
    with running():
        result = grains(part, phases, connectivity=connectivity)  # type: ignore[arg-type]
        _write_labels(part, result, output, overwrite=overwrite, job=job, step={"step": "grains", "connectivity": connectivity})

# --- segment commands ---


def _refuse_existing(path: Path | None, overwrite: bool) -> None:
    if path is not None and path.exists() and not overwrite:
        raise VolmlaError(f"output {path} exists: pass --overwrite to replace it")


@app.command("train")
def train_command(
    image: Annotated[Path, typer.Option("--image", help="Intensity volume (OME-Zarr).")],
    labels: Annotated[Path, typer.Option("--labels", help="Sparse labels: phase + 1 (0 = unlabelled, 1 = void, 2 = phase 1 ...); particle ids with --target particles.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model checkpoint to write (.pt).")],
    dim: Annotated[int, typer.Option("--dim", help="2 (slice-wise) or 3.")] = 3,
    depth: Annotated[int, typer.Option("--depth", help="U-Net resolution levels (1..5).")] = 3,
    base: Annotated[int, typer.Option("--base", help="Channels of the first level.")] = 8,
    norm: Annotated[str, typer.Option("--norm", help="batch | instance | group | none.")] = "batch",
    patch: Annotated[int, typer.Option("--patch", help="Patch edge in voxels.")] = 32,
    batch: Annotated[int, typer.Option("--batch", help="Patches per step.")] = 4,
    iterations: Annotated[int, typer.Option("--iterations", "--epochs", help="Maximum optimisation steps.")] = 500,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 3e-3,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of labelled planes held out.")] = 0.34,
    patience: Annotated[int, typer.Option("--patience", help="Validation rounds without improvement before stopping.")] = 8,
    target: Annotated[str, typer.Option("--target", help="phases | particles (background/interior/boundary).")] = "phases",
    tile: Annotated[int | None, typer.Option("--tile", help="Inference tile edge stored in the model.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a U-Net on sparse labels (needs torch: pip install 'volmla[train]')."""
    from volmla.io import open_volume

    _refuse_existing(output, overwrite)
    try:
        from volmla.segment.train import TrainConfig, save_model, train
    except ImportError as exc:
        raise VolmlaError(f"training needs torch ({exc}): pip install 'volmla[train]'") from None
    config = TrainConfig(dim=dim, depth=depth, base=base, norm=norm, patch=patch, batch=batch,  # type: ignore[arg-type]
                         iterations=iterations, lr=lr, val_fraction=val_fraction, patience=patience,
                         target=target, tile=tile, threads=threads, seed=seed, device=STATE.device)  # type: ignore[arg-type]
    result = train(open_volume(image), open_volume(labels), config=config)
    save_model(result, output)
    last = result.history[-1] if result.history else {}
    typer.echo(f"wrote {output} (best iteration {result.best_iteration}, "
               + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "iteration") + ")", err=STATE.quiet)


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Checkpoint from volmla train (.pt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write (weights inline).")],
    atol: Annotated[float, typer.Option("--atol", help="Allowed max |logit difference| torch vs ONNX Runtime.")] = 1e-4,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a trained model to ONNX with its metadata; checks parity with torch."""
    _refuse_existing(output, overwrite)
    try:
        from volmla.segment.export import export
    except ImportError as exc:
        raise VolmlaError(f"export needs torch ({exc}): pip install 'volmla[train]'") from None
    report = export(model, output, atol=atol, overwrite=overwrite)
    typer.echo(f"wrote {output} (max |logit diff| {report.max_abs_diff:.3g}, argmax agreement "
               f"{100 * report.argmax_agreement:.2f} %, halo {report.metadata['halo']})", err=STATE.quiet)


@app.command("segment")
def segment_command(
    input_path: Annotated[Path, typer.Argument(metavar="IN", help="Intensity volume (OME-Zarr).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Phase volume to write (uint8).")],
    model: Annotated[Path | None, typer.Option("--model", help="ONNX model: a U-Net (volmla or foreign) or a volmla random forest.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="unet | threshold | kmeans | rf (default: unet with --model).")] = None,
    classes: Annotated[int | None, typer.Option("--classes", help="K classes for threshold / kmeans (0..K-1 by intensity).")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Sparse labels (phase + 1, 0 unlabelled) to train --method rf.")] = None,
    save_model: Annotated[Path | None, typer.Option("--save-model", help="Write the trained random forest (ONNX).")] = None,
    halo: Annotated[int | None, typer.Option("--halo", help="Context voxels (required for models without volmla metadata).")] = None,
    tile: Annotated[tuple[int, int, int] | None, typer.Option("--tile", help="Tile Z Y X (default: the model's).")] = None,
    overlap: Annotated[float, typer.Option("--overlap", help="Tile overlap fraction (Gaussian blending).")] = 0.25,
    batch: Annotated[int, typer.Option("--batch", help="Tiles per ONNX Runtime call.")] = 4,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU only).")] = False,
    uncertainty: Annotated[Path | None, typer.Option("--uncertainty", help="Also write the max class probability (uint8, x255) here.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="ONNX Runtime threads per worker.")] = None,
    sigmas: Annotated[str | None, typer.Option("--sigmas", help="Feature scales for --method rf, e.g. 0.7,1,1.6,3.5,5 (the default).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for kmeans / rf.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Segment phases: ONNX U-Net, or classical threshold / kmeans / random forest."""
    from volmla.io import check_output, open_volume, write_volume

    methods = ("unet", "threshold", "kmeans", "rf")
    if method is None:
        if model is None:
            raise VolmlaError("give --model M.onnx or --method threshold|kmeans|rf")
        from volmla.segment.classical import RF_FORMAT
        from volmla.segment.infer import read_metadata

        method = "rf" if read_metadata(model).get("format") == RF_FORMAT else "unet"
    if method not in methods:
        raise VolmlaError(f"--method must be one of {methods}, got {method!r}")
    if method in ("threshold", "kmeans") and classes is None:
        raise VolmlaError(f"--method {method} needs --classes K")
    if method == "unet" and model is None:
        raise VolmlaError("--method unet needs --model M.onnx")
    if method == "rf" and (model is None) == (labels is None):
        raise VolmlaError("--method rf needs either --labels SPARSE_LABELS (to train) or --model rf.onnx")
    if uncertainty is not None and method != "unet":
        raise VolmlaError("--uncertainty works with U-Net models only")
    vol = open_volume(input_path)
    dev = device()
    job = {"command": "segment", "input": str(input_path.resolve()), "method": method,
           "model": str(model.resolve()) if model else None, "classes": classes, "halo": halo,
           "tile": list(tile) if tile else None, "overlap": overlap, "seed": seed,
           "labels": str(labels.resolve()) if labels else None, "sigmas": sigmas}
    check_output(output, overwrite=overwrite, job=job)
    if uncertainty is not None:
        check_output(uncertainty, overwrite=overwrite, job={**job, "output": "uncertainty"})
    _refuse_existing(save_model, overwrite)
    chunks = [int(c[0]) for c in vol.data.chunks]
    steps = [{"step": "segment", **{k: v for k, v in job.items() if k not in ("command", "input")}}]
    with running():
        conf = None
        if method == "unet":
            from volmla.segment.infer import segment

            seg = segment(vol, model=model, halo=halo, tile=tile, overlap=overlap, batch=batch,  # type: ignore[arg-type]
                          device=dev, fp16=fp16, uncertainty=uncertainty is not None, threads=threads)
            phases, conf, names = seg.phases, seg.confidence, seg.classes
        elif method in ("threshold", "kmeans"):
            from volmla.segment.classical import kmeans_segment, threshold_segment

            assert classes is not None
            phases = threshold_segment(vol, classes=classes) if method == "threshold" else kmeans_segment(vol, classes=classes, seed=seed)
            names = ("void", *(f"class{i}" for i in range(1, classes)))
        else:
            from volmla.segment.classical import (
                load_random_forest,
                random_forest_segment,
                save_random_forest,
                train_random_forest,
            )

            rf_path = model
            if labels is not None:
                from volmla.segment.classical import DEFAULT_SIGMAS

                try:
                    scales = tuple(float(v) for v in sigmas.split(",")) if sigmas else DEFAULT_SIGMAS
                except ValueError:
                    raise VolmlaError(f"--sigmas must be comma-separated numbers, got {sigmas!r}") from None
                forest = train_random_forest(vol, open_volume(labels), sigmas=scales, seed=seed)
                typer.echo(f"random forest: training accuracy {forest.train_accuracy:.3f}", err=True)
                if save_model is None:
                    import tempfile

                    rf_path = Path(tempfile.mkdtemp(prefix="volmla-rf-")) / "rf.onnx"
                else:
                    rf_path = save_model
                save_random_forest(forest, rf_path)
                if save_model is not None:
                    typer.echo(f"wrote {save_model}", err=STATE.quiet)
            assert rf_path is not None
            phases = random_forest_segment(vol, model=rf_path)
            names = load_random_forest(rf_path).classes
        phase_names = {i: n for i, n in enumerate(names) if i > 0}
        write_volume(phases, output, voxel_size=vol.attrs["voxel_size_um"], chunks=chunks, kind="phases",
                     phases=phase_names, provenance=[*vol.attrs["provenance"], *steps], overwrite=overwrite, job=job)
        if conf is not None and uncertainty is not None:
            write_volume(conf, uncertainty, voxel_size=vol.attrs["voxel_size_um"], chunks=chunks, kind="intensity",
                         provenance=[*vol.attrs["provenance"], *steps, {"step": "max class probability x 255"}],
                         overwrite=overwrite, job={**job, "output": "uncertainty"})
    typer.echo(f"wrote {output}", err=STATE.quiet)


@app.command("evaluate")
def evaluate_command(
    pred: Annotated[Path, typer.Option("--pred", help="Predicted phase volume.")],
    truth: Annotated[Path, typer.Option("--truth", help="True phases, or sparse labels (phase + 1) with --mask labelled.")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for confusion.csv/.png, metrics.csv/.json.")] = None,
    mask: Annotated[str, typer.Option("--mask", help="all | labelled (labelled-only: truth is sparse labels).")] = "all",
    overwrite: OverwriteOpt = False,
) -> None:
    """Confusion matrix, per-class accuracy, IoU, accuracy excluding void, abundances."""
    from volmla.io import open_volume
    from volmla.segment.evaluate import evaluate, write_report

    mask = {"labelled-only": "labelled"}.get(mask, mask)
    if mask not in ("all", "labelled"):
        raise VolmlaError(f"--mask must be 'all' or 'labelled', got {mask!r}")
    if out is not None and (out / "metrics.json").exists() and not overwrite:
        raise VolmlaError(f"output {out} holds an evaluation: pass --overwrite to replace it")
    ev = evaluate(open_volume(pred), open_volume(truth), mask=mask)  # type: ignore[arg-type]
    summary = ev.as_dict()
    if out is not None:
        write_report(ev, out)
    typer.echo(json.dumps({k: summary[k] for k in ("accuracy", "accuracy_excluding_void", "mean_iou", "iou", "per_class_accuracy")}, indent=2))


# --- liberation commands ---


def _number_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise VolmlaError(f"{option} must be comma-separated numbers, got {text!r}") from None


@app.command("liberation")
def liberation_cmd(
    phases: Annotated[Path, typer.Option("--phases", help="Phase volume (OME-Zarr, uint8).")],
    particles: Annotated[Path, typer.Option("--particles", help="Particle label volume (OME-Zarr).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (particles.parquet, grains.parquet, summary.json, PNGs, report.html).")],
    grains: Annotated[Path | None, typer.Option("--grains", help="Grain label volume (OME-Zarr).")] = None,
    phase_names: Annotated[str | None, typer.Option("--phase-names", help="Names of phases 1..N, e.g. quartz,feldspar,pyrite.")] = None,
    densities: Annotated[str | None, typer.Option("--densities", help="Densities per phase (g/cm3), e.g. 2.65,2.6,5.0.")] = None,
    free_threshold: Annotated[float, typer.Option("--free-threshold", help="A particle is free in a phase whose grade exceeds this.")] = 0.99,
    size_edges: Annotated[str | None, typer.Option("--size-edges", help="Size-class edges, comma-separated (um ESD, or um^3 with --size-by volume).")] = None,
    size_by: Annotated[str, typer.Option("--size-by", help="esd | volume: what size classes are made of.")] = "esd",
    include_border: Annotated[bool, typer.Option("--include-border", help="Also count particles touching the volume border.")] = False,
    sections_step: Annotated[int, typer.Option("--sections", help="Stereology: every K-th plane per axis (0 = skip).")] = 10,
    pieces: Annotated[int, typer.Option("--pieces", help="Representativeness: equal sub-volumes (0 = skip).")] = 8,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95 % CIs (0 = skip).")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Per-particle tables and 3-D liberation statistics, plots and an HTML report."""
    from volmla.io import open_volume
    from volmla.liberation import analyse, check_options, check_out_dir, check_volumes

    check_out_dir(out, overwrite=overwrite)
    if size_by not in ("esd", "volume"):
        raise VolmlaError(f"--size-by must be one of (esd, volume), got {size_by!r}")
    if sections_step < 0 or pieces < 0 or bootstrap < 0:
        raise VolmlaError(f"--sections, --pieces and --bootstrap must be >= 0, got {sections_step}, {pieces}, {bootstrap}")
    if pieces == 1:
        raise VolmlaError("--pieces must be 0 (skip) or at least 2, got 1")
    names = [p.strip() for p in phase_names.split(",")] if phase_names is not None else None
    rho = _number_list(densities, "--densities")
    edges = _number_list(size_edges, "--size-edges")
    check_options(free_threshold=free_threshold, size_edges=edges, by=size_by, densities=rho, phase_names=names)
    ph = open_volume(phases)
    lab = open_volume(particles)
    gr = open_volume(grains) if grains is not None else None
    check_volumes(ph, lab, grains=gr, phase_names=names)
    with running():
        summary = analyse(
            ph, lab, grains=gr, out_dir=out, phase_names=names, densities=rho, free_threshold=free_threshold,
            size_edges=edges, by=size_by, include_border=include_border,  # type: ignore[arg-type]
            section_step=sections_step or None, pieces=pieces or None, n_boot=bootstrap, seed=seed, overwrite=overwrite,
        )
    typer.echo(
        f"{summary['n_particles']} particles analysed ({summary['n_border']} on the border "
        f"{'included' if include_border else 'excluded'}); report: {out / 'report.html'}"
    )

# --- correlate commands ---

correlate_app = typer.Typer(
    help="Correlative labelling: element maps -> mineral map -> registration into CT -> sparse labels.",
    no_args_is_help=True,
)
app.add_typer(correlate_app, name="correlate")


def _read_mapping(path: Path | None, what: str) -> dict[Any, Any] | None:
    """A YAML/JSON mapping file (cluster table, XRD abundances), or None."""
    if path is None:
        return None
    import yaml

    if not path.is_file():
        raise VolmlaError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise VolmlaError(f"{what} {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise VolmlaError(f"{what} {path} must be a non-empty mapping, got {type(data).__name__}")
    return data


@correlate_app.command("maps")
def correlate_maps(
    maps: Annotated[list[Path], typer.Argument(help="Element maps: Fe.tif Si.tif ... (stem = element) or an NPZ stack.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (mineral_map.npz/.tif, centroids.csv, report.json).")],
    minerals: Annotated[str, typer.Option(help="Mineral names in phase order, comma separated (void is phase 0).")],
    pixel_size: Annotated[float | None, typer.Option(help="Map pixel size in um (NPZ may carry it).")] = None,
    k: Annotated[int | None, typer.Option(help="k-means clusters (default minerals + 1).")] = None,
    table: Annotated[Path | None, typer.Option(help="YAML cluster -> mineral table (else automatic from signatures).")] = None,
    xrd: Annotated[Path | None, typer.Option(help="YAML mineral -> abundance (e.g. XRD) to compare with.")] = None,
    denoise: Annotated[str, typer.Option(help="Elements to bilateral-filter, comma separated ('' = none).")] = "Na,Mg",
    ct_slice: Annotated[Path | None, typer.Option(help="Registered CT slice on the map grid (TIFF), an extra channel.")] = None,
    resample: Annotated[bool, typer.Option("--resample", help="Maps of other shapes share the field of view: resample.")] = False,
    seed: Annotated[int, typer.Option(help="k-means seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """k-means mineral map from element maps, with centroids, abundances and assignment."""
    from volmla import correlate as co

    if (out / "report.json").exists() and not overwrite:
        raise VolmlaError(f"output {out} exists: pass --overwrite to replace it")
    names = [m.strip() for m in minerals.split(",") if m.strip()]
    k = k if k is not None else len(names) + 1
    cluster_table = _read_mapping(table, "cluster table")
    reference = _read_mapping(xrd, "abundance table")
    element_maps = co.read_maps(maps, pixel_size_um=pixel_size, resample=resample)
    if denoise.strip():
        element_maps = co.denoise_maps(element_maps, elements=[e.strip() for e in denoise.split(",")])
    if ct_slice is not None:
        import tifffile

        if not ct_slice.is_file():
            raise VolmlaError(f"--ct-slice {ct_slice} does not exist")
        element_maps = co.with_channel(element_maps, "CT", tifffile.imread(ct_slice))
    if k < len(names) + 1:
        raise VolmlaError(f"--k {k} is fewer than the {len(names) + 1} phases named (void + {', '.join(names)})")
    mineral_map = co.kmeans_minerals(element_maps, k=k, seed=seed)
    try:
        cluster_table = {int(c): str(m) for c, m in cluster_table.items()} if cluster_table else None
    except (TypeError, ValueError):
        raise VolmlaError(f"cluster table {table} must map cluster numbers to mineral names") from None
    assignment = co.assign_minerals(mineral_map, minerals=names, table=cluster_table)
    extra = {}
    if reference is not None:
        extra["reference_abundances"] = co.compare_abundances(mineral_map, assignment, reference)
    paths = co.save_mineral_map(out, element_maps, mineral_map, assignment, report=extra)
    for c, m in assignment.mineral.items():
        typer.echo(f"cluster {c}: {m:12s} confidence {assignment.confidence[c]:.2f}  "
                   f"abundance {mineral_map.abundances[c]:.3f}")
    for w in assignment.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"wrote {paths['npz']}")


@correlate_app.command("register")
def correlate_register(
    ct: Annotated[Path, typer.Option(help="CT intensity volume (OME-Zarr).")],
    map_path: Annotated[Path, typer.Option("--map", help="mineral_map.npz (from `correlate maps`) or a phase-id TIFF.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Registration JSON (NAME.tfm and NAME.labels.tif beside it).")],
    axis: Annotated[str, typer.Option(help="Axis normal to the mapped plane: z, y or x.")] = "z",
    pixel_size: Annotated[float | None, typer.Option(help="Map pixel size in um (needed for a TIFF).")] = None,
    channel: Annotated[str, typer.Option(help="Image to register: 'phases' or an element channel of the NPZ.")] = "phases",
    search: Annotated[tuple[int, int] | None, typer.Option(help="Candidate planes LO HI (default the whole axis).")] = None,
    step: Annotated[int | None, typer.Option(help="Coarse search step in planes.")] = None,
    transform: Annotated[str, typer.Option(help="rigid | similarity.")] = "rigid",
    min_quality: Annotated[float, typer.Option(help="Least acceptable registration quality (0..1).")] = 0.05,
    accept_poor: Annotated[bool, typer.Option("--accept-poor", help="Keep a poor/non-converged fit (flagged in the JSON).")] = False,
    max_tilt: Annotated[float, typer.Option(help="Also search plane tilts within +/- this many degrees (0 = none).")] = 0.0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Find the map's plane in the CT volume and register the map onto it."""
    import numpy as np

    from volmla import correlate as co
    from volmla.io import open_volume

    if out.exists() and not overwrite:
        raise VolmlaError(f"output {out} exists: pass --overwrite to replace it")
    phases, size, names = co.read_phase_map(map_path, pixel_size_um=pixel_size)
    image = phases
    origin: tuple[float, ...] = (0.0, 0.0)
    if map_path.suffix.lower() == ".npz":
        with np.load(map_path, allow_pickle=False) as npz:
            origin = tuple(float(v) for v in npz["origin_um"]) if "origin_um" in npz.files else origin
            if channel != "phases":
                if channel not in npz.files or npz[channel].shape != phases.shape:
                    raise VolmlaError(f"--channel must be 'phases' or a map channel of {map_path.name}, got {channel!r}")
                image = npz[channel]
    elif channel != "phases":
        raise VolmlaError(f"--channel {channel!r} needs an NPZ map; a TIFF map is registered as phases")
    volume = open_volume(ct)
    if axis not in co.AXES:
        raise VolmlaError(f"--axis must be one of {co.AXES}, got {axis!r}")
    n = volume.shape[co.AXES.index(axis)]
    if search is not None and not 0 <= search[0] < search[1] <= n:
        raise VolmlaError(f"search range along {axis} must lie within [0, {n}), got [{search[0]}, {search[1]})")
    with running():
        reg = co.register_map(volume, co.registration_image(image), pixel_size_um=size, origin_um=origin,
                              axis=axis, search=search, step=step, transform=transform,  # type: ignore[arg-type]
                              min_quality=min_quality, accept_poor=accept_poor, max_tilt_deg=max_tilt)
    plane = co.map_to_plane(phases, reg)
    co.save_registration(reg, out, labels_plane=plane, phase_names=names)
    p = reg.params
    typer.echo(f"{axis}={reg.index}  tilt {reg.tilt_deg[0]:.2f},{reg.tilt_deg[1]:.2f} deg  angle {p['angle_deg']:.2f} deg  shift {p['translation_um'][0]:.1f},"
               f"{p['translation_um'][1]:.1f} um  quality {reg.quality:.3f}  metric {reg.metric:.4f}  "
               f"{'converged' if reg.converged else 'NOT converged'}")
    for w in reg.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"wrote {out}")


@correlate_app.command("labels")
def correlate_labels(
    ct: Annotated[Path, typer.Option(help="CT volume whose grid the labels take.")],
    registration: Annotated[list[Path], typer.Option(help="Registration JSON(s) from `correlate register` (repeat).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Sparse label volume (OME-Zarr, uint8, 0 = unlabelled).")],
    erode: Annotated[int, typer.Option(help="Unlabel voxels within N of a label change.")] = 2,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write registered mineral-map planes into a sparse training label volume."""
    from volmla import correlate as co
    from volmla.io import check_output, open_volume, write_volume

    job = {"command": "correlate labels", "ct": str(ct), "registration": [str(r) for r in registration], "erode": erode}
    check_output(out, overwrite=overwrite, job=job)
    volume = open_volume(ct)
    planes, names = [], {}
    for path in registration:
        record, plane = co.load_registration(path)
        if tuple(record.get("ct_shape", ())) != tuple(volume.shape):
            raise VolmlaError(f"{path.name} was registered to a volume of shape {record.get('ct_shape')}, "
                              f"--ct has shape {tuple(volume.shape)}")
        if not record.get("ok", False):
            typer.echo(f"warning: {path.name} is a poor registration: {'; '.join(record.get('warnings', []))}", err=True)
        tilt = cast(tuple[float, float], tuple(float(t) for t in record.get("tilt_deg", (0.0, 0.0))))
        voxel = cast(tuple[float, float, float],
                     tuple(float(v) for v in volume.attrs.get("voxel_size_um", (1.0, 1.0, 1.0))))
        planes.append(co.LabelPlane(record["axis"], int(record["index"]), plane, tilt, voxel))
        names.update({int(k): v for k, v in record.get("phases", {}).items()})
    labels = co.labels_volume(volume, planes, erode=erode, phases=names or None)
    with running():
        write_volume(labels, out, kind="labels", chunks=[c[0] for c in volume.data.chunks],
                     overwrite=overwrite, job=job)
    typer.echo(f"wrote {out}")


@correlate_app.command("run")
def correlate_run(
    config: Annotated[Path, typer.Argument(help="YAML: ct, minerals, planes (maps, pixel size, axis, search, ...).")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output folder (default the config's 'out').")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Maps -> k-means -> assignment -> registration -> one sparse label volume, with a report.

    Writes OUT/labels.zarr, OUT/report.json, OUT/report.md and OUT/planes/NAME/ (mineral
    map, centroids, registration). The YAML schema is in ``volmla.correlate.load_run_config``.
    """
    import json as _json

    from volmla import correlate as co
    from volmla.io import check_output, open_volume, write_volume

    cfg = co.load_run_config(config)
    out_dir = out if out is not None else cfg["out"]
    if out_dir is None:
        raise VolmlaError("correlate run: give the output folder with -o/--out or an 'out' key in the config")
    labels_path = Path(out_dir) / "labels.zarr"
    job = {"command": "correlate run", "config": str(config.resolve())}
    if (Path(out_dir) / "report.json").exists() and not overwrite:
        raise VolmlaError(f"output {out_dir} exists: pass --overwrite to replace it")
    check_output(labels_path, overwrite=overwrite, job=job)
    if not Path(cfg["ct"]).exists():
        raise VolmlaError(f"config: ct {cfg['ct']} does not exist")
    volume = open_volume(cfg["ct"])
    with running():
        labels, report = co.run_correlation(volume, cfg, out_dir=out_dir)
        write_volume(labels, labels_path, kind="labels", chunks=[c[0] for c in volume.data.chunks],
                     overwrite=overwrite, job=job)
    (Path(out_dir) / "report.json").write_text(_json.dumps(report, indent=2))
    (Path(out_dir) / "report.md").write_text(co.report_markdown(report))
    for r in report["planes"]:
        typer.echo(f"{r['name']}: {r['axis']}={r['plane']} tilt {r['tilt_deg'][0]:.2f},{r['tilt_deg'][1]:.2f} "
                   f"angle {r['angle_deg']:.2f} quality {r['quality']:.3f}"
                   + (f" ARI {r['ari']:.3f}" if "ari" in r else "")
                   + (f" not found: {', '.join(r['minerals_not_found'])}" if r["minerals_not_found"] else ""))
        for w in r["warnings"]:
            typer.echo(f"warning: {r['name']}: {w}", err=True)
    typer.echo(f"wrote {labels_path}")


# --- pipeline commands ---


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (sections out, input, preprocess, segment, particles, grains, liberation).")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a whole pipeline from a YAML config; a rerun resumes where it stopped."""
    from volmla.config import load_config
    from volmla.pipeline import run

    cfg = load_config(config)
    with running():
        result = run(cfg, overwrite=overwrite, device=STATE.device, log=_log)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("volmla-demo"),
    shape: Annotated[tuple[int, int, int], typer.Option(help="Phantom shape Z Y X.")] = (128, 128, 128),
    seed: Annotated[int, typer.Option(help="Phantom and training seed.")] = 0,
    unet: Annotated[bool, typer.Option("--unet/--no-unet", help="Train the 3D U-Net (needs torch).")] = True,
    iterations: Annotated[int, typer.Option(help="U-Net training iterations.")] = 300,
    overwrite: OverwriteOpt = False,
) -> None:
    """The whole pipeline on a generated phantom, on an embedded cluster, ending in a report."""
    from volmla.pipeline import demo

    if min(shape) < 32:
        raise VolmlaError(f"--shape must be at least 32 voxels along each axis, got {list(shape)}")
    if iterations < 1:
        raise VolmlaError(f"--iterations must be at least 1, got {iterations}")
    with running():
        summary = demo(out, shape=shape, seed=seed, unet=unet, iterations=iterations, overwrite=overwrite,
                       device=STATE.device, log=_log)
    _print_demo(summary)


def _log(line: str) -> None:
    if not STATE.quiet:
        typer.echo(line, err=True)


def _print_demo(summary: dict[str, Any]) -> None:
    seg = summary["segmentation"]
    typer.echo("held-out accuracy (excluding void): " + ", ".join(
        f"{k} {v['accuracy_excluding_void']:.3f}" for k, v in seg["scores"].items()) + f"; used {seg['used']}")
    typer.echo(f"particles: {summary['particles']['measured']} measured, {summary['particles']['truth']} in the truth "
               "(not touching the border)")
    typer.echo(f"{'phase':12s} {'LD measured':>12s} {'LD truth':>10s} {'modal meas.':>12s} {'modal truth':>12s}")
    for phase, row in summary["liberation"].items():
        cells = [row["ld_measured"], row["ld_truth"], row["modal_measured"], row["modal_truth"]]
        typer.echo(f"{phase:12s} " + " ".join(f"{'-' if c is None else f'{c:.3f}':>12s}" for c in cells))
    typer.echo(f"report: {summary['report']}")


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False, prog_name="volmla")
    except VolmlaError as exc:
        typer.echo(f"volmla: error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("volmla: aborted", err=True)
        return 130
    except click.ClickException as exc:
        typer.echo(f"volmla: error: {exc.format_message()}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("volmla: interrupted (rerun the same command to resume)", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
