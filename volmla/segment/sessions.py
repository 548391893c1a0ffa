"""ONNX models and sessions: metadata, model inspection, execution providers, the session cache.

1. Model: the ONNX file is inspected once (:func:`inspect_model`: input
   ``(N, 1, Z, Y, X)`` or ``(N, 1, Y, X)`` for a slice-wise 2-D model, output
   ``(N, C, ...)`` scores). A volmla model carries ``volmla`` metadata
   (:func:`read_metadata`: class names, intensity normalisation, halo, tile, size
   multiple); any other model runs on raw intensities cast to float32 and needs ``halo``.
   A model expecting more than one input channel, or naming a different number of
   classes than it outputs, is refused with a one-line error. Wherever a model file is
   asked for, ``builtin:NAME`` names a model that ships with volmla (:data:`BUILTIN_MODELS`,
   :func:`resolve_model`).
2. Providers (:func:`select_providers`): TensorRT -> CUDA -> CPU in order of
   availability. CUDA uses cuDNN's HEURISTIC convolution algorithm search; TensorRT
   caches its engines.
3. Sessions (:func:`get_session`): every worker process keeps one ``InferenceSession``
   per (model, providers, fp16, threads) in a module-level cache, created on first use
   and reused by all its blocks. ONNX Runtime falls back silently, so the providers
   actually taken (``session.get_providers()``) are checked and logged. ``fp16`` (GPU
   only) converts the model with onnxconverter-common (float32 inputs and outputs kept)
   or, without it, uses TensorRT's fp16 mode; on the CUDA provider without the converter
   the model runs in float32 (logged).

Used by U-Net inference (:mod:`volmla.segment.infer`) and the random forest
(:mod:`volmla.segment.forest`); never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from volmla.errors import VolmlaError

logger = logging.getLogger(__name__)

UNET_FORMAT = "volmla-unet"
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"particles": "particles-unet.onnx"}
"""Models that ship with volmla (in ``volmla/data``), by the name ``builtin:NAME`` gives.

``particles``: background / interior / boundary U-Net (depth 3, base 8, rescaled by each
scan's void and solid modes), trained on the hard and the easy crushed-ore phantoms of
seed 100 (128^3 each, side by side) by ``python benchmarks/bench_particles.py --learned
--levels hard easy --train-levels hard easy --rescale modes --iterations 3000
--keep-models DIR``, ``benchmarks/results/particles_builtin_training.json``; measured in
``benchmarks/results/particles_builtin*.json``. It has
seen simulated scans only: check it on a labelled crop of your own before trusting it
(``volmla evaluate``)."""
RESCALES = ("fixed", "modes")
"""How a U-Net maps a scan's intensities: by the training scan's stored levels, or by
each scan's own void and solid histogram modes (:class:`~volmla.segment.train.TrainConfig`)."""
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

__all__ = [
    "BUILTIN_MODELS",
    "GPU_PROVIDERS",
    "ModelInfo",
    "RESCALES",
    "SESSION_STATS",
    "UNET_FORMAT",
    "clear_sessions",
    "get_session",
    "inspect_model",
    "read_metadata",
    "resolve_model",
    "select_providers",
]

_SESSIONS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()
SESSION_STATS = {"created": 0}
"""Sessions created in this process (the cache makes it one per model and provider set)."""


# ----------------------------------------------------------------------------- model


def resolve_model(model: str | Path) -> Path:
    """The file of a model: ``builtin:NAME`` is a model that ships with volmla, anything else a path.

    Parameters
    ----------
    model
        A path, or ``builtin:NAME`` with NAME one of :data:`BUILTIN_MODELS`.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    VolmlaError
        An unknown built-in name.

    Examples
    --------
    >>> resolve_model("builtin:particles").name
    'particles-unet.onnx'
    >>> str(resolve_model("model.onnx"))
    'model.onnx'
    """
    text = str(model)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(model)
    name = text[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_MODELS:
        raise VolmlaError(f"no built-in model {name!r}: volmla ships {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}")
    return Path(__file__).resolve().parents[1] / "data" / BUILTIN_MODELS[name]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``volmla`` metadata block of an ONNX model (``{}`` for a foreign model).

    Parameters
    ----------
    path
        The ONNX file.

    Returns
    -------
    dict
    """
    import onnx

    path = resolve_model(path)
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
    rescale: str
    """``"fixed"`` (``norm`` as stored) or ``"modes"`` (``norm`` is each scan's own void
    and solid modes, set by :func:`~volmla.segment.infer.segment`)."""
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

    Parameters
    ----------
    model
        The ONNX file.
    halo
        Context a foreign model needs (volmla models carry theirs).

    Returns
    -------
    ModelInfo
    """
    import onnx

    path = resolve_model(model)
    meta = read_metadata(path)
    if meta.get("format") not in (None, UNET_FORMAT):
        raise VolmlaError(f"model {path} is a {meta['format']!r} model, not a U-Net: use it with method=rf")
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
            raise VolmlaError(f"model {path} carries no volmla metadata: pass halo=N (voxels of context it needs)")
        halo = int(meta["halo"])
    if int(halo) != halo or halo < 0:
        raise VolmlaError(f"halo must be a non-negative integer, got {halo!r}")
    fixed = [d for d in in_dims[2:] if isinstance(d, int) and d > 0]
    tile = tuple(int(t) for t in meta["tile"]) if meta.get("tile") else (tuple(fixed) if len(fixed) == len(in_dims) - 2 else None)
    norm = tuple(float(v) for v in meta["norm"]) if meta.get("norm") else None
    rescale = str(meta.get("rescale", "fixed"))
    if rescale not in RESCALES:
        raise VolmlaError(f"model {path} rescales intensities by {rescale!r}, which this volmla does not know ({RESCALES})")
    return ModelInfo(
        path=str(path.resolve()),
        dim=len(in_dims) - 2,
        n_classes=n_classes,
        classes=classes,
        norm=norm,  # type: ignore[arg-type]
        rescale=rescale,
        halo=int(halo),
        tile=tile,
        multiple=int(meta.get("multiple", 1)),
        input_name=inputs[0].name,
        output_name=proto.graph.output[0].name,
        metadata=meta,
    )


# ----------------------------------------------------------------------------- sessions


def select_providers(device: Literal["auto", "cpu", "gpu"] = "auto") -> tuple[str, ...]:
    """Execution providers in order of preference: TensorRT, CUDA (when available), CPU.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    tuple of str
        ONNX Runtime provider names.
    """
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
        from volmla.engine.backend import gpu_available

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
        raise VolmlaError("fp16 needs a GPU provider (CUDA or TensorRT); pass fp16=False on the CPU")
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
