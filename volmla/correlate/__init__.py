"""Correlative labelling: element maps -> mineral map -> registration into CT -> sparse labels.

The Deep-XFCT workflow (Tung et al.) turns micro-XRF element maps of a sample's faces
into sparse training labels inside the CT volume. The modules, in pipeline order:

1. :mod:`~volmla.correlate.maps`: element maps in (:func:`read_maps`; TIFFs named by
   element or an NPZ stack, one grid), bilateral denoising of the light elements
   (:func:`denoise_maps`), extra channels (:func:`with_channel`).
2. :mod:`~volmla.correlate.minerals`: k-means mineral map (:func:`kmeans_minerals`),
   cluster -> mineral assignment from a table or from element signatures
   (:func:`assign_minerals`, :data:`SIGNATURES`; unmatched clusters stay
   :data:`UNLABELLED`), abundances against XRD (:func:`compare_abundances`).
3. :mod:`~volmla.correlate.planes`: plane geometry in the volume (:data:`AXES`, tilted
   planes: :func:`plane_heights`, lazy plane and slab reads).
4. :mod:`~volmla.correlate.register`: the map's plane searched along one axis by mutual
   information (:mod:`~volmla.correlate.similarity`: :func:`mutual_information` and the
   quality score), then a SimpleITK fine fit (:mod:`~volmla.correlate.fit2d`) and an
   optional tilt search (:func:`register_map`, :class:`Registration`).
5. :mod:`~volmla.correlate.transfer`: the mineral map resampled into the CT plane
   (:func:`map_to_plane`), eroded at label changes (:func:`erode_labels`) and written
   into a lazy, mostly-zero label volume (:func:`plane_labels_volume`,
   :func:`labels_volume`; ``0`` unlabelled, ``phase + 1`` labelled).
6. :mod:`~volmla.correlate.mapfiles`: the files between steps (mineral maps, phase maps,
   registrations and their label planes).
7. :mod:`~volmla.correlate.steps`: one step from files to files, as ``volmla correlate
   maps|register|labels`` run it (:func:`make_mineral_map`, :func:`make_registration`,
   :func:`make_label_volume`).
8. :mod:`~volmla.correlate.config`: the ``correlate run`` YAML schema
   (:func:`load_run_config`, :func:`check_run_config`).
9. :mod:`~volmla.correlate.run`: every mapped face of a configuration, one label volume
   and a report (:func:`run_correlation`, :func:`run_from_config`).
10. :mod:`~volmla.correlate.report`: the report as JSON and Markdown
    (:func:`report_markdown`, :func:`write_report`).
"""

from __future__ import annotations

from volmla.correlate.config import RUN_DEFAULTS, check_run_config, load_run_config
from volmla.correlate.mapfiles import (
    LabelPlanes,
    RegistrationMap,
    load_registration,
    read_label_planes,
    read_phase_map,
    read_registration_map,
    save_mineral_map,
    save_registration,
)
from volmla.correlate.maps import LIGHT_ELEMENTS, ElementMaps, denoise_maps, read_maps, with_channel
from volmla.correlate.minerals import (
    SIGNATURES,
    UNLABELLED,
    Assignment,
    MineralMap,
    assign_minerals,
    compare_abundances,
    kmeans_minerals,
)
from volmla.correlate.planes import AXES, Axis, plane_heights
from volmla.correlate.register import Registration, register_map, registration_image
from volmla.correlate.report import report_markdown, write_report
from volmla.correlate.run import CorrelationRun, run_correlation, run_from_config
from volmla.correlate.similarity import mutual_information
from volmla.correlate.steps import (
    LabelVolume,
    MineralMapResult,
    make_label_volume,
    make_mineral_map,
    make_registration,
)
from volmla.correlate.transfer import (
    LabelPlane,
    erode_labels,
    labels_volume,
    map_to_plane,
    plane_labels_volume,
)
from volmla.io.sparse import SPARSE_LABEL_OFFSET

__all__ = [
    "AXES",
    "LIGHT_ELEMENTS",
    "RUN_DEFAULTS",
    "SIGNATURES",
    "SPARSE_LABEL_OFFSET",
    "UNLABELLED",
    "Assignment",
    "Axis",
    "CorrelationRun",
    "ElementMaps",
    "LabelPlane",
    "LabelPlanes",
    "LabelVolume",
    "MineralMap",
    "MineralMapResult",
    "Registration",
    "RegistrationMap",
    "assign_minerals",
    "check_run_config",
    "compare_abundances",
    "denoise_maps",
    "erode_labels",
    "kmeans_minerals",
    "labels_volume",
    "load_registration",
    "load_run_config",
    "make_label_volume",
    "make_mineral_map",
    "make_registration",
    "map_to_plane",
    "mutual_information",
    "plane_heights",
    "plane_labels_volume",
    "read_label_planes",
    "read_maps",
    "read_phase_map",
    "read_registration_map",
    "register_map",
    "registration_image",
    "report_markdown",
    "run_correlation",
    "run_from_config",
    "save_mineral_map",
    "save_registration",
    "with_channel",
    "write_report",
]
