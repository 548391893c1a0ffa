#!/usr/bin/env bash
# Start a Dask cluster inside a Slurm allocation and run one volmla job on it.
#
#   sbatch --nodes=4 --ntasks-per-node=1 --cpus-per-task=16 --mem=0 deploy/slurm-cluster.sh CONFIG.yaml
#   sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 --gres=gpu:1 deploy/slurm-cluster.sh CONFIG.yaml
#
# What it does, as volmla's embedded cluster does on one machine:
# - one scheduler (on the batch node) that writes a scheduler file; the workers and the
#   client wait for that file instead of sleeping a guessed time;
# - per node, one single-threaded worker process per core (`--nworkers N --nthreads 1`):
#   volmla's block kernels hold the GIL in places and are tuned for this shape;
# - node-local scratch for spilled data (`$SLURM_TMPDIR`, else `$TMPDIR`, else /tmp);
# - GPU nodes (a GPU in the allocation) run `dask cuda worker`, one worker per GPU with the
#   resource GPU=1 that volmla's GPU tasks ask for; CPU nodes never claim a GPU.
# The scheduler speaks plain TCP and Dask unpickles what it receives: keep it on the
# cluster's private network (see the README's security note), or configure TLS.
set -euo pipefail
config=${1:?usage: slurm-cluster.sh CONFIG.yaml}
job=${SLURM_JOB_ID:?run this under sbatch}
sched_file=$PWD/scheduler-$job.json
scratch=${SLURM_TMPDIR:-${TMPDIR:-/tmp}}/dask-$job
cores=${SLURM_CPUS_PER_TASK:-1}
nodes=${SLURM_JOB_NUM_NODES:-1}
wait_s=${VOLMLA_WAIT_S:-300}
# Transparent huge pages for malloc'd chunk buffers (see volmla.engine.cluster.worker_environ).
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1

rm -f "$sched_file"
dask scheduler --scheduler-file "$sched_file" --dashboard-address 127.0.0.1:8787 &
scheduler_pid=$!
cleanup() { kill "$scheduler_pid" "${workers_pid:-}" 2>/dev/null || true; rm -f "$sched_file"; }
trap cleanup EXIT

for _ in $(seq "$wait_s"); do [[ -s $sched_file ]] && break; sleep 1; done
[[ -s $sched_file ]] || { echo "slurm-cluster.sh: no scheduler file after ${wait_s} s" >&2; exit 1; }

if [[ -n ${SLURM_GPUS_ON_NODE:-} && ${SLURM_GPUS_ON_NODE} != 0 ]]; then
    # dask-cuda: one worker per visible GPU, each with the resource GPU=1
    srun --ntasks-per-node=1 dask cuda worker --scheduler-file "$sched_file" \
        --resources GPU=1 --local-directory "$scratch" --memory-limit 0.9 &
    per_node=$SLURM_GPUS_ON_NODE
else
    srun --ntasks-per-node=1 dask worker --scheduler-file "$sched_file" --nworkers "$cores" --nthreads 1 \
        --local-directory "$scratch" --memory-limit auto &
    per_node=$cores
fi
workers_pid=$!

# the client waits until every worker has joined, then runs the job
python3 - "$sched_file" "$(( per_node * nodes ))" "$wait_s" <<'PY'
import sys
from distributed import Client
with Client(scheduler_file=sys.argv[1]) as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=float(sys.argv[3]))
PY
address=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" "$sched_file")
volmla --scheduler "$address" run "$config"
