"""SEM micrographs of microcrystals: the 2-D path of the engine.

``crystals(images, out_dir=...)`` (:mod:`volmla.sem.api`) reads a batch of micrographs
(:mod:`volmla.sem.io`: FEI/Zeiss/TESCAN pixel sizes, info bar cropped), segments each
into crystal instances (:mod:`volmla.sem.segment`: classical distance watershed, or an
ONNX border-core model, trained by :mod:`volmla.sem.segmenter`), measures them (:mod:`volmla.sem.features`) and classifies
their form (:mod:`volmla.sem.classify`: a random forest on shape descriptors, stored as
ONNX), one Dask task per image, into ``crystals.parquet`` and ``report.html``.
:mod:`volmla.sem.evaluate` scores a segmentation against synthetic truth
(:func:`volmla.synthetic.sem.sem_image`).
"""

from __future__ import annotations

from volmla.sem.api import COLUMNS, CrystalsResult, class_summary, crystals, measure_image
from volmla.sem.classify import (
    FormClassifier,
    check_model,
    classify_crystals,
    classify_table,
    folder_training_table,
    load_classifier,
    save_classifier,
    synthetic_training_table,
    train_classifier,
    train_forms,
)
from volmla.sem.evaluate import (
    InstanceScores,
    average_precision,
    evaluate_folder,
    match_instances,
    score_instances,
)
from volmla.sem.features import DESCRIPTORS, crystal_table
from volmla.sem.io import SemImage, info_bar_rows, read_sem, sem_files, tiff_pixel_size
from volmla.sem.segment import segment_crystals, segment_with_model
from volmla.sem.segmenter import SegmenterTraining, train_segmenter

__all__ = [
    "COLUMNS",
    "DESCRIPTORS",
    "CrystalsResult",
    "FormClassifier",
    "InstanceScores",
    "SegmenterTraining",
    "SemImage",
    "average_precision",
    "check_model",
    "class_summary",
    "classify_crystals",
    "classify_table",
    "crystal_table",
    "crystals",
    "evaluate_folder",
    "folder_training_table",
    "info_bar_rows",
    "load_classifier",
    "match_instances",
    "measure_image",
    "read_sem",
    "save_classifier",
    "score_instances",
    "segment_crystals",
    "segment_with_model",
    "sem_files",
    "synthetic_training_table",
    "tiff_pixel_size",
    "train_classifier",
    "train_forms",
    "train_segmenter",
]
