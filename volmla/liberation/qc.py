"""QC images of a liberation run: what the segmentation behind the numbers looks like.

A mineralogist trusts liberation figures after seeing the phases and particles they come
from. :func:`qc_figures` draws, reading only the planes and crops it shows (Dask slices of
the lazy volumes, computed together in one :func:`volmla.engine.cluster.compute` call,
never a whole volume):

1. ``qc_slices.png`` (with an intensity volume): three orthogonal CT slices through the
   volume centre, the phases overlaid in the fixed palette (:mod:`volmla.io.palette`,
   alpha :data:`ALPHA`) and every particle's outline;
2. ``qc_closeups.png`` (with an intensity volume): the largest free and the largest
   locked particle (by bounding box, from the particle table's ``bbox_*`` columns), the
   central plane of each box, CT alone and with the overlay;
3. ``particle_gallery.png``: a few particles per liberation class
   (:func:`liberation_classes`: free / binary / ternary+, as
   :func:`volmla.liberation.locking` counts them), the central plane of each particle's
   box cut from the phase volume.

The picking (:func:`liberation_classes`, :func:`pick_particles`, :func:`crop_box`) and the
drawing of one image (:func:`overlay`) are pure NumPy / pandas, testable without Dask.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from volmla.engine.blocks import as_volume
from volmla.engine.cluster import compute
from volmla.io.palette import phase_colors
from volmla.liberation.stats import _free, _population, _solid, _volume
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = [
    "ALPHA",
    "CLASSES",
    "Crop",
    "crop_box",
    "liberation_classes",
    "overlay",
    "pick_particles",
    "qc_figures",
]

ALPHA = 0.55
"""Opacity of the phase colours over the CT grey levels."""

CLASSES = ("free", "binary", "ternary+")
"""Liberation classes of the gallery; a particle with no named phase has class ``""``."""

MARGIN = 3
"""Voxels of context around a particle's bounding box in close-ups and the gallery."""

OUTLINE = (0.0, 0.0, 0.0)
"""Particle outlines: black (no phase of the palette is pure black)."""


class Crop(NamedTuple):
    """One plane of a volume to read: ``volume[where]`` is 2-D."""

    where: tuple[int | slice, int | slice, int | slice]
    title: str
    particle_id: int | None = None


def liberation_classes(
    df: pd.DataFrame, *, phase_names: Sequence[str], free_threshold: float = 0.99
) -> np.ndarray:
    """The liberation class of each particle: free, binary or ternary+.

    A particle is *free* when one phase exceeds ``free_threshold`` of its solid volume,
    else *binary* when at most two named phases are present (one phase with unnamed
    void counts as binary, as in :func:`volmla.liberation.locking`), else *ternary+*.

    Parameters
    ----------
    df
        The particle table (``vox_<phase>``, and ``vfrac_<phase>`` where measured).
    phase_names
        The phases.
    free_threshold
        The free test of Eq. 1 (strictly greater).

    Returns
    -------
    numpy.ndarray
        One of :data:`CLASSES` per row (``""`` for a particle holding no named phase).

    Examples
    --------
    >>> df = pd.DataFrame({"vox_a": [10, 5, 4], "vox_b": [0, 5, 3], "vox_c": [0, 0, 3],
    ...                    "volume_voxels": [10, 10, 10]})
    >>> liberation_classes(df, phase_names=["a", "b", "c"]).tolist()
    ['free', 'binary', 'ternary+']
    """
    names = list(phase_names)
    n = len(df)
    if not names or not n:
        return np.full(n, "", dtype=object)
    present = np.stack([_volume(df, p) > 0 for p in names], axis=1)
    free = np.stack([_free(df, p, free_threshold) for p in names], axis=1).any(axis=1)
    n_present = present.sum(axis=1)
    out = np.where(free, CLASSES[0], np.where(n_present <= 2, CLASSES[1], CLASSES[2])).astype(object)
    out[n_present == 0] = ""
    return out


def _box_volume(df: pd.DataFrame) -> np.ndarray:
    ext = [df[f"bbox_{a}1"].to_numpy(np.int64) - df[f"bbox_{a}0"].to_numpy(np.int64) for a in "zyx"]
    return np.asarray(ext[0] * ext[1] * ext[2], dtype=np.int64)


def pick_particles(df: pd.DataFrame, classes: np.ndarray, *, per_class: int = 4) -> dict[str, pd.DataFrame]:
    """The ``per_class`` largest particles (by bounding-box volume) of each liberation class.

    Parameters
    ----------
    df
        The particle table (``particle_id``, ``bbox_*``).
    classes
        :func:`liberation_classes` of ``df``.
    per_class
        How many per class.

    Returns
    -------
    dict
        ``{class: rows of df}`` for every class of :data:`CLASSES` (possibly empty),
        largest box first, ties broken by particle id.

    Examples
    --------
    >>> df = pd.DataFrame({"particle_id": [1, 2], "bbox_z0": [0, 0], "bbox_y0": [0, 0], "bbox_x0": [0, 0],
    ...                    "bbox_z1": [2, 3], "bbox_y1": [2, 3], "bbox_x1": [2, 3]})
    >>> pick_particles(df, np.array(["free", "free"]), per_class=1)["free"].particle_id.tolist()
    [2]
    """
    box = _box_volume(df)
    ids = df["particle_id"].to_numpy()
    out = {}
    for cls in CLASSES:
        sel = np.flatnonzero(classes == cls)
        order = sel[np.lexsort((ids[sel], -box[sel]))][:per_class]
        out[cls] = df.iloc[order]
    return out


def crop_box(row: Mapping[str, Any], shape: Sequence[int], *, margin: int = MARGIN) -> tuple[int, slice, slice]:
    """The central z plane of a particle's bounding box, cropped to the box plus ``margin``.

    Parameters
    ----------
    row
        A particle-table row (``bbox_z0`` ... ``bbox_x1``, voxels, upper bounds exclusive).
    shape
        The volume's shape (the crop stays inside it).
    margin
        Voxels of context on each side (in y and x).

    Returns
    -------
    (int, slice, slice)
        An index into the ``(z, y, x)`` volume giving a 2-D ``(y, x)`` crop.

    Examples
    --------
    >>> crop_box({"bbox_z0": 2, "bbox_y0": 0, "bbox_x0": 5, "bbox_z1": 6, "bbox_y1": 4, "bbox_x1": 9}, (10, 10, 10))
    (3, slice(0, 7, None), slice(2, 10, None))
    """
    z = (int(row["bbox_z0"]) + int(row["bbox_z1"]) - 1) // 2
    y = slice(max(int(row["bbox_y0"]) - margin, 0), min(int(row["bbox_y1"]) + margin, int(shape[1])))
    x = slice(max(int(row["bbox_x0"]) - margin, 0), min(int(row["bbox_x1"]) + margin, int(shape[2])))
    return min(max(z, 0), int(shape[0]) - 1), y, x


def outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D label image on the edge of a nonzero label (4-neighbourhood, inner)."""
    from skimage.segmentation import find_boundaries

    return np.asarray(find_boundaries(labels, connectivity=1, mode="inner", background=0) & (labels > 0))


def overlay(
    phases: np.ndarray,
    labels: np.ndarray,
    *,
    colors: Mapping[int, Sequence[int]],
    intensity: np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
    alpha: float = ALPHA,
) -> np.ndarray:
    """One RGB image: CT grey levels, phase colours on top (``alpha``), particle outlines.

    Parameters
    ----------
    phases
        2-D phase ids (0 = void).
    labels
        2-D particle ids (0 = background), same shape; their outlines are drawn black.
    colors
        ``{phase id: (r, g, b)}`` in 0..255 (:func:`volmla.io.palette.phase_colors`).
    intensity
        2-D CT grey levels; without it the phases are drawn opaque on white.
    limits
        Grey levels shown as black and white (default the 1st and 99th percentiles).
    alpha
        Opacity of the phase colours over the grey levels.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` float RGB in ``[0, 1]``.

    Examples
    --------
    >>> img = overlay(np.array([[0, 1]]), np.array([[0, 0]]), colors={1: (255, 0, 0)})
    >>> img[0].tolist()
    [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    """
    ph = np.asarray(phases)
    if intensity is None:
        grey = np.ones(ph.shape, np.float64)
        a = np.where(ph > 0, 1.0, 0.0)
    else:
        v = np.asarray(intensity, np.float64)
        lo, hi = limits if limits is not None else _limits([v])
        grey = np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(v)
        a = np.where(ph > 0, float(alpha), 0.0)
    lut = np.zeros((max([int(ph.max(initial=0)), *colors], default=0) + 1, 3), np.float64)
    for pid, rgb in colors.items():
        lut[int(pid)] = np.asarray(rgb[:3], np.float64) / 255.0
    rgb_img = lut[ph.astype(np.intp)]
    out = grey[..., None] * (1.0 - a[..., None]) + rgb_img * a[..., None]
    out[outlines(np.asarray(labels))] = OUTLINE
    return np.asarray(np.clip(out, 0.0, 1.0))


def _limits(planes: Sequence[np.ndarray]) -> tuple[float, float]:
    v = np.concatenate([np.asarray(p, np.float64).ravel() for p in planes]) if planes else np.zeros(1)
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1.0, 99.0])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _read(volumes: Mapping[str, Any], requests: Sequence[tuple[Crop, Sequence[str]]]) -> list[dict[str, np.ndarray]]:
    """The crops asked for, of the volumes named with each, computed together in one call
    (the only read of the volumes)."""
    tasks = [volumes[k][crop.where] for crop, keys in requests for k in keys]
    values = iter(compute(tasks, desc="QC images") if tasks else [])
    return [{k: np.asarray(next(values)) for k in keys} for _, keys in requests]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_patches(fig: Any, names: Sequence[str], colors: Mapping[int, Sequence[int]]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(facecolor=_rgb(c), edgecolor="k", label=n) for n, c in zip(names, colors.values(),
                                                                                            strict=True)]
    handles.append(Line2D([], [], color=OUTLINE, linewidth=2, label="particle outline"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def _rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return float(color[0]) / 255.0, float(color[1]) / 255.0, float(color[2]) / 255.0


def _aspect(voxel_size: Sequence[float] | None, rows: int, cols: int) -> float:
    """imshow aspect: the physical height of a pixel over its width."""
    if not voxel_size:
        return 1.0
    return float(voxel_size[rows]) / float(voxel_size[cols])


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def qc_figures(
    out_dir: str | Path,
    *,
    phases: VolumeLike,
    particles: VolumeLike,
    particles_df: pd.DataFrame,
    phase_names: Sequence[str] | Mapping[int, str],
    intensity: VolumeLike | None = None,
    free_threshold: float = 0.99,
    include_border: bool = False,
    voxel_size: Sequence[float] | None = None,
    per_class: int = 4,
) -> list[Path]:
    """Draw the QC slices, close-ups (with ``intensity``) and the particle gallery.

    Parameters
    ----------
    out_dir
        The folder the PNGs go into.
    phases, particles
        The phase and particle volumes (lazy; only the planes shown are read).
    particles_df
        The particle table (``bbox_*``, ``vox_<phase>``, ``touches_border``).
    phase_names
        Phase names by id (``{1: "quartz", ...}``), or a list for ids 1..N; they give
        the palette colours (:func:`volmla.io.palette.phase_colors`).
    intensity
        The CT volume (same shape): without it only the gallery is drawn.
    free_threshold
        The free test of Eq. 1.
    include_border
        Also pick particles touching the border (else only those the statistics use).
    voxel_size
        ``(z, y, x)`` um, for the pixels' aspect ratio.
    per_class
        Gallery crops per liberation class.

    Returns
    -------
    list of pathlib.Path
        ``qc_slices.png``, ``qc_closeups.png`` (with ``intensity``) and
        ``particle_gallery.png``.

    Examples
    --------
    >>> from volmla.synthetic import phantom
    >>> from volmla.measure import particle_table
    >>> ph = phantom(shape=(40, 40, 40), seed=1, esd_range=(8, 14))  # doctest: +SKIP
    >>> df = particle_table(ph.particles, ph.phases)  # doctest: +SKIP
    >>> qc_figures(".", phases=ph.phases, particles=ph.particles, particles_df=df,
    ...            phase_names=["quartz", "feldspar", "pyrite"], intensity=ph.intensity)  # doctest: +SKIP
    """
    out = Path(out_dir)
    by_id = dict(phase_names) if isinstance(phase_names, Mapping) else {i + 1: n for i, n in enumerate(phase_names)}
    names = list(by_id.values())
    colors = phase_colors(by_id)
    vols: dict[str, Any] = {"phases": as_volume(phases, name="phases").data,
                            "particles": as_volume(particles, name="particles").data}
    if intensity is not None:
        vols["intensity"] = as_volume(intensity, name="intensity").data
    shape = tuple(int(s) for s in vols["phases"].shape)
    pop = _population(particles_df, include_border)
    classes = liberation_classes(pop, phase_names=names, free_threshold=free_threshold)
    gallery = pick_particles(pop, classes, per_class=per_class)
    locked = pick_particles(pop, np.where((classes == CLASSES[1]) | (classes == CLASSES[2]), "binary", classes),
                            per_class=1)
    close = [(f"largest free particle #{int(r.particle_id)}", r) for r in gallery["free"].head(1).itertuples()]
    close += [(f"largest locked particle #{int(r.particle_id)}", r) for r in locked["binary"].itertuples()]

    centre = [s // 2 for s in shape]
    slices = [Crop((centre[0], slice(None), slice(None)), f"plane z = {centre[0]} (rows y, cols x)"),
              Crop((slice(None), centre[1], slice(None)), f"plane y = {centre[1]} (rows z, cols x)"),
              Crop((slice(None), slice(None), centre[2]), f"plane x = {centre[2]} (rows z, cols y)")]
    closeups = [Crop(crop_box(r._asdict(), shape), t, int(r.particle_id)) for t, r in close]
    tiles = [Crop(crop_box(r._asdict(), shape), f"#{int(r.particle_id)}", int(r.particle_id))
             for cls in CLASSES for r in gallery[cls].itertuples()]
    with_ct = intensity is not None
    all3, labels_only = ("intensity", "phases", "particles"), ("phases", "particles")
    shown = [*slices, *closeups] if with_ct else []
    read = _read(vols, [*((c, all3) for c in shown), *((c, labels_only) for c in tiles)])
    files = []
    if with_ct:
        files.append(_draw_slices(out / "qc_slices.png", slices, read[:3], names, colors, voxel_size))
        files.append(_draw_closeups(out / "qc_closeups.png", closeups, read[3:len(shown)], names, colors, voxel_size,
                                    pop))
    files.append(_draw_gallery(out / "particle_gallery.png", tiles, read[len(shown):], gallery, names, colors,
                               voxel_size, pop))
    return files


def _draw_slices(path: Path, crops: Sequence[Crop], planes: Sequence[dict[str, np.ndarray]], names: Sequence[str],
                 colors: Mapping[int, Sequence[int]], voxel_size: Sequence[float] | None) -> Path:
    plt = _pyplot()
    limits = _limits([p["intensity"] for p in planes])
    axis_pairs = ((1, 2), (0, 2), (0, 1))
    tallest = max(p["phases"].shape[0] * _aspect(voxel_size, r, c) / max(p["phases"].shape[1], 1)
                  for p, (r, c) in zip(planes, axis_pairs, strict=True))
    fig, axes = plt.subplots(1, 3, figsize=(13, min(13 / 3 * tallest, 12) + 0.9))
    for ax, crop, plane, (r, c) in zip(axes, crops, planes, axis_pairs, strict=True):
        img = overlay(plane["phases"], plane["particles"], colors=colors, intensity=plane["intensity"], limits=limits)
        ax.imshow(img, interpolation="nearest", aspect=_aspect(voxel_size, r, c))
        ax.set_title(crop.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _legend_patches(fig, names, colors)
    fig.subplots_adjust(bottom=0.1, top=0.92, left=0.01, right=0.99, wspace=0.05)
    return _save(fig, path)


def _caption(pop: pd.DataFrame, pid: int | None, names: Sequence[str]) -> str:
    """The largest grades of a particle, e.g. ``quartz 62 %, pyrite 38 %``."""
    if pid is None or not names:
        return ""
    row = pop[pop["particle_id"] == pid]
    if row.empty:
        return ""
    solid = float(_solid(row)[0])
    grades = sorted(((float(_volume(row, p)[0]) / solid if solid > 0 else 0.0, p) for p in names), reverse=True)
    return ", ".join(f"{p}\u00a0{100 * g:.0f}\u00a0%" for g, p in grades[:3] if g > 0)  # no break inside


def _draw_closeups(path: Path, crops: Sequence[Crop], planes: Sequence[dict[str, np.ndarray]], names: Sequence[str],
                   colors: Mapping[int, Sequence[int]], voxel_size: Sequence[float] | None, pop: pd.DataFrame) -> Path:
    plt = _pyplot()
    rows = max(len(crops), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(8, 3.6 * rows), squeeze=False)
    if not crops:
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, "no particle to show", ha="center", va="center", transform=axes[0, 0].transAxes)
    limits = _limits([p["intensity"] for p in planes]) if planes else (0.0, 1.0)
    aspect = _aspect(voxel_size, 1, 2)
    for k, (crop, plane) in enumerate(zip(crops, planes, strict=True)):
        grey = np.clip((plane["intensity"].astype(np.float64) - limits[0]) / (limits[1] - limits[0]), 0, 1)
        axes[k, 0].imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect=aspect)
        axes[k, 0].set_title(f"{crop.title}: CT, z = {crop.where[0]}", fontsize=9)
        img = overlay(plane["phases"], plane["particles"], colors=colors, intensity=plane["intensity"], limits=limits)
        axes[k, 1].imshow(img, interpolation="nearest", aspect=aspect)
        axes[k, 1].set_title(_caption(pop, crop.particle_id, names), fontsize=9)
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
    _legend_patches(fig, names, colors)
    fig.subplots_adjust(bottom=0.1 if rows > 1 else 0.18)
    return _save(fig, path)


def _draw_gallery(path: Path, crops: Sequence[Crop], planes: Sequence[dict[str, np.ndarray]],
                  picked: Mapping[str, pd.DataFrame], names: Sequence[str], colors: Mapping[int, Sequence[int]],
                  voxel_size: Sequence[float] | None, pop: pd.DataFrame) -> Path:
    plt = _pyplot()
    cols = max(max((len(v) for v in picked.values()), default=0), 1)
    fig, axes = plt.subplots(len(CLASSES), cols, figsize=(2.4 * cols + 0.8, 2.6 * len(CLASSES)), squeeze=False)
    aspect = _aspect(voxel_size, 1, 2)
    k = 0
    for i, cls in enumerate(CLASSES):
        axes[i, 0].set_ylabel(cls, fontsize=11)
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(picked[cls]):
                for side in ax.spines.values():
                    side.set_visible(False)
                if j == 0:
                    ax.text(0.5, 0.5, f"no {cls} particle", ha="center", va="center", transform=ax.transAxes,
                            fontsize=9)
                continue
            crop, plane = crops[k], planes[k]
            k += 1
            # the picked particle's own outline only, so a crowded crop still shows which one it is
            own = np.where(plane["particles"] == crop.particle_id, plane["particles"], 0)
            ax.imshow(overlay(plane["phases"], own, colors=colors), interpolation="nearest", aspect=aspect)
            ax.set_title(textwrap.fill(f"{crop.title}: {_caption(pop, crop.particle_id, names)}", 30), fontsize=7)
    _legend_patches(fig, names, colors)
    fig.subplots_adjust(bottom=0.12)
    return _save(fig, path)
