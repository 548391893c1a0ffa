"""How much context a U-Net needs: measured per model, on its own training scan.

Amortised inference (:mod:`volmla.segment.infer`) predicts each block from a tile that
holds the block plus ``context`` voxels on every side; beyond the tile the network sees
its own zero padding. The full receptive field (the model's ``halo``) makes the labels
independent of the tiling, but it is several times more work than the few voxels a
trained network's effective receptive field reaches (Luo et al. 2016). How few depends
on the model, so it is measured here, once, when the model is trained:

1. **crops** (:func:`context_crops`): a few cubes of the normalised training scan, each
   a block of ``size`` voxels (:data:`CALIBRATION_BLOCK`, less when the scan is smaller)
   plus the full halo on every side (a 2-D model: a few slices, the halo in y and x);
2. **agreement** (:func:`context_agreement`): the block's labels from the crop with the
   full halo are the reference; for every candidate context on the pooling grid (0, the
   size multiple, twice it, ... below the halo) the block is predicted again from the
   crop cut to that context, and the share of equal labels is counted over all crops;
3. **choice** (:func:`choose_context`): the smallest context whose agreement reaches
   :data:`CONTEXT_AGREEMENT` with a margin for the sample's size (the rule of three:
   ``3 / n`` for ``n`` block voxels, so a 95 % upper bound on the disagreement stays
   below the bar), else the halo. A scan too small to measure below the bar (fewer than
   ``3 / (1 - bar)`` block voxels) is not calibrated.

Everything here takes a ``predict`` callable (``(N, 1, ...) float32 -> (N, C, ...)``
logits), so it runs on a torch module (:func:`volmla.segment.train.train`) as well as an
ONNX Runtime session, and never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from volmla.errors import VolmlaError

__all__ = [
    "CALIBRATION_BLOCK",
    "CALIBRATION_CROPS",
    "CONTEXT_AGREEMENT",
    "block_voxels",
    "choose_context",
    "context_agreement",
    "context_crops",
    "enough_voxels",
]

CONTEXT_AGREEMENT = 0.999
"""Share of a block's labels that must equal those predicted with the full halo: the
bar issue 20 sets for half-precision inference (argmax agreement >= 99.9 %)."""

CALIBRATION_BLOCK = 64
"""Edge (voxels) of the calibration block: a small amortised block, so the share of
voxels near a tile face (where the context matters) is higher than in the blocks
inference runs (96-200 voxels), and the agreement measured errs on the safe side."""

CALIBRATION_CROPS = 2
"""Crops per calibration (a 2-D model takes 4 slices per crop): two 64^3 blocks are
524,288 voxels, so the rule-of-three margin is 6e-6, and the demo's U-Net (halo 28) is
calibrated in about 10 s on 2 cores."""

Predict = Callable[[np.ndarray], np.ndarray]


def context_crops(
    image: np.ndarray | Callable[[tuple[slice, ...]], np.ndarray],
    shape: Sequence[int],
    *,
    halo: int,
    multiple: int,
    dim: int,
    rng: np.random.Generator,
    crops: int = CALIBRATION_CROPS,
    block: int = CALIBRATION_BLOCK,
) -> list[np.ndarray]:
    """Crops of a scan to calibrate the context on: ``block + 2 halo`` per spatial axis.

    Parameters
    ----------
    image
        The (normalised) scan, or a function that reads a region of it given slices
        (e.g. a lazy volume's ``__getitem__`` followed by ``compute``).
    shape
        The scan's shape (z, y, x).
    halo, multiple
        The model's full halo and size multiple (its pooling grid).
    dim
        3 (cubes) or 2 (``4`` slices at random z, the halo in y and x only).
    rng
        Where the crops lie (seeded by the caller).
    crops, block
        How many crops, and the block edge wanted (shrunk, on the pooling grid, to fit
        the scan).

    Returns
    -------
    list of numpy.ndarray
        float32 crops; empty when the scan cannot hold a block of ``multiple`` voxels
        plus the halo (the context is then left to :func:`volmla.segment.infer.default_context`).
    """
    spatial = [int(n) for n in _spatial(shape, dim)]
    room = min(spatial) - 2 * int(halo)
    size = min(int(block), room - room % max(int(multiple), 1))
    if size < max(int(multiple), 1):
        return []
    edge = size + 2 * int(halo)
    read = image.__getitem__ if isinstance(image, np.ndarray) else image
    out = []
    for _ in range(int(crops)):
        starts = [int(rng.integers(0, n - edge + 1)) for n in spatial]
        box = tuple(slice(s, s + edge) for s in starts)
        if dim == 2:  # a few slices at random z, the same (y, x) window
            zs = np.sort(rng.choice(int(shape[0]), size=min(4, int(shape[0])), replace=False))
            region = np.stack([np.asarray(read((slice(int(z), int(z) + 1), *box)))[0] for z in zs])
        else:
            region = np.asarray(read(box))
        out.append(region.astype(np.float32, copy=False))
    return out


def block_voxels(crops: Sequence[np.ndarray], *, halo: int, dim: int) -> int:
    """Voxels of the blocks inside ``crops`` (each less ``halo`` on every spatial side).

    Examples
    --------
    >>> block_voxels([np.zeros((20, 20, 20))], halo=6, dim=3), block_voxels([np.zeros((4, 20, 20))], halo=6, dim=2)
    (512, 256)
    """
    total = 0
    for crop in crops:
        lead = 1 if dim == 3 else int(crop.shape[0])
        total += lead * int(np.prod([max(int(n) - 2 * int(halo), 0) for n in _spatial(crop.shape, dim)]))
    return total


def _spatial(shape: Sequence[int], dim: int) -> tuple[int, ...]:
    """The axes a model's context spans: all three for a 3-D model, (y, x) for a 2-D one."""
    return tuple(shape) if dim == 3 else tuple(shape[1:])


def _labels(predict: Predict, tile: np.ndarray, dim: int) -> np.ndarray:
    x = tile[None, None] if dim == 3 else tile[:, None]
    logits = np.asarray(predict(np.ascontiguousarray(x, np.float32)))
    return logits.argmax(1)[0] if dim == 3 else logits.argmax(1)


def context_agreement(predict: Predict, crops: Sequence[np.ndarray], *, halo: int, multiple: int,
                      dim: int, stop: float | None = None) -> dict[int, float]:
    """Share of block labels equal to the full-halo prediction, per candidate context.

    Parameters
    ----------
    predict
        ``(N, 1, ...) float32 -> (N, C, ...)`` logits (a torch module wrapped to NumPy,
        an ONNX Runtime session's ``run``).
    crops
        From :func:`context_crops`: each a block plus ``halo`` on every spatial side.
    halo, multiple
        The model's full halo and size multiple; candidates are ``0, multiple, ...``
        below ``halo``.
    dim
        3 or 2 (crops of slices).
    stop
        Stop at the first context whose agreement reaches this (the larger contexts, the
        costliest tiles, are then not run); None: measure them all.

    Returns
    -------
    dict
        Context (voxels) -> agreement in [0, 1], in increasing context; the halo itself
        agrees by definition.

    Examples
    --------
    A "network" that averages 3 voxels along x needs one voxel of context, no more:

    >>> def predict(x):
    ...     s = (x[:, :, :, :, :-2] + x[:, :, :, :, 1:-1] + x[:, :, :, :, 2:]) / 3
    ...     s = np.pad(s, [(0, 0)] * 4 + [(1, 1)])
    ...     return np.concatenate([s, 0.5 - s + 0 * x], axis=1)
    >>> rng = np.random.default_rng(0)
    >>> crop = rng.random((12, 12, 12)).astype(np.float32)
    >>> agreement = context_agreement(predict, [crop], halo=4, multiple=2, dim=3)
    >>> agreement[0] < 1.0, agreement[2]
    (True, 1.0)
    """
    h, m = int(halo), max(int(multiple), 1)
    if h < 0 or not crops:
        raise VolmlaError("context_agreement needs at least one crop and a halo >= 0")
    lead = () if dim == 3 else (slice(None),)
    references = []
    for crop in crops:
        spatial = _spatial(crop.shape, dim)
        if min(spatial) <= 2 * h:
            raise VolmlaError(f"a crop of shape {crop.shape} holds no block inside a halo of {h}")
        references.append(_labels(predict, crop, dim)[lead + tuple(slice(h, n - h) for n in spatial)])
    total = sum(r.size for r in references)
    out: dict[int, float] = {}
    for c in range(0, h, m):
        equal = 0
        for crop, reference in zip(crops, references, strict=True):
            spatial = _spatial(crop.shape, dim)
            got = _labels(predict, crop[lead + tuple(slice(h - c, n - h + c) for n in spatial)], dim)
            core = lead + tuple(slice(c, n - c) for n in got.shape[-len(spatial):])
            equal += int((got[core] == reference).sum())
        out[c] = equal / total
        if stop is not None and out[c] >= stop:
            break
    out[h] = 1.0
    return out


def enough_voxels(voxels: int, *, bar: float = CONTEXT_AGREEMENT) -> bool:
    """Whether ``voxels`` block voxels can show an agreement at ``bar`` short of 100 %
    (the rule of three: at least ``3 / (1 - bar)``).

    Examples
    --------
    >>> enough_voxels(2_000), enough_voxels(3 * 64**3)
    (False, True)
    """
    return int(voxels) * (1.0 - float(bar)) >= 3.0


def choose_context(agreement: Mapping[int, float], *, voxels: int, bar: float = CONTEXT_AGREEMENT) -> int:
    """The smallest context whose agreement reaches ``bar`` plus ``3 / voxels`` (the
    largest measured, i.e. the halo, if none).

    Parameters
    ----------
    agreement
        From :func:`context_agreement`.
    voxels
        The block voxels the agreement was counted over (the margin shrinks with them).
    bar
        The share of equal labels required (default :data:`CONTEXT_AGREEMENT`).

    Returns
    -------
    int

    Examples
    --------
    >>> choose_context({0: 0.9, 4: 0.998, 8: 0.9996, 12: 1.0}, voxels=30_000)
    8
    >>> choose_context({0: 0.9, 4: 0.998, 8: 0.9996, 12: 1.0}, voxels=4_000)  # 8 is not sure enough
    12
    """
    if not agreement:
        raise VolmlaError("choose_context needs at least one measured context")
    if int(voxels) < 1:
        raise VolmlaError(f"choose_context needs the voxels counted (>= 1), got {voxels!r}")
    ok = [c for c, a in agreement.items() if a >= float(bar) + 3.0 / int(voxels)]
    return int(min(ok)) if ok else int(max(agreement))
