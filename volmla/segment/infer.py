"""Chunked U-Net inference on ONNX Runtime (never imports torch).

1. Model and session: the ONNX file is inspected once and every worker process keeps
   one cached session per (model, providers, fp16, threads) (:mod:`volmla.segment.sessions`:
   metadata, checks, TensorRT -> CUDA -> CPU providers, fp16).
2. Chunks are aligned to the model's pooling grid and made at least as thick as its halo.
3. Blocks: :func:`volmla.engine.overlap.halo_map` extends every block by the model's halo
   (reflect at the volume's faces; chunks are first aligned to the model's pooling grid).
   Inside the block, fixed-shape tiles overlapping by ``overlap`` (and by at least twice the
   model's context, capped at half a tile) run in batches; their softmax scores are
   blended with a Gaussian weight (heaviest at the tile centre, nearly zero within the
   context margin of a tile face, where the network sees padding) in a block-sized buffer
   (tiles that would predict only halo voxels are skipped), and the argmax over classes
   becomes uint8 per block: there is never a float buffer larger than one block's scores. With ``tile="block"`` the whole
   extended block is one tile (no blending), and the output does not depend on the
   chunking at all (batch normalisation, halo >= receptive field).
4. On a GPU, tiles are CuPy arrays bound to the session with IO binding (no host
   round trip per tile) and batches are padded to a fixed shape; on the CPU it is NumPy.
5. Optionally the maximum class probability (0-255) comes back as a second uint8
   volume (computed in the same kernel, packed with the class into uint16).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np

from volmla.engine.blocks import as_volume
from volmla.errors import VolmlaError
from volmla.segment.sessions import (
    GPU_PROVIDERS,
    ModelInfo,
    get_session,
    inspect_model,
    select_providers,
)
from volmla.types import Device, VolumeLike

logger = logging.getLogger(__name__)

__all__ = [
    "Segmentation",
    "predict_block",
    "segment",
]


# ----------------------------------------------------------------------------- per block


def _starts(length: int, tile: int, step: int, need: tuple[int, int], margin: int, k: int) -> list[int]:
    """Tile origins along one axis whose cores (``margin`` in from the faces) cover ``need``.

    Voxels outside ``need`` (the halo) are only context: tiles that would predict nothing
    but halo are skipped. Origins stay on multiples of ``k``.
    """
    top = max(length - tile, 0)
    first = min(max(need[0] - margin, 0) // k * k, top)
    last = min(top, max(first, -(-(need[1] + margin - tile) // k) * k))
    return [*range(first, last, max(step, 1)), last]


def _weights(tile: Sequence[int], margin: Sequence[int]) -> np.ndarray:
    """Blending weight of a tile: a Gaussian (sigma = tile / 8 per axis) times 1e-3 within ``margin`` of a face.

    Voxels near a tile's faces see the network's zero padding instead of real context; the
    tile stride keeps every voxel at least ``margin`` inside some tile, so those border
    predictions only count where nothing better exists.
    """
    w = np.ones(tile, np.float32)
    for axis, (n, r) in enumerate(zip(tile, margin, strict=True)):
        if n == 1:
            continue
        x = np.arange(n, dtype=np.float64)
        g = np.exp(-0.5 * ((x - (n - 1) / 2) / (n / 8)) ** 2)
        g = np.maximum(g / g.max(), 1e-3)
        g[(x < r) | (x >= n - r)] *= 1e-3
        shape = [1] * len(tile)
        shape[axis] = n
        w = w * g.reshape(shape).astype(np.float32)
    return w


def _run(session: Any, info: ModelInfo, batch: Any, xp: Any) -> Any:
    """Scores ``(B, C, ...)`` for a batch ``(B, 1, ...)``; IO binding on the GPU."""
    if xp is np:
        return session.run([info.output_name], {info.input_name: batch})[0]
    batch = xp.ascontiguousarray(batch, dtype=xp.float32)
    device_id = batch.device.id
    binding = session.io_binding()
    binding.bind_input(info.input_name, "cuda", device_id, np.float32, tuple(batch.shape), batch.data.ptr)
    xp.cuda.get_current_stream().synchronize()
    if info.n_classes is None:
        binding.bind_output(info.output_name, "cuda", device_id)
        session.run_with_iobinding(binding)
        return xp.asarray(binding.copy_outputs_to_cpu()[0])
    out = xp.empty((batch.shape[0], info.n_classes, *batch.shape[2:]), dtype=xp.float32)
    binding.bind_output(info.output_name, "cuda", device_id, np.float32, tuple(out.shape), out.data.ptr)
    session.run_with_iobinding(binding)
    return out


def predict_block(
    block: Any,
    *,
    session: Any,
    info: ModelInfo,
    tile: Sequence[int] | None,
    overlap: float = 0.25,
    batch: int = 4,
    fixed_batch: bool = False,
    halo: Sequence[int] = (0, 0, 0),
) -> tuple[Any, Any]:
    """Class ids (uint8) and max probability (float32) of one (halo-extended) block.

    ``tile`` is the tile's spatial shape (``(Y, X)`` for a 2-D model), or None for one
    tile covering the block (padded to the model's size multiple). ``halo`` is the
    context around the block: only the voxels inside it are predicted reliably (the
    halo's own labels are not meant to be used). Works on NumPy or CuPy blocks (the
    result is on the block's device).

    Parameters
    ----------
    block
        The halo-extended intensity block.
    session
        An ONNX Runtime session of the model.
    info
        The model's :class:`~volmla.segment.sessions.ModelInfo`.
    tile
        Tile shape, or None.
    overlap
        Fraction of a tile shared with its neighbours (blended).
    batch
        Tiles per inference call.
    fixed_batch
        Pad the last batch to ``batch`` (steady shapes for GPU engines); ``batch`` is
        first capped at the number of tiles, so a block of one tile is never padded.
    halo
        Context (z, y, x) around the block's own voxels.

    Returns
    -------
    tuple
        ``(class_ids, max_probability)`` on the block's device.
    """
    from volmla.engine.backend import get_array_module

    xp = get_array_module(block)
    x = block.astype(xp.float32)
    if info.norm is not None:
        lo, hi = info.norm
        x = (x - xp.float32(lo)) * xp.float32(1.0 / (hi - lo))
    shape = x.shape
    m = info.multiple
    mults = (1, m, m) if info.dim == 2 else (m, m, m)
    if tile is None:
        t = [-(-n // k) * k for n, k in zip(shape, mults, strict=True)]
        if info.dim == 2:
            t[0] = 1
    else:
        t = [1, *tile] if info.dim == 2 else list(tile)
    padded = [max(ti, -(-n // k) * k) for ti, n, k in zip(t, shape, mults, strict=True)]
    pads = [(0, p - n) for p, n in zip(padded, shape, strict=True)]
    if any(p[1] for p in pads):
        x = xp.pad(x, pads, mode="symmetric" if all(p[1] <= n for p, n in zip(pads, shape, strict=True)) else "edge")
    # keep every voxel at least `margin` (the model's context, at most a quarter tile) inside some tile
    margin = [0 if ti == 1 else min(info.halo, ti // 4) for ti in t]
    steps = [max(k, min(int(ti * (1 - overlap)), ti - 2 * r) // k * k) for ti, r, k in zip(t, margin, mults, strict=True)]
    axes = [_starts(p, ti, st, (h, n - h), r, k)
            for p, ti, st, h, n, r, k in zip(padded, t, steps, halo, shape, margin, mults, strict=True)]
    if info.dim == 2:
        axes[0] = list(range(padded[0]))
    origins = [(z, y, xx) for z in axes[0] for y in axes[1] for xx in axes[2]]
    single = len(origins) == 1 and list(t) == padded  # one tile covering the whole block
    batch = min(batch, len(origins))  # a fixed batch never pads beyond the tiles there are
    n_classes = info.n_classes
    acc: Any = None
    weight: Any = None
    w = None if single else xp.asarray(_weights(t, margin))
    for i in range(0, len(origins), batch):
        group = origins[i : i + batch]
        tiles = xp.stack([x[z : z + t[0], y : y + t[1], xx : xx + t[2]] for z, y, xx in group])[:, None]
        if fixed_batch and len(group) < batch:
            tiles = xp.concatenate([tiles, xp.zeros((batch - len(group), *tiles.shape[1:]), tiles.dtype)])
        feed = tiles[:, :, 0] if info.dim == 2 else tiles
        scores = _run(session, info, feed, xp)
        if info.dim == 2:
            scores = scores[:, :, None]
        scores = scores[: len(group)].astype(xp.float32)
        if n_classes is None:
            n_classes = int(scores.shape[1])
        if single:
            z, y, xx = group[0]
            crop = scores[0][:, : shape[0], : shape[1], : shape[2]]
            labels = crop.argmax(axis=0).astype(xp.uint8)
            e = xp.exp(crop - crop.max(axis=0, keepdims=True))
            return labels, (1.0 / e.sum(axis=0)).astype(xp.float32)
        if acc is None:
            acc = xp.zeros((n_classes, *padded), xp.float32)
            weight = xp.zeros(padded, xp.float32)
        e = xp.exp(scores - scores.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        for (z, y, xx), p in zip(group, probs, strict=True):
            region = (slice(z, z + t[0]), slice(y, y + t[1]), slice(xx, xx + t[2]))
            acc[(slice(None), *region)] += p * w
            weight[region] += w
    assert acc is not None and weight is not None
    acc = acc[:, : shape[0], : shape[1], : shape[2]]
    labels = acc.argmax(axis=0).astype(xp.uint8)
    # halo voxels no tile predicts have weight 0 (and are trimmed by the caller)
    weight = xp.maximum(weight[: shape[0], : shape[1], : shape[2]], xp.float32(1e-30))
    return labels, (acc.max(axis=0) / weight).astype(xp.float32)


def _segment_block(
    block: np.ndarray,
    *,
    info: ModelInfo,
    providers: tuple[str, ...],
    fp16: bool,
    threads: int | None,
    tile: tuple[int, ...] | None,
    overlap: float,
    batch: int,
    uncertainty: bool,
    context: tuple[int, int, int],
) -> np.ndarray:
    from volmla.engine.backend import to_device, to_numpy

    session = get_session(info.path, providers=providers, fp16=fp16, threads=threads)
    on_gpu = session.get_providers()[0] in GPU_PROVIDERS
    data = to_device(block, "gpu") if on_gpu else block
    labels, prob = predict_block(data, session=session, info=info, tile=tile, overlap=overlap, batch=batch,
                                 fixed_batch=on_gpu, halo=context)
    labels = to_numpy(labels)
    if not uncertainty:
        return labels
    conf = np.clip(np.rint(to_numpy(prob) * 255), 0, 255).astype(np.uint16)
    return (conf << 8) | labels.astype(np.uint16)


def _low_byte(block: np.ndarray) -> np.ndarray:
    return (block & 255).astype(np.uint8)


def _high_byte(block: np.ndarray) -> np.ndarray:
    return (block >> 8).astype(np.uint8)


# ----------------------------------------------------------------------------- public


class Segmentation(NamedTuple):
    """What :func:`segment` returns."""

    phases: da.Array
    """uint8 class ids (the phase ids: 0 void, 1..C-1)."""
    confidence: da.Array | None
    """uint8 maximum class probability x 255 (with ``uncertainty=True``), else None."""
    classes: tuple[str, ...]
    halo: tuple[int, int, int]


def _normalise_tile(tile: Any, info: ModelInfo) -> tuple[int, ...] | None:
    if isinstance(tile, str):
        if tile != "block":
            raise VolmlaError(f"tile must be (z, y, x) sizes, 'block' or None, got {tile!r}")
        return None
    if tile is None:
        return info.tile
    values = [int(tile)] * 3 if isinstance(tile, int | np.integer) else [int(v) for v in tile]
    if info.dim == 2 and len(values) == 3:
        values = values[1:]
    if len(values) != info.dim or min(values) < 1:
        raise VolmlaError(f"tile must be {info.dim} positive sizes for a {info.dim}-D model, got {tile!r}")
    bad = [v for v in values if v % info.multiple]
    if bad:
        raise VolmlaError(f"tile sizes must be multiples of {info.multiple} for this model, got {tuple(values)}")
    return tuple(values)


def _aligned(data: da.Array, multiple: int, depth: Sequence[int]) -> da.Array:
    """Rechunk so every chunk boundary lies on the model's pooling grid (multiples of ``multiple``).

    Chunks are also made at least as thick as the halo, so the halo engine need not merge
    thin chunks (which could move boundaries off the grid).
    """
    target = {}
    for axis, h in enumerate(depth):
        if h == 0:
            continue
        inner = data.chunks[axis][:-1]
        if any(c % multiple or c < h for c in inner):
            edge = max(max(data.chunks[axis]), h)
            target[axis] = min(-(-edge // multiple) * multiple, data.shape[axis])
    return data.rechunk(target) if target else data


def segment(
    volume: VolumeLike,
    *,
    model: str | Path,
    halo: int | None = None,
    tile: int | Sequence[int] | Literal["block"] | None = None,
    overlap: float = 0.25,
    batch: int = 4,
    device: Device = "auto",
    fp16: bool = False,
    uncertainty: bool = False,
    threads: int | None = None,
) -> Segmentation:
    """Segment a volume with an ONNX model, block by block, lazily.

    Parameters
    ----------
    volume
        Intensity volume (xarray from :func:`volmla.io.open_volume`, or Dask).
    model
        ONNX file (a volmla export, or any model with input ``(N, 1, Z, Y, X)`` float32).
    halo
        Context voxels per side (default: the model's metadata; required for foreign models).
    tile
        Tile shape; default the model's tile; ``"block"`` runs each halo-extended block as
        one tile (no blending; chunking-independent output).
    overlap
        Fraction of a tile shared with its neighbour (Gaussian blending).
    batch
        Tiles per ONNX Runtime call.
    device
        ``auto`` (GPU when ONNX Runtime and CUDA work), ``cpu`` or ``gpu``.
    fp16
        Half precision (GPU only).
    uncertainty
        Also return the maximum class probability as uint8 (x255).
    threads
        ONNX Runtime intra-op threads per session.

    Returns
    -------
    Segmentation
        ``phases`` (uint8 class ids), ``confidence`` (uint8 or None), class names, halo.

    Examples
    --------
    >>> out = segment(open_volume("scan.zarr"), model="model.onnx")  # doctest: +SKIP
    >>> write_volume(out.phases, "phases.zarr", kind="phases")  # doctest: +SKIP
    """
    from volmla.engine.overlap import halo_map

    info = inspect_model(model, halo=halo)
    data = as_volume(volume, name="intensity", finite=True).data
    if not 0 <= overlap < 1:
        raise VolmlaError(f"overlap must lie in [0, 1), got {overlap!r}")
    if batch < 1:
        raise VolmlaError(f"batch must be at least 1, got {batch!r}")
    providers = select_providers(device)
    if fp16 and providers[0] not in GPU_PROVIDERS:
        raise VolmlaError("fp16 needs a GPU (CUDA or TensorRT provider); none is available here")
    tile_shape = _normalise_tile(tile, info)
    h = info.halo
    depth = [0 if (info.dim == 2 and axis == 0) else min(h, max(n - 1, 0)) for axis, n in enumerate(data.shape)]
    if depth != [0 if (info.dim == 2 and a == 0) else h for a in range(3)]:
        logger.info("halo clipped to %s by the volume's size %s", depth, data.shape)
    data = _aligned(data, info.multiple, depth)
    packed = halo_map(
        data, _segment_block, halo=tuple(depth), boundary="reflect",
        dtype=np.uint16 if uncertainty else np.uint8,
        info=info, providers=providers, fp16=fp16, threads=threads, tile=tile_shape,
        overlap=float(overlap), batch=int(batch), uncertainty=uncertainty, context=tuple(depth),
    )
    classes = info.classes or tuple(f"class{i}" for i in range(info.n_classes or 0))
    if not uncertainty:
        return Segmentation(packed, None, classes, tuple(depth))  # type: ignore[arg-type]
    phases = da.map_blocks(_low_byte, packed, dtype=np.uint8)
    confidence = da.map_blocks(_high_byte, packed, dtype=np.uint8)
    return Segmentation(phases, confidence, classes, tuple(depth))  # type: ignore[arg-type]
