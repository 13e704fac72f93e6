#!/usr/bin/env bash
# The real training CLI on one lent GPU: `python -m bigvis.train` with configs/finetune.py at full
# size (ViT-B/16, 224 px, bfloat16) on the prepared emoji records, in two runs of one workdir: the
# first saves checkpoints and stops at STEPS1, the second resumes it to STEPS2 and evaluates. It
# checks what the step benchmark (gpu.sh) does not: the Grain input pipeline, Orbax checkpointing
# and resume, the evaluators, and that no CPU-only code is chosen on a GPU backend.
#
#   bash bench/gpu_train.sh OUTDIR     # needs runs/data/emoji (tools/prepare.py emoji) carried
#
# bigvis must be importable as an installed package (bigvis.configs maps to configs/): gpu_device.sh
# installs the wheel it carries. Knobs: BIGVIS_PYTHON (python3), GPU_TRAIN_VARIANT (B/16),
# GPU_TRAIN_BATCH (256), GPU_TRAIN_STEPS1 (60),
# GPU_TRAIN_STEPS2 (90), GPU_TRAIN_TIMEOUT1 (150 s), GPU_TRAIN_TIMEOUT2 (120 s), GPU_PEAK_TFLOPS
# (989: the H100/H200 SXM dense bf16 peak, for the trainer's MFU).
set -uo pipefail
OUTDIR=$(mkdir -p "${1:?OUTDIR}" && cd "$1" && pwd) || exit 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$REPO/runs/data/emoji" ] || { echo "gpu_train.sh: runs/data/emoji is missing" >&2; exit 2; }
py=${BIGVIS_PYTHON:-python3} variant=${GPU_TRAIN_VARIANT:-B/16} batch=${GPU_TRAIN_BATCH:-256}
s1=${GPU_TRAIN_STEPS1:-60} s2=${GPU_TRAIN_STEPS2:-90}
work=$(mktemp -d)
ln -s "$REPO/runs" "$work/runs"  # The config's data paths are relative to the working directory.
cd "$work" || exit 2  # Not the repo: its bigvis/ would shadow the installed package.

train() {  # train TOTAL_STEPS TIMEOUT LOG
  timeout -k 10 "$2" "$py" -m bigvis.train --workdir "$work/finetune" \
    --config "$REPO/configs/finetune.py:variant=$variant" --config.total_steps="$1" \
    --config.batch_size="$batch" --config.model.dtype=bfloat16 --config.log_every_steps=10 \
    --config.checkpoint_every_steps="$s1" --config.input.worker_count=8 \
    --config.peak_flops_per_device="${GPU_PEAK_TFLOPS:-989}e12" \
    --config.evals.retrieval.every_steps="$s2" --config.evals.heads.every_steps="$s2" \
    --config.evals.knn.every_steps="$s2" >"$3" 2>&1
}
echo "== run 1: $s1 steps, batch $batch"
train "$s1" "${GPU_TRAIN_TIMEOUT1:-150}" "$OUTDIR/train1.log"; rc1=$?
echo "== run 1 exit $rc1; run 2: resume to $s2 steps"
train "$s2" "${GPU_TRAIN_TIMEOUT2:-120}" "$OUTDIR/train2.log"; rc2=$?
echo "== run 2 exit $rc2"
cp "$work/finetune/metrics.jsonl" "$work/finetune/config.json" "$OUTDIR/" 2>/dev/null
ls "$work/finetune/checkpoints" >"$OUTDIR/checkpoints.txt" 2>&1
python3 - "$OUTDIR" "$rc1" "$rc2" <<'EOF'
import json, re, statistics, sys
out, rc1, rc2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
  rows = [json.loads(line) for line in open(f'{out}/metrics.jsonl')]
except OSError:
  rows = []
rate = [r['examples_per_sec'] for r in rows if 'examples_per_sec' in r]
evals = {k: v for r in rows for k, v in r.items() if k.startswith('eval/') and 'seconds' not in k}
restored = re.findall(r'Restored step (\d+)', open(f'{out}/train2.log', errors='replace').read())
summary = dict(exit=[rc1, rc2], run2_restored_step=int(restored[0]) if restored else None,
               steps=[r['step'] for r in rows if 'loss' in r],
               loss=[round(r['loss'], 4) for r in rows if 'loss' in r],
               examples_per_sec_median=statistics.median(rate) if rate else None,
               mfu_median=statistics.median(r['mfu'] for r in rows if 'mfu' in r) if rate else None,
               evals=evals)
json.dump(summary, open(f'{out}/gpu_train.json', 'w'), indent=1)
print(json.dumps(summary, indent=1))
EOF
[ "$rc1" = 0 ] && [ "$rc2" = 0 ]
