#!/usr/bin/env bash
# ViT-B/16 bf16 training step at 224 px on one GPU: bigvis (jax.jit, XLA) beside PyTorch
# (torch.compile + scaled_dot_product_attention), on the same card, in under 8 minutes.
#
#   bash bench/gpu.sh [OUTDIR]      # OUTDIR: default $OUT if set, else bench/results/gpu
#
# Made for a lent H100/H200 (bench/README.md, "gpu.sh", has the exact device call): no network
# there, so the wheels bigvis needs and that machine lacks travel in bench/.gpu-wheels
# (bench/gpu_wheels.sh). Steps, each under `timeout`, inside one wall budget (GPU_BENCH_BUDGET,
# 450 s): nvidia-smi -> preflight (imports bigvis on JAX's CPU backend, counts the FLOPs; when the
# import fails, installs the carried wheels into a temporary target dir and tries again) -> the
# bigvis side -> the torch side -> the report. A side that fails or runs out of time still leaves
# its JSON, and the other side runs and is reported all the same. Prints one table (img/s,
# TFLOP/s, MFU against the card's dense bf16 peak) and writes into OUTDIR: gpu_bench.md,
# gpu_bench.json (everything), gpu.log, and the steps' own gpu_info/preflight/bigvis/torch.json.
#
# bigvis's ViT runs with config.model.impl=auto: on the GPU, stock flax layers with
# jax.nn.dot_product_attention (cuDNN flash attention in bf16); GPU_BENCH_IMPL=cpu measures
# bigvis's CPU-tuned layers there instead.
#
# Knobs (environment): GPU_BENCH_IMPL (auto), GPU_BENCH_VARIANT (B/16), GPU_BENCH_IMAGE (224), GPU_BENCH_BATCHES (tried
# in order, first that fits; by default from the card's memory), GPU_BENCH_STEPS (10),
# GPU_BENCH_REPEATS (3), GPU_BENCH_WARMUP (3), GPU_BENCH_BUDGET (s), GPU_PEAK_TFLOPS,
# BIGVIS_PYTHON / TORCH_PYTHON (python3), XLA_PYTHON_CLIENT_MEM_FRACTION (0.9), TORCH_COMPILE_MODE,
# GPU_BENCH_TORCH_EAGER=1 (no torch.compile). Without nvidia-smi (or with GPU_BENCH_SMOKE=1) it
# makes a CPU smoke run instead: ViT-Ti/16, 64 px, batch 2, torch eager, .venv and
# bench/.torch-venv when present; its figures only prove the script works.
set -uo pipefail  # No -e: one side failing must not stop the other.
OUTDIR=${1:-${OUT:-}}  # Relative to the caller's directory; the default, to the repo's root.
if [ -n "$OUTDIR" ]; then OUTDIR=$(mkdir -p "$OUTDIR" && cd "$OUTDIR" && pwd) || exit 2; fi
cd "$(dirname "$0")/.." || exit 2
OUTDIR=${OUTDIR:-$PWD/bench/results/gpu}
mkdir -p "$OUTDIR" || exit 2

main() {
  local t0 budget smoke name mem_mib driver peak peak_src batches
  t0=$(date +%s)
  left() { echo $((t0 + budget - $(date +%s))); }
  min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
  atleast10() { if [ "$1" -lt 10 ]; then echo 10; else echo "$1"; fi; }  # timeout 0 = no limit
  say() { echo "== [$(($(date +%s) - t0)) s] $*"; }

  # ---- the card
  smoke=${GPU_BENCH_SMOKE:-0}
  name='' mem_mib=0 driver=''
  if [ "$smoke" != 1 ] && command -v nvidia-smi >/dev/null &&
     IFS=, read -r name mem_mib driver < <(nvidia-smi --query-gpu=name,memory.total,driver_version \
                                          --format=csv,noheader,nounits 2>/dev/null | head -1) &&
     [ -n "$name" ]; then
    name=$(echo "$name" | xargs) mem_mib=$(echo "$mem_mib" | xargs) driver=$(echo "$driver" | xargs)
    [[ "$mem_mib" =~ ^[0-9]+$ ]] || mem_mib=0  # e.g. [N/A]
  else
    smoke=1
  fi
  if [ "$smoke" = 1 ]; then
    echo "no GPU (nvidia-smi) or GPU_BENCH_SMOKE=1: CPU SMOKE RUN, its figures mean nothing"
    export JAX_PLATFORMS=cpu
    [ -x .venv/bin/python ] && : "${BIGVIS_PYTHON:=.venv/bin/python}"
    [ -x bench/.torch-venv/bin/python ] && : "${TORCH_PYTHON:=bench/.torch-venv/bin/python}"
    : "${GPU_BENCH_VARIANT:=Ti/16}" "${GPU_BENCH_IMAGE:=64}" "${GPU_BENCH_BATCHES:=2}"
    : "${GPU_BENCH_STEPS:=2}" "${GPU_BENCH_REPEATS:=1}" "${GPU_BENCH_WARMUP:=1}"
    : "${GPU_BENCH_BUDGET:=1200}" "${GPU_BENCH_TORCH_EAGER:=1}"
  fi
  budget=${GPU_BENCH_BUDGET:-450}
  local bpy=${BIGVIS_PYTHON:-python3} tpy=${TORCH_PYTHON:-python3}
  local variant=${GPU_BENCH_VARIANT:-B/16} image=${GPU_BENCH_IMAGE:-224}
  local steps=${GPU_BENCH_STEPS:-10} repeats=${GPU_BENCH_REPEATS:-3} warmup=${GPU_BENCH_WARMUP:-3}

  # Dense bf16 peaks (NVIDIA's data sheets give them with 2:4 sparsity, twice these). A plain
  # 8192^3 bf16 matmul reached ~770-800 TFLOP/s on this workplace's H100 and H200 (KINDS.md).
  case "$name" in
    *H200*NVL*) peak=835; peak_src="$name: H200 NVL dense bf16 spec" ;;
    *H200*)     peak=989; peak_src="$name: H200 SXM dense bf16 spec" ;;
    *H100*NVL*) peak=835; peak_src="$name: H100 NVL dense bf16 spec" ;;
    *H100*PCIe*) peak=756; peak_src="$name: H100 PCIe dense bf16 spec" ;;
    *H100*)     peak=989; peak_src="$name: H100 SXM dense bf16 spec" ;;
    *)          peak=0; peak_src="no peak known for '${name:-CPU}': MFU not computed" ;;
  esac
  if [ -n "${GPU_PEAK_TFLOPS:-}" ]; then peak=$GPU_PEAK_TFLOPS peak_src="GPU_PEAK_TFLOPS"; fi

  # Largest batch first; an out-of-memory attempt costs a compile (~0.5-1 min), so start near what
  # fits. bigvis's ViT-B/16 step at 224 px took ~0.22 GB of XLA temp per image (+1.5 GB of state)
  # in CPU compiles (memory_analysis, batch 8 and 16): ~256 fits in 90% of 80 GB, ~512 in 141 GB.
  # torch needs less (flash attention keeps no probabilities), so it fits the first try.
  if [ -n "${GPU_BENCH_BATCHES:-}" ]; then batches=$GPU_BENCH_BATCHES
  elif [ "$mem_mib" -ge 120000 ]; then batches=512,384,256,128
  else batches=384,256,192,128
  fi
  local common=(--variant "$variant" --image "$image" --batches "$batches" --steps "$steps"
                --repeats "$repeats" --warmup "$warmup" --impl "${GPU_BENCH_IMPL:-auto}")

  python3 - "$OUTDIR/gpu_info.json" "$name" "$mem_mib" "$driver" "$smoke" <<'EOF'
import json, sys
path, name, mem, driver, smoke = sys.argv[1:]
json.dump(dict(name=name or None, memory=f'{mem} MiB' if name else None, memory_mib=int(mem or 0),
               driver=driver or None, smoke=smoke == '1'), open(path, 'w'), indent=2)
EOF
  say "card: ${name:-none} (${mem_mib} MiB, driver ${driver:-?}); peak ${peak} TFLOP/s; ViT-$variant" \
      "at $image px, batches $batches, $steps steps x $repeats repeats after $warmup warm-up;" \
      "budget $budget s; bigvis: $bpy, torch: $tpy"

  # ---- preflight: bigvis imports (CPU backend), FLOPs; carried wheels when the import fails
  local pre=$OUTDIR/preflight.json pre_rc site=${GPU_BENCH_SITE:-/tmp/bigvis-gpu-site}
  preflight() {
    JAX_PLATFORMS=cpu timeout -k 5 "$(atleast10 "$(min 120 $(($(left) - 60)))")" \
      "$bpy" bench/gpu_step.py preflight --json "$pre" --variant "$variant" --image "$image" \
      --impl flax  # FLOPs counted on the stock layers: the same dots on every backend
  }
  install_wheels() {  # install_wheels REQUIREMENTS_FILE
    say "installing $(tr '\n' ' ' <"$1")from bench/.gpu-wheels into $site (no network)"
    "$bpy" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$site" --find-links bench/.gpu-wheels -r "$1" &&
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" &&
      export BIGVIS_GPU_WHEELS="${BIGVIS_GPU_WHEELS:+$BIGVIS_GPU_WHEELS, }$(paste -sd, "$1" | sed "s/,/, /g")"
  }
  say "preflight"
  rm -f "$pre" "$OUTDIR"/*.json.tmp
  preflight; pre_rc=$?
  if [ "$pre_rc" = 3 ]; then
    if [ -f bench/.gpu-wheels/requirements.txt ]; then
      install_wheels bench/.gpu-wheels/requirements.txt && { say "preflight again"; preflight; }
      pre_rc=$?
      if [ "$pre_rc" = 3 ] && grep -qiE 'protobuf|runtime_version|VersionError' "$pre" &&
         [ -f bench/.gpu-wheels/requirements-protobuf.txt ]; then
        install_wheels bench/.gpu-wheels/requirements-protobuf.txt &&
          { say "preflight again (carried protobuf)"; preflight; }
        pre_rc=$?
      fi
    else
      echo "bigvis does not import and bench/.gpu-wheels is missing: run bench/gpu_wheels.sh" \
           "here and carry bench/.gpu-wheels"
    fi
  fi

  # ---- bigvis side (its own process: JAX takes XLA_PYTHON_CLIENT_MEM_FRACTION of the card)
  local bj=$OUTDIR/bigvis.json tj=$OUTDIR/torch.json b_rc t_rc tb tt
  rm -f "$bj" "$tj"
  if [ "$pre_rc" = 0 ]; then
    tb=$(atleast10 $(( ($(left) - 30) / 2 )))
    say "bigvis side (timeout $tb s)"
    XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9} \
      timeout -k 10 "$tb" "$bpy" bench/gpu_step.py bigvis --json "$bj" "${common[@]}" \
      --deadline $(($(date +%s) + tb - 20))
    b_rc=$?
  else
    b_rc=$pre_rc
    say "bigvis side skipped: the preflight failed (exit $pre_rc)"
    python3 - "$pre" "$bj" "$pre_rc" <<'EOF'
import json, sys
try:
  pre = json.load(open(sys.argv[1]))
except (OSError, ValueError):
  pre = {}
err = pre.get('import_error') or f'exit {sys.argv[3]}, no preflight result'
json.dump(dict(side='bigvis', status='skipped', error=f'preflight failed: {err}'),
          open(sys.argv[2], 'w'), indent=2)
EOF
  fi

  # ---- torch side (the card is free again: the bigvis process has exited)
  tt=$(atleast10 $(( $(left) - 30 )))
  say "torch side (timeout $tt s)"
  local eager=()
  [ "${GPU_BENCH_TORCH_EAGER:-0}" = 1 ] && eager=(--no-compile)
  timeout -k 10 "$tt" "$tpy" bench/gpu_step.py torch --json "$tj" "${common[@]}" "${eager[@]}" \
    --deadline $(($(date +%s) + tt - 20))
  t_rc=$?

  # ---- report
  say "report"
  local smoke_flag=() rc
  [ "$smoke" = 1 ] && smoke_flag=(--smoke)
  timeout -k 5 60 python3 bench/gpu_step.py report --out-dir "$OUTDIR" --name gpu_bench \
    --gpu-info "$OUTDIR/gpu_info.json" --preflight "$pre" --bigvis "$bj" --torch "$tj" \
    --bigvis-rc "$b_rc" --torch-rc "$t_rc" --peak-tflops "$peak" --peak-source "$peak_src" \
    --wall $(($(date +%s) - t0)) "${common[@]}" "${smoke_flag[@]}"
  rc=$?
  if [ "$rc" -gt 1 ]; then
    echo "report failed (exit $rc); the sides' raw results:"
    for f in "$bj" "$tj"; do echo "-- $f"; head -c 2000 "$f" 2>/dev/null; echo; done
  fi
  say "done: bigvis exit $b_rc, torch exit $t_rc, report exit $rc"
  return "$rc"
}

main 2>&1 | tee "$OUTDIR/gpu.log"
exit "${PIPESTATUS[0]}"
