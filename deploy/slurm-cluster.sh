#!/usr/bin/env bash
# Start a Dask cluster on a Slurm allocation and run a volmla job on it.
#   sbatch --nodes=4 --ntasks-per-node=1 --cpus-per-task=16 --gres=gpu:1 deploy/slurm-cluster.sh CONFIG.yaml
set -euo pipefail
config=${1:?usage: slurm-cluster.sh CONFIG.yaml}
sched_file=$PWD/scheduler-$SLURM_JOB_ID.json
# Transparent huge pages for malloc'd chunk buffers (see volmla.engine.cluster.worker_environ).
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
dask scheduler --scheduler-file "$sched_file" &
sleep 10
# One worker per node, one thread per core, the node's GPU as a resource.
srun dask worker --scheduler-file "$sched_file" --nthreads "$SLURM_CPUS_PER_TASK" \
    --resources GPU=1 --memory-limit 0.9 &
sleep 20
address=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" "$sched_file")
volmla --scheduler "$address" run "$config"
