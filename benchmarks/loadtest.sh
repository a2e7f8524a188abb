#!/usr/bin/env bash
# Two servers of the same checkpoint on loopback, one with the calibrated early exit and one without
# (threshold 0: every sample runs every layer), each driven for DURATION seconds by CLIENTS clients
# from a second process, one after the other in the same run. Writes runs/bench/loadtest.json.
set -euo pipefail
for tool in curl; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
CKPT=${1:-runs/foundation/sst2}
METABERT=${METABERT:-metabert}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-60}
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
# the early-exit server uses the checkpoint's calibrated policy: at most 1 point below the last exit
# on the slice of training data held out at training time
$METABERT calibrate --checkpoint "$CKPT" --max-drop "${MAX_DROP:-1}"
$METABERT serve --checkpoint "$CKPT" --port 8101 --threads 1 & early=$!
$METABERT serve --checkpoint "$CKPT" --port 8102 --threads 1 --threshold 0 & full=$!
trap 'kill $early $full 2>/dev/null || true' EXIT
for port in 8101 8102; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done
done
$METABERT loadtest --url http://127.0.0.1:8101 --label "early exit (calibrated)" \
  --url http://127.0.0.1:8102 --label "no early exit" \
  --clients "$CLIENTS" --duration "$DURATION" --output "$OUT/loadtest.json"
