"""GPU suite: one run on a machine with one CUDA GPU, one JSON (issue #20 item 5).

Sections, each guarded (a failing one records ``{"error": "..."}`` and the suite goes on; a
section or case that cannot run here records ``{"skipped": "reason"}``), written to the JSON
as soon as each ends:

1. ``environment``: GPU name and memory, CUDA / CuPy / torch / ONNX Runtime versions and
   ONNX Runtime's providers.
2. ``filters``: volmla's own preprocessing kernels (``volmla.preprocess.kernels``, backend
   chosen by ``volmla.engine.backend`` from the array) on a CuPy block vs the same kernels
   on NumPy (``--filter-size``^3, default 256): time, speed-up, max |difference|.
3. ``onnx_providers``: a seeded, untrained U-Net built by ``volmla.segment.model`` and
   exported by ``volmla.segment.export``; the CUDA and TensorRT providers (fp32 and fp16,
   through ``volmla.segment.sessions.get_session``) vs the CPU provider on the same tiles:
   logits max |difference|, argmax agreement, tiles/s.
4. ``unet_zarr``: ``volmla.segment.infer.segment`` with ``device="gpu"`` from an OME-Zarr
   uint16 volume (``--volume-size``^3, default 512, written by ``volmla.io.write_volume``)
   to an OME-Zarr phase volume, end to end (Gvoxel/s), with a time breakdown measured
   stage by stage on a sample of the job's blocks (read, host-to-device, inference,
   device-to-host, write), since the library path has no per-stage hooks.
5. ``labels``: ``cupyx.scipy.ndimage.label`` on the whole mask and block by block vs
   volmla's CPU ``volmla.particles.label``: identical after canonical renumbering, times.
6. ``gpus``: ``volmla.engine.cluster.cluster(gpus=N)`` workers running the same segment,
   Gvoxel/s and identity with the single-process output.
7. ``targets``: pass/fail against issue #20's targets (>= 1 Gvoxel/s U-Net end to end,
   identical labels, fp16 argmax agreement >= 99.9 %).

The suite installs nothing and stops starting new work once ``--budget`` seconds (default
390) are spent, so a full run stays under 8 minutes. ``--cpu-check`` runs every section at
tiny sizes with the CPU fallbacks (NumPy for CuPy, the CPU provider, CPU workers) so the
plumbing is exercised on a machine without a GPU (``tests/test_gpu_suite.py``).

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu.json
    python benchmarks/gpu_suite.py --cpu-check --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu_parts import (  # noqa: E402
    Ctx,
    breakdown,
    canonical,
    environment,
    error_text,
    intensity,
    logits_agreement,
    mask,
    max_abs_diff,
    timed,
    to_host,
)

SECTIONS = ("environment", "filters", "onnx_providers", "unet_zarr", "labels", "gpus")
TARGET_GVOX = 1.0
TARGET_FP16_AGREEMENT = 0.999


def _skip(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def _no_gpu(ctx: Ctx) -> str | None:
    """Why a CuPy section cannot run (None: a GPU works, or ``--cpu-check`` runs the CPU fallback)."""
    if ctx.cpu_check or ctx.on_gpu:
        return None
    return "no working CUDA device (CuPy missing or cannot allocate); --cpu-check runs the CPU fallbacks"


# ----------------------------------------------------------------------------- 2. filters


def _filter_cases() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("gaussian", "gaussian_kernel", {"sigma": 1.5}),
        ("median", "median_kernel", {"size": 3}),
        ("unsharp", "unsharp_kernel", {"sigma": 1.0, "amount": 0.5}),
        ("bilateral", "bilateral_kernel", {"sigma_spatial": 1.0, "sigma_range": 3000.0, "radius": 1}),
        ("nlmeans", "nlmeans_kernel", {"patch_radius": 1, "search_radius": 1, "h": 3000.0}),
        ("normalize", "normalize_kernel", {"low": 26000.0, "high": 36000.0}),
    ]


def section_filters(ctx: Ctx) -> dict[str, Any]:
    from volmla.preprocess import kernels

    if _no_gpu(ctx):
        return _skip(str(_no_gpu(ctx)))
    n = ctx.filter_size
    host = intensity((n, n, n), seed=ctx.seed + 2)
    xp = ctx.xp
    h2d, dev = timed(lambda: xp.asarray(host), sync=ctx.sync)
    out: dict[str, Any] = {"size": [n, n, n], "dtype": "uint16", "device_backend": xp.__name__,
                           "host_to_device_s": h2d, "cases": {}}
    for name, fn_name, params in _filter_cases():
        if ctx.short_of(20):
            out["cases"][name] = _skip("time budget spent")
            continue
        fn = getattr(kernels, fn_name)
        try:
            cpu_s, ref = timed(functools.partial(fn, host, **params))
            fn(dev[:16, :16, :16], **params)  # compile the device kernels outside the timing
            ctx.sync()
            dev_s, got = timed(functools.partial(fn, dev, **params), sync=ctx.sync, repeat=3)
            span = float(np.ptp(ref.astype(np.float64))) or 1.0
            diff = max_abs_diff(got, ref)
            out["cases"][name] = {"params": params, "numpy_s": cpu_s, "device_s": dev_s,
                                  "speedup": cpu_s / dev_s if dev_s > 0 else None,
                                  "device_mvox_per_s": n**3 / dev_s / 1e6 if dev_s > 0 else None,
                                  "max_abs_diff": diff, "max_rel_diff": diff / span,
                                  "dtype_numpy": str(ref.dtype), "dtype_device": str(got.dtype)}
        except Exception as exc:
            out["cases"][name] = {"error": error_text(exc)}
    return out


# ----------------------------------------------------------------------------- 3. ONNX Runtime providers


def _tiles_per_s(session: Any, name: str, x: np.ndarray, *, min_s: float) -> tuple[np.ndarray, float, float]:
    """Logits of ``x``, tiles/s of ``session.run`` (host arrays in and out) and the first run's seconds.

    The first run (TensorRT builds its engine there, cuDNN picks algorithms) is not in the rate.
    """
    t0 = time.perf_counter()
    out = session.run(None, {name: x})[0]
    first = time.perf_counter() - t0
    runs, t0 = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - t0 < min_s:
        session.run(None, {name: x})
        runs += 1
        if runs >= 50:
            break
    return out, x.shape[0] * runs / (time.perf_counter() - t0), first


def section_onnx(ctx: Ctx) -> dict[str, Any]:
    import onnxruntime as ort

    from volmla.engine.backend import gpu_available
    from volmla.segment.sessions import get_session, inspect_model

    model = ctx.model()
    info = inspect_model(model)
    t = 32 if ctx.cpu_check else 64
    rng = np.random.default_rng(ctx.seed + 3)
    x = rng.normal(0.5, 0.3, size=(ctx.tile_batch, 1, t, t, t)).astype(np.float32)
    min_s = 0.2 if ctx.cpu_check else 2.0
    cpu = get_session(model, providers=("CPUExecutionProvider",))
    ref, cpu_rate, _ = _tiles_per_s(cpu, info.input_name, x, min_s=min_s)
    shares = np.bincount(ref.argmax(1).ravel(), minlength=ref.shape[1]) / ref[:, 0].size
    try:
        import onnxconverter_common  # noqa: F401

        converter = True
    except ImportError:
        converter = False
    out: dict[str, Any] = {"model": {"depth": ctx.depth, "base": ctx.base, "halo": info.halo,
                                     "classes": len(info.classes)},
                           "tile": [t, t, t], "batch": ctx.tile_batch,
                           "cpu": {"tiles_per_s": cpu_rate, "argmax_class_shares": shares.round(4).tolist()},
                           "providers": {}}
    have = ort.get_available_providers()
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):  # TensorRT last: its engine builds
        for fp16 in (False, True):
            key = f"{provider.removesuffix('ExecutionProvider')}_{'fp16' if fp16 else 'fp32'}"
            if ctx.cpu_check:
                out["providers"][key] = _skip("--cpu-check: GPU providers are not used")
            elif provider not in have:
                out["providers"][key] = _skip(f"onnxruntime offers {have}, not {provider} (onnxruntime-gpu not installed?)")
            elif not gpu_available():
                out["providers"][key] = _skip("no working CUDA device (CuPy cannot allocate)")
            elif ctx.short_of(150 if provider.startswith("Tensorrt") else 40):
                out["providers"][key] = _skip("time budget spent")
            else:
                out["providers"][key] = _one_provider(ctx, model, provider, fp16, x, ref, converter, min_s)
    if ctx.cpu_check:  # exercise the comparison on the CPU fallback: one thread vs the default
        one = get_session(model, providers=("CPUExecutionProvider",), threads=1)
        got, rate, _ = _tiles_per_s(one, info.input_name, x, min_s=min_s)
        out["providers"]["CPU_fp32_1thread"] = {"provider_taken": one.get_providers()[0], "tiles_per_s": rate,
                                                "speedup_vs_cpu": rate / cpu_rate, **logits_agreement(ref, got)}
    return out


def _one_provider(ctx: Ctx, model: Path, provider: str, fp16: bool, x: np.ndarray, ref: np.ndarray,
                  converter: bool, min_s: float) -> dict[str, Any]:
    from volmla.segment.sessions import GPU_PROVIDERS, get_session, inspect_model

    try:
        t0 = time.perf_counter()
        # volmla's own order (select_providers): TensorRT, then CUDA for what TensorRT leaves, then the CPU
        chain = GPU_PROVIDERS[GPU_PROVIDERS.index(provider):] if provider in GPU_PROVIDERS else (provider,)
        session = get_session(model, providers=(*chain, "CPUExecutionProvider"), fp16=fp16)
        created = time.perf_counter() - t0
        taken = session.get_providers()
        if taken[0] != provider:  # ONNX Runtime never raises: it falls back
            return _skip(f"ONNX Runtime fell back to {taken[0]} (providers taken: {taken})")
        got, rate, first = _tiles_per_s(session, inspect_model(model).input_name, x, min_s=min_s)
        effective = fp16 and (converter or provider.startswith("Tensorrt"))
        if not fp16:
            how = "float32"
        elif converter:
            how = "onnxconverter-common float16 model"
        elif effective:
            how = "TensorRT trt_fp16_enable"
        else:
            how = "float32 (onnxconverter-common missing: the CUDA provider runs the float32 model)"
        return {"provider_taken": taken[0], "precision": how, "fp16_effective": effective, "session_s": created,
                "first_run_s": first, "tiles_per_s": rate, **logits_agreement(ref, got)}
    except Exception as exc:
        return {"error": error_text(exc)}


# ----------------------------------------------------------------------------- 4. U-Net Zarr -> Zarr


def _segment_job(ctx: Ctx, src: Path, dst: Path, *, tile: Any, fp16: bool) -> float:
    """Seconds of one ``segment`` + ``write_volume`` job, Zarr to Zarr."""
    from volmla.io import open_volume, write_volume
    from volmla.segment.infer import segment

    t0 = time.perf_counter()
    volume = open_volume(src)
    # one tile per block: batch 1, or the GPU path pads every block's batch to `batch` tiles
    batch = 1 if tile == "block" else ctx.tile_batch
    seg = segment(volume, model=ctx.model(), device=ctx.device, tile=tile, fp16=fp16,  # type: ignore[arg-type]
                  batch=batch)
    write_volume(seg.phases, dst, voxel_size=volume.attrs["voxel_size_um"], kind="phases", overwrite=True)
    return time.perf_counter() - t0


def _configs(ctx: Ctx) -> list[tuple[str, Any, bool]]:
    configs: list[tuple[str, Any, bool]] = [("block_fp32", "block", False)]
    if ctx.on_gpu:
        configs.append(("block_fp16", "block", True))
    configs.append(("amortised_fp32", None, False))  # the default: large blocks, one tile each, shared context
    if ctx.on_gpu:
        configs.append(("amortised_fp16", None, True))
    return configs


def section_unet_zarr(ctx: Ctx) -> dict[str, Any]:
    from volmla.io import open_volume

    missing = ctx.ort_gpu_missing()
    if missing:
        return _skip(missing)
    src = ctx.volume()
    n = ctx.volume_size
    voxels = n**3
    out: dict[str, Any] = {"size": [n, n, n], "chunks": ctx.chunk, "dtype": "uint16", "device": ctx.device,
                           "runs": {}}
    # warm-up: session, cuDNN algorithms and kernels on a one-chunk volume, outside the timing
    c = min(ctx.chunk, n)
    warm_src = ctx.tmp / "warm.zarr"
    from volmla.io import write_volume

    write_volume(np.asarray(open_volume(src).data[:c, :c, :c]), warm_src, voxel_size=1.0, chunks=c,
                 kind="intensity", overwrite=True)
    for name, tile, fp16 in _configs(ctx):
        if ctx.short_of(45):
            out["runs"][name] = _skip("time budget spent")
            continue
        try:
            warm = _segment_job(ctx, warm_src, ctx.tmp / "warm_out.zarr", tile=tile, fp16=fp16)
            dst = ctx.tmp / f"phases_{name}.zarr"
            seconds = _segment_job(ctx, src, dst, tile=tile, fp16=fp16)
            phases = open_volume(dst).data
            out["runs"][name] = {"tile": tile if tile else "model default", "fp16": fp16, "warm_up_s": warm,
                                 "seconds": seconds, "gvoxel_per_s": voxels / seconds / 1e9,
                                 "classes_seen": len(np.unique(np.asarray(phases[:: max(1, n // 64)])))}
        except Exception as exc:
            out["runs"][name] = {"error": error_text(exc)}
    if not ctx.short_of(30):
        try:
            out["breakdown"] = breakdown(ctx, src)
        except Exception as exc:
            out["breakdown"] = {"error": error_text(exc)}
    else:
        out["breakdown"] = _skip("time budget spent")
    return out


# ----------------------------------------------------------------------------- 5. block labelling


def _label_block(block: np.ndarray) -> np.ndarray:
    from volmla.particles import label

    return np.asarray(label(block, connectivity=26).labels.compute())


def section_labels(ctx: Ctx) -> dict[str, Any]:
    import dask.array as da

    from volmla.engine.backend import ndimage_module
    from volmla.particles import label

    if _no_gpu(ctx):
        return _skip(str(_no_gpu(ctx)))
    if ctx.on_gpu:
        try:
            import cupyx.scipy.ndimage  # noqa: F401
        except ImportError as exc:
            return _skip(f"cupyx.scipy.ndimage not importable: {error_text(exc)}")
    xp = ctx.xp
    ndi = ndimage_module(xp)
    n, c = ctx.label_size, ctx.label_chunk
    m = mask((n, n, n), seed=ctx.seed + 4)
    out: dict[str, Any] = {"size": [n, n, n], "chunks": c, "connectivity": 26, "device_backend": ndi.__name__}
    cpu_s, cpu = timed(lambda: label(da.from_array(m, chunks=c), connectivity=26))
    cpu_labels_s, cpu_labels = timed(lambda: cpu.labels.compute())
    structure = np.ones((3, 3, 3), dtype=bool)  # NumPy: scipy and cupyx both take it
    dev = xp.asarray(m)
    ndi.label(dev[:8, :8, :8], structure=structure)  # compile outside the timing
    ctx.sync()
    gpu_s, (gpu_labels, gpu_count) = timed(lambda: ndi.label(dev, structure=structure), sync=ctx.sync, repeat=2)
    whole_same = bool(np.array_equal(canonical(to_host(gpu_labels)), canonical(cpu_labels)))
    out["whole"] = {"volmla_cpu_s": cpu_s + cpu_labels_s, "device_s": gpu_s, "count_volmla": int(cpu.count),
                    "count_device": int(gpu_count), "identical_after_renumbering": whole_same,
                    "device_mvox_per_s": n**3 / gpu_s / 1e6 if gpu_s else None}
    blocks_same, n_blocks, t_dev, t_cpu = 0, 0, 0.0, 0.0
    for z in range(0, n, c):
        for y in range(0, n, c):
            for x in range(0, n, c):
                block = m[z : z + c, y : y + c, x : x + c]
                d = xp.asarray(block)
                ctx.sync()
                dt, (lab, _) = timed(functools.partial(ndi.label, d, structure=structure), sync=ctx.sync)
                ct, ref = timed(functools.partial(_label_block, block))
                t_dev += dt
                t_cpu += ct
                n_blocks += 1
                blocks_same += bool(np.array_equal(canonical(to_host(lab)), canonical(ref)))
    out["blocks"] = {"n_blocks": n_blocks, "identical_after_renumbering": blocks_same == n_blocks,
                     "blocks_identical": blocks_same, "device_s": t_dev, "volmla_cpu_s": t_cpu}
    out["identical"] = whole_same and blocks_same == n_blocks
    return out


# ----------------------------------------------------------------------------- 6. --gpus workers


def section_gpus(ctx: Ctx) -> dict[str, Any]:
    from volmla.engine.backend import gpu_count
    from volmla.engine.cluster import cluster
    from volmla.io import open_volume

    missing = ctx.ort_gpu_missing()
    if missing:
        return _skip(missing)
    if ctx.short_of(60):
        return _skip("time budget spent")
    src = ctx.volume()
    n = ctx.volume_size
    want = ctx.gpus or max(1, gpu_count())
    out: dict[str, Any] = {"size": [n, n, n], "tile": "block"}
    t0 = time.perf_counter()
    if ctx.on_gpu:
        out.update(mode="cluster(gpus=N)", gpus=want)
        manager = cluster(gpus=want, dashboard=False)
    else:
        out.update(mode="CPU fallback: cluster(workers=N), device cpu", workers=want)
        manager = cluster(workers=want, dashboard=False)
    with manager as client:
        out["cluster_start_s"] = time.perf_counter() - t0
        out["workers"] = len(client.scheduler_info().get("workers", {}))
        dst = ctx.tmp / "phases_gpus.zarr"
        seconds = _segment_job(ctx, src, dst, tile="block", fp16=False)
    out["seconds"] = seconds
    out["gvoxel_per_s"] = n**3 / seconds / 1e9
    out["gvoxel_per_s_per_gpu"] = out["gvoxel_per_s"] / want
    single = ctx.tmp / "phases_block_fp32.zarr"
    if single.exists():
        a = np.asarray(open_volume(single).data)
        b = np.asarray(open_volume(dst).data)
        out["identical_to_single_process"] = bool(np.array_equal(a, b))
    return out


# ----------------------------------------------------------------------------- 7. targets and main


def targets(results: dict[str, Any], *, cpu_check: bool) -> dict[str, Any]:
    """Pass / fail (None: not measured) against issue #20's targets."""
    runs = results.get("unet_zarr", {}).get("runs", {})
    best = max((r["gvoxel_per_s"] for r in runs.values() if isinstance(r, dict) and "gvoxel_per_s" in r),
               default=None)
    labels = results.get("labels", {})
    same = labels.get("identical") if isinstance(labels, dict) else None
    fp16 = [p["argmax_agreement"] for k, p in results.get("onnx_providers", {}).get("providers", {}).items()
            if k.endswith("fp16") and isinstance(p, dict) and p.get("fp16_effective")]
    worst = min(fp16) if fp16 else None
    return {
        "note": "--cpu-check: CPU fallbacks at tiny sizes, figures say nothing about a GPU" if cpu_check else None,
        "unet_end_to_end_gvoxel_per_s": {"target": f">= {TARGET_GVOX}", "value": best,
                                         "pass": None if best is None else best >= TARGET_GVOX},
        "labels_identical_to_cpu": {"target": True, "value": same, "pass": same},
        "fp16_argmax_agreement": {"target": f">= {TARGET_FP16_AGREEMENT}", "value": worst,
                                  "pass": None if worst is None else worst >= TARGET_FP16_AGREEMENT},
    }


def run_suite(ctx: Ctx, out_path: Path, sections: tuple[str, ...], args: dict[str, Any]) -> dict[str, Any]:
    """Run the sections in order, each guarded, rewriting ``out_path`` after every one."""
    funcs: dict[str, Callable[[Ctx], dict[str, Any]]] = {
        "environment": lambda _ctx: environment(), "filters": section_filters, "onnx_providers": section_onnx,
        "unet_zarr": section_unet_zarr, "labels": section_labels, "gpus": section_gpus,
    }
    results: dict[str, Any] = {"suite": {"args": args, "cpu_check": ctx.cpu_check, "device": ctx.device,
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    for name in SECTIONS:
        if name not in sections:
            results[name] = _skip("not selected (--sections)")
            continue
        t0 = time.perf_counter()
        res: dict[str, Any]
        try:
            if ctx.left() <= 0:
                res = _skip("time budget spent")
            else:
                res = funcs[name](ctx)
        except Exception as exc:
            logging.getLogger("gpu_suite").exception("section %s failed", name)
            res = {"error": error_text(exc)}
        res["section_s"] = round(time.perf_counter() - t0, 3)
        results[name] = res
        print(f"[gpu_suite] {name}: {res['section_s']:.1f} s"
              + (f" ({'skipped: ' + res['skipped'] if 'skipped' in res else 'error: ' + res['error']})"
                 if "skipped" in res or "error" in res else ""), flush=True)
        results["targets"] = targets(results, cpu_check=ctx.cpu_check)
        results["suite"]["seconds"] = round(time.perf_counter() - ctx.started, 3)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2, default=str))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu.json")
    p.add_argument("--cpu-check", action="store_true", help="tiny sizes, CPU fallbacks (plumbing check)")
    p.add_argument("--filter-size", type=int, default=None, help="edge of the filter volume (256)")
    p.add_argument("--volume-size", type=int, default=None, help="edge of the U-Net volume (512)")
    p.add_argument("--chunk", type=int, default=None, help="storage chunk edge of the U-Net volume (256)")
    p.add_argument("--label-size", type=int, default=None, help="edge of the labelling mask (256)")
    p.add_argument("--gpus", type=int, default=0, help="workers for the --gpus section (0: every visible GPU)")
    p.add_argument("--budget", type=float, default=None, help="seconds after which no new work starts (390)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    a = p.parse_args(argv)
    small = a.cpu_check
    sections = tuple(s.strip() for s in a.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    tmp = a.tmp or Path(tempfile.mkdtemp(prefix="volmla-gpu-suite-"))
    tmp.mkdir(parents=True, exist_ok=True)
    volume = a.volume_size or (32 if small else 512)
    ctx = Ctx(
        cpu_check=small, tmp=tmp,
        filter_size=a.filter_size or (24 if small else 256),
        volume_size=volume,
        chunk=a.chunk or (16 if small else min(256, volume)),
        label_size=a.label_size or (24 if small else 256),
        label_chunk=12 if small else 128,
        tile_batch=2 if small else 4,
        gpus=a.gpus or (1 if small else 0),
        budget_s=a.budget or (50.0 if small else 390.0),
        depth=2 if small else 3, base=4 if small else 8,
    )
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    try:
        results = run_suite(ctx, a.out, sections, args)
    finally:
        if a.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    bad = [k for k in SECTIONS if isinstance(results.get(k), dict) and "error" in results[k]]
    print(f"[gpu_suite] wrote {a.out} in {results['suite']['seconds']:.1f} s"
          + (f"; sections with errors: {bad}" if bad else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
