"""Chunked U-Net inference on ONNX Runtime (never imports torch).

1. Model: the ONNX file is inspected once (input ``(N, 1, Z, Y, X)`` or ``(N, 1, Y, X)``
   for a slice-wise 2-D model, output ``(N, C, ...)`` scores). A volmla model carries
   ``volmla`` metadata (class names, intensity normalisation, halo, tile, size multiple);
   any other model runs on raw intensities cast to float32 and needs ``halo``. A model
   expecting more than one input channel, or naming a different number of classes than
   it outputs, is refused with a one-line error.
2. Sessions: every worker process keeps one ``InferenceSession`` per (model, providers,
   fp16, threads) in a module-level cache, created on first use and reused by all its
   blocks. Providers are tried TensorRT -> CUDA -> CPU in order of availability;
   ONNX Runtime falls back silently, so the providers actually taken
   (``session.get_providers()``) are checked and logged. CUDA uses cuDNN's HEURISTIC
   convolution algorithm search; TensorRT caches its engines. ``fp16`` (GPU only)
   converts the model with onnxconverter-common (float32 inputs and outputs kept) or,
   without it, uses TensorRT's fp16 mode; on the CUDA provider without the converter
   the model runs in float32 (logged).
3. Blocks: :func:`volmla.overlap.halo_map` extends every block by the model's halo
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

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

UNET_FORMAT = "volmla-unet"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

__all__ = [
    "ModelInfo",
    "SESSION_STATS",
    "Segmentation",
    "clear_sessions",
    "get_session",
    "inspect_model",
    "predict_block",
    "read_metadata",
    "select_providers",
    "segment",
]

_SESSIONS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()
SESSION_STATS = {"created": 0}
"""Sessions created in this process (the cache makes it one per model and provider set)."""


# ----------------------------------------------------------------------------- model


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``volmla`` metadata block of an ONNX model (``{}`` for a foreign model)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise VolmlaError(f"model {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise VolmlaError(f"{path} is not an ONNX model: {exc}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props["volmla"]) if "volmla" in props else {}


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model."""

    path: str
    dim: int
    """2 (slice-wise) or 3."""
    n_classes: int | None
    """Output channels (None when the model leaves them symbolic and names no classes)."""
    classes: tuple[str, ...]
    norm: tuple[float, float] | None
    """Intensities mapped to 0 and 1, or None (raw intensities cast to float32)."""
    halo: int
    tile: tuple[int, ...] | None
    multiple: int
    """Spatial tile sizes must be multiples of this."""
    input_name: str
    output_name: str
    metadata: dict[str, Any]


def inspect_model(model: str | Path, *, halo: int | None = None) -> ModelInfo:
    """Read and check a segmentation model's inputs, outputs and volmla metadata.

    Raises
    ------
    VolmlaError
        Not a single-input model of rank 4 or 5, more than one input channel, class names
        that do not match the output channels, or a foreign model without ``halo``.
    """
    import onnx

    path = Path(model)
    meta = read_metadata(path)
    if meta.get("format") not in (None, UNET_FORMAT):
        raise VolmlaError(f"model {path} is a {meta['format']!r} model, not a U-Net: use it with --method rf")
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) < 1:
        raise VolmlaError(f"model {path} must have one input and one output, got {len(inputs)} inputs")

    def dims(value: Any) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]

    in_dims, out_dims = dims(inputs[0]), dims(proto.graph.output[0])
    if len(in_dims) not in (4, 5):
        raise VolmlaError(f"model {path} input must be (N, 1, Z, Y, X) or (N, 1, Y, X), got rank {len(in_dims)}")
    if isinstance(in_dims[1], int) and in_dims[1] != 1:
        raise VolmlaError(f"model {path} expects {in_dims[1]} input channels, but a CT volume gives 1")
    if len(out_dims) != len(in_dims):
        raise VolmlaError(f"model {path} output rank {len(out_dims)} differs from its input rank {len(in_dims)}")
    n_classes = out_dims[1] if isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    classes = tuple(meta.get("classes", ()))
    if classes and n_classes is not None and len(classes) != n_classes:
        raise VolmlaError(f"model {path} outputs {n_classes} channels but its metadata names {len(classes)} classes")
    if n_classes is None and classes:
        n_classes = len(classes)
    if n_classes is not None and not 2 <= n_classes <= 255:
        raise VolmlaError(f"model {path} must output 2..255 class channels, got {n_classes}")
    if halo is None:
        if "halo" not in meta:
            raise VolmlaError(f"model {path} carries no volmla metadata: pass --halo N (voxels of context it needs)")
        halo = int(meta["halo"])
    if int(halo) != halo or halo < 0:
        raise VolmlaError(f"halo must be a non-negative integer, got {halo!r}")
    fixed = [d for d in in_dims[2:] if isinstance(d, int) and d > 0]
    tile = tuple(int(t) for t in meta["tile"]) if meta.get("tile") else (tuple(fixed) if len(fixed) == len(in_dims) - 2 else None)
    norm = tuple(float(v) for v in meta["norm"]) if meta.get("norm") else None
    return ModelInfo(
        path=str(path.resolve()),
        dim=len(in_dims) - 2,
        n_classes=n_classes,
        classes=classes,
        norm=norm,  # type: ignore[arg-type]
        halo=int(halo),
        tile=tile,
        multiple=int(meta.get("multiple", 1)),
        input_name=inputs[0].name,
        output_name=proto.graph.output[0].name,
        metadata=meta,
    )


# ----------------------------------------------------------------------------- sessions


def select_providers(device: Literal["auto", "cpu", "gpu"] = "auto") -> tuple[str, ...]:
    """Execution providers in order of preference: TensorRT, CUDA (when available), CPU."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "gpu"):
        raise VolmlaError(f"device must be one of ('auto', 'cpu', 'gpu'), got {device!r}")
    if device == "cpu":
        return ("CPUExecutionProvider",)
    have = ort.get_available_providers()
    gpu = tuple(p for p in GPU_PROVIDERS if p in have)
    if device == "gpu" and not gpu:
        raise VolmlaError(f"device gpu asked for, but ONNX Runtime offers only {have} (install onnxruntime-gpu)")
    if gpu:
        from volmla.backend import gpu_available

        if not gpu_available():  # CUDA EP present but no working device: skip it
            if device == "gpu":
                raise VolmlaError("device gpu asked for, but no CUDA device works here")
            gpu = ()
    return (*gpu, "CPUExecutionProvider")


def _provider_options(name: str, fp16: bool) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        cache = os.environ.get("VOLMLA_TRT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "volmla", "trt"))
        os.makedirs(cache, exist_ok=True)
        return {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True}
    if name == "CUDAExecutionProvider":
        return {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": True}
    return {}


def _fp16_bytes(path: str, providers: Sequence[str]) -> bytes | None:
    """The model converted to float16 (float32 inputs/outputs kept), or None when TensorRT does fp16 itself."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        if "TensorrtExecutionProvider" in providers:
            logger.info("onnxconverter-common missing: fp16 through TensorRT's trt_fp16_enable")
        else:
            logger.warning("fp16 asked for, but onnxconverter-common is not installed: the CUDA provider runs float32")
        return None
    converted = float16.convert_float_to_float16(onnx.load(path), keep_io_types=True)
    return bytes(converted.SerializeToString())


def get_session(
    model: str | Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    fp16: bool = False,
    threads: int | None = None,
) -> Any:
    """The process's cached ``onnxruntime.InferenceSession`` for ``model`` (created once).

    Parameters
    ----------
    model
        ONNX file.
    providers
        Execution providers in order of preference (:func:`select_providers`).
    fp16
        Half precision on the GPU (refused with only the CPU provider).
    threads
        ``intra_op_num_threads`` (None: ONNX Runtime's default, one per physical core).

    Returns
    -------
    onnxruntime.InferenceSession
    """
    import onnxruntime as ort

    providers = tuple(providers)
    if fp16 and not any(p in GPU_PROVIDERS for p in providers):
        raise VolmlaError("fp16 needs a GPU provider (CUDA or TensorRT); run without --fp16 on the CPU")
    key = (str(Path(model).resolve()), providers, fp16, threads)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        source: Any = key[0]
        if fp16:
            source = _fp16_bytes(key[0], providers) or source
        session = ort.InferenceSession(source, sess_options=options,
                                       providers=[(p, _provider_options(p, fp16)) for p in providers])
        taken = session.get_providers()
        if taken[0] != providers[0]:
            logger.warning("ONNX Runtime fell back from %s to %s for %s", providers[0], taken[0], key[0])
        SESSION_STATS["created"] += 1
        _SESSIONS[key] = session
        return session


def clear_sessions() -> None:
    """Drop this process's cached sessions."""
    with _LOCK:
        _SESSIONS.clear()


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
    """
    from volmla.backend import get_array_module

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
    from volmla.backend import to_device, to_numpy

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
    volume: Any,
    *,
    model: str | Path,
    halo: int | None = None,
    tile: int | Sequence[int] | Literal["block"] | None = None,
    overlap: float = 0.25,
    batch: int = 4,
    device: Literal["auto", "cpu", "gpu"] = "auto",
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
    from volmla.overlap import halo_map

    info = inspect_model(model, halo=halo)
    data = volume.data if hasattr(volume, "dims") else volume
    if not isinstance(data, da.Array) or data.ndim != 3:
        raise VolmlaError(f"volume must be a 3-D Dask-backed volume, got {type(data).__name__}")
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
