"""U-Net inference Zarr -> Zarr against the same model on raw tiles (issue #20, item 1).

Measures, in one run on one machine:

1. raw tile throughput: ONNX Runtime (the session volmla itself uses, intra-op threads =
   the cores here) on in-memory tiles of the model's preferred tile size cut from the
   normalised volume, batches of 1, 2 and 4, the best batch counted;
2. Zarr -> Zarr: :func:`volmla.segment.infer.segment` with its defaults (amortised blocks:
   one tile per block with the default context) written by :func:`volmla.io.write_volume`
   on an embedded cluster (one worker per core, as the CLI starts it); the cluster is up,
   its workers hold their ONNX Runtime sessions and one untimed run is done before the
   clock starts (the raw tiles are timed after a warm-up call too). Both are also counted
   per CPU second (this process and all workers, every thread), which a busy machine
   disturbs less than wall time: ``ratio_cpu``; Raw and Zarr -> Zarr alternate for ``--rounds`` rounds and the
   median of the per-round ratios is reported, since the machine may be shared;
3. agreement: the Zarr output against whole-volume inference (the volume extended by the
   model's full halo, one tile), the fraction of equal labels;
4. ``before`` (``--before``): the previous default, the model's tile blended with 25 %
   overlap inside every block extended by the full halo (``tile=model tile, overlap=0.25``),
   once.

The model is ``--model`` (default: an untrained, seeded depth-3 base-8 U-Net exported here,
needs torch); the volume is ``--volume`` (an intensity OME-Zarr) or a phantom of ``--size``.
Results go to stdout and ``benchmarks/results/unet.json``. Target: ratio >= 0.60.

Measured on a shared 2-core machine with the demo's depth-3 U-Net (halo 28, context 12):
128^3 demo volume (load 3): raw 1.44 Mvx/s, Zarr -> Zarr 0.82 Mvx/s, ratio 0.53 (0.55 per
CPU second; the previous default 0.159 Mvx/s, ratio 0.11), labels 99.984 % equal to the
whole-volume reference; 192^3 phantom (load 6-7, ``unet_192.json``): ratio 0.54 (0.57 per
CPU second), 99.989 %. With this context the shared context alone bounds the ratio at
1 / 1.675 = 0.60 for a 128^3 volume and 1 / 1.58 = 0.63 for 192^3 (1 / 1.54 from 256^3 on).
A larger tile budget does not help here: ``--tile-sweep`` (quiet machine, same model) gave
ONNX Runtime 1.63 Mvx/s per thread on a 128^3 tile, 1.53 on 152^3, 1.47 on 120x216x216 and
1.24 on 216^3, so ``--tile-gib 4`` (192^3 as one 216^3 block, 1.42x voxels instead of
1.58x) measured a ratio of 0.51 against 0.54 for the default in the same session
(``unet_192.json``, ``unet_192_tile4gib.json``).

    python benchmarks/bench_unet.py --model /path/unet3d.onnx             # 128^3, about a minute
    python benchmarks/bench_unet.py --model /path/unet3d.onnx --size 192
    python benchmarks/bench_unet.py --size 192 --rounds 3 --no-before --tile-sweep   # untrained model
    python benchmarks/bench_unet.py --size 192 --rounds 3 --no-before --tile-gib 4 --output results/unet_192_tile4gib.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "platform": platform.platform(), "python": sys.version.split()[0]}


def untrained_model(work: Path, norm: tuple[float, float]) -> Path:
    import torch

    from volmla.segment.export import export
    from volmla.segment.model import UNet, receptive_halo
    from volmla.segment.train import TrainConfig, TrainResult, save_model

    torch.manual_seed(0)
    net = UNet(dim=3, n_classes=4, depth=3, base=8).eval()
    config = TrainConfig(depth=3, base=8, tile=64)
    fake = TrainResult(net, ("void", "a", "b", "c"), norm, receptive_halo(3), (64, 64, 64), [], 0, (), (), config)
    save_model(fake, work / "untrained.pt")
    return export(work / "untrained.pt", work / "untrained.onnx").path


def raw_tiles(volume: np.ndarray, info, session, batches=(1, 2, 4)) -> dict:
    """Best Mvx/s of the session over tiles of the model's preferred size, per batch."""
    tile = info.tile or (64, 64, 64)
    x = volume.astype(np.float32)
    if info.norm is not None:
        lo, hi = info.norm
        x = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    grid = [range(0, max(n - t, 0) + 1, t) for n, t in zip(x.shape, tile, strict=True)]
    tiles = np.stack([x[z:z + tile[0], y:y + tile[1], w:w + tile[2]] for z in grid[0] for y in grid[1] for w in grid[2]])
    want = max(4, 8 * 64**3 // int(np.prod(tile)))  # about 2 Mvx per batch size, repeating tiles of a small volume
    tiles = tiles[np.arange(want) % len(tiles)][:, None]
    rates, cpu_rates = {}, {}
    for b in batches:
        n = len(tiles) // b * b
        session.run(None, {info.input_name: tiles[:b]})  # warm-up for this shape
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, b):
            session.run(None, {info.input_name: tiles[i:i + b]})
        rates[b] = n * int(np.prod(tile)) / (time.perf_counter() - t0) / 1e6
        cpu_rates[b] = n * int(np.prod(tile)) / (time.process_time() - c0) / 1e6
    best = max(rates, key=rates.get)
    return {"tile": list(tile), "tiles": len(tiles), "mvx_s_by_batch": {str(k): round(v, 3) for k, v in rates.items()},
            "batch": best, "mvx_s": round(rates[best], 3), "mvx_per_cpu_s": round(max(cpu_rates.values()), 3)}


SWEEP_EDGES = ((64, 64, 64), (96, 96, 96), (128, 128, 128), (152, 152, 152), (120, 216, 216), (216, 216, 216))


def tile_sweep(model: Path, info, cores: int, providers: tuple[str, ...], seconds: float = 5.0) -> list[dict]:
    """ONNX Runtime's own speed per tile shape (random input, batch 1), one thread and all cores:
    whether a larger tile, which shares less context, is inferred as fast per voxel."""
    from volmla.segment.sessions import get_session

    rng = np.random.default_rng(0)
    rows = []
    for threads in sorted({1, cores}):
        session = get_session(model, providers=providers, threads=threads)
        for shape in SWEEP_EDGES:
            x = rng.random((1, 1, *shape), np.float32)
            session.run(None, {info.input_name: x})  # warm-up for this shape
            t0, c0, n = time.perf_counter(), time.process_time(), 0
            while n < 2 or time.perf_counter() - t0 < seconds:
                session.run(None, {info.input_name: x})
                n += 1
            mvx = n * int(np.prod(shape)) / 1e6
            rows.append({"threads": threads, "tile": list(shape), "mvx_s": round(mvx / (time.perf_counter() - t0), 3),
                         "mvx_per_cpu_s": round(mvx / (time.process_time() - c0), 3)})
            print(f"tile {shape}, {threads} thread(s): {rows[-1]['mvx_s']} Mvx/s", file=sys.stderr)
    return rows


def cpu_seconds(client) -> float:
    """CPU time of this process and every worker process so far (all their threads)."""
    return time.process_time() + sum(client.run(time.process_time).values())


def warm_sessions(model: str, providers: tuple[str, ...], cores: int) -> None:
    from volmla.segment.sessions import get_session

    for threads in range(1, cores + 1) if cores else [None]:
        get_session(model, providers=providers, threads=threads)


def zarr_to_zarr(src: Path, dst: Path, model: Path, device: str, **options) -> tuple[float, object]:
    from volmla.io import open_volume, write_volume
    from volmla.segment.infer import segment

    vol = open_volume(src)
    t0 = time.perf_counter()
    seg = segment(vol, model=model, device=device, **options)
    write_volume(seg.phases, dst, voxel_size=vol.attrs["voxel_size_um"], chunks=[c[0] for c in vol.data.chunks],
                 kind="phases", overwrite=True)
    return time.perf_counter() - t0, seg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="phantom edge (voxels), without --volume")
    parser.add_argument("--volume", type=Path, default=None, help="intensity OME-Zarr (default: a phantom of --size)")
    parser.add_argument("--model", type=Path, default=None, help="U-Net ONNX (default: an untrained one, needs torch)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--rounds", type=int, default=2, help="raw / Zarr -> Zarr rounds (median ratio)")
    parser.add_argument("--before", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the previous default (model tile, 25 %% overlap, full halo); default: for volumes up to 128^3")
    parser.add_argument("--tile-gib", type=float, default=None,
                        help="ONNX Runtime memory an amortised tile may take (volmla.segment.infer.TILE_BYTES, GiB; "
                             "still at most a third of a worker's memory); default: volmla's")
    parser.add_argument("--tile-sweep", action="store_true",
                        help="also time the session alone per tile shape (64^3 to 216^3), one thread and all cores")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "unet.json")
    args = parser.parse_args()
    if args.tile_gib is not None:
        import volmla.segment.infer

        volmla.segment.infer.TILE_BYTES = int(args.tile_gib * 2**30)  # the blocks are planned here, in the driver

    from volmla.engine.cluster import cluster
    from volmla.io import open_volume
    from volmla.segment.infer import segment
    from volmla.segment.sessions import GPU_PROVIDERS, get_session, inspect_model, select_providers
    from volmla.synthetic import write_phantom

    record: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "machine": machine(), "load_average_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="volmla-bench-unet-") as tmp:
        work = Path(tmp)
        src = args.volume or write_phantom(work / "phantom", shape=(args.size,) * 3, seed=0, chunks=64)["intensity"]
        image = open_volume(src).data.compute()
        model = args.model or untrained_model(work, (float(np.percentile(image, 1)), float(np.percentile(image, 99))))
        info = inspect_model(model)
        providers = select_providers(args.device)  # type: ignore[arg-type]
        on_gpu = providers[0] in GPU_PROVIDERS
        cores = record["machine"]["cores"]
        session = get_session(model, providers=providers, threads=None if on_gpu else cores)
        record["model"] = {"path": str(model), "halo": info.halo, "tile": list(info.tile or ()), "multiple": info.multiple,
                           "arch": info.metadata.get("arch"), "providers": list(session.get_providers())}
        record["volume"] = {"path": str(src), "shape": list(image.shape), "voxels": int(image.size)}
        if args.tile_sweep:
            record["tile_sweep"] = tile_sweep(model, info, 1 if on_gpu else cores, providers)

        # whole-volume reference: one tile, the full halo around every voxel
        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            ref = segment(image, model=model, tile="block", device=args.device).phases.compute()
        record["reference_s"] = round(time.perf_counter() - t0, 2)

        rounds = []
        with cluster(dashboard=False) as client:
            record["cluster"] = {"workers": len(client.scheduler_info()["workers"])}
            # warm-up, untimed: every worker imports ONNX Runtime and opens the sessions it may use
            client.run(warm_sessions, str(model), providers, 0 if on_gpu else cores)
            zarr_to_zarr(src, work / "phases.zarr", model, args.device)
            for r in range(args.rounds):
                raw = raw_tiles(image, info, session)
                c0 = cpu_seconds(client)
                seconds, seg = zarr_to_zarr(src, work / "phases.zarr", model, args.device)
                z2z, z2z_cpu = image.size / seconds / 1e6, image.size / (cpu_seconds(client) - c0) / 1e6
                rounds.append({"raw": raw, "zarr_to_zarr_s": round(seconds, 2), "zarr_to_zarr_mvx_s": round(z2z, 3),
                               "zarr_to_zarr_mvx_per_cpu_s": round(z2z_cpu, 3), "ratio": round(z2z / raw["mvx_s"], 3),
                               "ratio_cpu": round(z2z_cpu / raw["mvx_per_cpu_s"], 3)})
                print(f"round {r}: raw {raw['mvx_s']} Mvx/s (batch {raw['batch']}), Zarr -> Zarr {z2z:.3f} Mvx/s, "
                      f"ratio {z2z / raw['mvx_s']:.2f} (per CPU second {z2z_cpu / raw['mvx_per_cpu_s']:.2f})",
                      file=sys.stderr)
            got = open_volume(work / "phases.zarr").data.compute()
            record["settings"] = {"blocks": [list(c) for c in seg.phases.chunks], "context": list(seg.halo),
                                  "tile": [max(c) + 2 * h for c, h in zip(seg.phases.chunks, seg.halo, strict=True)]}
            before = args.before if args.before is not None else image.size <= 128**3
            if before:
                seconds, old = zarr_to_zarr(src, work / "before.zarr", model, args.device, tile=info.tile, overlap=0.25)
                old_labels = open_volume(work / "before.zarr").data.compute()
                record["before"] = {"settings": "tile=model tile, overlap=0.25, full halo (the previous default)",
                                    "zarr_to_zarr_s": round(seconds, 2), "mvx_s": round(image.size / seconds / 1e6, 3),
                                    "ratio": round(image.size / seconds / 1e6 / statistics.median(
                                        r["raw"]["mvx_s"] for r in rounds), 3),
                                    "agreement": round(float((old_labels == ref).mean()), 6)}
        record["rounds"] = rounds
        record["raw_tile_mvx_s"] = statistics.median(r["raw"]["mvx_s"] for r in rounds)
        record["zarr_to_zarr_mvx_s"] = statistics.median(r["zarr_to_zarr_mvx_s"] for r in rounds)
        record["ratio"] = statistics.median(r["ratio"] for r in rounds)
        record["ratio_cpu"] = statistics.median(r["ratio_cpu"] for r in rounds)
        record["target_ratio"] = 0.60
        record["meets_target"] = record["ratio"] >= 0.60
        record["agreement"] = round(float((got == ref).mean()), 6)
        record["agreement_target"] = 0.999
    record["load_average_end"] = list(os.getloadavg())
    text = json.dumps(record, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
