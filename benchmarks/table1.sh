#!/usr/bin/env bash
# MetaBERT's Table I, our way: static truncation and the peers' recipes (training method + exit rule)
# at matched layer speed-up on RTE, MRPC, CoLA and SST-2 dev, γ (or patience) chosen on the calibration
# slice. Three seeds (SEEDS) for RTE, MRPC and CoLA, one (seed 0) for SST-2, whose rows take 15-45 min each.
# Written by `metabert reproduce` to $OUT/table2.md (same layout) and copied to $PAGE (default
# docs/TABLE1.md), its per-exit plots beside it as <page name>_<task>.png (lower case: docs/table1_rte.png).
# Another PAGE (a run of some rows or tasks, e.g. docs/TABLE1_SST2.md) gets its own summary folder,
# $OUT/pages/<page name>, so that it leaves the full table's files as they are.
# Usage: GLUE_DIR=... benchmarks/table1.sh [OUT_DIR]   (many CPU hours; cells resume, mid-training too)
# The DeeBERT and MetaBERT rows train exactly as Table II's two-stage and meta rows: cells finished
# there (REUSE, default results/table2) are taken instead of trained again. `pabee-entropy` trains as PABEE
# does and exits by entropy, which tells the training apart from the exit rule.
# The static Table I systems (distilbert, pkd, theseus) learn from the bert-6l row's checkpoint of the
# same task and seed (teacher_row), so bert-6l comes first; layerdrop prunes its own 6-layer model to 3;
# shallow-deep exits by max-prob, gaml by entropy (docs/METHODS_TABLE1.md has every reading).
# PAIRS: rows compared seed by seed (clear it when METHODS leaves out a row).
set -euo pipefail
OUT=${1:-results/table1}
PAGE=${PAGE:-docs/TABLE1.md}
NAME=$(basename "$PAGE" .md)
PLOTS=$(dirname "$PAGE")/${NAME,,}_
if [ "$NAME" = TABLE1 ]; then SUMMARY=$OUT; else SUMMARY=$OUT/pages/$NAME; fi
PAIRS=${PAIRS-meta=gaml meta=pabee-entropy meta=berxit meta=deebert pabee-entropy=deebert}
METABERT=${METABERT:-metabert}
$METABERT reproduce --tasks "${TASKS:-rte,mrpc,cola,sst2}" --seeds "${SEEDS:-3}" --task-seeds "${TASK_SEEDS-sst2=1}" \
  --model minilm-l6 --epochs 5 --task-epochs cola=3,sst2=2 --learning-rate 5e-5 --task-learning-rate cola=1e-4,sst2=1e-4 --batch-size 32 --warmup 0.1 --max-seq-length 128 \
  --pooling mean --speedups 1.5,2 --save-every 500 \
  --methods "${METHODS:-bert-6l,bert-3l,distilbert,layerdrop,pkd,theseus,gaml,shallow-deep,deebert,pabee,pabee-entropy,fastbert,berxit,meta}" \
  --variant "bert-6l=method=last" \
  --variant "distilbert=method=distilbert,teacher_row=bert-6l" \
  --variant "pkd=method=pkd,teacher_row=bert-6l" \
  --variant "theseus=method=theseus,teacher_row=bert-6l" \
  --variant "layerdrop=method=layerdrop" \
  --variant "gaml=method=gaml,policy=entropy" \
  --variant "shallow-deep=method=shallow-deep,policy=max-prob" \
  --variant "bert-3l=method=last,num_layers=3" \
  --variant "deebert=method=two-stage,policy=entropy" \
  --variant "pabee=method=weighted,policy=patience" \
  --variant "pabee-entropy=method=weighted,policy=entropy" \
  --variant "fastbert=method=distill,policy=norm-entropy" \
  --variant "berxit=method=alternating-step,policy=entropy" \
  --title "Table I reproduction: static truncation and the peers' recipes" --paper table1 \
  --reuse "${REUSE:-results/table2}" $(for p in $PAIRS; do printf -- '--pair %s ' "$p"; done) ${NO_TRAIN:+--no-train} --no-progress --output "$OUT" \
  $(if [ "$SUMMARY" != "$OUT" ]; then printf -- '--summary %s' "$SUMMARY"; fi)
cp "$SUMMARY/table2.md" "$PAGE"
for f in "$SUMMARY"/fig2_*.png; do if [ -e "$f" ]; then cp "$f" "$PLOTS${f##*/fig2_}"; fi; done
