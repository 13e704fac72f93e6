#!/usr/bin/env bash
# Runs bigvis.train on every worker of a Cloud TPU pod slice.
#
#   tools/launch_tpu_pod.sh TPU_NAME ZONE --config configs/pretrain.py:variant=B/16 --workdir gs://b/run
#
# Copies this checkout to each worker, installs requirements.txt (plus jax[tpu]) into ~/bigvis/.venv
# once and the package itself (editable), and starts the trainer on all workers at the same time.
# On a pod slice each worker sees TPU_WORKER_HOSTNAMES, so bigvis.distributed.initialize() starts
# jax.distributed by itself. Give a gs:// workdir: every worker writes to the same bucket.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
tpu=$1 zone=$2; shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$repo" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/bigvis.tgz .
gcloud compute tpus tpu-vm scp /tmp/bigvis.tgz "$tpu":/tmp/bigvis.tgz --zone "$zone" --worker=all
remote_args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; mkdir -p ~/bigvis && tar -C ~/bigvis -xzf /tmp/bigvis.tgz && cd ~/bigvis
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt
    .venv/bin/pip install -q 'jax[tpu]==0.10.2'
  fi
  .venv/bin/pip install -q --no-deps -e .  # bigvis, bigvis.tools and bigvis.configs (pyproject.toml)
  .venv/bin/python -m bigvis.train $remote_args"
