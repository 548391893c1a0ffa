"""Reading SEM micrographs: pixel size from the vendor's tags, the info bar cropped.

1. **Files**: :func:`sem_files` expands files and folders (``.tif``/``.tiff``, ``.png``,
   ``.jpg``/``.jpeg``, ``.bmp``) into a sorted list; anything else named explicitly is
   refused.
2. **Pixels**: the first page (TIFF) or the image (others, through imageio); colour
   becomes grey (the mean of the channels), an alpha channel is dropped.
3. **Pixel size** (:func:`tiff_pixel_size`), micrometres, the first found of: FEI / Thermo
   Fisher ``[Scan] PixelWidth`` (metres) in the FEI_HELIOS / FEI_SFEG tag
   (``TiffFile.fei_metadata``), Zeiss ``ap_image_pixel_size`` in the CZ_SEM tag
   (``TiffFile.sem_metadata``, with its unit), TESCAN ``PixelSizeX=`` (metres) in its text
   tag (any ASCII tag holding it). A ``pixel_size`` given by the caller wins; a file with
   none and no ``pixel_size`` is refused in one line.
4. **Info bar** (:func:`info_bar_rows`): the bottom rows in which one grey value (the
   bar's, near black or near white) covers most of the row, with text marks in between,
   found as the longest such run ending at the bottom row; they are cropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from volmla.errors import VolmlaError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

__all__ = ["IMAGE_SUFFIXES", "PIXEL_SIZE_RANGE", "SemImage", "check_pixel_size", "info_bar_rows", "read_sem", "sem_files",
           "tiff_pixel_size"]

_TESCAN = re.compile(r"PixelSizeX\s*=\s*([-+0-9.eE]+)")
_ZEISS_UNITS = {"m": 1e6, "mm": 1e3, "\u00b5m": 1.0, "\u03bcm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6}


class SemImage(NamedTuple):
    """A micrograph ready to segment."""

    image: np.ndarray
    """``(rows, cols)`` grey values, the info bar cropped."""
    pixel_size: float
    """Micrometres per pixel."""
    source: str
    """The file it came from."""
    bar_rows: int
    """Rows of info bar cropped from the bottom."""


def sem_files(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``paths`` (files, or folders searched one level deep), sorted.

    In folders, truth files ``NAME.labels.tif`` (the labelled-folder layout) are skipped.

    Parameters
    ----------
    paths
        Files and folders.

    Returns
    -------
    list of pathlib.Path

    Examples
    --------
    >>> sem_files([])  # doctest: +SKIP
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not p.stem.endswith(".labels"))
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise VolmlaError(f"images must be TIFF, PNG, JPEG or BMP files, got {path}")
            found.append(path)
        else:
            raise VolmlaError(f"image {path} does not exist")
    if not found:
        raise VolmlaError(f"no images (TIFF, PNG, JPEG, BMP) found in {', '.join(map(str, paths))}")
    return found


def _zeiss_um(meta: dict[str, Any]) -> float | None:
    entry = meta.get("ap_image_pixel_size") or meta.get("ap_pixel_size")
    if not isinstance(entry, tuple) or len(entry) < 2 or not isinstance(entry[1], int | float):
        return None
    unit = str(entry[2]) if len(entry) > 2 else "nm"
    factor = _ZEISS_UNITS.get(unit)
    return None if factor is None else float(entry[1]) * factor


def _um(value: float) -> float:
    """Micrometres rounded to 12 significant digits (metres * 1e6 leaves float noise)."""
    return float(f"{value:.12g}")


def tiff_pixel_size(path: str | Path) -> float | None:
    """The pixel size a TIFF's vendor tags record (FEI, Zeiss, TESCAN), micrometres.

    Parameters
    ----------
    path
        The TIFF file.

    Returns
    -------
    float or None
        None when no tag records one.

    Examples
    --------
    >>> import numpy as np, tempfile, tifffile
    >>> f = tempfile.mkdtemp() + "/fei.tif"
    >>> tifffile.imwrite(f, np.zeros((8, 8), np.uint8),
    ...                  extratags=[(34682, "s", 0, "[Scan]\\nPixelWidth=2.5e-08\\n", True)])
    >>> round(tiff_pixel_size(f), 6)
    0.025
    """
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        fei = tif.fei_metadata or {}
        scan = fei.get("Scan") or fei.get("EScan") or {}
        width = scan.get("PixelWidth") if isinstance(scan, dict) else None
        if isinstance(width, int | float) and width > 0:
            return _um(float(width) * 1e6)
        zeiss = _zeiss_um(tif.sem_metadata or {}) if tif.is_sem else None
        if zeiss is not None and zeiss > 0:
            return _um(zeiss)
        for tag in tif.pages.first.tags.values():
            value = tag.value
            if isinstance(value, bytes):
                value = value.decode("latin-1", "replace")
            if isinstance(value, str):
                match = _TESCAN.search(value)
                if match:
                    size = float(match.group(1))
                    if size > 0 and math.isfinite(size):
                        return _um(size * 1e6)
    return None


def info_bar_rows(image: np.ndarray, *, dominance: float = 0.55, min_rows: int = 4) -> int:
    """Rows of an info bar at the bottom of an SEM image (0 when there is none).

    A row belongs to the bar when one grey value (within 2 % of the range) near black or
    near white covers at least ``dominance`` of it; the bar is the longest run of such
    rows ending at the bottom (single rows of text in between allowed).

    Parameters
    ----------
    image
        ``(rows, cols)`` grey values.
    dominance
        Fraction of a bar row its background value covers.
    min_rows
        Shorter runs are not a bar.

    Returns
    -------
    int

    Examples
    --------
    >>> img = np.random.default_rng(0).integers(60, 200, (50, 40)).astype(np.uint8)
    >>> img[-8:] = 0
    >>> info_bar_rows(img)
    8
    """
    data = np.asarray(image, dtype=np.float64)
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return 0
    tol = 0.02 * (hi - lo)
    bar_like = np.zeros(len(data), bool)
    for value in (lo, hi):
        bar_like |= (np.abs(data - value) <= tol).mean(axis=1) >= dominance
    rows = 0
    misses = 0
    for i in range(len(data) - 1, -1, -1):
        if bar_like[i]:
            rows, misses = len(data) - i, 0
        else:
            misses += 1
            if misses > 2:
                break
    if rows < min_rows or rows > 0.4 * len(data):
        return 0
    return rows


PIXEL_SIZE_RANGE = (1e-6, 1e7)
"""Micrometres per pixel accepted (as for CT voxels): 1 pm to 10 m; beyond, a unit slip."""


def check_pixel_size(size: Any, what: str = "pixel_size") -> float:
    """A pixel size in micrometres: a finite number within :data:`PIXEL_SIZE_RANGE`.

    Examples
    --------
    >>> check_pixel_size(0.05)
    0.05
    """
    if isinstance(size, bool) or not isinstance(size, int | float | np.floating | np.integer) \
            or not math.isfinite(size) or size <= 0:
        raise VolmlaError(f"{what} must be a positive number of micrometres, got {size!r}")
    if not PIXEL_SIZE_RANGE[0] <= size <= PIXEL_SIZE_RANGE[1]:
        raise VolmlaError(f"{what} must lie in {PIXEL_SIZE_RANGE[0]:g}..{PIXEL_SIZE_RANGE[1]:g} micrometres (the "
                          f"pixel size is in um), got {size!r}")
    return float(size)


def _grey(pixels: np.ndarray, path: Path) -> np.ndarray:
    if np.iscomplexobj(pixels) or not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool):
        raise VolmlaError(f"image {path} must hold real grey values, got dtype {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(axis=-1)
    elif pixels.ndim == 3 and pixels.shape[0] in (1,):
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise VolmlaError(f"image {path} must be a 2-D grey or RGB image, got shape {pixels.shape}")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise VolmlaError(f"image {path} holds NaN or infinite values")
    return pixels


def read_sem(path: str | Path, *, pixel_size: float | None = None, crop_bar: bool = True) -> SemImage:
    """Read one SEM micrograph: grey pixels, pixel size, the info bar cropped.

    Parameters
    ----------
    path
        A TIFF, PNG, JPEG or BMP file.
    pixel_size
        Micrometres per pixel; overrides the file's tags (needed for non-TIFF files).
    crop_bar
        Detect and crop the info bar.

    Returns
    -------
    SemImage

    Examples
    --------
    >>> img = read_sem("chip_01.tif")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"image {path} does not exist")
    size = pixel_size
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                pixels = tif.pages.first.asarray()
            if size is None:
                size = tiff_pixel_size(path)
        else:
            import imageio.v3 as iio

            pixels = np.asarray(iio.imread(path))
    except VolmlaError:
        raise
    except Exception as exc:
        raise VolmlaError(f"cannot read {path} as an image: {' '.join(str(exc).split())[:200]}") from None
    if size is None:
        raise VolmlaError(f"image {path} records no pixel size: pass pixel_size= (micrometres per pixel)")
    size = check_pixel_size(size, "pixel_size" if pixel_size is not None else f"pixel size recorded in {path}")
    grey = _grey(pixels, path)
    bar = info_bar_rows(grey) if crop_bar else 0
    if bar:
        grey = grey[:-bar]
    return SemImage(grey, float(size), str(path), bar)
