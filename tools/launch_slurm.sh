#!/usr/bin/env bash
# Submits bigvis.train to a SLURM GPU cluster: one task per GPU, every task a JAX process.
#
#   NODES=4 GPUS_PER_NODE=8 tools/launch_slurm.sh --config configs/pretrain.py:variant=L/16 --workdir /shared/run
#
# Needs the repo and its .venv (`make .venv/.installed`, then `pip install 'jax[cuda13]==0.10.2'`)
# on a shared filesystem. srun sets SLURM_NTASKS/SLURM_PROCID/..., from which
# bigvis.distributed.initialize() starts jax.distributed (cluster_detection_method='slurm').
# Extra sbatch options: SBATCH_ARGS="--partition=a100 --time=24:00:00".
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
nodes=${NODES:-1} gpus=${GPUS_PER_NODE:-8}
repo=$(cd "$(dirname "$0")/.." && pwd)
args=$(printf '%q ' "$@")
# shellcheck disable=SC2086
sbatch --nodes="$nodes" --ntasks-per-node="$gpus" --gpus-per-task=1 --cpus-per-task=8 \
  --job-name=bigvis ${SBATCH_ARGS:-} --wrap "cd $repo && srun .venv/bin/python -m bigvis.train $args"
