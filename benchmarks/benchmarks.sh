#!/usr/bin/env bash
# Deployment speed on SST-2 dev: every runner (eager PyTorch and ONNX Runtime, fp32 and INT8), full
# model and early exit, each runner with γ calibrated on the held-out training slice for at most 1
# point of drop (confidence 0.95) with its own logits. Writes results/bench/sst2.bench.json (+ .png)
# and docs/BENCHMARKS.md; then the INT8 options page (docs/INT8_OPTIONS.md) and the check of how the
# batch-1 interleaving affects latencies (results/bench/interleave_check.txt).
# Run it on an otherwise idle machine: other work on the cores distorts every latency (the load
# average is recorded in the JSON and the page).
set -euo pipefail
CKPT=${1:-runs/foundation/sst2}
METABERT=${METABERT:-metabert}
ONNX=$(mktemp -d)
trap 'rm -rf "$ONNX"' EXIT
$METABERT export --checkpoint "$CKPT" --output "$ONNX/fp32" > /dev/null
$METABERT bench --checkpoint "$CKPT" --task sst2 --max-drop 1 --repeats ${REPEATS:-5} --threads 2 --onnx "$ONNX/fp32" \
  --no-progress --output results/bench/sst2.bench.json --markdown docs/BENCHMARKS.md
python benchmarks/int8_options.py "$CKPT" results/bench/int8_options.json sst2 200
cp results/bench/int8_options.md docs/INT8_OPTIONS.md
GAMMA=$(python -c "import json; print(json.load(open('results/bench/sst2.bench.json'))['variants']['ort_early']['policy'].split('γ=')[1].rstrip(')'))")
{ echo "# python benchmarks/interleave_check.py ONNX_FOLDER $GAMMA 300 2 ($(date -u +%F), 2 threads; γ of the ort row of sst2.bench.json)"
  python benchmarks/interleave_check.py "$ONNX/fp32" "$GAMMA" 300 2; } > results/bench/interleave_check.txt
