#!/usr/bin/env bash
# docs/CALIBRATION.md and results/calibration/: how often `calibrate --max-drop D` breaks its promise
# on 200 resampled calibration/test splits of each checkpoint's held-out slice plus dev, D = 1 and 2;
# calibration sets the size of the held-out slice, and for the small tasks (MRPC, RTE, whose 5% slices
# are too small to certify 1 point) also half the pool.
# Checkpoints: CKPT/<task> (default runs/ckpt), trained as `metabert train --task <task> --model minilm-l6`.
# Run from the repository root with GLUE_DIR set; all-exit logits are cached under runs/calibration/.
set -euo pipefail
CKPT=${CKPT:-runs/ckpt}
M="python -m metabert"
validate() {  # task output [extra options]
  local task=$1 out=$2; shift 2
  $M validate-calibration --checkpoint "$CKPT/$task" --max-drop 1,2 --splits 200 --no-progress \
     --logits-cache "runs/calibration/$task.logits.pt" --output "results/calibration/$out.json" "$@"
}
validate sst2 sst2
validate mrpc mrpc
validate mrpc mrpc-half --calibration-size 0.5
validate rte rte
validate rte rte-half --calibration-size 0.5
$M validate-calibration --summarise results/calibration/*.json --markdown docs/CALIBRATION.md --plot docs/calibration.png
