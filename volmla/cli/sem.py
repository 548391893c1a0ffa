"""``volmla sem``: SEM micrographs of microcrystals (crystals, train, synth)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volmla.cli.app import OverwriteOpt, app, running

sem_app = typer.Typer(help="SEM micrographs: crystal segmentation, crystallometry and form classification.",
                      no_args_is_help=True)
app.add_typer(sem_app, name="sem")


@sem_app.command("crystals")
def crystals_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files (TIFF, PNG, JPEG) or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (crystals.parquet, report.html).")],
    pixel_size: Annotated[float | None, typer.Option("--pixel-size", help="Micrometres per pixel (needed for PNG/JPEG; overrides TIFF tags).")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Crystal-form classifier (ONNX, from 'volmla sem train').")] = None,
    segmenter: Annotated[Path | None, typer.Option("--segmenter", help="Border-core segmentation model (ONNX); default: classical.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Segment, measure and classify the crystals of SEM images."""
    from volmla.sem import crystals

    result = crystals(images, out_dir=out, pixel_size=pixel_size, model=model, segmenter=segmenter,
                      overwrite=overwrite, cluster=running)
    typer.echo(f"{result.n_crystals} crystals in {result.n_images} image(s); table: {out / 'crystals.parquet'}, "
               f"report: {out / 'report.html'}")


@sem_app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.onnx).")],
    kind: Annotated[str, typer.Option("--kind", help="forest (shape descriptors) | cnn (crops; needs torch) | segmenter (border-core U-Net for --segmenter; needs torch).")] = "forest",
    labelled: Annotated[Path | None, typer.Option("--labelled", help="Folder of NAME.tif + NAME.labels.tif + NAME.classes.csv (the segmenter needs no .classes.csv; default: synthetic images).")] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Synthetic training images (80: the default classifier).")] = 80,
    epochs: Annotated[int, typer.Option("--epochs", help="CNN training passes.")] = 20,
    iterations: Annotated[int, typer.Option("--iterations", help="Segmenter optimisation steps (at most; early stopping).")] = 600,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the crystal-form classifier (random forest or small CNN) or the border-core segmenter (ONNX)."""
    if kind == "segmenter":
        from volmla.sem.segmenter import train_segmenter

        r = train_segmenter(out, labelled=labelled, n_images=n_images, iterations=iterations, seed=seed,
                            overwrite=overwrite)
        typer.echo(f"segmenter written to {out} ({r.n_images} images, best iteration {r.best_iteration}, "
                   f"validation pixel accuracy {r.val_accuracy:.3f})")
        return
    from volmla.sem import train_forms

    classes, accuracy = train_forms(out, kind=kind, labelled=labelled, n_images=n_images, seed=seed,  # type: ignore[arg-type]
                                    epochs=epochs, overwrite=overwrite)  # train_forms checks kind
    typer.echo(f"classifier written to {out} (classes {', '.join(classes)}; train accuracy {accuracy:.3f})")


@sem_app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Images.")] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write synthetic SEM images of crystals with their truth (labels, classes)."""
    from volmla.synthetic.sem import write_sem_images

    files = write_sem_images(out, n=n, seed=seed, overwrite=overwrite)
    typer.echo(f"{len(files)} synthetic SEM images written to {out}")
