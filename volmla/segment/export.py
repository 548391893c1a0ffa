"""Export a trained U-Net to ONNX with its metadata, and check parity (needs torch).

1. The checkpoint (:func:`volmla.segment.train.save_model`) is rebuilt in eval mode.
2. ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``) writes
   the graph with dynamic batch and spatial axes (``N``, ``Z``, ``Y``, ``X``; spatial
   sizes must be multiples of ``2 ** (depth - 1)``). All weights are stored inline in
   the single ``.onnx`` file (no ``.onnx.data`` side file): volmla models are small,
   and one file is what workers open. The dynamo exporter (with onnxscript) is used
   only if the TorchScript one is unavailable, with ``external_data=False``.
3. ``metadata_props["volmla"]`` (JSON) records the format, model dim (2/3), class
   names, intensity normalisation, halo (receptive field rounded to the pooling grid),
   the context measured at training (:mod:`volmla.segment.context`; absent for older
   checkpoints and scans too small to measure it), default tile, size multiple, target
   kind and architecture.
4. Parity: a random tile and a structured one run through torch eager and ONNX Runtime
   (CPU); the export fails unless the largest absolute logit difference is below
   ``atol`` (default 1e-4) and the argmax agrees on every voxel.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from volmla.errors import VolmlaError
from volmla.segment.model import size_multiple
from volmla.segment.sessions import UNET_FORMAT
from volmla.segment.train import load_model

logger = logging.getLogger(__name__)

__all__ = ["ExportReport", "export", "parity"]

OPSET = 17


class ExportReport(NamedTuple):
    """What :func:`export` returns."""

    path: Path
    max_abs_diff: float
    """Largest |torch - ONNX Runtime| logit over the parity inputs."""
    argmax_agreement: float
    """Share of voxels with the same argmax (1.0 required)."""
    metadata: dict[str, Any]


def _metadata(meta: dict[str, Any]) -> dict[str, Any]:
    arch = meta["arch"]
    out = {
        "format": UNET_FORMAT,
        "dim": int(arch["dim"]),
        "classes": list(meta["classes"]),
        "norm": [float(v) for v in meta["norm"]],
        "rescale": meta.get("rescale", "fixed"),
        "halo": int(meta["halo"]),
        "tile": [int(t) for t in meta["tile"]],
        "multiple": size_multiple(int(arch["depth"])),
        "target": meta.get("target", "phases"),
        "arch": arch,
        "input": "(N, 1, Z, Y, X) float32" if arch["dim"] == 3 else "(N, 1, Y, X) float32",
        "output": "(N, C, ...) logits",
    }
    if meta.get("context") is not None:  # measured at training (older checkpoints: absent)
        out["context"] = int(meta["context"])
        out["context_agreement"] = {str(k): float(v) for k, v in (meta.get("context_agreement") or {}).items()}
    return out


def parity(model: torch.nn.Module, onnx_path: str | Path, shapes: list[tuple[int, ...]], *, seed: int = 0) -> tuple[float, float]:
    """Max |logit difference| and argmax agreement between torch and ONNX Runtime (CPU).

    Parameters
    ----------
    model
        The torch network (eval mode).
    onnx_path
        Its export.
    shapes
        Input shapes to try, ``(N, 1, ...)``.
    seed
        Seed of the random inputs.

    Returns
    -------
    tuple of float
        ``(max_abs_diff, argmax_agreement)``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    worst, agree, total = 0.0, 0, 0
    for shape in shapes:
        x = rng.normal(0.5, 0.3, size=shape).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {name: x})[0]
        if got.shape != ref.shape:
            raise VolmlaError(f"ONNX output shape {got.shape} differs from torch's {ref.shape} for input {shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += ref[:, 0].size
    return worst, agree / total


def export(checkpoint: str | Path, out: str | Path, *, atol: float = 1e-4, overwrite: bool = False) -> ExportReport:
    """Export a ``.pt`` checkpoint to a self-contained ONNX file with metadata, checked for parity.

    Parameters
    ----------
    checkpoint
        A model saved by :func:`volmla.segment.train.save_model`.
    out
        The ``.onnx`` file to write (weights inline).
    atol
        Largest allowed absolute logit difference between torch and ONNX Runtime.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    ExportReport

    Examples
    --------
    >>> report = export("model.pt", "model.onnx")  # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4  # doctest: +SKIP
    True
    """
    import onnx

    out = Path(out)
    if out.exists() and not overwrite:
        raise VolmlaError(f"output {out} exists: pass overwrite=True to replace it")
    model, meta = load_model(checkpoint)
    dim = int(meta["arch"]["dim"])
    m = size_multiple(int(meta["arch"]["depth"]))
    example = torch.zeros((1, 1, *([2 * m] * dim)))
    spatial = {2: "Z", 3: "Y", 4: "X"} if dim == 3 else {2: "Y", 3: "X"}
    axes = {"input": {0: "N", **spatial}, "logits": {0: "N", **spatial}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter
        try:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=OPSET)
        except (TypeError, RuntimeError) as exc:
            logger.info("TorchScript exporter unavailable (%s): using the dynamo exporter", exc)
            dims = {0: torch.export.Dim("N", min=1, max=1024)}
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                              input_names=["input"], output_names=["logits"], dynamic_shapes=({**dims},))
    proto = onnx.load(str(tmp))
    volmla_meta = _metadata(meta)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "volmla", json.dumps(volmla_meta)
    proto.producer_name = "volmla"
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    tile = [int(t) for t in meta["tile"]]
    shapes = [(2, 1, *([2 * m] * dim)), (1, 1, *[max(m, min(t, 4 * m)) for t in tile]), (1, 1, *([3 * m] * dim))]
    diff, agreement = parity(model, tmp, shapes)
    if diff > atol or agreement < 1.0:
        tmp.unlink()
        raise VolmlaError(f"ONNX parity check failed: max |logit diff| {diff:.3g} (allowed {atol:g}), argmax agreement {agreement:.4%}")
    tmp.replace(out)
    logger.info("exported %s: max |logit diff| %.3g, argmax agreement %.2f%%", out, diff, 100 * agreement)
    return ExportReport(out, diff, agreement, volmla_meta)
