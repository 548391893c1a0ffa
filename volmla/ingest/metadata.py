"""Voxel sizes and units from input headers (TIFF tags, OME-XML, ImageJ, ITK), and the ITK header.

The voxel size (micrometres) comes from the metadata when ``voxel_size`` is not given:

1. OME-XML ``PhysicalSize{X,Y,Z}`` with their units;
2. ImageJ ``spacing`` and ``unit`` with the X/Y resolution tags;
3. TIFF resolution tags with a real ``ResolutionUnit`` (inch or centimetre, z taken
   equal to x; the writer defaults ``NONE`` and 72/96/300 dpi are ignored);
4. ITK spacing, taken as **millimetres** (the ITK/NIfTI/DICOM convention), except
   all-ones spacing which is ITK's "not set".

Each function returns the voxel size with a short note of where it came from (recorded
in the provenance), or ``None`` with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from volmla.errors import VolmlaError
from volmla.ingest.readers import check_dtype

__all__ = ["FoundVoxelSize", "itk_header", "tiff_voxel_size"]

FoundVoxelSize = tuple[tuple[float, float, float] | None, str]
"""A voxel size ``(z, y, x)`` in micrometres (or None) and where it came from."""

_UNIT_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "inch": 25400.0, "in": 25400.0,
}  # fmt: skip
_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0, 1200.0)


def _unit_um(unit: Any) -> float | None:
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("micrometers", "micrometer")
    return _UNIT_UM.get(text)


def _resolution(page: Any) -> tuple[float | None, float | None]:
    """Pixel size along (y, x) in the resolution unit, from the resolution tags."""
    out: list[float | None] = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.valueof(tag)
        if value is None:
            out.append(None)
            continue
        num, den = (value if isinstance(value, tuple) else (value, 1))
        out.append(float(den) / float(num) if num else None)
    return out[0], out[1]


def tiff_voxel_size(tif: Any) -> FoundVoxelSize:
    """Voxel size (z, y, x) in micrometres from OME-XML, ImageJ or resolution tags.

    Parameters
    ----------
    tif
        An open ``tifffile.TiffFile``.

    Returns
    -------
    tuple
        The voxel size (or None) and where it came from (``"none"`` without one).
    """
    if tif.is_ome and tif.ome_metadata:
        found = _ome_voxel_size(tif.ome_metadata)
        if found is not None:
            return found, "ome-xml PhysicalSize"
    page = tif.pages.first
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        scale = _unit_um(meta.get("unit"))
        y, x = _resolution(page)
        if scale is not None and x is not None:
            y = y if y is not None else x
            z = float(meta.get("spacing", x))
            return (z * scale, y * scale, x * scale), "imagej metadata (spacing, unit, resolution)"
    unit = page.tags.valueof("ResolutionUnit")
    scale = {2: 25400.0, 3: 1e4}.get(int(unit)) if unit is not None else None
    y, x = _resolution(page)
    if scale is not None and x is not None and y is not None:
        dpi = 1.0 / x * (25400.0 / scale)  # pixels per inch
        if not any(abs(dpi - d) < 1e-6 for d in _DEFAULT_DPI):
            return (x * scale, y * scale, x * scale), "tiff resolution tags (z taken equal to x)"
    return None, "none"


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        scale = _unit_um(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is not None and scale is not None:
            sizes[axis] = float(value) * scale
    if "X" not in sizes:
        return None
    x = sizes["X"]
    return (sizes.get("Z", x), sizes.get("Y", x), x)


def itk_header(path: str) -> tuple[tuple[int, int, int], np.dtype, tuple[float, float, float] | None, str]:
    """Shape, dtype and voxel size of an image SimpleITK reads, from its header alone.

    Parameters
    ----------
    path
        An MHA/MHD, NRRD or NIfTI file.

    Returns
    -------
    tuple
        The shape ``(z, y, x)`` (a 2-D image is one plane), the native dtype, the
        voxel size in micrometres (None for ITK's default spacing 1) and its source.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise VolmlaError(f"{path} cannot be read by SimpleITK: {first}") from None
    if reader.GetNumberOfComponents() != 1:
        raise VolmlaError(f"{path} has {reader.GetNumberOfComponents()} components per voxel: ingest takes grey-scale volumes only")
    dim = reader.GetDimension()
    if dim not in (2, 3):
        raise VolmlaError(f"{path} is {dim}-D: ingest takes 2-D or 3-D images")
    size = [*reader.GetSize(), 1][:3]
    shape = (int(size[2]), int(size[1]), int(size[0]))
    dtype = check_dtype(sitk.GetArrayFromImage(sitk.Image([1] * dim, reader.GetPixelID())).dtype, path)
    spacing = [*reader.GetSpacing(), reader.GetSpacing()[0]][:3]
    if all(abs(s - 1.0) < 1e-12 for s in spacing):
        return shape, dtype, None, "none (ITK spacing is the default 1)"
    # float32 headers (NIfTI) carry 7 significant digits
    z, y, x = (float(f"{s * 1e3:.7g}") for s in (spacing[2], spacing[1], spacing[0]))
    return shape, dtype, (z, y, x), "itk spacing (millimetres)"
