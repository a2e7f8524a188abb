#!/usr/bin/env bash
# MetaBERT's Table II and Fig. 2 with minilm-l6 on this machine: every method (and the matched-compute
# control) on CoLA, RTE, MRPC and SST-2, three seeds, γ chosen on the calibration slice.
# Epochs and learning rate per task are the joint recipe of benchmarks/foundation_results.sh, the same
# for every method, except that SST-2 gets 2 epochs, not 1: the staged methods need one per stage.
# meta-adam-exits and meta-adam-exits-warm lead the MetaBERT rows of the RTE screen (docs/TUNING.md);
# the screen's cells made with the same options are reused (REUSE, default results/tune).
# meta-no-inner is `meta` with α = 0 (no inner step: the meta-gradient is the plain query gradient,
# all else as in `meta`): what `meta` gains over it is meta-learning's own, not its extra β steps.
# meta-no-update is `meta` with β = 0: every meta-update computed (same batches, same random numbers
# consumed), none applied; what `meta` gains over it is its meta-updates' own, and what it gains over
# `joint` comes from the changed random stream alone.
# PAIRS: the ablations compared seed by seed besides the control (clear it when METHODS leaves out a row).
# Written by `metabert reproduce` to $OUT/table2.md and copied to $PAGE (default docs/TABLE2.md; the
# Fig. 2 plots to docs/).
# Cells resume: a finished cell is not trained again, and one cut short continues from its last
# training state (saved every 500 steps: SST-2's cells take up to an hour here).
# Usage: GLUE_DIR=... benchmarks/table2.sh [OUT_DIR]   (many CPU hours; NO_TRAIN=1 tabulates)
set -euo pipefail
OUT=${1:-results/table2}
PAGE=${PAGE:-docs/TABLE2.md}
METABERT=${METABERT:-metabert}
PAIRS=${PAIRS-meta=meta-no-inner meta=meta-no-update meta-no-update=joint meta=joint alternating=joint}
$METABERT reproduce --tasks "${TASKS:-cola,rte,mrpc,sst2}" --seeds "${SEEDS:-3}" --model minilm-l6 \
  --epochs 5 --task-epochs cola=3,sst2=2 --learning-rate 5e-5 --task-learning-rate cola=1e-4,sst2=1e-4 \
  --batch-size 32 --warmup 0.1 --max-seq-length 128 --pooling mean --speedups 1.5,2 --save-every 500 \
  --methods "${METHODS:-joint,two-stage,alternating,meta,joint-matched,meta-no-inner,meta-no-update,meta-adam-exits,meta-adam-exits-warm}" \
  --variant "meta-no-inner=method=meta,meta_inner_lr=0" \
  --variant "meta-no-update=method=meta,meta_lr=0" \
  --variant "meta-adam-exits=method=meta,meta_optimizer=adam,meta_lr=5e-5,meta_inner_lr=1e-1,meta_adapt=exits" \
  --variant "meta-adam-exits-warm=method=meta,meta_optimizer=adam,meta_lr=5e-5,meta_inner_lr=1e-1,meta_adapt=exits,meta_schedule=warmstart" \
  --reuse "${REUSE:-results/tune}" $(for p in $PAIRS; do printf -- '--pair %s ' "$p"; done) \
  ${NO_TRAIN:+--no-train} --no-progress --output "$OUT"
cp "$OUT/table2.md" "$PAGE"
cp "$OUT"/fig2_*.png docs/ 2>/dev/null || true
