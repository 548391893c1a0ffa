"""Element maps: reading them, denoising the light elements, adding channels.

1. **Read** (:func:`read_maps`): one 2-D map per element (TIFF files named by element,
   or an NPZ stack keyed by element), all on one grid whose pixel size (e.g. 40 um) is
   coarser than the CT voxels. Maps of different shapes are refused unless the caller
   states they share one field of view (``resample=True``).
2. **Denoise** (:func:`denoise_maps`): noisy light-element maps (Na, Mg) are bilateral
   filtered (edge preserving, so grain boundaries stay sharp).
3. **Extra channels** (:func:`with_channel`): e.g. the registered CT slice resampled to
   the map grid, clustered with the elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from volmla.errors import VolmlaError

__all__ = ["LIGHT_ELEMENTS", "ElementMaps", "denoise_maps", "read_maps", "with_channel"]

#: The noisy light-element channels that :func:`denoise_maps` filters by default.
LIGHT_ELEMENTS: tuple[str, ...] = ("Na", "Mg")


def read_npz(path: str | Path, *, what: str = "map") -> dict[str, np.ndarray]:
    """Every array of an NPZ file, loaded (no pickles); an unreadable file is one line.

    Examples
    --------
    >>> arrays = read_npz("maps.npz")  # doctest: +SKIP
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # no zip, a pickle, an object array
        raise VolmlaError(f"{what} {path} is not a readable NPZ of numeric arrays ({exc})") from None


def read_tiff(path: str | Path, *, what: str = "map") -> np.ndarray:
    """A TIFF image; an unreadable file is one line.

    Examples
    --------
    >>> image = read_tiff("Fe.tif")  # doctest: +SKIP
    """
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise VolmlaError(f"{what} {path} is not a readable TIFF ({exc})") from None


def _scalar(value: np.ndarray, what: str) -> float:
    """A stored scalar (``pixel_size_um``) as a float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise VolmlaError(f"{what} must be one number, got {value!r}") from None


class ElementMaps(NamedTuple):
    """A stack of 2-D element maps on one grid.

    ``data`` is float32 ``(channel, row, col)``; ``elements`` names the channels;
    ``pixel_size_um`` is the map pixel edge; ``origin_um`` the (row, col) physical
    position of pixel (0, 0)'s centre in the CT plane's frame (before registration).
    """

    data: np.ndarray
    elements: tuple[str, ...]
    pixel_size_um: float
    origin_um: tuple[float, float] = (0.0, 0.0)

    def channel(self, name: str) -> np.ndarray:
        """One channel by element name."""
        if name not in self.elements:
            raise VolmlaError(f"channel must be one of {list(self.elements)}, got {name!r}")
        return self.data[self.elements.index(name)]


def _check_pixel_size(pixel_size_um: Any) -> float:
    """A map pixel size: a positive, finite number of micrometres."""
    try:
        value = float(pixel_size_um)
    except (TypeError, ValueError):
        raise VolmlaError(f"pixel size must be a positive number of micrometres, got {pixel_size_um!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise VolmlaError(f"pixel size must be a positive number of micrometres, got {pixel_size_um!r}")
    return value


def read_maps(
    paths: Sequence[str | Path],
    *,
    pixel_size_um: float | None = None,
    resample: bool = False,
) -> ElementMaps:
    """Read element maps: TIFF files named by element, or NPZ stacks keyed by element.

    Parameters
    ----------
    paths
        ``Fe.tif``, ``Si.tiff``, ... (the file stem is the element), or ``.npz`` files
        whose 2-D arrays are keyed by element name; an NPZ may also hold a scalar
        ``pixel_size_um``. HDF5 is not read (h5py is not a dependency): export to NPZ.
    pixel_size_um
        Map pixel edge in micrometres (required unless an NPZ carries it).
    resample
        The maps share one field of view: resample those of other shapes to the largest
        grid (linear). Without it, maps of different shapes are an error.

    Returns
    -------
    ElementMaps

    Examples
    --------
    >>> maps = read_maps(["Fe.tif", "Si.tif"], pixel_size_um=40.0)  # doctest: +SKIP
    """
    if not paths:
        raise VolmlaError("maps: give at least one element map (TIFF named by element, or NPZ)")
    channels: dict[str, np.ndarray] = {}
    stored_size: float | None = None
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise VolmlaError(f"element map {path} does not exist")
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            if path.stem == "mineral_map":  # `correlate maps` wrote it beside the maps: phase ids, no element
                raise VolmlaError(f"{path} is a mineral map (phase ids) from `volmla correlate maps`, not an "
                                  "element map: leave it out of the maps")
            items = {path.stem: read_tiff(path, what="element map")}
        elif suffix == ".npz":
            items = {}
            for key, array in read_npz(path, what="element maps").items():
                if key == "pixel_size_um":
                    stored_size = _scalar(array, f"pixel_size_um in {path.name}")
                elif array.ndim == 2 and key not in ("phases", "clusters"):
                    items[key] = array
        else:
            raise VolmlaError(f"element maps must be .tif/.tiff (named by element) or .npz, got {path.name}")
        for name, image in items.items():
            image = np.asarray(image)
            if image.ndim != 2:
                raise VolmlaError(f"element map {name} must be 2-D, got shape {image.shape}")
            if name in channels:
                raise VolmlaError(f"element {name!r} given twice")
            if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
                raise VolmlaError(f"element map {name} must hold real numbers, got dtype {image.dtype}")
            channels[name] = image.astype(np.float32)
    if not channels:
        raise VolmlaError(f"no 2-D element maps found in {[str(p) for p in paths]}")
    size = _check_pixel_size(pixel_size_um if pixel_size_um is not None else stored_size)
    shapes = {name: im.shape for name, im in channels.items()}
    if len(set(shapes.values())) > 1:
        if not resample:
            raise VolmlaError(
                f"element maps have different shapes {shapes}: give maps on one grid, or "
                "pass resample=True if they share one field of view"
            )
        from skimage.transform import resize

        target = max(shapes.values(), key=lambda s: s[0] * s[1])
        channels = {
            n: im if im.shape == target else resize(im, target, order=1, preserve_range=True).astype(np.float32)
            for n, im in channels.items()
        }
    names = tuple(channels)
    return ElementMaps(np.stack([channels[n] for n in names]), names, size)


def denoise_maps(
    maps: ElementMaps,
    *,
    elements: Sequence[str] | None = None,
    sigma_spatial: float = 1.0,
    sigma_color: float | None = None,
) -> ElementMaps:
    """Bilateral-filter the noisy (light-element) maps.

    Parameters
    ----------
    maps
        The element maps.
    elements
        Channels to filter, each one of ``maps.elements`` (a name the maps lack is
        refused). None: those of the light elements :data:`LIGHT_ELEMENTS` the maps hold
        (maps without them are returned unfiltered).
    sigma_spatial
        Spatial sigma in map pixels.
    sigma_color
        Range sigma in the map's units; default twice the estimated noise sigma.

    Returns
    -------
    ElementMaps
        A copy with the named channels filtered.

    Examples
    --------
    >>> smooth = denoise_maps(maps, elements=("Na", "Mg"))  # doctest: +SKIP
    """
    from skimage.restoration import denoise_bilateral

    if sigma_spatial <= 0:
        raise VolmlaError(f"sigma_spatial must be positive, got {sigma_spatial}")
    if elements is None:
        names = [name for name in LIGHT_ELEMENTS if name in maps.elements]
    else:
        names = list(elements)
        absent = [name for name in names if name not in maps.elements]
        if absent:
            raise VolmlaError(f"denoise: {', '.join(absent)} not among the maps' elements ({', '.join(maps.elements)})")
    data = maps.data.copy()
    for name in names:
        i = maps.elements.index(name)
        image = data[i].astype(np.float64)
        sc = sigma_color if sigma_color is not None else 2.0 * _noise_sigma(image) or None
        data[i] = denoise_bilateral(image, sigma_color=sc, sigma_spatial=sigma_spatial).astype(np.float32)
    return maps._replace(data=data)


def _noise_sigma(image: np.ndarray) -> float:
    """Robust noise sigma: MAD of neighbour differences (noise adds in quadrature)."""
    diff = np.diff(image, axis=1).ravel()
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / math.sqrt(2))


def with_channel(maps: ElementMaps, name: str, image: np.ndarray) -> ElementMaps:
    """Add one channel (e.g. the registered CT slice resampled to the map grid).

    Parameters
    ----------
    maps
        The element maps.
    name
        Name of the new channel (not one of ``maps.elements``).
    image
        The channel, with the maps' (row, col) shape.

    Returns
    -------
    ElementMaps
        A copy with the channel appended.

    Examples
    --------
    >>> maps = ElementMaps(np.zeros((1, 4, 4), np.float32), ("Fe",), 40.0)
    >>> with_channel(maps, "CT", np.ones((4, 4))).elements
    ('Fe', 'CT')
    """
    image = np.asarray(image, np.float32)
    if image.shape != maps.data.shape[1:]:
        raise VolmlaError(f"channel {name!r} must have the map shape {maps.data.shape[1:]}, got {image.shape}")
    if name in maps.elements:
        raise VolmlaError(f"channel {name!r} exists already")
    return maps._replace(data=np.concatenate([maps.data, image[None]]), elements=(*maps.elements, name))
