"""Ingest: scanner output (TIFF slices and stacks, MHA/NRRD/NIfTI, raw) -> OME-Zarr.

1. **Resolve inputs** (:mod:`.api`). A folder is a stack of 2-D TIFF slices (files
   matching ``glob`` in natural order); a ``.tif``/``.tiff``/``.btf`` file is a
   multi-page, BigTIFF, ImageJ hyperstack or OME-TIFF stack; ``.mha``/``.mhd``/
   ``.nrrd``/``.nhdr``/``.nii``/``.nii.gz`` go through SimpleITK; anything else is raw
   binary read with the ``shape``/``dtype``/``byteorder`` given.
2. **Scan headers, not pixels** (:mod:`.tiff`). Every TIFF page header (shape, dtype,
   byte order, data offsets and byte counts) is read up front, so different slice
   shapes, unsupported dtypes, multi-channel images and truncated files (data beyond
   the end of the file) are refused before anything is written.
3. **Lazy stacks** (:mod:`.readers`). Each input becomes a small array-like object
   (:class:`TiffStack`, :class:`RawStack`, :class:`ItkStack`) that knows where every
   plane lives; ``da.from_array`` on that *reader object* (never on pixels) gives a
   Dask array whose task for block ``(z, y, x)`` reads only the rows of its own
   planes. Workers read the files themselves.
4. **Voxel size** (:mod:`.metadata`). ``voxel_size`` (micrometres) wins; otherwise it
   comes from the metadata: OME-XML ``PhysicalSize{X,Y,Z}`` with their units; ImageJ
   ``spacing`` and ``unit`` with the X/Y resolution tags; TIFF resolution tags with a
   real ``ResolutionUnit`` (inch or centimetre, z taken equal to x; the writer
   defaults ``NONE`` and 72/96/300 dpi are ignored); ITK spacing, taken as
   **millimetres** (the ITK/NIfTI/DICOM convention), except all-ones spacing which is
   ITK's "not set". Without either, ingest stops with a one-line error.
5. **Stitching** (:mod:`.stitch`; ``stitch=True``, vertically stacked sub-volumes, top
   first): for each neighbouring pair the last ``overlap`` slices of the upper stack
   and the first ``overlap`` of the lower one (a central y/x window) are computed, and
   ``skimage.registration.phase_cross_correlation`` (sub-voxel, then rounded) gives
   the z/y/x shift; the true overlap must lie within ``overlap +- search`` slices. The
   output is cropped in y/x to the region every stack covers; in each overlap the two
   stacks are blended with weights ramping linearly across it. The result is still a
   lazy graph over the input slabs.
6. **Write** (:func:`save`) through :func:`volmla.io.write_volume` (chunk by chunk,
   resumable), with a provenance step naming inputs, reader, voxel size source and
   stitching offsets.
"""

from __future__ import annotations

from volmla.ingest.api import Source, ingest, load, open_input, precheck_output, save
from volmla.ingest.readers import ItkStack, RawStack, TiffStack
from volmla.ingest.stitch import Stitched, blend_overlap, estimate_offset, stitch_stacks

__all__ = [
    "ItkStack",
    "RawStack",
    "Source",
    "Stitched",
    "TiffStack",
    "blend_overlap",
    "estimate_offset",
    "ingest",
    "load",
    "open_input",
    "precheck_output",
    "save",
    "stitch_stacks",
]
