"""Train a U-Net on sparse labels (needs torch).

1. Labels: a sparse label volume stores ``phase + SPARSE_LABEL_OFFSET`` (0 = unlabelled,
   1 = void, 2 = phase 1, ...); with ``target="particles"`` the labels are particle ids
   and every patch's target is background / interior / boundary
   (:func:`volmla.segment.particle_targets`).
2. Planes: one pass over the labels counts labelled voxels per z-plane (a small global
   reduction). The labelled planes are split by plane index into a training set and a
   validation set (the last ``val_fraction`` of them in z order); validation labels
   never enter training (they are masked out of training patches).
3. Normalisation: the 1st and 99th intensity percentiles from an out-of-core histogram
   (:func:`volmla.engine.reduce.histogram`, :func:`~volmla.engine.reduce.histogram_percentile`) map intensities to about [0, 1]; they
   are stored with the model and applied again at inference.
4. Sampling: each patch is centred near a random labelled voxel of a training plane
   (the plane in the middle half of the patch in z, so anisotropic patches such as
   32 x 96 x 96 put many labelled voxels in every step) and read from the lazy
   (Zarr-backed) volume by Dask slicing, so only patches that hold labels are read and
   the volume is never loaded.
5. Augmentation: a multiplicative gain on the raw patch (``gain``, mimics cupping),
   flips, rot90 in the (y, x) plane, zoom 0.9-1.1 with a small shear (one affine
   resampling, linear for intensities, nearest for labels) and intensity jitter (gain
   and offset).
6. Loss: cross-entropy plus soft Dice, both over labelled voxels only; Adam.
7. Every ``val_every`` iterations the model is scored on fixed validation patches; the
   best state (lowest validation loss) is kept and training stops after ``patience``
   rounds without improvement. Runs are seeded and use deterministic algorithms, so the
   same inputs and config give the same weights.
8. Context: the smallest context (voxels around a predicted block) whose labels agree
   with the full halo's on :data:`volmla.segment.context.CONTEXT_AGREEMENT` of the voxels,
   measured on crops of the scan (:mod:`volmla.segment.context`), is saved with the model
   and exported to its metadata, where amortised inference reads it.

This module is one piece although it passes 500 lines: the steps above share the
:class:`TrainConfig`, the torch device and the seeded random state of one training run,
and the patch sampler, augmentation, loss and validation exist only for :func:`train`
(the model itself is :mod:`volmla.segment.model`; export is :mod:`volmla.segment.export`).
Splitting them would spread one loop's state over modules without a second user.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.segment import PARTICLE_CLASSES, SPARSE_LABEL_OFFSET, particle_targets
from volmla.segment.forest import read_region
from volmla.segment.infer import MAX_THREADS
from volmla.segment.model import NORMS, UNet, receptive_halo, size_multiple
from volmla.segment.sessions import RESCALES
from volmla.types import VolumeLike

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "load_model", "quick_train_3d", "save_model", "train"]

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and training options.

    Attributes
    ----------
    dim
        2 (slice-wise U-Net) or 3.
    depth, base, norm
        U-Net levels, channels of the first level, normalisation.
    patch
        Patch edge(s) ``(z, y, x)`` (for ``dim=2`` only ``(y, x)`` is used); rounded up to
        a multiple of ``2 ** (depth - 1)``.
    batch
        Patches per step.
    iterations
        Maximum optimisation steps.
    lr
        Adam learning rate.
    val_fraction
        Share of labelled planes held out for validation (the last ones in z order).
    val_every, patience
        Validation period (steps) and early-stopping patience (validation rounds).
    val_patches
        Fixed validation patches drawn once from the validation planes.
    seed
        Seeds torch and NumPy.
    threads
        ``torch.set_num_threads`` during training, 1..:data:`volmla.segment.infer.MAX_THREADS`
        (None: leave as is).
    device
        ``auto`` (CUDA when torch sees it), ``cpu`` or ``gpu``.
    augment
        Flips, rot90, zoom/shear, intensity jitter.
    jitter
        Intensity jitter of the augmentation: gain ``1 +- jitter``, offset ``+- jitter / 2``
        (in normalised units, where the 1st..99th percentile span is 1). Keep it below the
        contrast between the phases to separate (quartz and feldspar differ by a few %).
    gain
        Multiplicative gain ``1 +- gain`` applied to the raw intensities of a patch before
        normalisation (augmentation only). It mimics beam-hardening cupping (a slowly
        varying gain) and so pushes the network to judge a grain against its surroundings
        (the matrix) rather than by absolute grey value, which cupping shifts by more than
        the quartz/feldspar contrast. 0 disables it.
    target
        ``phases`` (labels are sparse phase labels) or ``particles`` (labels are
        particle ids; classes background/interior/boundary).
    classes
        Class names (default: from the labels' phase names, ``void`` first).
    percentiles
        Intensity percentiles mapped to 0 and 1 (``rescale="fixed"``).
    rescale
        ``"fixed"``: the training scan's ``percentiles`` are stored as intensities and
        every scan the model segments is mapped by them (scans of the same instrument
        settings). ``"modes"``: every scan, the training one included, is mapped by its own
        void and solid histogram modes (void 0, solid 1;
        :func:`volmla.engine.reduce.histogram_modes`), so the model applies to scans of
        any intensity scale or offset, at the price of one histogram pass per scan.
    tile
        Inference tile stored in the exported model (default 64 for 3-D, 256 for 2-D).
    """

    dim: Literal[2, 3] = 3
    depth: int = 3
    base: int = 8
    norm: str = "batch"
    patch: int | tuple[int, ...] = 32
    batch: int = 4
    iterations: int = 500
    lr: float = 3e-3
    val_fraction: float = 0.34
    val_every: int = 25
    patience: int = 8
    val_patches: int = 8
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    augment: bool = True
    jitter: float = 0.01
    gain: float = 0.0
    target: Literal["phases", "particles"] = "phases"
    classes: tuple[str, ...] | None = None
    percentiles: tuple[float, float] = (1.0, 99.0)
    rescale: Literal["fixed", "modes"] = "fixed"
    tile: int | tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a bad option when the config is made, before any work (:func:`train` checks again)."""
        _validate(self)


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    model: UNet
    """The network with the best validation weights, in eval mode, on the CPU."""
    classes: tuple[str, ...]
    norm: tuple[float, float]
    """Intensities mapped to 0 and 1 (``(x - lo) / (hi - lo)``)."""
    halo: int
    tile: tuple[int, ...]
    history: list[dict[str, float]]
    best_iteration: int
    train_planes: tuple[int, ...]
    val_planes: tuple[int, ...]
    config: TrainConfig
    context: int | None = None
    """Context voxels amortised inference keeps (:mod:`volmla.segment.context`); None:
    the scan was too small to measure it."""
    context_agreement: dict[int, float] | None = None
    """Share of labels equal to the full halo's, per context measured."""


# ----------------------------------------------------------------------------- checks


def _validate(config: TrainConfig) -> TrainConfig:
    if config.dim not in (2, 3):
        raise VolmlaError(f"dim must be 2 or 3, got {config.dim!r}")
    if not 1 <= config.depth <= 5:
        raise VolmlaError(f"depth must lie in 1..5, got {config.depth!r}")
    if config.base < 1:
        raise VolmlaError(f"base must be at least 1, got {config.base!r}")
    if config.rescale not in RESCALES:
        raise VolmlaError(f"rescale must be one of {RESCALES}, got {config.rescale!r}")
    if config.norm not in NORMS:
        raise VolmlaError(f"norm must be one of {NORMS}, got {config.norm!r}")
    if config.iterations < 1 or config.batch < 1:
        raise VolmlaError(f"iterations and batch must be at least 1, got {config.iterations} and {config.batch}")
    if not 0 <= config.val_fraction < 1:
        raise VolmlaError(f"val_fraction must lie in [0, 1), got {config.val_fraction!r}")
    if config.target not in ("phases", "particles"):
        raise VolmlaError(f"target must be 'phases' or 'particles', got {config.target!r}")
    if not 0 <= config.gain < 0.5 or not 0 <= config.jitter < 0.5:
        raise VolmlaError(f"gain and jitter must lie in [0, 0.5), got {config.gain!r} and {config.jitter!r}")
    if config.device not in ("auto", "cpu", "gpu"):
        raise VolmlaError(f"device must be one of ('auto', 'cpu', 'gpu'), got {config.device!r}")
    threads = config.threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int | np.integer)
                                or not 1 <= threads <= MAX_THREADS):
        # each is an OS thread torch makes: thousands hang the machine, 0 or fewer is meaningless
        raise VolmlaError(f"threads must be from 1 to {MAX_THREADS} (torch CPU threads), got threads={threads!r}")
    return config


def _patch_shape(config: TrainConfig) -> tuple[int, ...]:
    p = config.patch
    values = [int(p)] * 3 if isinstance(p, int | np.integer) else [int(v) for v in p]
    if len(values) == 2:
        values = [1, *values]
    if len(values) != 3 or min(values) < 1:
        raise VolmlaError(f"patch must be one positive integer or (z, y, x), got {p!r}")
    m = size_multiple(config.depth)
    spatial = [-(-v // m) * m for v in values]
    return (1, *spatial[1:]) if config.dim == 2 else tuple(spatial)


TRAIN_BYTES_PER_VOXEL = 100
"""Training memory per patch voxel, per first-level channel (``base``) and per batch item:
activations kept for the backward pass over every level, measured with torch on CPU at
67-96 bytes (depth 3 and 4, base 8 and 16, patches of 64^3 and 96^3)."""


def _check_patch_memory(config: TrainConfig, patch: tuple[int, ...]) -> None:
    """Refuse a patch whose training would not fit in the memory available now (before
    any work: such a run is killed by the system, not stopped with an error)."""
    import psutil

    need = TRAIN_BYTES_PER_VOXEL * config.base * config.batch * math.prod(patch)
    have = psutil.virtual_memory().available
    if need > have:
        raise VolmlaError(f"patch {list(patch)} with batch {config.batch} and base {config.base} needs about "
                          f"{need / 1e9:.1f} GB to train, more than the {have / 1e9:.1f} GB available: give a "
                          "smaller patch or batch")


def _tile_shape(config: TrainConfig) -> tuple[int, ...]:
    m = size_multiple(config.depth)
    t = config.tile if config.tile is not None else (64 if config.dim == 3 else 256)
    values = [int(t)] * config.dim if isinstance(t, int | np.integer) else [int(v) for v in t][-config.dim :]
    return tuple(max(m, -(-v // m) * m) for v in values)


# ----------------------------------------------------------------------------- sampling


class _Sampler:
    """Draws patches centred near labelled voxels of a set of planes, classes balanced.

    The centre's class is drawn uniformly among the classes present (so a rare phase is
    seen as often as the void), then a plane and a voxel of that class. The labelled
    plane lies in the middle half of the patch in z, so its voxels see context above and
    below as they do at inference; in y and x the voxel lies anywhere in the patch.
    """

    def __init__(self, intensity: da.Array, labels: da.Array, planes: Sequence[int], allowed: np.ndarray,
                 patch: tuple[int, ...], target: str, coords_per_plane: int, rng: np.random.Generator) -> None:
        self.intensity, self.labels, self.patch, self.target = intensity, labels, patch, target
        self.allowed = allowed  # per-plane bool: planes whose labels this sampler may use
        by_class: dict[int, list[np.ndarray]] = {}
        for z in planes:
            plane = np.asarray(labels[z].compute(scheduler="synchronous"))
            if target == "particles":
                plane = particle_targets(plane[None])[0].astype(np.int64) + 1
            for value in np.unique(plane[plane > 0]):
                zyx = np.argwhere(plane == value)
                if len(zyx) > coords_per_plane:
                    zyx = zyx[rng.choice(len(zyx), coords_per_plane, replace=False)]
                by_class.setdefault(int(value), []).append(np.column_stack([np.full(len(zyx), z), zyx]))
        if not by_class:
            raise VolmlaError("labels hold no labelled voxel (values > 0) in the planes used for training")
        self.coords = [np.concatenate(by_class[k]) for k in sorted(by_class)]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pool = self.coords[rng.integers(len(self.coords))]
        centre = tuple(int(v) for v in pool[rng.integers(len(pool))])
        start = []
        for axis, (c, p, n) in enumerate(zip(centre, self.patch, self.intensity.shape, strict=True)):
            if axis == 0 and p == 1:
                start.append(c)
                continue
            if axis == 0:  # keep the labelled plane in the middle half: full z context both ways
                s = c - int(rng.integers(p // 4, max(p // 4 + 1, p - p // 4)))
            else:
                s = c - int(rng.integers(0, p))
            start.append(int(np.clip(s, 0, max(n - p, 0))) if n >= p else (n - p) // 2)
        image = read_region(self.intensity, start, self.patch).astype(np.float32)
        raw = read_region(self.labels, start, self.patch)
        if self.target == "particles":
            target = particle_targets(raw).astype(np.int64)
        else:
            target = raw.astype(np.int64) - SPARSE_LABEL_OFFSET  # -1 = unlabelled
        planes = np.arange(start[0], start[0] + self.patch[0])
        ok = self.allowed[np.clip(planes, 0, len(self.allowed) - 1)] & (planes >= 0) & (planes < len(self.allowed))
        target[~ok] = -1
        return image, target


def _augment(image: np.ndarray, target: np.ndarray, rng: np.random.Generator, dim: int,
             jitter: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Flips, rot90 (y, x), zoom 0.9-1.1 with shear, intensity gain/offset (3-D arrays; 2-D as 1-plane)."""
    axes = (1, 2) if dim == 2 else (0, 1, 2)
    for axis in axes:
        if rng.random() < 0.5:
            image, target = np.flip(image, axis), np.flip(target, axis)
    if image.shape[1] == image.shape[2]:
        k = int(rng.integers(4))
        image, target = np.rot90(image, k, axes=(1, 2)), np.rot90(target, k, axes=(1, 2))
    if rng.random() < 0.5:
        matrix = np.eye(3) / rng.uniform(0.9, 1.1)
        i, j = rng.choice(axes, 2, replace=False)
        matrix[i, j] += rng.uniform(-0.1, 0.1)
        if dim == 2:
            matrix[0] = (1, 0, 0)
        centre = (np.array(image.shape) - 1) / 2
        offset = centre - matrix @ centre
        image = ndi.affine_transform(image, matrix, offset=offset, order=1, mode="reflect")
        target = ndi.affine_transform(target + 1, matrix, offset=offset, order=0, mode="nearest") - 1
    image = image * rng.uniform(1 - jitter, 1 + jitter) + rng.uniform(-jitter / 2, jitter / 2)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)


def _batch(samples: list[tuple[np.ndarray, np.ndarray]], dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([s[0] for s in samples])  # (B, Z, Y, X)
    targets = np.stack([s[1] for s in samples])
    if dim == 2:
        images, targets = images[:, 0], targets[:, 0]
    return torch.from_numpy(images[:, None].copy()).to(device), torch.from_numpy(targets.copy()).to(device)


# ----------------------------------------------------------------------------- loss


def masked_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice over labelled voxels (``target >= 0``; -1 is unlabelled).

    Parameters
    ----------
    logits
        ``(N, C, ...)`` scores.
    target
        ``(N, ...)`` class ids, -1 where unlabelled.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    n_classes = logits.shape[1]
    mask = target >= 0
    safe = target.clamp(min=0)
    count = mask.sum().clamp(min=1)
    ce = (F.cross_entropy(logits, safe, reduction="none") * mask).sum() / count
    probs = torch.softmax(logits, dim=1) * mask.unsqueeze(1)
    onehot = F.one_hot(safe, n_classes).movedim(-1, 1).to(probs.dtype) * mask.unsqueeze(1)
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return ce + dice


# ----------------------------------------------------------------------------- training


def _torch_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device == "gpu":
        raise VolmlaError("device gpu asked for, but torch sees no CUDA device")
    return torch.device("cpu")


def _class_names(config: TrainConfig, attrs: dict[str, Any], n_classes: int) -> tuple[str, ...]:
    if config.classes is not None:
        if len(config.classes) != n_classes:
            raise VolmlaError(f"classes must name {n_classes} classes (void first), got {len(config.classes)}: {config.classes}")
        return tuple(config.classes)
    if config.target == "particles":
        return PARTICLE_CLASSES
    phases = {int(k): str(v) for k, v in (attrs.get("phases") or {}).items()}
    return ("void", *(phases.get(k, f"phase{k}") for k in range(1, n_classes)))


def train(intensity: VolumeLike, labels: VolumeLike, *, config: TrainConfig | None = None) -> TrainResult:
    """Train a U-Net on (sparse) labels.

    Parameters
    ----------
    intensity
        The CT volume: xarray.DataArray from :func:`volmla.io.open_volume`, Dask or NumPy.
    labels
        Same shape. Sparse phase labels storing ``phase + 1`` (0 unlabelled), or with
        ``config.target="particles"`` a particle id volume.
    config
        :class:`TrainConfig` (default: a small 3-D U-Net).

    Returns
    -------
    TrainResult
        Best model (eval mode, CPU), class names, normalisation, halo, tile, history.

    Examples
    --------
    >>> result = train(vol, labels, config=TrainConfig(iterations=200))  # doctest: +SKIP
    >>> save_model(result, "model.pt")  # doctest: +SKIP
    """
    from volmla.engine.cluster import compute
    from volmla.engine.reduce import histogram, histogram_modes, histogram_percentile

    config = _validate(config or TrainConfig())
    image = as_volume(intensity, name="intensity").data
    lab, lab_attrs = as_volume(labels, name="labels", integer=True)
    if image.shape != lab.shape:
        raise VolmlaError(f"labels shape {lab.shape} differs from the intensity shape {image.shape}")
    patch = _patch_shape(config)
    _check_patch_memory(config, patch)
    device = _torch_device(config.device)
    rng = np.random.default_rng(config.seed)

    # 2. labelled planes and the number of classes (one pass over the labels)
    per_plane, top = compute([(lab > 0).sum(axis=(1, 2)), lab.max()], desc="scanning labels")
    planes = np.flatnonzero(np.asarray(per_plane) > 0)
    if config.target == "particles":
        planes, n_classes = np.arange(lab.shape[0]), 3
    else:
        n_classes = int(top) - SPARSE_LABEL_OFFSET + 1
    if not len(planes) or n_classes < 2:
        raise VolmlaError(f"labels need at least two classes of labelled voxels (values 1..C, 0 = unlabelled); found maximum {int(top)}")
    if config.target == "phases" and int(top) > 255:  # phases are uint8
        raise VolmlaError(f"labels must hold phase + 1 below 256, got {int(top)}: an intensity volume?")
    n_val = int(round(config.val_fraction * len(planes))) if len(planes) > 1 else 0
    n_val = min(n_val, len(planes) - 1)
    train_planes, val_planes = planes[: len(planes) - n_val], planes[len(planes) - n_val :]
    classes = _class_names(config, lab_attrs, n_classes)

    # 3. normalisation
    hist = histogram(image)
    if config.rescale == "modes":
        lo, hi = histogram_modes(hist)
    else:
        lo, hi = (histogram_percentile(hist, q) for q in config.percentiles)
    if hi <= lo:
        hi = lo + 1.0
    scale = 1.0 / (hi - lo)
    logger.info("train planes %s, validation planes %s, %d classes, norm %.4g..%.4g",
                train_planes.tolist(), val_planes.tolist(), n_classes, lo, hi)

    allowed_train = np.zeros(image.shape[0], bool)
    allowed_train[train_planes] = True
    allowed_val = np.zeros(image.shape[0], bool)
    allowed_val[val_planes] = True
    sampler = _Sampler(image, lab, train_planes.tolist(), allowed_train, patch, config.target, 20000, rng)
    val_set = None
    if len(val_planes):
        vrng = np.random.default_rng(config.seed + 1)
        vsampler = _Sampler(image, lab, val_planes.tolist(), allowed_val, patch, config.target, 20000, vrng)
        val_set = [vsampler.sample(vrng) for _ in range(config.val_patches)]
        val_set = [((im - lo) * scale, t) for im, t in val_set]

    # 6-7. optimisation, seeded and deterministic
    previous_threads = torch.get_num_threads()
    previous_det = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # CPU kernels used here are deterministic; on CUDA pin cuDNN to deterministic
    # algorithms (torch.use_deterministic_algorithms would also import torch._inductor).
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        model = UNet(dim=config.dim, n_classes=n_classes, depth=config.depth, base=config.base, norm=config.norm).to(device)  # type: ignore[arg-type]
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.iterations, eta_min=config.lr * 0.05)
        history: list[dict[str, float]] = []
        best_state, best_loss, best_iteration, bad_rounds = None, math.inf, 0, 0
        running: list[float] = []
        t0 = time.perf_counter()
        for iteration in range(1, config.iterations + 1):
            model.train()
            samples = []
            for _ in range(config.batch):
                im, t = sampler.sample(rng)
                if config.augment and config.gain:
                    im = im * np.float32(rng.uniform(1 - config.gain, 1 + config.gain))
                im = (im - lo) * scale
                if config.augment:
                    im, t = _augment(im, t, rng, config.dim, config.jitter)
                samples.append((im, t))
            x, y = _batch(samples, config.dim, device)
            optimiser.zero_grad(set_to_none=True)
            loss = masked_loss(model(x), y)
            loss.backward()
            optimiser.step()
            schedule.step()
            running.append(float(loss.detach()))
            if iteration % config.val_every and iteration != config.iterations:
                continue
            record = {"iteration": float(iteration), "train_loss": float(np.mean(running)), "seconds": time.perf_counter() - t0}
            running = []
            if val_set is not None:
                record.update(_validate_model(model, val_set, config.dim, device))
                monitor = record["val_loss"]
            else:
                monitor = record["train_loss"]
            history.append(record)
            logger.info("iteration %d: %s", iteration, {k: round(v, 4) for k, v in record.items()})
            if monitor < best_loss - 1e-4:
                best_loss, best_iteration, bad_rounds = monitor, iteration, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_rounds += 1
                if bad_rounds >= config.patience:
                    logger.info("early stop at iteration %d (best %d)", iteration, best_iteration)
                    break
        assert best_state is not None
        model.load_state_dict(best_state)
        model = model.cpu().eval()
        # 8. the context amortised inference needs, measured on this scan
        context, agreement = _calibrate_context(model, image, lo=lo, scale=scale, config=config)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous_det
        torch.set_num_threads(previous_threads)
    return TrainResult(
        model=model,
        classes=classes,
        norm=(float(lo), float(hi)),
        halo=receptive_halo(config.depth),
        tile=_tile_shape(config),
        history=history,
        best_iteration=best_iteration,
        train_planes=tuple(int(z) for z in train_planes),
        val_planes=tuple(int(z) for z in val_planes),
        config=config,
        context=context,
        context_agreement=agreement,
    )


@torch.no_grad()
def _calibrate_context(model: UNet, image: da.Array, *, lo: float, scale: float,
                       config: TrainConfig) -> tuple[int | None, dict[int, float] | None]:
    """Step 8: the smallest context whose labels agree with the full halo's
    (:mod:`volmla.segment.context`), on crops of the normalised scan; ``(None, None)``
    when the scan is too small to measure the bar (:func:`~volmla.segment.context.enough_voxels`)."""
    from volmla.segment.context import (
        CONTEXT_AGREEMENT,
        block_voxels,
        choose_context,
        context_agreement,
        context_crops,
        enough_voxels,
    )

    halo, multiple = receptive_halo(config.depth), size_multiple(config.depth)

    def read(box: tuple[slice, ...]) -> np.ndarray:  # as the patch sampler reads: in this process
        region = read_region(image, [b.start for b in box], [b.stop - b.start for b in box])
        return (region.astype(np.float32) - np.float32(lo)) * np.float32(scale)

    crops = context_crops(read, image.shape, halo=halo, multiple=multiple, dim=config.dim,
                          rng=np.random.default_rng(config.seed + 2))
    voxels = block_voxels(crops, halo=halo, dim=config.dim)
    if not crops or not enough_voxels(voxels):
        logger.info("context: the scan %s is too small to calibrate a halo of %d; the default applies",
                    image.shape, halo)
        return None, None
    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    bar = CONTEXT_AGREEMENT + 3.0 / voxels  # choose_context's margin: stop once it is reached
    agreement = context_agreement(predict, crops, halo=halo, multiple=multiple, dim=config.dim, stop=bar)
    context = choose_context(agreement, voxels=voxels)
    logger.info("context %d of halo %d (label agreement per context: %s)", context, halo,
                {c: round(a, 5) for c, a in agreement.items()})
    return context, agreement


@torch.no_grad()
def _validate_model(model: UNet, val_set: list[tuple[np.ndarray, np.ndarray]], dim: int, device: torch.device) -> dict[str, float]:
    model.eval()
    losses, correct, total = [], 0, 0
    for im, t in val_set:
        x, y = _batch([(im.astype(np.float32), t)], dim, device)
        logits = model(x)
        losses.append(float(masked_loss(logits, y)))
        mask = y >= 0
        correct += int((logits.argmax(1)[mask] == y[mask]).sum())
        total += int(mask.sum())
    return {"val_loss": float(np.mean(losses)), "val_accuracy": correct / max(total, 1)}


# ----------------------------------------------------------------------------- checkpoints


def save_model(result: TrainResult, path: str | Path) -> Path:
    """Save a trained model (weights, architecture, classes, normalisation, halo, tile) to ``.pt``.

    Parameters
    ----------
    result
        From :func:`train`.
    path
        The ``.pt`` file.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    checkpoint = {
        "version": CHECKPOINT_VERSION,
        "arch": {"dim": cfg.dim, "n_classes": len(result.classes), "depth": cfg.depth, "base": cfg.base, "norm": cfg.norm},
        "state_dict": result.model.state_dict(),
        "classes": list(result.classes),
        "norm": list(result.norm),
        "rescale": cfg.rescale,
        "halo": result.halo,
        "context": result.context,
        "context_agreement": dict(result.context_agreement or {}),
        "tile": list(result.tile),
        "target": cfg.target,
        "history": result.history,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "extra"},
    }
    torch.save(checkpoint, path)
    return path


def load_model(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    """Load a ``.pt`` saved by :func:`save_model`: the network (eval mode, CPU) and its metadata.

    Parameters
    ----------
    path
        A ``.pt`` file.

    Returns
    -------
    tuple
        ``(UNet, metadata)``.
    """
    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"model {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's first sentence only: the rest (a page on weights_only) is no help here
        reason = " ".join(str(exc).split()).split(". ")[0][:160] or type(exc).__name__
        raise VolmlaError(f"{path} is not a volmla model checkpoint (.pt of volmla train): {reason}") from None
    if not isinstance(checkpoint, dict) or "arch" not in checkpoint:
        raise VolmlaError(f"{path} is not a volmla model checkpoint (no 'arch' entry)")
    model = UNet(**checkpoint["arch"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), {k: v for k, v in checkpoint.items() if k != "state_dict"}


def quick_train_3d(
    intensity: VolumeLike,
    labels: VolumeLike,
    *,
    iterations: int = 300,
    seed: int = 0,
    threads: int = 2,
    patch: int | tuple[int, ...] = 32,
    lr: float = 3e-3,
    gain: float = 0.0,
) -> TrainResult:
    """A small 3-D U-Net (depth 3, base 8, 32^3 patches) trained in a few minutes on 2 CPU cores.

    The preset the demo uses: labels are sparse phase labels (``phase + 1``) on a few planes.

    Parameters
    ----------
    intensity, labels
        As for :func:`train`.
    iterations, seed, threads
        Optimisation steps, seed, torch CPU threads.
    patch, lr, gain
        Patch edge or ``(z, y, x)``, Adam learning rate, gain augmentation (see
        :class:`TrainConfig`).

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> result = quick_train_3d(ph.intensity, labels)  # doctest: +SKIP
    """
    config = TrainConfig(dim=3, depth=3, base=8, norm="batch", patch=patch, batch=2, iterations=iterations,
                         lr=lr, gain=gain, val_every=25, patience=6, seed=seed, threads=threads, device="cpu")
    return train(intensity, labels, config=config)
