#!/usr/bin/env bash
# Downloads, here (with network), the wheels that `bigvis.train` imports and a lent GPU machine
# lacks, into bench/.gpu-wheels/ (gitignored), for `bench/gpu.sh` to install there with no network.
#
#   bash bench/gpu_wheels.sh        # then a device run with carry ["bench/.gpu-wheels"]
#
# What is missing there: the GPU image has jax, flax, optax, orbax-checkpoint, absl-py, etils,
# cloudpickle, msgpack, numpy, pillow, protobuf, psutil, pyyaml, tqdm, ... (KINDS.md's package
# list), but not ml_collections (bigvis.config), grain (bigvis.data, bigvis.checkpoint), grain's
# array_record, portpicker and tensorboardX (bigvis.metrics); bigvis itself is built as a wheel.
# Versions are those of requirements.txt. Its python3 is 3.12 (KINDS.md,
# 2026-11), not this machine's 3.11: the compiled wheels (grain, array_record) come for both, and
# pip picks the one that matches. protobuf is downloaded too but installed only when grain's
# generated code refuses the protobuf found there (gpu.sh does that).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=bench/.gpu-wheels
PY=${PYTHON:-.venv/bin/python}
PYTHONS=${GPU_WHEELS_PYTHONS:-3.12 3.11}
MAX_MIB=${GPU_WHEELS_MAX_MIB:-60}

pin() {  # pin NAME -> NAME==VERSION from requirements.txt (fails when absent)
  local line
  line=$(grep -iE "^$1==" requirements.txt | head -1 | sed 's/[[:space:]#].*//')
  [ -n "$line" ] || { echo "gpu_wheels.sh: $1 is not pinned in requirements.txt" >&2; exit 1; }
  echo "$line"
}
BASE=("$(pin grain)" "$(pin array-record)" "$(pin ml-collections)" "portpicker==1.6.0"
      "$(pin tensorboardX)")
EXTRA=("$(pin protobuf)")

rm -rf "$DIR"
mkdir -p "$DIR"
for pv in $PYTHONS; do
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$pv" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "${BASE[@]}" "${EXTRA[@]}" 2> >(grep -v "is ignored: it is neither a file" >&2)
done
# bigvis itself as a wheel: gpu_train.sh imports bigvis.configs, which only the install maps.
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DIR" . 2> >(grep -v "is ignored" >&2)
rm -rf build
printf '%s\n' "${BASE[@]}" > "$DIR/requirements.txt"
printf '%s\n' "${EXTRA[@]}" > "$DIR/requirements-protobuf.txt"

ls -l "$DIR"
kib=$(du -sk "$DIR" | cut -f1)
echo "bench/.gpu-wheels: $((kib / 1024)) MiB ($kib KiB) for python ${PYTHONS// /, }"
if [ "$kib" -gt $((MAX_MIB * 1024)) ]; then
  echo "gpu_wheels.sh: over $MAX_MIB MiB: a device run carries at most 64 MiB with the tree" >&2
  exit 1
fi
