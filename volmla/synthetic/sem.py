"""Synthetic SEM micrographs of microcrystals with exact ground truth.

The 2-D counterpart of the CT phantoms, for the ``volmla.sem`` path (segmentation,
crystallometry and crystal-form classification), in memory and seeded:

1. **crystals** of the four forms of :data:`SEM_CLASSES` (MicroCrystalNet's classes):
   ``rhombic`` (euhedral/subhedral rhombohedra: a rhombus outline of acute angle
   60-85 degrees, in the subhedral half one or two corners truncated), ``polyhedral``
   (euhedral/subhedral polyhedra: convex outlines of 6-9 facets), ``amorphous``
   (anhedral irregular blobs: a star-shaped outline with strong low harmonics, concave
   in places) and ``rounded`` (anhedral smooth ellipses, aspect 1-1.8); equivalent
   diameters from a log-normal law, orientation uniform;
2. **a height map per crystal**: facetted crystals are pyramids over their outline (one
   plane per facet, the apex off centre), rounded ones ellipsoidal caps, amorphous ones
   lumpy domes;
3. **secondary-electron look**: brightness rises with the surface tilt (``1/cos``) and
   towards the side of the detector, plus edge brightening in a rim of a few pixels;
   a dark, slowly varying substrate;
4. **occlusion**: crystals are drawn back to front, placed so that neighbours overlap
   only partly; the truth label of a pixel is the crystal drawn last there (its visible
   part);
5. **perspective** (optional, default mild): the scene seen on a tilted stage, a
   projective warp whose magnification changes by about ``perspective`` across the
   field in a seeded direction (the image bilinear, the labels nearest, both by the
   same map); the view is the part of the scene the warp covers, so crystals that leave
   it are dropped and the labels renumbered. The truth's sizes (``diameter_um``,
   ``aspect``) are **recomputed** on the warped whole crystals (as the image shows
   them; the same nearest map, so a visible part is never larger than its crystal);
   ``orientation`` stays the un-warped one;
6. **the detector**: a gaussian PSF, charging streaks (bright scan lines decaying to the
   right), gaussian noise, then an info bar at the bottom (a uniform black band with
   white text-like marks), as SEM software writes it.

:func:`write_sem_images` writes a batch as TIFFs with the FEI pixel-size tag, truth
labels and a class table per image (the labelled-folder layout ``volmla sem train``
reads).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from volmla._validate import check_integer, check_number
from volmla.errors import VolmlaError

SEM_CLASSES: tuple[str, ...] = ("rhombic", "polyhedral", "amorphous", "rounded")
"""Crystal forms, in class-id order (0..3)."""

__all__ = ["SEM_CLASSES", "SemSample", "sem_image", "write_sem_images"]


class SemSample(NamedTuple):
    """A synthetic SEM image and its truth (crystal ``k`` has label ``k + 1``)."""

    image: np.ndarray
    """``(rows, cols)`` uint8 or uint16, info bar included."""
    labels: np.ndarray
    """``(rows, cols)`` int32: the visible part of each crystal, 0 for substrate and bar."""
    classes: np.ndarray
    """Class id per crystal (index into :data:`SEM_CLASSES`)."""
    diameter_um: np.ndarray
    """Equivalent diameter of each whole (unoccluded, uncut) crystal, micrometres."""
    aspect: np.ndarray
    """Major over minor axis of each whole crystal (second moments)."""
    orientation: np.ndarray
    """Rotation of each crystal, radians in [0, pi)."""
    pixel_size: float
    """Micrometres per pixel."""
    bar_rows: int
    """Height of the info bar at the bottom, pixels (0 without one)."""


def _outline(kind: int, rng: np.random.Generator) -> tuple[np.ndarray | None, float, float]:
    """Vertices (convex, ccw, unit scale) of a facetted form, or None; plus ellipse semi-axes."""
    if kind == 0:  # rhombus, acute angle 60-85 degrees
        half = math.radians(rng.uniform(60, 85)) / 2
        a, b = math.cos(half), math.sin(half)
        verts = np.array([[a, 0.0], [0.0, b], [-a, 0.0], [0.0, -b]])
        if rng.random() < 0.5:  # subhedral: truncate one or two corners
            cut = []
            for i, v in enumerate(verts):
                if i in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
                    t = rng.uniform(0.12, 0.25)
                    cut += [v + t * (verts[i - 1] - v), v + t * (verts[(i + 1) % 4] - v)]
                else:
                    cut.append(v)
            verts = np.array(cut)
        return verts, 1.0, 1.0
    if kind == 1:  # convex polygon with 6-9 facets
        n = int(rng.integers(6, 10))
        angles = np.sort((np.arange(n) + rng.uniform(-0.25, 0.25, n)) * 2 * math.pi / n)
        radius = rng.uniform(0.9, 1.1, n)
        stretch = rng.uniform(1.0, 1.4)
        verts = np.stack([radius * np.cos(angles) * stretch, radius * np.sin(angles)], axis=1)
        return _convex_hull(verts), 1.0, 1.0
    if kind == 3:
        return None, rng.uniform(1.0, 1.8), 1.0
    return None, 1.0, 1.0


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (monotone chain)."""
    pts = sorted(map(tuple, points))

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _gauge(kind: int, x: np.ndarray, y: np.ndarray, verts: np.ndarray | None, axes: tuple[float, float],
           harmonics: np.ndarray, apex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rho`` (< 1 inside) and the height map, on local unit coordinates."""
    if verts is not None:
        rho = np.zeros_like(x)
        for i in range(len(verts)):
            p, q = verts[i], verts[(i + 1) % len(verts)]
            normal = np.array([q[1] - p[1], p[0] - q[0]])
            offset = float(normal @ (p - apex))
            rho = np.maximum(rho, (normal[0] * (x - apex[0]) + normal[1] * (y - apex[1])) / offset)
        return rho, np.clip(1.0 - rho, 0.0, None)
    if kind == 3:
        rho = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2)
        return rho, np.sqrt(np.clip(1.0 - rho**2, 0.0, None))
    theta = np.arctan2(y, x)
    r = np.ones_like(x)
    for k, (amp, phase) in enumerate(harmonics, start=2):
        r = r + amp * np.cos(k * theta + phase)
    rho = np.hypot(x, y) / r
    height = np.clip(1.0 - rho**2, 0.0, None) ** 0.6 * (1 + 0.15 * np.clip(rho, 0, 1) * np.cos(3 * theta + harmonics[0, 1]))
    return rho, height


def _shape_scale(kind: int, verts: np.ndarray | None, axes: tuple[float, float], harmonics: np.ndarray) -> float:
    """Area of the unit outline (to scale it to a wanted equivalent diameter)."""
    if verts is not None:
        x, y = verts[:, 0], verts[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if kind == 3:
        return math.pi * axes[0] * axes[1]
    theta = np.linspace(0, 2 * math.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    for k, (amp, phase) in enumerate(harmonics, start=2):
        r = r + amp * np.cos(k * theta + phase)
    return float(0.5 * np.mean(r**2) * 2 * math.pi)


def _moments_aspect(mask: np.ndarray) -> float:
    yy, xx = np.nonzero(mask)
    if len(yy) < 3:
        return 1.0
    cov = np.cov(np.stack([yy, xx]).astype(np.float64))
    ev = np.sort(np.linalg.eigvalsh(cov))
    return float(math.sqrt(ev[1] / max(ev[0], 1e-9)))


class _Tilt:
    """A projective map of the field: output pixel -> scene pixel, and back."""

    def __init__(self, shape: tuple[int, int], strength: float, seed: int) -> None:
        direction = np.random.default_rng([seed, 7]).uniform(0, 2 * math.pi)  # own stream: same scene
        self.centre = ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
        self.p = (strength * math.sin(direction) / max(self.centre[0], 1.0),
                  strength * math.cos(direction) / max(self.centre[1], 1.0))
        corners = [(r, c) for r in (-self.centre[0], self.centre[0]) for c in (-self.centre[1], self.centre[1])]
        self.s = min(1 + self.p[0] * r + self.p[1] * c for r, c in corners)  # the view lies inside the scene

    def source(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xr, xc = rows - self.centre[0], cols - self.centre[1]
        d = self.s / (1 + self.p[0] * xr + self.p[1] * xc)
        return self.centre[0] + xr * d, self.centre[1] + xc * d

    def target(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sr, sc = (rows - self.centre[0]) / self.s, (cols - self.centre[1]) / self.s
        d = 1 / (1 - self.p[0] * sr - self.p[1] * sc)
        return self.centre[0] + sr * d, self.centre[1] + sc * d


def _perspective(image: np.ndarray, labels: np.ndarray, wholes: list[tuple[np.ndarray, int, int]], strength: float,
                 pixel_size: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[int], list[float], list[float]]:
    """Warp image (bilinear) and labels (nearest); the kept crystals and their warped sizes and aspects."""
    tilt = _Tilt(image.shape, strength, seed)
    rr, cc = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float64)
    sr, sc = tilt.source(rr, cc)
    warped = ndi.map_coordinates(image, [sr, sc], order=1, mode="nearest").astype(np.float32)
    ir = np.clip(np.floor(sr + 0.5).astype(np.int64), 0, image.shape[0] - 1)
    ic = np.clip(np.floor(sc + 0.5).astype(np.int64), 0, image.shape[1] - 1)
    lab = labels[ir, ic]
    present = np.zeros(len(wholes) + 1, bool)
    present[np.unique(lab)] = True
    keep = [k for k in range(len(wholes)) if present[k + 1]]
    lut = np.zeros(len(wholes) + 1, np.int32)
    lut[[k + 1 for k in keep]] = np.arange(1, len(keep) + 1, dtype=np.int32)
    diameters, aspects = [], []
    for k in keep:
        whole, oy, ox = wholes[k]
        h, w = whole.shape
        tr, tc = tilt.target(np.array([oy - 0.5, oy - 0.5, oy + h - 0.5, oy + h - 0.5]),
                             np.array([ox - 0.5, ox + w - 0.5, ox - 0.5, ox + w - 0.5]))
        r0, c0 = int(math.floor(tr.min())) - 1, int(math.floor(tc.min())) - 1
        gr, gc = np.mgrid[r0:int(math.ceil(tr.max())) + 2, c0:int(math.ceil(tc.max())) + 2].astype(np.float64)
        wr, wc = tilt.source(gr, gc)
        jr, jc = np.floor(wr + 0.5).astype(np.int64) - oy, np.floor(wc + 0.5).astype(np.int64) - ox
        ok = (jr >= 0) & (jr < h) & (jc >= 0) & (jc < w)
        mask = np.zeros(gr.shape, bool)
        mask[ok] = whole[jr[ok], jc[ok]]
        diameters.append(2 * math.sqrt(mask.sum() / math.pi) * pixel_size)
        aspects.append(_moments_aspect(mask))
    return warped, lut[lab], keep, diameters, aspects


def sem_image(
    *,
    shape: Sequence[int] = (768, 1024),
    n_crystals: int = 40,
    pixel_size: float = 0.1,
    median_diameter: float = 6.0,
    size_sigma: float = 0.3,
    overlap: float = 0.8,
    noise: float = 0.04,
    streaks: float = 3.0,
    perspective: float = 0.03,
    info_bar: bool = True,
    classes: Sequence[int] | None = None,
    dtype: Literal["uint8", "uint16"] = "uint8",
    seed: int = 0,
) -> SemSample:
    """A seeded synthetic SEM micrograph of microcrystals, with its instance and class truth.

    Parameters
    ----------
    shape
        ``(rows, cols)`` of the whole image, info bar included.
    n_crystals
        Crystals to place (fewer when the field is full).
    pixel_size
        Micrometres per pixel.
    median_diameter
        Median equivalent diameter of the crystals, micrometres (log-normal law).
    size_sigma
        Sigma of the log of the diameter.
    overlap
        Neighbours' centres stay at least ``overlap`` times the sum of their equivalent
        radii apart (1: no occlusion; smaller: deeper occlusion).
    noise
        Gaussian noise sigma, in units of the full grey range.
    streaks
        Mean number of charging streaks.
    perspective
        Stage-tilt perspective: the relative change of magnification across the field
        (about; direction seeded by ``seed``); 0 for none. The truth's sizes are those of
        the warped crystals.
    info_bar
        Add an info bar at the bottom (7 % of the rows, at least 6).
    classes
        Class ids the crystals are drawn from (default: all four, uniformly).
    dtype
        ``"uint8"`` or ``"uint16"``.
    seed
        Random seed.

    Returns
    -------
    SemSample
        Image, visible-part labels, per-crystal class, diameter, aspect and orientation.

    Examples
    --------
    >>> s = sem_image(shape=(128, 160), n_crystals=5, median_diameter=3.0, seed=1)
    >>> s.image.dtype, s.labels.shape, int(s.labels.max()) == len(s.classes)
    (dtype('uint8'), (128, 160), True)
    """
    rows, cols = (check_integer("shape", int(v), minimum=32) for v in shape)
    n_crystals = check_integer("n_crystals", n_crystals, minimum=0)
    pixel_size = check_number("pixel_size", pixel_size, minimum=0.0)
    median_diameter = check_number("median_diameter", median_diameter, minimum=0.0)
    overlap = check_number("overlap", overlap, minimum=0.0)
    perspective = check_number("perspective", perspective, minimum=0.0, strict=False)
    if perspective > 0.5:
        raise VolmlaError(f"perspective must lie in 0..0.5 (a relative change of magnification), got {perspective}")
    if dtype not in ("uint8", "uint16"):
        raise VolmlaError(f"dtype must be 'uint8' or 'uint16', got {dtype!r}")
    pool = np.array(list(range(len(SEM_CLASSES))) if classes is None else list(classes), dtype=np.int64)
    if len(pool) == 0 or pool.min() < 0 or pool.max() >= len(SEM_CLASSES):
        raise VolmlaError(f"classes must be ids in 0..{len(SEM_CLASSES) - 1}, got {list(pool)}")
    rng = np.random.default_rng(seed)
    bar = max(int(round(0.07 * rows)), 6) if info_bar else 0
    field_rows = rows - bar

    # 1. sizes and placement (rejection sampling; drawn back to front in list order)
    radii_px = np.exp(rng.normal(math.log(median_diameter / 2 / pixel_size), size_sigma, n_crystals))
    placed: list[tuple[float, float, float]] = []
    for r in radii_px:
        for _ in range(60):
            cy, cx = rng.uniform(-0.3 * r, field_rows + 0.3 * r), rng.uniform(-0.3 * r, cols + 0.3 * r)
            if all(math.hypot(cy - py, cx - px) >= overlap * (r + pr) for py, px, pr in placed):
                placed.append((cy, cx, float(r)))
                break

    # 2-4. render crystals back to front
    substrate = ndi.gaussian_filter(rng.normal(0, 1, (field_rows, cols)), sigma=max(rows, cols) / 16)
    substrate = 0.13 + 0.04 * substrate / max(float(np.abs(substrate).max()), 1e-9)
    image = substrate.astype(np.float32)
    labels = np.zeros((field_rows, cols), np.int32)
    light = np.array([-0.45, -0.35, 0.82])  # detector side: up-left
    light /= np.linalg.norm(light)
    out_classes, diameters, aspects, orients = [], [], [], []
    wholes: list[tuple[np.ndarray, int, int]] = []
    for cy, cx, r in placed:
        kind = int(rng.choice(pool))
        verts, a, b = _outline(kind, rng)
        harmonics = np.stack([rng.uniform(0.08, 0.22, 5) * np.array([1, 1, 0.6, 0.4, 0.3]),
                              rng.uniform(0, 2 * math.pi, 5)], axis=1)
        area_unit = _shape_scale(kind, verts, (a, b), harmonics)
        scale = r * math.sqrt(math.pi / area_unit)  # pixels per unit: equivalent radius r
        angle = float(rng.uniform(0, math.pi))
        apex = rng.uniform(-0.2, 0.2, 2) if verts is not None else np.zeros(2)
        ext = int(math.ceil(scale * 1.9)) + 2
        y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, field_rows)
        x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, cols)
        # whole crystal on its own grid (for the truth size), then the visible window
        gy, gx = np.mgrid[-ext:ext + 1, -ext:ext + 1].astype(np.float32)
        gy, gx = gy + (int(cy) - cy), gx + (int(cx) - cx)
        c, s = math.cos(angle), math.sin(angle)
        lx, ly = (c * gx + s * gy) / scale, (-s * gx + c * gy) / scale
        rho, height = _gauge(kind, lx, ly, verts, (a, b), harmonics, apex)
        whole = rho < 1.0
        if whole.sum() < 9:
            continue
        out_classes.append(kind)
        diameters.append(2 * math.sqrt(whole.sum() / math.pi) * pixel_size)
        aspects.append(_moments_aspect(whole))
        orients.append(angle % math.pi)
        wholes.append((whole, int(cy) - ext, int(cx) - ext))
        label = len(out_classes)
        sl = (slice(y0 - (int(cy) - ext), y1 - (int(cy) - ext)), slice(x0 - (int(cx) - ext), x1 - (int(cx) - ext)))
        inside, h, rho_w = whole[sl], height[sl] * scale * rng.uniform(0.5, 0.9), rho[sl]
        hy, hx = np.gradient(h)
        norm = np.sqrt(hx**2 + hy**2 + 1.0)
        nz = 1.0 / norm
        facing = np.clip((-hx * light[1] - hy * light[0] + light[2]) / norm, 0.0, 1.0)
        tilt = np.clip(1.0 / nz - 1.0, 0.0, 2.5)
        rim = np.exp(-np.clip(1.0 - rho_w, 0, None) * scale / 2.0)
        grey = rng.uniform(0.38, 0.5) + 0.12 * tilt + 0.22 * facing + 0.3 * rim
        window = image[y0:y1, x0:x1]
        window[inside] = grey[inside]
        labels[y0:y1, x0:x1][inside] = label

    # 5. perspective: warp image and labels, recompute the truth on the warped crystals
    if perspective > 0:
        image, labels, keep, diameters, aspects = _perspective(image, labels, wholes, perspective, pixel_size, seed)
        out_classes = [out_classes[k] for k in keep]
        orients = [orients[k] for k in keep]

    # 6. detector: PSF, charging streaks, noise; then the info bar
    image = ndi.gaussian_filter(image, 0.8)
    for _ in range(int(rng.poisson(streaks))):
        row, start = int(rng.integers(0, field_rows)), int(rng.integers(0, cols))
        length = np.arange(cols - start, dtype=np.float32)
        image[row, start:] += 0.35 * np.exp(-length / rng.uniform(20, 200))
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    top = 255 if dtype == "uint8" else 65535
    field = (np.clip(image, 0, 1) * top).round().astype(dtype)
    full = np.zeros((rows, cols), dtype=dtype)
    full[:field_rows] = field
    full_labels = np.zeros((rows, cols), np.int32)
    full_labels[:field_rows] = labels
    if bar:
        for _ in range(int(cols / 12)):  # text-like white marks
            ty, tx = int(rng.integers(field_rows + 2, rows - 2)), int(rng.integers(0, cols - 6))
            full[ty:ty + int(rng.integers(2, max(3, bar // 2))), tx:tx + int(rng.integers(1, 6))] = top
    return SemSample(full, full_labels, np.array(out_classes, np.int8), np.array(diameters), np.array(aspects),
                     np.array(orients), float(pixel_size), bar)


_SET_FILE = re.compile(r"sem_[0-9]{3,}(\.tif|\.labels\.tif|\.classes\.csv)")
"""The files :func:`write_sem_images` writes (an earlier set is replaced by ``overwrite``)."""


def write_sem_images(out_dir: str | Path, *, n: int = 8, seed: int = 0, overwrite: bool = False,
                     **options: Any) -> list[Path]:
    """Write ``n`` synthetic micrographs as a labelled folder (TIFF with FEI pixel size).

    Per image ``sem_NNN.tif`` (the FEI ``[Scan] PixelWidth`` tag gives the pixel size,
    as a Thermo Fisher microscope writes it), ``sem_NNN.labels.tif`` (visible-part
    instance labels, same shape) and ``sem_NNN.classes.csv`` (``crystal_id``, ``class``,
    ``diameter_um``, ``aspect``, ``orientation``): the layout
    :func:`volmla.sem.folder_training_table` reads.

    Parameters
    ----------
    out_dir
        The folder (created; a non-empty one needs ``overwrite``).
    n
        Images (seeds ``seed .. seed + n - 1``).
    seed
        First seed.
    overwrite
        Write into a non-empty folder, replacing files of the same names.
    **options
        Passed to :func:`sem_image`.

    Returns
    -------
    list of pathlib.Path
        The image files.

    Examples
    --------
    >>> import tempfile
    >>> files = write_sem_images(tempfile.mkdtemp() + "/syn", n=1, shape=(96, 128), n_crystals=3)
    >>> files[0].name
    'sem_000.tif'
    """
    import pandas as pd
    import tifffile

    n = check_integer("n", n, minimum=1)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise VolmlaError(f"output folder {out} exists and is not empty: pass overwrite=True to replace it")
    if out.is_dir() and overwrite:  # replace an earlier set (none of its images left over), never other files
        ours = [f for f in out.iterdir() if f.is_file() and _SET_FILE.fullmatch(f.name)]
        theirs = sorted(f.name for f in out.iterdir() if f not in ours)
        if theirs:
            raise VolmlaError(f"output folder {out} holds files that are no synthetic SEM set ({theirs[0]}, ...): "
                              "refusing to replace it")
        for f in ours:
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n):
        s = sem_image(seed=seed + k, **options)
        name = out / f"sem_{k:03d}"
        fei = f"[Scan]\nPixelWidth={s.pixel_size * 1e-6!r}\nPixelHeight={s.pixel_size * 1e-6!r}\n"
        tifffile.imwrite(f"{name}.tif", s.image, extratags=[(34682, "s", 0, fei, True)])
        tifffile.imwrite(f"{name}.labels.tif", s.labels, compression="zlib")
        pd.DataFrame({"crystal_id": np.arange(1, len(s.classes) + 1),
                      "class": [SEM_CLASSES[c] for c in s.classes], "diameter_um": s.diameter_um,
                      "aspect": s.aspect, "orientation": s.orientation}).to_csv(f"{name}.classes.csv", index=False)
        files.append(Path(f"{name}.tif"))
    return files
