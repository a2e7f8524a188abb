#!/usr/bin/env bash
# Screening MetaBERT's options against joint, joint at a higher learning rate and the matched-compute
# control, on RTE and MRPC dev (one seed each: a screen, not a verdict; the Table II run has three).
# The last two rows change one option each (task = exit; warm-start schedule) of the best earlier row.
# The table is written by `metabert reproduce` to $OUT/table2.md and copied to docs/TUNING.md.
# Usage: GLUE_DIR=... benchmarks/tune_meta.sh [OUT_DIR]   (RTE: about 90 min on a 2-core CPU)
set -euo pipefail
OUT=${1:-results/tune}
METABERT=${METABERT:-metabert}
$METABERT reproduce --tasks "${TASKS:-rte}" --seeds "${SEEDS:-1}" --model minilm-l6 --epochs 5 \
  --learning-rate 5e-5 --batch-size 32 --warmup 0.1 --max-seq-length 128 --pooling mean \
  --methods "${METHODS:-joint,joint-lr1e-4,joint-matched,meta,meta-adam,meta-adam-exits,meta-adam-exits-task,meta-adam-exits-warm}" \
  --variant "joint-lr1e-4=method=joint,learning_rate=1e-4" \
  --variant "meta-adam=method=meta,meta_optimizer=adam,meta_lr=5e-5,meta_inner_lr=1e-2" \
  --variant "meta-adam-exits=method=meta,meta_optimizer=adam,meta_lr=5e-5,meta_inner_lr=1e-1,meta_adapt=exits" \
  --variant "meta-adam-exits-task=method=meta,meta_optimizer=adam,meta_lr=5e-5,meta_inner_lr=1e-1,meta_adapt=exits,meta_task=exit" \
  --variant "meta-adam-exits-warm=method=meta,meta_optimizer=adam,meta_lr=5e-5,meta_inner_lr=1e-1,meta_adapt=exits,meta_schedule=warmstart" \
  ${NO_TRAIN:+--no-train} --no-progress --output "$OUT"
cp "$OUT/table2.md" docs/TUNING.md
