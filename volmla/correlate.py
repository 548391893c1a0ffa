"""Correlative labelling: element maps -> mineral map -> registration into CT -> sparse labels.

The Deep-XFCT workflow (Tung et al.) turns micro-XRF element maps of a sample's faces
into sparse training labels inside the CT volume:

1. **Element maps in** (:func:`read_maps`): one 2-D map per element (TIFF files named by
   element, or an NPZ stack keyed by element), all on one grid whose pixel size (e.g.
   40 um) is coarser than the CT voxels. Maps of different shapes are refused unless the
   caller states they share one field of view (``resample=True``).
2. **Denoising** (:func:`denoise_maps`): noisy light-element maps (Na, Mg) are bilateral
   filtered (edge preserving, so grain boundaries stay sharp).
3. **Mineral map** (:func:`kmeans_minerals`): the channels, in units of their pixel
   noise sigma (so channels with no real contrast weigh little) (optionally with
   the registered CT slice as one more channel) are clustered by k-means, ``k`` = minerals
   + void, best of ``n_init`` initialisations; clusters are numbered by increasing mean
   standardised intensity (cluster 0 is the most void-like). The centroid table is given
   in the original units, with the abundances.
4. **Assignment** (:func:`assign_minerals`): clusters become minerals either from a user
   table (cluster -> mineral) or automatically: the standardised centroid profiles are
   turned into relative element levels (0 lowest .. 1 highest cluster; an element whose
   range is within the noise stays near 0) and compared with the signatures' levels
   (:data:`SIGNATURES`; similarity = 1 - RMS difference), matched one-to-one by the
   Hungarian method (:func:`scipy.optimize.linear_sum_assignment`); a cluster whose best
   match is clearly better takes it (two clusters may share a mineral when another named
   mineral is absent from the face), a cluster that matches nothing well is left
   unlabelled (:data:`UNLABELLED`), and minerals no cluster took are reported as not
   found. The confidence of a match is the margin between its similarity and the best
   other mineral's. An XRD abundance table, when
   given, is compared with the map's abundances (:func:`compare_abundances`).
5. **Registration** (:func:`register_map`): the map's plane is searched along one axis of
   the CT volume. Candidate CT planes are read lazily (only those planes), smoothed to the
   map's resolution and resampled onto the map grid; the plane that maximises the mutual
   information with the map wins (coarse step, then every plane around the best). A 2-D
   rigid (or similarity) registration with SimpleITK (Mattes mutual information, linear
   interpolation, multi-resolution) then aligns the map with that plane, the neighbouring
   planes are re-scored under the fitted transform and the fit is repeated if another
   plane wins. Optionally (``max_tilt_deg``) small tilts of the plane about its two
   in-plane axes are searched on a grid, each tilted plane sampled by linear
   interpolation from the slab of planes it crosses (one lazy read), then refined on a
   finer grid after refitting the 2-D transform on the tilted plane. The result carries
   the plane position, tilt, the Mattes metric, the optimizer's stop condition, and a
   quality score: the mutual information above chance (a shuffled map) divided by the
   map's entropy. A fit that did not converge or whose quality is below ``min_quality``
   raises :class:`~volmla.errors.VolmlaError` unless ``accept_poor`` is set, in which case
   it is kept with an explicit warning.
6. **Label transfer** (:func:`map_to_plane`, :func:`erode_labels`, :func:`sparse_labels`):
   the mineral map is resampled into the CT plane's voxel grid (nearest neighbour, inverse
   transform), labels within ``margin`` voxels of a label change are dropped (so
   misregistration at grain boundaries does not teach wrong labels), and the planes are
   written into a lazy, mostly-zero uint8 volume: ``0`` = unlabelled, ``phase + 1``
   otherwise (void, phase 0, is stored as 1); a tilted plane's label at (row, col) goes
   to the nearest voxel on the tilted plane. Only chunks that a plane crosses compute
   anything.
7. **One run** (:func:`load_run_config`, :func:`run_correlation`): a YAML file lists the
   CT, the minerals and every mapped face (maps, pixel size, axis, search range, ...);
   all steps run per face and one sparse label volume and a JSON/Markdown report
   (:func:`report_markdown`) come out (``volmla correlate run``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr

from volmla.errors import VolmlaError
from volmla.segment import SPARSE_LABEL_OFFSET

logger = logging.getLogger(__name__)

Axis = Literal["z", "y", "x"]
AXES: tuple[str, ...] = ("z", "y", "x")

__all__ = [
    "AXES",
    "SIGNATURES",
    "UNLABELLED",
    "SPARSE_LABEL_OFFSET",
    "Assignment",
    "ElementMaps",
    "LabelPlane",
    "MineralMap",
    "Registration",
    "assign_minerals",
    "check_run_config",
    "compare_abundances",
    "denoise_maps",
    "erode_labels",
    "kmeans_minerals",
    "load_registration",
    "load_run_config",
    "map_to_plane",
    "mutual_information",
    "plane_heights",
    "registration_image",
    "read_maps",
    "read_phase_map",
    "register_map",
    "save_mineral_map",
    "save_registration",
    "sparse_labels",
]

#: Relative element levels (0 absent .. 1 highest) of common minerals, for automatic
#: cluster -> mineral assignment. Only the pattern across minerals matters: signatures
#: and centroids are both standardised per element before they are compared.
SIGNATURES: dict[str, dict[str, float]] = {
    "void": {},
    "quartz": {"Si": 1.0},
    "albite": {"Na": 0.8, "Al": 0.5, "Si": 0.7},
    "feldspar": {"Na": 0.4, "K": 0.6, "Al": 0.5, "Si": 0.65},
    "k-feldspar": {"K": 0.9, "Al": 0.5, "Si": 0.65},
    "illite": {"K": 0.6, "Al": 0.7, "Si": 0.5, "Mg": 0.1, "Fe": 0.1},
    "ankerite": {"Ca": 1.0, "Fe": 0.5, "Mg": 0.3, "Mn": 0.1},
    "calcite": {"Ca": 1.0},
    "clinochlore": {"Mg": 0.8, "Fe": 0.5, "Al": 0.5, "Si": 0.35},
    "pyrite": {"Fe": 1.0, "S": 1.0},
}

LIGHT_ELEMENTS: tuple[str, ...] = ("Na", "Mg")


# --------------------------------------------------------------------------- 1. maps in


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
    import tifffile

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
            items = {path.stem: tifffile.imread(path)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                items = {}
                for key in npz.files:
                    if key == "pixel_size_um":
                        stored_size = float(npz[key])
                    elif npz[key].ndim == 2 and key not in ("phases", "clusters"):
                        items[key] = npz[key]
        else:
            raise VolmlaError(f"element maps must be .tif/.tiff (named by element) or .npz, got {path.name}")
        for name, image in items.items():
            image = np.asarray(image)
            if image.ndim != 2:
                raise VolmlaError(f"element map {name} must be 2-D, got shape {image.shape}")
            if name in channels:
                raise VolmlaError(f"element {name!r} given twice")
            channels[name] = image.astype(np.float32)
    if not channels:
        raise VolmlaError(f"no 2-D element maps found in {[str(p) for p in paths]}")
    size = _check_pixel_size(pixel_size_um if pixel_size_um is not None else stored_size)
    shapes = {name: im.shape for name, im in channels.items()}
    if len(set(shapes.values())) > 1:
        if not resample:
            raise VolmlaError(
                f"element maps have different shapes {shapes}: give maps on one grid, or "
                "--resample if they share one field of view"
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
    elements: Sequence[str] = LIGHT_ELEMENTS,
    sigma_spatial: float = 1.0,
    sigma_color: float | None = None,
) -> ElementMaps:
    """Bilateral-filter the noisy (light-element) maps.

    Parameters
    ----------
    maps
        The element maps.
    elements
        Channels to filter; names absent from ``maps`` are skipped.
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
    data = maps.data.copy()
    for name in elements:
        if name not in maps.elements:
            continue
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
    """Add one channel (e.g. the registered CT slice resampled to the map grid)."""
    image = np.asarray(image, np.float32)
    if image.shape != maps.data.shape[1:]:
        raise VolmlaError(f"channel {name!r} must have the map shape {maps.data.shape[1:]}, got {image.shape}")
    if name in maps.elements:
        raise VolmlaError(f"channel {name!r} exists already")
    return maps._replace(data=np.concatenate([maps.data, image[None]]), elements=(*maps.elements, name))


# --------------------------------------------------------------------------- 2. k-means


class MineralMap(NamedTuple):
    """k-means result: ``clusters`` (row, col) int16, ``centroids`` (cluster x channel,
    original units, a pandas DataFrame), ``abundances`` (cluster -> area fraction),
    ``noise`` (per-channel pixel noise sigma, used to tell real contrast from noise)."""

    clusters: np.ndarray
    centroids: Any
    abundances: dict[int, float]
    inertia: float
    noise: Any = None  # robust per-pixel noise sigma of each channel (pandas Series)


def kmeans_minerals(
    maps: ElementMaps,
    *,
    k: int,
    seed: int = 0,
    n_init: int = 10,
    channels: Sequence[str] | None = None,
    max_samples: int = 200_000,
    standardise: Literal["noise", "std"] = "noise",
) -> MineralMap:
    """Cluster the standardised map channels by k-means (best of ``n_init``).

    Parameters
    ----------
    maps
        Element maps (plus any extra channel such as a CT slice).
    k
        Clusters: minerals + void.
    seed
        Seed of the k-means initialisations and of the subsample.
    n_init
        Initialisations; the one with the lowest inertia is kept.
    channels
        Channels to cluster on (default all).
    max_samples
        Fit on at most this many pixels (a seeded subsample), then label every pixel.
    standardise
        Channel scaling before clustering: ``"noise"`` divides each channel by its pixel
        noise sigma (robust; channels with only noise weigh little), ``"std"`` by its
        standard deviation (every channel weighs the same).

    Returns
    -------
    MineralMap
        Clusters numbered by increasing mean standardised intensity (0 most void-like).

    Examples
    --------
    >>> mm = kmeans_minerals(maps, k=4, seed=0)  # doctest: +SKIP
    >>> mm.centroids.loc[0]  # doctest: +SKIP
    """
    import pandas as pd
    from sklearn.cluster import KMeans

    if not isinstance(k, int | np.integer) or k < 2:
        raise VolmlaError(f"k (clusters) must be an integer >= 2, got {k!r}")
    if standardise not in ("noise", "std"):
        raise VolmlaError(f"standardise must be 'noise' or 'std', got {standardise!r}")
    names = tuple(channels) if channels is not None else maps.elements
    missing = [c for c in names if c not in maps.elements]
    if missing:
        raise VolmlaError(f"channels {missing} are not among the maps {list(maps.elements)}")
    stack = np.stack([maps.channel(c) for c in names], axis=-1).reshape(-1, len(names)).astype(np.float64)
    if not np.all(np.isfinite(stack)):
        raise VolmlaError("element maps contain NaN or infinite values")
    if stack.shape[0] < k:
        raise VolmlaError(f"k={k} clusters asked for, but the maps have only {stack.shape[0]} pixels")
    sigma = np.array([_noise_sigma(maps.channel(c).astype(np.float64)) for c in names])
    mean, std = stack.mean(axis=0), stack.std(axis=0)
    std[std == 0] = 1.0
    # channels in units of their pixel noise, so a channel without contrast (an absent
    # mineral's elements) cannot outweigh one with real contrast; standard deviation
    # where the noise estimate fails (constant or quantised channels)
    scale = np.where((sigma > 0) & (sigma < std), sigma, std) if standardise == "noise" else std
    z = (stack - mean) / scale
    rng = np.random.default_rng(seed)
    fit = z if z.shape[0] <= max_samples else z[rng.choice(z.shape[0], max_samples, replace=False)]
    model = KMeans(n_clusters=int(k), n_init=n_init, random_state=seed).fit(fit)
    raw = model.predict(z)
    order = np.argsort(model.cluster_centers_.mean(axis=1), kind="stable")
    relabel = np.empty(k, np.int16)
    relabel[order] = np.arange(k, dtype=np.int16)
    labels = relabel[raw]
    counts = np.bincount(labels, minlength=k)
    cent = np.stack([stack[labels == c].mean(axis=0) if counts[c] else np.full(len(names), np.nan) for c in range(k)])
    centroids = pd.DataFrame(cent, index=pd.RangeIndex(k, name="cluster"), columns=list(names))
    abundances = {int(c): float(counts[c] / labels.size) for c in range(k)}
    noise = pd.Series(sigma, index=list(names), name="noise")
    logger.info("k-means k=%d: abundances %s", k, abundances)
    return MineralMap(labels.reshape(maps.data.shape[1:]), centroids, abundances, float(model.inertia_), noise)


# --------------------------------------------------------------------------- assignment


#: Phase-map value of a pixel whose cluster matched no mineral well enough: it is not
#: guessed, and becomes label 0 (unlabelled) when transferred into the CT.
UNLABELLED: int = 255


class Assignment(NamedTuple):
    """Cluster -> mineral: ``mineral`` (cluster -> name, ``"unlabelled"`` for a cluster
    that matched nothing well), ``phase`` (cluster -> phase id, void 0 and
    ``minerals[i]`` = i + 1, :data:`UNLABELLED` for an unmatched cluster),
    ``confidence`` (cluster -> similarity margin; 1.0 for a user table), ``similarity``
    (cluster x mineral DataFrame or None), ``phase_names`` ({id: name} without void),
    ``method`` ("table" | "signatures"), ``not_found`` (named minerals no cluster was
    assigned to: absent from this map) and ``unlabelled`` (clusters left unlabelled)."""

    mineral: dict[int, str]
    phase: dict[int, int]
    confidence: dict[int, float]
    similarity: Any
    phase_names: dict[int, str]
    method: str
    warnings: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()
    unlabelled: tuple[int, ...] = ()

    def phase_map(self, clusters: np.ndarray) -> np.ndarray:
        """The cluster map turned into phase ids (uint8; :data:`UNLABELLED` where the
        cluster matched no mineral)."""
        lut = np.zeros(max(self.phase) + 1, np.uint8)
        for c, p in self.phase.items():
            lut[c] = p
        return lut[clusters]


def registration_image(phases: np.ndarray) -> np.ndarray:
    """A phase map ready for :func:`register_map`: :data:`UNLABELLED` pixels become one
    more class (the next free id), so the value range stays compact for Mattes MI."""
    phases = np.asarray(phases)
    un = phases == UNLABELLED
    if not un.any():
        return phases
    rest = phases[~un]
    return np.where(un, (int(rest.max()) + 1) if rest.size else 0, phases).astype(phases.dtype)


def assign_minerals(
    mineral_map: MineralMap,
    *,
    minerals: Sequence[str],
    table: Mapping[int, str] | None = None,
    signatures: Mapping[str, Mapping[str, float]] | None = None,
    void: str = "void",
    min_confidence: float = 0.1,
    min_similarity: float = 0.5,
    switch_margin: float = 0.15,
) -> Assignment:
    """Name the k-means clusters: from a user table, or from element signatures.

    Automatic assignment: each centroid's element levels relative to the other clusters
    (0 lowest .. 1 highest; an element whose range is within the noise, e.g. the Fe and S
    of an absent pyrite, stays near 0) are compared with the signatures' relative levels:
    similarity = 1 - RMS difference. Clusters are first matched
    one-to-one (Hungarian); a cluster whose best-matching mineral is better than its
    Hungarian match by ``switch_margin`` or more takes the best match instead (a phase
    split into two clusters, while another named mineral is absent), and a cluster whose
    similarity stays below ``min_similarity`` is left unlabelled rather than guessed.
    Minerals that no labelled cluster took are reported in ``not_found``.

    Parameters
    ----------
    mineral_map
        The k-means result.
    minerals
        Mineral names in phase order (phase ``i + 1``); the void phase (0) is implicit.
    table
        Cluster index -> mineral name (or ``void``), given by the user. Every cluster
        must be named.
    signatures
        Mineral -> {element: relative level}; default :data:`SIGNATURES`.
    void
        Name of the void/matrix phase.
    min_confidence
        Matches whose similarity margin is below this are listed in ``warnings``.
    min_similarity
        Clusters whose cosine similarity to their mineral is below this stay unlabelled.
    switch_margin
        How much better (cosine) the best match must be than the one-to-one match for a
        cluster to take it (many clusters may then share one mineral).

    Returns
    -------
    Assignment

    Examples
    --------
    >>> a = assign_minerals(mm, minerals=["quartz", "feldspar", "pyrite"])  # doctest: +SKIP
    >>> a.mineral  # doctest: +SKIP
    {0: 'void', 1: 'quartz', 2: 'feldspar', 3: 'pyrite'}
    """
    import pandas as pd
    from scipy.optimize import linear_sum_assignment

    minerals = [str(m) for m in minerals]
    if not minerals or len(set(minerals)) != len(minerals) or void in minerals:
        raise VolmlaError(f"minerals must be distinct names other than {void!r}, got {minerals}")
    k = len(mineral_map.abundances)
    names = [void, *minerals]
    phase_of = {n: i for i, n in enumerate(names)}
    phase_names = {i + 1: m for i, m in enumerate(minerals)}
    if k < len(names):
        raise VolmlaError(
            f"k={k} clusters is fewer than the {len(names)} phases named ({', '.join(names)}): "
            f"use k >= {len(names)}"
        )
    if table is not None:
        table = {int(c): str(m) for c, m in table.items()}
        unknown = sorted({m for m in table.values() if m not in phase_of})
        if unknown:
            raise VolmlaError(f"cluster table names {unknown}, allowed {names}")
        missing = [c for c in range(k) if c not in table]
        if missing or any(c not in range(k) for c in table):
            raise VolmlaError(f"cluster table must name every cluster 0..{k - 1}, got {sorted(table)}")
        not_found = tuple(m for m in minerals if m not in table.values())
        return Assignment(table, {c: phase_of[m] for c, m in table.items()}, dict.fromkeys(table, 1.0),
                          None, phase_names, "table", (), not_found)

    sigs = dict(SIGNATURES if signatures is None else signatures)
    sigs.setdefault(void, {})
    unknown = [m for m in names if m not in sigs]
    if unknown:
        raise VolmlaError(f"no element signature for {unknown}: known {sorted(sigs)}; give a cluster table instead")
    centroids = mineral_map.centroids
    elements = [e for e in centroids.columns if any(e in sigs[m] for m in names)]
    if not elements:
        raise VolmlaError(f"no map channel {list(centroids.columns)} appears in the signatures of {names}")
    sig = np.array([[float(sigs[m].get(e, 0.0)) for e in elements] for m in names])
    cen = centroids[elements].to_numpy(np.float64)
    if np.isnan(cen).any():  # a cluster left empty after predicting every pixel
        cen = np.where(np.isnan(cen), np.nanmean(cen, axis=0), cen)
    sim = _level_similarity(_levels(cen, mineral_map.noise, elements), sig)
    rows, cols = linear_sum_assignment(-sim)
    chosen = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    for c in range(k):  # surplus clusters join their most similar phase
        chosen.setdefault(c, int(np.argmax(sim[c])))
    for c, j in list(chosen.items()):  # many-to-one where the best match is clearly better
        b = int(np.argmax(sim[c]))
        if b != j and sim[c, b] - sim[c, j] >= switch_margin:
            logger.info("cluster %d: %s (%.2f) beats the one-to-one match %s (%.2f)",
                        c, names[b], sim[c, b], names[j], sim[c, j])
            chosen[c] = b
    unlabelled = tuple(c for c in range(k) if sim[c, chosen[c]] < min_similarity)
    confidence = {}
    for c, j in chosen.items():
        others = np.delete(sim[c], j)
        confidence[c] = float(sim[c, j] - others.max()) if others.size else 1.0
    mineral = {c: ("unlabelled" if c in unlabelled else names[j]) for c, j in sorted(chosen.items())}
    phase = {c: (UNLABELLED if c in unlabelled else phase_of[m]) for c, m in mineral.items()}
    not_found = tuple(m for m in minerals if m not in mineral.values())
    similarity = pd.DataFrame(sim, index=pd.RangeIndex(k, name="cluster"), columns=names)
    warnings = [
        f"cluster {c} -> {mineral[c]} has a low confidence margin {confidence[c]:.2f}: its signature is "
        "ambiguous; check the centroids or give a cluster table"
        for c in sorted(confidence) if confidence[c] < min_confidence and c not in unlabelled]
    if unlabelled:
        warnings.append(f"clusters {list(unlabelled)} match no mineral (similarity < {min_similarity}) "
                        f"and are left unlabelled ({sum(mineral_map.abundances[c] for c in unlabelled):.1%} of the map)")
    for w in warnings:
        logger.warning("%s", w)
    if not_found:
        logger.info("minerals not found on this map: %s", list(not_found))
    logger.info("cluster assignment %s (confidence %s)", mineral, confidence)
    return Assignment(mineral, phase, dict(sorted(confidence.items())), similarity, phase_names, "signatures",
                      tuple(warnings), not_found, unlabelled)


def _levels(cen: np.ndarray, noise: Any, elements: Sequence[str], contrast: float = 5.0) -> np.ndarray:
    """Relative element levels of the centroids (0 lowest cluster .. 1 highest), where an
    element whose range across clusters is under ``contrast`` x its pixel noise sigma is
    scaled by that instead (k-means can split a phase on noise alone, which gives a ~2
    sigma contrast): an element without real contrast on this map (the
    Fe and S of an absent pyrite) stays near 0 rather than being stretched to 0..1."""
    lo = cen.min(axis=0)
    scale = cen.max(axis=0) - lo
    if noise is not None:
        sigma = np.asarray([float(noise.get(e, 0.0)) for e in elements])
        scale = np.maximum(scale, contrast * np.nan_to_num(sigma))
    scale[scale <= 0] = 1.0
    return (cen - lo) / scale


def _level_similarity(levels: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """1 - RMS difference between centroid levels and signature levels (each signature
    column scaled to its highest named mineral): 1 = identical, <= 0.5 = poor."""
    top = sig.max(axis=0)
    ref = np.divide(sig, top, out=np.zeros_like(sig), where=top > 0)
    return 1.0 - np.sqrt(np.mean((levels[:, None, :] - ref[None, :, :]) ** 2, axis=2))


def _standardise(a: np.ndarray) -> np.ndarray:
    """Z-score each column across rows; constant columns become 0 (they carry no contrast)."""
    std = a.std(axis=0)
    out = np.zeros_like(a, dtype=np.float64)
    ok = std > 1e-12
    out[:, ok] = (a[:, ok] - a[:, ok].mean(axis=0)) / std[ok]
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a @ b.T) / np.maximum(na, 1e-12) / np.maximum(nb, 1e-12).T


def compare_abundances(
    mineral_map: MineralMap, assignment: Assignment, reference: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Map abundances per mineral against a reference table (e.g. XRD), void excluded.

    Both sides are renormalised over the minerals they share; returns
    ``{mineral: {"map": f, "reference": f, "difference": map - reference}}``.
    """
    by_mineral: dict[str, float] = {}
    for c, f in mineral_map.abundances.items():
        m = assignment.mineral[c]
        by_mineral[m] = by_mineral.get(m, 0.0) + f
    names = [m for m in assignment.phase_names.values() if m in reference]
    unknown = sorted(set(reference) - set(assignment.phase_names.values()))
    if unknown:
        logger.warning("reference abundances name minerals not in the map: %s", unknown)
    if not names:
        raise VolmlaError(f"reference abundances name none of the minerals {list(assignment.phase_names.values())}")
    tot_map = sum(by_mineral.get(m, 0.0) for m in names) or 1.0
    tot_ref = sum(float(reference[m]) for m in names) or 1.0
    out = {}
    for m in names:
        fm, fr = by_mineral.get(m, 0.0) / tot_map, float(reference[m]) / tot_ref
        out[m] = {"map": round(fm, 6), "reference": round(fr, 6), "difference": round(fm - fr, 6)}
    return out


def save_mineral_map(
    out_dir: str | Path,
    maps: ElementMaps,
    mineral_map: MineralMap,
    assignment: Assignment,
    *,
    report: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``mineral_map.npz`` (phases, clusters, channels, pixel size, names),
    ``mineral_map.tif`` (phase ids), ``centroids.csv`` and ``report.json``."""
    import tifffile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phases = assignment.phase_map(mineral_map.clusters)
    paths = {"npz": out / "mineral_map.npz", "tif": out / "mineral_map.tif",
             "centroids": out / "centroids.csv", "report": out / "report.json"}
    arrays = {e: maps.data[i] for i, e in enumerate(maps.elements)}
    np.savez_compressed(
        paths["npz"], phases=phases, clusters=mineral_map.clusters,
        pixel_size_um=np.float64(maps.pixel_size_um), origin_um=np.asarray(maps.origin_um, np.float64),
        phase_names=np.asarray(json.dumps({str(k): v for k, v in assignment.phase_names.items()})),
        **arrays,
    )
    tifffile.imwrite(paths["tif"], phases)
    mineral_map.centroids.assign(mineral=[assignment.mineral[c] for c in mineral_map.centroids.index]).to_csv(
        paths["centroids"])
    record = {
        "pixel_size_um": maps.pixel_size_um,
        "shape": list(mineral_map.clusters.shape),
        "elements": list(maps.elements),
        "k": len(mineral_map.abundances),
        "inertia": mineral_map.inertia,
        "assignment_method": assignment.method,
        "clusters": {
            str(c): {"mineral": assignment.mineral[c], "phase": assignment.phase[c],
                     "confidence": round(assignment.confidence[c], 4),
                     "abundance": round(mineral_map.abundances[c], 6),
                     "centroid": {k: float(v) for k, v in mineral_map.centroids.loc[c].items()}}
            for c in mineral_map.centroids.index
        },
        "phases": {str(k): v for k, v in assignment.phase_names.items()},
        "minerals_not_found": list(assignment.not_found),
        "unlabelled_clusters": list(assignment.unlabelled),
        "warnings": list(assignment.warnings),
        **dict(report or {}),
    }
    paths["report"].write_text(json.dumps(record, indent=2))
    return paths


def read_phase_map(path: str | Path, *, pixel_size_um: float | None = None) -> tuple[np.ndarray, float, dict[int, str]]:
    """Read a phase map: ``mineral_map.npz`` (from :func:`save_mineral_map`) or a 2-D TIFF
    of phase ids (then ``pixel_size_um`` is required). Returns (phases, pixel size, names)."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"map {path} does not exist")
    names: dict[int, str] = {}
    stored = None
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "phases" not in npz.files:
                raise VolmlaError(f"{path} holds no 'phases' array: make it with `volmla correlate maps`")
            phases = npz["phases"]
            stored = float(npz["pixel_size_um"]) if "pixel_size_um" in npz.files else None
            if "phase_names" in npz.files:
                names = {int(k): v for k, v in json.loads(str(npz["phase_names"])).items()}
    elif path.suffix.lower() in (".tif", ".tiff"):
        phases = tifffile.imread(path)
    else:
        raise VolmlaError(f"map must be .npz or .tif, got {path.name}")
    if phases.ndim != 2 or not np.issubdtype(phases.dtype, np.integer):
        raise VolmlaError(f"phase map {path} must be a 2-D integer image, got {phases.ndim}-D {phases.dtype}")
    size = _check_pixel_size(pixel_size_um if pixel_size_um is not None else stored)
    return phases.astype(np.uint8), size, names


# --------------------------------------------------------------------------- 5. registration


class Registration(NamedTuple):
    """Where a 2-D map lies in the CT volume.

    ``transform`` maps map physical points (col, row in um, SimpleITK order) to CT plane
    physical points; ``params`` describes it (``angle_deg``, ``translation_um`` (x, y),
    ``center_um``, ``scale``). ``index`` is the plane position at the CT plane's centre
    and ``tilt_deg`` its slopes along the plane's rows and columns (see
    :func:`plane_heights`). ``metric`` is SimpleITK's final Mattes value (negative
    mutual information), ``quality`` the shuffled-corrected normalised mutual
    information in [0, 1], ``ok`` whether it converged with quality >= the threshold.
    """

    axis: str
    index: int  # type: ignore[assignment]
    transform: Any
    params: dict[str, Any]
    metric: float
    quality: float
    converged: bool
    stop_condition: str
    iterations: int
    ok: bool
    warnings: list[str]
    plane_scores: dict[int, float]
    map_shape: tuple[int, int]
    pixel_size_um: float
    origin_um: tuple[float, float]
    ct_shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    tilt_deg: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (the transform itself goes to a .tfm file)."""
        return {
            "axis": self.axis, "index": self.index,
            "plane_um": self.index * self.voxel_size_um[AXES.index(self.axis)],
            "transform": self.params, "metric": self.metric, "quality": self.quality,
            "converged": self.converged, "stop_condition": self.stop_condition,
            "iterations": self.iterations, "ok": self.ok, "warnings": list(self.warnings),
            "plane_scores": {str(k): v for k, v in self.plane_scores.items()},
            "map_shape": list(self.map_shape), "pixel_size_um": self.pixel_size_um,
            "origin_um": list(self.origin_um), "ct_shape": list(self.ct_shape),
            "voxel_size_um": list(self.voxel_size_um),
            "tilt_deg": [float(t) for t in self.tilt_deg],
            "tilt_frame": "plane position along axis at (row, col) = index + tan(tilt[0]) (row - r0) "
                          "+ tan(tilt[1]) (col - c0) in physical units, (r0, c0) the CT plane centre",
        }


def mutual_information(a: np.ndarray, b: np.ndarray, *, bins: int = 32) -> float:
    """Mutual information (nats) of two images from their joint histogram.

    Integer images with at most ``bins`` distinct values are binned by value.
    """
    def codes(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).ravel()
        if np.issubdtype(x.dtype, np.integer):
            vals, inv = np.unique(x, return_inverse=True)
            if vals.size <= bins:
                return inv
        x = x.astype(np.float64)
        lo, hi = np.percentile(x, [0.5, 99.5])
        if hi <= lo:
            return np.zeros(x.size, np.int64)
        return np.clip(((x - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)

    ca, cb = codes(a), codes(b)
    joint = np.bincount(ca * (cb.max() + 1) + cb, minlength=(ca.max() + 1) * (cb.max() + 1)).astype(np.float64)
    joint = joint.reshape(ca.max() + 1, cb.max() + 1) / ca.size
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])))


def _entropy(a: np.ndarray, bins: int = 32) -> float:
    return mutual_information(a, a, bins=bins)


def _quality(map_image: np.ndarray, ct_on_map: np.ndarray, valid: np.ndarray, seed: int) -> float:
    """MI above a shuffled map's MI, over the map's entropy: ~0 for no relation, <= 1."""
    a, b = map_image[valid], ct_on_map[valid]
    if a.size < 16:
        return 0.0
    h = _entropy(a)
    if h <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    null = float(np.mean([mutual_information(rng.permutation(a), b) for _ in range(3)]))
    return max(0.0, (mutual_information(a, b) - null) / h)


def plane_heights(
    plane_shape: Sequence[int], *, index: float, tilt_deg: Sequence[float] = (0.0, 0.0),
    voxel_size_um: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Position (in voxels along the plane normal) of a tilted plane at every (row, col).

    The plane passes through ``index`` at the centre of the ``plane_shape`` grid and
    rises by ``tan(tilt_deg[0])`` per micrometre along rows and ``tan(tilt_deg[1])`` along
    columns; ``voxel_size_um`` is (normal, row, col). The in-plane scale change of a
    tilt of a few degrees (1 - cos, under 0.2 % at 3 degrees) is neglected: every
    (row, col) of the plane grid holds one point.

    Examples
    --------
    >>> h = plane_heights((64, 64), index=10, tilt_deg=(2.0, 0.0))
    >>> round(float(h[-1, 0] - h[0, 0]), 2)  # 63 voxels * tan(2 deg)
    2.2
    """
    rows, cols = int(plane_shape[0]), int(plane_shape[1])
    va, vr, vc = (float(v) for v in voxel_size_um)
    r = (np.arange(rows, dtype=np.float64) - (rows - 1) / 2)[:, None]
    c = (np.arange(cols, dtype=np.float64) - (cols - 1) / 2)[None, :]
    return float(index) + math.tan(math.radians(tilt_deg[0])) * r * vr / va + \
        math.tan(math.radians(tilt_deg[1])) * c * vc / va


def _slab(ct: da.Array, axis: int, lo: int, hi: int) -> np.ndarray:
    """Planes ``lo:hi`` along ``axis`` (only those are read), normal axis first."""
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = slice(lo, hi)
    return np.moveaxis(np.asarray(ct[tuple(sl)].compute(), np.float32), axis, 0)


def _oblique(slab: np.ndarray, lo: int, heights: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Sample a slab (normal axis first, starting at plane ``lo``) on a tilted plane."""
    from scipy import ndimage

    rows, cols = np.indices(heights.shape, dtype=np.float64)
    return ndimage.map_coordinates(slab, [heights - lo, rows, cols], order=order, mode="nearest")


def _slab_range(n: int, heights: np.ndarray, pad: int = 1) -> tuple[int, int]:
    return max(0, int(math.floor(heights.min())) - pad), min(n, int(math.ceil(heights.max())) + pad + 1)


def _plane_image(ct: da.Array, axis: int, index: int, tilt: Sequence[float], vs: Sequence[float]) -> np.ndarray:
    """A CT plane, tilted or not (a tilted one by linear interpolation within its slab)."""
    if not any(tilt):
        return np.asarray(_ct_plane(ct, axis, index).compute(), np.float32)
    _, r, c = _plane_axes(AXES[axis])
    h = plane_heights((ct.shape[r], ct.shape[c]), index=index, tilt_deg=tilt, voxel_size_um=(vs[axis], vs[r], vs[c]))
    lo, hi = _slab_range(ct.shape[axis], h)
    return _oblique(_slab(ct, axis, lo, hi), lo, h)


def _plane_axes(axis: str) -> tuple[int, int, int]:
    if axis not in AXES:
        raise VolmlaError(f"axis must be one of {AXES}, got {axis!r}")
    a = AXES.index(axis)
    rows, cols = (i for i in range(3) if i != a)
    return a, rows, cols


def _ct_plane(ct: da.Array, axis: int, index: int) -> da.Array:
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = index
    return ct[tuple(sl)]


def _sitk_image(image: np.ndarray, spacing_rc: Sequence[float], origin_rc: Sequence[float]) -> Any:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0])))
    img.SetOrigin((float(origin_rc[1]), float(origin_rc[0])))
    return img


def _smooth_ct_plane(plane: np.ndarray, spacing_rc: Sequence[float], pixel_size_um: float) -> np.ndarray:
    """Blur a CT plane to the map's resolution (Gaussian, sigma ~ half a map pixel)."""
    from scipy import ndimage

    sigma = [max(0.0, 0.5 * pixel_size_um / s) for s in spacing_rc]
    return ndimage.gaussian_filter(np.asarray(plane, np.float32), sigma=sigma, mode="nearest")


def _resample_to_map(
    plane: np.ndarray,
    spacing_rc: Sequence[float],
    map_shape: Sequence[int],
    pixel_size_um: float,
    origin_um: Sequence[float],
    transform: Any,
    smoothed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A CT plane sampled on the map grid under ``transform`` (map -> CT), with the mask
    of map pixels that fall inside the plane."""
    import SimpleITK as sitk

    if not smoothed:
        plane = _smooth_ct_plane(plane, spacing_rc, pixel_size_um)
    moving = _sitk_image(plane, spacing_rc, (0.0, 0.0))
    ref = _sitk_image(np.zeros(map_shape, np.float32), (pixel_size_um, pixel_size_um), origin_um)
    out = sitk.GetArrayFromImage(sitk.Resample(moving, ref, transform, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
    valid = np.isfinite(out)
    return np.where(valid, out, 0.0).astype(np.float32), valid


def _plane_task(plane: np.ndarray, spacing_rc: tuple[float, float], map_shape: tuple[int, int],
                pixel_size_um: float, origin_um: tuple[float, float], transform_text: str) -> np.ndarray:
    """Dask task: one CT plane -> map grid (NaN outside). The transform travels as text."""
    tx = _transform_from_text(transform_text)
    out, valid = _resample_to_map(plane, spacing_rc, map_shape, pixel_size_um, origin_um, tx)
    return np.where(valid, out, np.nan)


def _transform_to_text(tx: Any) -> str:
    return json.dumps({"params": list(tx.GetParameters()), "fixed": list(tx.GetFixedParameters()),
                       "kind": tx.GetName()})


def _transform_from_text(text: str) -> Any:
    import SimpleITK as sitk

    d = json.loads(text)
    tx = sitk.Similarity2DTransform() if d["kind"] == "Similarity2DTransform" else sitk.Euler2DTransform()
    tx.SetFixedParameters(d["fixed"])
    tx.SetParameters(d["params"])
    return tx


def _score_planes(
    ct: da.Array, axis: int, indices: Sequence[int], spacing_rc: tuple[float, float], map_image: np.ndarray,
    pixel_size_um: float, origin_um: tuple[float, float], transform: Any, seed: int,
) -> dict[int, float]:
    """Quality of each candidate plane; only those planes are read (one Dask compute)."""
    from volmla.cluster import compute

    text = _transform_to_text(transform)
    tasks = [dask.delayed(_plane_task, pure=True)(_ct_plane(ct, axis, i), spacing_rc, map_image.shape,
                                                   pixel_size_um, origin_um, text) for i in indices]
    planes = compute(tasks, desc="reading candidate planes")
    scores = {}
    for i, p in zip(indices, planes, strict=True):
        valid = np.isfinite(p)
        scores[int(i)] = round(_quality(map_image, np.where(valid, p, 0.0), valid, seed), 6)
    return scores


def _tilt_search(
    ct: da.Array, axis: int, index: int, bounds: tuple[int, int], vs: tuple[float, float, float],
    map_image: np.ndarray, pixel_size_um: float, origin_um: tuple[float, float], transform: Any, seed: int,
    max_tilt: float, step: float, center: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, tuple[float, float]]:
    """Best (plane index, tilt) by quality: a tilt grid at planes index-1..index+1, then a
    half-step grid around the winner. One slab read covers every candidate."""
    _, r, c = _plane_axes(AXES[axis])
    shape = (ct.shape[r], ct.shape[c])
    n = ct.shape[axis]
    far = max(abs(center[0]), abs(center[1])) + max_tilt + step
    flat = plane_heights(shape, index=0, tilt_deg=(far, far), voxel_size_um=vs)
    reach = int(math.ceil(float(np.abs(flat).max()))) + 2
    lo, hi = max(bounds[0], index - reach), min(bounds[1], index + reach + 1)
    lo, hi = max(0, min(lo, index - 1)), min(n, max(hi, index + 2))
    slab = _slab(ct, axis, lo, hi)
    scores: dict[tuple[int, float, float], float] = {}

    def score(i: int, tr: float, tc: float) -> None:
        key = (i, round(tr, 4), round(tc, 4))
        if key in scores or not bounds[0] <= i < bounds[1]:
            return
        plane = _oblique(slab, lo, plane_heights(shape, index=i, tilt_deg=(tr, tc), voxel_size_um=vs))
        ct_on_map, valid = _resample_to_map(plane, (vs[1], vs[2]), map_image.shape, pixel_size_um, origin_um,
                                            transform)
        scores[key] = _quality(map_image, ct_on_map, valid, seed)

    grid = np.arange(-max_tilt, max_tilt + 1e-9, step)
    for i in (index - 1, index, index + 1):
        for tr in grid:
            for tc in grid:
                score(i, center[0] + float(tr), center[1] + float(tc))
    i0, tr0, tc0 = max(scores, key=scores.get)  # type: ignore[arg-type]
    half = step / 2
    for i in (i0 - 1, i0, i0 + 1):
        for dr in (-half, 0.0, half):
            for dc in (-half, 0.0, half):
                score(i, tr0 + dr, tc0 + dc)
    best = max(scores, key=scores.get)  # type: ignore[arg-type]
    logger.info("tilt search: %d candidates, best plane %d tilt (%.2f, %.2f) deg (quality %.3f, untilted %.3f)",
                len(scores), best[0], best[1], best[2], scores[best], scores.get((index, 0.0, 0.0), float("nan")))
    return best[0], (best[1], best[2])


def _fine_register(
    map_image: np.ndarray, pixel_size_um: float, origin_um: tuple[float, float], plane: np.ndarray,
    spacing_rc: tuple[float, float], initial: Any, *, similarity: bool, iterations: int, bins: int,
) -> tuple[Any, float, str, int, bool]:
    """SimpleITK: Mattes MI, linear interpolation, multi-resolution, rigid/similarity 2-D."""
    import SimpleITK as sitk

    fixed = _sitk_image(map_image, (pixel_size_um, pixel_size_um), origin_um)
    moving = _sitk_image(_smooth_ct_plane(plane, spacing_rc, pixel_size_um), spacing_rc, (0.0, 0.0))
    if similarity and initial.GetName() != "Similarity2DTransform":
        tx = sitk.Similarity2DTransform()
        tx.SetCenter(initial.GetCenter())
        tx.SetAngle(initial.GetAngle())
        tx.SetTranslation(initial.GetTranslation())
    else:
        tx = _transform_from_text(_transform_to_text(initial))
    levels = 1
    while levels < 3 and min(map_image.shape) // 2**levels >= 24:
        levels += 1
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2**i for i in reversed(range(levels))])
    method.SetSmoothingSigmasPerLevel([float(2**i) / 2 if i else 0.0 for i in reversed(range(levels))])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(tx, inPlace=True)
    method.Execute(fixed, moving)
    stop = method.GetOptimizerStopConditionDescription()
    n_iter = int(method.GetOptimizerIteration())
    converged = "Maximum number of iterations" not in stop
    return tx, float(method.GetMetricValue()), stop, n_iter, converged


def _transform_params(tx: Any) -> dict[str, Any]:
    angle = float(tx.GetAngle())
    return {
        "kind": "similarity" if tx.GetName() == "Similarity2DTransform" else "rigid",
        "angle_deg": math.degrees(angle),
        "translation_um": [float(v) for v in tx.GetTranslation()],
        "center_um": [float(v) for v in tx.GetCenter()],
        "scale": float(tx.GetScale()) if tx.GetName() == "Similarity2DTransform" else 1.0,
        "frame": "map (x=col, y=row) -> CT plane (x=col, y=row), micrometres",
    }


def register_map(
    ct: xr.DataArray,
    map_image: np.ndarray,
    *,
    pixel_size_um: float,
    origin_um: Sequence[float] = (0.0, 0.0),
    axis: Axis = "z",
    search: tuple[int, int] | None = None,
    step: int | None = None,
    transform: Literal["rigid", "similarity"] = "rigid",
    min_quality: float = 0.05,
    accept_poor: bool = False,
    iterations: int = 300,
    bins: int | None = None,
    seed: int = 0,
    max_tilt_deg: float = 0.0,
    tilt_step_deg: float = 1.0,
) -> Registration:
    """Find a 2-D map's plane in a CT volume and register the map onto it.

    Parameters
    ----------
    ct
        The CT intensity volume (lazy; only candidate planes are read).
    map_image
        The map to register: a phase map (integers) or one contrast channel.
    pixel_size_um
        Map pixel edge in micrometres.
    origin_um
        Physical (row, col) of map pixel (0, 0)'s centre before registration.
    axis
        The axis the map's plane is normal to.
    search
        Candidate plane indices ``[lo, hi)`` (default the whole axis).
    step
        Coarse search step in planes (default 1 for <= 128 candidates, else ~64 steps);
        every plane around the coarse best is then scored.
    transform
        ``"rigid"`` (rotation + shift) or ``"similarity"`` (plus isotropic scale).
    min_quality
        Least acceptable quality (shuffle-corrected normalised mutual information).
    accept_poor
        Keep a non-converged or poor fit (with a warning) instead of raising.
    iterations
        Optimizer iterations per resolution level.
    bins
        Mattes histogram bins (default 16 for maps under 10^4 pixels, else 32).
    seed
        Seed of the shuffles that estimate chance mutual information.
    max_tilt_deg
        Also search tilts of the plane about its two in-plane axes within
        +/- this many degrees (0: the plane is normal to ``axis``). Each candidate plane is
        sampled obliquely (linear interpolation) from the slab of planes it crosses, read
        once; the best tilt is refined on a half-step grid and the fine registration is
        redone on the tilted plane.
    tilt_step_deg
        Step of the tilt grid.

    Returns
    -------
    Registration

    Examples
    --------
    >>> reg = register_map(ct, phases_map, pixel_size_um=40.0, axis="z")  # doctest: +SKIP
    >>> reg.index, reg.params["angle_deg"], reg.quality  # doctest: +SKIP
    """
    import SimpleITK as sitk

    if not isinstance(ct, xr.DataArray) or ct.ndim != 3:
        raise VolmlaError("ct must be a 3-D volume opened with volmla.io.open_volume")
    map_image = np.asarray(map_image)
    if map_image.ndim != 2 or min(map_image.shape) < 8:
        raise VolmlaError(f"map must be a 2-D image of at least 8x8 pixels, got shape {map_image.shape}")
    if transform not in ("rigid", "similarity"):
        raise VolmlaError(f"transform must be 'rigid' or 'similarity', got {transform!r}")
    pixel_size_um = _check_pixel_size(pixel_size_um)
    a, r, c = _plane_axes(axis)
    vs = tuple(float(v) for v in ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0)))
    spacing_rc = (vs[r], vs[c])
    n = ct.shape[a]
    lo, hi = (0, n) if search is None else (int(search[0]), int(search[1]))
    if not (0 <= lo < hi <= n):
        raise VolmlaError(f"search range along {axis} must lie within [0, {n}), got [{lo}, {hi})")
    if step is None:
        step = 1 if hi - lo <= 128 else int(math.ceil((hi - lo) / 64))
    if step < 1:
        raise VolmlaError(f"step must be >= 1, got {step}")
    if bins is None:
        bins = 16 if map_image.size < 10_000 else 32
    if not (math.isfinite(max_tilt_deg) and 0 <= max_tilt_deg <= 15):
        raise VolmlaError(f"max_tilt_deg must lie in [0, 15] degrees, got {max_tilt_deg}")
    if not (math.isfinite(tilt_step_deg) and tilt_step_deg > 0):
        raise VolmlaError(f"tilt_step_deg must be positive, got {tilt_step_deg}")
    origin = (float(origin_um[0]), float(origin_um[1]))
    map_f = map_image.astype(np.float32)
    data = ct.data

    center = (origin[1] + (map_image.shape[1] - 1) * pixel_size_um / 2,
              origin[0] + (map_image.shape[0] - 1) * pixel_size_um / 2)
    tx = sitk.Euler2DTransform()
    tx.SetCenter(center)
    # 1. coarse plane search, identity in-plane transform
    scores = _score_planes(data, a, list(range(lo, hi, step)), spacing_rc, map_image, pixel_size_um, origin, tx, seed)
    best = max(scores, key=scores.get)  # type: ignore[arg-type]
    if step > 1:
        near = [i for i in range(max(lo, best - step + 1), min(hi, best + step)) if i not in scores]
        scores.update(_score_planes(data, a, near, spacing_rc, map_image, pixel_size_um, origin, tx, seed))
        best = max(scores, key=scores.get)  # type: ignore[arg-type]
    logger.info("coarse plane search along %s: best %d (quality %.3f)", axis, best, scores[best])
    # 2. fine 2-D registration on that plane; 3. re-score neighbours under the fit
    fitted_on = -1
    for _ in range(3):
        plane = np.asarray(_ct_plane(data, a, best).compute(), np.float32)
        tx, metric, stop, n_iter, converged = _fine_register(
            map_f, pixel_size_um, origin, plane, spacing_rc, tx,
            similarity=transform == "similarity", iterations=iterations, bins=bins)
        fitted_on = best
        near = list(range(max(lo, best - 2), min(hi, best + 3)))
        local = _score_planes(data, a, near, spacing_rc, map_image, pixel_size_um, origin, tx, seed)
        scores.update(local)
        new = max(local, key=local.get)  # type: ignore[arg-type]
        if new == best:
            break
        logger.info("plane %d scores better than %d under the fitted transform", new, best)
        best = new
    if fitted_on != best:
        plane = np.asarray(_ct_plane(data, a, best).compute(), np.float32)
        tx, metric, stop, n_iter, converged = _fine_register(
            map_f, pixel_size_um, origin, plane, spacing_rc, tx,
            similarity=transform == "similarity", iterations=iterations, bins=bins)
    tilt: tuple[float, float] = (0.0, 0.0)
    if max_tilt_deg > 0:
        # 4. tilt search on the slab the tilted planes cross, then refit on the best one
        best, tilt = _tilt_search(data, a, best, (lo, hi), (vs[a], vs[r], vs[c]), map_image, pixel_size_um,
                                  origin, tx, seed, max_tilt_deg, tilt_step_deg)
        for attempt in range(3):  # refit in-plane on the tilted plane, then refine the tilt under that fit
            plane = _plane_image(data, a, best, tilt, vs)
            tx, metric, stop, n_iter, converged = _fine_register(
                map_f, pixel_size_um, origin, plane, spacing_rc, tx,
                similarity=transform == "similarity", iterations=iterations, bins=bins)
            if attempt == 2:
                break
            found = _tilt_search(data, a, best, (lo, hi), (vs[a], vs[r], vs[c]), map_image, pixel_size_um,
                                 origin, tx, seed, tilt_step_deg / 2, tilt_step_deg / 4, center=tilt)
            if found == (best, tilt):
                break
            best, tilt = found
    ct_on_map, valid = _resample_to_map(plane, spacing_rc, map_image.shape, pixel_size_um, origin, tx)
    quality = _quality(map_image, ct_on_map, valid, seed)
    warnings = []
    if not converged:
        warnings.append(f"registration did not converge ({stop})")
    if quality < min_quality:
        warnings.append(f"registration quality {quality:.3f} is below min_quality {min_quality} "
                        f"(Mattes metric {metric:.4f}): the map may not match this volume")
    if valid.mean() < 0.5:
        warnings.append(f"only {valid.mean():.0%} of the map falls inside the CT plane")
    ok = not warnings
    if not ok and not accept_poor:
        raise VolmlaError(f"registration of the map into {axis}={best} is poor: {'; '.join(warnings)}; "
                          "pass --accept-poor to keep it")
    for w in warnings:
        logger.warning("%s", w)
    return Registration(
        axis=axis, index=int(best), transform=tx, params=_transform_params(tx), metric=metric,
        quality=round(quality, 6), converged=converged, stop_condition=stop, iterations=n_iter, ok=ok,
        warnings=warnings, plane_scores=dict(sorted(scores.items())), map_shape=(int(map_image.shape[0]), int(map_image.shape[1])),
        pixel_size_um=pixel_size_um, origin_um=origin, ct_shape=(int(ct.shape[0]), int(ct.shape[1]), int(ct.shape[2])),
        voxel_size_um=(vs[0], vs[1], vs[2]), tilt_deg=(round(tilt[0], 4), round(tilt[1], 4)))


def save_registration(reg: Registration, path: str | Path, *, labels_plane: np.ndarray | None = None,
                      phase_names: Mapping[int, str] | None = None) -> dict[str, Path]:
    """Write ``NAME.json`` (the record), ``NAME.tfm`` (the SimpleITK transform) and, when
    given, ``NAME.labels.tif`` (the label plane on CT voxels, 0 = unlabelled)."""
    import SimpleITK as sitk
    import tifffile

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise VolmlaError(f"registration output must end in .json, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tfm = path.with_suffix(".tfm")
    sitk.WriteTransform(reg.transform, str(tfm))
    record = reg.to_dict()
    record["transform_file"] = tfm.name
    out = {"json": path, "tfm": tfm}
    if labels_plane is not None:
        tif = path.with_suffix(".labels.tif")
        tifffile.imwrite(tif, np.asarray(labels_plane, np.uint8))
        record["labels_plane"] = tif.name
        record["label_offset"] = SPARSE_LABEL_OFFSET
        out["labels"] = tif
    if phase_names is not None:
        record["phases"] = {str(k): v for k, v in phase_names.items()}
    path.write_text(json.dumps(record, indent=2))
    return out


def load_registration(path: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    """Read a registration JSON and its label plane: returns (record, labels plane)."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"registration {path} does not exist")
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise VolmlaError(f"registration {path} is not JSON: {exc}") from None
    if "labels_plane" not in record or "axis" not in record or "index" not in record:
        raise VolmlaError(f"registration {path} has no label plane: make it with `volmla correlate register`")
    tif = path.parent / record["labels_plane"]
    if not tif.is_file():
        raise VolmlaError(f"label plane {tif} named by {path.name} does not exist")
    return record, tifffile.imread(tif)


# --------------------------------------------------------------------------- 6. labels


def map_to_plane(phases: np.ndarray, reg: Registration) -> np.ndarray:
    """Resample a phase map into its CT plane's voxel grid (nearest neighbour).

    Returns uint8 ``phase + SPARSE_LABEL_OFFSET`` where the map covers the plane, 0
    elsewhere and where the map is :data:`UNLABELLED`, with the plane's shape (the two
    axes other than ``reg.axis``). For a tilted registration the plane grid is the
    projection of the tilted plane (see :class:`LabelPlane`).
    """
    import SimpleITK as sitk

    phases = np.asarray(phases)
    if phases.shape != tuple(reg.map_shape):
        raise VolmlaError(f"phase map shape {phases.shape} differs from the registered map {tuple(reg.map_shape)}")
    a, r, c = _plane_axes(reg.axis)
    spacing_rc = (reg.voxel_size_um[r], reg.voxel_size_um[c])
    values = np.where(phases == UNLABELLED, 0, phases.astype(np.float32) + SPARSE_LABEL_OFFSET)
    moving = _sitk_image(values, (reg.pixel_size_um,) * 2, reg.origin_um)
    ref = _sitk_image(np.zeros((reg.ct_shape[r], reg.ct_shape[c]), np.float32), spacing_rc, (0.0, 0.0))
    out = sitk.Resample(moving, ref, reg.transform.GetInverse(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def erode_labels(labels: np.ndarray, margin: int) -> np.ndarray:
    """Unlabel every pixel within ``margin`` pixels (chessboard) of a label change.

    Unlabelled pixels (0) count as a label here, so the map's outer edge is eroded too.
    """
    from scipy import ndimage

    if not isinstance(margin, int | np.integer) or margin < 0:
        raise VolmlaError(f"erode margin must be a non-negative integer, got {margin!r}")
    labels = np.asarray(labels)
    if margin == 0:
        return labels.copy()
    size = 2 * int(margin) + 1
    same = ndimage.maximum_filter(labels, size=size, mode="nearest") == ndimage.minimum_filter(
        labels, size=size, mode="nearest")
    return np.where(same, labels, 0).astype(labels.dtype)


class LabelPlane(NamedTuple):
    """One labelled plane: ``axis`` name, ``index`` along it (at the plane's centre),
    ``labels`` 2-D uint8, optional ``tilt_deg`` (see :func:`plane_heights`) and the
    volume's ``voxel_size_um`` (z, y, x; needed for a tilt on anisotropic voxels). A
    tilted plane's label at (row, col) goes to the nearest voxel on the tilted plane."""

    axis: str
    index: int  # type: ignore[assignment]
    labels: np.ndarray
    tilt_deg: tuple[float, float] = (0.0, 0.0)
    voxel_size_um: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def voxel_planes(self, n: int) -> list[tuple[int, np.ndarray]]:
        """(index, labels) pieces on untilted planes: one for an untilted plane, one per
        voxel plane a tilted plane crosses (labels outside the volume are dropped)."""
        lab = np.asarray(self.labels)
        if not any(self.tilt_deg):
            return [(int(self.index), lab)]
        a, r, c = _plane_axes(self.axis)
        vs = self.voxel_size_um
        h = np.rint(plane_heights(lab.shape, index=self.index, tilt_deg=self.tilt_deg,
                                  voxel_size_um=(vs[a], vs[r], vs[c]))).astype(np.int64)
        return [(int(v), np.where(h == v, lab, 0).astype(lab.dtype)) for v in np.unique(h) if 0 <= v < n]


def _fill_block(block: np.ndarray, entries: Mapping[tuple[int, ...], list[Any]],
                block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Per-block kernel: zeros, plus the parts of the planes that cross this block."""
    if block_info is None:  # dask's meta probe
        return block
    idx = tuple(block_info[None]["chunk-location"])
    todo = entries.get(idx)
    if not todo:
        return block
    out = np.zeros(block.shape, np.uint8)
    for axis, offset, piece in todo:
        sl: list[Any] = [slice(None)] * 3
        sl[axis] = offset
        region = out[tuple(sl)]
        np.copyto(region, piece, where=piece > 0)
    return out


def sparse_labels(
    shape: Sequence[int],
    planes: Sequence[LabelPlane],
    *,
    chunks: Any = None,
    erode: int = 0,
) -> da.Array:
    """A lazy, mostly-zero uint8 label volume holding the given planes.

    Parameters
    ----------
    shape
        Volume shape (z, y, x), the CT's.
    planes
        Labelled planes (0 = unlabelled, ``phase + 1`` labelled). Later planes win where
        two planes cross.
    chunks
        Dask chunks (the CT's ``.data.chunks`` keeps blocks aligned).
    erode
        Margin (pixels) around label changes that is unlabelled.

    Returns
    -------
    dask.array.Array
        Only blocks crossed by a plane compute anything; the others are zeros.

    Examples
    --------
    >>> vol = sparse_labels((64, 64, 64), [LabelPlane("z", 0, plane)], chunks=32)  # doctest: +SKIP
    """
    shape = tuple(int(s) for s in shape)
    zeros = da.zeros(shape, dtype=np.uint8, chunks=chunks if chunks is not None else "auto")
    bounds = [np.cumsum((0, *c)) for c in zeros.chunks]
    entries: dict[tuple[int, ...], list[Any]] = {}
    for plane in planes:
        a, r, c = _plane_axes(plane.axis)
        lab = np.asarray(plane.labels)
        want = (shape[r], shape[c])
        if lab.shape != want:
            raise VolmlaError(f"label plane {plane.axis}={plane.index} has shape {lab.shape}, the volume needs {want}")
        if not 0 <= plane.index < shape[a]:
            raise VolmlaError(f"plane {plane.axis}={plane.index} lies outside the volume (0..{shape[a] - 1})")
        lab = erode_labels(lab.astype(np.uint8), erode)
        for index, sub in plane._replace(labels=lab).voxel_planes(shape[a]):
            ia = int(np.searchsorted(bounds[a], index, side="right") - 1)
            for ir in range(len(zeros.chunks[r])):
                for ic in range(len(zeros.chunks[c])):
                    piece = sub[bounds[r][ir]:bounds[r][ir + 1], bounds[c][ic]:bounds[c][ic + 1]]
                    if not piece.any():
                        continue
                    idx = [0, 0, 0]
                    idx[a], idx[r], idx[c] = ia, ir, ic
                    entries.setdefault(tuple(idx), []).append((a, index - int(bounds[a][ia]), piece))
    logger.info("sparse labels: %d planes touch %d of %d blocks", len(planes), len(entries), zeros.npartitions)
    return zeros.map_blocks(_fill_block, dask.delayed(entries, pure=True), dtype=np.uint8,
                            meta=np.empty((0, 0, 0), np.uint8))


def labels_volume(
    ct: xr.DataArray, planes: Sequence[LabelPlane], *, erode: int = 0,
    phases: Mapping[int, str] | None = None,
) -> xr.DataArray:
    """:func:`sparse_labels` with the CT's shape, chunks and coordinates, as an
    ``xr.DataArray`` of kind ``labels`` ready for :func:`volmla.io.write_volume`."""
    data = sparse_labels(ct.shape, planes, chunks=ct.data.chunks, erode=erode)
    attrs = {
        "voxel_size_um": tuple(ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0))),
        "unit": "micrometer", "kind": "labels",
        "phases": dict(phases or {}),
        "provenance": [{"step": "correlate.labels",
                        "planes": [[p.axis, int(p.index), *[float(t) for t in p.tilt_deg]] for p in planes],
                        "erode": int(erode), "label_offset": SPARSE_LABEL_OFFSET}],
    }
    return xr.DataArray(data, dims=ct.dims, coords=ct.coords, attrs=attrs, name="labels")


# --------------------------------------------------------------------------- 7. one run

_RUN_KEYS = {"ct", "out", "minerals", "erode", "planes", "cluster_table", "xrd", "seed", "k", "denoise",
             "transform", "min_quality", "accept_poor", "max_tilt_deg", "tilt_step_deg"}
_PLANE_KEYS = {"name", "maps", "pixel_size_um", "axis", "search", "step", "origin_um", "truth", "resample",
               "cluster_table", "xrd", "seed", "k", "denoise", "transform", "min_quality", "accept_poor",
               "max_tilt_deg", "tilt_step_deg"}
_INHERITED = ("cluster_table", "xrd", "seed", "k", "denoise", "transform", "min_quality", "accept_poor",
              "max_tilt_deg", "tilt_step_deg")
RUN_DEFAULTS: dict[str, Any] = {"erode": 2, "seed": 0, "k": None, "denoise": list(LIGHT_ELEMENTS),
                                "transform": "rigid", "min_quality": 0.05, "accept_poor": False,
                                "max_tilt_deg": 0.0, "tilt_step_deg": 1.0, "cluster_table": None, "xrd": None}


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read and check a ``volmla correlate run`` YAML file (one-line errors).

    Schema (relative paths are relative to the file)::

        ct: ct.zarr                  # CT intensity volume (OME-Zarr), required
        out: correlate_out/          # output folder (or -o on the command line)
        minerals: [quartz, feldspar, pyrite]   # phase order; void is phase 0
        erode: 2                     # label margin (CT voxels) around label changes
        seed: 0                      # k-means / shuffle seed
        k: null                      # k-means clusters (default minerals + 1)
        denoise: [Na, Mg]            # channels to bilateral-filter ([] = none)
        transform: rigid             # rigid | similarity
        min_quality: 0.05            # registration quality threshold
        accept_poor: false           # keep poor fits (flagged) instead of failing
        max_tilt_deg: 0              # tilt search range (0 = plane normal to axis)
        tilt_step_deg: 1.0
        cluster_table: {0: void, 1: quartz, ...}   # optional, or a YAML file
        xrd: {quartz: 0.4, feldspar: 0.5, pyrite: 0.1}  # optional, or a YAML file
        planes:                      # one entry per mapped face
          - name: top                # default plane0, plane1, ...
            maps: [Fe.tif, Si.tif]   # TIFFs named by element, or an NPZ stack
            pixel_size_um: 20        # unless the NPZ carries it
            axis: z                  # plane normal
            search: [0, 8]           # candidate planes [lo, hi) (default whole axis)
            step: null               # coarse search step
            origin_um: [0, 0]        # map pixel (0, 0) centre in the CT plane frame
            truth: top_truth.tif     # optional phase ids on the map grid -> ARI
            # any of seed, k, denoise, transform, min_quality, accept_poor,
            # max_tilt_deg, tilt_step_deg, cluster_table, xrd overrides the global value

    Returns
    -------
    dict
        The checked configuration with defaults filled in and paths resolved.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise VolmlaError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return check_run_config(raw, base=path.parent)


def _mapping_or_file(value: Any, base: Path, what: str) -> dict[Any, Any] | None:
    import yaml

    if value is None:
        return None
    if isinstance(value, str):
        file = base / value
        if not file.is_file():
            raise VolmlaError(f"{what}: file {file} does not exist")
        try:
            value = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise VolmlaError(f"{what}: {file} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, dict) or not value:
        raise VolmlaError(f"{what} must be a non-empty mapping (or a YAML file of one), got {value!r}")
    return value


def check_run_config(raw: Any, *, base: Path = Path(".")) -> dict[str, Any]:
    """Check a ``correlate run`` configuration mapping (see :func:`load_run_config`)."""
    if not isinstance(raw, dict):
        raise VolmlaError(f"config must be a mapping of keys {sorted(_RUN_KEYS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _RUN_KEYS)
    if unknown:
        raise VolmlaError(f"config: unknown key(s) {unknown}; allowed {sorted(_RUN_KEYS)}")
    for key in ("ct", "minerals", "planes"):
        if key not in raw:
            raise VolmlaError(f"config: missing required key {key!r}")
    cfg = {**RUN_DEFAULTS, **raw}
    cfg["ct"] = base / str(raw["ct"])
    cfg["out"] = base / str(raw["out"]) if raw.get("out") is not None else None
    minerals = raw["minerals"]
    if isinstance(minerals, str):
        minerals = [m.strip() for m in minerals.split(",") if m.strip()]
    if not isinstance(minerals, list) or not minerals or not all(isinstance(m, str) for m in minerals):
        raise VolmlaError(f"config: minerals must be a list of names, got {raw['minerals']!r}")
    cfg["minerals"] = minerals
    if not isinstance(cfg["erode"], int) or isinstance(cfg["erode"], bool) or cfg["erode"] < 0:
        raise VolmlaError(f"config: erode must be a non-negative integer, got {cfg['erode']!r}")
    planes = raw["planes"]
    if not isinstance(planes, list) or not planes:
        raise VolmlaError(f"config: planes must be a non-empty list of maps entries, got {planes!r}")
    checked = []
    for i, entry in enumerate(planes):
        where = f"config: planes[{i}]"
        if not isinstance(entry, dict):
            raise VolmlaError(f"{where} must be a mapping with at least 'maps', got {entry!r}")
        bad = sorted(set(entry) - _PLANE_KEYS)
        if bad:
            raise VolmlaError(f"{where}: unknown key(s) {bad}; allowed {sorted(_PLANE_KEYS)}")
        if "maps" not in entry:
            raise VolmlaError(f"{where}: missing required key 'maps'")
        maps = entry["maps"] if isinstance(entry["maps"], list) else [entry["maps"]]
        if not maps or not all(isinstance(m, str) for m in maps):
            raise VolmlaError(f"{where}: maps must be a file or a list of files, got {entry['maps']!r}")
        plane = {k: entry.get(k, cfg[k]) for k in _INHERITED}
        plane.update(name=str(entry.get("name", f"plane{i}")), maps=[base / m for m in maps],
                     pixel_size_um=entry.get("pixel_size_um"), axis=entry.get("axis", "z"),
                     search=entry.get("search"), step=entry.get("step"),
                     origin_um=entry.get("origin_um"), resample=bool(entry.get("resample", False)),
                     truth=base / str(entry["truth"]) if entry.get("truth") is not None else None)
        if plane["axis"] not in AXES:
            raise VolmlaError(f"{where}: axis must be one of {AXES}, got {plane['axis']!r}")
        if plane["search"] is not None and (not isinstance(plane["search"], list) or len(plane["search"]) != 2
                                            or not all(isinstance(v, int) for v in plane["search"])):
            raise VolmlaError(f"{where}: search must be [lo, hi] plane indices, got {plane['search']!r}")
        if plane["transform"] not in ("rigid", "similarity"):
            raise VolmlaError(f"{where}: transform must be 'rigid' or 'similarity', got {plane['transform']!r}")
        if plane["k"] is not None and (not isinstance(plane["k"], int) or plane["k"] < len(minerals) + 1):
            raise VolmlaError(f"{where}: k must be an integer >= {len(minerals) + 1} (minerals + void), "
                              f"got {plane['k']!r}")
        denoise = plane["denoise"] or []
        if isinstance(denoise, str):
            denoise = [e.strip() for e in denoise.split(",") if e.strip()]
        plane["denoise"] = list(denoise)
        table = _mapping_or_file(plane["cluster_table"], base, f"{where}: cluster_table")
        try:
            plane["cluster_table"] = {int(c): str(m) for c, m in table.items()} if table else None
        except (TypeError, ValueError):
            raise VolmlaError(f"{where}: cluster_table must map cluster numbers to mineral names") from None
        xrd = _mapping_or_file(plane["xrd"], base, f"{where}: xrd")
        try:
            plane["xrd"] = {str(m): float(f) for m, f in xrd.items()} if xrd else None
        except (TypeError, ValueError):
            raise VolmlaError(f"{where}: xrd must map mineral names to abundances") from None
        for m in [*plane["maps"], *([plane["truth"]] if plane["truth"] else [])]:
            if not m.is_file():
                raise VolmlaError(f"{where}: file {m} does not exist")
        checked.append(plane)
    names = [p["name"] for p in checked]
    if len(set(names)) != len(names):
        raise VolmlaError(f"config: plane names must be distinct, got {names}")
    cfg["planes"] = checked
    return cfg


def _read_truth(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import tifffile

    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            key = "truth" if "truth" in npz.files else "phases" if "phases" in npz.files else None
            if key is None:
                raise VolmlaError(f"truth {path.name} must hold a 'truth' or 'phases' array")
            truth = npz[key]
    else:
        truth = tifffile.imread(path)
    if truth.shape != shape:
        raise VolmlaError(f"truth {path.name} has shape {truth.shape}, the maps have {shape}")
    return np.asarray(truth)


def run_correlation(ct: xr.DataArray, cfg: Mapping[str, Any], *, out_dir: str | Path | None = None
                    ) -> tuple[xr.DataArray, dict[str, Any]]:
    """Maps -> denoise -> k-means -> assignment -> registration -> labels, for every plane
    of a checked config (:func:`check_run_config`).

    Parameters
    ----------
    ct
        The CT intensity volume (lazy).
    cfg
        Checked configuration.
    out_dir
        Where each plane's mineral map and registration go (``planes/<name>/``); none
        written when None.

    Returns
    -------
    (xr.DataArray, dict)
        The lazy sparse label volume and the report (per plane: assignment, confidence,
        minerals not found, ARI against a given truth, registration metric, quality,
        convergence, plane, tilt, rotation, shift, warnings).
    """
    from sklearn.metrics import adjusted_rand_score

    minerals = list(cfg["minerals"])
    label_planes: list[LabelPlane] = []
    records = []
    phase_names = {i + 1: m for i, m in enumerate(minerals)}
    vs = tuple(float(v) for v in ct.attrs.get("voxel_size_um", (1.0, 1.0, 1.0)))
    for plane in cfg["planes"]:
        name = plane["name"]
        try:
            maps = read_maps(plane["maps"], pixel_size_um=plane["pixel_size_um"], resample=plane["resample"])
            if plane["origin_um"] is not None:
                maps = maps._replace(origin_um=(float(plane["origin_um"][0]), float(plane["origin_um"][1])))
            if plane["denoise"]:
                maps = denoise_maps(maps, elements=plane["denoise"])
            k = plane["k"] if plane["k"] is not None else len(minerals) + 1
            mm = kmeans_minerals(maps, k=k, seed=plane["seed"])
            assignment = assign_minerals(mm, minerals=minerals, table=plane["cluster_table"])
            phases = assignment.phase_map(mm.clusters)
            rec: dict[str, Any] = {
                "name": name, "maps": [str(m) for m in plane["maps"]], "elements": list(maps.elements),
                "k": k, "assignment_method": assignment.method,
                "assignment": {str(c): m for c, m in assignment.mineral.items()},
                "confidence": {str(c): round(v, 4) for c, v in assignment.confidence.items()},
                "abundance": {str(c): round(v, 6) for c, v in mm.abundances.items()},
                "minerals_not_found": list(assignment.not_found),
                "unlabelled_clusters": list(assignment.unlabelled),
            }
            if plane["truth"] is not None:
                truth = _read_truth(plane["truth"], mm.clusters.shape)
                rec["ari"] = round(float(adjusted_rand_score(truth.ravel(), mm.clusters.ravel())), 4)
                kept = phases != UNLABELLED
                rec["map_accuracy"] = round(float(np.mean(phases[kept] == truth[kept])), 4) if kept.any() else 0.0
            if plane["xrd"] is not None:
                rec["xrd"] = compare_abundances(mm, assignment, plane["xrd"])
            search = tuple(plane["search"]) if plane["search"] is not None else None
            reg = register_map(ct, registration_image(phases), pixel_size_um=maps.pixel_size_um,
                               origin_um=maps.origin_um, axis=plane["axis"], search=search,
                               step=plane["step"], transform=plane["transform"], min_quality=plane["min_quality"],
                               accept_poor=plane["accept_poor"], seed=plane["seed"],
                               max_tilt_deg=float(plane["max_tilt_deg"]), tilt_step_deg=float(plane["tilt_step_deg"]))
        except VolmlaError as exc:
            raise VolmlaError(f"plane {name!r}: {exc}") from None
        labels = map_to_plane(phases, reg)
        label_planes.append(LabelPlane(reg.axis, reg.index, labels, reg.tilt_deg, vs))  # type: ignore[arg-type]
        rec.update({
            "axis": reg.axis, "plane": reg.index, "tilt_deg": list(reg.tilt_deg),
            "angle_deg": round(reg.params["angle_deg"], 4),
            "translation_um": [round(v, 3) for v in reg.params["translation_um"]],
            "scale": reg.params["scale"], "metric": reg.metric, "quality": reg.quality,
            "converged": reg.converged, "stop_condition": reg.stop_condition, "ok": reg.ok,
            "labelled_fraction": round(float(np.mean(erode_labels(labels, int(cfg["erode"])) > 0)), 4),
            "warnings": [*assignment.warnings, *reg.warnings],
        })
        if out_dir is not None:
            folder = Path(out_dir) / "planes" / name
            save_mineral_map(folder, maps, mm, assignment)
            save_registration(reg, folder / "registration.json", labels_plane=labels, phase_names=phase_names)
        records.append(rec)
    volume = labels_volume(ct, label_planes, erode=int(cfg["erode"]), phases=phase_names)
    report = {"ct": str(cfg["ct"]), "minerals": minerals, "erode": int(cfg["erode"]),
              "label_offset": SPARSE_LABEL_OFFSET, "phases": {str(k): v for k, v in phase_names.items()},
              "planes": records, "ok": all(r["ok"] for r in records)}
    return volume, report


def report_markdown(report: Mapping[str, Any]) -> str:
    """A short Markdown rendering of a :func:`run_correlation` report."""
    lines = ["# Correlative labelling", "", f"CT: `{report['ct']}`  ", f"Minerals: {', '.join(report['minerals'])}  ",
             f"Label margin (erode): {report['erode']} voxels", "",
             "| plane | found | tilt (deg) | angle (deg) | shift (um) | quality | metric | converged | ARI | "
             "not found | labelled |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["planes"]:
        lines.append(
            f"| {r['name']} | {r['axis']}={r['plane']} | {r['tilt_deg'][0]:.2f}, {r['tilt_deg'][1]:.2f} | "
            f"{r['angle_deg']:.2f} | {r['translation_um'][0]:.1f}, {r['translation_um'][1]:.1f} | {r['quality']:.3f} | "
            f"{r['metric']:.4f} | {'yes' if r['converged'] else 'NO'} | {r.get('ari', '-')} | "
            f"{', '.join(r['minerals_not_found']) or '-'} | {r['labelled_fraction']:.1%} |")
    for r in report["planes"]:
        lines += ["", f"## {r['name']}", "", "| cluster | mineral | confidence | abundance |", "|---|---|---|---|"]
        lines += [f"| {c} | {m} | {r['confidence'][c]:.2f} | {r['abundance'][c]:.3f} |" for c, m in r["assignment"].items()]
        lines += [f"- warning: {w}" for w in r["warnings"]]
    return "\n".join(lines) + "\n"
