#!/usr/bin/env bash
# Speed of early exit on SST-2 and MRPC dev (checkpoints from scripts/foundation_results.sh), eager
# PyTorch and ONNX Runtime, with γ calibrated on the held-out training slice for at most 1 point of
# drop; exit policies compared at equal layer speed-up. Writes docs/BENCHMARKS.md.
# Run it on an otherwise idle machine: other work on the cores distorts every latency.
set -euo pipefail
RUNS=${1:-runs/foundation}
OUT=${OUT:-runs/bench}
METABERT=${METABERT:-metabert}
mkdir -p "$OUT"
files=()
for task in ${TASKS:-sst2 mrpc}; do
  $METABERT bench --checkpoint "$RUNS/$task" --task "$task" --max-drop 1 --repeats ${REPEATS:-5} \
    --no-progress --output "$OUT/$task.bench.json"
  $METABERT curves --checkpoint "$RUNS/$task" --task "$task" --measure-points 4 --measure-examples 200 \
    --no-progress --output "$OUT/$task.curves.json"
  files+=("$OUT/$task.bench.json" "$OUT/$task.curves.json")
done
[ -f "$OUT/loadtest.json" ] && files+=("$OUT/loadtest.json")  # from scripts/loadtest.sh, if run
$METABERT report --bench "${files[@]}" --output docs/BENCHMARKS.md
cp "$OUT"/*.curves.png docs/ 2>/dev/null || true
