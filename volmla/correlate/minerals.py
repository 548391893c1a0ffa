"""Mineral map: k-means on the element channels, clusters named as minerals, abundances.

1. **k-means** (:func:`kmeans_minerals`): the channels, in units of their pixel noise
   sigma (so channels with no real contrast weigh little) (optionally with the
   registered CT slice as one more channel) are clustered by k-means, ``k`` = minerals +
   void, best of ``n_init`` initialisations; clusters are numbered by increasing mean
   standardised intensity (cluster 0 is the most void-like). The centroid table is given
   in the original units, with the abundances.
2. **Assignment** (:func:`assign_minerals`): clusters become minerals either from a user
   table (cluster -> mineral) or automatically: the standardised centroid profiles are
   turned into relative element levels (0 lowest .. 1 highest cluster; an element whose
   range is within the noise stays near 0) and compared with the signatures' levels
   (:data:`SIGNATURES`; similarity = 1 - RMS difference), matched one-to-one by the
   Hungarian method (:func:`scipy.optimize.linear_sum_assignment`); a cluster whose best
   match is clearly better takes it (two clusters may share a mineral when another named
   mineral is absent from the face), a cluster that matches nothing well is left
   unlabelled (:data:`UNLABELLED`), and minerals no cluster took are reported as not
   found. The confidence of a match is the margin between its similarity and the best
   other mineral's.
3. **Abundances** (:func:`compare_abundances`): an XRD abundance table, when given, is
   compared with the map's abundances.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from volmla.correlate.maps import ElementMaps, _noise_sigma
from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

__all__ = [
    "SIGNATURES",
    "UNLABELLED",
    "Assignment",
    "MineralMap",
    "assign_minerals",
    "compare_abundances",
    "kmeans_minerals",
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


def compare_abundances(
    mineral_map: MineralMap, assignment: Assignment, reference: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Map abundances per mineral against a reference table (e.g. XRD), void excluded.

    Both sides are renormalised over the minerals they share.

    Parameters
    ----------
    mineral_map
        The k-means result (its abundances per cluster).
    assignment
        Cluster -> mineral.
    reference
        Mineral -> abundance (any scale; renormalised).

    Returns
    -------
    dict
        ``{mineral: {"map": f, "reference": f, "difference": map - reference}}``.

    Examples
    --------
    >>> compare_abundances(mm, a, {"quartz": 0.4, "pyrite": 0.1})  # doctest: +SKIP
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
