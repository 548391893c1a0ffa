#!/usr/bin/env bash
# One-shot GPU check (issue #20 item 5): the gpu-marked tests, then benchmarks/gpu_suite.py.
#
# Run it on a machine with one CUDA GPU, from anywhere, with the image's own python3 (no venv,
# no network, nothing installed beyond what is said below). In this workplace's device tool:
#     run(command="bash deploy/gpu_check.sh", timeout_s=600)            # results under $OUT
#     run(command="bash deploy/gpu_check.sh", carry=[".whl"], timeout_s=600)   # with wheels
# Elsewhere: OUT=/some/dir bash deploy/gpu_check.sh (default OUT: benchmarks/results).
#
# It writes to $OUT: preflight.txt (imports and ONNX Runtime providers), pytest_gpu.log,
# gpu_suite.log and gpu.json. The whole stays under 9 minutes: pytest gets 150 s, the suite
# 360 s with a 280 s budget for starting new work (it writes gpu.json after every section,
# so a timeout keeps what was done).
#
# volmla itself goes on PYTHONPATH (``pip install --no-deps --no-build-isolation -e .`` only if
# that import fails). Its dependencies must be importable: the GPU image of 2026-11 lacks
# dask, distributed, zarr, numcodecs, ome-zarr(-models), pydantic, cc3d and fastremap, and has
# the CPU onnxruntime only. Wheels for the missing pure and small packages travel in .whl/
# (about 25 MiB; make them beforehand, on a machine with network, with
#     bash deploy/gpu_check.sh --fetch-wheels
# and name .whl in carry); they are installed into /tmp/site. onnxruntime-gpu (hundreds of MiB)
# cannot travel within the 64 MiB limit: without it the suite reports the CUDA/TensorRT
# providers, the U-Net Zarr-to-Zarr run and the --gpus run as skipped, with the reason.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/benchmarks/results}

# Pinned to the versions volmla is tested with; Python 3.12 manylinux x86-64 wheels.
WHEELS=(dask==2026.8.0 partd==1.4.2 locket==1.0.0 distributed==2026.8.0 tblib==3.2.2 tornado==6.6.1
        zict==3.0.0 zarr==3.1.6 donfig==0.8.1.post1 google-crc32c==1.9.0 numcodecs==0.16.6
        ome-zarr==0.18.0 rangehttpserver==1.4.0 ome-zarr-models==1.7 pydantic-zarr==0.9.2
        pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0 typing-inspection==0.4.5
        deprecated==1.3.1 connected-components-3d==4.1.1 fastremap==1.21.0 natsort==8.4.0)

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
             manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
        platforms+=(--platform "$p")
    done
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${WHEELS[@]}" || exit 1
    du -sh .whl
    exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
        || echo "gpu_check: installing the carried wheels failed" >&2
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

if ! "$PY" -c "import volmla" 2> /dev/null; then
    timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation -e . > /dev/null 2>&1 \
        || echo "gpu_check: pip install --no-deps -e . failed" >&2
fi

timeout 60 "$PY" - > "$OUT/preflight.txt" 2>&1 <<'EOF'
import importlib

need = ["volmla", "numpy", "scipy", "dask", "distributed", "zarr", "numcodecs", "ome_zarr", "ome_zarr_models",
        "cc3d", "fastremap", "xarray", "skimage", "psutil", "yaml", "rich", "typer", "pandas", "onnx",
        "onnxruntime", "torch", "cupy", "cupyx.scipy.ndimage", "pytest", "hypothesis", "onnxconverter_common",
        "dask_cuda"]
missing = []
for name in need:
    try:
        module = importlib.import_module(name)
        print(f"ok      {name} {getattr(module, '__version__', '')}")
    except Exception as exc:
        missing.append(name)
        print(f"MISSING {name}: {type(exc).__name__}: {exc}")
try:
    import onnxruntime

    print("onnxruntime providers:", onnxruntime.get_available_providers())
except Exception:
    pass
print("missing:", " ".join(missing) or "none")
EOF
cat "$OUT/preflight.txt"

mapfile -t gpu_tests < <(grep -rl --include='test_*.py' -e 'mark.gpu' tests | sort)
echo "== gpu-marked tests: ${gpu_tests[*]}"
timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors "${gpu_tests[@]}" \
    2>&1 | tee "$OUT/pytest_gpu.log"
echo "== pytest exit: ${PIPESTATUS[0]}"

timeout 360 "$PY" benchmarks/gpu_suite.py --budget 280 --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_suite.log"
status=${PIPESTATUS[0]}
echo "== gpu_suite exit: $status ($SECONDS s in all)"
exit "$status"
