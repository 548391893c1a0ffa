"""Helpers of ``benchmarks/gpu_suite.py``: the run context, timing, comparisons, test data, the model.

The sections live in ``gpu_suite.py``; the one measurement here is the U-Net job's
stage-by-stage breakdown (:func:`breakdown`), kept apart for the suite's length. Every
device decision goes through :mod:`volmla.engine.backend` (``gpu_available`` detects a
CuPy that imports but cannot allocate, ``CUDARuntimeError`` included); with ``cpu_check``
the "device" side of every comparison is NumPy / the CPU execution provider, so the
plumbing runs on a machine without a GPU.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- context


@dataclass
class Ctx:
    """Sizes, the device side under test, the time budget and the shared artefacts of one run."""

    cpu_check: bool
    tmp: Path
    filter_size: int
    volume_size: int
    chunk: int
    label_size: int
    label_chunk: int
    tile_batch: int
    gpus: int
    budget_s: float
    depth: int
    base: int
    seed: int = 0
    started: float = field(default_factory=time.perf_counter)
    _model: Path | None = None
    _volume: Path | None = None

    @property
    def on_gpu(self) -> bool:
        """Whether the device side is a real GPU (never in ``cpu_check``)."""
        if self.cpu_check:
            return False
        from volmla.engine.backend import gpu_available

        return gpu_available()

    @property
    def device(self) -> str:
        """The ``device=`` volmla gets: ``gpu`` on a GPU, else ``cpu`` (the CPU fallback)."""
        return "gpu" if self.on_gpu else "cpu"

    @property
    def xp(self) -> Any:
        """``cupy`` on a GPU, else ``numpy``."""
        if self.on_gpu:
            import cupy

            return cupy
        return np

    def ort_gpu_missing(self) -> str | None:
        """Why ONNX Runtime cannot run volmla's U-Net on the GPU here (None: it can, or ``cpu_check``)."""
        if self.cpu_check:
            return None
        import onnxruntime as ort

        from volmla.segment.sessions import GPU_PROVIDERS

        have = ort.get_available_providers()
        if not any(p in have for p in GPU_PROVIDERS):
            return f"onnxruntime {ort.__version__} offers {have}: no CUDA provider (onnxruntime-gpu not installed)"
        if not self.on_gpu:
            return "no working CUDA device (CuPy cannot allocate)"
        return None

    def sync(self) -> None:
        """Wait for the device (no-op on NumPy)."""
        if self.on_gpu:
            import cupy

            cupy.cuda.get_current_stream().synchronize()
            cupy.cuda.Device().synchronize()

    def left(self) -> float:
        """Seconds left of the time budget."""
        return self.budget_s - (time.perf_counter() - self.started)

    def short_of(self, seconds: float) -> bool:
        """Whether less than ``seconds`` of budget is left (a tenth of that in ``cpu_check``)."""
        return self.left() < seconds * (0.1 if self.cpu_check else 1.0)

    def model(self) -> Path:
        """The seeded, untrained U-Net exported by volmla (built once)."""
        if self._model is None:
            self._model = build_model(self.tmp / "unet.onnx", depth=self.depth, base=self.base, seed=self.seed)
        return self._model

    def volume(self) -> Path:
        """The ``volume_size``^3 uint16 OME-Zarr volume (written once with ``volmla.io.write_volume``)."""
        if self._volume is None:
            from volmla.io import write_volume

            n = self.volume_size
            path = self.tmp / f"scan{n}.zarr"
            write_volume(intensity((n, n, n), seed=self.seed + 1), path, voxel_size=1.0, chunks=self.chunk,
                         kind="intensity")
            self._volume = path
        return self._volume


# ----------------------------------------------------------------------------- timing and comparisons


def timed(fn: Callable[[], Any], *, sync: Callable[[], None] | None = None, repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (waiting for the device after each) and the last result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def to_host(x: Any) -> np.ndarray:
    """NumPy copy of a NumPy or CuPy array."""
    from volmla.engine.backend import to_numpy

    return to_numpy(x)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest |a - b| in float64 (0.0 for empty arrays)."""
    a64, b64 = to_host(a).astype(np.float64), to_host(b).astype(np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}")
    return float(np.abs(a64 - b64).max()) if a64.size else 0.0


def logits_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float | None]:
    """Max |logit difference| and the share of voxels whose argmax over classes (axis 1) agrees.

    Also the share of near ties (top-2 margin at most twice the largest difference, where an
    untrained net's argmax may flip by rounding alone) and the agreement on the other voxels.
    """
    ref, got = to_host(ref), to_host(got)
    same = ref.argmax(1) == got.argmax(1)
    diff = max_abs_diff(ref, got)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # how far each voxel's winning logit is ahead of the runner-up
    clear = margin > 2 * diff  # no error of at most `diff` per logit can flip these
    return {"max_abs_logit_diff": diff,
            "logit_scale": float(np.abs(ref).max()),
            "argmax_agreement": float(same.mean()),
            "near_tie_share": float(1 - clear.mean()),
            "argmax_agreement_clear_margin": float(same[clear].mean()) if clear.any() else None}


def canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n by the C order of each label's first voxel (0 stays 0), as uint32.

    Two labellings that differ only by numbering become equal.
    """
    flat = np.ascontiguousarray(labels).ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = np.argsort(first, kind="stable")
    new = np.empty(len(ids), np.uint32)
    new[order] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    out = np.zeros(flat.shape, np.uint32)
    nz = flat != 0
    out[nz] = new[np.searchsorted(ids, flat[nz])]
    return out.reshape(labels.shape)


def error_text(exc: BaseException) -> str:
    """One line: the exception's type and message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


# ----------------------------------------------------------------------------- test data


def intensity(shape: tuple[int, int, int], *, seed: int) -> np.ndarray:
    """A seeded uint16 scan-like volume: bright blobs on a darker matrix, plus noise.

    Coarse random blobs (a smooth field thresholded) give the U-Net and the filters edges to
    work on; generated in float32 slabs so a 512^3 volume needs little more than its own 256 MiB.
    """
    import scipy.ndimage as ndi

    rng = np.random.default_rng(seed)
    coarse = ndi.zoom(rng.standard_normal(tuple(max(2, s // 8) for s in shape)).astype(np.float32), 8, order=1)
    out = np.empty(shape, np.uint16)
    for z0 in range(0, shape[0], 64):
        z1 = min(shape[0], z0 + 64)
        field_ = coarse[z0:z1, : shape[1], : shape[2]]
        slab = np.where(field_ > 0.3, np.float32(36000), np.float32(26000))
        pad = [(0, n - f) for n, f in zip(slab.shape, field_.shape, strict=True)]
        slab = np.pad(slab, pad, mode="edge") if any(p[1] for p in pad) else slab
        slab += rng.standard_normal(slab.shape, dtype=np.float32) * np.float32(2500)
        out[z0:z1] = np.clip(slab, 0, 65535).astype(np.uint16)
    return out


def mask(shape: tuple[int, int, int], *, seed: int, fill: float = 0.3) -> np.ndarray:
    """A seeded uint8 0/1 mask of irregular particles (smoothed noise above its quantile)."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
    return (smooth > np.quantile(smooth, 1 - fill)).astype(np.uint8)


# ----------------------------------------------------------------------------- the model


def build_model(path: Path, *, depth: int, base: int, seed: int, n_classes: int = 4) -> Path:
    """Export a seeded, untrained 3-D U-Net through volmla's own model, checkpoint and export code.

    ``volmla.segment.model.UNet`` (batch norm, eval mode) -> ``train.save_model`` ->
    ``export.export`` (which checks torch vs ONNX Runtime parity on the CPU). The intensity
    normalisation maps the test volume's matrix and blobs (26000, 36000) to about 0 and 1.
    """
    import torch

    from volmla.segment.export import export
    from volmla.segment.model import UNet, receptive_halo
    from volmla.segment.train import TrainConfig, TrainResult, save_model

    torch.manual_seed(seed)
    net = UNet(dim=3, n_classes=n_classes, depth=depth, base=base, norm="batch")
    # Batch-norm statistics from a few seeded batches (no weight changes): the logits of the
    # untrained net then have comparable scales per class. The head's bias is then centred so that no
    # class wins everywhere: the argmax varies voxel by voxel and argmax agreement means something.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(6):
            net(0.5 + 0.3 * torch.randn((2, 1, 32, 32, 32), generator=gen))
        net.eval()
        logits = net(0.5 + 0.3 * torch.randn((2, 1, 32, 32, 32), generator=gen))
        net.head.bias -= logits.mean(dim=(0, 2, 3, 4))
    config = TrainConfig(dim=3, depth=depth, base=base, norm="batch", seed=seed, tile=64)
    tile = (64, 64, 64)
    result = TrainResult(model=net, classes=tuple(["void", *[f"phase{i}" for i in range(1, n_classes)]]),
                         norm=(26000.0, 36000.0), halo=receptive_halo(depth), tile=tile, history=[],
                         best_iteration=0, train_planes=(), val_planes=(), config=config)
    checkpoint = save_model(result, path.with_suffix(".pt"))
    export(checkpoint, path, overwrite=True)
    return path


# ----------------------------------------------------------------------------- U-Net stage breakdown


def breakdown(ctx: Ctx, src: Path) -> dict[str, Any]:
    """Read, host-to-device, inference, device-to-host and write, timed one by one on sample blocks.

    The same steps ``segment`` takes per block (halo-extended read, ``to_device``,
    ``predict_block`` with ``tile="block"``, ``to_numpy``, the core written as a Blosc-zstd
    Zarr chunk), each after waiting for the device, on up to 4 blocks of the job's grid.
    """
    import zarr

    from volmla.engine.backend import to_device, to_numpy
    from volmla.io import compressor, open_volume
    from volmla.segment.infer import predict_block
    from volmla.segment.sessions import get_session, inspect_model, select_providers

    info = inspect_model(ctx.model())
    data = open_volume(src).data
    n, c, h = ctx.volume_size, min(ctx.chunk, ctx.volume_size), inspect_model(ctx.model()).halo
    h = min(h, n - 1)
    grid = [(z, y, x) for z in range(0, n, c) for y in range(0, n, c) for x in range(0, n, c)]
    sample = grid[:: max(1, len(grid) // 4)][:4]
    session = get_session(ctx.model(), providers=select_providers(ctx.device))  # type: ignore[arg-type]
    on_gpu = ctx.on_gpu
    store = zarr.create_array(str(ctx.tmp / "breakdown.zarr"), shape=(n, n, n), chunks=(c, c, c), dtype="uint8",
                              compressors=[compressor("phases")], overwrite=True)
    stages = {"read": 0.0, "host_to_device": 0.0, "inference": 0.0, "device_to_host": 0.0, "write": 0.0}
    core_voxels = 0
    for i, origin in enumerate(sample):
        core = tuple(slice(o, min(o + c, n)) for o in origin)
        ext = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s in core)
        pads = [(s.start - e.start, e.stop - s.stop) for s, e in zip(core, ext, strict=True)]
        t0 = time.perf_counter()
        block = np.asarray(data[ext].compute(scheduler="threads"))
        block = np.pad(block, [(h - a, h - b) for a, b in pads], mode="symmetric")  # the reflect halo at faces
        t1 = time.perf_counter()
        dev = to_device(block, "gpu" if on_gpu else "cpu")
        ctx.sync()
        t2 = time.perf_counter()
        labels, _ = predict_block(dev, session=session, info=info, tile=None, batch=1, fixed_batch=on_gpu,
                                  halo=(h, h, h))
        ctx.sync()
        t3 = time.perf_counter()
        host = to_numpy(labels)
        t4 = time.perf_counter()
        store[core] = host[h:-h or None, h:-h or None, h:-h or None][: c, : c, : c]
        t5 = time.perf_counter()
        if i == 0 and len(sample) > 1:
            continue  # the first block warms caches up; the others are timed
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            stages[key] += dt
        core_voxels += int(np.prod([s.stop - s.start for s in core]))
    total = sum(stages.values())
    n_timed = max(1, len(sample) - 1) if len(sample) > 1 else 1
    return {
        "blocks_timed": n_timed, "block": [c, c, c], "halo": h, "tile": "block",
        "seconds_per_block": {k: v / n_timed for k, v in stages.items()},
        "share": {k: (v / total if total else None) for k, v in stages.items()},
        "projected_job_s": total / n_timed * len(grid),
        "gvoxel_per_s_stages_serial": core_voxels / total / 1e9 if total else None,
        "gvoxel_per_s_inference_only": core_voxels / stages["inference"] / 1e9 if stages["inference"] else None,
        "note": "stages timed one by one with the device synchronised between them; the Dask job overlaps them",
    }


# ----------------------------------------------------------------------------- environment


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception:
        return None


def environment() -> dict[str, Any]:
    """Python, library versions, CUDA and the GPU (name, memory), ONNX Runtime providers.

    A CuPy that imports but cannot allocate (``CUDARuntimeError``) is reported, never raised.
    """
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {m: _version(m) for m in ("numpy", "scipy", "dask", "distributed", "zarr", "onnx", "onnxruntime",
                                               "torch", "cupy", "onnxconverter_common", "dask_cuda", "cucim")},
    }
    try:
        from volmla.engine.backend import gpu_available, gpu_count

        env.update(gpu_available=gpu_available(), gpu_count=gpu_count())
    except Exception as exc:  # volmla's own dependencies missing: say which, go on
        env["volmla_error"] = error_text(exc)
    try:
        import cupy

        try:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            env["gpu"] = {
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_gib": round(props["totalGlobalMem"] / 2**30, 2),
                "compute_capability": f"{props['major']}.{props['minor']}",
                "multiprocessors": props["multiProcessorCount"],
            }
            env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            env["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        except Exception as exc:  # CUDARuntimeError without a device
            env["cupy_error"] = error_text(exc)
    except ImportError:
        env["cupy_error"] = "cupy not installed"
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["torch_sees_gpu"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            env["torch_gpu"] = torch.cuda.get_device_name(0)
            env["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:
        env["torch_error"] = error_text(exc)
    try:
        import onnxruntime as ort

        env["ort_providers"] = list(ort.get_available_providers())
        env["ort_device"] = ort.get_device()
    except Exception as exc:
        env["ort_error"] = error_text(exc)
    return env
