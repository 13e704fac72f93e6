#!/usr/bin/env bash
# One call on a lent H100/H200 (bench/README.md, "gpu_device.sh"): installs the carried wheels
# (bench/gpu_wheels.sh: grain, array_record, ml_collections, portpicker, tensorboardX and bigvis's
# own wheel), then bench/gpu.sh (the train-step benchmark beside torch) and bench/gpu_train.sh
# (the real CLI, with resume). The device returns at most 8 files, so everything lands in
# OUTDIR/gpu_results.tgz (re-packed after each step, so a run cut off still brings back what it
# had) beside OUTDIR/device.log.
#
#   run(command="bash bench/gpu_device.sh $OUT", carry=["bench/.gpu-wheels", "runs/data/emoji"])
set -uo pipefail
OUTDIR=$(mkdir -p "${1:?OUTDIR}" && cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
res=$(mktemp -d)
pack() {  # Atomic: a cut-off run leaves the last whole archive.
  tar -czf "$OUTDIR/gpu_results.tgz.tmp" -C "$res" . &&
    mv "$OUTDIR/gpu_results.tgz.tmp" "$OUTDIR/gpu_results.tgz"
}
{
  W=bench/.gpu-wheels site=/tmp/bigvis-gpu-site
  echo "== $(date -u) installing $(tr '\n' ' ' <"$W/requirements.txt")+ bigvis"
  python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --target "$site" --find-links "$W" -r "$W/requirements.txt" \
    "$W"/bigvis-*.whl || echo "wheel install failed"
  export PYTHONPATH="$site"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import jax, flax, optax
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__)'
  echo "== $(date -u) gpu.sh"
  GPU_BENCH_BUDGET=${GPU_BENCH_BUDGET:-330} bash bench/gpu.sh "$res/step"
  pack
  echo "== $(date -u) gpu_train.sh"
  bash bench/gpu_train.sh "$res/train"
  pack
  echo "== $(date -u) done"
} 2>&1 | tee "$OUTDIR/device.log"
