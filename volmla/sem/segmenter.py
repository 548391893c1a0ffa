"""Train the border-core crystal segmenter (needs torch; inference needs only ONNX Runtime).

The model is volmla's 2-D U-Net (:func:`volmla.segment.train.train` with ``dim=2``,
``target="particles"``): it predicts background, crystal interior and crystal boundary
(:data:`volmla.segment.PARTICLE_CLASSES`) from instance-id labels, and
:func:`volmla.sem.segment_with_model` turns interiors into markers of a watershed.

1. **Images**: synthetic micrographs (:func:`volmla.synthetic.sem.sem_image`, seeds
   ``seed ..``) or a labelled folder (``NAME.tif|png|jpg`` + ``NAME.labels.tif``), the
   info bar cropped.
2. **Stack**: each image through :func:`volmla.sem.segment.normalise` (its 0.5..99.8
   percentiles to 0..1, as at inference), cropped to the smallest common size, stacked as
   an ``(N, rows, cols)`` volume with its ``(N, rows, cols)`` instance labels.
3. **Train** (the last third of the images validate, early stopping) and **export**
   (:func:`volmla.segment.export.export`: one ONNX file, torch/ONNX parity checked). The
   model's ``norm`` metadata (the stack's 1st..99th percentiles) is applied by
   :func:`~volmla.sem.segment_with_model` after ``normalise``, so training and inference
   see the same input.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from volmla.errors import VolmlaError

__all__ = ["SegmenterTraining", "segmenter_stack", "train_segmenter"]


class SegmenterTraining(NamedTuple):
    """What :func:`train_segmenter` returns."""

    path: Path
    """The ONNX model written."""
    n_images: int
    shape: tuple[int, int]
    """Common ``(rows, cols)`` of the training images."""
    best_iteration: int
    val_accuracy: float
    """Pixel accuracy (background/interior/boundary) on the validation images' patches."""
    seconds: float


def segmenter_stack(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised images and their instance labels as one ``(N, rows, cols)`` pair, cropped to a common size.

    Parameters
    ----------
    images
        ``(rows, cols)`` grey images, info bar cropped.
    labels
        Instance labels of the same shapes (0 = substrate).

    Returns
    -------
    tuple of numpy.ndarray
        float32 volume (each image through :func:`~volmla.sem.segment.normalise`) and
        int32 labels.

    Examples
    --------
    >>> from volmla.synthetic.sem import sem_image
    >>> s = sem_image(shape=(64, 80), n_crystals=3, median_diameter=2.0, info_bar=False, seed=1)
    >>> x, y = segmenter_stack([s.image, s.image[:60]], [s.labels, s.labels[:60]])
    >>> x.shape, y.dtype
    ((2, 60, 80), dtype('int32'))
    """
    from volmla.sem.segment import normalise

    if not images or len(images) != len(labels):
        raise VolmlaError(f"need one label image per image, got {len(images)} images and {len(labels)} label images")
    for im, lab in zip(images, labels, strict=True):
        if np.ndim(im) != 2 or np.shape(im) != np.shape(lab):
            raise VolmlaError(f"images and labels must be 2-D of the same shape, got {np.shape(im)} and {np.shape(lab)}")
    rows = min(int(np.shape(im)[0]) for im in images)
    cols = min(int(np.shape(im)[1]) for im in images)
    x = np.stack([normalise(np.asarray(im)[:rows, :cols]) for im in images]).astype(np.float32)
    y = np.stack([np.asarray(lab)[:rows, :cols] for lab in labels]).astype(np.int32)
    return x, y


def _labelled_folder(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import tifffile

    from volmla.sem.io import IMAGE_SUFFIXES, read_sem

    if not folder.is_dir():
        raise VolmlaError(f"labelled folder {folder} does not exist")
    images, labels = [], []
    for label_file in sorted(folder.glob("*.labels.tif")):
        stem = label_file.name[: -len(".labels.tif")]
        found = [p for p in folder.iterdir() if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise VolmlaError(f"{label_file} needs its image {stem}.tif|png|jpg beside it")
        sem = read_sem(found[0], pixel_size=1.0)
        lab = np.asarray(tifffile.imread(str(label_file))).astype(np.int32)
        rows, cols = sem.image.shape
        if lab.ndim == 2 and lab.shape[1] == cols and lab.shape[0] == rows + sem.bar_rows:
            lab = lab[:rows]  # labels of the full image: crop its info bar too
        if lab.shape != sem.image.shape:
            raise VolmlaError(f"{label_file} has shape {lab.shape}, its image (info bar cropped) {sem.image.shape}")
        images.append(sem.image)
        labels.append(lab)
    if not images:
        raise VolmlaError(f"no NAME.labels.tif files in {folder}")
    return images, labels


def train_segmenter(
    out: str | Path,
    *,
    labelled: str | Path | None = None,
    n_images: int = 12,
    iterations: int = 600,
    seed: int = 0,
    patch: int = 128,
    batch: int = 4,
    depth: int = 3,
    base: int = 8,
    jitter: float = 0.05,
    threads: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    **options: Any,
) -> SegmenterTraining:
    """Train the border-core crystal segmenter and write it as ONNX.

    Parameters
    ----------
    out
        The ``.onnx`` file to write.
    labelled
        A folder of ``NAME.tif|png|jpg`` + ``NAME.labels.tif`` (instance labels of the
        image with its info bar cropped, or of its full size); None: ``n_images``
        synthetic images.
    n_images
        Synthetic training images (seeds ``seed .. seed + n_images - 1``).
    iterations
        Most optimisation steps (early stopping on the validation images).
    seed
        Seeds the synthetic images and the training.
    patch
        Training patch edge, pixels.
    batch
        Patches per step.
    depth, base
        U-Net levels and channels of the first level.
    jitter
        Intensity jitter of the augmentation (normalised units).
    threads
        torch threads during training (None: leave as is).
    device
        ``cpu``, ``auto`` or ``gpu``.
    overwrite
        Replace an existing ``out``.
    **options
        Passed to :func:`volmla.synthetic.sem.sem_image` (``shape``, ``n_crystals``,
        ``overlap``, ...).

    Returns
    -------
    SegmenterTraining

    Examples
    --------
    >>> r = train_segmenter("seg.onnx", n_images=12, iterations=600)  # doctest: +SKIP
    >>> labels = segment_with_model(image, model=r.path)  # doctest: +SKIP
    """
    from volmla._validate import check_integer

    path = Path(out)
    if path.is_dir():
        raise VolmlaError(f"output {path} is a folder: the model is written as one ONNX file")
    if path.exists() and not overwrite:
        raise VolmlaError(f"output {path} exists: pass overwrite=True to replace it")
    if not path.resolve().parent.is_dir():
        raise VolmlaError(f"the folder of the output, {path.resolve().parent}, does not exist")
    iterations = check_integer("iterations", iterations, minimum=1)
    t0 = time.perf_counter()
    if labelled is not None:
        if options:
            raise VolmlaError(f"synthetic options {sorted(options)} need labelled=None")
        images, labels = _labelled_folder(Path(labelled))
    else:
        from volmla.synthetic.sem import sem_image

        n_images = check_integer("n_images", n_images, minimum=2)
        images, labels = [], []
        for k in range(n_images):
            s = sem_image(seed=seed + k, **options)
            rows = s.image.shape[0] - s.bar_rows
            images.append(s.image[:rows])
            labels.append(s.labels[:rows])
    if len(images) < 2:
        raise VolmlaError(f"the segmenter needs at least 2 labelled images (one validates), got {len(images)}")
    x, y = segmenter_stack(images, labels)
    if not (y > 0).any():
        raise VolmlaError("the training images hold no labelled crystal")

    from volmla.segment.export import export
    from volmla.segment.train import TrainConfig, save_model, train

    config = TrainConfig(dim=2, target="particles", depth=depth, base=base, patch=patch, batch=batch,
                         iterations=iterations, seed=seed, threads=threads, device=device, jitter=jitter,
                         val_every=max(1, min(25, iterations)))
    result = train(x, y, config=config)
    with tempfile.TemporaryDirectory(prefix="volmla-semseg-") as tmp:
        checkpoint = save_model(result, Path(tmp) / "segmenter.pt")
        export(checkpoint, path, overwrite=overwrite)
    best = next((h for h in result.history if int(h["iteration"]) == result.best_iteration), {})
    return SegmenterTraining(path, len(images), (int(x.shape[1]), int(x.shape[2])), int(result.best_iteration),
                             float(best.get("val_accuracy", float("nan"))), time.perf_counter() - t0)
