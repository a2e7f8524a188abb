#!/usr/bin/env bash
# Deployment speed on SST-2 dev: every runner (eager PyTorch and ONNX Runtime, fp32 and INT8), full
# model and early exit, each runner with γ calibrated on the held-out training slice for at most 1
# point of drop with its own logits. Writes results/bench/sst2.bench.json (+ .png) and
# docs/BENCHMARKS.md; then the INT8 options page (docs/INT8_OPTIONS.md).
# Run it on an otherwise idle machine: other work on the cores distorts every latency (the load
# average is recorded in the JSON and the page).
set -euo pipefail
CKPT=${1:-runs/foundation/sst2}
METABERT=${METABERT:-metabert}
$METABERT bench --checkpoint "$CKPT" --task sst2 --max-drop 1 --repeats ${REPEATS:-5} --threads 2 \
  --no-progress --output results/bench/sst2.bench.json --markdown docs/BENCHMARKS.md
python scripts/int8_options.py "$CKPT" results/bench/int8_options.json sst2 200
cp results/bench/int8_options.md docs/INT8_OPTIONS.md
