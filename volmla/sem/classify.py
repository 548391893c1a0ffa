"""Crystal-form classification from shape descriptors: a random forest stored as ONNX.

1. **Training rows** are crystal tables (:func:`volmla.sem.features.crystal_table`) with
   a ``true_class`` column: from synthetic micrographs (:func:`synthetic_training_table`:
   the classical segmentation is run and each predicted crystal takes the class of the
   true crystal it matches at IoU >= 0.5, so the forest learns the shapes segmentation
   gives, occluded parts included) or from a labelled folder
   (:func:`folder_training_table`: ``NAME.tif|png`` with ``NAME.labels.tif`` instance
   labels and ``NAME.classes.csv`` with columns ``crystal_id,class``).
2. **The forest** (:func:`train_classifier`): scikit-learn's random forest on
   :data:`~volmla.sem.features.DESCRIPTORS` (dimensionless, so size-independent; the
   affine-normalised shape, the outline off the image border and the facet shading
   among them), balanced class weights, seeded; by default on :data:`TRAIN_IMAGES`
   synthetic images (the held-out top-1 still rises from 40 to 80); exported with
   skl2onnx (no ZipMap) and the class names, descriptor names and format in the ONNX
   ``volmla`` metadata, as :mod:`volmla.segment.forest` stores its pixel forest.
3. **Inference** (:func:`classify_table`): ONNX Runtime through the per-process session
   cache of :mod:`volmla.segment.sessions`; the class of highest probability and that
   probability. :func:`classify_crystals` takes either this forest or the optional
   crop CNN of :mod:`volmla.sem.cnn` (told apart by the ONNX metadata format).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError
from volmla.sem.features import DESCRIPTORS, crystal_table
from volmla.synthetic.sem import SEM_CLASSES

logger = logging.getLogger(__name__)

FORMAT = "volmla-sem-forms-rf"

TRAIN_IMAGES = 80
"""Synthetic images the default form classifier is trained on."""

__all__ = ["FORMAT", "TRAIN_IMAGES", "FormClassifier", "check_model", "classify_crystals", "classify_table", "folder_training_table", "load_classifier",
           "save_classifier", "synthetic_training_table", "train_classifier", "train_forms"]


class FormClassifier(NamedTuple):
    """A trained crystal-form classifier."""

    onnx: bytes
    classes: tuple[str, ...]
    features: tuple[str, ...]
    train_accuracy: float


def synthetic_training_table(*, n_images: int = TRAIN_IMAGES, seed: int = 0, overlap: float = 0.75,
                             **options: Any) -> pd.DataFrame:
    """Crystal tables of synthetic micrographs, each crystal with its true class.

    Parameters
    ----------
    n_images
        Synthetic images (seeds ``seed .. seed + n_images - 1``).
    seed
        First seed.
    overlap
        As :func:`volmla.synthetic.sem.sem_image` (a little more occlusion than its default).
    **options
        More keywords of :func:`volmla.synthetic.sem.sem_image` (``shape``, ...).

    Returns
    -------
    pandas.DataFrame
        :func:`~volmla.sem.features.crystal_table` rows of the segmented crystals matched
        at IoU >= 0.5, with ``true_class``.

    Examples
    --------
    >>> t = synthetic_training_table(n_images=1, shape=(256, 256), n_crystals=6)  # doctest: +SKIP
    """
    return pd.concat([t for _, _, t, _ in _synthetic_matches(n_images, seed, overlap, **options)], ignore_index=True)


def _synthetic_matches(n_images: int, seed: int, overlap: float,
                       **options: Any) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame, float]]:
    """Per synthetic image: image, predicted labels, matched crystal rows with ``true_class``, pixel size."""
    from volmla.sem.evaluate import match_instances
    from volmla.sem.segment import segment_crystals
    from volmla.synthetic.sem import sem_image

    for k in range(int(n_images)):
        s = sem_image(overlap=overlap, seed=seed + k, **options)
        rows = s.image.shape[0] - s.bar_rows
        image, truth = s.image[:rows], s.labels[:rows]
        pred = segment_crystals(image)
        table = crystal_table(pred, image, pixel_size=s.pixel_size)
        ti, pi, _ = match_instances(truth, pred, iou=0.5)
        match = dict(zip(pi.tolist(), ti.tolist(), strict=True))
        table = table[table.crystal_id.isin(match)].copy()
        table["true_class"] = [SEM_CLASSES[int(s.classes[match[c] - 1])] for c in table.crystal_id]
        yield image, pred, table, s.pixel_size


def folder_training_table(folder: str | Path) -> pd.DataFrame:
    """Crystal tables of a labelled folder (``NAME.labels.tif`` + ``NAME.classes.csv`` per image).

    Parameters
    ----------
    folder
        Holds ``NAME.tif`` (or ``.png``, ``.jpg``), ``NAME.labels.tif`` (instance labels of
        the image with its info bar cropped, or of its full size) and ``NAME.classes.csv``
        (columns ``crystal_id``, ``class``).

    Returns
    -------
    pandas.DataFrame
        Rows with ``true_class``.

    Examples
    --------
    >>> t = folder_training_table("labelled/")  # doctest: +SKIP
    """
    import tifffile

    from volmla.sem.io import IMAGE_SUFFIXES, read_sem

    root = Path(folder)
    if not root.is_dir():
        raise VolmlaError(f"labelled folder {root} does not exist")
    tables = []
    for csv in sorted(root.glob("*.classes.csv")):
        stem = csv.name[: -len(".classes.csv")]
        label_file = root / f"{stem}.labels.tif"
        images = [p for p in root.iterdir() if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES]
        if not label_file.is_file() or not images:
            raise VolmlaError(f"{csv} needs {stem}.labels.tif and the image {stem}.tif|png|jpg beside it")
        sem = read_sem(images[0], pixel_size=1.0, crop_bar=False)
        labels = tifffile.imread(str(label_file)).astype(np.int32)
        if labels.shape != sem.image.shape:
            raise VolmlaError(f"{label_file} has shape {labels.shape}, its image {sem.image.shape}")
        classes = pd.read_csv(csv)
        if not {"crystal_id", "class"} <= set(classes.columns):
            raise VolmlaError(f"{csv} must have the columns crystal_id and class")
        table = crystal_table(labels, sem.image, pixel_size=1.0)
        named = dict(zip(classes.crystal_id.astype(int), classes["class"].astype(str), strict=True))
        table = table[table.crystal_id.isin(named)].copy()
        table["true_class"] = [named[c] for c in table.crystal_id]
        tables.append(table)
    if not tables:
        raise VolmlaError(f"no NAME.classes.csv files in {root}")
    return pd.concat(tables, ignore_index=True)


def train_classifier(table: pd.DataFrame, *, classes: Sequence[str] | None = None, n_estimators: int = 300,
                     seed: int = 0) -> FormClassifier:
    """Train the random-forest form classifier on crystal rows with a ``true_class``.

    Parameters
    ----------
    table
        Rows of :func:`~volmla.sem.features.crystal_table` with ``true_class``.
    classes
        Class names in output order (default: the sorted names found, in
        :data:`~volmla.synthetic.sem.SEM_CLASSES` order when they are those).
    n_estimators
        Trees.
    seed
        Random seed.

    Returns
    -------
    FormClassifier

    Examples
    --------
    >>> clf = train_classifier(synthetic_training_table(n_images=2))  # doctest: +SKIP
    """
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    if "true_class" not in table.columns or table.empty:
        raise VolmlaError("the training table needs crystals with a true_class column")
    found = sorted(set(table.true_class.astype(str)))
    if classes is None:
        classes = [c for c in SEM_CLASSES if c in found] if set(found) <= set(SEM_CLASSES) else found
    classes = [str(c) for c in classes]
    unknown = set(found) - set(classes)
    if unknown:
        raise VolmlaError(f"classes must name every training class; missing {sorted(unknown)}")
    if len(found) < 2:
        raise VolmlaError(f"training needs crystals of at least 2 classes, got {found}")
    x = table[list(DESCRIPTORS)].to_numpy(np.float32)
    y = np.array([classes.index(c) for c in table.true_class.astype(str)], np.int64)
    forest = RandomForestClassifier(n_estimators=n_estimators, class_weight="balanced", random_state=seed, n_jobs=1)
    forest.fit(x, y)
    accuracy = float((forest.predict(x) == y).mean())
    proto = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    # the forest only knows the classes it saw: map its outputs onto the named ones
    meta = {"format": FORMAT, "classes": classes, "outputs": [int(c) for c in forest.classes_],
            "features": list(DESCRIPTORS)}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "volmla", json.dumps(meta)
    logger.info("form classifier: %d crystals, train accuracy %.3f", len(y), accuracy)
    return FormClassifier(proto.SerializeToString(), tuple(classes), DESCRIPTORS, accuracy)


def save_classifier(classifier: FormClassifier, path: str | Path) -> Path:
    """Write the classifier's ONNX file (its folder is created).

    Parameters
    ----------
    classifier
        From :func:`train_classifier`.
    path
        The ``.onnx`` file.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> save_classifier(clf, "forms.onnx")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(classifier.onnx)
    return path


def load_classifier(path: str | Path) -> dict[str, object]:
    """The ``volmla`` metadata of a form classifier (refuses other ONNX models).

    Parameters
    ----------
    path
        The ``.onnx`` file.

    Returns
    -------
    dict
        ``format``, ``classes``, ``outputs``, ``features``.

    Examples
    --------
    >>> load_classifier("forms.onnx")["classes"]  # doctest: +SKIP
    """
    from volmla.segment.sessions import read_metadata

    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise VolmlaError(f"model {path} is not a volmla crystal-form classifier (metadata format {meta.get('format')!r})")
    return meta


def classify_table(table: pd.DataFrame, *, model: str | Path) -> tuple[list[str], np.ndarray]:
    """Class name and its probability for every crystal row.

    Parameters
    ----------
    table
        Rows of :func:`~volmla.sem.features.crystal_table`.
    model
        A classifier written by :func:`save_classifier`.

    Returns
    -------
    tuple
        ``(names, probabilities)``.

    Examples
    --------
    >>> names, prob = classify_table(table, model="forms.onnx")  # doctest: +SKIP
    """
    from volmla.segment.sessions import get_session

    meta = load_classifier(model)
    if table.empty:
        return [], np.zeros(0)
    features = [str(f) for f in meta["features"]]  # type: ignore[attr-defined]
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise VolmlaError(f"model {model} needs descriptors this volmla does not compute: {missing}")
    session = get_session(model)
    x = table[features].to_numpy(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    prob = np.asarray(outputs[1], np.float64)
    classes = [str(c) for c in meta["classes"]]  # type: ignore[attr-defined]
    ids = np.asarray(meta["outputs"], np.int64)[prob.argmax(axis=1)]
    return [classes[i] for i in ids], prob.max(axis=1)


def train_forms(out: str | Path, *, kind: Literal["forest", "cnn"] = "forest", labelled: str | Path | None = None,
                n_images: int = TRAIN_IMAGES, seed: int = 0, n_estimators: int = 300, epochs: int = 20,
                overwrite: bool = False) -> tuple[tuple[str, ...], float]:
    """Train the form classifier (synthetic images, or a labelled folder) and write its ONNX file.

    Parameters
    ----------
    out
        The ``.onnx`` file to write.
    kind
        ``"forest"`` (the random forest on shape descriptors) or ``"cnn"`` (the small
        CNN on crops of :mod:`volmla.sem.cnn`; needs torch; synthetic images only).
    labelled
        A labelled folder (:func:`folder_training_table`); None: ``n_images`` synthetic
        images (:func:`synthetic_training_table`).
    n_images
        Synthetic training images.
    seed
        Seed of the synthetic images and the forest.
    n_estimators
        Trees of the forest.
    epochs
        Training passes of the CNN.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    tuple
        The class names and the training accuracy.

    Examples
    --------
    >>> classes, accuracy = train_forms("forms.onnx", n_images=80)  # doctest: +SKIP
    """
    from volmla._validate import check_integer

    path = Path(out)
    if path.is_dir():
        raise VolmlaError(f"output {path} is a folder: the model is written as one ONNX file")
    if path.exists() and not overwrite:
        raise VolmlaError(f"output {path} exists: pass overwrite=True to replace it")
    if not path.resolve().parent.is_dir():
        raise VolmlaError(f"the folder of the output, {path.resolve().parent}, does not exist")
    if kind not in ("forest", "cnn"):
        raise VolmlaError(f"kind must be 'forest' or 'cnn' (or 'segmenter': train_segmenter), got {kind!r}")
    if labelled is None:
        n_images = check_integer("n_images", n_images, minimum=1)
    if kind == "cnn":
        epochs = check_integer("epochs", epochs, minimum=1)
    if kind == "cnn":
        if labelled is not None:
            raise VolmlaError("kind='cnn' trains on synthetic images only: leave out labelled= or use kind='forest'")
        from volmla.sem.cnn import crystal_crops, train_cnn

        crops, scales, targets = [], [], []
        for image, pred, table, px in _synthetic_matches(n_images, seed, 0.75):
            c, sc = crystal_crops(pred, image, table, pixel_size=px)
            crops.append(c)
            scales.append(sc)
            targets += [SEM_CLASSES.index(t) for t in table.true_class]
        accuracy = train_cnn(np.concatenate(crops), np.concatenate(scales), np.array(targets),
                             classes=list(SEM_CLASSES), out=path, epochs=epochs, seed=seed)
        return SEM_CLASSES, accuracy
    table = (folder_training_table(labelled) if labelled is not None
             else synthetic_training_table(n_images=n_images, seed=seed))
    classifier = train_classifier(table, n_estimators=n_estimators, seed=seed)
    tmp = path.with_name(path.name + ".volmla-tmp")
    save_classifier(classifier, tmp)
    tmp.replace(path)
    return classifier.classes, classifier.train_accuracy


def check_model(model: str | Path) -> str:
    """The format of a form classifier (forest or CNN); other models are refused in one line.

    Parameters
    ----------
    model
        The ``.onnx`` file.

    Returns
    -------
    str
        :data:`FORMAT` or :data:`volmla.sem.cnn.CNN_FORMAT`.

    Examples
    --------
    >>> check_model("forms.onnx")  # doctest: +SKIP
    'volmla-sem-forms-rf'
    """
    from volmla.segment.sessions import read_metadata
    from volmla.sem.cnn import CNN_FORMAT

    found = read_metadata(model).get("format")
    if found not in (FORMAT, CNN_FORMAT):
        raise VolmlaError(f"model {model} is not a volmla crystal-form classifier (metadata format {found!r})")
    return str(found)


def classify_crystals(labels: np.ndarray, image: np.ndarray, table: pd.DataFrame, *, pixel_size: float,
                      model: str | Path) -> tuple[list[str], np.ndarray]:
    """Class and probability per crystal with either classifier (the forest or the CNN).

    Parameters
    ----------
    labels, image
        The crystal labels and the grey image (the CNN reads crops).
    table
        Their :func:`~volmla.sem.features.crystal_table`.
    pixel_size
        Micrometres per pixel.
    model
        A forest from :func:`save_classifier` or a CNN from :func:`volmla.sem.cnn.train_cnn`.

    Returns
    -------
    tuple
        ``(names, probabilities)``.

    Examples
    --------
    >>> names, prob = classify_crystals(labels, image, table, pixel_size=0.1, model="forms.onnx")  # doctest: +SKIP
    """
    if check_model(model) == FORMAT:
        return classify_table(table, model=model)
    from volmla.sem.cnn import classify_crops

    return classify_crops(labels, image, table, pixel_size=pixel_size, model=model)
