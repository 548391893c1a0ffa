"""``volmla train``, ``export``, ``segment``, ``evaluate``: phases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from volmla.cli.app import STATE, OverwriteOpt, app, device, running
from volmla.errors import VolmlaError


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
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads (1 to 1024).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
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
    context = "" if result.context is None else f", context {result.context} of halo {result.halo}"
    typer.echo(f"wrote {output} (best iteration {result.best_iteration}, "
               + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "iteration") + context + ")",
               err=STATE.quiet)


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
               f"{100 * report.argmax_agreement:.2f} %, halo {report.metadata['halo']}"
               + (f", context {report.metadata['context']}" if "context" in report.metadata else "") + ")",
               err=STATE.quiet)


@app.command("segment")
def segment_command(
    input_path: Annotated[str, typer.Argument(metavar="IN", help="Intensity volume (OME-Zarr; a path or an fsspec URL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Phase volume to write (uint8).")],
    model: Annotated[Path | None, typer.Option("--model", help="ONNX model: a U-Net (volmla or foreign) or a volmla random forest; builtin:particles is volmla's particle U-Net.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="regions | unet | rf | threshold | kmeans (default: unet or rf from --model; regions with --labels alone).")] = None,
    classes: Annotated[int | None, typer.Option("--classes", help="K classes for threshold / kmeans (0..K-1 by intensity).")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Sparse labels (phase + 1, 0 unlabelled; a path or an fsspec URL): the levels of --method regions, or to train --method rf.")] = None,
    particles: Annotated[str | None, typer.Option("--particles", help="Particle labels for --method regions (a path or an fsspec URL; default: labelled here from the CT, as volmla particles does).")] = None,
    save_model: Annotated[Path | None, typer.Option("--save-model", help="Write the random forest trained on --labels here (--method rf only; ONNX; default: beside the output, OUTPUT.rf.onnx).")] = None,
    halo: Annotated[int | None, typer.Option("--halo", min=0, help="Context voxels (required for models without volmla metadata).")] = None,
    tile: Annotated[tuple[int, int, int] | None, typer.Option("--tile", help="Tile Z Y X, blended with the model's full halo (default: large blocks, one tile each with a shared context).")] = None,
    overlap: Annotated[float, typer.Option("--overlap", help="Tile overlap fraction (Gaussian blending; explicit --tile only).")] = 0.25,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Tiles per ONNX Runtime call.")] = 4,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU only).")] = False,
    uncertainty: Annotated[Path | None, typer.Option("--uncertainty", help="Also write the max class probability (uint8, x255) here.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="ONNX Runtime threads per worker (1 to 1024).")] = None,
    sigmas: Annotated[str | None, typer.Option("--sigmas", help="Feature scales for --method rf in voxels, each at least 0.3 (default 0.7,1,1.6,3.5).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for kmeans / rf.")] = 0,
    psf_sigma: Annotated[float | None, typer.Option("--psf-sigma", help="--method regions: the scan's Gaussian PSF sigma in voxels for the partial-volume correction, when known (default: estimated from the particles' edges; 0: no correction).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Segment phases: by region inside particles (the default with --labels), ONNX U-Net, random forest, threshold, kmeans."""
    from volmla.io import check_output, open_volume, write_volume
    from volmla.io.outputs import source_id
    from volmla.segment.dispatch import METHODS, check_options, check_save_model, segment_phases
    from volmla.segment.forest import check_sigmas
    from volmla.segment.sessions import resolve_model

    model = resolve_model(model) if model is not None else None
    if method is not None and method not in METHODS:
        raise VolmlaError(f"--method must be one of {METHODS}, got {method!r}")
    try:
        scales = tuple(float(v) for v in sigmas.split(",")) if sigmas else None
    except ValueError:
        raise VolmlaError(f"--sigmas must be comma-separated numbers, got {sigmas!r}") from None
    if scales is not None:
        scales = check_sigmas(scales)
    forest_path = save_model
    if particles is not None and method not in (None, "regions"):
        raise VolmlaError("--particles is for --method regions")
    if psf_sigma is not None:
        from volmla.segment.pooled import check_psf

        check_psf(psf_sigma)
    if forest_path is None and method == "rf" and labels is not None and model is None:
        # a forest trained here is kept beside the output (no other method trains one: an explicit
        # --save-model with them is refused by check_options)
        forest_path = output.parent / f"{output.name.removesuffix('.zarr')}.rf.onnx"
    if labels is not None and forest_path is not None:  # the forest is written first: never on or in a volume
        check_save_model(forest_path, outputs=[("--output", output), ("--uncertainty", uncertainty)],
                         inputs=[("the input", input_path), ("--labels", labels), ("--particles", particles)],
                         name="--save-model" if save_model is not None else "the forest's default path")
    if uncertainty is not None:
        out_path, unc_path = output.resolve(), uncertainty.resolve()
        if unc_path == out_path or out_path in unc_path.parents or unc_path in out_path.parents:
            raise VolmlaError(f"--uncertainty {uncertainty} and --output {output} are one volume or one inside "
                              "the other: give each a volume of its own")
    method = check_options(method, model=model, labels=labels, save_model=forest_path, classes=classes,
                           uncertainty=uncertainty is not None, tile=tile, overlap=overlap, batch=batch,
                           halo=halo, threads=threads)
    if scales is not None and not (method == "rf" and labels is not None):
        raise VolmlaError(f"--sigmas is for --method rf trained on --labels (the forest's feature scales), "
                          f"got --method {method}{' with --model' if model is not None else ''}")
    vol = open_volume(input_path)
    job = {"command": "segment", "input": source_id(input_path), "method": method,
           "model": str(model.resolve()) if model else None, "classes": classes, "halo": halo,
           "tile": list(tile) if tile else None, "overlap": overlap, "seed": seed,
           "labels": source_id(labels) if labels else None, "sigmas": sigmas}
    if particles is not None:
        job["particles"] = source_id(particles)
    if psf_sigma is not None:
        if method != "regions":
            raise VolmlaError(f"--psf-sigma is for --method regions, got --method {method}")
        job["psf_sigma"] = psf_sigma
    check_output(output, overwrite=overwrite, job=job)
    if uncertainty is not None:
        check_output(uncertainty, overwrite=overwrite, job={**job, "output": "uncertainty"})
    if method == "rf" and labels is not None:
        _refuse_existing(forest_path, overwrite)
    chunks = [int(c[0]) for c in vol.data.chunks]
    steps = [{"step": "segment", **{k: v for k, v in job.items() if k not in ("command", "input")}}]
    with running(inputs=[vol]):
        seg = segment_phases(vol, method=method, model=model, labels=open_volume(labels) if labels else None,
                             save_model=forest_path, classes=classes, seed=seed, sigmas=scales, halo=halo,
                             tile=tile, overlap=overlap, batch=batch, device=device(), fp16=fp16,
                             uncertainty=uncertainty is not None, threads=threads,
                             particles=open_volume(particles) if particles is not None else None,
                             region_options=None if psf_sigma is None else {"psf_sigma": psf_sigma})
        if seg.train_accuracy is not None:
            typer.echo(f"random forest: training accuracy {seg.train_accuracy:.3f}", err=True)
            typer.echo(f"wrote {seg.model}", err=STATE.quiet)
        phase_names = {i: n for i, n in enumerate(seg.classes) if i > 0}
        # the results carry the input's steps and a short segment step: the job's full one replaces
        # it, keeping what the segmentation measured (regions: the grey levels and PSF it used)
        own = seg.phases.attrs["provenance"][-1]
        if "grey_levels" in own:
            steps[0]["grey_levels"] = own["grey_levels"]
        before = {"provenance": list(vol.attrs["provenance"])}
        write_volume(seg.phases.assign_attrs(before), output, voxel_size=vol.attrs["voxel_size_um"], chunks=chunks,
                     kind="phases", phases=phase_names, provenance=steps, overwrite=overwrite, job=job)
        if seg.confidence is not None and uncertainty is not None:
            write_volume(seg.confidence.assign_attrs(before), uncertainty, voxel_size=vol.attrs["voxel_size_um"],
                         chunks=chunks, kind="intensity",
                         provenance=[*steps, {"step": "max class probability x 255"}],
                         overwrite=overwrite, job={**job, "output": "uncertainty"})
    typer.echo(f"wrote {output}", err=STATE.quiet)


@app.command("evaluate")
def evaluate_command(
    pred: Annotated[str, typer.Option("--pred", help="Predicted phase volume (a path or an fsspec URL).")],
    truth: Annotated[str, typer.Option("--truth", help="True phases, or sparse labels (phase + 1) with --mask labelled (a path or an fsspec URL).")],
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
    if out is not None and out.exists() and not out.is_dir():
        raise VolmlaError(f"output {out} exists and is not a folder")
    if out is not None and (out / "metrics.json").exists() and not overwrite:
        raise VolmlaError(f"output {out} holds an evaluation: pass --overwrite to replace it")
    if out is not None:  # the report's files would land inside an input volume
        from volmla.io.ngff import is_url
        from volmla.io.outputs import check_not_input

        check_not_input(out, [p for p in (pred, truth) if not is_url(p)])
    ev = evaluate(open_volume(pred), open_volume(truth), mask=mask)  # type: ignore[arg-type]
    summary = ev.as_dict()
    if out is not None:
        write_report(ev, out)
    typer.echo(json.dumps({k: summary[k] for k in ("accuracy", "accuracy_excluding_void", "mean_iou", "iou", "per_class_accuracy")}, indent=2))
