"""``crystals``: a batch of SEM micrographs to one crystallometry table and a report.

1. **Check** before any work: the images exist and are images (:func:`~volmla.sem.io.sem_files`),
   the output folder may be written (``overwrite``), the models are volmla's.
2. **One Dask task per image** (``dask.delayed``, computed through
   :func:`volmla.engine.cluster.compute`): read (pixel size, info bar cropped),
   segment (classical, or the ``segmenter`` ONNX model), measure
   (:func:`~volmla.sem.features.crystal_table`), classify (``model``), and cut up to
   :data:`CROPS` example crops per class.
3. **Outputs**, written into a temporary sibling folder and swapped in under the
   output's lock (an interrupted or failed run loses nothing): ``crystals.parquet``
   (one row per crystal, sizes in micrometres, ``class`` empty without a classifier) and
   ``report.html`` (size distributions per class, class fractions per image and per
   sample (the image's folder), example crops per class, 95 % bootstrap intervals).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from volmla.errors import VolmlaError
from volmla.sem.features import DESCRIPTORS

logger = logging.getLogger(__name__)

CROPS = 6
"""Example crops kept per class."""

COLUMNS: tuple[str, ...] = (
    "image", "sample", "crystal_id", "class", "probability", "area_um2", "equivalent_diameter_um",
    "major_axis_um", "minor_axis_um", "feret_max_um", "feret_min_um", "aspect_ratio", "solidity",
    "orientation_deg", "touches_border", "centroid_row", "centroid_col", "pixel_size_um",
)
"""Leading columns of ``crystals.parquet`` (the descriptors follow)."""

EXTRA = tuple(d for d in DESCRIPTORS if d not in COLUMNS)
"""Descriptor columns after :data:`COLUMNS`."""

UNITS = {"area_um2": "um^2", "equivalent_diameter_um": "um", "major_axis_um": "um", "minor_axis_um": "um",
         "feret_max_um": "um", "feret_min_um": "um", "orientation_deg": "deg", "centroid_row": "pixel",
         "centroid_col": "pixel", "pixel_size_um": "um", "aspect_ratio": "1", "solidity": "1", "probability": "1"}

__all__ = ["COLUMNS", "CROPS", "CrystalsResult", "class_summary", "crystals", "measure_image", "report_html"]


class CrystalsResult(NamedTuple):
    """What :func:`crystals` wrote."""

    table: pd.DataFrame
    n_images: int
    n_crystals: int
    out_dir: Path


def measure_image(path: str | Path, *, pixel_size: float | None = None, model: str | Path | None = None,
                  segmenter: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, list[np.ndarray]]]:
    """Read, segment, measure and classify one micrograph (the per-image task).

    Parameters
    ----------
    path
        The image file.
    pixel_size
        Micrometres per pixel (overrides the file's tags).
    model
        Form classifier (ONNX: the forest or the CNN) or None.
    segmenter
        Border-core segmentation model (ONNX) or None for the classical path.

    Returns
    -------
    tuple
        The image's crystal rows (:data:`COLUMNS` and the descriptors) and example crops
        per class (uint8 arrays).

    Examples
    --------
    >>> rows, crops = measure_image("chip.png", pixel_size=0.05)  # doctest: +SKIP
    """
    from volmla.sem.classify import classify_crystals
    from volmla.sem.features import crystal_table
    from volmla.sem.io import read_sem
    from volmla.sem.segment import normalise, segment_crystals, segment_with_model

    sem = read_sem(path, pixel_size=pixel_size)
    try:
        labels = (segment_with_model(sem.image, model=segmenter) if segmenter is not None
                  else segment_crystals(sem.image))
    except VolmlaError as exc:
        raise VolmlaError(f"image {path}: {exc}") from None
    table = crystal_table(labels, sem.image, pixel_size=sem.pixel_size)
    if model is not None:
        names, prob = classify_crystals(labels, sem.image, table, pixel_size=sem.pixel_size, model=model)
        table["class"], table["probability"] = names, prob
    else:
        table["class"], table["probability"] = "", np.nan
    table["image"] = str(path)
    table["sample"] = Path(path).parent.name
    table["pixel_size_um"] = sem.pixel_size
    crops: dict[str, list[np.ndarray]] = {}
    if len(table):
        grey = (normalise(sem.image) * 255).astype(np.uint8)
        for cls, bbox in zip(table["class"], table["bbox"], strict=True):
            kept = crops.setdefault(str(cls), [])
            if len(kept) < CROPS:
                r0, c0, r1, c1 = bbox
                kept.append(grey[max(r0 - 4, 0):r1 + 4, max(c0 - 4, 0):c1 + 4].copy())
    return table[[*COLUMNS, *EXTRA]], crops


def _check_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    from volmla.liberation.analysis import check_out_dir

    return check_out_dir(out_dir, overwrite=overwrite)


def crystals(
    images: Sequence[str | Path] | str | Path,
    *,
    out_dir: str | Path,
    pixel_size: float | None = None,
    model: str | Path | None = None,
    segmenter: str | Path | None = None,
    overwrite: bool = False,
    n_boot: int = 200,
    seed: int = 0,
    cluster: Callable[[], AbstractContextManager[Any]] | None = None,
) -> CrystalsResult:
    """Segment, measure and classify the crystals of SEM micrographs into ``out_dir``.

    Parameters
    ----------
    images
        Image files and folders of them (TIFF with FEI/Zeiss/TESCAN pixel size, PNG, JPEG).
    out_dir
        Output folder: ``crystals.parquet`` and ``report.html``.
    pixel_size
        Micrometres per pixel for every image (needed for PNG/JPEG; overrides TIFF tags).
    model
        Crystal-form classifier (ONNX, from ``volmla sem train``); without one ``class`` is
        empty.
    segmenter
        Border-core segmentation model (ONNX); without one the classical segmentation.
    overwrite
        Replace an existing, non-empty ``out_dir``.
    n_boot
        Bootstrap resamples for the report's 95 % intervals.
    seed
        Bootstrap seed.
    cluster
        A context manager factory entered after the checks, around the computation (the
        command line passes its cluster, so bad input fails before one starts).

    Returns
    -------
    CrystalsResult

    Examples
    --------
    >>> r = crystals(["sem/"], out_dir="crystals", pixel_size=0.05)  # doctest: +SKIP
    """
    import dask

    from volmla.engine.cluster import compute
    from volmla.io.atomic import recover, remove, remove_stale, swap_in, tmp_sibling
    from volmla.io.lock import output_lock
    from volmla.io.outputs import check_not_in_input
    from volmla.sem.classify import check_model
    from volmla.sem.io import check_pixel_size, sem_files

    given = [images] if isinstance(images, str | Path) else list(images)
    files = sem_files(given)
    out = _check_out_dir(out_dir, overwrite)
    # the report's files would join the images it reads
    check_not_in_input(out, given, what="output folder", advice="write the report elsewhere")
    if pixel_size is not None:
        check_pixel_size(pixel_size)
    if model is not None:
        check_model(model)
    if segmenter is not None:
        from volmla.segment.sessions import read_metadata

        read_metadata(segmenter)  # exists and is ONNX
    tasks = [dask.delayed(measure_image)(str(f), pixel_size=pixel_size, model=None if model is None else str(model),
                                         segmenter=None if segmenter is None else str(segmenter),
                                         dask_key_name=f"sem-crystals-{i}") for i, f in enumerate(files)]
    with cluster() if cluster is not None else contextlib.nullcontext():
        results = compute(tasks, desc="crystals", optimize=False)
    tables = [t for t, _ in results]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*COLUMNS, *EXTRA])
    if table.empty:
        raise VolmlaError(f"no crystals found in {len(files)} image(s) ({files[0]}{', ...' if len(files) > 1 else ''})")
    empty = [str(f) for f, t in zip(files, tables, strict=True) if t.empty]
    if empty:
        logger.warning("no crystals in %d image(s): %s", len(empty), ", ".join(empty[:5]))
    crops: dict[str, list[np.ndarray]] = {}
    for _, found in results:
        for cls, items in found.items():
            crops.setdefault(cls, []).extend(items[: CROPS - len(crops.get(cls, []))])
    with output_lock(out):
        recover(out)
        token = f"sem-{uuid.uuid4().hex[:12]}"
        tmp = tmp_sibling(out, token)
        remove_stale(out)
        try:
            tmp.mkdir()
            from volmla.io.parquet import write_table

            write_table(table, tmp / "crystals.parquet", table="crystals", units=UNITS,
                        extra={"images": [str(f) for f in files], "empty_images": empty})
            (tmp / "report.html").write_text(report_html(table, crops, n_boot=n_boot, seed=seed, empty=empty))
            if out.exists() and not overwrite and any(out.iterdir()):
                raise VolmlaError(f"output folder {out} appeared while computing: pass overwrite=True to replace it")
            swap_in(tmp, out, token)
        except BaseException:
            remove(tmp)
            raise
    return CrystalsResult(table, len(files), len(table), out)


# ----------------------------------------------------------------------------- report


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _interval(values: np.ndarray, stat: Any, rng: np.random.Generator, n_boot: int) -> tuple[float, float, float]:
    point = float(stat(values)) if len(values) else float("nan")
    if len(values) < 2 or n_boot < 1:
        return point, float("nan"), float("nan")
    boots = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)]
    lo, hi = np.percentile(boots, (2.5, 97.5))
    return point, float(lo), float(hi)


def class_summary(table: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per class: count, number fraction, mean equivalent diameter and median aspect, with 95 % intervals.

    Bootstrap over crystals (``n_boot`` resamples, percentile intervals).

    Parameters
    ----------
    table
        ``crystals.parquet`` rows.
    n_boot
        Resamples.
    seed
        Random seed.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> t = pd.DataFrame({"class": ["a", "b", "a"], "equivalent_diameter_um": [1.0, 2.0, 3.0],
    ...                   "aspect_ratio": [1.0, 1.5, 2.0]})
    >>> class_summary(t, n_boot=0)["n"].tolist()
    [2, 1]
    """
    rng = np.random.default_rng(seed)
    classes = table["class"].astype(str).replace("", "(unclassified)").to_numpy()
    names = sorted(set(classes))
    rows = []
    for name in names:
        sel = classes == name
        frac = _interval(sel.astype(np.float64), np.mean, rng, n_boot)
        size = _interval(table.equivalent_diameter_um.to_numpy()[sel], np.mean, rng, n_boot)
        aspect = _interval(table.aspect_ratio.to_numpy()[sel], np.median, rng, n_boot)
        rows.append({"class": name, "n": int(sel.sum()), "fraction": frac[0], "fraction_lo": frac[1],
                     "fraction_hi": frac[2], "mean_diameter_um": size[0], "mean_diameter_lo": size[1],
                     "mean_diameter_hi": size[2], "median_aspect": aspect[0], "median_aspect_lo": aspect[1],
                     "median_aspect_hi": aspect[2]})
    return pd.DataFrame(rows)


def report_html(table: pd.DataFrame, crops: dict[str, list[np.ndarray]], *, n_boot: int = 200, seed: int = 0,
                empty: Sequence[str] = ()) -> str:
    """The stand-alone HTML report (PNG figures embedded).

    Parameters
    ----------
    table
        ``crystals.parquet`` rows.
    crops
        Example crops per class.
    n_boot
        Bootstrap resamples for the intervals.
    seed
        Bootstrap seed.
    empty
        Images in which no crystal was found.

    Returns
    -------
    str

    Examples
    --------
    >>> page = report_html(table, crops)  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = table["class"].astype(str).replace("", "(unclassified)")
    names = sorted(set(classes))
    summary = class_summary(table, n_boot=n_boot, seed=seed)
    figs: list[tuple[str, str]] = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    d = table.equivalent_diameter_um.to_numpy()
    bins = list(np.geomspace(max(float(d.min()), 1e-6), float(d.max()) * 1.01, 20)) if len(d) else 10
    for name in names:
        ax.hist(d[(classes == name).to_numpy()], bins=bins, histtype="step", label=name, linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("equivalent diameter (um)")
    ax.set_ylabel("crystals")
    ax.legend(fontsize=8)
    figs.append(("Size distributions per class", _png(fig)))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in names:
        ax.hist(table.aspect_ratio.to_numpy()[(classes == name).to_numpy()], bins=20, range=(1, 3), histtype="step",
                label=name, linewidth=1.5)
    ax.set_xlabel("aspect ratio (major / minor axis)")
    ax.legend(fontsize=8)
    figs.append(("Aspect ratio per class", _png(fig)))

    frac_tables = {}
    for key in ("image", "sample"):
        rows = [Path(str(v)).name if key == "image" else str(v) for v in table[key]]
        counts = pd.crosstab(pd.Series(rows, index=table.index, name=key), classes)
        frac = counts.div(counts.sum(axis=1), axis=0)
        frac_tables[key] = frac
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(frac) + 1.2))
        left = np.zeros(len(frac))
        for name in frac.columns:
            ax.barh(range(len(frac)), frac[name].to_numpy(), left=left, label=name)
            left += frac[name].to_numpy()
        ax.set_yticks(range(len(frac)), [str(v) for v in frac.index], fontsize=7)
        ax.set_xlabel("number fraction")
        ax.legend(fontsize=7, loc="lower right")
        figs.append((f"Class fractions per {key}", _png(fig)))

    crop_html = []
    for name in sorted(crops):
        imgs = []
        for crop in crops[name]:
            fig, ax = plt.subplots(figsize=(1.3, 1.3))
            ax.imshow(crop, cmap="gray", vmin=0, vmax=255)
            ax.axis("off")
            imgs.append(f'<img src="data:image/png;base64,{_png(fig)}">')
        crop_html.append(f"<h3>{html.escape(name or '(unclassified)')}</h3>{''.join(imgs)}")

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>volmla SEM crystals</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head><body>",
             f"<h1>SEM crystallometry</h1><p>{len(table)} crystals in {table.image.nunique()} images"
             f" ({int(table.touches_border.sum())} touching an image border).</p>",
             "<h2>Per class (95 % bootstrap intervals over crystals)</h2>",
             summary.to_html(index=False, float_format=lambda v: f"{v:.3g}")]
    if empty:
        parts.append(f"<p>No crystals found in: {html.escape(', '.join(empty))}</p>")
    for title, data in figs:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>")
    parts.append("<h2>Example crops per class</h2>" + "".join(crop_html))
    parts.append("</body></html>")
    return "\n".join(parts)
